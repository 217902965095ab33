//! The `pass` launcher: each connection is handed, as a descriptor, to a
//! daemon that already runs and listens on the service's `pass` socket.

use super::{Connection, Failed, LaunchError, Launcher};
use crate::admission::FdGuard;
use crate::config::Service;
use crate::sessions::SessionSlot;
use std::sync::Arc;

/// Descriptors the daemon holds while it passes a connection: the
/// client's, and its connection to the receiving daemon's socket.
pub const PASS_START_FDS: usize = 2;

/// The pass launcher.
#[derive(Debug, Default)]
pub struct PassLauncher;

impl Launcher for PassLauncher {
    fn precheck(&self, _service: &Service) -> Result<(), LaunchError> {
        Ok(())
    }

    fn start_fds(&self) -> usize {
        PASS_START_FDS
    }

    async fn launch(
        &self,
        _service: Arc<Service>,
        conn: Connection,
        _slot: SessionSlot,
        _fds: FdGuard,
    ) -> Result<(), Failed> {
        Err(Failed {
            error: LaunchError::Backend("the pass launcher is not built yet".into()),
            conn: conn.unanswered(),
        })
    }
}
