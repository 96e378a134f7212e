//! RabbitMQ: a bare lapin consumer with manual acks against exactly-amqp, on the same
//! broker, the same prefilled messages and the same prefetch, in one run.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use exactly::amqp::{Consumer, Topology};
use exactly::{Context, DedupStore, MemoryStore, Message, Processor, SledStore, handler_fn};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

use crate::latency;
use crate::naive::Dedup;
use crate::report::{Run, Runs, cpu_time, fmt_rate, histogram, machine, median, rate, record};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// A short run (CI).
    #[arg(long)]
    quick: bool,
    /// Messages per run.
    #[arg(long)]
    messages: Option<u64>,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// basic.qos prefetch, the same for every consumer (exactly-amqp's default).
    #[arg(long, default_value_t = 250)]
    prefetch: u16,
    /// Repetitions (variants interleaved); the median is reported with the range.
    #[arg(long)]
    reps: Option<usize>,
    /// The broker.
    #[arg(long, env = "EXACTLY_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    url: String,
    /// Where stores are created.
    #[arg(long, default_value = "target/bench-tmp")]
    dir: PathBuf,
    /// Consumers to compare (default: all but mq-bridge's durable route; bare is always
    /// measured, as the ceiling).
    #[arg(long, value_enum, value_delimiter = ',')]
    variants: Vec<Variant>,
    /// Redis for the SET NX variant (skipped with a note when it does not answer).
    #[arg(long, env = "EXACTLY_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Skip the bare consumer (for profiling one variant; no ratios then).
    #[arg(long, hide = true)]
    no_bare: bool,
    /// Measure throughput at each of these prefetch counts (e.g. 1,4,16,64,256) instead.
    #[arg(long, value_delimiter = ',')]
    sweep_prefetch: Vec<u16>,
    /// With --sweep-prefetch, write the throughput-vs-prefetch plot (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Variant {
    Bare,
    BareBatched,
    Memory,
    Sled,
    Redb,
    Fjall,
    NaiveSled,
    RedisSetNx,
    /// exactly on the shared PostgreSQL store (needs $EXACTLY_POSTGRES_URL).
    Postgres,
    /// A bare consumer with a per-message INSERT in PostgreSQL.
    NaivePostgres,
    MqBridge,
    /// mq-bridge without the flush before the ack: its durable route deadlocks here
    /// (bench/results/performance-log.md, "mq-bridge on RabbitMQ").
    MqBridgeNoFlush,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Bare => "bare lapin, one ack per message (pipelined)",
            Variant::BareBatched => "bare lapin, acks batched (multiple=true every 32)",
            Variant::Memory => "exactly, memory store",
            Variant::Sled => "exactly, sled store (default, durable)",
            Variant::Redb => "exactly, redb store (durable)",
            Variant::Fjall => "exactly, fjall store (durable)",
            Variant::NaiveSled => "hand-rolled: bare lapin + sled get, insert, flush per message",
            Variant::RedisSetNx => "hand-rolled: bare lapin + Redis SET NX EX per message",
            Variant::Postgres => "exactly, PostgreSQL store (shared by instances, durable)",
            Variant::NaivePostgres => "hand-rolled: bare lapin + PostgreSQL INSERT ON CONFLICT per message",
            Variant::MqBridge => "mq-bridge 1.3 route, deduplication middleware (sled, durable=true)",
            Variant::MqBridgeNoFlush => "mq-bridge 1.3 route, deduplication middleware (sled, durable=false: no flush)",
        }
    }
}

async fn prefill(conn: &Connection, queue: &str, n: u64, size: usize) -> anyhow::Result<()> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default())
        .await?;
    let payload = vec![b'x'; size];
    let mut pending = Vec::with_capacity(2000);
    for i in 0..n {
        let props = BasicProperties::default().with_message_id(format!("m{i}").into()).with_delivery_mode(2);
        pending.push(ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &payload, props).await?);
        if pending.len() == 2000 {
            for c in pending.drain(..) {
                anyhow::ensure!(c.await?.is_ack(), "prefill not confirmed");
            }
        }
    }
    for c in pending {
        anyhow::ensure!(c.await?.is_ack(), "prefill not confirmed");
    }
    let _ = ch.close(200, "ok".into()).await;
    Ok(())
}

