//! Test support for the Kafka adapter.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use exactly_core::{Context, Handler, HandlerError, Message, handler_fn};
use exactly_kafka::rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use exactly_kafka::rdkafka::message::Headers as _;
use exactly_kafka::rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};

/// Logs to the test output when RUST_LOG is set.
pub fn logs() {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

pub fn unique(name: &str) -> String {
    logs();
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{name}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub use exactly_core::testing::Runs;

/// [`counting`], after a 20 ms pause per record: slow enough to keep records in flight.
pub fn slow_counting(runs: Runs) -> impl Handler<Output = ()> {
    let inner = std::sync::Arc::new(counting(runs));
    handler_fn(move |m: Message, ctx: Context| {
        let inner = inner.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Handler::handle(&*inner, m, ctx).await
        }
    })
}

/// Counts runs; payloads "poison" fail to decode.
pub fn counting(runs: Runs) -> impl Handler<Output = ()> {
    handler_fn(move |m: Message, ctx: Context| {
        let runs = runs.clone();
        async move {
            if m.payload_str() == Some("poison") {
                let _: u64 = m.decode()?;
            }
            runs.hit(ctx.message_key());
            let n: i64 = ctx.state().get_json(ctx.message_key()).await?.unwrap_or(0);
            ctx.state().put_json(ctx.message_key(), &(n + 1)).await?;
            Ok::<(), HandlerError>(())
        }
    })
}

pub async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The offsets a group has committed, per partition.
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).unwrap().offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .collect()
}

/// A record read back: (key, payload, headers).
pub type Read = (Option<Vec<u8>>, Vec<u8>, HashMap<String, String>);

/// Reads a topic from the beginning until `expect` records are read.
pub async fn read_all(brokers: &str, topic: &str, expect: usize) -> Vec<Read> {
    read_until(brokers, topic, |got| got.len() >= expect).await
}

/// Reads a topic from the beginning until `done` says so.
pub async fn read_until(brokers: &str, topic: &str, mut done: impl FnMut(&[Read]) -> bool) -> Vec<Read> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    while !done(&out) {
        let m = tokio::time::timeout(Duration::from_secs(30), c.recv()).await.expect("records in time").unwrap();
        let mut headers = HashMap::new();
        if let Some(hs) = m.headers() {
            for h in hs.iter() {
                headers.insert(h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned());
            }
        }
        out.push((m.key().map(<[u8]>::to_vec), m.payload().unwrap_or_default().to_vec(), headers));
    }
    out
}

/// The real Kafka-protocol broker scripts/services.sh starts.
pub fn real_broker() -> String {
    std::env::var("EXACTLY_KAFKA_BROKER").unwrap_or_else(|_| {
        panic!(
            "EXACTLY_KAFKA_BROKER is not set: these tests need the tansu broker. \
             Run scripts/test.sh, or `eval \"$(scripts/services.sh up)\"` first."
        )
    })
}

/// Creates a topic through the admin API.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    use exactly_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use exactly_kafka::rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let results = admin
        .create_topics(&[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

/// Produces records with an idempotency-key header equal to the key; waits for delivery.
pub async fn produce_to(brokers: &str, topic: &str, keys: impl IntoIterator<Item = String>) {
    use exactly_kafka::rdkafka::message::{Header, OwnedHeaders};
    use exactly_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
    let p: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let mut pending = Vec::new();
    for k in keys {
        let headers = OwnedHeaders::new().insert(Header { key: "idempotency-key", value: Some(k.as_str()) });
        let rec = FutureRecord::to(topic).key(k.as_bytes()).payload(k.as_bytes()).headers(headers);
        pending.push(p.send_result(rec).map_err(|(e, _)| e).unwrap());
    }
    for d in pending {
        d.await.unwrap().unwrap();
    }
}

/// A memory store's state value (its reads answer at once).
pub fn credited(store: &std::sync::Arc<dyn exactly_core::DedupStore>, ns: &str, key: &str) -> i64 {
    use futures_util::FutureExt;
    store
        .state_get(&exactly_core::StoreKey::state(ns, key.as_bytes()))
        .now_or_never()
        .expect("a memory store answers at once")
        .unwrap()
        .map(|r| serde_json::from_slice(&r).unwrap())
        .unwrap_or(0)
}

pub fn consumer(
    kafka: &exactly_kafka::testing::MockKafka,
    group: &str,
    topic: &str,
    processor: exactly_core::Processor,
) -> exactly_kafka::Consumer {
    exactly_kafka::Consumer::builder(kafka.bootstrap_servers(), group)
        .topic(topic)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "200")
        .commit_interval(Duration::from_millis(50))
        .build(processor)
        .unwrap()
}

pub async fn produce_keys(
    kafka: &exactly_kafka::testing::MockKafka,
    topic: &str,
    keys: impl IntoIterator<Item = String>,
) {
    for k in keys {
        kafka.produce(topic, None, Some(k.as_bytes()), k.as_bytes(), &[("idempotency-key", k.as_str())]).await.unwrap();
    }
}
