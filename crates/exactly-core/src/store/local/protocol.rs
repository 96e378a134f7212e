//! [`DedupStore`] for a [`LocalStore`]: claims, renewals, releases, completions, reads.

use async_trait::async_trait;
use bytes::Bytes;

#[cfg(not(exactly_loom))]
use super::HOLDER_WAIT;
use super::{AppliedWrite, KvBackend, LocalStore, Look, OnDurable, WriteBatch};
use crate::Result;
use crate::clock::Millis;
use crate::store::layout::{self, StoreKey};
use crate::store::leases::{Entry, Held};
use crate::store::purge;
use crate::store::record::{Record, RecordState};
use crate::store::{
    Claim, ClaimRequest, Committed, Completion, DedupStore, Durable, FencingToken, Final, PurgeReport, RecordView,
    StagedCompletion, StateChanges, StoreStats,
};

fn state_batch(state: StateChanges) -> WriteBatch {
    WriteBatch { expect: state.reads, ops: state.writes, expiring: vec![] }
}

#[async_trait]
impl<B: KvBackend> DedupStore for LocalStore<B> {
    async fn claim(&self, req: ClaimRequest<'_>) -> Result<Claim> {
        // A copy of a key another delivery holds waits for that claim to end (normally
        // a handler run and one group commit) and is then answered from the record,
        // rather than sent back to retry later.
        #[cfg(not(exactly_loom))]
        let deadline = tokio::time::Instant::now() + HOLDER_WAIT;
        loop {
            match self.claim_once(req).await? {
                Look::Answer(claim) => return Ok(claim),
                // Loom's model has no timers: there the wait ends only when the claim does.
                // The yield lets loom end the claim between the look and the wait.
                #[cfg(exactly_loom)]
                Look::Wait { ended, .. } => {
                    loom::thread::yield_now();
                    ended.await
                }
                #[cfg(not(exactly_loom))]
                Look::Wait { lease_until, ended } => {
                    if tokio::time::timeout_at(deadline, ended).await.is_err() {
                        return Ok(Claim::Busy { lease_until });
                    }
                }
            }
        }
    }

    async fn renew(&self, key: &StoreKey, token: FencingToken, lease_until: Millis) -> Result<bool> {
        Ok(match self.leases.lock(key).get_mut(key) {
            Some(Entry::Held(h)) if h.token == token => {
                h.lease_until = h.lease_until.max(lease_until);
                true
            }
            Some(Entry::Completing(h)) => h.token == token,
            _ => false,
        })
    }

    async fn release(&self, key: &StoreKey, token: FencingToken, attempts: u32, error: Option<String>) -> Result<()> {
        let durable = {
            let mut shard = self.leases.lock(key);
            let Some(Entry::Held(h)) = shard.get(key) else {
                return Ok(());
            };
            if h.token != token {
                return Ok(());
            }
            let durable = h.durable;
            let first_error = h.first_error.clone().or_else(|| error.clone());
            h.wake();
            shard.insert(key.clone(), Entry::Idle { attempts, first_error, last_error: error });
            durable
        };
        if durable {
            // Remove our in-flight record, unless a newer claim has replaced it already.
            let rk = layout::record_key(key);
            if let Some(raw) = self.backend.get(&rk)?
                && matches!(Record::decode(key, &raw)?.state, RecordState::InFlight { token: t, .. } if t == token)
            {
                self.backend
                    .commit(WriteBatch {
                        expect: vec![(rk.clone(), Some(raw))],
                        ops: vec![(rk, None)],
                        expiring: vec![],
                    })
                    .await?;
            }
        }
        Ok(())
    }

    async fn complete_staged(&self, c: Completion) -> Result<StagedCompletion> {
        let held = {
            let mut shard = self.leases.lock(&c.key);
            match shard.get(&c.key) {
                Some(Entry::Held(h)) if h.token == c.token => {
                    let h = h.clone();
                    shard.insert(c.key.clone(), Entry::Completing(h.clone()));
                    h
                }
                _ => return Ok(StagedCompletion { committed: Committed::Fenced, durable: Durable::ready() }),
            }
        };
        let state = match c.outcome {
            Final::Done { output, emitted } => RecordState::Done { output, emitted },
            Final::DeadLettered { reason } => RecordState::DeadLettered { reason },
        };
        let record = Record {
            state,
            fingerprint: c.fingerprint,
            attempts: c.attempts,
            updated_at: c.now,
            expires_at: c.expires_at,
            origin: c.origin,
            wrote: c.state.written_in(c.key.namespace()),
        };
        let mut batch = state_batch(c.state);
        batch.ops.push((layout::record_key(&c.key), Some(Bytes::from(record.encode()?))));
        batch.expiring.push((layout::bucket_end(c.expires_at, self.bucket_width), c.key.clone()));
        // The claim stays "completing" (duplicates wait) until the record is durable.
        let (leases, key, token) = (self.leases.clone(), c.key.clone(), c.token);
        let on_durable: OnDurable = Box::new(move |_durable| {
            let mut shard = leases.lock(&key);
            if matches!(shard.get(&key), Some(Entry::Completing(h)) if h.token == token)
                && let Some(entry) = shard.remove(&key)
            {
                entry.wake();
            }
        });
        // Without state, nothing can conflict and nobody reads it back under a lock: do
        // not wait for it to be applied.
        let result = if batch.expect.is_empty() && batch.ops.len() == 1 {
            self.backend.submit(batch, Some(on_durable)).await.map(|durable| AppliedWrite { applied: true, durable })
        } else {
            self.backend.stage(batch, Some(on_durable)).await
        };
        if !matches!(result, Ok(AppliedWrite { applied: true, .. })) {
            // Back to held: whoever waits keeps waiting for this claim to end.
            let mut shard = self.leases.lock(&c.key);
            if let Some(Entry::Completing(h)) = shard.get(&c.key)
                && h.token == c.token
            {
                let waiters = h.waiters.clone();
                shard.insert(c.key, Entry::Held(Held { waiters, ..held }));
            }
        }
        match result? {
            AppliedWrite { applied: true, durable } => Ok(StagedCompletion { committed: Committed::Ok, durable }),
            AppliedWrite { applied: false, .. } => {
                Ok(StagedCompletion { committed: Committed::Conflict, durable: Durable::ready() })
            }
        }
    }

