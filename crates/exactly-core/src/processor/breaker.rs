//! The circuit breaker: when a dependency keeps failing, pause consuming instead of
//! burning every message's retries into the dead-letter destination.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::{Error, Result};

/// When the breaker opens and for how long.
///
/// It counts transient failures of *different* keys in a row, so one poison message
/// retried in place cannot open it: that message exhausts its retries and is
/// dead-lettered instead. Any success resets the count. Open, it asks the adapter to
/// pause for `open_for`; then one probe message runs (half-open): success closes the
/// breaker, failure opens it again for twice as long, up to `max_open_for`.
///
/// ```
/// use std::time::Duration;
/// use exactly_core::BreakerConfig;
/// let b = BreakerConfig::new(10, Duration::from_secs(5), Duration::from_secs(60)).unwrap();
/// assert_eq!(b.failure_threshold(), 10);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    failure_threshold: u32,
    open_for: Duration,
    max_open_for: Duration,
}

impl Default for BreakerConfig {
    /// 5 failing keys in a row; open 5 s at first, at most 60 s.
    fn default() -> Self {
        Self { failure_threshold: 5, open_for: Duration::from_secs(5), max_open_for: Duration::from_secs(60) }
    }
}

impl BreakerConfig {
    /// A breaker opening after `failure_threshold` failing keys in a row.
    pub fn new(failure_threshold: u32, open_for: Duration, max_open_for: Duration) -> Result<Self> {
        if failure_threshold == 0 {
            return Err(Error::config("breaker.failure_threshold", "must be at least 1"));
        }
        if open_for.is_zero() || max_open_for < open_for {
            return Err(Error::config("breaker.open_for", "must be above zero and at most max_open_for"));
        }
        Ok(Self { failure_threshold, open_for, max_open_for })
    }

    /// Failing keys in a row that open the breaker.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold
    }
}

/// The breaker's state, as the `exactly_breaker_state` gauge shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Messages flow.
    Closed,
    /// One probe may run.
    HalfOpen,
    /// Consumption is paused.
    Open,
}

#[derive(Debug)]
enum Inner {
    Closed {
        failures: u32,
        last_key: Option<u64>,
    },
    /// `since`: when it left `Closed`, for the time the consumer was paused.
    Open {
        until: Instant,
        open_for: Duration,
        since: Instant,
    },
    HalfOpen {
        probing: bool,
        open_for: Duration,
        since: Instant,
    },
}

/// Admission of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Go { probe: bool },
    Wait(Duration),
}

/// A probe's claim on the half-open breaker, given back if the probe's run is dropped
/// before it reported (an adapter aborting its in-flight deliveries when its connection
/// breaks): without it the breaker stayed half-open and paused every later message.
pub(crate) struct ProbeGuard<'a> {
    breaker: Option<&'a CircuitBreaker>,
}

impl<'a> ProbeGuard<'a> {
    pub(crate) fn new(breaker: Option<&'a CircuitBreaker>, probe: bool) -> Self {
        Self { breaker: breaker.filter(|_| probe) }
    }

    /// The run reported its outcome to the breaker itself.
    pub(crate) fn disarm(mut self) {
        self.breaker = None;
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.breaker {
            b.neutral(true);
        }
    }
}

#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
}

