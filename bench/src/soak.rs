//! The soak: a steady mix of every kind of client for many minutes, a
//! reload every 10 s, and the server's memory, descriptors and children
//! sampled all along; at the end, a verdict on whether its memory stays
//! flat once its bounded tables are full, whether anything failed, and
//! whether it returns to idle.
//!
//! The load is open-loop (one operation started every 1/rate s, however
//! long the others take), from several loopback source addresses, on the
//! same single client thread as the other measurements.

use crate::memory;
use crate::ops;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

/// How often the server is sampled, and reloaded.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// A long session stays open this long, one line echoed every
/// [`LONG_ECHO_EVERY`].
const LONG_HOLD: Duration = Duration::from_secs(30);
const LONG_ECHO_EVERY: Duration = Duration::from_secs(5);

/// A silent client must have been closed by the server within this long
/// (the soak's configuration sets a `name_timeout` well below it).
const SILENT_LIMIT: Duration = Duration::from_secs(15);

/// Any other operation that takes longer counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// After the last operation, descriptors and children must be back to
/// their idle counts within this long.
const IDLE_WITHIN: Duration = Duration::from_secs(3);
const IDLE_POLL: Duration = Duration::from_millis(100);

/// The minute whose RSS the last minute's is compared with: by then the
/// bounded tables are full (the MSP retransmission window is 5 minutes).
/// Shorter runs compare with their middle minute.
const REFERENCE_MINUTE: usize = 8;

/// RSS is flat when the last minute's is at most this much above the
/// reference minute's: 5 %, or 1 MiB, whichever is more.
const FLAT_PERCENT: u64 = 5;
const FLAT_KIB: u64 = 1024;

/// Highest `--rate`: every operation is a task, and a typo must not open
/// a million connections a second.
const MAX_RATE: f64 = 1000.0;

/// Errors printed when they happen (all are counted, and listed by kind
/// at the end).
const ERRORS_SHOWN_AS_THEY_HAPPEN: u64 = 20;

/// Distinct error messages kept; the rest are counted as "other errors".
const MAX_ERROR_KINDS: usize = 16;

/// The kinds of client, and their share of the operations (weights out
/// of their sum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// HELP: the list, then EOF.
    Help,
    /// A plus-mode session of the echo service: a line echoed, then EOF.
    Echo,
    /// A name the server does not know: a `-` reply.
    Unknown,
    /// Connects and says nothing until the server gives up on it.
    Silent,
    /// An echo session held for [`LONG_HOLD`].
    Long,
    /// An MSP version B message over UDP, retransmitted until acknowledged.
    MspUdp,
    /// An MSP version B message over TCP, its `+` reply read.
    MspTcp,
}

/// At 250 operations a second: 75 HELP, 50 echo sessions, 37.5 unknown
/// names, 12.5 silent clients, one long session (about 30 open at a time),
/// 37.5 MSP messages over UDP and 36.5 over TCP.
const MIX: [(Kind, u32); 7] = [
    (Kind::Help, 150),
    (Kind::Echo, 100),
    (Kind::Unknown, 75),
    (Kind::Silent, 25),
    (Kind::Long, 2),
    (Kind::MspUdp, 75),
    (Kind::MspTcp, 73),
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Help => "help",
            Kind::Echo => "echo",
            Kind::Unknown => "unknown",
            Kind::Silent => "silent",
            Kind::Long => "long",
            Kind::MspUdp => "msp-udp",
            Kind::MspTcp => "msp-tcp",
        }
    }

    fn time_limit(self) -> Duration {
        match self {
            Kind::Long => LONG_HOLD + OP_TIMEOUT,
            Kind::Silent => SILENT_LIMIT,
            _ => OP_TIMEOUT,
        }
    }

    /// The "worker" of an MSP message's text: tells the two transports'
    /// messages apart in the delivery file.
    fn msp_worker(self) -> Option<usize> {
        match self {
            Kind::MspUdp => Some(0),
            Kind::MspTcp => Some(1),
            _ => None,
        }
    }
}

/// The kinds in the proportions of [`MIX`], interleaved evenly (smooth
/// weighted round robin), not in runs of one kind.
struct Schedule {
    current: [i64; MIX.len()],
}

impl Schedule {
    fn new() -> Schedule {
        Schedule {
            current: [0; MIX.len()],
        }
    }

