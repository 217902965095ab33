//! What stands between a parsed message and a terminal: retransmission
//! detection and rate limits. Memory is bounded, and each message costs
//! O(1) (amortised) however many sources there are.

use super::message::Message;
use arc_swap::ArcSwap;
use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub use crate::admission::source_key;

/// A message or an answer as the tables below remember it: 128 bits of
/// SipHash under keys drawn at random when the daemon starts, so that a
/// peer can neither predict nor provoke a collision. An entry costs this
/// and its outcome, never the message itself.
pub type Digest = u128;

fn digest_of(parts: impl Fn(&mut DefaultHasher)) -> Digest {
    static KEYS: OnceLock<(RandomState, RandomState)> = OnceLock::new();
    let (a, b) = KEYS.get_or_init(|| (RandomState::new(), RandomState::new()));
    let half = |keys: &RandomState| {
        let mut h = keys.build_hasher();
        parts(&mut h);
        h.finish()
    };
    (u128::from(half(a)) << 64) | u128::from(half(b))
}

/// What makes a datagram a retransmission of an earlier one: the same
/// source address and the same message, cookie included (RFC 1312 names
/// cookie, sender and sender's terminal; the text and the recipient are
/// added because real clients send a constant cookie, or one that changes
/// once a second). Names, terminals and the cookie are compared without
/// regard to case, as RFC 1312 asks; the text exactly.
pub fn retransmission_key(source: IpAddr, m: &Message) -> Digest {
    digest_of(|h| {
        source.to_canonical().hash(h);
        for part in [
            &m.recipient,
            &m.recipient_terminal,
            &m.sender,
            &m.sender_terminal,
            &m.cookie,
        ] {
            part.to_ascii_lowercase().hash(h);
        }
        m.text.hash(h);
    })
}

/// An answer sent to `peer`, or a datagram received from it.
pub fn exchange_key(peer: SocketAddr, data: &[u8]) -> Digest {
    digest_of(|h| {
        peer.ip().to_canonical().hash(h);
        peer.port().hash(h);
        data.hash(h);
    })
}

/// Source ports at or above [`LOWEST_ANSWERED_PORT`] whose datagrams are
/// never answered: services that answer whatever reaches them, or answer
/// with more than they got (as inetd's built-in services refuse to answer
/// them). A datagram forged to come from one of them would make tcpmuxd and
/// that service answer each other, or make tcpmuxd the first hop of an
/// amplification. Every port below 1024 is refused anyway (echo 7,
/// discard 9, daytime 13, chargen 19, MSP 18, DNS 53, NTP 123, SNMP 161,
/// portmap 111, NetBIOS 137...), and so are tcpmuxd's own MSP ports.
/// None is in Linux's range of ephemeral ports (32768 to 60999), where a
/// client's own port would be refused by chance (Jenkins' 33848 and DVR
/// discovery's 37810 are left out for that reason: their answers to a
/// forged datagram would come back to us, malformed and unanswered).
pub const UNANSWERED_SOURCE_PORTS: &[u16] = &[
    1434,  // Microsoft SQL Server browser
    1900,  // SSDP (UPnP discovery)
    3283,  // Apple Remote Desktop
    3389,  // RDP over UDP
    3478,  // STUN
    3702,  // WS-Discovery
    5060,  // SIP
    5351,  // NAT-PMP
    5353,  // mDNS
    5355,  // LLMNR
    5683,  // CoAP
    10001, // Ubiquiti discovery
    11211, // memcached
    27015, // Source engine game servers
];

/// Datagrams from source ports below this are never answered: those are
/// the ports of system services, never a client's.
pub const LOWEST_ANSWERED_PORT: u16 = 1024;

/// Whether a datagram from `source` may be answered at all, given the
/// ports tcpmuxd itself receives MSP datagrams on: not from a system
/// service's port, a known service port, nor from a port of our own (from
/// this host, a datagram whose answer would come back to us; from
/// another, most likely a second MSP server on the same port).
pub fn answerable_source(source: SocketAddr, own_ports: &[u16]) -> bool {
    let port = source.port();
    port >= LOWEST_ANSWERED_PORT
        && !UNANSWERED_SOURCE_PORTS.contains(&port)
        && !own_ports.contains(&port)
}

