//! What tcpmuxd and a warm unit's helper (`tcpmux-warm`) say to each other
//! over the helper's standard input, an `AF_UNIX` `SOCK_SEQPACKET` socket:
//! one message per datagram, blocking calls only, so that the helper needs
//! no runtime.
//!
//! 1. helper → tcpmuxd: [`READY`] once it has found, in its own sandbox, the
//!    program it will run; or [`ERROR_PREFIX`] and the reason, then it exits.
//! 2. tcpmuxd → helper: the hand-over, the connection's variables
//!    ([`encode_handover`]) with two descriptors: the connection, and a
//!    status socket of this hand-over alone. When the unit's manager gives
//!    a cold unit's program the connection also as a named descriptor
//!    (`ExtraFileDescriptors=`, systemd 257 and later), the hand-over says
//!    so with [`LISTEN_FDNAMES`] and the name: the helper then gives the
//!    program the same, the connection as fd [`LISTEN_FD`] too, with
//!    `LISTEN_FDS=1`, `LISTEN_FDNAMES=NAME` and `LISTEN_PID` its own pid.
//! 3. helper → tcpmuxd, on the status socket: nothing when the program was
//!    exec'd (the status socket is close-on-exec, so tcpmuxd reads EOF), or
//!    [`ERROR_PREFIX`] and the reason exec failed.
//!
//! EOF on the helper's standard input, at any time before the hand-over,
//! means tcpmuxd is gone or retired the unit: the helper exits at once.
//! The status socket is a fresh one because systemd keeps a copy of the
//! unit's standard input for the unit's life: EOF on it would never come.

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, recvmsg, sendmsg,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Longest message either side sends: four variables of an IPv6 address or
/// a port each and a descriptor's name of up to [`MAX_FD_NAME`] bytes, or
/// an error text, which is cut to fit.
pub const MAX_MESSAGE: usize = 512;

/// Longest name of a passed descriptor, as systemd's (`FDNAME_MAX`).
pub const MAX_FD_NAME: usize = 255;

/// The helper is ready for a connection.
pub const READY: &[u8] = b"ready";

/// Starts a message saying why the helper cannot run the program.
pub const ERROR_PREFIX: &[u8] = b"error: ";

/// Descriptors of a hand-over: the connection, then the status socket.
pub const HANDOVER_FDS: usize = 2;

/// The variables of a hand-over, as systemd's `Accept=yes` sets them.
pub const VARIABLES: [&str; 4] = ["REMOTE_ADDR", "REMOTE_PORT", "LOCAL_ADDR", "LOCAL_PORT"];

/// The optional entry of a hand-over that names the connection as the
/// program's one passed descriptor.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

/// Where a passed descriptor goes: the first after standard error
/// (`SD_LISTEN_FDS_START`).
pub const LISTEN_FD: i32 = 3;

/// The variables of descriptor passing. The helper sets the first three
/// itself when it passes the connection, and then drops any of these it
/// inherited: they describe the helper's descriptors, not the program's.
pub const LISTEN_VARIABLES: [&str; 4] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "LISTEN_PIDFDID",
];

/// What a hand-over says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    /// Each of [`VARIABLES`], in the order received.
    pub variables: Vec<(String, String)>,
    /// The name under which the program also gets the connection as fd
    /// [`LISTEN_FD`]; none: as standard input and output alone.
    pub fd_name: Option<String>,
}

/// What the helper said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ready,
    Failed(String),
}

/// Reads a message of the helper. Anything unexpected is an error naming
/// what came.
pub fn parse_status(message: &[u8]) -> Result<Status, String> {
    if message == READY {
        return Ok(Status::Ready);
    }
    match message.strip_prefix(ERROR_PREFIX) {
        Some(text) => Ok(Status::Failed(
            String::from_utf8_lossy(text)
                .chars()
                .filter(|c| !c.is_control())
                .collect(),
        )),
        None => Err(format!(
            "unexpected message from the helper ({} bytes)",
            message.len()
        )),
    }
}

/// An error message, cut at [`MAX_MESSAGE`] bytes (on a character boundary).
pub fn error_message(text: &str) -> Vec<u8> {
    let mut message = ERROR_PREFIX.to_vec();
    let room = MAX_MESSAGE - ERROR_PREFIX.len();
    let mut end = text.len().min(room);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    message.extend_from_slice(&text.as_bytes()[..end]);
    message
}

