//! Test support: unique queues on the local RabbitMQ, publishing, reading back.
#![allow(dead_code, unused_imports, unreachable_pub, clippy::unwrap_used)]

use std::time::Duration;

use exactly_amqp::lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use exactly_amqp::lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use exactly_amqp::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

pub fn url() -> String {
    std::env::var("EXACTLY_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// A queue name no other test uses.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("exactly-test-{name}-{}-{nanos}", std::process::id())
}

pub struct Broker {
    pub conn: Connection,
    pub channel: Channel,
}

impl Broker {
    pub async fn connect() -> Self {
        let conn = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (scripts/test.sh starts it)");
        let channel = conn.create_channel().await.unwrap();
        channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
        Self { conn, channel }
    }

    /// Publishes to the default exchange (straight to `queue`) and waits for the confirm.
    pub async fn publish(&self, queue: &str, payload: &[u8], props: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish("".into(), ShortString::from(queue), BasicPublishOptions::default(), payload, props)
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "publish to {queue} not confirmed");
    }

    /// Messages ready in a queue (declared passively).
    pub async fn ready(&self, queue: &str) -> u32 {
        let ch = self.conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions { passive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let n = q.message_count();
        let _ = ch.close(200, "ok".into()).await;
        n
    }

    /// Takes every message of a queue.
    pub async fn drain(&self, queue: &str) -> Vec<(BasicProperties, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(m) =
            self.channel.basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true }).await.unwrap()
        {
            out.push((m.delivery.properties.clone(), m.delivery.data.clone()));
        }
        out
    }

    /// Deletes the queue and everything the default topology declared for it.
    pub async fn cleanup(&self, queue: &str) {
        let _ = exactly_amqp::Topology::declare().delete(&self.channel, queue).await;
    }
}

pub fn props_with_id(id: &str) -> BasicProperties {
    BasicProperties::default().with_message_id(ShortString::from(id))
}

pub fn header<'a>(props: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
    props.headers().as_ref().and_then(|t| t.inner().get(name))
}

pub fn header_str(props: &BasicProperties, name: &str) -> Option<String> {
    match header(props, name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        other => Some(format!("{other:?}")),
    }
}

pub fn header_i64(props: &BasicProperties, name: &str) -> Option<i64> {
    match header(props, name)? {
        AMQPValue::LongLongInt(i) => Some(*i),
        AMQPValue::LongInt(i) => Some(i64::from(*i)),
        _ => None,
    }
}

pub fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

pub use exactly_core::testing::Runs;

/// Waits until `done` holds, failing after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
