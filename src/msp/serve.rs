//! The MSP listeners: TCP connections carrying one or more messages, and
//! datagrams. Replies follow the RFCs: version B over TCP gets `+` or
//! `-reason`, NUL-terminated, for every message; over UDP only a delivered
//! message to a named recipient gets `+`, and everything else silence;
//! version A gets nothing over TCP, and over UDP its datagram echoed when
//! it was delivered (RFC 1159 echoes it whatever became of it; a refusal
//! echoed would make tcpmuxd a reflector).
//!
//! Every message is charged to its source's rate and to the total rate
//! before anything else is decided, so that nothing is answered beyond
//! them. Only a delivery, or a failure to deliver, is logged on its own:
//! everything else a flood can produce joins the periodic summary.

use super::deliver::{self, Envelope, Transport};
use super::guard::{
    Answers, Claim, Dedup, KeyedRate, answerable_source, retransmission_key, source_key,
};
use super::message::{self, Message, Version, decode};
use crate::admission::{Gauge, Limit, PerSource, SourceGuard, Waiting, WaitingPlace};
use crate::limits;
use crate::log::escaped;
use crate::proxy::{HeaderError, ProxyHeader};
use crate::server::State;
use crate::sync::lock;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The reasons given when a rate limit refuses a message.
const RATE_REASON: &str = "too many messages from your address; slow down";
const RECIPIENT_RATE_REASON: &str = "too many messages for this recipient; try again later";
const TOTAL_RATE_REASON: &str = "too many messages; try again later";
const CONNECTION_MESSAGES_REASON: &str = "too many messages on one connection; connect again";
/// While the configuration is invalid and nothing is served.
const UNAVAILABLE_REASON: &str = "service unavailable";
/// For a retransmission whose first copy was not delivered.
const UNANSWERED_COPY_REASON: &str = "an earlier copy of this message was not accepted";

/// What MSP keeps between messages. Every table has a bound:
/// `dedup` and `answers` [`limits::MSP_DEDUP_CAPACITY`] entries each (a
/// digest, a flag and a time: about 5 MiB together when both are full,
/// hash table slack included; with the default rates they hold at most
/// `total_rate_per_minute` times `dedup_window`, 1500, each), the rate
/// tables [`limits::MSP_MAX_TRACKED_SOURCES`] keys each, `tcp_per_source`
/// and `tcp_waiting` one entry per open connection.
#[derive(Debug)]
pub struct MspState {
    /// UDP version B messages seen within `dedup_window`, and whether
    /// each was delivered.
    dedup: Mutex<Dedup<bool>>,
    /// UDP answers sent within `dedup_window`.
    answers: Mutex<Answers>,
    per_source: KeyedRate<IpAddr>,
    per_recipient: KeyedRate<String>,
    total: KeyedRate<()>,
    /// Of the total, what UDP messages took.
    total_udp: KeyedRate<()>,
    tcp_connections: Arc<Gauge>,
    tcp_per_source: Arc<PerSource>,
    /// TCP connections with no whole message in hand, oldest first: at
    /// `max_connections` the oldest gives way to a new connection.
    tcp_waiting: Arc<Waiting>,
    /// The ports MSP datagrams are received on, never answered.
    own_udp_ports: Mutex<Vec<u16>>,
    udp_in_flight: Arc<Semaphore>,
    /// Of those, per source: one source's slow deliveries cannot take
    /// them all.
    udp_in_flight_per_source: Arc<PerSource>,
    pub delivered: AtomicU64,
    pub refused: AtomicU64,
}

impl Default for MspState {
    fn default() -> Self {
        MspState {
            dedup: Mutex::new(Dedup::new(limits::MSP_DEDUP_CAPACITY)),
            answers: Mutex::new(Answers::new(limits::MSP_DEDUP_CAPACITY)),
            per_source: KeyedRate::new(limits::MSP_MAX_TRACKED_SOURCES),
            per_recipient: KeyedRate::new(limits::MSP_MAX_TRACKED_SOURCES),
            total: KeyedRate::new(1),
            total_udp: KeyedRate::new(1),
            tcp_connections: Arc::default(),
            tcp_per_source: Arc::new(PerSource::default()),
            tcp_waiting: Arc::default(),
            own_udp_ports: Mutex::default(),
            udp_in_flight: Arc::new(Semaphore::new(limits::MSP_MAX_UDP_IN_FLIGHT)),
            udp_in_flight_per_source: Arc::new(PerSource::default()),
            delivered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }
}

impl MspState {
    /// Forgets what is past its window in every table, whether or not
    /// messages come: run on a timer.
    pub fn prune(&self, dedup_window: Duration) {
        let now = Instant::now();
        lock(&self.dedup).prune(dedup_window, now);
        lock(&self.answers).prune(dedup_window, now);
        self.per_source.prune();
        self.per_recipient.prune();
    }