    async fn stage_state(&self, state: StateChanges, meta: Vec<(String, Bytes)>) -> Result<StagedCompletion> {
        let mut batch = state_batch(state);
        let locked = !batch.expect.is_empty() || !batch.ops.is_empty();
        batch.ops.extend(meta.into_iter().map(|(name, value)| (layout::meta_key(&name), Some(value))));
        if batch.ops.is_empty() {
            return Ok(StagedCompletion { committed: Committed::Ok, durable: Durable::ready() });
        }
        if !locked {
            let durable = self.backend.submit(batch, None).await?;
            return Ok(StagedCompletion { committed: Committed::Ok, durable });
        }
        let staged = self.backend.stage(batch, None).await?;
        Ok(StagedCompletion {
            committed: if staged.applied { Committed::Ok } else { Committed::Conflict },
            durable: staged.durable,
        })
    }

    async fn commit_state(&self, state: StateChanges) -> Result<Committed> {
        if state.writes.is_empty() {
            return Ok(Committed::Ok);
        }
        Ok(if self.backend.commit(state_batch(state)).await? { Committed::Ok } else { Committed::Conflict })
    }

    async fn state_get(&self, state_key: &[u8]) -> Result<Option<Bytes>> {
        self.backend.get(state_key)
    }

    async fn state_list(
        &self,
        prefix: Option<&[u8]>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>> {
        self.list_state(prefix, after, limit)
    }

    async fn meta_get(&self, name: &str) -> Result<Option<Bytes>> {
        self.backend.get(&layout::meta_key(name))
    }

    async fn meta_list(&self) -> Result<Vec<(String, Bytes)>> {
        self.list_meta()
    }

    async fn meta_put(&self, name: &str, value: Bytes) -> Result<()> {
        self.backend
            .commit(WriteBatch { ops: vec![(layout::meta_key(name), Some(value))], ..WriteBatch::default() })
            .await?;
        Ok(())
    }

    async fn purge_expired(&self, now: Millis, budget: usize) -> Result<PurgeReport> {
        let (batch, report) =
            crate::runtime::blocking(|| purge::collect(&self.backend, self.bucket_width, now, budget))?;
        if !batch.ops.is_empty() && !self.backend.commit(batch).await? {
            // A record was rewritten while we looked; the next pass will see it again.
            return Ok(PurgeReport { records_removed: 0, more: true, ..report });
        }
        Ok(report)
    }

    async fn inspect(&self, key: &StoreKey) -> Result<Option<RecordView>> {
        Ok(self.record(key)?.map(|r| r.view(key.clone())))
    }

    async fn list(&self, prefix: Option<&StoreKey>, after: Option<&StoreKey>, limit: usize) -> Result<Vec<RecordView>> {
        match prefix {
            Some(p) => self.list_prefix(p, after, limit),
            None => self.list_all(after, limit),
        }
    }

    async fn forget(&self, key: &StoreKey) -> Result<bool> {
        self.forget_key(key).await
    }

    async fn import(&self, record: RecordView) -> Result<()> {
        self.import_record(record).await
    }

    async fn flush(&self) -> Result<()> {
        self.backend.flush().await
    }

    fn sweeper_slot(&self) -> Option<&crate::store::SweeperSlot> {
        Some(&self.sweeper)
    }

    fn stats(&self) -> StoreStats {
        let (in_flight, waiting_retry) = self.leases.counts();
        let b = self.backend.stats();
        StoreStats {
            in_flight,
            waiting_retry,
            commits: b.commits,
            fsyncs: b.fsyncs,
            disk_bytes: b.disk_bytes,
            filter_builds: b.filter_builds,
        }
    }
}
