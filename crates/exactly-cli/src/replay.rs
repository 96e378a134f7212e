//! `exactly replay`: copy a Kafka topic range into another topic, or move a RabbitMQ queue
//! (a dead-letter queue after a fix) back to its source.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use exactly_amqp::lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions};
use exactly_amqp::lapin::types::{AMQPValue, FieldTable, ShortString};
use exactly_core::REDRIVE_HEADER;
use exactly_kafka::rdkafka::consumer::{BaseConsumer, Consumer as _};
use exactly_kafka::rdkafka::error::{KafkaError, RDKafkaErrorCode};
use exactly_kafka::rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use exactly_kafka::rdkafka::producer::future_producer::OwnedDeliveryResult;
use exactly_kafka::rdkafka::producer::{FutureRecord, Producer as _};
use exactly_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use futures_util::FutureExt as _;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
pub(crate) struct ReplayArgs {
    /// Mark each copy with `x-exactly-redrive: true`, so an exactly consumer clears the
    /// key's dead-letter mark and runs the handler again (for a dead-letter queue after a
    /// fix). Without it, copies of messages already handled are acknowledged as duplicates.
    #[arg(long)]
    redrive: bool,
    #[command(subcommand)]
    from: Source,
}

#[derive(Subcommand)]
enum Source {
    /// Copy records of a topic (every partition) from an offset or a time into a topic.
    Kafka {
        /// Bootstrap servers.
        #[arg(long, env = "KAFKA_BROKERS")]
        brokers: String,
        /// The topic to read.
        #[arg(long)]
        from_topic: String,
        /// The topic to write.
        #[arg(long)]
        to_topic: String,
        /// First offset of each partition (default: the beginning).
        #[arg(long, conflicts_with = "since")]
        from_offset: Option<i64>,
        /// Records written at or after this time (RFC 3339, e.g. 2026-11-24T05:00:00Z).
        #[arg(long)]
        since: Option<humantime::Timestamp>,
        /// Stop before this offset in each partition (default: the end when the replay starts).
        #[arg(long)]
        to_offset: Option<i64>,
    },
    /// Move messages from a queue (e.g. `payments.dlq`) to an exchange / routing key: each
    /// is published with confirms, then acknowledged in the source.
    Amqp {
        /// `amqp://user:pass@host:port/vhost`.
        #[arg(long, env = "AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
        url: String,
        /// The queue to empty.
        #[arg(long)]
        from_queue: String,
        /// The exchange to publish to (default exchange: the routing key names a queue).
        #[arg(long, default_value = "")]
        exchange: String,
        /// The routing key (the source queue, with the default exchange).
        #[arg(long)]
        routing_key: String,
        /// At most this many messages (default: until the queue is empty).
        #[arg(long)]
        limit: Option<u64>,
    },
}

pub(crate) async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {pos} copied {per_sec}")?);
    let copied = match args.from {
        Source::Kafka { brokers, from_topic, to_topic, from_offset, since, to_offset } => {
            let start = match (from_offset, since) {
                (Some(o), _) => Offset::Offset(o),
                (None, Some(t)) => {
                    let ms = SystemTime::from(t).duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
                    Offset::Offset(i64::try_from(ms)?)
                }
                (None, None) => Offset::Beginning,
            };
            kafka(&brokers, &from_topic, &to_topic, start, since.is_some(), to_offset, args.redrive, &bar).await?
        }
        Source::Amqp { url, from_queue, exchange, routing_key, limit } => {
            amqp(&url, &from_queue, &exchange, &routing_key, limit, args.redrive, &bar).await?
        }
    };
    bar.finish_and_clear();
    println!("copied {copied} messages{}", if args.redrive { " marked for re-drive" } else { "" });
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn kafka(
    brokers: &str,
    from: &str,
    to: &str,
    start: Offset,
    by_time: bool,
    end: Option<i64>,
    redrive: bool,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let timeout = Duration::from_secs(30);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("exactly-replay-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create the Kafka consumer")?;
    let metadata = consumer.fetch_metadata(Some(from), timeout).context("cannot read the topic's metadata")?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    anyhow::ensure!(!partitions.is_empty(), "topic {from} has no partitions (does it exist?)");
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition_offset(from, *p, start)?;
    }
    if by_time {
        list = consumer.offsets_for_times(list, timeout).context("cannot look up offsets by time")?;
    }
    // Where each partition stops: the asked end, or its end now. A partition with nothing
    // to copy (empty, or nothing since the time asked) is done before it starts.
    let mut stop = HashMap::new();
    let mut open = std::collections::HashSet::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(from, *p, timeout)?;
        let until = end.map_or(high, |e| e.min(high));
        stop.insert(*p, until);
        let begins = match list.find_partition(from, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o.max(low),
            Some(Offset::Beginning) => low,
            _ => until, // Offset::End: nothing at or after the time asked
        };
        if begins < until {
            open.insert(*p);
        }
    }
    consumer.assign(&list)?;
    let producer = crate::produce::kafka_producer(brokers)?;
    let mut copy = Copy { pending: FuturesUnordered::new(), copied: 0, failed: HashMap::new(), error: None };
    // Where each partition's records not yet read begin.
    let mut unread: HashMap<i32, i64> = HashMap::new();
    for p in &open {
        if let Some(Offset::Offset(o)) = list.find_partition(from, *p).map(|e| e.offset()) {
            unread.insert(*p, o);
        }
    }
    let mut idle = 0;
    while !open.is_empty() && copy.error.is_none() {
        copy.settle_ready(bar);
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            idle += 1;
            anyhow::ensure!(idle < 300, "no records for 30 s with partitions {open:?} not finished");
            // A partition whose start is already at its stop never yields a record.
            for p in open.clone() {
                let pos = consumer.position()?.find_partition(from, p).map(|e| e.offset());
                if let Some(Offset::Offset(o)) = pos
                    && o >= stop[&p]
                {
                    open.remove(&p);
                }
            }
            continue;
        };
        idle = 0;
        let m = m?;
        let (p, offset) = (m.partition(), m.offset());
        if offset >= stop[&p] {
            open.remove(&p);
            continue;
        }
        let mut headers = OwnedHeaders::new();
        if let Some(h) = m.headers() {
            for x in h.iter().filter(|x| x.key != REDRIVE_HEADER) {
                headers = headers.insert(Header { key: x.key, value: x.value });
            }
        }
        if redrive {
            headers = headers.insert(Header { key: REDRIVE_HEADER, value: Some("true") });
        }
        let mut rec = FutureRecord::to(to).payload(m.payload().unwrap_or_default()).headers(headers);
        if let Some(k) = m.key() {
            rec = rec.key(k);
        }
        // Sends are pipelined: up to IN_FLIGHT wait for their acknowledgement at once.
        while copy.pending.len() >= IN_FLIGHT {
            copy.settle_one(bar).await;
        }
        loop {
            match producer.send_result(rec) {
                Ok(delivery) => {
                    copy.pending.push(Box::pin(async move { (p, offset, delivery.await.ok()) }));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    copy.settle_one(bar).await;
                }
                Err((e, _)) => {
                    copy.fail(p, offset, format!("producing to {to}: {e}"));
                    break;
                }
            }
        }
        unread.insert(p, offset + 1);
        if offset + 1 >= stop[&p] {
            open.remove(&p);
        }
    }
    // Every copy is confirmed (or failed) before the replay reports anything.
    while !copy.pending.is_empty() {
        copy.settle_one(bar).await;
    }
    producer.flush(timeout)?;
    let Some(error) = copy.error else { return Ok(copy.copied) };
    let mut left: Vec<String> = Vec::new();
    for p in &partitions {
        let from_failed = copy.failed.get(p).copied();
        let from_unread = open.contains(p).then(|| unread.get(p).copied()).flatten();
        if let Some(first) = from_failed.into_iter().chain(from_unread).min() {
            left.push(format!("partition {p}: offsets {first}..{} not copied", stop[p]));
        }
    }
    anyhow::bail!(
        "{error}; {} copied, and {} (some of these may have been copied: an exactly consumer drops those copies; \
         run again with --from-offset per partition to finish)",
        copy.copied,
        left.join(", ")
    )
}

