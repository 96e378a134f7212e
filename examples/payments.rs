//! A payments consumer to copy: each payment debits its account in a real `accounts` table
//! and emits a `payment-settled` event, in the one PostgreSQL transaction that also
//! records the payment as done. Run as many instances as you like on one database: a
//! redelivery that reaches another instance, or a crash at any point, never debits twice,
//! and each settlement is published at least once with the same `idempotency-key`, so a
//! deduplicating consumer of settlements acts on it once.
//!
//! ```sh
//! # PostgreSQL, RabbitMQ and tansu: scripts/services.sh up starts them
//! export EXACTLY_STORE__URL=postgres://postgres@127.0.0.1:5432/postgres
//! EXACTLY_CONFIG=examples/payments.toml cargo run -p exactly-examples --features payments --example payments
//! # in another terminal: 100 payments (every tenth sent twice, one overdrawn)
//! EXACTLY_CONFIG=examples/payments.toml cargo run -p exactly-examples --features payments --example payments -- send 100
//! psql postgres://postgres@127.0.0.1:5432/postgres -c 'SELECT * FROM accounts'
//! # the same on Kafka
//! EXACTLY_CONFIG=examples/payments-kafka.toml cargo run -p exactly-examples --features payments --example payments
//! ```
//!
//! docker-compose.yml runs three instances on RabbitMQ and three on Kafka against its
//! PostgreSQL. At start an instance creates the `accounts` table if missing and opens the
//! demo accounts; on RabbitMQ it declares the settlements' queue. The outbox's relay runs
//! in every instance, one at a time across them (`store.outbox = true`).

use exactly::app::{App, Config};
use exactly::postgres::PostgresContext;
use exactly::publish::Publish;
use exactly::{Context, HandlerError, Message, OutboundRecord, handler_fn};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Payment {
    id: String,
    account: String,
    cents: i64,
}

/// The demo accounts and what each holds when it is opened, in cents.
const ACCOUNTS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const OPENING_CENTS: i64 = 1_000_000;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS accounts (
    id text PRIMARY KEY,
    balance_cents int8 NOT NULL CHECK (balance_cents >= 0)
)";
/// No row updated: no such account, or not enough in it.
const DEBIT: &str = "UPDATE accounts SET balance_cents = balance_cents - $2 WHERE id = $1 AND balance_cents >= $2";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("payments: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), BoxError> {
    let app = App::from_env()?;
    // The settlements' queue (RabbitMQ) or topic (Kafka).
    let settled = std::env::var("PAYMENTS_SETTLED").unwrap_or_else(|_| "payment-settled".into());
    let on_kafka = app.config().amqp.is_empty();
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("send") {
        let n = args.next().map(|n| n.parse()).transpose()?.unwrap_or(100);
        return send(app.config(), n).await;
    }
    open_accounts(app.config()).await?;
    if !on_kafka {
        declare_queue(app.config(), &settled).await?;
    }

    let settle = handler_fn(move |msg: Message, ctx: Context| {
        let settled = settled.clone();
        async move {
            let p: Payment = msg.decode()?;
            if p.cents <= 0 {
                return Err(HandlerError::validation(format!("payment {}: amount must be positive", p.id)));
            }
            // The transaction the done-record commits in: a failed run leaves no debit.
            let db = ctx.postgres().await?;
            if db.execute(DEBIT, &[&p.account, &p.cents]).await? == 0 {
                let why = format!("payment {}: account {:?} cannot pay {} cents", p.id, p.account, p.cents);
                return Err(HandlerError::permanent("insufficient-funds", why));
            }
            tracing::info!(payment = %p.id, account = %p.account, cents = p.cents, "settled");
            let event = serde_json::to_vec(&p).map_err(HandlerError::transient)?;
            // RabbitMQ: the default exchange routes to the queue named by the key.
            ctx.emit(match on_kafka {
                true => OutboundRecord::new(settled, event).key(p.account),
                false => OutboundRecord::new("", event).key(settled),
            });
            Ok(())
        }
    });
    Ok(app.handler("payments", settle).run().await?)
}

/// The `accounts` table and the demo accounts (left as they are if they exist).
async fn open_accounts(config: &Config) -> Result<(), BoxError> {
    let url = config.store.url.as_deref().ok_or("store.url: the payments example needs the PostgreSQL store")?;
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    let tx = client.transaction().await?;
    // Instances starting together: CREATE TABLE IF NOT EXISTS alone races in PostgreSQL.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('exactly-payments-example'))", &[]).await?;
    tx.batch_execute(SCHEMA).await?;
    for account in ACCOUNTS {
        let open = "INSERT INTO accounts VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";
        tx.execute(open, &[&account, &OPENING_CENTS]).await?;
    }
    tx.commit().await?;
    drop(client);
    connection.await??;
    Ok(())
}

/// The settlements' queue, declared as an `exactly` consumer of it declares it (with its
/// dead-letter queue), so that the relay's mandatory publishes have somewhere to go.
async fn declare_queue(config: &Config, queue: &str) -> Result<(), BoxError> {
    use exactly::amqp::lapin::{Connection, ConnectionProperties};
    let url = &config.amqp.get("payments").ok_or("amqp.payments: no such subscription")?.url;
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    exactly::amqp::Topology::declare().apply(&channel, queue).await?;
    channel.close(200, "declared".into()).await?;
    conn.close(200, "declared".into()).await?;
    Ok(())
}

/// Publishes `n` demo payments to the payments subscription's queue or topic, every tenth
/// twice (a producer's retry) and one more than its account holds.
async fn send(config: &Config, n: usize) -> Result<(), BoxError> {
    let run = std::process::id();
    let payment =
        |i: usize, cents: i64| Payment { id: format!("pay-{run}-{i}"), account: ACCOUNTS[i % 4].into(), cents };
    let mut payments: Vec<Payment> = (0..n).map(|i| payment(i, 100 + (i % 50) as i64)).collect();
    payments.push(payment(n, OPENING_CENTS * 10));
    let (publisher, destination, key_is_queue): (Box<dyn Publish>, String, bool) =
        match (config.amqp.get("payments"), config.kafka.get("payments")) {
            (Some(a), _) => (Box::new(exactly::amqp::AmqpPublisher::new(&a.url)), a.queue.clone(), true),
            (None, Some(k)) => {
                let topic = k.topics.first().ok_or("kafka.payments: no topic")?.clone();
                (Box::new(exactly::kafka::KafkaPublisher::new(&k.brokers)?), topic, false)
            }
            (None, None) => return Err("the configuration has no `payments` subscription".into()),
        };
    let mut records = Vec::new();
    for (i, p) in payments.iter().enumerate() {
        let body = serde_json::to_vec(p)?;
        let record = match key_is_queue {
            true => OutboundRecord::new("", body).key(destination.clone()),
            false => OutboundRecord::new(destination.clone(), body).key(p.account.clone()),
        };
        let record = record.header("idempotency-key", p.id.clone());
        if i % 10 == 0 {
            records.push(record.clone());
        }
        records.push(record);
    }
    publisher.publish(&records).await?;
    println!("sent {} payments ({} of them twice, 1 overdrawn) to {destination}", payments.len(), n.div_ceil(10));
    Ok(())
}
