//! The MSP listeners: TCP connections carrying one or more messages, and
//! datagrams. Replies follow the RFCs exactly: version B over TCP gets `+`
//! or `-reason`, NUL-terminated, for every message; over UDP only a
//! delivered message to a named recipient gets `+`, and everything else
//! silence; version A gets nothing over TCP and its datagram echoed over
//! UDP.

use super::deliver::{self, Envelope, Transport};
use super::guard::{Dedup, DedupKey, RateLimiter, source_key};
use super::message::{self, Message, Version, decode};
use crate::admission::Limit;
use crate::limits;
use crate::log::escaped;
use crate::server::State;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The reason given when a source sends too fast.
const RATE_REASON: &str = "too many messages from your address; slow down";

/// What MSP keeps between messages.
#[derive(Debug)]
pub struct MspState {
    dedup: Mutex<Dedup>,
    rate: Mutex<RateLimiter>,
    tcp_connections: AtomicUsize,
    udp_in_flight: Arc<Semaphore>,
    pub delivered: AtomicU64,
    pub refused: AtomicU64,
}

impl Default for MspState {
    fn default() -> Self {
        MspState {
            dedup: Mutex::new(Dedup::new(limits::MSP_DEDUP_CAPACITY)),
            rate: Mutex::new(RateLimiter::new(limits::MSP_MAX_TRACKED_SOURCES)),
            tcp_connections: AtomicUsize::new(0),
            udp_in_flight: Arc::new(Semaphore::new(limits::MSP_MAX_UDP_IN_FLIGHT)),
            delivered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// A retransmission of a message delivered before: acknowledged again,
    /// not shown again.
    Duplicate,
    Refused(String),
}

/// Checks, rate-limits, de-duplicates and delivers one message, and logs
/// the outcome.
pub async fn accept_message(
    state: &State,
    msg: &Message,
    peer: SocketAddr,
    transport: Transport,
) -> Verdict {
    let config = state.config.load_full();
    let settings = &config.msp;
    let msp = &state.msp;
    let now = Instant::now();
    let verdict = 'verdict: {
        if let Err(reason) = message::check_content(msg) {
            break 'verdict Verdict::Refused(reason);
        }
        if msg.recipient.is_empty() && !settings.console {
            break 'verdict Verdict::Refused(
                "no recipient given, and console messages are disabled".into(),
            );
        }
        let key = (msg.version() == Version::B && !msg.cookie.is_empty())
            .then(|| DedupKey::new(peer.ip(), &msg.sender, &msg.sender_terminal, &msg.cookie));
        if let Some(key) = &key
            && lock(&msp.dedup).contains(key, settings.dedup_window, now)
        {
            break 'verdict Verdict::Duplicate;
        }
        let source = source_key(peer.ip(), config.tcpmux.ipv6_source_prefix);
        if !lock(&msp.rate).allow(source, settings.rate_per_minute, now) {
            state.stats.hits.hit(Limit::MspRate);
            break 'verdict Verdict::Refused(RATE_REASON.into());
        }
        let envelope = Envelope {
            message: msg,
            peer,
            transport,
        };
        let systemd = if state.auto_systemd.load(Ordering::Relaxed) {
            state.systemd.get()
        } else {
            None
        };
        match deliver::deliver(settings, &envelope, systemd).await {
            Ok(()) => {
                if let Some(key) = key {
                    lock(&msp.dedup).insert(key, settings.dedup_window, Instant::now());
                }
                Verdict::Delivered
            }
            Err(reason) => Verdict::Refused(reason),
        }
    };
    let outcome = match &verdict {
        Verdict::Delivered => {
            msp.delivered.fetch_add(1, Ordering::Relaxed);
            "delivered"
        }
        Verdict::Duplicate => "duplicate",
        Verdict::Refused(_) => {
            msp.refused.fetch_add(1, Ordering::Relaxed);
            "refused"
        }
    };
    let reason = match &verdict {
        Verdict::Refused(r) => r.as_str(),
        _ => "",
    };
    // A flood of refusals is summed up with the other limits instead.
    if reason == RATE_REASON {
        tracing::debug!(remote_addr = %peer.ip().to_canonical(), "MSP: {RATE_REASON}");
        return verdict;
    }
    // Every part is the sender's choice: decoded as delivered, escaped.
    let part = |p: &[u8]| escaped(decode(p).as_ref()).to_string();
    let (sender, recipient) = (part(&msg.sender), part(&msg.recipient));
    tracing::info!(
        msp_version = %msg.version().as_char(),
        msp_recipient = %recipient,
        msp_recipient_terminal = %part(&msg.recipient_terminal),
        msp_sender = %sender,
        msp_sender_terminal = %part(&msg.sender_terminal),
        msp_cookie = %part(&msg.cookie),
        remote_addr = %peer.ip().to_canonical(),
        remote_port = peer.port(),
        transport = transport.as_str(),
        outcome,
        "message from {sender}@{} to {recipient}: {outcome}{}{}",
        peer.ip().to_canonical(),
        if reason.is_empty() { "" } else { ": " },
        escaped(reason),
    );
    verdict
}

