//! The periodic summary of what is too common to log one line each:
//! connections that only asked for HELP, named an unknown service, were
//! denied, closed early, sent a bad name, or ran into a limit. A flood of
//! those becomes one line per interval, with counts and the sources that
//! sent the most, instead of pushing the lines that matter out of the
//! journal's rate limit.
//!
//! Sources are counted by the key of the per-source limits (an IPv4
//! address, or an IPv6 prefix of `ipv6_source_prefix` bits: addresses
//! within one prefix cost an attacker nothing), in a bounded heavy-hitter
//! table (Space-Saving, Metwally et al. 2005): at most
//! [`SUMMARY_MAX_SOURCES`] entries; a new source when the table is full
//! takes the place of the one with the smallest count. However many decoys
//! come first, a source that sent more than 1 in [`SUMMARY_MAX_SOURCES`]
//! of the interval's connections is in the table, and the counts named are
//! those it certainly sent.

use crate::admission::source_key;
use crate::limits::{DEFAULT_IPV6_SOURCE_PREFIX, SUMMARY_MAX_SOURCES, SUMMARY_TOP_SOURCES};
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

/// Counts for the interval in progress.
#[derive(Debug)]
pub struct Summary {
    inner: Mutex<Interval>,
    /// `[tcpmux] ipv6_source_prefix`: how IPv6 sources are grouped.
    ipv6_prefix: AtomicU8,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            inner: Mutex::default(),
            ipv6_prefix: AtomicU8::new(DEFAULT_IPV6_SOURCE_PREFIX),
        }
    }
}

/// A source as the per-source limits see it, and how it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Source {
    key: IpAddr,
    /// The prefix length an IPv6 key was cut to.
    prefix: u8,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.key {
            IpAddr::V6(v6) if self.prefix < 128 => write!(f, "{v6}/{}", self.prefix),
            key => write!(f, "{key}"),
        }
    }
}

/// One source's count in the Space-Saving table: `count` is at most
/// `error` more than what it sent (the count of the entry it replaced).
#[derive(Debug, Clone, Copy)]
struct Counter {
    count: u64,
    error: u64,
}

impl Counter {
    /// What the source certainly sent.
    fn guaranteed(self) -> u64 {
        self.count - self.error
    }
}

#[derive(Debug, Default)]
struct Interval {
    /// By what happened ("help", "unknown", a limit's key), in the order
    /// first seen.
    counts: Vec<(&'static str, u64)>,
    /// Every event of the interval.
    total: u64,
    /// At most [`SUMMARY_MAX_SOURCES`] sources.
    sources: HashMap<Source, Counter>,
    /// The same sources ordered by count, to find the smallest.
    by_count: BTreeSet<(u64, Source)>,
}

impl Summary {
    /// Counts one event of kind `what` from `source` (a client's address;
    /// it is counted under its source key).
    pub fn record(&self, what: &'static str, source: IpAddr) {
        let prefix = self.ipv6_prefix.load(Ordering::Relaxed);
        let source = Source {
            key: source_key(source, prefix),
            prefix,
        };
        let mut interval = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match interval.counts.iter_mut().find(|(w, _)| *w == what) {
            Some((_, n)) => *n += 1,
            None => interval.counts.push((what, 1)),
        }
        interval.total += 1;
        interval.count_source(source);
    }

    /// Groups IPv6 sources by `prefix` bits from now on, as the limits do
    /// (`[tcpmux] ipv6_source_prefix`, set at startup and on reload).
    pub fn set_ipv6_source_prefix(&self, prefix: u8) {
        self.ipv6_prefix.store(prefix, Ordering::Relaxed);
    }

    /// The line for the interval that ends now, if anything happened, and
    /// a fresh interval.
    pub fn take(&self) -> Option<String> {
        let interval = std::mem::take(&mut *self.inner.lock().unwrap_or_else(|e| e.into_inner()));
        interval.describe()
    }
}

impl Interval {
    /// Space-Saving's step: a known source counts one more; a new one takes
    /// a free entry, or the place of the smallest, with that one's count
    /// (plus one) as its own and as its possible error.
    fn count_source(&mut self, source: Source) {
        let counter = match self.sources.get(&source) {
            Some(&c) => {
                self.by_count.remove(&(c.count, source));
                Counter {
                    count: c.count + 1,
                    ..c
                }
            }
            None if self.sources.len() < SUMMARY_MAX_SOURCES => Counter { count: 1, error: 0 },
            None => match self.by_count.pop_first() {
                Some((smallest, evicted)) => {
                    self.sources.remove(&evicted);
                    Counter {
                        count: smallest + 1,
                        error: smallest,
                    }
                }
                None => Counter { count: 1, error: 0 },
            },
        };
        self.sources.insert(source, counter);
        self.by_count.insert((counter.count, source));
    }

