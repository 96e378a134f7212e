//! Exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

use crate::{Error, Result};

/// How often and how far apart a transient failure is retried before the message is
/// dead-lettered with reason `retries-exhausted`.
///
/// The delay before attempt `n + 1` after `n` failures is drawn uniformly from
/// `[0, min(max_delay, base * 2^(n-1))]` ("full jitter", so that many consumers failing at
/// once do not retry in lockstep), but never below a handler's
/// [`retry_after`](crate::HandlerError::retry_after) request, and never above `max_delay`.
///
/// ```
/// use std::time::Duration;
/// use exactly_core::RetryPolicy;
/// let p = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(10), 5).unwrap();
/// assert_eq!(p.max_attempts(), 5);
/// assert!(p.delay(3, None) <= Duration::from_millis(400));
/// assert!(RetryPolicy::exponential(Duration::ZERO, Duration::from_secs(1), 3).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    base: Duration,
    max_delay: Duration,
    max_attempts: u32,
}

impl Default for RetryPolicy {
    /// 5 attempts, 100 ms base, 30 s cap.
    fn default() -> Self {
        Self { base: Duration::from_millis(100), max_delay: Duration::from_secs(30), max_attempts: 5 }
    }
}

impl RetryPolicy {
    /// Exponential backoff from `base`, capped at `max_delay`, `max_attempts` attempts in all
    /// (the first included). Rejects a zero base, a cap below the base, or zero attempts.
    pub fn exponential(base: Duration, max_delay: Duration, max_attempts: u32) -> Result<Self> {
        if base.is_zero() {
            return Err(Error::config("retry.base", "must be greater than zero"));
        }
        if max_delay < base {
            return Err(Error::config("retry.max_delay", format!("{max_delay:?} is below the base {base:?}")));
        }
        if max_attempts == 0 {
            return Err(Error::config("retry.max_attempts", "must be at least 1 (the first attempt)"));
        }
        Ok(Self { base, max_delay, max_attempts })
    }

    /// One attempt, no retries: a transient failure is dead-lettered at once.
    pub fn no_retries() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The cap on one delay.
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// The upper bound of the jittered delay after `failures` failed attempts.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(32);
        self.base.saturating_mul(1u32 << exp.min(31)).min(self.max_delay)
    }

    /// The delay before the next attempt after `failures` failed attempts, honouring a
    /// requested minimum.
    pub fn delay(&self, failures: u32, requested: Option<Duration>) -> Duration {
        let ceiling = self.ceiling(failures);
        let jittered = if ceiling.is_zero() {
            Duration::ZERO
        } else {
            let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
            Duration::from_nanos(rand::rng().random_range(0..=nanos))
        };
        jittered.max(requested.unwrap_or(Duration::ZERO)).max(Duration::from_millis(1)).min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn delay_stays_within_the_ceiling_and_the_cap(
            base_ms in 1u64..1_000,
            cap_factor in 1u64..1_000,
            attempts in 1u32..10,
            failures in 0u32..100,
            requested_ms in proptest::option::of(0u64..100_000),
        ) {
            let base = Duration::from_millis(base_ms);
            let cap = base * u32::try_from(cap_factor).unwrap();
            let p = RetryPolicy::exponential(base, cap, attempts).unwrap();
            let d = p.delay(failures, requested_ms.map(Duration::from_millis));
            prop_assert!(d <= cap);
            prop_assert!(d >= Duration::from_millis(1).min(cap));
            if let Some(r) = requested_ms {
                prop_assert!(d >= Duration::from_millis(r).min(cap));
            } else {
                prop_assert!(d <= p.ceiling(failures).max(Duration::from_millis(1)));
            }
        }

        #[test]
        fn ceiling_grows_then_stays_at_the_cap(failures in 1u32..200) {
            let p = RetryPolicy::default();
            prop_assert!(p.ceiling(failures) <= p.ceiling(failures + 1));
            prop_assert!(p.ceiling(failures) <= p.max_delay());
        }
    }

    #[test]
    fn ceiling_doubles() {
        let p = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1), 9).unwrap();
        let c: Vec<_> = (1..=5).map(|f| p.ceiling(f).as_millis()).collect();
        assert_eq!(c, vec![100, 200, 400, 800, 1000]);
    }

    #[test]
    fn jitter_spreads_delays() {
        let p = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(10), 9).unwrap();
        let distinct: std::collections::HashSet<_> = (0..50).map(|_| p.delay(4, None)).collect();
        assert!(distinct.len() > 10, "full jitter should spread delays, got {distinct:?}");
    }

    #[test]
    fn invalid_policies_name_the_field() {
        let e = RetryPolicy::exponential(Duration::from_secs(2), Duration::from_secs(1), 3).unwrap_err();
        assert!(e.to_string().contains("retry.max_delay"), "{e}");
        let e = RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(1), 0).unwrap_err();
        assert!(e.to_string().contains("retry.max_attempts"), "{e}");
    }
}
