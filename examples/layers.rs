//! Handler middleware: a rate limit and a tracing field, as tower layers around the handler.
//!
//! ```sh
//! cargo run -p exactly-examples --example layers
//! ```
//!
//! Any `tower::Layer` goes in `ProcessorBuilder::layer`: tower's own (here `RateLimitLayer`,
//! so a downstream API sees at most 20 calls a second) or one of yours (here `TenantSpan`,
//! which runs each call in a span carrying the message's `tenant` header, so every log line
//! the handler writes says whose order it was). A layer runs inside the key's claim: a
//! duplicate never reaches it, and while the rate limit makes a message wait, its claim is
//! held. The last layer added runs first, as with axum's `Router::layer`.

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use exactly::layers::BoxError;
use exactly::testing::{DrainOptions, MemoryBroker, drain};
use exactly::tower::limit::RateLimitLayer;
use exactly::tower::{Layer, Service};
use exactly::{Context, HandlerRequest, MemoryStore, Message, Processor, handler_fn};
use tracing::Instrument;

/// Runs each call in a `tenant` span named after the message's `tenant` header.
#[derive(Clone, Copy)]
struct TenantSpan;

impl<S> Layer<S> for TenantSpan {
    type Service = TenantSpanService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TenantSpanService { inner }
    }
}

struct TenantSpanService<S> {
    inner: S,
}

impl<S> Service<HandlerRequest> for TenantSpanService<S>
where
    S: Service<HandlerRequest, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: HandlerRequest) -> Self::Future {
        let tenant = req.message.headers().get_str("tenant").unwrap_or("unknown").to_owned();
        let span = tracing::info_span!("order", %tenant, key = %req.context.idempotency_key());
        Box::pin(self.inner.call(req).instrument(span))
    }
}

fn order(key: &str, tenant: &str) -> Message {
    Message::builder(format!("order {key}")).header("idempotency-key", key).header("tenant", tenant).build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // This example's own log lines, whatever RUST_LOG says: they are what it shows.
    tracing_subscriber::fmt().with_env_filter("layers=info").with_target(false).without_time().init();

    let handler = handler_fn(|msg: Message, _ctx: Context| async move {
        tracing::info!(body = %msg.payload_str().unwrap_or(""), "calling the fulfilment API");
        Ok(())
    });
    let processor = Processor::builder("fulfilment", handler)
        .store(MemoryStore::new())
        .layer(RateLimitLayer::new(2, Duration::from_millis(100))) // 20 calls a second
        .layer(TenantSpan)
        .build()?;

    let broker = MemoryBroker::new();
    for i in 1..=10 {
        broker.publish("orders", order(&format!("o-{i}"), if i % 2 == 0 { "acme" } else { "globex" }));
    }
    broker.publish("orders", order("o-1", "globex")); // a redelivery: never reaches the layers

    let started = Instant::now();
    let report = drain(&broker, "orders", &processor, DrainOptions::default()).await?;
    let elapsed = started.elapsed();
    println!(
        "handled {}, duplicates {}; 10 calls under a limit of 20 a second took {} ms",
        report.handled,
        report.duplicates,
        elapsed.as_millis()
    );
    // The limit lets 2 calls through per 100 ms window: 10 calls span at least 4 windows.
    if elapsed < Duration::from_millis(400) {
        return Err(format!("the rate limit let 10 calls through in {elapsed:?}").into());
    }
    Ok(())
}
