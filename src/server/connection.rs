//! The path of one TCPMUX connection: accept, admission, the handshake, the
//! hand-off to a launcher, and how it ended.

use super::State;
use crate::admission::{FdGuard, Limit, SourceGuard, WaitingPlace, source_key};
use crate::config::{self, Config, LauncherKind, Service};
use crate::launch::exec::ExecLauncher;
use crate::launch::forward::ForwardLauncher;
use crate::launch::pass::PassLauncher;
use crate::launch::systemd::SystemdLauncher;
use crate::launch::{ClientSocket, Connection, Failed, LaunchError, Launcher};
use crate::limits;
use crate::log::escaped;
use crate::proxy::{HeaderError, ProxyHeader};
use crate::sessions::{Full, SessionLimits};
use crate::tcpmux::{self, HandshakeError, HelpCursor, Request, RequestError, reply};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Serves TCPMUX on `listeners` until `shutdown` is cancelled, then waits
/// (at most `name_timeout` and a little) for handshakes in progress.
pub async fn run(
    listeners: Vec<AsyncFd<std::net::TcpListener>>,
    state: Arc<State>,
    shutdown: CancellationToken,
) {
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
    listener: AsyncFd<std::net::TcpListener>,
    state: Arc<State>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    while let Some((stream, accepted)) = crate::listen::accept_plain(&listener, &shutdown).await {
        let config = state.config.load();
        // A trusted balancer's connection begins with a PROXY header that
        // names its client. When it came with the connection (HAProxy
        // sends it at once), the client takes the peer's place here, for
        // every check below and everything after; otherwise the
        // connection counts as the balancer's own until the handshake has
        // read it.
        let mut who = Arrival {
            peer: accepted,
            local: None,
            early: None,
            header_pending: false,
        };
        if config.tcpmux.trusted_proxies.trusts(accepted.ip()) {
            match tcpmux::take_ready_header_and_line(&stream) {
                Ok(Some((header, line))) => {
                    who.believe(header);
                    who.early = Some(line);
                }
                Ok(None) => who.header_pending = true,
                Err(HandshakeError::ProxyHeader(e)) => {
                    drop(stream);
                    record_with(
                        &state,
                        accepted,
                        None,
                        Outcome::BadProxyHeader,
                        Some(e.to_string()),
                    );
                    continue;
                }
                Err(_) => {
                    record(&state, accepted, None, Outcome::Closed);
                    continue;
                }
            }
        }
        let peer = who.peer;
        // Refusals here never wait on the client: the reply fits the empty
        // send buffer of a new connection, and the accept loop moves on.
        // Each is checked before anything is taken or shed: a client that
        // is refused must not make others give way. (A balancer whose
        // header is still to come is not judged by the access lists: its
        // client will be.)
        if !who.header_pending && !config.tcpmux.acl.permits(peer.ip()) {
            refuse_at_once(&stream, reply::DENIED);
            record(&state, peer, None, Outcome::Denied);
            continue;
        }
        let source = source_key(peer.ip(), config.tcpmux.ipv6_source_prefix);
        let Some(source_place) = state
            .sources
            .try_enter(source, config.tcpmux.max_handshakes_per_source)
        else {
            refuse_at_once(&stream, reply::SOURCE_LIMIT);
            record(&state, peer, None, Outcome::SourceLimit);
            continue;
        };
        // A descriptor for the connection; when none is left, the oldest
        // handshake still waiting for its name gives up its own.
        let fds = match state.fds.try_take(1) {
            Some(fds) => fds,
            None if state.waiting.shed_oldest() => state.fds.take_over(1),
            None => {
                refuse_at_once(&stream, reply::SESSIONS_FULL);
                record(&state, peer, None, Outcome::NoDescriptors);
                continue;
            }
        };
        // Taken before the handshake's task exists, so that no path can
        // keep it.
        let (place, before) = state.stats.handshakes.enter();
        // At the cap, the oldest handshake still waiting for its name makes
        // room; only when none waits is the new connection refused.
        if before >= config.tcpmux.max_handshakes && !state.waiting.shed_oldest() {
            drop((place, source_place, fds));
            refuse_at_once(&stream, reply::OVERLOADED);
            record(&state, peer, None, Outcome::Overloaded);
            continue;
        }
        // Only a HELP list that fits one chunk, whatever the client may
        // see of it, is answered here; a longer one is its task's to write.
        let help_fits = config.help_len() <= limits::HELP_CHUNK;
        drop(config);
        let waiting = state.waiting.enter();
        let state = Arc::clone(&state);
        // The request line often came with the connection: taken now, off
        // the event loop.
        let early = match (who.header_pending, who.early) {
            (true, _) => Early::HeaderPending,
            (false, Some(line)) => Early::Line(line),
            (false, None) => Early::Line(tcpmux::take_ready_request_line(&stream)),
        };
        let help = help_fits
            && matches!(&early, Early::Line(Ok(Some(line))) if tcpmux::parse_request(line) == Ok(Request::Help));
        let local = who.local;
        let task = async move {
            let _place = place;
            let mut who = Who {
                peer,
                local,
                source_place,
                name: None,
                cause: None,
            };
            let outcome = handshake(stream, early, &mut who, &state, fds, waiting).await;
            record_with(&state, who.peer, who.name.as_deref(), outcome, who.cause);
        };
        if help {
            // HELP is answered here, before the next accept, as far as
            // it goes without waiting; only what is left (usually the
            // client's end of the drain) becomes a task. A future may be
            // polled by another waker next: the task's first poll takes
            // over from this one.
            let mut task = Box::pin(task);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if task.as_mut().poll(&mut cx).is_pending() {
                tracker.spawn(task);
            }
        } else {
            tracker.spawn(task);
        }
    }
}

