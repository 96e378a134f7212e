//! Stopping on SIGINT/SIGTERM, the way every `run_until_signal` does.

/// Waits for SIGINT or SIGTERM, then calls `stop` (which should start a graceful stop);
/// at a second signal it exits the process at once with status 130. Exiting then loses
/// nothing acknowledged: adapters acknowledge a message only after its outcome is durable,
/// and what was not acknowledged is delivered again.
///
/// Returns without calling `stop` when signals cannot be watched. Run it in a task beside
/// the consumer.
pub async fn stop_on_signals(stop: impl FnOnce()) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            tracing::error!("cannot watch SIGINT/SIGTERM");
            return;
        };
        let mut next = async || {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        };
        next().await;
        tracing::info!("signal received; finishing what is in flight (signal again to exit at once)");
        stop();
        next().await;
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        tracing::info!("signal received; finishing what is in flight (signal again to exit at once)");
        stop();
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::warn!("second signal: exiting now; what was not acknowledged is delivered again");
    std::process::exit(130);
}