    /// Entries in the retransmission and answer tables now.
    pub fn remembered(&self) -> usize {
        lock(&self.dedup).len() + lock(&self.answers).len()
    }
}

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Refused before delivery was tried (content, no recipient,
    /// malformed).
    Refused(String),
    /// Delivery was tried, and failed: the recipient's doing, or the
    /// system's.
    Failed(String),
    /// Refused by a limit: over UDP always silence, and not remembered as
    /// a retransmission's answer.
    Limited(Limit, &'static str),
    /// A UDP retransmission: answered as its first copy was, never
    /// delivered again.
    Duplicate {
        delivered: bool,
    },
}

/// What MSP traffic counts as in the periodic summary. A refusal among
/// them (all but a duplicate) also gets an entry of its own while its
/// source has refusal entries left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Summed {
    Refused,
    Malformed,
    Duplicate,
    /// A rate limit, or `max_messages_per_connection`.
    Limited,
    /// `[msp] allow`/`deny`.
    Denied,
    /// `max_connections` with none to give way, or datagrams in delivery.
    Overloaded,
    SourceLimit,
    /// A silent connection that gave way to a new one.
    Shed,
    /// A datagram from a port that is never answered.
    ServicePort,
    /// A datagram equal to the answer sent to its source: that answer
    /// come back.
    Loop,
    /// From `trusted_proxies`, a PROXY header missing, malformed,
    /// truncated, oversized or not complete within `idle_timeout`.
    BadProxyHeader,
}

impl Summed {
    /// Whether the sender was refused (every one but a retransmission).
    fn is_refusal(self) -> bool {
        self != Summed::Duplicate
    }

    fn as_str(self) -> &'static str {
        match self {
            Summed::Refused => "msp-refused",
            Summed::Malformed => "msp-malformed",
            Summed::Duplicate => "msp-duplicate",
            Summed::Limited => "msp-limited",
            Summed::Denied => "msp-denied",
            Summed::Overloaded => "msp-overloaded",
            Summed::SourceLimit => "msp-source-limit",
            Summed::Shed => "msp-shed",
            Summed::ServicePort => "msp-service-port",
            Summed::Loop => "msp-loop",
            Summed::BadProxyHeader => "msp-bad-proxy-header",
        }
    }
}

/// Counts `what` from `peer` for the summary, and logs it: at info level
/// while its source has refusal entries left
/// ([`REFUSALS`](crate::log::budget::REFUSALS)), else at debug level.
fn sum_up(state: &State, what: Summed, peer: SocketAddr) {
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    state.summary.record(what.as_str(), peer.ip());
    macro_rules! entry {
        ($level:ident) => {
            tracing::$level!(
                remote_addr = %peer.ip(),
                remote_port = peer.port(),
                outcome = %what.as_str(),
                "MSP from {peer}: {}",
                what.as_str()
            )
        };
    }
    if what.is_refusal() && log_refusal(peer) {
        entry!(info);
    } else {
        entry!(debug);
    }
}

/// Whether a refusal from `peer` gets an entry at info level.
fn log_refusal(peer: SocketAddr) -> bool {
    crate::log::budget::REFUSALS.admit(peer.ip(), std::time::Instant::now())
}

/// Charges one message from `ip` to its source's rate, whatever becomes
/// of it: the verdict when the rate refuses it. (The total rate is charged
/// only for messages about to be delivered: junk from any number of
/// sources must not use up what everyone's deliveries share.)
fn charge(state: &State, ip: IpAddr) -> Option<Verdict> {
    let config = state.config.load();
    let source = source_key(ip, config.tcpmux.ipv6_source_prefix);
    if state
        .msp
        .per_source
        .allow(&source, config.msp.rate_per_minute)
    {
        return None;
    }
    state.stats.hits.hit(Limit::MspRate);
    Some(Verdict::Limited(Limit::MspRate, RATE_REASON))
}