/// A connection as accepted: its client, and what came with it.
struct Arrival {
    /// The peer, or the client a trusted proxy's header names.
    peer: SocketAddr,
    /// The address the client connected to, when a header says it.
    local: Option<SocketAddr>,
    /// What there is of the request line, when it was looked for.
    early: Option<tcpmux::ReadyLine>,
    /// A trusted proxy's header is not all there yet.
    header_pending: bool,
}

impl Arrival {
    /// Takes the client a trusted proxy's header names as the client;
    /// a `LOCAL` header (a health check) leaves the connection's own.
    fn believe(&mut self, header: ProxyHeader) {
        if let ProxyHeader::Proxied {
            source,
            destination,
        } = header
        {
            self.peer = SocketAddr::new(source.ip().to_canonical(), source.port());
            self.local = Some(destination);
        }
    }
}

/// What a look at a new connection found without waiting.
enum Early {
    /// What there is of the request line.
    Line(tcpmux::ReadyLine),
    /// A trusted proxy's header is not all there: it is read first.
    HeaderPending,
}

/// Who a connection's client is, as far as it is known: the peer, and
/// after a trusted proxy's header the client it names. What the handshake
/// learns of it is logged when it ends.
struct Who {
    /// The client: from accept, replaced by a PROXY header's source.
    peer: SocketAddr,
    /// The address the client connected to, when a PROXY header says it;
    /// else the connection's own.
    local: Option<SocketAddr>,
    /// The client's place under `max_handshakes_per_source`: the
    /// balancer's until its header names the client.
    source_place: SourceGuard,
    /// The service the client asked for, once known.
    name: Option<String>,
    /// Why the connection was refused, where the outcome alone does not
    /// say it.
    cause: Option<String>,
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
    /// Shed at `max_handshakes` to make room for a newer connection.
    Shed,
    /// The limit on open files leaves no room for the connection or the
    /// session's start.
    NoDescriptors,
    /// No turn to start the session's unit came in time.
    NoTurn,
    /// The source holds its share of the service's sessions.
    SourceBusy,
    /// The source holds its share of all sessions.
    SourceSessionsFull,
    /// Nothing is served: the configuration was invalid at startup and
    /// no valid one has been loaded since.
    InvalidConfig,
    /// From a trusted proxy, a PROXY protocol header that is missing,
    /// malformed, truncated, oversized or slow: closed without a reply.
    BadProxyHeader,
}

impl Outcome {
    /// The limit this outcome means was hit, if any.
    pub fn limit(self) -> Option<Limit> {
        match self {
            Outcome::Overloaded | Outcome::Shed => Some(Limit::MaxHandshakes),
            Outcome::NoDescriptors => Some(Limit::OpenFiles),
            Outcome::SourceLimit => Some(Limit::MaxHandshakesPerSource),
            Outcome::Timeout => Some(Limit::NameTimeout),
            Outcome::Busy => Some(Limit::MaxInstances),
            Outcome::SessionsFull => Some(Limit::MaxSessions),
            Outcome::StartRate => Some(Limit::MaxStartsPerSecond),
            Outcome::NoTurn => Some(Limit::MaxStartingUnits),
            Outcome::SourceBusy => Some(Limit::MaxInstancesPerSource),
            Outcome::SourceSessionsFull => Some(Limit::MaxSessionsPerSource),
            _ => None,
        }
    }

    /// Whether the entry of each such connection is written where it
    /// happens, with what only that place knows: a session's start (by its
    /// launcher, with its unit or process), a failure to start one and a
    /// service that cannot be started (with the cause).
    pub fn logged_where_it_happens(self) -> bool {
        matches!(
            self,
            Outcome::Served | Outcome::Unavailable | Outcome::SpawnFailed
        )
    }

    /// Whether the client was refused: each refusal gets an entry of its
    /// own up to its source's share. Not a help request, a client that
    /// closed before it was answered, nor a start that failed.
    pub fn is_refusal(self) -> bool {
        !matches!(
            self,
            Outcome::Served | Outcome::Help | Outcome::Closed | Outcome::SpawnFailed
        )
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
            Outcome::Shed => "shed",
            Outcome::NoDescriptors => "no-descriptors",
            Outcome::NoTurn => "no-turn",
            Outcome::SourceBusy => "source-busy",
            Outcome::SourceSessionsFull => "source-sessions-full",
            Outcome::InvalidConfig => "invalid-config",
            Outcome::BadProxyHeader => "bad-proxy-header",
        }
    }
}

