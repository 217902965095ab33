//! The `forward` launcher: each connection is relayed to a daemon that
//! already runs, at the fixed address of the service's `forward` key.
//!
//! Only that address is ever connected to: nothing the client sends
//! chooses where its bytes go, so tcpmuxd is no open proxy. The backend
//! must have accepted before a plus-mode client is told `+`; a refused or
//! slow connect leaves the client unanswered, for `-Service unavailable`.
//!
//! The pair is then relayed both ways by one task. Each direction copies
//! through a small buffer, made at its first read; once a read fills it
//! (bulk), the direction moves its bytes with splice(2) through a pipe of
//! its own (no copy through tcpmuxd's memory), while a pipe is free. A
//! short exchange thus makes no pipe at all. What the client sent behind
//! its request line is still in its socket (the handshake never reads past
//! the line end), so it reaches the backend first, after the PROXY header
//! when there is one.
//! An end of one side's writing is passed on to the other once everything
//! before it was; a reset is passed on as a reset; a pair on which no byte
//! moved for the service's `idle_timeout` is closed. The session's slot
//! and descriptors are held until both sides are closed.

use super::{Connection, Failed, LaunchError, Launcher, register};
use crate::admission::FdGuard;
use crate::config::{Backend, Forward, ForwardAddress, ProxyVersion, Service};
use crate::limits::{
    FORWARD_CONNECT_TIMEOUT, FORWARD_COPY_BUFFER, FORWARD_MAX_PIPES, FORWARD_PIPE_SIZE,
    FORWARD_RECEIVE_BUFFER, FORWARD_RESET_LOOK, FORWARD_TURN, FORWARD_UNSENT,
};
use crate::server::Outcome;
use crate::sessions::SessionSlot;
use rustix::io::Errno;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// Descriptors the daemon holds for a forwarded pair: the client's
/// connection, the backend's, and the two ends of each direction's pipe
/// (counted from the start: a direction may take its pipe at any time).
pub const FORWARD_SESSION_FDS: usize = 6;

/// The forward launcher.
#[derive(Debug, Default)]
pub struct ForwardLauncher;

impl Launcher for ForwardLauncher {
    fn precheck(&self, service: &Service) -> Result<(), LaunchError> {
        forward_of(service).map(|_| ())
    }

    fn start_fds(&self) -> usize {
        FORWARD_SESSION_FDS
    }

    async fn launch(
        &self,
        service: Arc<Service>,
        conn: Connection,
        slot: SessionSlot,
        fds: FdGuard,
    ) -> Result<(), Failed> {
        let forward = forward_of(&service)?.clone();
        let to = &forward.to;
        let header = forward
            .proxy_protocol
            .map(|version| proxy_header(version, conn.peer, conn.local))
            .transpose();
        let header = match header {
            Ok(header) => header.unwrap_or_default(),
            Err(e) => {
                return Err(Failed {
                    error: LaunchError::Backend(format!("backend {to}: PROXY header: {e}")),
                    conn: conn.unanswered(),
                });
            }
        };
        let backend = match tokio::time::timeout(FORWARD_CONNECT_TIMEOUT, connect(to)).await {
            Ok(Ok(backend)) => backend,
            Ok(Err(e)) => {
                return Err(Failed {
                    error: LaunchError::Backend(format!("backend {to}: cannot connect: {e}")),
                    conn: conn.unanswered(),
                });
            }
            Err(_) => {
                return Err(Failed {
                    error: LaunchError::Backend(format!(
                        "backend {to}: did not accept the connection within {}",
                        humantime::format_duration(FORWARD_CONNECT_TIMEOUT)
                    )),
                    conn: conn.unanswered(),
                });
            }
        };
        // The backend took the connection: only now is a plus-mode client
        // told `+`. A dedicated service's backend answers itself.
        let conn = conn.send_plus(&service).await?;
        let peer = SocketAddr::new(conn.peer.ip().to_canonical(), conn.peer.port());
        let client = conn
            .stream
            .into_std()
            .map(OwnedFd::from)
            .map_err(LaunchError::Socket)?;
        keep_unsent_low(&client).map_err(LaunchError::Socket)?;
        let relay = Relay::new(client, backend, header).map_err(|e| {
            LaunchError::Backend(format!("backend {to}: cannot relay the connection: {e}"))
        })?;
        tracing::info!(
            tcpmux_service = %service.name,
            remote_addr = %peer.ip(),
            remote_port = peer.port(),
            outcome = Outcome::Served.as_str(),
            backend = %to,
            "{} from {peer}: session started, forwarded to {to}",
            service.name
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let (end, bytes) = relay.run(forward.idle_timeout).await;
            // Both sides are closed: the pair no longer counts.
            drop(slot);
            drop(fds);
            log_end(&service, peer, &forward, end, bytes, started.elapsed());
        });
        Ok(())
    }
}

