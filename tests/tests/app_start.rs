//! What a consumer binary written as the README shows (`fn main() -> Result<(),
//! exactly::app::Error>`) prints when it cannot start, and the RabbitMQ settings its
//! configuration reaches: real processes, the real RabbitMQ.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{AMQP_URL as URL, App, free_port, ready, until};
use exactly::amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use exactly::amqp::lapin::types::FieldTable;
use exactly::amqp::lapin::{BasicProperties, Connection, ConnectionProperties};
use exactly_tests::{count_lines, payload};

/// Runs `app_child` with `config` until it exits by itself (within `limit`); its exit
/// code, stdout and stderr. Output goes to files: a pipe nobody reads could fill.
fn run_to_exit(dir: &Path, config: &str, rust_log: &str, limit: Duration) -> (Option<i32>, String, String) {
    let file = dir.join("app.toml");
    std::fs::write(&file, config).unwrap();
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_app_child"))
        .env("EXACTLY_CONFIG", &file)
        .env("EFFECTS", dir.join("effects.log"))
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the app was still running after {limit:?}: {}", std::fs::read_to_string(&out).unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), std::fs::read_to_string(&out).unwrap(), std::fs::read_to_string(&err).unwrap())
}

fn store_and_http(dir: &Path) -> String {
    format!("[store]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n", dir.join("store").display(), free_port())
}

#[test]
fn a_failed_start_prints_one_readable_line_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[amqp.ledger]\nurl = \"amqp://guest:secret@127.0.0.1:1/%2f\"\nqueue = \"q\"\ninitial_connect_timeout = \"1s\"\n",
        store_and_http(tmp.path())
    );
    let (code, _, stderr) = run_to_exit(tmp.path(), &config, "off", Duration::from_secs(60));
    assert_eq!(code, Some(1), "{stderr}");
    let line = stderr.trim_end();
    assert!(
        line.starts_with(
            "Error: subscription amqp.ledger: cannot connect to amqp://guest:***@127.0.0.1:1/%2f within 1."
        ),
        "{stderr}"
    );
    assert!(line.contains("Connection refused"), "{stderr}");
    assert_eq!(line.lines().count(), 1, "one line: {stderr}");
    assert!(!line.contains('{') && !line.contains("ConnectTimeout"), "no Rust debug structures: {stderr}");
    assert!(!line.contains("secret"), "no password: {stderr}");

    // A configuration error names the field as written, without figment's profile name.
    let config =
        format!("{}[amqp.ledger]\nurl = \"{URL}\"\nqueue = \"q\"\nprefetch = \"lots\"\n", store_and_http(tmp.path()));
    let (code, _, stderr) = run_to_exit(tmp.path(), &config, "off", Duration::from_secs(60));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.starts_with("Error: configuration: amqp.ledger.prefetch: invalid type"), "{stderr}");
    assert!(!stderr.contains("default."), "{stderr}");
}

#[test]
fn human_logs_to_a_file_carry_no_colour_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[log]\nformat = \"human\"\n[amqp.ledger]\nurl = \"amqp://guest:guest@127.0.0.1:1/%2f\"\nqueue = \"q\"\n\
         initial_connect_timeout = \"500ms\"\n",
        store_and_http(tmp.path())
    );
    let (code, stdout, _) = run_to_exit(tmp.path(), &config, "info", Duration::from_secs(60));
    assert_eq!(code, Some(1));
    assert!(stdout.contains("exactly app running"), "the logs were written: {stdout}");
    assert!(!stdout.contains('\u{1b}'), "ANSI escape codes in a file: {stdout:?}");
}

/// A queue that exists without the dead-letter arguments `exactly` declares: the default
/// topology is refused (PRECONDITION_FAILED, with a hint naming the setting), and
/// `topology.declare = false` consumes it as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_reaches_an_existing_topology() {
    let tmp = tempfile::tempdir().unwrap();
    let queue = format!("exactly-existing-{}", std::process::id());
    let conn = Connection::connect(URL, ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(queue.as_str().into(), durable, FieldTable::default()).await.unwrap();

    let base = |extra: &str| {
        format!(
            "{}[amqp.ledger]\nurl = \"{URL}\"\nqueue = \"{queue}\"\nconsumer_tag = \"ledger-under-test\"\n{extra}",
            store_and_http(tmp.path())
        )
    };
    let (code, _, stderr) = run_to_exit(tmp.path(), &base(""), "off", Duration::from_secs(60));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("PRECONDITION_FAILED") && stderr.contains("declare = false"), "{stderr}");

    let port = free_port();
    let config = format!(
        "[store]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[amqp.ledger]\nurl = \"{URL}\"\n\
         queue = \"{queue}\"\nconsumer_tag = \"ledger-under-test\"\n[amqp.ledger.topology]\ndeclare = false\n\
         dead_letter_exchange = \"amq.direct\"\n",
        tmp.path().join("store").display()
    );
    let file = tmp.path().join("existing.toml");
    std::fs::write(&file, config).unwrap();
    let effects = tmp.path().join("effects.log");
    let app = App::spawn(&file, &effects);
    ready(port, Duration::from_secs(30)).await;
    for k in 0..20u64 {
        let props = BasicProperties::default().with_message_id(format!("k{k}").as_str().into());
        let confirm = channel
            .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &payload(k, false), props)
            .await
            .unwrap();
        assert!(confirm.await.unwrap().is_ack());
    }
    until("20 effects", Duration::from_secs(30), async || count_lines(&effects).len() >= 20).await;
    let api = consumer_tags(&queue);
    assert!(api.contains("ledger-under-test"), "the consumer tag from the configuration: {api}");
    app.stop(Duration::from_secs(15));
    channel.queue_delete(queue.as_str().into(), Default::default()).await.unwrap();
}

/// The consumer tags on `queue`, as `rabbitmqctl` lists them.
fn consumer_tags(queue: &str) -> String {
    let out = Command::new("rabbitmqctl")
        .args(["list_consumers", "queue_name", "consumer_tag", "--quiet", "--no-table-headers"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with(queue)).collect::<Vec<_>>().join("\n")
}

/// A Kafka subscription whose brokers cannot be reached: `/readyz` says for how long, and
/// with `unreachable_timeout` the app gives up and exits 1 saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_kafka_is_told_by_readyz_and_ends_the_app_at_its_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "[store]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[kafka.ledger]\nbrokers = \"127.0.0.1:1\"\n\
         group = \"g\"\ntopics = [\"t\"]\nunreachable_timeout = \"20s\"\n",
        tmp.path().join("store").display()
    );
    let file = tmp.path().join("app.toml");
    std::fs::write(&file, &config).unwrap();
    let mut app = App::spawn(&file, &tmp.path().join("effects.log"));
    until("/readyz to say how long", Duration::from_secs(30), async || {
        matches!(common::get(port, "/readyz").await, Some((503, body)) if body.contains("kafka.ledger (brokers unreachable for"))
    })
    .await;
    let status = app.exit_within(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "the app gives up after unreachable_timeout: {status}");

    // The same from the start, to read what it prints.
    let short = config
        .replace("unreachable_timeout = \"20s\"", "unreachable_timeout = \"2s\"")
        .replace(&format!("{port}"), &format!("{}", free_port()));
    let (code, _, stderr) = run_to_exit(tmp.path(), &short, "off", Duration::from_secs(60));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with("Error: subscription kafka.ledger: Kafka brokers 127.0.0.1:1 unreachable for"),
        "{stderr}"
    );
}
