//! Runs every example as its doc comment says, against the local RabbitMQ, the tansu
//! Kafka-protocol broker and librdkafka's mock cluster, and checks what it prints.
//!
//! The example binaries are the ones `cargo test` / `cargo nextest run` build beside this
//! test (target/<profile>/examples/).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::example;

fn run(mut c: Command) -> String {
    let out: Output = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{:?}: {}\n{stdout}{}", c, out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

fn kafka_broker() -> String {
    std::env::var("EXACTLY_KAFKA_BROKER")
        .expect("EXACTLY_KAFKA_BROKER is not set: run scripts/test.sh (it starts the tansu broker)")
}

#[test]
fn quickstart_credits_each_payment_once() {
    let out = run(example("quickstart"));
    assert!(out.contains("first run:   handled 7, duplicates skipped 3, dead-lettered 1"), "{out}");
    assert!(out.contains("after restart, all 8 redelivered: handled 0, duplicates skipped 7, already dead-lettered 1"));
    assert!(out.contains("alice      7.75") && out.contains("bob        3.00") && out.contains("carol     40.00"));
    assert!(out.contains("19 published, 19 acknowledged, 0 unacknowledged"), "{out}");
}

#[test]
fn layers_rate_limit_the_handler_and_tag_its_logs_with_the_tenant() {
    let out = run(example("layers"));
    assert!(out.contains("handled 10, duplicates 1;"), "{out}");
    let calls: Vec<&str> = out.lines().filter(|l| l.contains("calling the fulfilment API")).collect();
    assert_eq!(calls.len(), 10, "the duplicate never reaches the layers: {out}");
    assert!(calls.iter().any(|l| l.contains("acme") && l.contains("fulfilment:o-2")), "{out}");
    assert!(calls.iter().any(|l| l.contains("globex") && l.contains("fulfilment:o-1")), "{out}");
}

#[test]
fn http_forward_charges_each_payment_once_across_a_crash() {
    // The example itself fails when a payment was charged twice or not at all.
    let out = run(example("http_forward"));
    assert!(out.contains("pay-3 -> ch_3 (the API replayed its first answer)"), "{out}");
    assert!(out.contains("6 charges for 6 payments, 1 repeated calls"), "{out}");
}

#[test]
fn kafka_consumer_on_the_mock_cluster_and_on_tansu() {
    let tmp = tempfile::tempdir().unwrap();
    let mut mock = example("kafka_consumer");
    mock.env("EXACTLY_STORE", tmp.path().join("mock"));
    let out = run(mock);
    assert!(out.contains("produced 7 records: the handler ran 4 times, 1 dead-lettered"), "{out}");

    // Its own topic and group: the broker outlives runs, and records an earlier run left
    // uncommitted in the default topic would be handled too.
    let id = format!("{}-{}", std::process::id(), tmp.path().file_name().unwrap().to_string_lossy());
    let mut real = example("kafka_consumer");
    real.env("EXACTLY_STORE", tmp.path().join("tansu"))
        .env("KAFKA_BROKERS", kafka_broker())
        .env("KAFKA_TOPIC", format!("examples-orders-{id}"))
        .env("KAFKA_GROUP", format!("examples-{id}"));
    let out = run(real);
    assert!(out.contains("produced 7 records: the handler ran 4 times, 1 dead-lettered"), "{out}");
}

#[test]
fn amqp_consumer_and_amqp_rpc_on_rabbitmq() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = example("amqp_consumer");
    c.env("EXACTLY_STORE", tmp.path().join("store"));
    let out = run(c);
    assert!(out.contains("published 7 messages: 7 deliveries acknowledged, 1 dead-lettered"), "{out}");

    let out = run(example("amqp_rpc"));
    assert!(out.contains("(cached: the card was not charged again)"), "{out}");
    assert!(out.contains("charges made: 1"), "{out}");
}

#[tokio::test]
async fn app_starts_is_ready_and_stops_on_sigterm() {
    use exactly::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use exactly::kafka::rdkafka::client::DefaultClientContext;
    use exactly::kafka::rdkafka::types::RDKafkaErrorCode;
    // The Kafka subscription's topic must exist for it to be assigned (and ready).
    let admin: AdminClient<DefaultClientContext> =
        exactly::kafka::rdkafka::ClientConfig::new().set("bootstrap.servers", kafka_broker()).create().unwrap();
    let topic = NewTopic::new("exactly-demo-app-orders", 3, TopicReplication::Fixed(1));
    for r in admin.create_topics(&[topic], &AdminOptions::new()).await.unwrap() {
        assert!(matches!(r, Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists))), "{r:?}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut c = example("app");
    c.env("EXACTLY_CONFIG", "app.toml")
        .env("EXACTLY_STORE__PATH", tmp.path().join("store"))
        .env("EXACTLY_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("EXACTLY_KAFKA__ORDERS__BROKERS", kafka_broker());
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    let ready = loop {
        let answer = std::net::TcpStream::connect(("127.0.0.1", port)).ok().and_then(|mut s| {
            use std::io::{Read, Write};
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
            let mut r = String::new();
            s.read_to_string(&mut r).ok()?;
            Some(r)
        });
        if answer.as_deref().is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
            break true;
        }
        if start.elapsed() > Duration::from_secs(90) || child.try_wait().unwrap().is_some() {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()), nix::sys::signal::SIGTERM)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(ready, "the app answered /readyz 200 (both subscriptions consuming) within 90 s");
    assert!(status.success(), "SIGTERM stops the app with status 0: {status}");
}

#[test]
fn payments_api_charges_once_however_often_the_client_retries() {
    // The example itself fails when the bank did not charge once per key.
    let out = run(example("payments_api"));
    assert!(out.contains("retry pay-1         -> 201 Created (replayed)"), "{out}");
    assert!(out.contains("pay-1, other amount -> 422 Unprocessable Entity"), "{out}");
    assert!(out.contains("POST without a key  -> 400 Bad Request"), "{out}");
    assert!(out.contains(r#"the bank charged: ["pay-1 acct-1 500", "pay-2 acct-1 500"]"#), "{out}");
}

#[test]
fn webhook_forward_hands_each_event_to_the_consumer_once() {
    // The example itself fails unless the consumer handled each event once.
    let out = run(example("webhook_forward"));
    assert_eq!(out.matches("-> 200 OK forwarded").count(), 3, "{out}");
    assert_eq!(out.matches("-> 200 OK already received").count(), 2, "{out}");
    assert!(out.contains("forged          -> 401 Unauthorized"), "{out}");
    assert!(out.contains("the consumer handled 3"), "{out}");
}
