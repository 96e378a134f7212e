//! A store shared by the instances of a group (the PostgreSQL store) holds each
//! partition's watermark: where one instance got to, another starts. That start is
//! committed to Kafka too, or the group's lag never reaches zero.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Runs, committed, counting, eventually, unique};
use exactly_core::{DedupStore, MemoryStore, Processor};
use exactly_kafka::Consumer;
use exactly_kafka::testing::MockKafka;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_from_the_shared_watermark_is_committed_to_kafka() {
    let kafka = MockKafka::new(1).unwrap();
    let (topic, group) = (unique("wm"), unique("g"));
    kafka.create_topic(&topic, 1).unwrap();
    for i in 0..10 {
        let k = format!("k{i}");
        kafka.produce(&topic, Some(0), Some(k.as_bytes()), b"1", &[("idempotency-key", k.as_str())]).await.unwrap();
    }
    // Another instance on this store handled offsets 0..10 and saved its watermark, then
    // died before its offsets reached Kafka.
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    store.meta_put(&format!("kafka/{group}/{topic}/0"), Bytes::copy_from_slice(&10i64.to_be_bytes())).await.unwrap();

    let runs = Runs::default();
    let processor = Processor::builder("c", counting(runs.clone())).shared_store(store).build().unwrap();
    let consumer = Consumer::builder(kafka.bootstrap_servers(), &group)
        .topic(&topic)
        .commit_interval(Duration::from_millis(50))
        .build(processor)
        .unwrap();
    let stop = consumer.shutdown_handle();
    let task = tokio::spawn(consumer.run());
    let servers = kafka.bootstrap_servers().to_owned();
    eventually("offset 10 committed", Duration::from_secs(30), || committed(&servers, &group, &topic, 1) == [10]).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    assert_eq!(runs.keys(), 0, "records below the watermark are not run again");
}
