//! The `pass` launcher: each connection is handed, as a descriptor, to a
//! daemon that already runs and listens on the service's `pass` socket, a
//! Unix `SOCK_SEQPACKET` socket.
//!
//! tcpmuxd keeps one connection to each such socket, made when first
//! needed and again when it drops. Each client is one message on it: the
//! client's connection in `SCM_RIGHTS` (one descriptor, in blocking mode)
//! and as payload the variables a program gets ([`session_environment`]),
//! one `KEY=VALUE\n` line each ([`pass_message`]). Sends on one connection
//! are serialized, so that nothing fills its queue between the check that
//! it has room and the send.
//!
//! A plus-mode client hears `+` only once its message is sure to be
//! taken: under the connection's lock, (1) the connection is writable now
//! (poll, no wait), (2) `+` goes to the client, (3) the message is sent.
//! For a connected `SOCK_SEQPACKET` socket Linux reports it writable only
//! while what it holds unreceived is at most a quarter of its send buffer,
//! and a send fails with `EAGAIN` only once that reaches the whole buffer:
//! with no other sender between (1) and (3), (3) does not find the queue
//! full. (The receiver's `net.unix.max_dgram_qlen` applies to datagram
//! sockets, not to a connected seqpacket pair.) The `+` is in the client's
//! connection before the daemon can receive it, so the daemon may speak at
//! once.
//!
//! A pass holds its session's place until the daemon has taken its
//! message, not only until it is sent ([`waiting`]): the places of the
//! clients still in a daemon's queue count for every limit and share, so
//! one source cannot fill the queue of a daemon that falls behind. Taken
//! clients are let go, their places given back, whenever tcpmuxd looks at
//! the queue: at each pass, before a client would be refused for a full
//! limit ([`PassLauncher::settle`]), and every [`PASS_SETTLE_INTERVAL`]
//! while any waits. No wake-up is spent on each message the daemon takes.
//! A connection the daemon shut down while clients wait in it is kept,
//! retired, until they are taken or it is closed; and tcpmuxd shuts down
//! its own reading side at once, so that nothing the daemon sends (its own
//! socket, say) can wait, unread, in tcpmuxd.

mod waiting;

use super::{Connection, Failed, LaunchError, Launcher, session_environment};
use crate::admission::FdGuard;
use crate::config::{Backend, Service};
use crate::limits::{PASS_MAX_RETIRED, PASS_SETTLE_INTERVAL};
use crate::probe::{poll_now, unsent};
use crate::server::Outcome;
use crate::sessions::SessionSlot;
use crate::sync::lock;
use crate::tcpmux::reply;
use rustix::event::PollFlags;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
    SocketFlags, SocketType, connect, sendmsg, socket_with,
};
use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use waiting::Waiting;

/// Descriptors the daemon holds while it passes a connection: the
/// client's, and its connection to the receiving daemon's socket.
pub const PASS_START_FDS: usize = 2;

/// Longest payload of a pass message. The longest there is (a service name
/// of the longest kind and two IPv6 addresses) takes under 450 bytes; a
/// receiver that reads with a buffer this large never gets one cut.
pub const MAX_PASS_MESSAGE: usize = 1024;

/// The pass launcher: one connection to each receiving daemon's socket.
#[derive(Debug, Default)]
pub struct PassLauncher {
    links: Mutex<HashMap<PathBuf, Arc<Link>>>,
}

/// tcpmuxd's connection to one receiving daemon's socket. The lock is held
/// for a pass's check and sends, and for a look at the queue, never across
/// a wait.
#[derive(Debug)]
struct Link {
    path: PathBuf,
    state: Mutex<LinkState>,
}

#[derive(Debug, Default)]
struct LinkState {
    /// The connection: none until it is first needed, or after it
    /// dropped.
    socket: Option<OwnedFd>,
    /// The clients sent on it that the daemon has not taken yet.
    waiting: Waiting<SessionSlot>,
    /// Connections given up while clients still waited in them, oldest
    /// first, at most [`PASS_MAX_RETIRED`]: a daemon that shut its end
    /// down may still take them, so they keep their places until it does
    /// or closes the connection (which closes them).
    retired: VecDeque<(OwnedFd, Waiting<SessionSlot>)>,
    /// Whether a task looks at the queues now and then while any waits.
    watched: bool,
}

