//! Transactional consumers on librdkafka's mock cluster: a failed transaction is aborted
//! and its outputs go into the next one; a fatal one stops the consumer.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{eventually, produce_keys, unique};
use exactly_core::{Context, MemoryStore, Message, Processor, handler_fn};
use exactly_kafka::Consumer;
use exactly_kafka::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use exactly_kafka::testing::MockKafka;

fn transform() -> impl exactly_core::Handler<Output = ()> {
    handler_fn(|m: Message, ctx: Context| async move {
        let out = format!("{}:out", m.payload_str().unwrap_or(""));
        ctx.emit(
            exactly_core::OutboundRecord::new(format!("{}.out", m.coordinates().source), out)
                .key(ctx.message_key().to_owned()),
        );
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transaction_is_aborted_and_its_outputs_go_into_the_next_one() {
    let kafka = MockKafka::new(1).unwrap();
    let (topic, group) = (unique("txn"), unique("g"));
    kafka.create_topic(&topic, 2).unwrap();
    kafka.create_topic(&format!("{topic}.out"), 1).unwrap();
    produce_keys(&kafka, &topic, (0..60).map(|i| format!("t{}", i % 50))).await;
    // The first transactions fail at EndTxn: they are aborted, and their records and
    // offsets go into a later one.
    kafka.request_errors(
        RDKafkaApiKey::AddPartitionsToTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let p = Processor::builder("txn", transform()).store(MemoryStore::new()).build().unwrap();
    let c = Consumer::builder(kafka.bootstrap_servers(), &group)
        .topic(&topic)
        .transactional(unique("txn-id"))
        .commit_interval(Duration::from_millis(100))
        .build(p)
        .unwrap();
    let (stop, stats) = (c.shutdown_handle(), c.stats());
    let task = tokio::spawn(c.run());
    // The mock cluster accepts offsets sent to a transaction but does not show them to
    // OffsetFetch; the tansu test (real_broker.rs) checks the committed offsets.
    eventually("a committed transaction after the aborted one", Duration::from_secs(60), || {
        stats.transaction_aborts.load(std::sync::atomic::Ordering::Relaxed) >= 1
            && stats.commits.load(std::sync::atomic::Ordering::Relaxed) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    // The mock shows records of aborted transactions too: read until every key is there.
    let keys_of =
        |out: &[common::Read]| out.iter().filter_map(|(k, _, _)| k.clone()).collect::<std::collections::HashSet<_>>();
    let out =
        common::read_until(kafka.bootstrap_servers(), &format!("{topic}.out"), |got| keys_of(got).len() >= 50).await;
    assert_eq!(keys_of(&out).len(), 50, "every input key has its output");
    assert!(out.iter().all(|(_, _, h)| h.contains_key("idempotency-key")), "outputs carry derived keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_transaction_error_stops_the_consumer_with_that_error() {
    let kafka = MockKafka::new(1).unwrap();
    let (topic, group) = (unique("fatal"), unique("g"));
    kafka.create_topic(&topic, 1).unwrap();
    kafka.create_topic(&format!("{topic}.out"), 1).unwrap();
    produce_keys(&kafka, &topic, (0..5).map(|i| format!("f{i}"))).await;
    kafka.request_errors(RDKafkaApiKey::EndTxn, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_TXN_STATE]);
    let p = Processor::builder("fatal", transform()).store(MemoryStore::new()).build().unwrap();
    let c = Consumer::builder(kafka.bootstrap_servers(), &group)
        .topic(&topic)
        .transactional(unique("txn-id"))
        .commit_interval(Duration::from_millis(100))
        .build(p)
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(60), c.run()).await.expect("stops by itself").unwrap_err();
    assert!(matches!(err, exactly_kafka::Error::TransactionFatal { .. }), "{err}");
    assert!(err.to_string().contains("restart the consumer"), "{err}");
}
