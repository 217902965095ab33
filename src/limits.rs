//! Every bound tcpmuxd enforces, with its default, in one place.
//!
//! Values an administrator may want to change are defaults for config keys;
//! the rest are fixed protocol or safety bounds.

use std::time::Duration;

/// Longest service name accepted from a client, in bytes, not counting the
/// line end. RFC 1078 sets none; FreeBSD inetd allows 256 with its NUL.
pub const MAX_NAME_LEN: usize = 255;

/// Spaces and tabs around a name that a request line may hold besides the
/// name: they are dropped, and do not count against [`MAX_NAME_LEN`].
pub const MAX_LINE_BLANKS: usize = 32;

/// Longest line end: telnet's CR NUL before CR LF.
pub const MAX_LINE_END: usize = 4;

/// Longest request line, in bytes: the name, the blanks around it and the
/// line end. A longer line is answered `-Service name too long`.
pub const MAX_LINE_LEN: usize = MAX_NAME_LEN + MAX_LINE_BLANKS + MAX_LINE_END;

/// Longest PROXY protocol header accepted from a trusted proxy
/// (`trusted_proxies`), in bytes: no more than a request line may take.
/// HAProxy's version 1 header is at most 107 bytes and its version 2
/// header 28 (IPv4) or 52 (IPv6) without TLVs; the rest leaves room for a
/// few TLVs (a unique ID, a host name), which are skipped. A longer one is
/// refused as soon as its length is known.
pub const MAX_PROXY_HEADER_LEN: usize = MAX_LINE_LEN;

/// Default for `[tcpmux] name_timeout`: time a client has to send its whole
/// request line, and to take the reply.
pub const DEFAULT_NAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound for `name_timeout`, so a typo cannot disable the timeout.
pub const MAX_NAME_TIMEOUT: Duration = Duration::from_secs(300);

/// Upper bound for `[tcpmux] defer_accept`: the kernel keeps a silent
/// connection waiting for about a minute at most (its SYN-ACK retries).
pub const MAX_DEFER_ACCEPT: Duration = Duration::from_secs(60);

/// Default for `[tcpmux] max_handshakes`: connections allowed at once in the
/// handshake phase (accepted, not yet answered or handed to a service). A
/// waiting handshake costs about 2.3 KiB, so the default is under 40 MiB.
/// At the cap, the oldest handshake still waiting for its name is shed to
/// make room for the new connection.
pub const DEFAULT_MAX_HANDSHAKES: usize = 16 * 1024;

/// Upper bound for `[tcpmux] max_handshakes` and
/// `max_handshakes_per_source`: about 2.4 GiB of waiting handshakes.
pub const MAX_HANDSHAKES: usize = 1024 * 1024;

/// Default for `[tcpmux] max_handshakes_per_source`: of those, from one
/// source address (IPv6: one prefix of `ipv6_source_prefix` bits).
pub const DEFAULT_MAX_HANDSHAKES_PER_SOURCE: usize = 64;

/// Default for `[tcpmux] ipv6_source_prefix`: IPv6 clients in one /64 are
/// usually one host or one site.
pub const DEFAULT_IPV6_SOURCE_PREFIX: u8 = 64;

/// Default for `[tcpmux] max_sessions`: sessions running at once, all
/// services together.
pub const DEFAULT_MAX_SESSIONS: usize = 1024;

/// Upper bound for `[tcpmux] max_sessions` and the other counts of
/// sessions (`max_sessions_per_source`, a service's `max_instances` and
/// `max_instances_per_source`): each session is at least a process and a
/// connection, and Linux has at most 4194304 processes; a larger number
/// is a typo. (Room enough for "no limit in effect", as benchmarks set.)
pub const MAX_SESSIONS: usize = 1024 * 1024;

