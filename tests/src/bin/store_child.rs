//! A consumer process for the store fault tests (`tests/tests/store_faults.rs`): it
//! credits a ledger on an on-disk store, appends every acknowledged key to `acked.log`,
//! and then exits cleanly or dies without closing the store (`--abort`, as a crash or a
//! power cut leaves it: the write-ahead log not checkpointed).
//!
//! `copies` runs one message and a copy of it at the same time, then the message again,
//! printing each outcome: run under strace with fdatasync failing, no copy may be
//! acknowledged.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use exactly::{Disposition, Message, Processor};
use exactly_tests::{Credit, LEDGER, ledger};

#[derive(Parser)]
struct Args {
    /// sled, redb or fjall.
    #[arg(long, default_value = "sled")]
    engine: String,
    #[arg(long)]
    dir: PathBuf,
    /// Bytes of a write-ahead log segment.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    segment_size: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Credits keys `k<from>..k<from + keys>`, account `i % accounts`, one cent each.
    Credit {
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long)]
        keys: u64,
        #[arg(long, default_value_t = 10)]
        accounts: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Die without closing the store once every key is acknowledged.
        #[arg(long)]
        abort: bool,
    },
    /// Key `warm`, then key `k` and a copy of it at once, then `k` again.
    Copies,
}

fn credit(key: &str, account: u64) -> Message {
    let c = Credit { id: key.to_owned(), account, cents: 1 };
    Message::builder(serde_json::to_vec(&c).unwrap_or_default()).header("idempotency-key", key).build()
}

/// The store at `dir/store`, with the log's segment size.
fn open(args: &Args) -> exactly::Result<Arc<dyn exactly::DedupStore>> {
    let path = args.dir.join("store");
    let size = args.segment_size;
    Ok(match args.engine.as_str() {
        "redb" => Arc::new(exactly::store::RedbStore::builder(&path).wal_segment_size(size).open()?),
        "fjall" => Arc::new(exactly::store::FjallStore::builder(&path).wal_segment_size(size).open()?),
        _ => Arc::new(exactly::SledStore::builder(&path).wal_segment_size(size).open()?),
    })
}

fn append(path: &Path, line: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(format!("{line}\n").as_bytes())?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let effects = std::fs::OpenOptions::new().create(true).append(true).open(args.dir.join("effects.log"))?;
    let store = open(&args).context("opening the store")?;
    let processor =
        Processor::builder(LEDGER, ledger(Arc::new(Mutex::new(effects)))).shared_store(store).no_breaker().build()?;
    match &args.command {
        Command::Credit { from, keys, accounts, concurrency, abort } => {
            let acked = Arc::new(Mutex::new(()));
            let sem = Arc::new(tokio::sync::Semaphore::new(*concurrency));
            let mut tasks = tokio::task::JoinSet::new();
            for i in *from..from + keys {
                let permit = sem.clone().acquire_owned().await?;
                let (p, acked, log) = (processor.clone(), acked.clone(), args.dir.join("acked.log"));
                let accounts = *accounts;
                tasks.spawn(async move {
                    let key = format!("k{i}");
                    let out = p.process(credit(&key, i % accounts)).await?;
                    anyhow::ensure!(out.disposition == Disposition::Ack, "{key}: {:?}", out.disposition);
                    let _guard = acked.lock().map_err(|_| anyhow::anyhow!("lock"))?;
                    append(&log, &key)?;
                    drop(permit);
                    Ok(())
                });
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            if *abort {
                // No destructor runs: the store is not checkpointed, as after a crash.
                std::process::abort();
            }
            processor.flush().await?;
        }
        Command::Copies => {
            let out = processor.process(credit("warm", 0)).await?;
            println!("warm {:?}", out.outcome);
            let (a, b) = tokio::join!(processor.process(credit("k", 1)), processor.process(credit("k", 1)));
            for r in [a, b] {
                match r {
                    Ok(p) => println!("copy {:?} {:?}", p.outcome, p.disposition),
                    Err(e) => println!("copy error {e}"),
                }
            }
            match processor.process(credit("k", 1)).await {
                Ok(p) => println!("again {:?} {:?}", p.outcome, p.disposition),
                Err(e) => println!("again error {e}"),
            }
        }
    }
    Ok(())
}
