//! The consumer: connect, declare, consume, settle each delivery; reconnect after a loss;
//! drain on shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use exactly_core::{Processor, RetryPolicy};
use futures_util::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::convert::short;
use crate::settle::{Pause, Session};
use crate::topology::Resolved;
use crate::{ConsumerBuilder, Error};

/// The least time the attempt at the connect deadline gets, so that it is a real attempt.
const LAST_ATTEMPT: Duration = Duration::from_millis(250);

pub(crate) struct Config {
    pub(crate) url: String,
    pub(crate) shown_url: String,
    pub(crate) queue: String,
    pub(crate) prefetch: u16,
    pub(crate) topology: Resolved,
    pub(crate) tag: String,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect: RetryPolicy,
    pub(crate) wait_in_place_up_to: Duration,
}

/// Counters of a consumer, for tests and monitoring.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections made.
    pub connections: AtomicU64,
    /// Whether the consumer is consuming now: connected, topology declared, `basic.consume`
    /// answered (for readiness probes).
    pub consuming: std::sync::atomic::AtomicBool,
    /// Deliveries received.
    pub deliveries: AtomicU64,
    /// Deliveries acknowledged (handled, duplicates, dead-lettered, retried elsewhere).
    pub acked: AtomicU64,
    /// Dead-letters published and confirmed.
    pub dead_lettered: AtomicU64,
    /// Retry copies published to a retry queue.
    pub requeued: AtomicU64,
    /// Replies published.
    pub replies: AtomicU64,
}

/// Consumes one queue with a [`Processor`]: every delivery is handled once or
/// dead-lettered with its reason. Build one with [`Consumer::builder`], then
/// [`run`](Self::run) it.
///
/// ```no_run
/// # async fn example(processor: exactly_core::Processor) -> Result<(), exactly_amqp::Error> {
/// use exactly_amqp::Consumer;
/// Consumer::builder("amqp://guest:guest@127.0.0.1:5672/%2f", "payments")
///     .prefetch(64)
///     .build(processor)?
///     .run_until_signal()
///     .await
/// # }
/// ```
#[must_use = "a consumer does nothing until it runs"]
pub struct Consumer {
    config: Arc<Config>,
    processor: Processor,
    shutdown: CancellationToken,
    stats: Arc<Stats>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("url", &self.config.shown_url)
            .field("queue", &self.config.queue)
            .field("prefetch", &self.config.prefetch)
            .finish_non_exhaustive()
    }
}

/// Stops a running consumer gracefully: it stops taking deliveries, finishes the ones in
/// flight (up to its shutdown timeout), flushes the store and closes the connection.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Asks the consumer to stop.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

impl Consumer {
    /// Starts configuring a consumer of `queue` at `url` (`amqp://user:pass@host:port/vhost`).
    pub fn builder(url: impl Into<String>, queue: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder::new(url, queue)
    }

    pub(crate) fn new(config: Arc<Config>, processor: Processor, shutdown: CancellationToken) -> Self {
        Self { config, processor, shutdown, stats: Arc::new(Stats::default()) }
    }

    /// A handle that stops the consumer.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// The consumer's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Runs until SIGINT or SIGTERM, then stops gracefully. A second signal exits at once
    /// (what was acknowledged stays acknowledged: the store is durable before every ack).
    pub async fn run_until_signal(self) -> Result<(), Error> {
        let handle = self.shutdown_handle();
        tokio::spawn(exactly_core::shutdown::stop_on_signals(move || handle.shutdown()));
        self.run().await
    }

