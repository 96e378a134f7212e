//! The store's tables, created and migrated when a store opens.
//!
//! Migrations run in one transaction under an advisory lock of the schema, so ten
//! instances starting at once apply each migration once; a schema whose version is newer
//! than this build knows is refused, unchanged. docs/STORE.md ("The PostgreSQL store")
//! describes every table.

use exactly_core::Error;
use tokio_postgres::Client;

/// The schema version this build writes and the newest it reads.
pub const SCHEMA_VERSION: i32 = 3;

/// Migration `n` (1-based) brings a schema from version `n - 1` to `n`. `{s}` is the
/// quoted schema name.
const MIGRATIONS: &[&str] = &[
    r"
    CREATE TABLE {s}.records (
        skey bytea PRIMARY KEY,
        namespace text NOT NULL,
        state smallint NOT NULL,
        token bigint NOT NULL,
        holder integer NOT NULL,
        lease_until bigint NOT NULL,
        orphaned boolean NOT NULL DEFAULT false,
        fingerprint bytea NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        first_error text,
        last_error text,
        output bytea,
        emitted bytea,
        reason text,
        origin text,
        updated_at bigint NOT NULL,
        expires_at bigint NOT NULL,
        bucket bigint NOT NULL
    ) WITH (fillfactor = 80);
    CREATE INDEX records_bucket ON {s}.records (bucket);
    COMMENT ON TABLE {s}.records IS
        'exactly: one row per idempotency key: a claim (state 0), released after a failure (1), done (2), dead-lettered (3)';
    CREATE TABLE {s}.state (
        key bytea PRIMARY KEY,
        value bytea NOT NULL
    );
    COMMENT ON TABLE {s}.state IS 'exactly: handlers'' transactional state, written with the done-records';
    CREATE TABLE {s}.meta (
        name text PRIMARY KEY,
        value bytea NOT NULL
    );
    COMMENT ON TABLE {s}.meta IS 'exactly: values adapters keep beside the records (Kafka offset watermarks)';
    CREATE SEQUENCE {s}.fencing_tokens;
    CREATE SEQUENCE {s}.instances AS integer MINVALUE 16 CYCLE;
",
    r"
    ALTER TABLE {s}.records ADD COLUMN wrote bytea;
    COMMENT ON COLUMN {s}.records.wrote IS
        'exactly: the state keys the message wrote or deleted (postcard-encoded list; NULL for none)';
",
    r"
    CREATE TABLE {s}.outbox (
        id bigserial PRIMARY KEY,
        source bytea NOT NULL,
        record bytea NOT NULL,
        created_at bigint NOT NULL
    );
    COMMENT ON TABLE {s}.outbox IS
        'exactly: records handlers emitted (postcard-encoded), committed with their done-records; deleted once the relay has published them';
",
];

/// Creates the schema if it is missing and applies the migrations it lacks.
pub(crate) async fn migrate(
    client: &mut Client,
    schema: &str,
    quoted: &str,
    class: i32,
    store: &str,
    create: bool,
) -> Result<(), Error> {
    let open = |what: &str, e: tokio_postgres::Error| crate::error::open(store, what, e);
    let tx = client.transaction().await.map_err(|e| open("begin the migration", e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&class]).await.map_err(|e| open("lock the schema", e))?;
    if !create {
        let exists: bool = tx
            .query_one(&format!("SELECT to_regclass('{quoted}.schema_version') IS NOT NULL"), &[])
            .await
            .map_err(|e| open("look for the store's tables", e))?
            .get(0);
        if !exists {
            return Err(Error::StoreOpen {
                path: store.into(),
                reason: format!(
                    "there is no store in schema {schema}, and creating one is turned off (create_if_missing); \
                     check the database and schema named, or allow creating an empty store"
                ),
                source: None,
            });
        }
    }
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {quoted};
         CREATE TABLE IF NOT EXISTS {quoted}.schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .map_err(|e| open(&format!("create schema {schema}"), e))?;
    let row = tx
        .query_one(&format!("SELECT COALESCE(max(version), 0) FROM {quoted}.schema_version"), &[])
        .await
        .map_err(|e| open("read the schema version", e))?;
    let found: i32 = row.get(0);
    if found > SCHEMA_VERSION {
        return Err(Error::StoreFormat {
            path: store.into(),
            found: u32::try_from(found).unwrap_or(u32::MAX),
            supported: SCHEMA_VERSION.unsigned_abs(),
        });
    }
    for (version, migration) in (1..).zip(MIGRATIONS).skip(usize::try_from(found).unwrap_or(0)) {
        tx.batch_execute(&migration.replace("{s}", quoted))
            .await
            .map_err(|e| open(&format!("migrate schema {schema} to version {version}"), e))?;
        tx.execute(&format!("INSERT INTO {quoted}.schema_version (version) VALUES ($1)"), &[&version])
            .await
            .map_err(|e| open("record the schema version", e))?;
        tracing::info!(schema, version, "store schema migrated");
    }
    tx.commit().await.map_err(|e| open("commit the migration", e))
}

/// A schema name as given (letters, digits and `_`, not starting with a digit, at most
/// 63 bytes), quoted for SQL.
pub(crate) fn quote(schema: &str) -> Result<String, Error> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        return Err(Error::Config {
            field: "schema".into(),
            reason: format!("{schema:?} is not a plain SQL name: use letters, digits and _, at most 63 bytes"),
        });
    }
    Ok(format!("\"{schema}\""))
}

/// The advisory-lock class of a store's schema: stable across processes and builds
/// (FNV-1a of its name), even, non-negative. The class locks migrations (key 0), the
/// sweeper (key 1), the outbox's relay (key 2) and each running instance (its id); the
/// class + 1 locks state keys.
/// The instances of a store running now are
/// `SELECT objid AS instance, pid FROM pg_locks WHERE locktype = 'advisory' AND classid = <class> AND objid >= 16`.
pub fn lock_class(schema: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in "exactly:".bytes().chain(schema.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    i32::try_from(h & 0x3fff_fffe).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_or_refused() {
        assert_eq!(quote("exactly").ok().as_deref(), Some("\"exactly\""));
        assert!(quote("orders_2").is_ok());
        for bad in ["", "1x", "a;drop", "a\"b", "a b", &"x".repeat(64)] {
            assert!(quote(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn lock_classes_are_stable_even_and_differ_by_schema() {
        assert_eq!(lock_class("exactly"), lock_class("exactly"));
        assert_ne!(lock_class("exactly"), lock_class("other"));
        assert!(lock_class("exactly") >= 0 && lock_class("exactly") % 2 == 0);
    }
}
