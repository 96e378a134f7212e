//! The consumer: subscribe, poll, route records to partition workers, commit, stop.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exactly_core::Processor;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer as _, ConsumerGroupMetadata, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::builder::ConsumerBuilder;
use crate::hooks::ConsumerHooks;
use crate::outage::Outage;
use crate::state::{Committer, ConsumerState, Control, TopicPartition};

/// Counters of a consumer, for tests and monitoring.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records fetched and handed to a partition worker.
    pub records: AtomicU64,
    /// Records skipped below the local watermark, without a store lookup.
    pub skipped: AtomicU64,
    /// Records whose outcome is decided and durable (handled, duplicates, dead-lettered,
    /// skipped): their offsets are committed at the next commit.
    pub finished: AtomicU64,
    /// Records dead-lettered (delivered to the dead-letter topic).
    pub dead_lettered: AtomicU64,
    /// Offset commits (or transactions) that succeeded.
    pub commits: AtomicU64,
    /// Transactions aborted (their records and offsets went into a later one).
    pub transaction_aborts: AtomicU64,
    /// The consumer has joined its group: its first assignment (possibly empty, when the
    /// group has more members than partitions) has been applied. Readiness probes wait
    /// for it.
    pub joined: AtomicBool,
    /// Partitions assigned now.
    pub assigned: AtomicU64,
    lag: Mutex<HashMap<(String, i32), i64>>,
    pub(crate) outage: Mutex<Outage>,
    /// Whether `outage` holds errors or an outage: lets each record skip its lock.
    troubled: AtomicBool,
}

impl Stats {
    pub(crate) fn set_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.lag.lock().unwrap_or_else(|p| p.into_inner()).insert((topic.to_owned(), partition), lag);
    }

    pub(crate) fn outage(&self) -> std::sync::MutexGuard<'_, Outage> {
        self.outage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long no broker has answered, while none does.
    pub fn unreachable_for(&self) -> Option<Duration> {
        self.outage().unreachable(Instant::now()).map(|(d, _)| d)
    }

    /// Consumer lag per partition, as librdkafka last reported it.
    pub fn lag(&self) -> HashMap<(String, i32), i64> {
        self.lag.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Consumes topics in a consumer group with a [`Processor`]: every record is handled once
/// or dead-lettered with its reason, and offsets are committed only past records whose
/// outcome is durable. Build one with [`Consumer::builder`], then [`run`](Self::run) it
/// on a multi-threaded tokio runtime (a revoke waits for the records in flight).
///
/// ```no_run
/// # async fn example(processor: exactly_core::Processor) -> Result<(), exactly_kafka::Error> {
/// exactly_kafka::Consumer::builder("127.0.0.1:9092", "payments")
///     .topic("payments")
///     .build(processor)?
///     .run_until_signal()
///     .await
/// # }
/// ```
#[must_use = "a consumer does nothing until it runs"]
pub struct Consumer {
    consumer: Arc<StreamConsumer<ConsumerHooks>>,
    state: Arc<ConsumerState>,
    control: mpsc::UnboundedReceiver<Control>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("config", &self.state.cfg).finish_non_exhaustive()
    }
}

/// Stops a running consumer gracefully.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Asks the consumer to stop: no new records, records in flight finished (up to the
    /// shutdown timeout), offsets committed, store flushed.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

impl Drop for Consumer {
    /// After [`run`](Self::run), or without it (an aborted task, a runtime shutting
    /// down): stop the partition workers, whose queues keep librdkafka's consumer open,
    /// and let the revoke at close skip waiting. Nothing uncommitted is lost: it is
    /// delivered again.
    fn drop(&mut self) {
        self.state.closing.store(true, std::sync::atomic::Ordering::Relaxed);
        for p in self.state.partitions().values() {
            p.stop.cancel();
        }
    }
}

struct Live<'a>(&'a StreamConsumer<ConsumerHooks>);

fn list(tps: &[TopicPartition]) -> TopicPartitionList {
    let mut l = TopicPartitionList::new();
    for tp in tps {
        l.add_partition(&tp.0, tp.1);
    }
    l
}

impl Committer for Live<'_> {
    fn commit_offsets(&self, tpl: &TopicPartitionList, mode: CommitMode) -> Result<(), Error> {
        self.0.commit(tpl, mode).map_err(|source| Error::Commit { source })
    }

    fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        self.0.group_metadata()
    }
}

