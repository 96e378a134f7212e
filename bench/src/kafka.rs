//! Kafka: a bare rdkafka StreamConsumer committing offsets against exactly-kafka, on the
//! same broker, the same produced records, in one run.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use exactly::kafka::Consumer;
use exactly::{Context, DedupStore, MemoryStore, Message, Processor, SledStore, handler_fn};
use exactly_kafka::testing::MockKafka;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use crate::amqp::postgres_url;
use crate::latency;
use crate::naive::Dedup;
use crate::report::{Run, cpu_time, machine, median, rate, wait_for};

/// A run without progress for this long has lost records: it fails instead of hanging.
const STALL: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub(crate) struct Args {
    /// A short run (CI).
    #[arg(long)]
    quick: bool,
    /// The on-disk stores' `filter_keys` (0: no filter of done keys).
    #[arg(long, default_value_t = exactly::store::DEFAULT_FILTER_KEYS)]
    filter_keys: u64,
    /// Records per run.
    #[arg(long)]
    records: Option<u64>,
    /// Payload size.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Repetitions, variants interleaved.
    #[arg(long)]
    reps: Option<usize>,
    /// Brokers to measure: `mock` (librdkafka's, in process) and/or `real` (EXACTLY_KAFKA_BROKER).
    #[arg(long, value_delimiter = ',', default_values_t = ["mock".to_owned(), "real".to_owned()])]
    brokers: Vec<String>,
    /// Give each record an idempotency-key header (else the key is its position).
    #[arg(long)]
    headers: bool,
    /// Share of records whose idempotency-key header repeats an earlier record's (a
    /// duplicate-heavy load; needs --headers). The mq-bridge variant is left out then:
    /// its handler does not see duplicates, so the bench cannot tell when it is done.
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Where stores are created.
    #[arg(long, default_value = "target/bench-tmp")]
    dir: PathBuf,
    /// exactly-kafka's max_in_flight (records queued per partition).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// exactly-kafka's ordering: `partition` (one record at a time per partition, the
    /// default) or `key` (a partition's records in parallel unless they share a key).
    #[arg(long, default_value = "partition")]
    ordering: String,
    /// Instead of the table: throughput on the mock cluster as the topic's partitions go
    /// through these counts (e.g. 1,4,16,64), one topic per count.
    #[arg(long, value_delimiter = ',')]
    sweep_partitions: Vec<i32>,
    /// With --sweep-partitions, write the throughput-vs-partitions plot (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Run only these consumers (default: all; the first is the one ratios are taken to).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Variant>,
    /// Redis for the SET NX variant (skipped with a note when it does not answer).
    #[arg(long, env = "EXACTLY_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Variant {
    /// rdkafka StreamConsumer committing offsets (the ceiling).
    Bare,
    /// exactly with the memory store.
    Memory,
    /// exactly with the sled store (the default).
    Sled,
    /// exactly with the redb store.
    Redb,
    /// exactly with the fjall store.
    Fjall,
    /// The bare loop with a sled get, insert and flush per record.
    NaiveSled,
    /// The bare loop with a Redis SET NX EX per record.
    RedisSetNx,
    /// mq-bridge's deduplication middleware (with --features mq-bridge).
    MqBridge,
    /// exactly with the PostgreSQL store (needs EXACTLY_POSTGRES_URL).
    Postgres,
    /// The bare loop with a PostgreSQL INSERT ON CONFLICT per record.
    NaivePostgres,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Bare => "bare rdkafka StreamConsumer, commits every 200 ms",
            Variant::Memory => "exactly-kafka, memory store",
            Variant::Sled => "exactly-kafka, sled store (default, durable)",
            Variant::Redb => "exactly-kafka, redb store (durable)",
            Variant::Fjall => "exactly-kafka, fjall store (durable)",
            Variant::NaiveSled => "hand-rolled: bare loop + sled get, insert, flush per record",
            Variant::RedisSetNx => "hand-rolled: bare loop + Redis SET NX EX per record",
            Variant::MqBridge => "mq-bridge 1.3 route, deduplication middleware (sled, durable=true)",
            Variant::Postgres => "exactly-kafka, PostgreSQL store (shared by instances, durable)",
            Variant::NaivePostgres => "hand-rolled: bare loop + PostgreSQL INSERT ON CONFLICT per record",
        }
    }
}