impl LinkState {
    /// Lets the clients the daemon has taken go, from the retired
    /// connections too: what the connection's queue holds now, in bytes
    /// (none when unknown, or with no connection).
    fn settle(&mut self) -> Option<usize> {
        self.retired.retain_mut(|(socket, waiting)| {
            match unsent(socket) {
                Some(queued) => waiting.settle(queued),
                None => waiting.clear(),
            }
            // Closed once none waits.
            !waiting.is_empty()
        });
        let queued = self.socket.as_ref().and_then(unsent)?;
        self.waiting.settle(queued);
        Some(queued)
    }

    /// Clients waiting, in the connection's queue and the retired ones'.
    fn waiting(&self) -> usize {
        self.waiting.len() + self.retired.iter().map(|(_, w)| w.len()).sum::<usize>()
    }

    /// Gives the connection up (the daemon's end is gone or shut down):
    /// a new one is made for the next client. Clients still waiting in it
    /// stay counted while it is kept, retired. (No connection is made
    /// while [`PASS_MAX_RETIRED`] are kept, so they never grow past it.)
    fn retire(&mut self) {
        let Some(socket) = self.socket.take() else {
            return;
        };
        let waiting = std::mem::take(&mut self.waiting);
        if !waiting.is_empty() {
            self.retired.push_back((socket, waiting));
        }
    }
}

impl PassLauncher {
    fn link(&self, path: &Path) -> Arc<Link> {
        let mut links = lock(&self.links);
        // Looked up first: the key is copied only for a new link.
        if let Some(link) = links.get(path) {
            return Arc::clone(link);
        }
        Arc::clone(links.entry(path.to_path_buf()).or_insert_with(|| {
            Arc::new(Link {
                path: path.to_path_buf(),
                state: Mutex::new(LinkState::default()),
            })
        }))
    }

    /// Lets go the waiting clients that their daemons have taken since
    /// tcpmuxd last looked, giving their places back: whether any was.
    /// Asked before a client is refused for a full limit, so that a place
    /// only tcpmuxd's bookkeeping still holds never refuses anyone.
    /// A pass in progress finishes first (its link's lock): a client it
    /// sent is let go here too once taken.
    pub fn settle(&self) -> bool {
        let links: Vec<Arc<Link>> = lock(&self.links).values().cloned().collect();
        let mut gone = false;
        for link in links {
            let mut state = lock(&link.state);
            let waited = state.waiting();
            state.settle();
            gone |= state.waiting() < waited;
        }
        gone
    }

    /// Closes the connections to sockets no service of `config` passes to
    /// any more (after a reload).
    pub fn retain(&self, config: &crate::config::Config) {
        lock(&self.links).retain(|path, _| {
            config
                .services
                .iter()
                .any(|s| matches!(&s.backend, Some(Backend::Pass(p)) if p == path))
        });
    }
}

impl Launcher for PassLauncher {
    fn precheck(&self, _service: &Service) -> Result<(), LaunchError> {
        Ok(())
    }

    fn start_fds(&self) -> usize {
        PASS_START_FDS
    }

    async fn launch(
        &self,
        service: Arc<Service>,
        conn: Connection,
        slot: SessionSlot,
        fds: FdGuard,
    ) -> Result<(), Failed> {
        let Some(Backend::Pass(path)) = &service.backend else {
            return Err(Failed {
                error: LaunchError::Backend("no pass socket configured".into()),
                conn: conn.unanswered(),
            });
        };
        let message = match pass_message(&session_environment(&service, conn.peer, conn.local)) {
            Ok(message) => message,
            Err(cause) => {
                return Err(Failed {
                    error: LaunchError::Backend(format!("pass message: {cause}")),
                    conn: conn.unanswered(),
                });
            }
        };
        // The daemon gets an ordinary blocking socket, as a program does.
        let (socket, peer, _) = conn.into_blocking()?;
        let link = self.link(path);
        let where_to = path.display();
        match link.pass(&socket, &message, service.plus, slot) {
            Ok(()) => {}
            Err(Refused::Before(cause)) => {
                return Err(Failed {
                    error: LaunchError::Backend(format!("pass socket {where_to}: {cause}")),
                    conn: Some(socket),
                });
            }
            Err(Refused::ClientGone(cause)) => {
                return Err(LaunchError::ClientGone(cause).into());
            }
            Err(Refused::AfterPlus(cause)) => {
                return Err(LaunchError::Backend(format!(
                    "pass socket {where_to}: {cause}; the client, told + already, is closed"
                ))
                .into());
            }
        }
        // The connection is the daemon's now: tcpmuxd no longer sees its
        // end.
        drop((socket, fds));
        let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
        tracing::info!(
            tcpmux_service = %service.name,
            remote_addr = %peer.ip(),
            remote_port = peer.port(),
            outcome = Outcome::Served.as_str(),
            "{} from {peer}: passed to {where_to}",
            service.name
        );
        Ok(())
    }
}

