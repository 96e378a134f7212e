//! The AMQP adapter against the real RabbitMQ on 127.0.0.1:5672.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Broker, Runs, eventually, header_i64, header_str, props_with_id, unique};
use exactly_amqp::lapin::BasicProperties;
use exactly_amqp::lapin::options::QueueDeclareOptions;
use exactly_amqp::lapin::types::{FieldTable, ShortString};
use exactly_amqp::{Consumer, header_names};
use exactly_core::{
    Context, CrashPoint, DedupStore, FaultInjector, HandlerError, KeySource, KeyStrategy, MemoryStore, Message,
    Processor, RetryPolicy, SledStore, StoreKey, handler_fn,
};

/// A handler that counts runs per key and credits the key in state.
fn counting(runs: Runs) -> impl exactly_core::Handler<Output = String> {
    handler_fn(move |_m: Message, ctx: Context| {
        let runs = runs.clone();
        async move {
            runs.hit(ctx.message_key());
            let n: i64 = ctx.state().get_json(ctx.message_key()).await?.unwrap_or(0);
            ctx.state().put_json(ctx.message_key(), &(n + 1)).await?;
            Ok(format!("done {}", ctx.message_key()))
        }
    })
}

/// A memory store's state value (its reads answer at once).
fn credited(store: &Arc<dyn DedupStore>, ns: &str, key: &str) -> i64 {
    use futures_util::FutureExt;
    store
        .state_get(&StoreKey::state(ns, key.as_bytes()))
        .now_or_never()
        .expect("a memory store answers at once")
        .unwrap()
        .map(|r| serde_json::from_slice(&r).unwrap())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_run_the_handler_once_and_every_message_is_acked() {
    let broker = Broker::connect().await;
    let queue = unique("dups");
    let runs = Runs::default();
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let processor = Processor::builder("dups", counting(runs.clone())).shared_store(store.clone()).build().unwrap();
    let consumer = Consumer::builder(common::url(), &queue).prefetch(32).build(processor).unwrap();
    let (stop, stats) = (consumer.shutdown_handle(), consumer.stats());
    let task = tokio::spawn(consumer.run());
    // Consuming means the queue is declared: a message published before that is dropped.
    eventually("the consumer to consume", Duration::from_secs(10), || stats.consuming.load(Ordering::Relaxed)).await;

    for i in 0..200 {
        let id = format!("id-{}", i % 150); // ids 0..50 are published twice
        broker.publish(&queue, id.as_bytes(), props_with_id(&id)).await;
    }
    eventually("200 acks", Duration::from_secs(30), || stats.acked.load(Ordering::Relaxed) >= 200).await;
    stop.shutdown();
    task.await.unwrap().unwrap();

    assert_eq!(runs.keys(), 150);
    assert_eq!(runs.max(), 1, "a handler ran twice for one message id");
    for i in 0..150 {
        assert_eq!(credited(&store, "dups", &format!("id-{i}")), 1);
    }
    assert_eq!(stats.deliveries.load(Ordering::Relaxed), 200);
    assert_eq!(broker.ready(&queue).await, 0, "after the consumer closed, nothing came back unacknowledged");
    broker.cleanup(&queue).await;
}

/// Crashes after the done-record of the keys it is told, like a process dying between
/// the store and the ack.
#[derive(Debug)]
struct DieBeforeAck(Vec<String>);

impl FaultInjector for DieBeforeAck {
    fn crash_at(&self, point: CrashPoint, key: Option<&str>) -> bool {
        point == CrashPoint::AfterDoneRecord && key.is_some_and(|k| self.0.iter().any(|d| d == k))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_done_but_not_acked_come_back_redelivered_and_are_not_run_again() {
    let broker = Broker::connect().await;
    let queue = unique("redeliver");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let runs = Runs::default();

    // The first consumer handles everything, but "dies" after the done-record of m-3
    // (before its ack): its connection goes, and unacked messages return to the queue.
    let processor = Processor::builder("redeliver", counting(runs.clone()))
        .store(SledStore::open(&path).unwrap())
        .faults(Arc::new(DieBeforeAck(vec!["m-3".into()])))
        .build()
        .unwrap();
    let first = Consumer::builder(common::url(), &queue).prefetch(1).build(processor).unwrap();
    let stats = first.stats();
    let task = tokio::spawn(first.run());
    // Consuming means the queue is declared: a message published before that is dropped.
    eventually("the consumer to consume", Duration::from_secs(10), || stats.consuming.load(Ordering::Relaxed)).await;
    for i in 0..10 {
        let id = format!("m-{i}");
        broker.publish(&queue, id.as_bytes(), props_with_id(&id)).await;
    }
    let err = task.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("injected crash"), "{err}");
    assert_eq!(runs.get("m-3"), 1);
    let ran_before: Vec<String> = (0..10).map(|i| format!("m-{i}")).filter(|k| runs.get(k) == 1).collect();

    // The second consumer, on the same store, gets m-3 again, flagged redelivered, and
    // acknowledges it without running the handler.
    let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let s = seen.clone();
    let keys = KeyStrategy::from_sources([KeySource::custom(move |m: &Message| {
        let id = m.message_id()?.to_owned();
        s.lock().unwrap().push((id.clone(), m.redelivered()));
        Some(id)
    })]);
    let processor = Processor::builder("redeliver", counting(runs.clone()))
        .store(SledStore::open(&path).unwrap())
        .keys(keys)
        .build()
        .unwrap();
    let second = Consumer::builder(common::url(), &queue).build(processor).unwrap();
    let (stop, stats) = (second.shutdown_handle(), second.stats());
    let task = tokio::spawn(second.run());
    eventually("the rest to be acked", Duration::from_secs(30), || {
        seen.lock().unwrap().iter().any(|(id, _)| id == "m-9") && stats.acked.load(Ordering::Relaxed) >= 10 - 3
    })
    .await;
    stop.shutdown();
    task.await.unwrap().unwrap();

    let seen = seen.lock().unwrap().clone();
    assert!(seen.contains(&("m-3".to_owned(), true)), "m-3 must come back flagged redelivered: {seen:?}");
    for k in &ran_before {
        assert_eq!(runs.get(k), 1, "{k} ran again after its done-record was written");
    }
    for i in 0..10 {
        assert_eq!(runs.get(&format!("m-{i}")), 1, "m-{i}");
    }
    assert_eq!(broker.ready(&queue).await, 0);
    broker.cleanup(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_keyless_and_failing_messages_are_dead_lettered_with_their_reason() {
    let broker = Broker::connect().await;
    let queue = unique("poison");
    let handler = handler_fn(|m: Message, _ctx: Context| async move {
        if m.payload_str() == Some("always fails") {
            return Err(HandlerError::transient("the ledger is down"));
        }
        let _n: u64 = m.decode()?;
        Ok(())
    });
    let processor = Processor::builder("poison", handler)
        .store(MemoryStore::new())
        .retry(RetryPolicy::exponential(Duration::from_millis(20), Duration::from_millis(100), 3).unwrap())
        .no_breaker()
        .build()
        .unwrap();
    let consumer = Consumer::builder(common::url(), &queue).build(processor).unwrap();
    let (stop, stats) = (consumer.shutdown_handle(), consumer.stats());
    let task = tokio::spawn(consumer.run());
    // Consuming means the queue is declared: a message published before that is dropped.
    eventually("the consumer to consume", Duration::from_secs(10), || stats.consuming.load(Ordering::Relaxed)).await;

    broker.publish(&queue, b"{not json", props_with_id("undecodable")).await;
    broker.publish(&queue, b"7", BasicProperties::default()).await; // no id, no header
    broker.publish(&queue, b"always fails", props_with_id("flaky")).await;
    broker.publish(&queue, b"42", props_with_id("fine")).await;
    eventually("3 dead-letters", Duration::from_secs(30), || stats.dead_lettered.load(Ordering::Relaxed) >= 3).await;
    eventually("4 acks", Duration::from_secs(10), || stats.acked.load(Ordering::Relaxed) >= 4).await;
    stop.shutdown();
    task.await.unwrap().unwrap();

    let dead = broker.drain(&format!("{queue}.dlq")).await;
    assert_eq!(dead.len(), 3, "exactly the three bad messages are dead-lettered");
    let mut by_reason: Vec<(String, i64, Vec<u8>)> = dead
        .iter()
        .map(|(p, body)| {
            (header_str(p, header_names::REASON).unwrap(), header_i64(p, header_names::ATTEMPTS).unwrap(), body.clone())
        })
        .collect();
    by_reason.sort();
    assert_eq!(by_reason[0].0, "decode");
    assert_eq!((by_reason[0].1, by_reason[0].2.as_slice()), (1, &b"{not json"[..]));
    assert_eq!(by_reason[1].0, "missing-key");
    assert_eq!(by_reason[2].0, "retries-exhausted");
    assert_eq!(by_reason[2].1, 3, "three attempts before giving up");
    let flaky = &dead
        .iter()
        .find(|(p, _)| header_str(p, header_names::REASON).as_deref() == Some("retries-exhausted"))
        .unwrap()
        .0;
    assert_eq!(header_str(flaky, header_names::LAST_ERROR).as_deref(), Some("the ledger is down"));
    assert_eq!(header_str(flaky, header_names::ORIGINAL_QUEUE).as_deref(), Some(queue.as_str()));
    assert_eq!(header_str(flaky, header_names::KEY).as_deref(), Some("flaky"));
    let ids: std::collections::HashSet<String> =
        dead.iter().map(|(p, _)| header_str(p, header_names::DEAD_LETTER_ID).unwrap()).collect();
    assert_eq!(ids.len(), 3, "each dead letter has an id of its own: {ids:?}");
    assert_eq!(flaky.message_id().as_ref().map(|s| s.as_str()), Some("flaky"));
    assert_eq!(broker.ready(&queue).await, 0, "nothing left unacknowledged");
    broker.cleanup(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_waits_in_a_retry_queue_and_comes_back() {
    let broker = Broker::connect().await;
    let queue = unique("retryq");
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let a = attempts.clone();
    let handler = handler_fn(move |_m: Message, ctx: Context| {
        let a = a.clone();
        async move {
            a.lock().unwrap().push(ctx.attempt());
            if ctx.attempt() == 1 {
                return Err(HandlerError::transient("busy downstream").retry_after(Duration::from_millis(1500)));
            }
            Ok(())
        }
    });
    let processor = Processor::builder("retryq", handler).store(MemoryStore::new()).no_breaker().build().unwrap();
    let consumer = Consumer::builder(common::url(), &queue).build(processor).unwrap();
    let (stop, stats) = (consumer.shutdown_handle(), consumer.stats());
    let task = tokio::spawn(consumer.run());
    // Consuming means the queue is declared: a message published before that is dropped.
    eventually("the consumer to consume", Duration::from_secs(10), || stats.consuming.load(Ordering::Relaxed)).await;
    broker.publish(&queue, b"x", props_with_id("r1")).await;
    eventually("the retry to succeed", Duration::from_secs(20), || attempts.lock().unwrap().len() >= 2).await;
    eventually("two acks", Duration::from_secs(5), || stats.acked.load(Ordering::Relaxed) >= 2).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2], "the retry copy carries the attempt count");
    assert_eq!(stats.requeued.load(Ordering::Relaxed), 1);
    assert_eq!(broker.ready(&queue).await, 0);
    assert_eq!(broker.ready(&format!("{queue}.retry.2s")).await, 0);
    broker.cleanup(&queue).await;
}

/// Closes the consumer's connection from the broker's side.
fn kill_connection_named(needle: &str) -> bool {
    let out =
        std::process::Command::new("rabbitmqctl").args(["list_connections", "-q", "pid", "client_properties"]).output();
    let Ok(out) = out else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut killed = false;
    for line in text.lines().filter(|l| l.contains(needle)) {
        if let Some(pid) = line.split_whitespace().next() {
            let status =
                std::process::Command::new("rabbitmqctl").args(["close_connection", pid, "test kill"]).status();
            killed |= status.is_ok_and(|s| s.success());
        }
    }
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_by_the_broker_is_reconnected_and_nothing_is_lost_or_doubled() {
    let broker = Broker::connect().await;
    let queue = unique("kill");
    let runs = Runs::default();
    let r = runs.clone();
    let handler = handler_fn(move |_m: Message, ctx: Context| {
        let r = r.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            r.hit(ctx.message_key());
            let n: i64 = ctx.state().get_json(ctx.message_key()).await?.unwrap_or(0);
            ctx.state().put_json(ctx.message_key(), &(n + 1)).await?;
            Ok(())
        }
    });
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let processor = Processor::builder("kill", handler).shared_store(store.clone()).build().unwrap();
    let tag = format!("tag-{queue}");
    let consumer = Consumer::builder(common::url(), &queue)
        .prefetch(16)
        .consumer_tag(&tag)
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .build(processor)
        .unwrap();
    let (stop, stats) = (consumer.shutdown_handle(), consumer.stats());
    let task = tokio::spawn(consumer.run());
    // Consuming means the queue is declared: a message published before that is dropped.
    eventually("the consumer to consume", Duration::from_secs(10), || stats.consuming.load(Ordering::Relaxed)).await;
    for i in 0..400 {
        let id = format!("k-{}", i % 300);
        broker.publish(&queue, id.as_bytes(), props_with_id(&id)).await;
    }
    eventually("some progress", Duration::from_secs(20), || stats.acked.load(Ordering::Relaxed) >= 50).await;
    assert!(kill_connection_named(&tag), "rabbitmqctl could not close the consumer's connection");
    eventually("a reconnection", Duration::from_secs(20), || stats.connections.load(Ordering::Relaxed) >= 2).await;
    let store2 = store.clone();
    eventually("every key credited", Duration::from_secs(60), || {
        (0..300).all(|i| credited(&store2, "kill", &format!("k-{i}")) == 1)
    })
    .await;
    // Let the redeliveries of the last unacked messages be answered as duplicates.
    eventually("the queue to empty", Duration::from_secs(30), || stats.acked.load(Ordering::Relaxed) >= 400).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    for i in 0..300 {
        assert_eq!(credited(&store, "kill", &format!("k-{i}")), 1, "k-{i}");
        assert_eq!(runs.get(&format!("k-{i}")), 1, "k-{i} ran twice");
    }
    assert_eq!(broker.ready(&queue).await, 0);
    broker.cleanup(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_request_gets_the_same_cached_reply() {
    let broker = Broker::connect().await;
    let queue = unique("rpc");
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let handler = handler_fn(move |_m: Message, _ctx: Context| {
        let r = r.clone();
        async move {
            let n = r.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(format!("receipt #{n}")) // a second run would answer differently
        }
    });
    let processor = Processor::builder("rpc", handler).store(MemoryStore::new()).build().unwrap();
    let consumer = Consumer::builder(common::url(), &queue).build(processor).unwrap();
    let (stop, stats) = (consumer.shutdown_handle(), consumer.stats());
    let task = tokio::spawn(consumer.run());
    // Consuming means the queue is declared: a message published before that is dropped.
    eventually("the consumer to consume", Duration::from_secs(10), || stats.consuming.load(Ordering::Relaxed)).await;
    let replies = unique("replies");
    broker
        .channel
        .queue_declare(ShortString::from(replies.as_str()), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    for corr in ["c1", "c2"] {
        let props = props_with_id("order-9")
            .with_reply_to(ShortString::from(replies.as_str()))
            .with_correlation_id(ShortString::from(corr));
        broker.publish(&queue, b"charge 10", props).await;
    }
    eventually("two replies", Duration::from_secs(20), || stats.replies.load(Ordering::Relaxed) >= 2).await;
    stop.shutdown();
    task.await.unwrap().unwrap();
    let mut got = broker.drain(&replies).await;
    assert_eq!(got.len(), 2);
    // The two replies are published concurrently, so their order is not fixed.
    got.sort_by_key(|(p, _)| p.correlation_id().as_ref().map(|c| c.to_string()));
    assert_eq!(got[0].1, b"receipt #1");
    assert_eq!(got[1].1, b"receipt #1", "the duplicate gets the cached answer");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let corr: Vec<_> = got.iter().map(|(p, _)| p.correlation_id().as_ref().map(|c| c.to_string())).collect();
    assert_eq!(corr, vec![Some("c1".into()), Some("c2".into())]);
    use exactly_amqp::lapin::types::AMQPValue;
    let mut cached: Vec<_> = got.iter().map(|(p, _)| common::header(p, header_names::CACHED).cloned()).collect();
    cached.sort_by_key(|v| format!("{v:?}"));
    assert_eq!(
        cached,
        vec![Some(AMQPValue::Boolean(false)), Some(AMQPValue::Boolean(true))],
        "one reply ran the handler, the other came from the cache"
    );
    let _ = broker.channel.queue_delete(ShortString::from(replies.as_str()), Default::default()).await;
    broker.cleanup(&queue).await;
}

#[tokio::test]
async fn a_wrong_url_or_refused_connection_is_a_clear_error() {
    let p = || {
        Processor::builder("c", handler_fn(|_m: Message, _c: Context| async { Ok(()) }))
            .store(MemoryStore::new())
            .build()
            .unwrap()
    };
    let err = Consumer::builder("http://nowhere", "q").build(p()).unwrap_err();
    assert!(err.to_string().contains("invalid AMQP URL"), "{err}");
    let err = Consumer::builder("amqp://u:secret@127.0.0.1:1/%2f", "q")
        .initial_connect_timeout(Duration::from_millis(300))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(50))
        .build(p())
        .unwrap()
        .run()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("cannot connect to amqp://u:***@127.0.0.1:1"), "{text}");
    assert!(!text.contains("secret"), "the password must not leak: {text}");
}

/// A consumer that cannot connect at start-up: `run` returns what went wrong, within
/// `limit`.
async fn start_fails(url: &str, connect_timeout: Duration, limit: Duration) -> (exactly_amqp::Error, Duration) {
    let p = Processor::builder("c", handler_fn(|_m: Message, _c: Context| async { Ok(()) }))
        .store(MemoryStore::new())
        .build()
        .unwrap();
    let consumer = Consumer::builder(url, "q").initial_connect_timeout(connect_timeout).build(p).unwrap();
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(limit, consumer.run())
        .await
        .unwrap_or_else(|_| panic!("{url}: still trying after {limit:?}"))
        .unwrap_err();
    (err, started.elapsed())
}

#[tokio::test]
async fn a_wrong_password_or_vhost_fails_at_once_not_after_the_connect_timeout() {
    // Retrying cannot fix either: the consumer stops on the first refusal, well before
    // its 60 s connect timeout.
    let (err, _) =
        start_fails("amqp://guest:wrong@127.0.0.1:5672/%2f", Duration::from_secs(60), Duration::from_secs(30)).await;
    let text = err.to_string();
    assert!(text.contains("refused the credentials"), "{text}");
    assert!(!text.contains("wrong"), "the password must not leak: {text}");
    let (err, _) = start_fails(
        "amqp://guest:guest@127.0.0.1:5672/no-such-vhost",
        Duration::from_secs(60),
        Duration::from_secs(30),
    )
    .await;
    let text = err.to_string();
    assert!(text.contains("vhost"), "{text}");
}

#[tokio::test]
async fn the_connect_timeout_holds_for_a_server_that_never_answers() {
    // A TCP port that accepts and then says nothing: an AMQP handshake that never ends.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || silent.incoming().take(50).map_while(Result::ok).collect::<Vec<_>>());
    let timeout = Duration::from_secs(2);
    let (err, waited) =
        start_fails(&format!("amqp://u:p@127.0.0.1:{port}/%2f"), timeout, Duration::from_secs(60)).await;
    assert!(matches!(err, exactly_amqp::Error::ConnectTimeout { .. }), "{err}");
    // A refused or silent broker is given up on at the timeout, not one backoff (up to
    // 30 s) or one hung handshake later. The slack is for a loaded machine.
    assert!(waited < timeout + Duration::from_secs(3), "gave up after {waited:?}");
    drop(held);
}
