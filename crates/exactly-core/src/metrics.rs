//! Metric names and the recording calls, through the `metrics` facade.
//!
//! Nothing is exported unless the application installs a recorder (the `exactly` app
//! runner installs a Prometheus one). Names follow Prometheus conventions:
//!
//! | name | type | labels |
//! |---|---|---|
//! | `exactly_messages_total` | counter | `consumer`, `outcome` (`handled`, `duplicate`, `already_dead_lettered`, `retry`, `dead_lettered`, `busy`, `paused`) |
//! | `exactly_dead_letters_total` | counter | `consumer`, `reason` |
//! | `exactly_retries_total` | counter | `consumer`, `reason` |
//! | `exactly_handler_duration_seconds` | histogram | `consumer` |
//! | `exactly_processing_duration_seconds` | histogram | `consumer`: from the start of processing a delivery to when it may be acknowledged (claim, handler, durable record) |
//! | `exactly_state_conflicts_total` | counter | `consumer` |
//! | `exactly_breaker_state` | gauge | `consumer` (0 closed, 1 half-open, 2 open) |
//! | `exactly_duplicates_total` | counter | `consumer`, `answered_by` (`store`: its done-record; `watermark`: a Kafka position below the partition's committed watermark) |
//! | `exactly_breaker_open_seconds` | histogram | `consumer`: from the breaker's opening to its closing again (the consumer paused meanwhile) |
//! | `exactly_store_flush_duration_seconds` | histogram | |
//! | `exactly_store_flush_batch_size` | histogram | |
//! | `exactly_store_purged_total` | counter | |
//! | `exactly_settlement_age_seconds` | histogram | `consumer`, `outcome` (`handled`, `duplicate`, `already_dead_lettered`, `dead_lettered`): from the message's publish timestamp to when it may be acknowledged |
//! | `exactly_settlement_late_total` | counter | `consumer`: settled later than the objective ([`ProcessorBuilder::settlement_objective`](crate::ProcessorBuilder::settlement_objective)) |
//! | `exactly_settlement_clock_skew_total` | counter | `consumer`: settled before its publish timestamp (the clocks disagree); recorded as age 0 |
//! | `exactly_settlement_untimed_total` | counter | `consumer`: settled without a publish timestamp (no age) |

use std::time::Duration;

/// `exactly_messages_total`
pub const MESSAGES_TOTAL: &str = "exactly_messages_total";
/// `exactly_dead_letters_total`
pub const DEAD_LETTERS_TOTAL: &str = "exactly_dead_letters_total";
/// `exactly_retries_total`
pub const RETRIES_TOTAL: &str = "exactly_retries_total";
/// `exactly_handler_duration_seconds`
pub const HANDLER_DURATION: &str = "exactly_handler_duration_seconds";
/// `exactly_processing_duration_seconds`: what the framework adds before a delivery may
/// be acknowledged (its claim, the handler, and the wait for its record to be durable).
pub const PROCESSING_DURATION: &str = "exactly_processing_duration_seconds";
/// `exactly_state_conflicts_total`
pub const STATE_CONFLICTS_TOTAL: &str = "exactly_state_conflicts_total";
/// `exactly_breaker_state`
pub const BREAKER_STATE: &str = "exactly_breaker_state";
/// `exactly_duplicates_total`: duplicates by what recognised them.
pub const DUPLICATES_TOTAL: &str = "exactly_duplicates_total";

/// What recognised a duplicate: the `answered_by` label of [`DUPLICATES_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnsweredBy {
    /// The key's done-record in the store.
    Store,
    /// A position (Kafka offset) below the partition's committed watermark.
    Watermark,
}

impl AnsweredBy {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AnsweredBy::Store => "store",
            AnsweredBy::Watermark => "watermark",
        }
    }
}