/// Why a client was not passed.
#[derive(Debug)]
enum Refused {
    /// Before anything was said to the client: it can be told
    /// `-Service unavailable`.
    Before(String),
    /// After `+`: the client can only be closed.
    AfterPlus(String),
    /// The client's connection did not take `+`.
    ClientGone(String),
}

/// What a look at the connection to the daemon found.
enum Room {
    Writable,
    Full,
    /// The daemon closed its end (or the connection failed).
    Dropped,
}

impl Link {
    /// Passes `client` with `message`, `+` first for a plus-mode service.
    /// A connection that dropped since the last pass, or is found gone by
    /// the send (after `+` too), is made again once and the client tried
    /// again.
    /// Once sent, the client waits in the daemon's queue with its
    /// session's place (`slot`), until the daemon takes it.
    fn pass(
        self: &Arc<Self>,
        client: &std::net::TcpStream,
        message: &[u8],
        plus: bool,
        slot: SessionSlot,
    ) -> Result<(), Refused> {
        let mut state = lock(&self.state);
        let mut told_plus = false;
        // What went wrong, said as the client can still be told: before
        // `+`, an answer; after it, only a close.
        let refused = |told_plus: bool, cause: String| {
            if told_plus {
                Refused::AfterPlus(cause)
            } else {
                Refused::Before(cause)
            }
        };
        for attempt in 0..2 {
            let retry = attempt == 0;
            let fresh = state.socket.is_none();
            let mut before = state.settle();
            if fresh {
                // A daemon that shut down so many connections with clients
                // in them gets no more until it takes or closes those: it
                // may still take them, so their places are not given back.
                if state.retired.len() >= PASS_MAX_RETIRED {
                    return Err(refused(
                        told_plus,
                        format!(
                            "the receiving daemon shut down {PASS_MAX_RETIRED} of tcpmuxd's \
                             connections with clients still waiting in them; no new one is \
                             made until it takes or closes those"
                        ),
                    ));
                }
                let link = connect_to(&self.path).map_err(|cause| refused(told_plus, cause))?;
                before = unsent(&link);
                state.socket = Some(link);
            }
            let Some(link) = state.socket.as_ref() else {
                unreachable!("connected above");
            };
            match room(link) {
                Room::Writable => {}
                Room::Full => {
                    return Err(refused(
                        told_plus,
                        "queue full: the receiving daemon is not taking connections as fast as \
                         they come"
                            .into(),
                    ));
                }
                // Made again on the retry.
                Room::Dropped if retry && !fresh => {
                    state.retire();
                    continue;
                }
                Room::Dropped => {
                    state.retire();
                    return Err(refused(
                        told_plus,
                        "the receiving daemon closed tcpmuxd's connection at once".into(),
                    ));
                }
            }
            if plus && !told_plus {
                send_plus(client)?;
                told_plus = true;
            }
            match send_with_fd(link, message, client) {
                Ok(()) => {
                    // A queue the kernel cannot measure (never seen on
                    // Linux) cannot tell when the client is taken: its
                    // place is given back now, as if it were.
                    let (Some(before), Some(after)) = (before, unsent(link)) else {
                        return Ok(());
                    };
                    state.waiting.push(slot, message.len(), before, after);
                    if !state.watched {
                        state.watched = true;
                        tokio::spawn(watch(Arc::downgrade(self)));
                    }
                    return Ok(());
                }
                // The daemon's end is gone (closed, or it stopped reading:
                // that still polls writable): nothing was queued, and a
                // new connection is tried once, after `+` too.
                Err(e) if dropped(e) && retry => {
                    state.retire();
                    continue;
                }
                Err(e) => {
                    if dropped(e) {
                        state.retire();
                    }
                    return Err(refused(told_plus, send_error(e)));
                }
            }
        }
        Err(refused(
            told_plus,
            "the receiving daemon dropped tcpmuxd's connection twice".into(),
        ))
    }
}

