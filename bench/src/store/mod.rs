//! The store and the protocol without a broker: group commit against one flush per
//! record, the protocol's overhead per message, duplicate lookups in a large store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exactly::{Context, MemoryStore, Message, Outcome, Processor, SledStore, handler_fn};

use crate::report::rate;
use crate::report::{histogram, machine, median, percentiles, record, spread};

mod handler_sql;
mod load;
mod lookup;
mod native;
mod outbox;
mod postgres;
mod sweeper;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// A short run (CI): fewer records, a smaller store.
    #[arg(long)]
    quick: bool,
    /// Where stores are created (must be on the disk under test, not tmpfs).
    #[arg(long, default_value = "target/bench-tmp")]
    dir: PathBuf,
    /// Store sizes (done keys) at which duplicate lookups are measured, the store growing
    /// from one to the next (default 10k,100k,1M; quick: 10k,50k).
    #[arg(long, value_delimiter = ',')]
    keys: Vec<u64>,
    /// In the lookup section, ask every key once after the reopen before measuring (a
    /// warm cache; without it, the first reads of each page after the reopen are measured).
    #[arg(long)]
    warm: bool,
    /// Write-ahead-log segment size in the load section, MiB (the stores' default is 16;
    /// each full segment ends with a checkpoint of the engine).
    #[arg(long, default_value_t = 16)]
    segment_mb: u64,
    /// Messages per second offered in the load section (default: half the sled store's
    /// measured throughput). A fixed rate compares builds whose throughput differs.
    #[arg(long)]
    rate: Option<f64>,
    /// Keys per `purge_expired` call in the sweeper section (default: the sweeper's).
    #[arg(long)]
    budget: Option<usize>,
    /// Messages per second offered in the sweeper section before and during each purge
    /// (0: the purge alone).
    #[arg(long, default_value_t = 5_000.0)]
    sweeper_rate: f64,
    /// The engine's cache in the lookup section, MiB (the stores' default is 256).
    #[arg(long, default_value_t = 256)]
    cache_mb: u64,
    /// The on-disk store of the lookup section: sled (the default store), redb or fjall.
    #[arg(long, value_enum, default_value_t = Engine::Sled)]
    lookup_engine: Engine,
    /// The durable stores' `filter_keys` in the lookup and load sections (0: no filter of
    /// done keys, every lookup reads the engine).
    #[arg(long, default_value_t = exactly::store::DEFAULT_FILTER_KEYS)]
    filter_keys: u64,
    /// Write the lookup-latency-vs-store-size plot (SVG) to this file, and the group-commit
    /// throughput plot to `group-commit.svg` beside it.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Run only these sections (default: all).
    #[arg(long, value_enum)]
    only: Vec<Section>,
    /// Concurrencies of the group-commit section.
    #[arg(long, value_delimiter = ',', default_values_t = [8u64, 16, 32, 64, 256])]
    concurrency: Vec<u64>,
    /// Skip the naive flush-per-record comparison.
    #[arg(long)]
    no_naive: bool,
    /// Repetitions of each group-commit measurement (engines interleaved); the median is
    /// reported with the range.
    #[arg(long)]
    reps: Option<usize>,
    /// On-disk engines of the group-commit section.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Engine::Sled, Engine::Redb, Engine::Fjall])]
    engine: Vec<Engine>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub(crate) enum Engine {
    /// SledStore, the default.
    Sled,
    /// RedbStore.
    Redb,
    /// FjallStore.
    Fjall,
}