impl Consumer {
    /// Starts configuring a consumer of group `group` on brokers `brokers`
    /// (`host:port,host:port`).
    pub fn builder(brokers: impl Into<String>, group: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder::new(brokers, group)
    }

    pub(crate) fn new(cfg: ConsumerBuilder, processor: Processor) -> Result<Self, Error> {
        let producer: FutureProducer =
            cfg.producer_config().remove("transactional.id").create().map_err(|e| cfg.create_error("producer", &e))?;
        let txn_producer: Option<FutureProducer> = match &cfg.transactional_id {
            None => None,
            Some(_) => Some(cfg.producer_config().create().map_err(|e| cfg.create_error("producer", &e))?),
        };
        let consumer: StreamConsumer<ConsumerHooks> = cfg
            .consumer_config()
            .create_with_context(ConsumerHooks::default())
            .map_err(|e| cfg.create_error("consumer", &e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let state = Arc::new(ConsumerState::new(cfg, processor, producer, txn_producer, tx, stats));
        let _ = consumer.context().state.set(state.clone());
        let consumer = Arc::new(consumer);
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        Ok(Self { consumer, state, control: rx, shutdown: CancellationToken::new() })
    }

    /// A handle that stops the consumer.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// The consumer's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.state.stats.clone()
    }

    /// Runs until SIGINT or SIGTERM, then stops gracefully; a second signal exits at once
    /// (committed offsets only ever cover durable outcomes).
    pub async fn run_until_signal(self) -> Result<(), Error> {
        let handle = self.shutdown_handle();
        tokio::spawn(exactly_core::shutdown::stop_on_signals(move || handle.shutdown()));
        self.run().await
    }

    /// Runs until [`ShutdownHandle::shutdown`]. Returns an error only when the store fails
    /// or the consumer cannot start; broker errors are retried by librdkafka.
    pub async fn run(mut self) -> Result<(), Error> {
        let cfg = &self.state.cfg;
        if let Some(p) = &self.state.txn_producer {
            p.init_transactions(Duration::from_secs(30))
                .map_err(|source| Error::Transaction { step: "init", source })?;
        }
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&topics).map_err(|source| Error::Subscribe { topics: cfg.topics.clone(), source })?;
        tracing::info!(group = %cfg.group, topics = ?cfg.topics, "consuming");
        let _sweeper = self.state.processor.sweeper();
        let mut commit_tick = tokio::time::interval(cfg.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut breaker_paused = Vec::new();
        let consumer = self.consumer.clone();
        let live = Live(&consumer);
        let result = loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break Ok(()),
                m = consumer.recv() => match m {
                    Ok(m) => {
                        self.state.stats.back_in_reach();
                        self.state.route(m.detach());
                    }
                    Err(e) => {
                        let step = self.state.stats.error(&e);
                        if let Some(report) = step.report {
                            tracing::warn!("{report} (librdkafka retries)");
                        }
                        if let Some(gone) = self.given_up() {
                            break Err(gone);
                        }
                        tokio::select! {
                            () = tokio::time::sleep(step.pause) => {}
                            () = self.shutdown.cancelled() => break Ok(()),
                        }
                    }
                },
                Some(Control::Fatal(e)) = self.control.recv() => break Err(Error::Store(e)),
                _ = commit_tick.tick() => {
                    if let Some(gone) = self.given_up() {
                        break Err(gone);
                    }
                    match self.state.commit(&live, CommitMode::Async).await {
                        Ok(()) => {}
                        // The store's watermarks are written before the offsets: with the
                        // store out of reach, the same offsets go at the next tick.
                        Err(Error::Store(e)) if e.is_transient() => {
                            tracing::warn!(error = %e, "offsets not committed: the store is out of reach; trying at the next tick");
                        }
                        Err(e) => break Err(e),
                    }
                    // The circuit breaker: pause every partition while it is open.
                    if self.state.breaker_paused() && breaker_paused.is_empty() {
                        breaker_paused = self.state.assigned();
                        if let Err(e) = consumer.pause(&list(&breaker_paused)) {
                            tracing::warn!(error = %e, "pausing partitions failed");
                        }
                        tracing::warn!(partitions = breaker_paused.len(), "circuit breaker open: partitions paused");
                    } else if !self.state.breaker_paused() && !breaker_paused.is_empty() {
                        // Every partition assigned now, not only those paused here: one
                        // revoked and assigned again meanwhile is still paused (hooks.rs).
                        if let Err(e) = consumer.resume(&list(&self.state.assigned())) {
                            tracing::warn!(error = %e, "resuming partitions failed");
                        }
                        breaker_paused.clear();
                    }
                }
            }
        };
        self.state.stop_all(cfg.shutdown_timeout).await;
        // Outcomes of the last records: commit them before leaving.
        let committed = self.state.commit(&live, CommitMode::Sync).await;
        self.state.processor.flush().await?;
        self.consumer.unsubscribe();
        if let Some(p) = &self.state.txn_producer {
            let _ = p.flush(Duration::from_secs(10));
        }
        let _ = self.state.producer.flush(Duration::from_secs(10));
        result.and(committed)
    }
}

