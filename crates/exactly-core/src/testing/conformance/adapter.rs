//! The adapter contract, written once against [`Subscription`] and run against every
//! broker: duplicates acknowledged without a run, poison dead-lettered with its reason, a
//! restart that goes on where the last run stopped, a stop that drains what is in flight,
//! the circuit breaker pausing and resuming. A broker adapter gets all of them with one
//! line: `adapter_conformance_tests!(name, harness)`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::subscription::{CancellationToken, Subscription, SubscriptionError, SubscriptionStatus};
use crate::testing::Runs;
use crate::{
    BreakerConfig, BreakerState, Context, DedupStore, HandlerError, MemoryStore, Message, Processor, RetryPolicy,
    handler_fn,
};

/// A broker the suite runs against.
#[async_trait]
pub trait BrokerHarness: Send + Sync + 'static {
    /// A new source (topic, queue) no other test uses.
    async fn source(&self) -> String;

    /// Publishes messages to `source`, in order: each its idempotency key (sent as the
    /// `idempotency-key` header, or the broker's message id) and payload.
    async fn publish(&self, source: &str, messages: &[(String, Vec<u8>)]);

    /// A subscription to `source` with `processor`: for a broker with consumer groups,
    /// the same group every time for one source.
    fn subscribe(&self, source: &str, processor: Processor) -> Box<dyn Subscription>;

    /// The dead letters of `source` so far: each one's key and reason.
    async fn dead_letters(&self, source: &str) -> Vec<(String, String)>;
}

/// Waits for `done`, polling every 20 ms, failing the test after `limit`.
async fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long anything in the suite may take: generous, for a slow CI machine; a test
/// that passes ends as soon as its condition holds.
const LIMIT: Duration = Duration::from_secs(60);

/// A handler that counts its runs by key; a payload `poison` does not decode, and while
/// `down` is set every run fails transiently (a dependency outage).
fn counting(runs: Runs, down: Arc<AtomicBool>, pause: Duration) -> impl crate::Handler<Output = ()> {
    handler_fn(move |m: Message, ctx: Context| {
        let (runs, down) = (runs.clone(), down.clone());
        async move {
            if m.payload_str() == Some("poison") {
                let _: u64 = m.decode()?;
            }
            if down.load(Ordering::SeqCst) {
                return Err(HandlerError::transient("the dependency is down"));
            }
            tokio::time::sleep(pause).await;
            runs.hit(ctx.message_key());
            Ok(())
        }
    })
}

fn keyed(keys: impl IntoIterator<Item = String>) -> Vec<(String, Vec<u8>)> {
    keys.into_iter().map(|k| (k.clone(), k.into_bytes())).collect()
}

/// A running subscription.
struct Running {
    status: Arc<dyn SubscriptionStatus>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), SubscriptionError>>,
}

