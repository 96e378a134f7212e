//! The chaos harness's side of each broker: publish, tell when the consumers are done,
//! read the dead-letters back, count what is left, clean up.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use exactly::amqp::lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use exactly::amqp::lapin::types::{AMQPValue, FieldTable};
use exactly::amqp::lapin::{BasicProperties, Connection, ConnectionProperties};
use exactly::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use exactly::kafka::rdkafka::client::DefaultClientContext;
use exactly::kafka::rdkafka::consumer::{BaseConsumer, Consumer as _};
use exactly::kafka::rdkafka::error::KafkaError;
use exactly::kafka::rdkafka::message::{Header, Headers as _, OwnedHeaders};
use exactly::kafka::rdkafka::mocking::MockCluster;
use exactly::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use exactly::kafka::rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PARTITIONS: i32 = 6;
/// RabbitMQ prefetch; Kafka records in flight per partition.
const IN_FLIGHT: u64 = 64;
const KEY_HEADER: &str = "x-exactly-key";
const REASON_HEADER: &str = "x-exactly-reason";

/// One broker, with the queue or topic of this run.
#[derive(Clone)]
pub(crate) enum Broker {
    Amqp {
        queue: String,
    },
    /// `mock`: on librdkafka's mock cluster, whose topics go with it (it has no
    /// DeleteTopics API).
    Kafka {
        brokers: String,
        topic: String,
        mock: bool,
    },
}

impl Broker {
    pub(crate) async fn amqp(name: &str) -> anyhow::Result<Self> {
        Ok(Self::Amqp { queue: name.to_owned() })
    }