/// Records sent to Kafka and not yet acknowledged, at most this many.
const IN_FLIGHT: usize = 10_000;

/// A copy's partition and offset in the source, and what the producer said (`None`: it
/// dropped the copy without an answer, as when it is closed).
type Delivery = std::pin::Pin<Box<dyn Future<Output = (i32, i64, Option<OwnedDeliveryResult>)> + Send>>;

/// The copies under way: acknowledged ones counted, failed ones' lowest offset kept per
/// partition.
struct Copy {
    pending: FuturesUnordered<Delivery>,
    copied: u64,
    failed: HashMap<i32, i64>,
    error: Option<String>,
}

impl Copy {
    /// Settles the acknowledgements that have come, without waiting.
    fn settle_ready(&mut self, bar: &ProgressBar) {
        while let Some(Some(done)) = self.pending.next().now_or_never() {
            self.settle(done, bar);
        }
    }

    /// Waits for one acknowledgement.
    async fn settle_one(&mut self, bar: &ProgressBar) {
        if let Some(done) = self.pending.next().await {
            self.settle(done, bar);
        }
    }

    fn settle(&mut self, (p, offset, result): (i32, i64, Option<OwnedDeliveryResult>), bar: &ProgressBar) {
        match result {
            Some(Ok(_)) => {
                self.copied += 1;
                bar.inc(1);
            }
            Some(Err((e, _))) => self.fail(p, offset, format!("a copy was refused: {e}")),
            None => self.fail(p, offset, "the producer dropped a copy without an answer".into()),
        }
    }

    fn fail(&mut self, p: i32, offset: i64, error: String) {
        let lowest = self.failed.entry(p).or_insert(offset);
        *lowest = (*lowest).min(offset);
        self.error.get_or_insert(error);
    }
}

async fn amqp(
    url: &str,
    from: &str,
    exchange: &str,
    routing_key: &str,
    limit: Option<u64>,
    redrive: bool,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let (conn, channel) = crate::produce::amqp_channel(url).await?;
    let mut copied = 0u64;
    while limit.is_none_or(|l| copied < l) {
        let Some(m) = channel.basic_get(ShortString::from(from), BasicGetOptions { no_ack: false }).await? else {
            break;
        };
        let mut props = m.delivery.properties.clone();
        if redrive {
            let mut headers = props.headers().clone().unwrap_or_else(FieldTable::default);
            headers.insert(ShortString::from(REDRIVE_HEADER), AMQPValue::Boolean(true));
            props = props.with_headers(headers);
        }
        let confirm = channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions::default(),
                &m.delivery.data,
                props,
            )
            .await?
            .await?;
        // Only a confirmed copy lets the original go: nothing is lost on a failure.
        anyhow::ensure!(confirm.is_ack(), "the broker refused a copy; the original stays in {from}");
        m.delivery.acker.ack(BasicAckOptions::default()).await?;
        copied += 1;
        bar.inc(1);
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(copied)
}
