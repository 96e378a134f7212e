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
//! | `exactly_store_flush_duration_seconds` | histogram | |
//! | `exactly_store_flush_batch_size` | histogram | |
//! | `exactly_store_purged_total` | counter | |

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
/// `exactly_store_flush_duration_seconds`
pub const STORE_FLUSH_DURATION: &str = "exactly_store_flush_duration_seconds";
/// `exactly_store_flush_batch_size`
pub const STORE_FLUSH_BATCH: &str = "exactly_store_flush_batch_size";
/// `exactly_store_purged_total`
pub const STORE_PURGED_TOTAL: &str = "exactly_store_purged_total";

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
    consumer: std::sync::Arc<str>,
}

impl std::fmt::Debug for ConsumerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerMetrics").field("consumer", &self.consumer).finish()
    }
}

impl ConsumerMetrics {
    pub(crate) fn new(consumer: &str) -> Self {
        let c = consumer.to_owned();
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
