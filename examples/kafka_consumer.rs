//! An orders consumer on Kafka: each order is recorded once, duplicates (the same
//! `idempotency-key` header in a later record) are skipped from the store, an undecodable
//! record goes to `<topic>.dlq` with its reason in the headers.
//!
//! ```sh
//! # No broker needed: librdkafka's in-process mock cluster
//! cargo run -p exactly-examples --features kafka --example kafka_consumer
//! # A real broker (scripts/services.sh up starts tansu on 127.0.0.1:19092)
//! KAFKA_BROKERS=127.0.0.1:19092 cargo run -p exactly-examples --features kafka --example kafka_consumer
//! ```
//!
//! It produces a few demo orders (some twice, one undecodable) to `exactly-demo-orders`,
//! consumes them in the group `exactly-demo`, prints what happened and exits. On a real
//! broker the topic and the group outlive the run: records an earlier, interrupted run left
//! uncommitted are handled too (`KAFKA_TOPIC` and `KAFKA_GROUP` choose others).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use exactly::kafka::Consumer;
use exactly::kafka::rdkafka::ClientConfig;
use exactly::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use exactly::kafka::rdkafka::client::DefaultClientContext;
use exactly::kafka::rdkafka::message::{Header, OwnedHeaders};
use exactly::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use exactly::kafka::testing::MockKafka;
use exactly::{Context, Message, Processor, SledStore, handler_fn};
use serde::Deserialize;

#[derive(Deserialize)]
struct Order {
    sku: String,
    quantity: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())).init();
    // The mock cluster lives as long as `_mock`.
    let (mock, brokers) = match std::env::var("KAFKA_BROKERS") {
        Ok(b) => (None, b),
        Err(_) => {
            let m = MockKafka::new(1)?;
            let b = m.bootstrap_servers().to_owned();
            (Some(m), b)
        }
    };
    let topic = std::env::var("KAFKA_TOPIC").unwrap_or_else(|_| "exactly-demo-orders".into());
    let group = std::env::var("KAFKA_GROUP").unwrap_or_else(|_| "exactly-demo".into());
    match &mock {
        Some(m) => m.create_topic(&topic, 3)?,
        None => create_topic(&brokers, &topic, 3).await?,
    }
    let store_dir = std::env::var("EXACTLY_STORE").unwrap_or_else(|_| "target/exactly-demo-orders-store".into());

    let handled = Arc::new(AtomicU64::new(0));
    let h = handled.clone();
    let recorder = handler_fn(move |msg: Message, ctx: Context| {
        let h = h.clone();
        async move {
            let order: Order = msg.decode()?;
            let reserved: u32 = ctx.state().get_json(&order.sku).await?.unwrap_or(0);
            ctx.state().put_json(&order.sku, &(reserved + order.quantity)).await?;
            tracing::info!(key = ctx.message_key(), sku = %order.sku, reserved = reserved + order.quantity, "reserved");
            h.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    });
    let processor = Processor::builder("orders", recorder).store(SledStore::open(&store_dir)?).build()?;
    let consumer = Consumer::builder(&brokers, &group).topic(&topic).build(processor)?;
    let (stop, stats) = (consumer.shutdown_handle(), consumer.stats());
    let running = tokio::spawn(consumer.run());

    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
    let run = std::process::id();
    let orders = [("apple", 3), ("pear", 1), ("apple", 2), ("fig", 7)];
    let mut sent = 0u64;
    for (i, (sku, quantity)) in orders.iter().enumerate() {
        let body = serde_json::to_vec(&serde_json::json!({"sku": sku, "quantity": quantity}))?;
        let copies = if i % 2 == 0 { 2 } else { 1 }; // a producer retry sends it twice
        for _ in 0..copies {
            send(&producer, &topic, &format!("order-{run}-{i}"), &body).await?;
            sent += 1;
        }
    }
    send(&producer, &topic, &format!("order-{run}-poison"), b"{ not json").await?;
    sent += 1;

    // Every record is either handled, a duplicate, or dead-lettered; wait for all of them.
    let seen = || stats.records.load(Ordering::Relaxed) + stats.skipped.load(Ordering::Relaxed);
    while seen() < sent || stats.dead_lettered.load(Ordering::Relaxed) < 1 {
        if running.is_finished() {
            return Ok(running.await??);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The stop waits for the last done-records to be durable and commits their offsets.
    stop.shutdown();
    running.await??;
    println!(
        "\nproduced {sent} records: the handler ran {} times, {} dead-lettered to {topic}.dlq (reason in header x-exactly-reason)",
        handled.load(Ordering::Relaxed),
        stats.dead_lettered.load(Ordering::Relaxed),
    );
    println!("store: {store_dir}");
    Ok(())
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    body: &[u8],
) -> Result<(), Box<dyn std::error::Error>> {
    let headers = OwnedHeaders::new().insert(Header { key: "idempotency-key", value: Some(key) });
    let rec = FutureRecord::to(topic).key(key).payload(body).headers(headers);
    producer.send(rec, Duration::from_secs(10)).await.map_err(|(e, _)| e)?;
    Ok(())
}

/// Creates the topic, or keeps it when it exists already.
async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), Box<dyn std::error::Error>> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let topics = [NewTopic::new(topic, partitions, TopicReplication::Fixed(1))];
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        match r {
            Ok(_) => {}
            Err((_, exactly::kafka::rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(format!("creating topic {t}: {e}").into()),
        }
    }
    Ok(())
}