async fn produce(
    brokers: &str,
    topic: &str,
    n: u64,
    size: usize,
    partitions: i32,
    headers: bool,
    duplicates: f64,
) -> anyhow::Result<u64> {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut unique = 0u64;
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        // librdkafka's mock cluster keeps only 5 MB per partition and drops the oldest
        // segments beyond that; compressed batches of the uniform payload stay well under.
        .set("compression.type", "lz4")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let payload = vec![b'x'; size];
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..n {
        let key = if unique > 0 && rng.random_bool(duplicates.clamp(0.0, 1.0)) {
            format!("k{}", rng.random_range(0..unique))
        } else {
            unique += 1;
            format!("k{}", unique - 1)
        };
        let part = i32::try_from(i % u64::try_from(partitions)?)?;
        let mut rec = FutureRecord::to(topic).payload(&payload).key(key.as_bytes()).partition(part);
        if headers {
            rec = rec.headers(OwnedHeaders::new().insert(Header { key: "idempotency-key", value: Some(key.as_str()) }));
        }
        pending.push(p.send_result(rec).map_err(|(e, _)| e)?);
        if pending.len() == 10_000 {
            for d in pending.drain(..) {
                d.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for d in pending {
        d.await?.map_err(|(e, _)| e)?;
    }
    p.flush(Duration::from_secs(30))?;
    Ok(unique)
}

async fn create_topic(brokers: &str, mock: Option<&MockKafka>, topic: &str, partitions: i32) -> anyhow::Result<()> {
    if let Some(m) = mock {
        m.create_topic(topic, partitions)?;
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    for r in admin
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

/// Reads the `n` records (`unique` distinct keys) with variant `v` in a fresh group: the
/// time until the last one is finished and its offset committed, the CPU time, and each
/// record's latency (from the consumer having it to its offset being stored).
async fn consume(v: Variant, args: &Args, brokers: &str, topic: &str, n: u64, unique: u64) -> anyhow::Result<Run> {
    let group =
        format!("bench-{}-{}", std::process::id(), Instant::now().elapsed().as_nanos() ^ rand::random::<u64>() as u128);
    if matches!(v, Variant::Bare | Variant::NaiveSled | Variant::RedisSetNx | Variant::NaivePostgres) {
        let dir = tempfile::tempdir_in(&args.dir)?;
        let mut dedup = match v {
            Variant::NaiveSled => Dedup::sled(&dir.path().join("naive"))?,
            Variant::RedisSetNx => Dedup::redis(&args.redis, &group).await?,
            Variant::NaivePostgres => Dedup::postgres(&postgres_url()?, &postgres_run()).await?,
            _ => Dedup::None,
        };
        let c: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        c.subscribe(&[topic])?;
        let (started, cpu) = (Instant::now(), cpu_time());
        let mut latency = crate::report::histogram();
        let mut last_commit = Instant::now();
        let mut seen = 0;
        while seen < n {
            let m = tokio::time::timeout(STALL, c.recv())
                .await
                .map_err(|_| anyhow::anyhow!("only {seen} of {n} records arrived within {STALL:?}"))??;
            let received = Instant::now();
            dedup.first_time(&record_key(&m)).await?;
            c.store_offset_from_message(&m)?;
            crate::report::record(&mut latency, received.elapsed());
            seen += 1;
            if last_commit.elapsed() >= Duration::from_millis(200) {
                c.commit_consumer_state(CommitMode::Async)?;
                last_commit = Instant::now();
            }
        }
        c.commit_consumer_state(CommitMode::Sync)?;
        return Ok(Run { took: started.elapsed(), cpu: cpu_time().saturating_sub(cpu), latency: Some(latency) });
    }
    if v == Variant::MqBridge {
        return mq_bridge_route(args, brokers, topic, &group, n).await;
    }
    let dir = tempfile::tempdir_in(&args.dir)?;
    let store: Arc<dyn DedupStore> = match v {
        Variant::Memory => Arc::new(MemoryStore::new()),
        Variant::Sled => Arc::new(SledStore::builder(dir.path().join("s")).filter_keys(args.filter_keys).open()?),
        Variant::Fjall => {
            Arc::new(exactly::store::FjallStore::builder(dir.path().join("s")).filter_keys(args.filter_keys).open()?)
        }
        Variant::Postgres => {
            Arc::new(exactly::postgres::PgStore::builder(postgres_url()?).schema(postgres_run()).open().await?)
        }
        _ => Arc::new(exactly::store::RedbStore::builder(dir.path().join("s")).filter_keys(args.filter_keys).open()?),
    };
    let handled = Arc::new(AtomicU64::new(0));
    let h = handled.clone();
    let handler = handler_fn(move |_m: Message, _c: Context| {
        h.fetch_add(1, Ordering::Relaxed);
        async { Ok(()) }
    });
    let processor = Processor::builder("bench", handler).shared_store(store).build()?;
    let mut builder = Consumer::builder(brokers, &group).topic(topic);
    if let Some(m) = args.max_in_flight {
        builder = builder.max_in_flight(m);
    }
    builder = builder.ordering(match args.ordering.as_str() {
        "key" => exactly_kafka::Ordering::Key,
        "partition" => exactly_kafka::Ordering::Partition,
        other => anyhow::bail!("--ordering {other}: use partition or key"),
    });
    let consumer = builder.build(processor)?;
    let stop = consumer.shutdown_handle();
    let stats = consumer.stats();
    latency::reset();
    let (started, cpu) = (Instant::now(), cpu_time());
    let task = tokio::spawn(consumer.run());
    // Every key handled once, and every record (duplicates too) handed to a worker: the
    // graceful stop below finishes those and commits their offsets.
    wait_for(&handled, |now| now >= unique && stats.records.load(Ordering::Relaxed) >= n, || task.is_finished(), STALL)
        .await?;
    // The stop waits for the last records to be durable and commits their offsets, then
    // closes the clients (the consumer leaves its group: about 0.1 s per client with the
    // mock cluster). As for the bare consumer, whose close comes after its clock stops,
    // the run ends with the last commit the broker confirmed: the last change of the
    // commit count, watched every millisecond until the consumer has returned.
    let measured = || Run { took: started.elapsed(), cpu: cpu_time().saturating_sub(cpu), latency: None };
    let mut commits = stats.commits.load(Ordering::Relaxed);
    let mut end = None;
    stop.shutdown();
    while !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now = stats.commits.load(Ordering::Relaxed);
        if now != commits {
            commits = now;
            end = Some(measured());
        }
    }
    task.await??;
    // No commit confirmed during the stop, or one after the last look: count the whole
    // stop, close included.
    let end = match end {
        Some(end) if stats.commits.load(Ordering::Relaxed) == commits => end,
        _ => measured(),
    };
    Ok(Run { latency: Some(latency::take()), ..end })
}

/// A schema or table name of this process's own for one PostgreSQL run (dropped at the end).
fn postgres_run() -> String {
    static RUN: AtomicU64 = AtomicU64::new(0);
    format!("exactly_bench_{}_k{}", std::process::id(), RUN.fetch_add(1, Ordering::Relaxed))
}

/// The closest Rust peer: an mq-bridge route from the topic (`crate::mq_bridge`), keyed
/// like the other variants.
#[cfg(feature = "mq-bridge")]
async fn mq_bridge_route(args: &Args, brokers: &str, topic: &str, group: &str, n: u64) -> anyhow::Result<Run> {
    let input = serde_json::json!({
        "url": brokers,
        "topic": topic,
        "group_id": group,
        "consumer_options": [["auto.offset.reset", "earliest"]],
    });
    // Without a key template mq-bridge keys by the record's position (partition << 64 | offset).
    let key = args.headers.then_some("${metadata:idempotency-key}");
    crate::mq_bridge::run(&args.dir, group, ("kafka", input), key, true, n).await
}

/// The record's idempotency key as a hand-rolled dedup finds it: the header, else the
/// record's position.
fn record_key(m: &rdkafka::message::BorrowedMessage<'_>) -> String {
    use rdkafka::Message as _;
    use rdkafka::message::Headers as _;
    m.headers()
        .and_then(|h| h.iter().find(|h| h.key == "idempotency-key").and_then(|h| h.value))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_else(|| format!("{}/{}/{}", m.topic(), m.partition(), m.offset()))
}

#[cfg(not(feature = "mq-bridge"))]
async fn mq_bridge_route(_: &Args, _: &str, _: &str, _: &str, _: u64) -> anyhow::Result<Run> {
    anyhow::bail!("built without the mq-bridge feature")
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let n = args.records.unwrap_or(if args.quick { 20_000 } else { 200_000 });
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 });
    let mut variants =
        vec![Variant::Bare, Variant::Memory, Variant::Sled, Variant::Redb, Variant::Fjall, Variant::NaiveSled];
    match redis::Client::open(args.redis.as_str()) {
        Ok(c) if c.get_multiplexed_async_connection().await.is_ok() => variants.push(Variant::RedisSetNx),
        _ => eprintln!("Redis at {} does not answer: the SET NX variant is left out", args.redis),
    }
    if std::env::var_os("EXACTLY_POSTGRES_URL").is_some() {
        variants.extend([Variant::Postgres, Variant::NaivePostgres]);
    } else {
        eprintln!("EXACTLY_POSTGRES_URL is not set: the PostgreSQL variants are left out");
    }
    anyhow::ensure!(args.duplicates == 0.0 || args.headers, "--duplicates needs --headers");
    if cfg!(feature = "mq-bridge") && args.duplicates == 0.0 {
        variants.push(Variant::MqBridge);
    } else {
        eprintln!("the mq-bridge variant is left out (built without the mq-bridge feature, or --duplicates)");
    }
    if !args.only.is_empty() {
        variants.retain(|v| args.only.contains(v));
    }
    anyhow::ensure!(!variants.is_empty(), "no variant left to run");
    println!("## Kafka ({}), {}\n", if args.quick { "quick" } else { "full" }, machine());
    println!(
        "{n} records of {} bytes over {} partitions, keyed {}; each consumer in a fresh group reads all of them,",
        args.size,
        args.partitions,
        if args.headers { "by an idempotency-key header" } else { "by position (topic/partition/offset)" }
    );
    println!(
        "measured until the last offset is committed. Median of {reps} runs (range). CPU is the bench process's:\nthe client, and with the mock cluster the in-process broker too. Latency, over all runs: from the\nconsumer having a record to its offset being stored (exactly: from the start of its processing to\nits record being durable, `exactly_processing_duration_seconds`; a record's wait in its partition's\nqueue before that is not in it). The consumers read a backlog as fast as they can, so this is\nlatency at full load.\n"
    );
    if args.duplicates > 0.0 {
        println!("{:.0} % of the records repeat the key of an earlier one.\n", args.duplicates * 100.0);
    }
    println!("exactly-kafka's ordering: {}.\n", args.ordering);
    if !args.sweep_partitions.is_empty() {
        return sweep(&args, &variants, n, reps).await;
    }
    for broker in &args.brokers {
        let mock = if broker == "mock" { Some(MockKafka::new(3)?) } else { None };
        let brokers = match &mock {
            Some(m) => m.bootstrap_servers().to_owned(),
            None => std::env::var("EXACTLY_KAFKA_BROKER").map_err(|_| {
                anyhow::anyhow!("EXACTLY_KAFKA_BROKER is not set (scripts/services.sh up starts tansu)")
            })?,
        };
        let topic = format!("bench-{}-{broker}", std::process::id());
        create_topic(&brokers, mock.as_ref(), &topic, args.partitions).await?;
        let unique = produce(&brokers, &topic, n, args.size, args.partitions, args.headers, args.duplicates).await?;
        let mut runs = crate::report::Runs::new(variants.len());
        for _ in 0..reps {
            for (i, &v) in variants.iter().enumerate() {
                runs.add(i, n, consume(v, &args, &brokers, &topic, n, unique).await?);
            }
        }
        let name = if mock.is_some() {
            "librdkafka mock cluster (in process)"
        } else {
            "tansu (a real Kafka-protocol broker process)"
        };
        println!("### {name}\n");
        // The first variant run is the reference (the bare client unless --only left it out).
        runs.print("records/s", "CPU per record", &variants.iter().map(|v| v.label()).collect::<Vec<_>>(), true);
    }
    if variants.iter().any(|v| matches!(v, Variant::Postgres | Variant::NaivePostgres)) {
        crate::amqp::drop_postgres_leftovers(&format!("exactly_bench_{}_", std::process::id())).await?;
    }
    Ok(())
}

/// Throughput against the number of partitions, on the mock cluster.
async fn sweep(args: &Args, variants: &[Variant], n: u64, reps: usize) -> anyhow::Result<()> {
    let mock = MockKafka::new(3)?;
    let brokers = mock.bootstrap_servers().to_owned();
    println!("### librdkafka mock cluster: records/s as partitions grow (median of {reps})\n");
    let mut series = crate::report::sweep_start("partitions", variants, |v| v.label());
    for &partitions in &args.sweep_partitions {
        let topic = format!("bench-{}-p{partitions}", std::process::id());
        create_topic(&brokers, Some(&mock), &topic, partitions).await?;
        let unique = produce(&brokers, &topic, n, args.size, partitions, args.headers, args.duplicates).await?;
        let mut row = format!("| {partitions} |");
        for (i, &v) in variants.iter().enumerate() {
            let mut rates = Vec::new();
            for _ in 0..reps {
                rates.push(rate(n, consume(v, args, &brokers, &topic, n, unique).await?.took));
            }
            let m = median(&mut rates);
            row.push_str(&format!(" {} |", crate::report::fmt_rate(m)));
            series[i].1.push((u64::try_from(partitions)?, m));
        }
        println!("{row}");
    }
    if let Some(out) = &args.plot {
        crate::plot::throughput_vs(out, "Kafka mock cluster: records/s vs partitions", "partitions", &series)?;
        println!("\nplot: {}", out.display());
    }
    Ok(())
}
