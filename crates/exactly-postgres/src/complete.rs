//! Completions and state commits: one transaction per group.
//!
//! In the transaction: the state keys any of them reads or writes are locked (advisory
//! locks by hash, in one order), their values read, the claimed rows locked; then each
//! write is decided in order (fenced if its claim was taken over, a conflict if a value
//! its handler read has changed, else applied to what the next one sees); then the
//! decided ones are written and the transaction committed. A commit whose answer is lost
//! is an unknown outcome: the transaction's id is looked up before anything is decided.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::GenericClient;
use exactly_core::store::{Committed, Completion, Final, StateChanges};
use exactly_core::{Error, Result};

use crate::batch::{Group, Job, copy};
use crate::row::{encode_list, ms, text};
use crate::sql::{DEAD_LETTERED, DONE, IN_FLIGHT};
use crate::store::Shared;

/// What a group commits.
#[derive(Debug)]
pub(crate) enum Write {
    /// A claim ended for good, with its state writes.
    Complete(Completion),
    /// State writes and meta values without a claim.
    State { state: StateChanges, meta: Vec<(String, Bytes)> },
}

/// Groups whose transaction failed before it could commit are run again, this many times.
const ATTEMPTS: u32 = 3;

impl Group<Write, Committed> for Shared {
    async fn run(self: Arc<Self>, jobs: Vec<Job<Write, Committed>>) {
        let writes: Vec<&Write> = jobs.iter().map(|(w, _)| w).collect();
        // A group that writes no state (nor outbox rows) needs no values read or checked.
        let emits = |c: &Completion| matches!(&c.outcome, Final::Done { emitted, .. } if !emitted.is_empty());
        let plain: Option<Vec<&Completion>> = writes
            .iter()
            .map(|w| match w {
                Write::Complete(c)
                    if c.state.reads.is_empty() && c.state.writes.is_empty() && !(self.outbox && emits(c)) =>
                {
                    Some(c)
                }
                _ => None,
            })
            .collect();
        let mut attempt = 1;
        let result = loop {
            let run = match &plain {
                Some(completions) => self.commit_plain(completions).await,
                None => self.commit_group(&writes).await,
            };
            match run {
                Err(Outcome::NotCommitted(e)) if e.is_transient() && attempt < ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "the group's transaction failed; running it again");
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(Outcome::NotCommitted(e) | Outcome::Unknown(e)) => break Err(e),
                Ok(decided) => break Ok(decided),
            }
        };
        match result {
            Ok(decided) => {
                self.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for ((write, tx), committed) in jobs.into_iter().zip(decided) {
                    if let Write::Complete(c) = &write {
                        self.ended(1);
                        if committed == Committed::Ok {
                            self.remember(c);
                        }
                    }
                    let _ = tx.send(Ok(committed));
                }
            }
            Err(e) => {
                for (_, tx) in jobs {
                    let _ = tx.send(Err(copy(&e)));
                }
            }
        }
    }
}

/// How a group's transaction failed.
pub(crate) enum Outcome {
    /// Nothing was committed: the group may run again.
    NotCommitted(Error),
    /// The commit was sent and its answer lost, and the transaction's fate could not be
    /// read either: the callers must not assume either way.
    Unknown(Error),
}

/// The row of a claimed key, as locked in the transaction.
struct Row {
    token: i64,
    state: i16,
}

impl Shared {
    async fn commit_group(&self, writes: &[&Write]) -> Result<Vec<Committed>, Outcome> {
        let db = |e| crate::error::db("complete", e);
        let mut client = self.pool.get().await.map_err(|e| crate::error::pool("complete", e))?;
        let tx = client.transaction().await.map_err(db)?;
        let (txid, decided) = self.decide(&tx, writes, None).await?;
        match tx.commit().await {
            Ok(()) => Ok(decided),
            Err(e) => {
                drop(client);
                self.settle_lost_commit(txid, db(e)).await.map(|()| decided)
            }
        }
    }

