//! Telling systemd what the daemon is doing (sd_notify). Silent when not
//! run by systemd.

use std::time::Duration;

use sd_notify::NotifyState;

#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// `enabled`: whether `NOTIFY_SOCKET` was set at startup. `watchdog`: the
    /// `WatchdogSec=` interval, if any.
    pub fn new(enabled: bool, watchdog: Option<Duration>) -> Self {
        Notifier {
            enabled,
            watchdog: watchdog.filter(|w| !w.is_zero()),
        }
    }

    /// How often to send `WATCHDOG=1`: half the interval systemd enforces.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    pub fn status(&self, text: &str) {
        self.send(&[NotifyState::Status(text)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, state: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(state) {
            tracing::debug!("cannot notify the service manager: {e}");
        }
    }
}
