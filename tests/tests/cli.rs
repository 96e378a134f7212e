//! The `exactly` CLI end to end with a consumer binary: `exactly produce` sends a JSON-lines
//! file with duplicates, the app binary (`app_child`, the ledger handler) consumes it,
//! `exactly store stats` on its stopped store shows the right counts, and sending the same
//! messages again (`exactly replay` of a Kafka offset range, `exactly produce` of the same
//! file to RabbitMQ) causes no second effect. Against the real RabbitMQ and the tansu
//! Kafka-protocol broker (scripts/services.sh).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{AMQP_URL, App, cli, free_port, outcomes, ready, until};
use exactly::amqp::lapin::{Connection, ConnectionProperties};
use exactly::kafka::rdkafka::ClientConfig;
use exactly::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use exactly::kafka::rdkafka::client::DefaultClientContext;
use exactly_tests::{Credit, count_lines};

const KEYS: u64 = 300;

/// `KEYS` ledger credits as JSON lines, idempotency keys k0..k299.
fn messages(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("credits.jsonl");
    let text: String = (0..KEYS)
        .map(|k| {
            let credit = Credit { id: format!("k{k}"), account: k % 10, cents: 1 };
            let line =
                serde_json::json!({"payload": credit, "key": format!("k{k}"), "idempotency_key": format!("k{k}")});
            format!("{line}\n")
        })
        .collect();
    std::fs::write(&file, text).unwrap();
    file
}

/// `exactly produce --file file --duplicates 0.2 --seed seed <target...>`: (sent, sent twice).
fn produce(file: &Path, seed: &str, target: &[&str]) -> (u64, u64) {
    let mut args = vec!["produce", "--file", file.to_str().unwrap(), "--duplicates", "0.2", "--seed", seed];
    args.extend_from_slice(target);
    sent(&cli(&args))
}

/// "sent N messages: L lines, D of them twice" -> (N, D)
fn sent(summary: &str) -> (u64, u64) {
    let words: Vec<&str> = summary.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"sent"), "{summary}");
    (words[1].parse().unwrap(), words[5].parse().unwrap())
}

/// The `ledger` row of `exactly store stats`: done, dead-lettered, in flight.
fn ledger_row(store: &Path) -> Vec<u64> {
    let stats = cli(&["store", "--path", store.to_str().unwrap(), "stats"]);
    let row = stats.lines().find(|l| l.starts_with("ledger ")).unwrap_or_else(|| panic!("no ledger row: {stats}"));
    row.split_whitespace().skip(1).map(|n| n.parse().unwrap()).collect()
}

