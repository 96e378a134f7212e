//! Dedup stores: where claims, done-records and transactional state live.
//!
//! [`DedupStore`] is the protocol a store offers the [`Processor`](crate::Processor):
//! claim a key, renew the lease, complete (durably, with the handler's state writes),
//! release after a failure. Four stores ship: [`SledStore`] on disk (the default),
//! [`RedbStore`] on disk (feature `redb`), [`FjallStore`] on disk (feature `fjall`) and
//! [`MemoryStore`]. Each is a [`LocalStore`] over a key-value backend: in-flight claims
//! live in memory (one process owns a store), done-records and state on the backend. The
//! on-disk ones put a write-ahead log with group commit in front of their engine
//! (docs/STORE.md); how they are put together is private to this crate.

#[cfg(any(feature = "sled", feature = "redb", feature = "fjall"))]
mod disk;
pub mod export;
mod layout;
mod leases;
pub(crate) mod local;
mod log;
mod memory;
mod purge;
#[cfg(test)]
mod purge_tests;
mod record;
mod sweeper;

#[cfg(feature = "bench-native")]
#[doc(hidden)]
pub use disk::native;
#[cfg(any(feature = "sled", feature = "redb", feature = "fjall"))]
pub use disk::{DiskStoreBuilder, engine_at};
#[cfg(feature = "fjall")]
pub use disk::{FjallStore, FjallStoreBuilder};
#[cfg(feature = "redb")]
pub use disk::{RedbStore, RedbStoreBuilder};
#[cfg(feature = "sled")]
pub use disk::{SledStore, SledStoreBuilder};
pub use layout::StoreKey;
pub use local::{DEFAULT_BUCKET_WIDTH_MS, Durable, LocalStore};
pub use log::{Cut, DEFAULT_FILTER_KEYS, FsyncObserver};
#[cfg(feature = "testing")]
pub(crate) use memory::MemoryBackend;
pub use memory::MemoryStore;
pub use record::{FORMAT_VERSION, RecordState, RecordView};
pub use sweeper::{Sweeper, SweeperHandle, SweeperSlot};

/// The building blocks of the local stores, for the loom models (`tests/loom.rs`) only:
/// public only in a build with `--cfg exactly_loom`.
#[cfg(exactly_loom)]
#[doc(hidden)]
pub mod internals {
    pub use super::local::backend::{AppliedWrite, BackendStats, KvBackend, WriteBatch};
    pub use super::log::snapshots::Snapshots;
    pub use super::log::{Engine, LogBackend, LogOptions};
    pub use super::memory::MemoryBackend;
}

use async_trait::async_trait;
use bytes::Bytes;

use crate::clock::Millis;
use crate::{Fingerprint, OutboundRecord, Result};

/// A transaction a store began for a handler's own writes (see
/// [`DedupStore::begin`]): the store crate's own type, boxed, which its typed accessor on
/// the [`Context`](crate::Context) gives back to the handler (`ctx.postgres()` of the
/// PostgreSQL store).
pub type StoreTransaction = Box<dyn std::any::Any + Send + Sync>;

/// A fencing token: grows with every claim of the store, so with every claim of a key.
/// A downstream system that remembers the highest token it saw for a key can refuse a
/// write from a holder whose lease was taken over.
pub type FencingToken = u64;

/// A request to claim a key before running its handler.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// The namespaced key.
    pub key: &'a StoreKey,
    /// The payload's fingerprint, to tell a duplicate from a key conflict.
    pub fingerprint: Fingerprint,
    /// The current time.
    pub now: Millis,
    /// When the lease ends unless renewed.
    pub lease_until: Millis,
    /// Whether the claim must be on disk before the handler runs, so that a crash while it
    /// runs is noticed after a restart (needed by [`OrphanPolicy::Quarantine`](crate::OrphanPolicy)).
    pub durable: bool,
    /// The message is re-driven from the dead-letter destination: a dead-letter mark on
    /// the key is cleared instead of answered.
    pub redrive: bool,
}

