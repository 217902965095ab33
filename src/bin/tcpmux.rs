//! tcpmux: the TCPMUX client. Names a service, prints the server's reply
//! line on stderr, then connects stdin and stdout to the service.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;
use tcpmuxd::cli::exit::{self, Failure};
use tcpmuxd::cli::tcpmux::Args;

/// The TCPMUX port (RFC 1078).
const DEFAULT_PORT: u16 = 1;
/// Most bytes of a HELP list read from the server.
const MAX_LIST_LEN: u64 = 1024 * 1024;
/// Longest reply line read from the server.
const MAX_REPLY_LINE: usize = 1024;

fn main() -> ExitCode {
    let args = match exit::parse::<Args>() {
        Ok(args) => args,
        Err(code) => return code,
    };
    match run(&args) {
        Ok(code) => code,
        Err((code, e)) => {
            eprintln!("tcpmux: {e}");
            ExitCode::from(code)
        }
    }
}

fn usage(e: impl Into<String>) -> Failure {
    (exit::USAGE, e.into())
}

fn io_error(e: impl Into<String>) -> Failure {
    (exit::IOERR, e.into())
}

fn run(args: &Args) -> Result<ExitCode, Failure> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(usage(format!(
            "--timeout {}: must be a positive number",
            args.timeout
        )));
    }
    let limit = Duration::from_secs_f64(args.timeout);
    let name = match (&args.service, args.list) {
        (_, true) => "HELP",
        (Some(s), false) => s.as_str(),
        (None, false) => return Err(usage("no service given")),
    };
    if name.is_empty() || name.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(usage(format!(
            "service name {name:?}: only visible ASCII characters are allowed"
        )));
    }
    let mut stream = connect(&args.server, limit)?;
    stream
        .write_all(format!("{name}\r\n").as_bytes())
        .map_err(|e| io_error(format!("{}: sending the service name: {e}", args.server)))?;

    stream
        .set_read_timeout(Some(limit))
        .map_err(|e| io_error(e.to_string()))?;
    if args.list {
        let mut list = Vec::new();
        (&mut stream)
            .take(MAX_LIST_LEN)
            .read_to_end(&mut list)
            .map_err(|e| io_error(format!("{}: reading the list: {e}", args.server)))?;
        if list.first() == Some(&b'-') {
            let shown = String::from_utf8_lossy(&list);
            eprintln!("{}", shown.trim_end_matches(['\r', '\n']));
            return Ok(ExitCode::from(exit::REFUSED));
        }
        if list.is_empty() {
            // stdout stays the list, for scripts; people are told why it
            // is empty.
            eprintln!(
                "tcpmux: {}: no service is offered to this client",
                args.server
            );
            return Ok(ExitCode::SUCCESS);
        }
        io::stdout()
            .write_all(&list)
            .map_err(|e| io_error(e.to_string()))?;
        return Ok(ExitCode::SUCCESS);
    }

    let line = read_reply_line(&mut stream)
        .map_err(|e| io_error(format!("{}: reading the reply: {e}", args.server)))?;
    if !(args.quiet && line.first() == Some(&b'+')) {
        let shown = String::from_utf8_lossy(&line);
        eprintln!("{}", shown.trim_end_matches(['\r', '\n']));
    }
    match line.first() {
        Some(b'+') => {}
        Some(b'-') => return Ok(ExitCode::from(exit::REFUSED)),
        _ => {
            return Err(io_error(format!(
                "{}: the reply is neither \"+\" nor \"-\"",
                args.server
            )));
        }
    }
    stream
        .set_read_timeout(None)
        .map_err(|e| io_error(e.to_string()))?;
    bridge(stream).map_err(|e| io_error(format!("{}: {e}", args.server)))?;
    Ok(ExitCode::SUCCESS)
}

/// Splits "host:port", "[v6]:port", "v6" and "host" into a host and a port.
fn split_host_port(server: &str) -> Result<(String, u16), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("{server}: \"{p}\" is not a port number"))
    };
    if let Some(rest) = server.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{server}: missing \"]\""))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host.to_string(), port(p)?)),
            None if after.is_empty() => Ok((host.to_string(), DEFAULT_PORT)),
            None => Err(format!("{server}: unexpected text after \"]\"")),
        };
    }
    match server.rsplit_once(':') {
        // More than one colon and no brackets: a bare IPv6 address.
        Some((host, _)) if host.contains(':') => Ok((server.to_string(), DEFAULT_PORT)),
        Some((host, p)) => Ok((host.to_string(), port(p)?)),
        None => Ok((server.to_string(), DEFAULT_PORT)),
    }
}

fn connect(server: &str, limit: Duration) -> Result<TcpStream, Failure> {
    let (host, port) = split_host_port(server).map_err(usage)?;
    let addrs: Vec<SocketAddr> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| (exit::NOHOST, format!("{server}: cannot resolve: {e}")))?
        .collect();
    let mut last = (exit::NOHOST, format!("{server}: no address"));
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, limit) {
            Ok(s) => return Ok(s),
            Err(e) => last = (exit::UNAVAILABLE, format!("{addr}: cannot connect: {e}")),
        }
    }
    Err(last)
}

/// Reads the reply line byte by byte, so nothing the service sends after
/// it is taken from the socket.
fn read_reply_line(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_REPLY_LINE {
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a reply",
            ));
        }
        line.push(byte[0]);
        if byte[0] == b'\n' {
            return Ok(line);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "reply line too long",
    ))
}

/// Bytes read from the connection at a time.
const RELAY_CHUNK: usize = 64 * 1024;

/// Copies stdin to the connection and the connection to stdout, until the
/// service closes the connection. What the service sends is written out
/// and flushed as it comes: io::copy to stdout can hold bytes back, which
/// stalls a binary protocol (an SSH session as ProxyCommand).
fn bridge(stream: TcpStream) -> io::Result<()> {
    let mut to_server = stream.try_clone()?;
    std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut to_server);
        let _ = to_server.shutdown(Shutdown::Write);
    });
    let mut from_server = stream;
    let mut out = io::stdout().lock();
    let mut buf = vec![0u8; RELAY_CHUNK];
    loop {
        let n = match from_server.read(&mut buf) {
            Ok(0) => return out.flush(),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_forms() {
        assert_eq!(
            split_host_port("localhost").unwrap(),
            ("localhost".into(), 1)
        );
        assert_eq!(
            split_host_port("localhost:7001").unwrap(),
            ("localhost".into(), 7001)
        );
        assert_eq!(split_host_port("[::1]:7001").unwrap(), ("::1".into(), 7001));
        assert_eq!(split_host_port("[::1]").unwrap(), ("::1".into(), 1));
        assert_eq!(split_host_port("::1").unwrap(), ("::1".into(), 1));
        assert!(split_host_port("host:x").is_err());
        assert!(split_host_port("[::1").is_err());
    }
}
