//! The configuration file's keys and limits, as documented: the one source
//! of tcpmuxd.toml(5) and of the README's table of limits. Defaults and
//! bounds are taken from `limits` and `config`, so the documentation shows
//! what the code enforces; the tests below check that every key of the
//! file format is documented and that the README's table is this one.

use crate::config::{DEFAULT_CONFIG_PATH, DEFAULT_LISTEN, DEFAULT_UTMP, MAX_ESCAPED_NAME_LEN};
use crate::limits;
use std::time::Duration;

/// One key of the configuration file.
#[derive(Debug, Clone)]
pub struct Key {
    /// `tcpmux`, `msp` or `service` (the `[[service]]` tables).
    pub section: &'static str,
    pub name: &'static str,
    /// The TOML type, as a reader needs it.
    pub kind: &'static str,
    /// The value in force when the key is left out.
    pub default: String,
    /// The values accepted; anything else is a configuration error.
    pub bounds: String,
    /// What a client sees when the limit the key sets is reached, for keys
    /// that set one.
    pub when_hit: Option<String>,
    pub description: &'static str,
}

/// One row of the table of limits: a configuration key or a fixed bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Markdown: a key in backquotes, or plain words.
    pub limit: String,
    pub default: String,
    pub when_hit: String,
}

/// Shows a duration as the configuration file spells it: "10s", "5m", "1h",
/// "1d".
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn at_most(d: Duration) -> String {
    format!("more than 0s, at most {}", duration(d))
}

/// The values of a count: "a whole number from 1 to 65536".
fn range(min: usize, max: usize) -> String {
    format!("a whole number from {min} to {max}")
}
const UMASK: &str = "octal digits from \"0000\" to \"0777\" as a string (or a TOML octal \
                     integer such as 0o027)";
const ENVIRONMENT: &str = "variable names of letters, digits and _, not starting with a digit; \
                           not TCPMUX_SERVICE, REMOTE_ADDR, REMOTE_PORT, LOCAL_ADDR, LOCAL_PORT, \
                           PATH nor LISTEN_*";

/// The values of each key of a `limits` table.
fn limits_bounds() -> String {
    crate::config::LimitKind::ALL
        .into_iter()
        .map(|k| format!("{}: {}", k.key(), k.range()))
        .collect::<Vec<_>>()
        .join("; ")
        + "; sizes in bytes or with K, M, G, T (1024-based), durations as elsewhere"
}
const ADDRESSES: &str =
    "a list of IP addresses with ports, such as \"[::]:1\" or \"127.0.0.1:1025\"";
const NETS: &str = "a list of addresses or CIDR prefixes (IPv4 or IPv6)";
const COMMAND: &str = "a non-empty list: an absolute path, then the arguments";

/// What execve takes, as the configuration is checked against it.
fn exec_sizes(what: &str) -> String {
    format!(
        "; each {what} under {} KiB, and a program's command and environment together within \
         {} KiB (execve's limits, less {} KiB kept for the variables added at start)",
        limits::MAX_EXEC_STRING / 1024,
        crate::config::EXEC_CONFIG_ROOM / 1024,
        limits::EXEC_ENVIRONMENT_MARGIN / 1024
    )
}

fn command_values() -> String {
    format!("{COMMAND}{}", exec_sizes("argument"))
}

fn environment_values() -> String {
    format!("{ENVIRONMENT}{}", exec_sizes("NAME=value"))
}

fn when_hit_name_timeout() -> String {
    "`-Timed out waiting for the service name`, then close".into()
}
fn when_hit_max_handshakes() -> String {
    "the oldest connection still waiting for its name gets `-Too many connections, try again \
     later` and is closed, and the new one is served; only when none waits, the new one gets \
     that answer"
        .into()
}
fn when_hit_per_source() -> String {
    "`-Too many connections from your address, try again later`, at once".into()
}
fn when_hit_server_busy() -> String {
    "`-Server busy, try again later`".into()
}
fn when_hit_no_turn() -> String {
    format!(
        "the connection waits its turn, in order of arrival; after {} {}",
        duration(limits::TURN_WAIT_TIMEOUT),
        when_hit_server_busy()
    )
}
fn when_hit_source_sessions() -> String {
    "`-Too many sessions from your address, try again later`".into()
}
fn default_share(of: &str) -> String {
    format!(
        "a {} of {of} (at least 1)",
        match limits::SOURCE_SHARE_DIVISOR {
            2 => "half".to_string(),
            4 => "quarter".to_string(),
            n => format!("1/{n}"),
        }
    )
}
fn when_hit_backend() -> String {
    "`-Service unavailable` when the backend refuses the connection or does not accept it in \
     time; the log says why"
        .into()
}
fn when_hit_idle() -> &'static str {
    "both connections are closed (reset, when bytes for it were left undelivered)"
}
fn when_hit_master_acl() -> String {
    "`-Access denied`, to every request, HELP too".into()
}
fn when_hit_service_acl() -> String {
    "`-Unknown service`, as for a name that does not exist (HELP does not list it)".into()
}
fn when_hit_max_instances() -> String {
    "`-Service busy, try again later`".into()
}
fn when_hit_start_rate() -> String {
    "`-Service started too often, try again later`".into()
}
fn when_hit_msp_rate() -> String {
    "TCP `-too many messages from your address; slow down`; UDP silence".into()
}
fn when_hit_msp_recipient_rate() -> String {
    "TCP `-too many messages for this recipient; try again later`; UDP silence".into()
}
fn when_hit_msp_total_rate() -> String {
    "TCP `-too many messages; try again later`; UDP silence".into()
}
fn when_hit_msp_connections() -> String {
    "the connection is closed at once".into()
}
fn when_hit_msp_max_connections() -> String {
    "the oldest connection with no whole message in hand is closed, and the new one is served; \
     only when every one is being answered, the new one is closed at once"
        .into()
}
fn when_hit_msp_messages_per_connection() -> String {
    "`-too many messages on one connection; connect again` NUL, then close".into()
}
fn when_hit_msp_timeouts() -> String {
    "the connection is closed".into()
}
fn when_hit_command_timeout() -> String {
    "`-delivery timed out` (UDP: silence)".into()
}
fn when_hit_dedup() -> String {
    "a retransmission gets its first copy's answer, shown once".into()
}

