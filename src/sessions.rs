//! Counting running sessions per service and per source, for
//! `max_instances`, `max_sessions` and each source's share of them.
//!
//! A slot is taken before the client hears `+` and held until the session
//! ends, whatever the launcher: while a client waits for its unit's turn
//! to start, while its unit or child runs. Counts are kept by service name
//! and survive reloads, so a reload that lowers a limit takes sessions
//! already running into account. Entries exist only while they count
//! something, so memory follows the sessions themselves (at most
//! `max_sessions` of them).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct SessionTable {
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Sessions by service (lowercase name).
    services: HashMap<String, usize>,
    /// Sessions by source, all services together.
    sources: HashMap<IpAddr, usize>,
    /// Sessions by source and service.
    source_services: HashMap<(IpAddr, String), usize>,
}

/// The limits a new session must fit in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// `[[service]] max_instances`.
    pub max_instances: usize,
    /// `[[service]] max_instances_per_source`.
    pub max_instances_per_source: usize,
    /// `[tcpmux] max_sessions`.
    pub max_sessions: usize,
    /// `[tcpmux] max_sessions_per_source`.
    pub max_sessions_per_source: usize,
}

impl SessionLimits {
    /// No source's share smaller than the whole: for callers that have no
    /// source to speak of.
    pub fn without_shares(max_instances: usize, max_sessions: usize) -> Self {
        SessionLimits {
            max_instances,
            max_instances_per_source: max_instances,
            max_sessions,
            max_sessions_per_source: max_sessions,
        }
    }
}

/// A running session's place in the table, given back when dropped.
#[derive(Debug)]
pub struct SessionSlot {
    table: Arc<SessionTable>,
    service: String,
    /// None for a session found running after a restart, whose client is
    /// not known.
    source: Option<IpAddr>,
}

/// Which limit refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The service runs `max_instances` sessions.
    Service,
    /// All services together run `max_sessions`.
    All,
    /// The source holds its share of the service: `max_instances_per_source`.
    SourceService,
    /// The source holds its share of all sessions: `max_sessions_per_source`.
    SourceAll,
}

fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
    *map.entry(key).or_insert(0) += 1;
}

fn drop_one<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = map.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            map.remove(key);
        }
    }
}

impl SessionTable {
    /// Takes a slot for a session of service `name` asked for by `source`
    /// (a key of [`source_key`](crate::admission::source_key)), unless it
    /// would pass one of `limits`. The server's and the service's limits
    /// are checked first: a source's share is only named when there would
    /// be room for anyone else.
    pub fn try_acquire(
        self: &Arc<Self>,
        name: &str,
        source: IpAddr,
        limits: &SessionLimits,
    ) -> Result<SessionSlot, Full> {
        let service = name.to_ascii_lowercase();
        let mut counts = self.lock();
        if counts.services.values().sum::<usize>() >= limits.max_sessions {
            return Err(Full::All);
        }
        if counts.services.get(&service).copied().unwrap_or(0) >= limits.max_instances {
            return Err(Full::Service);
        }
        let key = (source, service);
        let of_source_service = counts.source_services.get(&key).copied().unwrap_or(0);
        if of_source_service >= limits.max_instances_per_source {
            return Err(Full::SourceService);
        }
        let of_source = counts.sources.get(&source).copied().unwrap_or(0);
        if of_source >= limits.max_sessions_per_source {
            return Err(Full::SourceAll);
        }
        let (source, service) = key;
        bump(&mut counts.services, service.clone());
        bump(&mut counts.sources, source);
        bump(&mut counts.source_services, (source, service.clone()));
        Ok(SessionSlot {
            table: Arc::clone(self),
            service,
            source: Some(source),
        })
    }

    /// Takes a slot for a session that already runs (found after a restart),
    /// whatever the limit. Its client is not known: it counts against no
    /// source's share.
    pub fn acquire_unbounded(self: &Arc<Self>, name: &str) -> SessionSlot {
        let service = name.to_ascii_lowercase();
        bump(&mut self.lock().services, service.clone());
        SessionSlot {
            table: Arc::clone(self),
            service,
            source: None,
        }
    }

    /// Sessions running now, all services together.
    pub fn total(&self) -> usize {
        self.lock().services.values().sum()
    }

