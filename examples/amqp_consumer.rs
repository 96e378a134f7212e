//! A payments consumer on the local RabbitMQ: each payment credits an account once,
//! duplicates are acknowledged from the store, a poison message goes to the dead-letter
//! queue with its reason.
//!
//! ```sh
//! # RabbitMQ on 127.0.0.1:5672 (guest/guest); scripts/services.sh up starts it
//! cargo run -p exactly-examples --features amqp --example amqp_consumer
//! AMQP_URL=amqp://user:pass@host:5672/%2f cargo run -p exactly-examples --features amqp --example amqp_consumer -- --serve
//! # several instances sharing one store in PostgreSQL (as docker-compose.yml runs it)
//! EXACTLY_STORE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run -p exactly-examples --features amqp --example amqp_consumer -- --serve
//! ```
//!
//! Without `--serve` it first publishes a few demo payments (some twice, one undecodable)
//! to `exactly-demo-payments`, processes them, prints what happened and exits. With
//! `--serve` it only consumes, until Ctrl-C or SIGTERM.

use std::sync::atomic::Ordering;
use std::time::Duration;

use exactly::amqp::Consumer;
use exactly::amqp::lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use exactly::amqp::lapin::{BasicProperties, Connection, ConnectionProperties};
use exactly::postgres::PgStore;
use exactly::{Context, Message, Processor, SledStore, handler_fn};
use serde::Deserialize;

#[derive(Deserialize)]
struct Payment {
    account: String,
    cents: i64,
}

const QUEUE: &str = "exactly-demo-payments";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())).init();
    let url = std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let serve = std::env::args().any(|a| a == "--serve");
    let store_dir = std::env::var("EXACTLY_STORE").unwrap_or_else(|_| "target/exactly-demo-payments-store".into());

    let ledger = handler_fn(|msg: Message, ctx: Context| async move {
        let p: Payment = msg.decode()?;
        let balance: i64 = ctx.state().get_json(&p.account).await?.unwrap_or(0);
        ctx.state().put_json(&p.account, &(balance + p.cents)).await?;
        tracing::info!(key = ctx.message_key(), account = %p.account, balance = balance + p.cents, "credited");
        Ok(())
    });
    // Every instance on one PostgreSQL store, or this one on its own store on disk.
    let processor = match std::env::var("EXACTLY_STORE_URL") {
        Ok(db) => Processor::builder("payments", ledger).store(PgStore::open(db).await?).build()?,
        Err(_) => Processor::builder("payments", ledger).store(SledStore::open(&store_dir)?).build()?,
    };
    let consumer = Consumer::builder(&url, QUEUE).prefetch(32).build(processor)?;
    if serve {
        return Ok(consumer.run_until_signal().await?);
    }

    let (stop, stats) = (consumer.shutdown_handle(), consumer.stats());
    let running = tokio::spawn(consumer.run());
    // Consuming: connected, its queue declared, `basic.consume` answered.
    while !stats.consuming.load(Ordering::Relaxed) {
        if running.is_finished() {
            return Ok(running.await??);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = std::process::id();
    let payments = [("alice", 1000), ("bob", 250), ("alice", -300), ("carol", 4200)];
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut published = 0;
    let mut publish = async |id: String, body: Vec<u8>| -> Result<(), Box<dyn std::error::Error>> {
        let props = BasicProperties::default().with_message_id(id.as_str().into());
        channel.basic_publish("".into(), QUEUE.into(), BasicPublishOptions::default(), &body, props).await?.await?;
        published += 1;
        Ok(())
    };
    for (i, (account, cents)) in payments.iter().enumerate() {
        let body = serde_json::to_vec(&serde_json::json!({"account": account, "cents": cents}))?;
        publish(format!("pay-{run}-{i}"), body.clone()).await?;
        if i % 2 == 0 {
            publish(format!("pay-{run}-{i}"), body).await?; // a producer retry
        }
    }
    publish(format!("pay-{run}-poison"), b"{ not json".to_vec()).await?;
    let published = published;
    while stats.acked.load(Ordering::Relaxed) < published {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.shutdown();
    running.await??;
    println!(
        "\npublished {published} messages: {} deliveries acknowledged, {} dead-lettered to {QUEUE}.dlq (reason in header x-exactly-reason)",
        stats.acked.load(Ordering::Relaxed),
        stats.dead_lettered.load(Ordering::Relaxed),
    );
    let store = match std::env::var("EXACTLY_STORE_URL") {
        Ok(_) => "the PostgreSQL store of $EXACTLY_STORE_URL".to_owned(),
        Err(_) => store_dir,
    };
    println!("store: {store} (run again: the balances only grow by this run's payments)");
    Ok(())
}
