//! The reliability harness: a ledger consumer under seeded faults, then a verdict.
//!
//! ```sh
//! eval "$(scripts/services.sh up)"     # RabbitMQ, and tansu for --broker kafka
//! cargo build --release -p exactly-tests --bins
//! target/release/chaos --broker amqp --messages 100000 --kills 20 --stops 3 --cuts 3 --seed 7
//! target/release/chaos --broker kafka --messages 100000 --kills 20 --consumers 2 --seed 7
//! target/release/chaos --broker kafka --kafka mock --messages 100000 --kills 20 --cuts 5 --seed 7
//! target/release/chaos --broker amqp --engine postgres --consumers 3 --db-faults 4 --seed 7
//! ```
//!
//! It publishes `--messages` ledger credits (a `--duplicates` share of them are copies of
//! earlier keys, half of everything is sent while the consumer runs, so duplicates also
//! arrive after the first copy was handled; a `--poison` share of keys do not decode),
//! runs `app_child` (the app runner with the ledger handler on a sled store, or
//! `--engine`'s, appending each key to an effects log) as `--consumers` processes (each
//! with its own store, or all on one PostgreSQL store with `--engine postgres`), and
//! meanwhile injects faults at random moments drawn from `--seed`: SIGKILL (then a
//! restart; a kill waits until the process has handled a message since it started, so it
//! lands mid-stream), SIGSTOP for a few seconds then SIGCONT, connection cuts (RabbitMQ
//! `rabbitmqctl close_all_connections`; a broker of the Kafka mock cluster down for a few
//! seconds), disk full, a read-only store, dependency outages and, on PostgreSQL, the
//! consumers' database sessions terminated or the server restarted.
//! When the fault budget is spent it lets the consumers finish, stops them with SIGTERM
//! and checks: every good key credited exactly once in the transactional state, every
//! poison key in the dead-letter destination with reason `decode`, nothing left unacked
//! or uncommitted; external effects repeated only for keys a kill interrupted. It prints
//! one row of the table in docs/RELIABILITY.md and exits 1 if the verdict fails.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use exactly_tests::payload;
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

mod broker;
mod consumer;
mod database;
mod disk;
mod verdict;

use broker::Broker;
use consumer::Consumer;
use exactly::kafka::rdkafka::mocking::MockCluster;

