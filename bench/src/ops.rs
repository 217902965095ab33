//! One client operation of each kind, as a real client would do it, and the
//! check that no acknowledged MSP message went missing.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

/// The longest reply read: HELP lists are short, and a server that sends
/// more is broken, not slow.
const MAX_REPLY: usize = 64 * 1024;

/// An unacknowledged MSP datagram is sent again after this long, as msend
/// does. Well above the delivery latency of a loaded server on loopback, so
/// retransmissions mean loss, not impatience.
const MSP_RETRANSMIT_AFTER: Duration = Duration::from_millis(250);

/// An MSP message still unacknowledged after this long counts as an error.
const MSP_GIVE_UP: Duration = Duration::from_secs(4);

#[derive(Debug, Clone)]
pub enum Op {
    Help,
    Dispatch {
        service: String,
    },
    /// One line echoed through a forwarder: as [`Op::Dispatch`] after the
    /// name and `+` when a service is named, from the first byte when not
    /// (a forwarder that takes no name: sslh, HAProxy).
    Echo {
        service: Option<String>,
    },
    /// Name a service that answers one line and closes: `+`, the line, EOF
    /// (the least a session can be: what HELP is for the server itself).
    Greet {
        service: String,
    },
    /// Name a service that writes first (`/bin/echo`): the latency is the
    /// time from connect to the service's first byte after `+`.
    FirstByte {
        service: String,
    },
    /// `run` tells this run's messages apart from earlier ones in the
    /// delivery file and in the server's duplicate filter.
    Msp {
        run: String,
    },
}

/// What a successful operation reports besides its latency.
#[derive(Debug, Default, Clone, Copy)]
pub struct Done {
    /// MSP: how often the datagram had to be sent again.
    pub retries: u32,
    /// The latency to report instead of the whole operation's.
    pub latency: Option<Duration>,
}

/// Runs one operation. `worker` and `seq` make its payload unique.
pub async fn perform(op: &Op, target: SocketAddr, worker: usize, seq: u64) -> Result<Done, String> {
    match op {
        Op::Help => help(target, None).await,
        Op::Dispatch { service } => dispatch(target, None, service, worker, seq).await,
        Op::Echo { service } => echo(target, service.as_deref(), worker, seq).await,
        Op::FirstByte { service } => first_byte(target, service).await,
        Op::Greet { service } => greet(target, service).await,
        Op::Msp { run } => msp(target, None, run, worker, seq).await,
    }
}

async fn connect(target: SocketAddr) -> Result<TcpStream, String> {
    connect_from(target, None).await
}

/// Connects to `target`, from the loopback address `source` when given
/// (the soak spreads its clients over several).
pub async fn connect_from(target: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, String> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    // Closing then resets the connection instead of leaving it in
    // TIME_WAIT, which would use up the ephemeral ports within seconds.
    socket
        .set_zero_linger()
        .map_err(|e| format!("SO_LINGER: {e}"))?;
    socket
        .connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))
}

pub async fn send(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), String> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| format!("send: {e}"))
}

/// Reads more into `buf`; an error at EOF.
pub async fn read_more(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
    what: &str,
) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    let n = stream
        .read(&mut chunk)
        .await
        .map_err(|e| format!("reading {what}: {e}"))?;
    if n == 0 {
        return Err(format!("closed before {what}"));
    }
    buf.extend_from_slice(&chunk[..n]);
    if buf.len() > MAX_REPLY {
        return Err(format!("{what}: more than {MAX_REPLY} bytes"));
    }
    Ok(())
}

pub fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .to_string()
}

pub async fn help(target: SocketAddr, source: Option<IpAddr>) -> Result<Done, String> {
    let mut stream = connect_from(target, source).await?;
    send(&mut stream, b"HELP\r\n").await?;
    let mut reply = Vec::with_capacity(256);
    stream
        .take(MAX_REPLY as u64 + 1)
        .read_to_end(&mut reply)
        .await
        .map_err(|e| format!("reading the list: {e}"))?;
    match reply.first() {
        None => Err("empty HELP reply".into()),
        Some(b'-') => Err(format!("refused: {}", printable(&reply))),
        Some(_) if reply.len() > MAX_REPLY => Err("HELP reply too long".into()),
        Some(_) => Ok(Done::default()),
    }
}

