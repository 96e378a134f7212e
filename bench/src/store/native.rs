//! Each engine behind the write-ahead log against the same engine making each group
//! durable itself (issue 27: does the log earn its place for redb and fjall?).

use std::sync::Arc;

use exactly::{DedupStore, Processor};

use super::{Args, Engine, noop, process_all_timed};
use crate::report::{histogram, median, percentiles, rate, spread};

/// A store under comparison.
#[derive(Clone, Copy)]
enum Subject {
    Logged(Engine),
    NativeRedb,
    NativeFjall,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Logged(Engine::Redb) => "redb behind the log",
            Subject::Logged(Engine::Fjall) => "fjall behind the log",
            Subject::Logged(Engine::Sled) => "sled behind the log",
            Subject::NativeRedb => "redb, its own durable commit",
            Subject::NativeFjall => "fjall, its own durable commit",
        }
    }

    fn open(self, dir: &std::path::Path) -> anyhow::Result<Arc<dyn DedupStore>> {
        Ok(match self {
            Subject::Logged(e) => e.open(dir)?,
            Subject::NativeRedb => exactly_core::store::native::open_native_redb(dir)?,
            Subject::NativeFjall => exactly_core::store::native::open_native_fjall(dir)?,
        })
    }
}

pub(crate) async fn run(args: &Args, n: u64) -> anyhow::Result<()> {
    println!("\nEach engine behind the write-ahead log against the same engine making every group");
    println!("durable with its own commit (redb: a write transaction with Durability::Immediate;");
    println!("fjall: a write batch, then persist(SyncData) of its journal, two groups in flight).");
    println!("The full protocol (claim, no-op handler, done-record) on each; done-records/s and");
    println!("each message's latency, p50 / p99 / p999 µs.\n");
    let subjects =
        [Subject::Logged(Engine::Redb), Subject::NativeRedb, Subject::Logged(Engine::Fjall), Subject::NativeFjall];
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 });
    println!("| concurrency | store | done-records/s | per commit | latency p50 / p99 / p999 (µs) |");
    println!("|---:|---|---:|---:|---:|");
    for &c in &args.concurrency {
        let mut rates = vec![Vec::new(); subjects.len()];
        let mut commits = vec![Vec::new(); subjects.len()];
        let mut latency: Vec<_> = subjects.iter().map(|_| histogram()).collect();
        for _ in 0..reps {
            for (i, s) in subjects.iter().enumerate() {
                let dir = tempfile::tempdir_in(&args.dir)?;
                let p = Processor::builder("bench", noop()).shared_store(s.open(&dir.path().join("s"))?).build()?;
                let (took, h) = process_all_timed(&p, 0..n, c).await;
                commits[i].push((n / p.store().stats().commits.max(1)) as f64);
                latency[i].add(h)?;
                drop(p);
                rates[i].push(rate(n, took));
            }
        }
        for (i, s) in subjects.iter().enumerate() {
            println!(
                "| {c} | {} | {} | {:.0} | {} |",
                s.name(),
                spread(&mut rates[i]),
                median(&mut commits[i]),
                percentiles(&latency[i])
            );
        }
    }
    println!("\nEach rate: median of {reps} runs of {n} records, the stores interleaved, with the range.");
    Ok(())
}
