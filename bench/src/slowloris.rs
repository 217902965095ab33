//! Slowloris: many silent connections from many addresses, held open while
//! another address asks HELP, one request at a time. The figure is the
//! HELP latency under the flood, and how many of the silent connections
//! the server still holds.

use crate::load::close_with_reset;
use crate::memory::still_silent;
use crate::record::Record;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

/// Silent connections come from 127.1.0.1, 127.1.0.2, ...; HELP from here.
const SILENT_BASE: Ipv4Addr = Ipv4Addr::new(127, 1, 0, 1);
const HELP_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 2, 0, 1);
/// Time allowed for everything: opening the connections and the samples.
const TIME_LIMIT: Duration = Duration::from_secs(120);
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP connection to `target` from `source`.
fn connect_from(source: Ipv4Addr, target: SocketAddrV4) -> std::io::Result<TcpStream> {
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own from here on.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(SocketAddrV4::new(source, 0));
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sockaddr(target);
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

fn help(target: SocketAddrV4) -> Result<Duration, String> {
    let started = Instant::now();
    let mut s = connect_from(HELP_SOURCE, target).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(READ_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.write_all(b"HELP\r\n").map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).map_err(|e| e.to_string())?;
    let took = started.elapsed();
    close_with_reset(&s);
    if reply.is_empty() || reply[0] == b'-' {
        return Err(format!("answer {:?}", String::from_utf8_lossy(&reply)));
    }
    Ok(took)
}

pub fn measure(
    target: SocketAddr,
    count: usize,
    sources: usize,
    samples: usize,
    label: &str,
) -> Result<Vec<Record>, String> {
    let SocketAddr::V4(target) = target else {
        return Err("an IPv4 loopback address is needed (sources are 127.1.0.x)".into());
    };
    crate::memory::raise_nofile(count as u64 + 64);
    let deadline = Instant::now() + TIME_LIMIT;
    let base = u32::from(SILENT_BASE);
    let mut silent = Vec::with_capacity(count);
    let mut failed = 0u64;
    for i in 0..count {
        if Instant::now() >= deadline {
            failed += (count - i) as u64;
            break;
        }
        let source = Ipv4Addr::from(base + (i % sources.max(1)) as u32);
        match connect_from(source, target) {
            Ok(s) => silent.push(s),
            Err(_) => failed += 1,
        }
    }
    // Let the server take every connection in before measuring.
    std::thread::sleep(Duration::from_secs(1));
    let mut latencies = Vec::with_capacity(samples);
    let mut errors = failed;
    for _ in 0..samples {
        if Instant::now() >= deadline {
            break;
        }
        match help(target) {
            Ok(took) => latencies.push(took),
            Err(_) => errors += 1,
        }
    }
    let held = silent.iter().filter(|s| still_silent(s)).count();
    for s in &silent {
        close_with_reset(s);
    }
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
    };
    let max_ms = latencies.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    Ok(vec![Record {
        test: "slowloris".into(),
        concurrency: count,
        server: label.into(),
        value: latencies.len() as f64,
        p50_us: pick(0.5),
        p99_us: pick(0.99),
        errors,
        note: format!(
            "{count} silent connections from {sources} addresses, {held} still held at the end; \
             {} HELP answered from another address, max {max_ms:.2} ms",
            latencies.len()
        ),
    }])
}