/// The answer to a claim.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The caller holds the key until it completes, releases, or its lease runs out.
    Acquired(Lease),
    /// The key is done: a duplicate. Carries the cached output.
    Done {
        /// The cached output.
        output: Option<Bytes>,
        /// The records the handler emitted, to publish again.
        emitted: Vec<OutboundRecord>,
        /// Where the message that made it done came from, when known.
        origin: Option<String>,
    },
    /// The key is done for a different payload.
    Conflict {
        /// The fingerprint of the payload that is done.
        stored: Fingerprint,
    },
    /// The key was dead-lettered before.
    DeadLettered {
        /// The reason it was dead-lettered.
        reason: String,
    },
    /// A live holder has the key (or is committing it).
    Busy {
        /// When its lease ends, unless renewed.
        lease_until: Millis,
    },
}

/// A held claim.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The fencing token of this claim.
    pub token: FencingToken,
    /// Failed attempts before this one.
    pub attempts: u32,
    /// The first error of earlier attempts.
    pub first_error: Option<String>,
    /// The last error of earlier attempts.
    pub last_error: Option<String>,
    /// A previous holder's lease ran out, or it crashed while holding the key: its effects
    /// may or may not have happened.
    pub orphaned: bool,
}

/// How a claim ends.
#[derive(Debug, Clone)]
pub enum Final {
    /// The handler succeeded.
    Done {
        /// Its output, cached for duplicates.
        output: Option<Bytes>,
        /// Records it emitted, kept to publish again for a duplicate.
        emitted: Vec<OutboundRecord>,
    },
    /// The message went to the dead-letter destination.
    DeadLettered {
        /// Why.
        reason: String,
    },
}

/// The handler's state reads and writes, committed atomically with the done-record if
/// every value read is still what it was (optimistic concurrency).
#[derive(Debug, Clone, Default)]
pub struct StateChanges {
    /// Each state key read, as a namespaced store key, with the value seen.
    pub reads: Vec<(Vec<u8>, Option<Bytes>)>,
    /// Each state key written (`None` deletes).
    pub writes: Vec<(Vec<u8>, Option<Bytes>)>,
}

impl StateChanges {
    /// No reads, no writes.
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty() && self.writes.is_empty()
    }

    /// The names written or deleted in `namespace`, as the handler gave them, in order:
    /// what a done-record keeps so an operator can see what its message changed.
    pub fn written_in(&self, namespace: &str) -> Vec<Bytes> {
        self.writes
            .iter()
            .filter_map(|(k, _)| StoreKey::state_parts(k))
            .filter(|(ns, _)| *ns == namespace)
            .map(|(_, name)| Bytes::copy_from_slice(name))
            .collect()
    }
}

/// A request to end a claim for good.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The namespaced key.
    pub key: StoreKey,
    /// The token of the claim being completed.
    pub token: FencingToken,
    /// The payload's fingerprint.
    pub fingerprint: Fingerprint,
    /// Attempts made, this one included.
    pub attempts: u32,
    /// The current time.
    pub now: Millis,
    /// Where the message came from (`topic/partition/offset`), when its broker has positions.
    pub origin: Option<String>,
    /// Done or dead-lettered.
    pub outcome: Final,
    /// When the record may be purged.
    pub expires_at: Millis,
    /// State writes to commit with it.
    pub state: StateChanges,
}

/// A completion applied and on its way to disk.
#[derive(Debug)]
pub struct StagedCompletion {
    /// Whether it took effect. Only [`Committed::Ok`] has anything to wait for.
    pub committed: Committed,
    /// Resolves once the record and state writes are durable. Until then the key answers
    /// claims with [`Claim::Busy`].
    pub durable: Durable,
}

/// Whether a completion took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Durable.
    Ok,
    /// A state value the handler read changed before the commit: nothing was written; run
    /// the handler again.
    Conflict,
    /// The claim was taken over by another holder: nothing was written.
    Fenced,
}

/// What one purge pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Expiry-index entries visited.
    pub index_entries: u64,
    /// Records removed.
    pub records_removed: u64,
    /// More expired entries remain (the budget ran out).
    pub more: bool,
}

/// Counts of what a store holds, as far as it knows without a scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Claims held in memory now.
    pub in_flight: u64,
    /// Keys waiting to be retried after a failure.
    pub waiting_retry: u64,
    /// Group commits made since open.
    pub commits: u64,
    /// Fsyncs made since open.
    pub fsyncs: u64,
    /// Bytes on disk, for on-disk stores.
    pub disk_bytes: Option<u64>,
    /// Filters of done keys built since open (on-disk stores); 0 while reads of new keys
    /// still go to the engine.
    pub filter_builds: u64,
}

