//! The short version of the reliability harness (tests/src/bin/chaos), for every
//! submission: a few thousand messages per broker under SIGKILLs, a SIGSTOP, the store's
//! disk full and read-only (a tmpfs per consumer: the tests run as root, as CI does), a
//! dependency outage, and for RabbitMQ connection cuts; one run with two consumer processes
//! per broker; and on librdkafka's mock cluster (served over TCP by the harness) Kafka
//! brokers taken down and brought back while the consumer runs. These run on the default
//! store (sled) but for one run per broker on fjall, and one per broker with three
//! consumers sharing the PostgreSQL store while its sessions are terminated and its server
//! restarted. The long runs and their figures are in docs/RELIABILITY.md.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Runs the harness, passing its lines on as they come (so a run the test runner stops
/// for taking too long shows how far it got), and checks its verdict.
fn chaos(args: &[&str]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let echo = |stream: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                eprintln!("{line}");
                text.push_str(&line);
                text.push('\n');
            }
            text
        })
    };
    let (out, err) = (echo(Box::new(stdout)), echo(Box::new(stderr)));
    let status = child.wait().unwrap();
    let text = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "chaos {args:?} failed: {status}\n{text}");
    assert!(text.contains("chaos: PASS"), "{text}");
}

#[test]
fn amqp_one_consumer_under_kills_a_stop_connection_cuts_and_disk_faults() {
    chaos(&[
        "--broker",
        "amqp",
        "--messages",
        "4000",
        "--kills",
        "5",
        "--stops",
        "1",
        "--cuts",
        "2",
        "--disk-faults",
        "2",
        "--outages",
        "1",
        "--seed",
        "11",
    ]);
}

#[test]
fn amqp_two_consumers_on_one_queue() {
    chaos(&[
        "--broker",
        "amqp",
        "--messages",
        "3000",
        "--kills",
        "3",
        "--stops",
        "1",
        "--cuts",
        "1",
        "--consumers",
        "2",
        "--seed",
        "12",
    ]);
}

#[test]
fn kafka_one_consumer_under_kills_a_stop_and_disk_faults() {
    chaos(&[
        "--broker",
        "kafka",
        "--messages",
        "4000",
        "--kills",
        "5",
        "--stops",
        "1",
        "--disk-faults",
        "2",
        "--outages",
        "1",
        "--seed",
        "13",
    ]);
}

#[test]
fn kafka_two_consumers_in_one_group() {
    chaos(&[
        "--broker",
        "kafka",
        "--messages",
        "3000",
        "--kills",
        "3",
        "--stops",
        "1",
        "--consumers",
        "2",
        "--seed",
        "14",
    ]);
}

#[test]
fn kafka_mock_cluster_with_brokers_going_down() {
    chaos(&[
        "--broker",
        "kafka",
        "--kafka",
        "mock",
        "--messages",
        "4000",
        "--kills",
        "3",
        "--stops",
        "1",
        "--cuts",
        "4",
        "--outages",
        "1",
        "--seed",
        "15",
    ]);
}

/// A run on the fjall store: kills and disk faults, and whatever `extra` adds.
fn chaos_on_fjall(broker: &str, seed: &str, extra: &[&str]) {
    let args = ["--broker", broker, "--engine", "fjall", "--messages", "3000", "--kills", "4", "--disk-faults", "2"];
    chaos(&[&args[..], &["--seed", seed], extra].concat());
}

#[test]
fn amqp_fjall_store_under_kills_and_disk_faults() {
    chaos_on_fjall("amqp", "16", &["--cuts", "1"]);
}

#[test]
fn kafka_fjall_store_under_kills_and_disk_faults() {
    chaos_on_fjall("kafka", "17", &[]);
}

/// Three consumers sharing the PostgreSQL store under kills, a stop, a broker cut, their
/// database sessions terminated and the server restarted: no key lost or credited twice
/// across them, the balances add up, nothing left on the broker.
fn chaos_on_postgres(broker: &str, seed: &str, extra: &[&str]) {
    let args = [
        "--broker",
        broker,
        "--engine",
        "postgres",
        "--consumers",
        "3",
        "--messages",
        "3000",
        "--kills",
        "3",
        "--stops",
        "1",
        "--cuts",
        "1",
        "--db-faults",
        "2",
    ];
    chaos(&[&args[..], &["--seed", seed], extra].concat());
}

#[test]
fn amqp_three_consumers_on_postgres_under_kills_and_database_restarts() {
    chaos_on_postgres("amqp", "18", &[]);
}

#[test]
fn kafka_mock_three_consumers_on_postgres_under_kills_and_database_restarts() {
    chaos_on_postgres("kafka", "19", &["--kafka", "mock"]);
}