    /// Decides each write in transaction `tx` (whose id is `txid`, when known) and writes
    /// the ones that take effect, short of committing: returns the transaction's id and
    /// what was decided.
    pub(crate) async fn decide<C: GenericClient>(
        &self,
        tx: &C,
        writes: &[&Write],
        txid: Option<i64>,
    ) -> Result<(i64, Vec<Committed>), Outcome> {
        let db = |e| crate::error::db("complete", e);
        let txid = match txid {
            Some(id) => id,
            None => {
                let stmt = tx.prepare_cached("SELECT txid_current()").await.map_err(db)?;
                tx.query_one(&stmt, &[]).await.map_err(db)?.get(0)
            }
        };

        // The state every write reads or writes, locked, then read.
        let mut state_keys: Vec<&[u8]> = writes
            .iter()
            .flat_map(|w| {
                let s = state_of(w);
                s.reads.iter().map(|(k, _)| k.as_slice()).chain(s.writes.iter().map(|(k, _)| k.as_slice()))
            })
            .collect();
        state_keys.sort_unstable();
        state_keys.dedup();
        let mut values: HashMap<Vec<u8>, Option<Bytes>> = HashMap::new();
        if !state_keys.is_empty() {
            let mut hashes: Vec<i32> = state_keys.iter().map(|k| key_hash(k)).collect();
            hashes.sort_unstable();
            hashes.dedup();
            let lock = tx.prepare_cached(&self.sql.lock_state).await.map_err(db)?;
            tx.execute(&lock, &[&hashes]).await.map_err(db)?;
            let read = tx.prepare_cached(&self.sql.read_state).await.map_err(db)?;
            for row in tx.query(&read, &[&state_keys]).await.map_err(db)? {
                values.insert(row.get(0), Some(Bytes::from(row.get::<_, Vec<u8>>(1))));
            }
        }

        // The claimed rows, locked in key order.
        let mut skeys: Vec<&[u8]> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Complete(c) => Some(c.key.as_bytes()),
                Write::State { .. } => None,
            })
            .collect();
        skeys.sort_unstable();
        skeys.dedup();
        let mut rows: HashMap<Vec<u8>, Row> = HashMap::new();
        if !skeys.is_empty() {
            let lock = tx.prepare_cached(&self.sql.lock_rows).await.map_err(db)?;
            for r in tx.query(&lock, &[&skeys]).await.map_err(db)? {
                rows.insert(r.get(0), Row { token: r.get(1), state: r.get(2) });
            }
        }

        // Each write decided in order, on what the ones before it left.
        let mut decided = Vec::with_capacity(writes.len());
        let mut records = Records::default();
        let mut meta: Vec<(&str, &[u8])> = Vec::new();
        for w in writes {
            if let Write::Complete(c) = w {
                let held = rows
                    .get(c.key.as_bytes())
                    .is_some_and(|r| r.state == IN_FLIGHT && r.token.unsigned_abs() == c.token);
                if !held {
                    decided.push(Committed::Fenced);
                    continue;
                }
            }
            let state = state_of(w);
            let current = |k: &Vec<u8>| values.get(k).cloned().unwrap_or(None);
            if state.reads.iter().any(|(k, seen)| current(k) != *seen) {
                decided.push(Committed::Conflict);
                continue;
            }
            for (k, v) in &state.writes {
                values.insert(k.clone(), v.clone());
            }
            match w {
                Write::Complete(c) => {
                    records.push(c).map_err(Outcome::NotCommitted)?;
                    if let Some(r) = rows.get_mut(c.key.as_bytes()) {
                        r.state = DONE;
                    }
                }
                Write::State { meta: m, .. } => meta.extend(m.iter().map(|(n, v)| (n.as_str(), v.as_ref()))),
            }
            decided.push(Committed::Ok);
        }

        // The decided writes, then the commit.
        let written: Vec<&[u8]> = decided
            .iter()
            .zip(writes)
            .filter(|(d, _)| **d == Committed::Ok)
            .flat_map(|(_, w)| state_of(w).writes.iter().map(|(k, _)| k.as_slice()))
            .collect();
        let (mut put_keys, mut put_values, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
        for k in written {
            match values.get(k).cloned().flatten() {
                Some(v) if !put_keys.contains(&k) => {
                    put_keys.push(k);
                    put_values.push(v);
                }
                None if !deletes.contains(&k) => deletes.push(k),
                _ => {}
            }
        }
        let put_values: Vec<&[u8]> = put_values.iter().map(Bytes::as_ref).collect();
        if !records.skeys.is_empty() {
            let stmt = tx.prepare_cached(&self.sql.write_records).await.map_err(db)?;
            tx.execute(&stmt, &records.columns()).await.map_err(db)?;
        }
        if !put_keys.is_empty() {
            let stmt = tx.prepare_cached(&self.sql.write_state).await.map_err(db)?;
            tx.execute(&stmt, &[&put_keys, &put_values]).await.map_err(db)?;
        }
        if !deletes.is_empty() {
            let stmt = tx.prepare_cached(&self.sql.delete_state).await.map_err(db)?;
            tx.execute(&stmt, &[&deletes]).await.map_err(db)?;
        }
        if !meta.is_empty() {
            let (names, values): (Vec<&str>, Vec<&[u8]>) = meta.into_iter().unzip();
            let stmt = tx.prepare_cached(&self.sql.meta_put).await.map_err(db)?;
            tx.execute(&stmt, &[&names, &values]).await.map_err(db)?;
        }
        if self.outbox {
            let done = decided.iter().zip(writes).filter(|(d, _)| **d == Committed::Ok).map(|(_, w)| *w);
            self.write_outbox(tx, done).await?;
        }
        Ok((txid, decided))
    }

    /// Writes the records the completions among `writes` emitted to the outbox.
    async fn write_outbox<'w, C: GenericClient>(
        &self,
        tx: &C,
        writes: impl Iterator<Item = &'w Write>,
    ) -> Result<(), Outcome> {
        let (mut sources, mut records, mut at): (Vec<&[u8]>, Vec<Vec<u8>>, Vec<i64>) = Default::default();
        for w in writes {
            if let Write::Complete(c) = w
                && let Final::Done { emitted, .. } = &c.outcome
            {
                for r in emitted {
                    let encoded = postcard::to_stdvec(r)
                        .map_err(|e| Outcome::NotCommitted(Error::StoreIo { operation: "encode", source: e.into() }))?;
                    sources.push(c.key.as_bytes());
                    records.push(encoded);
                    at.push(ms(c.now));
                }
            }
        }
        if sources.is_empty() {
            return Ok(());
        }
        let db = |e| crate::error::db("complete", e);
        let stmt = tx.prepare_cached(&self.sql.outbox_insert).await.map_err(db)?;
        tx.execute(&stmt, &[&sources, &records, &at]).await.map_err(db)?;
        Ok(())
    }

    /// A `COMMIT` of transaction `txid` failed with `e`: whether it committed after all.
    pub(crate) async fn settle_lost_commit(&self, txid: i64, e: Error) -> Result<(), Outcome> {
        match self.fate(txid).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Outcome::NotCommitted(e)),
            Err(unknown) => {
                tracing::warn!(error = %unknown, txid, "a commit's answer was lost and its fate cannot be read");
                Err(Outcome::Unknown(e))
            }
        }
    }

    /// Whether transaction `txid` committed, asked on another connection (waiting while
    /// the server still finishes it).
    async fn fate(&self, txid: i64) -> Result<bool> {
        for _ in 0..50 {
            let client = self.pool.get().await.map_err(|e| crate::error::pool("read a commit's fate", e))?;
            let row = client
                .query_one("SELECT txid_status($1)", &[&txid])
                .await
                .map_err(|e| crate::error::db("read a commit's fate", e))?;
            match row.get::<_, Option<String>>(0).as_deref() {
                Some("committed") => return Ok(true),
                Some("in progress") => tokio::time::sleep(Duration::from_millis(20)).await,
                _ => return Ok(false),
            }
        }
        Err(Error::StoreUnavailable {
            operation: "read a commit's fate",
            reason: format!("transaction {txid} is still in progress"),
        })
    }

    /// Caches a done key, so its duplicates are answered here.
    pub(crate) fn remember(&self, c: &Completion) {
        if let Final::Done { output, emitted } = &c.outcome {
            self.cache.insert(
                c.key.as_bytes(),
                crate::cache::Done {
                    fingerprint: c.fingerprint,
                    output: output.clone(),
                    emitted: emitted.clone(),
                    origin: c.origin.clone(),
                    expires_at: c.expires_at,
                },
            );
        }
    }
}

