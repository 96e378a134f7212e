//! A shared store out of reach (`Error::StoreUnavailable`): nothing is acknowledged,
//! nothing is dead-lettered for it, the breaker pauses the consumer while it lasts, and
//! the message is handled once it is back.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use exactly_core::store::{
    Claim, ClaimRequest, Committed, Completion, DedupStore, FencingToken, PurgeReport, RecordView, StagedCompletion,
    StateChanges, StoreKey, StoreStats,
};
use exactly_core::{
    BreakerConfig, BreakerState, Context, Disposition, Error, HandlerError, MemoryStore, Message, Millis, Outcome,
    Processor, Result, RetryPolicy, async_trait, handler_fn,
};

/// The memory store, with the claims, commits and state reads of a database that is out
/// of reach while their switch is on.
#[derive(Debug, Default)]
struct Flaky {
    inner: MemoryStore,
    claims_down: AtomicBool,
    commits_down: AtomicBool,
    reads_down: AtomicBool,
}

impl Flaky {
    fn check(&self, switch: &AtomicBool, operation: &'static str) -> Result<()> {
        if switch.load(Ordering::SeqCst) {
            return Err(Error::StoreUnavailable { operation, reason: "connection refused".into() });
        }
        Ok(())
    }
}

#[async_trait]
impl DedupStore for Flaky {
    async fn claim(&self, req: ClaimRequest<'_>) -> Result<Claim> {
        self.check(&self.claims_down, "claim")?;
        self.inner.claim(req).await
    }
    async fn renew(&self, key: &StoreKey, token: FencingToken, until: Millis) -> Result<bool> {
        self.inner.renew(key, token, until).await
    }
    async fn release(&self, key: &StoreKey, token: FencingToken, attempts: u32, error: Option<String>) -> Result<()> {
        self.inner.release(key, token, attempts, error).await
    }
    async fn complete_staged(&self, completion: Completion) -> Result<StagedCompletion> {
        self.check(&self.commits_down, "complete")?;
        self.inner.complete_staged(completion).await
    }
    async fn commit_state(&self, state: StateChanges) -> Result<Committed> {
        self.check(&self.commits_down, "complete")?;
        self.inner.commit_state(state).await
    }
    async fn state_get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.check(&self.reads_down, "read")?;
        self.inner.state_get(key).await
    }
    async fn state_list(&self, ns: Option<&[u8]>, after: Option<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, Bytes)>> {
        self.inner.state_list(ns, after, limit).await
    }
    async fn meta_get(&self, name: &str) -> Result<Option<Bytes>> {
        self.inner.meta_get(name).await
    }
    async fn meta_list(&self) -> Result<Vec<(String, Bytes)>> {
        self.inner.meta_list().await
    }
    async fn meta_put(&self, name: &str, value: Bytes) -> Result<()> {
        self.inner.meta_put(name, value).await
    }
    async fn purge_expired(&self, now: Millis, budget: usize) -> Result<PurgeReport> {
        self.inner.purge_expired(now, budget).await
    }
    async fn inspect(&self, key: &StoreKey) -> Result<Option<RecordView>> {
        self.inner.inspect(key).await
    }
    async fn list(&self, prefix: Option<&StoreKey>, after: Option<&StoreKey>, limit: usize) -> Result<Vec<RecordView>> {
        self.inner.list(prefix, after, limit).await
    }
    async fn forget(&self, key: &StoreKey) -> Result<bool> {
        self.inner.forget(key).await
    }
    async fn import(&self, record: RecordView) -> Result<()> {
        self.inner.import(record).await
    }
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}

fn msg(key: &str) -> Message {
    Message::builder(key.to_owned()).header("idempotency-key", key).build()
}