impl Engine {
    fn open(self, path: &Path) -> anyhow::Result<Arc<dyn exactly::DedupStore>> {
        Ok(match self {
            Engine::Sled => Arc::new(SledStore::open(path)?),
            Engine::Redb => Arc::new(exactly::store::RedbStore::open(path)?),
            Engine::Fjall => Arc::new(exactly::store::FjallStore::open(path)?),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Section {
    /// Group commit against flush per record.
    Group,
    /// Protocol overhead on the memory store.
    Overhead,
    /// Duplicate lookups in a large store.
    Lookup,
    /// Latency at half the durable store's throughput, against the memory store.
    Load,
    /// The expiry sweeper's cost as the store grows.
    Sweeper,
    /// redb and fjall behind the write-ahead log against their own durable commits (not in
    /// the default run).
    Native,
    /// The shared PostgreSQL store on one and three instances, against a per-message
    /// INSERT (not in the default run: needs $EXACTLY_POSTGRES_URL).
    Postgres,
}

fn noop() -> impl exactly::Handler<Output = ()> {
    handler_fn(|_m: Message, _c: Context| async { Ok(()) })
}

/// A 256-byte payload and key `k<12 digits>`, built without formatting machinery so the
/// harness costs little next to what it measures.
fn msg(key: u64) -> Message {
    let mut digits = [b'0'; 12];
    let mut k = key;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (k % 10) as u8;
        k /= 10;
    }
    let mut payload = vec![b'.'; 256];
    payload[..12].copy_from_slice(&digits);
    let mut id = String::with_capacity(13);
    id.push('k');
    id.push_str(std::str::from_utf8(&digits).unwrap_or("0"));
    Message::builder(payload).header("idempotency-key", id).build()
}

/// Runs `keys` through `p` with `concurrency` tasks; how long it took.
async fn process_all(p: &Processor, keys: std::ops::Range<u64>, concurrency: u64) -> Duration {
    process_all_timed(p, keys, concurrency).await.0
}

/// As [`process_all`], with each message's latency (from the call of `process` until it
/// returned, its done-record durable).
async fn process_all_timed(
    p: &Processor,
    keys: std::ops::Range<u64>,
    concurrency: u64,
) -> (Duration, hdrhistogram::Histogram<u64>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let p = p.clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut k = keys.start + t;
            while k < keys.end {
                let m = msg(k);
                let at = Instant::now();
                let out = p.process(m).await.expect("store failure");
                record(&mut h, at.elapsed());
                assert!(matches!(out.outcome, Outcome::Handled | Outcome::Duplicate), "{out:?}");
                k += concurrency;
            }
            h
        }));
    }
    let mut all = histogram();
    for t in tasks {
        all.add(t.await.expect("task")).expect("histograms of the same bounds");
    }
    (started.elapsed(), all)
}

