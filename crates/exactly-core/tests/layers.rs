//! Handler middleware: tower layers around the handler, inside the claim.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use exactly_core::testing::{DrainOptions, MemoryBroker, drain};
use exactly_core::tower::limit::ConcurrencyLimitLayer;
use exactly_core::tower::load_shed::LoadShedLayer;
use exactly_core::tower::{Layer, Service};
use exactly_core::{
    Context, Disposition, HandlerError, HandlerRequest, MemoryStore, Message, Outcome, Processor, RetryPolicy,
    handler_fn, layers::BoxError, reasons,
};

fn msg(key: &str) -> Message {
    Message::builder(key.to_owned()).header("idempotency-key", key).build()
}

/// A layer that counts the calls it sees and can fail them.
#[derive(Clone)]
struct Counting {
    calls: Arc<AtomicU64>,
    fail: Option<fn() -> HandlerError>,
    panic: bool,
}

impl<S> Layer<S> for Counting {
    type Service = CountingService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CountingService { inner, layer: self.clone() }
    }
}

struct CountingService<S> {
    inner: S,
    layer: Counting,
}

impl<S> Service<HandlerRequest> for CountingService<S>
where
    S: Service<HandlerRequest, Error = BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: HandlerRequest) -> Self::Future {
        self.layer.calls.fetch_add(1, Ordering::SeqCst);
        assert!(!self.layer.panic, "a layer that panics");
        if let Some(fail) = self.layer.fail {
            let e = fail().into_box();
            return Box::pin(async move { Err(e) });
        }
        Box::pin(self.inner.call(req))
    }
}

fn counting() -> (Counting, Arc<AtomicU64>) {
    let calls = Arc::new(AtomicU64::new(0));
    (Counting { calls: calls.clone(), fail: None, panic: false }, calls)
}

#[tokio::test]
async fn a_layer_runs_inside_the_claim_so_a_duplicate_never_reaches_it() {
    let (layer, calls) = counting();
    let p = Processor::builder("c", handler_fn(|_m: Message, _c: Context| async { Ok("out") }))
        .store(MemoryStore::new())
        .layer(layer)
        .build()
        .unwrap();
    assert_eq!(p.process(msg("a")).await.unwrap().outcome, Outcome::Handled);
    let dup = p.process(msg("a")).await.unwrap();
    assert_eq!((dup.outcome, dup.output.as_deref()), (Outcome::Duplicate, Some(&b"out"[..])));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the duplicate went through the layer");
}

#[tokio::test]
async fn an_error_a_layer_returns_keeps_its_kind_and_reason() {
    let (mut layer, _) = counting();
    layer.fail = Some(|| HandlerError::permanent("blocked-by-policy", "the tenant is suspended"));
    let p = Processor::builder("c", handler_fn(|_m: Message, _c: Context| async { Ok(()) }))
        .store(MemoryStore::new())
        .layer(layer)
        .build()
        .unwrap();
    let out = p.process(msg("a")).await.unwrap();
    match &out.disposition {
        Disposition::DeadLetter(dl) => assert_eq!(dl.reason, "blocked-by-policy"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_panicking_layer_is_a_transient_failure() {
    let (mut layer, _) = counting();
    layer.panic = true;
    let p = Processor::builder("c", handler_fn(|_m: Message, _c: Context| async { Ok(()) }))
        .store(MemoryStore::new())
        .layer(layer)
        .no_breaker()
        .build()
        .unwrap();
    let out = p.process(msg("a")).await.unwrap();
    assert_eq!(out.outcome, Outcome::Retry, "{:?}", out.disposition);
}

#[tokio::test]
async fn the_last_layer_added_runs_first() {
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let tag = |name: &'static str, order: Arc<std::sync::Mutex<Vec<&'static str>>>| {
        exactly_core::tower::layer::layer_fn(move |inner: exactly_core::HandlerService| {
            let order = order.clone();
            exactly_core::tower::util::MapRequest::new(inner, move |r: HandlerRequest| {
                order.lock().unwrap().push(name);
                r
            })
        })
    };
    let p = Processor::builder("c", handler_fn(|_m: Message, _c: Context| async { Ok(()) }))
        .store(MemoryStore::new())
        .layer(tag("first added", order.clone()))
        .layer(tag("last added", order.clone()))
        .build()
        .unwrap();
    assert_eq!(p.process(msg("a")).await.unwrap().outcome, Outcome::Handled);
    assert_eq!(*order.lock().unwrap(), ["last added", "first added"]);
}

/// A concurrency limit with load shedding: deliveries beyond the limit are refused by
/// the layer, retried later (the refusal does not count as an attempt), and every one
/// ends handled: none lost, none dead-lettered, though the retry policy allows only two
/// attempts.
#[tokio::test(start_paused = true)]
async fn a_load_shedding_refusal_is_retried_and_never_lost() {
    let broker = MemoryBroker::new();
    for i in 0..40 {
        broker.publish("q", msg(&format!("k{i}")));
    }
    let runs = Arc::new(AtomicU64::new(0));
    let r = runs.clone();
    let handler = handler_fn(move |_m: Message, _c: Context| {
        let r = r.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            r.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let p = Processor::builder("c", handler)
        .store(MemoryStore::new())
        .layer(ConcurrencyLimitLayer::new(2))
        .layer(LoadShedLayer::new())
        .retry(RetryPolicy::exponential(Duration::from_millis(10), Duration::from_millis(50), 2).unwrap())
        .no_breaker()
        .build()
        .unwrap();
    let report = drain(&broker, "q", &p, DrainOptions { concurrency: 8, ..DrainOptions::default() }).await.unwrap();
    assert_eq!(report.handled, 40, "{report:?}");
    assert_eq!(report.dead_lettered, 0, "{report:?}");
    assert!(report.retries > 0, "nothing was shed: {report:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 40);
    let stats = broker.stats("q");
    assert_eq!((stats.acked, stats.ready, stats.unacked), (40, 0, 0));
    assert!(broker.dead_letters("q").is_empty());
    let _ = reasons::OVERLOADED;
}