async fn greet(target: SocketAddr, service: &str) -> Result<Done, String> {
    let mut stream = connect(target).await?;
    send(&mut stream, format!("{service}\r\n").as_bytes()).await?;
    let mut reply = Vec::with_capacity(64);
    stream
        .take(MAX_REPLY as u64 + 1)
        .read_to_end(&mut reply)
        .await
        .map_err(|e| format!("reading the reply: {e}"))?;
    match reply.strip_prefix(b"+\r\n") {
        Some(rest) if !rest.is_empty() => Ok(Done::default()),
        Some(_) => Err("nothing after the + line".into()),
        None => Err(format!("refused: {}", printable(&reply))),
    }
}

pub async fn dispatch(
    target: SocketAddr,
    source: Option<IpAddr>,
    service: &str,
    worker: usize,
    seq: u64,
) -> Result<Done, String> {
    let mut stream = connect_from(target, source).await?;
    send(&mut stream, format!("{service}\r\n").as_bytes()).await?;
    let echoed = plus_line(&mut stream).await?;
    echo_line(stream, echoed, worker, seq).await
}

async fn echo(
    target: SocketAddr,
    service: Option<&str>,
    worker: usize,
    seq: u64,
) -> Result<Done, String> {
    match service {
        Some(service) => dispatch(target, None, service, worker, seq).await,
        None => echo_line(connect(target).await?, Vec::new(), worker, seq).await,
    }
}

/// Reads the reply line, which must be `+`; what came after it.
async fn plus_line(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(128);
    let line_end = loop {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            break i;
        }
        read_more(stream, &mut buf, "the reply line").await?;
    };
    if buf.first() != Some(&b'+') {
        return Err(format!("refused: {}", printable(&buf[..line_end])));
    }
    // Whatever followed the `+` line is the service's output already.
    Ok(buf[line_end + 1..].to_vec())
}

/// Sends a line, reads it echoed back (after `echoed`, what came already),
/// then ends the session as a client would.
async fn echo_line(
    mut stream: TcpStream,
    mut echoed: Vec<u8>,
    worker: usize,
    seq: u64,
) -> Result<Done, String> {
    // Some servers end their reply line with a NUL: not part of the echo.
    let payload = format!("bench {worker} {seq}\r\n");
    send(&mut stream, payload.as_bytes()).await?;
    loop {
        let start = echoed.iter().position(|&b| b != 0).unwrap_or(echoed.len());
        let text = &echoed[start..];
        if text.starts_with(payload.as_bytes()) {
            break;
        }
        if !payload.as_bytes().starts_with(text) {
            return Err(format!("echo was {:?}", printable(text)));
        }
        read_more(&mut stream, &mut echoed, "the echo").await?;
    }
    // End the session as a client would: our end of the input, then the
    // service's exit (EOF). Resetting it instead would have the service
    // fail on a reset connection, and log that, on every session.
    stream
        .shutdown()
        .await
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut rest = [0u8; 256];
    match stream.read(&mut rest).await {
        Ok(0) => Ok(Done::default()),
        Ok(_) => Err("output after the echo".into()),
        Err(e) => Err(format!("waiting for the service to end: {e}")),
    }
}

async fn first_byte(target: SocketAddr, service: &str) -> Result<Done, String> {
    let started = Instant::now();
    let mut stream = connect(target).await?;
    send(&mut stream, format!("{service}\r\n").as_bytes()).await?;
    let mut buf = Vec::with_capacity(128);
    let after_plus = loop {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            if buf.first() != Some(&b'+') {
                return Err(format!("refused: {}", printable(&buf[..i])));
            }
            if buf.len() > i + 1 {
                break i + 1;
            }
        }
        read_more(&mut stream, &mut buf, "the service's first byte").await?;
    };
    let latency = started.elapsed();
    // The service ends by itself; wait for it, as a client would.
    let mut rest = Vec::new();
    (&mut stream)
        .take(MAX_REPLY as u64)
        .read_to_end(&mut rest)
        .await
        .map_err(|e| format!("waiting for the service to end: {e}"))?;
    if buf[after_plus..].iter().all(|&b| b == 0) && rest.is_empty() {
        return Err("no output after +".into());
    }
    Ok(Done {
        retries: 0,
        latency: Some(latency),
    })
}

