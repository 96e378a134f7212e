//! The app runner as a real process against the real RabbitMQ: `/readyz`, `/metrics`
//! counts that match what was sent, and SIGTERM during load that loses nothing and exits 0.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{AMQP_URL as URL, App, free_port, get, outcomes, ready, until};
use exactly::amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use exactly::amqp::lapin::types::FieldTable;
use exactly::amqp::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use exactly_tests::{count_lines, payload};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_sent_and_sigterm_under_load_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let queue = format!("exactly-app-test-{}", std::process::id());
    let port = free_port();
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
    let mut app = App::spawn(&config, &effects);
    ready(port, Duration::from_secs(30)).await;
    assert_eq!(get(port, "/healthz").await.map(|r| r.0), Some(200));

    // 250 keys, the first 50 sent twice.
    publish(&channel, &queue, (0..250).chain(0..50)).await;
    until("300 outcomes", Duration::from_secs(30), async || outcomes(port).await.values().sum::<u64>() >= 300).await;
    let seen = outcomes(port).await;
    assert_eq!(seen.get("handled"), Some(&250), "{seen:?}");
    assert_eq!(seen.get("duplicate"), Some(&50), "{seen:?}");

    // SIGTERM in the middle of 5000 more. They are sent from a task of their own, so the
    // stop comes while they still arrive: sent first and SIGTERM after, the consumer had
    // sometimes handled all of them by the time the signal came.
    const ALL: u64 = 5250;
    let sending = tokio::spawn({
        let (channel, queue) = (channel.clone(), queue.clone());
        async move { publish(&channel, &queue, 250..ALL).await }
    });
    until("load under way", Duration::from_secs(30), async || {
        outcomes(port).await.get("handled").copied().unwrap_or(0) > 400
    })
    .await;
    app.terminate();
    let status = app.exit_within(Duration::from_secs(15));
    assert!(status.success(), "the app exits 0 after SIGTERM: {status}");
    sending.await.unwrap();
    let before = count_lines(&effects).len();
    eprintln!("the first process handled {before} of {ALL} keys before SIGTERM stopped it");
    assert!(before < ALL as usize, "SIGTERM came after the load: the test did not test a stop under load");

    // A new process finishes the rest; nothing is lost and no effect happens twice.
    let app = App::spawn(&config, &effects);
    until("every key's effect", Duration::from_secs(60), async || count_lines(&effects).len() >= ALL as usize).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.stop(Duration::from_secs(15));
    let counts = count_lines(&effects);
    assert_eq!(counts.len(), ALL as usize);
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
