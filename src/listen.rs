//! The listening sockets: taken from systemd by name and type (socket
//! activation), or bound from the configuration.

use rustix::net::SocketType;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use tokio::io::unix::AsyncFd;

/// `FileDescriptorName=` of the TCPMUX socket (TCP port 1).
pub const FDNAME_TCPMUX: &str = "tcpmux";
/// `FileDescriptorName=` of the Message Send Protocol sockets (port 18).
pub const FDNAME_MSP: &str = "msp";

/// The sockets the daemon serves.
#[derive(Debug, Default)]
pub struct Sockets {
    pub tcpmux: Vec<TcpListener>,
    pub msp_stream: Vec<TcpListener>,
    pub msp_datagram: Vec<UdpSocket>,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("socket activation: {0}")]
    Activation(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What a passed socket is for, decided from its name and type alone:
/// systemd does not keep the order of the descriptors between boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Tcpmux,
    MspStream,
    MspDatagram,
}

/// Decides the role of a passed socket, or says why it cannot be used.
pub fn classify(name: &str, kind: SocketType, listening: bool) -> Result<Role, String> {
    let role = match (name, kind) {
        (FDNAME_TCPMUX, SocketType::STREAM) => Role::Tcpmux,
        (FDNAME_MSP, SocketType::STREAM) => Role::MspStream,
        (FDNAME_MSP, SocketType::DGRAM) => Role::MspDatagram,
        (FDNAME_TCPMUX, _) => {
            return Err(format!(
                "socket named \"{FDNAME_TCPMUX}\" is not a stream socket (use ListenStream=)"
            ));
        }
        (FDNAME_MSP, _) => {
            return Err(format!(
                "socket named \"{FDNAME_MSP}\" is neither a stream nor a datagram socket"
            ));
        }
        _ => {
            return Err(format!(
                "socket named \"{name}\" is not one of ours: set FileDescriptorName={FDNAME_TCPMUX} \
                 or FileDescriptorName={FDNAME_MSP} in its .socket unit"
            ));
        }
    };
    if kind == SocketType::STREAM && !listening {
        return Err(format!(
            "socket named \"{name}\" is a connection, not a listening socket (remove Accept=yes)"
        ));
    }
    Ok(role)
}

/// Takes the sockets systemd passed (`LISTEN_PID`, `LISTEN_FDS`,
/// `LISTEN_FDNAMES`) and removes those variables, so that no child inherits
/// them. `None` when the daemon was not socket-activated.
///
/// # Safety
/// Changes the environment: call it before any other thread exists.
pub unsafe fn take_activated() -> Result<Option<Sockets>, ListenError> {
    // Variables meant for another process (LISTEN_PID not ours) are removed
    // and otherwise ignored.
    let ours = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    if !ours {
        for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            // SAFETY: the caller guarantees that no other thread runs yet.
            unsafe { std::env::remove_var(var) };
        }
        return Ok(None);
    }
    // SAFETY: the caller guarantees that no other thread runs yet.
    let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
        .map_err(|e| ListenError::Activation(format!("LISTEN_FDS/LISTEN_FDNAMES: {e}")))?;
    let fds: Vec<(RawFd, String)> = fds.collect();
    if fds.is_empty() {
        return Ok(None);
    }
    let mut sockets = Sockets::default();
    for (raw, name) in fds {
        // SAFETY: systemd passed these descriptors to this process for it to
        // own; sd-notify checked LISTEN_PID and the count.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let kind = rustix::net::sockopt::socket_type(&fd)
            .map_err(|e| ListenError::Activation(format!("descriptor {raw} (\"{name}\"): {e}")))?;
        let listening = kind == SocketType::STREAM
            && rustix::net::sockopt::socket_acceptconn(&fd).map_err(|e| {
                ListenError::Activation(format!("descriptor {raw} (\"{name}\"): {e}"))
            })?;
        let role = classify(&name, kind, listening)
            .map_err(|e| ListenError::Activation(format!("descriptor {raw}: {e}")))?;
        let family = rustix::net::sockopt::socket_domain(&fd)
            .map_err(|e| ListenError::Activation(format!("descriptor {raw} (\"{name}\"): {e}")))?;
        if family != rustix::net::AddressFamily::INET && family != rustix::net::AddressFamily::INET6
        {
            return Err(ListenError::Activation(format!(
                "descriptor {raw} (\"{name}\"): not an IPv4 or IPv6 socket"
            )));
        }
        match role {
            Role::Tcpmux => sockets.tcpmux.push(TcpListener::from(fd)),
            Role::MspStream => sockets.msp_stream.push(TcpListener::from(fd)),
            Role::MspDatagram => sockets.msp_datagram.push(UdpSocket::from(fd)),
        }
    }
    Ok(Some(sockets))
}