/// The service's backend, or why it has none.
fn forward_of(service: &Service) -> Result<&Forward, LaunchError> {
    match &service.backend {
        Some(Backend::Forward(forward)) => Ok(forward),
        _ => Err(LaunchError::Backend(
            "no backend address (the forward key) for launcher = \"forward\"".into(),
        )),
    }
}

/// Connects to the backend without blocking the runtime, and puts the
/// connection on the event loop once, for the relay too. A Unix socket
/// whose listen queue is full refuses at once (`EAGAIN`); a TCP connect
/// may take a while (the caller bounds it). On loopback the handshake is
/// usually over by the time connect(2) returns `EINPROGRESS`: one look
/// saves the trip through the event loop then.
async fn connect(to: &ForwardAddress) -> std::io::Result<AsyncFd<OwnedFd>> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType, sockopt};
    let family = match to {
        ForwardAddress::Tcp(addr) if addr.is_ipv4() => AddressFamily::INET,
        ForwardAddress::Tcp(_) => AddressFamily::INET6,
        ForwardAddress::Unix(_) => AddressFamily::UNIX,
    };
    let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
    let socket = rustix::net::socket_with(family, SocketType::STREAM, flags, None)?;
    let started = match to {
        ForwardAddress::Tcp(addr) => {
            // The relay passes on what it has at once; Nagle's delay would
            // only hold back the small writes of interactive protocols.
            sockopt::set_tcp_nodelay(&socket, true)?;
            keep_unsent_low(&socket)?;
            rustix::net::connect(&socket, addr)
        }
        ForwardAddress::Unix(path) => rustix::net::connect(&socket, &SocketAddrUnix::new(path)?),
    };
    match started {
        Ok(()) => return register(socket),
        Err(Errno::INPROGRESS) => {}
        Err(e) => return Err(e.into()),
    }
    let socket = register(socket)?;
    loop {
        match connect_ended(socket.get_ref()) {
            // Writable with no error: connected, nothing more to ask.
            Some(true) => return Ok(socket),
            Some(false) => break,
            None => socket.writable().await?.clear_ready(),
        }
    }
    match sockopt::socket_error(&socket)? {
        Ok(()) => Ok(socket),
        Err(e) => Err(e.into()),
    }
}

/// Bounds what a TCP connection of a pair holds unsent
/// ([`FORWARD_UNSENT`]), from its start: its send queue never grows to
/// what the kernel's tuning would allow. (A Unix stream socket's queue is
/// bounded by the kernel's default send buffer already.)
fn keep_unsent_low(socket: &OwnedFd) -> std::io::Result<()> {
    socket2::SockRef::from(socket).set_tcp_notsent_lowat(FORWARD_UNSENT)
}

/// Fixes the receive buffer of a TCP connection of a pair
/// ([`FORWARD_RECEIVE_BUFFER`]) once the pair first waits for a side to
/// take bytes: until then tcpmuxd reads all that comes, and the queue
/// stays short whatever the buffer's size; from then on what the other
/// side sends fills a bounded buffer, not one the kernel's tuning grew.
/// A short exchange that never waits spends no call on it.
fn fix_receive_buffer(socket: &AsyncFd<OwnedFd>) {
    // Not an error to act on: a TCP socket takes any size (the kernel
    // clamps it), and a Unix one's receiving side has no use for it.
    let _ = socket2::SockRef::from(socket.get_ref()).set_recv_buffer_size(FORWARD_RECEIVE_BUFFER);
}

