//! The claim/complete protocol over an ordered key-value backend.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

use super::layout::{self, StoreKey};
use super::leases::{Ended, Entry, Held, LeaseTable};
use super::purge;
use super::record::{Record, RecordState};
use super::{
    Claim, ClaimRequest, Committed, Completion, DedupStore, FencingToken, Final, Lease, PurgeReport, RecordView,
    StagedCompletion, StateChanges, StoreStats,
};
use crate::clock::Millis;
use crate::{Error, Result};

/// One atomic write: every `expect` must still hold (key has that value, or is absent
/// for `None`), then every `op` is applied (`None` deletes), all or nothing, durably.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    /// Values that must be unchanged for the batch to apply.
    pub expect: Vec<(Vec<u8>, Option<Bytes>)>,
    /// Writes.
    pub ops: Vec<(Vec<u8>, Option<Bytes>)>,
    /// Records that expire, by the end of their expiry bucket. The backend adds them to
    /// the expiry index with [`expiry_index_ops`], one entry per bucket for all the batches
    /// of a group commit.
    pub expiring: Vec<(Millis, StoreKey)>,
}

/// The expiry-index writes for the records expiring in one commit; `commit` must be
/// unique per commit of the store (a group-commit sequence number).
pub fn expiry_index_ops(commit: u64, expiring: &[(Millis, StoreKey)]) -> Vec<(Vec<u8>, Option<Bytes>)> {
    layout::expiry_entries(commit, expiring).into_iter().map(|(k, v)| (k, Some(v))).collect()
}

/// What a backend knows about itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct BackendStats {
    /// Commits made.
    pub commits: u64,
    /// Fsyncs made.
    pub fsyncs: u64,
    /// Bytes on disk.
    pub disk_bytes: Option<u64>,
    /// Filters of done keys built since open; 0 while reads of new keys still go to the
    /// engine (see [`LogOptions::filter_keys`](super::LogOptions::filter_keys)).
    pub filter_builds: u64,
}

/// Runs once a staged write is durable (`true`) or will never be (`false`, the store
/// failed), on whichever thread learns it first. It must be quick.
pub type OnDurable = Box<dyn FnOnce(bool) + Send>;

/// A write applied (visible to reads) and on its way to disk.
#[derive(Debug)]
pub struct Staged {
    /// Every expectation held and the write is applied. When `false` nothing was
    /// written and `durable` resolves at once.
    pub applied: bool,
    /// Resolves once the write is durable.
    pub durable: Durable,
}

/// The moment a staged write becomes durable.
#[derive(Debug)]
#[must_use = "a staged write is only safe to acknowledge once durable"]
pub struct Durable(Answer);

/// Where a [`Durable`] stands.
#[derive(Debug)]
enum Answer {
    /// Waiting for the log's answer.
    Awaited(tokio::sync::oneshot::Receiver<Result<()>>),
    /// Answered (`Ok` too when there was nothing to wait for).
    Given(Result<()>),
}

impl Durable {
    /// Already durable (or nothing to wait for).
    pub fn ready() -> Self {
        Self(Answer::Given(Ok(())))
    }

    /// Durable when `rx` says so.
    pub fn pending(rx: tokio::sync::oneshot::Receiver<Result<()>>) -> Self {
        Self(Answer::Awaited(rx))
    }

    /// Ready once [`Durable::wait`] would return without waiting: lets a caller keep
    /// many of these in a plain queue and poll only the oldest, instead of boxing a
    /// future per write.
    pub fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if let Answer::Awaited(rx) = &mut self.0 {
            let answer = std::task::ready!(std::pin::Pin::new(rx).poll(cx));
            self.0 = Answer::Given(answer.unwrap_or(Err(Error::StoreClosed)));
        }
        std::task::Poll::Ready(())
    }

    /// Waits until the write is durable; an error means it never will be.
    pub async fn wait(self) -> Result<()> {
        match self.0 {
            Answer::Given(answer) => answer,
            Answer::Awaited(rx) => rx.await.unwrap_or(Err(Error::StoreClosed)),
        }
    }
}

