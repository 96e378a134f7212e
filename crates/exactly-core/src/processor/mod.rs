//! The broker-agnostic processing protocol.
//!
//! For each delivery an adapter calls [`Processor::process`] and carries out the
//! [`Disposition`] it returns:
//!
//! 1. find the key ([`KeyStrategy`]); none → dead-letter `missing-key` (or run
//!    unprotected, if the policy says so);
//! 2. ask the circuit breaker; open → [`Disposition::Pause`];
//! 3. claim the key ([`claim`]): done with the same payload → duplicate, ack without
//!    running; done with another payload → dead-letter `key-conflict`; dead-lettered
//!    before → ack; held by a live claim → retry later; held by a crashed claim → run
//!    again or dead-letter `unknown-outcome` ([`OrphanPolicy`]);
//! 4. run the handler through its [`layers`], renewing the lease, and commit the outcome
//!    ([`attempt`]): a done-record, a position watermark, or state alone ([`commit`]);
//! 5. decide what a failure becomes ([`verdict`]): a retry with backoff, a pause of the
//!    consumer (breaker), or a dead-letter.
//!
//! Every delivery takes this one path; only how step 4 commits differs.

mod attempt;
mod breaker;
mod builder;
mod claim;
mod commit;
mod dead_letter;
mod disposition;
mod faults;
pub mod layers;
mod retry;
mod staged;
mod verdict;

pub use breaker::{BreakerConfig, BreakerState};
pub use builder::{DEFAULT_LEASE, DEFAULT_RETENTION, DEFAULT_TIMEOUT, OrphanPolicy, ProcessorBuilder};
pub use dead_letter::PendingDeadLetter;
pub use disposition::{DeadLetter, Disposition, Outcome, Processed, reasons};
pub use faults::{CrashPoint, FaultInjector};
pub use retry::RetryPolicy;
pub use staged::Staged;

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use self::breaker::CircuitBreaker;
use self::commit::Commit;
use crate::clock::SharedClock;
use crate::metrics::ConsumerMetrics;
use crate::store::DedupStore;
use crate::{Error, Handler, KeyLookup, KeyStrategy, Message, Result};

/// The header that marks a message re-driven from the dead-letter destination: its key's
/// dead-letter mark is cleared and the handler runs again.
pub const REDRIVE_HEADER: &str = "x-exactly-redrive";

/// Shortest and longest wait before retrying a key another delivery holds.
const BUSY_MIN: Duration = Duration::from_millis(50);
const BUSY_MAX: Duration = Duration::from_secs(1);

/// Runs the processing protocol for one consumer. Cheap to clone; share it between the
/// tasks of an adapter.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), exactly_core::Error> {
/// use exactly_core::{handler_fn, Context, Disposition, Message, MemoryStore, Outcome, Processor};
///
/// let processor = Processor::builder("greeter", handler_fn(|msg: Message, _ctx: Context| async move {
///     Ok(format!("hello {}", msg.payload_str().unwrap_or("?")))
/// }))
/// .store(MemoryStore::new())
/// .build()?;
///
/// let msg = Message::builder("ada").header("idempotency-key", "k1").build();
/// let first = processor.process(msg.clone()).await?;
/// assert_eq!((first.disposition, first.outcome), (Disposition::Ack, Outcome::Handled));
/// let again = processor.process(msg).await?;
/// assert_eq!(again.outcome, Outcome::Duplicate);
/// assert_eq!(again.output.as_deref(), Some(&b"hello ada"[..]));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Processor {
    inner: Arc<Inner>,
}

struct Inner {
    consumer: Arc<str>,
    stack: layers::Stack,
    store: Arc<dyn DedupStore>,
    keys: KeyStrategy,
    retry: RetryPolicy,
    lease: Duration,
    orphans: OrphanPolicy,
    retention: Duration,
    breaker: Option<CircuitBreaker>,
    clock: SharedClock,
    faults: Option<Arc<dyn crate::FaultInjector>>,
    max_state_conflicts: u32,
    locks: Arc<crate::context::StateLocks>,
    lock_timeout: Duration,
    metrics: ConsumerMetrics,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("consumer", &self.inner.consumer)
            .field("store", &self.inner.store)
            .field("orphans", &self.inner.orphans)
            .finish_non_exhaustive()
    }
}

impl Processor {
    /// Starts configuring a processor for `consumer` (the key namespace) and `handler`.
    pub fn builder<H: Handler>(consumer: impl Into<String>, handler: H) -> ProcessorBuilder {
        ProcessorBuilder::new(consumer, handler)
    }

    /// The consumer name (key namespace).
    pub fn consumer(&self) -> &str {
        &self.inner.consumer
    }