fn state_of(w: &Write) -> &StateChanges {
    match w {
        Write::Complete(c) => &c.state,
        Write::State { state, .. } => state,
    }
}

/// A state key's advisory lock (FNV-1a of its bytes).
fn key_hash(key: &[u8]) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(h.to_ne_bytes())
}

/// The columns of the records a group writes, one array each.
#[derive(Default)]
pub(crate) struct Records<'a> {
    pub(crate) skeys: Vec<&'a [u8]>,
    pub(crate) states: Vec<i16>,
    pub(crate) fingerprints: Vec<&'a [u8]>,
    pub(crate) attempts: Vec<i32>,
    pub(crate) outputs: Vec<Option<&'a [u8]>>,
    pub(crate) emitted: Vec<Option<Vec<u8>>>,
    pub(crate) reasons: Vec<Option<String>>,
    pub(crate) origins: Vec<Option<String>>,
    pub(crate) updated_at: Vec<i64>,
    pub(crate) expires_at: Vec<i64>,
    pub(crate) wrote: Vec<Option<Vec<u8>>>,
}

/// A statement parameter.
pub(crate) type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);

impl<'a> Records<'a> {
    /// The columns as the parameters `$1` to `$11` of `write_records` and `complete_plain`.
    pub(crate) fn columns(&self) -> Vec<Param<'_>> {
        vec![
            &self.skeys,
            &self.states,
            &self.fingerprints,
            &self.attempts,
            &self.outputs,
            &self.emitted,
            &self.reasons,
            &self.origins,
            &self.updated_at,
            &self.expires_at,
            &self.wrote,
        ]
    }

    pub(crate) fn push(&mut self, c: &'a Completion) -> Result<()> {
        let (state, output, emitted, reason) = match &c.outcome {
            Final::Done { output, emitted } => (DONE, output.as_deref(), encode_list(emitted)?, None),
            Final::DeadLettered { reason } => (DEAD_LETTERED, None, None, Some(text(reason))),
        };
        self.skeys.push(c.key.as_bytes());
        self.states.push(state);
        self.fingerprints.push(&c.fingerprint.0);
        self.attempts.push(i32::try_from(c.attempts).unwrap_or(i32::MAX));
        self.outputs.push(output);
        self.emitted.push(emitted);
        self.reasons.push(reason);
        self.origins.push(c.origin.as_deref().map(text));
        self.updated_at.push(ms(c.now));
        self.expires_at.push(ms(c.expires_at));
        self.wrote.push(encode_list(&c.state.written_in(c.key.namespace()))?);
        Ok(())
    }
}
