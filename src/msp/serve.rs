//! The MSP listeners: TCP connections carrying one or more messages, and
//! datagrams. Replies follow the RFCs: version B over TCP gets `+` or
//! `-reason`, NUL-terminated, for every message; over UDP only a delivered
//! message to a named recipient gets `+`, and everything else silence;
//! version A gets nothing over TCP, and over UDP its datagram echoed
//! whether or not it was delivered (RFC 1159), unless a rate limit
//! refused it.

use super::deliver::{self, Envelope, Transport};
use super::guard::{Claim, Dedup, KeyedRate, RetransmissionKey, source_key};
use super::message::{self, Message, Version, decode};
use crate::admission::{Gauge, Limit, PerSource};
use crate::limits;
use crate::log::escaped;
use crate::server::State;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The reasons given when a rate limit refuses a message.
const RATE_REASON: &str = "too many messages from your address; slow down";
const RECIPIENT_RATE_REASON: &str = "too many messages for this recipient; try again later";
const TOTAL_RATE_REASON: &str = "too many messages; try again later";
/// For a copy that arrived while its first copy was being handled, when
/// that one then got no answer.
const UNANSWERED_COPY_REASON: &str = "an earlier copy of this message was not accepted";

/// What MSP keeps between messages.
#[derive(Debug)]
pub struct MspState {
    dedup: Mutex<Dedup<Verdict>>,
    per_source: KeyedRate<IpAddr>,
    per_recipient: KeyedRate<String>,
    total: KeyedRate<()>,
    tcp_connections: Arc<Gauge>,
    tcp_per_source: Arc<PerSource>,
    udp_in_flight: Arc<Semaphore>,
    pub delivered: AtomicU64,
    pub refused: AtomicU64,
}

impl Default for MspState {
    fn default() -> Self {
        MspState {
            dedup: Mutex::new(Dedup::new(limits::MSP_DEDUP_CAPACITY)),
            per_source: KeyedRate::new(limits::MSP_MAX_TRACKED_SOURCES),
            per_recipient: KeyedRate::new(limits::MSP_MAX_TRACKED_SOURCES),
            total: KeyedRate::new(1),
            tcp_connections: Arc::default(),
            tcp_per_source: Arc::new(PerSource::default()),
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
    Refused(String),
    /// Refused by a rate limit: over UDP always silence (a flood is not
    /// echoed), and not remembered as a retransmission's answer.
    Limited(Limit, &'static str),
}

/// Checks, de-duplicates, rate-limits and delivers one message, and logs
/// the outcome. A UDP retransmission of a version B message gets the
/// verdict of its first copy, and is not delivered again.
pub async fn accept_message(
    state: &State,
    msg: &Message,
    peer: SocketAddr,
    transport: Transport,
) -> Verdict {
    let config = state.config.load_full();
    let settings = &config.msp;
    let msp = &state.msp;
    let mut retransmission = false;
    let verdict = 'verdict: {
        if let Err(reason) = message::check_content(msg) {
            break 'verdict Verdict::Refused(reason);
        }
        if msg.recipient.is_empty() && !settings.console {
            break 'verdict Verdict::Refused(
                "no recipient given, and console messages are disabled".into(),
            );
        }
        // Only UDP clients retransmit; over TCP every message counts.
        let first =
            if transport == Transport::Udp && msg.version() == Version::B && !msg.cookie.is_empty()
            {
                let key = RetransmissionKey::new(peer.ip(), msg);
                let claim = lock(&msp.dedup).claim(key, settings.dedup_window, Instant::now());
                match claim {
                    Claim::First(first) => Some(first),
                    Claim::Done(verdict) => {
                        retransmission = true;
                        break 'verdict verdict;
                    }
                    Claim::Pending(mut pending) => {
                        retransmission = true;
                        let outcome = pending.wait_for(Option::is_some).await;
                        break 'verdict match outcome.ok().and_then(|v| v.clone()) {
                            Some(verdict) => verdict,
                            // Its first copy was limited or given up: no answer.
                            None => Verdict::Limited(Limit::MspRate, UNANSWERED_COPY_REASON),
                        };
                    }
                }
            } else {
                None
            };
        let verdict = check_rates(state, settings, msg, peer.ip()).unwrap_or(Verdict::Delivered);
        let verdict = if verdict == Verdict::Delivered {
            let envelope = Envelope {
                message: msg,
                peer,
                transport,
            };
            let runner = if state.host.under_systemd {
                deliver::Runner::Systemd(state.systemd.get())
            } else {
                deliver::Runner::Exec
            };
            match deliver::deliver(settings, &envelope, runner).await {
                Ok(()) => Verdict::Delivered,
                Err(reason) => Verdict::Refused(reason),
            }
        } else {
            verdict
        };
        // A limited message is not remembered: its next copy is checked
        // again (dropping `first` tells any copy waiting meanwhile).
        if let Some(first) = first
            && !matches!(verdict, Verdict::Limited(..))
        {
            first.send_replace(Some(verdict.clone()));
        }
        verdict
    };
    log_outcome(state, msg, peer, transport, &verdict, retransmission);
    verdict
}

