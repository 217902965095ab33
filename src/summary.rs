//! The periodic summary of what is too common to log one line each:
//! connections that only asked for HELP, named an unknown service, were
//! denied, closed early, sent a bad name, or ran into a limit. A flood of
//! those becomes one line per interval, with counts and the sources that
//! sent the most, instead of pushing the lines that matter out of the
//! journal's rate limit.

use crate::limits::{SUMMARY_MAX_SOURCES, SUMMARY_TOP_SOURCES};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Counts for the interval in progress.
#[derive(Debug, Default)]
pub struct Summary {
    inner: Mutex<Interval>,
}

#[derive(Debug, Default)]
struct Interval {
    /// By what happened ("help", "unknown", a limit's key), in the order
    /// first seen.
    counts: Vec<(&'static str, u64)>,
    /// By source, for at most [`SUMMARY_MAX_SOURCES`] sources; the rest
    /// add up in `other_sources`.
    sources: HashMap<IpAddr, u64>,
    other_sources: u64,
}

impl Summary {
    /// Counts one event of kind `what` from `source`.
    pub fn record(&self, what: &'static str, source: IpAddr) {
        let mut interval = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match interval.counts.iter_mut().find(|(w, _)| *w == what) {
            Some((_, n)) => *n += 1,
            None => interval.counts.push((what, 1)),
        }
        let full = interval.sources.len() >= SUMMARY_MAX_SOURCES;
        match interval.sources.get_mut(&source) {
            Some(n) => *n += 1,
            None if full => interval.other_sources += 1,
            None => {
                interval.sources.insert(source, 1);
            }
        }
    }

    /// The line for the interval that ends now, if anything happened, and
    /// a fresh interval.
    pub fn take(&self) -> Option<String> {
        let interval = std::mem::take(&mut *self.inner.lock().unwrap_or_else(|e| e.into_inner()));
        interval.describe()
    }
}

impl Interval {
    /// "3000 help, 2 unknown; top sources: 192.0.2.7 (2990), 192.0.2.8 (12)".
    fn describe(&self) -> Option<String> {
        if self.counts.is_empty() {
            return None;
        }
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(what, n)| format!("{n} {what}"))
            .collect();
        let mut top: Vec<(&IpAddr, &u64)> = self.sources.iter().collect();
        top.sort_unstable_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let mut sources: Vec<String> = top
            .iter()
            .take(SUMMARY_TOP_SOURCES)
            .map(|(ip, n)| format!("{ip} ({n})"))
            .collect();
        let rest = top.len().saturating_sub(SUMMARY_TOP_SOURCES);
        if rest > 0 || self.other_sources > 0 {
            let others: u64 = top
                .iter()
                .skip(SUMMARY_TOP_SOURCES)
                .map(|(_, n)| **n)
                .sum::<u64>()
                + self.other_sources;
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
        assert_eq!(s.inner.lock().unwrap().sources.len(), SUMMARY_MAX_SOURCES);
        assert!(s.take().unwrap().contains("from other sources"));
    }
}
