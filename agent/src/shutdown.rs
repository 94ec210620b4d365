//! One shutdown path: SIGTERM or Ctrl-C cancels a token every task watches.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on SIGTERM or SIGINT.
pub async fn on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
                let _ = ctrl_c.await;
                token.cancel();
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
    token.cancel();
}

/// Waits for `task`, a part of the agent that must run until `shutdown`.
/// Ending before that (a panic, or a return on a closed channel) leaves the
/// store selling into an outbox nobody forwards, with every health check
/// green: instead, it is logged, `failed` is set and the agent shuts down
/// cleanly, so its supervisor (k3s) restarts it on the durable outbox.
pub async fn supervise(
    name: &'static str,
    task: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let result = task.await;
    if shutdown.is_cancelled() {
        return;
    }
    let why = match result {
        Ok(()) => "it returned".to_owned(),
        Err(e) if e.is_panic() => "it panicked".to_owned(),
        Err(e) => format!("it was cancelled ({e})"),
    };
    tracing::error!(
        task = name,
        "{name} stopped while the agent was running ({why}); shutting down to be restarted"
    );
    failed.store(true, std::sync::atomic::Ordering::Relaxed);
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn a_task_that_dies_early_shuts_the_agent_down_as_failed() {
        let shutdown = CancellationToken::new();
        let failed = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(async { panic!("injected") });
        supervise("test task", task, shutdown.clone(), failed.clone()).await;
        assert!(shutdown.is_cancelled());
        assert!(failed.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_task_that_ends_after_shutdown_is_no_failure() {
        let shutdown = CancellationToken::new();
        let failed = Arc::new(AtomicBool::new(false));
        let s = shutdown.clone();
        let task = tokio::spawn(async move { s.cancelled().await });
        shutdown.cancel();
        supervise("test task", task, shutdown.clone(), failed.clone()).await;
        assert!(!failed.load(Ordering::Relaxed));
    }
}
