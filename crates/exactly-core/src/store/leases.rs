//! In-memory claims. One process owns a local store (the backend locks it), so claims
//! need not be on disk, except when a handler's orphan policy asks for it.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;

use foldhash::fast::RandomState;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

use super::FencingToken;
use crate::StoreKey;
use crate::clock::Millis;
use crate::sync::{Mutex, MutexGuard};

const SHARDS: usize = 64;

/// A live claim.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) token: FencingToken,
    pub(crate) lease_until: Millis,
    pub(crate) attempts: u32,
    pub(crate) first_error: Option<String>,
    pub(crate) last_error: Option<String>,
    /// An `InFlight` record for this claim is on the backend.
    pub(crate) durable: bool,
    /// Woken when this claim ends (its completion is durable, it is released, taken
    /// over or forgotten); made by the first other delivery of the key that waits.
    pub(crate) waiters: Option<Arc<Notify>>,
}

/// Resolves when the claim it was made for ends.
pub(crate) type Ended = Pin<Box<OwnedNotified>>;

impl Held {
    /// Wakes every delivery waiting for this claim to end.
    pub(crate) fn wake(&self) {
        if let Some(waiters) = &self.waiters {
            waiters.notify_waiters();
        }
    }

    /// A future that resolves when this claim ends. Call it under the shard's lock: it
    /// is registered at once, so an end from then on is not missed.
    pub(crate) fn until_ended(&mut self) -> Ended {
        let waiters = self.waiters.get_or_insert_with(Default::default).clone();
        let mut ended = Box::pin(waiters.notified_owned());
        ended.as_mut().enable();
        ended
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Entry {
    /// A handler runs (or may run) under this claim.
    Held(Held),
    /// The claim's completion is being committed; nobody may take it over.
    Completing(Held),
    /// No holder; earlier attempts failed and a retry is expected.
    Idle { attempts: u32, first_error: Option<String>, last_error: Option<String> },
}

impl Entry {
    /// Wakes the deliveries waiting for a live claim, when it leaves the table.
    pub(crate) fn wake(&self) {
        match self {
            Entry::Held(h) | Entry::Completing(h) => h.wake(),
            Entry::Idle { .. } => {}
        }
    }
}

pub(crate) type Shard = HashMap<StoreKey, Entry, RandomState>;

#[derive(Debug)]
pub(crate) struct LeaseTable {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

impl LeaseTable {
    pub(crate) fn new() -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(), hasher: RandomState::default() }
    }

    /// Locks the shard that holds `key`. Claims, completions and releases of one key are
    /// serialised by this lock.
    pub(crate) fn lock(&self, key: &StoreKey) -> MutexGuard<'_, Shard> {
        let idx = (self.hasher.hash_one(key) as usize) % self.shards.len();
        self.shards[idx].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets every claim, as a crash of the process would (waking whoever waits).
    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            for (_, entry) in shard.lock().unwrap_or_else(|p| p.into_inner()).drain() {
                entry.wake();
            }
        }
    }

    /// (held or completing, idle) entry counts.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let mut held = 0;
        let mut idle = 0;
        for shard in self.shards.iter() {
            for e in shard.lock().unwrap_or_else(|p| p.into_inner()).values() {
                match e {
                    Entry::Idle { .. } => idle += 1,
                    _ => held += 1,
                }
            }
        }
        (held, idle)
    }
}
