//! What stands between a parsed message and a terminal: duplicate
//! suppression and per-source rate limiting. Pure: time comes in as an
//! argument, memory is bounded.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use crate::admission::source_key;

/// Identity of a version B message for duplicate detection (RFC 1312:
/// cookie, sender and sender's terminal; plus the source address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DedupKey {
    source: IpAddr,
    sender: Vec<u8>,
    sender_terminal: Vec<u8>,
    cookie: Vec<u8>,
}

impl DedupKey {
    /// Parts are compared without regard to case, as RFC 1312 asks.
    pub fn new(source: IpAddr, sender: &[u8], sender_terminal: &[u8], cookie: &[u8]) -> Self {
        DedupKey {
            source: source.to_canonical(),
            sender: sender.to_ascii_lowercase(),
            sender_terminal: sender_terminal.to_ascii_lowercase(),
            cookie: cookie.to_ascii_lowercase(),
        }
    }
}

/// Messages delivered recently, remembered for a window given with each
/// call (so a reload applies at once), at most `capacity` of them (the
/// oldest are forgotten first).
#[derive(Debug)]
pub struct Dedup {
    capacity: usize,
    seen: HashMap<DedupKey, Instant>,
    order: VecDeque<(DedupKey, Instant)>,
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Dedup {
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether `key` was delivered within `window`.
    pub fn contains(&mut self, key: &DedupKey, window: Duration, now: Instant) -> bool {
        self.expire(window, now);
        self.seen.contains_key(key)
    }

    /// Remembers a delivered message.
    pub fn insert(&mut self, key: DedupKey, window: Duration, now: Instant) {
        self.expire(window, now);
        while self.seen.len() >= self.capacity {
            match self.order.pop_front() {
                Some((old, at)) => {
                    if self.seen.get(&old) == Some(&at) {
                        self.seen.remove(&old);
                    }
                }
                None => break,
            }
        }
        self.seen.insert(key.clone(), now);
        self.order.push_back((key, now));
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn expire(&mut self, window: Duration, now: Instant) {
        while let Some((key, at)) = self.order.front() {
            if now.duration_since(*at) < window {
                break;
            }
            if self.seen.get(key) == Some(at) {
                self.seen.remove(key);
            }
            self.order.pop_front();
        }
    }
}

/// A token bucket per source: `per_minute` (given with each call, so a
/// reload applies at once) messages a minute, in bursts of up to as many.
/// Tracks at most `capacity` sources; when full, the source idle longest is
/// forgotten.
#[derive(Debug)]
pub struct RateLimiter {
    capacity: usize,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    pub fn new(capacity: usize) -> Self {
        RateLimiter {
            capacity: capacity.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token for `source`, if it has one.
    pub fn allow(&mut self, source: IpAddr, per_minute: u32, now: Instant) -> bool {
        let max = f64::from(per_minute);
        let rate = max / 60.0;
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.capacity {
            let idlest = self
                .buckets
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| *k);
            if let Some(k) = idlest {
                self.buckets.remove(&k);
            }
        }
        let (tokens, last) = self.buckets.entry(source).or_insert((max, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(max);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    pub fn sources(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn duplicates_are_remembered_for_the_window_case_insensitively() {
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut d = Dedup::new(10);
        d.insert(DedupKey::new(ip, b"Sandy", b"console", b"123"), MINUTE, t0);
        assert!(d.contains(&DedupKey::new(ip, b"sandy", b"CONSOLE", b"123"), MINUTE, t0));
        assert!(!d.contains(&DedupKey::new(ip, b"sandy", b"console", b"124"), MINUTE, t0));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!d.contains(
            &DedupKey::new(other, b"sandy", b"console", b"123"),
            MINUTE,
            t0
        ));
        assert!(!d.contains(
            &DedupKey::new(ip, b"sandy", b"console", b"123"),
            MINUTE,
            t0 + Duration::from_secs(61)
        ));
        assert!(d.is_empty());
    }

    #[test]
    fn dedup_memory_is_bounded() {
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut d = Dedup::new(100);
        for i in 0..1000 {
            d.insert(
                DedupKey::new(ip, b"s", b"t", format!("{i}").as_bytes()),
                MINUTE,
                t0,
            );
        }
        assert_eq!(d.len(), 100);
        assert!(d.contains(&DedupKey::new(ip, b"s", b"t", b"999"), MINUTE, t0));
        assert!(!d.contains(&DedupKey::new(ip, b"s", b"t", b"0"), MINUTE, t0));
    }

    #[test]
    fn rate_limit_per_source_and_refill() {
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut r = RateLimiter::new(10);
        assert!(r.allow(a, 3, t0) && r.allow(a, 3, t0) && r.allow(a, 3, t0));
        assert!(!r.allow(a, 3, t0));
        assert!(r.allow(b, 3, t0), "another source is not affected");
        assert!(
            r.allow(a, 3, t0 + Duration::from_secs(20)),
            "one token back after 20 s"
        );
        assert!(!r.allow(a, 3, t0 + Duration::from_secs(20)));
    }

    #[test]
    fn rate_limiter_memory_is_bounded() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(50);
        for i in 0..1000u32 {
            r.allow(IpAddr::from(i.to_be_bytes()), 3, t0);
        }
        assert_eq!(r.sources(), 50);
    }
}