/// `exactly_breaker_open_seconds`: how long the breaker stayed open or half-open, the
/// consumer paused, recorded when it closes (its sum: the time paused).
pub const BREAKER_OPEN: &str = "exactly_breaker_open_seconds";
/// `exactly_store_flush_duration_seconds`
pub const STORE_FLUSH_DURATION: &str = "exactly_store_flush_duration_seconds";
/// `exactly_store_flush_batch_size`
pub const STORE_FLUSH_BATCH: &str = "exactly_store_flush_batch_size";
/// `exactly_store_purged_total`
pub const STORE_PURGED_TOTAL: &str = "exactly_store_purged_total";

/// `exactly_settlement_age_seconds`: how long after it was published a message was
/// settled (handled, answered as a duplicate, or dead-lettered), by the broker's or the
/// producer's timestamp and this machine's clock.
pub const SETTLEMENT_AGE: &str = "exactly_settlement_age_seconds";
/// `exactly_settlement_late_total`: settled later than the consumer's objective.
pub const SETTLEMENT_LATE_TOTAL: &str = "exactly_settlement_late_total";
/// `exactly_settlement_clock_skew_total`: settled before the timestamp it was published
/// with (the producer's or the broker's clock is ahead): counted here, and as age 0.
pub const SETTLEMENT_CLOCK_SKEW_TOTAL: &str = "exactly_settlement_clock_skew_total";
/// `exactly_settlement_untimed_total`: settled without a publish timestamp.
pub const SETTLEMENT_UNTIMED_TOTAL: &str = "exactly_settlement_untimed_total";

/// The outcomes that settle a message, in the order of [`ConsumerMetrics::ages`].
const SETTLED: [crate::Outcome; 4] = [
    crate::Outcome::Handled,
    crate::Outcome::Duplicate,
    crate::Outcome::AlreadyDeadLettered,
    crate::Outcome::DeadLettered,
];

/// Handles for one consumer's metrics, made once so the hot path does not build label
/// sets per message. Make the processor after installing the recorder.
#[derive(Clone)]
pub(crate) struct ConsumerMetrics {
    handled: metrics::Counter,
    duplicate: metrics::Counter,
    already_dead_lettered: metrics::Counter,
    retry: metrics::Counter,
    dead_lettered: metrics::Counter,
    busy: metrics::Counter,
    paused: metrics::Counter,
    handler_duration: metrics::Histogram,
    processing_duration: metrics::Histogram,
    conflicts: metrics::Counter,
    breaker: metrics::Gauge,
    breaker_open: metrics::Histogram,
    duplicates_by_store: metrics::Counter,
    duplicates_by_watermark: metrics::Counter,
    /// Settlement age by outcome, in the order of [`SETTLED`].
    ages: [metrics::Histogram; 4],
    /// The objective and the counter of settlements later than it.
    late: Option<(Duration, metrics::Counter)>,
    skewed: metrics::Counter,
    untimed: metrics::Counter,
    consumer: std::sync::Arc<str>,
}

impl std::fmt::Debug for ConsumerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerMetrics").field("consumer", &self.consumer).finish()
    }
}

impl ConsumerMetrics {
    pub(crate) fn new(consumer: &str, objective: Option<Duration>) -> Self {
        let c = consumer.to_owned();
        let duplicates =
            |by: AnsweredBy| metrics::counter!(DUPLICATES_TOTAL, "consumer" => c.clone(), "answered_by" => by.as_str());
        let age =
            |o: crate::Outcome| metrics::histogram!(SETTLEMENT_AGE, "consumer" => c.clone(), "outcome" => o.as_str());
        let outcome = |o: &'static str| metrics::counter!(MESSAGES_TOTAL, "consumer" => c.clone(), "outcome" => o);
        Self {
            handled: outcome("handled"),
            duplicate: outcome("duplicate"),
            already_dead_lettered: outcome("already_dead_lettered"),
            retry: outcome("retry"),
            dead_lettered: outcome("dead_lettered"),
            busy: outcome("busy"),
            paused: outcome("paused"),
            handler_duration: metrics::histogram!(HANDLER_DURATION, "consumer" => c.clone()),
            processing_duration: metrics::histogram!(PROCESSING_DURATION, "consumer" => c.clone()),
            conflicts: metrics::counter!(STATE_CONFLICTS_TOTAL, "consumer" => c.clone()),
            breaker: metrics::gauge!(BREAKER_STATE, "consumer" => c.clone()),
            breaker_open: metrics::histogram!(BREAKER_OPEN, "consumer" => c.clone()),
            duplicates_by_store: duplicates(AnsweredBy::Store),
            duplicates_by_watermark: duplicates(AnsweredBy::Watermark),
            ages: SETTLED.map(age),
            late: objective.map(|d| (d, metrics::counter!(SETTLEMENT_LATE_TOTAL, "consumer" => c.clone()))),
            skewed: metrics::counter!(SETTLEMENT_CLOCK_SKEW_TOTAL, "consumer" => c.clone()),
            untimed: metrics::counter!(SETTLEMENT_UNTIMED_TOTAL, "consumer" => c.clone()),
            consumer: consumer.into(),
        }
    }