/// The default share of `max_instances` and of `max_sessions` one source
/// may hold (`max_instances_per_source`, `max_sessions_per_source`): one
/// part in this many, at least one session. xinetd's `per_source` caps the
/// instances of a service per client address with a fixed number; a
/// fixed default could exceed a small `max_instances` and leave others
/// nothing, so the default is a share: a quarter lets one address (a
/// household or an office behind one NAT address) run a few sessions at
/// once, 16 of the 64 of a service and 256 of all 1024 by default, while
/// three quarters always stay for the others.
pub const SOURCE_SHARE_DIVISOR: usize = 4;

/// The default per-source share of `max`: see [`SOURCE_SHARE_DIVISOR`].
pub fn default_source_share(max: usize) -> usize {
    (max / SOURCE_SHARE_DIVISOR).max(1)
}

/// Default for `[[service]] max_starts_per_second`: sessions of one service
/// started per second, with as many in reserve for bursts.
pub const DEFAULT_MAX_STARTS_PER_SECOND: u32 = 100;

/// Upper bound for `[[service]] max_starts_per_second`: far beyond what
/// any machine starts, so that "no limit in effect" can be written.
pub const MAX_STARTS_PER_SECOND: u32 = 1_000_000;

/// How often limits hit, and the connections not logged one by one, are
/// summed up in one log line.
pub const LIMIT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Sources counted by name in one summary interval (a Space-Saving table:
/// a new source when it is full takes the place of the one with the
/// smallest count), so a flood from many addresses costs bounded memory
/// (about 100 bytes an entry) and any source with more than 1 in this many
/// of the interval's connections is named, whatever came first.
pub const SUMMARY_MAX_SOURCES: usize = 4096;

/// Sources named in a summary line, those with the most connections first.
pub const SUMMARY_TOP_SOURCES: usize = 3;

/// A source counts towards the sharing of a service's
/// `max_starts_per_second` while it asked for a start within this long.
pub const START_SOURCE_IDLE: Duration = Duration::from_secs(1);

/// Sources whose share of one service's starts is tracked at once; a source
/// beyond them counts as over its share (and idle ones are forgotten
/// first).
pub const START_MAX_SOURCES: usize = 4096;

/// Descriptors kept out of the connection budget for what the daemon opens
/// later: the system bus, the journal, configuration reads on reload.
/// (Those open at startup, and MSP's, are counted on their own.)
pub const FD_RESERVE: usize = 64;

/// Descriptors of one MSP TCP connection: the connection, and a delivery
/// command's three pipes.
pub const MSP_CONNECTION_FDS: u64 = 4;

/// Descriptors of one MSP datagram being delivered: a delivery command's
/// three pipes.
pub const MSP_DELIVERY_FDS: u64 = 3;

/// Bytes of one session's stderr read per second at most. Past that the
/// daemon stops reading for the rest of the second, and the program blocks
/// on its full pipe: a program that floods stderr costs the daemon little.
pub const MAX_STDERR_BYTES_PER_SECOND: usize = 64 * 1024;

/// Lines of one session's stderr logged per second at most; the rest are
/// counted and reported when the session ends.
pub const MAX_STDERR_LINES_PER_SECOND: u32 = 50;

/// The period of the stderr budgets (bytes read, lines logged).
pub const STDERR_WINDOW: Duration = Duration::from_secs(1);

/// Bytes read from a session's stderr at a time.
pub const STDERR_READ_CHUNK: usize = 4096;

/// Default for `[[service]] max_instances`: sessions of one service running
/// at once.
pub const DEFAULT_MAX_INSTANCES: usize = 64;

/// Backlog of the sockets tcpmuxd binds itself (systemd's default for
/// socket units is the same): connections the kernel completes while the
/// daemon is busy or restarting.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Pause after an `accept()` error (for example EMFILE) before the next try,
/// so that a full descriptor table does not make the accept loop spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Longest line of a service's stderr copied to the log as one entry; longer
/// lines are split.
pub const MAX_STDERR_LINE: usize = 4096;

/// How often the `STATUS=` line sent to systemd is refreshed when counters
/// changed.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Extra time given to in-flight handshakes on shutdown, beyond
/// `name_timeout`, before the daemon exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// After a refusal or the HELP list, tcpmuxd closes its side and reads what
/// the client still sends, up to this many bytes, so that closing does not
/// reset the connection before the client has read the reply.
pub const DRAIN_LIMIT: usize = 64 * 1024;

/// How long that draining may take at most.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Most of the HELP list generated at a time, and the longest list
/// answered in the accept loop. A longer list (a configuration of many
/// services) is written by its connection's task, a chunk at a time as
/// the client takes it, each generated from the configuration: never the
/// whole list per connection.
pub const HELP_CHUNK: usize = 4 * 1024;

/// The send buffer (SO_SNDBUF) of a connection whose reply is longer than
/// [`HELP_CHUNK`], set before its first byte: the kernel holds at most this
/// much of the reply for the connection at a time (Linux allots twice the
/// value, for its bookkeeping), instead of a buffer that grows with the
/// connection up to `net.ipv4.tcp_wmem`'s maximum (4 MiB).
pub const LONG_REPLY_SEND_BUFFER: usize = 16 * 1024;

/// How often a connection closed by its client while the kernel still
/// holds some of a long reply for it is asked whether the client took the
/// rest; until `name_timeout`, when it is reset.
pub const UNTAKEN_REPLY_POLL: Duration = Duration::from_millis(100);

/// Time an exec session's program has to start: from the child's creation
/// to its execve. A start takes milliseconds; one held longer (the
/// program's owner can hold execve with a write lease on the file, or stop
/// the child between its user switch and its exec) is killed, and its
/// client told `-Service unavailable`.
pub const EXEC_START_TIMEOUT: Duration = Duration::from_secs(5);

/// Programs being started at once by the exec launcher and MSP's delivery
/// command (from the child's creation to its exec). A start takes about a
/// millisecond; only starts held from outside (see [`EXEC_START_TIMEOUT`])
/// stay, and each holds a thread while it does. Past this, starts wait for
/// room, for at most [`EXEC_START_SLOT_WAIT`].
pub const MAX_EXEC_STARTING: usize = 64;

/// Of [`MAX_EXEC_STARTING`], what one service (or MSP's delivery) may
/// take: a quarter, so that starts held by one service's user leave the
/// rest to the others.
pub const MAX_EXEC_STARTING_PER_SERVICE: usize = MAX_EXEC_STARTING / 4;

/// How long a start waits for room among [`MAX_EXEC_STARTING`] before its
/// client is told `-Server busy, try again later`.
pub const EXEC_START_SLOT_WAIT: Duration = Duration::from_secs(2);

/// Time systemd has to start a session unit (its start job to end) before
/// the connection is given up.
pub const UNIT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// First and longest pause between attempts to reconnect to the system bus.
pub const BUS_RECONNECT_MIN: Duration = Duration::from_millis(500);
pub const BUS_RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Default for `[msp] rate_per_minute`: messages accepted per source address
/// (IPv6: per `[tcpmux] ipv6_source_prefix`) per minute, in bursts of as many.
pub const DEFAULT_MSP_RATE_PER_MINUTE: u32 = 30;

/// Default for `[msp] recipient_rate_per_minute`: messages accepted for one
/// recipient (one user, whatever the source; the console counts as one) per
/// minute, in bursts of as many.
pub const DEFAULT_MSP_RECIPIENT_RATE_PER_MINUTE: u32 = 30;

/// Default for `[msp] total_rate_per_minute`: messages accepted per minute
/// from all sources for all recipients, in bursts of as many.
pub const DEFAULT_MSP_TOTAL_RATE_PER_MINUTE: u32 = 300;

/// Upper bound for the `[msp]` rates per minute: over a million and a
/// half messages a second, more than any link carries, so that "no limit
/// in effect" can be written, while a typo such as 4294967296 is caught.
pub const MAX_MSP_RATE_PER_MINUTE: u32 = 100_000_000;

/// Sources (and, separately, recipients) whose rate is tracked at once.
/// Those back to a full allowance are forgotten first; if more than half
/// are still recent, the table starts afresh (the total rate still holds).
pub const MSP_MAX_TRACKED_SOURCES: usize = 16 * 1024;

/// Default for `[msp] max_connections_per_source`: MSP TCP connections at
/// once from one source address (IPv6: one `[tcpmux] ipv6_source_prefix`).
pub const DEFAULT_MSP_MAX_CONNECTIONS_PER_SOURCE: usize = 16;

/// Default for `[msp] max_messages_per_connection`: messages one MSP TCP
/// connection may carry; the next is refused and the connection closed.
/// Three times the default `rate_per_minute`: a client within its rate
/// never meets it in a minute's sending, while a flood of refused
/// messages costs its sender a new connection every hundred.
pub const DEFAULT_MSP_MAX_MESSAGES_PER_CONNECTION: usize = 100;

/// Default for `[msp] max_connections`: MSP TCP connections at once.
pub const DEFAULT_MSP_MAX_CONNECTIONS: usize = 256;

/// Upper bound for `[msp] max_connections` and
/// `max_connections_per_source`.
pub const MAX_MSP_CONNECTIONS: usize = 65536;

/// Upper bound for `[msp] max_messages_per_connection`.
pub const MAX_MSP_MESSAGES_PER_CONNECTION: usize = 1_000_000;

/// Default for `[msp] idle_timeout`: time allowed for each message on a TCP
/// connection, from the end of the previous one (or the connection's
/// start) to its last octet; never extended by a read.
pub const DEFAULT_MSP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default for `[msp] connection_timeout`: lifetime of an MSP TCP connection.
pub const DEFAULT_MSP_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);