/// Brokers of the Kafka mock cluster (`--kafka mock`).
const MOCK_BROKERS: i32 = 3;
/// Keys still to handle for an outage to be worth starting (see the "outage" fault).
const OUTAGE_NEEDS_LEFT: usize = 100;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Kind {
    Amqp,
    Kafka,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    broker: Kind,
    /// Messages sent, duplicates and poison included.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Share of messages that are copies of an earlier key.
    #[arg(long, default_value_t = 0.1)]
    duplicates: f64,
    /// Share of keys whose payload does not decode.
    #[arg(long, default_value_t = 0.01)]
    poison: f64,
    /// SIGKILLs (each followed by a restart).
    #[arg(long, default_value_t = 5)]
    kills: u32,
    /// SIGSTOPs (each followed by a SIGCONT a few seconds later).
    #[arg(long, default_value_t = 1)]
    stops: u32,
    /// Broker connection cuts: RabbitMQ `rabbitmqctl close_all_connections`; on the
    /// Kafka mock cluster one of its brokers down (connections dropped, new ones
    /// refused) for 1-5 s. Not done on an external Kafka broker.
    #[arg(long, default_value_t = 1)]
    cuts: u32,
    /// Dependency outages: for a few seconds every message fails with a transient error
    /// (the handler's database is "unreachable"); the breaker must pause, not dead-letter.
    #[arg(long, default_value_t = 0)]
    outages: u32,
    /// Disk faults: the store's filesystem (a tmpfs per consumer, so this needs root)
    /// filled up, or made read-only, for a few seconds.
    #[arg(long, default_value_t = 0)]
    disk_faults: u32,
    /// Size of each consumer's store tmpfs, in MiB, with --disk-faults.
    #[arg(long, default_value_t = 1024)]
    tmpfs_mb: u64,
    /// The consumers' store engine: sled (the default), redb or fjall, each consumer with
    /// its own; or postgres, one store shared by all (in $EXACTLY_POSTGRES_URL's database).
    #[arg(long, default_value = "sled", value_parser = ["sled", "redb", "fjall", "postgres"])]
    engine: String,
    /// Database faults (`--engine postgres`): alternately every session of the consumers
    /// terminated (`pg_terminate_backend`) and the server restarted (`pg_ctlcluster`).
    #[arg(long, default_value_t = 0)]
    db_faults: u32,
    /// Consumer processes.
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// Seed of every random choice: the same seed gives the same fault schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Mean time between faults, in milliseconds.
    #[arg(long, default_value_t = 700)]
    fault_every_ms: u64,
    /// Kafka bootstrap servers (default: $EXACTLY_KAFKA_BROKER), or `mock`: librdkafka's
    /// mock cluster (3 brokers) run inside this process, which the consumer processes
    /// reach over TCP like any broker.
    #[arg(long)]
    kafka: Option<String>,
    /// Where the stores and logs go (default: a new temporary directory, removed after
    /// a passing run).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// What happened, for the report.
#[derive(Default, Debug)]
pub(crate) struct Faults {
    kills: u32,
    /// Kills that fell after the process had handled a message since its last start.
    kills_working: u32,
    stops: u32,
    cuts: u32,
    disk_full: u32,
    read_only: u32,
    outages: u32,
    db_faults: u32,
    exits: u32,
}

fn is_poison(seed: u64, key: u64, share: f64) -> bool {
    let mut r = StdRng::seed_from_u64(seed ^ key.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    r.random_bool(share.clamp(0.0, 1.0))
}

/// The keys of the messages to send, in order: every key once, and copies of earlier ones.
fn plan(args: &Args, rng: &mut StdRng) -> (Vec<u64>, u64) {
    let unique = ((args.messages as f64) / (1.0 + args.duplicates)).round().max(1.0) as u64;
    // Key k goes at position k; a copy at a random later position, after its original.
    let mut placed: Vec<(f64, u64)> = (0..unique).map(|k| (k as f64, k)).collect();
    for _ in 0..args.messages.saturating_sub(unique) {
        let at = rng.random_range(0.0..unique as f64);
        let of = rng.random_range(0..=at as u64);
        placed.push((at + 0.5, of));
    }
    placed.sort_by(|a, b| a.0.total_cmp(&b.0));
    (placed.into_iter().map(|(_, k)| k).collect(), unique)
}

fn app_path() -> anyhow::Result<PathBuf> {
    let app = std::env::current_exe()?.with_file_name("app_child");
    if !app.exists() {
        bail!("{} is missing: cargo build -p exactly-tests --bins", app.display());
    }
    Ok(app)
}

/// Waits for `/readyz` to answer 200.
async fn wait_ready(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !matches!(exactly_tests::http_get(port, "/readyz").await, Some((200, _))) {
        if Instant::now() > deadline {
            bail!("the consumer on port {port} was not ready within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app = app_path()?;
    let tmp = tempfile::tempdir()?;
    let root = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&root)?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let name = format!("chaos-{}-{}", args.seed, std::process::id());
    let kafka = args.kafka.clone().or_else(|| std::env::var("EXACTLY_KAFKA_BROKER").ok());
    let mock = match (args.broker, kafka.as_deref()) {
        (Kind::Kafka, Some("mock")) => Some(MockCluster::new(MOCK_BROKERS)?),
        _ => None,
    };
    let broker = match (args.broker, &mock) {
        (Kind::Amqp, _) => Broker::amqp(&name).await?,
        (Kind::Kafka, Some(mock)) => Broker::kafka_mock(mock, &name)?,
        (Kind::Kafka, None) => {
            Broker::kafka(kafka.as_deref().context("--kafka or EXACTLY_KAFKA_BROKER")?, &name).await?
        }
    };

    let db = match args.engine.as_str() {
        "postgres" => Some(database::Database::new(&name).await?),
        _ if args.db_faults > 0 => bail!("--db-faults needs --engine postgres"),
        _ => None,
    };

    let (keys, unique) = plan(&args, &mut rng);
    let poison: HashSet<u64> = (0..unique).filter(|k| is_poison(args.seed, *k, args.poison)).collect();
    let good: Vec<u64> = (0..unique).filter(|k| !poison.contains(k)).collect();
    let started = Instant::now();

    let mut consumers = Vec::new();
    for i in 0..args.consumers {
        let dir = root.join(format!("consumer-{i}"));
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let config = dir.join("app.toml");
        let sub = broker.subscription(&name);
        let disk = match args.disk_faults {
            0 => None,
            _ => Some(disk::Tmpfs::mount(&dir.join("store-fs"), args.tmpfs_mb)?),
        };
        let ledger_sql = db.as_ref().map(|db| db.schema().to_owned());
        let mut c = Consumer {
            dir,
            outage: root.join("outage"),
            disk,
            port,
            child: None,
            config,
            progress_at_start: 0,
            ledger_sql,
        };
        let store = match &db {
            Some(db) => db.store_toml(),
            None => format!("engine = \"{}\"\npath = \"{}\"\n", args.engine, c.store().display()),
        };
        std::fs::write(
            &c.config,
            format!(
                "shutdown_timeout = \"20s\"\n[store]\n{store}[http]\nlisten = \"127.0.0.1:{port}\"\n[log]\nfilter = \"error\"\n{sub}"
            ),
        )?;
        c.start(&app)?;
        consumers.push(c);
    }
    // Ready (the queue declared, the group joined), then the first half of the messages,
    // and the rest while the faults run.
    for c in &consumers {
        wait_ready(c.port).await?;
    }
    let half = keys.len() / 2;
    let msgs = |ks: &[u64]| ks.iter().map(|k| (format!("k{k}"), payload(*k, poison.contains(k)))).collect::<Vec<_>>();
    broker.publish(msgs(&keys[..half])).await?;
    let rest = msgs(&keys[half..]);
    let late = {
        let b = broker.clone();
        tokio::spawn(async move { b.publish(rest).await })
    };
    let effects = verdict::effects;
    // The good keys without an effect in `seen`.
    let unseen = |seen: &HashMap<String, u64>| -> Vec<u64> {
        good.iter().copied().filter(|k| !seen.contains_key(&format!("k{k}"))).collect()
    };

    // Faults, at random moments, until the budget is spent.
    let mut faults = Faults::default();
    let mut todo: Vec<&str> = std::iter::repeat_n("kill", args.kills as usize)
        .chain(std::iter::repeat_n("stop", args.stops as usize))
        .chain(std::iter::repeat_n(
            "cut",
            if args.broker == Kind::Amqp || mock.is_some() { args.cuts as usize } else { 0 },
        ))
        .chain((0..args.disk_faults).map(|i| if i % 2 == 0 { "full" } else { "read-only" }))
        .chain(std::iter::repeat_n("outage", args.outages as usize))
        .chain((0..args.db_faults).map(|i| if i % 2 == 0 { "db-sessions" } else { "db-restart" }))
        .collect();
    while !todo.is_empty() {
        let wait = rng.random_range(args.fault_every_ms / 4..=args.fault_every_ms * 7 / 4);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        for c in &mut consumers {
            faults.exits += u32::from(c.revive(&app)?);
        }
        let fault = todo.swap_remove(rng.random_range(0..todo.len()));
        let victim = rng.random_range(0..consumers.len());
        let c = &mut consumers[victim];
        match fault {
            "kill" => {
                if c.working(Duration::from_secs(30)).await {
                    faults.kills_working += 1;
                    // Somewhere in what it is doing, not right at the first effect.
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..args.fault_every_ms))).await;
                }
                c.signal(Signal::SIGKILL);
                if let Some(mut child) = c.child.take() {
                    child.wait()?;
                }
                c.start(&app)?;
                faults.kills += 1;
            }
            "stop" => {
                // Long enough for a Kafka session (6 s) to expire and the group to move
                // the partitions, for a RabbitMQ consumer to sit on unacked messages.
                let pause = Duration::from_millis(rng.random_range(2_000..9_000));
                c.signal(Signal::SIGSTOP);
                tokio::time::sleep(pause).await;
                c.signal(Signal::SIGCONT);
                faults.stops += 1;
            }
            "full" => {
                let Some(d) = c.disk.take() else { continue };
                d.fill()?;
                faults.disk_full += 1;
                // The consumer fails its next store write and stops with an error (nothing
                // it acknowledged depends on the write that failed); give it time to.
                let until = Instant::now() + Duration::from_millis(rng.random_range(2_000..6_000));
                while Instant::now() < until && !c.exited()? {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                d.restore()?;
                c.disk = Some(d);
                faults.exits += u32::from(c.revive(&app)?);
            }
            "outage" => {
                let outage = c.outage.clone();
                // The breaker tells an outage from a poison message by failures of
                // different keys in a row; with a few keys left there are none to fail, and
                // those keys use up their retries into the dead-letter topic (documented,
                // but not what this fault tests). Only with load left, then.
                let left = unseen(&effects(&consumers)).len();
                if left < OUTAGE_NEEDS_LEFT {
                    eprintln!("chaos: outage skipped: {left} keys left, fewer than {OUTAGE_NEEDS_LEFT}");
                    continue;
                }
                let pause = Duration::from_millis(rng.random_range(3_000..10_000));
                std::fs::write(&outage, b"down")?;
                // Counted once the dependency is down: reading the logs takes a while, and
                // what the consumer handles meanwhile must not count as "during".
                let before = effects(&consumers).len();
                tokio::time::sleep(pause).await;
                let during = effects(&consumers).len() - before;
                std::fs::remove_file(&outage)?;
                eprintln!("chaos: dependency down for {pause:.1?}: {during} keys handled meanwhile (before: {before})");
                faults.outages += 1;
            }
            "read-only" => {
                // A filesystem with files open for writing cannot be remounted read-only:
                // stop the consumer, make the store read-only, start it again (it must
                // refuse to start, with an error), then make it writable and start again.
                let Some(d) = c.disk.take() else { continue };
                c.stop()?;
                d.read_only()?;
                c.start(&app)?;
                let until = Instant::now() + Duration::from_secs(20);
                while Instant::now() < until && !c.exited()? {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if !c.exited()? {
                    bail!("the consumer kept running on a read-only store for 20 s");
                }
                faults.read_only += 1;
                d.restore()?;
                c.disk = Some(d);
                faults.exits += u32::from(c.revive(&app)?);
            }
            "db-sessions" | "db-restart" => {
                let Some(db) = &db else { continue };
                if fault == "db-sessions" {
                    let n = db.terminate_sessions().await?;
                    eprintln!("chaos: terminated the consumers' {n} database sessions");
                } else {
                    let away = db.restart_server().await?;
                    eprintln!("chaos: PostgreSQL restarted, back after {away:.1?}");
                }
                faults.db_faults += 1;
            }
            "cut" if mock.is_some() => {
                let Some(mock) = &mock else { continue };
                let id = rng.random_range(1..=MOCK_BROKERS);
                let down = Duration::from_millis(rng.random_range(1_000..5_000));
                mock.broker_down(id)?;
                tokio::time::sleep(down).await;
                mock.broker_up(id)?;
                eprintln!("chaos: Kafka broker {id} was down for {down:.1?}");
                faults.cuts += 1;
            }
            _ => {
                let out = Command::new("rabbitmqctl").args(["-q", "close_all_connections", "chaos"]).output()?;
                if !out.status.success() {
                    eprintln!("chaos: rabbitmqctl failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                faults.cuts += 1;
            }
        }
    }
    late.await??;
    eprintln!("chaos: faults done after {:.0?} ({faults:?}); letting the consumers finish", started.elapsed());

    // Let them finish: every good key's effect, then nothing left on the broker.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut report = Instant::now() + Duration::from_secs(20);
    // The number of keys without an effect, and since when.
    let mut progress = (usize::MAX, Instant::now());
    // Since when every key has an effect and nothing is ready on the broker.
    let mut uncommitted_since: Option<Instant> = None;
    loop {
        for c in &mut consumers {
            faults.exits += u32::from(c.revive(&app)?);
        }
        let seen = effects(&consumers);
        let missing = unseen(&seen);
        // Asked of the broker (and the shared store) only when it decides something: each
        // asking opens a client.
        if missing.is_empty() && broker.leftover().await? == 0 {
            // Up to a minute for the last commits; then the verdict says what is missing.
            let since = *uncommitted_since.get_or_insert_with(Instant::now);
            match &db {
                Some(db) if db.done_keys().await? < good.len() && since.elapsed() < Duration::from_secs(60) => {}
                _ => break,
            }
        }
        if Instant::now() > deadline {
            bail!("the consumers did not finish within 10 minutes: {} of {} keys", seen.len(), good.len());
        }
        if missing.len() != progress.0 {
            progress = (missing.len(), Instant::now());
        } else if !missing.is_empty() && progress.1.elapsed() > Duration::from_secs(60) {
            if broker.leftover().await? == 0 {
                // Nothing is left to consume, so these keys will not get an effect: say
                // where they went rather than wait out the deadline.
                let dead: HashMap<String, String> = broker.dead_letters().await?.into_iter().collect();
                let (dlq, nowhere): (Vec<_>, Vec<_>) =
                    missing.iter().map(|k| format!("k{k}")).partition(|k| dead.contains_key(k));
                let dlq: Vec<_> = dlq.iter().map(|k| format!("{k} ({})", dead[k])).collect();
                bail!(
                    "{} keys without an effect and none handled for 60 s, nothing left on the broker: dead-lettered {dlq:?}, not dead-lettered {nowhere:?}",
                    missing.len()
                );
            }
            progress.1 = Instant::now();
        }
        if Instant::now() > report {
            // Said while waiting, so a run stopped from outside (a test's timeout) shows
            // where it stood.
            let first: Vec<_> = missing.iter().take(5).collect();
            eprintln!(
                "chaos: still waiting after {:.0?}: {} of {} keys without an effect (first {first:?}), {} left on the broker",
                started.elapsed(),
                missing.len(),
                good.len(),
                broker.leftover().await?,
            );
            report = Instant::now() + Duration::from_secs(20);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for c in &mut consumers {
        c.stop()?;
    }
    let elapsed = started.elapsed();

    let run = verdict::Run {
        args: &args,
        consumers: &consumers,
        db: db.as_ref(),
        broker: &broker,
        good: &good,
        poison: &poison,
        sent: keys.len() as u64,
        unique,
        faults: &faults,
        elapsed,
    };
    let failures = verdict::judge(&run).await?;
    if failures.is_empty() {
        broker.cleanup().await;
        if let Some(db) = &db {
            db.cleanup().await;
        }
        eprintln!("chaos: PASS (seed {})", args.seed);
        Ok(())
    } else {
        let _ = tmp.keep();
        for f in &failures {
            eprintln!("chaos: FAIL: {f}");
        }
        eprintln!(
            "chaos: replay with --seed {}; logs and stores kept in {}, the queues or topics {name}*",
            args.seed,
            root.display()
        );
        std::process::exit(1);
    }
}