/// Counts how a connection ended, and logs it. A session's start is
/// logged by its launcher, with its unit or process; a failure to start
/// one where it happens, with its cause. A refusal gets an entry of its
/// own while its source has refusal entries left
/// ([`REFUSALS`](crate::log::budget::REFUSALS)), and is counted in the
/// periodic summary either way; help and closed connections are only
/// counted.
fn record(state: &State, peer: SocketAddr, service: Option<&str>, outcome: Outcome) {
    record_with(state, peer, service, outcome, None);
}

/// As [`record`], with the cause of a refusal for its entry.
fn record_with(
    state: &State,
    peer: SocketAddr,
    service: Option<&str>,
    outcome: Outcome,
    cause: Option<String>,
) {
    match outcome {
        Outcome::Served => state.stats.served.fetch_add(1, Ordering::Relaxed),
        Outcome::Help | Outcome::Closed => 0,
        _ => state.stats.refused.fetch_add(1, Ordering::Relaxed),
    };
    if let Some(limit) = outcome.limit() {
        state.stats.hits.hit(limit);
    }
    if outcome == Outcome::Served {
        return;
    }
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let outcome_str = outcome.as_str();
    state.summary.record(outcome_str, peer.ip());
    if outcome.logged_where_it_happens() {
        return;
    }
    let name = service.unwrap_or("");
    let service = escaped(name);
    let what: &dyn std::fmt::Display = if name.is_empty() {
        &"connection"
    } else {
        &service
    };
    let limit = LimitNote(outcome.limit());
    let cause = cause.map(|c| format!(": {c}")).unwrap_or_default();
    macro_rules! entry {
        ($level:ident) => {
            tracing::$level!(
                tcpmux_service = %service,
                remote_addr = %peer.ip(),
                remote_port = peer.port(),
                outcome = %outcome_str,
                "{what} from {peer}: {outcome_str}{limit}{cause}"
            )
        };
    }
    if outcome.is_refusal() && crate::log::budget::REFUSALS.admit(peer.ip(), Instant::now()) {
        entry!(info);
    } else {
        entry!(debug);
    }
}

/// " (max_handshakes_per_source)": the limit a refusal ran into.
struct LimitNote(Option<Limit>);

impl std::fmt::Display for LimitNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(limit) => write!(f, " ({})", limit.key()),
            None => Ok(()),
        }
    }
}

/// Logs a service that could not be started for a client, with the cause:
/// a warning when it cannot start for anyone now (`unavailable`, a
/// refusal), an error when its start failed.
fn log_failure(
    service: &Service,
    peer: SocketAddr,
    outcome: Outcome,
    cause: &dyn std::fmt::Display,
) {
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    macro_rules! entry {
        ($level:ident) => {
            tracing::$level!(
                tcpmux_service = %service.name,
                remote_addr = %peer.ip(),
                remote_port = peer.port(),
                outcome = %outcome.as_str(),
                "{} from {peer}: {}: service \"{}\": {cause}",
                service.name, outcome.as_str(), service.name
            )
        };
    }
    if outcome.is_refusal() {
        entry!(warn);
    } else {
        entry!(error);
    }
}

