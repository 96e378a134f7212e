//! Consume errors as an operator should see them: the first one logged at once, then one
//! summary every [`REPORT_EVERY`] however many come, a growing pause between polls while
//! they last, and how long the brokers have been unreachable.

use std::time::{Duration, Instant};

use exactly_core::RetryPolicy;

/// At most one warning this often while errors go on.
pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(30);

/// The state of consume errors and of the brokers' reachability.
#[derive(Debug, Default)]
pub(crate) struct Outage {
    /// When every broker became unreachable, while they are.
    unreachable_since: Option<Instant>,
    /// Consume errors in a row (the pause between polls grows with them).
    failures: u32,
    /// Errors since the last warning.
    unreported: u64,
    last_report: Option<Instant>,
    last_error: String,
}

/// What the poll loop does after a consume error.
#[derive(Debug, PartialEq)]
pub(crate) struct Step {
    /// Pause before polling again.
    pub(crate) pause: Duration,
    /// A warning to log now, if one is due.
    pub(crate) report: Option<String>,
}

impl Outage {
    /// A consume error at `now`; `unreachable` when it says no broker can be reached.
    pub(crate) fn error(&mut self, now: Instant, error: String, unreachable: bool) -> Step {
        if unreachable && self.unreachable_since.is_none() {
            self.unreachable_since = Some(now);
        }
        self.failures = self.failures.saturating_add(1);
        self.unreported += 1;
        self.last_error = error;
        let due = self.last_report.is_none_or(|at| now.duration_since(at) >= REPORT_EVERY);
        let report = due.then(|| {
            let text = match (self.unreachable_since, self.unreported) {
                (Some(since), n) => format!(
                    "Kafka brokers unreachable for {} s ({n} consume errors since the last report); last: {}",
                    now.duration_since(since).as_secs(),
                    self.last_error
                ),
                (None, 1) => format!("consume error: {}", self.last_error),
                (None, n) => format!("{n} consume errors since the last report; last: {}", self.last_error),
            };
            self.unreported = 0;
            self.last_report = Some(now);
            text
        });
        // librdkafka reconnects by itself; polling faster only repeats its error. At most a
        // second: rebalance callbacks run inside polls, and should not wait long.
        let backoff = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1), u32::MAX)
            .map(|p| p.delay(self.failures, None))
            .unwrap_or(Duration::from_secs(1));
        Step { pause: backoff, report }
    }

    /// A record arrived or a broker answered: the outage, if there was one, is over.
    /// Returns how long the brokers were unreachable.
    pub(crate) fn recovered(&mut self, now: Instant) -> Option<Duration> {
        self.failures = 0;
        let lasted = self.unreachable_since.take().map(|since| now.duration_since(since));
        if lasted.is_some() {
            // A new outage is told at once; other errors keep their pace.
            self.unreported = 0;
            self.last_report = None;
        }
        lasted
    }

    /// Whether anything is to be recovered from (cheap to ask for every record).
    pub(crate) fn troubled(&self) -> bool {
        self.failures > 0 || self.unreachable_since.is_some()
    }

    /// No broker answers (the statistics say so) from `now` on, unless known earlier.
    pub(crate) fn all_down(&mut self, now: Instant) {
        self.unreachable_since.get_or_insert(now);
    }

    /// How long every broker has been unreachable, and the last error seen.
    pub(crate) fn unreachable(&self, now: Instant) -> Option<(Duration, &str)> {
        self.unreachable_since.map(|since| (now.duration_since(since), self.last_error.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_errors_in_a_minute_are_two_warnings_and_the_pause_is_bounded() {
        let start = Instant::now();
        let mut o = Outage::default();
        let mut reports = Vec::new();
        let mut pauses = Vec::new();
        for i in 0..1000u64 {
            let step = o.error(start + Duration::from_millis(60 * i), "transport failure".into(), true);
            pauses.push(step.pause);
            reports.extend(step.report);
        }
        assert_eq!(reports.len(), 2, "{reports:?}");
        assert!(reports[1].starts_with("Kafka brokers unreachable for 30 s (500 consume errors"), "{reports:?}");
        assert!(pauses.iter().all(|p| *p <= Duration::from_secs(1)));
        assert_eq!(o.unreachable(start + Duration::from_secs(60)).map(|(d, _)| d), Some(Duration::from_secs(60)));
        assert_eq!(o.recovered(start + Duration::from_secs(61)), Some(Duration::from_secs(61)));
        assert!(o.unreachable(start).is_none());
        let again = o.error(start + Duration::from_secs(62), "x".into(), false);
        assert_eq!(again.report.as_deref(), Some("consume error: x"), "after recovery the next error is told at once");
    }
}
