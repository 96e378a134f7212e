//! The Kafka adapter against librdkafka's in-process mock cluster.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::{
    Runs, committed, consumer, counting, credited, eventually, produce_keys, read_all, slow_counting, unique,
};
use exactly_core::{Context, DedupStore, HandlerError, MemoryStore, Message, Processor, RetryPolicy, handler_fn};
use exactly_kafka::rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use exactly_kafka::testing::MockKafka;
use exactly_kafka::{Consumer, Ordering, header_names};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_keys_run_once_and_every_offset_is_committed() {
    let kafka = MockKafka::new(3).unwrap();
    let (topic, group) = (unique("dups"), unique("g"));
    kafka.create_topic(&topic, 4).unwrap();
    produce_keys(&kafka, &topic, (0..400).map(|i| format!("k{}", i % 300))).await;

    let runs = Runs::default();
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let p = Processor::builder("dups", counting(runs.clone())).shared_store(store.clone()).build().unwrap();
    let c = consumer(&kafka, &group, &topic, p);
    let (stop, stats) = (c.shutdown_handle(), c.stats());
    let task = tokio::spawn(c.run());
    eventually("400 records", Duration::from_secs(30), || {
        stats.records.load(std::sync::atomic::Ordering::Relaxed) >= 400
    })
    .await;
    eventually("300 keys", Duration::from_secs(30), || runs.keys() >= 300).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.shutdown();
    task.await.unwrap().unwrap();

    assert_eq!(runs.keys(), 300);
    assert_eq!(runs.doubled(), 0, "a key ran twice");
    for i in 0..300 {
        assert_eq!(credited(&store, "dups", &format!("k{i}")), 1);
    }
    let offsets: i64 = committed(kafka.bootstrap_servers(), &group, &topic, 4).iter().sum();
    assert_eq!(offsets, 400, "every record's offset is committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_resumes_from_the_committed_offsets() {
    let kafka = MockKafka::new(1).unwrap();
    let (topic, group) = (unique("restart"), unique("g"));
    kafka.create_topic(&topic, 3).unwrap();
    produce_keys(&kafka, &topic, (0..200).map(|i| format!("a{i}"))).await;
    let runs = Runs::default();
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let run = |runs: Runs, store: Arc<dyn DedupStore>| {
        let p = Processor::builder("restart", counting(runs)).shared_store(store).build().unwrap();
        consumer(&kafka, &group, &topic, p)
    };

    let c = run(runs.clone(), store.clone());
    let (stop, _) = (c.shutdown_handle(), c.stats());
    let task = tokio::spawn(c.run());
    eventually("the first 200", Duration::from_secs(30), || runs.keys() >= 200).await;
    stop.shutdown();
    task.await.unwrap().unwrap();

    produce_keys(&kafka, &topic, (0..100).map(|i| format!("b{i}"))).await;
    let c = run(runs.clone(), store.clone());
    let (stop, stats) = (c.shutdown_handle(), c.stats());
    let task = tokio::spawn(c.run());
    eventually("the next 100", Duration::from_secs(30), || runs.keys() >= 300).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    assert_eq!(runs.doubled(), 0);
    assert_eq!(
        stats.records.load(std::sync::atomic::Ordering::Relaxed),
        100,
        "the second consumer fetched only what came after the commit"
    );
}

/// With commits accepted again, a consumer of `group` on the same store runs for 3 s: it
/// must start at its local watermark (fetch nothing), and no key may have run twice.
async fn a_restart_on_the_same_store_fetches_nothing(
    kafka: &MockKafka,
    group: &str,
    topic: &str,
    namespace: &str,
    runs: &Runs,
    store: &Arc<dyn DedupStore>,
) {
    kafka.request_errors(RDKafkaApiKey::OffsetCommit, &[]);
    let p = Processor::builder(namespace, counting(runs.clone())).shared_store(store.clone()).build().unwrap();
    let c = consumer(kafka, group, topic, p);
    let (stop, stats) = (c.shutdown_handle(), c.stats());
    let task = tokio::spawn(c.run());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    assert_eq!(stats.records.load(std::sync::atomic::Ordering::Relaxed), 0, "started at the local watermark");
    assert_eq!(runs.doubled(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_commits_are_lost_the_local_watermark_avoids_reprocessing() {
    let kafka = MockKafka::new(1).unwrap();
    let (topic, group) = (unique("lost"), unique("g"));
    kafka.create_topic(&topic, 2).unwrap();
    produce_keys(&kafka, &topic, (0..100).map(|i| format!("x{i}"))).await;
    // Every offset commit fails: the broker never learns how far the consumer got.
    kafka.request_errors(RDKafkaApiKey::OffsetCommit, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 500]);
    let runs = Runs::default();
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let p = Processor::builder("lost", counting(runs.clone())).shared_store(store.clone()).build().unwrap();
    let c = consumer(&kafka, &group, &topic, p);
    let stop = c.shutdown_handle();
    let task = tokio::spawn(c.run());
    eventually("100 records", Duration::from_secs(30), || runs.keys() >= 100).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    assert!(committed(kafka.bootstrap_servers(), &group, &topic, 2).iter().sum::<i64>() < 100, "commits were refused");

    a_restart_on_the_same_store_fetches_nothing(&kafka, &group, &topic, "lost", &runs, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_keyed_by_position_are_done_by_the_watermark_with_their_state() {
    // No idempotency-key header: each record's key is topic/partition/offset, and the
    // partition watermark, written with the handler's state, is its done-record.
    let kafka = MockKafka::new(1).unwrap();
    let (topic, group) = (unique("pos"), unique("g"));
    kafka.create_topic(&topic, 2).unwrap();
    kafka.create_topic(&format!("{topic}.dlq"), 1).unwrap();
    for i in 0..60 {
        let payload = if i % 20 == 7 { "poison".to_owned() } else { format!("p{i}") };
        kafka.produce(&topic, Some(i % 2), None, payload.as_bytes(), &[]).await.unwrap();
    }
    // Commits are refused: only the local watermark knows how far the consumer got.
    kafka.request_errors(RDKafkaApiKey::OffsetCommit, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 500]);
    let runs = Runs::default();
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let p = Processor::builder("pos", counting(runs.clone())).shared_store(store.clone()).build().unwrap();
    let c = consumer(&kafka, &group, &topic, p);
    let (stop, stats) = (c.shutdown_handle(), c.stats());
    let task = tokio::spawn(c.run());
    eventually("57 handled and 3 dead-lettered", Duration::from_secs(30), || {
        runs.keys() >= 57 && stats.dead_lettered.load(std::sync::atomic::Ordering::Relaxed) >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    assert!(runs.keys() == 57 && runs.doubled() == 0, "{} keys, {} doubled", runs.keys(), runs.doubled());
    // Each record's state went in with the watermark: one credit per position.
    for (key, n) in &runs.counts() {
        assert!(key.starts_with(&format!("{topic}/")), "the key is the position: {key}");
        assert_eq!(*n, 1);
        assert_eq!(credited(&store, "pos", key), 1, "{key}");
    }
    let dead = read_all(kafka.bootstrap_servers(), &format!("{topic}.dlq"), 3).await;
    assert!(dead.iter().all(
        |(_, payload, h)| payload == b"poison" && h.get(header_names::REASON).map(String::as_str) == Some("decode")
    ));

    // A restart with the same store, the broker's offsets lost: nothing runs again.
    a_restart_on_the_same_store_fetches_nothing(&kafka, &group, &topic, "pos", &runs, &store).await;
}

/// A store that saw 30 records of a topic meets a new log under the same names (a topic
/// deleted and created again, another cluster) with `records` records and no committed
/// offsets: its saved watermark (30) must not make the consumer skip any of them.
async fn a_watermark_of_another_log_is_ignored(records: u64) {
    let (topic, group) = (unique("recreated"), unique("g"));
    let runs = Runs::default();
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let run = |kafka: &MockKafka| {
        let p = Processor::builder("re", counting(runs.clone())).shared_store(store.clone()).build().unwrap();
        let c = consumer(kafka, &group, &topic, p);
        (c.shutdown_handle(), c.stats(), tokio::spawn(c.run()))
    };
    let first = MockKafka::new(1).unwrap();
    first.create_topic(&topic, 1).unwrap();
    produce_keys(&first, &topic, (0..30).map(|i| format!("old{i}"))).await;
    let (stop, _, task) = run(&first);
    eventually("30 records", Duration::from_secs(30), || runs.keys() >= 30).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    drop(first);

    let second = MockKafka::new(1).unwrap();
    second.create_topic(&topic, 1).unwrap();
    produce_keys(&second, &topic, (0..records).map(|i| format!("new{i}"))).await;
    let (stop, stats, task) = run(&second);
    let want = 30 + usize::try_from(records).unwrap();
    eventually(&format!("the {records} new records"), Duration::from_secs(30), || runs.keys() >= want).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    assert_eq!(runs.doubled(), 0);
    assert_eq!(stats.skipped.load(Relaxed), 0, "no record of the new log was taken for done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_watermark_past_the_end_of_a_recreated_topic_is_ignored() {
    a_watermark_of_another_log_is_ignored(10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_watermark_inside_a_recreated_topic_is_ignored_too() {
    // The new log is longer than the old watermark: only the record the store anchored
    // the watermark to (its offset and fingerprint) tells the two logs apart.
    a_watermark_of_another_log_is_ignored(50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_goes_to_the_dead_letter_topic_with_headers() {
    let kafka = MockKafka::new(1).unwrap();
    let (topic, group) = (unique("poison"), unique("g"));
    kafka.create_topic(&topic, 1).unwrap();
    kafka.create_topic(&format!("{topic}.dlq"), 1).unwrap();
    kafka.produce(&topic, None, Some(b"k1"), b"fine", &[("idempotency-key", "ok-1")]).await.unwrap();
    let (_, offset) =
        kafka.produce(&topic, None, Some(b"k2"), b"poison", &[("idempotency-key", "bad-1")]).await.unwrap();
    kafka.produce(&topic, None, Some(b"k3"), b"fine", &[("idempotency-key", "ok-2")]).await.unwrap();
    let runs = Runs::default();
    let p = Processor::builder("poison", counting(runs.clone())).store(MemoryStore::new()).build().unwrap();
    let c = consumer(&kafka, &group, &topic, p);
    let (stop, stats) = (c.shutdown_handle(), c.stats());
    let task = tokio::spawn(c.run());
    eventually("the dead-letter", Duration::from_secs(30), || {
        stats.dead_lettered.load(std::sync::atomic::Ordering::Relaxed) >= 1 && runs.keys() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    let dead = read_all(kafka.bootstrap_servers(), &format!("{topic}.dlq"), 1).await;
    let (key, payload, h) = &dead[0];
    assert_eq!((key.as_deref(), payload.as_slice()), (Some(&b"k2"[..]), &b"poison"[..]));
    assert_eq!(h[header_names::REASON], "decode");
    assert_eq!(h[header_names::ATTEMPTS], "1");
    assert_eq!(h[header_names::KEY], "bad-1");
    assert_eq!(h[header_names::DEAD_LETTER_ID].len(), 32, "a dead-letter id");
    assert_eq!(h[header_names::ORIGINAL_TOPIC], topic);
    assert_eq!(h[header_names::ORIGINAL_PARTITION], "0");
    assert_eq!(h[header_names::ORIGINAL_OFFSET], offset.to_string());
    assert!(h.contains_key(header_names::LAST_ERROR) && h.contains_key(header_names::ORIGINAL_TIMESTAMP));
    assert_eq!(h["idempotency-key"], "bad-1", "the original headers are kept");
    assert_eq!(
        committed(kafka.bootstrap_servers(), &group, &topic, 1),
        vec![3],
        "the poison record's offset is passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_broker_errors_are_retried_and_nothing_is_lost() {
    let kafka = MockKafka::new(3).unwrap();
    let (topic, group) = (unique("faults"), unique("g"));
    kafka.create_topic(&topic, 6).unwrap();
    produce_keys(&kafka, &topic, (0..300).map(|i| format!("f{i}"))).await;
    kafka.request_errors(
        RDKafkaApiKey::Fetch,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        ],
    );
    kafka.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ],
    );
    kafka.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION]);
    let runs = Runs::default();
    let p = Processor::builder("faults", counting(runs.clone())).store(MemoryStore::new()).build().unwrap();
    let c = consumer(&kafka, &group, &topic, p);
    let stop = c.shutdown_handle();
    let task = tokio::spawn(c.run());
    eventually("300 keys despite the faults", Duration::from_secs(60), || runs.keys() >= 300).await;
    eventually("all offsets committed", Duration::from_secs(30), || {
        committed(kafka.bootstrap_servers(), &group, &topic, 6).iter().sum::<i64>() == 300
    })
    .await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    assert_eq!(runs.doubled(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_ordered_mode_parks_only_the_failing_key_and_keeps_the_commit_below_it() {
    let kafka = MockKafka::new(1).unwrap();
    let (topic, group) = (unique("keyed"), unique("g"));
    kafka.create_topic(&topic, 1).unwrap();
    // One partition: a, b, a, c, a. Key a's first record fails for a while.
    for (i, k) in ["a", "b", "a", "c", "a"].iter().enumerate() {
        let id = format!("{k}-{i}");
        kafka
            .produce(&topic, Some(0), Some(k.as_bytes()), id.as_bytes(), &[("idempotency-key", id.as_str())])
            .await
            .unwrap();
    }
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Key a's first record fails until the test lets it pass: the retry delays are
    // jittered down to 1 ms, so a fixed number of failures could end before the test
    // looks at the commit.
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (o, r) = (order.clone(), release.clone());
    let handler = handler_fn(move |m: Message, ctx: Context| {
        let (o, r) = (o.clone(), r.clone());
        async move {
            let id = m.payload_str().unwrap_or("").to_owned();
            if id == "a-0" && !r.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(HandlerError::transient("not yet"));
            }
            o.lock().unwrap().push(format!("{id}@{}", ctx.attempt()));
            Ok(())
        }
    });
    let p = Processor::builder("keyed", handler)
        .store(MemoryStore::new())
        .retry(RetryPolicy::exponential(Duration::from_millis(50), Duration::from_millis(100), 100_000).unwrap())
        .no_breaker()
        .build()
        .unwrap();
    let c = Consumer::builder(kafka.bootstrap_servers(), &group)
        .topic(&topic)
        .ordering(Ordering::Key)
        .commit_interval(Duration::from_millis(50))
        .build(p)
        .unwrap();
    let stop = c.shutdown_handle();
    let task = tokio::spawn(c.run());
    eventually("b and c", Duration::from_secs(30), || order.lock().unwrap().len() >= 2).await;
    assert_eq!(*order.lock().unwrap(), vec!["b-1@1".to_owned(), "c-3@1".to_owned()], "other keys did not wait for a");
    // Several commit intervals while a-0 is still failing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        committed(kafka.bootstrap_servers(), &group, &topic, 1),
        vec![0],
        "the commit stays below the parked record"
    );
    assert_eq!(order.lock().unwrap().len(), 2, "key a's later records wait behind a-0");
    release.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually("all five", Duration::from_secs(30), || order.lock().unwrap().len() >= 5).await;
    let got = order.lock().unwrap().clone();
    let ids: Vec<&str> = got.iter().map(|s| s.split('@').next().unwrap_or("")).collect();
    assert_eq!(&ids[2..], ["a-0", "a-2", "a-4"], "key a stays in order");
    assert_ne!(got[2], "a-0@1", "a-0 was retried, not run once");
    eventually("the commit past everything", Duration::from_secs(10), || {
        committed(kafka.bootstrap_servers(), &group, &topic, 1) == vec![5]
    })
    .await;
    stop.shutdown();
    task.await.unwrap().unwrap();
}

/// Dies right after the done-record of one key, before its offset is committed.
#[derive(Debug)]
struct DieAfterDone(&'static str);

impl exactly_core::FaultInjector for DieAfterDone {
    fn crash_at(&self, point: exactly_core::CrashPoint, key: Option<&str>) -> bool {
        point == exactly_core::CrashPoint::AfterDoneRecord && key == Some(self.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_done_but_not_committed_is_redelivered_and_skipped_as_a_duplicate() {
    let kafka = MockKafka::new(1).unwrap();
    let (topic, group) = (unique("crash"), unique("g"));
    kafka.create_topic(&topic, 1).unwrap();
    produce_keys(&kafka, &topic, (0..50).map(|i| format!("c{i}"))).await;
    let runs = Runs::default();
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let p = Processor::builder("crash", counting(runs.clone()))
        .shared_store(store.clone())
        .faults(Arc::new(DieAfterDone("c20")))
        .build()
        .unwrap();
    let err = consumer(&kafka, &group, &topic, p).run().await.unwrap_err();
    assert!(err.to_string().contains("injected crash"), "{err}");
    assert_eq!(runs.get("c20"), 1);
    let after_crash = committed(kafka.bootstrap_servers(), &group, &topic, 1)[0];
    assert!(after_crash <= 20, "c20's offset must not be committed: {after_crash}");

    let p = Processor::builder("crash", counting(runs.clone())).shared_store(store.clone()).build().unwrap();
    let c = consumer(&kafka, &group, &topic, p);
    let (stop, stats) = (c.shutdown_handle(), c.stats());
    let task = tokio::spawn(c.run());
    eventually("the rest", Duration::from_secs(30), || runs.keys() >= 50).await;
    eventually("the commit", Duration::from_secs(10), || {
        committed(kafka.bootstrap_servers(), &group, &topic, 1)[0] == 50
    })
    .await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    assert!(stats.records.load(std::sync::atomic::Ordering::Relaxed) >= 50 - u64::try_from(after_crash).unwrap());
    assert_eq!(runs.get("c20"), 1, "redelivered after the crash, answered from the store");
    assert_eq!(runs.doubled(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_consumer_task_lets_go_without_hanging() {
    // A consumer dropped without a graceful stop (its task aborted, as an app does after
    // its shutdown deadline, or a runtime shut down) must not hang the process.
    let kafka = MockKafka::new(1).unwrap();
    let (topic, group) = (unique("abort"), unique("g"));
    kafka.create_topic(&topic, 3).unwrap();
    produce_keys(&kafka, &topic, (0..300).map(|i| format!("a{i}"))).await;
    let runs = Runs::default();
    let p = Processor::builder("abort", slow_counting(runs.clone())).store(MemoryStore::new()).build().unwrap();
    let task = tokio::spawn(consumer(&kafka, &group, &topic, p).run());
    eventually("records flowing", Duration::from_secs(30), || runs.keys() >= 20).await;
    task.abort();
    let gone = tokio::time::timeout(Duration::from_secs(30), task).await;
    assert!(gone.is_ok(), "the aborted consumer task ended");
    // Its partition workers stopped with it: no record runs in the background.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = runs.total();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(runs.total(), after, "records still handled after the consumer was dropped");
    assert!(runs.keys() < 300, "the abort came mid-stream");
}