/// Every key of the configuration file, in the order of the manual.
pub fn keys() -> Vec<Key> {
    let key = |section, name, kind, default: String, bounds: String, when_hit, description| Key {
        section,
        name,
        kind,
        default,
        bounds,
        when_hit,
        description,
    };
    vec![
        key(
            "tcpmux",
            "listen",
            "array of strings",
            format!("[\"{DEFAULT_LISTEN}\"]"),
            format!("{ADDRESSES}; not empty"),
            None,
            "Addresses the TCPMUX port is bound to when tcpmuxd is not socket activated. Under \
             systemd, tcpmuxd.socket binds the port and this key is not used.",
        ),
        key(
            "tcpmux",
            "name_timeout",
            "duration",
            duration(limits::DEFAULT_NAME_TIMEOUT),
            at_most(limits::MAX_NAME_TIMEOUT),
            Some(when_hit_name_timeout()),
            "Time a client has to send the whole request line (the service name and its line \
             end), and to take the reply.",
        ),
        key(
            "tcpmux",
            "defer_accept",
            "duration",
            "none (the listeners are left as they are)".into(),
            format!(
                "at most {}; whole seconds, rounded up; 0 turns it off",
                duration(limits::MAX_DEFER_ACCEPT)
            ),
            None,
            "TCP_DEFER_ACCEPT on the TCPMUX listeners, bound or socket activated (like \
             DeferAcceptSec= of the .socket unit): the kernel hands a connection to tcpmuxd only \
             once its request line came, so that HELP and refusals are answered at once, without \
             waiting. A connection that stays silent waits in the kernel instead (SYN-RECV in \
             ss(8)), outside max_handshakes and the per-source limits, for about this long, then \
             reaches tcpmuxd and gets name_timeout as any other. Read at startup.",
        ),
        key(
            "tcpmux",
            "max_handshakes",
            "integer",
            limits::DEFAULT_MAX_HANDSHAKES.to_string(),
            range(1, limits::MAX_HANDSHAKES),
            Some(when_hit_max_handshakes()),
            "Connections in the handshake phase at once (accepted, not yet answered or handed to \
             a service); each costs about 2.3 KiB.",
        ),
        key(
            "tcpmux",
            "max_handshakes_per_source",
            "integer",
            limits::DEFAULT_MAX_HANDSHAKES_PER_SOURCE.to_string(),
            range(1, limits::MAX_HANDSHAKES),
            Some(when_hit_per_source()),
            "Of those, connections from one IPv4 address or one IPv6 prefix \
             (ipv6_source_prefix).",
        ),
        key(
            "tcpmux",
            "ipv6_source_prefix",
            "integer",
            limits::DEFAULT_IPV6_SOURCE_PREFIX.to_string(),
            "0 to 128 (bits)".into(),
            None,
            "IPv6 clients whose addresses share this many leading bits count as one source, for \
             TCPMUX's per-source limits and MSP's rate_per_minute.",
        ),
        key(
            "tcpmux",
            "max_sessions",
            "integer",
            limits::DEFAULT_MAX_SESSIONS.to_string(),
            range(1, limits::MAX_SESSIONS),
            Some(when_hit_server_busy()),
            "Sessions running at once, all services together.",
        ),
        key(
            "tcpmux",
            "max_sessions_per_source",
            "integer",
            default_share("max_sessions"),
            format!("{}, at most max_sessions", range(1, limits::MAX_SESSIONS)),
            Some(when_hit_source_sessions()),
            "Of those, sessions held by one IPv4 address or one IPv6 prefix \
             (ipv6_source_prefix), counted from the moment a session is granted (before the \
             client hears +, and while it waits for a turn to start its unit) until it ends. The default share always leaves room for \
             other sources; xinetd's per_source is the same limit for one service.",
        ),
        key(
            "tcpmux",
            "max_warm",
            "integer",
            limits::DEFAULT_MAX_WARM.to_string(),
            format!("0 to {}", limits::MAX_WARM),
            None,
            "Warm units of all services together (see warm); they are not sessions and do not \
             count against max_sessions or max_instances.",
        ),
        key(
            "tcpmux",
            "max_starting_units",
            "integer",
            "twice the CPUs (at least 2)".into(),
            format!("1 to {}", limits::MAX_STARTING_UNITS),
            Some(when_hit_no_turn()),
            "Session units the systemd launcher has systemd start at once, all services \
             together: cold starts and warm units being filled (not MSP's deliveries). \
             Building a unit's sandbox is CPU work, and many at once slow each other down: \
             further connections wait their turn, in order of arrival, for at most 30 s. A \
             start that takes over 2 s gives its turn to the next.",
        ),
        key(
            "tcpmux",
            "allow",
            "array of strings",
            "[] (everyone)".into(),
            NETS.into(),
            Some(when_hit_master_acl()),
            "Master access list, checked before each service's own: when not empty, only these \
             clients may use any service.",
        ),
        key(
            "tcpmux",
            "deny",
            "array of strings",
            "[]".into(),
            NETS.into(),
            Some(when_hit_master_acl()),
            "Clients refused every service; deny wins over allow.",
        ),
        key(
            "tcpmux",
            "trusted_proxies",
            "array of strings",
            "[] (none)".into(),
            NETS.into(),
            Some(
                "from these addresses, a connection without a valid PROXY protocol header is \
                 closed without a reply (OUTCOME=bad-proxy-header)"
                    .into(),
            ),
            "Load balancers (HAProxy, nginx stream, a cloud network load balancer) whose \
             connections begin with a PROXY protocol header, version 1 or 2, before the \
             service name. The client address in it is then the client for everything: allow \
             and deny, every per-source limit, the start rates, REMOTE_ADDR and REMOTE_PORT \
             (LOCAL_ADDR and LOCAL_PORT from the header's destination), the log and the \
             summary. A version 2 LOCAL header (a health check) keeps the connection's own \
             addresses. The header must come within name_timeout, is at most as long as a \
             request line, and counts against the balancer's own max_handshakes_per_source \
             until it is read. From any other address no header is looked for: it is an \
             invalid service name. Name only balancers you run: whoever connects from these \
             addresses chooses the client address tcpmuxd believes.",
        ),
        key(
            "tcpmux",
            "user",
            "string",
            "none".into(),
            "a user name or uid that exists".into(),
            None,
            "The user of every service's program, and of MSP's delivery command, that sets no \
             user of its own, with group (or that user's primary group) and no supplementary \
             groups. The systemd launcher sets User= and Group= of the session's units (when \
             no user is set anywhere, the units' drop-ins decide: DynamicUser=yes by default). \
             The exec launcher, and MSP's command when tcpmuxd starts it itself, switch to it \
             only when tcpmuxd runs as root (it cannot switch users otherwise: the programs run \
             as its own user). As root, such a program needs a user, here or its own: \
             tcpmuxd never runs one as root unless user = \"root\" is written out; without one \
             it is a configuration error naming the service.",
        ),
        key(
            "tcpmux",
            "default_user",
            "string",
            "none".into(),
            "as user; not together with user in one file".into(),
            None,
            "The former name of user, still accepted: the same key (a later file's user or \
             default_user replaces an earlier one's).",
        ),
        key(
            "tcpmux",
            "group",
            "string",
            "user's primary group".into(),
            "a group name or gid that exists; only together with user".into(),
            None,
            "The group of the programs that run as user.",
        ),
        key(
            "tcpmux",
            "umask",
            "string",
            format!("\"{}\"", crate::config::show_umask(limits::DEFAULT_UMASK)),
            UMASK.into(),
            None,
            "The umask of every service's program that sets none, and of MSP's delivery \
             command: the systemd launcher sets UMask= of the session's units, the exec \
             launcher calls umask(2) in the child.",
        ),
        key(
            "tcpmux",
            "environment",
            "table of strings",
            "{}".into(),
            environment_values(),
            None,
            "Variables of every service's program, written as [tcpmux.environment] or as an \
             inline table; a service's own variable of the same name replaces one of these, \
             the others are kept. Drop-ins add variables (a later file's replaces one of the \
             same name).",
        ),
        key(
            "tcpmux",
            "limits",
            "table",
            "{} (nothing limited here: inherited)".into(),
            limits_bounds(),
            None,
            "Resource limits of every service's program (each may replace them) and of MSP's \
             delivery command, written as [tcpmux.limits] or as an \
             inline table such as { open_files = 1024, processes = 64, address_space = \"1G\", \
             cpu_time = \"10min\", core_size = 0 }: open_files (RLIMIT_NOFILE, LimitNOFILE=), \
             processes (of the program's user, RLIMIT_NPROC, LimitNPROC=), address_space \
             (RLIMIT_AS, LimitAS=), cpu_time (RLIMIT_CPU, LimitCPU=), core_size (RLIMIT_CORE, \
             LimitCORE=). Each sets the soft and the hard limit, as systemd's Limit*= do. A \
             service's own limits replace these one by one; drop-ins likewise. A limit set \
             nowhere is inherited: under the exec launcher from tcpmuxd (open files: the limit \
             tcpmuxd was started with), under the systemd launcher from the unit's defaults and \
             drop-ins. Without root, the exec launcher cannot raise a hard limit: a session \
             then fails to start and its client is told \"-\".",
        ),
        key(
            "msp",
            "listen",
            "array of strings",
            "[] (none)".into(),
            ADDRESSES.into(),
            None,
            "Addresses bound for both TCP and UDP when tcpmuxd is not socket activated. Under \
             systemd, tcpmuxd-msp.socket binds port 18 and tcpmuxd-msp.service (tcpmuxd --only \
             msp) serves it.",
        ),
        key(
            "msp",
            "deliver",
            "string",
            "\"tty\"".into(),
            "\"tty\", \"journal\" or \"command\"".into(),
            None,
            "How a message is delivered: to the recipient's terminals, as a journal entry, or to \
             the standard input of command. On a terminal, a header line comes first, then each \
             line of the text after \"| \" (a CR within a line shown as ^M), then EOF: no text \
             can pass for a header or for the end.",
        ),
        key(
            "msp",
            "command",
            "array of strings",
            "none (required with deliver = \"command\")".into(),
            command_values(),
            None,
            "The program that delivers a message with deliver = \"command\": the text on its \
             standard input, the MSP_* fields in its environment, [tcpmux] umask and limits. \
             Exit status 0 means delivered; \
             otherwise the first line of its standard error is the reason sent back.",
        ),
        key(
            "msp",
            "user",
            "string",
            "[tcpmux] user".into(),
            "a user name or uid that exists".into(),
            None,
            "The user the delivery command runs as, with that user's primary group and no \
             supplementary groups. Required when tcpmuxd runs as root and starts the command \
             itself (not as a systemd service) and [tcpmux] user is not set: the command would \
             run as root. Not as root, tcpmuxd runs it as its own user. Under systemd, User= \
             of its unit (tcpmux-msp@.service).",
        ),
        key(
            "msp",
            "group",
            "string",
            "the user's primary group".into(),
            "a group name or gid that exists; only together with user".into(),
            None,
            "The group the delivery command runs as.",
        ),
        key(
            "msp",
            "command_timeout",
            "duration",
            duration(limits::DEFAULT_MSP_COMMAND_TIMEOUT),
            at_most(limits::MAX_MSP_COMMAND_TIMEOUT),
            Some(when_hit_command_timeout()),
            "Time the delivery command may run before it is killed.",
        ),
        key(
            "msp",
            "console",
            "boolean",
            "false".into(),
            "true or false".into(),
            None,
            "Deliver messages without a recipient to /dev/console.",
        ),
        key(
            "msp",
            "rate_per_minute",
            "integer",
            limits::DEFAULT_MSP_RATE_PER_MINUTE.to_string(),
            range(1, limits::MAX_MSP_RATE_PER_MINUTE as usize),
            Some(when_hit_msp_rate()),
            "Messages accepted per source address (IPv6: per ipv6_source_prefix) a minute, in \
             bursts of as many.",
        ),
        key(
            "msp",
            "recipient_rate_per_minute",
            "integer",
            limits::DEFAULT_MSP_RECIPIENT_RATE_PER_MINUTE.to_string(),
            range(1, limits::MAX_MSP_RATE_PER_MINUTE as usize),
            Some(when_hit_msp_recipient_rate()),
            "Messages accepted for one recipient a minute, from all sources together, in bursts \
             of as many.",
        ),
        key(
            "msp",
            "total_rate_per_minute",
            "integer",
            limits::DEFAULT_MSP_TOTAL_RATE_PER_MINUTE.to_string(),
            range(1, limits::MAX_MSP_RATE_PER_MINUTE as usize),
            Some(when_hit_msp_total_rate()),
            "Messages delivered a minute, all sources and recipients together, in bursts of as \
             many; messages over UDP, whose source can be forged, take at most half of it. Only \
             a message about to be delivered is charged: malformed and refused ones count \
             against their source's rate_per_minute alone.",
        ),
        key(
            "msp",
            "idle_timeout",
            "duration",
            duration(limits::DEFAULT_MSP_IDLE_TIMEOUT),
            at_most(limits::MAX_MSP_IDLE_TIMEOUT),
            Some(when_hit_msp_timeouts()),
            "TCP: time allowed for each whole message on a connection, however it is cut into \
             reads.",
        ),
        key(
            "msp",
            "connection_timeout",
            "duration",
            duration(limits::DEFAULT_MSP_CONNECTION_TIMEOUT),
            at_most(limits::MAX_MSP_CONNECTION_TIMEOUT),
            Some(when_hit_msp_timeouts()),
            "TCP: lifetime of a connection.",
        ),
        key(
            "msp",
            "max_connections",
            "integer",
            limits::DEFAULT_MSP_MAX_CONNECTIONS.to_string(),
            range(1, limits::MAX_MSP_CONNECTIONS),
            Some(when_hit_msp_max_connections()),
            "TCP connections at once.",
        ),
        key(
            "msp",
            "max_connections_per_source",
            "integer",
            limits::DEFAULT_MSP_MAX_CONNECTIONS_PER_SOURCE.to_string(),
            range(1, limits::MAX_MSP_CONNECTIONS),
            Some(when_hit_msp_connections()),
            "Of those, from one source address (IPv6: per ipv6_source_prefix).",
        ),
        key(
            "msp",
            "max_messages_per_connection",
            "integer",
            limits::DEFAULT_MSP_MAX_MESSAGES_PER_CONNECTION.to_string(),
            range(1, limits::MAX_MSP_MESSAGES_PER_CONNECTION),
            Some(when_hit_msp_messages_per_connection()),
            "Messages one TCP connection may carry.",
        ),
        key(
            "msp",
            "dedup_window",
            "duration",
            duration(limits::DEFAULT_MSP_DEDUP_WINDOW),
            format!(
                "{}; at most {} messages are remembered",
                at_most(limits::MAX_MSP_DEDUP_WINDOW),
                limits::MSP_DEDUP_CAPACITY
            ),
            Some(when_hit_dedup()),
            "How long UDP messages are remembered: a datagram with the same source, sender, \
             sender's terminal, cookie and text is a retransmission, answered as its first copy \
             was and not shown again. Messages over TCP are never taken for retransmissions. \
             The UDP answers sent are remembered as long: a datagram equal to the answer sent \
             to its source is that answer come back, and gets neither delivery nor answer.",
        ),
        key(
            "msp",
            "utmp",
            "string",
            format!("\"{DEFAULT_UTMP}\""),
            "a path".into(),
            None,
            "Login records read to find a recipient's terminals, together with \
             systemd-logind's sessions (tmux, screen and xterm panes are only in the login \
             records).",
        ),
        key(
            "msp",
            "allow",
            "array of strings",
            "[] (everyone)".into(),
            NETS.into(),
            Some("TCP: the connection is closed before anything is read; UDP: silence".into()),
            "Who may send messages, as a service's allow: when not empty, only these clients. \
             [tcpmux] allow and deny do not apply to MSP.",
        ),
        key(
            "msp",
            "deny",
            "array of strings",
            "[]".into(),
            NETS.into(),
            Some("TCP: the connection is closed before anything is read; UDP: silence".into()),
            "Who may not send messages; deny wins over allow.",
        ),
        key(
            "msp",
            "trusted_proxies",
            "array of strings",
            "[] (none)".into(),
            NETS.into(),
            Some(
                "from these addresses, a TCP connection without a valid PROXY protocol header \
                 is closed (OUTCOME=msp-bad-proxy-header)"
                    .into(),
            ),
            "As [tcpmux] trusted_proxies, for MSP over TCP: load balancers whose connections \
             begin with a PROXY protocol header, whose client address is then the sender's for \
             allow and deny, the rates, REMOTE_ADDR, the message's header and the log. The \
             header must come within idle_timeout. MSP over UDP is never proxied: a \
             datagram's source is its sender.",
        ),
        key(
            "service",
            "name",
            "string",
            "none (required)".into(),
            format!(
                "1 to {} visible ASCII characters, not \"help\", unique without regard to case; \
                 with the systemd launcher at most {MAX_ESCAPED_NAME_LEN} once escaped for unit names",
                limits::MAX_NAME_LEN
            ),
            None,
            "The name a client sends. Names compare without regard to case.",
        ),
        key(
            "service",
            "command",
            "array of strings",
            "none (required unless the systemd launcher takes ExecStart= from a unit drop-in)"
                .into(),
            command_values(),
            Some(
                "`-Service unavailable` when the program is missing or cannot be run (not a \
                 regular file, not executable, or neither an ELF binary nor a #! script)"
                    .into(),
            ),
            "The service's program, run with the connection as standard input and output.",
        ),
        key(
            "service",
            "plus",
            "boolean",
            "true".into(),
            "true or false".into(),
            None,
            "true: tcpmuxd answers \"+\" before starting the program; false: the program \
             answers \"+\" or \"-\" itself.",
        ),
        key(
            "service",
            "launcher",
            "string",
            "\"auto\"".into(),
            "\"exec\", \"systemd\", \"auto\", \"forward\" or \"pass\"".into(),
            None,
            "How a session is started: as a child of tcpmuxd, or as a transient unit \
             tcpmux-NAME@INSTANCE.service; \"auto\" picks systemd when tcpmuxd runs as a systemd \
             service. \"forward\" starts no program: tcpmuxd relays the connection to the \
             daemon at forward. \"pass\" starts nothing either: each connection is handed to \
             a daemon that already runs (see pass).",
        ),
        key(
            "service",
            "forward",
            "string",
            "none (required with launcher = \"forward\")".into(),
            format!(
                "IP:port ([IPv6]:port), not a host name, or the absolute path of a Unix stream \
                 socket (at most {} bytes); only with launcher = \"forward\"",
                limits::MAX_UNIX_PATH
            ),
            Some(when_hit_backend()),
            "The running daemon each connection is relayed to, both ways (with splice(2), \
             without a copy through tcpmuxd), after `+` in plus mode: \"127.0.0.1:22\", \
             \"/run/app.sock\". Only this address is ever connected to; nothing a client sends \
             chooses it. The backend must accept within the connect time of the table of \
             limits, or the client is told `-Service unavailable` and the cause is logged. \
             Half-closes and resets are passed on each way; the pair counts as a session for \
             every limit until both sides are closed.",
        ),
        key(
            "service",
            "proxy_protocol",
            "string",
            "none (no header)".into(),
            "\"v1\" or \"v2\"; only with launcher = \"forward\"".into(),
            None,
            "A PROXY protocol header (HAProxy's, version 1 text or version 2 binary) sent to \
             the backend before anything of the client's, naming the client's connection: its \
             address and port, and the address it connected to (those a trusted balancer's \
             header gave, when tcpmuxd is behind one). A Unix backend gets the same TCP \
             addresses. The backend must believe the header from tcpmuxd only.",
        ),
        key(
            "service",
            "idle_timeout",
            "string (duration)",
            duration(limits::DEFAULT_IDLE_TIMEOUT),
            format!(
                "{}; only with launcher = \"forward\"",
                at_most(limits::MAX_IDLE_TIMEOUT)
            ),
            Some(when_hit_idle().into()),
            "A forwarded pair on which no byte moved either way for this long is closed.",
        ),
        key(
            "service",
            "max_instances",
            "integer",
            limits::DEFAULT_MAX_INSTANCES.to_string(),
            range(1, limits::MAX_SESSIONS),
            Some(when_hit_max_instances()),
            "Sessions of this service running at once.",
        ),
        key(
            "service",
            "max_instances_per_source",
            "integer",
            default_share("max_instances"),
            format!("{}, at most max_instances", range(1, limits::MAX_SESSIONS)),
            Some(when_hit_source_sessions()),
            "Of those, sessions held by one IPv4 address or one IPv6 prefix \
             (ipv6_source_prefix), counted as for max_sessions_per_source; as xinetd's \
             per_source, but a share by default, so that one source never takes all.",
        ),
        key(
            "service",
            "max_starts_per_second",
            "integer",
            limits::DEFAULT_MAX_STARTS_PER_SECOND.to_string(),
            range(1, limits::MAX_STARTS_PER_SECOND as usize),
            Some(when_hit_start_rate()),
            "Sessions of this service started per second, with as many in reserve for bursts, \
             shared fairly among sources.",
        ),
        key(
            "service",
            "warm",
            "integer",
            limits::DEFAULT_WARM.to_string(),
            format!("0 to {}", limits::MAX_WARM),
            None,
            "Under the systemd launcher: session units kept started ahead of need, sandbox and \
             all, so that a client waits only for a hand-over and an exec. 0 turns them off. \
             A service without command always starts cold.",
        ),
        key(
            "service",
            "pass",
            "string",
            "none (required with launcher = \"pass\")".into(),
            format!(
                "the absolute path of a Unix SOCK_SEQPACKET socket, at most {} bytes",
                limits::MAX_UNIX_PATH
            ),
            Some(
                "`-Service unavailable` when no daemon listens on it, or its queue of clients \
                 not yet received is full"
                    .into(),
            ),
            "With launcher = \"pass\": the socket of a running daemon to which tcpmuxd hands \
             each client's connection, as a descriptor with the client's TCPMUX_SERVICE, \
             REMOTE_ADDR, REMOTE_PORT, LOCAL_ADDR and LOCAL_PORT; the message is described in \
             tcpmuxd(8), PASSING CONNECTIONS TO A RUNNING DAEMON. Whoever listens on this path \
             receives the clients. No program is started (command, user, group, umask, \
             environment, limits and warm are errors). The session's place is given back once \
             the daemon has taken the client from its queue: max_instances, \
             max_instances_per_source and the shares of [tcpmux] bound the clients waiting \
             there (so one source holds at most its share of the queue, about 70 clients), \
             max_starts_per_second their rate (its fair share per source too), and the daemon \
             bounds the sessions it serves.",
        ),
        key(
            "service",
            "allow",
            "array of strings",
            "[] (everyone the master list allows)".into(),
            NETS.into(),
            Some(when_hit_service_acl()),
            "The service's own access list, checked after the master list. A client it \
             refuses is told the service does not exist, and HELP does not list it for that \
             client: nobody learns of a service they may not use.",
        ),
        key(
            "service",
            "deny",
            "array of strings",
            "[]".into(),
            NETS.into(),
            Some(when_hit_service_acl()),
            "Clients refused this service (hidden from them, as by allow); deny wins over \
             allow.",
        ),
        key(
            "service",
            "user",
            "string",
            "[tcpmux] user".into(),
            "a user name or uid that exists".into(),
            None,
            "The user the program runs as, with group (or that user's primary group) and no \
             supplementary groups; with neither, [tcpmux] user and group. When tcpmuxd runs as root, a program \
             of the exec launcher needs one (here or [tcpmux] user): user = \"root\" written \
             out is the only way to run it as root; not as root, the exec launcher can run it \
             only as tcpmuxd's own user. With the systemd launcher: User= and Group= of the \
             session's unit.",
        ),
        key(
            "service",
            "group",
            "string",
            "the user's primary group".into(),
            "a group name or gid that exists; only together with user".into(),
            None,
            "The group the program runs as.",
        ),
        key(
            "service",
            "environment",
            "table of strings",
            "[tcpmux] environment".into(),
            environment_values(),
            None,
            "Extra variables for the program, written as [service.environment] or as an inline \
             table: added to [tcpmux] environment, replacing its variables of the same name.",
        ),
        key(
            "service",
            "umask",
            "string",
            "[tcpmux] umask".into(),
            UMASK.into(),
            None,
            "The program's umask.",
        ),
        key(
            "service",
            "limits",
            "table",
            "[tcpmux] limits".into(),
            limits_bounds(),
            None,
            "The program's resource limits, written as [service.limits] or as an inline table, \
             with the keys of [tcpmux] limits: each one set here replaces [tcpmux]'s, the others \
             are kept.",
        ),
    ]
}

