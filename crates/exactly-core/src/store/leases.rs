//! In-memory claims. One process owns a local store (the backend locks it), so claims
//! need not be on disk, except when a handler's orphan policy asks for it.

use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;

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

    /// Forgets every claim, as a crash of the process would.
    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            shard.lock().unwrap_or_else(|p| p.into_inner()).clear();
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
