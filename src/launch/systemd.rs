//! The `systemd` launcher: each connection becomes a transient unit
//! `tcpmux-NAME@INSTANCE.service`, started through systemd's D-Bus API with
//! the connection as its standard input and output. The session then lives
//! in its own cgroup, with the sandboxing, limits and journal of the unit's
//! drop-ins, and outlives restarts of tcpmuxd.
//!
//! Sessions are counted from the manager's own signals: a slot is held from
//! the start of a unit until systemd reports the unit unloaded
//! (`UnitRemoved`; the units are garbage-collected once inactive or failed).

use super::handover::{Status, VARIABLES};
use super::warm::{self, Pools, Ready, Start};
use super::{Connection, Failed, LaunchError, Launcher, check_program, session_environment};
use crate::admission::FdGuard;
use crate::config::{Config, Credentials, Service};
use crate::limits;
use crate::sessions::{SessionSlot, SessionTable};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use zbus::{Fd, OwnedVariant, Variant};
use zbus_systemd::systemd1::ManagerProxy;

/// Every session unit's name starts with this.
pub const UNIT_PREFIX: &str = "tcpmux-";

/// The systemd version from which `ExtraFileDescriptors=` exists.
pub const EXTRA_FDS_MIN_VERSION: u32 = 257;

/// Name under which the connection is passed in `LISTEN_FDNAMES` (systemd
/// 257 and later).
pub const CONNECTION_FD_NAME: &str = "connection";

/// Descriptors the daemon holds while systemd starts a session: the copies
/// of the connection passed in the D-Bus call, and one to spare. None are
/// kept once the unit has it.
pub const SYSTEMD_START_FDS: usize = 4;

/// The template whose drop-ins configure service `name`:
/// `tcpmux-NAME@.service`, NAME escaped as `systemd-escape` does.
pub fn template_name(service: &str) -> String {
    format!(
        "{UNIT_PREFIX}{}@.service",
        libsystemd::unit::escape_name(service)
    )
}

/// The unit of one session of service `name`.
pub fn unit_name(service: &str, instance: &str) -> String {
    format!(
        "{UNIT_PREFIX}{}@{instance}.service",
        libsystemd::unit::escape_name(service)
    )
}

/// The escaped service part of a session unit's name, if it is one.
pub fn escaped_service_of(unit: &str) -> Option<&str> {
    let rest = unit.strip_prefix(UNIT_PREFIX)?.strip_suffix(".service")?;
    let (service, instance) = rest.split_once('@')?;
    (!service.is_empty() && !instance.is_empty()).then_some(service)
}

/// The leading number of systemd's version string ("252.36-1~deb12u1").
pub fn major_version(version: &str) -> u32 {
    let digits: String = version.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().unwrap_or(0)
}

type ConnectFuture = Pin<Box<dyn Future<Output = zbus::Result<zbus::Connection>> + Send>>;
/// How to reach the manager: the system bus, or (in tests) a peer.
pub type Connector = Arc<dyn Fn() -> ConnectFuture + Send + Sync>;

/// The system bus.
pub fn system_bus() -> Connector {
    Arc::new(|| Box::pin(zbus::Connection::system()))
}

#[derive(Clone)]
pub struct SystemdLauncher {
    inner: Arc<Inner>,
}

struct Inner {
    connector: Connector,
    bus: Mutex<Option<Bus>>,
    reconnecting: AtomicBool,
    /// Start jobs waited for, by unit name.
    pending: Mutex<HashMap<String, oneshot::Sender<String>>>,
    /// Session units and their slots, by unit name.
    running: Mutex<HashMap<String, SessionSlot>>,
    sessions: Arc<SessionTable>,
    /// Configured services by escaped name, to adopt units found running.
    services: Mutex<HashMap<String, String>>,
    /// Services that start units through this launcher, to check for
    /// template unit files.
    launched: Mutex<Vec<String>>,
    /// Counts connections, so that only the watcher of the current one may
    /// declare it lost.
    generation: AtomicU64,
    instance_prefix: String,
    counter: AtomicU64,
    /// Warm units, per service.
    warm: Mutex<Pools>,
    /// Wakes the refiller: a unit was taken, a start ended, services
    /// changed.
    refill: Arc<Notify>,
    /// Turns to start a unit: `[tcpmux] max_starting_units` of them, and
    /// the number.
    turns: Mutex<(usize, Arc<Semaphore>)>,
    /// Clients waiting for a turn now.
    waiting: AtomicUsize,
}