/// An ordered key-value store with atomic, durable batches: what a [`LocalStore`] needs.
/// Implemented by the log-backed engines and the in-memory one; a further embedded
/// engine plugs in under [`LogBackend`](super::LogBackend) as an [`Engine`](super::Engine).
#[async_trait]
pub trait KvBackend: Send + Sync + fmt::Debug + 'static {
    /// Reads one value.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>>;
    /// Reads up to `limit` entries with `from <= key < to`, in key order.
    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>>;
    /// Applies a batch atomically if every expectation holds, and returns as soon as it
    /// is visible to reads; [`Staged::durable`] resolves when it is on disk. Writes become
    /// durable in the order they were applied. `on_durable` runs then, if it was applied.
    async fn stage(&self, batch: WriteBatch, on_durable: Option<OnDurable>) -> Result<Staged>;
    /// Queues a batch without expectations and returns at once, before it is applied:
    /// for writes nobody reads back under a lock. It is applied in order with every other
    /// write; [`Durable::wait`] reports a failure.
    async fn submit(&self, batch: WriteBatch, on_durable: Option<OnDurable>) -> Result<Durable> {
        debug_assert!(batch.expect.is_empty(), "submit takes blind writes only");
        Ok(self.stage(batch, on_durable).await?.durable)
    }

    /// Applies a batch atomically and durably; `Ok(false)` when an expectation failed and
    /// nothing was written.
    async fn commit(&self, batch: WriteBatch) -> Result<bool> {
        let staged = self.stage(batch, None).await?;
        if staged.applied {
            staged.durable.wait().await?;
        }
        Ok(staged.applied)
    }
    /// Makes everything committed so far durable (commits already are; this also flushes
    /// caches the engine keeps).
    async fn flush(&self) -> Result<()>;
    /// The number of this open of the store: one more than the last.
    fn epoch(&self) -> u64;
    /// A new fencing token, larger than every one handed out before, across restarts.
    fn next_token(&self) -> Result<FencingToken>;
    /// Counters.
    fn stats(&self) -> BackendStats;
}

/// A [`DedupStore`] for one process: claims in memory, records and state on a
/// [`KvBackend`]. [`SledStore`](super::SledStore) and [`MemoryStore`](super::MemoryStore)
/// are this type over their backends.
pub struct LocalStore<B> {
    pub(crate) backend: B,
    pub(crate) leases: std::sync::Arc<LeaseTable>,
    bucket_width: Millis,
}

/// How long a claim waits for another delivery's claim of the same key to end (its
/// handler to finish and its done-record to be durable) before it answers `Busy` and
/// lets the caller retry later.
#[cfg(not(exactly_loom))]
const HOLDER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What one look at a key found.
enum Look {
    Answer(Claim),
    /// Another delivery holds the key (until `lease_until`) or is completing it.
    Wait {
        #[cfg_attr(exactly_loom, allow(dead_code))]
        lease_until: Millis,
        ended: Ended,
    },
}

impl<B: fmt::Debug> fmt::Debug for LocalStore<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("backend", &self.backend)
            .field("bucket_width_ms", &self.bucket_width)
            .finish()
    }
}

/// The default width of an expiry bucket: one hour.
pub const DEFAULT_BUCKET_WIDTH_MS: Millis = 3_600_000;

