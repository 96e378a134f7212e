//! The app runner as a real process against the real RabbitMQ: `/readyz`, `/metrics`
//! counts that match what was sent, and SIGTERM during load that loses nothing and exits 0.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command};

use std::time::{Duration, Instant};

use exactly::amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use exactly::amqp::lapin::types::FieldTable;
use exactly::amqp::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use exactly_tests::payload;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.ok()?;
    let status = raw.split_whitespace().nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

/// `exactly_messages_total{consumer="ledger", outcome=...}` by outcome.
async fn outcomes(port: u16) -> HashMap<String, u64> {
    let Some((200, body)) = get(port, "/metrics").await else { return HashMap::new() };
    body.lines()
        .filter(|l| l.starts_with("exactly_messages_total{") && l.contains("consumer=\"ledger\""))
        .filter_map(|l| {
            let outcome = l.split("outcome=\"").nth(1)?.split('"').next()?.to_owned();
            let value = l.rsplit(' ').next()?.parse::<f64>().ok()? as u64;
            Some((outcome, value))
        })
        .collect()
}

async fn until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The app process; killed if the test fails before it exits.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(config: &Path, effects: &Path) -> App {
    App(Command::new(env!("CARGO_BIN_EXE_app_child"))
        .env("EXACTLY_CONFIG", config)
        .env("EFFECTS", effects)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap())
}

fn exit_within(App(child): &mut App, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("the app did not exit within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Publishes one message per key, then waits for every confirm.
async fn publish(channel: &Channel, queue: &str, keys: impl IntoIterator<Item = u64>) {
    let mut confirms = Vec::new();
    for k in keys {
        let props = BasicProperties::default().with_message_id(format!("k{k}").as_str().into());
        confirms.push(
            channel
                .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &payload(k, false), props)
                .await
                .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack(), "the broker took every message");
    }
}

fn effects_count(path: &Path) -> HashMap<String, u32> {
    let mut seen = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *seen.entry(line.to_owned()).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_sent_and_sigterm_under_load_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let queue = format!("exactly-app-test-{}", std::process::id());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = tmp.path().join("app.toml");
    std::fs::write(
        &config,
        format!(
            "shutdown_timeout = \"10s\"\n[store]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             [amqp.ledger]\nurl = \"{URL}\"\nqueue = \"{queue}\"\nprefetch = 50\n",
            tmp.path().join("store").display()
        ),
    )
    .unwrap();
    let effects = tmp.path().join("effects.log");

    let conn = Connection::connect(URL, ConnectionProperties::default()).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let mut app = spawn(&config, &effects);
    until("/readyz", Duration::from_secs(30), async || matches!(get(port, "/readyz").await, Some((200, _)))).await;
    assert_eq!(get(port, "/healthz").await.map(|r| r.0), Some(200));

    // 250 keys, the first 50 sent twice.
    publish(&channel, &queue, (0..250).chain(0..50)).await;
    until("300 outcomes", Duration::from_secs(30), async || outcomes(port).await.values().sum::<u64>() >= 300).await;
    let seen = outcomes(port).await;
    assert_eq!(seen.get("handled"), Some(&250), "{seen:?}");
    assert_eq!(seen.get("duplicate"), Some(&50), "{seen:?}");

    // SIGTERM in the middle of 2000 more.
    publish(&channel, &queue, 250..2250).await;
    until("load under way", Duration::from_secs(30), async || {
        outcomes(port).await.get("handled").copied().unwrap_or(0) > 400
    })
    .await;
    kill(Pid::from_raw(app.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = exit_within(&mut app, Duration::from_secs(15));
    assert!(status.success(), "the app exits 0 after SIGTERM: {status}");
    let before = effects_count(&effects).len();
    eprintln!("the first process handled {before} of 2250 keys before SIGTERM stopped it");
    assert!(before < 2250, "SIGTERM came after the load: the test did not test a stop under load");

    // A new process finishes the rest; nothing is lost and no effect happens twice.
    let mut app = spawn(&config, &effects);
    until("every key's effect", Duration::from_secs(60), async || effects_count(&effects).len() >= 2250).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(Pid::from_raw(app.0.id() as i32), Signal::SIGTERM).unwrap();
    assert!(exit_within(&mut app, Duration::from_secs(15)).success());
    let counts = effects_count(&effects);
    assert_eq!(counts.len(), 2250);
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "graceful stops repeat no effect: {doubled:?}");
    let q = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions { passive: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0, "every message was acknowledged");

    exactly::amqp::Topology::declare().delete(&channel, &queue).await.unwrap();
}