/// What [`Dedup::claim`] found for a message.
#[derive(Debug)]
pub enum Claim<V> {
    /// Not seen within the window: the caller handles the message and
    /// reports its outcome with [`Dedup::settle`]. Dropping it instead
    /// forgets the message, so that its next copy is handled afresh.
    First(First<V>),
    /// Seen, and its first copy is still being handled: wait for its
    /// outcome (None if it is dropped).
    Pending(watch::Receiver<Option<V>>),
    /// Seen, with this outcome.
    Done(V),
}

/// The first copy of a message, being handled.
#[derive(Debug)]
pub struct First<V> {
    key: Digest,
    id: u64,
    tx: watch::Sender<Option<V>>,
}

#[derive(Debug)]
enum Outcome<V> {
    /// Copies arriving meanwhile wait on it.
    Pending(watch::Receiver<Option<V>>),
    Done(V),
}

/// Digests remembered for a window given with each call (so a reload
/// applies at once), at most `capacity` of them, oldest forgotten first.
#[derive(Debug)]
struct Window<V> {
    capacity: usize,
    seen: HashMap<Digest, (V, Instant, u64)>,
    /// What `seen` could hold when last grown or shrunk (its capacity
    /// then: later, removed entries' marks hide part of it).
    reserved: usize,
    order: VecDeque<(Digest, u64)>,
    next_id: u64,
}

