//! A handler whose effect is an HTTP call: it forwards the message's idempotency key to
//! the API as an `Idempotency-Key` header, so the one window the local store cannot close
//! (the call succeeded, then the process died before the done-record was written) is
//! closed by the API, which answers a repeated key with its first response.
//!
//! ```sh
//! cargo run -p exactly-examples --features http --example http_forward    # no broker: a local API and the in-memory broker
//! ```
//!
//! It starts a small payments API on 127.0.0.1 (axum, the way Stripe-like APIs behave:
//! a repeated `Idempotency-Key` gets the stored response and `Idempotent-Replayed: true`),
//! publishes 6 payments (one twice), and crashes the consumer right after the API charged
//! `pay-3`, before its done-record. The restarted consumer runs `pay-3` again; the API
//! replays its first answer, so every payment is charged once. It exits with an error if
//! any payment was charged twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use exactly::testing::{CrashPlan, DrainOptions, MemoryBroker, drain};
use exactly::{Context, CrashPoint, HandlerError, Message, Processor, SledStore, handler_fn};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
struct Payment {
    account: String,
    cents: i64,
}

#[derive(Clone, Serialize, Deserialize)]
struct Charge {
    id: String,
    account: String,
    cents: i64,
}

/// The payments API's memory: responses by idempotency key, and every charge made.
#[derive(Default)]
struct Api {
    responses: HashMap<String, Charge>,
    charges: Vec<Charge>,
    replayed: u32,
}

async fn charge(
    State(api): State<Arc<Mutex<Api>>>,
    headers: HeaderMap,
    Json(p): Json<Payment>,
) -> Result<(HeaderMap, Json<Charge>), (StatusCode, &'static str)> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .ok_or((StatusCode::BAD_REQUEST, "Idempotency-Key header required"))?
        .to_owned();
    let mut api = api.lock().map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "lock poisoned"))?;
    let mut out = HeaderMap::new();
    if let Some(first) = api.responses.get(&key).cloned() {
        api.replayed += 1;
        out.insert("idempotent-replayed", "true".parse().map_err(|_| (StatusCode::INTERNAL_SERVER_ERROR, "header"))?);
        return Ok((out, Json(first)));
    }
    let c = Charge { id: format!("ch_{}", api.charges.len() + 1), account: p.account, cents: p.cents };
    api.charges.push(c.clone());
    api.responses.insert(key, c.clone());
    Ok((out, Json(c)))
}

/// The consumer's handler: one POST per payment, the idempotency key forwarded. Its output
/// (the charge id) is cached with the done-record and returned again for duplicates.
fn forward(client: reqwest::Client, api: String) -> impl exactly::Handler<Output = String> {
    handler_fn(move |msg: Message, ctx: Context| {
        let (client, url) = (client.clone(), format!("{api}/charges"));
        async move {
            let p: Payment = msg.decode()?;
            let resp = client
                .post(url)
                .header("Idempotency-Key", ctx.idempotency_key())
                .json(&p)
                .send()
                .await
                .map_err(|e| HandlerError::transient(format!("payments API unreachable: {e}")))?;
            let status = resp.status();
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                return Err(HandlerError::transient(format!("payments API answered {status}")));
            }
            if !status.is_success() {
                return Err(HandlerError::permanent("rejected", format!("payments API answered {status}")));
            }
            let replayed = resp.headers().contains_key("idempotent-replayed");
            let c: Charge = resp.json().await.map_err(|e| HandlerError::transient(format!("bad API answer: {e}")))?;
            println!(
                "  {} -> {} {}",
                ctx.message_key(),
                c.id,
                if replayed { "(the API replayed its first answer)" } else { "(charged)" }
            );
            Ok(c.id)
        }
    })
}

fn payment(id: &str, account: &str, cents: i64) -> Message {
    let body = serde_json::to_vec(&Payment { account: account.into(), cents }).unwrap_or_default();
    Message::builder(body).header("idempotency-key", id).build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The payments API, on a free local port.
    let api = Arc::new(Mutex::new(Api::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let app = Router::new().route("/charges", post(charge)).with_state(api.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let broker = MemoryBroker::new();
    let payments = [("pay-1", "alice", 1000), ("pay-2", "bob", 250), ("pay-3", "carol", 4200)];
    let more = [("pay-4", "alice", -300), ("pay-5", "bob", 50), ("pay-6", "carol", 75)];
    for (id, account, cents) in payments.iter().chain(&more) {
        broker.publish("payments", payment(id, account, *cents));
    }
    broker.publish("payments", payment("pay-2", "bob", 250)); // a producer retry
    println!("payments API on {url}; 7 messages published (pay-2 twice)\n");

    let dir = tempfile::tempdir()?;
    let store_path = dir.path().join("store");
    let client = reqwest::Client::new();

    // The third handler run crashes the consumer after the API call, before the done-record.
    println!("first run (crashes after the API charged the 3rd payment):");
    let crash = Arc::new(CrashPlan::nth(CrashPoint::AfterHandler, 3));
    let processor = Processor::builder("payments", forward(client.clone(), url.clone()))
        .store(SledStore::open(&store_path)?)
        .faults(crash.clone())
        .build()?;
    let first = drain(&broker, "payments", &processor, DrainOptions { concurrency: 1, ..Default::default() }).await;
    println!("  -> {}", first.map(|r| format!("{r:?}")).unwrap_or_else(|e| format!("crashed: {e}")));
    drop(processor);

    println!("\nrestart on the same store; the broker redelivers what was not acknowledged:");
    let processor =
        Processor::builder("payments", forward(client, url)).store(SledStore::open(&store_path)?).build()?;
    let second = drain(&broker, "payments", &processor, DrainOptions::default()).await?;
    println!("  -> handled {}, duplicates skipped {}", second.handled, second.duplicates);
    processor.flush().await?;

    let api = api.lock().map_err(|_| "lock poisoned")?;
    let mut per_key: HashMap<(String, i64), u32> = HashMap::new();
    for c in &api.charges {
        *per_key.entry((c.account.clone(), c.cents)).or_default() += 1;
    }
    println!(
        "\npayments API: {} charges for 6 payments, {} repeated calls answered from its idempotency cache",
        api.charges.len(),
        api.replayed
    );
    if api.charges.len() != 6 || per_key.values().any(|n| *n > 1) {
        return Err(format!("a payment was charged twice or not at all: {} charges", api.charges.len()).into());
    }
    Ok(())
}