/// Runs one handshake to its end. `early` is what a look at the socket
/// without waiting found of a trusted proxy's header and of the request
/// line. `who` is the client: a trusted proxy's header replaces it, here
/// and only here, for everything after (limits, access lists, the
/// session's variables, the log).
async fn handshake(
    socket: std::net::TcpStream,
    early: Early,
    who: &mut Who,
    state: &State,
    mut fds: FdGuard,
    waiting: WaitingPlace,
) -> Outcome {
    let config = state.config.load_full();
    let limit = config.tcpmux.name_timeout;
    // The header and the line together must come within name_timeout.
    let deadline = tokio::time::Instant::now() + limit;
    // What was not all there at accept is looked for once more before the
    // socket goes on the event loop: a balancer writes its header and its
    // client's line apart, and the rest has often come by the time the
    // task runs.
    let header_here = match early {
        Early::HeaderPending => tcpmux::take_ready_header_and_line(&socket),
        Early::Line(_) => Ok(None),
    };
    let early = match early {
        Early::Line(Ok(None)) => Early::Line(tcpmux::take_ready_request_line(&socket)),
        early => early,
    };
    let mut client = ClientSocket::Plain(socket);
    let ready = match early {
        Early::Line(ready) => ready,
        // The header is waited for on the event loop unless it is here
        // now; then the client it names takes the balancer's place, as at
        // accept.
        Early::HeaderPending => {
            let (header, line) = match header_here {
                Ok(Some(both)) => both,
                Err(HandshakeError::ProxyHeader(e)) => {
                    who.cause = Some(e.to_string());
                    return leave_or_shed(client, fds, waiting, Outcome::BadProxyHeader);
                }
                Err(_) => return Outcome::Closed,
                Ok(None) => {
                    let mut stream = match client.registered() {
                        Ok(stream) => stream,
                        Err(e) => {
                            tracing::warn!(
                                "connection from {}: cannot wait for its PROXY header: {e}",
                                who.peer
                            );
                            return Outcome::Closed;
                        }
                    };
                    let read = tokio::select! {
                        read = tokio::time::timeout_at(deadline, tcpmux::read_proxy_header(&mut stream)) => Some(read),
                        () = waiting.shed() => None,
                    };
                    client = ClientSocket::Registered(stream);
                    let header = match read {
                        None => return leave_or_shed(client, fds, waiting, Outcome::Shed),
                        Some(Ok(Ok(header))) => header,
                        Some(Ok(Err(HandshakeError::ProxyHeader(e)))) => {
                            who.cause = Some(e.to_string());
                            return leave_or_shed(client, fds, waiting, Outcome::BadProxyHeader);
                        }
                        Some(Ok(Err(_))) => return Outcome::Closed,
                        Some(Err(_)) => {
                            who.cause = Some(HeaderError::Slow.to_string());
                            return leave_or_shed(client, fds, waiting, Outcome::BadProxyHeader);
                        }
                    };
                    (header, Ok(None))
                }
            };
            // Judged by the configuration in force now that it is here: a
            // reload may have taken the balancer out of trusted_proxies.
            if !state
                .config
                .load()
                .tcpmux
                .trusted_proxies
                .trusts(who.peer.ip())
            {
                who.cause = Some(format!(
                    "{} is no longer in trusted_proxies (the configuration was reloaded)",
                    who.peer.ip()
                ));
                return leave_or_shed(client, fds, waiting, Outcome::BadProxyHeader);
            }
            let mut arrival = Arrival {
                peer: who.peer,
                local: None,
                early: None,
                header_pending: false,
            };
            arrival.believe(header);
            if arrival.peer != who.peer {
                let key = source_key(arrival.peer.ip(), config.tcpmux.ipv6_source_prefix);
                who.peer = arrival.peer;
                who.local = arrival.local;
                let Some(place) = state
                    .sources
                    .try_enter(key, config.tcpmux.max_handshakes_per_source)
                else {
                    let outcome = Outcome::SourceLimit;
                    return leave_then_refuse(
                        client,
                        fds,
                        waiting,
                        reply::SOURCE_LIMIT,
                        limit,
                        outcome,
                    )
                    .await;
                };
                // The balancer's place is given back: the client holds its own.
                who.source_place = place;
            }
            // The master list in force now, skipped at accept for the
            // balancer, judges the client before its line is waited for.
            if !state.config.load().tcpmux.acl.permits(who.peer.ip()) {
                return leave_then_refuse(
                    client,
                    fds,
                    waiting,
                    reply::DENIED,
                    limit,
                    Outcome::Denied,
                )
                .await;
            }
            line
        }
    };
    let peer = who.peer;
    let ip = peer.ip().to_canonical();
    // A line already there is taken at once, and the socket stays off the
    // event loop; otherwise it waits there for the rest.
    let (stream, read) = match ready {
        Ok(None) => {
            let mut stream = match client.registered() {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(%ip, "connection from {peer}: cannot wait for its name: {e}");
                    return Outcome::Closed;
                }
            };
            let read = tokio::select! {
                line = tokio::time::timeout_at(deadline, tcpmux::read_request_line(&mut stream)) => Some(line),
                () = waiting.shed() => None,
            };
            (ClientSocket::Registered(stream), read)
        }
        ready => (client, Some(Ok(ready.map(Option::unwrap_or_default)))),
    };
    // Shed even when its name came at the same moment: whoever shed it
    // (a new connection, a start short of descriptors) counts on its
    // descriptor.
    if let Some(shed) = waiting.leave() {
        let _ = stream.send_now(reply::OVERLOADED);
        // Closed and given back before whoever shed it is told.
        drop((stream, fds));
        drop(shed);
        return Outcome::Shed;
    }
    // None only when shed, answered above.
    let Some(read) = read else {
        return Outcome::Shed;
    };
    let line = match read {
        Err(_) => return refuse(stream, reply::TIMEOUT, limit, Outcome::Timeout).await,
        Ok(Err(HandshakeError::TooLong)) => {
            return refuse(stream, reply::TOO_LONG, limit, Outcome::TooLong).await;
        }
        Ok(Err(
            HandshakeError::Closed | HandshakeError::Io(_) | HandshakeError::ProxyHeader(_),
        )) => {
            return Outcome::Closed;
        }
        Ok(Ok(line)) => line,
    };
    // The configuration was invalid at startup: whatever was asked, HELP
    // too, nothing is served until a valid one is loaded.
    if state.unavailable_reason().is_some() {
        return refuse(stream, reply::UNAVAILABLE, limit, Outcome::InvalidConfig).await;
    }
    // The request is judged by the configuration in force now that it is
    // here: a reload may have come while the client was sending it.
    let config = state.config.load_full();
    if !config.tcpmux.acl.permits(ip) {
        return refuse(stream, reply::DENIED, limit, Outcome::Denied).await;
    }
    let requested = match tcpmux::parse_request(&line) {
        Ok(Request::Help) => {
            who.name = Some(config::HELP_NAME.to_string());
            return help(stream, &config, ip, limit).await;
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
        who.name = Some(requested);
        return refuse(stream, reply::UNKNOWN, limit, Outcome::Unknown).await;
    };
    who.name = Some(service.name.clone());
    if !service.acl.permits(ip) {
        // HELP hides this service from this client; so does the answer.
        return refuse(stream, reply::UNKNOWN, limit, Outcome::Denied).await;
    }
    // The slot is held, by the source's key too, from here until the
    // session ends: while a unit waits for its turn to start as well.
    let source = source_key(ip, config.tcpmux.ipv6_source_prefix);
    let session_limits = SessionLimits {
        max_instances: service.max_instances,
        max_instances_per_source: service.max_instances_per_source,
        max_sessions: config.tcpmux.max_sessions,
        max_sessions_per_source: config.tcpmux.max_sessions_per_source,
    };
    let acquire = || {
        state
            .sessions
            .try_acquire(&service.name, source, &session_limits)
    };
    // Before a client is refused for a full limit, the places of passed
    // clients their daemons have taken since are given back.
    let acquired = acquire().or_else(|full| {
        if state.pass.settle() {
            acquire()
        } else {
            Err(full)
        }
    });
    let slot = match acquired {
        Ok(slot) => slot,
        Err(Full::Service) => return refuse(stream, reply::BUSY, limit, Outcome::Busy).await,
        Err(Full::All) => {
            return refuse(stream, reply::SESSIONS_FULL, limit, Outcome::SessionsFull).await;
        }
        Err(Full::SourceService) => {
            return refuse(stream, reply::SOURCE_SESSIONS, limit, Outcome::SourceBusy).await;
        }
        Err(Full::SourceAll) => {
            let outcome = Outcome::SourceSessionsFull;
            return refuse(stream, reply::SOURCE_SESSIONS, limit, outcome).await;
        }
    };
    if !state.starts.allow(
        &service.name,
        service.max_starts_per_second,
        source,
        std::time::Instant::now(),
    ) {
        return refuse(stream, reply::START_RATE, limit, Outcome::StartRate).await;
    }
    let launcher = launcher_for(state, service);
    if let Err(e) = launcher.precheck(service) {
        // A refusal (the service cannot start for anyone): an entry with
        // the cause while the source has refusal entries left.
        if crate::log::budget::REFUSALS.admit(ip, Instant::now()) {
            log_failure(service, peer, Outcome::Unavailable, &e);
        }
        return refuse(stream, reply::UNAVAILABLE, limit, Outcome::Unavailable).await;
    }
    // Short of descriptors, the oldest handshakes still waiting for their
    // names give way; only when too few wait is the client refused.
    if !fds
        .grow_for_start(launcher.start_fds(), &state.waiting)
        .await
    {
        return refuse(stream, reply::SESSIONS_FULL, limit, Outcome::NoDescriptors).await;
    }
    let local = match who.local {
        Some(local) => local,
        None => match stream.local_addr() {
            Ok(local) => local,
            Err(_) => return Outcome::Closed,
        },
    };
    let conn = Connection {
        stream,
        peer,
        local,
        reply_timeout: limit,
    };
    // Boxed: the launch futures are large, and every waiting handshake
    // would otherwise carry their space.
    match Box::pin(launcher.launch(Arc::clone(service), conn, slot, fds)).await {
        Ok(()) => Outcome::Served,
        Err(Failed {
            error: LaunchError::ClientGone(_),
            ..
        }) => Outcome::Closed,
        // Overload, summed up like the other limits rather than logged
        // for each client.
        Err(Failed {
            error: LaunchError::NoTurn(_),
            conn,
        }) => match answerable(conn) {
            Some(stream) => refuse(stream, reply::SESSIONS_FULL, limit, Outcome::NoTurn).await,
            None => Outcome::NoTurn,
        },
        // The daemon a forward or pass service hands its clients to cannot
        // take this one (down, slow to accept, its queue full): a refusal a
        // client can cause at will, logged with the cause while its source
        // has refusal entries left, so that a flood of clients does not
        // flood the log.
        Err(Failed {
            error: error @ LaunchError::Backend(_),
            conn,
        }) => {
            if crate::log::budget::REFUSALS.admit(ip, Instant::now()) {
                log_failure(service, peer, Outcome::Unavailable, &error);
            }
            match answerable(conn) {
                Some(stream) => {
                    refuse(stream, reply::UNAVAILABLE, limit, Outcome::Unavailable).await
                }
                None => Outcome::Unavailable,
            }
        }
        Err(Failed { error, conn }) => {
            log_failure(service, peer, Outcome::SpawnFailed, &error);
            if let Some(stream) = answerable(conn) {
                refuse(stream, reply::UNAVAILABLE, limit, Outcome::SpawnFailed).await;
            }
            Outcome::SpawnFailed
        }
    }
}