#[derive(Clone)]
struct Bus {
    manager: ManagerProxy<'static>,
    version: u32,
    generation: u64,
}

/// A D-Bus call, bounded in time: a stuck manager must not hold handshakes
/// or a reload forever.
async fn call<T>(what: &str, fut: impl Future<Output = zbus::Result<T>>) -> Result<T, CallError> {
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
struct CallError {
    message: String,
    disconnected: bool,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain maps: a panic elsewhere cannot leave them half-updated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A command run to its end as a unit: MSP's delivery.
pub struct Oneshot<'a> {
    /// The unit is `tcpmux-NAME@INSTANCE.service`.
    pub name: &'a str,
    pub description: String,
    /// Program path, then arguments.
    pub command: &'a [String],
    pub environment: Vec<(&'static str, String)>,
    /// Its standard input: small enough for a pipe's buffer.
    pub input: &'a [u8],
    /// It is killed after this long.
    pub limit: std::time::Duration,
    /// `User=` and `Group=`; none: the unit's drop-ins decide.
    pub user: Option<&'a Credentials>,
}

impl SystemdLauncher {
    /// Connects to the manager. When that fails, the launcher keeps trying
    /// in the background and refuses sessions meanwhile. `helper`: the
    /// path of `tcpmux-warm`, for warm units; none, every unit starts cold.
    pub async fn start(
        connector: Connector,
        sessions: Arc<SessionTable>,
        config: &Config,
        helper: Option<PathBuf>,
    ) -> Self {
        // Instance names must stay unique across restarts of tcpmuxd while
        // units of the previous run are still loaded.
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let launcher = SystemdLauncher {
            inner: Arc::new(Inner {
                connector,
                bus: Mutex::new(None),
                reconnecting: AtomicBool::new(false),
                pending: Mutex::default(),
                running: Mutex::default(),
                sessions,
                services: Mutex::default(),
                launched: Mutex::default(),
                generation: AtomicU64::new(0),
                instance_prefix: format!("{started:x}"),
                counter: AtomicU64::new(0),
                warm: Mutex::new(Pools::new(helper)),
                refill: Arc::default(),
                turns: Mutex::new((0, Arc::new(Semaphore::new(0)))),
                waiting: AtomicUsize::new(0),
            }),
        };
        // Until the configuration is given with its host: no service.
        launcher.set_services(
            config,
            &crate::config::Host {
                root: false,
                under_systemd: false,
            },
        );
        tokio::spawn(refill(
            Arc::downgrade(&launcher.inner),
            Arc::clone(&launcher.inner.refill),
        ));
        if let Err(e) = connect(&launcher.inner).await {
            tracing::error!("systemd launcher: cannot reach the service manager: {e}; retrying");
            spawn_reconnect(Arc::clone(&launcher.inner));
        }
        launcher
    }

    /// Whether the manager can be reached now.
    pub fn is_connected(&self) -> bool {
        lock(&self.inner.bus).is_some()
    }

    /// Session units being tracked now.
    pub fn tracked_units(&self) -> usize {
        lock(&self.inner.running).len()
    }

    /// Warm units of service `name` ready for a connection now.
    pub fn warm_ready(&self, name: &str) -> usize {
        lock(&self.inner.warm).ready(name)
    }

    /// Warm units ready now, all services together.
    pub fn warm_ready_total(&self) -> usize {
        lock(&self.inner.warm).ready_total()
    }

    /// Learns the services of a (new) configuration: those that start
    /// units on `host`.
    pub fn set_services(&self, config: &Config, host: &crate::config::Host) {
        let map = config
            .services
            .iter()
            .map(|s| (libsystemd::unit::escape_name(&s.name), s.name.clone()))
            .collect();
        *lock(&self.inner.services) = map;
        let launched = |s: &&Arc<Service>| !s.launcher.runs_exec(host);
        *lock(&self.inner.launched) = config
            .services
            .iter()
            .filter(launched)
            .map(|s| s.name.clone())
            .collect();
        lock(&self.inner.warm).set_services(config, config.services.iter().filter(launched));
        let max = config.tcpmux.max_starting_units;
        let mut turns = lock(&self.inner.turns);
        if turns.0 != max {
            // Starts under way keep the turns of the old number; new ones
            // wait for the new.
            *turns = (max, Arc::new(Semaphore::new(max)));
        }
        drop(turns);
        self.inner.refill.notify_one();
    }

    /// The turns to start units, and their number.
    fn turns(&self) -> (usize, Arc<Semaphore>) {
        let turns = lock(&self.inner.turns);
        (turns.0, Arc::clone(&turns.1))
    }

    /// Waits for a client's unit's turn to start, in order of arrival, for
    /// at most [`limits::TURN_WAIT_TIMEOUT`]: at most
    /// `[tcpmux] max_starting_units` units are being started at once, since
    /// building their sandboxes is CPU work that slows every start when
    /// too many run together. See [`in_turn`].
    async fn client_turn(&self) -> Result<OwnedSemaphorePermit, LaunchError> {
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
    async fn refill_turn(&self) -> Option<OwnedSemaphorePermit> {
        self.turns().1.acquire_owned().await.ok()
    }

    /// A turn if one is free now, without queueing: for a client that has
    /// heard `+` already.
    fn spare_turn(&self) -> Option<OwnedSemaphorePermit> {
        self.turns().1.try_acquire_owned().ok()
    }

    /// Logs an error for each service of this launcher that has a template
    /// unit FILE: systemd refuses transient units of a template with a
    /// fragment. Runs again after every reconnection.
    pub async fn check_templates(&self) {
        check_templates(&self.inner).await;
    }

    /// Starts a transient unit and waits for its start job to end. `slot`,
    /// when given, is held until the unit is unloaded. A session's or warm
    /// unit's start runs this in its turn ([`in_turn`]); MSP's deliveries,
    /// which run to their end, take none.
    async fn start_job(
        &self,
        bus: &Bus,
        unit: &str,
        props: Vec<(String, OwnedVariant)>,
        slot: Option<SessionSlot>,
        limit: std::time::Duration,
    ) -> JobEnd {
        let inner = &self.inner;
        let (tx, rx) = oneshot::channel();
        lock(&inner.pending).insert(unit.to_string(), tx);
        if let Some(slot) = slot {
            lock(&inner.running).insert(unit.to_string(), slot);
        }
        let started = call(
            "StartTransientUnit",
            bus.manager
                .start_transient_unit(unit.to_string(), "fail".into(), props, Vec::new()),
        )
        .await;
        if let Err(e) = started {
            lock(&inner.pending).remove(unit);
            lock(&inner.running).remove(unit);
            if e.disconnected {
                lost(inner, bus.generation);
            }
            return JobEnd::Refused(e.to_string());
        }
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(result)) => JobEnd::Result(result),
            Ok(Err(_)) => JobEnd::Lost,
            Err(_) => {
                lock(&inner.pending).remove(unit);
                JobEnd::TimedOut(limit)
            }
        }
    }

    /// Runs a command to its end as a transient unit
    /// `tcpmux-NAME@...service` (`Type=oneshot`, killed after its limit),
    /// with its input on its standard input. Ok when it exits 0; otherwise
    /// the first line of its stderr, or a description of how it failed.
    pub async fn run_oneshot(&self, job: Oneshot<'_>) -> Result<(), String> {
        use rustix::pipe::{PipeFlags, pipe_with};
        let Oneshot {
            name,
            description,
            command,
            environment,
            input,
            limit,
            user,
        } = job;
        let Some(bus) = lock(&self.inner.bus).clone() else {
            return Err("not connected to the service manager".into());
        };
        let unit = unit_name(name, &self.next_instance());
        let pipe = || pipe_with(PipeFlags::CLOEXEC).map_err(|e| format!("pipe: {e}"));
        let (stdin, mut feed) = pipe()?;
        let (reason, stderr) = pipe()?;
        // Small enough for the pipe's buffer: written before the unit runs.
        rustix::io::write(&mut feed, input).map_err(|e| format!("pipe: {e}"))?;
        drop(feed);
        let value = |v: Variant<'_>| OwnedVariant::try_from(v).map_err(|e| e.to_string());
        let argv: Vec<String> = command.iter().map(|a| a.replace('$', "$$")).collect();
        let exec: Vec<(String, Vec<String>, bool)> = vec![(command[0].clone(), argv, false)];
        let env: Vec<String> = environment
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut props = vec![
            ("Description".to_string(), value(description.into())?),
            ("Type".into(), value("oneshot".into())?),
            ("CollectMode".into(), value("inactive-or-failed".into())?),
            (
                "TimeoutStartUSec".into(),
                value((limit.as_micros() as u64).into())?,
            ),
            (
                "StandardInputFileDescriptor".into(),
                value(Fd::from(stdin).into())?,
            ),
            ("StandardOutput".into(), value("null".into())?),
            (
                "StandardErrorFileDescriptor".into(),
                value(Fd::from(stderr).into())?,
            ),
            ("Environment".into(), value(env.into())?),
            ("ExecStart".into(), value(exec.into())?),
        ];
        credentials(user, &mut props).map_err(|e| e.to_string())?;
        let end = self
            .start_job(&bus, &unit, props, None, limit + limits::DBUS_CALL_TIMEOUT)
            .await;
        match end {
            JobEnd::Result(result) if result == "done" => Ok(()),
            JobEnd::Result(result) if result == "timeout" => Err("delivery timed out".into()),
            JobEnd::Result(result) => match first_line(reason).await {
                Some(line) => Err(line),
                None => Err(format!("delivery failed ({unit}: {result})")),
            },
            JobEnd::Refused(e) => {
                tracing::error!("starting {unit}: {e}");
                Err("delivery failed".into())
            }
            JobEnd::Lost => Err("delivery failed: connection to the service manager lost".into()),
            JobEnd::TimedOut(_) => Err("delivery timed out".into()),
        }
    }

    fn next_instance(&self) -> String {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.inner.instance_prefix)
    }
}