impl CircuitBreaker {
    pub(crate) fn new(cfg: BreakerConfig) -> Self {
        Self { cfg, inner: Mutex::new(Inner::Closed { failures: 0, last_key: None }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn state(&self) -> BreakerState {
        match *self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    pub(crate) fn admit(&self) -> Admit {
        let mut s = self.lock();
        let now = Instant::now();
        match &mut *s {
            Inner::Closed { .. } => Admit::Go { probe: false },
            Inner::Open { until, open_for, since } => {
                if now >= *until {
                    *s = Inner::HalfOpen { probing: true, open_for: *open_for, since: *since };
                    Admit::Go { probe: true }
                } else {
                    Admit::Wait(*until - now)
                }
            }
            Inner::HalfOpen { probing, .. } => {
                if *probing {
                    Admit::Wait(Duration::from_millis(100))
                } else {
                    *probing = true;
                    Admit::Go { probe: true }
                }
            }
        }
    }

    /// A run proved the dependency works. Returns how long the breaker was open (and
    /// half-open) if this closes it.
    pub(crate) fn success(&self, probe: bool) -> Option<Duration> {
        let mut s = self.lock();
        let closed_after = match &*s {
            Inner::HalfOpen { since, .. } if probe => Some(since.elapsed()),
            Inner::Closed { .. } => None,
            _ => return None,
        };
        *s = Inner::Closed { failures: 0, last_key: None };
        closed_after
    }

    /// The run neither proved nor disproved the dependency (a duplicate, a permanent error).
    pub(crate) fn neutral(&self, probe: bool) {
        if let Inner::HalfOpen { probing, .. } = &mut *self.lock()
            && probe
        {
            *probing = false;
        }
    }

    /// Records a transient failure of the key with hash `key`. Returns how long to pause
    /// if the breaker is open now.
    pub(crate) fn failure(&self, key: u64, probe: bool) -> Option<Duration> {
        let mut s = self.lock();
        let now = Instant::now();
        match &mut *s {
            Inner::Closed { failures, last_key } => {
                if *last_key != Some(key) {
                    *failures += 1;
                    *last_key = Some(key);
                }
                if *failures >= self.cfg.failure_threshold {
                    tracing::warn!(failures = *failures, pause = ?self.cfg.open_for, "circuit breaker opened");
                    *s = Inner::Open { until: now + self.cfg.open_for, open_for: self.cfg.open_for, since: now };
                    Some(self.cfg.open_for)
                } else {
                    None
                }
            }
            Inner::HalfOpen { open_for, since, .. } => {
                if probe {
                    let next = (*open_for * 2).min(self.cfg.max_open_for);
                    tracing::warn!(pause = ?next, "circuit breaker probe failed; open again");
                    *s = Inner::Open { until: now + next, open_for: next, since: *since };
                    Some(next)
                } else {
                    // Admitted before the breaker opened; the probe decides.
                    Some(Duration::from_millis(100))
                }
            }
            Inner::Open { until, .. } => Some(until.saturating_duration_since(now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig::new(3, Duration::from_secs(1), Duration::from_secs(4)).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_distinct_failures_and_probes() {
        let b = breaker();
        assert_eq!(b.failure(1, false), None);
        assert_eq!(b.failure(2, false), None);
        assert_eq!(b.failure(3, false), Some(Duration::from_secs(1)));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(b.admit(), Admit::Wait(_)));
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(b.admit(), Admit::Go { probe: true });
        assert!(matches!(b.admit(), Admit::Wait(_)), "only one probe at a time");
        assert_eq!(b.failure(4, true), Some(Duration::from_secs(2)), "a failed probe doubles the pause");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.admit(), Admit::Go { probe: true });
        assert_eq!(b.success(true), Some(Duration::from_millis(3001)), "open from its opening to the probe's success");
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(), Admit::Go { probe: false });
    }

    #[tokio::test(start_paused = true)]
    async fn one_poison_key_does_not_open_it() {
        let b = breaker();
        for _ in 0..10 {
            assert_eq!(b.failure(7, false), None);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let b = breaker();
        b.failure(1, false);
        b.failure(2, false);
        assert_eq!(b.success(false), None, "it was not open");
        assert_eq!(b.failure(3, false), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pause_is_capped() {
        let b = breaker();
        for k in 0..3 {
            b.failure(k, false);
        }
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(5)).await;
            assert_eq!(b.admit(), Admit::Go { probe: true });
            let pause = b.failure(99, true).unwrap();
            assert!(pause <= Duration::from_secs(4));
        }
    }
}
