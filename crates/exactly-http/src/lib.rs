//! `Idempotency-Key` for HTTP APIs, on `exactly`'s stores.
//!
//! Clients retry a POST after a timeout; without help, the server runs it twice.
//! [`IdempotencyLayer`] is a [`tower::Layer`] (for axum, hyper, tonic's HTTP side) that runs
//! the protocol `exactly` runs for messages: the first request with a key claims it with a
//! lease, runs, and its response is stored durably before it is sent; a repeat gets the
//! stored response. It follows draft-ietf-httpapi-idempotency-key-header and Stripe's
//! behaviour:
//!
//! | The request | The answer |
//! |---|---|
//! | POST or PATCH without `Idempotency-Key` | `400`, `application/problem+json` naming the header |
//! | a key that is not one quoted structured-field string, or over 255 characters | `400` |
//! | the first with its key | runs; 2xx and 4xx responses are stored (24 h) |
//! | a repeat (same key, same request) | the stored response, with `Idempotent-Replayed: true` |
//! | a repeat while the first still runs | `409` with `Retry-After` (or waits, [`WhenInFlight::Wait`]) |
//! | the same key with another method, path, query, body or `Content-Type` | `422` |
//! | a 5xx, a panic, an error, or a client gone mid-request | the key is released: a retry runs again |
//! | the store does not answer | `503` with `Retry-After`; nothing ran |
//!
//! Keys are scoped per client by a [`principal`](IdempotencyLayer::principal) function, so
//! one client can never replay another's response. A server that crashes mid-request
//! holds the key until its lease (30 s) ends; then a retry runs it again. On the
//! PostgreSQL store (`exactly-postgres`) several servers behind a load balancer share the
//! keys. docs/HTTP.md has the details.
//!
//! ```no_run
//! use exactly_core::SledStore;
//! use exactly_http::IdempotencyLayer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SledStore::open("./data/http")?;
//! let app = axum::Router::new()
//!     .route("/payments", axum::routing::post(|body: String| async move { format!("paid {body}") }))
//!     .layer(IdempotencyLayer::new(store));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```

mod key;
mod layer;
mod metrics;
mod problem;
mod service;
mod stored;
pub mod webhook;

pub use key::IDEMPOTENCY_KEY;
pub use layer::{DEFAULT_LEASE, DEFAULT_RETENTION, IdempotencyLayer, Orphans, PrincipalFn, WhenInFlight};
pub use service::{IdempotencyService, RequestBody, ResponseBody};
pub use stored::IDEMPOTENT_REPLAYED;
pub use webhook::{Signature, WebhookReceiver};