/// The hand-over's text: `NAME=VALUE` for each of [`VARIABLES`], then
/// `LISTEN_FDNAMES=NAME` when the program is to get the connection as a
/// passed descriptor `fd_name` too, each followed by a NUL.
pub fn encode_handover(variables: &[(&str, String)], fd_name: Option<&str>) -> Vec<u8> {
    let mut message = Vec::new();
    let named = fd_name.map(|name| (LISTEN_FDNAMES, name.to_string()));
    for (name, value) in variables.iter().chain(named.as_ref()) {
        message.extend_from_slice(name.as_bytes());
        message.push(b'=');
        message.extend_from_slice(value.as_bytes());
        message.push(0);
    }
    message
}

/// What a hand-over says: exactly [`VARIABLES`], each once, and at most
/// one [`LISTEN_FDNAMES`], with values of visible ASCII (addresses, ports,
/// and a descriptor's name as systemd allows it: no `:`, at most
/// [`MAX_FD_NAME`] bytes).
pub fn parse_handover(message: &[u8]) -> Result<Handover, String> {
    let body = message
        .strip_suffix(&[0])
        .ok_or("hand-over does not end with NUL")?;
    let mut variables: Vec<(String, String)> = Vec::new();
    let mut fd_name: Option<String> = None;
    for entry in body.split(|&b| b == 0) {
        let text = std::str::from_utf8(entry).map_err(|_| "hand-over is not UTF-8")?;
        let (name, value) = text
            .split_once('=')
            .ok_or_else(|| format!("hand-over entry without '=': {}", text.escape_debug()))?;
        if name != LISTEN_FDNAMES && !VARIABLES.contains(&name) {
            return Err(format!("hand-over names an unknown variable {name:?}"));
        }
        if variables.iter().any(|(n, _)| n == name) || (name == LISTEN_FDNAMES && fd_name.is_some())
        {
            return Err(format!("hand-over names {name} twice"));
        }
        if value.is_empty() || !value.chars().all(|c| c.is_ascii_graphic()) {
            return Err(format!("hand-over: {name} has an invalid value"));
        }
        if name == LISTEN_FDNAMES {
            if value.contains(':') || value.len() > MAX_FD_NAME {
                return Err(format!(
                    "hand-over: {name} is not one descriptor's name of at most {MAX_FD_NAME} bytes"
                ));
            }
            fd_name = Some(value.to_string());
            continue;
        }
        variables.push((name.to_string(), value.to_string()));
    }
    if variables.len() != VARIABLES.len() {
        return Err(format!(
            "hand-over has {} of the {} variables",
            variables.len(),
            VARIABLES.len()
        ));
    }
    Ok(Handover { variables, fd_name })
}

/// Sends one message with `fds`, without SIGPIPE when the peer is gone.
/// `dontwait`: fail with `EAGAIN` instead of blocking.
pub fn send(
    socket: BorrowedFd<'_>,
    message: &[u8],
    fds: &[BorrowedFd<'_>],
    dontwait: bool,
) -> std::io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(HANDOVER_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other(
            "too many descriptors for one message",
        ));
    }
    let mut flags = SendFlags::NOSIGNAL;
    if dontwait {
        flags |= SendFlags::DONTWAIT;
    }
    let sent = sendmsg(socket, &[IoSlice::new(message)], &mut control, flags)?;
    if sent != message.len() {
        return Err(std::io::Error::other("message sent in part"));
    }
    Ok(())
}

