//! Accepting connections, running each handshake, reloading and shutting
//! down.

use crate::admission::{Limit, LimitHits, PerSource, StartRate, describe_hits, source_key};
use crate::config::{self, Config, LauncherKind, Service};
use crate::launch::exec::ExecLauncher;
use crate::launch::systemd::{self as systemd_launch, SystemdLauncher};
use crate::launch::{Connection, Failed, LaunchError, Launcher};
use crate::limits;
use crate::notify::Notifier;
use crate::sessions::{Full, SessionTable};
use crate::tcpmux::{self, HandshakeError, Request, RequestError, reply};
use arc_swap::ArcSwap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the daemon shares between its tasks.
pub struct State {
    pub config: ArcSwap<Config>,
    pub config_path: PathBuf,
    /// Whether the listening sockets came from systemd.
    pub activated: bool,
    pub sessions: Arc<SessionTable>,
    pub stats: Stats,
    pub notifier: Notifier,
    pub exec: ExecLauncher,
    /// Whether tcpmuxd runs as a systemd service: `launcher = "auto"` then
    /// means `systemd`.
    pub under_systemd: bool,
    /// Started when first needed.
    pub systemd: std::sync::OnceLock<SystemdLauncher>,
    pub msp: crate::msp::serve::MspState,
    /// Whether `launcher = "auto"` services use the systemd launcher: under
    /// systemd, when the manager could be reached at startup.
    pub auto_systemd: std::sync::atomic::AtomicBool,
    /// Handshakes in progress per source.
    pub sources: Arc<PerSource>,
    /// Session starts per service, for `max_starts_per_second`.
    pub starts: StartRate,
}

/// Live counters, shown in systemd's `STATUS=` line.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections in the handshake phase now.
    pub handshakes: AtomicUsize,
    /// Connections handed to a service since startup.
    pub served: AtomicU64,
    /// Connections answered with `-` since startup.
    pub refused: AtomicU64,
    /// How often each limit was hit since startup.
    pub hits: LimitHits,
}

impl State {
    pub fn new(
        config: Config,
        config_path: PathBuf,
        activated: bool,
        notifier: Notifier,
        under_systemd: bool,
    ) -> Self {
        State {
            msp: Default::default(),
            under_systemd,
            systemd: std::sync::OnceLock::new(),
            auto_systemd: std::sync::atomic::AtomicBool::new(false),
            sources: Arc::default(),
            starts: StartRate::default(),
            config: ArcSwap::from_pointee(config),
            config_path,
            activated,
            sessions: Arc::default(),
            stats: Stats::default(),
            notifier,
            exec: ExecLauncher,
        }
    }

    /// One line for `STATUS=`.
    pub fn status_line(&self) -> String {
        format!(
            "{} in handshake, {} sessions running; {} handed off, {} refused, {} limits hit; MSP: {} delivered, {} refused",
            self.stats.handshakes.load(Ordering::Relaxed),
            self.sessions.total(),
            self.stats.served.load(Ordering::Relaxed),
            self.stats.refused.load(Ordering::Relaxed),
            self.stats.hits.total(),
            self.msp.delivered.load(Ordering::Relaxed),
            self.msp.refused.load(Ordering::Relaxed),
        )
    }

    /// Reads the configuration again and, when it is valid, serves new
    /// connections with it. Running sessions are not touched; an invalid
    /// configuration leaves the old one in place.
    pub async fn reload(&self) -> Result<(), config::ConfigError> {
        self.notifier.reloading();
        let result = config::load(&self.config_path).map(|new| {
            for w in &new.warnings {
                tracing::warn!("{w}");
            }
            if !self.activated && self.config.load().tcpmux.listen != new.tcpmux.listen {
                tracing::warn!(
                    "[tcpmux] listen changed: the new addresses take effect at the next restart"
                );
            }
            tracing::info!(
                services = new.services.len(),
                "configuration reloaded from {}",
                self.config_path.display()
            );
            self.starts.retain(|name| new.service(name).is_some());
            self.config.store(Arc::new(new));
        });
        if let Err(e) = &result {
            tracing::error!("reload failed, still serving the previous configuration: {e}");
        }
        self.start_systemd_if_needed().await;
        self.notifier.ready();
        result
    }