impl<V> Window<V> {
    fn new(capacity: usize) -> Self {
        Window {
            capacity: capacity.max(1),
            seen: HashMap::new(),
            reserved: 0,
            order: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Records `key` at `now`, in place of any earlier entry.
    fn insert(&mut self, key: Digest, value: V, now: Instant) -> u64 {
        while self.seen.len() >= self.capacity && !self.seen.contains_key(&key) {
            let Some((old, id)) = self.order.pop_front() else {
                break;
            };
            self.remove(old, id);
        }
        // Room for twice the entries held: the table then clears the marks
        // removed entries leave by rehashing in place, and grows only while
        // what it holds grows, never later under steady churn (a table
        // over half full doubles when those marks use up its room).
        if self.seen.len() + 1 > self.reserved / 2 {
            self.seen.reserve(self.seen.len() + 2);
            self.reserved = self.seen.capacity();
        }
        let id = self.next_id;
        self.next_id += 1;
        self.seen.insert(key, (value, now, id));
        self.order.push_back((key, id));
        id
    }

    /// Removes `key` if it is still the entry `id` (not a newer one).
    fn remove(&mut self, key: Digest, id: u64) {
        if self.seen.get(&key).is_some_and(|e| e.2 == id) {
            self.seen.remove(&key);
        }
    }

    /// Forgets what is older than `window`, and gives memory back once
    /// most of it is unused.
    fn prune(&mut self, window: Duration, now: Instant) {
        while let Some(&(key, id)) = self.order.front() {
            let expired = match self.seen.get(&key) {
                Some(e) if e.2 == id => now.saturating_duration_since(e.1) >= window,
                // Replaced or gone already.
                _ => true,
            };
            if !expired {
                break;
            }
            self.remove(key, id);
            self.order.pop_front();
        }
        if self.seen.capacity() > 4 * self.seen.len().max(16) {
            self.seen.shrink_to_fit();
            self.reserved = self.seen.capacity();
            self.order.shrink_to_fit();
        }
    }
}

/// Messages seen recently with their outcomes, remembered for a window
/// given with each call (so a reload applies at once), at most `capacity`
/// of them (the oldest are forgotten first). Looking a message up and
/// recording it are one step: two copies arriving together cannot both be
/// taken for the first.
#[derive(Debug)]
pub struct Dedup<V> {
    table: Window<Outcome<V>>,
}

impl<V: Clone> Dedup<V> {
    pub fn new(capacity: usize) -> Self {
        Dedup {
            table: Window::new(capacity),
        }
    }

    /// Looks `key` up and, unless it was seen within `window`, records it
    /// as seen at `now`.
    pub fn claim(&mut self, key: Digest, window: Duration, now: Instant) -> Claim<V> {
        self.table.prune(window, now);
        if let Some((outcome, _, _)) = self.table.seen.get(&key) {
            match outcome {
                Outcome::Done(v) => return Claim::Done(v.clone()),
                Outcome::Pending(rx) => {
                    if let Some(v) = rx.borrow().clone() {
                        return Claim::Done(v);
                    }
                    if rx.has_changed().is_ok() {
                        return Claim::Pending(rx.clone());
                    }
                    // Its first copy was given up without an outcome.
                }
            }
        }
        let (tx, rx) = watch::channel(None);
        let id = self.table.insert(key, Outcome::Pending(rx), now);
        Claim::First(First { key, id, tx })
    }

    /// Records the outcome of a first copy, and tells the copies waiting
    /// for it. The entry keeps the outcome alone.
    pub fn settle(&mut self, first: First<V>, outcome: V) {
        if let Some(entry) = self.table.seen.get_mut(&first.key)
            && entry.2 == first.id
        {
            entry.0 = Outcome::Done(outcome.clone());
        }
        first.tx.send_replace(Some(outcome));
    }

    /// Forgets what is older than `window`, whether or not messages come.
    pub fn prune(&mut self, window: Duration, now: Instant) {
        self.table.prune(window, now);
    }

    pub fn len(&self) -> usize {
        self.table.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.seen.is_empty()
    }
}

/// The answers sent recently, by addressee and content: a datagram that
/// equals the answer sent to its source is that answer come back (an
/// echo service, or a second MSP server, answering it), and answering it
/// again would start a loop. At most `capacity` remembered, for a window
/// given with each call.
#[derive(Debug)]
pub struct Answers {
    table: Window<()>,
}

impl Answers {
    pub fn new(capacity: usize) -> Self {
        Answers {
            table: Window::new(capacity),
        }
    }

    /// Remembers an answer of `data` sent to `peer` at `now`.
    pub fn sent(&mut self, peer: SocketAddr, data: &[u8], now: Instant) {
        self.table.insert(exchange_key(peer, data), (), now);
    }

    /// Whether `data` from `peer` is an answer sent to it within `window`.
    pub fn is_answer_back(
        &mut self,
        peer: SocketAddr,
        data: &[u8],
        window: Duration,
        now: Instant,
    ) -> bool {
        self.table.prune(window, now);
        self.table.seen.contains_key(&exchange_key(peer, data))
    }

    pub fn prune(&mut self, window: Duration, now: Instant) {
        self.table.prune(window, now);
    }

    pub fn len(&self) -> usize {
        self.table.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.seen.is_empty()
    }
}

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A rate limit per key: `per_minute` (given with each call, so a reload
/// applies at once) a minute, in bursts of as many; governor's GCRA, one
/// entry per key in a concurrent map.
///
/// About `capacity` keys are tracked at most. When more are, keys whose
/// state is back to fresh are dropped; if more than half are still
/// recent (a flood from that many sources), the table starts afresh. Each
/// of those O(n) steps follows at least `capacity / 2` new keys, so a key
/// costs O(1) amortised, and only one thread at a time cleans up.
pub struct KeyedRate<K: Hash + Eq + Clone, C: Clock + Clone = MonotonicClock> {
    capacity: usize,
    clock: C,
    current: ArcSwap<(u32, Keyed<K, C>)>,
    cleaning: Mutex<()>,
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> std::fmt::Debug for KeyedRate<K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current.load();
        f.debug_struct("KeyedRate")
            .field("capacity", &self.capacity)
            .field("per_minute", &current.0)
            .field("tracked", &current.1.len())
            .finish()
    }
}

fn quota(per_minute: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN))
}

