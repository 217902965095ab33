//! Turns to start units: at most `[tcpmux] max_starting_units` are being
//! started at once, since building their sandboxes is CPU work that slows
//! every start when too many run together.

use super::*;

impl SystemdLauncher {
    /// The turns to start units, and their number.
    pub(super) fn turns(&self) -> (usize, Arc<Semaphore>) {
        let turns = lock(&self.inner.turns);
        (turns.0, Arc::clone(&turns.1))
    }

    /// Waits for a client's unit's turn to start, in order of arrival, for
    /// at most [`limits::TURN_WAIT_TIMEOUT`]: at most
    /// `[tcpmux] max_starting_units` units are being started at once, since
    /// building their sandboxes is CPU work that slows every start when
    /// too many run together. See [`in_turn`].
    pub(super) async fn client_turn(&self) -> Result<OwnedSemaphorePermit, LaunchError> {
        let (max, turns) = self.turns();
        let _waiting = Waiting::count(&self.inner.waiting);
        match tokio::time::timeout(limits::TURN_WAIT_TIMEOUT, turns.acquire_owned()).await {
            Ok(Ok(turn)) => Ok(turn),
            // Never closed.
            Ok(Err(_)) => Err(LaunchError::Systemd("the launcher is shutting down".into())),
            Err(_) => Err(LaunchError::NoTurn(format!(
                "no turn to start a unit within {} (max_starting_units = {max}): systemd builds \
                 sandboxes more slowly than clients come",
                humantime::format_duration(limits::TURN_WAIT_TIMEOUT)
            ))),
        }
    }

    /// Units being started now (holding a turn), and clients waiting for
    /// a turn, for the status line.
    pub fn starts(&self) -> (usize, usize) {
        let (max, turns) = self.turns();
        (
            max.saturating_sub(turns.available_permits()),
            self.inner.waiting.load(Ordering::Relaxed),
        )
    }

    /// A turn for a warm unit's start: waited for as long as it takes
    /// (refills are few, and never urgent), so that waiting is never
    /// mistaken for a failing service.
    pub(super) async fn refill_turn(&self) -> Option<OwnedSemaphorePermit> {
        self.turns().1.acquire_owned().await.ok()
    }

    /// A turn if one is free now, without queueing: for a client that has
    /// heard `+` already.
    pub(super) fn spare_turn(&self) -> Option<OwnedSemaphorePermit> {
        self.turns().1.try_acquire_owned().ok()
    }
}

/// One client waiting for a turn, counted while it waits.
pub(super) struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    pub(super) fn count(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs a start (`start`) in its turn: the turn is given back when the
/// start ends, or after [`limits::TURN_HOLD_MAX`] if it takes longer.
pub(super) async fn in_turn<T>(
    turn: Option<OwnedSemaphorePermit>,
    start: impl Future<Output = T>,
) -> T {
    let mut start = std::pin::pin!(start);
    match tokio::time::timeout(limits::TURN_HOLD_MAX, &mut start).await {
        Ok(end) => end,
        Err(_) => {
            drop(turn);
            start.await
        }
    }
}