/// Default for `[msp] command_timeout`: time the delivery command may run.
pub const DEFAULT_MSP_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Default for `[msp] dedup_window`: how long delivered messages are
/// remembered to suppress retransmissions.
pub const DEFAULT_MSP_DEDUP_WINDOW: Duration = Duration::from_secs(300);

/// Upper bounds of the `[msp]` durations, enforced when the configuration
/// is loaded: a typo must neither disable a timeout nor overflow a clock.
pub const MAX_MSP_COMMAND_TIMEOUT: Duration = Duration::from_secs(10 * 60);
pub const MAX_MSP_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);
pub const MAX_MSP_CONNECTION_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
pub const MAX_MSP_DEDUP_WINDOW: Duration = Duration::from_secs(60 * 60);

/// Delivered messages remembered at once for duplicate suppression.
pub const MSP_DEDUP_CAPACITY: usize = 16 * 1024;

/// MSP datagrams being delivered at once; more are dropped (silently, as
/// RFC 1312 answers failures over UDP).
pub const MSP_MAX_UDP_IN_FLIGHT: usize = 64;

/// Of those, from one source (an IPv4 address or an IPv6 prefix): a
/// quarter, so that slow deliveries from one source leave places for
/// three more at least.
pub const MSP_MAX_UDP_IN_FLIGHT_PER_SOURCE: usize = MSP_MAX_UDP_IN_FLIGHT / 4;