/// What a team without a framework writes: insert the key, flush, then ack.
async fn naive(path: &Path, n: u64, concurrency: u64, fsync: bool) -> anyhow::Result<Duration> {
    let db = sled::Config::new().path(path).flush_every_ms(None).open()?;
    let log = std::fs::File::open(path.join("db"))?;
    let log = Arc::new(log);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (db, log) = (db.clone(), log.clone());
        tasks.push(tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut k = t;
            while k < n {
                db.insert(format!("k{k:012}"), b"done".as_slice())?;
                db.flush()?;
                if fsync {
                    log.sync_data()?;
                }
                k += concurrency;
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let on = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let n: u64 = if args.quick { 10_000 } else { 100_000 };
    let naive_n: u64 = if args.quick { 1_000 } else { 5_000 };
    println!("## Store and protocol ({}), {}\n", if args.quick { "quick" } else { "full" }, machine());
    if on(Section::Group) {
        group(&args, n, naive_n).await?;
    }
    if on(Section::Overhead) {
        overhead(n).await?;
    }
    if on(Section::Lookup) {
        lookup::run(&args).await?;
    }
    if on(Section::Sweeper) {
        sweeper::run(&args).await?;
    }
    if on(Section::Load) {
        load::run(&args).await?;
    }
    if args.only.contains(&Section::Native) {
        native::run(&args, n).await?;
    }
    if args.only.contains(&Section::Postgres) {
        postgres::run(&args, n).await?;
    }
    Ok(())
}

async fn group(args: &Args, n: u64, naive_n: u64) -> anyhow::Result<()> {
    println!("Durable done-records per second: the full protocol (claim, no-op handler, done-record,");
    println!("group commit with fdatasync of the write-ahead log) on each on-disk engine, next to");
    println!("one sled insert + flush per record (what a team without a framework writes; sled's");
    println!("flush does not fsync) and the same followed by an fdatasync, at the same concurrency.\n");
    let engines: Vec<Engine> = args.engine.clone();
    let mut header = String::from("| concurrency |");
    let mut rule = String::from("|---:|");
    for e in &engines {
        header.push_str(&format!(" exactly, {e:?} |"));
        rule.push_str("---:|");
    }
    if !args.no_naive {
        header.push_str(" naive insert+flush | naive +fsync | exactly (sled) / naive+fsync |");
        rule.push_str("---:|---:|---:|");
    }
    println!("{header}\n{rule}");
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 });
    let mut curves: Vec<(String, Vec<(u64, f64)>)> =
        engines.iter().map(|e| (format!("exactly, {e:?}"), Vec::new())).collect();
    if !args.no_naive {
        curves.push(("naive insert+flush+fsync".into(), Vec::new()));
    }
    for &c in &args.concurrency {
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); engines.len()];
        let mut per_commit: Vec<Vec<u64>> = vec![Vec::new(); engines.len()];
        let (mut plain, mut synced) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            for (i, &e) in engines.iter().enumerate() {
                let dir = tempfile::tempdir_in(&args.dir)?;
                let p = Processor::builder("bench", noop()).shared_store(e.open(&dir.path().join("s"))?).build()?;
                let took = process_all(&p, 0..n, c).await;
                per_commit[i].push(n / p.store().stats().commits.max(1));
                drop(p);
                rates[i].push(rate(n, took));
            }
            if !args.no_naive {
                let naive_dir = tempfile::tempdir_in(&args.dir)?;
                plain.push(rate(naive_n, naive(&naive_dir.path().join("a"), naive_n, c, false).await?));
                synced.push(rate(naive_n, naive(&naive_dir.path().join("b"), naive_n, c, true).await?));
            }
        }
        for i in 0..engines.len() {
            curves[i].1.push((c, median(&mut rates[i])));
        }
        if !args.no_naive {
            let last = curves.len() - 1;
            curves[last].1.push((c, median(&mut synced)));
        }
        let mut row = format!("| {c} |");
        for i in 0..engines.len() {
            row.push_str(&format!(" {} ({} per commit) |", spread(&mut rates[i]), median_u64(&mut per_commit[i])));
        }
        if !args.no_naive {
            let sled =
                engines.iter().position(|e| *e == Engine::Sled).map(|i| median(&mut rates[i])).unwrap_or(f64::NAN);
            let ratio = sled / median(&mut synced);
            row.push_str(&format!(" {} | {} | {ratio:.1}x |", spread(&mut plain), spread(&mut synced)));
        }
        println!("{row}");
    }
    println!("\nEach cell: median of {reps} runs of {n} records (naive: {naive_n}), with the range.");
    if let Some(dir) = args.plot.as_ref().and_then(|p| p.parent()) {
        let out = dir.join("group-commit.svg");
        crate::plot::throughput_vs_concurrency(&out, "Durable done-records/s vs records in flight", &curves)?;
        println!("\nplot: {}", out.display());
    }
    if !args.no_naive {
        // The usual hand-written consumer: one message at a time, insert, flush, ack.
        let (mut plain, mut synced) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            let dir = tempfile::tempdir_in(&args.dir)?;
            plain.push(rate(naive_n / 2, naive(&dir.path().join("a"), naive_n / 2, 1, false).await?));
            synced.push(rate(naive_n / 2, naive(&dir.path().join("b"), naive_n / 2, 1, true).await?));
        }
        println!(
            "\nThe naive loop one message at a time (concurrency 1): insert+flush {}, insert+flush+fsync {}.",
            spread(&mut plain),
            spread(&mut synced)
        );
    }
    Ok(())
}

fn median_u64(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

async fn overhead(n: u64) -> anyhow::Result<()> {
    println!("\nProtocol overhead per message on the in-memory store (sequential `process`, no-op");
    println!("handler), next to awaiting the handler alone. Latency p50 / p99 / p999 in µs.\n");
    let p = Processor::builder("bench", noop()).store(MemoryStore::new()).no_breaker().build()?;
    let mut h = histogram();
    let warm = n / 10;
    for k in 0..n + warm {
        let m = msg(k);
        let t = Instant::now();
        let out = p.process(m).await?;
        if k >= warm {
            record(&mut h, t.elapsed());
        }
        debug_assert_eq!(out.outcome, Outcome::Handled);
    }
    let handler = noop();
    let mut bare = histogram();
    for k in 0..n {
        let m = msg(k);
        let ctx = Context::for_test("bench", "k");
        let t = Instant::now();
        exactly::Handler::handle(&handler, m, ctx).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        record(&mut bare, t.elapsed());
    }
    println!("| path | p50 / p99 / p999 (µs) |\n|---|---:|");
    println!("| `Processor::process`, memory store | {} |", percentiles(&h));
    println!("| the handler alone | {} |", percentiles(&bare));
    Ok(())
}

/// Store sizes for the lookup and sweeper sections.
fn sizes(args: &Args) -> Vec<u64> {
    let mut sizes = args.keys.clone();
    if sizes.is_empty() {
        sizes = if args.quick { vec![10_000, 50_000] } else { vec![10_000, 100_000, 1_000_000] };
    }
    sizes.sort_unstable();
    sizes
}
