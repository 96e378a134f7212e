//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Whether one subscription is ready: `None` when it is, else what it says about why not.
pub(crate) struct Probe {
    pub(crate) name: String,
    pub(crate) ready: Box<dyn Fn() -> Option<Option<String>> + Send + Sync>,
}

struct Shared {
    metrics: Option<PrometheusHandle>,
    probes: Vec<Probe>,
}

/// Binds `addr`; an error (naming it) if it cannot.
pub(crate) async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Http { addr, source })
}

/// Serves on `listener` until `stop`.
pub(crate) fn serve(
    listener: tokio::net::TcpListener,
    metrics: Option<PrometheusHandle>,
    probes: Vec<Probe>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let addr = listener.local_addr().ok();
    let shared = Arc::new(Shared { metrics, probes });
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(shared);
    tracing::info!(?addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http endpoint failed");
        }
    })
}

async fn render(State(s): State<Arc<Shared>>) -> (StatusCode, String) {
    match &s.metrics {
        Some(h) => (StatusCode::OK, h.render()),
        None => (StatusCode::NOT_FOUND, "metrics are recorded by another recorder this program installed\n".into()),
    }
}

async fn readyz(State(s): State<Arc<Shared>>) -> (StatusCode, String) {
    let waiting: Vec<String> = s
        .probes
        .iter()
        .filter_map(|p| {
            (p.ready)().map(|detail| match detail {
                Some(d) => format!("{} ({d})", p.name),
                None => p.name.clone(),
            })
        })
        .collect();
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", waiting.join(", ")))
    }
}
