//! A consumer the crash test kills with SIGKILL and restarts.
//!
//! It reads a deterministic stream of messages (message `i` has key `i % unique`, so
//! later messages duplicate earlier keys; every `poison_every`-th key is undecodable)
//! from a "broker" kept in files: a committed offset (like a Kafka consumer group's),
//! written atomically after the done-records below it are durable. It processes up to
//! `concurrency` messages at once with the ledger handler on a sled store, and
//! dead-letters poison messages to a file. It exits 0 when every message is committed.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use exactly::{Coordinates, Disposition, Message, Processor};
use exactly_tests::{LEDGER, ledger, payload};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    messages: u64,
    #[arg(long)]
    unique: u64,
    #[arg(long, default_value_t = 7)]
    poison_every: u64,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// sled, redb or fjall.
    #[arg(long, default_value = "sled")]
    engine: String,
}

fn read_offset(path: &Path) -> u64 {
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn write_offset(dir: &Path, offset: u64) -> anyhow::Result<()> {
    let tmp = dir.join("offset.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    write!(f, "{offset}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("offset"))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let effects = std::fs::OpenOptions::new().create(true).append(true).open(args.dir.join("effects.log"))?;
    let dlq =
        Arc::new(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(args.dir.join("dlq.log"))?));
    let store = exactly_tests::open_store(&args.engine, &args.dir.join("store")).context("opening the store")?;
    let processor =
        Processor::builder(LEDGER, ledger(Arc::new(Mutex::new(effects)))).shared_store(store).no_breaker().build()?;

    let start = read_offset(&args.dir.join("offset"));
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let mut finished = BTreeSet::new();
    let mut committed = start;
    let mut next = start;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while committed < args.messages {
        tokio::select! {
            permit = sem.clone().acquire_owned(), if next < args.messages => {
                let permit = permit?;
                let i = next;
                next += 1;
                let key = i % args.unique;
                let poison = key % args.poison_every == 3;
                let msg = Message::builder(payload(key, poison))
                    .header("idempotency-key", format!("k{key}"))
                    .coordinates(Coordinates::partitioned("stream", 0, i64::try_from(i)?))
                    .build();
                let (p, tx, dlq) = (processor.clone(), done_tx.clone(), dlq.clone());
                tokio::spawn(async move {
                    loop {
                        let mut out = p.process(msg.clone()).await.expect("store failure");
                        match &out.disposition {
                            Disposition::Ack => break,
                            Disposition::DeadLetter(dl) => {
                                {
                                    let mut f = dlq.lock().expect("dlq lock");
                                    // One write call per line (see the ledger's effects log).
                                    let line = format!("{}\t{}\n", dl.key.clone().unwrap_or_default(), dl.reason);
                                    f.write_all(line.as_bytes()).expect("dlq write");
                                    f.sync_data().expect("dlq fsync");
                                }
                                out.confirm_dead_letter().await.expect("confirm");
                                break;
                            }
                            Disposition::Retry { after } | Disposition::Pause { after } => tokio::time::sleep(*after).await,
                        }
                    }
                    drop(permit);
                    let _ = tx.send(i);
                });
            }
            Some(i) = done_rx.recv() => { finished.insert(i); }
            _ = tick.tick() => {
                let before = committed;
                while finished.remove(&committed) {
                    committed += 1;
                }
                if committed != before {
                    write_offset(&args.dir, committed)?;
                }
            }
        }
    }
    processor.flush().await?;
    Ok(())
}