/// Looks at the queue of `link` every [`PASS_SETTLE_INTERVAL`] while
/// clients wait in it, and lets the taken ones go (their places given
/// back), so that the daemon's quiet times leave no place held. Stops once
/// none waits, or with the link (after a reload).
async fn watch(link: Weak<Link>) {
    loop {
        tokio::time::sleep(PASS_SETTLE_INTERVAL).await;
        let Some(link) = link.upgrade() else {
            return;
        };
        let mut state = lock(&link.state);
        state.settle();
        if state.waiting() == 0 {
            state.watched = false;
            return;
        }
    }
}

/// The errors of a send that mean the daemon's end is gone.
fn dropped(e: Errno) -> bool {
    matches!(
        e,
        Errno::PIPE | Errno::CONNRESET | Errno::CONNREFUSED | Errno::NOTCONN
    )
}

/// A new connection to the daemon's socket, without waiting: a daemon
/// whose backlog is full cannot take this client now.
fn connect_to(path: &Path) -> Result<OwnedFd, String> {
    let address = SocketAddrUnix::new(path).map_err(|e| format!("not a socket address: {e}"))?;
    let link = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .map_err(|e| format!("cannot make a socket: {e}"))?;
    connect(&link, &address).map_err(connect_error)?;
    // tcpmuxd never reads it: nothing the daemon sends can wait there (a
    // descriptor of its own would outlive the daemon in tcpmuxd's queue),
    // and a daemon that writes to it learns its mistake at once (EPIPE).
    let _ = rustix::net::shutdown(&link, rustix::net::Shutdown::Read);
    Ok(link)
}

/// Why the daemon's socket could not be connected to, in words.
fn connect_error(e: Errno) -> String {
    match e {
        Errno::NOENT => "no such socket file: the receiving daemon is not running".into(),
        Errno::CONNREFUSED => {
            "nobody listens on it (connection refused): the receiving daemon is not running".into()
        }
        Errno::AGAIN => {
            "the receiving daemon's backlog is full: it is not accepting connections".into()
        }
        Errno::ACCESS | Errno::PERM => {
            "permission denied: tcpmuxd may not write to the socket file".into()
        }
        Errno::PROTOTYPE => "not a SOCK_SEQPACKET socket (wrong socket type)".into(),
        Errno::NOTSOCK => "not a socket".into(),
        e => format!("cannot connect: {e}"),
    }
}

/// Why a send to the daemon failed, in words.
fn send_error(e: Errno) -> String {
    match e {
        Errno::AGAIN => "queue full: the receiving daemon is not taking connections".into(),
        Errno::TOOMANYREFS => "too many descriptors in flight to receiving daemons (more than \
                               tcpmuxd's limit on open files)"
            .into(),
        e if dropped(e) => format!("the receiving daemon is gone ({e})"),
        e => format!("cannot send: {e}"),
    }
}

/// Whether the connection has room for a message now.
fn room(link: &OwnedFd) -> Room {
    match poll_now(link, PollFlags::OUT) {
        Some(got) if got.intersects(PollFlags::HUP | PollFlags::ERR) => Room::Dropped,
        Some(got) if got.contains(PollFlags::OUT) => Room::Writable,
        Some(_) => Room::Full,
        None => Room::Dropped,
    }
}

/// Writes `+` to the client without waiting: it is three bytes to the
/// empty send buffer of a connection nothing was written to yet, which
/// takes them whole. A connection that does not is closed, not waited for
/// (the link's lock is held).
fn send_plus(client: &std::net::TcpStream) -> Result<(), Refused> {
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    match rustix::net::send(client, reply::PLUS, flags) {
        Ok(n) if n == reply::PLUS.len() => Ok(()),
        Ok(_) => Err(Refused::ClientGone(
            "did not take the + line at once".into(),
        )),
        Err(e) => Err(Refused::ClientGone(format!("cannot be told +: {e}"))),
    }
}

