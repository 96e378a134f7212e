//! The broker-agnostic processing protocol.
//!
//! For each delivery an adapter calls [`Processor::process`] and carries out the
//! [`Disposition`] it returns:
//!
//! 1. find the key ([`KeyStrategy`]); none → dead-letter `missing-key` (or run
//!    unprotected, if the policy says so);
//! 2. ask the circuit breaker; open → [`Disposition::Pause`];
//! 3. claim the key: done with the same payload → duplicate, ack without running; done
//!    with another payload → dead-letter `key-conflict`; dead-lettered before → ack;
//!    held by a live claim → retry later; held by a crashed claim → run again or
//!    dead-letter `unknown-outcome` ([`OrphanPolicy`]);
//! 4. run the handler under a timeout, renewing the lease;
//! 5. success → write the done-record with the state changes, durably, then ack;
//!    transient failure → retry with backoff, dead-letter `retries-exhausted` after the
//!    last attempt; permanent failure → dead-letter with the handler's reason.

mod breaker;
mod builder;
mod disposition;
mod faults;
mod positioned;
mod retry;
mod run;

pub use breaker::{BreakerConfig, BreakerState};
pub use builder::{DEFAULT_LEASE, DEFAULT_RETENTION, DEFAULT_TIMEOUT, OrphanPolicy, ProcessorBuilder};
pub use disposition::{DeadLetter, Disposition, Outcome, Processed, reasons};
pub use faults::{CrashPoint, FaultInjector};
pub use retry::RetryPolicy;

use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::Instrument;

use self::breaker::{Admit, CircuitBreaker};
use self::disposition::Hold;
use crate::clock::{Millis, SharedClock, duration_millis};
use crate::handler::SharedHandler;
use crate::metrics::ConsumerMetrics;
use crate::store::{Claim, ClaimRequest, Committed, Completion, DedupStore, Final, Lease, StateChanges};
use crate::{
    Context, Error, ErrorKind, Fingerprint, Handler, HandlerError, KeyLookup, KeyStrategy, Message, MissingKey,
    OutboundRecord, Result, StoreKey,
};

/// The header that marks a message re-driven from the dead-letter destination: its key's
/// dead-letter mark is cleared and the handler runs again.
pub const REDRIVE_HEADER: &str = "x-exactly-redrive";

/// A processed delivery whose done-record may not be durable yet.
#[derive(Debug)]
#[must_use = "wait for durable() before acknowledging"]
pub struct Staged {
    processed: Processed,
    processor: Processor,
    started: std::time::Instant,
}

impl Staged {
    /// The outcome (do not acknowledge it before [`Staged::durable`]).
    pub fn processed(&self) -> &Processed {
        &self.processed
    }

    /// Whether nothing is left to wait for.
    pub fn is_durable(&self) -> bool {
        self.processed.durable.is_none()
    }

    /// Ready once [`Staged::durable`] would find everything durable (or failed) and
    /// return without waiting. An adapter that acknowledges in order can keep its staged
    /// deliveries in a queue and poll only the oldest.
    pub fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        match self.processed.durable.as_mut() {
            Some(d) => d.poll_ready(cx),
            None => std::task::Poll::Ready(()),
        }
    }

    /// Waits until everything the processing wrote is durable, and returns the outcome.
    pub async fn durable(mut self) -> Result<Processed> {
        if let Some(d) = self.processed.durable.take() {
            d.wait().await?;
            self.processor.crash_point(CrashPoint::AfterDoneRecord, self.processed.key.as_deref())?;
        }
        self.processor.inner.metrics.processing_time(self.started.elapsed());
        Ok(self.processed)
    }
}

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
    handler: SharedHandler,
    store: Arc<dyn DedupStore>,
    keys: KeyStrategy,
    retry: RetryPolicy,
    timeout: Duration,
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