/// One message as received, `raw`: charged, parsed, judged, logged. The
/// parsed message comes back with the verdict, when it parsed.
async fn handle_message(
    state: &State,
    raw: &[u8],
    peer: SocketAddr,
    transport: Transport,
) -> (Verdict, Option<Message>) {
    if let Some(limited) = charge(state, peer.ip()) {
        sum_up(state, Summed::Limited, peer);
        return (limited, None);
    }
    match message::parse(raw) {
        Ok(msg) => {
            let verdict = accept_message(state, &msg, peer, transport).await;
            (verdict, Some(msg))
        }
        Err(e) => {
            state.msp.refused.fetch_add(1, Ordering::Relaxed);
            sum_up(state, Summed::Malformed, peer);
            tracing::debug!(remote_addr = %peer.ip().to_canonical(), "MSP: malformed message: {e}");
            (Verdict::Refused(format!("malformed message: {e}")), None)
        }
    }
}

/// Checks, de-duplicates, rate-limits (the total and per recipient: the
/// source's rate is charged before) and delivers one message, and logs
/// the outcome. A UDP retransmission of a version B message gets the
/// answer of its first copy, and is not delivered again.
pub async fn accept_message(
    state: &State,
    msg: &Message,
    peer: SocketAddr,
    transport: Transport,
) -> Verdict {
    let config = state.config.load_full();
    let settings = &config.msp;
    let msp = &state.msp;
    let verdict = 'verdict: {
        // Nothing is delivered while the configuration is invalid; the
        // refusal is not remembered, so a retransmission after the fix is
        // delivered.
        if state.unavailable_reason().is_some() {
            break 'verdict Verdict::Refused(UNAVAILABLE_REASON.into());
        }
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
                let key = retransmission_key(peer.ip(), msg);
                let claim = lock(&msp.dedup).claim(key, settings.dedup_window, Instant::now());
                match claim {
                    Claim::First(first) => Some(first),
                    Claim::Done(delivered) => break 'verdict Verdict::Duplicate { delivered },
                    Claim::Pending(mut pending) => {
                        let outcome = pending.wait_for(Option::is_some).await;
                        // Its first copy was limited or given up: no answer.
                        let delivered = outcome.ok().and_then(|v| *v).unwrap_or(false);
                        break 'verdict Verdict::Duplicate { delivered };
                    }
                }
            } else {
                None
            };
        let verdict = match check_delivery_rates(state, settings, msg, transport) {
            Some(limited) => limited,
            None => {
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
                    Err(reason) => Verdict::Failed(reason),
                }
            }
        };
        // A limited message is not remembered: its next copy is checked
        // again (dropping `first` tells any copy waiting meanwhile).
        if let Some(first) = first
            && !matches!(verdict, Verdict::Limited(..))
        {
            lock(&msp.dedup).settle(first, verdict == Verdict::Delivered);
        }
        verdict
    };
    log_outcome(state, msg, peer, transport, &verdict);
    verdict
}

/// The rate limit per recipient: the verdict when it refuses.
fn check_delivery_rates(
    state: &State,
    settings: &crate::config::MspSettings,
    msg: &Message,
    transport: Transport,
) -> Option<Verdict> {
    let msp = &state.msp;
    // UDP's sources can be forged: it gets half the total, and TCP's
    // senders, whose addresses are real, keep the rest.
    let udp_share = (settings.total_rate_per_minute / UDP_SHARE_OF_TOTAL_DIVISOR).max(1);
    let recipient = decode(&msg.recipient).to_lowercase();
    let (limit, reason) = if transport == Transport::Udp && !msp.total_udp.allow(&(), udp_share)
        || !msp.total.allow(&(), settings.total_rate_per_minute)
    {
        (Limit::MspTotalRate, TOTAL_RATE_REASON)
    } else if !msp
        .per_recipient
        .allow(&recipient, settings.recipient_rate_per_minute)
    {
        (Limit::MspRecipientRate, RECIPIENT_RATE_REASON)
    } else {
        return None;
    };
    state.stats.hits.hit(limit);
    Some(Verdict::Limited(limit, reason))
}