impl<B: KvBackend> LocalStore<B> {
    /// A store over a backend, with expiry buckets `bucket_width` milliseconds wide.
    pub fn with_backend(backend: B, bucket_width: Millis) -> Self {
        Self { backend, leases: std::sync::Arc::new(LeaseTable::new()), bucket_width: bucket_width.max(1) }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn record(&self, key: &StoreKey) -> Result<Option<Record>> {
        self.backend.get(&layout::record_key(key))?.map(|raw| Record::decode(key, &raw)).transpose()
    }

    /// Lists records whose namespaced key starts with `prefix` (namespace then key), in
    /// key order, at most `limit`, starting after `after` when given.
    pub fn list(&self, prefix: &StoreKey, after: Option<&StoreKey>, limit: usize) -> Result<Vec<RecordView>> {
        self.list_range(layout::record_key(prefix), after, limit)
    }

    /// Lists records of every namespace, in key order, at most `limit`, starting after
    /// `after` when given.
    pub fn list_all(&self, after: Option<&StoreKey>, limit: usize) -> Result<Vec<RecordView>> {
        self.list_range(vec![layout::RECORD], after, limit)
    }

    fn list_range(&self, start: Vec<u8>, after: Option<&StoreKey>, limit: usize) -> Result<Vec<RecordView>> {
        let end = layout::prefix_end(&start);
        let from = match after {
            Some(a) => {
                let mut k = layout::record_key(a);
                k.push(0);
                k.max(start)
            }
            None => start,
        };
        self.backend
            .range(&from, &end, limit)?
            .into_iter()
            .map(|(raw_key, raw)| {
                let key = StoreKey::from_bytes(&raw_key[1..]).ok_or_else(|| Error::StoreCorrupt {
                    key: format!("{raw_key:?}"),
                    reason: "bad record key".into(),
                })?;
                Ok(Record::decode(&key, &raw)?.view(key))
            })
            .collect()
    }

    /// Removes a key's record and any claim on it, so its next delivery runs the handler
    /// again. For operators fixing a stuck or wrongly recorded key.
    pub async fn forget(&self, key: &StoreKey) -> Result<bool> {
        if let Some(entry) = self.leases.lock(key).remove(key) {
            entry.wake();
        }
        let rk = layout::record_key(key);
        let existed = self.backend.get(&rk)?.is_some();
        if existed {
            self.backend.commit(WriteBatch { ops: vec![(rk, None)], ..WriteBatch::default() }).await?;
        }
        Ok(existed)
    }

    /// Writes a record as given (for importing an exported store).
    pub async fn import(&self, view: RecordView) -> Result<()> {
        let key = view.key.clone();
        let record = Record {
            state: view.state,
            fingerprint: view.fingerprint,
            attempts: view.attempts,
            updated_at: view.updated_at,
            expires_at: view.expires_at,
            origin: view.origin,
        };
        let ops = vec![(layout::record_key(&key), Some(Bytes::from(record.encode()?)))];
        let expiring = if record.expires_at > 0 {
            vec![(layout::bucket_end(record.expires_at, self.bucket_width), key)]
        } else {
            vec![]
        };
        self.backend.commit(WriteBatch { ops, expiring, ..WriteBatch::default() }).await?;
        Ok(())
    }

    fn fresh(
        &self,
        attempts: u32,
        first_error: Option<String>,
        last_error: Option<String>,
        orphaned: bool,
    ) -> Result<Lease> {
        Ok(Lease { token: self.backend.next_token()?, attempts, first_error, last_error, orphaned })
    }
}

impl<B: KvBackend> LocalStore<B> {
    /// One look at the key: the answer, or what to wait for while another delivery
    /// holds it or its completion is being committed.
    async fn claim_once(&self, req: ClaimRequest<'_>) -> Result<Look> {
        let lease = {
            let mut shard = self.leases.lock(req.key);
            let lease = match shard.get_mut(req.key) {
                Some(Entry::Completing(h)) => {
                    return Ok(Look::Wait { lease_until: h.lease_until, ended: h.until_ended() });
                }
                Some(Entry::Held(h)) if h.lease_until > req.now => {
                    return Ok(Look::Wait { lease_until: h.lease_until, ended: h.until_ended() });
                }
                Some(Entry::Held(h)) => {
                    tracing::warn!(key = %req.key, token = h.token, "lease expired; taking the key over");
                    // Whoever waits for the old claim looks again (and waits for ours).
                    h.wake();
                    self.fresh(h.attempts, h.first_error.clone(), h.last_error.clone(), true)?
                }
                Some(Entry::Idle { attempts, first_error, last_error }) => {
                    self.fresh(*attempts, first_error.clone(), last_error.clone(), false)?
                }
                None => match self.record(req.key)? {
                    None => self.fresh(0, None, None, false)?,
                    Some(r) => match r.state {
                        RecordState::Done { output, emitted } => {
                            return Ok(Look::Answer(if r.fingerprint == req.fingerprint {
                                Claim::Done { output, emitted, origin: r.origin }
                            } else {
                                Claim::Conflict { stored: r.fingerprint }
                            }));
                        }
                        RecordState::DeadLettered { reason } if !req.redrive => {
                            return Ok(Look::Answer(Claim::DeadLettered { reason }));
                        }
                        RecordState::DeadLettered { .. } => self.fresh(0, None, None, false)?,
                        RecordState::InFlight { epoch, token } => {
                            tracing::warn!(key = %req.key, token, epoch, "found the claim of a crashed holder");
                            self.fresh(r.attempts, None, None, true)?
                        }
                    },
                },
            };
            shard.insert(
                req.key.clone(),
                Entry::Held(Held {
                    token: lease.token,
                    lease_until: req.lease_until,
                    attempts: lease.attempts,
                    first_error: lease.first_error.clone(),
                    last_error: lease.last_error.clone(),
                    durable: req.durable,
                    waiters: None,
                }),
            );
            lease
        };
        if req.durable {
            let record = Record {
                state: RecordState::InFlight { token: lease.token, epoch: self.backend.epoch() },
                fingerprint: req.fingerprint,
                attempts: lease.attempts,
                updated_at: req.now,
                expires_at: 0,
                origin: None,
            };
            let batch = WriteBatch {
                ops: vec![(layout::record_key(req.key), Some(Bytes::from(record.encode()?)))],
                ..WriteBatch::default()
            };
            if let Err(e) = self.backend.commit(batch).await {
                let mut shard = self.leases.lock(req.key);
                if matches!(shard.get(req.key), Some(Entry::Held(h)) if h.token == lease.token)
                    && let Some(entry) = shard.remove(req.key)
                {
                    entry.wake();
                }
                return Err(e);
            }
        }
        Ok(Look::Answer(Claim::Acquired(lease)))
    }
}

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

