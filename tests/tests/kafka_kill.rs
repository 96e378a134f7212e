//! A Kafka consumer process is killed with SIGKILL mid-stream and a new process takes
//! over its partitions on the same store (a replacement on the same volume). Against the
//! real Kafka-protocol broker started by scripts/services.sh (EXACTLY_KAFKA_BROKER).
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use exactly::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use exactly::kafka::rdkafka::client::DefaultClientContext;
use exactly::kafka::rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use exactly::kafka::rdkafka::message::{Header, Headers as _, OwnedHeaders};
use exactly::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use exactly::kafka::rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use exactly_tests::{ACCOUNTS, count_lines, payload, state_i64};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const RECORDS: u64 = 3_000;
const UNIQUE: u64 = 2_400;
const PARTITIONS: i32 = 6;

fn poison(k: u64) -> bool {
    k % 50 == 7
}

fn broker() -> String {
    std::env::var("EXACTLY_KAFKA_BROKER")
        .expect("EXACTLY_KAFKA_BROKER is not set: run scripts/test.sh (it starts the tansu broker)")
}

fn child(brokers: &str, topic: &str, group: &str, dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kafka_child"))
        .args(["--brokers", brokers, "--topic", topic, "--group", group, "--dir", dir.to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_is_replaced_and_every_key_is_credited_once() {
    let brokers = broker();
    let run = format!("{}-{}", std::process::id(), Instant::now().elapsed().as_nanos());
    let (topic, group) = (format!("kill-{run}"), format!("kill-g-{run}"));
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let created = admin
        .create_topics(
            &[
                NewTopic::new(&topic, PARTITIONS, TopicReplication::Fixed(1)),
                NewTopic::new(&format!("{topic}.dlq"), 1, TopicReplication::Fixed(1)),
            ],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    for r in created {
        r.unwrap();
    }
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let mut pending = Vec::new();
    for i in 0..RECORDS {
        let k = i % UNIQUE; // later records repeat earlier keys
        let key = format!("k{k}");
        let headers = OwnedHeaders::new().insert(Header { key: "idempotency-key", value: Some(key.as_str()) });
        let body = payload(k, poison(k));
        let rec = FutureRecord::to(&topic).key(key.as_bytes()).payload(&body).headers(headers);
        pending.push(producer.send_result(rec).map_err(|(e, _)| e).unwrap());
    }
    for d in pending {
        d.await.unwrap().unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let effects = dir.path().join("effects.log");
    let good: Vec<u64> = (0..UNIQUE).filter(|k| !poison(*k)).collect();

    let mut first = child(&brokers, &topic, &group, dir.path());
    wait_for("the first consumer to get going", Duration::from_secs(60), || count_lines(&effects).len() >= 700);
    kill(Pid::from_raw(i32::try_from(first.id()).unwrap()), Signal::SIGKILL).unwrap();
    first.wait().unwrap();
    let seen_before = count_lines(&effects).len();

    let mut second = child(&brokers, &topic, &group, dir.path());
    wait_for("every key", Duration::from_secs(120), || count_lines(&effects).len() >= good.len());
    std::thread::sleep(Duration::from_secs(1)); // duplicates and poison records still in flight
    kill(Pid::from_raw(i32::try_from(second.id()).unwrap()), Signal::SIGTERM).unwrap();
    let status = second.wait().unwrap();
    assert!(status.success(), "graceful stop: {status}");

    let store = exactly::SledStore::open(dir.path().join("store")).unwrap();
    for k in &good {
        assert_eq!(state_i64(&store, &format!("applied/k{k}")), 1, "k{k} credited a wrong number of times");
    }
    let total: i64 = (0..ACCOUNTS).map(|a| state_i64(&store, &format!("account/{a}"))).sum();
    assert_eq!(total, i64::try_from(good.len()).unwrap());
    let fx = count_lines(&effects);
    let doubled = fx.values().filter(|&&n| n > 1).count();
    eprintln!("killed after {seen_before} keys; external effects repeated for {doubled} keys");

    // Every offset committed, every poison key dead-lettered.
    let c: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", &group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(&topic, p);
    }
    let committed: i64 = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 })
        .sum();
    assert_eq!(committed, i64::try_from(RECORDS).unwrap(), "every record's offset is committed");
    let dlq: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("dlq-{run}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dlq.subscribe(&[&format!("{topic}.dlq")]).unwrap();
    let mut dead = std::collections::HashSet::new();
    let want: std::collections::HashSet<String> = (0..UNIQUE).filter(|k| poison(*k)).map(|k| format!("k{k}")).collect();
    while !want.is_subset(&dead) {
        let m = tokio::time::timeout(Duration::from_secs(30), dlq.recv()).await.expect("dead-letters").unwrap();
        let reason = m.headers().and_then(|h| h.iter().find(|h| h.key == "x-exactly-reason")).and_then(|h| h.value);
        assert_eq!(reason, Some(&b"decode"[..]));
        dead.insert(String::from_utf8_lossy(m.key().unwrap()).into_owned());
    }
}