/// A nonce for this run: the time and our pid, so that two runs never share
/// MSP cookies.
pub fn run_nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:012x}",
        (nanos as u64 ^ u64::from(std::process::id()) << 40) & 0xffff_ffff_ffff
    )
}

/// The text of message `seq` of `worker`: one line of the delivery file.
fn msp_text(run: &str, worker: usize, seq: u64) -> String {
    format!("{run} {worker} {seq}\n")
}

/// An RFC 1312 version B message: recipient, recipient's terminal, text,
/// sender, sender's terminal, cookie, signature, each NUL-terminated. The
/// cookie is unique, so a retransmission is recognised as one.
pub fn msp_message(run: &str, worker: usize, seq: u64) -> Vec<u8> {
    let text = msp_text(run, worker, seq);
    let cookie = format!("{run}-{worker}-{seq}");
    let mut message = vec![b'B'];
    for part in ["bench", "", &text, "bench", "", &cookie, ""] {
        message.extend_from_slice(part.as_bytes());
        message.push(0);
    }
    message
}

pub async fn msp(
    target: SocketAddr,
    source: Option<IpAddr>,
    run: &str,
    worker: usize,
    seq: u64,
) -> Result<Done, String> {
    let local = match source {
        Some(ip) => SocketAddr::new(ip, 0),
        None if target.is_ipv4() => SocketAddr::from(([127, 0, 0, 1], 0)),
        None => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)),
    };
    // A socket per message: an acknowledgement that arrives late, for a
    // message sent twice, cannot be taken for the next message's.
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("bind: {e}"))?;
    socket
        .connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let message = msp_message(run, worker, seq);
    let give_up = Instant::now() + MSP_GIVE_UP;
    let mut done = Done::default();
    loop {
        socket
            .send(&message)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut reply = [0u8; 600];
        match tokio::time::timeout(MSP_RETRANSMIT_AFTER, socket.recv(&mut reply)).await {
            Ok(Ok(n)) if &reply[..n] == b"+\0" => return Ok(done),
            Ok(Ok(n)) => return Err(format!("reply {:?}", printable(&reply[..n]))),
            Ok(Err(e)) => return Err(format!("receive: {e}")),
            Err(_) if Instant::now() >= give_up => {
                return Err(format!(
                    "no acknowledgement after {} tries",
                    done.retries + 1
                ));
            }
            Err(_) => done.retries += 1,
        }
    }
}

/// What the delivery file says of this run's messages.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// Acknowledged messages whose text is not in the file.
    pub lost: u64,
    /// Lines of this run beyond the first for the same message.
    pub duplicated: u64,
    /// Distinct messages of this run in the file.
    pub found: u64,
}

impl Deliveries {
    pub fn describe(&self, retries: u64) -> String {
        format!(
            "{} delivered, {} acknowledged but lost, {} delivered twice, {} retransmissions",
            self.found, self.lost, self.duplicated, retries
        )
    }
}

/// Reads the delivery file and checks every acknowledged message is in it
/// exactly once.
pub fn verify_deliveries(
    path: &str,
    run: &str,
    acked: &[(usize, u64)],
) -> Result<Deliveries, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut seen = HashSet::new();
    let mut result = Deliveries::default();
    let prefix = format!("{run} ");
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        if !seen.insert(line) {
            result.duplicated += 1;
        }
    }
    result.found = seen.len() as u64;
    for &(worker, seq) in acked {
        let line = msp_text(run, worker, seq);
        if !seen.contains(line.trim_end()) {
            result.lost += 1;
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout() {
        let m = msp_message("abc", 1, 2);
        assert_eq!(m, b"Bbench\0\0abc 1 2\n\0bench\0\0abc-1-2\0\0");
        assert!(run_nonce().len() == 12);
    }
}
