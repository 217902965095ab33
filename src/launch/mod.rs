//! Starting a service's program on an accepted connection.
//!
//! The handshake decides *what* to start; a [`Launcher`] decides *how*. The
//! handshake knows nothing of processes or units.

pub mod child;
pub mod exec;
pub mod forward;
pub mod handover;
pub mod pass;
pub mod spawn;
pub mod systemd;
pub mod warm;

use crate::admission::FdGuard;
use crate::config::Service;
pub use crate::config::check_program;
use crate::sessions::SessionSlot;
use crate::tcpmux::reply;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A client's connection: a plain non-blocking socket while nothing has
/// had to wait on it, registered with the event loop from the first wait
/// on. An exec session's connection that never waited is never registered:
/// it goes from accept to the program without an epoll_ctl.
#[derive(Debug)]
pub enum ClientSocket {
    Plain(std::net::TcpStream),
    Registered(TcpStream),
}

impl ClientSocket {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            ClientSocket::Plain(s) => s.local_addr(),
            ClientSocket::Registered(s) => s.local_addr(),
        }
    }

    /// Sends what fits now without waiting (a direct send(2): a socket just
    /// put on the event loop may not have been seen writable by it yet, and
    /// tokio's `try_write` would not even try). Returns how much was sent.
    pub fn send_now(&self, text: &[u8]) -> std::io::Result<usize> {
        use rustix::net::{SendFlags, send};
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        Ok(send(self, text, flags)?)
    }

    /// The connection on the event loop, for what has to wait on it.
    pub fn registered(self) -> std::io::Result<TcpStream> {
        match self {
            ClientSocket::Plain(s) => TcpStream::from_std(s),
            ClientSocket::Registered(s) => Ok(s),
        }
    }

    /// The connection off the event loop (still non-blocking).
    pub fn into_std(self) -> std::io::Result<std::net::TcpStream> {
        match self {
            ClientSocket::Plain(s) => Ok(s),
            ClientSocket::Registered(s) => s.into_std(),
        }
    }
}

impl std::os::fd::AsFd for ClientSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            ClientSocket::Plain(s) => s.as_fd(),
            ClientSocket::Registered(s) => s.as_fd(),
        }
    }
}

/// A connection whose handshake is done, ready to be handed to a service.
#[derive(Debug)]
pub struct Connection {
    pub stream: ClientSocket,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Time the client has to take the `+` line.
    pub reply_timeout: Duration,
}