    /// "3000 help, 2 unknown; top sources: 192.0.2.7 (2990), 192.0.2.8 (12),
    /// 10 from other sources": the sources that certainly sent the most,
    /// with what they certainly sent; the rest of the interval's events are
    /// "from other sources".
    fn describe(&self) -> Option<String> {
        if self.counts.is_empty() {
            return None;
        }
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(what, n)| format!("{n} {what}"))
            .collect();
        let mut top: Vec<(Source, Counter)> = self.sources.iter().map(|(s, c)| (*s, *c)).collect();
        top.sort_unstable_by(|a, b| {
            (b.1.guaranteed().cmp(&a.1.guaranteed()))
                .then(b.1.count.cmp(&a.1.count))
                .then(a.0.cmp(&b.0))
        });
        top.truncate(SUMMARY_TOP_SOURCES);
        let mut sources: Vec<String> = top
            .iter()
            .map(|(s, c)| format!("{s} ({})", c.guaranteed()))
            .collect();
        let named: u64 = top.iter().map(|(_, c)| c.guaranteed()).sum();
        let others = self.total.saturating_sub(named);
        if others > 0 {
            sources.push(format!("{others} from other sources"));
        }
        Some(format!(
            "{}; top sources: {}",
            counts.join(", "),
            sources.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_top_sources() {
        let s = Summary::default();
        assert_eq!(s.take(), None);
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "192.0.2.8".parse().unwrap();
        for _ in 0..5 {
            s.record("help", a);
        }
        s.record("unknown", b);
        s.record("help", b);
        assert_eq!(
            s.take().unwrap(),
            "6 help, 1 unknown; top sources: 192.0.2.7 (5), 192.0.2.8 (2)"
        );
        assert_eq!(s.take(), None, "each interval starts empty");
    }

    #[test]
    fn sources_beyond_the_top_are_added_up() {
        let s = Summary::default();
        for i in 0..(SUMMARY_TOP_SOURCES as u8 + 2) {
            s.record("denied", IpAddr::from([192, 0, 2, i]));
        }
        let line = s.take().unwrap();
        assert!(line.ends_with(", 2 from other sources"), "{line}");
    }

    #[test]
    fn memory_is_bounded_by_the_source_cap() {
        let s = Summary::default();
        for i in 0..(SUMMARY_MAX_SOURCES as u32 + 10) {
            s.record("closed", IpAddr::from(i.to_be_bytes()));
        }
        let interval = s.inner.lock().unwrap();
        assert_eq!(interval.sources.len(), SUMMARY_MAX_SOURCES);
        assert_eq!(interval.by_count.len(), SUMMARY_MAX_SOURCES);
        drop(interval);
        assert!(s.take().unwrap().contains("from other sources"));
    }

    #[test]
    fn a_flooder_after_decoys_is_named_first() {
        let s = Summary::default();
        for i in 0..(SUMMARY_MAX_SOURCES as u32 * 2) {
            s.record("unknown", IpAddr::from((0x7f01_0000 + i).to_be_bytes()));
        }
        let flooder: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3000 {
            s.record("unknown", flooder);
        }
        let line = s.take().unwrap();
        let decoys = SUMMARY_MAX_SOURCES * 2;
        assert!(
            line.starts_with(&format!(
                "{} unknown; top sources: 127.0.0.2 (3000), ",
                decoys + 3000
            )),
            "{line}"
        );
        assert!(
            line.ends_with(&format!(", {} from other sources", decoys - 2)),
            "{line}"
        );
    }

    #[test]
    fn ipv6_sources_are_counted_by_prefix_as_the_limits_do() {
        let s = Summary::default();
        for i in 0..100u16 {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            s.record("help", ip);
        }
        s.record("help", "2001:db8:1:3::1".parse().unwrap());
        assert_eq!(
            s.take().unwrap(),
            "101 help; top sources: 2001:db8:1:2::/64 (100), 2001:db8:1:3::/64 (1)"
        );
        s.set_ipv6_source_prefix(128);
        s.record("help", "2001:db8::1".parse().unwrap());
        s.record("help", "::ffff:192.0.2.1".parse().unwrap());
        assert_eq!(
            s.take().unwrap(),
            "2 help; top sources: 192.0.2.1 (1), 2001:db8::1 (1)"
        );
    }
}