/// Whether the connect of `fd` has ended, without waiting: none while it
/// goes on (or when the poll itself fails: the event loop is asked), true
/// when the socket is writable with no error, false when it failed (the
/// error is then read from the socket).
fn connect_ended(fd: &OwnedFd) -> Option<bool> {
    use rustix::event::PollFlags;
    let got = crate::probe::poll_now(fd, PollFlags::OUT)?;
    if got.intersects(PollFlags::ERR | PollFlags::HUP) {
        Some(false)
    } else if got.contains(PollFlags::OUT) {
        Some(true)
    } else {
        None
    }
}

/// The PROXY header that names the client's connection, `peer` to
/// `local`, to the backend (a Unix one too: the header describes the
/// client's connection, not the backend's).
pub fn proxy_header(
    version: ProxyVersion,
    peer: SocketAddr,
    local: SocketAddr,
) -> std::io::Result<Vec<u8>> {
    let (source, destination) = one_family(peer, local);
    Ok(match version {
        ProxyVersion::V1 => ppp::v1::Addresses::from((source, destination))
            .to_string()
            .into_bytes(),
        ProxyVersion::V2 => {
            use ppp::v2::{Builder, Command, Protocol, Version};
            Builder::with_addresses(
                Version::Two | Command::Proxy,
                Protocol::Stream,
                (source, destination),
            )
            .build()?
        }
    })
}

/// Both addresses in one family, as a header holds them: IPv4 where both
/// are (IPv4-mapped IPv6 read as IPv4), else both IPv6.
fn one_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let (a, b) = (canonical(a), canonical(b));
    let v6 = |s: SocketAddr| match s {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

fn canonical(s: SocketAddr) -> SocketAddr {
    SocketAddr::new(s.ip().to_canonical(), s.port())
}

/// One side of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Backend,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
        }
    }
}

/// How a forwarded pair ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Both sides ended their writing, and all of it was passed on.
    Closed,
    /// The client reset its connection; the backend's was reset too.
    ResetByClient,
    /// The backend reset its connection; the client's was reset too.
    ResetByBackend,
    /// Nothing moved either way for the service's `idle_timeout`.
    Idle,
    /// A failure of the relay itself: both connections were reset.
    Error(String),
}

impl End {
    /// The journal's `FORWARD_END=`.
    pub fn as_str(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::ResetByClient => "client-reset",
            End::ResetByBackend => "backend-reset",
            End::Idle => "idle-timeout",
            End::Error(_) => "error",
        }
    }
}

impl From<Stop> for End {
    fn from(stop: Stop) -> End {
        match stop {
            Stop::Reset(Side::Client) => End::ResetByClient,
            Stop::Reset(Side::Backend) => End::ResetByBackend,
            Stop::Error(cause) => End::Error(cause),
        }
    }
}

/// Bytes passed on each way: from the client to the backend, and back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    pub to_backend: u64,
    pub to_client: u64,
}

