//! The background task that purges expired records.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::DedupStore;
use crate::clock::SharedClock;

/// Purges expired records every `every`, at most `budget` keys per store call, yielding
/// between calls so it never holds the runtime for long.
#[derive(Debug, Clone)]
pub struct Sweeper {
    /// How often to look.
    pub every: Duration,
    /// Keys looked at per store call (a call finishes the index entry it is in, one group
    /// commit's keys, so it may look at more). A call's reads take milliseconds, more once
    /// the store outgrows the cache (`bench store --only sweeper`, docs/PERFORMANCE.md). On
    /// a multi-threaded runtime they run under `block_in_place`, so the worker's other
    /// tasks move to another thread meanwhile; on a current-thread runtime they wait.
    pub budget: usize,
}

impl Default for Sweeper {
    fn default() -> Self {
        Self { every: Duration::from_secs(60), budget: 1_000 }
    }
}

/// A running sweeper; it stops when the last handle is dropped.
#[derive(Debug)]
pub struct SweeperHandle(JoinHandle<()>);

impl Drop for SweeperHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where a store keeps its running sweeper, so that every consumer on it shares one.
#[derive(Debug, Default)]
pub struct SweeperSlot(Mutex<Weak<SweeperHandle>>);

impl Sweeper {
    /// The store's sweeper: the one already running on it, or this one, started. Every
    /// consumer of a store asks for it; one sweeper runs per store (for a store without a
    /// [`DedupStore::sweeper_slot`], one per call).
    pub fn start(self, store: Arc<dyn DedupStore>, clock: SharedClock) -> Arc<SweeperHandle> {
        let Some(slot) = store.sweeper_slot() else {
            return Arc::new(SweeperHandle(self.spawn(store, clock)));
        };
        let mut running = slot.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(handle) = running.upgrade() {
            return handle;
        }
        let handle = Arc::new(SweeperHandle(self.spawn(store.clone(), clock)));
        *running = Arc::downgrade(&handle);
        handle
    }

    /// Starts the task; abort the handle to stop it.
    fn spawn(self, store: Arc<dyn DedupStore>, clock: SharedClock) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let mut removed = 0;
                loop {
                    match store.purge_expired(clock.now(), self.budget).await {
                        Ok(r) => {
                            removed += r.records_removed;
                            if !r.more {
                                break;
                            }
                            tokio::task::yield_now().await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "purging expired records failed");
                            break;
                        }
                    }
                }
                if removed > 0 {
                    tracing::debug!(removed, "purged expired records");
                    crate::metrics::purged(removed);
                }
            }
        })
    }
}
