//! Starting a service's program on an accepted connection.
//!
//! The handshake decides *what* to start; a [`Launcher`] decides *how*. The
//! handshake knows nothing of processes or units.

pub mod child;
pub mod exec;
pub mod handover;
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

/// A connection whose handshake is done, ready to be handed to a service.
#[derive(Debug)]
pub struct Connection {
    pub stream: TcpStream,
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
    pub async fn send_plus(&mut self, service: &Service) -> Result<(), Failed> {
        if !service.plus {
            return Ok(());
        }
        match tokio::time::timeout(self.reply_timeout, self.stream.write_all(reply::PLUS)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(LaunchError::ClientGone(e.to_string()).into()),
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