/// UDP messages may take at most this part of `[msp]
/// total_rate_per_minute` (a half).
const UDP_SHARE_OF_TOTAL_DIVISOR: u32 = 2;

/// Logs a delivery or a failure to deliver, each on its own line; sums
/// up the rest.
fn log_outcome(
    state: &State,
    msg: &Message,
    peer: SocketAddr,
    transport: Transport,
    verdict: &Verdict,
) {
    let msp = &state.msp;
    let (outcome, reason, summed) = match verdict {
        Verdict::Delivered => {
            msp.delivered.fetch_add(1, Ordering::Relaxed);
            ("delivered", "", None)
        }
        Verdict::Failed(reason) => {
            msp.refused.fetch_add(1, Ordering::Relaxed);
            ("refused", reason.as_str(), None)
        }
        Verdict::Refused(reason) => {
            msp.refused.fetch_add(1, Ordering::Relaxed);
            ("refused", reason.as_str(), Some(Summed::Refused))
        }
        Verdict::Limited(_, reason) => ("limited", *reason, Some(Summed::Limited)),
        Verdict::Duplicate { .. } => ("duplicate", "", Some(Summed::Duplicate)),
    };
    // Every part is the sender's choice: decoded as delivered, escaped.
    let part = |p: &[u8]| escaped(decode(p).as_ref()).to_string();
    let (sender, recipient) = (part(&msg.sender), part(&msg.recipient));
    let remote_addr = peer.ip().to_canonical();
    macro_rules! entry {
        ($level:ident) => {
            tracing::$level!(
                msp_version = %msg.version().as_char(),
                msp_recipient = %recipient,
                msp_recipient_terminal = %part(&msg.recipient_terminal),
                msp_sender = %sender,
                msp_sender_terminal = %part(&msg.sender_terminal),
                msp_cookie = %part(&msg.cookie),
                %remote_addr,
                remote_port = peer.port(),
                transport = transport.as_str(),
                outcome,
                "message from {}@{remote_addr} to {}: {outcome}{}{}",
                quoted(&sender),
                quoted(&recipient),
                if reason.is_empty() { "" } else { ": " },
                escaped(reason),
            )
        };
    }
    match summed {
        None => entry!(info),
        Some(what) => {
            state.summary.record(what.as_str(), remote_addr);
            if what.is_refusal() && log_refusal(peer) {
                entry!(info);
            } else {
                entry!(debug);
            }
        }
    }
}

/// A part the sender chose, in double quotes (its own quotes escaped) in
/// the text of a log entry: spaces in it cannot pass for the entry's own
/// words or fields (`to victim: delivered remote_addr=...`).
fn quoted(part: &str) -> String {
    format!("\"{}\"", part.replace('"', "\\\""))
}

