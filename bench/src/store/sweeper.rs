//! The expiry sweeper's cost as the store grows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use exactly::{Processor, SledStore};

use super::{Args, noop, process_all, sizes};
use crate::report::{fmt_rate, rate};

/// What the expiry sweeper costs at each store size: a sled store filled with done keys
/// that all expire, then purged the way [`exactly::Sweeper`] does it (calls of its budget
/// of keys until nothing is left). A call reads on the calling task, so its duration is
/// how long one sweeper step holds a runtime thread.
pub(super) async fn run(args: &Args) -> anyhow::Result<()> {
    let budget = args.budget.unwrap_or(exactly::Sweeper::default().budget);
    println!("\nThe expiry sweeper as the store grows: a fresh sled store filled with done keys (64 in");
    println!("flight, retention 1 h), the clock moved past their expiry, then `purge_expired` called");
    println!("with a budget of {budget} keys per call until nothing is left.\n");
    println!(
        "| done keys | purge total | keys/s | per call p50 / max (ms) | on disk before / after |\n|---:|---:|---:|---:|---:|"
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
        }
        let total = started.elapsed();
        anyhow::ensure!(removed == keys, "purged {removed} of {keys} expired keys");
        store.flush().await?;
        let after = store.stats().disk_bytes.unwrap_or(0);
        calls.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!(
            "| {keys} | {:.2} s | {} | {:.1} / {:.1} | {:.0} / {:.0} MiB |",
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