    pub(crate) fn outcome(&self, o: crate::Outcome) {
        use crate::Outcome::*;
        match o {
            Handled => &self.handled,
            Duplicate => &self.duplicate,
            AlreadyDeadLettered => &self.already_dead_lettered,
            Retry => &self.retry,
            DeadLettered => &self.dead_lettered,
            Busy => &self.busy,
            Paused => &self.paused,
        }
        .increment(1);
    }

    /// A delivery may now be acknowledged: if `outcome` settles it, its age at `now_ms`
    /// from `published_ms`.
    pub(crate) fn settled(&self, outcome: crate::Outcome, published_ms: Option<i64>, now_ms: u64) {
        let Some(i) = SETTLED.iter().position(|o| *o == outcome) else { return };
        let Some(published) = published_ms else {
            self.untimed.increment(1);
            return;
        };
        let age_ms = i128::from(now_ms) - i128::from(published);
        if age_ms < 0 {
            self.skewed.increment(1);
        }
        let age = Duration::from_millis(u64::try_from(age_ms.max(0)).unwrap_or(u64::MAX));
        self.ages[i].record(age.as_secs_f64());
        if let Some((objective, late)) = &self.late
            && age > *objective
        {
            late.increment(1);
        }
    }

    pub(crate) fn handler_time(&self, d: Duration) {
        self.handler_duration.record(d.as_secs_f64());
    }

    pub(crate) fn processing_time(&self, d: Duration) {
        self.processing_duration.record(d.as_secs_f64());
    }

    pub(crate) fn conflict(&self) {
        self.conflicts.increment(1);
    }

    pub(crate) fn breaker(&self, state: f64) {
        self.breaker.set(state);
    }

    pub(crate) fn duplicate(&self, by: AnsweredBy) {
        match by {
            AnsweredBy::Store => &self.duplicates_by_store,
            AnsweredBy::Watermark => &self.duplicates_by_watermark,
        }
        .increment(1);
    }

    pub(crate) fn breaker_closed(&self, open: Duration) {
        self.breaker_open.record(open.as_secs_f64());
    }

    pub(crate) fn dead_letter(&self, reason: &str) {
        metrics::counter!(DEAD_LETTERS_TOTAL, "consumer" => self.consumer.to_string(), "reason" => reason.to_owned())
            .increment(1);
    }

    pub(crate) fn retry_reason(&self, reason: &str) {
        metrics::counter!(RETRIES_TOTAL, "consumer" => self.consumer.to_string(), "reason" => reason.to_owned())
            .increment(1);
    }
}

pub(crate) fn store_flushed(took: Duration, batch: usize) {
    metrics::histogram!(STORE_FLUSH_DURATION).record(took.as_secs_f64());
    metrics::histogram!(STORE_FLUSH_BATCH).record(batch as f64);
}

pub(crate) fn purged(n: u64) {
    metrics::counter!(STORE_PURGED_TOTAL).increment(n);
}
