//! A backend: an ordered key-value store with atomic, durable batches, and the handle on a write that is on its way to disk.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

use crate::clock::Millis;
use crate::store::FencingToken;
use crate::store::layout::{self, StoreKey};
use crate::{Error, Result};

/// One atomic write: every `expect` must still hold (key has that value, or is absent
/// for `None`), then every `op` is applied (`None` deletes), all or nothing, durably.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    /// Values that must be unchanged for the batch to apply.
    pub expect: Vec<(Vec<u8>, Option<Bytes>)>,
    /// Writes.
    pub ops: Vec<(Vec<u8>, Option<Bytes>)>,
    /// Records that expire, by the end of their expiry bucket. The backend adds them to
    /// the expiry index with [`expiry_index_ops`], one entry per bucket for all the batches
    /// of a group commit.
    pub expiring: Vec<(Millis, StoreKey)>,
}

/// The expiry-index writes for the records expiring in one commit; `commit` must be
/// unique per commit of the store (a group-commit sequence number).
pub(crate) fn expiry_index_ops(commit: u64, expiring: &[(Millis, StoreKey)]) -> Vec<(Vec<u8>, Option<Bytes>)> {
    layout::expiry_entries(commit, expiring).into_iter().map(|(k, v)| (k, Some(v))).collect()
}

/// What a backend knows about itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct BackendStats {
    /// Commits made.
    pub commits: u64,
    /// Fsyncs made.
    pub fsyncs: u64,
    /// Bytes on disk.
    pub disk_bytes: Option<u64>,
    /// Filters of done keys built since open; 0 while reads of new keys still go to the
    /// engine (see [`LogOptions::filter_keys`](super::LogOptions::filter_keys)).
    pub filter_builds: u64,
}

/// Runs once a staged write is durable (`true`) or will never be (`false`, the store
/// failed), on whichever thread learns it first. It must be quick.
pub(crate) type OnDurable = Box<dyn FnOnce(bool) + Send>;

/// A write applied (visible to reads) and on its way to disk.
#[derive(Debug)]
pub struct AppliedWrite {
    /// Every expectation held and the write is applied. When `false` nothing was
    /// written and `durable` resolves at once.
    pub applied: bool,
    /// Resolves once the write is durable.
    pub durable: Durable,
}

/// The moment a staged write becomes durable.
#[derive(Debug)]
#[must_use = "a staged write is only safe to acknowledge once durable"]
pub struct Durable(Answer);

/// Where a [`Durable`] stands.
#[derive(Debug)]
enum Answer {
    /// Waiting for the log's answer.
    Awaited(tokio::sync::oneshot::Receiver<Result<()>>),
    /// Answered (`Ok` too when there was nothing to wait for).
    Given(Result<()>),
}

impl Durable {
    /// Already durable (or nothing to wait for).
    pub fn ready() -> Self {
        Self(Answer::Given(Ok(())))
    }

    /// Durable when `rx` says so.
    pub fn pending(rx: tokio::sync::oneshot::Receiver<Result<()>>) -> Self {
        Self(Answer::Awaited(rx))
    }

    /// Ready once [`Durable::wait`] would return without waiting: lets a caller keep
    /// many of these in a plain queue and poll only the oldest, instead of boxing a
    /// future per write.
    pub fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if let Answer::Awaited(rx) = &mut self.0 {
            let answer = std::task::ready!(std::pin::Pin::new(rx).poll(cx));
            self.0 = Answer::Given(answer.unwrap_or(Err(Error::StoreClosed)));
        }
        std::task::Poll::Ready(())
    }

    /// Waits until the write is durable; an error means it never will be.
    pub async fn wait(self) -> Result<()> {
        match self.0 {
            Answer::Given(answer) => answer,
            Answer::Awaited(rx) => rx.await.unwrap_or(Err(Error::StoreClosed)),
        }
    }
}

/// An ordered key-value store with atomic, durable batches: what a [`LocalStore`] needs.
/// Implemented by the log-backed engines and the in-memory one; a further embedded
/// engine plugs in under [`LogBackend`](super::LogBackend) as an [`Engine`](super::Engine).
#[async_trait]
pub trait KvBackend: Send + Sync + fmt::Debug + 'static {
    /// Reads one value.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>>;
    /// Reads up to `limit` entries with `from <= key < to`, in key order.
    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>>;
    /// Applies a batch atomically if every expectation holds, and returns as soon as it
    /// is visible to reads; [`AppliedWrite::durable`] resolves when it is on disk. Writes become
    /// durable in the order they were applied. `on_durable` runs then, if it was applied.
    async fn stage(&self, batch: WriteBatch, on_durable: Option<OnDurable>) -> Result<AppliedWrite>;
    /// Queues a batch without expectations and returns at once, before it is applied:
    /// for writes nobody reads back under a lock. It is applied in order with every other
    /// write; [`Durable::wait`] reports a failure.
    async fn submit(&self, batch: WriteBatch, on_durable: Option<OnDurable>) -> Result<Durable> {
        debug_assert!(batch.expect.is_empty(), "submit takes blind writes only");
        Ok(self.stage(batch, on_durable).await?.durable)
    }

    /// Applies a batch atomically and durably; `Ok(false)` when an expectation failed and
    /// nothing was written.
    async fn commit(&self, batch: WriteBatch) -> Result<bool> {
        let staged = self.stage(batch, None).await?;
        if staged.applied {
            staged.durable.wait().await?;
        }
        Ok(staged.applied)
    }
    /// Makes everything committed so far durable (commits already are; this also flushes
    /// caches the engine keeps).
    async fn flush(&self) -> Result<()>;
    /// The number of this open of the store: one more than the last.
    fn epoch(&self) -> u64;
    /// A new fencing token, larger than every one handed out before, across restarts.
    fn next_token(&self) -> Result<FencingToken>;
    /// Counters.
    fn stats(&self) -> BackendStats;
}
