//! Locks on state keys, held from a handler's first access until its commit, so runs
//! that touch the same state wait for each other instead of running twice.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use foldhash::fast::RandomState;
use tokio::sync::OwnedMutexGuard;

const SHARDS: usize = 32;

type Shard = HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>, RandomState>;

/// The lock table of one consumer's state.
#[derive(Debug)]
pub(crate) struct StateLocks {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

/// A held lock on one state key.
#[derive(Debug)]
pub(crate) struct KeyLock {
    key: Vec<u8>,
    guard: OwnedMutexGuard<()>,
}

impl StateLocks {
    pub(crate) fn new() -> Self {
        Self { shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(), hasher: RandomState::default() }
    }

    fn shard(&self, key: &[u8]) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the lock of `key`.
    pub(crate) async fn lock(&self, key: &[u8]) -> KeyLock {
        let m = self.shard(key).entry(key.to_vec()).or_default().clone();
        KeyLock { key: key.to_vec(), guard: m.lock_owned().await }
    }

    /// Releases locks and forgets the keys nobody else waits for.
    pub(crate) fn release(&self, locks: Vec<KeyLock>) {
        for KeyLock { key, guard } in locks {
            drop(guard);
            let mut shard = self.shard(&key);
            // Clones are made under this shard lock, so a count of one means no waiter.
            if shard.get(&key).is_some_and(|m| Arc::strong_count(m) == 1) {
                shard.remove(&key);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|s| s.len()).unwrap_or(0)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_second_locker_waits_and_the_table_empties() {
        let t = Arc::new(StateLocks::new());
        let a = t.lock(b"k").await;
        let t2 = t.clone();
        let waiter = tokio::spawn(async move { t2.lock(b"k").await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        t.release(vec![a]);
        let b = waiter.await.unwrap();
        assert_eq!(t.len(), 1);
        t.release(vec![b]);
        assert_eq!(t.len(), 0);
    }
}