    fn next_kind(&mut self) -> Kind {
        let total: i64 = MIX.iter().map(|(_, w)| i64::from(*w)).sum();
        let mut best = 0;
        for (i, (_, weight)) in MIX.iter().enumerate() {
            self.current[i] += i64::from(*weight);
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= total;
        MIX[best].0
    }
}

pub struct Settings {
    pub tcpmux: SocketAddr,
    pub msp: SocketAddr,
    pub pid: u32,
    pub minutes: usize,
    pub rate: f64,
    /// Clients come from 127.77.0.1 to 127.77.0.N.
    pub sources: u8,
    /// Where the server's MSP delivery command appends each text.
    pub file: String,
    pub service: String,
}

/// One sample of the server.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
    children: usize,
}

fn sample(pid: u32, at: Duration) -> Result<Sample, String> {
    let rss_kib = memory::rss_kib(pid).ok_or_else(|| format!("process {pid} is gone"))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("/proc/{pid}/fd: {e}"))?
        .count();
    Ok(Sample {
        at,
        rss_kib,
        fds,
        children: memory::descendants(pid).len(),
    })
}

#[derive(Default)]
struct Tally {
    ok: BTreeMap<Kind, u64>,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    help_us: Vec<u32>,
    /// (worker, seq) of every acknowledged MSP message.
    acked: Vec<(usize, u64)>,
    msp_retries: u64,
}

impl Tally {
    fn error(&mut self, kind: Kind, e: String) {
        self.errors += 1;
        let e = format!("{}: {e}", kind.name());
        // The first ones as they happen, to match them with the server's
        // log and the machine's moments.
        if self.errors <= ERRORS_SHOWN_AS_THEY_HAPPEN {
            eprintln!("error: {e}");
        }
        let key = if self.error_kinds.len() < MAX_ERROR_KINDS || self.error_kinds.contains_key(&e) {
            e
        } else {
            "other errors".to_string()
        };
        *self.error_kinds.entry(key).or_default() += 1;
    }
}

type Outcome = (
    Kind,
    u64,
    Duration,
    Result<Result<ops::Done, String>, tokio::time::error::Elapsed>,
);

