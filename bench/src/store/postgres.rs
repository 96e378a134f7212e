//! The shared PostgreSQL store: done-records per second through the full protocol on one
//! and on three instances sharing the store, next to what a team without a framework
//! writes (one `INSERT ... ON CONFLICT DO NOTHING` and commit per message) and the local
//! sled store, in the same run.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use exactly::postgres::PgStore;
use exactly::{Processor, SledStore};
use tokio_postgres::NoTls;

use super::{Args, noop, process_all};
use crate::report::{fmt_rate, percentiles, rate};

pub(super) async fn run(args: &Args, n: u64) -> anyhow::Result<()> {
    let url = std::env::var("EXACTLY_POSTGRES_URL")
        .context("the postgres section needs $EXACTLY_POSTGRES_URL (eval \"$(scripts/services.sh up)\")")?;
    let schema = format!("bench_{}", std::process::id());
    println!("\nThe shared PostgreSQL store (PostgreSQL 15 on this machine, synchronous_commit on): durable");
    println!("done-records per second with 256 messages in flight per instance, no-op handler; each");
    println!("instance a `PgStore` of its own (8 connections) on one schema. Against it: one");
    println!("`INSERT ... ON CONFLICT DO NOTHING` committed per message on 8 connections, and sled.\n");
    println!(
        "| store | instances | done-records/s | vs per-message INSERT | p50 / p99 / p999 (µs) |\n|---|---:|---:|---:|---:|"
    );

    let naive = naive(&url, &schema, n.min(20_000), 8).await?;
    let naive_rate = rate(n.min(20_000), naive);
    println!("| per-message INSERT + COMMIT | - | {} | 1.00x | - |", fmt_rate(naive_rate));

    // One instance again last: the first run pays for the cold tables and connections.
    for (round, instances) in [1u64, 3, 1].into_iter().enumerate() {
        let mut processors = Vec::new();
        for _ in 0..instances {
            let store = PgStore::builder(url.clone()).schema(&schema).open().await?;
            processors.push(Processor::builder("bench", noop()).store(store).build()?);
        }
        let base = (round as u64 + 1) * 1_000_000_000;
        let started = Instant::now();
        let mut runs = Vec::new();
        for (i, p) in processors.iter().enumerate() {
            let p = p.clone();
            let from = base + i as u64 * n;
            runs.push(tokio::spawn(async move { super::process_all_timed(&p, from..from + n, 256).await }));
        }
        let mut all = crate::report::histogram();
        for r in runs {
            all.add(r.await?.1).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let r = rate(n * instances, started.elapsed());
        println!("| PgStore | {instances} | {} | {:.2}x | {} |", fmt_rate(r), r / naive_rate, percentiles(&all));
    }

    let dir = tempfile::tempdir_in(&args.dir)?;
    let sled = Processor::builder("bench", noop()).store(SledStore::open(dir.path().join("sled"))?).build()?;
    let r = rate(n, process_all(&sled, 0..n, 256).await);
    println!("| SledStore (one instance, local) | 1 | {} | {:.2}x | - |", fmt_rate(r), r / naive_rate);

    let (client, conn) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(conn);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await?;
    Ok(())
}

/// One key per statement, each its own transaction: what consumers without a framework do.
async fn naive(url: &str, schema: &str, n: u64, connections: u64) -> anyhow::Result<Duration> {
    let (setup, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(conn);
    setup
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; CREATE TABLE IF NOT EXISTS {schema}.naive (key text PRIMARY KEY)"
        ))
        .await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..connections {
        let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(conn);
        let insert = format!("INSERT INTO {schema}.naive VALUES ($1) ON CONFLICT DO NOTHING");
        tasks.push(tokio::spawn(async move {
            let mut k = t;
            while k < n {
                client.execute(&insert, &[&format!("k{k:012}")]).await?;
                k += connections;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}
