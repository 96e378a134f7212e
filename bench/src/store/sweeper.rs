//! The expiry sweeper's cost as the store grows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use exactly::{DedupStore, Millis, Processor, SledStore};

use super::load::open_loop;
use super::{Args, noop, process_all, sizes};
use crate::report::{fmt_rate, percentiles, rate};

/// What the expiry sweeper costs at each store size: a sled store filled with done keys
/// that all expire, then purged the way [`exactly::Sweeper`] does it (calls of its budget
/// of keys, yielding between them, until nothing is left). With `--sweeper-rate`, new
/// messages are offered at that rate for a few seconds before the purge and again while
/// it runs, so that what a purge costs the messages of a busy consumer shows.
pub(super) async fn run(args: &Args) -> anyhow::Result<()> {
    let budget = args.budget.unwrap_or(exactly::Sweeper::default().budget);
    let per_sec = args.sweeper_rate;
    let secs = if args.quick { 1.0 } else { 3.0 };
    println!("\nThe expiry sweeper as the store grows: a fresh sled store filled with done keys (64 in");
    println!("flight, retention 1 h), the clock moved past their expiry, then `purge_expired` called");
    println!("with a budget of {budget} keys per call, yielding between calls, until nothing is left.");
    if per_sec > 0.0 {
        println!(
            "New messages are offered at {} for {secs} s before the purge, then for {secs} s while it",
            fmt_rate(per_sec)
        );
        println!("runs (open loop; each timed from when it was due until its done-record was durable).");
    }
    println!(
        "\n| done keys | purge total | keys/s | per call p50 / max (ms) | messages: p50 / p99 / p999 before the purge (µs) | during the purge | on disk before / after |\n|---:|---:|---:|---:|---:|---:|---:|"
    );
    for keys in sizes(args) {
        let dir = tempfile::tempdir_in(&args.dir)?;
        let clock = exactly::ManualClock::new(1_000_000_000_000);
        let p = Processor::builder("bench", noop())
            .store(SledStore::open(dir.path().join("s"))?)
            .clock(Arc::new(clock.clone()))
            .retention(Duration::from_secs(3600))
            .build()?;
        process_all(&p, 0..keys, 64).await;
        p.flush().await?;
        let store = p.store().clone();
        let before = store.stats().disk_bytes.unwrap_or(0);
        clock.advance(Duration::from_secs(3 * 3600));
        let now = p.clock().now();
        // New messages expire an hour after `now`: the purge leaves them. The first
        // seconds after the fill are untimed (the engine is still catching up with it).
        let quiet = if per_sec > 0.0 {
            open_loop(&p, per_sec, secs, WARM_UP_KEYS).await?;
            percentiles(&open_loop(&p, per_sec, secs, QUIET_KEYS).await?.0)
        } else {
            "-".into()
        };
        let purge = tokio::spawn(purge_all(store.clone(), now, budget));
        let during = if per_sec > 0.0 {
            let (h, _) = open_loop(&p, per_sec, secs, DURING_KEYS).await?;
            // A purge that ended before the load did was measured only in part.
            let partly = if purge.is_finished() { " (purge ended first)" } else { "" };
            format!("{}{partly}", percentiles(&h))
        } else {
            "-".into()
        };
        let (total, removed, mut calls) = purge.await??;
        anyhow::ensure!(removed == keys, "purged {removed} of {keys} expired keys");
        store.flush().await?;
        let after = store.stats().disk_bytes.unwrap_or(0);
        calls.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!(
            "| {keys} | {:.2} s | {} | {:.1} / {:.1} | {quiet} | {during} | {:.0} / {:.0} MiB |",
            total.as_secs_f64(),
            fmt_rate(rate(keys, total)),
            ms(calls[calls.len() / 2]),
            ms(calls[calls.len() - 1]),
            mib(before),
            mib(after)
        );
    }
    Ok(())
}

/// The first keys of the messages offered before (untimed, then timed) and during the purge.
const WARM_UP_KEYS: u64 = 400_000_000_000;
const QUIET_KEYS: u64 = 500_000_000_000;
const DURING_KEYS: u64 = 600_000_000_000;

/// Purges everything expired at `now` as the sweeper does: how long it took, the records
/// removed and each call's duration.
async fn purge_all(
    store: Arc<dyn DedupStore>,
    now: Millis,
    budget: usize,
) -> anyhow::Result<(Duration, u64, Vec<Duration>)> {
    let (mut removed, mut calls) = (0u64, Vec::new());
    let started = Instant::now();
    loop {
        let t = Instant::now();
        let r = store.purge_expired(now, budget).await?;
        calls.push(t.elapsed());
        removed += r.records_removed;
        if !r.more {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok((started.elapsed(), removed, calls))
}
