//! The short version of the reliability harness (tests/src/bin/chaos), for every
//! submission: a few thousand messages per broker under SIGKILLs, a SIGSTOP, the store's
//! disk full and read-only (a tmpfs per consumer: the tests run as root, as CI does), a
//! dependency outage, and for RabbitMQ connection cuts; one run with two consumer processes
//! per broker; and on librdkafka's mock cluster (served over TCP by the harness) Kafka
//! brokers taken down and brought back while the consumer runs. The long runs and their
//! figures are in docs/RELIABILITY.md.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn chaos(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_chaos")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success(), "chaos {args:?} failed: {}\n{text}", out.status);
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