/// Ends a handshake that is not answered (a bad PROXY header: closed
/// without a reply), or, when it was shed meanwhile, as a shed one.
fn leave_or_shed(
    client: ClientSocket,
    fds: FdGuard,
    waiting: WaitingPlace,
    outcome: Outcome,
) -> Outcome {
    let shed = waiting.leave();
    if shed.is_some() {
        let _ = client.send_now(reply::OVERLOADED);
    }
    // Closed and given back before whoever shed it is told.
    drop((client, fds));
    match shed {
        Some(shed) => {
            drop(shed);
            Outcome::Shed
        }
        None => outcome,
    }
}

/// Refuses a handshake with `text` before its line was waited for, or,
/// when it was shed meanwhile, ends it as a shed one.
async fn leave_then_refuse(
    client: ClientSocket,
    fds: FdGuard,
    waiting: WaitingPlace,
    text: &[u8],
    limit: Duration,
    outcome: Outcome,
) -> Outcome {
    match waiting.leave() {
        Some(shed) => {
            let _ = client.send_now(reply::OVERLOADED);
            drop((client, fds));
            drop(shed);
            Outcome::Shed
        }
        None => {
            // The descriptor is held until the answer is given.
            let outcome = refuse(client, text, limit, outcome).await;
            drop(fds);
            outcome
        }
    }
}