    /// Whether the current configuration has services for the systemd
    /// launcher.
    fn wants_systemd(&self) -> bool {
        let config = self.config.load();
        let msp_command = config.msp.deliver == config::Delivery::Command;
        (self.under_systemd && msp_command)
            || config.services.iter().any(|s| match s.launcher {
                LauncherKind::Systemd => true,
                LauncherKind::Auto => self.under_systemd,
                LauncherKind::Exec => false,
            })
    }

    /// Connects the systemd launcher when the configuration needs it, and
    /// tells it the services (to find template unit files that would make
    /// every start fail).
    pub async fn start_systemd_if_needed(&self) {
        if self.systemd.get().is_none() && self.wants_systemd() {
            let config = self.config.load_full();
            let launcher = SystemdLauncher::start(
                systemd_launch::system_bus(),
                Arc::clone(&self.sessions),
                &config,
            )
            .await;
            if self.under_systemd {
                if launcher.is_connected() {
                    self.auto_systemd.store(true, Ordering::Relaxed);
                } else {
                    tracing::warn!(
                        "launcher = \"auto\" services use the exec launcher: the service manager \
                         could not be reached at startup"
                    );
                }
            }
            let _ = self.systemd.set(launcher);
        }
        if let Some(launcher) = self.systemd.get() {
            let config = self.config.load_full();
            launcher.set_services(&config, self.auto_systemd.load(Ordering::Relaxed));
            // D-Bus may be slow: never hold up the caller (signal handling).
            let launcher = launcher.clone();
            tokio::spawn(async move { launcher.check_templates().await });
        }
    }
}

/// Releases a handshake place when the handshake ends.
struct HandshakeGuard<'a>(&'a AtomicUsize);

impl Drop for HandshakeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves TCPMUX on `listeners` until `shutdown` is cancelled, then waits
/// (at most `name_timeout` and a little) for handshakes in progress.
pub async fn run(listeners: Vec<TcpListener>, state: Arc<State>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    let mut loops = Vec::new();
    for listener in listeners {
        loops.push(tokio::spawn(accept_loop(
            listener,
            Arc::clone(&state),
            tracker.clone(),
            shutdown.clone(),
        )));
    }
    for l in loops {
        let _ = l.await;
    }
    tracker.close();
    let grace = state.config.load().tcpmux.name_timeout + limits::SHUTDOWN_GRACE;
    if timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            "{} handshakes still running after {}; exiting anyway",
            tracker.len(),
            humantime::format_duration(grace)
        );
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    while let Some((stream, peer)) = crate::listen::accept(&listener, &shutdown).await {
        let config = state.config.load();
        // Refusals here never wait on the client: the reply fits the empty
        // send buffer of a new connection, and the accept loop moves on.
        if state.stats.handshakes.fetch_add(1, Ordering::Relaxed) >= config.tcpmux.max_handshakes {
            state.stats.handshakes.fetch_sub(1, Ordering::Relaxed);
            let _ = stream.try_write(reply::OVERLOADED);
            count_outcome(&state, Outcome::Overloaded);
            log_outcome(peer, None, Outcome::Overloaded);
            continue;
        }
        let source = source_key(peer.ip(), config.tcpmux.ipv6_source_prefix);
        let Some(source_guard) = state
            .sources
            .try_enter(source, config.tcpmux.max_handshakes_per_source)
        else {
            state.stats.handshakes.fetch_sub(1, Ordering::Relaxed);
            let _ = stream.try_write(reply::SOURCE_LIMIT);
            count_outcome(&state, Outcome::SourceLimit);
            log_outcome(peer, None, Outcome::SourceLimit);
            continue;
        };
        drop(config);
        let state = Arc::clone(&state);
        tracker.spawn(async move {
            let _guard = HandshakeGuard(&state.stats.handshakes);
            let _source = source_guard;
            handle(stream, peer, &state).await;
        });
    }
}

/// How a connection's handshake ended, for the log and the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Served,
    Help,
    Unknown,
    Denied,
    Busy,
    Timeout,
    TooLong,
    BadName,
    Closed,
    Unavailable,
    SpawnFailed,
    Overloaded,
    SourceLimit,
    SessionsFull,
    StartRate,
}

