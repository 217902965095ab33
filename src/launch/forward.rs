//! The `forward` launcher: each connection is relayed to a daemon that
//! already runs, at the fixed address of the service's `forward` key.

use super::{Connection, Failed, LaunchError, Launcher};
use crate::admission::FdGuard;
use crate::config::Service;
use crate::sessions::SessionSlot;
use std::sync::Arc;

/// Descriptors the daemon holds for a forwarded pair: the client's
/// connection, the backend's, and the two ends of each direction's pipe.
pub const FORWARD_SESSION_FDS: usize = 6;

/// The forward launcher.
#[derive(Debug, Default)]
pub struct ForwardLauncher;

impl Launcher for ForwardLauncher {
    fn precheck(&self, _service: &Service) -> Result<(), LaunchError> {
        Ok(())
    }

    fn start_fds(&self) -> usize {
        FORWARD_SESSION_FDS
    }

    async fn launch(
        &self,
        _service: Arc<Service>,
        conn: Connection,
        _slot: SessionSlot,
        _fds: FdGuard,
    ) -> Result<(), Failed> {
        Err(Failed {
            error: LaunchError::Backend("the forward launcher is not built yet".into()),
            conn: conn.unanswered(),
        })
    }
}
