//! Small helpers for the locks the daemon shares between its tasks.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, also after a panic elsewhere poisoned it: every lock of the
/// daemon guards plain tables, counters or sockets, which a panic cannot
/// leave half-updated, and a poisoned lock must not stop the service.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