/// Consumes `n` messages with `prefetch`: the time to the last ack, the client CPU used,
/// and each message's latency from its delivery to its ack being sent.
async fn consume(v: Variant, args: &Args, prefetch: u16, queue: &str, n: u64) -> anyhow::Result<Run> {
    if v == Variant::BareBatched {
        let conn = Connection::connect(&args.url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let mut deliveries = ch
            .basic_consume(queue.into(), "bare".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        let (started, cpu) = (Instant::now(), cpu_time());
        let (mut latency, mut unacked) = (histogram(), Vec::new());
        let mut seen = 0;
        let mut last = None;
        while seen < n {
            // Ack every 32nd delivery with multiple=true, or when none is waiting.
            let next = if last.is_some() {
                tokio::time::timeout(Duration::from_millis(1), deliveries.next()).await.ok()
            } else {
                Some(deliveries.next().await)
            };
            match next {
                Some(d) => {
                    let d = d.ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
                    seen += 1;
                    last = Some(d);
                    unacked.push(Instant::now());
                    if (seen % 32 == 0 || seen == n)
                        && let Some(d) = last.take()
                    {
                        d.ack(BasicAckOptions { multiple: true }).await?;
                        unacked.drain(..).for_each(|t| record(&mut latency, t.elapsed()));
                    }
                }
                None => {
                    if let Some(d) = last.take() {
                        d.ack(BasicAckOptions { multiple: true }).await?;
                        unacked.drain(..).for_each(|t| record(&mut latency, t.elapsed()));
                    }
                }
            }
        }
        let took = Run { took: started.elapsed(), cpu: cpu_time().saturating_sub(cpu), latency: Some(latency) };
        let _ = conn.close(200, "ok".into()).await;
        return Ok(took);
    }
    if matches!(v, Variant::Bare | Variant::NaiveSled | Variant::RedisSetNx | Variant::NaivePostgres) {
        let dir = tempfile::tempdir_in(&args.dir)?;
        let mut dedup = match v {
            Variant::NaiveSled => Dedup::sled(&dir.path().join("naive"))?,
            Variant::RedisSetNx => Dedup::redis(&args.redis, queue).await?,
            Variant::NaivePostgres => Dedup::postgres(&postgres_url()?, queue).await?,
            _ => Dedup::None,
        };
        let conn = Connection::connect(&args.url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let mut deliveries = ch
            .basic_consume(queue.into(), "bare".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        let (started, cpu) = (Instant::now(), cpu_time());
        // Acks are pipelined (not awaited one by one), as in exactly-amqp: the fastest
        // bare consumer, so the ceiling is a fair one.
        let mut acks = futures_util::stream::FuturesUnordered::new();
        let mut latency = histogram();
        let (mut seen, mut acked) = (0, 0);
        while acked < n {
            tokio::select! {
                d = deliveries.next(), if seen < n => {
                    let d = d.ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
                    let received = Instant::now();
                    // The hand-rolled dedup records the message id before the ack.
                    let id = d.properties.message_id().as_ref().map(|id| id.to_string()).unwrap_or_default();
                    dedup.first_time(&id).await?;
                    record(&mut latency, received.elapsed());
                    acks.push(async move { d.ack(BasicAckOptions::default()).await });
                    seen += 1;
                }
                Some(r) = acks.next(), if !acks.is_empty() => {
                    r?;
                    acked += 1;
                }
            }
        }
        let took = Run { took: started.elapsed(), cpu: cpu_time().saturating_sub(cpu), latency: Some(latency) };
        let _ = conn.close(200, "ok".into()).await;
        return Ok(took);
    }
    if matches!(v, Variant::MqBridge | Variant::MqBridgeNoFlush) {
        return mq_bridge_route(args, prefetch, queue, v == Variant::MqBridge, n).await;
    }
    let dir = tempfile::tempdir_in(&args.dir)?;
    let store: Arc<dyn DedupStore> = match v {
        Variant::Memory => Arc::new(MemoryStore::new()),
        Variant::Sled => Arc::new(SledStore::open(dir.path().join("s"))?),
        Variant::Fjall => Arc::new(exactly::store::FjallStore::open(dir.path().join("s"))?),
        Variant::Postgres => {
            Arc::new(exactly::postgres::PgStore::builder(postgres_url()?).schema(queue.replace('-', "_")).open().await?)
        }
        _ => Arc::new(exactly::store::RedbStore::open(dir.path().join("s"))?),
    };
    let handler = handler_fn(|_m: Message, _c: Context| async { Ok(()) });
    let processor = Processor::builder("bench", handler).shared_store(store).build()?;
    let consumer = Consumer::builder(&args.url, queue)
        .prefetch(prefetch)
        .topology(Topology::existing("amq.direct"))
        .build(processor)?;
    let (stop, stats) = (consumer.shutdown_handle(), consumer.stats());
    latency::reset();
    let (started, cpu) = (Instant::now(), cpu_time());
    let task = tokio::spawn(consumer.run());
    while stats.acked.load(Ordering::Relaxed) < n {
        anyhow::ensure!(!task.is_finished(), "the consumer stopped early");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = Run { took: started.elapsed(), cpu: cpu_time().saturating_sub(cpu), latency: Some(latency::take()) };
    stop.shutdown();
    task.await??;
    Ok(took)
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let n = args.messages.unwrap_or(if args.quick { 10_000 } else { 100_000 });
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 });
    let mut variants = if args.no_bare { vec![] } else { vec![Variant::Bare] };
    if args.variants.is_empty() {
        variants.extend([
            Variant::BareBatched,
            Variant::Memory,
            Variant::Sled,
            Variant::Redb,
            Variant::Fjall,
            Variant::NaiveSled,
        ]);
        match redis::Client::open(args.redis.as_str()) {
            Ok(c) if c.get_multiplexed_async_connection().await.is_ok() => variants.push(Variant::RedisSetNx),
            _ => eprintln!("Redis does not answer at {}; the SET NX variant is skipped", args.redis),
        }
        if std::env::var_os("EXACTLY_POSTGRES_URL").is_some() {
            variants.extend([Variant::Postgres, Variant::NaivePostgres]);
        } else {
            eprintln!("EXACTLY_POSTGRES_URL is not set; the PostgreSQL variants are skipped");
        }
        // mq-bridge's durable route deadlocks on RabbitMQ in sled's concurrent flushes
        // in most runs (docs/PERFORMANCE.md): by default its route runs without the
        // flush; `--variants mq-bridge` asks for the durable one.
        if cfg!(feature = "mq-bridge") {
            variants.push(Variant::MqBridgeNoFlush);
        }
    } else {
        variants.extend(args.variants.iter().copied().filter(|v| *v != Variant::Bare));
    }
    let conn = Connection::connect(&args.url, ConnectionProperties::default()).await?;
    if !args.sweep_prefetch.is_empty() {
        return sweep(&args, &conn, &variants, n, reps).await;
    }
    let mut runs = Runs::new(variants.len());
    for rep in 0..reps {
        for (i, &v) in variants.iter().enumerate() {
            let queue = format!("exactly-bench-{}-{rep}-{i}", std::process::id());
            runs.add(i, n, measure(&conn, v, &args, args.prefetch, &queue, n).await?);
        }
    }
    println!("## RabbitMQ ({}), {}\n", if args.quick { "quick" } else { "full" }, machine());
    println!(
        "{n} prefilled persistent messages of {} bytes, prefetch {}, consumed to the last ack; RabbitMQ on the same machine.",
        args.size, args.prefetch
    );
    println!("Median of {reps} runs (range); client CPU is this process's user+system time per message.\n");
    println!("Ratios are to the first row, the bare consumer as a lapin user writes it (the issue's ceiling).");
    println!("exactly-amqp batches acks itself; the second row shows a bare consumer that does too.\n");
    println!("Latency: from a delivery to its ack being sent (exactly: its processing, from");
    println!("`exactly_processing_duration_seconds`), over all runs.\n");
    let labels: Vec<&str> = variants.iter().map(|v| v.label()).collect();
    runs.print("msgs/s", "client CPU per msg", &labels, !args.no_bare);
    if variants.iter().any(|v| matches!(v, Variant::Postgres | Variant::NaivePostgres)) {
        drop_postgres_leftovers(&format!("exactly_bench_{}_", std::process::id())).await?;
    }
    Ok(())
}

/// Drops the schemas and tables this run made in PostgreSQL (named after its queues).
pub(crate) async fn drop_postgres_leftovers(prefix: &str) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(&postgres_url()?, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let like = format!("{prefix}%");
    for row in client.query("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", &[&like]).await? {
        client.batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", row.get::<_, String>(0))).await?;
    }
    let tables = format!("bench_naive_{like}");
    for row in client.query("SELECT tablename FROM pg_tables WHERE tablename LIKE $1", &[&tables]).await? {
        client.batch_execute(&format!("DROP TABLE \"{}\"", row.get::<_, String>(0))).await?;
    }
    Ok(())
}

pub(crate) fn postgres_url() -> anyhow::Result<String> {
    std::env::var("EXACTLY_POSTGRES_URL")
        .map_err(|_| anyhow::anyhow!("the PostgreSQL variants need $EXACTLY_POSTGRES_URL (scripts/services.sh up)"))
}

/// mq-bridge's route from the queue (`crate::mq_bridge`), keyed by the AMQP message id.
#[cfg(feature = "mq-bridge")]
async fn mq_bridge_route(args: &Args, prefetch: u16, queue: &str, durable: bool, n: u64) -> anyhow::Result<Run> {
    let input = serde_json::json!({ "url": args.url, "queue": queue, "prefetch_count": prefetch });
    crate::mq_bridge::run(&args.dir, queue, ("amqp", input), Some("${metadata:amqp_message_id}"), durable, n).await
}

#[cfg(not(feature = "mq-bridge"))]
async fn mq_bridge_route(_: &Args, _: u16, _: &str, _: bool, _: u64) -> anyhow::Result<Run> {
    anyhow::bail!("built without the mq-bridge feature")
}

/// Fills a queue, consumes it with one variant, deletes it.
async fn measure(
    conn: &Connection,
    v: Variant,
    args: &Args,
    prefetch: u16,
    queue: &str,
    n: u64,
) -> anyhow::Result<Run> {
    prefill(conn, queue, n, args.size).await?;
    let took = consume(v, args, prefetch, queue, n).await?;
    let ch = conn.create_channel().await?;
    ch.queue_delete(queue.into(), QueueDeleteOptions::default()).await?;
    let _ = ch.close(200, "ok".into()).await;
    Ok(took)
}

/// Throughput of every variant at each prefetch count, as a table and optionally a plot.
async fn sweep(args: &Args, conn: &Connection, variants: &[Variant], n: u64, reps: usize) -> anyhow::Result<()> {
    println!("### RabbitMQ: messages/s as the prefetch grows (median of {reps})\n");
    println!(
        "{n} prefilled persistent messages of {} bytes per run; exactly-amqp handles up to `prefetch` at once.\n",
        args.size
    );
    let mut series = crate::report::sweep_start("prefetch", variants, |v| v.label());
    for &prefetch in &args.sweep_prefetch {
        let mut row = format!("| {prefetch} |");
        for (i, &v) in variants.iter().enumerate() {
            let mut rates = Vec::new();
            for rep in 0..reps {
                let queue = format!("exactly-bench-{}-q{prefetch}-{rep}-{i}", std::process::id());
                rates.push(rate(n, measure(conn, v, args, prefetch, &queue, n).await?.took));
            }
            let m = median(&mut rates);
            row.push_str(&format!(" {} |", fmt_rate(m)));
            series[i].1.push((u64::from(prefetch), m));
        }
        println!("{row}");
    }
    if let Some(out) = &args.plot {
        crate::plot::throughput_vs(out, "RabbitMQ: messages/s vs prefetch", "prefetch", &series)?;
        println!("\nplot: {}", out.display());
    }
    Ok(())
}
