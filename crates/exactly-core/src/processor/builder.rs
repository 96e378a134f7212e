//! Configuring a [`Processor`].

use std::sync::Arc;
use std::time::Duration;

use super::breaker::{BreakerConfig, CircuitBreaker};
use super::{Inner, Processor};
use crate::clock::{SharedClock, SystemClock};
use crate::handler::Handler;
use crate::metrics::ConsumerMetrics;
use crate::store::DedupStore;
use crate::{Error, FaultInjector, KeyStrategy, Result, RetryPolicy};

/// What to do when a claim's previous holder crashed, or its lease ran out, while its
/// handler ran: its effects may or may not have happened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OrphanPolicy {
    /// Run the handler again. Right when the handler's effects are its transactional
    /// state (nothing was committed) or idempotent downstream calls. The default.
    #[default]
    RunAgain,
    /// Dead-letter the message with reason `unknown-outcome` for a person to check.
    /// For handlers whose external effects must never repeat (a payment without an
    /// idempotency key). Each claim is then written durably before the handler runs, so
    /// a crash is noticed after a restart; that costs one group commit per message.
    Quarantine,
}

/// Builder methods that each set one field to the value given.
macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident($field:ident: $ty:ty)),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $field: $ty) -> Self {
                self.$field = $field;
                self
            }
        )*
    };
}

/// Configures a [`Processor`]. Every setting has a default; `build` validates them.
#[must_use]
pub struct ProcessorBuilder {
    consumer: String,
    handler: crate::handler::SharedHandler,
    store: Option<Arc<dyn DedupStore>>,
    keys: KeyStrategy,
    retry: RetryPolicy,
    timeout: Duration,
    lease: Duration,
    orphans: OrphanPolicy,
    retention: Duration,
    breaker: Option<BreakerConfig>,
    clock: SharedClock,
    faults: Option<Arc<dyn FaultInjector>>,
    max_state_conflicts: u32,
    lock_timeout: Duration,
    layers: Vec<super::layers::AddLayer>,
    settlement_objective: Option<Duration>,
}

impl std::fmt::Debug for ProcessorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorBuilder")
            .field("consumer", &self.consumer)
            .field("store", &self.store)
            .field("keys", &self.keys)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .field("lease", &self.lease)
            .field("orphans", &self.orphans)
            .field("retention", &self.retention)
            .field("breaker", &self.breaker)
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

/// Default handler timeout: 30 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default lease: 60 s, renewed every 20 s while the handler runs.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// Default retention of done-records: 7 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

impl ProcessorBuilder {
    pub(super) fn new<H: Handler>(consumer: impl Into<String>, handler: H) -> Self {
        Self {
            consumer: consumer.into(),
            handler: Arc::new(handler),
            store: None,
            keys: KeyStrategy::default(),
            retry: RetryPolicy::default(),
            timeout: DEFAULT_TIMEOUT,
            lease: DEFAULT_LEASE,
            orphans: OrphanPolicy::default(),
            retention: DEFAULT_RETENTION,
            breaker: Some(BreakerConfig::default()),
            clock: Arc::new(SystemClock),
            faults: None,
            max_state_conflicts: 16,
            lock_timeout: Duration::from_secs(5),
            layers: Vec::new(),
            settlement_objective: None,
        }
    }

    /// The store (required). See [`SledStore`](crate::SledStore) and
    /// [`MemoryStore`](crate::MemoryStore).
    pub fn store(self, store: impl DedupStore) -> Self {
        self.shared_store(Arc::new(store))
    }

    /// A store shared with other processors or kept for inspection.
    pub fn shared_store(mut self, store: Arc<dyn DedupStore>) -> Self {
        self.store = Some(store);
        self
    }

    setters! {
        /// Where keys come from (default: `idempotency-key` header, message id, coordinates).
        keys(keys: KeyStrategy),
        /// Retries of transient failures (default: 5 attempts, 100 ms to 30 s).
        retry(retry: RetryPolicy),
        /// The longest one attempt may run (default 30 s); then it counts as a transient
        /// failure with reason `timeout`.
        timeout(timeout: Duration),
        /// How long a claim lasts without renewal (default 60 s). A heartbeat renews it
        /// every third of that while the handler runs, so a long handler never loses its
        /// claim.
        lease(lease: Duration),
        /// What to do with a key whose previous holder crashed (default: run again).
        orphans(orphans: OrphanPolicy),
        /// How long done-records are kept (default 7 days). A duplicate arriving later runs
        /// the handler again.
        retention(retention: Duration),
        /// The clock (default: the system clock). Tests inject a
        /// [`ManualClock`](crate::ManualClock).
        clock(clock: SharedClock),
        /// How long a handler waits for the lock of a state key another run holds before
        /// it fails transiently with reason `state-lock-timeout` (default 5 s).
        state_lock_timeout(lock_timeout: Duration),
    }

