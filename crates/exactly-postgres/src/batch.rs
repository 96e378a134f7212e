//! Group commit over the network: concurrent calls queue their requests, and each
//! round trip takes everything queued so far. While every connection is busy the queue
//! grows, so the groups grow with the load.

use std::sync::Arc;

use exactly_core::{Error, Result};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// A request and where its answer goes.
pub(crate) type Job<Req, Resp> = (Req, oneshot::Sender<Result<Resp>>);

/// Runs a group of requests; answers each job.
pub(crate) trait Group<Req, Resp>: Send + Sync + 'static {
    /// Runs `jobs` as one group, answering every one of them.
    fn run(self: Arc<Self>, jobs: Vec<Job<Req, Resp>>) -> impl Future<Output = ()> + Send;
}

/// The queue in front of a [`Group`].
#[derive(Debug)]
pub(crate) struct Batcher<Req, Resp> {
    queue: mpsc::UnboundedSender<Job<Req, Resp>>,
    task: tokio::task::JoinHandle<()>,
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts taking requests: at most `max_batch` a group, at most `in_flight` groups at
    /// once.
    pub(crate) fn start<G: Group<Req, Resp>>(group: Arc<G>, max_batch: usize, in_flight: usize) -> Self {
        let (queue, mut rx) = mpsc::unbounded_channel::<Job<Req, Resp>>();
        let permits = Arc::new(Semaphore::new(in_flight.max(1)));
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Wait for a free connection before taking the rest: what comes meanwhile
                // joins this group.
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let mut jobs = vec![first];
                while jobs.len() < max_batch {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                let group = group.clone();
                tokio::spawn(async move {
                    group.run(jobs).await;
                    drop(permit);
                });
            }
        });
        Self { queue, task }
    }

    /// Queues a request and waits for its answer.
    pub(crate) async fn call(&self, req: Req) -> Result<Resp> {
        let (tx, rx) = oneshot::channel();
        self.queue.send((req, tx)).map_err(|_| Error::StoreClosed)?;
        rx.await.map_err(|_| Error::StoreClosed)?
    }
}

impl<Req, Resp> Drop for Batcher<Req, Resp> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers every job of a group with a copy of one error.
pub(crate) fn fail_all<Req, Resp>(jobs: Vec<Job<Req, Resp>>, e: &Error) {
    for (_, tx) in jobs {
        let _ = tx.send(Err(copy(e)));
    }
}

/// A copy of a store error for each caller of a failed group (the error type is not
/// `Clone`: its sources are boxed).
pub(crate) fn copy(e: &Error) -> Error {
    match e {
        Error::StoreUnavailable { operation, reason } => Error::StoreUnavailable { operation, reason: reason.clone() },
        Error::StoreClosed => Error::StoreClosed,
        other => Error::StoreIo { operation: "write", source: other.to_string().into() },
    }
}
