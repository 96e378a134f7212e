//! The webhook receiver on a real server, forwarding to the real RabbitMQ: a signed event
//! is forwarded once however often the sender redelivers it, with its id as the record's
//! idempotency key; bad signatures, stale timestamps and oversized bodies forward nothing;
//! a broker that fails answers 503 and the redelivery goes through.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use exactly_amqp::AmqpPublisher;
use exactly_amqp::lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use exactly_amqp::lapin::types::{AMQPValue, FieldTable};
use exactly_amqp::lapin::{Channel, Connection, ConnectionProperties};
use exactly_core::{DedupStore, MemoryStore};
use exactly_http::{Signature, WebhookReceiver};
use reqwest::StatusCode;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn amqp_url() -> String {
    std::env::var("EXACTLY_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn channel() -> Channel {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ must run on 127.0.0.1:5672 (scripts/test.sh starts it)");
    conn.create_channel().await.unwrap()
}

/// Every message on `queue`: its `idempotency-key` header and body.
async fn drain(channel: &Channel, queue: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(m) = channel.basic_get(queue.into(), BasicGetOptions { no_ack: true }).await.unwrap() {
        let headers = m.delivery.properties.headers().clone().unwrap_or_default();
        let key = match headers.inner().get("idempotency-key") {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => format!("{other:?}"),
        };
        out.push((key, m.delivery.data.clone()));
    }
    out
}

/// Serves `receiver` at /webhooks on a free port; its URL.
async fn serve(receiver: WebhookReceiver) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route_service("/webhooks", receiver);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks", listener.local_addr().unwrap());
    (url, tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }))
}

fn now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

/// The event signed as its sender would, at `at`.
fn send(client: &reqwest::Client, url: &str, id: &str, at: i64, body: &'static str) -> reqwest::RequestBuilder {
    let mut request = client.post(url).header("content-type", "application/json").body(body);
    for (name, value) in Signature::standard_webhooks(SECRET).unwrap().sign(id, at, body.as_bytes()) {
        request = request.header(name, value);
    }
    request
}

#[tokio::test]
async fn a_signed_event_is_forwarded_once_however_often_it_is_redelivered() {
    let channel = channel().await;
    let queue = format!("exactly-test-webhooks-{}", std::process::id());
    let opts = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(queue.as_str().into(), opts, FieldTable::default()).await.unwrap();
    let store: Arc<dyn DedupStore> = Arc::new(MemoryStore::new());
    let signature = Signature::standard_webhooks(SECRET).unwrap();

    // First the broker is unreachable: 503, nothing recorded, so the redelivery goes through.
    let down = Arc::new(AmqpPublisher::new("amqp://guest:guest@127.0.0.1:1/%2f"));
    let receiver = WebhookReceiver::forward(signature.clone(), store.clone(), down, "").record_key(&queue);
    let (url, server) = serve(receiver).await;
    let client = reqwest::Client::new();
    let failed = send(&client, &url, "msg_1", now(), r#"{"type":"invoice.paid"}"#).send().await.unwrap();
    assert_eq!(failed.status(), StatusCode::SERVICE_UNAVAILABLE);
    server.abort();

    let up = Arc::new(AmqpPublisher::new(amqp_url()));
    let receiver = WebhookReceiver::forward(signature, store, up, "").record_key(&queue).max_body(1024);
    let (url, _server) = serve(receiver).await;
    for _ in 0..3 {
        let ok = send(&client, &url, "msg_1", now(), r#"{"type":"invoice.paid"}"#).send().await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }
    let other = send(&client, &url, "msg_2", now(), r#"{"type":"invoice.voided"}"#).send().await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);

    // Refused before anything is read: a forged signature, a replay of an old delivery, a
    // body over the limit, no signature at all.
    let mut forged = client.post(&url).body(r#"{"type":"x"}"#);
    let other_secret = Signature::standard_webhooks("whsec_AAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
    for (name, value) in other_secret.sign("msg_3", now(), br#"{"type":"x"}"#) {
        forged = forged.header(name, value);
    }
    let forged = forged.send().await.unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    assert!(forged.text().await.unwrap().contains("no signature matches"));
    let stale = send(&client, &url, "msg_4", now() - 3600, r#"{"type":"x"}"#).send().await.unwrap();
    assert_eq!(stale.status(), StatusCode::UNAUTHORIZED);
    assert!(stale.text().await.unwrap().contains("timestamp"));
    let big: &'static str = Box::leak("x".repeat(2048).into_boxed_str());
    let oversized = send(&client, &url, "msg_5", now(), big).send().await.unwrap();
    assert_eq!(oversized.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let unsigned = client.post(&url).body("{}").send().await.unwrap();
    assert_eq!(unsigned.status(), StatusCode::UNAUTHORIZED);
    assert!(unsigned.text().await.unwrap().contains("webhook-id"));

    // The broker confirmed before each 200: the messages are there now.
    let got = drain(&channel, &queue).await;
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["msg_1", "msg_2"], "each event once, keyed by its id");
    assert_eq!(got[0].1, br#"{"type":"invoice.paid"}"#);
    let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
}
