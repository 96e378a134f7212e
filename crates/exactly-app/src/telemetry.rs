//! Logs, the metrics recorder and store gauges.

use std::sync::Arc;
use std::time::Duration;

use exactly_core::DedupStore;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs a tracing subscriber unless the program has one: `RUST_LOG` wins over the
/// configured filter.
pub(crate) fn init_logs(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(cfg.filter.as_deref().unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only on a terminal: a file or a log collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    let _already_set = match cfg.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Installs the Prometheus recorder; `None` when the program installed a recorder already.
pub(crate) fn init_metrics() -> Option<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        .ok()?
        // A message's age at settlement runs to minutes behind a backlog.
        .set_buckets_for_metric(
            Matcher::Full(exactly_core::metrics::SETTLEMENT_AGE.into()),
            &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0],
        )
        .ok()?
        .build_recorder();
    let handle = recorder.handle();
    match metrics::set_global_recorder(recorder) {
        Ok(()) => {
            let upkeep = handle.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    upkeep.run_upkeep();
                }
            });
            Some(handle)
        }
        Err(_) => {
            tracing::warn!("a metrics recorder is installed already; /metrics answers 404");
            None
        }
    }
}

/// Publishes the store's own counts as gauges, every 5 s.
pub(crate) async fn store_gauges(store: Arc<dyn DedupStore>) {
    loop {
        let s = store.stats();
        metrics::gauge!("exactly_store_in_flight").set(s.in_flight as f64);
        metrics::gauge!("exactly_store_waiting_retry").set(s.waiting_retry as f64);
        metrics::counter!("exactly_store_fsyncs_total").absolute(s.fsyncs);
        metrics::counter!("exactly_store_filter_builds_total").absolute(s.filter_builds);
        if let Some(b) = s.disk_bytes {
            metrics::gauge!("exactly_store_disk_bytes").set(b as f64);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
