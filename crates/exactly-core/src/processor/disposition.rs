//! What the processor tells the adapter to do with a delivery.

use std::time::Duration;

use bytes::Bytes;

use super::PendingDeadLetter;
use super::dead_letter::Hold;
use crate::{Coordinates, OutboundRecord, Result};

/// Dead-letter reasons the processor itself gives. Handlers add their own through
/// [`HandlerError::permanent`](crate::HandlerError::permanent).
pub mod reasons {
    /// No key source found a key and the policy is to dead-letter.
    pub const MISSING_KEY: &str = "missing-key";
    /// A key was found but cannot be used (too long, not UTF-8, wrong header type).
    pub const INVALID_KEY: &str = "invalid-key";
    /// The key is done for a different payload.
    pub const KEY_CONFLICT: &str = "key-conflict";
    /// A previous holder crashed mid-run and the handler must not run twice.
    pub const UNKNOWN_OUTCOME: &str = "unknown-outcome";
    /// A transient failure persisted through every attempt.
    pub const RETRIES_EXHAUSTED: &str = "retries-exhausted";
    /// The payload did not decode.
    pub const DECODE: &str = "decode";
    /// A state key or value, or the output with the emitted records, is larger than the
    /// store takes.
    pub const TOO_LARGE: &str = "too-large";
    /// A load-shedding layer refused the message (a retry reason: it is retried later,
    /// and the refusal does not count as an attempt).
    pub const OVERLOADED: &str = "overloaded";
    /// A shared store could not be reached (a retry reason: the message is retried
    /// later, the failure does not count as an attempt, and the breaker pauses the
    /// consumer while it lasts).
    pub const STORE_UNAVAILABLE: &str = "store-unavailable";
    /// The handler's state reads kept going stale under it, another run of the same state
    /// committing first, through every re-run (a retry reason: contention, which does not
    /// open the breaker).
    pub const STATE_CONFLICT: &str = "state-conflict";
    /// The handler waited too long for a state key another run holds (a retry reason:
    /// contention, which does not open the breaker).
    pub const STATE_LOCK_TIMEOUT: &str = "state-lock-timeout";
    /// The handler's store transaction could not commit through the handler's fault (it
    /// ended the transaction itself, or went on after a statement of it failed).
    pub const TRANSACTION_FAILED: &str = "transaction-failed";
}

/// The broker operation an adapter performs for a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Acknowledge (AMQP `basic.ack`; Kafka: mark the offset finished). Publish
    /// [`Processed::output`] to the reply destination and [`Processed::emitted`] first.
    Ack,
    /// Not now: deliver this message again after `after` (a delayed requeue; never a hot
    /// loop of immediate requeues).
    Retry {
        /// The delay.
        after: Duration,
    },
    /// Publish to the dead-letter destination with these details, wait for the broker's
    /// confirmation, call [`Processed::confirm_dead_letter`] (or, if it could not be
    /// delivered, [`Processed::abandon_dead_letter`]), then acknowledge.
    DeadLetter(Box<DeadLetter>),
    /// The circuit breaker is open: keep this message unacknowledged, stop taking new
    /// messages (pause partitions, stop prefetching) for `after`, then process it again.
    Pause {
        /// How long to pause.
        after: Duration,
    },
}

/// Why and how a message is dead-lettered; adapters turn it into headers.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The same for every copy of one message dead-lettered for one reason (32 hex
    /// digits): dead letters are published at least once, and a consumer of the
    /// dead-letter destination drops copies by it (header `x-exactly-dead-letter-id`).
    pub id: String,
    /// The reason, a kebab-case word (see [`reasons`]).
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// The first error seen.
    pub first_error: Option<String>,
    /// The last error seen.
    pub last_error: Option<String>,
    /// The idempotency key, when there was one.
    pub key: Option<String>,
    /// Where the message came from.
    pub coordinates: Coordinates,
}

/// What happened to a delivery, for metrics and logs: did the handler run, or was a
/// cached result used?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The handler ran and its result is durable.
    Handled,
    /// A duplicate: the cached result was used, the handler did not run.
    Duplicate,
    /// The key was dead-lettered before; acknowledged without a run.
    AlreadyDeadLettered,
    /// A transient failure; retried later.
    Retry,
    /// Sent to the dead-letter destination.
    DeadLettered,
    /// Another delivery of the same key holds it; retried later.
    Busy,
    /// The circuit breaker is open.
    Paused,
}

impl Outcome {
    /// The label value used in metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Handled => "handled",
            Outcome::Duplicate => "duplicate",
            Outcome::AlreadyDeadLettered => "already_dead_lettered",
            Outcome::Retry => "retry",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Busy => "busy",
            Outcome::Paused => "paused",
        }
    }

    /// Whether the handler's result was served from the store.
    pub fn is_cached(&self) -> bool {
        matches!(self, Outcome::Duplicate | Outcome::AlreadyDeadLettered)
    }
}

/// The processor's answer for one delivery.
#[derive(Debug)]
#[must_use = "an adapter must carry out the disposition"]
pub struct Processed {
    /// What to do with the delivery.
    pub disposition: Disposition,
    /// What happened.
    pub outcome: Outcome,
    /// The idempotency key, when there was one.
    pub key: Option<String>,
    /// The handler's output (fresh or cached): the reply to send.
    pub output: Option<Bytes>,
    /// Records to publish before acknowledging (fresh or cached).
    pub emitted: Vec<OutboundRecord>,
    /// Failed attempts so far, for a retry or a dead-letter (an adapter that requeues the
    /// message elsewhere carries it along, see [`Message::delivery_count`](crate::Message::delivery_count)).
    pub attempts: u32,
    /// The claim a dead-letter holds until it is confirmed or abandoned.
    pending: Option<PendingDeadLetter>,
    /// The done-record on its way to disk (see [`Staged`](crate::Staged)).
    pub(crate) durable: Option<crate::store::Durable>,
}

impl Processed {
    pub(crate) fn new(disposition: Disposition, outcome: Outcome, key: Option<String>) -> Self {
        Self { disposition, outcome, key, output: None, emitted: Vec::new(), attempts: 0, pending: None, durable: None }
    }

    pub(crate) fn set_hold(&mut self, processor: &super::Processor, hold: Hold) {
        self.pending = Some(PendingDeadLetter::new(processor, hold));
    }

    /// For a dead-letter: once the broker has confirmed the dead-letter publish, marks the
    /// key dead-lettered, so redeliveries are acknowledged without a run until the message
    /// is re-driven. Call it before acknowledging the original. Nothing to do (`Ok`) for
    /// other dispositions, and for dead-letters of messages without a claimed key.
    pub async fn confirm_dead_letter(&mut self) -> Result<()> {
        match self.pending.take() {
            Some(p) => p.confirm().await,
            None => Ok(()),
        }
    }

    /// For a dead-letter that could not be published: releases the claim, so the
    /// unacknowledged message runs again when the broker delivers it again.
    pub async fn abandon_dead_letter(&mut self) -> Result<()> {
        match self.pending.take() {
            Some(p) => p.abandon().await,
            None => Ok(()),
        }
    }

    /// The claim a dead-letter holds, to settle separately from this value.
    pub fn take_pending_dead_letter(&mut self) -> Option<PendingDeadLetter> {
        self.pending.take()
    }

    /// The dead-letter details, when the disposition is a dead-letter.
    pub fn dead_letter(&self) -> Option<&DeadLetter> {
        match &self.disposition {
            Disposition::DeadLetter(d) => Some(&**d),
            _ => None,
        }
    }
}