impl Consumer {
    /// The error to stop with once the brokers have been unreachable past the deadline.
    fn given_up(&self) -> Option<Error> {
        let deadline = self.state.cfg.unreachable_timeout?;
        let outage = self.state.stats.outage();
        let (waited, last) = outage.unreachable(Instant::now())?;
        (waited >= deadline).then(|| Error::Unreachable {
            brokers: exactly_core::redact::url(&self.state.cfg.brokers),
            waited,
            last_error: last.to_owned(),
        })
    }
}

/// Whether a consume error says that no broker can be reached.
fn all_down(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(e.rdkafka_error_code(), Some(C::AllBrokersDown | C::Resolve))
}

impl Stats {
    /// A consume error: what to log and how long to pause.
    /// (`troubled` changes only under the lock, so it never hides what the lock holds.)
    fn error(&self, e: &rdkafka::error::KafkaError) -> crate::outage::Step {
        let mut outage = self.outage();
        let step = outage.error(Instant::now(), e.to_string(), all_down(e));
        self.troubled.store(true, std::sync::atomic::Ordering::Relaxed);
        step
    }

    /// The statistics found no broker up.
    pub(crate) fn all_down(&self) {
        let mut outage = self.outage();
        outage.all_down(Instant::now());
        self.troubled.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A record arrived or a broker answered: says so if the brokers were unreachable.
    pub(crate) fn back_in_reach(&self) {
        if !self.troubled.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut outage = self.outage();
        if let Some(lasted) = outage.recovered(Instant::now()) {
            tracing::info!("Kafka brokers reachable again after {} s", lasted.as_secs());
        }
        self.troubled.store(outage.troubled(), std::sync::atomic::Ordering::Relaxed);
    }
}

#[exactly_core::async_trait]
impl exactly_core::Subscription for Consumer {
    fn describe(&self) -> String {
        let cfg = &self.state.cfg;
        format!("kafka {} [{}]", cfg.group, cfg.topics.join(", "))
    }

    fn status(&self) -> Arc<dyn exactly_core::SubscriptionStatus> {
        self.state.stats.clone()
    }

    async fn run(
        self: Box<Self>,
        stop: exactly_core::subscription::CancellationToken,
    ) -> Result<(), exactly_core::subscription::SubscriptionError> {
        let own = self.shutdown.clone();
        exactly_core::subscription::run_linked(stop, own, (*self).run()).await
    }
}

impl exactly_core::SubscriptionStatus for Stats {
    fn ready(&self) -> bool {
        self.joined.load(std::sync::atomic::Ordering::Relaxed) && self.unreachable_for().is_none()
    }

    fn detail(&self) -> Option<String> {
        let outage = self.outage();
        let (waited, last) = outage.unreachable(Instant::now())?;
        Some(format!("brokers unreachable for {} s: {last}", waited.as_secs()))
    }

    fn stats(&self) -> exactly_core::SubscriptionStats {
        use std::sync::atomic::Ordering::Relaxed;
        exactly_core::SubscriptionStats::new(
            self.records.load(Relaxed) + self.skipped.load(Relaxed),
            self.finished.load(Relaxed),
            self.dead_lettered.load(Relaxed),
        )
    }
}