    /// Sessions of service `name` running now.
    pub fn running(&self, name: &str) -> usize {
        self.lock()
            .services
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// Sessions of `source` running now, all services together.
    pub fn of_source(&self, source: IpAddr) -> usize {
        self.lock().sources.get(&source).copied().unwrap_or(0)
    }

    /// Sources with sessions now.
    pub fn sources(&self) -> usize {
        self.lock().sources.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The maps hold plain counters: a panic elsewhere cannot leave them
        // inconsistent, so a poisoned lock is still usable.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut counts = self.table.lock();
        drop_one(&mut counts.services, &self.service);
        if let Some(source) = self.source {
            drop_one(&mut counts.sources, &source);
            let key = (source, std::mem::take(&mut self.service));
            drop_one(&mut counts.source_services, &key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn slots_are_bounded_and_returned() {
        let table = Arc::new(SessionTable::default());
        let limits = SessionLimits::without_shares(2, 10);
        let a = table.try_acquire("Echo", A, &limits).unwrap();
        let b = table.try_acquire("echo", B, &limits).unwrap();
        assert_eq!(
            table.try_acquire("ECHO", A, &limits).unwrap_err(),
            Full::Service
        );
        let total = SessionLimits::without_shares(2, 3);
        let c = table.try_acquire("other", A, &total).unwrap();
        assert_eq!(
            table.try_acquire("third", A, &total).unwrap_err(),
            Full::All
        );
        assert_eq!(table.running("echo"), 2);
        drop(a);
        assert!(table.try_acquire("echo", A, &limits).is_ok());
        drop((b, c));
        assert_eq!(table.total(), 0);
        assert_eq!(table.sources(), 0, "sources without sessions are forgotten");
    }

    #[test]
    fn a_source_holds_at_most_its_share_of_a_service_and_of_all() {
        let table = Arc::new(SessionTable::default());
        let limits = SessionLimits {
            max_instances: 8,
            max_instances_per_source: 2,
            max_sessions: 100,
            max_sessions_per_source: 3,
        };
        let held: Vec<_> = (0..2)
            .map(|_| table.try_acquire("echo", A, &limits).unwrap())
            .collect();
        assert_eq!(
            table.try_acquire("echo", A, &limits).unwrap_err(),
            Full::SourceService
        );
        assert!(
            table.try_acquire("echo", B, &limits).is_ok(),
            "another source is still served"
        );
        let other = table.try_acquire("date", A, &limits).unwrap();
        assert_eq!(
            table.try_acquire("whoami", A, &limits).unwrap_err(),
            Full::SourceAll,
            "across services, the share of all sessions holds"
        );
        assert_eq!(table.of_source(A), 3);
        drop(other);
        assert!(table.try_acquire("whoami", A, &limits).is_ok());
        drop(held);
        assert_eq!(table.of_source(A), 0);
    }

    #[test]
    fn addresses_within_one_ipv6_prefix_share_one_share() {
        use crate::admission::source_key;
        let table = Arc::new(SessionTable::default());
        let limits = SessionLimits {
            max_instances: 8,
            max_instances_per_source: 2,
            max_sessions: 8,
            max_sessions_per_source: 8,
        };
        let key = |ip: &str| source_key(ip.parse().unwrap(), 64);
        let _a = table.try_acquire("echo", key("2001:db8:1:2::1"), &limits);
        let _b = table.try_acquire("echo", key("2001:db8:1:2:ffff::2"), &limits);
        assert_eq!(
            table
                .try_acquire("echo", key("2001:db8:1:2::3"), &limits)
                .unwrap_err(),
            Full::SourceService,
            "a third address of the same /64"
        );
        assert!(
            table
                .try_acquire("echo", key("2001:db8:1:3::1"), &limits)
                .is_ok(),
            "the next /64 is another source"
        );
    }

    #[test]
    fn sessions_found_running_count_against_no_source() {
        let table = Arc::new(SessionTable::default());
        let adopted = table.acquire_unbounded("echo");
        assert_eq!((table.running("echo"), table.sources()), (1, 0));
        drop(adopted);
        assert_eq!(table.total(), 0);
    }
}
