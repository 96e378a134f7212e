//! The store and the protocol without a broker: group commit against one flush per
//! record, the protocol's overhead per message, duplicate lookups in a large store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use exactly::{Context, MemoryStore, Message, Outcome, Processor, SledStore, handler_fn};
use rand::Rng;

use crate::report::{fmt_rate, histogram, machine, median, percentiles, rate, record, spread};

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
    /// The engine's cache in the lookup section, MiB (the stores' default is 256).
    #[arg(long, default_value_t = 256)]
    cache_mb: u64,
    /// The on-disk store of the lookup section: sled (the default store), redb or fjall.
    #[arg(long, value_enum, default_value_t = Engine::Sled)]
    lookup_engine: Engine,
    /// The durable stores' `filter_keys` in the lookup and load sections (0: no filter of
    /// done keys, every lookup reads the engine).
    #[arg(long, default_value_t = exactly::store::LogOptions::default().filter_keys)]
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

async fn process_all(p: &Processor, keys: std::ops::Range<u64>, concurrency: u64) -> Duration {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let p = p.clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let mut k = keys.start + t;
            while k < keys.end {
                let out = p.process(msg(k)).await.expect("store failure");
                assert!(matches!(out.outcome, Outcome::Handled | Outcome::Duplicate), "{out:?}");
                k += concurrency;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    started.elapsed()
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
        lookup(&args).await?;
    }
    if on(Section::Sweeper) {
        sweeper(&args).await?;
    }
    if on(Section::Load) {
        load(&args).await?;
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

async fn lookup(args: &Args) -> anyhow::Result<()> {
    let sizes = sizes(args);
    let engine = format!("{:?}", args.lookup_engine).to_lowercase();
    println!("\nDuplicate lookups as a {engine} store grows: `process` of a random existing key, answered");
    println!("from the store without running the handler. The store is filled to each size (64 in");
    println!("flight), reopened, then asked once its filter of done keys is built; sequential latency,");
    println!("then the store's lookup alone of a done key and of a new key, and the rate with 8 tasks.");
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
        "| done keys | filled at | duplicate `process` p50 / p99 / p999 (µs) | store lookup, done key | store lookup, new key | 8 tasks | on disk | open to filter |\n|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let dir = tempfile::tempdir_in(&args.dir)?;
    let path = dir.path().join("s");
    let mut filled = 0u64;
    let mut points = Vec::new();
    let cache = args.cache_mb * 1024 * 1024;
    let open = || -> anyhow::Result<Arc<dyn exactly::DedupStore>> {
        Ok(match args.lookup_engine {
            Engine::Sled => {
                Arc::new(SledStore::builder(&path).cache_capacity(cache).filter_keys(args.filter_keys).open()?)
            }
            Engine::Fjall => Arc::new(
                exactly::store::FjallStore::builder(&path).cache_size(cache).filter_keys(args.filter_keys).open()?,
            ),
            Engine::Redb => Arc::new(
                exactly::store::RedbStore::builder(&path)
                    .cache_size(usize::try_from(cache)?)
                    .filter_keys(args.filter_keys)
                    .open()?,
            ),
        })
    };
    let filtered = args.filter_keys != 0;
    for keys in sizes {
        let p = Processor::builder("bench", noop()).shared_store(open()?).build()?;
        let fill = process_all(&p, filled..keys, 64).await;
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
                let found = p.store().inspect(&key)?;
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
            "| {keys} | {} | {} | {} | {} | {} | {:.0} MiB | {:.2} s |",
            fmt_rate(fill_rate),
            percentiles(&h),
            percentiles(&hit),
            percentiles(&miss),
            fmt_rate(concurrent),
            disk as f64 / (1024.0 * 1024.0),
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

use rand::SeedableRng;

/// Store sizes for the lookup and sweeper sections.
fn sizes(args: &Args) -> Vec<u64> {
    let mut sizes = args.keys.clone();
    if sizes.is_empty() {
        sizes = if args.quick { vec![10_000, 50_000] } else { vec![10_000, 100_000, 1_000_000] };
    }
    sizes.sort_unstable();
    sizes
}

/// What the expiry sweeper costs at each store size: a sled store filled with done keys
/// that all expire, then purged the way [`exactly::Sweeper`] does it (calls of its budget
/// of keys until nothing is left). A call reads on the calling task, so its duration is
/// how long one sweeper step holds a runtime thread.
async fn sweeper(args: &Args) -> anyhow::Result<()> {
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

/// The latency a durable store adds at half of its throughput: messages offered at a
/// steady rate (open loop), each timed from when it was due to when `process` returned
/// (its done-record durable), on the memory, sled, redb and fjall stores.
async fn load(args: &Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir_in(&args.dir)?;
    let secs: u64 = if args.quick { 1 } else { 10 };
    let n_max: u64 = if args.quick { 10_000 } else { 100_000 };
    let ceiling = Processor::builder("bench", noop()).store(SledStore::open(dir.path().join("ceiling"))?).build()?;
    let max = rate(n_max, process_all(&ceiling, 0..n_max, 256).await);
    drop(ceiling);
    let offered = args.rate.unwrap_or(max / 2.0);
    let warm_up = n_max / 5;
    let segment = args.segment_mb * 1024 * 1024;
    match args.rate {
        None => println!("\nLatency at half the durable store's throughput: the sled store's rate with 256 in flight"),
        Some(_) => println!("\nLatency at a fixed rate (--rate): the sled store's rate with 256 in flight"),
    }
    println!(
        "was {}; {} are offered for {secs} s (open loop), each message timed from when it",
        fmt_rate(max),
        fmt_rate(offered)
    );
    println!(
        "was due until `process` returned with its done-record durable. Log segments of {} MiB. Each store first\ntakes {warm_up} messages untimed (256 in flight).\n",
        args.segment_mb
    );
    println!("| store | offered | achieved | p50 / p99 / p999 (µs) |\n|---|---:|---:|---:|");
    let sled = SledStore::builder(dir.path().join("load")).wal_segment_size(segment).filter_keys(args.filter_keys);
    let redb = exactly::store::RedbStore::builder(dir.path().join("load-redb"))
        .wal_segment_size(segment)
        .filter_keys(args.filter_keys);
    let fjall = exactly::store::FjallStore::builder(dir.path().join("load-fjall"))
        .wal_segment_size(segment)
        .filter_keys(args.filter_keys);
    let stores: [(&str, Arc<dyn exactly::DedupStore>); 4] = [
        ("memory", Arc::new(MemoryStore::new())),
        ("sled (durable)", Arc::new(sled.open()?)),
        ("redb (durable)", Arc::new(redb.open()?)),
        ("fjall (durable)", Arc::new(fjall.open()?)),
    ];
    let mut p99s = Vec::new();
    for (name, store) in stores {
        let p = Processor::builder("bench", noop()).shared_store(store).build()?;
        // Untimed, with keys of their own: the first moments of a phase otherwise carry
        // what the process did before it (glibc's malloc consolidating the previous
        // phase's frees stalled a runtime thread for up to 150 ms; docs/performance-log.md).
        process_all(&p, WARM_UP_KEYS..WARM_UP_KEYS + warm_up, 256).await;
        let (h, achieved) = open_loop(&p, offered, secs).await?;
        println!("| {name} | {} | {} | {} |", fmt_rate(offered), fmt_rate(achieved), percentiles(&h));
        p99s.push(h.value_at_quantile(0.99) as f64 / 1000.0);
    }
    println!(
        "\np99 added by the durable store: sled {:.0} µs, redb {:.0} µs, fjall {:.0} µs (the memory store's p99 includes up to\n1 ms of the 1 ms ticks that release the messages).",
        p99s[1] - p99s[0],
        p99s[2] - p99s[0],
        p99s[3] - p99s[0]
    );
    Ok(())
}

/// The first key of the load section's untimed warm-up (the timed keys count from 0).
const WARM_UP_KEYS: u64 = 900_000_000_000;

async fn open_loop(p: &Processor, per_sec: f64, secs: u64) -> anyhow::Result<(hdrhistogram::Histogram<u64>, f64)> {
    let total = (per_sec * secs as f64) as u64;
    let hist = Arc::new(std::sync::Mutex::new(histogram()));
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    while sent < total {
        ticker.tick().await;
        // Finished tasks are reaped as they finish: a JoinSet keeps each one's memory
        // until it is joined, and keeping a run's 800,000 tasks to the end made the bench
        // grow to 2.7 GB while it measured (385 MB reaped; docs/performance-log.md).
        while let Some(r) = tasks.try_join_next() {
            r??;
        }
        let due = ((started.elapsed().as_secs_f64() * per_sec) as u64).min(total);
        while sent < due {
            let (p, h, k) = (p.clone(), hist.clone(), sent);
            let at = started + Duration::from_secs_f64(k as f64 / per_sec);
            tasks.spawn(async move {
                let out = p.process(msg(k)).await?;
                record(&mut h.lock().unwrap_or_else(|e| e.into_inner()), at.elapsed());
                anyhow::ensure!(out.outcome == Outcome::Handled, "expected a new key, got {:?}", out.outcome);
                Ok(())
            });
            sent += 1;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let achieved = rate(total, started.elapsed());
    let h = hist.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((h, achieved))
}
