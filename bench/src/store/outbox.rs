//! The outbox's relay under load: messages processed on the PostgreSQL store with its
//! outbox, each emitting one record, while the relay publishes them to RabbitMQ with
//! publisher confirms; how fast they arrive on the queue, and how long after the handler
//! emitted each (the relay's lag, end to end, as a downstream consumer sees it).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use exactly::amqp::AmqpPublisher;
use exactly::amqp::lapin::options::{BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions};
use exactly::amqp::lapin::types::FieldTable;
use exactly::amqp::lapin::{Connection, ConnectionProperties};
use exactly::postgres::PgStore;
use exactly::{Context, HandlerError, Message, OutboundRecord, Processor, handler_fn};
use futures_util::StreamExt;

use super::process_all;
use crate::report::{fmt_rate, histogram, percentiles, rate, record};

fn micros_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

pub(super) async fn run(url: &str, schema: &str, n: u64) -> anyhow::Result<()> {
    let amqp = std::env::var("EXACTLY_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let queue = format!("{schema}-settled");
    let conn = Connection::connect(&amqp, ConnectionProperties::default()).await.context("RabbitMQ")?;
    let ch = conn.create_channel().await?;
    ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), FieldTable::default()).await?;
    let mut deliveries = ch
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() },
            FieldTable::default(),
        )
        .await?;
    let arrivals = tokio::spawn(async move {
        let mut lag = histogram();
        let mut seen = 0;
        while seen < n {
            let Some(Ok(d)) = deliveries.next().await else { break };
            let sent: u64 = std::str::from_utf8(&d.data).ok().and_then(|t| t.parse().ok()).unwrap_or(0);
            record(&mut lag, Duration::from_micros(micros_now().saturating_sub(sent)));
            seen += 1;
        }
        (seen, lag)
    });

    let store = PgStore::builder(url.to_owned()).schema(schema).outbox(true).open().await?;
    let relay = store.relay(AmqpPublisher::new(&amqp));
    let target = queue.clone();
    let h = handler_fn(move |_m: Message, ctx: Context| {
        let target = target.clone();
        async move {
            ctx.emit(OutboundRecord::new("", micros_now().to_string()).key(target));
            Ok::<_, HandlerError>(())
        }
    });
    let p = Processor::builder("outbox", h).store(store).build()?;
    let (halt, halted) = tokio::sync::oneshot::channel::<()>();
    let relaying = tokio::spawn(async move { relay.run(async move { drop(halted.await) }).await });
    let started = Instant::now();
    let processed = process_all(&p, 7_000_000_000..7_000_000_000 + n, 256).await;
    let (seen, lag) = tokio::time::timeout(Duration::from_secs(120), arrivals).await??;
    let all = started.elapsed();
    let _ = halt.send(());
    relaying.await??;
    anyhow::ensure!(seen == n, "{seen} of {n} records arrived");

    println!("\nThe outbox's relay: {n} messages on the PostgreSQL store with its outbox, 256 in flight,");
    println!("each emitting one record; the relay (one, batches of 256, polling every 100 ms when idle)");
    println!("publishes them to RabbitMQ with publisher confirms. Lag: from the handler's emit to the");
    println!("record's arrival at a consumer of the queue.\n");
    println!("| processed/s | arrived/s (end to end) | lag p50 / p99 / p999 (µs) |\n|---:|---:|---:|");
    println!("| {} | {} | {} |", fmt_rate(rate(n, processed)), fmt_rate(rate(n, all)), percentiles(&lag));
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await?;
    Ok(())
}
