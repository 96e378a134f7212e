//! `exactly_amqp_queue_depth`: the messages ready in the queue when consuming starts, as
//! the broker counts them (those delivered to the consumer and not yet acknowledged are
//! not counted). Its own test binary: it installs the process's metrics recorder.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Broker, props_with_id, unique, url};
use exactly_amqp::Consumer;
use exactly_core::{Context, MemoryStore, Message, Processor, handler_fn};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::sync::Semaphore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_depth_gauge_counts_the_messages_ready_in_the_queue() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).unwrap();
    let queue = unique("depth");
    let broker = Broker::connect().await;
    exactly_amqp::Topology::declare().apply(&broker.channel, &queue).await.unwrap();
    for i in 0..30 {
        broker.publish(&queue, b"{}", props_with_id(&format!("m{i}"))).await;
    }
    // The handler holds every message it gets: 10 are delivered (the prefetch), 20 wait.
    // Closed to release them: a closed semaphore lets every waiter, present and future, go.
    let release = Arc::new(Semaphore::new(0));
    let held = release.clone();
    let handler = handler_fn(move |_m: Message, _c: Context| {
        let held = held.clone();
        async move {
            let _closed = held.acquire().await;
            Ok(())
        }
    });
    let processor = Processor::builder("depth", handler).store(MemoryStore::new()).build().unwrap();
    let consumer = Consumer::builder(url(), &queue).prefetch(10).build(processor).unwrap();
    let stop = consumer.shutdown_handle();
    let running = tokio::spawn(consumer.run());

    let depth = || {
        snapshotter.snapshot().into_vec().into_iter().find_map(|(key, _, _, value)| {
            let k = key.key();
            let ours = k.name() == exactly_amqp::depth::QUEUE_DEPTH && k.labels().any(|l| l.value() == queue);
            match (ours, value) {
                (true, DebugValue::Gauge(g)) => Some(g.into_inner()),
                _ => None,
            }
        })
    };
    // Read when consuming starts (the gauge is 0 from its registration until then; each
    // snapshot of the debugging recorder takes the value and leaves 0); the prefetch may
    // still be on its way at that moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let first = loop {
        match depth() {
            Some(d) if d != 0.0 => break d,
            _ => assert!(tokio::time::Instant::now() < deadline, "the depth was read when consuming started"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!((20.0..=30.0).contains(&first), "ready messages, the prefetched 10 aside at most: {first}");
    // The broker's own count, once the prefetch has gone out: the same as the gauge's.
    while broker.ready(&queue).await != 20 {
        assert!(tokio::time::Instant::now() < deadline, "the prefetch of 10 was delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    release.close();
    stop.shutdown();
    let _ = running.await.unwrap();
    broker.cleanup(&queue).await;
}