fn config(dir: &Path, port: u16, subscription: &str) -> std::path::PathBuf {
    let path = dir.join("app.toml");
    let text = format!(
        "shutdown_timeout = \"10s\"\n[store]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n{subscription}",
        dir.join("store").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the app until its `/metrics` counts `total` final outcomes (handled or duplicate;
/// a copy that found its key busy in another delivery comes back later), then stops it
/// with SIGTERM.
async fn consume(config: &Path, effects: &Path, port: u16, total: u64) -> std::collections::HashMap<String, u64> {
    let app = App::spawn(config, effects);
    ready(port, Duration::from_secs(60)).await;
    until(&format!("{total} outcomes"), Duration::from_secs(90), async || {
        let seen = outcomes(port).await;
        ["handled", "duplicate"].iter().filter_map(|o| seen.get(*o)).sum::<u64>() >= total
    })
    .await;
    let seen = outcomes(port).await;
    app.stop(Duration::from_secs(20));
    seen
}

fn assert_each_key_once(effects: &Path) {
    let fx = count_lines(effects);
    assert_eq!(fx.len() as u64, KEYS, "every key's effect happened");
    let doubled: Vec<_> = fx.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "no effect twice: {doubled:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_produce_consume_stats_and_a_replayed_range_has_no_second_effect() {
    let brokers = std::env::var("EXACTLY_KAFKA_BROKER")
        .expect("EXACTLY_KAFKA_BROKER is not set: run scripts/test.sh (it starts the tansu broker)");
    let tmp = tempfile::tempdir().unwrap();
    let topic = format!("cli-e2e-{}-{}", std::process::id(), free_port());
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    for r in admin
        .create_topics(&[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    let file = messages(tmp.path());
    let (n, twice) = produce(&file, "7", &["kafka", "--brokers", &brokers, "--topic", &topic]);
    assert_eq!(n, KEYS + twice);
    assert!(twice > 20, "the duplicate share was applied: {twice}");

    let port = free_port();
    let config = config(
        tmp.path(),
        port,
        &format!(
            "[kafka.ledger]\nbrokers = \"{brokers}\"\ngroup = \"{topic}-g\"\ntopics = [\"{topic}\"]\n[kafka.ledger.librdkafka]\n\"session.timeout.ms\" = \"6000\"\n"
        ),
    );
    let effects = tmp.path().join("effects.log");
    let seen = consume(&config, &effects, port, n).await;
    assert_eq!((seen.get("handled"), seen.get("duplicate")), (Some(&KEYS), Some(&twice)), "{seen:?}");
    assert_each_key_once(&effects);
    let store = tmp.path().join("store");
    assert_eq!(ledger_row(&store), [KEYS, 0, 0], "store stats: every key done");

    // Replay the first 40 offsets of every partition into the same topic: the consumer sees
    // them again (with their idempotency keys) and runs nothing.
    let replay = cli(&[
        "replay",
        "kafka",
        "--brokers",
        &brokers,
        "--from-topic",
        &topic,
        "--to-topic",
        &topic,
        "--from-offset",
        "0",
        "--to-offset",
        "40",
    ]);
    let copied: u64 = replay.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(copied, 120, "{replay}");
    let seen = consume(&config, &effects, port, copied).await;
    assert_eq!(seen.get("duplicate"), Some(&copied), "every replayed record is a duplicate: {seen:?}");
    assert_eq!(seen.get("handled").copied().unwrap_or(0), 0, "{seen:?}");
    assert_each_key_once(&effects);
    assert_eq!(ledger_row(&store), [KEYS, 0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_produce_consume_stats_and_the_same_file_again_has_no_second_effect() {
    let tmp = tempfile::tempdir().unwrap();
    let queue = format!("exactly-cli-e2e-{}", std::process::id());
    let port = free_port();
    let config = config(tmp.path(), port, &format!("[amqp.ledger]\nurl = \"{AMQP_URL}\"\nqueue = \"{queue}\"\n"));
    let effects = tmp.path().join("effects.log");
    // The consumer declares its queue: start it once so the messages have somewhere to go.
    let app = App::spawn(&config, &effects);
    ready(port, Duration::from_secs(30)).await;
    app.stop(Duration::from_secs(20));

    let file = messages(tmp.path());
    let target = ["amqp", "--url", AMQP_URL, "--routing-key", &queue];
    let (n, twice) = produce(&file, "7", &target);
    assert_eq!(n, KEYS + twice);
    let seen = consume(&config, &effects, port, n).await;
    assert_eq!((seen.get("handled"), seen.get("duplicate")), (Some(&KEYS), Some(&twice)), "{seen:?}");
    assert_each_key_once(&effects);
    let store = tmp.path().join("store");
    assert_eq!(ledger_row(&store), [KEYS, 0, 0], "store stats: every key done");

    // The same file again, with another duplicate draw: all duplicates, no effect.
    let (again, _) = produce(&file, "8", &target);
    let seen = consume(&config, &effects, port, again).await;
    assert_eq!(seen.get("duplicate"), Some(&again), "{seen:?}");
    assert_eq!(seen.get("handled").copied().unwrap_or(0), 0, "{seen:?}");
    assert_each_key_once(&effects);
    assert_eq!(ledger_row(&store), [KEYS, 0, 0]);

    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    exactly::amqp::Topology::declare().delete(&channel, &queue).await.unwrap();
}