impl Outcome {
    /// The limit this outcome means was hit, if any.
    pub fn limit(self) -> Option<Limit> {
        match self {
            Outcome::Overloaded => Some(Limit::MaxHandshakes),
            Outcome::SourceLimit => Some(Limit::MaxHandshakesPerSource),
            Outcome::Timeout => Some(Limit::NameTimeout),
            Outcome::Busy => Some(Limit::MaxInstances),
            Outcome::SessionsFull => Some(Limit::MaxSessions),
            Outcome::StartRate => Some(Limit::MaxStartsPerSecond),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Served => "served",
            Outcome::Help => "help",
            Outcome::Unknown => "unknown",
            Outcome::Denied => "denied",
            Outcome::Busy => "busy",
            Outcome::Timeout => "timeout",
            Outcome::TooLong => "too-long",
            Outcome::BadName => "bad-name",
            Outcome::Closed => "closed",
            Outcome::Unavailable => "unavailable",
            Outcome::SpawnFailed => "spawn-failed",
            Outcome::Overloaded => "overloaded",
            Outcome::SourceLimit => "source-limit",
            Outcome::SessionsFull => "sessions-full",
            Outcome::StartRate => "start-rate",
        }
    }
}

async fn handle(stream: TcpStream, peer: SocketAddr, state: &State) {
    let config = state.config.load_full();
    let mut name = None;
    let outcome = handshake(stream, peer, &config, state, &mut name).await;
    count_outcome(state, outcome);
    log_outcome(peer, name.as_deref(), outcome);
}

fn count_outcome(state: &State, outcome: Outcome) {
    match outcome {
        Outcome::Served => state.stats.served.fetch_add(1, Ordering::Relaxed),
        Outcome::Help | Outcome::Closed => 0,
        _ => state.stats.refused.fetch_add(1, Ordering::Relaxed),
    };
    if let Some(limit) = outcome.limit() {
        state.stats.hits.hit(limit);
    }
}

fn log_outcome(peer: SocketAddr, service: Option<&str>, outcome: Outcome) {
    let remote_addr = peer.ip().to_canonical();
    let remote_port = peer.port();
    let outcome_str = outcome.as_str();
    let service = service.unwrap_or("");
    match outcome {
        // The fields say who and what: the message does not repeat them
        // (formatting is most of a HELP's cost).
        Outcome::SpawnFailed => tracing::error!(
            tcpmux_service = %service, %remote_addr, remote_port, outcome = %outcome_str,
            "connection"
        ),
        // A flood must not become a flood of log lines: limits hit are
        // summed up every LIMIT_LOG_INTERVAL instead.
        _ if outcome.limit().is_some() => tracing::debug!(
            tcpmux_service = %service, %remote_addr, remote_port, outcome = %outcome_str,
            "connection"
        ),
        _ => tracing::info!(
            tcpmux_service = %service, %remote_addr, remote_port, outcome = %outcome_str,
            "connection"
        ),
    }
}

