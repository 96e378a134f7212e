//! The in-memory broker's adapter: a [`Subscription`] like the Kafka and RabbitMQ ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::task::JoinSet;

use super::MemoryBroker;
use super::drain::settle;
use crate::subscription::{CancellationToken, Subscription, SubscriptionError, SubscriptionStats, SubscriptionStatus};
use crate::{Outcome, Processor};

/// Consumes a [`MemoryBroker`] queue until stopped, `concurrency` deliveries at once (the
/// prefetch), as the broker adapters do; made by [`MemoryBroker::subscription`].
#[derive(Debug)]
#[must_use = "a subscription does nothing until it runs"]
pub struct MemorySubscription {
    broker: MemoryBroker,
    queue: String,
    processor: Processor,
    concurrency: usize,
    status: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    running: AtomicBool,
    received: AtomicU64,
    acknowledged: AtomicU64,
    dead_lettered: AtomicU64,
}

impl SubscriptionStatus for Counters {
    fn ready(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    fn stats(&self) -> SubscriptionStats {
        SubscriptionStats::new(
            self.received.load(Ordering::SeqCst),
            self.acknowledged.load(Ordering::SeqCst),
            self.dead_lettered.load(Ordering::SeqCst),
        )
    }
}

impl MemoryBroker {
    /// A subscription to `queue` with `processor`, eight deliveries at once.
    pub fn subscription(&self, queue: &str, processor: Processor) -> MemorySubscription {
        MemorySubscription {
            broker: self.clone(),
            queue: queue.to_owned(),
            processor,
            concurrency: 8,
            status: Arc::default(),
        }
    }
}

impl MemorySubscription {
    /// Deliveries processed at once (default 8).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    fn describe(&self) -> String {
        format!("memory {}", self.queue)
    }

    fn status(&self) -> Arc<dyn SubscriptionStatus> {
        self.status.clone()
    }

    async fn run(self: Box<Self>, stop: CancellationToken) -> Result<(), SubscriptionError> {
        let consumer = Arc::new(self.broker.consumer(&self.queue));
        let mut tasks: JoinSet<crate::Result<Outcome>> = JoinSet::new();
        self.status.running.store(true, Ordering::SeqCst);
        let failed = loop {
            let room = tasks.len() < self.concurrency;
            tokio::select! {
                () = stop.cancelled() => break None,
                d = consumer.recv(), if room => {
                    self.status.received.fetch_add(1, Ordering::SeqCst);
                    let (c, p, b) = (consumer.clone(), self.processor.clone(), self.broker.clone());
                    tasks.spawn(async move { settle(&c, &p, &b, None, d).await.map(|(outcome, _)| outcome) });
                }
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Some(e) = self.count(done) {
                        break Some(e);
                    }
                }
            }
        };
        self.status.running.store(false, Ordering::SeqCst);
        // Finish what is in flight; its outcomes are acknowledged.
        while let Some(done) = tasks.join_next().await {
            if let Some(e) = self.count(done) {
                tracing::error!(error = %e, "a delivery failed while stopping");
            }
        }
        self.processor.flush().await?;
        match failed {
            Some(e) => {
                consumer.crash();
                Err(e)
            }
            None => Ok(()),
        }
    }
}

impl MemorySubscription {
    /// Counts a finished delivery; its error, if the processor failed.
    fn count(&self, done: Result<crate::Result<Outcome>, tokio::task::JoinError>) -> Option<SubscriptionError> {
        match done {
            Ok(Ok(outcome)) => {
                self.status.acknowledged.fetch_add(1, Ordering::SeqCst);
                if outcome == Outcome::DeadLettered {
                    self.status.dead_lettered.fetch_add(1, Ordering::SeqCst);
                }
                None
            }
            Ok(Err(e)) => Some(Box::new(e)),
            Err(e) => Some(Box::new(e)),
        }
    }
}