    pub(crate) async fn kafka(brokers: &str, name: &str) -> anyhow::Result<Self> {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", brokers).create()?;
        let dlq = format!("{name}.dlq");
        let topics = [
            NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1)),
            NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)),
        ];
        for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
        }
        Ok(Self::Kafka { brokers: brokers.to_owned(), topic: name.to_owned(), mock: false })
    }

    /// The topics on librdkafka's mock cluster (which has no CreateTopics API).
    pub(crate) fn kafka_mock<C: exactly::kafka::rdkafka::producer::ProducerContext>(
        mock: &MockCluster<'_, C>,
        name: &str,
    ) -> anyhow::Result<Self> {
        mock.create_topic(name, PARTITIONS, 1)?;
        mock.create_topic(&format!("{name}.dlq"), 1, 1)?;
        Ok(Self::Kafka { brokers: mock.bootstrap_servers(), topic: name.to_owned(), mock: true })
    }

    /// Messages one consumer process can hold between the handler's effect and the
    /// durable done-record: what one kill can make run twice.
    pub(crate) fn in_flight(&self) -> u64 {
        match self {
            Self::Amqp { .. } => IN_FLIGHT,
            Self::Kafka { .. } => IN_FLIGHT * PARTITIONS as u64,
        }
    }

    /// The consumer's configuration section.
    pub(crate) fn subscription(&self, name: &str) -> String {
        match self {
            Self::Amqp { queue } => {
                format!("[amqp.ledger]\nurl = \"{AMQP_URL}\"\nqueue = \"{queue}\"\nprefetch = {IN_FLIGHT}\n")
            }
            Self::Kafka { brokers, topic, .. } => format!(
                "[kafka.ledger]\nbrokers = \"{brokers}\"\ngroup = \"{name}\"\ntopics = [\"{topic}\"]\nmax_in_flight = {IN_FLIGHT}\n\
                 [kafka.ledger.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
                 \"max.poll.interval.ms\" = \"20000\"\n"
            ),
        }
    }

    /// Sends `(key, payload)` messages. RabbitMQ: in batches confirmed by the broker; a
    /// batch a connection cut interrupted is sent again whole (more duplicates, which the
    /// consumer must absorb too).
    pub(crate) async fn publish(&self, msgs: Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
        match self {
            Self::Amqp { queue } => {
                for batch in msgs.chunks(500) {
                    let mut tries = 0;
                    while let Err(e) = publish_amqp(queue, batch).await {
                        tries += 1;
                        anyhow::ensure!(tries < 20, "publishing to RabbitMQ failed 20 times: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Ok(())
            }
            Self::Kafka { brokers, topic, .. } => {
                let producer: FutureProducer = ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .set("linger.ms", "20")
                    .set("batch.num.messages", "10000")
                    .set("compression.type", "lz4")
                    .create()?;
                for batch in msgs.chunks(2_000) {
                    let mut pending = Vec::with_capacity(batch.len());
                    for (key, body) in batch {
                        let headers = OwnedHeaders::new().insert(Header { key: "idempotency-key", value: Some(key) });
                        let rec = FutureRecord::to(topic).key(key).payload(body).headers(headers);
                        // Enqueued now (`send` would only enqueue when awaited, one by one).
                        pending.push(producer.send_result(rec).map_err(|(e, _)| e)?);
                    }
                    for p in pending {
                        p.await?.map_err(|(e, _)| e)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Messages ready in the queue (RabbitMQ; those a consumer holds unacknowledged are
    /// not counted) or records past the group's committed offsets (Kafka).
    pub(crate) async fn leftover(&self) -> anyhow::Result<u64> {
        match self {
            Self::Amqp { queue } => {
                let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
                let ch = conn.create_channel().await?;
                let q = ch
                    .queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions { passive: true, ..Default::default() },
                        FieldTable::default(),
                    )
                    .await?;
                let _ = conn.close(200, "bye".into()).await;
                Ok(u64::from(q.message_count()))
            }
            Self::Kafka { brokers, topic, .. } => {
                let c: BaseConsumer =
                    ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", topic.as_str()).create()?;
                let mut tpl = TopicPartitionList::new();
                for p in 0..PARTITIONS {
                    tpl.add_partition(topic, p);
                }
                let committed = c.committed_offsets(tpl, Duration::from_secs(10))?;
                let mut left = 0u64;
                for p in 0..PARTITIONS {
                    let (_, high) = c.fetch_watermarks(topic, p, Duration::from_secs(10))?;
                    let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
                        Some(Offset::Offset(o)) => o,
                        _ => 0,
                    };
                    left += u64::try_from(high - done).unwrap_or(0);
                }
                Ok(left)
            }
        }
    }

    /// Every dead-letter: (key, reason).
    pub(crate) async fn dead_letters(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        match self {
            Self::Amqp { queue } => {
                let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await?;
                let ch = conn.create_channel().await?;
                let dlq = format!("{queue}.dlq");
                while let Some(m) = ch.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true }).await? {
                    let headers = m.delivery.properties.headers().clone().unwrap_or_default();
                    let get = |name: &str| match headers.inner().get(name) {
                        Some(AMQPValue::LongString(s)) => s.to_string(),
                        Some(other) => format!("{other:?}"),
                        None => String::new(),
                    };
                    out.push((get(KEY_HEADER), get(REASON_HEADER)));
                }
                let _ = conn.close(200, "bye".into()).await;
            }
            Self::Kafka { brokers, topic, .. } => {
                let c: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .set("group.id", format!("{topic}-dlq-reader"))
                    .set("auto.offset.reset", "earliest")
                    .set("enable.partition.eof", "true")
                    .create()?;
                let dlq = format!("{topic}.dlq");
                let (_, high) = c.fetch_watermarks(&dlq, 0, Duration::from_secs(10))?;
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(&dlq, 0, Offset::Beginning)?;
                c.assign(&tpl)?;
                // Until the end of the partition, which may be past the high watermark
                // the broker reported first (tansu once reported 43 for a log of 44).
                let mut read = 0;
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                loop {
                    anyhow::ensure!(
                        std::time::Instant::now() < deadline,
                        "reading {dlq} did not reach its end within 60 s (offset {read}, high watermark {high})"
                    );
                    let m = match c.poll(Duration::from_millis(500)) {
                        Some(Ok(m)) => m,
                        Some(Err(KafkaError::PartitionEOF(_))) if read >= high => break,
                        _ => continue,
                    };
                    read = m.offset() + 1;
                    let mut h: HashMap<String, String> = HashMap::new();
                    for x in m.headers().iter().flat_map(|hs| hs.iter()) {
                        h.insert(x.key.to_owned(), String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned());
                    }
                    out.push((h.remove(KEY_HEADER).unwrap_or_default(), h.remove(REASON_HEADER).unwrap_or_default()));
                }
            }
        }
        Ok(out)
    }

    /// Removes the queues or topics of the run.
    pub(crate) async fn cleanup(&self) {
        match self {
            Self::Amqp { queue } => {
                if let Ok(conn) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await
                    && let Ok(ch) = conn.create_channel().await
                {
                    let _ = exactly::amqp::Topology::declare().delete(&ch, queue).await;
                }
            }
            Self::Kafka { mock: true, .. } => {}
            Self::Kafka { brokers, topic, .. } => {
                if let Ok(admin) =
                    ClientConfig::new().set("bootstrap.servers", brokers).create::<AdminClient<DefaultClientContext>>()
                {
                    let _ = admin.delete_topics(&[topic.as_str(), &format!("{topic}.dlq")], &AdminOptions::new()).await;
                }
            }
        }
    }
}

async fn publish_amqp(queue: &str, batch: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await.context("connecting")?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut confirms = Vec::with_capacity(batch.len());
    for (key, body) in batch {
        let props = BasicProperties::default().with_message_id(key.as_str().into()).with_delivery_mode(2);
        confirms.push(ch.basic_publish("".into(), queue.into(), BasicPublishOptions::default(), body, props).await?);
    }
    for c in confirms {
        anyhow::ensure!(c.await?.is_ack(), "the broker refused a message");
    }
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}
