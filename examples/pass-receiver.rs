//! A daemon that takes clients from tcpmuxd's `pass` launcher: a starting
//! point for your own, in any language.
//!
//! Run it on the socket the service's `pass` key names, then point tcpmuxd
//! at it:
//!
//! ```text
//! cargo run --example pass-receiver -- /run/app/tcpmux.sock
//!
//! # tcpmuxd.toml
//! [[service]]
//! name = "app"
//! launcher = "pass"
//! pass = "/run/app/tcpmux.sock"
//! ```
//!
//! `tcpmux HOST app` then gets `+`, a line `hello TCPMUX_SERVICE=app
//! REMOTE_ADDR=... REMOTE_PORT=... LOCAL_ADDR=... LOCAL_PORT=...` and every
//! line it sends echoed back, until it closes.
//!
//! The protocol (tcpmuxd(8), PASSING CONNECTIONS TO A RUNNING DAEMON): the
//! daemon listens on a Unix `SOCK_SEQPACKET` socket; tcpmuxd connects to it
//! and keeps that connection, and sends one message per client:
//!
//! - ancillary data: `SCM_RIGHTS` with exactly one descriptor, the
//!   client's TCP connection, connected, in blocking mode, the TCPMUX
//!   request line already read (and `+` already sent, in plus mode);
//! - payload: `KEY=VALUE\n` lines, at most 1024 bytes: `TCPMUX_SERVICE`,
//!   `REMOTE_ADDR`, `REMOTE_PORT`, `LOCAL_ADDR`, `LOCAL_PORT`, as a
//!   program started by tcpmuxd gets them. Ignore keys you do not know.
//!
//! A receiver must close every descriptor it gets and does not use, and
//! must skip a message the kernel cut (`MSG_TRUNC`: the payload did not fit
//! the buffer; `MSG_CTRUNC`: descriptors did not fit the control buffer
//! and were closed by the kernel). This one does both. It removes a stale
//! socket file at its path before it binds, and prints `listening on PATH`
//! once it accepts.

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SocketAddrUnix, SocketFlags, SocketType, accept_with, bind, listen, recvmsg, socket_with,
};
use std::io::{BufRead, BufReader, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileTypeExt;
use std::process::ExitCode;

/// The longest payload tcpmuxd sends.
const MAX_MESSAGE: usize = 1024;

/// Room for more descriptors than tcpmuxd sends (one), so that a message
/// with more is seen, and its descriptors closed, rather than cut.
const MAX_FDS: usize = 4;

/// Connections tcpmuxd may have waiting to be accepted.
const BACKLOG: i32 = 16;

const USAGE: &str = "usage: pass-receiver SOCKET-PATH\n\
    Listens on SOCKET-PATH (a Unix SOCK_SEQPACKET socket) for the connections\n\
    tcpmuxd passes (launcher = \"pass\"), and answers each client with the\n\
    variables that came with it, then echoes its lines until it closes.";

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let path = match args.as_slice() {
        [flag] if flag == "--help" || flag == "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        // Anything else that looks like an option is a mistake, not a path.
        [path] if !path.to_string_lossy().starts_with('-') => path,
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(std::path::Path::new(path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pass-receiver: {}: {e}", path.to_string_lossy());
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path) -> std::io::Result<()> {
    // A socket file left by an earlier run would make bind fail.
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        std::fs::remove_file(path)?;
    }
    let listener = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    bind(&listener, &SocketAddrUnix::new(path)?)?;
    listen(&listener, BACKLOG)?;
    println!("listening on {}", path.display());
    std::io::stdout().flush()?;
    loop {
        // One connection from each tcpmuxd (a new one after it restarts).
        let from_tcpmuxd = accept_with(&listener, SocketFlags::CLOEXEC)?;
        std::thread::spawn(move || receive_all(from_tcpmuxd));
    }
}

/// Receives tcpmuxd's messages on one connection until it closes.
fn receive_all(from_tcpmuxd: OwnedFd) {
    loop {
        match receive(&from_tcpmuxd) {
            Ok(Some((variables, client))) => {
                std::thread::spawn(move || serve(client, variables));
            }
            Ok(None) => return,
            Err(e) => {
                eprintln!("pass-receiver: {e}");
                if e.kind() != std::io::ErrorKind::InvalidData {
                    return;
                }
            }
        }
    }
}

type Variables = Vec<(String, String)>;

/// One message: its variables and the client's connection; none at the
/// end. A message that is not what tcpmuxd sends is an `InvalidData`
/// error, its descriptors closed.
fn receive(from_tcpmuxd: &OwnedFd) -> std::io::Result<Option<(Variables, TcpStream)>> {
    let mut buf = [0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        from_tcpmuxd,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    // Every descriptor that came is owned here, and closed when dropped.
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let bad = |why: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    if got.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    if got
        .flags
        .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return bad(format!(
            "a message was cut (flags {:?}); skipped, its descriptors closed",
            got.flags
        ));
    }
    if fds.len() != 1 {
        return bad(format!(
            "a message with {} descriptors, not 1; skipped",
            fds.len()
        ));
    }
    let Ok(text) = std::str::from_utf8(&buf[..got.bytes]) else {
        return bad("a message that is not UTF-8; skipped".into());
    };
    let mut variables = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            return bad(format!("a line without '=': {line:?}; skipped"));
        };
        variables.push((key.to_string(), value.to_string()));
    }
    let client = TcpStream::from(fds.remove(0));
    Ok(Some((variables, client)))
}

/// Greets the client with what tcpmuxd said of it, then echoes its lines.
fn serve(client: TcpStream, variables: Variables) {
    let hello: Vec<String> = variables.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut writer = &client;
    if writeln!(writer, "hello {}", hello.join(" ")).is_err() {
        return;
    }
    let mut reader = BufReader::new(&client);
    let mut line = String::new();
    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        if writer.write_all(line.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}
