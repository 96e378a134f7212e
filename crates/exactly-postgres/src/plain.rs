//! Completions that write no state (a handler that only needs deduplication): two round
//! trips per group instead of five. The first sends `BEGIN`, the transaction's id and one
//! `UPDATE` that checks each claim's token itself (pipelined: tokio-postgres sends all
//! three before reading an answer); the second sends `COMMIT`. With state, a group needs
//! its values read and checked first (complete.rs).

use exactly_core::store::{Committed, Completion};
use exactly_core::{Error, Result};

use crate::complete::{Outcome, Records};
use crate::store::Shared;

impl Shared {
    pub(crate) async fn commit_plain(&self, completions: &[&Completion]) -> Result<Vec<Committed>, Outcome> {
        let db = |e| crate::error::db("complete", e);
        let mut records = Records::default();
        let mut tokens = Vec::with_capacity(completions.len());
        for c in completions {
            records.push(c).map_err(Outcome::NotCommitted)?;
            tokens.push(i64::try_from(c.token).unwrap_or(i64::MAX));
        }
        let client = self.pool.get().await.map_err(|e| crate::error::pool("complete", e))?;
        // Prepared before the pipeline: a statement still to prepare would take its own
        // round trip and fall out of order.
        let (txid_stmt, update) = match tokio::try_join!(
            client.prepare_cached("SELECT txid_current()"),
            client.prepare_cached(&self.sql.complete_plain),
        ) {
            Ok(s) => s,
            Err(e) => return Err(Outcome::NotCommitted(db(e))),
        };
        let mut params = records.columns();
        params.push(&tokens);
        let (begun, txid, done) = tokio::join!(
            client.batch_execute("BEGIN"),
            client.query_one(&txid_stmt, &[]),
            client.query(&update, &params),
        );
        let (txid, done) = match (begun, txid, done) {
            (Ok(()), Ok(txid), Ok(done)) => (txid.get::<_, i64>(0), done),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                // Never back in the pool in the middle of a transaction.
                drop(deadpool_postgres::Object::take(client));
                return Err(Outcome::NotCommitted(db(e)));
            }
        };
        let applied: Vec<Vec<u8>> = done.iter().map(|row| row.get(0)).collect();
        let decided = completions
            .iter()
            .map(|c| match applied.iter().any(|k| k.as_slice() == c.key.as_bytes()) {
                true => Committed::Ok,
                // Its claim was taken over (or the key is done already): nothing written.
                false => Committed::Fenced,
            })
            .collect();
        match client.batch_execute("COMMIT").await {
            Ok(()) => Ok(decided),
            Err(e) => {
                drop(deadpool_postgres::Object::take(client));
                self.settle_lost_commit(txid, db(e)).await.map(|()| decided)
            }
        }
    }
}

/// The statement: the columns of `write_records`, then each claim's token.
pub(crate) fn update_sql(s: &str, bucket_ms: i64, in_flight: i16) -> String {
    format!(
        "UPDATE {s}.records t SET state = u.state, fingerprint = u.fingerprint, attempts = u.attempts,
             output = u.output, emitted = u.emitted, reason = u.reason, origin = u.origin,
             updated_at = u.updated_at, expires_at = u.expires_at, bucket = u.expires_at / {bucket_ms},
             lease_until = 0, first_error = NULL, last_error = NULL, wrote = u.wrote
         FROM unnest($1::bytea[], $2::int2[], $3::bytea[], $4::int4[], $5::bytea[], $6::bytea[],
                     $7::text[], $8::text[], $9::int8[], $10::int8[], $11::bytea[], $12::int8[])
             AS u(skey, state, fingerprint, attempts, output, emitted, reason, origin, updated_at, expires_at, wrote,
                  token)
         WHERE t.skey = u.skey AND t.token = u.token AND t.state = {in_flight}
         RETURNING t.skey"
    )
}

impl From<Error> for Outcome {
    fn from(e: Error) -> Self {
        Outcome::NotCommitted(e)
    }
}
