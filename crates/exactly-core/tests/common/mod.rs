//! Helpers shared by the core's integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::Arc;

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

pub use exactly_core::testing::Runs;
