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
    println!("CPU per message: this process's, and PostgreSQL's (its ended backends' CPU, as the postmaster");
    println!("accounts it; the server runs on this machine).\n");
    println!(
        "| store | instances | done-records/s | vs per-message INSERT | p50 / p99 / p999 (µs) | CPU µs/msg: client / PostgreSQL |\n|---|---:|---:|---:|---:|---:|"
    );
    let (monitor, conn) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(conn);
    let cpu = Cpu { postmaster: postmaster(&monitor).await };

    let naive_n = n.min(20_000);
    let before = cpu.now().await;
    let naive_rate = rate(naive_n, naive(&url, &schema, naive_n, 8).await?);
    let used = cpu.per(before, naive_n).await;
    println!("| per-message INSERT + COMMIT | - | {} | 1.00x | - | {used} |", fmt_rate(naive_rate));

    // One instance again last: the first run pays for the cold tables and connections.
    for (round, instances) in [1u64, 2, 3, 1].into_iter().enumerate() {
        let before = cpu.now().await;
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
        drop(processors);
        let used = cpu.per(before, n * instances).await;
        let latency = percentiles(&all);
        println!("| PgStore | {instances} | {} | {:.2}x | {latency} | {used} |", fmt_rate(r), r / naive_rate);
    }

    let dir = tempfile::tempdir_in(&args.dir)?;
    let sled = Processor::builder("bench", noop()).store(SledStore::open(dir.path().join("sled"))?).build()?;
    let r = rate(n, process_all(&sled, 0..n, 256).await);
    println!("| SledStore (one instance, local) | 1 | {} | {:.2}x | - | - |", fmt_rate(r), r / naive_rate);
    duplicates(&url, &schema, n.min(20_000)).await?;
    super::handler_sql::run(&url, &schema, n.min(20_000)).await?;
    super::outbox::run(&url, &schema, n.min(20_000)).await?;

    monitor.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await?;
    Ok(())
}

/// Duplicates of keys the first round made done, 256 in flight: on a new instance (its
/// cache of done keys empty: each is a claim round trip), then again on the same one (the
/// cache answers).
async fn duplicates(url: &str, schema: &str, n: u64) -> anyhow::Result<()> {
    println!("\nDuplicates of {n} done keys, 256 in flight, p50 / p99 / p999 (µs):\n");
    println!("| instance | duplicates/s | p50 / p99 / p999 (µs) |\n|---|---:|---:|");
    let store = PgStore::builder(url.to_owned()).schema(schema).open().await?;
    let p = Processor::builder("bench", noop()).store(store).build()?;
    let keys = 1_000_000_000..1_000_000_000 + n;
    for what in ["new, cold cache", "same, warm cache"] {
        let (took, latency) = super::process_all_timed(&p, keys.clone(), 256).await;
        println!("| {what} | {} | {} |", fmt_rate(rate(n, took)), percentiles(&latency));
    }
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

/// CPU time of this process and of PostgreSQL's ended backends.
struct Cpu {
    postmaster: Option<u32>,
}

impl Cpu {
    async fn now(&self) -> (Duration, Option<Duration>) {
        // Backends of the last run end (and are accounted to the postmaster) shortly after
        // their connections close.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let own = ticks("/proc/self/stat", 11).map(ticks_to_time).unwrap_or_default();
        let pg = self.postmaster.and_then(|pid| ticks(&format!("/proc/{pid}/stat"), 13)).map(ticks_to_time);
        (own, pg)
    }

    /// Microseconds of CPU per message since `before`: this process / PostgreSQL.
    async fn per(&self, before: (Duration, Option<Duration>), n: u64) -> String {
        let after = self.now().await;
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        let own = us(after.0.saturating_sub(before.0));
        match (before.1, after.1) {
            (Some(b), Some(a)) => format!("{own:.1} / {:.1}", us(a.saturating_sub(b))),
            _ => format!("{own:.1} / ?"),
        }
    }
}

/// The sum of two adjacent fields of a /proc stat line, `at` counted from 0 after the
/// command name (utime+stime at 11, cutime+cstime at 13).
fn ticks(path: &str, at: usize) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let a: u64 = fields.get(at)?.parse().ok()?;
    let b: u64 = fields.get(at + 1)?.parse().ok()?;
    Some(a + b)
}

fn ticks_to_time(t: u64) -> Duration {
    // USER_HZ is 100 on Linux.
    Duration::from_millis(t * 10)
}

/// The postmaster's pid, when the server runs on this machine: the parent of this
/// connection's backend.
async fn postmaster(client: &tokio_postgres::Client) -> Option<u32> {
    let backend: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.ok()?.get(0);
    let status = std::fs::read_to_string(format!("/proc/{backend}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|p| p.trim().parse().ok())
}
