//! The log's budget for entries about single connections: those carrying
//! a `remote_addr` field (a session served, started or ended, a failed
//! start, an MSP delivery). Each is worth a line of its own while they are
//! few; a flood of them, even of sessions served one after another, must
//! neither fill the disk nor push the entries that matter out of the
//! journal's rate limit (journald's default keeps 10,000 entries of a
//! service in 30 s: 333 a second). At most
//! [`LOG_LINES_PER_SOURCE_PER_SECOND`] from one source and
//! [`LOG_LINES_PER_SECOND`] in all are written in any second; the rest are
//! counted, and the count is logged with the 10-second summary.
//!
//! Entries without `remote_addr` (the daemon's own: startup, reloads, the
//! summary itself) are never held back.
//!
//! Refusals (a denied client, an unknown service, a timeout, a limit, an
//! MSP message refused) have a budget of their own on top,
//! [`REFUSALS`]: the first [`REFUSALS_LOGGED_PER_SOURCE`] of a source in
//! each [`REFUSAL_WINDOW`] get an entry at info level, at most
//! [`REFUSALS_LOGGED`] of all sources; every refusal is counted in the
//! periodic summary as well, logged or not. A client that was refused
//! once is in the journal; a flood of refusals is a line every interval.

use crate::admission::source_key;
use crate::limits::DEFAULT_IPV6_SOURCE_PREFIX;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer};

/// Entries about single connections from one source (an IPv4 address or
/// an IPv6 prefix) written in one second.
pub const LOG_LINES_PER_SOURCE_PER_SECOND: u32 = 10;

/// Entries about single connections written in one second, all sources
/// together: well below journald's default rate limit.
pub const LOG_LINES_PER_SECOND: u32 = 200;

/// Refusals of one source (an IPv4 address or an IPv6 prefix) that get an
/// entry of their own in each [`REFUSAL_WINDOW`].
pub const REFUSALS_LOGGED_PER_SOURCE: u32 = 5;

/// Refusals of all sources together that get an entry of their own in
/// each [`REFUSAL_WINDOW`]: a tenth of what [`LOG_LINES_PER_SECOND`] allows
/// in that time, so that refusals from many sources leave room for the
/// entries of sessions.
pub const REFUSALS_LOGGED: u32 = 200;

/// The interval of the refusals' budget, the periodic summary's.
pub const REFUSAL_WINDOW: Duration = crate::limits::LIMIT_LOG_INTERVAL;

/// The field that makes an entry one about a single connection.
const SOURCE_FIELD: &str = "remote_addr";

/// The budget of the window in progress, and what was held back since it
/// was last asked.
#[derive(Debug)]
pub struct LineBudget {
    length: Duration,
    per_source: u32,
    total: u32,
    window: Mutex<Option<Window>>,
    held_back: AtomicU64,
    ipv6_prefix: AtomicU8,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    total: u32,
    /// At most `total` entries: only a source with an entry written is in
    /// it.
    sources: HashMap<IpAddr, u32>,
}

/// The one budget of the process, as the logger is one.
pub static BUDGET: LineBudget = LineBudget::new(
    Duration::from_secs(1),
    LOG_LINES_PER_SOURCE_PER_SECOND,
    LOG_LINES_PER_SECOND,
);

/// Which refusals get an entry of their own.
pub static REFUSALS: LineBudget =
    LineBudget::new(REFUSAL_WINDOW, REFUSALS_LOGGED_PER_SOURCE, REFUSALS_LOGGED);

impl LineBudget {
    /// At most `per_source` entries from one source and `total` in all in
    /// any window of `length`.
    pub const fn new(length: Duration, per_source: u32, total: u32) -> Self {
        LineBudget {
            length,
            per_source,
            total,
            window: Mutex::new(None),
            held_back: AtomicU64::new(0),
            ipv6_prefix: AtomicU8::new(DEFAULT_IPV6_SOURCE_PREFIX),
        }
    }

    /// Groups IPv6 sources by `prefix` bits, as the limits do.
    pub fn set_ipv6_source_prefix(&self, prefix: u8) {
        self.ipv6_prefix.store(prefix, Ordering::Relaxed);
    }

