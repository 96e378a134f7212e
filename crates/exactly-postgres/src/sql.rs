//! The statements, written once per store with its schema's name in them.
//!
//! Record states (`records.state`): 0 a live or abandoned claim, 1 released after a
//! failure (keeps its attempts and errors for the next claim), 2 done, 3 dead-lettered.

pub(crate) const IN_FLIGHT: i16 = 0;
pub(crate) const RELEASED: i16 = 1;
pub(crate) const DONE: i16 = 2;
pub(crate) const DEAD_LETTERED: i16 = 3;

/// How long a claim's row is kept after its lease ends when nobody completes it
/// (a crashed holder whose message never comes back): then the sweeper removes it.
pub(crate) const ABANDONED_CLAIM_TTL_MS: i64 = 7 * 24 * 3_600_000;

/// The statements of one store.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) claim: String,
    pub(crate) redrive: String,
    pub(crate) renew: String,
    pub(crate) release: String,
    pub(crate) lock_rows: String,
    pub(crate) write_records: String,
    pub(crate) complete_plain: String,
    pub(crate) read_state: String,
    pub(crate) lock_state: String,
    pub(crate) write_state: String,
    pub(crate) delete_state: String,
    pub(crate) state_get: String,
    pub(crate) meta_get: String,
    pub(crate) state_list: String,
    pub(crate) meta_list: String,
    pub(crate) meta_put: String,
    pub(crate) meta_advance: String,
    pub(crate) outbox_insert: String,
    pub(crate) relay_lock: String,
    pub(crate) outbox_take: String,
    pub(crate) outbox_delete: String,
    pub(crate) outbox_backlog: String,
    pub(crate) purge: String,
    pub(crate) inspect: String,
    pub(crate) list: String,
    pub(crate) forget: String,
    pub(crate) import: String,
}

/// The columns a record is read back with, in the order `row::record` reads them.
pub(crate) const RECORD_COLUMNS: &str =
    "skey, state, token, holder, fingerprint, attempts, output, emitted, reason, origin, updated_at, expires_at, wrote";

