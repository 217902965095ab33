//! Telling systemd what the daemon is doing (sd_notify). Silent when not
//! run by systemd.
//!
//! The messages are sent on a socket of our own, never blocking for
//! long: a service manager that does not read its notification socket
//! (or a full queue: Linux holds ten datagrams by default) must not stop a
//! thread of the runtime, and with it every connection. A `STATUS=` or
//! `WATCHDOG=1` that would block is dropped (the next one follows within
//! seconds); `READY=1`, `RELOADING=1` and `STOPPING=1` wait at most
//! [`NOTIFY_SEND_TIMEOUT`].

use rustix::net::SocketAddrUnix;
use sd_notify::NotifyState;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

/// Longest a state change waits for room in the service manager's queue.
pub const NOTIFY_SEND_TIMEOUT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
}

#[derive(Debug, Clone)]
struct Target {
    socket: std::sync::Arc<OwnedFd>,
    address: SocketAddrUnix,
}

/// Whether a message may be dropped rather than wait.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Urgency {
    Droppable,
    StateChange,
}

impl Notifier {
    /// `socket`: `NOTIFY_SOCKET` as found at startup (a path, or `@` and
    /// an abstract name). `watchdog`: the `WatchdogSec=` interval, if any.
    pub fn new(socket: Option<PathBuf>, watchdog: Option<Duration>) -> Self {
        let target = socket.and_then(|path| match Target::new(&path) {
            Ok(target) => Some(target),
            Err(e) => {
                eprintln!(
                    "tcpmuxd: NOTIFY_SOCKET={}: {e}: not notifying the service manager",
                    path.display()
                );
                None
            }
        });
        Notifier {
            target,
            watchdog: watchdog.filter(|w| !w.is_zero()),
        }
    }

    /// How often to send `WATCHDOG=1`: half the interval systemd enforces.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    pub fn ready(&self) {
        self.send(&[NotifyState::Ready], Urgency::StateChange);
    }

    /// `READY=1` and `STATUS=` in one message: `systemctl status` shows the
    /// state the service became ready in (serving, or why it serves
    /// nothing) from the first moment.
    pub fn ready_with_status(&self, text: &str) {
        self.send(
            &[NotifyState::Ready, NotifyState::Status(text)],
            Urgency::StateChange,
        );
    }

    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now], Urgency::StateChange),
            Err(_) => self.send(&[NotifyState::Reloading], Urgency::StateChange),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping], Urgency::StateChange);
    }

    pub fn status(&self, text: &str) {
        self.send(&[NotifyState::Status(text)], Urgency::Droppable);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog], Urgency::Droppable);
    }

    fn send(&self, states: &[NotifyState], urgency: Urgency) {
        let Some(target) = &self.target else {
            return;
        };
        let text: String = states.iter().map(|s| format!("{s}\n")).collect();
        if let Err(e) = target.send(text.as_bytes(), urgency) {
            tracing::debug!("cannot notify the service manager: {e}");
        }
    }
}

impl Target {
    fn new(path: &std::path::Path) -> rustix::io::Result<Target> {
        use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
        use std::os::unix::ffi::OsStrExt;
        let address = match path.as_os_str().as_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddrUnix::new_abstract_name(name)?,
            None => SocketAddrUnix::new(path)?,
        };
        let socket = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            None,
        )?;
        sockopt::set_socket_timeout(&socket, sockopt::Timeout::Send, Some(NOTIFY_SEND_TIMEOUT))?;
        Ok(Target {
            socket: std::sync::Arc::new(socket),
            address,
        })
    }

    fn send(&self, message: &[u8], urgency: Urgency) -> rustix::io::Result<usize> {
        use rustix::net::SendFlags;
        let flags = match urgency {
            Urgency::Droppable => SendFlags::DONTWAIT,
            Urgency::StateChange => SendFlags::empty(),
        };
        rustix::net::sendto(&*self.socket, message, flags, &self.address)
    }
}
