//! Consumers joining a group mid-stream on librdkafka's mock cluster: the partitions
//! are shared, and no key runs twice (eager and cooperative-sticky rebalances).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::{Runs, consumer, credited, eventually, produce_keys, slow_counting, unique};
use exactly_core::{DedupStore, MemoryStore, Processor};
use exactly_kafka::Consumer;
use exactly_kafka::testing::MockKafka;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_consumer_joining_mid_stream_shares_the_work_and_no_key_runs_twice() {
    second_consumer_joins(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_with_cooperative_sticky_incremental_rebalances() {
    second_consumer_joins(Some("cooperative-sticky")).await;
}

async fn second_consumer_joins(strategy: Option<&str>) {
    common::logs();
    let consumer = |kafka: &MockKafka, group: &str, topic: &str, p: Processor| match strategy {
        None => consumer(kafka, group, topic, p),
        Some(s) => Consumer::builder(kafka.bootstrap_servers(), group)
            .topic(topic)
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "200")
            .set("partition.assignment.strategy", s)
            .commit_interval(Duration::from_millis(50))
            .build(p)
            .unwrap(),
    };
    let kafka = MockKafka::new(3).unwrap();
    let (topic, group) = (unique("rebal"), unique("g"));
    kafka.create_topic(&topic, 6).unwrap();
    // Cooperative rebalances take the mock coordinator a few seconds: more records keep
    // the first consumer busy until the second one has its partitions.
    let n = if strategy.is_some() { 3000 } else { 600 };
    produce_keys(&kafka, &topic, (0..n).map(|i| format!("r{i}"))).await;
    let runs = Runs::default();
    // One store for both, as two consumers of one process would share it: the dedup
    // state covers records a rebalance hands from one to the other.
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let a = consumer(
        &kafka,
        &group,
        &topic,
        Processor::builder("rebal", slow_counting(runs.clone())).shared_store(store.clone()).build().unwrap(),
    );
    let (stop_a, stats_a) = (a.shutdown_handle(), a.stats());
    let task_a = tokio::spawn(a.run());
    eventually("a head start", Duration::from_secs(30), || runs.keys() >= 60).await;
    assert!(stats_a.joined.load(Relaxed), "records flow only after the first assignment");
    assert_eq!(stats_a.assigned.load(Relaxed), 6, "alone in the group, it has every partition");
    let b = consumer(
        &kafka,
        &group,
        &topic,
        Processor::builder("rebal", slow_counting(runs.clone())).shared_store(store.clone()).build().unwrap(),
    );
    let (stop_b, stats_b) = (b.shutdown_handle(), b.stats());
    let task_b = tokio::spawn(b.run());
    eventually("every key", Duration::from_secs(90), || runs.keys() >= n).await;
    eventually("the partitions shared", Duration::from_secs(30), || {
        let (a, b) = (stats_a.assigned.load(Relaxed), stats_b.assigned.load(Relaxed));
        a > 0 && b > 0 && a + b == 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_a.shutdown();
    stop_b.shutdown();
    for task in [task_a, task_b] {
        tokio::time::timeout(Duration::from_secs(40), task).await.expect("the consumer stops").unwrap().unwrap();
    }
    assert!(stats_b.records.load(Relaxed) > 0, "the second consumer got partitions");
    assert!(stats_a.records.load(Relaxed) > 0);
    assert_eq!(runs.doubled(), 0, "a key ran twice across the rebalance");
    for i in 0..n {
        assert_eq!(credited(&store, "rebal", &format!("r{i}")), 1);
    }
}