impl Connection {
    /// Sends the `+` line of a plus-mode service; nothing for a dedicated
    /// one, whose program answers itself. A launcher calls this once
    /// everything the start needs is in hand, so that no client is told
    /// `+` for a session that cannot be started.
    ///
    /// The line nearly always fits the empty send buffer at once; the
    /// connection goes onto the event loop only when it does not.
    pub async fn send_plus(self, service: &Service) -> Result<Self, Failed> {
        if !service.plus {
            return Ok(self);
        }
        let gone = |e: std::io::Error| Failed::from(LaunchError::ClientGone(e.to_string()));
        let sent = match self.stream.send_now(reply::PLUS) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(gone(e)),
        };
        let rest = &reply::PLUS[sent..];
        if rest.is_empty() {
            return Ok(self);
        }
        let mut stream = self.stream.registered().map_err(gone)?;
        match tokio::time::timeout(self.reply_timeout, stream.write_all(rest)).await {
            Ok(Ok(())) => Ok(Connection {
                stream: ClientSocket::Registered(stream),
                ..self
            }),
            Ok(Err(e)) => Err(gone(e)),
            Err(_) => Err(LaunchError::ClientGone("did not take the + line in time".into()).into()),
        }
    }

    /// Whether the client closed its side or reset the connection while it
    /// waited. Bytes it sent ahead, for the program, do not count.
    pub fn hung_up(&self) -> bool {
        use rustix::net::RecvFlags;
        let mut byte = [0u8; 1];
        match rustix::net::recv(
            &self.stream,
            &mut byte[..],
            RecvFlags::PEEK | RecvFlags::DONTWAIT,
        ) {
            Ok((0, _)) => true,
            Ok(_) => false,
            Err(e) => e != rustix::io::Errno::AGAIN && e != rustix::io::Errno::INTR,
        }
    }

    /// The connection, for an answer to a client that has heard nothing.
    pub fn unanswered(self) -> Option<std::net::TcpStream> {
        self.into_blocking().ok().map(|(socket, _, _)| socket)
    }

    /// The connection as an ordinary blocking socket, ready to become a
    /// program's stdin and stdout. O_NONBLOCK belongs to the open file,
    /// shared by every copy of the descriptor, so the program would see the
    /// runtime's non-blocking mode otherwise.
    pub fn into_blocking(
        self,
    ) -> Result<(std::net::TcpStream, SocketAddr, SocketAddr), LaunchError> {
        let socket = self.stream.into_std().map_err(LaunchError::Socket)?;
        socket.set_nonblocking(false).map_err(LaunchError::Socket)?;
        Ok((socket, self.peer, self.local))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("program {path}: {cause}")]
    Program { path: String, cause: String },
    #[error("preparing the connection for the program: {0}")]
    Socket(std::io::Error),
    #[error("starting {path}: {source}")]
    Spawn {
        path: String,
        source: std::io::Error,
    },
    #[error("no command configured: only the systemd launcher can take it from unit drop-ins")]
    NoCommand,
    #[error("systemd launcher: {0}")]
    Systemd(String),
    #[error("the client went away before the session started: {0}")]
    ClientGone(String),
    /// No turn to start a unit came in time (`[tcpmux] max_starting_units`).
    #[error("systemd launcher: {0}")]
    NoTurn(String),
    /// The daemon a forward or pass service hands its connections to
    /// cannot take this one.
    #[error("{0}")]
    Backend(String),
}

/// A launch that failed, with the client's connection when it can still be
/// answered: it has heard nothing yet, not even `+`.
#[derive(Debug)]
pub struct Failed {
    pub error: LaunchError,
    pub conn: Option<std::net::TcpStream>,
}

impl From<LaunchError> for Failed {
    fn from(error: LaunchError) -> Self {
        Failed { error, conn: None }
    }
}

/// One way of running a service's program.
pub trait Launcher {
    /// Checks, before the client is told `+`, what can be checked without
    /// starting anything.
    fn precheck(&self, service: &Service) -> Result<(), LaunchError>;

    /// Descriptors the daemon needs while it starts a session; `launch`
    /// gets a guard holding that many and keeps what the session goes on
    /// holding.
    fn start_fds(&self) -> usize;

    /// Starts the program with `conn` as its standard input and output,
    /// sending `+` first for a plus-mode service ([`Connection::send_plus`])
    /// once nothing but the start itself can fail. `slot` is held until
    /// the session ends.
    fn launch(
        &self,
        service: Arc<Service>,
        conn: Connection,
        slot: SessionSlot,
        fds: FdGuard,
    ) -> impl Future<Output = Result<(), Failed>> + Send;
}

/// How a session's program ended, in systemd's own terms: `EXIT_CODE=`
/// (`exited`, `killed`, `dumped`) and `EXIT_STATUS=` (the exit status, or
/// the signal's name without `SIG`), as systemd gives them to
/// `ExecStopPost=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Exited(i32),
    Killed(i32),
    Dumped(i32),
}

/// `si_code` values of waitid(2), which systemd reports as `ExecMainCode`.
const CLD_EXITED: i32 = 1;
const CLD_KILLED: i32 = 2;
const CLD_DUMPED: i32 = 3;

