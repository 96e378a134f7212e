//! A real axum server on 127.0.0.1 behind the layer, and counters of what its handlers ran.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)] // each test binary uses part of it

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use exactly_http::IdempotencyLayer;
use tokio::sync::Semaphore;

/// What the handlers ran, and the gate `/slow` waits at.
#[derive(Debug)]
pub struct Effects {
    pub payments: AtomicUsize,
    pub slow_entered: AtomicUsize,
    pub flaky: AtomicUsize,
    pub panics: AtomicUsize,
    pub gate: Semaphore,
}

impl Default for Effects {
    fn default() -> Self {
        Self {
            payments: AtomicUsize::new(0),
            slow_entered: AtomicUsize::new(0),
            flaky: AtomicUsize::new(0),
            panics: AtomicUsize::new(0),
            gate: Semaphore::new(0), // closed until a test opens it
        }
    }
}

impl Effects {
    pub fn payments(&self) -> usize {
        self.payments.load(Ordering::SeqCst)
    }
}

/// A server running until dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub effects: Arc<Effects>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops serving and waits until the server's task, and the layer with it, is gone.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The routes of a small payments API.
pub fn routes(effects: Arc<Effects>) -> Router {
    Router::new()
        .route(
            "/payments",
            post(async |axum::extract::State(e): axum::extract::State<Arc<Effects>>, body: String| {
                let n = e.payments.fetch_add(1, Ordering::SeqCst) + 1;
                (StatusCode::CREATED, [(header::LOCATION, format!("/payments/{n}"))], format!("payment {n}: {body}"))
            })
            .get(async || "listing"),
        )
        .route(
            "/refused",
            post(async |axum::extract::State(e): axum::extract::State<Arc<Effects>>| {
                e.payments.fetch_add(1, Ordering::SeqCst);
                (StatusCode::BAD_REQUEST, "insufficient funds")
            }),
        )
        .route(
            "/slow",
            post(async |axum::extract::State(e): axum::extract::State<Arc<Effects>>| {
                e.slow_entered.fetch_add(1, Ordering::SeqCst);
                let _pass = e.gate.acquire().await;
                let n = e.payments.fetch_add(1, Ordering::SeqCst) + 1;
                (StatusCode::CREATED, format!("slow payment {n}"))
            }),
        )
        .route(
            "/flaky",
            post(async |axum::extract::State(e): axum::extract::State<Arc<Effects>>| {
                // Fails the first time, as a dependency that was down would.
                match e.flaky.fetch_add(1, Ordering::SeqCst) {
                    0 => (StatusCode::SERVICE_UNAVAILABLE, "bank down".to_string()),
                    n => (StatusCode::CREATED, format!("attempt {}", n + 1)),
                }
            }),
        )
        .route(
            "/panics",
            post(async |axum::extract::State(e): axum::extract::State<Arc<Effects>>| {
                if e.panics.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("the handler broke");
                }
                "recovered"
            }),
        )
        .route("/whoami", get(async |headers: HeaderMap| format!("{:?}", headers.get("x-api-key")).into_response()))
        .with_state(effects)
}

/// Serves the routes behind `layer` on a free port.
pub async fn serve(layer: IdempotencyLayer) -> Server {
    let effects = Arc::new(Effects::default());
    let app = routes(effects.clone()).layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server { addr, effects, task }
}

/// A POST with a key.
pub fn keyed(client: &reqwest::Client, url: &str, key: &str, body: &str) -> reqwest::RequestBuilder {
    client.post(url).header("idempotency-key", format!("\"{key}\"")).body(body.to_string())
}

/// Waits until `done`, failing the test after 30 s with `what`.
pub async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "not within 30 s: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}
