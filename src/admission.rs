//! Admission limits that depend on who is asking: connections per source,
//! starts per service, and the counters of limits hit (for the log summary
//! and systemd's STATUS= line).

use crate::limits::{START_MAX_SOURCES, START_SOURCE_IDLE};
use crate::sync::lock;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The source a per-source limit applies to: an IPv4 address, or an IPv6
/// address cut to its first `v6_prefix` bits.
pub fn source_key(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u32::from(v6_prefix.min(128));
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        v4 => v4,
    }
}

/// A count of things in progress (handshakes, MSP connections), each held
/// by a guard: no path, a task that never ran or one that panicked
/// included, can keep a place.
#[derive(Debug, Default)]
pub struct Gauge {
    count: AtomicUsize,
}

/// A place counted by a [`Gauge`], given back when dropped.
#[derive(Debug)]
pub struct GaugeGuard {
    gauge: Arc<Gauge>,
}

impl Gauge {
    pub fn get(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Takes a place whatever the count; returns it with the count before.
    pub fn enter(self: &Arc<Self>) -> (GaugeGuard, usize) {
        let before = self.count.fetch_add(1, Ordering::Relaxed);
        let guard = GaugeGuard {
            gauge: Arc::clone(self),
        };
        (guard, before)
    }

    /// Takes a place unless `max` are taken.
    pub fn try_enter(self: &Arc<Self>, max: usize) -> Option<GaugeGuard> {
        let (guard, before) = self.enter();
        (before < max).then_some(guard)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.gauge.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connections in progress per source. Entries exist only while a source
/// has connections, so memory follows the connections themselves.
#[derive(Debug, Default)]
pub struct PerSource {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// A source's place, given back when dropped.
#[derive(Debug)]
pub struct SourceGuard {
    table: Arc<PerSource>,
    key: IpAddr,
}

impl PerSource {
    /// Takes a place for `key` unless it holds `max` already.
    pub fn try_enter(self: &Arc<Self>, key: IpAddr, max: usize) -> Option<SourceGuard> {
        let mut counts = lock(&self.counts);
        let count = counts.entry(key).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SourceGuard {
            table: Arc::clone(self),
            key,
        })
    }

    /// Sources with connections now.
    pub fn sources(&self) -> usize {
        lock(&self.counts).len()
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        let mut counts = lock(&self.table.counts);
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// Starts per service: a token bucket each, holding up to one second's
/// worth, refilled continuously. A service that starts too often is
/// refused for a moment, never disabled.
///
/// The rate is shared fairly among the sources asking for it now: each
/// source active in the last [`START_SOURCE_IDLE`] has a share of the rate
/// divided by their number, and by two at least (a bucket of its own,
/// holding at least one start). A source within its share may take the
/// service's last token; a source over it only takes tokens while more
/// than half of the service's bucket is left. A source that floods alone
/// therefore leaves half for whoever comes next, flooding sources however
/// many each get what one polite source gets, and a source over its share
/// is refused first.
#[derive(Debug, Default)]
pub struct StartRate {
    services: Mutex<HashMap<String, ServiceStarts>>,
}

#[derive(Debug)]
struct ServiceStarts {
    per_second: u32,
    bucket: Bucket,
    /// At most [`START_MAX_SOURCES`]: a source beyond them counts as over
    /// its share.
    sources: HashMap<IpAddr, Bucket>,
}

/// Tokens, and when they were last counted.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(size: f64, now: Instant) -> Self {
        Bucket {
            tokens: size,
            last: now,
        }
    }

    /// Adds what `per_second` gave since the last count, up to `size`.
    fn refill(&mut self, per_second: f64, size: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(size);
        self.last = now;
    }
}

impl ServiceStarts {
    fn new(per_second: u32, now: Instant) -> Self {
        ServiceStarts {
            per_second,
            bucket: Bucket::full(f64::from(per_second), now),
            sources: HashMap::new(),
        }
    }

    fn forget_idle(&mut self, now: Instant) {
        self.sources
            .retain(|_, b| now.saturating_duration_since(b.last) < START_SOURCE_IDLE);
    }
}

impl StartRate {
    /// Takes a start for `service`, asked for by `source`, if it has one
    /// left at `per_second`.
    pub fn allow(&self, service: &str, per_second: u32, source: IpAddr, now: Instant) -> bool {
        let mut services = lock(&self.services);
        let starts = services
            .entry(service.to_ascii_lowercase())
            .or_insert_with(|| ServiceStarts::new(per_second, now));
        if starts.per_second != per_second {
            *starts = ServiceStarts::new(per_second, now);
        }
        let rate = f64::from(per_second);
        starts.bucket.refill(rate, rate, now);
        if starts.sources.len() >= START_MAX_SOURCES && !starts.sources.contains_key(&source) {
            starts.forget_idle(now);
        }
        // Shared by the sources active now, and always room for one more:
        // a source alone has half the rate as its share.
        let active = starts.sources.len() + usize::from(!starts.sources.contains_key(&source));
        let share = rate / active.max(2) as f64;
        let share_size = share.max(1.0);
        let room = starts.sources.len() < START_MAX_SOURCES;
        let own = match starts.sources.get_mut(&source) {
            Some(own) => Some(own),
            None if room => Some(
                starts
                    .sources
                    .entry(source)
                    .or_insert_with(|| Bucket::full(share_size, now)),
            ),
            None => None,
        };
        let within_share = own.is_some_and(|own| {
            own.refill(share, share_size, now);
            own.tokens >= 1.0
        });
        let keep = if within_share { 0.0 } else { rate / 2.0 };
        if starts.bucket.tokens < 1.0 + keep {
            return false;
        }
        starts.bucket.tokens -= 1.0;
        if within_share && let Some(own) = starts.sources.get_mut(&source) {
            own.tokens -= 1.0;
        }
        true
    }

    /// Forgets services no longer configured.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.services).retain(|name, _| keep(name));
    }

    /// Forgets sources that asked for nothing lately, so that the tables
    /// hold only the sources of the last moments.
    pub fn forget_idle_sources(&self) {
        let now = Instant::now();
        for starts in lock(&self.services).values_mut() {
            starts.forget_idle(now);
            starts.sources.shrink_to_fit();
        }
    }
}

/// Connections waiting for their request, oldest first: TCPMUX
/// handshakes waiting for their name, MSP connections with no whole
/// message in hand (one queue each). At the cap (`max_handshakes`, `[msp]
/// max_connections`) the oldest is shed to make room for a new connection,
/// and when descriptors run out, as many as a session's start lacks
/// ([`FdGuard::grow_for_start`]): a flood of silent connections then costs
/// its own connections their place, while a client that sends its request
/// promptly is served.
#[derive(Debug, Default)]
pub struct Waiting {
    next: AtomicU64,
    queue: Mutex<BTreeMap<u64, Signals>>,
}

/// How a waiting connection is told that it is shed, and how it tells
/// whoever shed it that its connection is closed.
#[derive(Debug, Clone, Default)]
struct Signals {
    shed: CancellationToken,
    closed: CancellationToken,
}

impl Signals {
    /// Sheds it; only ever under the queue's lock, so that a connection
    /// leaving the queue knows for sure whether it was shed.
    fn shed(self) -> CancellationToken {
        self.shed.cancel();
        self.closed
    }
}

/// A handshake's place among the waiting ones, left when dropped.
#[derive(Debug)]
pub struct WaitingPlace {
    waiting: Arc<Waiting>,
    id: u64,
    signals: Signals,
}

/// A shed connection, still open. Dropped once the connection is closed
/// and its descriptor given back, it tells whoever shed it that the
/// descriptor is free.
#[derive(Debug)]
pub struct Shed {
    _closed: DropGuard,
}

impl Waiting {
    pub fn enter(self: &Arc<Self>) -> WaitingPlace {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let signals = Signals::default();
        lock(&self.queue).insert(id, signals.clone());
        WaitingPlace {
            waiting: Arc::clone(self),
            id,
            signals,
        }
    }

    /// Sheds the oldest waiting handshake; false when none waits.
    pub fn shed_oldest(&self) -> bool {
        let mut queue = lock(&self.queue);
        queue.pop_first().map(|(_, s)| s.shed()).is_some()
    }

    /// Sheds the `n` oldest waiting handshakes, unless fewer wait (then
    /// none). Each token is cancelled once that handshake's connection is
    /// closed and its descriptor given back.
    fn shed_oldest_n(&self, n: usize) -> Option<Vec<CancellationToken>> {
        let mut queue = lock(&self.queue);
        if queue.len() < n {
            return None;
        }
        let shed = (0..n)
            .filter_map(|_| queue.pop_first())
            .map(|(_, s)| s.shed())
            .collect();
        Some(shed)
    }

    /// Handshakes waiting now.
    pub fn len(&self) -> usize {
        lock(&self.queue).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl WaitingPlace {
    /// Completes when this handshake is shed.
    pub async fn shed(&self) {
        self.signals.shed.cancelled().await
    }

    /// Leaves the queue. Some when the connection was shed, even if its
    /// request came at the same moment: whoever shed it counts on its
    /// descriptor, to be given back by dropping the [`Shed`] once the
    /// connection is closed.
    pub fn leave(mut self) -> Option<Shed> {
        let mut queue = lock(&self.waiting.queue);
        queue.remove(&self.id);
        let shed = self.signals.shed.is_cancelled().then(|| Shed {
            _closed: self.signals.closed.clone().drop_guard(),
        });
        drop(queue);
        // Told by the Shed alone, not by this place's drop.
        self.signals.closed = CancellationToken::new();
        shed
    }
}

impl Drop for WaitingPlace {
    fn drop(&mut self) {
        lock(&self.waiting.queue).remove(&self.id);
        // A place dropped while shed (its task ended otherwise) holds no
        // connection any more.
        if self.signals.shed.is_cancelled() {
            self.signals.closed.cancel();
        }
    }
}

/// The descriptors the daemon may spend on connections and sessions: the
/// soft `RLIMIT_NOFILE` less what the rest of the daemon needs. A
/// connection holds one from accept on; a session start takes what its
/// launcher needs before the client hears `+`, so that a full table means
/// `-Server busy`, never `+` and then nothing.
#[derive(Debug, Default)]
pub struct FdBudget {
    capacity: AtomicUsize,
    used: AtomicUsize,
}

/// Descriptors taken from an [`FdBudget`], given back when dropped.
#[derive(Debug)]
pub struct FdGuard {
    budget: Arc<FdBudget>,
    held: usize,
}

impl FdBudget {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(FdBudget {
            capacity: AtomicUsize::new(capacity),
            used: AtomicUsize::new(0),
        })
    }

    /// Sets how many descriptors may be held at once (after a reload).
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Descriptors held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` descriptors, unless fewer are left.
    pub fn try_take(self: &Arc<Self>, n: usize) -> Option<FdGuard> {
        self.grab(n).then(|| FdGuard {
            budget: Arc::clone(self),
            held: n,
        })
    }

    /// Takes `n` descriptors even past the capacity: for a connection
    /// admitted in place of one being shed, which gives its own back at
    /// once.
    pub fn take_over(self: &Arc<Self>, n: usize) -> FdGuard {
        self.used.fetch_add(n, Ordering::AcqRel);
        FdGuard {
            budget: Arc::clone(self),
            held: n,
        }
    }

    /// Takes as many as it can of `n` descriptors; returns how many.
    fn grab_up_to(&self, n: usize) -> usize {
        let capacity = self.capacity();
        let before = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_add(n).min(capacity.max(used)))
            })
            .unwrap_or_else(|used| used);
        before.saturating_add(n).min(capacity.max(before)) - before
    }

    fn grab(&self, n: usize) -> bool {
        let capacity = self.capacity();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= capacity)
            })
            .is_ok()
    }
}

impl FdGuard {
    /// Holds `total` descriptors from now on, for a session's start,
    /// taking more if needed: what the budget has left, and when that is
    /// too few, the descriptors of as many of the oldest handshakes still
    /// waiting for their names as the start lacks. Those are shed (told
    /// `-Too many connections`, as at `max_handshakes`); their descriptors
    /// are counted as this guard's at once, so that no other connection
    /// takes them, and this waits until each shed connection is closed, so
    /// that they are free when the start opens its own.
    ///
    /// False (nothing taken, nobody shed) when fewer handshakes wait than
    /// the start lacks.
    pub async fn grow_for_start(&mut self, total: usize, waiting: &Waiting) -> bool {
        let wanted = total.saturating_sub(self.held);
        let taken = self.budget.grab_up_to(wanted);
        self.held += taken;
        let lacking = wanted - taken;
        if lacking == 0 {
            return true;
        }
        let Some(closed) = waiting.shed_oldest_n(lacking) else {
            self.shrink_to(self.held - taken);
            return false;
        };
        // Each shed handshake gives back the one descriptor it holds.
        self.budget.used.fetch_add(lacking, Ordering::AcqRel);
        self.held += lacking;
        for c in closed {
            c.cancelled().await;
        }
        true
    }

    /// Gives back all but `total` descriptors.
    pub fn shrink_to(&mut self, total: usize) {
        if total < self.held {
            self.budget
                .used
                .fetch_sub(self.held - total, Ordering::AcqRel);
            self.held = total;
        }
    }
}

impl Drop for FdGuard {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

/// A limit a client can run into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    MaxHandshakes,
    MaxHandshakesPerSource,
    NameTimeout,
    MaxInstances,
    MaxSessions,
    MaxStartsPerSecond,
    /// `[tcpmux] max_starting_units`: no turn to start a unit in time.
    MaxStartingUnits,
    /// The limit on open files (`LimitNOFILE=`).
    OpenFiles,
    /// `[msp] rate_per_minute`.
    MspRate,
    /// `[msp] max_connections`.
    MspConnections,
    /// Datagrams dropped while the most are being delivered.
    MspDatagramsInFlight,
    /// `[msp] max_connections_per_source`.
    MspConnectionsPerSource,
    /// `[msp] recipient_rate_per_minute`.
    MspRecipientRate,
    /// `[msp] total_rate_per_minute`.
    MspTotalRate,
    /// `[[service]] max_instances_per_source`.
    MaxInstancesPerSource,
    /// `[tcpmux] max_sessions_per_source`.
    MaxSessionsPerSource,
    /// `[msp] max_messages_per_connection`.
    MspMessagesPerConnection,
}

/// How many kinds of limit there are.
const LIMITS: usize = 17;

impl Limit {
    pub const ALL: [Limit; LIMITS] = [
        Limit::MaxHandshakes,
        Limit::MaxHandshakesPerSource,
        Limit::NameTimeout,
        Limit::MaxInstances,
        Limit::MaxSessions,
        Limit::MaxStartsPerSecond,
        Limit::MaxStartingUnits,
        Limit::OpenFiles,
        Limit::MspRate,
        Limit::MspConnections,
        Limit::MspDatagramsInFlight,
        Limit::MspConnectionsPerSource,
        Limit::MspRecipientRate,
        Limit::MspTotalRate,
        Limit::MaxInstancesPerSource,
        Limit::MaxSessionsPerSource,
        Limit::MspMessagesPerConnection,
    ];

    /// The config key that sets it.
    pub fn key(self) -> &'static str {
        match self {
            Limit::MaxHandshakes => "max_handshakes",
            Limit::MaxHandshakesPerSource => "max_handshakes_per_source",
            Limit::NameTimeout => "name_timeout",
            Limit::MaxInstances => "max_instances",
            Limit::MaxSessions => "max_sessions",
            Limit::MaxStartsPerSecond => "max_starts_per_second",
            Limit::MaxStartingUnits => "max_starting_units",
            Limit::OpenFiles => "open files",
            Limit::MspRate => "msp rate_per_minute",
            Limit::MspConnections => "msp max_connections",
            Limit::MspDatagramsInFlight => "msp datagrams in delivery",
            Limit::MspConnectionsPerSource => "msp max_connections_per_source",
            Limit::MspRecipientRate => "msp recipient_rate_per_minute",
            Limit::MspTotalRate => "msp total_rate_per_minute",
            Limit::MaxInstancesPerSource => "max_instances_per_source",
            Limit::MaxSessionsPerSource => "max_sessions_per_source",
            Limit::MspMessagesPerConnection => "msp max_messages_per_connection",
        }
    }
}

/// How often each limit was hit since startup.
#[derive(Debug, Default)]
pub struct LimitHits {
    counts: [AtomicU64; LIMITS],
}

impl LimitHits {
    pub fn hit(&self, limit: Limit) {
        self.counts[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, limit: Limit) -> u64 {
        self.counts[limit as usize].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        Limit::ALL.iter().map(|&l| self.get(l)).sum()
    }

    /// A snapshot, for differences between two moments.
    pub fn snapshot(&self) -> [u64; LIMITS] {
        Limit::ALL.map(|l| self.get(l))
    }
}

/// "12 name_timeout, 3 max_handshakes_per_source" for the limits hit
/// between two snapshots; None when none was.
pub fn describe_hits(before: &[u64; LIMITS], after: &[u64; LIMITS]) -> Option<String> {
    let parts: Vec<String> = Limit::ALL
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let n = after[i].saturating_sub(before[i]);
            (n > 0).then(|| format!("{n} {}", l.key()))
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ipv6_sources_are_grouped_by_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a, 64), source_key(b, 64));
        assert_ne!(source_key(a, 64), source_key(c, 64));
        assert_ne!(source_key(a, 128), source_key(b, 128));
        assert_eq!(source_key(a, 0), source_key(c, 0));
        let v4: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(source_key(v4, 64), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn per_source_places_are_bounded_and_returned() {
        let t = Arc::new(PerSource::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let g1 = t.try_enter(a, 2).unwrap();
        let _g2 = t.try_enter(a, 2).unwrap();
        assert!(t.try_enter(a, 2).is_none());
        assert!(t.try_enter(b, 2).is_some());
        drop(g1);
        assert!(t.try_enter(a, 2).is_some());
        assert_eq!(t.sources(), 1, "sources without connections are forgotten");
    }

    #[test]
    fn gauge_places_are_bounded_and_given_back() {
        let g = Arc::new(Gauge::default());
        let a = g.try_enter(2).unwrap();
        let _b = g.try_enter(2).unwrap();
        assert!(g.try_enter(2).is_none());
        assert_eq!(g.get(), 2, "a refused place is given back at once");
        drop(a);
        assert!(g.try_enter(2).is_some());
        let (_c, before) = g.enter();
        assert_eq!(before, 1);
    }

    /// Runs a future to its end, on a runtime of its own.
    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(f)
    }

    #[test]
    fn descriptors_are_budgeted_and_given_back() {
        let b = FdBudget::new(10);
        let none_waits = Arc::new(Waiting::default());
        let mut a = b.try_take(1).unwrap();
        assert!(run(a.grow_for_start(8, &none_waits)));
        assert!(b.try_take(3).is_none());
        let c = b.try_take(2).unwrap();
        assert!(
            !run(a.grow_for_start(9, &none_waits)),
            "the budget is spent and no handshake waits"
        );
        assert_eq!(b.used(), 10, "a start refused takes nothing");
        a.shrink_to(2);
        assert_eq!(b.used(), 4);
        drop((a, c));
        assert_eq!(b.used(), 0);
        b.set_capacity(1);
        assert!(b.try_take(2).is_none());
    }

    /// A handshake waiting with a descriptor of `budget`, as the accept
    /// loop admits one.
    fn waiting_handshake(budget: &Arc<FdBudget>, w: &Arc<Waiting>) -> (FdGuard, WaitingPlace) {
        (budget.try_take(1).unwrap(), w.enter())
    }

    #[test]
    fn a_start_short_of_descriptors_sheds_as_many_waiting_handshakes_as_it_lacks() {
        let b = FdBudget::new(6);
        let w = Arc::new(Waiting::default());
        let handshakes: Vec<_> = (0..5).map(|_| waiting_handshake(&b, &w)).collect();
        let mut start = b.try_take(1).unwrap();
        assert_eq!(b.used(), 6);
        let (grown, still_waiting) = run(async {
            tokio::join!(start.grow_for_start(4, &w), async {
                // The shed ones close their connections in their own time.
                tokio::task::yield_now().await;
                let mut still_waiting = Vec::new();
                for (fds, place) in handshakes {
                    match place.leave() {
                        Some(shed) => drop((fds, shed)),
                        None => still_waiting.push(fds),
                    }
                }
                still_waiting
            })
        });
        assert!(grown);
        // The three oldest gave way; the start holds their descriptors,
        // the two others still theirs.
        assert_eq!(still_waiting.len(), 2);
        assert_eq!(b.used(), 6);
        drop(still_waiting);
        assert_eq!(b.used(), 4);
    }

    #[test]
    fn a_start_sheds_nobody_when_fewer_handshakes_wait_than_it_lacks() {
        let b = FdBudget::new(3);
        let w = Arc::new(Waiting::default());
        let (fds, place) = waiting_handshake(&b, &w);
        let mut start = b.try_take(2).unwrap();
        assert!(!run(start.grow_for_start(4, &w)));
        assert_eq!(b.used(), 3);
        assert_eq!(w.len(), 1);
        assert!(place.leave().is_none(), "it still waits, never shed");
        // Room left is taken before anybody is shed.
        drop(fds);
        let (_fds, place) = waiting_handshake(&b, &w);
        drop(start);
        let mut start = b.try_take(1).unwrap();
        assert!(run(start.grow_for_start(2, &w)));
        assert!(place.leave().is_none());
        assert_eq!(b.used(), 3);
    }

    #[test]
    fn start_rate_refuses_then_recovers() {
        let r = StartRate::default();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        // 2 a second; alone, a source's share is half of it, and the other
        // half is kept for sources within theirs.
        assert!(r.allow("Echo", 2, a, t0));
        assert!(!r.allow("ECHO", 2, a, t0));
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(r.allow("echo", 2, b, t0), "b is within its share");
        assert!(r.allow("other", 2, a, t0), "services are counted apart");
        let later = t0 + Duration::from_millis(1500);
        assert!(r.allow("echo", 2, a, later));
    }

    /// Every 10 ms for two seconds, `flood` asks ten times and, every
    /// 250 ms, `polite` asks once: (flood's starts, polite's).
    fn flood_and_polite(r: &StartRate, rate: u32) -> (usize, usize) {
        let t0 = Instant::now();
        let flood: IpAddr = "192.0.2.1".parse().unwrap();
        let polite: IpAddr = "192.0.2.2".parse().unwrap();
        let (mut flooded, mut served) = (0, 0);
        for tick in 0..200 {
            let now = t0 + Duration::from_millis(10 * tick);
            flooded += (0..10)
                .filter(|_| r.allow("echo", rate, flood, now))
                .count();
            if tick % 25 == 0 {
                served += usize::from(r.allow("echo", rate, polite, now));
            }
        }
        (flooded, served)
    }

    #[test]
    fn a_flooding_source_leaves_a_share_for_the_others() {
        let r = StartRate::default();
        let (flooded, served) = flood_and_polite(&r, 16);
        assert_eq!(served, 8, "the polite source is within its share");
        assert!(flooded <= 16 + 2 * 16, "{flooded}: the rate holds");
        r.forget_idle_sources();
    }

    #[test]
    fn the_table_of_sources_is_bounded_and_those_beyond_it_are_over_their_share() {
        let r = StartRate::default();
        let now = Instant::now();
        // Enough for one start each, and as many in reserve.
        let rate = 2 * START_MAX_SOURCES as u32;
        // Within one moment: none is idle, so none is forgotten.
        for i in 0..START_MAX_SOURCES as u32 {
            assert!(r.allow("echo", rate, IpAddr::from(i.to_be_bytes()), now));
        }
        // One more source finds no room in the table: it counts as over
        // its share, served only while more than half the rate is left,
        // which the others have taken.
        let beyond = IpAddr::from([203, 0, 113, 1]);
        assert!(!r.allow("echo", rate, beyond, now));
        let services = lock(&r.services);
        assert_eq!(services["echo"].sources.len(), START_MAX_SOURCES);
        assert!(!services["echo"].sources.contains_key(&beyond));
    }

    #[test]
    fn many_sources_within_their_shares_leave_a_share_for_another() {
        let r = StartRate::default();
        let t0 = Instant::now();
        let attackers: Vec<IpAddr> = (0..24u8).map(|i| IpAddr::from([198, 51, 100, i])).collect();
        let polite: IpAddr = "192.0.2.2".parse().unwrap();
        let mut served = 0;
        // Four seconds: every source asks twice a second, the polite one
        // at a different place among them each time.
        for tick in 0..8usize {
            let now = t0 + Duration::from_millis(500 * tick as u64);
            let turn = tick * 7 % attackers.len();
            for (i, a) in attackers.iter().enumerate() {
                if i == turn {
                    served += usize::from(r.allow("echo", 16, polite, now));
                }
                r.allow("echo", 16, *a, now);
            }
        }
        assert!(served >= 2, "the polite source got {served} of 8");
    }

    #[test]
    fn waiting_handshakes_are_shed_oldest_first() {
        let w = Arc::new(Waiting::default());
        let first = w.enter();
        let second = w.enter();
        assert!(w.shed_oldest());
        assert!(first.signals.shed.is_cancelled() && !second.signals.shed.is_cancelled());
        drop(second);
        assert!(w.is_empty());
        assert!(!w.shed_oldest());
        assert!(first.leave().is_some(), "shed, it knows so as it leaves");
    }

    #[test]
    fn hits_are_summed_up_by_key() {
        let h = LimitHits::default();
        let before = h.snapshot();
        h.hit(Limit::NameTimeout);
        h.hit(Limit::NameTimeout);
        h.hit(Limit::MaxInstances);
        assert_eq!(
            describe_hits(&before, &h.snapshot()).unwrap(),
            "2 name_timeout, 1 max_instances"
        );
        assert_eq!(describe_hits(&h.snapshot(), &h.snapshot()), None);
        assert_eq!(h.total(), 3);
    }
}
