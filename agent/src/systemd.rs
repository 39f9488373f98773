//! systemd `Type=notify` support: READY=1 once the first scan and checkpoint are done,
//! WATCHDOG=1 from the tailing loop itself (so a wedged loop, not just a dead process, gets the
//! service restarted), STOPPING=1 when the drain starts. Without `NOTIFY_SOCKET` these do
//! nothing.

use std::time::Duration;

use sd_notify::NotifyState;

fn notify(state: NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

pub(crate) fn ready() {
    notify(NotifyState::Ready);
}

pub(crate) fn stopping() {
    notify(NotifyState::Stopping);
}

pub(crate) fn watchdog() {
    notify(NotifyState::Watchdog);
}

/// How often to send WATCHDOG=1: half of `WatchdogSec`, or `None` when no watchdog is set.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}