/// Runs the soak and prints its report; Ok(true) when the verdict is a pass.
pub fn run(s: &Settings) -> Result<bool, String> {
    if s.minutes == 0 || s.sources == 0 || s.rate.is_nan() || s.rate <= 0.0 || s.rate > MAX_RATE {
        return Err(format!(
            "--minutes and --sources must be positive, --rate more than 0 and at most {MAX_RATE}"
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let idle = sample(s.pid, Duration::ZERO)?;
    eprintln!(
        "soak: {} min at {} operations/s from {} sources, a reload every {} s; idle: RSS {} KiB, {} descriptors, {} children",
        s.minutes,
        s.rate,
        s.sources,
        RELOAD_EVERY.as_secs(),
        idle.rss_kib,
        idle.fds,
        idle.children
    );
    let run_id = ops::run_nonce();
    let (tally, samples, reloads, elapsed) = runtime.block_on(load(s, &run_id))?;
    // The load has ended: every operation has finished.
    let ended = Instant::now();
    let mut last = sample(s.pid, elapsed)?;
    while (last.fds > idle.fds || last.children > 0) && ended.elapsed() < IDLE_WITHIN {
        std::thread::sleep(IDLE_POLL);
        last = sample(s.pid, elapsed)?;
    }
    let idle_after = ended.elapsed();
    let deliveries = ops::verify_deliveries(&s.file, &run_id, &tally.acked)?;
    Ok(report(
        s,
        &tally,
        &samples,
        reloads,
        elapsed,
        idle,
        last,
        idle_after,
        &deliveries,
    ))
}

async fn load(s: &Settings, run_id: &str) -> Result<(Tally, Vec<Sample>, u64, Duration), String> {
    let start = Instant::now();
    let duration = Duration::from_secs(60 * s.minutes as u64);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / s.rate));
    // Late ticks are caught up, so the rate holds on average.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let first = tokio::time::Instant::now() + SAMPLE_EVERY;
    let mut sample_tick = tokio::time::interval_at(first, SAMPLE_EVERY);
    let mut reload_tick = tokio::time::interval_at(first, RELOAD_EVERY);
    let mut schedule = Schedule::new();
    let mut ops: JoinSet<Outcome> = JoinSet::new();
    let mut tally = Tally::default();
    let mut samples = Vec::new();
    let mut reloads = 0u64;
    let mut seq = 0u64;
    loop {
        let loading = start.elapsed() < duration;
        if !loading && ops.is_empty() {
            break;
        }
        tokio::select! {
            _ = ticks.tick(), if loading => {
                let kind = schedule.next_kind();
                let source = IpAddr::V4(Ipv4Addr::new(127, 77, 0, 1 + (seq % u64::from(s.sources)) as u8));
                ops.spawn(operation(kind, s.tcpmux, s.msp, source, s.service.clone(), run_id.to_string(), seq));
                seq += 1;
            }
            Some(joined) = ops.join_next() => match joined {
                Ok((kind, seq, took, Ok(Ok(done)))) => {
                    *tally.ok.entry(kind).or_default() += 1;
                    if kind == Kind::Help {
                        tally.help_us.push(took.as_micros().min(u128::from(u32::MAX)) as u32);
                    }
                    if let Some(worker) = kind.msp_worker() {
                        tally.acked.push((worker, seq));
                        tally.msp_retries += u64::from(done.retries);
                    }
                }
                Ok((kind, _, _, Ok(Err(e)))) => tally.error(kind, e),
                Ok((kind, _, _, Err(_))) => tally.error(kind, format!("not done within {} s", kind.time_limit().as_secs())),
                Err(e) => tally.error(Kind::Help, format!("task failed: {e}")),
            },
            _ = sample_tick.tick(), if loading => {
                let now = sample(s.pid, start.elapsed())?;
                eprintln!(
                    "{:>5} s  RSS {:>6} KiB  {:>4} descriptors  {:>3} children  {} operations, {} errors",
                    now.at.as_secs(), now.rss_kib, now.fds, now.children, seq, tally.errors
                );
                samples.push(now);
            }
            _ = reload_tick.tick(), if loading => {
                // SAFETY: kill(2) with a pid and a signal number; no memory.
                if unsafe { libc::kill(s.pid as libc::pid_t, libc::SIGHUP) } != 0 {
                    return Err(format!("SIGHUP to {}: {}", s.pid, std::io::Error::last_os_error()));
                }
                reloads += 1;
            }
        }
    }
    Ok((tally, samples, reloads, start.elapsed()))
}

async fn operation(
    kind: Kind,
    tcpmux: SocketAddr,
    msp: SocketAddr,
    source: IpAddr,
    service: String,
    run_id: String,
    seq: u64,
) -> Outcome {
    let started = Instant::now();
    let work = async {
        match kind {
            Kind::Help => ops::help(tcpmux, Some(source)).await,
            Kind::Echo => ops::dispatch(tcpmux, Some(source), &service, 0, seq).await,
            Kind::Unknown => unknown(tcpmux, source, seq).await,
            Kind::Silent => silent(tcpmux, source).await,
            Kind::Long => long(tcpmux, source, &service, seq).await,
            Kind::MspUdp => ops::msp(msp, Some(source), &run_id, 0, seq).await,
            Kind::MspTcp => msp_tcp(msp, source, &run_id, seq).await,
        }
    };
    let result = tokio::time::timeout(kind.time_limit(), work).await;
    (kind, seq, started.elapsed(), result)
}

/// Reads to EOF (at most a little): what the server said before closing.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> Result<Vec<u8>, String> {
    let mut reply = Vec::new();
    stream
        .take(4096)
        .read_to_end(&mut reply)
        .await
        .map_err(|e| format!("reading the reply: {e}"))?;
    Ok(reply)
}

async fn unknown(target: SocketAddr, source: IpAddr, seq: u64) -> Result<ops::Done, String> {
    let mut stream = ops::connect_from(target, Some(source)).await?;
    ops::send(
        &mut stream,
        format!("soak-nosuch-{}\r\n", seq % 100).as_bytes(),
    )
    .await?;
    let reply = read_to_close(&mut stream).await?;
    match reply.first() {
        Some(b'-') => Ok(ops::Done::default()),
        _ => Err(format!("reply {:?}", ops::printable(&reply))),
    }
}

/// Says nothing: the server must close the connection (a `-` reply or
/// none) by itself.
async fn silent(target: SocketAddr, source: IpAddr) -> Result<ops::Done, String> {
    let mut stream = ops::connect_from(target, Some(source)).await?;
    let reply = read_to_close(&mut stream).await?;
    match reply.first() {
        None | Some(b'-') => Ok(ops::Done::default()),
        _ => Err(format!("reply {:?}", ops::printable(&reply))),
    }
}