/// The launcher a service uses.
enum Chosen<'a> {
    Exec(&'a ExecLauncher),
    Systemd(&'a SystemdLauncher),
    Forward(&'a ForwardLauncher),
    Pass(&'a PassLauncher),
    /// The systemd launcher was asked for but could not be set up.
    Missing,
}

fn launcher_for<'a>(state: &'a State, service: &Service) -> Chosen<'a> {
    // Under systemd, `auto` is the systemd launcher even while the bus is
    // away: its clients are refused until it is back, never started as
    // tcpmuxd's children (as root) instead.
    match service.launcher {
        LauncherKind::Forward => return Chosen::Forward(&state.forward),
        LauncherKind::Pass => return Chosen::Pass(&state.pass),
        _ => {}
    }
    match (service.launcher.runs_exec(&state.host), state.systemd.get()) {
        (true, _) => Chosen::Exec(&state.exec),
        (false, Some(l)) => Chosen::Systemd(l),
        (false, None) => Chosen::Missing,
    }
}

impl Launcher for Chosen<'_> {
    fn start_fds(&self) -> usize {
        match self {
            Chosen::Exec(l) => l.start_fds(),
            Chosen::Systemd(l) => l.start_fds(),
            Chosen::Forward(l) => l.start_fds(),
            Chosen::Pass(l) => l.start_fds(),
            Chosen::Missing => 0,
        }
    }

    fn precheck(&self, service: &Service) -> Result<(), LaunchError> {
        match self {
            Chosen::Exec(l) => l.precheck(service),
            Chosen::Systemd(l) => l.precheck(service),
            Chosen::Forward(l) => l.precheck(service),
            Chosen::Pass(l) => l.precheck(service),
            Chosen::Missing => Err(LaunchError::Systemd("not available".into())),
        }
    }

    async fn launch(
        &self,
        service: Arc<Service>,
        conn: Connection,
        slot: crate::sessions::SessionSlot,
        fds: FdGuard,
    ) -> Result<(), Failed> {
        match self {
            Chosen::Exec(l) => l.launch(service, conn, slot, fds).await,
            Chosen::Systemd(l) => l.launch(service, conn, slot, fds).await,
            Chosen::Forward(l) => l.launch(service, conn, slot, fds).await,
            Chosen::Pass(l) => l.launch(service, conn, slot, fds).await,
            Chosen::Missing => Err(LaunchError::Systemd("not available".into()).into()),
        }
    }
}

/// The connection a failed launch gave back, ready for an answer: only a
/// client that has heard nothing yet, not even `+`, is told.
fn answerable(conn: Option<std::net::TcpStream>) -> Option<ClientSocket> {
    let socket = conn?;
    socket.set_nonblocking(true).ok()?;
    Some(ClientSocket::Plain(socket))
}

/// Answers a connection refused as it is accepted, without a task: what the
/// client already sent is read and dropped (closing over unread data would
/// reset the connection and could lose the reply), then the reply is
/// written into the empty send buffer and the connection closed.
fn refuse_at_once(stream: &std::net::TcpStream, text: &[u8]) {
    let mut stream = stream;
    let mut sink = [0u8; limits::MAX_LINE_LEN];
    let mut drained = 0;
    while drained < limits::MAX_LINE_LEN {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => drained += n,
            _ => break,
        }
    }
    let _ = stream.write(text);
}

