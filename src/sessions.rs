//! Counting running sessions per service, for `max_instances`.
//!
//! Counts are kept by service name and survive reloads, so a reload that
//! lowers `max_instances` takes sessions already running into account.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct SessionTable {
    running: Mutex<HashMap<String, usize>>,
}

/// A running session's place in the table, given back when dropped.
#[derive(Debug)]
pub struct SessionSlot {
    table: Arc<SessionTable>,
    key: String,
}

/// Which limit refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The service runs `max_instances` sessions.
    Service,
    /// All services together run `max_sessions`.
    All,
}

impl SessionTable {
    /// Takes a slot for service `name` unless it runs `max` sessions already,
    /// or all services together run `max_total`.
    pub fn try_acquire(
        self: &Arc<Self>,
        name: &str,
        max: usize,
        max_total: usize,
    ) -> Result<SessionSlot, Full> {
        let key = name.to_ascii_lowercase();
        let mut running = self.lock();
        if running.values().sum::<usize>() >= max_total {
            return Err(Full::All);
        }
        let count = running.entry(key.clone()).or_insert(0);
        if *count >= max {
            return Err(Full::Service);
        }
        *count += 1;
        Ok(SessionSlot {
            table: Arc::clone(self),
            key,
        })
    }

    /// Takes a slot for a session that already runs (found after a restart),
    /// whatever the limit.
    pub fn acquire_unbounded(self: &Arc<Self>, name: &str) -> SessionSlot {
        let key = name.to_ascii_lowercase();
        *self.lock().entry(key.clone()).or_insert(0) += 1;
        SessionSlot {
            table: Arc::clone(self),
            key,
        }
    }

    /// Sessions running now, all services together.
    pub fn total(&self) -> usize {
        self.lock().values().sum()
    }

    /// Sessions of service `name` running now.
    pub fn running(&self, name: &str) -> usize {
        self.lock()
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // The map holds plain counters: a panic elsewhere cannot leave it
        // inconsistent, so a poisoned lock is still usable.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut running = self.table.lock();
        if let Some(count) = running.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                running.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_returned() {
        let table = Arc::new(SessionTable::default());
        let a = table.try_acquire("Echo", 2, 10).unwrap();
        let b = table.try_acquire("echo", 2, 10).unwrap();
        assert_eq!(table.try_acquire("ECHO", 2, 10).unwrap_err(), Full::Service);
        let c = table.try_acquire("other", 2, 3).unwrap();
        assert_eq!(table.try_acquire("third", 2, 3).unwrap_err(), Full::All);
        assert_eq!(table.running("echo"), 2);
        drop(a);
        assert!(table.try_acquire("echo", 2, 10).is_ok());
        drop((b, c));
        assert_eq!(table.total(), 0);
    }
}