impl Exit {
    /// A child's wait status.
    pub fn of(status: std::process::ExitStatus) -> Option<Exit> {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Some(Exit::Exited(code)),
            (None, Some(sig)) if status.core_dumped() => Some(Exit::Dumped(sig)),
            (None, Some(sig)) => Some(Exit::Killed(sig)),
            (None, None) => None,
        }
    }

    /// A unit's `ExecMainCode` and `ExecMainStatus`; none while its main
    /// process has not exited (code 0).
    pub fn of_systemd(code: i32, status: i32) -> Option<Exit> {
        match code {
            CLD_EXITED => Some(Exit::Exited(status)),
            CLD_KILLED => Some(Exit::Killed(status)),
            CLD_DUMPED => Some(Exit::Dumped(status)),
            _ => None,
        }
    }

    /// `EXIT_CODE=`.
    pub fn code(self) -> &'static str {
        match self {
            Exit::Exited(_) => "exited",
            Exit::Killed(_) => "killed",
            Exit::Dumped(_) => "dumped",
        }
    }

    /// `EXIT_STATUS=`: `3`, `TERM`.
    pub fn status(self) -> ExitStatusField {
        ExitStatusField(self)
    }
}

/// The value of `EXIT_STATUS=`: an exit status, or a signal's name.
#[derive(Debug, Clone, Copy)]
pub struct ExitStatusField(Exit);

impl std::fmt::Display for ExitStatusField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Exit::Exited(code) => write!(f, "{code}"),
            Exit::Killed(sig) | Exit::Dumped(sig) => {
                match nix::sys::signal::Signal::try_from(sig) {
                    Ok(s) => f.write_str(s.as_str().trim_start_matches("SIG")),
                    Err(_) => write!(f, "{sig}"),
                }
            }
        }
    }
}

/// "exited with status 3", "killed by signal TERM", "dumped core on
/// signal SEGV".
impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Exited(_) => write!(f, "exited with status {}", self.status()),
            Exit::Killed(_) => write!(f, "killed by signal {}", self.status()),
            Exit::Dumped(_) => write!(f, "dumped core on signal {}", self.status()),
        }
    }
}

/// The environment every session gets, as systemd's `Accept=yes` sets it
/// (`REMOTE_*`) plus tcpmuxd's own.
pub fn session_environment(
    service: &Service,
    peer: SocketAddr,
    local: SocketAddr,
) -> Vec<(&'static str, String)> {
    vec![
        ("TCPMUX_SERVICE", service.name.clone()),
        ("REMOTE_ADDR", peer.ip().to_canonical().to_string()),
        ("REMOTE_PORT", peer.port().to_string()),
        ("LOCAL_ADDR", local.ip().to_canonical().to_string()),
        ("LOCAL_PORT", local.port().to_string()),
    ]
}

/// `fd` on the event loop, for reading and writing.
pub fn register(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same
    // descriptor until the AsyncFd is dropped.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exits_in_systemds_terms() {
        let exited = Exit::of(std::process::ExitStatus::from_raw(3 << 8)).unwrap();
        assert_eq!(
            (exited.code(), exited.status().to_string()),
            ("exited", "3".into())
        );
        assert_eq!(exited.to_string(), "exited with status 3");
        let killed = Exit::of(std::process::ExitStatus::from_raw(libc::SIGTERM)).unwrap();
        assert_eq!(
            (killed.code(), killed.status().to_string()),
            ("killed", "TERM".into())
        );
        let dumped = Exit::of(std::process::ExitStatus::from_raw(libc::SIGSEGV | 0x80)).unwrap();
        assert_eq!(dumped.to_string(), "dumped core on signal SEGV");
        assert_eq!(Exit::of_systemd(1, 3), Some(exited));
        assert_eq!(Exit::of_systemd(2, libc::SIGTERM), Some(killed));
        assert_eq!(Exit::of_systemd(0, 0), None);
        assert_eq!(Exit::Killed(99).status().to_string(), "99");
    }
}
