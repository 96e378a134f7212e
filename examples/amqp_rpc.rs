//! Request/reply on RabbitMQ with cached replies: a client retries a charge request (same
//! `message_id`, as a client does after a timeout); the service charges once and answers
//! the retry with the same receipt, from the store, marked `x-exactly-cached: true`.
//!
//! ```sh
//! # RabbitMQ on 127.0.0.1:5672 (guest/guest); scripts/services.sh up starts it
//! cargo run -p exactly-examples --features amqp --example amqp_rpc
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use exactly::amqp::lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use exactly::amqp::lapin::types::{AMQPValue, FieldTable};
use exactly::amqp::lapin::{BasicProperties, Connection, ConnectionProperties};
use exactly::amqp::{Consumer, header_names};
use exactly::{Context, MemoryStore, Message, Processor, handler_fn};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into())).init();
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let queue = format!("exactly-demo-charges-{}", std::process::id());

    // The service: charges a card and answers with a receipt number.
    let charges = Arc::new(AtomicU32::new(0));
    let c = charges.clone();
    let charge = handler_fn(move |msg: Message, ctx: Context| {
        let c = c.clone();
        async move {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(format!("receipt #{n} for {} ({})", msg.payload_str().unwrap_or("?"), ctx.message_key()))
        }
    });
    let processor = Processor::builder("charges", charge).store(MemoryStore::new()).build()?;
    let service = Consumer::builder(&url, &queue).build(processor)?;
    let (stop, stats) = (service.shutdown_handle(), service.stats());
    let running = tokio::spawn(service.run());
    while !stats.consuming.load(Ordering::Relaxed) {
        if running.is_finished() {
            return Ok(running.await??);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The client: an exclusive reply queue, the same request sent twice.
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let replies = channel
        .queue_declare("".into(), QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default())
        .await?;
    let mut incoming = channel
        .basic_consume(
            replies.name().clone(),
            "client".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    for attempt in ["first try", "retry after a timeout"] {
        let props = BasicProperties::default()
            .with_message_id("charge-42".into())
            .with_reply_to(replies.name().clone())
            .with_correlation_id(attempt.into());
        channel
            .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), b"10.00 EUR", props)
            .await?
            .await?;
    }
    for _ in 0..2 {
        let reply =
            tokio::time::timeout(Duration::from_secs(10), incoming.next()).await?.ok_or("reply stream ended")??;
        let cached = reply
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(header_names::CACHED).cloned())
            .is_some_and(|v| v == AMQPValue::Boolean(true));
        println!(
            "{:<22} -> {}{}",
            reply.properties.correlation_id().as_ref().map(|c| c.to_string()).unwrap_or_default(),
            String::from_utf8_lossy(&reply.data),
            if cached { "   (cached: the card was not charged again)" } else { "" }
        );
    }
    println!("charges made: {}", charges.load(Ordering::SeqCst));

    stop.shutdown();
    running.await??;
    exactly::amqp::Topology::declare().delete(&channel, &queue).await?;
    Ok(())
}