async fn check_templates(inner: &Arc<Inner>) {
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
async fn connect(inner: &Arc<Inner>) -> Result<(), String> {
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
async fn adopt(inner: &Arc<Inner>, manager: &ManagerProxy<'static>) -> Result<(), String> {
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
            running.insert(unit.clone(), inner.sessions.acquire_unbounded(service));
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

/// How waiting for a unit's start job ended.
enum JobEnd {
    /// The job's result: "done", "failed", "timeout", "dependency", ...
    Result(String),
    /// systemd refused to create the unit.
    Refused(String),
    /// The connection to the manager broke before the job ended.
    Lost,
    TimedOut(std::time::Duration),
}

/// The first line a finished program wrote to `pipe`, if any.
async fn first_line(pipe: OwnedFd) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe).ok()?;
    let mut limited = receiver.take(limits::MSP_MAX_REASON_LEN as u64);
    let mut text = Vec::new();
    let read = limited.read_to_end(&mut text);
    // A grandchild may hold the pipe open: take what is there.
    let _ = tokio::time::timeout(limits::STDERR_DRAIN_TIMEOUT, read).await;
    let text = String::from_utf8_lossy(&text);
    let line: String = text
        .lines()
        .next()?
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let line = line.trim().to_string();
    (!line.is_empty()).then_some(line)
}

type JobStream = zbus_systemd::systemd1::JobRemovedStream;
type RemovedStream = zbus_systemd::systemd1::UnitRemovedStream;

async fn watch(
    inner: std::sync::Weak<Inner>,
    generation: u64,
    manager: ManagerProxy<'static>,
    mut jobs: JobStream,
    mut removed: RemovedStream,
) {
    loop {
        tokio::select! {
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

/// systemd also sends UnitRemoved for every unit during a daemon-reload,
/// then loads them again: a session has ended only if its unit is gone
/// once the manager answers again.
async fn confirm_removed(inner: Arc<Inner>, manager: ManagerProxy<'static>, unit: String) {
    match call("GetUnit", manager.get_unit(unit.clone())).await {
        Ok(_) => {}
        Err(e) if e.disconnected => {}
        Err(_) => {
            if lock(&inner.running).remove(&unit).is_some() {
                tracing::info!(%unit, "session ended: {unit} unloaded");
            }
        }
    }
}

/// The connection to the manager is gone: refuse new sessions, fail those
/// waiting for their start job, and reconnect. Only the current
/// connection's watcher or user may say so.
fn lost(inner: &Arc<Inner>, generation: u64) {
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

fn spawn_reconnect(inner: Arc<Inner>) {
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

/// One client waiting for a turn, counted while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(waiting: &'a AtomicUsize) -> Self {
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
async fn in_turn<T>(turn: Option<OwnedSemaphorePermit>, start: impl Future<Output = T>) -> T {
    let mut start = std::pin::pin!(start);
    match tokio::time::timeout(limits::TURN_HOLD_MAX, &mut start).await {
        Ok(end) => end,
        Err(_) => {
            drop(turn);
            start.await
        }
    }
}

fn value<'a>(v: impl Into<Variant<'a>>) -> Result<OwnedVariant, LaunchError> {
    OwnedVariant::try_from(v.into()).map_err(|e| LaunchError::Systemd(e.to_string()))
}

/// `ExecStart=` running `program` with `argv`.
fn exec_start(program: &str, argv: &[String]) -> Result<OwnedVariant, LaunchError> {
    // systemd expands $VARIABLES in ExecStart at run time; the exec
    // launcher does not, and neither must this one.
    let argv: Vec<String> = argv.iter().map(|a| a.replace('$', "$$")).collect();
    let exec: Vec<(String, Vec<String>, bool)> = vec![(program.to_string(), argv, false)];
    value(exec)
}

fn credentials(
    cred: Option<&Credentials>,
    props: &mut Vec<(String, OwnedVariant)>,
) -> Result<(), LaunchError> {
    if let Some(cred) = cred {
        props.push(("User".into(), value(cred.user.clone())?));
        // systemd adds the user's own supplementary groups, never
        // tcpmuxd's.
        props.push(("Group".into(), value(cred.gid.to_string())?));
    }
    Ok(())
}

/// A warm unit's properties: those of a session unit, but with the helper
/// as its program (the service's command as the helper's arguments) and
/// `control` as its standard input (and, inherited, output). The
/// connection's variables come with the hand-over.
fn warm_properties(
    service: &Service,
    helper: &Path,
    control: std::os::fd::BorrowedFd<'_>,
) -> Result<Vec<(String, OwnedVariant)>, LaunchError> {
    let Some(command) = &service.command else {
        return Err(LaunchError::NoCommand);
    };
    let helper = helper.to_string_lossy().into_owned();
    let fd: OwnedFd = control.try_clone_to_owned().map_err(LaunchError::Socket)?;
    let environment: Vec<String> = std::iter::once(format!("TCPMUX_SERVICE={}", service.name))
        .chain(service.environment.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    let argv: Vec<String> = std::iter::once(helper.clone())
        .chain(command.iter().cloned())
        .collect();
    let mut props = vec![
        (
            "Description".to_string(),
            value(format!("TCPMUX service {} (warm unit)", service.name))?,
        ),
        ("Type".into(), value("exec")?),
        ("CollectMode".into(), value("inactive-or-failed")?),
        ("StandardInputFileDescriptor".into(), value(Fd::from(fd))?),
        ("StandardError".into(), value("journal")?),
        ("Environment".into(), value(environment)?),
        ("ExecStart".into(), exec_start(&helper, &argv)?),
    ];
    credentials(service.credentials.as_ref(), &mut props)?;
    Ok(props)
}

/// The unit's properties, as `StartTransientUnit` takes them.
fn properties(
    service: &Service,
    peer: std::net::SocketAddr,
    local: std::net::SocketAddr,
    socket: std::os::fd::BorrowedFd<'_>,
    version: u32,
) -> Result<Vec<(String, OwnedVariant)>, LaunchError> {
    let fd = || -> Result<Fd<'static>, LaunchError> {
        let dup: OwnedFd = socket.try_clone_to_owned().map_err(LaunchError::Socket)?;
        Ok(Fd::from(dup))
    };
    let environment: Vec<String> = session_environment(service, peer, local)
        .into_iter()
        .chain(
            service
                .environment
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone())),
        )
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let mut props = vec![
        (
            "Description".to_string(),
            value(format!("TCPMUX service {} for {peer}", service.name))?,
        ),
        ("Type".into(), value("exec")?),
        ("CollectMode".into(), value("inactive-or-failed")?),
        ("StandardInputFileDescriptor".into(), value(fd()?)?),
        ("StandardOutputFileDescriptor".into(), value(fd()?)?),
        ("StandardError".into(), value("journal")?),
        ("Environment".into(), value(environment)?),
    ];
    if let Some(command) = &service.command {
        props.push(("ExecStart".into(), exec_start(&command[0], command)?));
    }
    credentials(service.credentials.as_ref(), &mut props)?;
    if version >= EXTRA_FDS_MIN_VERSION {
        let extra: Vec<(Fd<'static>, String)> = vec![(fd()?, CONNECTION_FD_NAME.to_string())];
        props.push(("ExtraFileDescriptors".into(), value(extra)?));
    }
    Ok(props)
}

impl Launcher for SystemdLauncher {
    fn precheck(&self, service: &Service) -> Result<(), LaunchError> {
        if !self.is_connected() {
            return Err(LaunchError::Systemd(
                "not connected to the service manager (system bus); retrying".into(),
            ));
        }
        if let Some(path) = service.program() {
            check_program(path).map_err(|cause| LaunchError::Program {
                path: path.to_string(),
                cause,
            })?;
        }
        // The service's units do not start (a broken drop-in, a program
        // the sandbox hides): refuse before any `+`.
        match lock(&self.inner.warm).failing(service) {
            Some(e) => Err(LaunchError::Systemd(format!(
                "its units fail to start: {e}"
            ))),
            None => Ok(()),
        }
    }

    fn start_fds(&self) -> usize {
        SYSTEMD_START_FDS
    }

    async fn launch(
        &self,
        service: Arc<Service>,
        mut conn: Connection,
        slot: SessionSlot,
        _fds: FdGuard,
    ) -> Result<(), Failed> {
        let taken = lock(&self.inner.warm).take(&service);
        if let Some(ready) = taken {
            self.inner.refill.notify_one();
            conn.send_plus(&service).await?;
            return match self.hand_over(&service, conn, slot, ready).await {
                Handed::Done(result) => result,
                Handed::Gone(conn, slot) => {
                    let plus_sent = service.plus;
                    let _cold = ColdStart::begin(&self.inner);
                    self.launch_cold(service, conn, slot, plus_sent).await
                }
            };
        }
        let _cold = ColdStart::begin(&self.inner);
        self.launch_cold(service, conn, slot, false).await
    }
}

/// A session unit being started cold, counted while it lasts (refills wait
/// for none to be left), and a prompt to refill once it is done.
struct ColdStart<'a>(&'a Inner);

impl<'a> ColdStart<'a> {
    fn begin(inner: &'a Inner) -> Self {
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

/// How a hand-over to a warm unit ended.
enum Handed {
    Done(Result<(), Failed>),
    /// The unit was gone before it got the connection: start one cold.
    Gone(Connection, SessionSlot),
}

impl SystemdLauncher {
    /// Gives `conn` (told `+` already, for a plus-mode service) to a ready
    /// warm unit, which becomes a session, and waits for the helper's exec.
    async fn hand_over(
        &self,
        service: &Service,
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
        lock(&inner.running).insert(unit.clone(), slot);
        let status = match warm::hand_over(&ready, socket.as_fd(), &variables) {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!(
                    tcpmux_service = %service.name, %unit,
                    "warm unit {unit} did not take the connection ({e}); starting a unit for it"
                );
                let slot = lock(&inner.running).remove(&unit);
                let back = socket
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpStream::from_std(socket));
                return match (back, slot) {
                    (Ok(stream), Some(slot)) => Handed::Gone(
                        Connection {
                            stream,
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
        let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let failure = match warm::receive(status, limits::WARM_EXEC_TIMEOUT).await {
            Ok((None, _)) => {
                tracing::info!(
                    tcpmux_service = %service.name,
                    %unit,
                    "{} from {peer}: session started as {unit} (warm unit)",
                    service.name,
                );
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

    /// Starts a unit of its own for `conn`. `plus_sent`: the client was
    /// told `+` already.
    async fn launch_cold(
        &self,
        service: Arc<Service>,
        mut conn: Connection,
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
        if !plus_sent {
            conn.send_plus(&service).await?;
        }
        let (socket, peer, _) = conn.into_blocking()?;

        // From here on the unit may own the connection: hand it back for an
        // answer only when the unit was never made, or its start job proves
        // the program never ran.
        let started = self.start_job(&bus, &unit, props, Some(slot), limits::UNIT_START_TIMEOUT);
        let (failure, conn) = match in_turn(turn, started).await {
            JobEnd::Result(result) if result == "done" => {
                tracing::info!(
                    tcpmux_service = %service.name,
                    %unit,
                    "{} from {}: session started as {unit}",
                    service.name,
                    std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port())
                );
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

/// Keeps the warm pools filled: on every prompt, and every
/// [`limits::WARM_CHECK_INTERVAL`] to retire units that died or waited too
/// long. Ends with the launcher.
async fn refill(inner: std::sync::Weak<Inner>, prompt: Arc<Notify>) {
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
async fn warm_start(launcher: &SystemdLauncher, start: &Start) -> (String, Result<Ready, String>) {
    let inner = &launcher.inner;
    let unit = unit_name(&start.service.name, &launcher.next_instance());
    let helper = {
        let mut pools = lock(&inner.warm);
        pools.starting(&unit);
        pools.helper.clone()
    };
    let result = match helper {
        None => Err("no helper for warm units".to_string()),
        Some(helper) => {
            // Held until the helper is ready: its sandbox is built by then.
            let turn = launcher.refill_turn().await;
            in_turn(turn, start_helper(launcher, start, &unit, &helper)).await
        }
    };
    (unit, result)
}

/// Starts warm unit `unit` running `helper`, and waits for it to be ready.
async fn start_helper(
    launcher: &SystemdLauncher,
    start: &Start,
    unit: &str,
    helper: &Path,
) -> Result<Ready, String> {
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
    match warm::receive(ours, limits::WARM_READY_TIMEOUT).await {
        Ok((Some(Status::Ready), control)) => Ok(Ready {
            unit: unit.to_string(),
            control,
            since: std::time::Instant::now(),
        }),
        Ok((Some(Status::Failed(e)), _)) => Err(format!("{unit}: {e}")),
        Ok((None, _)) => Err(format!(
            "{unit}: the helper exited before it was ready (see journalctl -u {unit})"
        )),
        Err(e) => Err(format!("{unit}: {e}")),
    }
}