    fn renew(&self, key: &StoreKey, token: FencingToken, lease_until: Millis) -> bool {
        match self.leases.lock(key).get_mut(key) {
            Some(Entry::Held(h)) if h.token == token => {
                h.lease_until = h.lease_until.max(lease_until);
                true
            }
            Some(Entry::Completing(h)) => h.token == token,
            _ => false,
        }
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
            self.backend.submit(batch, Some(on_durable)).await.map(|durable| Staged { applied: true, durable })
        } else {
            self.backend.stage(batch, Some(on_durable)).await
        };
        if !matches!(result, Ok(Staged { applied: true, .. })) {
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
            Staged { applied: true, durable } => Ok(StagedCompletion { committed: Committed::Ok, durable }),
            Staged { applied: false, .. } => {
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

    fn state_get(&self, state_key: &[u8]) -> Result<Option<Bytes>> {
        self.backend.get(state_key)
    }

    fn meta_get(&self, name: &str) -> Result<Option<Bytes>> {
        self.backend.get(&layout::meta_key(name))
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

    fn inspect(&self, key: &StoreKey) -> Result<Option<RecordView>> {
        Ok(self.record(key)?.map(|r| r.view(key.clone())))
    }

    async fn flush(&self) -> Result<()> {
        self.backend.flush().await
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

pub(crate) type MetaWrites = Vec<(Vec<u8>, Bytes)>;

/// Refuses a store whose format is newer than this build reads.
pub(crate) fn check_format(get: impl Fn(&[u8]) -> Result<Option<Bytes>>, path: &std::path::Path) -> Result<()> {
    if let Some(raw) = get(&layout::meta_key("format"))? {
        let found = raw
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| Error::StoreCorrupt { key: "meta:format".into(), reason: "not a u32".into() })?;
        if found > super::FORMAT_VERSION {
            return Err(Error::StoreFormat { path: path.to_owned(), found, supported: super::FORMAT_VERSION });
        }
    }
    Ok(())
}

/// Checks the format version and bumps the epoch: what every backend does when it opens.
/// Returns the new epoch and the meta writes to persist.
pub(crate) fn open_meta(
    get: impl Fn(&[u8]) -> Result<Option<Bytes>>,
    path: &std::path::Path,
) -> Result<(u64, MetaWrites)> {
    check_format(&get, path)?;
    let format_key = layout::meta_key("format");
    let mut writes = Vec::new();
    if get(&format_key)?.is_none() {
        writes.push((format_key, Bytes::copy_from_slice(&super::FORMAT_VERSION.to_be_bytes())));
    }
    let epoch_key = layout::meta_key("epoch");
    let epoch = match get(&epoch_key)? {
        Some(raw) => raw.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0) + 1,
        None => 1,
    };
    writes.push((epoch_key, Bytes::copy_from_slice(&epoch.to_be_bytes())));
    Ok((epoch, writes))
}
