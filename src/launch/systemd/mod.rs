//! The `systemd` launcher: each connection becomes a transient unit
//! `tcpmux-NAME@INSTANCE.service`, started through systemd's D-Bus API with
//! the connection as its standard input and output. The session then lives
//! in its own cgroup, with the sandboxing, limits and journal of the unit's
//! drop-ins, and outlives restarts of tcpmuxd.
//!
//! Sessions are counted from the manager's own signals: a slot is held from
//! the start of a unit until systemd reports the unit unloaded
//! (`UnitRemoved`; the units are garbage-collected once inactive or failed).
//!
//! One module a part: [`bus`] (the manager's connection), [`turns`] (how
//! many units start at once), [`unit`] (what a unit is made of),
//! [`cold`] and [`warm_start`] (the two ways a session's unit starts).

mod bus;
mod cold;
mod session;
mod turns;
mod unit;
mod warm_start;

use crate::sync::lock;
use bus::*;
pub use bus::{Connector, system_bus};
use cold::*;
use session::*;
use turns::*;
use unit::*;
use warm_start::*;

use super::handover::{Status, VARIABLES};
use super::warm::{self, Pools, Ready, Start, WarmFailure};
use super::{
    ClientSocket, Connection, Failed, LaunchError, Launcher, check_program, session_environment,
};
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
use std::sync::{Arc, Mutex};
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
    /// Session units, with their slots, by unit name.
    running: Mutex<HashMap<String, Session>>,
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
    /// `UMask=` and the `Limit*=`.
    pub umask: u32,
    pub limits: &'a crate::config::ResourceLimits,
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
        let launched = |s: &&Arc<Service>| s.launcher.runs_systemd(host);
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

    /// Logs an error for each service of this launcher that has a template
    /// unit FILE: systemd refuses transient units of a template with a
    /// fragment. Runs again after every reconnection.
    pub async fn check_templates(&self) {
        check_templates(&self.inner).await;
    }

    /// Starts a transient unit and waits for its start job to end.
    /// `session`, when given, is tracked (its slot held) until the unit is
    /// unloaded. A session's or warm
    /// unit's start runs this in its turn ([`in_turn`]); MSP's deliveries,
    /// which run to their end, take none.
    async fn start_job(
        &self,
        bus: &Bus,
        unit: &str,
        props: Vec<(String, OwnedVariant)>,
        session: Option<Session>,
        limit: std::time::Duration,
    ) -> JobEnd {
        let inner = &self.inner;
        let (tx, rx) = oneshot::channel();
        lock(&inner.pending).insert(unit.to_string(), tx);
        if let Some(session) = session {
            lock(&inner.running).insert(unit.to_string(), session);
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
            umask,
            limits: resource_limits,
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
        // Set here, as for sessions, rather than in the units' drop-in,
        // which would win over these.
        unit::resources(umask, resource_limits, &mut props).map_err(|e| e.to_string())?;
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
        conn: Connection,
        slot: SessionSlot,
        _fds: FdGuard,
    ) -> Result<(), Failed> {
        let taken = lock(&self.inner.warm).take(&service);
        if let Some(ready) = taken {
            self.inner.refill.notify_one();
            let conn = conn.send_plus(&service).await?;
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
