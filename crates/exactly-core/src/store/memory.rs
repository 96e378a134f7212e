//! The in-memory store.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::FencingToken;
use super::local::{
    AppliedWrite, BackendStats, DEFAULT_BUCKET_WIDTH_MS, Durable, KvBackend, LocalStore, OnDurable, WriteBatch,
    expiry_index_ops,
};
use crate::Result;
use crate::clock::Millis;

/// A [`KvBackend`] in a `BTreeMap`.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    map: Mutex<BTreeMap<Vec<u8>, Bytes>>,
    epoch: AtomicU64,
    tokens: AtomicU64,
    commits: AtomicU64,
}

impl MemoryBackend {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Bytes>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl KvBackend for MemoryBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.map().get(key).cloned())
    }

    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        Ok(self.map().range(from.to_vec()..to.to_vec()).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    async fn stage(&self, batch: WriteBatch, on_durable: Option<OnDurable>) -> Result<AppliedWrite> {
        let applied = self.apply(batch);
        if applied && let Some(f) = on_durable {
            f(true);
        }
        Ok(AppliedWrite { applied, durable: Durable::ready() })
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn next_token(&self) -> Result<FencingToken> {
        Ok(self.tokens.fetch_add(1, Ordering::SeqCst) + 1)
    }

    fn stats(&self) -> BackendStats {
        BackendStats { commits: self.commits.load(Ordering::Relaxed), ..BackendStats::default() }
    }
}

impl MemoryBackend {
    fn apply(&self, batch: WriteBatch) -> bool {
        let mut map = self.map();
        if batch.expect.iter().any(|(k, v)| map.get(k) != v.as_ref()) {
            return false;
        }
        let commit = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        for (k, v) in batch.ops.into_iter().chain(expiry_index_ops(commit, &batch.expiring)) {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        true
    }
}

/// A store that keeps everything in memory: for tests, benchmarks, and consumers that
/// accept losing their dedup state on restart.
///
/// Within one process it keeps the same contract as the on-disk store, and
/// [`simulate_crash`](LocalStore::simulate_crash) models a restart of a process whose
/// store survived: claims are forgotten, records and state stay.
///
/// ```
/// use exactly_core::MemoryStore;
/// let store = MemoryStore::new();
/// # let _ = store;
/// ```
pub type MemoryStore = LocalStore<MemoryBackend>;

impl LocalStore<MemoryBackend> {
    /// An empty in-memory store with hourly expiry buckets.
    pub fn new() -> Self {
        Self::with_bucket_width(DEFAULT_BUCKET_WIDTH_MS)
    }

    /// An empty in-memory store with expiry buckets `bucket_width` ms wide.
    pub fn with_bucket_width(bucket_width: Millis) -> Self {
        let backend = MemoryBackend::default();
        backend.epoch.store(1, Ordering::SeqCst);
        LocalStore::with_backend(backend, bucket_width)
    }

    /// Forgets every claim and starts a new epoch, as a crash and restart of the process
    /// would with a durable store: done-records, dead-letter marks and state stay, claims
    /// of handlers that were running are gone (durable claims become orphans).
    pub fn simulate_crash(&self) {
        self.leases.clear();
        self.backend.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Every key-value pair, for tests that compare stores.
    pub fn dump(&self) -> Vec<(Vec<u8>, Bytes)> {
        self.backend.map().iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl Default for LocalStore<MemoryBackend> {
    fn default() -> Self {
        Self::new()
    }
}
