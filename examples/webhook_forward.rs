//! A webhook endpoint forwarding to RabbitMQ, and an `exactly` consumer behind it: a sender
//! that redelivers each event until it gets a 2xx (as Stripe and every Standard Webhooks
//! sender do) has each event handled once.
//!
//! ```sh
//! # RabbitMQ on 127.0.0.1:5672 (guest/guest); scripts/services.sh up starts it
//! cargo run -p exactly-examples --features http,amqp --example webhook_forward
//! ```
//!
//! It starts the consumer on `exactly-demo-webhooks`, serves `WebhookReceiver` on a free
//! local port, and plays a sender: three signed events, the second delivered three times,
//! and one forged. The receiver verifies each signature, forwards each event once (its id
//! as the `idempotency-key` header), and answers 200 after RabbitMQ confirmed it; the
//! forged one gets 401. It exits with an error unless the consumer handled three events.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use exactly::amqp::{AmqpPublisher, Consumer};
use exactly::http::{Signature, WebhookReceiver};
use exactly::{Context, MemoryStore, Message, Processor, SledStore, handler_fn};

const QUEUE: &str = "exactly-demo-webhooks";
/// The endpoint's secret, as a Standard Webhooks sender shows it.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let dir = tempfile::tempdir()?;

    // The consumer: each event handled once, whatever reaches the queue.
    let handled = Arc::new(AtomicUsize::new(0));
    let count = handled.clone();
    let handler = handler_fn(move |msg: Message, ctx: Context| {
        let count = count.clone();
        async move {
            let event: serde_json::Value = msg.decode()?;
            count.fetch_add(1, Ordering::SeqCst);
            println!("  consumer: handled {} ({})", ctx.message_key(), event["type"]);
            Ok(())
        }
    });
    let processor =
        Processor::builder("webhook-events", handler).store(SledStore::open(dir.path().join("consumer"))?).build()?;
    let consumer = Consumer::builder(&url, QUEUE).build(processor)?;
    let (stop, stats) = (consumer.shutdown_handle(), consumer.stats());
    let running = tokio::spawn(consumer.run());
    // Consuming: connected, its queue declared, `basic.consume` answered.
    while !stats.consuming.load(Ordering::Relaxed) {
        if running.is_finished() {
            return Ok(running.await??);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The endpoint: verify, drop redeliveries, forward to the consumer's queue.
    let signature = Signature::standard_webhooks(SECRET)?;
    let publisher = Arc::new(AmqpPublisher::new(url.clone()));
    let receiver =
        WebhookReceiver::forward(signature.clone(), Arc::new(MemoryStore::new()), publisher, "").record_key(QUEUE);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}/webhooks", listener.local_addr()?);
    let app = axum::Router::new().route_service("/webhooks", receiver);
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The sender.
    let client = reqwest::Client::new();
    let run = std::process::id();
    let now = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())?;
    let deliver = async |signature: &Signature, id: &str, kind: &str| -> Result<String, reqwest::Error> {
        let body = serde_json::json!({"type": kind}).to_string();
        let mut request = client.post(&endpoint).header("content-type", "application/json").body(body.clone());
        for (name, value) in signature.sign(id, now, body.as_bytes()) {
            request = request.header(name, value);
        }
        let response = request.send().await?;
        Ok(format!("{} {}", response.status(), response.text().await?))
    };
    let events = [("invoice.paid", 1), ("invoice.voided", 3), ("customer.created", 1)];
    let mut deliveries = 0;
    for (i, (kind, times)) in events.into_iter().enumerate() {
        let id = format!("msg_{run}_{i}");
        for _ in 0..times {
            println!("sender: {id} {kind:<16} -> {}", deliver(&signature, &id, kind).await?);
            deliveries += 1;
        }
    }
    let forged = Signature::standard_webhooks("whsec_AAAAAAAAAAAAAAAAAAAAAAAA")?;
    println!("sender: forged          -> {}", deliver(&forged, &format!("msg_{run}_x"), "invoice.paid").await?);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stats.acked.load(Ordering::Relaxed) < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.shutdown();
    running.await??;
    let handled = handled.load(Ordering::SeqCst);
    println!("\n{deliveries} signed deliveries of 3 events (and 1 forged): the consumer handled {handled}");
    if handled != 3 {
        return Err(format!("expected each of the 3 events handled once, got {handled}").into());
    }
    Ok(())
}
