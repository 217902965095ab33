//! Warm starts: units started ahead of time and kept filled, and the
//! hand-over of a client's connection to one of them.

use super::*;

/// How a hand-over to a warm unit ended.
pub(super) enum Handed {
    Done(Result<(), Failed>),
    /// The unit was gone before it got the connection: start one cold.
    Gone(Connection, SessionSlot),
}

impl SystemdLauncher {
    /// Gives `conn` (told `+` already, for a plus-mode service) to a ready
    /// warm unit, which becomes a session, and waits for the helper's exec.
    pub(super) async fn hand_over(
        &self,
        service: &Arc<Service>,
        conn: Connection,
        slot: SessionSlot,
        ready: Ready,
    ) -> Handed {
        let inner = &self.inner;
        let unit = ready.unit.clone();
        let timeout = conn.reply_timeout;
        let (socket, peer, local) = match conn.into_blocking() {
            Ok(c) => c,
            Err(e) => return Handed::Done(Err(e.into())),
        };
        let variables: Vec<(&str, String)> = session_environment(service, peer, local)
            .into_iter()
            .filter(|(k, _)| VARIABLES.contains(k))
            .collect();
        // Tracked as a session before it can end, so that its UnitRemoved
        // is not missed.
        lock(&inner.running).insert(unit.clone(), Session::new(slot, service, peer));
        let status = match warm::hand_over(&ready, socket.as_fd(), &variables) {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!(
                    tcpmux_service = %service.name, %unit,
                    "warm unit {unit} did not take the connection ({e}); starting a unit for it"
                );
                let slot = lock(&inner.running).remove(&unit).map(|s| s._slot);
                let back = socket.set_nonblocking(true).map(|()| socket);
                return match (back, slot) {
                    (Ok(socket), Some(slot)) => Handed::Gone(
                        Connection {
                            stream: ClientSocket::Plain(socket),
                            peer,
                            local,
                            reply_timeout: timeout,
                        },
                        slot,
                    ),
                    (Err(e), _) => Handed::Done(Err(LaunchError::Socket(e).into())),
                    (_, None) => Handed::Done(Err(LaunchError::Systemd(format!(
                        "{unit}: ended while taking the connection"
                    ))
                    .into())),
                };
            }
        };
        drop(ready);
        let failure = match warm::receive(status, limits::WARM_EXEC_TIMEOUT).await {
            Ok((None, _)) => {
                log_start(service, peer, &unit, true);
                return Handed::Done(Ok(()));
            }
            Ok((Some(Status::Failed(e)), _)) => e,
            Ok((Some(Status::Ready), _)) => "unexpected message after the hand-over".into(),
            Err(e) => {
                // The program may well run: the client is not told.
                tracing::warn!(tcpmux_service = %service.name, %unit, "{unit}: {e}");
                return Handed::Done(Ok(()));
            }
        };
        Handed::Done(Err(Failed {
            error: LaunchError::Systemd(format!("{unit}: {failure}")),
            // A plus-mode client has heard `+`: nothing more to tell it.
            conn: (!service.plus).then_some(socket),
        }))
    }
}

/// Keeps the warm pools filled: on every prompt, and every
/// [`limits::WARM_CHECK_INTERVAL`] to retire units that died or waited too
/// long. Ends with the launcher.
pub(super) async fn refill(inner: std::sync::Weak<Inner>, prompt: Arc<Notify>) {
    loop {
        tokio::select! {
            () = prompt.notified() => {}
            () = tokio::time::sleep(limits::WARM_CHECK_INTERVAL) => {}
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if lock(&inner.bus).is_none() {
            continue;
        }
        let starts = lock(&inner.warm).plan(std::time::Instant::now());
        for start in starts {
            let launcher = SystemdLauncher {
                inner: Arc::clone(&inner),
            };
            tokio::spawn(async move {
                let (unit, result) = warm_start(&launcher, &start).await;
                lock(&launcher.inner.warm).finished(&start, &unit, result);
                launcher.inner.refill.notify_one();
            });
        }
    }
}

/// Starts one warm unit and waits until its helper is ready.
pub(super) async fn warm_start(
    launcher: &SystemdLauncher,
    start: &Start,
) -> (String, Result<Ready, WarmFailure>) {
    let inner = &launcher.inner;
    let unit = unit_name(&start.service.name, &launcher.next_instance());
    let helper = {
        let mut pools = lock(&inner.warm);
        pools.starting(&unit);
        pools.helper.clone()
    };
    let result = match helper {
        None => Err(WarmFailure::Start("no helper for warm units".to_string())),
        Some(helper) => {
            // Held until the helper is ready: its sandbox is built by then.
            let turn = launcher.refill_turn().await;
            in_turn(turn, start_helper(launcher, start, &unit, &helper)).await
        }
    };
    (unit, result)
}

/// Starts warm unit `unit` running `helper`, and waits for it to be ready.
pub(super) async fn start_helper(
    launcher: &SystemdLauncher,
    start: &Start,
    unit: &str,
    helper: &Path,
) -> Result<Ready, WarmFailure> {
    let (ours, version) = start_unit(launcher, start, unit, helper)
        .await
        .map_err(WarmFailure::Start)?;
    match warm::receive(ours, limits::WARM_READY_TIMEOUT).await {
        Ok((Some(Status::Ready), control)) => Ok(Ready {
            unit: unit.to_string(),
            control,
            since: std::time::Instant::now(),
            // What a cold unit's program gets from the same manager.
            fd_name: (version >= EXTRA_FDS_MIN_VERSION).then_some(CONNECTION_FD_NAME),
        }),
        // The program cannot run in the unit's sandbox.
        Ok((Some(Status::Failed(e)), _)) => Err(WarmFailure::Program(format!("{unit}: {e}"))),
        Ok((None, _)) => Err(WarmFailure::Start(format!(
            "{unit}: the helper exited before it was ready (see journalctl -u {unit})"
        ))),
        Err(e) => Err(WarmFailure::Start(format!("{unit}: {e}"))),
    }
}

/// Starts warm unit `unit`: tcpmuxd's end of its standard input once its
/// start job is done, and the version of the manager that started it.
async fn start_unit(
    launcher: &SystemdLauncher,
    start: &Start,
    unit: &str,
    helper: &Path,
) -> Result<(OwnedFd, u32), String> {
    let inner = &launcher.inner;
    let bus = lock(&inner.bus)
        .clone()
        .ok_or("not connected to the service manager")?;
    let (ours, theirs) =
        warm::socket_pair().map_err(|e| format!("a socket for the unit's stdin: {e}"))?;
    let props =
        warm_properties(&start.service, helper, theirs.as_fd()).map_err(|e| e.to_string())?;
    // systemd gets its own copy in the call; the helper's end must
    // not stay open here, or the helper would not see tcpmuxd go.
    drop(theirs);
    match launcher
        .start_job(&bus, unit, props, None, limits::UNIT_START_TIMEOUT)
        .await
    {
        JobEnd::Result(result) if result == "done" => {}
        JobEnd::Result(result) => {
            return Err(format!(
                "{unit}: start job ended with result \"{result}\" (see journalctl -u {unit})"
            ));
        }
        JobEnd::Refused(e) => return Err(format!("starting {unit}: {e}")),
        JobEnd::Lost => {
            return Err(format!(
                "{unit}: connection to the service manager lost while starting"
            ));
        }
        JobEnd::TimedOut(limit) => {
            return Err(format!(
                "{unit}: no start result from systemd within {}",
                humantime::format_duration(limit)
            ));
        }
    }
    Ok((ours, bus.version))
}