/// Binds TCP listeners on `addrs`, with a backlog of
/// [`LISTEN_BACKLOG`](crate::limits::LISTEN_BACKLOG) (std's is 128).
pub fn bind_tcp(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, ListenError> {
    addrs
        .iter()
        .map(|&addr| {
            let listener =
                TcpListener::bind(addr).map_err(|source| ListenError::Bind { addr, source })?;
            // Listening again on a listening socket only changes its backlog.
            rustix::net::listen(&listener, crate::limits::LISTEN_BACKLOG).map_err(|e| {
                ListenError::Bind {
                    addr,
                    source: e.into(),
                }
            })?;
            Ok(listener)
        })
        .collect()
}

/// The next connection, or None once `shutdown` is cancelled. Errors that
/// concern one connection are skipped; others (out of descriptors or
/// memory) pause the loop for [`ACCEPT_ERROR_BACKOFF`] so that a listener
/// that stays readable does not make it spin.
///
/// [`ACCEPT_ERROR_BACKOFF`]: crate::limits::ACCEPT_ERROR_BACKOFF
pub async fn accept(
    listener: &tokio::net::TcpListener,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(conn) => return Some(conn),
            Err(e) => after_accept_error(&e).await,
        }
    }
}

/// What an accept that failed with `e` is followed by: nothing for an
/// error of that one connection, else a warning and a pause of
/// [`crate::limits::ACCEPT_ERROR_BACKOFF`].
async fn after_accept_error(e: &std::io::Error) {
    if is_per_connection_error(e) {
        tracing::debug!("accept: {e}");
    } else {
        tracing::warn!(
            "accept: {e}; pausing {} ms",
            crate::limits::ACCEPT_ERROR_BACKOFF.as_millis()
        );
        tokio::time::sleep(crate::limits::ACCEPT_ERROR_BACKOFF).await;
    }
}

/// The next connection on a TCPMUX listener, or None once `shutdown` is
/// cancelled, like [`accept`], but as a plain non-blocking socket: not
/// registered with the event loop, which a handshake whose request line is
/// already there does without.
pub async fn accept_plain(
    listener: &AsyncFd<TcpListener>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = accept4(listener) => accepted,
        };
        match accepted {
            Ok(conn) => return Some(conn),
            Err(e) => after_accept_error(&e).await,
        }
    }
}

/// One accept4(2), waiting for the listener to be readable first when it
/// has nothing queued.
async fn accept4(listener: &AsyncFd<TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    use rustix::net::{SocketFlags, acceptfrom_with};
    loop {
        let mut ready = listener.readable().await?;
        let accepted = ready.try_io(|l| {
            acceptfrom_with(l.get_ref(), SocketFlags::NONBLOCK | SocketFlags::CLOEXEC)
                .map_err(std::io::Error::from)
        });
        let Ok(accepted) = accepted else {
            // Nothing queued: readiness is cleared, wait again.
            continue;
        };
        let (fd, peer) = accepted?;
        // A TCP listener's peers are IPv4 or IPv6 (checked when taken).
        let Some(peer) = peer.and_then(|a| SocketAddr::try_from(a).ok()) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "connection without an IPv4 or IPv6 peer address",
            ));
        };
        return Ok((TcpStream::from(fd), peer));
    }
}

/// What a new connection has already sent, looked at without waiting and
/// without taking it: `Ok(Some(n))` with `n` bytes copied into `buf`,
/// `Ok(None)` when nothing has come yet, `Ok(Some(0))` when the client
/// has closed its side already.
pub fn peek_queued(
    socket: &impl std::os::fd::AsFd,
    buf: &mut [u8],
) -> std::io::Result<Option<usize>> {
    use rustix::io::Errno;
    use rustix::net::{RecvFlags, recv};
    match recv(socket, buf, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((n, _)) => Ok(Some(n)),
        Err(Errno::AGAIN | Errno::INTR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn is_per_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    )
}

/// Sets TCP_DEFER_ACCEPT on a TCPMUX listener: the kernel hands over a
/// connection once its first data came (or after about `secs` seconds of
/// silence), so that the request line is usually there when it is
/// accepted. 0 turns it off.
pub fn set_defer_accept(listener: &TcpListener, secs: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid descriptor, and a pointer to an int that lives across
    // the call, with its size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Binds UDP sockets on `addrs`.
pub fn bind_udp(addrs: &[SocketAddr]) -> Result<Vec<UdpSocket>, ListenError> {
    addrs
        .iter()
        .map(|&addr| UdpSocket::bind(addr).map_err(|source| ListenError::Bind { addr, source }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_name_and_type() {
        assert_eq!(
            classify("tcpmux", SocketType::STREAM, true),
            Ok(Role::Tcpmux)
        );
        assert_eq!(
            classify("msp", SocketType::STREAM, true),
            Ok(Role::MspStream)
        );
        assert_eq!(
            classify("msp", SocketType::DGRAM, false),
            Ok(Role::MspDatagram)
        );
    }

    #[test]
    fn wrong_sockets_are_explained() {
        assert!(
            classify("tcpmux", SocketType::DGRAM, false)
                .unwrap_err()
                .contains("ListenStream")
        );
        assert!(
            classify("web", SocketType::STREAM, true)
                .unwrap_err()
                .contains("FileDescriptorName")
        );
        assert!(classify("unknown", SocketType::STREAM, true).is_err());
        assert!(
            classify("tcpmux", SocketType::STREAM, false)
                .unwrap_err()
                .contains("Accept=yes")
        );
        assert!(classify("msp", SocketType::SEQPACKET, true).is_err());
    }
}