/// The table of limits, as the README shows it.
pub fn limits_table() -> Vec<Limit> {
    let row = |limit: &str, default: String, when_hit: String| Limit {
        limit: limit.into(),
        default,
        when_hit,
    };
    let kib = |n: usize| n / 1024;
    let mut rows = vec![
        row(
            "service name length",
            format!("{} bytes", limits::MAX_NAME_LEN),
            "`-Service name too long`, then close".into(),
        ),
        row(
            "`[tcpmux] name_timeout`",
            format!(
                "{} (at most {})",
                duration(limits::DEFAULT_NAME_TIMEOUT),
                duration(limits::MAX_NAME_TIMEOUT)
            ),
            when_hit_name_timeout(),
        ),
        row(
            "`[tcpmux] max_handshakes`",
            format!(
                "{} connections in the handshake at once (about 2.3 KiB each: under 40 MiB)",
                limits::DEFAULT_MAX_HANDSHAKES
            ),
            when_hit_max_handshakes(),
        ),
        row(
            "`[tcpmux] max_handshakes_per_source`",
            format!(
                "{} per IPv4 address or IPv6 prefix",
                limits::DEFAULT_MAX_HANDSHAKES_PER_SOURCE
            ),
            when_hit_per_source(),
        ),
        row(
            "`[tcpmux] ipv6_source_prefix`",
            format!("{} bits", limits::DEFAULT_IPV6_SOURCE_PREFIX),
            "(how IPv6 sources are grouped, for TCPMUX and MSP)".into(),
        ),
        row(
            "`[tcpmux] max_sessions`",
            format!(
                "{} sessions running, all services",
                limits::DEFAULT_MAX_SESSIONS
            ),
            when_hit_server_busy(),
        ),
        row(
            "`[tcpmux] max_sessions_per_source`",
            format!(
                "{} per IPv4 address or IPv6 prefix: {} with the defaults",
                default_share("max_sessions"),
                limits::default_source_share(limits::DEFAULT_MAX_SESSIONS)
            ),
            when_hit_source_sessions(),
        ),
        row(
            "`[tcpmux] max_starting_units`",
            "twice the CPUs (at least 2) session units being started at once, systemd launcher"
                .into(),
            when_hit_no_turn(),
        ),
        row(
            "open files (`LimitNOFILE=`, `ulimit -n`)",
            "65536 in `tcpmuxd.service`; the soft limit is raised to the hard one at startup"
                .into(),
            format!("{}, before any `+`", when_hit_server_busy()),
        ),
        row(
            "`[[service]] max_instances`",
            format!("{} sessions of the service", limits::DEFAULT_MAX_INSTANCES),
            when_hit_max_instances(),
        ),
        row(
            "`[[service]] max_instances_per_source`",
            format!(
                "{} per IPv4 address or IPv6 prefix: {} with the defaults",
                default_share("max_instances"),
                limits::default_source_share(limits::DEFAULT_MAX_INSTANCES)
            ),
            when_hit_source_sessions(),
        ),
        row(
            "`[[service]] max_starts_per_second`",
            format!(
                "{} (with as many in reserve), shared fairly among sources",
                limits::DEFAULT_MAX_STARTS_PER_SECOND
            ),
            when_hit_start_rate(),
        ),
        row(
            "`[[service]] idle_timeout`",
            format!(
                "{} without a byte either way, forwarded services (at most {})",
                duration(limits::DEFAULT_IDLE_TIMEOUT),
                duration(limits::MAX_IDLE_TIMEOUT)
            ),
            when_hit_idle().into(),
        ),
        row(
            "a forwarded service's backend: accepting the connection",
            duration(limits::FORWARD_CONNECT_TIMEOUT),
            when_hit_backend(),
        ),
        row(
            "listen backlog (sockets tcpmuxd binds)",
            limits::LISTEN_BACKLOG.to_string(),
            "connections wait in the kernel".into(),
        ),
        row(
            "after a refusal or HELP",
            format!(
                "up to {} KiB / {} read and dropped",
                kib(limits::DRAIN_LIMIT),
                duration(limits::DRAIN_TIMEOUT).replace('s', " s")
            ),
            "the reply arrives before the close".into(),
        ),
        row(
            &format!(
                "a `HELP` list longer than {} KiB (many services)",
                kib(limits::HELP_CHUNK)
            ),
            format!(
                "written {} KiB at a time as the client takes it, never held whole, by the \
                 connection's task; the connection's send buffer capped at {} KiB (the kernel \
                 allots twice that); all within `name_timeout`, the connection keeping its \
                 place in the handshake meanwhile",
                kib(limits::HELP_CHUNK),
                kib(limits::LONG_REPLY_SEND_BUFFER)
            ),
            "a client that has not taken the whole list by then is reset".into(),
        ),
        row(
            "a session's stderr (exec launcher)",
            format!(
                "{} KiB read a second, lines of {} bytes, {} lines a second from one session, \
                 each line an entry about its client's connection ({} a second from one \
                 source, {} in all, with every other such entry)",
                kib(limits::MAX_STDERR_BYTES_PER_SECOND),
                limits::MAX_STDERR_LINE,
                limits::MAX_STDERR_LINES_PER_SECOND,
                crate::log::budget::LOG_LINES_PER_SOURCE_PER_SECOND,
                crate::log::budget::LOG_LINES_PER_SECOND,
            ),
            format!(
                "past {} KiB the program blocks on its full pipe until the next second; lines \
                 over the rates are counted in one warning, itself an entry about the client, \
                 or in the summary's count of entries left out",
                kib(limits::MAX_STDERR_BYTES_PER_SECOND)
            ),
        ),
        row(
            "`[msp]` message size",
            format!(
                "under {} octets; cookie {}",
                crate::msp::message::MAX_MESSAGE_LEN + 1,
                crate::msp::message::MAX_COOKIE_LEN
            ),
            "malformed: never delivered (TCP `-reason`, UDP silence)".into(),
        ),
        row(
            "`[msp] rate_per_minute`",
            format!(
                "{} per source address (IPv6: per `ipv6_source_prefix`)",
                limits::DEFAULT_MSP_RATE_PER_MINUTE
            ),
            when_hit_msp_rate(),
        ),
        row(
            "`[msp] recipient_rate_per_minute`",
            format!(
                "{} per recipient, all sources together",
                limits::DEFAULT_MSP_RECIPIENT_RATE_PER_MINUTE
            ),
            when_hit_msp_recipient_rate(),
        ),
        row(
            "`[msp] total_rate_per_minute`",
            format!(
                "{}, all deliveries together (UDP at most half)",
                limits::DEFAULT_MSP_TOTAL_RATE_PER_MINUTE
            ),
            when_hit_msp_total_rate(),
        ),
        row(
            "`[msp] max_connections`",
            format!("{} TCP connections", limits::DEFAULT_MSP_MAX_CONNECTIONS),
            when_hit_msp_max_connections(),
        ),
        row(
            "`[msp] max_connections_per_source`",
            format!(
                "{} per IPv4 address or IPv6 prefix",
                limits::DEFAULT_MSP_MAX_CONNECTIONS_PER_SOURCE
            ),
            when_hit_msp_connections(),
        ),
        row(
            "`[msp] max_messages_per_connection`",
            format!(
                "{} messages on one TCP connection",
                limits::DEFAULT_MSP_MAX_MESSAGES_PER_CONNECTION
            ),
            when_hit_msp_messages_per_connection(),
        ),
        row(
            "`[msp] idle_timeout`, `connection_timeout`",
            format!(
                "{} per whole message (at most {}), {} per connection (at most {})",
                duration(limits::DEFAULT_MSP_IDLE_TIMEOUT),
                duration(limits::MAX_MSP_IDLE_TIMEOUT),
                duration(limits::DEFAULT_MSP_CONNECTION_TIMEOUT),
                duration(limits::MAX_MSP_CONNECTION_TIMEOUT)
            ),
            when_hit_msp_timeouts(),
        ),
        row(
            "`[msp] command_timeout`",
            format!(
                "{} (at most {})",
                duration(limits::DEFAULT_MSP_COMMAND_TIMEOUT),
                duration(limits::MAX_MSP_COMMAND_TIMEOUT)
            ),
            when_hit_command_timeout(),
        ),
        row(
            "`[msp] dedup_window`",
            format!(
                "{} (at most {}), at most {} UDP messages and {} answers remembered",
                duration(limits::DEFAULT_MSP_DEDUP_WINDOW),
                duration(limits::MAX_MSP_DEDUP_WINDOW),
                limits::MSP_DEDUP_CAPACITY,
                limits::MSP_DEDUP_CAPACITY
            ),
            when_hit_dedup(),
        ),
        row(
            "MSP datagram source port",
            format!(
                "below {}, a known service port ({}), or one of tcpmuxd's MSP ports",
                crate::msp::guard::LOWEST_ANSWERED_PORT,
                crate::msp::guard::UNANSWERED_SOURCE_PORTS
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "nothing delivered, no answer (a forged source cannot start a loop)".into(),
        ),
        row(
            "MSP datagrams being delivered",
            format!(
                "{} at once, {} of them from one source (IPv4 address or IPv6 prefix)",
                limits::MSP_MAX_UDP_IN_FLIGHT,
                limits::MSP_MAX_UDP_IN_FLIGHT_PER_SOURCE
            ),
            "further datagrams dropped (silence, as for any failure)".into(),
        ),
        row(
            "exec launcher and MSP's delivery command: programs being started at once",
            format!(
                "{}, of them {} of one service (or of MSP's delivery); a start waits {} for \
                 room",
                limits::MAX_EXEC_STARTING,
                limits::MAX_EXEC_STARTING_PER_SERVICE,
                duration(limits::EXEC_START_SLOT_WAIT)
            ),
            "`-Server busy, try again later` (`no-turn`)".into(),
        ),
        row(
            "exec launcher: a program's start (from its child's creation to its exec)",
            duration(limits::EXEC_START_TIMEOUT),
            "the child is killed: `-Service unavailable`, or, when it had written `+` \
             already (held in its exec), the end of the connection; logged either way"
                .into(),
        ),
        row(
            "systemd: D-Bus call / unit start",
            format!(
                "{} / {}",
                duration(limits::DBUS_CALL_TIMEOUT),
                duration(limits::UNIT_START_TIMEOUT)
            ),
            "`-Service unavailable`".into(),
        ),
        row(
            "a program's `command` and `environment` (services, `[tcpmux] environment`, \
             `[msp] command`)",
            format!(
                "each argument or NAME=value under {} KiB; command and environment together \
                 within {} KiB ({} KiB less {} KiB kept for the variables added at start)",
                kib(limits::MAX_EXEC_STRING),
                kib(crate::config::EXEC_CONFIG_ROOM),
                kib(limits::MAX_EXEC_TOTAL),
                kib(limits::EXEC_ENVIRONMENT_MARGIN)
            ),
            "the configuration is refused when read (`--check` names each one): execve would \
             fail (E2BIG), and every client hear `+` and a closed connection"
                .into(),
        ),
        row(
            "`[tcpmux] limits`, `[[service]] limits`",
            "none: a session's program inherits them (exec launcher: from tcpmuxd; systemd \
             launcher: from the unit's defaults)"
                .into(),
            "the program meets the kernel's limit (too many open files, fork fails, out of \
             memory, SIGXCPU, no core dump)"
                .into(),
        ),
    ];
    // The upper bound of each count, checked when the configuration is read.
    let maxima = [
        ("`[tcpmux] max_handshakes`", limits::MAX_HANDSHAKES),
        (
            "`[tcpmux] max_handshakes_per_source`",
            limits::MAX_HANDSHAKES,
        ),
        ("`[tcpmux] max_sessions`", limits::MAX_SESSIONS),
        ("`[tcpmux] max_sessions_per_source`", limits::MAX_SESSIONS),
        ("`[tcpmux] max_starting_units`", limits::MAX_STARTING_UNITS),
        ("`[[service]] max_instances`", limits::MAX_SESSIONS),
        (
            "`[[service]] max_instances_per_source`",
            limits::MAX_SESSIONS,
        ),
        (
            "`[[service]] max_starts_per_second`",
            limits::MAX_STARTS_PER_SECOND as usize,
        ),
        (
            "`[msp] rate_per_minute`",
            limits::MAX_MSP_RATE_PER_MINUTE as usize,
        ),
        (
            "`[msp] recipient_rate_per_minute`",
            limits::MAX_MSP_RATE_PER_MINUTE as usize,
        ),
        (
            "`[msp] total_rate_per_minute`",
            limits::MAX_MSP_RATE_PER_MINUTE as usize,
        ),
        ("`[msp] max_connections`", limits::MAX_MSP_CONNECTIONS),
        (
            "`[msp] max_connections_per_source`",
            limits::MAX_MSP_CONNECTIONS,
        ),
        (
            "`[msp] max_messages_per_connection`",
            limits::MAX_MSP_MESSAGES_PER_CONNECTION,
        ),
    ];
    for row in &mut rows {
        if let Some((_, max)) = maxima.iter().find(|(limit, _)| *limit == row.limit) {
            row.default.push_str(&format!(" (at most {max})"));
        }
    }
    rows
}

/// The header of the README's table of limits, by which the test finds it.
pub const LIMITS_TABLE_HEADER: &str = "| limit | default | what a client sees when it is hit |";

/// The table of limits in Markdown, exactly as in the README.
pub fn limits_markdown() -> String {
    let mut out = format!("{LIMITS_TABLE_HEADER}\n|---|---|---|\n");
    for l in limits_table() {
        out.push_str(&format!(
            "| {} | {} | {} |\n",
            l.limit, l.default, l.when_hit
        ));
    }
    out
}

/// Where the configuration is read from, for the manual.
pub const CONFIG_PATH: &str = DEFAULT_CONFIG_PATH;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FileConfig;
    use std::collections::BTreeSet;

    #[test]
    fn max_starting_units_is_described_with_the_limits_in_force() {
        let key = keys()
            .into_iter()
            .find(|k| k.name == "max_starting_units")
            .unwrap();
        let wait = format!("at most {} s", limits::TURN_WAIT_TIMEOUT.as_secs());
        let hold = format!("over {} s", limits::TURN_HOLD_MAX.as_secs());
        assert!(key.description.contains(&wait), "{}", key.description);
        assert!(key.description.contains(&hold), "{}", key.description);
    }

    /// The keys serde accepts in one table, from its error for an unknown
    /// key ("unknown field `x`, expected one of `a`, `b`").
    fn schema_keys(table: &str) -> BTreeSet<String> {
        let text = format!("{table}\nname = \"x\"\nno_such_key_ = 1\n");
        let err = toml::from_str::<FileConfig>(&text)
            .expect_err("an unknown key is an error")
            .to_string();
        let expected = err
            .split("expected one of ")
            .nth(1)
            .unwrap_or_else(|| panic!("no list of keys in: {err}"));
        expected
            .split(',')
            .map(|k| {
                k.trim()
                    .trim_matches(|c: char| c == '`' || c.is_whitespace())
            })
            .map(|k| k.trim_end_matches(['`', '\n']).to_string())
            .filter(|k| !k.is_empty())
            .collect()
    }

    #[test]
    fn every_key_of_the_file_format_is_documented() {
        for (table, section) in [
            ("[tcpmux]", "tcpmux"),
            ("[msp]", "msp"),
            ("[[service]]", "service"),
        ] {
            let documented: BTreeSet<String> = keys()
                .iter()
                .filter(|k| k.section == section)
                .map(|k| k.name.to_string())
                .collect();
            assert_eq!(
                schema_keys(table),
                documented,
                "keys of {table} in the file format (left) and in tcpmuxd.toml(5) (right)"
            );
        }
    }

    #[test]
    fn every_key_has_a_default_bounds_and_a_description() {
        for k in keys() {
            assert!(
                !k.default.is_empty(),
                "{}.{}: no default",
                k.section,
                k.name
            );
            assert!(!k.bounds.is_empty(), "{}.{}: no bounds", k.section, k.name);
            assert!(!k.description.is_empty(), "{}.{}", k.section, k.name);
        }
    }

    #[test]
    fn the_readme_table_of_limits_is_this_one() {
        let table = super::super::readme_table(LIMITS_TABLE_HEADER)
            .expect("README.md has the table of limits");
        assert_eq!(
            table,
            limits_markdown(),
            "README.md's table of limits differs from src/cli/config_doc.rs \
             (print it with `cargo run --example gen-docs -- --readme-table`)"
        );
    }

    #[test]
    fn every_limit_key_of_the_table_is_documented_with_its_answer() {
        let keys = keys();
        for row in limits_table() {
            let Some(rest) = row.limit.strip_prefix("`[") else {
                continue;
            };
            let (section, name) = rest.split_once("] ").unwrap_or(("", ""));
            let section = section.trim_matches(['[', ']']);
            let name = name.trim_matches('`');
            if name.contains('`') || name.is_empty() {
                continue;
            }
            let key = keys
                .iter()
                .find(|k| k.section == section && k.name == name)
                .unwrap_or_else(|| panic!("{}: not among the keys", row.limit));
            assert!(
                row.default.starts_with(&key.default),
                "{}: the table's default \"{}\" is not the key's \"{}\"",
                row.limit,
                row.default,
                key.default
            );
            if let Some(when_hit) = &key.when_hit {
                assert_eq!(&row.when_hit, when_hit, "{}", row.limit);
            }
        }
    }

    #[test]
    fn durations_read_as_in_the_file() {
        assert_eq!(duration(Duration::from_secs(10)), "10s");
        assert_eq!(duration(Duration::from_secs(300)), "5m");
        assert_eq!(duration(Duration::from_secs(3600)), "1h");
        assert_eq!(duration(Duration::from_secs(86400)), "1d");
    }
}