impl Sql {
    /// The statements for the (already quoted) schema `s`, its advisory-lock class
    /// `class` and expiry buckets `bucket_ms` wide.
    pub(crate) fn new(s: &str, class: i32, bucket_ms: i64) -> Self {
        Self {
            // One statement claims a group of keys: a key that is new, released, or held
            // by a claim whose lease ran out or whose holder's session is gone is taken
            // (with a new token); for every other key the row is read back as it was.
            // Keys come sorted, so two groups lock rows in the same order.
            claim: format!(
                "WITH req AS (
                    SELECT * FROM unnest($1::bytea[], $2::text[], $3::bytea[], $4::int8[], $5::int8[])
                        AS r(skey, namespace, fingerprint, now, lease_until)
                 ), claimed AS (
                    INSERT INTO {s}.records AS t
                        (skey, namespace, state, token, holder, lease_until, orphaned, fingerprint, attempts,
                         updated_at, expires_at, bucket)
                    SELECT skey, namespace, {IN_FLIGHT}, nextval('{s}.fencing_tokens'), $6, lease_until, false,
                           fingerprint, 0, now, lease_until + {ABANDONED_CLAIM_TTL_MS},
                           (lease_until + {ABANDONED_CLAIM_TTL_MS}) / {bucket_ms}
                    FROM req ORDER BY skey
                    ON CONFLICT (skey) DO UPDATE SET
                        state = {IN_FLIGHT}, token = EXCLUDED.token, holder = EXCLUDED.holder,
                        lease_until = EXCLUDED.lease_until, orphaned = (t.state = {IN_FLIGHT}),
                        fingerprint = EXCLUDED.fingerprint, updated_at = EXCLUDED.updated_at,
                        expires_at = EXCLUDED.expires_at, bucket = EXCLUDED.bucket
                    WHERE CASE
                        WHEN t.state = {RELEASED} THEN true
                        WHEN t.state <> {IN_FLIGHT} THEN false
                        WHEN t.lease_until <= EXCLUDED.updated_at THEN true
                        ELSE NOT EXISTS (SELECT 1 FROM pg_locks l
                            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                              AND l.classid = {class}::oid AND l.objid = t.holder::oid
                              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))
                    END
                    RETURNING t.skey, t.token, t.attempts, t.first_error, t.last_error, t.orphaned
                 )
                 SELECT true, c.skey, c.token, c.attempts, c.first_error, c.last_error, c.orphaned,
                        NULL::int2, NULL::bytea, NULL::bytea, NULL::bytea, NULL::text, NULL::text, NULL::int8,
                        NULL::int8
                 FROM claimed c
                 UNION ALL
                 SELECT false, r.skey, r.token, r.attempts, NULL, NULL, false,
                        r.state, r.fingerprint, r.output, r.emitted, r.reason, r.origin, r.lease_until,
                        r.expires_at
                 FROM {s}.records r
                 WHERE r.skey = ANY(ARRAY(SELECT skey FROM req EXCEPT SELECT skey FROM claimed))"
            ),
            // A message re-driven from the dead-letter destination: the mark is cleared,
            // and the claim that follows starts from no attempts.
            redrive: format!(
                "UPDATE {s}.records SET state = {RELEASED}, attempts = 0, first_error = NULL, last_error = NULL,
                     reason = NULL, lease_until = 0
                 WHERE skey = ANY($1) AND state = {DEAD_LETTERED}"
            ),
            renew: format!(
                "UPDATE {s}.records SET lease_until = GREATEST(lease_until, $3)
                 WHERE skey = $1 AND token = $2 AND state = {IN_FLIGHT}"
            ),
            release: format!(
                "UPDATE {s}.records SET state = {RELEASED}, attempts = $3, first_error = COALESCE(first_error, $4),
                     last_error = $4, lease_until = 0
                 WHERE skey = $1 AND token = $2 AND state = {IN_FLIGHT}"
            ),
            lock_rows: format!(
                "SELECT skey, token, state FROM {s}.records WHERE skey = ANY($1) ORDER BY skey FOR UPDATE"
            ),
            write_records: format!(
                "UPDATE {s}.records t SET state = u.state, fingerprint = u.fingerprint, attempts = u.attempts,
                     output = u.output, emitted = u.emitted, reason = u.reason, origin = u.origin,
                     updated_at = u.updated_at, expires_at = u.expires_at, bucket = u.expires_at / {bucket_ms},
                     lease_until = 0, first_error = NULL, last_error = NULL, wrote = u.wrote
                 FROM unnest($1::bytea[], $2::int2[], $3::bytea[], $4::int4[], $5::bytea[], $6::bytea[],
                             $7::text[], $8::text[], $9::int8[], $10::int8[], $11::bytea[])
                     AS u(skey, state, fingerprint, attempts, output, emitted, reason, origin, updated_at, expires_at,
                          wrote)
                 WHERE t.skey = u.skey"
            ),
            complete_plain: crate::plain::update_sql(s, bucket_ms, IN_FLIGHT),
            read_state: format!("SELECT key, value FROM {s}.state WHERE key = ANY($1)"),
            // State keys are locked by hash before any row: a key that does not exist yet
            // is locked as well as one that does. The hashes come sorted and distinct, and
            // unnest yields them in order, so every transaction takes them in one order.
            lock_state: format!("SELECT pg_advisory_xact_lock({class} + 1, h) FROM unnest($1::int4[]) AS h"),
            write_state: format!(
                "INSERT INTO {s}.state (key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[])
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ),
            delete_state: format!("DELETE FROM {s}.state WHERE key = ANY($1)"),
            state_get: format!("SELECT value FROM {s}.state WHERE key = $1"),
            meta_get: format!("SELECT value FROM {s}.meta WHERE name = $1"),
            state_list: format!(
                "SELECT key, value FROM {s}.state
                 WHERE key >= $1 AND ($2::bytea IS NULL OR key < $2) AND ($3::bytea IS NULL OR key > $3)
                 ORDER BY key LIMIT $4"
            ),
            meta_list: format!("SELECT name, value FROM {s}.meta ORDER BY name"),
            meta_put: format!(
                "INSERT INTO {s}.meta (name, value) SELECT * FROM unnest($1::text[], $2::bytea[])
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
            ),
            // Positions (big-endian offsets, so byte order is number order) only move
            // forward: a name not returned was at or past its new value already.
            meta_advance: format!(
                "INSERT INTO {s}.meta AS m (name, value) SELECT * FROM unnest($1::text[], $2::bytea[])
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value WHERE m.value < EXCLUDED.value
                 RETURNING name"
            ),
            outbox_insert: format!(
                "INSERT INTO {s}.outbox (source, record, created_at)
                 SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::int8[])"
            ),
            // One relay at a time across instances, for as long as its transaction lasts.
            relay_lock: format!("SELECT pg_try_advisory_xact_lock({class}, 2)"),
            outbox_take: format!("SELECT id, record FROM {s}.outbox ORDER BY id LIMIT $1"),
            outbox_delete: format!("DELETE FROM {s}.outbox WHERE id = ANY($1)"),
            outbox_backlog: format!("SELECT count(*), min(created_at) FROM {s}.outbox"),
            // Bounded by the budget, through the bucket index; rows another transaction
            // holds are skipped, not waited for (they are not expired for it).
            purge: format!(
                "DELETE FROM {s}.records WHERE skey IN (
                    SELECT skey FROM {s}.records
                    WHERE bucket <= $1::int8 / {bucket_ms} AND expires_at <= $1::int8
                      AND (state >= {DONE} OR lease_until <= $1::int8)
                    ORDER BY bucket LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING skey"
            ),
            inspect: format!("SELECT {RECORD_COLUMNS} FROM {s}.records WHERE skey = $1 AND state <> {RELEASED}"),
            list: format!(
                "SELECT {RECORD_COLUMNS} FROM {s}.records
                 WHERE skey >= $1 AND ($2::bytea IS NULL OR skey < $2) AND ($3::bytea IS NULL OR skey > $3)
                   AND state <> {RELEASED}
                 ORDER BY skey LIMIT $4"
            ),
            forget: format!("DELETE FROM {s}.records WHERE skey = $1 RETURNING state"),
            import: format!(
                "INSERT INTO {s}.records (skey, namespace, state, token, holder, lease_until, fingerprint, attempts,
                     output, emitted, reason, origin, updated_at, expires_at, bucket, wrote)
                 VALUES ($1, $2, $3, $4, $5, 0, $6, $7, $8, $9, $10, $11, $12, $13::int8, $13::int8 / {bucket_ms},
                         $14)
                 ON CONFLICT (skey) DO UPDATE SET state = EXCLUDED.state, token = EXCLUDED.token,
                     holder = EXCLUDED.holder, lease_until = 0, fingerprint = EXCLUDED.fingerprint,
                     attempts = EXCLUDED.attempts, output = EXCLUDED.output, emitted = EXCLUDED.emitted,
                     reason = EXCLUDED.reason, origin = EXCLUDED.origin, updated_at = EXCLUDED.updated_at,
                     expires_at = EXCLUDED.expires_at, bucket = EXCLUDED.bucket, wrote = EXCLUDED.wrote"
            ),
        }
    }
}
