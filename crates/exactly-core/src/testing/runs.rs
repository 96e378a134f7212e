//! Counting handler runs per key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Counts handler runs per key, for tests that check a handler ran once: call
/// [`hit`](Self::hit) with `ctx.message_key()` inside the handler, then look at the counts.
///
/// ```
/// let runs = exactly_core::testing::Runs::default();
/// runs.hit("a");
/// runs.hit("a");
/// runs.hit("b");
/// assert_eq!((runs.get("a"), runs.keys(), runs.total(), runs.doubled()), (2, 2, 3, 1));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Runs(Arc<Mutex<HashMap<String, u32>>>);

impl Runs {
    fn map(&self) -> MutexGuard<'_, HashMap<String, u32>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a run of `key`; returns its runs so far, this one included.
    pub fn hit(&self, key: &str) -> u32 {
        let mut m = self.map();
        let n = m.entry(key.to_owned()).or_default();
        *n += 1;
        *n
    }

    /// Runs of `key`.
    pub fn get(&self, key: &str) -> u32 {
        self.map().get(key).copied().unwrap_or(0)
    }

    /// Keys that ran at least once.
    pub fn keys(&self) -> usize {
        self.map().len()
    }

    /// Runs of every key together.
    pub fn total(&self) -> u32 {
        self.map().values().sum()
    }

    /// The most runs of any one key.
    pub fn max(&self) -> u32 {
        self.map().values().copied().max().unwrap_or(0)
    }

    /// Keys that ran more than once.
    pub fn doubled(&self) -> usize {
        self.map().values().filter(|&&n| n > 1).count()
    }

    /// Every key with its runs.
    pub fn counts(&self) -> HashMap<String, u32> {
        self.map().clone()
    }
}