impl<K: Hash + Eq + Clone> KeyedRate<K> {
    pub fn new(capacity: usize) -> Self {
        Self::with_clock(capacity, MonotonicClock)
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> KeyedRate<K, C> {
    pub fn with_clock(capacity: usize, clock: C) -> Self {
        let first = Keyed::dashmap_with_clock(quota(1), clock.clone());
        KeyedRate {
            capacity: capacity.max(1),
            current: ArcSwap::from_pointee((0, first)),
            clock,
            cleaning: Mutex::new(()),
        }
    }

    fn fresh(&self, per_minute: u32) -> Arc<(u32, Keyed<K, C>)> {
        let limiter = Keyed::dashmap_with_clock(quota(per_minute), self.clock.clone());
        let fresh = Arc::new((per_minute, limiter));
        self.current.store(Arc::clone(&fresh));
        fresh
    }

    /// Takes one from `key`'s allowance, if it has one left.
    pub fn allow(&self, key: &K, per_minute: u32) -> bool {
        let mut current = self.current.load_full();
        if current.0 != per_minute {
            current = self.fresh(per_minute);
        }
        if current.1.len() > self.capacity
            && let Ok(_cleaning) = self.cleaning.try_lock()
        {
            current.1.retain_recent();
            if current.1.len() > self.capacity / 2 {
                current = self.fresh(per_minute);
            }
        }
        current.1.check_key(key).is_ok()
    }

    /// Forgets the keys whose allowance is full again, and gives their
    /// memory back: run on a timer, so that memory follows the traffic
    /// of the last moments even when no message comes.
    pub fn prune(&self) {
        let current = self.current.load();
        current.1.retain_recent();
        current.1.shrink_to_fit();
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.current.load().1.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    const MINUTE: Duration = Duration::from_secs(60);

    fn msg(sender: &str, terminal: &str, cookie: &str, text: &str) -> Message {
        Message {
            version: Some(super::super::Version::B),
            recipient: b"chris".to_vec(),
            sender: sender.into(),
            sender_terminal: terminal.into(),
            cookie: cookie.into(),
            text: text.into(),
            ..Default::default()
        }
    }

    fn key(ip: &str, m: &Message) -> Digest {
        retransmission_key(ip.parse().unwrap(), m)
    }

    #[test]
    fn only_the_same_message_from_the_same_source_is_a_retransmission() {
        let t0 = Instant::now();
        let mut d: Dedup<&str> = Dedup::new(10);
        let first = msg("Sandy", "console", "-", "hello");
        let Claim::First(f) = d.claim(key("192.0.2.1", &first), MINUTE, t0) else {
            panic!("first copy")
        };
        d.settle(f, "delivered");
        // Case does not matter in names and cookie.
        let again = msg("sandy", "CONSOLE", "-", "hello");
        assert!(matches!(
            d.claim(key("192.0.2.1", &again), MINUTE, t0),
            Claim::Done("delivered")
        ));
        // A constant cookie with another text is another message; so is
        // the same message from another source.
        let other = msg("sandy", "console", "-", "Hello");
        assert!(matches!(
            d.claim(key("192.0.2.1", &other), MINUTE, t0),
            Claim::First(_)
        ));
        assert!(matches!(
            d.claim(key("192.0.2.2", &first), MINUTE, t0),
            Claim::First(_)
        ));
        // Forgotten after the window.
        assert!(matches!(
            d.claim(key("192.0.2.1", &first), MINUTE, t0 + MINUTE),
            Claim::First(_)
        ));
    }

    #[test]
    fn a_copy_of_a_message_in_progress_waits_for_its_outcome() {
        let t0 = Instant::now();
        let mut d: Dedup<u8> = Dedup::new(10);
        let m = msg("s", "", "1", "x");
        let Claim::First(f) = d.claim(key("192.0.2.1", &m), MINUTE, t0) else {
            panic!()
        };
        let Claim::Pending(rx) = d.claim(key("192.0.2.1", &m), MINUTE, t0) else {
            panic!("in progress")
        };
        d.settle(f, 7);
        assert_eq!(*rx.borrow(), Some(7));
        assert!(matches!(
            d.claim(key("192.0.2.1", &m), MINUTE, t0),
            Claim::Done(7)
        ));
        // Given up without an outcome: the next copy is handled afresh.
        let n = msg("s", "", "2", "x");
        let Claim::First(tx) = d.claim(key("192.0.2.1", &n), MINUTE, t0) else {
            panic!()
        };
        drop(tx);
        assert!(matches!(
            d.claim(key("192.0.2.1", &n), MINUTE, t0),
            Claim::First(_)
        ));
    }

    #[test]
    fn dedup_memory_is_bounded() {
        let t0 = Instant::now();
        let mut d: Dedup<()> = Dedup::new(100);
        for i in 0..1000 {
            let m = msg("s", "t", &i.to_string(), "x");
            if let Claim::First(f) = d.claim(key("192.0.2.1", &m), MINUTE, t0) {
                d.settle(f, ());
            }
        }
        assert_eq!(d.len(), 100);
        let newest = msg("s", "t", "999", "x");
        assert!(matches!(
            d.claim(key("192.0.2.1", &newest), MINUTE, t0),
            Claim::Done(())
        ));
        let oldest = msg("s", "t", "0", "x");
        assert!(matches!(
            d.claim(key("192.0.2.1", &oldest), MINUTE, t0),
            Claim::First(_)
        ));
    }

    #[test]
    fn a_table_at_a_steady_size_does_not_grow_under_churn() {
        // Entries come and go at a steady rate: once the window is full,
        // the table keeps its size.
        let mut w: Window<()> = Window::new(16 * 1024);
        let t0 = Instant::now();
        let window = Duration::from_secs(300);
        let mut capacity_when_full = 0;
        for i in 0..200_000u64 {
            // 37.5 a second, as in the soak.
            let now = t0 + Duration::from_millis(i * 1000 * 2 / 75);
            w.insert(i as Digest, (), now);
            if i % 375 == 0 {
                w.prune(window, now);
            }
            if i == 20_000 {
                capacity_when_full = w.reserved;
            }
        }
        assert!(w.seen.len() > 11_000, "{}", w.seen.len());
        assert_eq!(w.reserved, capacity_when_full, "the table grew under churn");
        assert!(w.seen.capacity() <= w.reserved);
    }

    #[test]
    fn expired_entries_are_pruned_without_new_messages() {
        let t0 = Instant::now();
        let mut d: Dedup<bool> = Dedup::new(100);
        let mut a = Answers::new(100);
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        for i in 0..50 {
            let m = msg("s", "t", &i.to_string(), "x");
            if let Claim::First(f) = d.claim(key("192.0.2.1", &m), MINUTE, t0) {
                d.settle(f, true);
            }
            a.sent(peer, i.to_string().as_bytes(), t0);
        }
        let later = t0 + MINUTE / 2;
        let m = msg("s", "t", "late", "x");
        if let Claim::First(f) = d.claim(key("192.0.2.1", &m), MINUTE, later) {
            d.settle(f, true);
        }
        a.sent(peer, b"late", later);
        // Within the window: all kept.
        d.prune(MINUTE, t0 + MINUTE / 2);
        a.prune(MINUTE, t0 + MINUTE / 2);
        assert_eq!((d.len(), a.len()), (51, 51));
        // Past it, the prune alone forgets them, the later one kept.
        d.prune(MINUTE, t0 + MINUTE);
        a.prune(MINUTE, t0 + MINUTE);
        assert_eq!((d.len(), a.len()), (1, 1));
        d.prune(MINUTE, later + MINUTE);
        a.prune(MINUTE, later + MINUTE);
        assert!(d.is_empty() && a.is_empty());
        assert!(d.table.seen.capacity() <= 64, "memory given back");
    }

    #[test]
    fn an_entry_costs_a_digest_an_outcome_and_a_time() {
        // In the hash table, and its place in the order of arrival: with
        // the table's room for twice what it holds (at most 4 buckets an
        // entry, 1 control byte each), 16384 entries of each table stay
        // within about 9 MiB.
        use std::mem::size_of;
        assert!(size_of::<(Digest, (Outcome<bool>, Instant, u64))>() <= 64);
        assert!(size_of::<(Digest, ((), Instant, u64))>() <= 48);
        assert!(size_of::<(Digest, u64)>() <= 32);
        let full = crate::limits::MSP_DEDUP_CAPACITY * (4 * (64 + 1 + 48 + 1) + 2 * 32);
        assert!(full <= 9 << 20, "{full}");
    }

    #[test]
    fn an_answer_that_comes_back_is_recognised() {
        let t0 = Instant::now();
        let mut a = Answers::new(10);
        let peer: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        a.sent(peer, b"Achris\0\0hi\0", t0);
        assert!(a.is_answer_back(peer, b"Achris\0\0hi\0", MINUTE, t0));
        let other_port: SocketAddr = "192.0.2.1:4001".parse().unwrap();
        assert!(!a.is_answer_back(other_port, b"Achris\0\0hi\0", MINUTE, t0));
        assert!(!a.is_answer_back(peer, b"Achris\0\0ho\0", MINUTE, t0));
        assert!(!a.is_answer_back(peer, b"Achris\0\0hi\0", MINUTE, t0 + MINUTE));
    }

    #[test]
    fn system_service_and_own_ports_are_never_answered() {
        let own = [40018];
        let from = |port: u16| SocketAddr::from(([192, 0, 2, 1], port));
        for port in [0, 7, 9, 13, 18, 19, 53, 123, 1023, 1900, 5353, 11211, 40018] {
            assert!(!answerable_source(from(port), &own), "{port}");
        }
        for port in [1024, 40000, 65535] {
            assert!(answerable_source(from(port), &own), "{port}");
        }
    }

    #[test]
    fn rate_per_key_refills_and_follows_a_new_rate() {
        let clock = FakeRelativeClock::default();
        let r: KeyedRate<&str, _> = KeyedRate::with_clock(10, clock.clone());
        assert!(r.allow(&"a", 3) && r.allow(&"a", 3) && r.allow(&"a", 3));
        assert!(!r.allow(&"a", 3));
        assert!(r.allow(&"b", 3), "another key is not affected");
        clock.advance(Duration::from_secs(20));
        assert!(r.allow(&"a", 3), "one back after 20 s");
        assert!(!r.allow(&"a", 3));
        // A reload with another rate applies at once.
        assert!(r.allow(&"a", 1));
        assert!(!r.allow(&"a", 1));
        // A single key (the total rate) is never cleaned away.
        let total: KeyedRate<(), _> = KeyedRate::with_clock(1, clock.clone());
        assert!(total.allow(&(), 2) && total.allow(&(), 2));
        assert!(!total.allow(&(), 2));
    }

    #[test]
    fn rate_tables_stay_bounded_and_keep_what_they_can() {
        let clock = FakeRelativeClock::default();
        let r: KeyedRate<u32, _> = KeyedRate::with_clock(100, clock.clone());
        // A flood of fresh keys, all recent: the table is bounded.
        for i in 0..10_000u32 {
            assert!(r.allow(&i, 30));
            assert!(r.tracked() <= 101);
        }
        // Keys back to fresh are dropped first, and a key still limited
        // keeps its state.
        let r: KeyedRate<u32, _> = KeyedRate::with_clock(100, clock.clone());
        while r.allow(&u32::MAX, 30) {}
        for i in 0..60u32 {
            r.allow(&i, 30);
        }
        // 5 s: the others have their one back; the limited key two of 30.
        clock.advance(Duration::from_secs(5));
        for i in 100..150u32 {
            r.allow(&i, 30);
        }
        assert!(r.tracked() <= 101);
        assert!(r.allow(&u32::MAX, 30) && r.allow(&u32::MAX, 30));
        assert!(!r.allow(&u32::MAX, 30), "the limited key was kept");
    }
}