/// Sends `message` with `client`'s descriptor, without waiting.
fn send_with_fd(link: &OwnedFd, message: &[u8], client: &std::net::TcpStream) -> Result<(), Errno> {
    let fds = [client.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(Errno::NOBUFS);
    }
    let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
    let sent = sendmsg(link, &[IoSlice::new(message)], &mut control, flags)?;
    // A seqpacket message goes whole or not at all.
    if sent != message.len() {
        return Err(Errno::MSGSIZE);
    }
    Ok(())
}

/// The payload of a pass message: `KEY=VALUE\n` for each of `variables`,
/// in order. A value with a line end or a NUL, or a message longer than
/// [`MAX_PASS_MESSAGE`], is an error.
pub fn pass_message(variables: &[(&str, String)]) -> Result<Vec<u8>, String> {
    let mut message = Vec::with_capacity(MAX_PASS_MESSAGE);
    for (key, value) in variables {
        if value.contains(['\n', '\r', '\0']) {
            return Err(format!("{key} holds a line end or a NUL"));
        }
        message.extend_from_slice(key.as_bytes());
        message.push(b'=');
        message.extend_from_slice(value.as_bytes());
        message.push(b'\n');
    }
    if message.len() > MAX_PASS_MESSAGE {
        return Err(format!(
            "{} bytes, more than {MAX_PASS_MESSAGE}",
            message.len()
        ));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_NAME_LEN;

    #[test]
    fn the_message_is_key_value_lines_and_the_longest_fits() {
        let v4 = vec![
            ("TCPMUX_SERVICE", "app".to_string()),
            ("REMOTE_ADDR", "192.0.2.1".into()),
            ("REMOTE_PORT", "40000".into()),
        ];
        assert_eq!(
            pass_message(&v4).unwrap(),
            b"TCPMUX_SERVICE=app\nREMOTE_ADDR=192.0.2.1\nREMOTE_PORT=40000\n"
        );
        let v6 = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".to_string();
        let longest = vec![
            ("TCPMUX_SERVICE", "n".repeat(MAX_NAME_LEN)),
            ("REMOTE_ADDR", v6.clone()),
            ("REMOTE_PORT", "65535".into()),
            ("LOCAL_ADDR", v6),
            ("LOCAL_PORT", "65535".into()),
        ];
        let message = pass_message(&longest).unwrap();
        assert!(message.len() < 450, "{}", message.len());
        assert!(pass_message(&[("TCPMUX_SERVICE", "a\nb".into())]).is_err());
        let huge = vec![("TCPMUX_SERVICE", "n".repeat(MAX_PASS_MESSAGE))];
        assert!(pass_message(&huge).unwrap_err().contains("more than"));
    }

    /// What the launcher relies on, on the kernel it runs on: a connected
    /// seqpacket socket that poll calls writable takes the next message
    /// (with a descriptor) without EAGAIN, and is called full well before
    /// its sends fail; the receiver's max_dgram_qlen does not stop it.
    #[test]
    fn writable_predicts_that_a_send_goes_through() {
        use rustix::net::socketpair;
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        let client = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(client.local_addr().unwrap()).unwrap();
        let message = pass_message(&[("REMOTE_ADDR", "192.0.2.1".into())]).unwrap();
        let mut sent = 0;
        while matches!(room(&ours), Room::Writable) {
            send_with_fd(&ours, &message, &client).expect("a writable link takes a message");
            sent += 1;
            assert!(sent < 1_000_000, "never full");
        }
        assert!(matches!(room(&ours), Room::Full));
        let mut more = 0;
        while send_with_fd(&ours, &message, &client).is_ok() {
            more += 1;
            assert!(more < 1_000_000, "sends never fail");
        }
        assert!(more > 0, "full before the sends fail");
        drop(theirs);
        assert!(matches!(room(&ours), Room::Dropped));
        assert!(dropped(send_with_fd(&ours, &message, &client).unwrap_err()));
    }
}
