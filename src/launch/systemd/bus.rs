//! The connection to the service manager: bounded calls, connecting and
//! reconnecting, adopting the units of an earlier run, and watching jobs and
//! units end.

use super::*;

pub(super) type ConnectFuture =
    Pin<Box<dyn Future<Output = zbus::Result<zbus::Connection>> + Send>>;
/// How to reach the manager: the system bus, or (in tests) a peer.
pub type Connector = Arc<dyn Fn() -> ConnectFuture + Send + Sync>;

/// The system bus.
pub fn system_bus() -> Connector {
    Arc::new(|| Box::pin(zbus::Connection::system()))
}

#[derive(Clone)]
pub(super) struct Bus {
    pub(super) manager: ManagerProxy<'static>,
    pub(super) version: u32,
    pub(super) generation: u64,
}

/// A D-Bus call, bounded in time: a stuck manager must not hold handshakes
/// or a reload forever.
pub(super) async fn call<T>(
    what: &str,
    fut: impl Future<Output = zbus::Result<T>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(limits::DBUS_CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CallError {
            message: format!("{what}: {e}"),
            disconnected: matches!(e, zbus::Error::InputOutput(_)),
        }),
        Err(_) => Err(CallError {
            message: format!(
                "{what}: no answer within {}",
                humantime::format_duration(limits::DBUS_CALL_TIMEOUT)
            ),
            disconnected: false,
        }),
    }
}

