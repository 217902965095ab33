//! Memory of a server: its RSS idle, and what each silent connection in the
//! handshake phase adds. For a server that forks per connection the
//! processes it starts are counted too: their RSS (as the figure), and
//! their PSS (which shares out the pages they have in common) in the note.

use crate::load::close_with_reset;
use crate::record::Record;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Time allowed to open all connections; a server that stops accepting
/// makes the figure an error count, not a hang.
const OPEN_TIME_LIMIT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections are opened in batches of this many, each once the server's
/// accept queue holds fewer than [`MAX_QUEUED`]. Forking servers accept
/// slower than a client connects, and their listen backlogs are small
/// (inetutils-inetd: 10); a connection beyond the backlog is not refused
/// but left half-open, its handshake retried after a second, then two,
/// then four: racing ahead would measure the kernel's back-off instead of
/// the server.
const OPEN_BATCH: usize = 4;
const MAX_QUEUED: u32 = 4;
const QUEUE_POLL: Duration = Duration::from_millis(1);
/// The server has taken in every connection once its memory and process
/// count stay the same for this many polls in a row...
const SETTLED_POLLS: u32 = 4;
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// ...or when this much time has passed.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// Memory of a process and of everything it started.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Sample {
    rss_kib: u64,
    descendants: usize,
    descendants_rss_kib: u64,
}

impl Sample {
    fn total_kib(&self) -> u64 {
        self.rss_kib + self.descendants_rss_kib
    }
}

/// Reads `Key:  123 kB` from a /proc file.
fn proc_kib(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_kib(&format!("/proc/{pid}/status"), "VmRSS:")
}

fn pss_kib(pid: u32) -> u64 {
    proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:").unwrap_or(0)
}

/// Every process descended from `root`, from each process's parent in
/// /proc/PID/stat.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: the fields
        // after it start behind the last ')'.
        let Some(ppid) = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        children.entry(ppid).or_default().push(pid);
    }
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(p) = queue.pop() {
        if let Some(kids) = children.get(&p) {
            found.extend(kids);
            queue.extend(kids);
        }
    }
    found
}

fn sample(pid: u32) -> Result<Sample, String> {
    let rss = rss_kib(pid).ok_or_else(|| format!("process {pid} is gone"))?;
    let kids = descendants(pid);
    Ok(Sample {
        rss_kib: rss,
        descendants: kids.len(),
        descendants_rss_kib: kids.iter().filter_map(|&k| rss_kib(k)).sum(),
    })
}

fn pss_total_kib(pid: u32) -> u64 {
    pss_kib(pid) + descendants(pid).into_iter().map(pss_kib).sum::<u64>()
}

/// Enough descriptors for `n` connections: the soft limit is often 1024.
pub fn raise_nofile(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain calls with a valid pointer; failing leaves the limit
    // as it was, and connections beyond it show up as errors.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= n {
            return;
        }
        let hard = lim.rlim_max;
        lim.rlim_cur = n;
        lim.rlim_max = hard.max(n);
        // Raising the hard limit needs privilege: without it, go as far
        // as the hard limit allows.
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            lim.rlim_cur = n.min(hard);
            lim.rlim_max = hard;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Opens `count` connections that never send a byte, paced by the
/// server's accept queue.
fn open_silent(target: SocketAddr, count: usize) -> (Vec<TcpStream>, Vec<String>) {
    let deadline = Instant::now() + OPEN_TIME_LIMIT;
    let (mut opened, mut failed) = (Vec::with_capacity(count), Vec::new());
    while opened.len() + failed.len() < count {
        if Instant::now() >= deadline {
            failed.resize(count - opened.len(), "time limit".to_string());
            break;
        }
        if accept_queue(target).is_some_and(|queued| queued >= MAX_QUEUED) {
            std::thread::sleep(QUEUE_POLL);
            continue;
        }
        for _ in 0..OPEN_BATCH.min(count - opened.len() - failed.len()) {
            match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    close_with_reset(&stream);
                    opened.push(stream);
                }
                Err(e) => failed.push(e.to_string()),
            }
        }
    }
    (opened, failed)
}