/// Runs one handshake to its end. `name` is set to the service the client
/// asked for, once known.
async fn handshake(
    mut stream: TcpStream,
    peer: SocketAddr,
    config: &Config,
    state: &State,
    name: &mut Option<String>,
) -> Outcome {
    let limit = config.tcpmux.name_timeout;
    let ip = peer.ip().to_canonical();
    if !config.tcpmux.acl.permits(ip) {
        return refuse(stream, reply::DENIED, limit, Outcome::Denied).await;
    }
    let line = match timeout(limit, tcpmux::read_request_line(&mut stream)).await {
        Err(_) => return refuse(stream, reply::TIMEOUT, limit, Outcome::Timeout).await,
        Ok(Err(HandshakeError::TooLong)) => {
            return refuse(stream, reply::TOO_LONG, limit, Outcome::TooLong).await;
        }
        Ok(Err(HandshakeError::Closed | HandshakeError::Io(_))) => return Outcome::Closed,
        Ok(Ok(line)) => line,
    };
    let requested = match tcpmux::parse_request(&line) {
        Ok(Request::Help) => {
            *name = Some(config::HELP_NAME.to_string());
            let names = config
                .services
                .iter()
                .filter(|s| s.acl.permits(ip))
                .map(|s| s.name.as_str());
            let text = tcpmux::help_text(names);
            return refuse(stream, &text, limit, Outcome::Help).await;
        }
        Ok(Request::Service(requested)) => requested,
        Err(RequestError::TooLong) => {
            return refuse(stream, reply::TOO_LONG, limit, Outcome::TooLong).await;
        }
        Err(e) => {
            tracing::debug!(%ip, "bad request line: {e}");
            return refuse(stream, reply::BAD_NAME, limit, Outcome::BadName).await;
        }
    };
    let Some(service) = config.service(&requested) else {
        *name = Some(requested);
        return refuse(stream, reply::UNKNOWN, limit, Outcome::Unknown).await;
    };
    *name = Some(service.name.clone());
    if !service.acl.permits(ip) {
        // HELP hides this service from this client; so does the answer.
        return refuse(stream, reply::UNKNOWN, limit, Outcome::Denied).await;
    }
    let slot = match state.sessions.try_acquire(
        &service.name,
        service.max_instances,
        config.tcpmux.max_sessions,
    ) {
        Ok(slot) => slot,
        Err(Full::Service) => return refuse(stream, reply::BUSY, limit, Outcome::Busy).await,
        Err(Full::All) => {
            return refuse(stream, reply::SESSIONS_FULL, limit, Outcome::SessionsFull).await;
        }
    };
    if !state.starts.allow(
        &service.name,
        service.max_starts_per_second,
        std::time::Instant::now(),
    ) {
        return refuse(stream, reply::START_RATE, limit, Outcome::StartRate).await;
    }
    let launcher = launcher_for(state, service);
    if let Err(e) = launcher.precheck(service) {
        tracing::error!(tcpmux_service = %service.name, "service \"{}\": {e}", service.name);
        return refuse(stream, reply::UNAVAILABLE, limit, Outcome::Unavailable).await;
    }
    if service.plus {
        match timeout(limit, stream.write_all(reply::PLUS)).await {
            Ok(Ok(())) => {}
            _ => return Outcome::Closed,
        }
    }
    let Ok(local) = stream.local_addr() else {
        return Outcome::Closed;
    };
    let conn = Connection {
        stream,
        peer,
        local,
    };
    // Boxed: the launch futures are large, and every waiting handshake
    // would otherwise carry their space.
    match Box::pin(launcher.launch(Arc::clone(service), conn, slot)).await {
        Ok(()) => Outcome::Served,
        Err(Failed { error, conn }) => {
            tracing::error!(tcpmux_service = %service.name, "service \"{}\": {error}", service.name);
            // A dedicated service's client has heard nothing yet.
            if let (false, Some(socket)) = (service.plus, conn)
                && socket.set_nonblocking(true).is_ok()
                && let Ok(stream) = TcpStream::from_std(socket)
            {
                refuse(stream, reply::UNAVAILABLE, limit, Outcome::SpawnFailed).await;
            }
            Outcome::SpawnFailed
        }
    }
}

/// The launcher a service uses.
enum Chosen<'a> {
    Exec(&'a ExecLauncher),
    Systemd(&'a SystemdLauncher),
    /// The systemd launcher was asked for but could not be set up.
    Missing,
}

fn launcher_for<'a>(state: &'a State, service: &Service) -> Chosen<'a> {
    let systemd = match service.launcher {
        LauncherKind::Exec => false,
        LauncherKind::Systemd => true,
        LauncherKind::Auto => state.auto_systemd.load(Ordering::Relaxed),
    };
    match (systemd, state.systemd.get()) {
        (false, _) => Chosen::Exec(&state.exec),
        (true, Some(l)) => Chosen::Systemd(l),
        (true, None) => Chosen::Missing,
    }
}

impl Launcher for Chosen<'_> {
    fn precheck(&self, service: &Service) -> Result<(), LaunchError> {
        match self {
            Chosen::Exec(l) => l.precheck(service),
            Chosen::Systemd(l) => l.precheck(service),
            Chosen::Missing => Err(LaunchError::Systemd("not available".into())),
        }
    }

    async fn launch(
        &self,
        service: Arc<Service>,
        conn: Connection,
        slot: crate::sessions::SessionSlot,
    ) -> Result<(), Failed> {
        match self {
            Chosen::Exec(l) => l.launch(service, conn, slot).await,
            Chosen::Systemd(l) => l.launch(service, conn, slot).await,
            Chosen::Missing => Err(LaunchError::Systemd("not available".into()).into()),
        }
    }
}

