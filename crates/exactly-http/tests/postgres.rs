//! Two API servers behind a load balancer, sharing one PostgreSQL store: a key is run once
//! across both. Real PostgreSQL (scripts/services.sh), a schema of the test's own.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{keyed, serve, until};
use exactly_http::{IdempotencyLayer, WhenInFlight};
use exactly_postgres::PgStore;
use reqwest::StatusCode;

fn url() -> String {
    std::env::var("EXACTLY_POSTGRES_URL")
        .expect("EXACTLY_POSTGRES_URL is not set: run scripts/test.sh (it starts PostgreSQL and names the database)")
}

/// A store on a schema no other test uses, dropped at the end.
struct Schema(String);

impl Schema {
    fn new(what: &str) -> Self {
        Self(format!("t_http_{what}_{}", std::process::id()))
    }

    async fn store(&self) -> PgStore {
        PgStore::builder(url()).schema(&self.0).open().await.unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await.unwrap();
            });
        })
        .join();
    }
}

#[tokio::test]
async fn two_servers_on_one_store_run_each_key_once() {
    let schema = Schema::new("two");
    let wait = WhenInFlight::Wait(Duration::from_secs(30));
    // Each server opens the store as a separate process would: its own pools and instance.
    let a = serve(IdempotencyLayer::new(schema.store().await).when_in_flight(wait)).await;
    let b = serve(IdempotencyLayer::new(schema.store().await).when_in_flight(wait)).await;
    let client = reqwest::Client::new();

    // A retry that lands on the other server gets the first one's response.
    let first = keyed(&client, &a.url("/payments"), "k-1", "7 EUR").send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = first.text().await.unwrap();
    let retry = keyed(&client, &b.url("/payments"), "k-1", "7 EUR").send().await.unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.text().await.unwrap(), first);
    let mismatch = keyed(&client, &b.url("/payments"), "k-1", "8 EUR").send().await.unwrap();
    assert_eq!(mismatch.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // 50 copies of one request at once, alternating servers, while its first run is held.
    let requests: Vec<_> = (0..50)
        .map(|i| {
            let server = if i % 2 == 0 { &a } else { &b };
            tokio::spawn(keyed(&client, &server.url("/slow"), "k-2", "").send())
        })
        .collect();
    let entered = || a.effects.slow_entered.load(Ordering::SeqCst) + b.effects.slow_entered.load(Ordering::SeqCst);
    until("a server ran the request", || entered() > 0).await;
    a.effects.gate.add_permits(100);
    b.effects.gate.add_permits(100);
    let mut bodies = std::collections::HashSet::new();
    for request in requests {
        let response = request.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        bodies.insert(response.text().await.unwrap());
    }
    assert_eq!(bodies.len(), 1, "every copy got the one response: {bodies:?}");
    assert_eq!(entered(), 1, "one execution across both servers");
    assert_eq!(a.effects.payments() + b.effects.payments(), 2);
}