/// An echo session held open for [`LONG_HOLD`], a line echoed every
/// [`LONG_ECHO_EVERY`], then ended as a client ends it.
async fn long(
    target: SocketAddr,
    source: IpAddr,
    service: &str,
    seq: u64,
) -> Result<ops::Done, String> {
    use tokio::io::AsyncWriteExt;
    let mut stream = ops::connect_from(target, Some(source)).await?;
    ops::send(&mut stream, format!("{service}\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    let line_end = loop {
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            break i;
        }
        ops::read_more(&mut stream, &mut buf, "the reply line").await?;
    };
    if buf.first() != Some(&b'+') {
        return Err(format!("refused: {}", ops::printable(&buf[..line_end])));
    }
    buf.drain(..=line_end);
    let until = Instant::now() + LONG_HOLD;
    let mut line = 0;
    while Instant::now() < until {
        let payload = format!("long {seq} {line}\n");
        ops::send(&mut stream, payload.as_bytes()).await?;
        while !buf.starts_with(payload.as_bytes()) {
            if !payload.as_bytes().starts_with(&buf) {
                return Err(format!("echo was {:?}", ops::printable(&buf)));
            }
            ops::read_more(&mut stream, &mut buf, "the echo").await?;
        }
        buf.drain(..payload.len());
        line += 1;
        tokio::time::sleep(LONG_ECHO_EVERY.min(until.saturating_duration_since(Instant::now())))
            .await;
    }
    stream
        .shutdown()
        .await
        .map_err(|e| format!("shutdown: {e}"))?;
    match read_to_close(&mut stream).await?.as_slice() {
        [] => Ok(ops::Done::default()),
        rest => Err(format!("output after the echo: {:?}", ops::printable(rest))),
    }
}

/// One MSP message over TCP: the server answers `+` (or `-`) ended by a NUL.
async fn msp_tcp(
    target: SocketAddr,
    source: IpAddr,
    run_id: &str,
    seq: u64,
) -> Result<ops::Done, String> {
    let mut stream = ops::connect_from(target, Some(source)).await?;
    ops::send(&mut stream, &ops::msp_message(run_id, 1, seq)).await?;
    let mut reply = Vec::new();
    while !reply.contains(&0) {
        ops::read_more(&mut stream, &mut reply, "the MSP reply").await?;
    }
    match reply.as_slice() {
        [b'+', ..] => Ok(ops::Done::default()),
        _ => Err(format!("reply {:?}", ops::printable(&reply))),
    }
}

/// The mean RSS of the samples taken in minute `m` (1-based), if any.
fn minute_rss(samples: &[Sample], m: usize) -> Option<u64> {
    let start = Duration::from_secs(60 * (m as u64 - 1));
    let end = Duration::from_secs(60 * m as u64);
    let in_minute: Vec<u64> = samples
        .iter()
        .filter(|s| s.at > start && s.at <= end)
        .map(|s| s.rss_kib)
        .collect();
    (!in_minute.is_empty()).then(|| in_minute.iter().sum::<u64>() / in_minute.len() as u64)
}

/// The minute compared with the last: [`REFERENCE_MINUTE`], or the middle
/// one of a run too short for it to be well before the end.
fn reference_minute(minutes: usize) -> usize {
    if minutes >= 2 * REFERENCE_MINUTE {
        REFERENCE_MINUTE
    } else {
        (minutes / 2).max(1)
    }
}

/// Whether RSS grew by no more than [`FLAT_PERCENT`] or [`FLAT_KIB`]
/// (whichever is more) from `reference` to `last`; the allowance.
fn flat(reference: u64, last: u64) -> (bool, u64) {
    let allowed = (reference * FLAT_PERCENT / 100).max(FLAT_KIB);
    (last <= reference + allowed, allowed)
}

fn percentile(sorted: &[u32], pct: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    f64::from(sorted[(sorted.len() * pct / 100).min(sorted.len() - 1)]) / 1000.0
}