#[derive(Debug)]
pub(super) struct CallError {
    pub(super) message: String,
    pub(super) disconnected: bool,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub(super) async fn check_templates(inner: &Arc<Inner>) {
    let Some(bus) = lock(&inner.bus).clone() else {
        return;
    };
    let services = lock(&inner.launched).clone();
    for name in services {
        let template = template_name(&name);
        let state = call(
            "GetUnitFileState",
            bus.manager.get_unit_file_state(template.clone()),
        )
        .await;
        if let Ok(state) = state {
            tracing::error!(
                tcpmux_service = %name,
                "service \"{name}\": a unit file {template} exists (state {state}); systemd refuses \
                 transient instances of a template with a unit file, so every connection will \
                 fail. Move its settings into a drop-in, {template}.d/*.conf, and remove the file"
            );
        }
    }
}

/// Connects, subscribes, takes stock of running sessions, and starts
/// watching the manager's signals.
pub(super) async fn connect(inner: &Arc<Inner>) -> Result<(), String> {
    let conn = call("connecting to the system bus", (inner.connector)())
        .await
        .map_err(|e| e.to_string())?;
    let manager = call("Manager", ManagerProxy::new(&conn))
        .await
        .map_err(|e| e.to_string())?;
    // Signals must flow before the first job starts, or its end is missed;
    // the streams keep what arrives until the watcher reads it.
    let jobs = call("JobRemoved", manager.receive_job_removed())
        .await
        .map_err(|e| e.to_string())?;
    let removed = call("UnitRemoved", manager.receive_unit_removed())
        .await
        .map_err(|e| e.to_string())?;
    // How sessions end: the properties of their units, sent before each
    // is unloaded.
    let rule = service_changes_rule().map_err(|e| e.to_string())?;
    let changes = call(
        "PropertiesChanged",
        zbus::MessageStream::for_match_rule(rule, manager.inner().connection(), None),
    )
    .await
    .map_err(|e| e.to_string())?;
    call("Subscribe", manager.subscribe())
        .await
        .map_err(|e| e.to_string())?;
    let version = call("Version", manager.version())
        .await
        .map(|v| major_version(&v))
        .unwrap_or(0);
    adopt(inner, &manager).await?;
    let generation = inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
    tokio::spawn(watch(
        Arc::downgrade(inner),
        generation,
        manager.clone(),
        jobs,
        removed,
        changes,
    ));
    tracing::info!(
        systemd_version = version,
        "systemd launcher: connected to the service manager"
    );
    *lock(&inner.bus) = Some(Bus {
        manager,
        version,
        generation,
    });
    check_templates(inner).await;
    inner.refill.notify_one();
    Ok(())
}

/// Counts session units that run already (started before a restart of
/// tcpmuxd, or while the bus was away) against their services.
pub(super) async fn adopt(
    inner: &Arc<Inner>,
    manager: &ManagerProxy<'static>,
) -> Result<(), String> {
    let pattern = format!("{UNIT_PREFIX}*@*.service");
    let units = call(
        "ListUnitsByPatterns",
        manager.list_units_by_patterns(Vec::new(), vec![pattern]),
    )
    .await
    .map_err(|e| e.to_string())?;
    let names: Vec<String> = units.into_iter().map(|u| u.0).collect();
    let mut adopted = Vec::new();
    {
        let warm_units = lock(&inner.warm).units.clone();
        let services = lock(&inner.services);
        let mut running = lock(&inner.running);
        // Units that went away while nobody was listening.
        running.retain(|unit, _| names.contains(unit));
        for unit in &names {
            // Our own warm units wait for connections: not sessions.
            if running.contains_key(unit) || warm_units.contains(unit) {
                continue;
            }
            let Some(service) = escaped_service_of(unit).and_then(|e| services.get(e)) else {
                continue;
            };
            running.insert(
                unit.clone(),
                Session::adopted(inner.sessions.acquire_unbounded(service)),
            );
            adopted.push(unit.clone());
        }
    }
    // A unit removed between the listing and now sent its signal too early
    // to be seen: ask for each one again.
    for unit in &adopted {
        if call("GetUnit", manager.get_unit(unit.clone()))
            .await
            .is_err()
        {
            lock(&inner.running).remove(unit);
        }
    }
    if !adopted.is_empty() {
        tracing::info!(
            "systemd launcher: {} running sessions adopted",
            adopted.len()
        );
    }
    Ok(())
}

pub(super) type JobStream = zbus_systemd::systemd1::JobRemovedStream;
pub(super) type RemovedStream = zbus_systemd::systemd1::UnitRemovedStream;

pub(super) async fn watch(
    inner: std::sync::Weak<Inner>,
    generation: u64,
    manager: ManagerProxy<'static>,
    mut jobs: JobStream,
    mut removed: RemovedStream,
    mut changes: zbus::MessageStream,
) {
    loop {
        tokio::select! {
            // First: a unit's last properties come before its removal.
            biased;
            change = changes.next() => {
                let Some(change) = change else { break };
                let Some(inner) = inner.upgrade() else { return };
                if let Ok(message) = change {
                    note_change(&inner, &message);
                }
            }
            job = jobs.next() => {
                let Some(job) = job else { break };
                let Some(inner) = inner.upgrade() else { return };
                if let Ok(args) = job.args()
                    && let Some(tx) = lock(&inner.pending).remove(args.unit.as_str())
                {
                    let _ = tx.send(args.result.to_string());
                }
            }
            unit = removed.next() => {
                let Some(unit) = unit else { break };
                let Some(inner) = inner.upgrade() else { return };
                if let Ok(args) = unit.args()
                    && lock(&inner.running).contains_key(args.id.as_str())
                {
                    tokio::spawn(confirm_removed(inner, manager.clone(), args.id.to_string()));
                }
            }
        }
    }
    if let Some(inner) = inner.upgrade() {
        lost(&inner, generation);
    }
}

/// Notes what a `PropertiesChanged` of a session unit says of its end.
fn note_change(inner: &Inner, message: &zbus::Message) {
    let header = message.header();
    let Some(unit) = header.path().and_then(|p| unit_of_path(p.as_str())) else {
        return;
    };
    let mut running = lock(&inner.running);
    let Some(session) = running.get_mut(&unit) else {
        return;
    };
    type Changed = (String, HashMap<String, zbus::OwnedVariant>, Vec<String>);
    if let Ok((_, changed, _)) = message.body().deserialize::<Changed>() {
        session.update(&changed);
    }
}

/// systemd also sends UnitRemoved for every unit during a daemon-reload,
/// then loads them again: a session has ended only if its unit is gone
/// once the manager answers again.
pub(super) async fn confirm_removed(
    inner: Arc<Inner>,
    manager: ManagerProxy<'static>,
    unit: String,
) {
    match call("GetUnit", manager.get_unit(unit.clone())).await {
        Ok(_) => {}
        Err(e) if e.disconnected => {}
        Err(_) => {
            let session = lock(&inner.running).remove(&unit);
            if let Some(session) = session {
                log_end(&unit, &session);
            }
        }
    }
}

/// The connection to the manager is gone: refuse new sessions, fail those
/// waiting for their start job, and reconnect. Only the current
/// connection's watcher or user may say so.
pub(super) fn lost(inner: &Arc<Inner>, generation: u64) {
    {
        let mut bus = lock(&inner.bus);
        if bus.as_ref().is_none_or(|b| b.generation != generation) {
            return;
        }
        *bus = None;
    }
    tracing::error!("systemd launcher: connection to the service manager lost; reconnecting");
    lock(&inner.pending).clear();
    spawn_reconnect(Arc::clone(inner));
}

pub(super) fn spawn_reconnect(inner: Arc<Inner>) {
    if inner.reconnecting.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async move {
        let mut pause = limits::BUS_RECONNECT_MIN;
        loop {
            tokio::time::sleep(pause).await;
            match connect(&inner).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!("systemd launcher: reconnecting: {e}");
                    pause = (pause * 2).min(limits::BUS_RECONNECT_MAX);
                }
            }
        }
        inner.reconnecting.store(false, Ordering::Release);
    });
}