/// Longest first line of the delivery command's stderr kept as the reason.
pub const MSP_MAX_REASON_LEN: usize = 200;

/// How long a finished program's stderr is still read for its last lines.
pub const STDERR_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Time allowed for one D-Bus call to the service manager.
pub const DBUS_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The instant `after` from now. Every configured duration is bounded at
/// load; should one still not fit the clock, the deadline is the longest
/// bound instead of a panic.
pub fn deadline_in(after: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + MAX_MSP_CONNECTION_TIMEOUT)
}

/// Default for `[[service]] warm`: warm units kept ready per service under
/// the systemd launcher. Four was measured to keep a paced 10 sessions a
/// second and bursts of four clients on warm units, for a few MiB of
/// waiting helpers; 0 turns warm units off.
pub const DEFAULT_WARM: usize = 4;

/// Default for `[tcpmux] max_warm`: warm units of all services together.
pub const DEFAULT_MAX_WARM: usize = 64;

/// Upper bound for `warm` and `max_warm`, so that a typo cannot start
/// thousands of units.
pub const MAX_WARM: usize = 1024;

/// Default for `[tcpmux] max_starting_units`: twice the CPUs (at least 2).
/// Building a unit's sandbox is CPU work in the processes PID 1 forks, and
/// the mounts of concurrent starts contend for the kernel's mount lock:
/// measured on systemd 252 with the shipped sandbox on 2 cores, 4 starts at
/// once gave 1.19 to 1.65 times the sessions a second of 24 (BENCHMARKS.md).
/// The CPUs are those tcpmuxd may use (affinity, cgroup quota).
pub fn default_max_starting_units() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .saturating_mul(2)
        .clamp(2, MAX_STARTING_UNITS)
}

