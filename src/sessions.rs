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

impl SessionTable {
    /// Takes a slot for service `name` unless `max` sessions already run.
    pub fn try_acquire(self: &Arc<Self>, name: &str, max: usize) -> Option<SessionSlot> {
        let key = name.to_ascii_lowercase();
        let mut running = self.lock();
        let count = running.entry(key.clone()).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SessionSlot {
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
        let a = table.try_acquire("Echo", 2).unwrap();
        let b = table.try_acquire("echo", 2).unwrap();
        assert!(table.try_acquire("ECHO", 2).is_none());
        assert!(table.try_acquire("other", 2).is_some());
        assert_eq!(table.running("echo"), 2);
        drop(a);
        assert!(table.try_acquire("echo", 2).is_some());
        drop(b);
        assert_eq!(table.total(), 0);
    }
}
