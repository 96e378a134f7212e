//! `exactly produce` against the real RabbitMQ and librdkafka's mock cluster.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use exactly_amqp::lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use exactly_amqp::lapin::types::FieldTable;
use exactly_amqp::lapin::{Connection, ConnectionProperties};
use exactly_kafka::rdkafka::ClientConfig;
use exactly_kafka::rdkafka::consumer::{Consumer as _, StreamConsumer};
use exactly_kafka::rdkafka::message::{Headers as _, Message as _};
use exactly_kafka::testing::MockKafka;

fn produce(file: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_exactly"))
        .args(["produce", "--file"])
        .arg(file)
        .args(args)
        .env_remove("KAFKA_BROKERS")
        .env_remove("AMQP_URL")
        .output()
        .unwrap()
}

/// 20 lines with idempotency keys k0..k19; returns the file.
fn lines(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("msgs.jsonl");
    let text: String = (0..20)
        .map(|i| format!("{{\"payload\": {{\"n\": {i}}}, \"key\": \"a{}\", \"idempotency_key\": \"k{i}\", \"headers\": {{\"source\": \"test\"}}}}\n", i % 3))
        .collect();
    std::fs::write(&file, text).unwrap();
    file
}

/// "sent N messages: 20 lines, D of them twice" -> (N, D)
fn summary(out: &Output) -> (u64, u64) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let words: Vec<&str> = text.split_whitespace().collect();
    (words[1].parse().unwrap(), words[5].parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produces_to_a_queue_with_the_asked_share_of_duplicates() {
    let tmp = tempfile::tempdir().unwrap();
    let queue = format!("exactly-cli-produce-{}", std::process::id());
    let conn =
        Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f", ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await.unwrap();
    let out = produce(&lines(tmp.path()), &["--duplicates", "0.5", "--seed", "7", "amqp", "--routing-key", &queue]);
    let (sent, twice) = summary(&out);
    assert_eq!(sent, 20 + twice);
    assert!(twice > 0 && twice < 20, "a 0.5 share of 20: {twice}");
    let q = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(u64::from(q.message_count()), sent);
    // The same seed sends the same stream.
    let again = produce(&lines(tmp.path()), &["--duplicates", "0.5", "--seed", "7", "amqp", "--routing-key", &queue]);
    assert_eq!(summary(&again), (sent, twice));
    channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produces_to_a_topic_with_keys_and_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let kafka = MockKafka::new(1).unwrap();
    kafka.create_topic("cli-in", 1).unwrap();
    let out = produce(&lines(tmp.path()), &["kafka", "--brokers", kafka.bootstrap_servers(), "--topic", "cli-in"]);
    assert_eq!(summary(&out), (20, 0));
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap_servers())
        .set("group.id", "cli-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&["cli-in"]).unwrap();
    for i in 0..20 {
        let m = tokio::time::timeout(Duration::from_secs(30), c.recv()).await.unwrap().unwrap();
        assert_eq!(m.payload(), Some(format!("{{\"n\":{i}}}").as_bytes()));
        assert_eq!(m.key(), Some(format!("a{}", i % 3).as_bytes()));
        let h = m.headers().unwrap();
        let find = |name: &str| h.iter().find(|x| x.key == name).and_then(|x| x.value).map(|v| v.to_vec());
        assert_eq!(find("idempotency-key"), Some(format!("k{i}").into_bytes()));
        assert_eq!(find("source"), Some(b"test".to_vec()));
    }
}

#[test]
fn a_bad_line_is_refused_with_its_number() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bad.jsonl");
    std::fs::write(&file, "{\"payload\": \"ok\"}\n\n{\"payload\": 1, \"colour\": \"red\"}\n").unwrap();
    let out = produce(&file, &["amqp", "--routing-key", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("colour"), "{err}");
}