/// A processor over `store` whose handler counts its runs and credits state.
fn processor(store: Arc<Flaky>, runs: Arc<AtomicU32>) -> Processor {
    let handler = handler_fn(move |_m: Message, ctx: Context| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let n: i64 = ctx.state().get_json("credits").await?.unwrap_or(0);
            ctx.state().put_json("credits", &(n + 1)).await?;
            Ok(())
        }
    });
    Processor::builder("c", handler)
        .shared_store(store)
        .retry(RetryPolicy::exponential(Duration::from_millis(1), Duration::from_millis(5), 2).unwrap())
        .breaker(BreakerConfig::new(3, Duration::from_millis(50), Duration::from_millis(100)).unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_claim_the_store_cannot_answer_is_retried_then_paused_never_dead_lettered() {
    let store = Arc::new(Flaky::default());
    let runs = Arc::new(AtomicU32::new(0));
    let p = processor(store.clone(), runs.clone());
    store.claims_down.store(true, Ordering::SeqCst);
    let mut paused = false;
    for i in 0..10 {
        let out = p.process(msg(&format!("k{i}"))).await.unwrap();
        match out.disposition {
            Disposition::Retry { .. } => assert_eq!(out.outcome, Outcome::Retry),
            Disposition::Pause { .. } => paused = true,
            other => panic!("a message was settled while the store was down: {other:?}"),
        }
        assert_eq!(out.attempts, 0, "an unreachable store counted as an attempt");
    }
    assert!(paused, "the breaker never paused the consumer while every claim failed");
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the handler ran without a claim");
    store.claims_down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await; // the breaker's longest pause
    let out = p.process(msg("k0")).await.unwrap();
    assert_eq!((out.disposition, out.outcome), (Disposition::Ack, Outcome::Handled));
}

#[tokio::test]
async fn a_completion_the_store_cannot_take_is_never_acknowledged_and_never_exhausts_the_retries() {
    let store = Arc::new(Flaky::default());
    let runs = Arc::new(AtomicU32::new(0));
    let p = processor(store.clone(), runs.clone());
    // Claims and state reads answer; the commits fail (the database went away mid-run).
    store.commits_down.store(true, Ordering::SeqCst);
    for round in 0..6 {
        let out = p.process(msg("k")).await.unwrap();
        assert!(
            matches!(out.disposition, Disposition::Retry { .. } | Disposition::Pause { .. }),
            "round {round}: a commit the store did not take became {:?}",
            out.disposition
        );
        assert_eq!(out.attempts, 0, "round {round}: the failed commit counted as an attempt");
        tokio::time::sleep(Duration::from_millis(120)).await; // past any pause
    }
    assert!(runs.load(Ordering::SeqCst) >= 1, "the handler never ran");
    let key = StoreKey::new("c", "k");
    assert!(store.inner.inspect(&key).await.unwrap().is_none(), "a record was written");
    // Back: the message is handled, and its state credited once.
    store.commits_down.store(false, Ordering::SeqCst);
    let out = p.process(msg("k")).await.unwrap();
    assert_eq!(out.outcome, Outcome::Handled);
    let credits = store.inner.state_get(&StoreKey::state("c", b"credits")).await.unwrap();
    assert_eq!(credits.as_deref(), Some(&b"1"[..]));
}

#[tokio::test]
async fn a_state_read_the_store_cannot_answer_is_a_retry_that_does_not_count() {
    let store = Arc::new(Flaky::default());
    let p = processor(store.clone(), Arc::new(AtomicU32::new(0)));
    store.reads_down.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        let out = p.process(msg("r")).await.unwrap();
        assert!(
            matches!(out.disposition, Disposition::Retry { .. } | Disposition::Pause { .. }),
            "{:?}",
            out.disposition
        );
        assert_eq!(out.attempts, 0, "an unreachable store counted as an attempt");
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    store.reads_down.store(false, Ordering::SeqCst);
    let out = p.process(msg("r")).await.unwrap();
    assert_eq!(out.outcome, Outcome::Handled);
}

/// A probe whose processing is dropped part-way (an adapter aborting its in-flight
/// deliveries when its connection breaks) must not hold the breaker half-open: before the
/// fix every later delivery was answered `Pause` forever, a consumer spinning on its
/// unacknowledged messages (seen in the RabbitMQ chaos runs on PostgreSQL).
#[tokio::test(start_paused = true)]
async fn a_probe_dropped_mid_run_does_not_keep_the_breaker_half_open() {
    let h = handler_fn(|_m: Message, ctx: Context| async move {
        match ctx.message_key() {
            "probe" => std::future::pending().await,
            k if k.starts_with("down") => Err(HandlerError::transient("connection refused")),
            _ => Ok(()),
        }
    });
    let p = Processor::builder("c", h)
        .store(MemoryStore::new())
        .breaker(BreakerConfig::new(2, Duration::from_millis(50), Duration::from_millis(100)).unwrap())
        .build()
        .unwrap();
    for k in ["down-1", "down-2"] {
        let _ = p.process(msg(k)).await.unwrap();
    }
    assert_eq!(p.breaker_state(), BreakerState::Open);
    tokio::time::sleep(Duration::from_millis(60)).await;
    // The probe's processing is dropped while its handler runs.
    let dropped = tokio::time::timeout(Duration::from_millis(10), p.process(msg("probe"))).await;
    assert!(dropped.is_err(), "the probe was still running when it was dropped");
    let mut outcomes = Vec::new();
    for _ in 0..20 {
        let out = p.process(msg("after")).await.unwrap();
        outcomes.push(out.outcome);
        if out.outcome != Outcome::Paused {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(outcomes.last(), Some(&Outcome::Handled), "another message probes and runs: {outcomes:?}");
}
