//! Admission limits that depend on who is asking: connections per source,
//! starts per service, and the counters of limits hit (for the log summary
//! and systemd's STATUS= line).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain counters: a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
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
#[derive(Debug, Default)]
pub struct StartRate {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl StartRate {
    /// Takes a start for `service` if it has one left at `per_second`.
    pub fn allow(&self, service: &str, per_second: u32, now: Instant) -> bool {
        let max = f64::from(per_second);
        let mut buckets = lock(&self.buckets);
        let (tokens, last) = buckets
            .entry(service.to_ascii_lowercase())
            .or_insert((max, now));
        *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * max).min(max);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets services no longer configured.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.buckets).retain(|name, _| keep(name));
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
}

/// How many kinds of limit there are.
const LIMITS: usize = 12;

impl Limit {
    pub const ALL: [Limit; LIMITS] = [
        Limit::MaxHandshakes,
        Limit::MaxHandshakesPerSource,
        Limit::NameTimeout,
        Limit::MaxInstances,
        Limit::MaxSessions,
        Limit::MaxStartsPerSecond,
        Limit::MspRate,
        Limit::MspConnections,
        Limit::MspDatagramsInFlight,
        Limit::MspConnectionsPerSource,
        Limit::MspRecipientRate,
        Limit::MspTotalRate,
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
            Limit::MspRate => "msp rate_per_minute",
            Limit::MspConnections => "msp max_connections",
            Limit::MspDatagramsInFlight => "msp datagrams in delivery",
            Limit::MspConnectionsPerSource => "msp max_connections_per_source",
            Limit::MspRecipientRate => "msp recipient_rate_per_minute",
            Limit::MspTotalRate => "msp total_rate_per_minute",
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
    fn start_rate_refuses_then_recovers() {
        let r = StartRate::default();
        let t0 = Instant::now();
        assert!(r.allow("Echo", 2, t0) && r.allow("echo", 2, t0));
        assert!(!r.allow("ECHO", 2, t0));
        assert!(r.allow("other", 2, t0));
        assert!(r.allow("echo", 2, t0 + Duration::from_millis(500)));
        assert!(!r.allow("echo", 2, t0 + Duration::from_millis(500)));
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
