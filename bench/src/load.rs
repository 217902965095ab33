//! The closed-loop load: `concurrency` clients, each starting its next
//! operation as soon as the last one ended, for a fixed time.
//!
//! One client thread (a current-thread runtime) drives them all, so the
//! client takes at most one of the machine's cores and leaves the rest to
//! the server under test.

use crate::ops::{self, Op};
use crate::record::Record;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One operation that takes longer counts as an error; the run stays
/// bounded even against a server that hangs.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// Pause after a failed operation, so that a server that refuses at once
/// (nothing listening) does not turn the client into a busy loop.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Distinct error messages kept per run; the rest are counted as "other".
const MAX_ERROR_KINDS: usize = 16;

#[derive(Debug, Default)]
pub struct Summary {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    latencies_us: Vec<u32>,
    error_kinds: BTreeMap<String, u64>,
    /// MSP retransmissions.
    pub retries: u64,
    /// MSP: (worker, seq) of every acknowledged message.
    pub acked: Vec<(usize, u64)>,
}

impl Summary {
    fn merge(&mut self, other: Summary) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.retries += other.retries;
        self.latencies_us.extend(other.latencies_us);
        self.acked.extend(other.acked);
        for (kind, n) in other.error_kinds {
            self.count_error(kind, n);
        }
    }

    fn count_error(&mut self, kind: String, n: u64) {
        let key =
            if self.error_kinds.len() < MAX_ERROR_KINDS || self.error_kinds.contains_key(&kind) {
                kind
            } else {
                "other errors".to_string()
            };
        *self.error_kinds.entry(key).or_default() += n;
    }

    fn percentile_us(sorted: &[u32], pct: usize) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let i = (sorted.len() * pct / 100).min(sorted.len() - 1);
        f64::from(sorted[i])
    }

    /// The most frequent errors, "12x connect: Connection refused; ...".
    pub fn error_note(&self) -> String {
        let mut kinds: Vec<_> = self.error_kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1));
        kinds
            .iter()
            .take(3)
            .map(|(kind, n)| format!("{n}x {kind}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn record(&self, test: &str, concurrency: usize, server: &str, note: String) -> Record {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let secs = self.elapsed.as_secs_f64();
        Record {
            test: test.to_string(),
            concurrency,
            server: server.to_string(),
            value: if secs > 0.0 {
                self.ok as f64 / secs
            } else {
                0.0
            },
            p50_us: Self::percentile_us(&sorted, 50),
            p99_us: Self::percentile_us(&sorted, 99),
            errors: self.errors,
            note,
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            // Nothing can be measured without it; not a result to report.
            eprintln!("tcpmux-bench: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    }
}

/// Runs the load and sums up every client's results.
pub fn run(target: SocketAddr, op: &Op, concurrency: usize, duration: Duration) -> Summary {
    let op = Arc::new(op.clone());
    let track_ids = matches!(*op, Op::Msp { .. });
    runtime().block_on(async move {
        let start = Instant::now();
        let deadline = start + duration;
        let mut clients = tokio::task::JoinSet::new();
        for id in 0..concurrency {
            clients.spawn(client(Arc::clone(&op), target, id, deadline, track_ids));
        }
        let mut total = Summary::default();
        while let Some(result) = clients.join_next().await {
            match result {
                Ok(summary) => total.merge(summary),
                Err(e) => total.count_error(format!("client task failed: {e}"), 1),
            }
        }
        total.elapsed = start.elapsed();
        total
    })
}

async fn client(
    op: Arc<Op>,
    target: SocketAddr,
    id: usize,
    deadline: Instant,
    track_ids: bool,
) -> Summary {
    let mut summary = Summary::default();
    let mut seq = 0u64;
    while Instant::now() < deadline {
        let started = Instant::now();
        match tokio::time::timeout(OP_TIMEOUT, ops::perform(&op, target, id, seq)).await {
            Ok(Ok(done)) => {
                let latency = done.latency.unwrap_or_else(|| started.elapsed());
                let us = latency.as_micros().min(u128::from(u32::MAX)) as u32;
                summary.latencies_us.push(us);
                summary.ok += 1;
                summary.retries += u64::from(done.retries);
                if track_ids {
                    summary.acked.push((id, seq));
                }
            }
            Ok(Err(e)) => {
                summary.errors += 1;
                summary.count_error(e, 1);
                tokio::time::sleep(ERROR_PAUSE).await;
            }
            Err(_) => {
                summary.errors += 1;
                summary.count_error(format!("no answer within {} s", OP_TIMEOUT.as_secs()), 1);
            }
        }
        seq += 1;
    }
    summary
}

/// The open-loop load: one operation started every 1/`rate` s for
/// `duration`, each on its own, however long the others take.
pub fn paced(target: SocketAddr, op: &Op, rate: f64, duration: Duration) -> Summary {
    let op = Arc::new(op.clone());
    runtime().block_on(async move {
        let start = Instant::now();
        let period = Duration::from_secs_f64(1.0 / rate);
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ops = tokio::task::JoinSet::new();
        let mut seq = 0u64;
        while start.elapsed() < duration {
            ticks.tick().await;
            spawn_timed(&mut ops, &op, target, seq);
            seq += 1;
        }
        let mut total = collect(ops).await;
        total.elapsed = start.elapsed();
        total
    })
}

/// Starts `n` operations at the same moment, once: a burst of clients.
pub fn burst(target: SocketAddr, op: &Op, n: usize) -> Summary {
    let op = Arc::new(op.clone());
    runtime().block_on(async move {
        let start = Instant::now();
        let mut ops = tokio::task::JoinSet::new();
        for seq in 0..n as u64 {
            spawn_timed(&mut ops, &op, target, seq);
        }
        let mut total = collect(ops).await;
        total.elapsed = start.elapsed();
        total
    })
}

type Timed = (
    Instant,
    Result<Result<ops::Done, String>, tokio::time::error::Elapsed>,
);

/// Starts one operation, timed from now, bounded by [`OP_TIMEOUT`].
fn spawn_timed(ops: &mut tokio::task::JoinSet<Timed>, op: &Arc<Op>, target: SocketAddr, seq: u64) {
    let op = Arc::clone(op);
    ops.spawn(async move {
        let started = Instant::now();
        let result = tokio::time::timeout(OP_TIMEOUT, ops::perform(&op, target, 0, seq)).await;
        (started, result)
    });
}

/// The latencies and errors of operations started apart.
async fn collect(mut ops: tokio::task::JoinSet<Timed>) -> Summary {
    let mut total = Summary::default();
    while let Some(joined) = ops.join_next().await {
        match joined {
            Ok((started, Ok(Ok(done)))) => {
                let latency = done.latency.unwrap_or_else(|| started.elapsed());
                total
                    .latencies_us
                    .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
                total.ok += 1;
            }
            Ok((_, Ok(Err(e)))) => {
                total.errors += 1;
                total.count_error(e, 1);
            }
            Ok((_, Err(_))) => {
                total.errors += 1;
                total.count_error(format!("no answer within {} s", OP_TIMEOUT.as_secs()), 1);
            }
            Err(e) => total.count_error(format!("task failed: {e}"), 1),
        }
    }
    total
}

/// One operation, for checking a server before it is measured.
pub fn once(target: SocketAddr, op: &Op) -> Result<(), String> {
    runtime().block_on(async {
        match tokio::time::timeout(OP_TIMEOUT, ops::perform(op, target, 0, 0)).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(format!("no answer within {} s", OP_TIMEOUT.as_secs())),
        }
    })
}

/// Makes the coming close of `socket` a reset (SO_LINGER 0), so the
/// connection leaves no TIME_WAIT behind.
pub fn close_with_reset(socket: &impl AsRawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid descriptor and a properly sized option value; a
    // failure only means the close is orderly after all.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}