fn log_end(
    service: &Service,
    peer: SocketAddr,
    forward: &Forward,
    end: End,
    bytes: Moved,
    took: Duration,
) {
    let how = match &end {
        End::Closed => "both sides closed".to_string(),
        End::ResetByClient => "reset by the client".to_string(),
        End::ResetByBackend => "reset by the backend".to_string(),
        End::Idle => format!(
            "idle for {} (idle_timeout), both sides closed",
            humantime::format_duration(forward.idle_timeout)
        ),
        End::Error(cause) => format!("error: {cause}"),
    };
    // Whole milliseconds: humantime would print every nanosecond.
    let took = Duration::from_millis(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
    macro_rules! entry {
        ($level:ident) => {
            tracing::$level!(
                tcpmux_service = %service.name,
                remote_addr = %peer.ip(),
                remote_port = peer.port(),
                backend = %forward.to,
                forward_end = end.as_str(),
                bytes_to_backend = bytes.to_backend,
                bytes_to_client = bytes.to_client,
                duration_ms = took.as_millis() as u64,
                "{} from {peer}: session ended, forwarded to {}: {how}; {} bytes from the \
                 client, {} bytes to it, in {}",
                service.name,
                forward.to,
                bytes.to_backend,
                bytes.to_client,
                humantime::format_duration(took),
            )
        };
    }
    match end {
        End::Error(_) => entry!(warn),
        _ => entry!(info),
    }
}

/// Why a direction stopped short of its end.
enum Stop {
    /// This side reset its connection.
    Reset(Side),
    /// Anything else: the cause.
    Error(String),
}

/// A forwarded pair: both connections on the event loop, and a direction
/// for each way. A pair dropped before its end (tcpmuxd stops) resets
/// both connections: neither side is to take a stream cut short for a
/// complete one.
pub struct Relay {
    client: AsyncFd<OwnedFd>,
    backend: AsyncFd<OwnedFd>,
    up: Direction,
    down: Direction,
    /// Its end was passed on to both sides (`close`).
    closed: bool,
}

/// Forwarded pairs being relayed now.
static RELAYS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many forwarded pairs tcpmuxd relays now: they end with it.
pub fn relaying() -> usize {
    RELAYS.load(std::sync::atomic::Ordering::Acquire)
}

impl Drop for Relay {
    fn drop(&mut self) {
        RELAYS.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if !self.closed {
            reset(&self.client);
            reset(&self.backend);
        }
    }
}

/// Has the close of `fd` reset its connection instead of ending it.
fn reset(fd: &AsyncFd<OwnedFd>) {
    let _ = rustix::net::sockopt::set_socket_linger(fd, Some(Duration::ZERO));
}

/// Pipes of forwarded pairs now, at most [`FORWARD_MAX_PIPES`].
static PIPES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A direction's place among those relaying through pipes, given back
/// with its pipe.
struct PipePlace;

impl PipePlace {
    fn take() -> Option<PipePlace> {
        use std::sync::atomic::Ordering;
        PIPES
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < FORWARD_MAX_PIPES).then_some(n + 1)
            })
            .ok()
            .map(|_| PipePlace)
    }
}

