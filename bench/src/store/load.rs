//! Latency added at half load, open loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use exactly::{MemoryStore, Outcome, Processor, SledStore};

use super::{Args, msg, noop, process_all};
use crate::report::{fmt_rate, histogram, percentiles, rate, record};

/// The latency a durable store adds at half of its throughput: messages offered at a
/// steady rate (open loop), each timed from when it was due to when `process` returned
/// (its done-record durable), on the memory, sled, redb and fjall stores.
pub(super) async fn run(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in(&args.dir)?;
    let secs: u64 = if args.quick { 1 } else { 10 };
    let n_max: u64 = if args.quick { 10_000 } else { 100_000 };
    let ceiling = Processor::builder("bench", noop()).store(SledStore::open(dir.path().join("ceiling"))?).build()?;
    let max = rate(n_max, process_all(&ceiling, 0..n_max, 256).await);
    drop(ceiling);
    let offered = args.rate.unwrap_or(max / 2.0);
    let warm_up = n_max / 5;
    let segment = args.segment_mb * 1024 * 1024;
    match args.rate {
        None => println!("\nLatency at half the durable store's throughput: the sled store's rate with 256 in flight"),
        Some(_) => println!("\nLatency at a fixed rate (--rate): the sled store's rate with 256 in flight"),
    }
    println!(
        "was {}; {} are offered for {secs} s (open loop), each message timed from when it",
        fmt_rate(max),
        fmt_rate(offered)
    );
    println!(
        "was due until `process` returned with its done-record durable. Log segments of {} MiB. Each store first\ntakes {warm_up} messages untimed (256 in flight).\n",
        args.segment_mb
    );
    println!("| store | offered | achieved | p50 / p99 / p999 (µs) |\n|---|---:|---:|---:|");
    let sled = SledStore::builder(dir.path().join("load")).wal_segment_size(segment).filter_keys(args.filter_keys);
    let redb = exactly::store::RedbStore::builder(dir.path().join("load-redb"))
        .wal_segment_size(segment)
        .filter_keys(args.filter_keys);
    let fjall = exactly::store::FjallStore::builder(dir.path().join("load-fjall"))
        .wal_segment_size(segment)
        .filter_keys(args.filter_keys);
    let stores: [(&str, Arc<dyn exactly::DedupStore>); 4] = [
        ("memory", Arc::new(MemoryStore::new())),
        ("sled (durable)", Arc::new(sled.open()?)),
        ("redb (durable)", Arc::new(redb.open()?)),
        ("fjall (durable)", Arc::new(fjall.open()?)),
    ];
    let mut p99s = Vec::new();
    for (name, store) in stores {
        let p = Processor::builder("bench", noop()).shared_store(store).build()?;
        // Untimed, with keys of their own: the first moments of a phase otherwise carry
        // what the process did before it (glibc's malloc consolidating the previous
        // phase's frees stalled a runtime thread for up to 150 ms; bench/results/performance-log.md).
        process_all(&p, WARM_UP_KEYS..WARM_UP_KEYS + warm_up, 256).await;
        let (h, achieved) = open_loop(&p, offered, secs as f64, 0).await?;
        println!("| {name} | {} | {} | {} |", fmt_rate(offered), fmt_rate(achieved), percentiles(&h));
        p99s.push(h.value_at_quantile(0.99) as f64 / 1000.0);
    }
    println!(
        "\np99 added by the durable store: sled {:.0} µs, redb {:.0} µs, fjall {:.0} µs (the memory store's p99 includes up to\n1 ms of the 1 ms ticks that release the messages).",
        p99s[1] - p99s[0],
        p99s[2] - p99s[0],
        p99s[3] - p99s[0]
    );
    Ok(())
}

/// The first key of the load section's untimed warm-up (the timed keys count from 0).
const WARM_UP_KEYS: u64 = 900_000_000_000;

/// Offers `per_sec` new messages a second for `secs` seconds (keys from `first_key`),
/// each timed from when it was due until `process` returned; the latencies and the rate
/// achieved.
pub(super) async fn open_loop(
    p: &Processor,
    per_sec: f64,
    secs: f64,
    first_key: u64,
) -> anyhow::Result<(hdrhistogram::Histogram<u64>, f64)> {
    let total = (per_sec * secs) as u64;
    let hist = Arc::new(std::sync::Mutex::new(histogram()));
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    while sent < total {
        ticker.tick().await;
        // Finished tasks are reaped as they finish: a JoinSet keeps each one's memory
        // until it is joined, and keeping a run's 800,000 tasks to the end made the bench
        // grow to 2.7 GB while it measured (385 MB reaped; bench/results/performance-log.md).
        while let Some(r) = tasks.try_join_next() {
            r??;
        }
        let due = ((started.elapsed().as_secs_f64() * per_sec) as u64).min(total);
        while sent < due {
            let (p, h, k) = (p.clone(), hist.clone(), sent);
            let at = started + Duration::from_secs_f64(k as f64 / per_sec);
            tasks.spawn(async move {
                let out = p.process(msg(first_key + k)).await?;
                record(&mut h.lock().unwrap_or_else(|e| e.into_inner()), at.elapsed());
                anyhow::ensure!(out.outcome == Outcome::Handled, "expected a new key, got {:?}", out.outcome);
                Ok(())
            });
            sent += 1;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let achieved = rate(total, started.elapsed());
    let h = hist.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((h, achieved))
}
