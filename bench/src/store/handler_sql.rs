//! The handler's own SQL on the PostgreSQL store: a handler that credits an `accounts`
//! row (1,000 accounts) in its done-record's transaction (`ctx.postgres()`, exactly once),
//! against the same handler writing the row on a connection of its own outside that
//! transaction (at least once: what teams do without an inbox), in the same run.

use std::sync::Arc;
use std::time::Instant;

use exactly::postgres::{PgStore, PostgresContext};
use exactly::{Context, HandlerError, Message, Processor, handler_fn};
use tokio_postgres::NoTls;

use super::process_all_timed;
use crate::report::{fmt_rate, percentiles, rate};

pub(super) async fn run(url: &str, schema: &str, n: u64) -> anyhow::Result<()> {
    println!("\nThe handler's own SQL: each message credits one of 1,000 `accounts` rows (an upsert), 256");
    println!("messages in flight, one instance. In the transaction: `ctx.postgres()`, the row and the");
    println!("done-record in one commit per message. Outside: the same upsert committed on its own");
    println!("(8 connections), then the done-record in the store's group commit.\n");
    println!(
        "| handler's SQL | connections for it | messages/s | vs outside | p50 / p99 / p999 (µs) |\n|---|---:|---:|---:|---:|"
    );
    let (setup, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(conn);
    let accounts = format!("{schema}.accounts");
    setup
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; CREATE TABLE IF NOT EXISTS {accounts} (id int4 PRIMARY KEY, balance int8)"
        ))
        .await?;
    let upsert = format!(
        "INSERT INTO {accounts} VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET balance = {accounts}.balance + 1"
    );

    let pool = {
        let config: tokio_postgres::Config = url.parse()?;
        let manager = deadpool_postgres::Manager::new(config, NoTls);
        deadpool_postgres::Pool::builder(manager).max_size(8).build()?
    };
    let sql = upsert.clone();
    let outside = handler_fn(move |m: Message, _c: Context| {
        let (pool, sql) = (pool.clone(), sql.clone());
        async move {
            let client = pool.get().await.map_err(HandlerError::transient)?;
            client.execute(&sql, &[&account(&m)]).await?;
            Ok::<_, HandlerError>(())
        }
    });
    let store = PgStore::builder(url.to_owned()).schema(schema).open().await?;
    let p = Processor::builder("outside", outside).store(store).build()?;
    let base = 5_000_000_000;
    let (took, latency) = process_all_timed(&p, base..base + n, 256).await;
    let outside_rate = rate(n, took);
    drop(p);
    println!(
        "| outside the transaction (at least once) | 8 | {} | 1.00x | {} |",
        fmt_rate(outside_rate),
        percentiles(&latency)
    );

    for (round, connections) in [8usize, 32].into_iter().enumerate() {
        let sql: Arc<str> = upsert.clone().into();
        let inside = handler_fn(move |m: Message, ctx: Context| {
            let sql = sql.clone();
            async move {
                ctx.postgres().await?.execute(&*sql, &[&account(&m)]).await?;
                Ok::<_, HandlerError>(())
            }
        });
        let store = PgStore::builder(url.to_owned()).schema(schema).transaction_pool_size(connections).open().await?;
        let p = Processor::builder(format!("inside-{connections}"), inside).store(store).build()?;
        let from = base + (round as u64 + 1) * 1_000_000_000;
        let started = Instant::now();
        let (_, latency) = process_all_timed(&p, from..from + n, 256).await;
        let r = rate(n, started.elapsed());
        println!(
            "| in the transaction, `ctx.postgres()` (exactly once) | {connections} | {} | {:.2}x | {} |",
            fmt_rate(r),
            r / outside_rate,
            percentiles(&latency)
        );
    }
    let total: i64 = setup.query_one(&format!("SELECT sum(balance)::int8 FROM {accounts}"), &[]).await?.get(0);
    anyhow::ensure!(total == i64::try_from(3 * n)?, "every message credited once: {total} for {}", 3 * n);
    Ok(())
}

/// The account a message credits: its key's number modulo 1,000.
fn account(m: &Message) -> i32 {
    let digits = m.payload().get(..12).and_then(|d| std::str::from_utf8(d).ok());
    digits.and_then(|d| d.parse::<u64>().ok()).map_or(0, |k| (k % 1_000) as i32)
}
