//! msend: send a Message Send Protocol (RFC 1312, version B) message to a
//! user on another host, like write(1) across the network.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tcpmuxd::cli::exit::{self, Failure};
use tcpmuxd::cli::msend::Args;
use tcpmuxd::msp::message::{self, MAX_MESSAGE_LEN, Message, Version};

/// Datagrams sent at most, with the same cookie, before giving up.
const UDP_TRIES: u32 = 4;
/// Longest reply read over TCP.
const MAX_REPLY_LEN: u64 = 1024;

fn main() -> ExitCode {
    let args = match exit::parse::<Args>() {
        Ok(args) => args,
        Err(code) => return code,
    };
    match run(&args) {
        Ok(code) => code,
        Err((code, e)) => {
            eprintln!("msend: {e}");
            ExitCode::from(code)
        }
    }
}

fn usage(e: impl Into<String>) -> Failure {
    (exit::USAGE, e.into())
}

fn unsendable(e: impl Into<String>) -> Failure {
    (exit::DATAERR, e.into())
}

fn run(args: &Args) -> Result<ExitCode, Failure> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(usage(format!(
            "--timeout {}: must be a positive number",
            args.timeout
        )));
    }
    let limit = Duration::from_secs_f64(args.timeout);
    let (recipient, host) = args
        .to
        .rsplit_once('@')
        .ok_or_else(|| usage(format!("{}: expected USER[:TERMINAL]@HOST", args.to)))?;
    let (user, terminal) = recipient.split_once(':').unwrap_or((recipient, ""));
    let text = if args.message.is_empty() {
        let mut s = String::new();
        io::stdin()
            .take(4 * MAX_MESSAGE_LEN as u64)
            .read_to_string(&mut s)
            .map_err(|e| usage(format!("reading the message: {e}")))?;
        s
    } else {
        args.message.join(" ")
    };
    let msg = Message {
        version: Some(Version::B),
        recipient: user.as_bytes().to_vec(),
        recipient_terminal: terminal.as_bytes().to_vec(),
        // UTF-8, as today's clients send it.
        text: crlf(text.trim_end_matches('\n')).into_bytes(),
        sender: local_user().into_bytes(),
        sender_terminal: local_terminal().into_bytes(),
        cookie: cookie().into_bytes(),
        signature: Vec::new(),
    };
    message::check_content(&msg).map_err(unsendable)?;
    let raw = message::encode(&msg);
    if raw.len() > MAX_MESSAGE_LEN {
        return Err(unsendable(format!(
            "message too long: {} octets with the headers, at most {MAX_MESSAGE_LEN}",
            raw.len()
        )));
    }
    let addr = resolve(host, args.port)?;
    if args.udp {
        send_udp(addr, &raw, limit / UDP_TRIES, !msg.recipient.is_empty())
    } else {
        send_tcp(addr, &raw, limit)
    }
}

fn send_tcp(addr: SocketAddr, raw: &[u8], limit: Duration) -> Result<ExitCode, Failure> {
    let net = |e: io::Error| network(addr, e);
    let mut stream = TcpStream::connect_timeout(&addr, limit).map_err(net)?;
    stream.set_read_timeout(Some(limit)).map_err(net)?;
    stream.write_all(raw).map_err(net)?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while (reply.len() as u64) < MAX_REPLY_LEN {
        match stream.read(&mut byte).map_err(net)? {
            0 => break,
            _ if byte[0] == 0 => break,
            _ => reply.push(byte[0]),
        }
    }
    let text: String = reply.iter().map(|&b| b as char).collect();
    match reply.first() {
        Some(b'+') => Ok(ExitCode::SUCCESS),
        Some(b'-') => {
            eprintln!("msend: refused: {}", text[1..].trim());
            Ok(ExitCode::from(exit::REFUSED))
        }
        _ => Err((exit::IOERR, format!("{addr}: no valid reply"))),
    }
}

fn send_udp(
    addr: SocketAddr,
    raw: &[u8],
    limit: Duration,
    expect_reply: bool,
) -> Result<ExitCode, Failure> {
    let net = |e: io::Error| network(addr, e);
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .unwrap_or(addr);
    let socket = UdpSocket::bind(bind).map_err(net)?;
    socket.connect(addr).map_err(net)?;
    socket.set_read_timeout(Some(limit)).map_err(net)?;
    let mut buf = [0u8; 1024];
    for _ in 0..UDP_TRIES {
        socket.send(raw).map_err(net)?;
        if !expect_reply {
            // Broadcasts are never acknowledged (RFC 1312).
            return Ok(ExitCode::SUCCESS);
        }
        match socket.recv(&mut buf) {
            Ok(n) if n > 0 && buf[0] == b'+' => return Ok(ExitCode::SUCCESS),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(net(e)),
            Err(_) => {}
        }
    }
    eprintln!(
        "msend: no acknowledgement after {UDP_TRIES} tries (over UDP a server stays silent when it cannot deliver)"
    );
    Ok(ExitCode::from(exit::REFUSED))
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, Failure> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, port)
        .to_socket_addrs()
        .map_err(|e| (exit::NOHOST, format!("{host}: cannot resolve: {e}")))?
        .next()
        .ok_or_else(|| (exit::NOHOST, format!("{host}: no address")))
}

/// A network failure: the server unreachable, or the exchange broken.
fn network(addr: SocketAddr, e: io::Error) -> Failure {
    let code = match e.kind() {
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::TimedOut => exit::UNAVAILABLE,
        _ => exit::IOERR,
    };
    (code, format!("{addr}: {e}"))
}

/// Line ends as CRLF, as RFC 1312 asks.
fn crlf(text: &str) -> String {
    text.split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn local_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default()
}

fn local_terminal() -> String {
    rustix::termios::ttyname(io::stdin(), Vec::new())
        .ok()
        .map(|name| {
            let name = name.to_string_lossy().into_owned();
            name.strip_prefix("/dev/")
                .map(str::to_string)
                .unwrap_or(name)
        })
        .unwrap_or_default()
}

/// A cookie unique to this message: time, process and a counter, well under
/// the 32 octets allowed.
fn cookie() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{:x}.{:x}.{:x}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id()
    )
}
