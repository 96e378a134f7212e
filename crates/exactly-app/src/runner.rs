//! Running the subscriptions: start each, wait for a stop or a failure, then drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use exactly_core::Subscription;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{Error, http};

/// The subscriptions while they run.
pub(crate) struct Running {
    tasks: JoinSet<Result<(), Error>>,
    stop: CancellationToken,
}

impl Running {
    /// Starts every subscription; returns them running and a readiness probe for each.
    pub(crate) fn start(subscriptions: Vec<(String, Box<dyn Subscription>)>) -> (Self, Vec<http::Probe>) {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut probes = Vec::with_capacity(subscriptions.len());
        for (name, sub) in subscriptions {
            let status = sub.status();
            let alive = Arc::new(AtomicBool::new(true));
            let probe_alive = alive.clone();
            probes.push(http::Probe {
                name: name.clone(),
                ready: Box::new(move || match probe_alive.load(Ordering::Relaxed) && status.ready() {
                    true => None,
                    false => Some(status.detail()),
                }),
            });
            tracing::info!(subscription = %name, source = %sub.describe(), "starting");
            let stop = stop.clone();
            tasks.spawn(async move {
                let result = sub.run(stop).await;
                alive.store(false, Ordering::Relaxed);
                result.map_err(|source| Error::Subscription { name, source })
            });
        }
        (Self { tasks, stop }, probes)
    }

    /// Waits until `stop` is cancelled or a subscription ends on its own (which is an
    /// error: they run until stopped); returns that error.
    pub(crate) async fn until_stopped(&mut self, stop: &CancellationToken) -> Option<Error> {
        tokio::select! {
            () = stop.cancelled() => {
                tracing::info!("stopping: finishing messages in flight");
                None
            }
            Some(done) = self.tasks.join_next() => {
                let e = match done {
                    Ok(Ok(())) => Error::Config("a subscription stopped on its own".into()),
                    Ok(Err(e)) => e,
                    Err(e) => Error::Config(format!("a subscription panicked: {e}")),
                };
                tracing::error!(error = %e, "a subscription failed; stopping the others");
                Some(e)
            }
        }
    }

    /// Stops every subscription and waits (up to `within`) for each to drain; the first
    /// error of `first` or of the stops.
    pub(crate) async fn drain(mut self, within: Duration, mut first: Option<Error>) -> Option<Error> {
        self.stop.cancel();
        let drained = tokio::time::timeout(within, async {
            while let Some(done) = self.tasks.join_next().await {
                match done {
                    Ok(Err(e)) if first.is_none() => first = Some(e),
                    Ok(Err(e)) => tracing::error!(error = %e, "subscription failed while stopping"),
                    Err(e) => tracing::error!(error = %e, "subscription task panicked while stopping"),
                    Ok(Ok(())) => {}
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "subscriptions did not stop within {within:?}; what they did not acknowledge is delivered again"
            );
            self.tasks.abort_all();
        }
        first
    }
}
