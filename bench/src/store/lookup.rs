//! Duplicate lookups as a store grows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use exactly::{Outcome, Processor, SledStore};
use rand::{Rng, SeedableRng};

use super::{Args, Engine, msg, noop, process_all_timed, sizes};
use crate::report::{fmt_rate, histogram, percentiles, rate, record, resident_mib};

pub(super) async fn run(args: &Args) -> anyhow::Result<()> {
    let sizes = sizes(args);
    let engine = format!("{:?}", args.lookup_engine).to_lowercase();
    println!("\nDuplicate lookups as a {engine} store grows: `process` of a random existing key, answered");
    println!("from the store without running the handler. The store is filled to each size (64 in");
    println!("flight), reopened, then asked once its filter of done keys is built; sequential latency,");
    println!("then the store's lookup alone of a done key and of a new key, and the rate with 8 tasks.");
    println!("While filling, each new key is timed from `process` until its done-record is durable");
    println!("(the insert's cost with group commit). Resident: the bench process's resident memory");
    println!("after the lookups (the store's cache, filter and memtable; the runtime's own is a few MiB).");
    println!(
        "{engine} cache: {} MiB; filter of done keys: {}; {}.\n",
        args.cache_mb,
        match args.filter_keys {
            0 => "off".to_owned(),
            keys => format!("at least {keys} keys"),
        },
        if args.warm { "every key asked once after the reopen, before measuring" } else { "cold after the reopen" }
    );
    println!(
        "| done keys | filled at | insert p50 / p99 (µs) | duplicate `process` p50 / p99 / p999 (µs) | store lookup, done key | store lookup, new key | 8 tasks | on disk | resident | open to filter |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let dir = tempfile::tempdir_in(&args.dir)?;
    let path = dir.path().join("s");
    let mut filled = 0u64;
    let mut points = Vec::new();
    let cache = args.cache_mb * 1024 * 1024;
    let open = || -> anyhow::Result<Arc<dyn exactly::DedupStore>> {
        Ok(match args.lookup_engine {
            Engine::Sled => Arc::new(SledStore::builder(&path).cache_size(cache).filter_keys(args.filter_keys).open()?),
            Engine::Fjall => Arc::new(
                exactly::store::FjallStore::builder(&path).cache_size(cache).filter_keys(args.filter_keys).open()?,
            ),
            Engine::Redb => Arc::new(
                exactly::store::RedbStore::builder(&path).cache_size(cache).filter_keys(args.filter_keys).open()?,
            ),
        })
    };
    let filtered = args.filter_keys != 0;
    for keys in sizes {
        let p = Processor::builder("bench", noop()).shared_store(open()?).build()?;
        let (fill, inserts) = process_all_timed(&p, filled..keys, 64).await;
        let fill_rate = rate(keys - filled, fill);
        filled = keys;
        drop(p);
        let reopened = Instant::now();
        let p = Processor::builder("bench", noop()).shared_store(open()?).build()?;
        // The filter of done keys is built in the background after the open; until it
        // is, reads of new keys go to sled.
        while filtered && p.store().stats().filter_builds == 0 {
            anyhow::ensure!(reopened.elapsed() < Duration::from_secs(600), "the filter of done keys was not built");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let filter_ready = reopened.elapsed();
        let lookups: u64 = if args.quick { 20_000 } else { 200_000 };
        if args.warm {
            for k in 0..keys {
                let out = p.process(msg(k)).await?;
                anyhow::ensure!(out.outcome == Outcome::Duplicate, "expected a duplicate, got {:?}", out.outcome);
            }
        }
        let mut h = histogram();
        let mut rng = rand::rng();
        for _ in 0..lookups {
            let m = msg(rng.random_range(0..keys));
            let t = Instant::now();
            let out = p.process(m).await?;
            record(&mut h, t.elapsed());
            anyhow::ensure!(out.outcome == Outcome::Duplicate, "expected a duplicate, got {:?}", out.outcome);
        }
        // The store's record lookup alone, of a done key and of a new key (the common
        // path; it sorts among the done keys, so without the filter its lookup walks to a
        // leaf as a duplicate's does), alternating.
        let (mut hit, mut miss) = (histogram(), histogram());
        for _ in 0..lookups {
            let k = rng.random_range(0..keys);
            for (suffix, h) in [("", &mut hit), ("-new", &mut miss)] {
                let key = exactly::StoreKey::new("bench", &format!("k{k:012}{suffix}"));
                let t = Instant::now();
                let found = p.store().inspect(&key).await?;
                record(h, t.elapsed());
                anyhow::ensure!(found.is_some() == suffix.is_empty(), "lookup of {key:?} found {found:?}");
            }
        }
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::from_os_rng();
                for _ in 0..lookups / 8 {
                    let out = p.process(msg(rng.random_range(0..keys))).await.expect("store");
                    assert_eq!(out.outcome, Outcome::Duplicate);
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        let concurrent = rate(lookups / 8 * 8, started.elapsed());
        let disk = p.store().stats().disk_bytes.unwrap_or(0);
        println!(
            "| {keys} | {} | {:.1} / {:.1} | {} | {} | {} | {} | {:.0} MiB | {:.0} MiB | {:.2} s |",
            fmt_rate(fill_rate),
            inserts.value_at_quantile(0.5) as f64 / 1000.0,
            inserts.value_at_quantile(0.99) as f64 / 1000.0,
            percentiles(&h),
            percentiles(&hit),
            percentiles(&miss),
            fmt_rate(concurrent),
            disk as f64 / (1024.0 * 1024.0),
            resident_mib(),
            filter_ready.as_secs_f64()
        );
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        points.push((keys as f64, us(0.5), us(0.99), us(0.999), miss.value_at_quantile(0.99) as f64 / 1000.0));
        p.flush().await?;
    }
    if let Some(out) = &args.plot {
        crate::plot::latency_vs_size(out, &engine, &points)?;
        println!("\nplot: {}", out.display());
    }
    Ok(())
}
