//! Cold starts: a unit of its own for a client, started when the client
//! comes.

use super::*;

/// A session unit being started cold, counted while it lasts (refills wait
/// for none to be left), and a prompt to refill once it is done.
pub(super) struct ColdStart<'a>(&'a Inner);

impl<'a> ColdStart<'a> {
    pub(super) fn begin(inner: &'a Inner) -> Self {
        lock(&inner.warm).cold_starting += 1;
        ColdStart(inner)
    }
}

impl Drop for ColdStart<'_> {
    fn drop(&mut self) {
        let mut pools = lock(&self.0.warm);
        pools.cold_starting = pools.cold_starting.saturating_sub(1);
        drop(pools);
        self.0.refill.notify_one();
    }
}

impl SystemdLauncher {
    /// Starts a unit of its own for `conn`. `plus_sent`: the client was
    /// told `+` already.
    pub(super) async fn launch_cold(
        &self,
        service: Arc<Service>,
        conn: Connection,
        slot: SessionSlot,
        plus_sent: bool,
    ) -> Result<(), Failed> {
        let inner = &self.inner;
        let unit = unit_name(&service.name, &self.next_instance());
        let prepared = async {
            // Held while the start job runs: the sandbox is built by then.
            // A client that has heard `+` already does not queue again.
            let turn = if plus_sent {
                self.spare_turn()
            } else {
                let turn = self.client_turn().await?;
                if conn.hung_up() {
                    return Err(LaunchError::ClientGone(
                        "hung up while its unit waited for its turn to start".into(),
                    ));
                }
                Some(turn)
            };
            let bus = lock(&inner.bus).clone().ok_or_else(|| {
                LaunchError::Systemd("not connected to the service manager".into())
            })?;
            let props = properties(
                &service,
                conn.peer,
                conn.local,
                conn.stream.as_fd(),
                bus.version,
            )?;
            Ok((turn, bus, props))
        }
        .await;
        let (turn, bus, props) = match prepared {
            Ok(p) => p,
            Err(error) => {
                return Err(Failed {
                    error,
                    conn: if plus_sent { None } else { conn.unanswered() },
                });
            }
        };
        let conn = if plus_sent {
            conn
        } else {
            conn.send_plus(&service).await?
        };
        let (socket, peer, _) = conn.into_blocking()?;

        // From here on the unit may own the connection: hand it back for an
        // answer only when the unit was never made, or its start job proves
        // the program never ran.
        let session = Session::new(slot, &service, peer);
        let started = self.start_job(
            &bus,
            &unit,
            props,
            Some(session),
            limits::UNIT_START_TIMEOUT,
        );
        let (failure, conn) = match in_turn(turn, started).await {
            JobEnd::Result(result) if result == "done" => {
                log_start(&service, peer, &unit, false);
                lock(&inner.warm).started_cold(&service);
                return Ok(());
            }
            JobEnd::Result(result) => (
                format!(
                    "{unit}: start job ended with result \"{result}\" (see journalctl -u {unit})"
                ),
                Some(socket),
            ),
            JobEnd::Refused(e) => (format!("starting {unit}: {e}"), Some(socket)),
            JobEnd::Lost => (
                format!("{unit}: connection to the service manager lost while starting"),
                None,
            ),
            JobEnd::TimedOut(limit) => (
                format!(
                    "{unit}: no start result from systemd within {}",
                    humantime::format_duration(limit)
                ),
                None,
            ),
        };
        Err(Failed {
            error: LaunchError::Systemd(failure),
            // A plus-mode client has heard `+`: nothing more to tell it.
            conn: conn.filter(|_| !service.plus),
        })
    }
}