/// Writes a final reply, closes our side, and reads what the client still
/// sends (bounded), so the close does not reset the connection before the
/// client has read the reply. A plain socket goes onto the event loop only
/// when one of these steps has to wait.
///
/// Returns `outcome`, or [`Outcome::Closed`] when the client was gone
/// before it could be told.
async fn refuse(client: ClientSocket, text: &[u8], limit: Duration, outcome: Outcome) -> Outcome {
    let (mut stream, rest, drained) = match client {
        ClientSocket::Registered(stream) => (stream, text, None),
        ClientSocket::Plain(socket) => match refuse_now(&socket, text) {
            Err(_) => return Outcome::Closed,
            Ok(Now::Done) => return outcome,
            Ok(Now::Unwritten(rest)) => match TcpStream::from_std(socket) {
                Ok(stream) => (stream, &text[text.len() - rest..], None),
                Err(_) => return Outcome::Closed,
            },
            Ok(Now::Draining(n)) => match TcpStream::from_std(socket) {
                Ok(stream) => (stream, &text[..0], Some(n)),
                Err(_) => return outcome,
            },
        },
    };
    let total = match drained {
        Some(n) => n,
        None => {
            match timeout(limit, stream.write_all(rest)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Outcome::Closed,
                Err(_) => {
                    reset(&stream);
                    return Outcome::Closed;
                }
            }
            if stream.shutdown().await.is_err() {
                return outcome;
            }
            0
        }
    };
    let until = limits::deadline_in(limits::DRAIN_TIMEOUT.min(limit));
    drain_and_close(stream, total, until, AfterEnd::Close).await;
    outcome
}

/// What [`drain_and_close`] does once the client's end came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterEnd {
    /// Close: the reply was short, and the client took it before it
    /// closed (the usual case, and no syscall more for it).
    Close,
    /// Wait, until the deadline, for the client to take the rest of a long
    /// reply: a client may close its side and still not read.
    AwaitTaken,
}

