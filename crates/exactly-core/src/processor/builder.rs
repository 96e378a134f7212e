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

    /// Where keys come from (default: `idempotency-key` header, message id, coordinates).
    pub fn keys(mut self, keys: KeyStrategy) -> Self {
        self.keys = keys;
        self
    }

    /// Retries of transient failures (default: 5 attempts, 100 ms to 30 s).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The longest one attempt may run (default 30 s); then it counts as a transient
    /// failure with reason `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a claim lasts without renewal (default 60 s). A heartbeat renews it every
    /// third of that while the handler runs, so a long handler never loses its claim.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// What to do with a key whose previous holder crashed (default: run again).
    pub fn orphans(mut self, policy: OrphanPolicy) -> Self {
        self.orphans = policy;
        self
    }

    /// How long done-records are kept (default 7 days). A duplicate arriving later runs
    /// the handler again.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
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

    /// The clock (default: the system clock). Tests inject a [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
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

    /// How long a handler waits for the lock of a state key another run holds before it
    /// fails transiently with reason `state-lock-timeout` (default 5 s).
    pub fn state_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
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
        let metrics = ConsumerMetrics::new(consumer);
        Ok(Processor {
            inner: Arc::new(Inner {
                consumer: consumer.into(),
                handler: self.handler,
                store,
                keys: self.keys,
                retry: self.retry,
                timeout: self.timeout,
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