    /// The circuit breaker (default on, see [`BreakerConfig`]).
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Turns the circuit breaker off: transient failures only retry and dead-letter.
    pub fn no_breaker(mut self) -> Self {
        self.breaker = None;
        self
    }

    /// The service-level objective for how long after publishing a message is settled
    /// (handled, answered as a duplicate, or dead-lettered): later ones are counted in
    /// `exactly_settlement_late_total`, the bad events of a burn-rate alert (the app sets it
    /// from a subscription's `slo.settled_within`). Every settlement's age goes to
    /// `exactly_settlement_age_seconds` either way.
    pub fn settlement_objective(mut self, objective: Duration) -> Self {
        self.settlement_objective = Some(objective);
        self
    }

    /// Injects crashes (tests).
    pub fn faults(mut self, faults: Arc<dyn FaultInjector>) -> Self {
        self.faults = Some(faults);
        self
    }

    /// How often a handler is re-run after its state reads went stale before the
    /// message is retried later (default 16).
    pub fn max_state_conflicts(mut self, n: u32) -> Self {
        self.max_state_conflicts = n.max(1);
        self
    }

    /// Wraps the handler in a [`tower::Layer`], as `tower::ServiceBuilder` and axum's
    /// `Router::layer` do: `tower::limit::ConcurrencyLimitLayer`, `RateLimitLayer`,
    /// `LoadShedLayer`, `TimeoutLayer`, or a layer of your own (see
    /// [`layers`](crate::layers) for the request it sees). Each call wraps what
    /// is there: the last layer added runs first.
    ///
    /// A layer runs inside the claim, between the claim and the commit of the
    /// done-record: its effects are protected like the handler's, and while it makes a
    /// message wait (a concurrency or rate limit) the claim is held and its lease
    /// renewed. An error a layer returns is a failure of the attempt: a load-shedding
    /// layer's refusal is transient (reason `overloaded`) and retried, never lost; a
    /// [`HandlerError`](crate::HandlerError) it returns through
    /// [`HandlerError::into_box`](crate::HandlerError::into_box) is taken as it is.
    ///
    /// ```
    /// # fn main() -> Result<(), exactly_core::Error> {
    /// use exactly_core::{handler_fn, Context, Message, MemoryStore, Processor};
    /// use exactly_core::tower::limit::ConcurrencyLimitLayer;
    ///
    /// let p = Processor::builder("orders", handler_fn(|_m: Message, _c: Context| async { Ok(()) }))
    ///     .store(MemoryStore::new())
    ///     .layer(ConcurrencyLimitLayer::new(8)) // at most 8 handler calls at once
    ///     .build()?;
    /// # let _ = p; Ok(()) }
    /// ```
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<super::layers::HandlerService> + Send + Sync + 'static,
        L::Service: tower::Service<super::layers::HandlerRequest, Response = Option<bytes::Bytes>> + Send + 'static,
        <L::Service as tower::Service<super::layers::HandlerRequest>>::Error: Into<super::layers::BoxError>,
        <L::Service as tower::Service<super::layers::HandlerRequest>>::Future: Send + 'static,
    {
        self.layers.push(super::layers::add(layer));
        self
    }

    /// Validates the settings and makes the processor.
    pub fn build(self) -> Result<Processor> {
        let consumer = self.consumer.trim();
        if consumer.is_empty() {
            return Err(Error::config("consumer", "must not be empty: it namespaces the keys"));
        }
        if consumer.len() > 255 || consumer.chars().any(char::is_control) {
            return Err(Error::config("consumer", "must be at most 255 bytes of printable text"));
        }
        let store = self
            .store
            .ok_or_else(|| Error::config("store", "no store given; use SledStore::open or MemoryStore::new"))?;
        if self.timeout.is_zero() {
            return Err(Error::config("timeout", "must be greater than zero"));
        }
        if self.lease < Duration::from_millis(30) {
            return Err(Error::config("lease", "must be at least 30 ms (it is renewed every third of it)"));
        }
        if self.retention < Duration::from_secs(1) {
            return Err(Error::config("retention", "must be at least one second"));
        }
        let metrics = ConsumerMetrics::new(consumer, self.settlement_objective);
        let stack = super::layers::Stack::new(self.handler, self.timeout, metrics.clone(), self.layers);
        Ok(Processor {
            inner: Arc::new(Inner {
                consumer: consumer.into(),
                stack,
                store,
                keys: self.keys,
                retry: self.retry,
                lease: self.lease,
                orphans: self.orphans,
                retention: self.retention,
                breaker: self.breaker.map(CircuitBreaker::new),
                clock: self.clock,
                faults: self.faults,
                max_state_conflicts: self.max_state_conflicts,
                locks: Arc::new(crate::context::StateLocks::new()),
                lock_timeout: self.lock_timeout,
                metrics,
            }),
        })
    }
}
