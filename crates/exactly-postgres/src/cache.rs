//! Done keys seen by this instance, to answer their duplicates without a round trip.
//!
//! A done record does not change until it expires, so a cached one answers "done" (or
//! "conflict", for another payload) until its expiry. The cache never answers "new": a
//! key it does not hold goes to the database. What it cannot know: an operator's
//! `exactly store forget` of a key on another instance; such a key is still answered as
//! done here until it leaves the cache (restart the instances, or let it be evicted).

use std::sync::Arc;

use bytes::Bytes;
use exactly_core::store::Claim;
use exactly_core::{Fingerprint, OutboundRecord};

/// Outputs larger than this are not cached; their duplicates read the database.
const MAX_CACHED_OUTPUT: usize = 4096;

/// A done record, as cached.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) fingerprint: Fingerprint,
    pub(crate) output: Option<Bytes>,
    pub(crate) emitted: Vec<OutboundRecord>,
    pub(crate) origin: Option<String>,
    pub(crate) expires_at: u64,
}

/// The cache of done keys (store key bytes to record).
pub(crate) struct DoneCache(Option<quick_cache::sync::Cache<Vec<u8>, Arc<Done>>>);

impl std::fmt::Debug for DoneCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoneCache").field("capacity", &self.0.as_ref().map(|c| c.capacity())).finish()
    }
}

impl DoneCache {
    /// A cache of up to `keys` done keys (0: none).
    pub(crate) fn new(keys: usize) -> Self {
        Self((keys > 0).then(|| quick_cache::sync::Cache::new(keys)))
    }

    /// The answer for a claim of `skey` at `now`, if the cache has one.
    pub(crate) fn answer(&self, skey: &[u8], fingerprint: Fingerprint, now: u64) -> Option<Claim> {
        let done = self.0.as_ref()?.get(skey)?;
        if now >= done.expires_at {
            return None;
        }
        Some(if done.fingerprint == fingerprint {
            Claim::Done { output: done.output.clone(), emitted: done.emitted.clone(), origin: done.origin.clone() }
        } else {
            Claim::Conflict { stored: done.fingerprint }
        })
    }

    /// Remembers a done key.
    pub(crate) fn insert(&self, skey: &[u8], done: Done) {
        let Some(cache) = &self.0 else { return };
        if done.output.as_ref().is_some_and(|o| o.len() > MAX_CACHED_OUTPUT) {
            return;
        }
        cache.insert(skey.to_vec(), Arc::new(done));
    }

    /// Forgets a key (this instance's `forget`).
    pub(crate) fn remove(&self, skey: &[u8]) {
        if let Some(cache) = &self.0 {
            cache.remove(skey);
        }
    }
}
