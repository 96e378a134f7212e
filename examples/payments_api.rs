//! A payments API behind `IdempotencyLayer`: a client that retries `POST /payments` after a
//! timeout is charged once, whichever server answers it.
//!
//! ```sh
//! cargo run -p exactly-examples --features http --example payments_api            # a demo: a client retries, the bank charges once
//! cargo run -p exactly-examples --features http --example payments_api -- serve   # serves 127.0.0.1:3000
//! curl -i localhost:3000/payments -H 'Idempotency-Key: "pay-1"' -H 'X-Api-Key: demo' \
//!      -H 'Content-Type: application/json' -d '{"account": "acct-1", "cents": 500}'
//! ```
//!
//! The bank is a file (`charges.log`) that each charge appends a line to, named by the
//! request's key. `serve` reads its settings from the environment: `LISTEN`
//! (127.0.0.1:3000); `EXACTLY_POSTGRES_URL` and `SCHEMA` for the shared PostgreSQL store
//! (several servers behind a load balancer), otherwise the embedded store in `DATA_DIR`
//! (./data/payments-api); `CHARGES` (the bank's file, `DATA_DIR/charges.log`);
//! `SETTLE_MS` (how long a payment takes after its charge, 0); `LEASE_MS` (30000);
//! `ORPHANS` (`rerun` or `refuse`: a payment a crash cut off runs again, or waits for an
//! operator).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use exactly::DedupStore;
use exactly::http::{IdempotencyLayer, Orphans};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Payment {
    account: String,
    cents: i64,
}

#[derive(Serialize, Deserialize)]
struct Receipt {
    charge: String,
    account: String,
    cents: i64,
}

/// The bank: an append-only file of charges, synced before a charge counts.
struct Bank {
    file: Mutex<std::fs::File>,
    path: PathBuf,
}

impl Bank {
    fn open(path: PathBuf) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Self { file: Mutex::new(file), path })
    }

    fn charge(&self, key: &str, payment: &Payment) -> std::io::Result<usize> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        writeln!(file, "{key} {} {}", payment.account, payment.cents)?;
        file.sync_data()?;
        Ok(self.charges()?.len())
    }

    /// Every charge made, one line each.
    fn charges(&self) -> std::io::Result<Vec<String>> {
        Ok(std::fs::read_to_string(&self.path)?.lines().map(str::to_owned).collect())
    }
}

struct Api {
    bank: Bank,
    settle: Duration,
}

async fn pay(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Json(payment): Json<Payment>,
) -> Result<(StatusCode, Json<Receipt>), (StatusCode, String)> {
    if payment.cents <= 0 {
        // A 4xx is stored like a success: the same request would fail the same way.
        return Err((StatusCode::UNPROCESSABLE_ENTITY, "cents must be positive".into()));
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default();
    // A 5xx is not stored: the client's retry runs again.
    let n = api
        .bank
        .charge(key.trim_matches('"'), &payment)
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    tokio::time::sleep(api.settle).await; // the rest of the work: a receipt, a notification
    Ok((
        StatusCode::CREATED,
        Json(Receipt { charge: format!("ch_{n}"), account: payment.account, cents: payment.cents }),
    ))
}

/// The API: `POST /payments` behind the layer, keys scoped by the client's API key.
fn router(api: Arc<Api>, store: Arc<dyn DedupStore>, lease: Duration, orphans: Orphans) -> Router {
    let layer = IdempotencyLayer::shared(store)
        .principal(|req| req.headers.get("x-api-key")?.to_str().ok().map(str::to_owned))
        .lease(lease)
        .on_orphan(orphans);
    Router::new().route("/payments", post(pay)).with_state(api).layer(layer)
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let data = PathBuf::from(env("DATA_DIR", "./data/payments-api"));
    std::fs::create_dir_all(&data)?;
    let store: Arc<dyn DedupStore> = match std::env::var("EXACTLY_POSTGRES_URL") {
        Ok(url) => {
            Arc::new(exactly::postgres::PgStore::builder(url).schema(env("SCHEMA", "exactly_http")).open().await?)
        }
        Err(_) => Arc::new(exactly::SledStore::open(data.join("store"))?),
    };
    let charges = std::env::var("CHARGES").map_or_else(|_| data.join("charges.log"), PathBuf::from);
    let api =
        Arc::new(Api { bank: Bank::open(charges)?, settle: Duration::from_millis(env("SETTLE_MS", "0").parse()?) });
    let lease = Duration::from_millis(env("LEASE_MS", "30000").parse()?);
    let orphans = match env("ORPHANS", "rerun").as_str() {
        "rerun" => Orphans::Rerun,
        "refuse" => Orphans::Refuse,
        other => return Err(format!("ORPHANS is {other:?}: use rerun or refuse").into()),
    };
    let listener = tokio::net::TcpListener::bind(env("LISTEN", "127.0.0.1:3000")).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, router(api, store, lease, orphans)).await?;
    Ok(())
}

/// The demo: a server on a free port and a client that retries, as after timeouts.
async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let api = Arc::new(Api { bank: Bank::open(dir.path().join("charges.log"))?, settle: Duration::ZERO });
    let store: Arc<dyn DedupStore> = Arc::new(exactly::SledStore::open(dir.path().join("store"))?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/payments", listener.local_addr()?);
    let app = router(api.clone(), store, Duration::from_secs(30), Orphans::Rerun);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = reqwest::Client::new();
    let send = async |key: &str, body: serde_json::Value| -> Result<String, reqwest::Error> {
        let mut request = client.post(&url).header("x-api-key", "demo-client").json(&body);
        if !key.is_empty() {
            request = request.header("idempotency-key", format!("\"{key}\""));
        }
        let response = request.send().await?;
        let replayed = if response.headers().contains_key("idempotent-replayed") { " (replayed)" } else { "" };
        Ok(format!("{}{replayed} {}", response.status(), response.text().await?))
    };
    let pay = serde_json::json!({"account": "acct-1", "cents": 500});
    println!("POST pay-1          -> {}", send("pay-1", pay.clone()).await?);
    println!("retry pay-1         -> {}", send("pay-1", pay.clone()).await?);
    println!("retry pay-1 again   -> {}", send("pay-1", pay.clone()).await?);
    let other = serde_json::json!({"account": "acct-1", "cents": 900});
    println!("pay-1, other amount -> {}", send("pay-1", other).await?);
    println!("POST without a key  -> {}", send("", pay.clone()).await?);
    println!("POST pay-2          -> {}", send("pay-2", pay).await?);

    let charges = api.bank.charges()?;
    println!("\nthe bank charged: {charges:?}");
    if charges.len() != 2 {
        return Err(format!("expected one charge per key, the bank made {}", charges.len()).into());
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::args().nth(1).as_deref() {
        None => demo().await,
        Some("serve") => serve().await,
        Some(other) => Err(format!("unknown command {other:?}: run with no argument for the demo, or `serve`").into()),
    }
}