/// Reads what the client still sends once our side is shut down (at most
/// [`limits::DRAIN_LIMIT`] in all, `total` of it read already) until it
/// closes its side or `until`, then closes. A client that has not taken
/// all of the reply by then (the kernel still holds bytes of it, unsent
/// or unacknowledged) is reset: closed gracefully, the connection would
/// live on in the kernel, with the rest, for as long as the client kept
/// its window shut.
async fn drain_and_close(
    mut stream: TcpStream,
    mut total: usize,
    until: tokio::time::Instant,
    after_end: AfterEnd,
) {
    let drain = async {
        // On the heap (every waiting handshake future would carry it), and
        // never zeroed: read_buf fills the spare capacity.
        let mut buf = Vec::with_capacity(4096);
        while total < limits::DRAIN_LIMIT {
            buf.clear();
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let ended = timeout_at(until, drain).await.is_ok();
    if ended && after_end == AfterEnd::Close {
        return;
    }
    // No event says that the client took it: asked again now and then.
    while holds_unsent(&stream) {
        let now = tokio::time::Instant::now();
        if now >= until {
            reset(&stream);
            return;
        }
        tokio::time::sleep_until(until.min(now + limits::UNTAKEN_REPLY_POLL)).await;
    }
}

/// Whether the kernel still holds bytes we wrote to the connection: not
/// yet sent, or sent and not acknowledged (our FIN too). Asked only when
/// a client did not close in time, never on the way of a prompt one.
fn holds_unsent(socket: &impl std::os::fd::AsFd) -> bool {
    // Unknown: as if it did, so that nothing is left to the kernel.
    crate::probe::unsent(socket) != Some(0)
}

/// Makes the coming close of the connection a reset (SO_LINGER 0), so
/// that the kernel drops what it still holds for a client that did not
/// take it, instead of keeping the socket as an orphan.
fn reset(socket: &impl std::os::fd::AsFd) {
    let _ = rustix::net::sockopt::set_socket_linger(socket, Some(Duration::ZERO));
}

/// The HELP list's lines `ip` may see: the names of the services whose
/// own access list lets it in.
fn visible_to(ip: IpAddr) -> impl Fn(&Arc<Service>) -> Option<&str> {
    move |service| service.acl.permits(ip).then_some(service.name.as_str())
}

/// Answers HELP with the services `ip` may use. A list that fits one
/// chunk (as every list does when the whole one does) is written like a
/// refusal; a longer one by [`write_long_help`], never built whole.
async fn help(stream: ClientSocket, config: &Config, ip: IpAddr, limit: Duration) -> Outcome {
    let visible = visible_to(ip);
    let len = match config.help_len() {
        all if all <= limits::HELP_CHUNK => all,
        _ => tcpmux::help_len(config.services.iter().filter_map(&visible)),
    };
    if len > limits::HELP_CHUNK {
        return write_long_help(stream, &config.services, &visible, limit).await;
    }
    let mut text = vec![0u8; len];
    let (n, _) = HelpCursor::default().fill(&config.services, &visible, &mut text);
    text.truncate(n);
    refuse(stream, &text, limit, Outcome::Help).await
}

/// Writes a HELP list longer than [`limits::HELP_CHUNK`]. The send buffer
/// is capped first (the kernel holds at most
/// [`limits::LONG_REPLY_SEND_BUFFER`] of the list, not a buffer grown to
/// megabytes), then each chunk is generated from the configuration once
/// the client has taken the last: the connection holds no buffer while it
/// waits. All of it, the wait for the client's end too, within `limit`,
/// while the handshake keeps its places (the source's share among them);
/// a client that has not taken it all by then is reset.
async fn write_long_help<'a>(
    stream: ClientSocket,
    services: &'a [Arc<Service>],
    visible: &impl Fn(&'a Arc<Service>) -> Option<&'a str>,
    limit: Duration,
) -> Outcome {
    let until = limits::deadline_in(limit);
    if let Err(e) =
        rustix::net::sockopt::set_socket_send_buffer_size(&stream, limits::LONG_REPLY_SEND_BUFFER)
    {
        // Without the cap, the kernel could take the whole list for a
        // client that never reads it.
        tracing::debug!("HELP list not sent: cannot cap the connection's send buffer: {e}");
        return Outcome::Closed;
    }
    let Ok(mut stream) = stream.registered() else {
        return Outcome::Closed;
    };
    let mut cursor = HelpCursor::default();
    loop {
        match send_help_chunk(&stream, cursor, services, visible) {
            Ok(Some(next)) => cursor = next,
            Ok(None) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                match timeout_at(until, stream.writable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Outcome::Closed,
                    Err(_) => {
                        reset(&stream);
                        return Outcome::Closed;
                    }
                }
            }
            Err(_) => return Outcome::Closed,
        }
    }
    if stream.shutdown().await.is_err() {
        return Outcome::Help;
    }
    drain_and_close(stream, 0, until, AfterEnd::AwaitTaken).await;
    Outcome::Help
}

/// Sends the list's next chunk from `cursor` as far as the send buffer
/// takes it, without waiting: the cursor past what was sent, or `None`
/// once the list is all sent. The chunk lives on the stack for this call
/// only.
fn send_help_chunk<'a>(
    stream: &TcpStream,
    cursor: HelpCursor,
    services: &'a [Arc<Service>],
    visible: &impl Fn(&'a Arc<Service>) -> Option<&'a str>,
) -> std::io::Result<Option<HelpCursor>> {
    let mut chunk = [0u8; limits::HELP_CHUNK];
    let (n, after) = cursor.fill(services, visible, &mut chunk);
    if n == 0 {
        return Ok(None);
    }
    let sent = stream.try_write(&chunk[..n])?;
    Ok(Some(if sent == n {
        after
    } else {
        cursor.advance(services, visible, sent)
    }))
}

/// How far [`refuse_now`] got without waiting.
enum Now {
    /// Written, shut down, and the client's end (or the drain's limit)
    /// read: nothing left to wait for.
    Done,
    /// This many bytes of the reply did not fit yet.
    Unwritten(usize),
    /// Written and shut down; this many bytes drained, the client's end
    /// still to come.
    Draining(usize),
}

/// The steps of [`refuse`] that need no waiting, on a plain socket.
fn refuse_now(socket: &std::net::TcpStream, text: &[u8]) -> std::io::Result<Now> {
    use rustix::io::Errno;
    use rustix::net::{RecvFlags, SendFlags, Shutdown, recv, send};
    let mut written = 0;
    while written < text.len() {
        match send(
            socket,
            &text[written..],
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(n) => written += n,
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Ok(Now::Unwritten(text.len() - written)),
            Err(e) => return Err(e.into()),
        }
    }
    if rustix::net::shutdown(socket, Shutdown::Write).is_err() {
        return Ok(Now::Done);
    }
    // Usually nothing yet: the client reads the reply before it closes.
    // One buffer at most here (this may run in the accept loop): whatever
    // more the client sent is for its task to drain.
    let mut sink = [0u8; limits::MAX_LINE_LEN];
    loop {
        match recv(socket, &mut sink[..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => return Ok(Now::Done),
            Ok((n, _)) => return Ok(Now::Draining(n)),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Ok(Now::Draining(0)),
            Err(_) => return Ok(Now::Done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_turn_is_a_limit_summed_up_not_logged_for_each_client() {
        assert_eq!(Outcome::NoTurn.limit(), Some(Limit::MaxStartingUnits));
        assert!(!Outcome::NoTurn.logged_where_it_happens());
        assert!(Outcome::NoTurn.is_refusal());
        assert!(Outcome::Unavailable.is_refusal());
        assert!(!Outcome::SpawnFailed.is_refusal());
        assert_eq!(Outcome::NoTurn.as_str(), "no-turn");
        assert_eq!(Limit::MaxStartingUnits.key(), "max_starting_units");
    }
}
