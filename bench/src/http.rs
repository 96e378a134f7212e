//! `bench http`: a small axum handler with and without `IdempotencyLayer`, driven by
//! reqwest clients over real connections on 127.0.0.1 (the server and the clients share
//! this process and its cores).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use exactly::DedupStore;
use exactly::http::IdempotencyLayer;
use hdrhistogram::Histogram;

use crate::report::{Run, Runs, cpu_time, histogram, median, record};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// A short run (CI).
    #[arg(long)]
    quick: bool,
    /// Requests per run.
    #[arg(long)]
    requests: Option<u64>,
    /// Concurrent connections, one table each.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 16, 128])]
    connections: Vec<usize>,
    /// Repetitions (variants interleaved); the median is reported with the range.
    #[arg(long)]
    reps: Option<usize>,
    /// The layer's store: `sled` (durable: each fresh response waits for a group commit's
    /// fsync) or `memory`.
    #[arg(long, default_value = "sled")]
    store: String,
    /// Where stores are created.
    #[arg(long, default_value = "target/bench-tmp")]
    dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Bare,
    Fresh,
    Replayed,
}

const VARIANTS: [Variant; 3] = [Variant::Bare, Variant::Fresh, Variant::Replayed];
const LABELS: [&str; 3] = ["bare axum", "layer, fresh keys", "layer, replayed keys"];

/// A running server; stopped, and its store's directory removed, when dropped.
struct Server {
    url: String,
    task: tokio::task::JoinHandle<()>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server on a free port: the handler alone, or behind the layer on a new store.
async fn server(args: &Args, layer: bool) -> anyhow::Result<Server> {
    let handler = post(async |body: String| (StatusCode::CREATED, format!("{{\"charged\":{}}}", body.len())));
    let mut app = Router::new().route("/payments", handler);
    let mut dir = None;
    if layer {
        let store: Arc<dyn DedupStore> = match args.store.as_str() {
            "memory" => Arc::new(exactly::MemoryStore::new()),
            "sled" => {
                std::fs::create_dir_all(&args.dir)?;
                let tmp = dir.insert(tempfile::tempdir_in(&args.dir)?);
                Arc::new(exactly::SledStore::open(tmp.path().join("store"))?)
            }
            other => anyhow::bail!("--store {other}: use sled or memory"),
        };
        app = app.layer(IdempotencyLayer::shared(store));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/payments", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Server { url, task, _dir: dir })
}

/// `n` requests over `connections` connections, each sending its next request when the
/// last is answered; or, with `pace` (requests/s in all), each at its scheduled time.
async fn drive(url: &str, keys: &str, n: u64, connections: usize, pace: Option<f64>) -> anyhow::Result<Run> {
    let next = Arc::new(AtomicU64::new(0));
    let (started, cpu) = (Instant::now(), cpu_time());
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let (url, keys, next) = (url.to_owned(), keys.to_owned(), next.clone());
        let client = reqwest::Client::builder().pool_max_idle_per_host(1).build()?;
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let interval = pace.map(|rate| Duration::from_secs_f64(connections as f64 / rate));
            // Paced connections start spread over one interval, not in bursts of all at once.
            let mut due = Instant::now() + interval.unwrap_or_default().mul_f64(connection as f64 / connections as f64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(latency);
                }
                if interval.is_some() {
                    tokio::time::sleep_until(due.into()).await;
                }
                // Counted from the send; from the scheduled time only when the generator
                // fell behind it by more than the timer's 1 ms tick (a stall the requests it
                // delayed must not hide).
                let sent = Instant::now();
                let from = if interval.is_some() && sent > due + Duration::from_millis(2) { due } else { sent };
                let response = client
                    .post(&url)
                    .header("idempotency-key", format!("\"{keys}-{i}\""))
                    .body(format!("{{\"account\":\"acct-{}\",\"cents\":500}}", i % 100))
                    .send()
                    .await?;
                anyhow::ensure!(response.status() == StatusCode::CREATED, "request {i}: {}", response.status());
                response.bytes().await?;
                record(&mut latency, from.elapsed());
                if let Some(interval) = interval {
                    due += interval;
                }
            }
        }));
    }
    let mut latency = histogram();
    for task in tasks {
        latency.add(task.await??)?;
    }
    Ok(Run { took: started.elapsed(), cpu: cpu_time().saturating_sub(cpu), latency: Some(latency) })
}

/// One measured run of `variant` on a server of its own.
async fn run_one(args: &Args, variant: Variant, n: u64, connections: usize, pace: Option<f64>) -> anyhow::Result<Run> {
    let server = server(args, variant != Variant::Bare).await?;
    let url = &server.url;
    let keys = format!("c{connections}");
    if variant == Variant::Replayed {
        drive(url, &keys, n, connections, None).await.context("storing the responses to replay")?;
    }
    drive(url, &keys, n, connections, pace).await
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let n = args.requests.unwrap_or(if args.quick { 400 } else { 20_000 });
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 });
    println!("# bench http: {n} requests per run, {reps} runs, the layer on the {} store", args.store);
    println!("{}\n", crate::report::machine());
    let mut fresh_rate = Vec::new();
    for &connections in &args.connections {
        println!("## {connections} connection(s)\n");
        let mut runs = Runs::new(VARIANTS.len());
        for _ in 0..reps {
            for (i, variant) in VARIANTS.into_iter().enumerate() {
                let run = run_one(&args, variant, n, connections, None).await?;
                if variant == Variant::Fresh && connections == 16 {
                    fresh_rate.push(n as f64 / run.took.as_secs_f64());
                }
                runs.add(i, n, run);
            }
        }
        runs.print("requests/s", "CPU / request", &LABELS, true);
    }
    if !fresh_rate.is_empty() {
        // Half of the layer's own measured maximum, the same rate for both.
        let half = median(&mut fresh_rate) / 2.0;
        println!("## 16 connections paced at {half:.0} requests/s (half of the layer's maximum)\n");
        println!("| server | p50 (µs) | p99 (µs) | p999 (µs) |\n|---|---:|---:|---:|");
        let mut p99 = [0.0; 2];
        for (i, variant) in [Variant::Bare, Variant::Fresh].into_iter().enumerate() {
            let mut all: Histogram<u64> = histogram();
            for _ in 0..reps {
                let run = run_one(&args, variant, n, 16, Some(half)).await?;
                if let Some(h) = run.latency {
                    all.add(h)?;
                }
            }
            let us = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
            p99[i] = us(0.99);
            println!("| {} | {:.0} | {:.0} | {:.0} |", LABELS[i], us(0.5), us(0.99), us(0.999));
        }
        println!("\np99 added by the layer at half load: {:.2} ms", (p99[1] - p99[0]) / 1000.0);
    }
    Ok(())
}