/// How a claimed run ended, before it is turned into a [`Processed`].
struct RunCtx<'a> {
    key: &'a str,
    skey: &'a StoreKey,
    fingerprint: Fingerprint,
    lease: Lease,
    attempts_before: u32,
    probe: bool,
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
        self.process_keyed(msg, key).await
    }

    /// [`Processor::process_staged`] with the message's key already looked up.
    async fn process_keyed(&self, msg: Message, key: KeyLookup) -> Result<Staged> {
        let span = tracing::debug_span!(
            "message",
            consumer = %self.inner.consumer,
            coordinates = %msg.coordinates(),
            key = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let processed = self.process_inner(msg, key).instrument(span.clone()).await?;
        span.record("outcome", processed.outcome.as_str());
        self.inner.metrics.outcome(processed.outcome);
        if let Some(dl) = processed.dead_letter() {
            self.inner.metrics.dead_letter(&dl.reason);
            tracing::warn!(parent: &span, reason = %dl.reason, attempts = dl.attempts, error = ?dl.last_error, "dead-lettering");
        } else {
            tracing::debug!(parent: &span, "processed");
        }
        Ok(Staged { processed, processor: self.clone(), started })
    }

    async fn process_inner(&self, msg: Message, key: KeyLookup) -> Result<Processed> {
        let inner = &*self.inner;
        let key = match key {
            KeyLookup::Found(k) => k,
            KeyLookup::Missing => match inner.keys.missing_policy() {
                MissingKey::ProcessUnprotected => return self.unprotected(msg).await,
                _ => {
                    return Ok(self.dead_letter_now(
                        &msg,
                        None,
                        reasons::MISSING_KEY,
                        "no key source found a key".into(),
                    ));
                }
            },
            KeyLookup::Invalid(why) => {
                return Ok(self.dead_letter_now(&msg, None, reasons::INVALID_KEY, why));
            }
        };
        tracing::Span::current().record("key", key.as_str());
        let skey = StoreKey::new(&inner.consumer, &key);
        let fingerprint = Fingerprint::of(msg.payload());

        let probe = match inner.breaker.as_ref().map(CircuitBreaker::admit) {
            Some(Admit::Wait(after)) => {
                return Ok(Processed::new(Disposition::Pause { after }, Outcome::Paused, Some(key)));
            }
            Some(Admit::Go { probe }) => probe,
            None => false,
        };

        let now = inner.clock.now();
        let claim = inner
            .store
            .claim(ClaimRequest {
                key: &skey,
                fingerprint,
                now,
                lease_until: now + duration_millis(inner.lease),
                durable: inner.orphans == OrphanPolicy::Quarantine,
                redrive: msg.headers().get(REDRIVE_HEADER).is_some(),
            })
            .await;
        let claim = match claim {
            Ok(c) => c,
            Err(e) => {
                self.breaker_neutral(probe);
                return Err(e);
            }
        };
        let lease = match claim {
            Claim::Acquired(lease) => lease,
            other => {
                self.breaker_neutral(probe);
                return Ok(self.not_claimed(other, &msg, key, now));
            }
        };
        let attempts_before = lease.attempts.max(msg.delivery_count().unwrap_or(0));
        if lease.orphaned && inner.orphans == OrphanPolicy::Quarantine {
            self.breaker_neutral(probe);
            let why = "a previous run of this key was cut off (crash or lost lease); its effects may or may not have happened";
            let mut p = self.dead_letter_now(&msg, Some(&key), reasons::UNKNOWN_OUTCOME, why.into());
            p.hold = Some(Hold {
                key: skey,
                token: lease.token,
                fingerprint,
                attempts: attempts_before,
                reason: reasons::UNKNOWN_OUTCOME.into(),
            });
            return Ok(p);
        }
        let run = RunCtx { key: &key, skey: &skey, fingerprint, lease, attempts_before, probe };
        let result = self.run_claimed(&msg, &run).await;
        if result.is_err() {
            self.breaker_neutral(probe);
        }
        result
    }

    /// The answer for a claim that did not acquire the key.
    fn not_claimed(&self, claim: Claim, msg: &Message, key: String, now: Millis) -> Processed {
        match claim {
            Claim::Done { output, emitted, origin } => {
                let mut p = Processed::new(Disposition::Ack, Outcome::Duplicate, Some(key));
                p.output = output;
                // Emitted records go out again only for a redelivery of the message that
                // emitted them (its outputs may not have been published, or its Kafka
                // transaction not committed). Another message with the same key: they went
                // out with the first one.
                if origin.is_none() || origin == origin_of(msg) {
                    p.emitted = emitted;
                }
                p
            }
            Claim::DeadLettered { .. } => Processed::new(Disposition::Ack, Outcome::AlreadyDeadLettered, Some(key)),
            Claim::Conflict { stored } => {
                let why = format!(
                    "key is done for a payload with fingerprint {stored}, this payload's is {}",
                    Fingerprint::of(msg.payload())
                );
                self.dead_letter_now(msg, Some(&key), reasons::KEY_CONFLICT, why)
            }
            Claim::Busy { lease_until } => {
                let after = Duration::from_millis(lease_until.saturating_sub(now)).clamp(BUSY_MIN, BUSY_MAX);
                Processed::new(Disposition::Retry { after }, Outcome::Busy, Some(key))
            }
            Claim::Acquired(_) => unreachable!("handled by the caller"),
        }
    }

    async fn run_claimed(&self, msg: &Message, run: &RunCtx<'_>) -> Result<Processed> {
        let inner = &*self.inner;
        let attempt = run.attempts_before + 1;
        let mut conflicts = 0;
        loop {
            self.crash_point(CrashPoint::BeforeHandler, Some(run.key))?;
            let ctx = self.context(Some(run.key), attempt, run.lease.token, msg);
            let started = Instant::now();
            let store = &inner.store;
            let clock = &inner.clock;
            let lease_ms = duration_millis(inner.lease);
            let result =
                run::run_attempt(&inner.handler, msg.clone(), ctx.clone(), inner.timeout, inner.lease / 3, || async {
                    match store.renew(run.skey, run.lease.token, clock.now() + lease_ms).await {
                        Ok(held) => held,
                        // Unknown: keep going; a lost claim shows at the completion.
                        Err(e) => {
                            tracing::warn!(error = %e, "renewing the lease failed");
                            true
                        }
                    }
                })
                .await;
            inner.metrics.handler_time(started.elapsed());
            self.crash_point(CrashPoint::AfterHandler, Some(run.key))?;
            let mut finished = ctx.finish().await;
            let result = result.and_then(|output| self.fits(output, &finished.emitted));
            let error = match result {
                Ok(output) => {
                    let state = std::mem::take(&mut finished.state);
                    let emitted = stamp(std::mem::take(&mut finished.emitted), &inner.consumer, run.key);
                    let now = clock.now();
                    let staged = store
                        .complete_staged(Completion {
                            key: run.skey.clone(),
                            token: run.lease.token,
                            fingerprint: run.fingerprint,
                            attempts: attempt,
                            now,
                            origin: origin_of(msg),
                            outcome: Final::Done { output: output.clone(), emitted: emitted.clone() },
                            expires_at: now + duration_millis(inner.retention),
                            state,
                        })
                        .await;
                    // Released as soon as the writes are applied: a later run that reads
                    // them commits after them, and commits become durable in order.
                    finished.release();
                    let staged = staged?;
                    match staged.committed {
                        Committed::Ok => {
                            if let Some(b) = &inner.breaker {
                                b.success(run.probe);
                                inner.metrics.breaker(0.0);
                            }
                            let mut p = Processed::new(Disposition::Ack, Outcome::Handled, Some(run.key.to_owned()));
                            p.output = output;
                            p.emitted = emitted;
                            p.durable = Some(staged.durable);
                            return Ok(p);
                        }
                        Committed::Conflict => {
                            inner.metrics.conflict();
                            conflicts += 1;
                            if conflicts < inner.max_state_conflicts {
                                tracing::debug!(conflicts, "state changed under the handler; running it again");
                                continue;
                            }
                            HandlerError::transient(format!("state kept changing under the handler ({conflicts} runs)"))
                                .with_reason("state-conflict")
                        }
                        Committed::Fenced => {
                            self.breaker_neutral(run.probe);
                            tracing::warn!("the key was taken over while the handler ran; its result is discarded");
                            return Ok(Processed::new(
                                Disposition::Retry { after: BUSY_MIN },
                                Outcome::Busy,
                                Some(run.key.to_owned()),
                            ));
                        }
                    }
                }
                Err(e) => {
                    finished.release();
                    e
                }
            };
            return self.failed(msg, run, error).await;
        }
    }

    /// Turns a failed attempt into a retry, a pause or a dead-letter.
    async fn failed(&self, msg: &Message, run: &RunCtx<'_>, error: HandlerError) -> Result<Processed> {
        let inner = &*self.inner;
        let attempts = run.attempts_before + 1;
        let text = error.message();
        let first_error = run.lease.first_error.clone().or_else(|| Some(text.clone()));
        let key = Some(run.key.to_owned());
        if error.kind() == ErrorKind::Permanent {
            self.breaker_neutral(run.probe);
            return Ok(self.dead_letter_held(msg, run, error.reason(), text, first_error));
        }
        inner.metrics.retry_reason(error.reason());
        let key_hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(run.key);
        if let Some(pause) = inner.breaker.as_ref().and_then(|b| b.failure(key_hash, run.probe)) {
            // The dependency is down, not this message: the attempt does not count.
            inner.metrics.breaker(2.0);
            inner.store.release(run.skey, run.lease.token, run.attempts_before, Some(text)).await?;
            let mut p = Processed::new(Disposition::Pause { after: pause }, Outcome::Paused, key);
            p.attempts = run.attempts_before;
            return Ok(p);
        }
        if attempts >= inner.retry.max_attempts() {
            return Ok(self.dead_letter_held(msg, run, reasons::RETRIES_EXHAUSTED, text, first_error));
        }
        let after = inner.retry.delay(attempts, error.requested_retry_after());
        tracing::debug!(attempts, ?after, error = %text, "transient failure; retrying later");
        inner.store.release(run.skey, run.lease.token, attempts, Some(text)).await?;
        let mut p = Processed::new(Disposition::Retry { after }, Outcome::Retry, key);
        p.attempts = attempts;
        Ok(p)
    }

    /// A dead-letter of a claimed key: the claim is held until the adapter confirms the
    /// dead-letter is published.
    fn dead_letter_held(
        &self,
        msg: &Message,
        run: &RunCtx<'_>,
        reason: &str,
        error: String,
        first_error: Option<String>,
    ) -> Processed {
        let attempts = run.attempts_before + 1;
        let mut p = self.dead_letter_now(msg, Some(run.key), reason, error);
        if let Disposition::DeadLetter(d) = &mut p.disposition {
            d.attempts = attempts;
            d.first_error = first_error;
        }
        p.attempts = attempts;
        p.hold = Some(Hold {
            key: run.skey.clone(),
            token: run.lease.token,
            fingerprint: run.fingerprint,
            attempts,
            reason: reason.to_owned(),
        });
        p
    }

    /// A message without a key, let through by [`MissingKey::ProcessUnprotected`].
    async fn unprotected(&self, msg: Message) -> Result<Processed> {
        let inner = &*self.inner;
        let attempt = msg.delivery_count().unwrap_or(0) + 1;
        for _ in 0..inner.max_state_conflicts {
            self.crash_point(CrashPoint::BeforeHandler, None)?;
            let ctx = self.context(None, attempt, 0, &msg);
            let result =
                run::run_attempt(&inner.handler, msg.clone(), ctx.clone(), inner.timeout, inner.timeout, || async {
                    true
                })
                .await;
            self.crash_point(CrashPoint::AfterHandler, None)?;
            let mut finished = ctx.finish().await;
            let state = std::mem::take(&mut finished.state);
            let emitted = std::mem::take(&mut finished.emitted);
            let committed = match &result {
                Ok(_) => Some(inner.store.commit_state(state).await),
                Err(_) => None,
            };
            finished.release();
            match result {
                Ok(output) => {
                    if committed.transpose()? == Some(Committed::Conflict) {
                        inner.metrics.conflict();
                        continue;
                    }
                    self.crash_point(CrashPoint::AfterDoneRecord, None)?;
                    let mut p = Processed::new(Disposition::Ack, Outcome::Handled, None);
                    p.output = output;
                    p.emitted = emitted;
                    return Ok(p);
                }
                Err(e) if e.kind() == ErrorKind::Permanent => {
                    return Ok(self.dead_letter_now(&msg, None, e.reason(), e.message()));
                }
                Err(e) if attempt >= inner.retry.max_attempts() => {
                    return Ok(self.dead_letter_now(&msg, None, reasons::RETRIES_EXHAUSTED, e.message()));
                }
                Err(e) => {
                    let after = inner.retry.delay(attempt, e.requested_retry_after());
                    let mut p = Processed::new(Disposition::Retry { after }, Outcome::Retry, None);
                    p.attempts = attempt;
                    return Ok(p);
                }
            }
        }
        Ok(Processed::new(Disposition::Retry { after: BUSY_MIN }, Outcome::Retry, None))
    }

    fn context(&self, key: Option<&str>, attempt: u32, token: u64, msg: &Message) -> Context {
        let inner = &*self.inner;
        Context::new(
            inner.consumer.clone(),
            key,
            attempt,
            token,
            msg.coordinates().clone(),
            inner.store.clone(),
            inner.locks.clone(),
            inner.lock_timeout,
        )
    }

    fn dead_letter_now(&self, msg: &Message, key: Option<&str>, reason: &str, error: String) -> Processed {
        let dl = DeadLetter {
            reason: reason.to_owned(),
            attempts: msg.delivery_count().unwrap_or(0) + 1,
            first_error: Some(error.clone()),
            last_error: Some(error),
            key: key.map(str::to_owned),
            coordinates: msg.coordinates().clone(),
        };
        let attempts = dl.attempts;
        let mut p = Processed::new(Disposition::DeadLetter(dl), Outcome::DeadLettered, key.map(str::to_owned));
        p.attempts = attempts;
        p
    }

    /// The output, if it and the emitted records fit in a done-record of the store.
    fn fits(&self, output: Option<Bytes>, emitted: &[OutboundRecord]) -> Result<Option<Bytes>, HandlerError> {
        let size = output.as_ref().map_or(0, Bytes::len)
            + emitted
                .iter()
                .map(|r| {
                    r.payload.len()
                        + r.destination.len()
                        + r.key.as_ref().map_or(0, Bytes::len)
                        + r.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
                })
                .sum::<usize>();
        let max = self.inner.store.limits().max_value;
        if size > max {
            return Err(crate::context::too_large(format!(
                "the output and emitted records are {size} bytes; the store takes at most {max}"
            )));
        }
        Ok(output)
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

    /// Records that a dead-lettered message is safely in the dead-letter destination:
    /// its key is marked, so redeliveries are acknowledged without a run until the
    /// message is re-driven. Call it after the broker confirmed the dead-letter publish,
    /// before acknowledging the original.
    pub async fn confirm_dead_letter(&self, processed: &Processed) -> Result<()> {
        let Some(hold) = &processed.hold else {
            return Ok(());
        };
        let now = self.inner.clock.now();
        let committed = self
            .inner
            .store
            .complete(Completion {
                key: hold.key.clone(),
                token: hold.token,
                fingerprint: hold.fingerprint,
                attempts: hold.attempts,
                now,
                origin: None,
                outcome: Final::DeadLettered { reason: hold.reason.clone() },
                expires_at: now + duration_millis(self.inner.retention),
                state: StateChanges::default(),
            })
            .await?;
        if committed != Committed::Ok {
            tracing::warn!(key = %hold.key, ?committed, "could not mark the key dead-lettered");
        }
        Ok(())
    }

    /// Gives up a dead-letter that could not be published: the claim is released and the
    /// unacknowledged message will be processed again when the broker redelivers it.
    pub async fn abandon(&self, processed: &Processed) -> Result<()> {
        match &processed.hold {
            Some(hold) => self.inner.store.release(&hold.key, hold.token, hold.attempts, None).await,
            None => Ok(()),
        }
    }

    /// Starts the background purge of expired records.
    pub fn spawn_sweeper(&self, sweeper: crate::Sweeper) -> tokio::task::JoinHandle<()> {
        sweeper.spawn(self.inner.store.clone(), self.inner.clock.clone())
    }
}

/// The message's position (`topic/partition/offset`), when its broker has positions.
fn origin_of(msg: &Message) -> Option<String> {
    use std::fmt::Write as _;
    let c = msg.coordinates();
    c.offset?;
    // Sized for `topic/partition/offset` up front: `to_string` grows it piece by piece.
    let mut origin = String::with_capacity(c.source.len() + 32);
    write!(origin, "{c}").ok()?;
    Some(origin)
}

/// Gives each emitted record an `idempotency-key` header derived from the source key, so
/// a downstream consumer can drop the copies a redelivery publishes again.
fn stamp(mut emitted: Vec<OutboundRecord>, consumer: &str, key: &str) -> Vec<OutboundRecord> {
    for (i, r) in emitted.iter_mut().enumerate() {
        if r.header_value(crate::IDEMPOTENCY_KEY_HEADER).is_none() {
            r.headers.push((crate::IDEMPOTENCY_KEY_HEADER.into(), Bytes::from(format!("{consumer}:{key}:{i}"))));
        }
    }
    emitted
}