/// Writes a final reply, closes our side, and reads what the client still
/// sends (bounded), so the close does not reset the connection before the
/// client has read the reply.
///
/// Returns `outcome`, or [`Outcome::Closed`] when the client was gone
/// before it could be told.
async fn refuse(mut stream: TcpStream, text: &[u8], limit: Duration, outcome: Outcome) -> Outcome {
    match timeout(limit, stream.write_all(text)).await {
        Ok(Ok(())) => {}
        _ => return Outcome::Closed,
    }
    if stream.shutdown().await.is_err() {
        return outcome;
    }
    let drain = async {
        // On the heap (every waiting handshake future would carry it), and
        // never zeroed: read_buf fills the spare capacity.
        let mut buf = Vec::with_capacity(4096);
        let mut total = 0;
        while total < limits::DRAIN_LIMIT {
            buf.clear();
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = timeout(limits::DRAIN_TIMEOUT.min(limit), drain).await;
    outcome
}

/// Runs the daemon: serves until SIGTERM or SIGINT, reloads on SIGHUP,
/// keeps systemd informed.
pub async fn serve(sockets: crate::listen::Sockets, state: Arc<State>) -> io::Result<()> {
    let tcpmux = sockets.tcpmux;
    use tokio::signal::unix::{SignalKind, signal};
    let mut listeners = Vec::new();
    for l in tcpmux {
        l.set_nonblocking(true)?;
        let l = TcpListener::from_std(l)?;
        match l.local_addr() {
            Ok(addr) => tracing::info!(%addr, "listening for TCPMUX on {addr}"),
            Err(e) => tracing::info!("listening for TCPMUX (address unknown: {e})"),
        }
        listeners.push(l);
    }
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    state.start_systemd_if_needed().await;
    let shutdown = CancellationToken::new();
    let msp_tracker = TaskTracker::new();
    let mut msp_loops = Vec::new();
    for l in sockets.msp_stream {
        l.set_nonblocking(true)?;
        let l = TcpListener::from_std(l)?;
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "listening for MSP on {addr}/tcp");
        }
        msp_loops.push(tokio::spawn(crate::msp::serve::serve_tcp(
            l,
            Arc::clone(&state),
            msp_tracker.clone(),
            shutdown.clone(),
        )));
    }
    for s in sockets.msp_datagram {
        s.set_nonblocking(true)?;
        let s = tokio::net::UdpSocket::from_std(s)?;
        if let Ok(addr) = s.local_addr() {
            tracing::info!(%addr, "listening for MSP on {addr}/udp");
        }
        msp_loops.push(tokio::spawn(crate::msp::serve::serve_udp(
            s,
            Arc::clone(&state),
            msp_tracker.clone(),
            shutdown.clone(),
        )));
    }
    let server = tokio::spawn(run(listeners, Arc::clone(&state), shutdown.clone()));
    let background = tokio::spawn(report_status(Arc::clone(&state)));

    let config = state.config.load();
    tracing::info!(
        services = config.services.len(),
        "tcpmuxd {} ready, {} services",
        env!("CARGO_PKG_VERSION"),
        config.services.len()
    );
    drop(config);
    state.notifier.ready();

    loop {
        tokio::select! {
            _ = hangup.recv() => { let _ = state.reload().await; }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("shutting down: no new connections; finishing handshakes in progress");
    state.notifier.stopping();
    shutdown.cancel();
    let _ = server.await;
    for l in msp_loops {
        let _ = l.await;
    }
    msp_tracker.close();
    let msp_grace = state.config.load().msp.command_timeout + limits::SHUTDOWN_GRACE;
    let _ = timeout(msp_grace, msp_tracker.wait()).await;
    background.abort();
    tracing::info!(
        sessions = state.sessions.total(),
        "stopped; {} sessions keep running",
        state.sessions.total()
    );
    Ok(())
}

/// Keeps `STATUS=` current and feeds the watchdog.
async fn report_status(state: Arc<State>) {
    let mut last = String::new();
    let mut status_tick = tokio::time::interval(limits::STATUS_INTERVAL);
    let watchdog = state.notifier.watchdog_interval();
    // Without a watchdog the branch below is disabled; the interval only
    // needs some valid period.
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(limits::LIMIT_LOG_INTERVAL));
    let mut limits_tick = tokio::time::interval(limits::LIMIT_LOG_INTERVAL);
    let mut hits_before = state.stats.hits.snapshot();
    loop {
        tokio::select! {
            _ = limits_tick.tick() => {
                let now = state.stats.hits.snapshot();
                if let Some(text) = describe_hits(&hits_before, &now) {
                    tracing::warn!(
                        "limits hit in the last {}: {text}",
                        humantime::format_duration(limits::LIMIT_LOG_INTERVAL)
                    );
                }
                hits_before = now;
            }
            _ = status_tick.tick() => {
                let line = state.status_line();
                if line != last {
                    state.notifier.status(&line);
                    last = line;
                }
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => state.notifier.watchdog(),
        }
    }
}
