//! The closest Rust peer, mq-bridge (with the `mq-bridge` feature): one of its routes
//! from a broker input to its `null` output, with the deduplication middleware on a sled
//! store flushed before each source ack (`durable=true`; or not flushed, `durable=false`)
//! and a handler that counts.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mq_bridge::traits::{AsyncHandler, BoxFuture, SimpleHandler};
use mq_bridge::{CanonicalMessage, Handled, HandlerError};

use crate::report::{cpu_time, wait_for};

struct Count(Arc<AtomicU64>);

impl AsyncHandler for Count {
    fn handle<'a>(&'a self, _m: CanonicalMessage) -> BoxFuture<'a, Result<Handled, HandlerError>> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(Handled::Ack) })
    }
}

/// Runs a route named `name` from `input` (the endpoint's name and its JSON settings),
/// deduplicated by `key` (a template; mq-bridge's default without one), with its store
/// under `dir` (flushed before each ack when `durable`), until `n` messages are handled.
/// Measured until the last message is handled (the stop then acks what is left); latency
/// is not measured.
pub(crate) async fn run(
    dir: &Path,
    name: &str,
    input: (&str, serde_json::Value),
    key: Option<&str>,
    durable: bool,
    n: u64,
) -> anyhow::Result<crate::report::Run> {
    let dir = tempfile::tempdir_in(dir)?;
    let store = format!("sled://{}?durable={durable}", std::path::absolute(dir.path().join("dedup"))?.display());
    let mut dedup = serde_json::json!({ "store": store, "ttl_seconds": 7 * 24 * 3600 });
    if let Some(key) = key {
        dedup["key"] = key.into();
    }
    let mut source = serde_json::json!({ "middlewares": [{ "deduplication": dedup }] });
    source[input.0] = input.1;
    let route: mq_bridge::Route =
        serde_json::from_value(serde_json::json!({ "input": source, "output": { "null": null } }))?;
    let handled = Arc::new(AtomicU64::new(0));
    let route = route.with_handler(SimpleHandler(Count(handled.clone())));
    let (started, cpu) = (Instant::now(), cpu_time());
    let handle = route.run(name).await?;
    wait_for(&handled, |now| now >= n, || handle.outcome().is_some(), Duration::from_secs(30)).await?;
    let took = crate::report::Run { took: started.elapsed(), cpu: cpu_time().saturating_sub(cpu), latency: None };
    handle.stop().await;
    handle.join().await?;
    Ok(took)
}