/// A client waits at most this long for its unit's turn to start; then it
/// is told `-Service unavailable`.
pub const TURN_WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A start gives its turn back after this long even while systemd is still
/// at it: building a sandbox takes tens of milliseconds, so a start this
/// slow waits for something else (an `ExecStartPre=`, a stalled manager),
/// and must not hold up the other services' starts.
pub const TURN_HOLD_MAX: Duration = Duration::from_secs(2);

/// Upper bound for `[tcpmux] max_starting_units`.
pub const MAX_STARTING_UNITS: usize = 1024;

/// Warm units being started at once, all services together: refilling
/// competes with cold starts for the service manager, and must not crowd
/// them out.
pub const WARM_MAX_STARTING: usize = 2;

/// First and longest pause before another warm start of a service whose
/// last one failed (the pause doubles with each failure in a row): a broken
/// drop-in must not make tcpmuxd spin.
pub const WARM_BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const WARM_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Time a warm unit's helper has, once systemd started it, to say it is
/// ready.
pub const WARM_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Time a warm unit's helper has, after the hand-over, to exec the program
/// or say why it cannot.
pub const WARM_EXEC_TIMEOUT: Duration = Duration::from_secs(5);

/// A warm unit waits at most this long for a connection, then is replaced:
/// a session's `RuntimeMaxSec=` counts from its unit's start, so a session
/// on a warm unit gets at least `RuntimeMaxSec=` less this.
pub const WARM_MAX_AGE: Duration = Duration::from_secs(120);