/// The rate limits, per source, per recipient and in total: the verdict
/// when one refuses.
fn check_rates(
    state: &State,
    settings: &crate::config::MspSettings,
    msg: &Message,
    ip: IpAddr,
) -> Option<Verdict> {
    let msp = &state.msp;
    let config = state.config.load();
    let source = source_key(ip, config.tcpmux.ipv6_source_prefix);
    let (limit, reason) = if !msp.per_source.allow(&source, settings.rate_per_minute) {
        (Limit::MspRate, RATE_REASON)
    } else if !msp.per_recipient.allow(
        &decode(&msg.recipient).to_lowercase(),
        settings.recipient_rate_per_minute,
    ) {
        (Limit::MspRecipientRate, RECIPIENT_RATE_REASON)
    } else if !msp.total.allow(&(), settings.total_rate_per_minute) {
        (Limit::MspTotalRate, TOTAL_RATE_REASON)
    } else {
        return None;
    };
    state.stats.hits.hit(limit);
    Some(Verdict::Limited(limit, reason))
}

fn log_outcome(
    state: &State,
    msg: &Message,
    peer: SocketAddr,
    transport: Transport,
    verdict: &Verdict,
    retransmission: bool,
) {
    let msp = &state.msp;
    let (outcome, reason) = match verdict {
        // A flood of refusals is summed up with the other limits instead.
        Verdict::Limited(_, reason) => {
            tracing::debug!(remote_addr = %peer.ip().to_canonical(), "MSP: {reason}");
            return;
        }
        _ if retransmission => ("duplicate", ""),
        Verdict::Delivered => {
            msp.delivered.fetch_add(1, Ordering::Relaxed);
            ("delivered", "")
        }
        Verdict::Refused(reason) => {
            msp.refused.fetch_add(1, Ordering::Relaxed);
            ("refused", reason.as_str())
        }
    };
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
}

/// The TCP reply to a version B message: `+` or `-reason`, ended by NUL.
pub fn tcp_reply(verdict: &Verdict) -> Vec<u8> {
    let mut out = match verdict {
        Verdict::Delivered => b"+".to_vec(),
        Verdict::Limited(_, reason) => format!("-{reason}").into_bytes(),
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
        let config = state.config.load();
        let source = source_key(peer.ip(), config.tcpmux.ipv6_source_prefix);
        let Some(place) = state
            .msp
            .tcp_per_source
            .try_enter(source, config.msp.max_connections_per_source)
        else {
            state.stats.hits.hit(Limit::MspConnectionsPerSource);
            tracing::debug!(remote_addr = %peer.ip().to_canonical(), "MSP: too many connections from this source");
            continue;
        };
        let max = config.msp.max_connections;
        drop(config);
        let Some(connection) = state.msp.tcp_connections.try_enter(max) else {
            state.stats.hits.hit(Limit::MspConnections);
            tracing::debug!(remote_addr = %peer.ip().to_canonical(), "MSP: too many connections");
            continue;
        };
        let state = Arc::clone(&state);
        tracker.spawn(async move {
            let _places = (place, connection);
            handle_tcp(stream, peer, &state).await;
        });
    }
}

/// Serves one connection: each message must arrive whole within
/// `idle_timeout` of the previous reply (or of the connection's start),
/// however it is cut into reads, and the connection ends after
/// `connection_timeout`.
async fn handle_tcp(mut stream: TcpStream, peer: SocketAddr, state: &State) {
    use tokio::time::timeout_at;
    let config = state.config.load_full();
    let settings = &config.msp;
    let deadline = limits::deadline_in(settings.connection_timeout);
    let mut message_deadline = limits::deadline_in(settings.idle_timeout).min(deadline);
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
                    let write = timeout_at(deadline, stream.write_all(&reply)).await;
                    if !matches!(write, Ok(Ok(()))) {
                        return;
                    }
                }
                message_deadline = limits::deadline_in(settings.idle_timeout).min(deadline);
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
                    let _ = timeout_at(deadline, stream.write_all(&reply)).await;
                }
                return;
            }
        }
        match timeout_at(message_deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Err(_) => {
                tracing::debug!(
                    remote_addr = %peer.ip().to_canonical(),
                    "MSP: connection closed, no whole message within idle_timeout or connection_timeout"
                );
                return;
            }
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
            let reply: Option<Vec<u8>> = match (msg.version(), &verdict) {
                (_, Verdict::Limited(..)) => None,
                // RFC 1159: the data received, delivered or not; never
                // larger than the request.
                (Version::A, _) => Some(datagram),
                (Version::B, Verdict::Delivered) if !msg.recipient.is_empty() => {
                    Some(b"+\0".to_vec())
                }
                (Version::B, _) => None,
            };
            if let Some(reply) = reply {
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}
