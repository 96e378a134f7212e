//! A schema of its own for each test, in the database scripts/services.sh names.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exactly_core::async_trait;
use exactly_core::store::{Claim, ClaimRequest, Completion, DedupStore, Final, StateChanges};
use exactly_core::testing::conformance::Subject;
use exactly_core::{Fingerprint, StoreKey};
use exactly_postgres::PgStore;
use tokio_postgres::NoTls;

/// The database the tests use.
pub fn url() -> String {
    std::env::var("EXACTLY_POSTGRES_URL")
        .expect("EXACTLY_POSTGRES_URL is not set: run scripts/test.sh (it starts PostgreSQL and names the database)")
}

/// A schema name no other test (or process) uses.
pub fn fresh_schema(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("t_{what}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A schema no other test uses, created with the tables `ddl` makes (`{s}` stands for the
/// quoted schema name).
pub async fn fresh_schema_with(what: &str, ddl: &str) -> String {
    let schema = fresh_schema(what);
    let quoted = format!("\"{schema}\"");
    connect()
        .await
        .batch_execute(&format!("CREATE SCHEMA {quoted}; {}", ddl.replace("{s}", &quoted)))
        .await
        .expect("create the test schema");
    schema
}

/// A plain connection, for the tests' own SQL.
pub async fn connect() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), NoTls).await.expect("connect to the test database");
    tokio::spawn(connection);
    client
}

/// Drops a schema and everything in it (from any context: on a thread of its own).
pub fn drop_schema(schema: &str) {
    let schema = schema.to_owned();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async {
            if let Ok((client, connection)) = tokio_postgres::connect(&url(), NoTls).await {
                tokio::spawn(connection);
                let _ = client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await;
            }
        });
    })
    .join();
}

/// Waits until no session holds instance `instance`'s lock in `schema`: the server has
/// seen the process's connections end, as it does after a crash.
pub async fn wait_until_gone(schema: &str, instance: i32) {
    let client = connect().await;
    let class = exactly_postgres::lock_class(schema);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2
                     AND classid = $1::int4::oid AND objid = $2::int4::oid)",
                &[&class, &instance],
            )
            .await
            .expect("read pg_locks")
            .get(0);
        if !held {
            return;
        }
        assert!(Instant::now() < deadline, "instance {instance}'s session did not end within 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The conformance suite's subject: a store in a schema of its own, dropped afterwards.
#[derive(Debug)]
pub struct PgSubject {
    schema: String,
    last: Mutex<Option<i32>>,
}

impl PgSubject {
    pub fn new() -> Self {
        Self { schema: fresh_schema("conf"), last: Mutex::new(None) }
    }
}

#[async_trait]
impl Subject for PgSubject {
    async fn open(&self) -> Arc<dyn DedupStore> {
        let store = PgStore::builder(url()).schema(&self.schema).pool_size(4).open().await.expect("the store opens");
        *self.last.lock().expect("the subject's lock") = Some(store.instance());
        Arc::new(store)
    }

    async fn crash(&self) {
        let last = *self.last.lock().expect("the subject's lock");
        if let Some(instance) = last {
            wait_until_gone(&self.schema, instance).await;
        }
    }
}

impl Drop for PgSubject {
    fn drop(&mut self) {
        drop_schema(&self.schema);
    }
}

/// Now, in milliseconds since the epoch: records written at it are not yet expired.
pub fn now_ms() -> u64 {
    u64::try_from(std::time::UNIX_EPOCH.elapsed().expect("a clock after 1970").as_millis()).unwrap_or(u64::MAX)
}

/// A claim of `key` at `now` with a 60 s lease.
pub fn request_at(key: &StoreKey, now: u64) -> ClaimRequest<'_> {
    ClaimRequest {
        key,
        fingerprint: Fingerprint::of(b"p"),
        now,
        lease_until: now + 60_000,
        durable: false,
        redrive: false,
    }
}

/// Claims `key` at `now`, which must be new: its token.
pub async fn acquire_at(store: &PgStore, key: &StoreKey, now: u64) -> u64 {
    match store.claim(request_at(key, now)).await.expect("claim") {
        Claim::Acquired(lease) => lease.token,
        other => panic!("expected to acquire {key}, got {other:?}"),
    }
}

/// The completion of `key`'s claim `token` as done at `now`, with `state`, kept an hour.
pub fn done_at(key: &StoreKey, token: u64, now: u64, state: StateChanges) -> Completion {
    Completion {
        key: key.clone(),
        token,
        fingerprint: Fingerprint::of(b"p"),
        attempts: 1,
        now,
        origin: None,
        outcome: Final::Done { output: None, emitted: vec![] },
        expires_at: now + 3_600_000,
        state,
    }
}