/// Polls until the server's memory and process count stop changing.
fn settle(pid: u32) -> Result<Sample, String> {
    let limit = Instant::now() + SETTLE_LIMIT;
    let mut last = sample(pid)?;
    let mut same = 0;
    while same < SETTLED_POLLS && Instant::now() < limit {
        std::thread::sleep(POLL_INTERVAL);
        let now = sample(pid)?;
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    Ok(last)
}

/// Whether the server still holds the connection open without having said
/// anything (a refusal or a close would be readable).
pub fn still_silent(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    stream.set_nonblocking(true).is_ok()
        && matches!(stream.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

pub fn measure(
    target: SocketAddr,
    pid: u32,
    count: usize,
    label: &str,
) -> Result<Vec<Record>, String> {
    let idle = sample(pid)?;
    let record = |test: &str, concurrency, value, errors, note: String| Record {
        test: test.into(),
        concurrency,
        server: label.into(),
        value,
        p50_us: 0.0,
        p99_us: 0.0,
        errors,
        note,
    };
    let mut records = vec![record("rss-idle", 0, idle.rss_kib as f64, 0, String::new())];
    if count == 0 {
        return Ok(records);
    }
    let idle_pss = pss_total_kib(pid);
    raise_nofile(count as u64 + 256);
    let (streams, failures) = open_silent(target, count);
    let held = settle(pid)?;
    let held_pss = pss_total_kib(pid);
    let silent = streams.iter().filter(|s| still_silent(s)).count();
    let grown_kib = held.total_kib().saturating_sub(idle.total_kib());
    let per_conn = |kib: u64| kib as f64 * 1024.0 / silent.max(1) as f64;
    let mut note = format!(
        "{silent} of {count} held; server +{} KiB",
        held.rss_kib.saturating_sub(idle.rss_kib)
    );
    if held.descendants > idle.descendants {
        note += &format!(
            ", {} processes with {} MiB RSS for them",
            held.descendants - idle.descendants,
            held.descendants_rss_kib
                .saturating_sub(idle.descendants_rss_kib)
                / 1024
        );
    }
    note += &format!(
        "; PSS {:.0} B per connection",
        per_conn(held_pss.saturating_sub(idle_pss))
    );
    if let Some(first) = failures.first() {
        note += &format!("; {} connects failed ({first})", failures.len());
    }
    records.push(record(
        "rss-conn",
        count,
        per_conn(grown_kib),
        (count - silent) as u64,
        note,
    ));
    drop(streams);
    // Let the server wind down what it started for them, so the next
    // measurement starts from a quiet machine.
    let limit = Instant::now() + SETTLE_LIMIT;
    while Instant::now() < limit && sample(pid).is_ok_and(|s| s.descendants > idle.descendants) {
        std::thread::sleep(POLL_INTERVAL);
    }
    Ok(records)
}

/// How /proc/net/{tcp,udp}{,6} write `addr`, and its port on every
/// address.
fn proc_net_names(addr: SocketAddr) -> (&'static str, String, String) {
    match addr {
        SocketAddr::V4(a) => (
            "",
            format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(a.ip().octets()),
                a.port()
            ),
            format!("00000000:{:04X}", a.port()),
        ),
        SocketAddr::V6(a) => {
            // Four native-endian words.
            let hex: String = a
                .ip()
                .octets()
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
                .collect();
            (
                "6",
                format!("{hex}:{:04X}", a.port()),
                format!("{}:{:04X}", "0".repeat(32), a.port()),
            )
        }
    }
}

/// Whether some UDP socket is bound to `addr` (or its port on every
/// address).
pub fn udp_bound(addr: SocketAddr) -> bool {
    let (suffix, wanted, any) = proc_net_names(addr);
    std::fs::read_to_string(format!("/proc/net/udp{suffix}")).is_ok_and(|text| {
        text.lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .any(|local| local == wanted || local == any)
    })
}

/// Connections waiting in the accept queue of the TCP listener on `addr`:
/// the rx_queue the kernel shows for a listening socket. Listeners come
/// first in /proc/net/tcp, so the thousands of connections behind them
/// are not read.
fn accept_queue(addr: SocketAddr) -> Option<u32> {
    use std::io::BufRead;
    const LISTEN: &str = "0A";
    let (suffix, wanted, any) = proc_net_names(addr);
    let file = std::fs::File::open(format!("/proc/net/tcp{suffix}")).ok()?;
    for line in std::io::BufReader::new(file).lines().skip(1) {
        let line = line.ok()?;
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(queues)) = (f.get(1), f.get(3), f.get(4)) else {
            continue;
        };
        if *state != LISTEN {
            return None;
        }
        if *local == wanted || *local == any {
            return queues
                .split_once(':')
                .and_then(|(_, rx)| u32::from_str_radix(rx, 16).ok());
        }
    }
    None
}
