//! A Kafka consumer process the takeover test kills with SIGKILL: the ledger handler on
//! a sled store, until SIGTERM.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use exactly::Processor;
use exactly::kafka::Consumer;
use exactly_tests::{LEDGER, ledger};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    group: String,
    #[arg(long)]
    dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .try_init();
    let args = Args::parse();
    let effects = std::fs::OpenOptions::new().create(true).append(true).open(args.dir.join("effects.log"))?;
    let store = exactly::SledStore::open(args.dir.join("store")).context("opening the store")?;
    let processor = Processor::builder(LEDGER, ledger(Arc::new(Mutex::new(effects)))).store(store).build()?;
    Consumer::builder(&args.brokers, &args.group)
        .topic(&args.topic)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .commit_interval(Duration::from_millis(100))
        .build(processor)?
        .run_until_signal()
        .await?;
    Ok(())
}
