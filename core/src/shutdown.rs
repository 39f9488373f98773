//! Process signals as values tasks can await: SIGTERM/SIGINT cancel a shutdown token (a second
//! one exits at once, for an operator who will not wait for a drain), SIGHUP bumps a reload
//! counter that services supporting reload watch.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Handles to the process's signals.
#[derive(Debug, Clone)]
pub struct Signals {
    /// Cancelled on the first SIGTERM or SIGINT; every task selects on it.
    pub shutdown: CancellationToken,
    /// Incremented on each SIGHUP; `changed().await` wakes on the next one.
    pub reload: watch::Receiver<u64>,
}

/// Installs the handlers. They are installed before this returns, so a signal sent right after
/// cannot take the default action (killing the process without a drain).
pub fn listen() -> std::io::Result<Signals> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let shutdown = CancellationToken::new();
    let (reload_tx, reload) = watch::channel(0u64);
    let token = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading configuration");
                    reload_tx.send_modify(|n| *n += 1);
                    continue;
                }
            };
            if token.is_cancelled() {
                tracing::warn!("{name} again: exiting now without finishing the drain");
                std::process::exit(130);
            }
            tracing::info!("{name}: draining and shutting down");
            token.cancel();
        }
    });
    Ok(Signals { shutdown, reload })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;

    /// Tests that signal this process take turns: every listener sees every signal.
    pub(crate) static SIGNALS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    fn send(signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[tokio::test]
    async fn sighup_reloads_and_sigterm_cancels() {
        let _guard = SIGNALS.lock().await;
        let mut signals = listen().unwrap();
        send("-HUP");
        tokio::time::timeout(Duration::from_secs(10), signals.reload.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(*signals.reload.borrow(), 1);
        assert!(!signals.shutdown.is_cancelled());
        send("-TERM");
        tokio::time::timeout(Duration::from_secs(10), signals.shutdown.cancelled())
            .await
            .unwrap();
    }
}
