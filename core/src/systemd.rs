//! systemd `Type=notify` support. A service that can tell when its own work is wedged sends
//! WATCHDOG=1 from that work itself (the agent, from its tailing loop); for the others the
//! runner (`follow`) sends READY=1 once the config is loaded and the telemetry listener (with
//! `/ready`) is bound, WATCHDOG=1 from the async runtime (a deadlocked or blocked process gets
//! restarted; whether records move is `/ready`'s and the lag metrics' business), and STOPPING=1
//! when the drain starts. READY=1 does not wait for Kafka: a start during a cluster outage
//! succeeds and the service waits for the cluster, rather than failing its start timeout and
//! restarting in a loop. Without `NOTIFY_SOCKET` these do nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

pub fn ready() {
    notify(NotifyState::Ready);
}

pub fn stopping() {
    notify(NotifyState::Stopping);
}

pub fn watchdog() {
    notify(NotifyState::Watchdog);
}

/// How often to send WATCHDOG=1: half of `WatchdogSec`, or `None` when no watchdog is set.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

/// Whether systemd listens (`NOTIFY_SOCKET` is set).
pub(crate) fn listening() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// The runner's notifications for a service that does not send its own: READY=1 now, then
/// WATCHDOG=1 every half `WatchdogSec` until `stop`.
pub(crate) async fn follow(stop: CancellationToken) {
    ready();
    let Some(interval) = watchdog_interval() else {
        return;
    };
    let mut ticks = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => watchdog(),
        }
    }
}