impl Drop for PipePlace {
    fn drop(&mut self) {
        PIPES.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Relay {
    /// A relay of `client` and `backend` (both non-blocking), `prefix`
    /// sent to the backend before anything of the client's.
    pub fn new(
        client: OwnedFd,
        backend: AsyncFd<OwnedFd>,
        prefix: Vec<u8>,
    ) -> std::io::Result<Relay> {
        let mut up = Direction::new(Side::Client, Side::Backend);
        up.prefix = prefix;
        let client = register(client)?;
        RELAYS.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(Relay {
            client,
            backend,
            up,
            down: Direction::new(Side::Backend, Side::Client),
            closed: false,
        })
    }

    /// Relays until both sides are closed, one is reset, the pair is idle
    /// for `idle`, or an error; then closes both connections (a reset of
    /// one side, an error, and bytes left undelivered at the idle
    /// timeout are passed on as resets).
    pub async fn run(mut self, idle: Duration) -> (End, Moved) {
        let mut last = Instant::now();
        let mut moved = 0u64;
        let sleep = tokio::time::sleep_until(last + idle);
        tokio::pin!(sleep);
        // Armed while a direction holds bytes its peer does not take.
        let look = tokio::time::sleep_until(last + FORWARD_RESET_LOOK);
        tokio::pin!(look);
        let mut looking = false;
        // The pair has waited for a side to take bytes at least once.
        let mut waited = false;
        let end = poll_fn(|cx| {
            let up = self
                .up
                .poll(cx, &self.client, &self.backend, self.down.finished);
            let down = self
                .down
                .poll(cx, &self.backend, &self.client, self.up.finished);
            match (up, down) {
                (Poll::Ready(Err(stop)), _) | (_, Poll::Ready(Err(stop))) => {
                    return Poll::Ready(End::from(stop));
                }
                (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(End::Closed),
                _ => {}
            }
            let now_moved = self.up.moved + self.down.moved;
            if now_moved != moved {
                moved = now_moved;
                last = Instant::now();
            }
            // A direction that waits to pass bytes on reads nothing more
            // from its side meanwhile: a reset there (or of the side that
            // takes nothing) is looked for now and then instead.
            if self.up.held() > 0 || self.down.held() > 0 {
                if !waited {
                    waited = true;
                    fix_receive_buffer(&self.client);
                    fix_receive_buffer(&self.backend);
                }
                if !looking {
                    look.as_mut().reset(Instant::now() + FORWARD_RESET_LOOK);
                    looking = true;
                }
                while look.as_mut().poll(cx).is_ready() {
                    if let Some(stop) = self.reset_seen() {
                        return Poll::Ready(End::from(stop));
                    }
                    look.as_mut().reset(Instant::now() + FORWARD_RESET_LOOK);
                }
            } else {
                looking = false;
            }
            // The timer is moved only when it fires: not for every write.
            while sleep.as_mut().poll(cx).is_ready() {
                if Instant::now() >= last + idle {
                    return Poll::Ready(End::Idle);
                }
                sleep.as_mut().reset(last + idle);
            }
            Poll::Pending
        })
        .await;
        let bytes = Moved {
            to_backend: self.up.moved,
            to_client: self.down.moved,
        };
        self.close(&end);
        (end, bytes)
    }

    /// A reset (or another failure) of either connection, without
    /// reading: the error the kernel holds for it.
    fn reset_seen(&self) -> Option<Stop> {
        use rustix::event::PollFlags;
        for (side, fd) in [(Side::Client, &self.client), (Side::Backend, &self.backend)] {
            let failed = crate::probe::poll_now(fd, PollFlags::empty())
                .is_some_and(|got| got.contains(PollFlags::ERR));
            if !failed {
                continue;
            }
            match rustix::net::sockopt::socket_error(fd) {
                Ok(Ok(())) => {}
                Ok(Err(Errno::CONNRESET | Errno::PIPE)) => return Some(Stop::Reset(side)),
                Ok(Err(e)) | Err(e) => {
                    return Some(Stop::Error(format!("the {}: {e}", side.name())));
                }
            }
        }
        None
    }

    fn close(mut self, end: &End) {
        self.closed = true;
        match end {
            End::Closed => {}
            End::ResetByClient => reset(&self.backend),
            End::ResetByBackend => reset(&self.client),
            End::Error(_) => {
                reset(&self.client);
                reset(&self.backend);
            }
            End::Idle => {
                // What could not be delivered is not left to the kernel.
                if self.up.held() > 0 {
                    reset(&self.backend);
                }
                if self.down.held() > 0 {
                    reset(&self.client);
                }
            }
        }
        // Dropped here: both connections and the pipes are closed.
    }
}

impl Carrier {
    /// A copy, its buffer made at the first read.
    fn copying() -> Carrier {
        Carrier::Buffer {
            buf: Vec::new(),
            start: 0,
        }
    }

    /// splice(2) through a pipe of its own, when one of the
    /// [`FORWARD_MAX_PIPES`] is free and the kernel makes it.
    fn piped() -> Option<Carrier> {
        use rustix::pipe::{PipeFlags, fcntl_setpipe_size, pipe_with};
        let place = PipePlace::take()?;
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
        // Bounded; the default capacity stands when the kernel refuses
        // (above fs.pipe-max-size, or over the user's pipe quota).
        let _ = fcntl_setpipe_size(&write, FORWARD_PIPE_SIZE);
        Some(Carrier::Pipe {
            read,
            write,
            _place: place,
        })
    }
}

/// How a direction carries its bytes.
enum Carrier {
    /// splice(2) in and out of a pipe: the bytes never enter tcpmuxd's
    /// memory.
    Pipe {
        read: OwnedFd,
        write: OwnedFd,
        _place: PipePlace,
    },
    /// A copy through a buffer: what the last read took, from `start` on
    /// not passed on yet. No room is made until the first read, and none
    /// is ever zeroed.
    Buffer { buf: Vec<u8>, start: usize },
}

/// One way of a pair: from one side's connection to the other's.
struct Direction {
    from: Side,
    to: Side,
    carrier: Carrier,
    /// Bytes taken from `from` and not yet passed on.
    held: usize,
    /// Sent before anything else (the PROXY header), and how much of it
    /// went.
    prefix: Vec<u8>,
    prefix_sent: usize,
    /// The last read filled the copy buffer: the direction moves bulk,
    /// and takes a pipe once what it holds is passed on.
    bulk: bool,
    /// splice(2) cannot read `from`: the direction copies for good.
    copy_only: bool,
    /// `from` ended its writing.
    eof: bool,
    /// The end was passed on: this direction is done.
    finished: bool,
    /// Bytes passed on.
    moved: u64,
}

impl Direction {
    /// A direction `from` one side `to` the other, copying until it moves
    /// bulk.
    fn new(from: Side, to: Side) -> Direction {
        Direction {
            from,
            to,
            carrier: Carrier::copying(),
            held: 0,
            prefix: Vec::new(),
            prefix_sent: 0,
            bulk: false,
            copy_only: false,
            eof: false,
            finished: false,
            moved: 0,
        }
    }

    /// Bytes taken and not passed on, the prefix's rest included.
    fn held(&self) -> usize {
        self.held + (self.prefix.len() - self.prefix_sent)
    }

    /// Moves what can be moved now, up to [`FORWARD_TURN`] bytes: ready
    /// when this direction is done (its end passed on) or stopped;
    /// pending, with a wake-up asked for, when it waits for one of the
    /// sockets or its turn is over (the other way goes next). When the
    /// other direction is done (`last`), this one's end is passed on by
    /// the close of both connections that follows at once, not by a
    /// shutdown of its own.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &AsyncFd<OwnedFd>,
        to: &AsyncFd<OwnedFd>,
        last: bool,
    ) -> Poll<Result<(), Stop>> {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        let turn_ends = self.moved + FORWARD_TURN;
        loop {
            // What is held goes first, all of it: then the pipe is empty
            // when it is filled again, and a splice that cannot go on
            // means the socket has nothing more.
            while self.held() > 0 {
                let mut guard = ready!(to.poll_write_ready(cx)).map_err(|e| self.error(e))?;
                match self.write_out(to.get_ref()) {
                    Ok(()) => {}
                    Err(Errno::AGAIN) => guard.clear_ready(),
                    Err(Errno::INTR) => {}
                    Err(Errno::PIPE | Errno::CONNRESET) => {
                        return Poll::Ready(Err(Stop::Reset(self.to)));
                    }
                    Err(e) => return Poll::Ready(Err(self.error(e.into()))),
                }
            }
            if self.eof {
                // The other side may be gone already (ENOTCONN): nothing
                // is left to tell it. Everything `to` sent was read (its
                // end too, as `last` says), so the close ends the
                // connection with a FIN, not a reset.
                if !last {
                    let _ = rustix::net::shutdown(to.get_ref(), rustix::net::Shutdown::Write);
                }
                self.finished = true;
                return Poll::Ready(Ok(()));
            }
            if self.moved >= turn_ends {
                // Everything taken was passed on: the other way's turn.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if std::mem::take(&mut self.bulk) {
                // All held was passed on: the buffer is empty, and the
                // pipe takes over (the buffer stays when none is free).
                if let Some(pipe) = Carrier::piped() {
                    self.carrier = pipe;
                }
            }
            let mut guard = ready!(from.poll_read_ready(cx)).map_err(|e| self.error(e))?;
            match self.read_in(from.get_ref()) {
                // splice(2) stops at TCP urgent data for good, and says 0
                // there, not EAGAIN, once the peer's FIN is in: past the
                // mark, only a read goes on (leaving out the urgent byte,
                // as a plain read does). That read copies; the pipe, empty
                // now, is let go, and bulk takes one again.
                Ok(0) | Err(Errno::AGAIN)
                    if matches!(self.carrier, Carrier::Pipe { .. })
                        && crate::probe::at_urgent_mark(from.get_ref()) =>
                {
                    self.carrier = Carrier::copying();
                }
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.held = n;
                    // A copy that did not fill the buffer took all the
                    // socket had (as tokio's own streams reckon): the next
                    // read waits for the event loop instead of finding
                    // EAGAIN. What comes meanwhile marks it ready again.
                    // But a read also stops short at TCP urgent data, with
                    // the rest of its segment behind the mark and nothing
                    // more to mark the socket ready: read on then.
                    if matches!(&self.carrier, Carrier::Buffer { buf, .. } if n < buf.capacity())
                        && !crate::probe::at_urgent_mark(from.get_ref())
                    {
                        guard.clear_ready();
                    }
                }
                Err(Errno::AGAIN) => guard.clear_ready(),
                Err(Errno::INTR) => {}
                Err(Errno::INVAL) if matches!(self.carrier, Carrier::Pipe { .. }) => {
                    // A socket splice cannot read: copied from now on.
                    self.carrier = Carrier::copying();
                    self.copy_only = true;
                }
                Err(Errno::CONNRESET) => return Poll::Ready(Err(Stop::Reset(self.from))),
                Err(e) => return Poll::Ready(Err(self.error(e.into()))),
            }
        }
    }

    /// Takes what `from` has (the pipe or buffer is empty): the count, 0
    /// at its end.
    fn read_in(&mut self, from: &OwnedFd) -> Result<usize, Errno> {
        use rustix::pipe::{SpliceFlags, splice};
        match &mut self.carrier {
            Carrier::Pipe { write, .. } => splice(
                from,
                None,
                &*write,
                None,
                FORWARD_PIPE_SIZE,
                SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
            ),
            Carrier::Buffer { buf, start } => {
                buf.clear();
                buf.reserve_exact(FORWARD_COPY_BUFFER);
                *start = 0;
                let (n, _) = rustix::net::recv(
                    from,
                    rustix::buffer::spare_capacity(buf),
                    rustix::net::RecvFlags::DONTWAIT,
                )?;
                self.bulk = n == buf.capacity() && !self.copy_only;
                Ok(n)
            }
        }
    }

    /// Passes on what it can of the prefix, then of what is held.
    fn write_out(&mut self, to: &OwnedFd) -> Result<(), Errno> {
        use rustix::net::{SendFlags, send};
        use rustix::pipe::{SpliceFlags, splice};
        let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
        if self.prefix_sent < self.prefix.len() {
            self.prefix_sent += send(to, &self.prefix[self.prefix_sent..], flags)?;
            return Ok(());
        }
        let n = match &mut self.carrier {
            Carrier::Pipe { read, .. } => splice(
                &*read,
                None,
                to,
                None,
                self.held,
                SpliceFlags::NONBLOCK | SpliceFlags::MOVE,
            )?,
            Carrier::Buffer { buf, start } => {
                let n = send(to, &buf[*start..*start + self.held], flags)?;
                *start += n;
                n
            }
        };
        self.held -= n;
        self.moved += n as u64;
        Ok(())
    }

    fn error(&self, e: std::io::Error) -> Stop {
        Stop::Error(format!(
            "relaying from the {} to the {}: {e}",
            self.from.name(),
            self.to.name()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// Relays a pair of socketpairs both ways, a prefix first, each way
    /// ended by a half-close: what each end read, and how the relay ended.
    async fn relay_both_ways(copying: bool) -> (Vec<u8>, Vec<u8>, End, Moved) {
        let (mut client, client_side) = UnixStream::pair().unwrap();
        let (backend_side, mut backend) = UnixStream::pair().unwrap();
        client_side.set_nonblocking(true).unwrap();
        backend_side.set_nonblocking(true).unwrap();
        let mut relay = Relay::new(
            client_side.into(),
            register(backend_side.into()).unwrap(),
            b"HEADER ".to_vec(),
        )
        .unwrap();
        if copying {
            // As after splice(2) refused a socket (EINVAL).
            for d in [&mut relay.up, &mut relay.down] {
                d.copy_only = true;
            }
        }
        let run = tokio::spawn(relay.run(Duration::from_secs(60)));
        let peers = tokio::task::spawn_blocking(move || {
            let up: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
            client.write_all(&up).unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
            backend.write_all(b"answer").unwrap();
            backend.shutdown(std::net::Shutdown::Write).unwrap();
            let (mut at_backend, mut at_client) = (Vec::new(), Vec::new());
            backend.read_to_end(&mut at_backend).unwrap();
            client.read_to_end(&mut at_client).unwrap();
            (at_backend, at_client)
        });
        let (at_backend, at_client) = peers.await.unwrap();
        let (end, moved) = run.await.unwrap();
        (at_backend, at_client, end, moved)
    }

    /// Bulk (100,000 bytes up) moves to a pipe after its first full
    /// buffer; a copy-only direction stays a copy; the short answer down
    /// never takes a pipe.
    #[tokio::test]
    async fn both_carriers_relay_each_way_in_order_and_pass_the_ends_on() {
        for copying in [false, true] {
            let (at_backend, at_client, end, moved) = relay_both_ways(copying).await;
            let mut want = b"HEADER ".to_vec();
            want.extend((0..100_000u32).map(|i| i as u8));
            assert!(at_backend == want, "copying: {copying}");
            assert_eq!(at_client, b"answer");
            assert_eq!(end, End::Closed);
            assert_eq!(
                moved,
                Moved {
                    to_backend: 100_000,
                    to_client: 6
                }
            );
        }
    }

    /// Bytes queued at `end` for its peer to read, without blocking: how
    /// many went, up to `len`.
    fn queue(mut end: &UnixStream, len: usize) -> usize {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size_force(end, 2 * len)
            .or_else(|_| rustix::net::sockopt::set_socket_send_buffer_size(end, 2 * len));
        end.set_nonblocking(true).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0;
        while sent < len {
            match end.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    }

    /// A client that always has more to send does not keep what the
    /// backend sends from moving: each way gets its turn in every round
    /// of the relay, however much the other has. (Before, the way polled
    /// first could spend the task's whole budget, and the other waited
    /// until the backend's buffers were full: with a backend that stops
    /// reading while its write waits, a pair could stall.)
    #[tokio::test]
    async fn a_direction_that_always_has_bytes_leaves_the_other_its_turn() {
        let (client, client_side) = UnixStream::pair().unwrap();
        let (backend_side, backend) = UnixStream::pair().unwrap();
        for relay_end in [&client_side, &backend_side] {
            relay_end.set_nonblocking(true).unwrap();
            let big = 16 << 20;
            let _ = rustix::net::sockopt::set_socket_send_buffer_size_force(relay_end, big);
        }
        let up = queue(&client, 8 << 20);
        let down = queue(&backend, 1 << 20);
        assert!(up > 0 && down > 0);
        let relay = Relay::new(
            client_side.into(),
            register(backend_side.into()).unwrap(),
            Vec::new(),
        )
        .unwrap();
        let mut run = Box::pin(relay.run(Duration::from_secs(60)));
        // The event loop sees both connections readable and writable.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(run.as_mut().poll(&mut cx).is_pending());
        let mut came = vec![0u8; 2 << 20];
        let got = (&client).read(&mut came).unwrap_or(0);
        assert!(got > 0, "nothing came down while {up} bytes went up");
    }

    #[test]
    fn headers_name_the_clients_connection_in_one_family() {
        let peer: SocketAddr = "192.0.2.7:51234".parse().unwrap();
        let local: SocketAddr = "[::ffff:198.51.100.1]:1".parse().unwrap();
        assert_eq!(
            proxy_header(ProxyVersion::V1, peer, local).unwrap(),
            b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 1\r\n"
        );
        let v2 = proxy_header(ProxyVersion::V2, peer, local).unwrap();
        let mut want = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
        want.extend_from_slice(&[192, 0, 2, 7, 198, 51, 100, 1]);
        want.extend_from_slice(&51234u16.to_be_bytes());
        want.extend_from_slice(&1u16.to_be_bytes());
        assert_eq!(v2, want);
        // An IPv4 client of an IPv6 address: both written as IPv6.
        let local6: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        assert_eq!(
            proxy_header(ProxyVersion::V1, peer, local6).unwrap(),
            b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 51234 1\r\n"
        );
    }
}
