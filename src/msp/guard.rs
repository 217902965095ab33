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
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub use crate::admission::source_key;

/// What makes a datagram a retransmission of an earlier one: the same
/// source address and the same message, cookie included (RFC 1312 names
/// cookie, sender and sender's terminal; the text and the recipient are
/// added because real clients send a constant cookie, or one that changes
/// once a second). Names, terminals and the cookie are compared without
/// regard to case, as RFC 1312 asks; the text exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RetransmissionKey {
    source: IpAddr,
    recipient: Vec<u8>,
    recipient_terminal: Vec<u8>,
    sender: Vec<u8>,
    sender_terminal: Vec<u8>,
    cookie: Vec<u8>,
    text: Vec<u8>,
}

impl RetransmissionKey {
    pub fn new(source: IpAddr, m: &Message) -> Self {
        RetransmissionKey {
            source: source.to_canonical(),
            recipient: m.recipient.to_ascii_lowercase(),
            recipient_terminal: m.recipient_terminal.to_ascii_lowercase(),
            sender: m.sender.to_ascii_lowercase(),
            sender_terminal: m.sender_terminal.to_ascii_lowercase(),
            cookie: m.cookie.to_ascii_lowercase(),
            text: m.text.clone(),
        }
    }
}

/// What [`Dedup::claim`] found for a message.
#[derive(Debug)]
pub enum Claim<V> {
    /// Not seen within the window: the caller handles the message and
    /// reports its outcome here. Dropping it without a value forgets the
    /// message, so that its next copy is handled afresh.
    First(watch::Sender<Option<V>>),
    /// Seen, and its first copy is still being handled: wait for its
    /// outcome (None if it is dropped).
    Pending(watch::Receiver<Option<V>>),
    /// Seen, with this outcome.
    Done(V),
}

#[derive(Debug)]
struct Entry<V> {
    outcome: watch::Receiver<Option<V>>,
    at: Instant,
    id: u64,
}

/// Messages seen recently with their outcomes, remembered for a window
/// given with each call (so a reload applies at once), at most `capacity`
/// of them (the oldest are forgotten first). Looking a message up and
/// recording it are one step: two copies arriving together cannot both be
/// taken for the first.
#[derive(Debug)]
pub struct Dedup<V> {
    capacity: usize,
    seen: HashMap<RetransmissionKey, Entry<V>>,
    order: VecDeque<(RetransmissionKey, u64)>,
    next_id: u64,
}

impl<V: Clone> Dedup<V> {
    pub fn new(capacity: usize) -> Self {
        Dedup {
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Looks `key` up and, unless it was seen within `window`, records it
    /// as seen at `now`.
    pub fn claim(&mut self, key: RetransmissionKey, window: Duration, now: Instant) -> Claim<V> {
        self.expire(window, now);
        if let Some(entry) = self.seen.get(&key) {
            if let Some(outcome) = entry.outcome.borrow().clone() {
                return Claim::Done(outcome);
            }
            if entry.outcome.has_changed().is_ok() {
                return Claim::Pending(entry.outcome.clone());
            }
            // Its first copy was given up without an outcome.
        }
        while self.seen.len() >= self.capacity {
            let Some((old, id)) = self.order.pop_front() else {
                break;
            };
            self.remove(&old, id);
        }
        let (tx, rx) = watch::channel(None);
        let id = self.next_id;
        self.next_id += 1;
        self.seen.insert(
            key.clone(),
            Entry {
                outcome: rx,
                at: now,
                id,
            },
        );
        self.order.push_back((key, id));
        Claim::First(tx)
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Removes `key` if it is still the entry `id` (not a newer one).
    fn remove(&mut self, key: &RetransmissionKey, id: u64) {
        if self.seen.get(key).is_some_and(|e| e.id == id) {
            self.seen.remove(key);
        }
    }

    fn expire(&mut self, window: Duration, now: Instant) {
        while let Some((key, id)) = self.order.front() {
            let expired = match self.seen.get(key) {
                Some(e) if e.id == *id => now.saturating_duration_since(e.at) >= window,
                // Replaced or gone already.
                _ => true,
            };
            if !expired {
                break;
            }
            let (key, id) = (key.clone(), *id);
            self.remove(&key, id);
            self.order.pop_front();
        }
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

    fn key(ip: &str, m: &Message) -> RetransmissionKey {
        RetransmissionKey::new(ip.parse().unwrap(), m)
    }

    #[test]
    fn only_the_same_message_from_the_same_source_is_a_retransmission() {
        let t0 = Instant::now();
        let mut d: Dedup<&str> = Dedup::new(10);
        let first = msg("Sandy", "console", "-", "hello");
        let Claim::First(tx) = d.claim(key("192.0.2.1", &first), MINUTE, t0) else {
            panic!("first copy")
        };
        tx.send_replace(Some("delivered"));
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
        let Claim::First(tx) = d.claim(key("192.0.2.1", &m), MINUTE, t0) else {
            panic!()
        };
        let Claim::Pending(rx) = d.claim(key("192.0.2.1", &m), MINUTE, t0) else {
            panic!("in progress")
        };
        tx.send_replace(Some(7));
        assert_eq!(*rx.borrow(), Some(7));
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
            if let Claim::First(tx) = d.claim(key("192.0.2.1", &m), MINUTE, t0) {
                tx.send_replace(Some(()));
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