/// The largest keys and values a store takes, in bytes. The processor checks a
/// handler's state writes and output against them before it commits, so an oversized
/// one is the handler's error (dead-lettered with reason `too-large`), never a failure of
/// the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The longest state key, as the handler names it (without the consumer's namespace).
    pub max_state_key: usize,
    /// The largest state value, and the largest cached output plus emitted records of one
    /// message.
    pub max_value: usize,
}

impl Limits {
    /// Limits of a store of another kind (a database's index limits its key length).
    pub const fn new(max_state_key: usize, max_value: usize) -> Self {
        Self { max_state_key, max_value }
    }

    /// The local stores' limits: 16 KiB state keys (every engine takes them, so a store
    /// can move between engines) and 64 MiB values.
    pub const LOCAL: Limits = Limits { max_state_key: 16 * 1024, max_value: 64 * 1024 * 1024 };
}

impl Default for Limits {
    fn default() -> Self {
        Self::LOCAL
    }
}

/// A store of idempotency records.
///
/// The contract every implementation keeps (the conformance suite in
/// [`testing::conformance`](crate::testing) checks it):
/// - a key is held by at most one live claim at a time; a claim whose lease ran out may be
///   taken over, and the old holder is then fenced: its `complete` returns
///   [`Committed::Fenced`];
/// - [`complete`](Self::complete) returns only when the record and the state writes are
///   durable, all or nothing;
/// - a key that is done stays done until its record expires and is purged;
/// - nothing another caller can observe (a duplicate answer, a state value read under a
///   lock) depends on a write that may still be lost without the caller's own write being
///   lost with it.
///
/// Every operation is async so that a store across the network fits; the `_many`
/// operations let one round trip serve a group (their defaults call the single ones).
#[async_trait]
pub trait DedupStore: Send + Sync + std::fmt::Debug + 'static {
    /// Claims a key for a handler run.
    async fn claim(&self, req: ClaimRequest<'_>) -> Result<Claim>;

    /// Claims several keys, answering in the order asked.
    async fn claim_many(&self, reqs: &[ClaimRequest<'_>]) -> Result<Vec<Claim>> {
        futures_util::future::try_join_all(reqs.iter().map(|r| self.claim(*r))).await
    }

    /// Extends a held lease; `false` if the claim was lost (taken over or completed).
    async fn renew(&self, key: &StoreKey, token: FencingToken, lease_until: Millis) -> Result<bool>;

    /// Ends a claim after a failure that will be retried; the key keeps its attempt count
    /// and errors for the next claim.
    async fn release(&self, key: &StoreKey, token: FencingToken, attempts: u32, error: Option<String>) -> Result<()>;

    /// Ends a claim for good (done or dead-lettered) with the state writes, returning as
    /// soon as the outcome is decided and visible; [`StagedCompletion::durable`] resolves
    /// when it is on disk. Completions become durable in the order they were applied.
    async fn complete_staged(&self, completion: Completion) -> Result<StagedCompletion>;

    /// Ends several claims, answering in the order given; each commits (or not) on its
    /// own, as [`complete_staged`](Self::complete_staged) would.
    async fn complete_many(&self, completions: Vec<Completion>) -> Result<Vec<StagedCompletion>> {
        futures_util::future::try_join_all(completions.into_iter().map(|c| self.complete_staged(c))).await
    }

    /// Ends a claim for good and waits until it is durable.
    async fn complete(&self, completion: Completion) -> Result<Committed> {
        let staged = self.complete_staged(completion).await?;
        staged.durable.wait().await?;
        Ok(staged.committed)
    }

    /// Commits state writes of a message processed without a key.
    async fn commit_state(&self, state: StateChanges) -> Result<Committed>;

    /// Applies state writes and meta values (an adapter's position watermark) atomically,
    /// returning once applied; the result's `durable` resolves when they are on disk.
    async fn stage_state(&self, state: StateChanges, meta: Vec<(String, Bytes)>) -> Result<StagedCompletion> {
        let committed = self.commit_state(state).await?;
        if committed == Committed::Ok {
            for (name, value) in meta {
                self.meta_put(&name, value).await?;
            }
        }
        Ok(StagedCompletion { committed, durable: Durable::ready() })
    }

    /// Begins a transaction for a handler's own writes, to commit with its done-record:
    /// stores kept in a database the handler can also write to (PostgreSQL) have one.
    /// `None` (the default): this store has none.
    async fn begin(&self) -> Result<Option<StoreTransaction>> {
        Ok(None)
    }

    /// Like [`complete_staged`](Self::complete_staged), committed in `tx` (from
    /// [`begin`](Self::begin)) with the handler's writes there, and durable when it
    /// returns. A completion that does not take effect (fenced, a state conflict) rolls
    /// `tx` back: the handler's writes go with it.
    async fn complete_in(&self, tx: StoreTransaction, completion: Completion) -> Result<StagedCompletion> {
        drop((tx, completion));
        Err(no_transactions())
    }

    /// Like [`stage_state`](Self::stage_state), committed in `tx` with the handler's
    /// writes, and durable when it returns. Here the meta values are positions that only
    /// move forward (big-endian offsets): one not past the stored value was committed
    /// before, by this instance or another, so the commit is [`Committed::Fenced`] and
    /// `tx` rolled back.
    async fn stage_state_in(
        &self,
        tx: StoreTransaction,
        state: StateChanges,
        meta: Vec<(String, Bytes)>,
    ) -> Result<StagedCompletion> {
        drop((tx, state, meta));
        Err(no_transactions())
    }

    /// Reads a state value (a namespaced state key, see [`StoreKey::state`]).
    async fn state_get(&self, state_key: &[u8]) -> Result<Option<Bytes>>;

    /// State values in key order, at most `limit`: those whose state key starts with
    /// `prefix` (`StoreKey::state(consumer, start of key)`; every value when `None`), after
    /// the state key `after`.
    async fn state_list(
        &self,
        prefix: Option<&[u8]>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Bytes)>>;

    /// Reads a value adapters keep beside the records (Kafka offset watermarks).
    async fn meta_get(&self, name: &str) -> Result<Option<Bytes>>;

    /// Every value adapters keep beside the records, by name (never the store's own
    /// bookkeeping, such as its format version).
    async fn meta_list(&self) -> Result<Vec<(String, Bytes)>>;

    /// Writes such a value durably, in the next group commit.
    async fn meta_put(&self, name: &str, value: Bytes) -> Result<()>;

    /// Removes expired records, visiting at most `budget` expiry-index entries.
    async fn purge_expired(&self, now: Millis, budget: usize) -> Result<PurgeReport>;

    /// The record of a key, for inspection.
    async fn inspect(&self, key: &StoreKey) -> Result<Option<RecordView>>;

    /// Records in key order, at most `limit`: those whose key starts with `prefix`
    /// (namespace, then the start of the key; every record when `None`), after `after`.
    async fn list(&self, prefix: Option<&StoreKey>, after: Option<&StoreKey>, limit: usize) -> Result<Vec<RecordView>>;

    /// Removes a key's record and any claim on it, so its next delivery runs the handler
    /// again (an operator fixing a stuck or wrongly recorded key). `false` if there was
    /// none.
    async fn forget(&self, key: &StoreKey) -> Result<bool>;

    /// Writes a record as given (importing an exported store).
    async fn import(&self, record: RecordView) -> Result<()>;

    /// Makes everything written so far durable.
    async fn flush(&self) -> Result<()>;

    /// What the store holds.
    fn stats(&self) -> StoreStats;

    /// Whether the store writes emitted records to an outbox in the done-record's
    /// transaction, for a relay to publish (the PostgreSQL store with its outbox on). The
    /// processor then hands the adapter no emitted records to publish, for a first run or
    /// a duplicate.
    fn keeps_outbox(&self) -> bool {
        false
    }

    /// The largest keys and values it takes.
    fn limits(&self) -> Limits {
        Limits::LOCAL
    }

    /// Where its running [`Sweeper`] is kept, so that one runs per store however many
    /// consumers share it (`None`: one per consumer).
    fn sweeper_slot(&self) -> Option<&SweeperSlot> {
        None
    }
}

/// What a store without handler transactions answers a commit in one.
fn no_transactions() -> crate::Error {
    crate::Error::StoreIo { operation: "commit", source: "this store has no transactions for handlers".into() }
}