    /// Whether an entry about a connection from `ip` may be written now;
    /// if not, it is counted as held back.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        let key = source_key(ip, self.ipv6_prefix.load(Ordering::Relaxed));
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let window = match &mut *window {
            Some(w) if now.saturating_duration_since(w.started) < self.length => w,
            slot => slot.insert(Window {
                started: now,
                total: 0,
                sources: HashMap::new(),
            }),
        };
        let admitted = window.total < self.total && {
            let count = window.sources.entry(key).or_insert(0);
            *count < self.per_source && {
                *count += 1;
                true
            }
        };
        if admitted {
            window.total += 1;
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// Entries held back since the last call.
    pub fn take_held_back(&self) -> u64 {
        self.held_back.swap(0, Ordering::Relaxed)
    }
}

/// A layer that holds back the entries over [`BUDGET`]. Debug entries are
/// not counted: they are for whoever asked for them.
pub struct BudgetLayer;

impl<S: tracing::Subscriber> Layer<S> for BudgetLayer {
    fn event_enabled(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) -> bool {
        if *event.metadata().level() > tracing::Level::INFO {
            return true;
        }
        let mut source = SourceOf(None);
        event.record(&mut source);
        match source.0 {
            Some(ip) => BUDGET.admit(ip, Instant::now()),
            None => true,
        }
    }
}

/// The `remote_addr` of an entry, when it has one.
struct SourceOf(Option<IpAddr>);

impl Visit for SourceOf {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == SOURCE_FIELD {
            self.0 = format!("{value:?}").trim_matches('"').parse().ok();
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == SOURCE_FIELD {
            self.0 = value.parse().ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_gets_its_share_of_a_second_and_all_together_the_total() {
        let budget = LineBudget::new(
            Duration::from_secs(1),
            LOG_LINES_PER_SOURCE_PER_SECOND,
            LOG_LINES_PER_SECOND,
        );
        let t0 = Instant::now();
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted = (0..100).filter(|_| budget.admit(one, t0)).count();
        assert_eq!(admitted, LOG_LINES_PER_SOURCE_PER_SECOND as usize);
        assert_eq!(budget.take_held_back(), 90);
        // Many sources: the total holds, and the table stays bounded.
        let admitted = (0..10_000u32)
            .filter(|i| budget.admit(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), t0))
            .count();
        assert_eq!(
            admitted,
            (LOG_LINES_PER_SECOND - LOG_LINES_PER_SOURCE_PER_SECOND) as usize
        );
        let sources = budget
            .window
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .sources
            .len();
        assert!(sources <= LOG_LINES_PER_SECOND as usize + 1, "{sources}");
        // The next second starts afresh.
        assert!(budget.admit(one, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn an_ipv6_prefix_is_one_source() {
        let budget = LineBudget::new(
            Duration::from_secs(1),
            LOG_LINES_PER_SOURCE_PER_SECOND,
            LOG_LINES_PER_SECOND,
        );
        let t0 = Instant::now();
        let admitted = (0..100u16)
            .filter(|i| {
                let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
                budget.admit(ip, t0)
            })
            .count();
        assert_eq!(admitted, LOG_LINES_PER_SOURCE_PER_SECOND as usize);
    }

    #[test]
    fn refusals_of_one_source_get_a_few_entries_an_interval() {
        let budget = LineBudget::new(REFUSAL_WINDOW, REFUSALS_LOGGED_PER_SOURCE, REFUSALS_LOGGED);
        let t0 = Instant::now();
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let admitted = (0..50).filter(|_| budget.admit(one, t0)).count();
        assert_eq!(admitted, REFUSALS_LOGGED_PER_SOURCE as usize);
        let later = t0 + REFUSAL_WINDOW - Duration::from_millis(1);
        assert!(!budget.admit(one, later), "still the same window");
        assert!(budget.admit(one, t0 + REFUSAL_WINDOW), "a new window");
        // Many sources: the total holds.
        let admitted = (0..10_000u32)
            .filter(|i| {
                budget.admit(
                    IpAddr::from((0x0a00_0000 + i).to_be_bytes()),
                    t0 + REFUSAL_WINDOW,
                )
            })
            .count();
        assert_eq!(admitted, REFUSALS_LOGGED as usize - 1);
    }
}