#[allow(clippy::too_many_arguments)]
fn report(
    s: &Settings,
    tally: &Tally,
    samples: &[Sample],
    reloads: u64,
    elapsed: Duration,
    idle: Sample,
    after: Sample,
    idle_after: Duration,
    deliveries: &ops::Deliveries,
) -> bool {
    let mut failures = Vec::new();
    let total: u64 = tally.ok.values().sum::<u64>() + tally.errors;
    println!(
        "soak: {} min, {} operations ({:.0}/s; the last ended after {} s) from {} sources, {} reloads",
        s.minutes,
        total,
        total as f64 / (60.0 * s.minutes as f64),
        elapsed.as_secs(),
        s.sources,
        reloads
    );
    let by_kind: Vec<String> = tally
        .ok
        .iter()
        .map(|(k, n)| format!("{} {n}", k.name()))
        .collect();
    println!("succeeded: {}", by_kind.join(", "));
    println!("errors: {}", tally.errors);
    for (kind, n) in &tally.error_kinds {
        println!("  {n}x {kind}");
    }
    if tally.errors > 0 {
        failures.push(format!("{} errors", tally.errors));
    }
    println!("MSP: {}", deliveries.describe(tally.msp_retries));
    if deliveries.lost > 0 || deliveries.duplicated > 0 {
        failures.push(format!(
            "MSP: {} lost, {} delivered twice",
            deliveries.lost, deliveries.duplicated
        ));
    }
    let mut help = tally.help_us.clone();
    help.sort_unstable();
    println!(
        "HELP latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&help, 50),
        percentile(&help, 99),
        help.last().map_or(0.0, |&us| f64::from(us) / 1000.0)
    );
    println!("minute  RSS KiB (mean)  descriptors (max)  children (max)");
    for m in 1..=s.minutes {
        let of_minute: Vec<&Sample> = samples
            .iter()
            .filter(|x| {
                x.at > Duration::from_secs(60 * (m as u64 - 1))
                    && x.at <= Duration::from_secs(60 * m as u64)
            })
            .collect();
        let fds = of_minute.iter().map(|x| x.fds).max().unwrap_or(0);
        let children = of_minute.iter().map(|x| x.children).max().unwrap_or(0);
        let rss = minute_rss(samples, m).map_or("-".to_string(), |k| k.to_string());
        println!("{m:>6}  {rss:>15}  {fds:>17}  {children:>14}");
    }
    let reference = reference_minute(s.minutes);
    match (
        minute_rss(samples, reference),
        minute_rss(samples, s.minutes),
    ) {
        (Some(r), Some(l)) => {
            let (ok, allowed) = flat(r, l);
            println!(
                "RSS: idle {} KiB, minute {reference} {r} KiB, minute {} (last) {l} KiB: {}{} KiB (allowed +{allowed}): {}",
                idle.rss_kib,
                s.minutes,
                if l >= r { "+" } else { "-" },
                l.abs_diff(r),
                if ok { "flat" } else { "GROWING" }
            );
            if !ok {
                failures.push(format!(
                    "RSS grew {} KiB from minute {reference} to the last",
                    l - r
                ));
            }
        }
        _ => failures.push("too few samples to compare RSS".into()),
    }
    let at_idle = after.fds <= idle.fds && after.children == 0;
    println!(
        "after the load: {} descriptors (idle: {}), {} children, {:.1} s after the last operation: {}",
        after.fds,
        idle.fds,
        after.children,
        idle_after.as_secs_f64(),
        if at_idle { "idle" } else { "NOT IDLE" }
    );
    if !at_idle {
        failures.push(format!(
            "not idle {} s after the load: {} descriptors (idle {}), {} children",
            IDLE_WITHIN.as_secs(),
            after.fds,
            idle.fds,
            after.children
        ));
    }
    if failures.is_empty() {
        println!("verdict: PASS");
    } else {
        println!("verdict: FAIL: {}", failures.join("; "));
    }
    failures.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_interleaved_in_its_proportions() {
        let mut schedule = Schedule::new();
        let total: u32 = MIX.iter().map(|(_, w)| w).sum();
        let kinds: Vec<Kind> = (0..total).map(|_| schedule.next_kind()).collect();
        for (kind, weight) in MIX {
            assert_eq!(
                kinds.iter().filter(|k| **k == kind).count(),
                weight as usize
            );
        }
        // No long runs of one kind.
        assert!(kinds.windows(4).all(|w| w.iter().any(|k| *k != w[0])));
    }

    #[test]
    fn the_reference_minute_and_flatness() {
        assert_eq!(reference_minute(30), 8);
        assert_eq!(reference_minute(16), 8);
        assert_eq!(reference_minute(10), 5);
        assert_eq!(reference_minute(3), 1);
        assert_eq!(reference_minute(1), 1);
        // 5 % of 40 MiB is more than 1 MiB; of 10 MiB, less.
        assert!(flat(40 * 1024, 42 * 1024).0);
        assert!(!flat(40 * 1024, 43 * 1024).0);
        assert!(flat(10 * 1024, 11 * 1024).0);
        assert!(!flat(10 * 1024, 11 * 1024 + 1).0);
        // Shrinking is flat.
        assert!(flat(20 * 1024, 8 * 1024).0);
    }

    #[test]
    fn minutes_average_their_samples() {
        let at = |secs, rss_kib| Sample {
            at: Duration::from_secs(secs),
            rss_kib,
            fds: 0,
            children: 0,
        };
        let samples = [at(10, 100), at(60, 200), at(70, 400), at(120, 600)];
        assert_eq!(minute_rss(&samples, 1), Some(150));
        assert_eq!(minute_rss(&samples, 2), Some(500));
        assert_eq!(minute_rss(&samples, 3), None);
    }
}
