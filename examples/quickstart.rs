//! The first thing to run: a payments ledger on the embedded defaults (the sled store and
//! the in-memory broker, no broker to install).
//!
//! ```sh
//! cargo run -p exactly-examples --example quickstart
//! ```
//!
//! It publishes 8 payments, 3 of them twice (a producer retry) and one undecodable, lets
//! the consumer handle them, then "restarts" (reopens the store) while the broker
//! redelivers everything, as it would after a lost acknowledgement. Each payment is
//! credited once; the poison message lands in the dead-letter queue with its reason.

use std::time::Duration;

use exactly::testing::{DrainOptions, MemoryBroker, drain};
use exactly::{Context, Message, Processor, SledStore, handler_fn};
use serde::Deserialize;

#[derive(Deserialize)]
struct Payment {
    account: String,
    cents: i64,
}

fn payment(id: &str, body: &str) -> Message {
    Message::builder(body.to_owned()).header("idempotency-key", id).build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store_path = dir.path().join("ledger-store");

    // The whole consumer: decode, credit the account in transactional state.
    let ledger = || {
        handler_fn(|msg: Message, ctx: Context| async move {
            let p: Payment = msg.decode()?;
            let balance: i64 = ctx.state().get_json(&p.account).await?.unwrap_or(0);
            ctx.state().put_json(&p.account, &(balance + p.cents)).await?;
            Ok(())
        })
    };

    let broker = MemoryBroker::new();
    let payments = [
        ("pay-1", r#"{"account":"alice","cents":1000}"#),
        ("pay-2", r#"{"account":"bob","cents":250}"#),
        ("pay-3", r#"{"account":"alice","cents":-300}"#),
        ("pay-4", r#"{"account":"carol","cents":4200}"#),
        ("pay-5", r#"{"account":"bob","cents":50}"#),
        ("pay-6", "{ this is not json"),
        ("pay-7", r#"{"account":"carol","cents":-200}"#),
        ("pay-8", r#"{"account":"alice","cents":75}"#),
    ];
    for (id, body) in payments {
        broker.publish("payments", payment(id, body));
    }
    for (id, body) in [payments[0], payments[3], payments[7]] {
        broker.publish("payments", payment(id, body)); // a producer retried these
    }

    println!("exactly quickstart: {} messages published to 'payments' (3 duplicates, 1 poison)\n", 11);
    let processor = Processor::builder("ledger", ledger()).store(SledStore::open(&store_path)?).build()?;
    let first = drain(&broker, "payments", &processor, DrainOptions::default()).await?;
    println!(
        "first run:   handled {}, duplicates skipped {}, dead-lettered {}",
        first.handled, first.duplicates, first.dead_lettered
    );
    for dl in broker.dead_letters("payments") {
        let d = &dl.dead_letter;
        println!(
            "  dead-letter: key {} reason '{}' after {} attempt(s): {}",
            d.key.as_deref().unwrap_or("-"),
            d.reason,
            d.attempts,
            d.last_error.as_deref().unwrap_or("")
        );
    }

    // A restart: the process goes away, the store is reopened from disk, and the broker
    // delivers every payment again.
    drop(processor);
    for (id, body) in payments {
        broker.publish("payments", payment(id, body));
    }
    let store = SledStore::open(&store_path)?;
    let processor = Processor::builder("ledger", ledger()).store(store).build()?;
    let second = drain(&broker, "payments", &processor, DrainOptions::default()).await?;
    println!(
        "after restart, all 8 redelivered: handled {}, duplicates skipped {}, already dead-lettered {}",
        second.handled, second.duplicates, second.already_dead_lettered
    );

    println!("\nbalances (each payment credited once):");
    for account in ["alice", "bob", "carol"] {
        let key = exactly::StoreKey::state("ledger", account.as_bytes());
        let cents: i64 =
            processor.store().state_get(&key).await?.map(|raw| serde_json::from_slice(&raw)).transpose()?.unwrap_or(0);
        println!("  {account:<6} {:>8.2}", cents as f64 / 100.0);
    }
    let stats = broker.stats("payments");
    println!("\nbroker: {} published, {} acknowledged, {} unacknowledged", stats.published, stats.acked, stats.unacked);
    processor.flush().await?;
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(())
}
