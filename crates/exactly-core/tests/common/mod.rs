//! Helpers shared by the core's integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use exactly_core::{Clock, Millis};

/// A clock that follows tokio's (pausable) clock, so `start_paused` tests move leases
/// and expiries as sleeps advance time.
#[derive(Debug)]
pub struct TokioClock {
    start: tokio::time::Instant,
    base: Millis,
}

impl TokioClock {
    pub fn shared() -> Arc<Self> {
        Arc::new(Self { start: tokio::time::Instant::now(), base: 1_700_000_000_000 })
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Millis {
        self.base + u64::try_from(self.start.elapsed().as_millis()).unwrap()
    }
}

/// Counts handler runs per key.
#[derive(Debug, Clone, Default)]
pub struct Runs(Arc<Mutex<HashMap<String, u32>>>);

impl Runs {
    pub fn hit(&self, key: &str) -> u32 {
        let mut m = self.0.lock().unwrap();
        let n = m.entry(key.to_owned()).or_default();
        *n += 1;
        *n
    }
    pub fn get(&self, key: &str) -> u32 {
        self.0.lock().unwrap().get(key).copied().unwrap_or(0)
    }
    pub fn total(&self) -> u32 {
        self.0.lock().unwrap().values().sum()
    }
}