/// The TCP reply to a version B message: `+` or `-reason`, ended by NUL.
pub fn tcp_reply(verdict: &Verdict) -> Vec<u8> {
    let mut out = match verdict {
        Verdict::Delivered | Verdict::Duplicate { delivered: true } => b"+".to_vec(),
        Verdict::Duplicate { delivered: false } => {
            format!("-{UNANSWERED_COPY_REASON}").into_bytes()
        }
        Verdict::Limited(_, reason) => format!("-{reason}").into_bytes(),
        Verdict::Refused(reason) | Verdict::Failed(reason) => {
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

/// The UDP answer to `msg` (None: silence). Only a delivered message is
/// answered, and never with more than it held: version A with itself
/// (`datagram`), version B to a named recipient with `+`.
fn udp_reply(verdict: &Verdict, msg: Option<&Message>, datagram: &[u8]) -> Option<Vec<u8>> {
    let msg = msg?;
    let delivered = matches!(
        verdict,
        Verdict::Delivered | Verdict::Duplicate { delivered: true }
    );
    match msg.version() {
        Version::A if *verdict == Verdict::Delivered => Some(datagram.to_vec()),
        Version::B if delivered && !msg.recipient.is_empty() => Some(b"+\0".to_vec()),
        _ => None,
    }
}

/// Accepts MSP TCP connections until `shutdown`.
pub async fn serve_tcp(
    listener: TcpListener,
    state: Arc<State>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    while let Some((stream, accepted)) = crate::listen::accept(&listener, &shutdown).await {
        // A trusted balancer's connection begins with a PROXY header that
        // names its client. When it came with the connection, the client
        // takes the peer's place here, for every check below; otherwise
        // the connection counts as the balancer's own until handle_tcp has
        // read it, and the client is judged then.
        let config = state.config.load();
        let mut peer = accepted;
        let mut trusted = config.msp.trusted_proxies.trusts(peer.ip());
        if trusted {
            match take_ready_header(&stream) {
                Ok(None) => {}
                Ok(Some(header)) => {
                    trusted = false;
                    if let ProxyHeader::Proxied { source, .. } = header {
                        peer = SocketAddr::new(source.ip().to_canonical(), source.port());
                    }
                }
                Err(Some(e)) => {
                    bad_proxy_header(&state, peer, &e);
                    continue;
                }
                Err(None) => continue,
            }
        }
        // Each refusal is decided before anything is taken or shed: a
        // connection that is refused must not make others give way.
        if !trusted && !config.msp.acl.permits(peer.ip()) {
            // Closed before a byte is read: nothing to answer to.
            sum_up(&state, Summed::Denied, peer);
            continue;
        }
        let source = source_key(peer.ip(), config.tcpmux.ipv6_source_prefix);
        let Some(place) = state
            .msp
            .tcp_per_source
            .try_enter(source, config.msp.max_connections_per_source)
        else {
            state.stats.hits.hit(Limit::MspConnectionsPerSource);
            sum_up(&state, Summed::SourceLimit, peer);
            continue;
        };
        let max = config.msp.max_connections;
        drop(config);
        // At the cap, the oldest connection with no whole message in hand
        // gives way; only when every one is being answered is the new
        // connection closed.
        let (connection, before) = state.msp.tcp_connections.enter();
        if before >= max && !state.msp.tcp_waiting.shed_oldest() {
            drop((connection, place));
            state.stats.hits.hit(Limit::MspConnections);
            sum_up(&state, Summed::Overloaded, peer);
            continue;
        }
        let waiting = state.msp.tcp_waiting.enter();
        let state = Arc::clone(&state);
        tracker.spawn(async move {
            let _connection = connection;
            let client = TcpClient {
                peer,
                trusted,
                source_place: place,
            };
            handle_tcp(stream, client, &state, waiting).await;
        });
    }
}

/// Takes a trusted proxy's header if all of it is already in the
/// connection's receive queue, without waiting and without a byte past it:
/// `Ok(None)` when it is not all there (nothing taken), `Err(Some(_))`
/// when it is refused, `Err(None)` when the connection failed or ended.
fn take_ready_header(stream: &TcpStream) -> Result<Option<ProxyHeader>, Option<HeaderError>> {
    use rustix::net::{RecvFlags, recv};
    let mut peeked = [0u8; limits::MAX_PROXY_HEADER_LEN];
    let n = match crate::listen::peek_queued(stream, &mut peeked) {
        Ok(Some(0)) | Err(_) => return Err(None),
        Ok(Some(n)) => n,
        Ok(None) => return Ok(None),
    };
    let (header, len) = match crate::proxy::parse_header(&peeked[..n]) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(e) => return Err(Some(e)),
    };
    // The peeked bytes are in the queue, and nothing else reads it yet.
    match recv(stream, &mut peeked[..len], RecvFlags::DONTWAIT) {
        Ok((got, _)) if got == len => Ok(Some(header)),
        _ => Err(None),
    }
}

/// An MSP connection's client: the peer, until a trusted proxy's header
/// names another.
struct TcpClient {
    peer: SocketAddr,
    /// The peer is in `[msp] trusted_proxies`: a PROXY header comes first.
    trusted: bool,
    /// The place under `max_connections_per_source` of the client's
    /// source: the balancer's until its header is read.
    source_place: SourceGuard,
}

/// What ended a wait for more of a message.
enum Read {
    Data(Result<std::io::Result<usize>, tokio::time::error::Elapsed>),
    Shed,
}

/// Serves one connection: each message must arrive whole within
/// `idle_timeout` of the previous reply (or of the connection's start),
/// however it is cut into reads; the connection ends after
/// `connection_timeout` or `max_messages_per_connection` messages. While
/// it has no whole message in hand it holds a place among the waiting
/// (`waiting` to begin with), and gives way when shed.
async fn handle_tcp(
    mut stream: TcpStream,
    mut client: TcpClient,
    state: &State,
    waiting: WaitingPlace,
) {
    use tokio::time::timeout_at;
    let config = state.config.load_full();
    let settings = &config.msp;
    let deadline = limits::deadline_in(settings.connection_timeout);
    let mut message_deadline = limits::deadline_in(settings.idle_timeout).min(deadline);
    let mut buf: Vec<u8> = Vec::with_capacity(2 * message::MAX_MESSAGE_LEN);
    let mut chunk = [0u8; 1024];
    let mut messages = 0usize;
    if client.trusted {
        let balancer = client.peer;
        let header = loop {
            match crate::proxy::parse_header(&buf) {
                Ok(Some((header, len))) => {
                    // What follows it is the first message's.
                    buf.drain(..len);
                    break header;
                }
                Ok(None) => {}
                Err(e) => return bad_proxy_header(state, client.peer, &e),
            }
            let read = tokio::select! {
                r = timeout_at(message_deadline, stream.read(&mut chunk)) => Read::Data(r),
                () = waiting.shed() => Read::Shed,
            };
            match read {
                Read::Shed => {
                    state.stats.hits.hit(Limit::MspConnections);
                    sum_up(state, Summed::Shed, client.peer);
                    return;
                }
                Read::Data(Ok(Ok(0))) if buf.is_empty() => return,
                Read::Data(Ok(Ok(0))) => {
                    return bad_proxy_header(state, client.peer, &HeaderError::Truncated);
                }
                Read::Data(Ok(Err(_))) => return,
                Read::Data(Err(_)) => {
                    return bad_proxy_header(state, client.peer, &HeaderError::Slow);
                }
                Read::Data(Ok(Ok(n))) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        // Judged by the configuration in force now that it is here: a
        // reload may have taken the balancer out of trusted_proxies.
        if !state
            .config
            .load()
            .msp
            .trusted_proxies
            .trusts(balancer.ip())
        {
            let cause = format!(
                "{} is no longer in trusted_proxies (the configuration was reloaded)",
                balancer.ip()
            );
            return bad_proxy_header(state, balancer, &HeaderError::Malformed(cause));
        }
        // Where the client a trusted proxy names takes the peer's (when its
        // header did not come with the connection): for the access list,
        // the rates, the delivery's REMOTE_ADDR and the log.
        if let ProxyHeader::Proxied { source, .. } = header {
            let source = SocketAddr::new(source.ip().to_canonical(), source.port());
            let key = source_key(source.ip(), config.tcpmux.ipv6_source_prefix);
            let Some(place) = state
                .msp
                .tcp_per_source
                .try_enter(key, settings.max_connections_per_source)
            else {
                state.stats.hits.hit(Limit::MspConnectionsPerSource);
                sum_up(state, Summed::SourceLimit, source);
                return;
            };
            // The balancer's place is given back: the client holds its own.
            client.source_place = place;
            client.peer = source;
        }
        // The access list in force now that the header has come.
        if !state.config.load().msp.acl.permits(client.peer.ip()) {
            sum_up(state, Summed::Denied, client.peer);
            return;
        }
    }
    let peer = client.peer;
    let mut waiting = Some(waiting);
    loop {
        // A known client ends each message with one extra NUL.
        if buf.first() == Some(&0) {
            buf.remove(0);
        }
        match message::frame(&buf) {
            Ok(Some(len)) => {
                // Being answered: never shed.
                waiting = None;
                let raw: Vec<u8> = buf.drain(..len).collect();
                messages += 1;
                let over = messages > settings.max_messages_per_connection;
                let verdict = if over {
                    state.stats.hits.hit(Limit::MspMessagesPerConnection);
                    sum_up(state, Summed::Limited, peer);
                    Verdict::Limited(Limit::MspMessagesPerConnection, CONNECTION_MESSAGES_REASON)
                } else {
                    handle_message(state, &raw, peer, Transport::Tcp).await.0
                };
                if raw[0] == b'B' {
                    let reply = tcp_reply(&verdict);
                    let write = timeout_at(deadline, stream.write_all(&reply)).await;
                    if !matches!(write, Ok(Ok(()))) {
                        return;
                    }
                }
                if over {
                    return;
                }
                message_deadline = limits::deadline_in(settings.idle_timeout).min(deadline);
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                // Charged as any message; its end cannot be found, so the
                // connection ends with it.
                let _ = charge(state, peer.ip());
                state.msp.refused.fetch_add(1, Ordering::Relaxed);
                sum_up(state, Summed::Malformed, peer);
                tracing::debug!(remote_addr = %peer.ip().to_canonical(), "MSP connection: {e}");
                if buf.first() == Some(&b'B') {
                    let reply = tcp_reply(&Verdict::Refused(format!("malformed message: {e}")));
                    let _ = timeout_at(deadline, stream.write_all(&reply)).await;
                }
                return;
            }
        }
        let place = waiting.get_or_insert_with(|| state.msp.tcp_waiting.enter());
        let read = tokio::select! {
            r = timeout_at(message_deadline, stream.read(&mut chunk)) => Read::Data(r),
            () = place.shed() => Read::Shed,
        };
        match read {
            Read::Shed => {
                state.stats.hits.hit(Limit::MspConnections);
                sum_up(state, Summed::Shed, peer);
                return;
            }
            Read::Data(Ok(Ok(0)) | Ok(Err(_))) => return,
            Read::Data(Err(_)) => {
                tracing::debug!(
                    remote_addr = %peer.ip().to_canonical(),
                    "MSP: connection closed, no whole message within idle_timeout or connection_timeout"
                );
                return;
            }
            Read::Data(Ok(Ok(n))) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Closes a trusted proxy's connection whose header is refused: counted,
/// and logged with the cause.
fn bad_proxy_header(state: &State, peer: SocketAddr, cause: &HeaderError) {
    tracing::debug!(
        remote_addr = %peer.ip().to_canonical(),
        "MSP connection from {peer}: {cause}"
    );
    sum_up(state, Summed::BadProxyHeader, peer);
}

/// Serves MSP datagrams until `shutdown`.
pub async fn serve_udp(
    socket: UdpSocket,
    state: Arc<State>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = socket.local_addr() {
        lock(&state.msp.own_udp_ports).push(addr.port());
    }
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
        let config = state.config.load();
        if !config.msp.acl.permits(peer.ip()) {
            sum_up(&state, Summed::Denied, peer);
            continue;
        }
        // Never answered, so never the start of a loop between tcpmuxd and
        // itself, another MSP server, or an echo service.
        if !answerable_source(peer, &lock(&state.msp.own_udp_ports)) {
            sum_up(&state, Summed::ServicePort, peer);
            continue;
        }
        let window = config.msp.dedup_window;
        let source = source_key(peer.ip(), config.tcpmux.ipv6_source_prefix);
        drop(config);
        if lock(&state.msp.answers).is_answer_back(peer, &buf[..n], window, Instant::now()) {
            sum_up(&state, Summed::Loop, peer);
            continue;
        }
        // The source's share first: a source at it takes no other place.
        let Some(share) = state
            .msp
            .udp_in_flight_per_source
            .try_enter(source, limits::MSP_MAX_UDP_IN_FLIGHT_PER_SOURCE)
        else {
            state.stats.hits.hit(Limit::MspDatagramsInFlight);
            sum_up(&state, Summed::SourceLimit, peer);
            continue;
        };
        let Ok(permit) = Arc::clone(&state.msp.udp_in_flight).try_acquire_owned() else {
            state.stats.hits.hit(Limit::MspDatagramsInFlight);
            sum_up(&state, Summed::Overloaded, peer);
            continue;
        };
        let datagram = buf[..n].to_vec();
        let (state, socket) = (Arc::clone(&state), Arc::clone(&socket));
        tracker.spawn(async move {
            let _places = (permit, share);
            let (verdict, msg) = handle_message(&state, &datagram, peer, Transport::Udp).await;
            if let Some(reply) = udp_reply(&verdict, msg.as_ref(), &datagram) {
                // Remembered before it leaves, so that it is known when it
                // comes back.
                lock(&state.msp.answers).sent(peer, &reply, Instant::now());
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}
