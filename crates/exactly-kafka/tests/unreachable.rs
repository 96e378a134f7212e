//! A consumer whose brokers cannot be reached: logs a person can read, readiness that
//! says for how long, and an optional deadline after which it gives up.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use exactly_core::{Context, MemoryStore, Message, Processor, SubscriptionStatus, handler_fn};
use exactly_kafka::Consumer;

/// Log lines written by the subscriber under test.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn processor() -> Processor {
    Processor::builder("c", handler_fn(|_m: Message, _c: Context| async { Ok(()) }))
        .store(MemoryStore::new())
        .build()
        .unwrap()
}

// One thread: the subscriber set for this test sees the consumer's logs.
#[tokio::test(flavor = "current_thread")]
async fn an_unreachable_broker_is_logged_at_a_readable_rate_and_readiness_says_for_how_long() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let consumer = Consumer::builder("127.0.0.1:1", "g").topic("t").build(processor()).unwrap();
    let (stop, stats) = (consumer.shutdown_handle(), consumer.stats());
    let run = tokio::spawn(consumer.run());
    tokio::time::sleep(Duration::from_secs(8)).await;
    let detail = stats.detail().unwrap_or_default();
    stop.shutdown();
    tokio::time::timeout(Duration::from_secs(60), run).await.unwrap().unwrap().unwrap();

    let text = logs.text();
    let warnings = text.lines().filter(|l| l.contains("WARN")).count();
    assert!(warnings >= 1, "the outage was logged: {text}");
    // One line when it starts, then one every 30 s (with how long and how many errors).
    assert!(warnings <= 3, "{warnings} warnings in 8 s:\n{text}");
    assert!(!stats.ready());
    assert!(detail.contains("unreachable for"), "readiness says how long: {detail:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_past_the_deadline_stops_the_consumer() {
    let consumer = Consumer::builder("127.0.0.1:1", "g")
        .topic("t")
        .unreachable_timeout(Duration::from_secs(2))
        .build(processor())
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(60), consumer.run()).await.unwrap().unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, exactly_kafka::Error::Unreachable { .. }), "{text}");
    assert!(text.contains("127.0.0.1:1") && text.contains("unreachable for"), "{text}");
}
