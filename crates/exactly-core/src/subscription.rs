//! The one contract every broker adapter keeps, so that the code that runs consumers (the
//! app runner, tests, a user's own `main`) runs any of them the same way.

use std::sync::Arc;

use async_trait::async_trait;
pub use tokio_util::sync::CancellationToken;

/// An error that stopped a subscription (the adapter's own error type, boxed).
pub type SubscriptionError = Box<dyn std::error::Error + Send + Sync>;

/// A consumer of one source (a Kafka consumer group's topics, a RabbitMQ queue, an
/// in-memory queue) driving a [`Processor`](crate::Processor).
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use exactly_core::subscription::{CancellationToken, Subscription};
/// use exactly_core::testing::MemoryBroker;
/// use exactly_core::{handler_fn, Context, Message, MemoryStore, Processor};
///
/// let broker = MemoryBroker::new();
/// broker.publish("jobs", Message::builder("x").message_id("a").build());
/// let p = Processor::builder("jobs", handler_fn(|_m: Message, _c: Context| async { Ok(()) }))
///     .store(MemoryStore::new())
///     .build()?;
/// let sub: Box<dyn Subscription> = Box::new(broker.subscription("jobs", p));
/// let status = sub.status();
/// let stop = CancellationToken::new();
/// let running = tokio::spawn(sub.run(stop.clone()));
/// while status.stats().acknowledged < 1 {
///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
/// }
/// stop.cancel();
/// running.await??;
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Subscription: Send + 'static {
    /// What it consumes, for logs and the readiness probe (`kafka orders-service [orders]`).
    fn describe(&self) -> String;

    /// Its state while it runs; take it before [`run`](Self::run).
    fn status(&self) -> Arc<dyn SubscriptionStatus>;

    /// Consumes until `stop` is cancelled, then stops gracefully: takes no new messages,
    /// finishes those in flight (up to its shutdown timeout), acknowledges or commits
    /// their outcomes, flushes the store. Returns an error only when going on cannot help
    /// (the store failed, the settings are wrong); broker trouble is retried inside.
    async fn run(self: Box<Self>, stop: CancellationToken) -> Result<(), SubscriptionError>;
}

/// Drives an adapter's own `run` future, which stops gracefully when its shutdown token
/// `own` is cancelled, until it ends; `stop` cancels `own`. The body of
/// [`Subscription::run`] for an adapter that has its own shutdown token.
pub async fn run_linked<E: Into<SubscriptionError>>(
    stop: CancellationToken,
    own: CancellationToken,
    run: impl Future<Output = Result<(), E>>,
) -> Result<(), SubscriptionError> {
    tokio::pin!(run);
    tokio::select! {
        result = &mut run => return result.map_err(Into::into),
        () = stop.cancelled() => own.cancel(),
    }
    // Stopping is graceful: the adapter drains, acknowledges and flushes first.
    run.await.map_err(Into::into)
}

/// What a running subscription says about itself.
pub trait SubscriptionStatus: Send + Sync {
    /// Whether it is consuming now: connected, joined, its source declared (a readiness
    /// probe's answer).
    fn ready(&self) -> bool;

    /// Why it is not ready, when it can say more than its name (`brokers unreachable for
    /// 42 s: ...`); a readiness probe shows it.
    fn detail(&self) -> Option<String> {
        None
    }

    /// What it has done so far.
    fn stats(&self) -> SubscriptionStats;
}

/// Counters every adapter keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionStats {
    /// Messages received from the broker (redeliveries included).
    pub received: u64,
    /// Messages whose outcome the broker was told: acknowledged, committed, or sent to
    /// a retry queue.
    pub acknowledged: u64,
    /// Messages delivered to the dead-letter destination.
    pub dead_lettered: u64,
}

impl SubscriptionStats {
    /// Counters with these values.
    pub fn new(received: u64, acknowledged: u64, dead_lettered: u64) -> Self {
        Self { received, acknowledged, dead_lettered }
    }
}