    /// Counts a duplicate an adapter answered without processing it (the Kafka adapter's
    /// records below its watermark) in `exactly_duplicates_total`.
    pub fn answered_duplicate(&self, by: crate::metrics::AnsweredBy) {
        self.inner.metrics.duplicate(by);
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn DedupStore> {
        &self.inner.store
    }

    /// The clock.
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// The circuit breaker's state (closed when there is none).
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.as_ref().map_or(BreakerState::Closed, CircuitBreaker::state)
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<()> {
        self.inner.store.flush().await
    }

    /// Processes one delivery and says what to do with it, once everything it wrote is
    /// durable.
    ///
    /// Errors are failures of the store (or injected crashes): the adapter must then
    /// acknowledge nothing more and stop, so unacknowledged messages are redelivered.
    pub async fn process(&self, msg: Message) -> Result<Processed> {
        self.process_staged(msg).await?.durable().await
    }

    /// Processes one delivery and returns as soon as the outcome is decided, while its
    /// done-record may still be on its way to disk. Carry out the disposition only after
    /// [`Staged::durable`]; meanwhile the next delivery may be processed, which is how an
    /// adapter keeps a partition's handler calls in order without waiting for each fsync.
    pub async fn process_staged(&self, msg: Message) -> Result<Staged> {
        let key = self.inner.keys.extract(&msg);
        self.traced(msg, key, None).await
    }

    /// Processes a message whose broker keeps positions and hands them out in order (a
    /// Kafka partition in offset order). When the message's key is its position
    /// (`topic/partition/offset`, the default key of a Kafka record without an
    /// idempotency-key header), its done-record is the partition's watermark, stored under
    /// the meta name `watermark` as the next offset (i64 BE): no per-record lookup or
    /// record is needed, and any state writes commit atomically with the new watermark.
    /// Retries count attempts through [`Message::delivery_count`]. Any other key takes the
    /// ordinary path ([`Processor::process_staged`]).
    pub async fn process_positioned(&self, msg: Message, watermark: &str) -> Result<Staged> {
        let key = self.inner.keys.extract(&msg);
        let positioned = matches!(&key, KeyLookup::Found(k) if commit::is_position(&msg, k));
        self.traced(msg, key, positioned.then_some(watermark)).await
    }

    /// The protocol for one delivery, in its span, counted in the metrics.
    async fn traced(&self, msg: Message, key: KeyLookup, watermark: Option<&str>) -> Result<Staged> {
        let span = tracing::debug_span!(
            "message",
            consumer = %self.inner.consumer,
            coordinates = %msg.coordinates(),
            key = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let published_ms = msg.coordinates().timestamp_ms;
        let processed = self.run(msg, key, watermark).instrument(span.clone()).await?;
        span.record("outcome", processed.outcome.as_str());
        self.inner.metrics.outcome(processed.outcome);
        if let Some(dl) = processed.dead_letter() {
            self.inner.metrics.dead_letter(&dl.reason);
            tracing::warn!(parent: &span, reason = %dl.reason, attempts = dl.attempts, error = ?dl.last_error, "dead-lettering");
        } else {
            tracing::debug!(parent: &span, "processed");
        }
        Ok(Staged::new(processed, self.clone(), started, published_ms))
    }

    /// Steps 1-5 for one delivery.
    async fn run(&self, msg: Message, key: KeyLookup, watermark: Option<&str>) -> Result<Processed> {
        let key = match self.key_of(&msg, key) {
            Ok(key) => key,
            Err(answer) => return Ok(*answer),
        };
        if let Some(k) = &key {
            tracing::Span::current().record("key", k.as_str());
        }
        let probe = match self.admit(key.as_deref()) {
            Ok(probe) => probe,
            Err(paused) => return Ok(*paused),
        };
        let guard = breaker::ProbeGuard::new(self.inner.breaker.as_ref(), probe);
        let result = match (key, watermark) {
            (Some(k), Some(w)) => {
                let next = msg.coordinates().offset.unwrap_or(0).saturating_add(1);
                let commit = Commit::Position { key: k, watermark: w, next };
                self.attempts(&msg, &commit, msg.delivery_count().unwrap_or(0), probe).await
            }
            (Some(k), None) => self.claimed(&msg, k, probe).await,
            (None, _) => self.attempts(&msg, &Commit::State, msg.delivery_count().unwrap_or(0), probe).await,
        };
        guard.disarm();
        if result.is_err() {
            self.breaker_neutral(probe);
        }
        result
    }

    fn breaker_neutral(&self, probe: bool) {
        if let Some(b) = &self.inner.breaker {
            b.neutral(probe);
        }
    }

    fn crash_point(&self, point: CrashPoint, key: Option<&str>) -> Result<()> {
        match &self.inner.faults {
            Some(f) if f.crash_at(point, key) => Err(Error::InjectedCrash(point)),
            _ => Ok(()),
        }
    }

    /// The store's background purge of expired records: the one running on it already,
    /// or a [`Sweeper`](crate::Sweeper) with default settings, started. Adapters hold it
    /// while they run; it stops when the last holder lets go.
    pub fn sweeper(&self) -> Arc<crate::store::SweeperHandle> {
        crate::Sweeper::default().start(self.inner.store.clone(), self.inner.clock.clone())
    }
}
