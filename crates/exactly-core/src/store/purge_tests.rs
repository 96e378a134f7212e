//! Purging expired records on a busy runtime.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::FencingToken;
use super::local::{AppliedWrite, BackendStats, KvBackend, LocalStore, OnDurable, WriteBatch};
use super::memory::MemoryBackend;
use crate::{Clock, Context, Disposition, ManualClock, Message, Processor, Result, async_trait, handler_fn};
use bytes::Bytes;

/// The memory backend, with reads that take 3 ms once `slow` is set: an engine whose
/// pages are not in its cache.
#[derive(Debug, Default)]
struct SlowReads {
    inner: MemoryBackend,
    slow: Arc<AtomicBool>,
}

#[async_trait]
impl KvBackend for SlowReads {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        if self.slow.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(3));
        }
        self.inner.get(key)
    }
    fn range(&self, from: &[u8], to: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>> {
        self.inner.range(from, to, limit)
    }
    async fn stage(&self, batch: WriteBatch, on_durable: Option<OnDurable>) -> Result<AppliedWrite> {
        self.inner.stage(batch, on_durable).await
    }
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
    fn epoch(&self) -> u64 {
        self.inner.epoch()
    }
    fn next_token(&self) -> Result<FencingToken> {
        self.inner.next_token()
    }
    fn stats(&self) -> BackendStats {
        self.inner.stats()
    }
}

/// A purge reads every record it may delete, on the task that calls it. On a runtime
/// with one worker thread, another task must keep running meanwhile: the reads hand
/// the worker's tasks to another thread first instead of holding it (a call's reads
/// take long once the store outgrows the cache: docs/PERFORMANCE.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_purge_does_not_hold_up_the_other_tasks_of_its_runtime_thread() {
    let slow = Arc::new(AtomicBool::new(false));
    let store = LocalStore::with_backend(SlowReads { inner: MemoryBackend::default(), slow: slow.clone() }, 1_000);
    let clock = ManualClock::new(1_000_000);
    let p = Processor::builder("c", handler_fn(|_m: Message, _c: Context| async { Ok(()) }))
        .store(store)
        .clock(Arc::new(clock.clone()))
        .retention(Duration::from_secs(60))
        .build()
        .unwrap();
    for i in 0..100 {
        let out = p
            .process(Message::builder(b"x".to_vec()).header("idempotency-key", format!("k{i}")).build())
            .await
            .unwrap();
        assert!(matches!(out.disposition, Disposition::Ack));
    }
    clock.advance(Duration::from_secs(3_600));
    slow.store(true, Ordering::SeqCst);

    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(1)).await;
                ticks.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    // The purge runs on the one worker thread, as the sweeper's task does.
    let (store, now) = (p.store().clone(), clock.now());
    let purge = tokio::spawn(async move {
        let before = ticks.load(Ordering::SeqCst);
        let report = store.purge_expired(now, 1_000).await.unwrap();
        (report, ticks.load(Ordering::SeqCst) - before)
    });
    let (report, ticked) = purge.await.unwrap();
    ticker.abort();
    assert_eq!((report.records_removed, report.more), (100, false));
    // 100 reads of 3 ms: the ticker ticks about 300 times meanwhile, and not at all if
    // the purge holds the only worker thread.
    assert!(ticked >= 30, "the other task ticked {ticked} times during a 300 ms purge");
}
