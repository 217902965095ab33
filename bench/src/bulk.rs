//! Bulk throughput through a forwarder: `pairs` connections at once, each
//! sending `bytes` to an echoing backend while reading them back, so that
//! as much flows each way. The bytes are checked as they come back.

use crate::record::Record;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Bytes written by one call.
const WRITE_CHUNK: usize = 256 * 1024;

/// A whole transfer that takes longer is an error: the run stays bounded.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);

/// The pattern every stream carries: bytes repeating with a prime period,
/// so that a lost, doubled or reordered chunk breaks it.
const PERIOD: usize = 251;

/// The pattern from offset 0, long enough to give any chunk at any offset
/// as one slice.
fn pattern() -> Vec<u8> {
    (0..WRITE_CHUNK + PERIOD)
        .map(|i| {
            ((i % PERIOD) as u64)
                .wrapping_mul(2_654_435_761)
                .to_le_bytes()[1]
        })
        .collect()
}

/// The pattern's bytes at `offset`, `n` of them.
fn at(pattern: &[u8], offset: u64, n: usize) -> &[u8] {
    let start = (offset % PERIOD as u64) as usize;
    &pattern[start..start + n]
}

/// One pair's transfer; the echoed bytes are compared with what was sent.
fn transfer(target: SocketAddr, service: Option<&str>, bytes: u64) -> Result<(), String> {
    let stream = TcpStream::connect(target).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(TRANSFER_TIMEOUT))
        .map_err(|e| format!("timeout: {e}"))?;
    let mut reader =
        BufReader::with_capacity(WRITE_CHUNK, stream.try_clone().map_err(|e| e.to_string())?);
    if let Some(service) = service {
        (&stream)
            .write_all(format!("{service}\r\n").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("reading the reply line: {e}"))?;
        if !line.starts_with('+') {
            return Err(format!("refused: {}", line.trim()));
        }
    }
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || -> Result<(), String> {
        let pattern = pattern();
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(WRITE_CHUNK as u64) as usize;
            writer
                .write_all(at(&pattern, sent, n))
                .map_err(|e| format!("send: {e}"))?;
            sent += n as u64;
        }
        Ok(())
    });
    let expected = pattern();
    let mut buf = vec![0u8; WRITE_CHUNK];
    let mut got = 0u64;
    let mut bad = None;
    // Read until every byte is back; no half-close, which not every relay
    // passes on (sslh closes both ways at the first end of input).
    while got < bytes {
        let want = buf.len().min((bytes - got) as usize);
        let n = reader
            .read(&mut buf[..want])
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            break;
        }
        if bad.is_none() && buf[..n] != *at(&expected, got, n) {
            bad = Some(got);
        }
        got += n as u64;
    }
    sender.join().map_err(|_| "sender panicked".to_string())??;
    if let Some(at) = bad {
        return Err(format!("echoed bytes differ in the chunk from byte {at}"));
    }
    if got != bytes {
        return Err(format!("{got} bytes came back of {bytes}"));
    }
    Ok(())
}

/// CPU seconds PID has used so far: all its threads, and its children
/// that ended (the programs an exec server started).
pub fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The fields after the command, which is in parentheses.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime, stime, cutime and cstime: fields 14 to 17 of the line, 12
    // to 15 here.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11) + ticks(12) + ticks(13) + ticks(14)) / hz)
}

/// Runs `pairs` transfers of `bytes` each way at once. Records MiB/s each
/// way, and with `pid` that process's CPU milliseconds per GiB relayed
/// (both directions counted).
pub fn run(
    target: SocketAddr,
    service: Option<&str>,
    bytes: u64,
    pairs: usize,
    pid: Option<u32>,
    label: &str,
) -> Result<Vec<Record>, String> {
    let cpu_before = pid.map(cpu_seconds).transpose()?;
    let started = Instant::now();
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..pairs)
            .map(|_| scope.spawn(move || transfer(target, service, bytes)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("transfer panicked".into())))
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let note = errors.first().map(|e| e.to_string()).unwrap_or_default();
    let mib_each_way = (bytes * pairs as u64) as f64 / (1024.0 * 1024.0);
    let mut records = vec![Record {
        test: "bulk".into(),
        concurrency: pairs,
        server: label.into(),
        value: mib_each_way / elapsed,
        p50_us: 0.0,
        p99_us: 0.0,
        errors: errors.len() as u64,
        note,
    }];
    if let (Some(pid), Some(before)) = (pid, cpu_before) {
        let used = cpu_seconds(pid)? - before;
        let gib_relayed = 2.0 * mib_each_way / 1024.0;
        records.push(Record {
            test: "bulk-cpu".into(),
            concurrency: pairs,
            server: label.into(),
            value: 1000.0 * used / gib_relayed,
            p50_us: 0.0,
            p99_us: 0.0,
            errors: 0,
            note: String::new(),
        });
    }
    Ok(records)
}