/// How often warm units are checked (retired when their helper died or
/// they are too old) and refilled when nothing else prompts it.
pub const WARM_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Default for `[tcpmux] umask` (a service's when neither it nor
/// `[tcpmux]` sets one): files a session's program creates are its own
/// user's alone.
pub const DEFAULT_UMASK: u32 = 0o077;

/// Upper bound for `limits.open_files`: Linux's default `fs.nr_open`,
/// above which setrlimit fails.
pub const MAX_OPEN_FILES: u64 = 1024 * 1024;

/// Upper bound for `limits.processes` (other than "infinity"): Linux's
/// largest `kernel.pid_max`.
pub const MAX_PROCESSES: u64 = 4 * 1024 * 1024;

/// Lower bound for `limits.address_space`: less cannot even load a
/// program and its C library.
pub const MIN_ADDRESS_SPACE: u64 = 16 * 1024 * 1024;

/// Longest string execve takes as one argument or one environment
/// variable (`NAME=value`), counting its terminating NUL: the kernel's
/// MAX_ARG_STRLEN, 32 pages, here of 4 KiB (larger pages, on some
/// architectures, only allow more). A longer one fails the exec (E2BIG),
/// so the configuration is refused when it is read.
pub const MAX_EXEC_STRING: usize = 32 * 4096;

/// Most a program's path, arguments and environment may take together,
/// each string with its NUL and a pointer to it. The kernel allows a
/// quarter of the stack limit (2 MiB under the usual 8 MiB), at least
/// 128 KiB; this bound holds whenever tcpmuxd's stack limit is 4 MiB or
/// more.
pub const MAX_EXEC_TOTAL: usize = 1024 * 1024;

/// Of [`MAX_EXEC_TOTAL`], what the configuration leaves for the variables
/// added when a program starts: tcpmuxd's own (`PATH`, `TCPMUX_SERVICE`,
/// `REMOTE_ADDR`, ..., under 1 KiB), MSP's message fields (under 2 KiB),
/// and those the service manager adds under the systemd launcher.
pub const EXEC_ENVIRONMENT_MARGIN: usize = 16 * 1024;

/// Default for a forwarded service's `idle_timeout`: a pair of connections
/// on which neither side has sent a byte for this long is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Upper bound for `idle_timeout`, so that a typo cannot keep silent pairs
/// (and their descriptors and session slots) for ever.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Time a forwarded service's backend has to accept a connection before
/// the client is told `-Service unavailable`.
pub const FORWARD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest path of a Unix socket: `sun_path` holds 108 bytes with the NUL.
pub const MAX_UNIX_PATH: usize = 107;

/// Capacity asked for each direction's pipe of a forwarded pair: what
/// the kernel holds between the two sockets, beside their own buffers.
/// Kept at the default capacity when the kernel refuses it.
pub const FORWARD_PIPE_SIZE: usize = 64 * 1024;

/// Buffer through which a direction of a forwarded pair copies its bytes
/// until it moves to a pipe (or for good, when splice(2) cannot carry
/// them or no pipe is free); made at the direction's first read. A read
/// that fills it whole marks the direction as moving bulk.
pub const FORWARD_COPY_BUFFER: usize = 16 * 1024;

/// Receive buffer of each TCP connection of a forwarded pair (the kernel
/// books up to twice this): fixed, so that a client sending to a backend
/// that takes nothing (or the reverse) fills a bounded buffer, not one
/// the kernel's tuning grows to the host's `net.ipv4.tcp_rmem` maximum.
/// Enough for the window of a fast path: about 80 Mbit/s of upload per
/// pair at 100 ms round trip, more over shorter ones.
pub const FORWARD_RECEIVE_BUFFER: usize = 1024 * 1024;

/// Bytes a forwarded pair's TCP connection holds unsent
/// (`TCP_NOTSENT_LOWAT`): tcpmuxd writes more only when fewer are
/// waiting. Bytes in flight are bounded by the peer's window; what the
/// peer has not taken waits in the other connection's receive buffer.
pub const FORWARD_UNSENT: u32 = 256 * 1024;

/// How often a forwarded pair that waits for one side to take bytes looks
/// at both connections for a reset: the side it waits to read from next
/// is not read meanwhile, and its reset would wait for the other side.
pub const FORWARD_RESET_LOOK: Duration = Duration::from_secs(1);

/// Bytes one way of a forwarded pair moves before the other way has its
/// turn: a client (or backend) that always has more to send does not keep
/// the answer from moving, nor fill the other side's buffers first.
pub const FORWARD_TURN: u64 = 256 * 1024;

/// Directions of forwarded pairs that relay through a pipe at once: a
/// direction takes one once a read fills its copy buffer (bulk), and
/// keeps it until its pair ends; past this bound it goes on copying. A
/// pipe is charged to the pipe quota of tcpmuxd's user (root's, under the
/// shipped unit), shared with every other process of that user on the
/// host: at this bound, tcpmuxd's pipes take 4096 pages, a quarter of
/// Linux's default `fs.pipe-user-pages-soft` (16384), past which every
/// process of the user without CAP_SYS_RESOURCE gets small pipes.
pub const FORWARD_MAX_PIPES: usize = 256;

/// Connections to one receiving daemon's socket that tcpmuxd gave up
/// (the daemon shut its end down) while clients still waited in them,
/// kept so that those clients keep their places until the daemon takes
/// them or closes the connection. With this many kept, no new connection
/// is made (clients hear `-Service unavailable`) until one is let go.
pub const PASS_MAX_RETIRED: usize = 8;

/// How often, while clients passed to a receiving daemon wait in its
/// queue, tcpmuxd looks whether the daemon has taken them, to give their
/// session places back. (It looks at each pass too, and before refusing a
/// client for a full limit: this only keeps the counts true in quiet
/// times.)
pub const PASS_SETTLE_INTERVAL: Duration = Duration::from_secs(1);