    /// Runs until [`ShutdownHandle::shutdown`], reconnecting after every loss of the
    /// connection. Returns an error only when reconnecting cannot help (the store failed,
    /// the settings are wrong, or no connection could be made at start-up).
    pub async fn run(self) -> Result<(), Error> {
        let cfg = &self.config;
        let started = Instant::now();
        let mut ever_connected = false;
        let mut failures = 0u32;
        let _sweeper = self.processor.sweeper();
        let result = loop {
            if self.shutdown.is_cancelled() {
                break Ok(());
            }
            let mut connected = false;
            // Before the first connection, no attempt outlives the connect timeout; after
            // it, a handshake that takes that long is dead too.
            let left = cfg.connect_timeout.saturating_sub(started.elapsed());
            let attempt = if ever_connected { cfg.connect_timeout } else { left.max(LAST_ATTEMPT) };
            let outcome = self.session(&mut connected, attempt).await;
            self.stats.consuming.store(false, Ordering::Relaxed);
            ever_connected |= connected;
            match outcome {
                Ok(()) => break Ok(()),
                Err(e) if e.is_fatal() => break Err(e),
                Err(e) => {
                    let left = cfg.connect_timeout.saturating_sub(started.elapsed());
                    if !ever_connected && left.is_zero() {
                        break Err(Error::ConnectTimeout {
                            url: cfg.shown_url.clone(),
                            waited: started.elapsed(),
                            last_error: match &e {
                                Error::Connect { source, .. } => source.to_string(),
                                other => other.to_string(),
                            },
                        });
                    }
                    failures = if connected { 1 } else { failures.saturating_add(1) };
                    let mut delay = cfg.reconnect.delay(failures, None);
                    if !ever_connected {
                        delay = delay.min(left);
                    }
                    tracing::warn!(error = %e, ?delay, queue = %cfg.queue, "connection lost; reconnecting");
                    metrics::counter!("exactly_amqp_reconnects_total", "queue" => cfg.queue.clone()).increment(1);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.shutdown.cancelled() => break Ok(()),
                    }
                }
            }
        };
        self.processor.flush().await?;
        result
    }

    /// One connection: consume until shutdown (`Ok`) or until it breaks (`Err`).
    async fn session(&self, connected: &mut bool, attempt: Duration) -> Result<(), Error> {
        let cfg = &self.config;
        let url = &cfg.shown_url;
        let props = ConnectionProperties::default().with_connection_name(format!("exactly {}", cfg.tag).into());
        let conn = match tokio::time::timeout(attempt, Connection::connect(&cfg.url, props)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(source)) => return Err(Error::connect(url, source)),
            Err(_) => {
                let hung = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer to the AMQP handshake within {attempt:?}"),
                );
                return Err(Error::Connect { url: url.clone(), source: hung.into() });
            }
        };
        *connected = true;
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let consume = |source| Error::Consume { queue: cfg.queue.clone(), source };
        let channel = conn.create_channel().await.map_err(consume)?;
        let publisher = conn.create_channel().await.map_err(consume)?;
        publisher.confirm_select(ConfirmSelectOptions::default()).await.map_err(consume)?;
        channel.basic_qos(cfg.prefetch, BasicQosOptions::default()).await.map_err(consume)?;
        cfg.topology.declare(&channel).await?;
        let mut deliveries = channel
            .basic_consume(short(&cfg.queue), short(&cfg.tag), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(consume)?;
        tracing::info!(queue = %cfg.queue, prefetch = cfg.prefetch, url = %url, "consuming");
        self.stats.consuming.store(true, Ordering::Relaxed);
        let depth = crate::depth::watch(&conn, &cfg.queue).await;

        let alive = CancellationToken::new();
        let pause = Pause::default();
        let (acks, batcher) = crate::acks::start(self.stats.clone());
        let session = Arc::new(Session {
            config: self.config.clone(),
            processor: self.processor.clone(),
            publisher: publisher.clone(),
            alive: alive.clone(),
            pause: pause.clone(),
            stats: self.stats.clone(),
            acks: acks.clone(),
        });
        let mut tasks: JoinSet<Result<(), exactly_core::Error>> = JoinSet::new();
        let mut outcome: Result<(), Error> = Ok(());
        loop {
            let paused = pause.until().is_some_and(|t| t > Instant::now());
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                // An async block: `select!` builds every branch's future, disabled or not,
                // and a `Sleep` reads the clock and the runtime's handle when it is made.
                () = async { tokio::time::sleep(Duration::from_millis(50)).await }, if paused => {}
                d = deliveries.next(), if !paused => match d {
                    Some(Ok(d)) => {
                        self.stats.deliveries.fetch_add(1, Ordering::Relaxed);
                        acks.delivered(d.delivery_tag);
                        let s = session.clone();
                        tasks.spawn(async move { s.settle(d).await });
                    }
                    Some(Err(e)) => {
                        outcome = Err(consume(e));
                        break;
                    }
                    None => {
                        outcome = Err(Error::Cancelled { queue: cfg.queue.clone() });
                        break;
                    }
                },
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Some(fatal) = fatal(joined) {
                        outcome = Err(fatal);
                        break;
                    }
                }
            }
        }
        // Stop taking deliveries; let the ones in flight finish (their acks fail if the
        // connection is gone, and the broker redelivers them: the store answers those).
        let _ = channel.basic_cancel(short(&cfg.tag), BasicCancelOptions::default()).await;
        let deadline = Instant::now() + cfg.shutdown_timeout;
        if outcome.is_err() {
            alive.cancel();
        }
        while !tasks.is_empty() {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(joined)) => {
                    if let Some(fatal) = fatal(joined) {
                        alive.cancel();
                        outcome = outcome.and(Err(fatal));
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        left = tasks.len(),
                        "shutdown timeout: abandoning messages in flight (they will be redelivered)"
                    );
                    alive.cancel();
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                }
            }
        }
        if let Some(d) = depth {
            d.abort();
        }
        // Every settle task is over: the batcher acknowledges what it holds and ends.
        drop(session);
        drop(acks);
        let _ = batcher.await;
        self.processor.flush().await?;
        let _ = channel.close(200, short("bye")).await;
        let _ = publisher.close(200, short("bye")).await;
        let _ = conn.close(200, short("bye")).await;
        outcome
    }
}

fn fatal(joined: Result<Result<(), exactly_core::Error>, tokio::task::JoinError>) -> Option<Error> {
    match joined {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(Error::Store(e)),
        Err(e) if e.is_panic() => {
            tracing::error!(error = %e, "a delivery task panicked; its message will be redelivered");
            None
        }
        Err(_) => None,
    }
}

#[exactly_core::async_trait]
impl exactly_core::Subscription for Consumer {
    fn describe(&self) -> String {
        format!("amqp {}", self.config.queue)
    }

    fn status(&self) -> Arc<dyn exactly_core::SubscriptionStatus> {
        self.stats.clone()
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
        self.consuming.load(Ordering::Relaxed)
    }

    fn stats(&self) -> exactly_core::SubscriptionStats {
        exactly_core::SubscriptionStats::new(
            self.deliveries.load(Ordering::Relaxed),
            self.acked.load(Ordering::Relaxed),
            self.dead_lettered.load(Ordering::Relaxed),
        )
    }
}