/// The TCP reply to a version B message: `+` or `-reason`, ended by NUL.
pub fn tcp_reply(verdict: &Verdict) -> Vec<u8> {
    let mut out = match verdict {
        Verdict::Delivered | Verdict::Duplicate => b"+".to_vec(),
        Verdict::Refused(reason) => {
            let clean: String = reason
                .chars()
                .filter(|c| !c.is_control() && *c != '\0')
                .collect();
            format!("-{clean}").into_bytes()
        }
    };
    out.push(0);
    out
}

/// Accepts MSP TCP connections until `shutdown`.
pub async fn serve_tcp(
    listener: TcpListener,
    state: Arc<State>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    while let Some((stream, peer)) = crate::listen::accept(&listener, &shutdown).await {
        if !state.config.load().msp.acl.permits(peer.ip()) {
            // Closed before a byte is read: nothing to answer to.
            tracing::debug!(remote_addr = %peer.ip().to_canonical(), "MSP: [msp] allow/deny refuses");
            continue;
        }
        let max = state.config.load().msp.max_connections;
        if state.msp.tcp_connections.fetch_add(1, Ordering::Relaxed) >= max {
            state.msp.tcp_connections.fetch_sub(1, Ordering::Relaxed);
            state.stats.hits.hit(Limit::MspConnections);
            tracing::debug!(remote_addr = %peer.ip().to_canonical(), "MSP: too many connections");
            continue;
        }
        let state = Arc::clone(&state);
        tracker.spawn(async move {
            handle_tcp(stream, peer, &state).await;
            state.msp.tcp_connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn handle_tcp(mut stream: TcpStream, peer: SocketAddr, state: &State) {
    let config = state.config.load_full();
    let settings = &config.msp;
    let deadline = tokio::time::Instant::now() + settings.connection_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(2 * message::MAX_MESSAGE_LEN);
    let mut chunk = [0u8; 1024];
    loop {
        // A known client ends each message with one extra NUL.
        if buf.first() == Some(&0) {
            buf.remove(0);
        }
        match message::frame(&buf) {
            Ok(Some(len)) => {
                let raw: Vec<u8> = buf.drain(..len).collect();
                let verdict = match message::parse(&raw) {
                    Ok(msg) => accept_message(state, &msg, peer, Transport::Tcp).await,
                    Err(e) => Verdict::Refused(format!("malformed message: {e}")),
                };
                if raw[0] == b'B' {
                    let reply = tcp_reply(&verdict);
                    let write = tokio::time::timeout_at(deadline, stream.write_all(&reply)).await;
                    if !matches!(write, Ok(Ok(()))) {
                        return;
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::info!(
                    remote_addr = %peer.ip().to_canonical(),
                    transport = "tcp",
                    outcome = "malformed",
                    "MSP connection from {}: {e}",
                    peer.ip().to_canonical()
                );
                if buf.first() == Some(&b'B') {
                    let reply = tcp_reply(&Verdict::Refused(format!("malformed message: {e}")));
                    let _ = tokio::time::timeout_at(deadline, stream.write_all(&reply)).await;
                }
                return;
            }
        }
        let idle = tokio::time::Instant::now() + settings.idle_timeout;
        match tokio::time::timeout_at(idle.min(deadline), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Serves MSP datagrams until `shutdown`.
pub async fn serve_udp(
    socket: UdpSocket,
    state: Arc<State>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let socket = Arc::new(socket);
    // One octet more than a message may have (its tolerated extra NUL), and
    // one more to notice anything longer.
    let mut buf = [0u8; message::MAX_MESSAGE_LEN + 2];
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let (n, peer) = match received {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("MSP recv: {e}");
                continue;
            }
        };
        if !state.config.load().msp.acl.permits(peer.ip()) {
            tracing::debug!(remote_addr = %peer.ip().to_canonical(), "MSP: [msp] allow/deny refuses");
            continue;
        }
        let Ok(permit) = Arc::clone(&state.msp.udp_in_flight).try_acquire_owned() else {
            state.stats.hits.hit(Limit::MspDatagramsInFlight);
            continue;
        };
        let datagram = buf[..n].to_vec();
        let (state, socket) = (Arc::clone(&state), Arc::clone(&socket));
        tracker.spawn(async move {
            let _permit = permit;
            let msg = match message::parse(&datagram) {
                Ok(msg) => msg,
                Err(e) => {
                    state.msp.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        remote_addr = %peer.ip().to_canonical(),
                        transport = "udp",
                        outcome = "malformed",
                        "MSP datagram from {}: {e}",
                        peer.ip().to_canonical()
                    );
                    return;
                }
            };
            let verdict = accept_message(&state, &msg, peer, Transport::Udp).await;
            let accepted = matches!(verdict, Verdict::Delivered | Verdict::Duplicate);
            let reply: Option<Vec<u8>> = match msg.version() {
                Version::A if accepted => Some(datagram),
                Version::B if accepted && !msg.recipient.is_empty() => Some(b"+\0".to_vec()),
                _ => None,
            };
            if let Some(reply) = reply {
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}