impl Running {
    fn start(sub: Box<dyn Subscription>) -> Self {
        let (status, stop) = (sub.status(), CancellationToken::new());
        let task = tokio::spawn(sub.run(stop.clone()));
        Self { status, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let ended = tokio::time::timeout(LIMIT, self.task).await.expect("the subscription stops in time");
        ended.expect("the subscription task").expect("the subscription stops cleanly");
    }
}

fn processor(store: Arc<dyn DedupStore>, runs: &Runs, down: &Arc<AtomicBool>, pause: Duration) -> Processor {
    Processor::builder("suite", counting(runs.clone(), down.clone(), pause))
        .shared_store(store)
        .retry(RetryPolicy::exponential(Duration::from_millis(20), Duration::from_millis(200), 3).expect("a policy"))
        .breaker(BreakerConfig::new(3, Duration::from_millis(300), Duration::from_secs(1)).expect("a breaker"))
        .build()
        .expect("a processor")
}

/// Copies of a key are acknowledged without running the handler again.
pub async fn duplicates_are_acknowledged_without_a_run(h: &dyn BrokerHarness) {
    let source = h.source().await;
    let mut keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    keys.extend((0..5).map(|i| format!("k{}", i * 3)));
    h.publish(&source, &keyed(keys)).await;
    let (runs, down) = (Runs::default(), Arc::default());
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let sub = Running::start(h.subscribe(&source, processor(store, &runs, &down, Duration::ZERO)));
    let status = sub.status.clone();
    until("25 messages acknowledged", LIMIT, || status.stats().acknowledged >= 25).await;
    assert!(status.ready(), "a subscription that is consuming says it is ready");
    let stats = status.stats();
    assert!(stats.received >= stats.acknowledged, "received {} < acknowledged {}", stats.received, stats.acknowledged);
    sub.stop().await;
    for i in 0..20 {
        assert_eq!(runs.get(&format!("k{i}")), 1, "k{i} ran {} times", runs.get(&format!("k{i}")));
    }
}

/// A message that cannot be decoded goes to the dead-letter destination with reason
/// `decode`, and nothing else does.
pub async fn poison_is_dead_lettered_with_its_reason(h: &dyn BrokerHarness) {
    let source = h.source().await;
    h.publish(&source, &[("good".into(), b"1".to_vec()), ("bad".into(), b"poison".to_vec())]).await;
    let (runs, down) = (Runs::default(), Arc::default());
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let sub = Running::start(h.subscribe(&source, processor(store, &runs, &down, Duration::ZERO)));
    let status = sub.status.clone();
    until("both settled", LIMIT, || status.stats().acknowledged >= 2 && status.stats().dead_lettered >= 1).await;
    sub.stop().await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    let dead = loop {
        let dead = h.dead_letters(&source).await;
        if !dead.is_empty() {
            break dead;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter arrived in {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dead, [("bad".to_owned(), "decode".to_owned())]);
    assert_eq!((runs.get("good"), runs.get("bad")), (1, 0));
}

/// A subscription stopped part way and started again with the same store goes on: every
/// message ends handled once.
pub async fn a_restart_goes_on_where_the_last_run_stopped(h: &dyn BrokerHarness) {
    let source = h.source().await;
    h.publish(&source, &keyed((0..30).map(|i| format!("k{i}")))).await;
    let (runs, down) = (Runs::default(), Arc::default());
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let first = Running::start(h.subscribe(&source, processor(store.clone(), &runs, &down, Duration::from_millis(20))));
    until("a first few handled", LIMIT, || runs.total() >= 5).await;
    first.stop().await;
    let second = Running::start(h.subscribe(&source, processor(store, &runs, &down, Duration::ZERO)));
    until("every key handled", LIMIT, || (0..30).all(|i| runs.get(&format!("k{i}")) >= 1)).await;
    second.stop().await;
    for i in 0..30 {
        assert_eq!(runs.get(&format!("k{i}")), 1, "k{i}");
    }
}

/// A stop lets the messages in flight finish and acknowledges them: started again, the
/// subscription runs none of them a second time.
pub async fn a_stop_drains_what_is_in_flight(h: &dyn BrokerHarness) {
    let source = h.source().await;
    h.publish(&source, &keyed((0..6).map(|i| format!("k{i}")))).await;
    let (runs, down) = (Runs::default(), Arc::default());
    let started = Runs::default();
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let slow = {
        let (runs, started) = (runs.clone(), started.clone());
        handler_fn(move |_m: Message, ctx: Context| {
            let (runs, started) = (runs.clone(), started.clone());
            async move {
                started.hit(ctx.message_key());
                tokio::time::sleep(Duration::from_millis(300)).await;
                runs.hit(ctx.message_key());
                Ok(())
            }
        })
    };
    let p = Processor::builder("suite", slow).shared_store(store.clone()).build().expect("a processor");
    let first = Running::start(h.subscribe(&source, p));
    until("a message in flight", LIMIT, || started.total() >= 1).await;
    first.stop().await;
    let in_flight = started.total();
    assert_eq!(runs.total(), in_flight, "a message in flight at the stop was not finished");
    let second = Running::start(h.subscribe(&source, processor(store, &runs, &down, Duration::ZERO)));
    until("every key handled", LIMIT, || (0..6).all(|i| runs.get(&format!("k{i}")) >= 1)).await;
    second.stop().await;
    for i in 0..6 {
        assert_eq!(runs.get(&format!("k{i}")), 1, "k{i} ran again after the drain");
    }
}

/// While a dependency is down the breaker opens and consumption pauses; once it is back
/// every message is handled and none is dead-lettered.
pub async fn the_breaker_pauses_and_resumes(h: &dyn BrokerHarness) {
    let source = h.source().await;
    let (runs, down) = (Runs::default(), Arc::new(AtomicBool::new(true)));
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let p = processor(store, &runs, &down, Duration::ZERO);
    let watched = p.clone();
    let sub = Running::start(h.subscribe(&source, p));
    h.publish(&source, &keyed((0..10).map(|i| format!("k{i}")))).await;
    until("the breaker to open", LIMIT, || watched.breaker_state() != BreakerState::Closed).await;
    down.store(false, Ordering::SeqCst);
    until("every key handled", LIMIT, || (0..10).all(|i| runs.get(&format!("k{i}")) >= 1)).await;
    let status = sub.status.clone();
    sub.stop().await;
    assert_eq!(status.stats().dead_lettered, 0, "the outage dead-lettered messages");
    assert_eq!(watched.breaker_state(), BreakerState::Closed);
}

/// Writes the adapter conformance suite for a broker: `adapter_conformance_tests!(name,
/// harness)` makes a module `name` with one test per check, each on a fresh `harness`
/// (an expression that makes a [`BrokerHarness`]).
#[macro_export]
macro_rules! adapter_conformance_tests {
    ($name:ident, $harness:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $crate::__adapter_conformance_tests!(
                $harness;
                duplicates_are_acknowledged_without_a_run,
                poison_is_dead_lettered_with_its_reason,
                a_restart_goes_on_where_the_last_run_stopped,
                a_stop_drains_what_is_in_flight,
                the_breaker_pauses_and_resumes
            );
        }
    };
}

/// One `#[tokio::test]` per check of the adapter contract.
#[doc(hidden)]
#[macro_export]
macro_rules! __adapter_conformance_tests {
    ($harness:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let harness = $harness;
                $crate::testing::conformance::adapter::$check(&harness).await;
            }
        )+
    };
}