/// Receives one message into `buf`, with the descriptors that came with it
/// (close-on-exec). `Ok((0, []))` is EOF. A message longer than `buf`, or
/// with more than [`HANDOVER_FDS`] descriptors, is an error.
pub fn recv(
    socket: impl AsFd,
    buf: &mut [u8],
    dontwait: bool,
) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(HANDOVER_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if dontwait {
        flags |= RecvFlags::DONTWAIT;
    }
    let got = recvmsg(socket, &mut [IoSliceMut::new(buf)], &mut control, flags)?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got.flags.contains(ReturnFlags::TRUNC) || got.flags.contains(ReturnFlags::CTRUNC) {
        return Err(std::io::Error::other("message too long"));
    }
    Ok((got.bytes, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vec<(&'static str, String)> {
        vec![
            ("REMOTE_ADDR", "2001:db8::1".into()),
            ("REMOTE_PORT", "40000".into()),
            ("LOCAL_ADDR", "127.0.0.1".into()),
            ("LOCAL_PORT", "1".into()),
        ]
    }

    #[test]
    fn handover_round_trip() {
        let message = encode_handover(&vars(), None);
        assert!(message.len() <= MAX_MESSAGE);
        let parsed = parse_handover(&message).unwrap();
        assert_eq!(
            parsed.variables[0],
            ("REMOTE_ADDR".into(), "2001:db8::1".into())
        );
        assert_eq!(parsed.variables.len(), 4);
        assert_eq!(parsed.fd_name, None);
    }

    #[test]
    fn handover_with_a_named_descriptor_round_trip_and_fits_at_its_longest() {
        let parsed = parse_handover(&encode_handover(&vars(), Some("connection"))).unwrap();
        assert_eq!(parsed.fd_name.as_deref(), Some("connection"));
        assert_eq!(parsed.variables.len(), 4);
        let longest = vec![
            (
                "REMOTE_ADDR",
                "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".into(),
            ),
            ("REMOTE_PORT", "65535".into()),
            (
                "LOCAL_ADDR",
                "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".into(),
            ),
            ("LOCAL_PORT", "65535".into()),
        ];
        let name = "n".repeat(MAX_FD_NAME);
        let message = encode_handover(&longest, Some(&name));
        assert!(message.len() <= MAX_MESSAGE, "{}", message.len());
        assert_eq!(parse_handover(&message).unwrap().fd_name, Some(name));
    }

    #[test]
    fn handover_rejects_a_descriptor_name_that_is_not_one() {
        let base = encode_handover(&vars(), None);
        for bad in [
            &b"LISTEN_FDNAMES=\0"[..],
            b"LISTEN_FDNAMES=a:b\0",
            b"LISTEN_FDNAMES=a b\0",
            b"LISTEN_FDNAMES=a\0LISTEN_FDNAMES=a\0",
            b"LISTEN_FDS=1\0",
            b"LISTEN_PID=1\0",
        ] {
            let mut message = base.clone();
            message.extend_from_slice(bad);
            assert!(parse_handover(&message).is_err(), "{bad:?}");
        }
        let mut long = base.clone();
        long.extend_from_slice(
            format!("LISTEN_FDNAMES={}\0", "n".repeat(MAX_FD_NAME + 1)).as_bytes(),
        );
        assert!(parse_handover(&long).is_err());
        let alone = encode_handover(&[], Some("connection"));
        assert!(
            parse_handover(&alone).is_err(),
            "the variables are still required"
        );
    }

    #[test]
    fn handover_rejects_what_is_not_four_known_variables() {
        for bad in [
            &b""[..],
            b"REMOTE_ADDR=1.2.3.4",
            b"PATH=/tmp\0",
            b"REMOTE_ADDR=1\0REMOTE_ADDR=2\0LOCAL_ADDR=3\0LOCAL_PORT=4\0",
            b"REMOTE_ADDR=1\0REMOTE_PORT=2\0LOCAL_ADDR=3\0",
            b"REMOTE_ADDR=a b\0REMOTE_PORT=2\0LOCAL_ADDR=3\0LOCAL_PORT=4\0",
            b"REMOTE_ADDR\0REMOTE_PORT=2\0LOCAL_ADDR=3\0LOCAL_PORT=4\0",
        ] {
            assert!(parse_handover(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_messages() {
        assert_eq!(parse_status(READY), Ok(Status::Ready));
        assert_eq!(
            parse_status(&error_message("/bin/x: not found")),
            Ok(Status::Failed("/bin/x: not found".into()))
        );
        assert!(parse_status(b"hello").is_err());
        let long = "é".repeat(MAX_MESSAGE);
        let cut = error_message(&long);
        assert!(cut.len() <= MAX_MESSAGE);
        assert!(std::str::from_utf8(&cut).is_ok());
    }

    #[test]
    fn descriptors_travel_with_a_message() {
        use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
        let (a, b) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
        send(a.as_fd(), b"hi", &[x.as_fd(), x.as_fd()], false).unwrap();
        let mut buf = [0u8; MAX_MESSAGE];
        let (n, fds) = recv(&b, &mut buf, false).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(fds.len(), 2);
        drop(a);
        let (n, fds) = recv(&b, &mut buf, false).unwrap();
        assert_eq!((n, fds.len()), (0, 0), "EOF once the peer is gone");
    }
}
