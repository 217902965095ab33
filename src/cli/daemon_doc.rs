//! The manual tcpmuxd(8): its text, in one place, rendered to roff by
//! `cargo run --example gen-docs` (the OPTIONS section comes from the clap
//! definitions in `cli::tcpmuxd`). The table of TCPMUX replies is here too,
//! and the README shows it as Markdown. The tests below check that the
//! manual names every option, every `OUTCOME` value the code logs and every
//! reply tcpmuxd sends, so that it cannot drift from the code.

use super::config_doc::duration;
use super::exit;
use crate::config::DEFAULT_CONFIG_PATH;
use crate::limits;

/// A piece of a section. Text marks `code` in backquotes, shown in bold.
#[derive(Debug, Clone)]
pub enum Block {
    /// A paragraph.
    Para(String),
    /// Terms, each with its paragraph (roff `.TP`).
    Terms(Vec<(String, String)>),
    /// Lines shown as they are: commands, files.
    Lines(Vec<String>),
    /// A subsection's heading (roff `.SS`).
    Sub(&'static str),
}

/// One section of the manual, after OPTIONS (or DESCRIPTION, before it).
#[derive(Debug, Clone)]
pub struct Section {
    pub title: &'static str,
    pub blocks: Vec<Block>,
}

/// The line of the NAME section, after "tcpmuxd - ".
pub const SUMMARY: &str = "TCPMUX (RFC 1078) and Message Send Protocol (RFC 1159, RFC 1312) server";

fn para(text: impl Into<String>) -> Block {
    Block::Para(text.into())
}

fn terms<T: ToString, const N: usize>(items: [(T, String); N]) -> Block {
    Block::Terms(items.into_iter().map(|(t, d)| (t.to_string(), d)).collect())
}

fn lines(items: &[&str]) -> Block {
    Block::Lines(items.iter().map(|l| l.to_string()).collect())
}

/// One row of the table of TCPMUX replies: the reply (Markdown: the text
/// in backquotes, or words for a reply that is not tcpmuxd's own line) and
/// when a client gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub reply: &'static str,
    pub meaning: String,
}

/// Every reply a TCPMUX client can get, in the order of the handshake.
pub fn replies() -> Vec<Reply> {
    let row = |reply, meaning: &str| Reply {
        reply,
        meaning: meaning.to_string(),
    };
    vec![
        row(
            "`+` CRLF",
            "the service is starting on this connection (plus mode); its own protocol follows",
        ),
        row(
            "*(service's own line)*",
            "a dedicated service (`plus = false`) answers `+` or `-` itself",
        ),
        row(
            "list of names, one per CRLF line, then close",
            "reply to `HELP` (any case): the services this client may use; the client has \
             `name_timeout` to take it (a connection with some of the list still unsent then is \
             reset)",
        ),
        row(
            "`-Unknown service`",
            "no service by that name, or the service's own `allow`/`deny` refuses the client's \
             address: a service is hidden from a client that may not use it, as `HELP` hides it",
        ),
        row(
            "`-Access denied`",
            "the master list (`[tcpmux] allow`/`deny`) refuses the client's address: every \
             service and `HELP`",
        ),
        row(
            "`-Service busy, try again later`",
            "the service already runs `max_instances` sessions",
        ),
        row(
            "`-Too many sessions from your address, try again later`",
            "the client's address (or IPv6 prefix) already holds `max_instances_per_source` \
             sessions of the service, or `max_sessions_per_source` of all services",
        ),
        Reply {
            reply: "`-Server busy, try again later`",
            meaning: format!(
                "`[tcpmux] max_sessions` sessions run already, the limit on open files leaves no \
                 room for the session, or no turn to start its unit came within {}",
                duration(limits::TURN_WAIT_TIMEOUT).replace('s', " s")
            ),
        },
        row(
            "`-Service started too often, try again later`",
            "the service's `max_starts_per_second` is used up for this second, or the client's \
             address (or IPv6 prefix) took its fair share of it",
        ),
        row(
            "`-Service unavailable`",
            "the service's program is missing or cannot be run",
        ),
        Reply {
            reply: "`-Service name too long`",
            meaning: format!("the name is longer than {} bytes", limits::MAX_NAME_LEN),
        },
        row(
            "`-Invalid service name`",
            "empty, or holds bytes other than visible ASCII",
        ),
        row(
            "`-Timed out waiting for the service name`",
            "the line did not arrive within `name_timeout`",
        ),
        row(
            "`-Too many connections, try again later`",
            "`max_handshakes` connections are in the handshake: the oldest still waiting for its \
             name gets this answer and gives way to the new one",
        ),
        row(
            "`-Too many connections from your address, try again later`",
            "the client's address (or IPv6 prefix) already has `max_handshakes_per_source` \
             connections in the handshake",
        ),
    ]
}

/// The header of the README's table of replies, by which tests find it.
pub const REPLIES_TABLE_HEADER: &str = "| reply | meaning |";

/// The table of replies in Markdown, exactly as in the README.
pub fn replies_markdown() -> String {
    let mut out = format!("{REPLIES_TABLE_HEADER}\n|---|---|\n");
    for r in replies() {
        out.push_str(&format!("| {} | {} |\n", r.reply, r.meaning));
    }
    out
}

/// The `OUTCOME=` values of the journal, with their meaning: how a TCPMUX
/// connection ended, then MSP's.
pub fn outcomes() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "served",
            "the session was started (plus mode: after the `+`)",
        ),
        ("help", "the client asked for `HELP` and got the list"),
        (
            "unknown",
            "no service by the name the client sent (`-Unknown service`)",
        ),
        (
            "denied",
            "an access list refused the client: the master list (`-Access denied`) or the \
             service's (`-Unknown service`)",
        ),
        ("busy", "the service runs `max_instances` sessions"),
        ("timeout", "no whole request line within `name_timeout`"),
        ("too-long", "the name was longer than the limit"),
        (
            "bad-name",
            "an empty name, or bytes other than visible ASCII",
        ),
        (
            "closed",
            "the client went away before it was answered, or before its session started",
        ),
        (
            "unavailable",
            "the service's program is missing or cannot be run, or the systemd launcher has no \
             bus (`-Service unavailable`)",
        ),
        (
            "spawn-failed",
            "starting the program or the unit failed; the entry gives the cause",
        ),
        (
            "invalid-config",
            "the configuration at start was invalid, so nothing is served until a reload with \
             a valid one (`-Service unavailable`); see RECOVERY",
        ),
        (
            "overloaded",
            "`max_handshakes` reached with no handshake waiting that could give way",
        ),
        (
            "shed",
            "a connection still waiting for its name gave way to a newer one",
        ),
        (
            "source-limit",
            "the source's `max_handshakes_per_source` connections were in the handshake",
        ),
        ("sessions-full", "`max_sessions` sessions were running"),
        ("start-rate", "over the service's `max_starts_per_second`"),
        (
            "no-descriptors",
            "the limit on open files left no room for the connection or the session",
        ),
        (
            "no-turn",
            "no turn to start came in time: for the session's unit (`max_starting_units`), \
             or for an exec program (a fixed number start at once, a quarter of them of one \
             service)",
        ),
        (
            "source-busy",
            "the source held `max_instances_per_source` sessions of the service",
        ),
        (
            "source-sessions-full",
            "the source held `max_sessions_per_source` sessions",
        ),
        (
            "bad-proxy-header",
            "from an address in `trusted_proxies`, the PROXY protocol header was missing, \
             malformed, truncated, over the request line's size or not complete within \
             `name_timeout`: closed without a reply; the entry gives the cause and names the \
             balancer",
        ),
        ("delivered", "MSP: the message was delivered"),
        (
            "refused",
            "MSP: the message was not delivered (not logged in, `mesg n`, a control code, the \
             delivery command failed); the entry gives the reason",
        ),
        ("limited", "MSP: over one of the rates"),
        (
            "duplicate",
            "MSP: a retransmission of a message already handled",
        ),
        ("msp-refused", "summary: MSP messages refused"),
        (
            "msp-malformed",
            "summary: MSP messages that are not messages",
        ),
        ("msp-duplicate", "summary: MSP retransmissions"),
        (
            "msp-limited",
            "summary: MSP messages over a rate or `max_messages_per_connection`",
        ),
        (
            "msp-denied",
            "summary: MSP sources refused by `[msp] allow`/`deny`",
        ),
        (
            "msp-overloaded",
            "summary: MSP connections or datagrams dropped at `max_connections` or at the \
             datagrams in delivery",
        ),
        (
            "msp-source-limit",
            "summary: MSP connections over `max_connections_per_source`",
        ),
        (
            "msp-shed",
            "summary: silent MSP connections that gave way to new ones",
        ),
        (
            "msp-service-port",
            "summary: MSP datagrams from a source port that is never answered",
        ),
        (
            "msp-loop",
            "summary: MSP datagrams that were tcpmuxd's own answer come back",
        ),
        (
            "msp-bad-proxy-header",
            "summary: MSP connections from `[msp] trusted_proxies` closed for a missing or bad \
             PROXY protocol header",
        ),
    ]
}

/// DESCRIPTION.
pub fn description() -> Vec<Block> {
    vec![
        para(
            "tcpmuxd serves TCPMUX (RFC 1078) on TCP port 1: a client connects, sends the name \
             of a service and CR LF, and tcpmuxd answers `+` and hands the connection to that \
             service's program, or answers `-` and a reason and closes. `HELP` lists the \
             services the client may use. tcpmuxd never reads past the line end: whatever the \
             client sends behind it reaches the program.",
        ),
        para(
            "It is built to face the open Internet: every input a client controls is bounded \
             (name length, time, connections, sessions and starts, per source and in all), a \
             limit answers at once and recovers by itself, and the accept loop never stops. \
             tcpmuxd itself does only the short, risky part, reading one line from an \
             untrusted peer; everything long-lived runs elsewhere.",
        ),
        para(
            "Under systemd, systemd binds the ports and passes them in (socket activation), \
             and each session runs as a transient unit `tcpmux-NAME@INSTANCE.service` of its \
             own, with systemd's sandbox, limits and journal; it keeps running when tcpmuxd \
             restarts. Without systemd, tcpmuxd binds its ports itself and runs each session's \
             program as its own child (the exec launcher).",
        ),
        para(
            "tcpmuxd also serves the Message Send Protocol (RFC 1159 version A, RFC 1312 \
             version B) on TCP and UDP port 18: a short message to a user's terminals, to the \
             journal or to a command. It is off unless turned on; see MESSAGE SEND PROTOCOL.",
        ),
        para(format!(
            "The configuration is read from `{DEFAULT_CONFIG_PATH}` and the drop-ins in \
             `conf.d/` beside it; tcpmuxd.toml(5) describes every key, its default and its \
             bounds."
        )),
    ]
}

/// The sections after OPTIONS, in order.
pub fn sections() -> Vec<Section> {
    vec![
        configuration(),
        sockets(),
        replies_section(),
        session_units(),
        warm_units(),
        exec_launcher(),
        forwarded_services(),
        pass_launcher(),
        msp(),
        journal(),
        notify(),
        signals(),
        exit_status(),
        environment(),
        files(),
        recovery(),
        examples(),
        security(),
    ]
}

fn configuration() -> Section {
    Section {
        title: "CONFIGURATION",
        blocks: vec![
            para(format!(
                "tcpmuxd reads `--config` (default `{DEFAULT_CONFIG_PATH}`), then every file \
                 ending in `.toml` in `conf.d/` beside it, in lexical order. A drop-in may set \
                 `[tcpmux]` and `[msp]` keys (a later file wins key by key) and add \
                 `[[service]]` tables. `[tcpmux]` may also set `user`, `group`, `umask`, \
                 `environment` and resource limits as defaults for the programs of every \
                 service; a service overrides them. Unknown keys, values out of bounds and a \
                 service defined twice are errors."
            )),
            para(
                "`tcpmuxd --check` reads the configuration as the daemon would and reports \
                 every error, in file order, each with its file, line and key, and exits 0 when \
                 it is valid or 78 when not; it touches no running daemon. `tcpmuxd --check \
                 --print` prints the configuration in force after merging the drop-ins, with \
                 every default written out, as `sshd -T` does.",
            ),
            para(
                "`systemctl reload tcpmuxd` first runs `tcpmuxd --check` and fails when the \
                 configuration is invalid: `systemctl` exits non-zero, the errors are in \
                 `systemctl status tcpmuxd` and the journal, and the configuration in force \
                 keeps serving. A valid configuration is applied to new connections; running \
                 sessions are untouched. `systemctl reload` fails while tcpmuxd is not running \
                 (it starts with the first connection): `systemctl try-reload-or-restart \
                 tcpmuxd` applies a configuration in every state. Without systemd, SIGHUP \
                 reloads; an invalid configuration is then logged and the old one kept.",
            ),
            para(
                "A request is judged by the configuration in force when its name arrives. A \
                 service whose program is missing is a warning, not an error: the others are \
                 served, and that one answers `-Service unavailable` until the program is \
                 there.",
            ),
        ],
    }
}

fn sockets() -> Section {
    Section {
        title: "SOCKETS AND SOCKET ACTIVATION",
        blocks: vec![
            para(
                "Socket-activated, tcpmuxd takes its sockets by their `FileDescriptorName=` and \
                 their type, never by their position (systemd does not keep the order): \
                 `tcpmux` (stream) is the TCPMUX port, from `tcpmuxd.socket` (TCP port 1); \
                 `msp` (one stream and one datagram socket) is the Message Send Protocol's, \
                 from `tcpmuxd-msp.socket` (TCP and UDP port 18). A socket of any other name is \
                 a startup error.",
            ),
            para(
                "`tcpmuxd.service` runs `tcpmuxd --only tcpmux` and is started by \
                 `tcpmuxd.socket` at the first connection; `tcpmuxd-msp.service` runs `tcpmuxd \
                 --only msp` and is started by `tcpmuxd-msp.socket`. The two are the same \
                 program with the same configuration, each serving one protocol, so that each \
                 can be turned on, off or restarted without the other.",
            ),
            para(
                "While tcpmuxd restarts, systemd keeps the ports open: connections wait in the \
                 socket's backlog (`Backlog=`) and are served when it is back. Handshakes in \
                 progress at a stop are finished first.",
            ),
            para(
                "Not socket-activated, tcpmuxd binds `[tcpmux] listen` (default `[::]:1`) and, \
                 when set, `[msp] listen` for TCP and UDP, with a backlog of 4096. Binding \
                 ports below 1024 then needs root or `CAP_NET_BIND_SERVICE`.",
            ),
        ],
    }
}

fn replies_section() -> Section {
    Section {
        title: "REPLIES",
        blocks: vec![
            para(
                "A request is a service name and CR LF (a bare LF is accepted too); names are \
                 compared without regard to case. tcpmuxd's own replies are one line each, \
                 ended by CR LF, and never contain a NUL byte; after a `-` reply the connection \
                 is closed.",
            ),
            Block::Terms(
                replies()
                    .into_iter()
                    .map(|r| (r.reply.replace('*', ""), r.meaning))
                    .collect(),
            ),
            para(
                "The limits behind these answers, with their defaults, are listed in \
                 tcpmuxd.toml(5), section LIMITS.",
            ),
        ],
    }
}

fn session_units() -> Section {
    Section {
        title: "SESSION UNITS",
        blocks: vec![
            para(
                "With `launcher = \"systemd\"`, which `launcher = \"auto\"` (the default) means \
                 whenever tcpmuxd runs as a systemd service, each session is a transient unit \
                 `tcpmux-NAME@INSTANCE.service`. NAME is the service's name escaped as \
                 `systemd-escape` does (`my-echo` becomes `my\\x2decho`). INSTANCE is unique \
                 to the session: `START-N`, the time tcpmuxd started (microseconds since 1970, \
                 in hexadecimal) and a counter, so that names stay unique across restarts of \
                 tcpmuxd. `systemctl list-units 'tcpmux-*'` lists the sessions running.",
            ),
            para(
                "A unit gets, in this order: the properties tcpmuxd sets (the connection as \
                 standard input and output, in blocking mode; `StandardError=journal` with \
                 `SyslogIdentifier=tcpmux-NAME`; `Type=exec`; \
                 `CollectMode=inactive-or-failed`; the environment below; a `Description=` \
                 naming the service and the client), then the drop-ins of \
                 `tcpmux-.service.d/` (the packages ship `10-defaults.conf` there: \
                 `DynamicUser=yes`, no capabilities, `ProtectSystem=strict`, `PrivateTmp=`, \
                 `PrivateDevices=`, `RuntimeMaxSec=`, `MemoryMax=`, `TasksMax=`, a system call \
                 filter, ...), then those of `tcpmux-NAME@.service.d/`, which may relax or add \
                 anything (`User=`, `ExecStart=`, `LimitNOFILE=`, `Environment=`).",
            ),
            para(
                "The program's environment: `TCPMUX_SERVICE` (the service's name), \
                 `REMOTE_ADDR` and `REMOTE_PORT` (the client, IPv4 clients as IPv4, as \
                 systemd's `Accept=yes` sets them), `LOCAL_ADDR` and `LOCAL_PORT` (the address \
                 the client connected to), `PATH`, and the service's `environment`. On \
                 systemd 257 and later the connection is also passed in \
                 `ExtraFileDescriptors=`: the program, of a warm unit or a cold one, gets it \
                 as fd 3 too, with `LISTEN_FDS=1`, `LISTEN_FDNAMES=connection` and \
                 `LISTEN_PID` its own pid.",
            ),
            para(
                "A service may be defined by unit drop-ins alone: `launcher = \"systemd\"` and \
                 no `command` in the configuration, and `ExecStart=` in \
                 `/etc/systemd/system/tcpmux-NAME@.service.d/`. Never create a unit file \
                 `tcpmux-NAME@.service`: systemd refuses transient instances of a template that \
                 has one, and tcpmuxd logs an error naming it at startup and at every reload. \
                 Run `systemctl daemon-reload` after changing drop-ins.",
            ),
            para(
                "In plus mode, tcpmuxd sends `+` before it starts the unit, after checking that \
                 the service exists, is allowed, has room and (when the configuration names \
                 one) that its program is executable. If the start fails, the error and the \
                 unit are logged, and a dedicated service's client hears `-Service \
                 unavailable`. Running sessions are counted from systemd's own signals, \
                 including those started before a restart of tcpmuxd. While the system bus is \
                 away, clients hear `-Service unavailable`, `HELP` keeps working, and tcpmuxd \
                 reconnects with a backoff of 0.5 s to 30 s; it never starts such a session as \
                 its own child instead.",
            ),
            para(format!(
                "At most `[tcpmux] max_starting_units` units (default twice the CPUs) are being \
                 started at once; further clients wait their turn in order of arrival, before \
                 any `+`, for at most {}, then hear `-Server busy, try again later`.",
                duration(limits::TURN_WAIT_TIMEOUT)
            )),
        ],
    }
}

fn warm_units() -> Section {
    Section {
        title: "WARM UNITS",
        blocks: vec![
            para(
                "Building a sandboxed unit costs systemd tens of milliseconds. So, for each \
                 service with a `command`, the systemd launcher keeps `warm` units (default 4; \
                 all services together at most `[tcpmux] max_warm`) started ahead of need: \
                 units `tcpmux-NAME@INSTANCE.service` like any session's, with the same drop-ins \
                 and sandbox, whose program is the helper `/usr/libexec/tcpmuxd/tcpmux-warm`. \
                 It checks, inside the sandbox, that it can run the service's program, says it \
                 is ready and waits. A client then waits only for a hand-over and an exec: \
                 tcpmuxd passes the connection and its variables to a ready unit, the helper \
                 makes it standard input and output and executes the program, and the unit is \
                 the session from then on. A replacement starts in the background; when none \
                 is ready, the session's unit starts cold.",
            ),
            para(
                "Warm units show as `TCPMUX service NAME (warm unit)` in `systemctl list-units \
                 'tcpmux-*'`. They are not sessions and count against no session limit. A unit \
                 waits at most 2 minutes, then is replaced (`RuntimeMaxSec=` counts from the \
                 unit's start). A reload replaces the warm units of services that changed; a \
                 stop or restart of tcpmuxd ends all of them; running sessions are never \
                 touched. A warm start that fails (a broken drop-in, a program the sandbox \
                 hides) makes the service answer `-Service unavailable` until a warm start \
                 succeeds again, retried after 1 s, doubling up to 60 s. `warm = 0` starts every \
                 unit when its client comes.",
            ),
        ],
    }
}

fn exec_launcher() -> Section {
    Section {
        title: "THE EXEC LAUNCHER",
        blocks: vec![
            para(
                "With `launcher = \"exec\"`, or `\"auto\"` when tcpmuxd does not run as a systemd \
                 service, the program is tcpmuxd's own child, as with inetd: the connection as \
                 standard input and output (blocking), standard error read by tcpmuxd and logged \
                 line by line tagged with the service, the working directory `/`, a session of \
                 its own (`setsid`) with no controlling terminal, exactly descriptors 0, 1 and \
                 2, and only the environment listed under SESSION UNITS. Its exit status is \
                 logged.",
            ),
            para(
                "When tcpmuxd runs as root, every program it starts itself needs a user: the \
                 service's `user`, the default `user` of `[tcpmux]`, or `[tcpmux] \
                 default_user` (its former name); a program with none is a configuration error, and `user = \
                 \"root\"` written out is the only way to run one as root. It runs with that \
                 user's primary group (or `group`), no supplementary groups, and the `umask`, \
                 `environment` and resource limits of the service, or else of `[tcpmux]` (the \
                 umask is 0077 unless one of them sets it). Not \
                 run as root, tcpmuxd cannot switch users and its programs run as its own \
                 user.",
            ),
            para(format!(
                "The child is made as posix_spawn(3) makes one: it runs in tcpmuxd's memory \
                 (not a copy of it) until it executes the program, and a plus-mode service's \
                 `+` is written by the child itself just before, once every step that can fail \
                 has succeeded, and holds no descriptor but 0, 1 and 2. A start that switches \
                 users does so only while `fs.suid_dumpable` is 0; at 2 (core files by root, as \
                 systemd-coredump and apport set it) its child runs in a copy of tcpmuxd's \
                 memory instead (slower, as fork is), so that no signal from the service's user \
                 can have tcpmuxd's memory dumped; at 1 (or unreadable) it is refused with the \
                 cause in the log: that setting would let the user trace the child. Set it to 0 \
                 for the fast start. At most 64 programs are being started at once, 16 of one \
                 service; a start waits up to 2 seconds for room, then its client is told \
                 `-Server busy, try again later`. A start not done within {} (the program's owner can \
                 hold its execve with a file lease, the service's user can stop the child) is \
                 killed and logged; its client is told `-Service unavailable`, or, if it heard \
                 `+` already, the connection ends. Held starts hold up only their service's clients. The \
                 service's `processes` limit is set after the user switch: a user already over \
                 it still gets its program started, whose own forks then fail.",
                humantime::format_duration(crate::limits::EXEC_START_TIMEOUT)
            )),
            para(
                "Exec sessions are children in tcpmuxd's cgroup: under systemd, stopping or \
                 restarting `tcpmuxd.service` stops them with it (`KillMode=control-group`), \
                 and they share its sandbox. Use the systemd launcher for sessions that must \
                 outlive a restart.",
            ),
        ],
    }
}

fn forwarded_services() -> Section {
    Section {
        title: "FORWARDED SERVICES",
        blocks: vec![
            para(format!(
                "With `launcher = \"forward\"`, no program is started: tcpmuxd connects to the \
                 daemon at the service's `forward` address (TCP, or a Unix stream socket) and \
                 relays the pair both ways itself. Each direction copies through a buffer of \
                 {} KiB until it moves bulk (a read fills the buffer); then it moves to \
                 splice(2) through a pipe of its own (bytes do not pass through tcpmuxd's \
                 memory), while fewer than {} directions hold one (pipes count against the \
                 pipe quota of tcpmuxd's user, shared with every process of that user). Only \
                 that address is ever connected to. A plus-mode client is told `+` once the backend has accepted; a \
                 backend that refuses, or does not accept within {}, means `-Service \
                 unavailable` (`OUTCOME=unavailable`, with the cause). With `proxy_protocol`, \
                 a PROXY header naming the client goes to the backend first; then whatever the \
                 client sent behind its request line. An end of writing is passed on once all \
                 before it was, a reset as a reset (also while the other side takes nothing: \
                 a pair that waits looks for one every {}), and a pair on which no byte moved \
                 for `idle_timeout` is closed. Each way moves at most {} KiB before the other \
                 has its turn. Each TCP connection of a pair keeps at most {} KiB unsent, and \
                 has a fixed receive buffer of {} KiB from the first time the pair waits for a \
                 side to take bytes, so that what a pair holds in the kernel is bounded (not grown to the host's `net.ipv4.tcp_rmem` and `tcp_wmem` \
                 maxima). TCP urgent data goes on as ordinary data: the stream is passed on \
                 whole, the urgent byte itself is not (as a plain read(2) does not see it). \
                 The pair holds its session slot and 6 descriptors until both sides are \
                 closed, and ends when tcpmuxd stops: both its connections are then reset.",
                crate::limits::FORWARD_COPY_BUFFER / 1024,
                crate::limits::FORWARD_MAX_PIPES,
                humantime::format_duration(crate::limits::FORWARD_CONNECT_TIMEOUT),
                humantime::format_duration(crate::limits::FORWARD_RESET_LOOK),
                crate::limits::FORWARD_TURN / 1024,
                crate::limits::FORWARD_UNSENT / 1024,
                crate::limits::FORWARD_RECEIVE_BUFFER / 1024,
            )),
            para(
                "Its start is logged as `NAME from ADDR:PORT: session started, forwarded to \
                 BACKEND` (`OUTCOME=served`, `BACKEND=`), its end as `NAME from ADDR:PORT: \
                 session ended, forwarded to BACKEND: HOW; N bytes from the client, M bytes to \
                 it, in DURATION`, with `FORWARD_END=` (`closed`: both sides ended their \
                 writing; `client-reset`, `backend-reset`, `idle-timeout`, or `error` with the \
                 cause), `BYTES_TO_BACKEND=`, `BYTES_TO_CLIENT=` and `DURATION_MS=`.",
            ),
        ],
    }
}

fn pass_launcher() -> Section {
    use crate::launch::pass::MAX_PASS_MESSAGE;
    Section {
        title: "PASSING CONNECTIONS TO A RUNNING DAEMON",
        blocks: vec![
            para(
                "With `launcher = \"pass\"` tcpmuxd starts nothing: it hands each client's \
                 connection to a daemon that already runs and listens on the Unix \
                 `SOCK_SEQPACKET` socket named by the service's `pass` key. tcpmuxd connects to \
                 that socket when the first client comes and keeps the connection; when the \
                 daemon has closed it (it restarted) or shut it down, tcpmuxd connects again \
                 for the next client. tcpmuxd never reads the connection and shuts down its \
                 reading side: the daemon does not write to it (a write fails with `EPIPE`). \
                 Each client is one message on it, taken by one recvmsg(2):",
            ),
            terms([
                (
                    "payload",
                    format!(
                        "`KEY=VALUE` lines, each ended by a line feed (`\\n`), at most \
                         {MAX_PASS_MESSAGE} bytes in all: `TCPMUX_SERVICE` (the service's \
                         name as configured), `REMOTE_ADDR` and `REMOTE_PORT` (the client; an \
                         IPv4 client in dotted-quad form), `LOCAL_ADDR` and `LOCAL_PORT` (the \
                         address it connected to), in that order, with the values a program \
                         started by tcpmuxd gets (behind a trusted balancer, the client its \
                         PROXY header names). A later version may add lines: ignore keys you \
                         do not know."
                    ),
                ),
                (
                    "ancillary data",
                    "`SCM_RIGHTS` with exactly one descriptor: the client's TCP connection, \
                     connected, in blocking mode (`O_NONBLOCK` clear, as for a program), its \
                     request line read and nothing after it: what the client sent after \
                     its line is the daemon's to read. tcpmuxd closes its own copy once the \
                     message is sent."
                        .into(),
                ),
            ]),
            para(
                "A plus-mode service's client is told `+` before the message is sent, so the \
                 daemon may write to it at once (a banner); a dedicated one (`plus = false`) \
                 hears nothing from tcpmuxd, and the daemon answers `+` or `-` itself.",
            ),
            para(
                "A client hears `+` only once its message is sure to be queued. With the \
                 connection to the daemon locked, tcpmuxd checks that it is writable (poll(2), \
                 no wait), writes `+`, then sends the message. Linux calls a connected \
                 `SOCK_SEQPACKET` socket writable while what the daemon has not received yet \
                 takes at most a quarter of the socket's send buffer, and fails a send only \
                 once it takes all of it: a writable connection takes the message. With \
                 Linux's default send buffer (`net.core.wmem_default`, 212992 bytes) that is \
                 about 70 clients waiting for the daemon to receive them; past that, clients \
                 are told `-Service unavailable` (queue full) until the daemon catches up. \
                 Not covered: clients still in the queue when the daemon exits are closed by \
                 the kernel (they heard `+`, then the end); and tcpmuxd not run as root \
                 fails a send with `ETOOMANYREFS` once its user has more descriptors in \
                 flight than its limit on open files: such a client, told `+` already, is \
                 closed, and the log says why.",
            ),
            para(
                "When the socket file is missing, nobody listens on it, the daemon's backlog \
                 is full, the socket is not `SOCK_SEQPACKET`, or tcpmuxd may not connect to \
                 it, the client is told `-Service unavailable` and the log says which (within \
                 its source's share of log entries, outcome `unavailable`). Each pass is \
                 logged: `NAME from ADDR:PORT: passed to PATH`.",
            ),
            para(
                "Once sent, the connection is the daemon's: tcpmuxd does not see it end. The \
                 session's place is given back when the daemon has taken the message from \
                 its queue (tcpmuxd watches the queue's size), so `max_instances`, \
                 `max_instances_per_source` and the shares of `[tcpmux]` bound the clients \
                 waiting there, and `max_starts_per_second` their rate; how many \
                 clients the daemon serves at once is its own to bound.",
            ),
            para(format!(
                "A receiver reads with a buffer of at least {MAX_PASS_MESSAGE} bytes and \
                 control room for at least one descriptor, with `MSG_CMSG_CLOEXEC`; skips a message with \
                 `MSG_TRUNC` or `MSG_CTRUNC` set; and closes every descriptor it receives and \
                 does not use. `examples/pass-receiver.rs` in tcpmuxd's sources is one, in \
                 Rust. Whoever listens on the socket's path receives the clients: keep it in \
                 a directory only the daemon's user can write (under `/run`; under systemd, \
                 tcpmuxd cannot reach sockets under `/tmp`, `/home`, `/root` or \
                 `/run/user`)."
            )),
        ],
    }
}

fn msp() -> Section {
    Section {
        title: "MESSAGE SEND PROTOCOL",
        blocks: vec![
            para(
                "MSP lets anyone who can reach port 18 write to the users' terminals, so it is \
                 off unless turned on. `tcpmuxd-msp.service` serves it, socket-activated by \
                 `tcpmuxd-msp.socket`; a preset shipped with the package keeps that socket \
                 disabled, whatever the distribution's default preset says. Turning it on or \
                 off touches neither `tcpmuxd.service` nor its clients:",
            ),
            lines(&[
                "systemctl enable --now tcpmuxd-msp.socket",
                "systemctl disable --now tcpmuxd-msp.socket",
            ]),
            para(
                "Only `tcpmuxd-msp.service` has the group `tty`, which writing to terminals \
                 needs (as write(1) is setgid tty); the TCPMUX daemon runs without it.",
            ),
            para(
                "A message is delivered as `[msp] deliver` says: to the recipient's terminals \
                 (`tty`: those of their logind sessions and of utmp; only terminals they own \
                 and have not closed with `mesg n`), as a journal entry (`journal`, \
                 `MESSAGE_ID=3c4f0b9e2d7a4c61a8e5f1b27d9c6e04`), or to `[msp] command` \
                 (`command`: under systemd as a transient unit `tcpmux-msp@INSTANCE.service`). \
                 The service name `msp` is reserved for those units. Rates per source, per \
                 recipient and in all, duplicate suppression and the refusal of datagrams that \
                 could start a loop are described in tcpmuxd.toml(5) and in the README.",
            ),
        ],
    }
}

fn journal() -> Section {
    let outcomes: Vec<(String, String)> = outcomes()
        .into_iter()
        .map(|(v, m)| (format!("`{v}`"), m.to_string()))
        .collect();
    Section {
        title: "JOURNAL",
        blocks: vec![
            para(
                "When its standard error is the journal (`JOURNAL_STREAM`), or `--log-target \
                 journal` says so, tcpmuxd writes structured entries to journald; otherwise \
                 readable lines to standard error. Entries about a connection carry these \
                 fields:",
            ),
            terms([
                (
                    "`TCPMUX_SERVICE`",
                    "the service the client asked for (escaped, as every value a client \
                     chose)"
                        .to_string(),
                ),
                (
                    "`REMOTE_ADDR`, `REMOTE_PORT`",
                    "the client: the bare IP address (IPv4 clients as IPv4) and the port, \
                     written the same way in every entry"
                        .to_string(),
                ),
                (
                    "`OUTCOME`",
                    "how the connection ended, one of the values below".to_string(),
                ),
                (
                    "`UNIT`, `OBJECT_SYSTEMD_UNIT`",
                    "on the entries of a session's start and end under the systemd launcher: \
                     its unit `tcpmux-NAME@INSTANCE.service` (the second makes `journalctl -u` \
                     of the unit find them)"
                        .to_string(),
                ),
                (
                    "`OBJECT_PID`",
                    "on the entries of a session's start and end under the exec launcher: \
                     the program's process"
                        .to_string(),
                ),
                (
                    "`EXIT_CODE`, `EXIT_STATUS`",
                    "on the entry of a session's end, with systemd's names and meaning: \
                     `exited` and the exit status, or `killed`/`dumped` and the signal's name \
                     (`TERM`)"
                        .to_string(),
                ),
                (
                    "`BACKEND`, `FORWARD_END`, `BYTES_TO_BACKEND`, `BYTES_TO_CLIENT`, \
                     `DURATION_MS`",
                    "on the entries of a forwarded session: the backend's address; at its \
                     end how it ended, the bytes each way and its duration (see FORWARDED \
                     SERVICES)"
                        .to_string(),
                ),
                (
                    "`UNIT_RESULT`",
                    "on the entry of a session's end under the systemd launcher: the unit's \
                     `Result` (`success`, `exit-code`, `signal`, `timeout`, ...)"
                        .to_string(),
                ),
                (
                    "`SYSLOG_IDENTIFIER`",
                    "`tcpmux-NAME` on the lines a session's program writes to standard error, \
                     with `SYSLOG_PID` its process; `tcpmuxd` on tcpmuxd's own"
                        .to_string(),
                ),
                (
                    "`MSP_VERSION`, `MSP_RECIPIENT`, `MSP_RECIPIENT_TERMINAL`, `MSP_SENDER`, \
                     `MSP_SENDER_TERMINAL`, `MSP_COOKIE`, `TRANSPORT`",
                    "on the entries of MSP messages".to_string(),
                ),
            ]),
            Block::Sub("OUTCOME values"),
            Block::Terms(outcomes),
            Block::Sub("What gets an entry"),
            para(format!(
                "A session has two entries: its start (`OUTCOME=served`) and its end, with \
                 how the program ended; a failure to start one, and an MSP delivery or failure \
                 to deliver get an entry each. Refusals (denied, unknown, a bad name, \
                 timeouts, every limit, MSP refusals) get an entry each at level info, the \
                 first {per_source} of each source (an IPv4 address or IPv6 prefix) in every \
                 {window} and at most {total} in {window} from all sources; every refusal, \
                 logged or not, is summed up every {window}, with the sources that sent the \
                 most (`connections in the last 10s: 2990 help, 12 unknown; top sources: \
                 192.0.2.7 (2990), ...`), and the limits hit are summed up the same way \
                 (`limits hit in the last 10s: 12 name_timeout`). Entries about single \
                 connections are written at most {line_source} a second from one source and \
                 {lines} a second in all, below journald's own rate limit; the count of those \
                 left out is logged with the summary.",
                per_source = crate::log::budget::REFUSALS_LOGGED_PER_SOURCE,
                total = crate::log::budget::REFUSALS_LOGGED,
                window = duration(crate::log::budget::REFUSAL_WINDOW),
                line_source = crate::log::budget::LOG_LINES_PER_SOURCE_PER_SECOND,
                lines = crate::log::budget::LOG_LINES_PER_SECOND,
            )),
            para(
                "A session's own standard error is logged tagged `tcpmux-NAME` \
                 (`SyslogIdentifier=`), warm or cold, under its unit. tcpmuxd's entries about a \
                 session name the session's process, so `journalctl -u \
                 tcpmux-NAME@INSTANCE.service` shows them next to the program's own.",
            ),
            para(
                "Every value a client or a program chose is logged with control characters \
                 written as `\\xNN` and bidirectional overrides as `\\u{NNNN}`: it can neither \
                 forge an entry nor send escape sequences to whoever reads the log.",
            ),
        ],
    }
}

fn notify() -> Section {
    Section {
        title: "STATUS AND THE NOTIFY PROTOCOL",
        blocks: vec![
            para("tcpmuxd speaks systemd's notify protocol (`Type=notify`, `NOTIFY_SOCKET`):"),
            terms([
                (
                    "`READY=1`",
                    "once it serves, and again when a reload is done".to_string(),
                ),
                ("`RELOADING=1`", "when a reload begins (SIGHUP)".to_string()),
                ("`STOPPING=1`", "when it begins to stop".to_string()),
                (
                    "`WATCHDOG=1`",
                    "every half of `WatchdogSec=` (30 s in the shipped unit), while the \
                     runtime works"
                        .to_string(),
                ),
                (
                    "`STATUS=`",
                    format!(
                        "what `systemctl status tcpmuxd` shows, refreshed every {} or so: \
                         `2 in handshake, 5 sessions running; 120 handed off, 3 refused, 12 \
                         limits hit; MSP: ...`, and for the systemd launcher `units: 1 starting, \
                         0 waiting for a turn, 4 warm`; with `--only` only the counters of the \
                         protocol served. When the configuration at start is \
                         invalid, it says where the error is instead (never what it says: any local user reads it).",
                        duration(limits::STATUS_INTERVAL)
                    ),
                ),
            ]),
            para(
                "A `STATUS=` or `WATCHDOG=1` the service manager cannot take at once is \
                 dropped (the next follows); state changes wait at most 100 ms. tcpmuxd never \
                 blocks a connection on the manager.",
            ),
        ],
    }
}

fn signals() -> Section {
    Section {
        title: "SIGNALS",
        blocks: vec![terms([
            (
                "SIGHUP",
                "Reads the configuration again. A valid one is swapped in for new connections; \
                 running sessions and handshakes in progress are untouched. An invalid one is \
                 logged and the old one kept (`systemctl reload` checks first and fails \
                 instead)."
                    .to_string(),
            ),
            (
                "SIGTERM, SIGINT",
                "Stop accepting, let handshakes in progress finish (at most `name_timeout`), \
                 log the interval's summary and exit 0. Sessions of the systemd launcher are \
                 units of their own and keep running; those of the exec launcher keep running \
                 when tcpmuxd stops on its own, but under systemd stopping the service stops \
                 them with it. Connections handed to a pass daemon are that daemon's. A \
                 forwarded pair is relayed by tcpmuxd itself and ends with it: both its \
                 connections are reset (and the number of such pairs logged), so that neither \
                 side takes a stream cut short for a complete one."
                    .to_string(),
            ),
        ])],
    }
}

fn exit_status() -> Section {
    Section {
        title: "EXIT STATUS",
        blocks: vec![
            para("As sysexits(3) names them:"),
            terms([
                (
                    0,
                    "a clean stop; `--check`: the configuration is valid".to_string(),
                ),
                (
                    exit::USAGE,
                    "bad arguments (an invalid `--log-level` too)".to_string(),
                ),
                (
                    exit::UNAVAILABLE,
                    "`--log-target journal` without a journal".to_string(),
                ),
                (
                    exit::OSERR,
                    "sockets cannot be used or bound, or the runtime cannot start".to_string(),
                ),
                (
                    exit::CONFIG,
                    "the configuration is invalid (`--check`, or at start with no \
                     socket-activated sockets). Socket-activated, tcpmuxd does not exit: it \
                     holds the sockets and answers every request `-Service unavailable` until \
                     a reload brings a valid configuration, so that the port never closes. \
                     `tcpmuxd.service` does not restart on 78."
                        .to_string(),
                ),
            ]),
        ],
    }
}

fn environment() -> Section {
    Section {
        title: "ENVIRONMENT",
        blocks: vec![
            terms([
                (
                    "`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`",
                    "the sockets of socket activation; removed at startup, so no program \
                     inherits them"
                        .to_string(),
                ),
                (
                    "`NOTIFY_SOCKET`",
                    "where `READY=1` and `STATUS=` go".to_string(),
                ),
                (
                    "`WATCHDOG_USEC`, `WATCHDOG_PID`",
                    "the watchdog interval; removed at startup".to_string(),
                ),
                (
                    "`JOURNAL_STREAM`",
                    "standard error is the journal: log there, with fields".to_string(),
                ),
                (
                    "`INVOCATION_ID`",
                    "with PID 1 as parent: tcpmuxd runs as a systemd service, and \
                     `launcher = \"auto\"` means the systemd launcher"
                        .to_string(),
                ),
            ]),
            para(
                "Nothing else is read, and the environment is read once, at startup. Programs \
                 get none of it: only the variables listed under SESSION UNITS.",
            ),
        ],
    }
}

fn files() -> Section {
    Section {
        title: "FILES",
        blocks: vec![terms([
            (
                DEFAULT_CONFIG_PATH,
                "the configuration; see tcpmuxd.toml(5)".to_string(),
            ),
            (
                "/etc/tcpmuxd/conf.d/*.toml",
                "drop-ins, read in lexical order".to_string(),
            ),
            (
                "/usr/lib/systemd/system/tcpmuxd.socket, tcpmuxd.service",
                "TCPMUX: port 1 and the daemon".to_string(),
            ),
            (
                "/usr/lib/systemd/system/tcpmuxd-msp.socket, tcpmuxd-msp.service",
                "the Message Send Protocol: port 18 and its daemon".to_string(),
            ),
            (
                "/usr/lib/systemd/system-preset/80-tcpmuxd.preset",
                "keeps tcpmuxd-msp.socket disabled whatever the distribution's default \
                 preset says"
                    .to_string(),
            ),
            (
                "/usr/lib/systemd/system/tcpmux-.service.d/10-defaults.conf",
                "sandbox and limits of every session unit".to_string(),
            ),
            (
                "/etc/systemd/system/tcpmux-.service.d/, /etc/systemd/system/tcpmux-NAME@.service.d/",
                "the administrator's drop-ins for all session units, and for one service's"
                    .to_string(),
            ),
            (
                "/usr/libexec/tcpmuxd/tcpmux-warm",
                "the program of warm units".to_string(),
            ),
            (
                "/usr/share/polkit-1/rules.d/50-tcpmuxd.rules, /usr/lib/sysusers.d/tcpmuxd.conf",
                "only for running tcpmuxd as the user tcpmuxd".to_string(),
            ),
            (
                "/usr/share/doc/tcpmuxd/",
                "README.md, SECURITY.md (the threat model), BENCHMARKS.md, \
                 README.packaging.md (the two ways to run the daemon under systemd) and \
                 examples/ (unit drop-ins)"
                    .to_string(),
            ),
        ])],
    }
}

fn recovery() -> Section {
    Section {
        title: "RECOVERY",
        blocks: vec![
            para("What to do when:"),
            terms([
                (
                    "systemctl reload tcpmuxd fails",
                    "The new configuration is invalid and was not applied; the old one serves. \
                     `tcpmuxd --check` lists every error with file, line and key; fix them and \
                     reload again."
                        .to_string(),
                ),
                (
                    "every client hears -Service unavailable",
                    "tcpmuxd started with an invalid configuration and holds port 1 meanwhile \
                     (`systemctl status tcpmuxd` shows the error in its status line), or the \
                     system bus is away (the journal says so; tcpmuxd reconnects by itself). Fix \
                     the file, check it with `tcpmuxd --check`, then `systemctl \
                     try-reload-or-restart tcpmuxd`. No `reset-failed` is needed."
                        .to_string(),
                ),
                (
                    "one service answers -Service unavailable",
                    "Its program is missing or cannot be run (the warning names it, once per \
                     load or reload), its warm units fail to start (`journalctl -u \
                     'tcpmux-NAME@*'`), or a unit file `tcpmux-NAME@.service` exists (remove it, \
                     use a drop-in)."
                        .to_string(),
                ),
                (
                    "a client says it was refused",
                    "`journalctl -u tcpmuxd REMOTE_ADDR=192.0.2.7` shows every entry about \
                     that client with its `OUTCOME`; the table under REPLIES says what each \
                     answer means. A service hidden by its `allow`/`deny` answers `-Unknown \
                     service`."
                        .to_string(),
                ),
                (
                    "a session misbehaved",
                    "`journalctl -u tcpmux-NAME@INSTANCE.service` shows tcpmuxd's entries for \
                     it (client, start, end, exit status) next to what the program wrote; \
                     `systemctl stop tcpmux-NAME@INSTANCE.service` ends it."
                        .to_string(),
                ),
                (
                    "tcpmuxd.socket is failed",
                    "`systemctl status tcpmuxd.socket` says why (another program on port 1, a \
                     service that kept dying at start); after the cause is fixed, `systemctl \
                     restart tcpmuxd.socket`."
                        .to_string(),
                ),
                (
                    "clients hear -Server busy or -Too many connections",
                    "A limit was reached: `journalctl -u tcpmuxd` has the 10-second summary \
                     naming the limit and the sources that sent the most. Raise the limit in the \
                     configuration if the load is legitimate, or deny the source."
                        .to_string(),
                ),
                (
                    "msend gets Connection refused",
                    "MSP is off: `systemctl enable --now tcpmuxd-msp.socket`.".to_string(),
                ),
            ]),
        ],
    }
}

fn examples() -> Section {
    Section {
        title: "EXAMPLES",
        blocks: vec![
            para("Serve TCPMUX, and list the services as a client:"),
            lines(&[
                "systemctl enable --now tcpmuxd.socket",
                "tcpmux localhost --list",
            ]),
            para("Add a service, check and apply:"),
            lines(&[
                "cat > /etc/tcpmuxd/conf.d/50-echo.toml <<EOF",
                "[[service]]",
                "name = \"echo\"",
                "command = [\"/bin/cat\"]",
                "EOF",
                "tcpmuxd --check",
                "systemctl try-reload-or-restart tcpmuxd",
                "echo hello | tcpmux localhost echo",
            ]),
            para("Run one service's sessions as a user of their own, in unit syntax:"),
            lines(&[
                "# /etc/systemd/system/tcpmux-echo@.service.d/60-user.conf",
                "[Service]",
                "DynamicUser=no",
                "User=alice",
            ]),
            para("See what happened:"),
            lines(&[
                "systemctl status tcpmuxd",
                "systemctl list-units 'tcpmux-*'",
                "journalctl -u tcpmuxd OUTCOME=denied",
                "journalctl -u tcpmuxd REMOTE_ADDR=192.0.2.7 -o verbose",
                "journalctl -u 'tcpmux-echo@*'",
            ]),
            para("Run it by hand, without systemd, on a configuration of your own:"),
            lines(&["tcpmuxd --config ./tcpmuxd.toml --log-target stderr --log-level debug"]),
        ],
    }
}

fn security() -> Section {
    Section {
        title: "SECURITY",
        blocks: vec![
            para(
                "The shipped `tcpmuxd.service` runs as root without any capability \
                 (`CapabilityBoundingSet=`, `NoNewPrivileges=yes`) in a read-only, private view \
                 of the system with a system call filter; systemd binds the ports, and PID 1 \
                 starts the session units. It may instead run as the user `tcpmuxd` with the \
                 polkit rule shipped (README.packaging.md). tcpmuxd is not dumpable, so a \
                 program running as its user cannot take its descriptors or read its memory.",
            ),
            para(
                "Session units are sandboxed by `tcpmux-.service.d/10-defaults.conf` \
                 (`DynamicUser=yes`, `ProtectSystem=strict`, `PrivateDevices=yes`, resource \
                 limits); a drop-in that relaxes them is the administrator's decision. Nothing \
                 runs as root by accident: see THE EXEC LAUNCHER.",
            ),
            para(
                "Whoever may start transient units chooses all their properties: a \
                 compromised tcpmuxd could start a root process through systemd. The sandbox \
                 protects the system from the daemon's process, not from that API. \
                 SECURITY.md lists every resource a peer can take, its bound and what gives \
                 way.",
            ),
        ],
    }
}

/// Every section title the manual has, in order, for the tests.
pub fn titles() -> Vec<&'static str> {
    let mut all = vec!["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS"];
    all.extend(sections().iter().map(|s| s.title));
    all.push("SEE ALSO");
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text of the whole manual, for searching.
    fn text() -> String {
        let mut out = String::new();
        let mut push = |b: &Block| match b {
            Block::Para(t) => out.push_str(&format!("{t}\n")),
            Block::Terms(items) => {
                for (t, d) in items {
                    out.push_str(&format!("{t}\n{d}\n"));
                }
            }
            Block::Lines(ls) => {
                for l in ls {
                    out.push_str(&format!("{l}\n"));
                }
            }
            Block::Sub(t) => out.push_str(&format!("{t}\n")),
        };
        description().iter().for_each(&mut push);
        for s in sections() {
            s.blocks.iter().for_each(&mut push);
        }
        out
    }

    /// The string literals in `source` from `start` to the next `end`.
    fn literals_of(source: &str, start: &str, end: &str) -> Vec<String> {
        let from = source.find(start).unwrap_or_else(|| panic!("no {start}"));
        let body = &source[from..];
        let end = body
            .find(end)
            .unwrap_or_else(|| panic!("no end of {start}"));
        body[..end]
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    }

    /// Every `OUTCOME` value the code logs: TCPMUX's, MSP's own entries'
    /// and the summary's.
    fn outcomes_in_the_code() -> Vec<String> {
        let connection = include_str!("../server/connection.rs");
        let serve = include_str!("../msp/serve.rs");
        let mut all = literals_of(
            connection,
            "pub fn as_str(self) -> &'static str {",
            "\n    }\n",
        );
        all.extend(literals_of(
            serve,
            "fn as_str(self) -> &'static str {",
            "\n    }\n",
        ));
        // MSP's entries: the first element of each tuple the verdict maps
        // to, ("delivered", reason, summed).
        let verdicts = literals_of(
            serve,
            "let (outcome, reason, summed) = match verdict {",
            "\n    };\n",
        );
        all.extend(
            verdicts
                .into_iter()
                .filter(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_lowercase())),
        );
        assert!(all.len() > 20, "the outcomes were not found: {all:?}");
        all
    }

    #[test]
    fn every_outcome_of_the_code_is_documented() {
        let documented: Vec<&str> = outcomes().iter().map(|(v, _)| *v).collect();
        let in_code = outcomes_in_the_code();
        for value in &in_code {
            assert!(
                documented.contains(&value.as_str()),
                "OUTCOME={value} is logged but not in tcpmuxd(8)"
            );
        }
        for value in documented {
            assert!(
                in_code.iter().any(|v| v == value),
                "tcpmuxd(8) documents OUTCOME={value}, which the code does not log"
            );
        }
    }

    #[test]
    fn every_reply_of_the_server_is_in_the_table() {
        for &refusal in crate::tcpmux::reply::REFUSALS {
            let text = String::from_utf8_lossy(refusal);
            let spelled = format!("`{}`", text.trim_end());
            assert!(
                replies().iter().any(|r| r.reply == spelled),
                "the reply {spelled} is not in the table of replies"
            );
        }
    }

    #[test]
    fn the_readme_table_of_replies_is_this_one() {
        let table = super::super::readme_table(REPLIES_TABLE_HEADER)
            .expect("README.md has the table of replies");
        assert_eq!(
            table,
            replies_markdown(),
            "README.md's table of replies differs from src/cli/daemon_doc.rs \
             (print it with `cargo run --example gen-docs -- --readme-replies`)"
        );
    }

    #[test]
    fn the_manual_has_the_sections_administrators_look_for() {
        let titles = titles();
        for wanted in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "SOCKETS AND SOCKET ACTIVATION",
            "SESSION UNITS",
            "WARM UNITS",
            "THE EXEC LAUNCHER",
            "MESSAGE SEND PROTOCOL",
            "JOURNAL",
            "STATUS AND THE NOTIFY PROTOCOL",
            "SIGNALS",
            "EXIT STATUS",
            "FILES",
            "ENVIRONMENT",
            "RECOVERY",
            "EXAMPLES",
            "SECURITY",
            "SEE ALSO",
        ] {
            assert!(titles.contains(&wanted), "tcpmuxd(8) has no {wanted}");
        }
    }

    #[test]
    fn exit_statuses_are_the_codes() {
        let text = text();
        for code in [exit::USAGE, exit::UNAVAILABLE, exit::OSERR, exit::CONFIG] {
            assert!(text.contains(&format!("{code}\n")), "exit status {code}");
        }
    }

    #[test]
    fn the_unit_names_and_socket_names_are_those_of_the_code() {
        let text = text();
        let unit = crate::launch::systemd::unit_name("my-echo", "START-N");
        assert_eq!(unit, "tcpmux-my\\x2decho@START-N.service");
        assert!(text.contains("`my\\x2decho`"), "the escaping example");
        for name in ["`tcpmux`", "`msp`", "tcpmux-NAME@INSTANCE.service"] {
            assert!(text.contains(name), "{name}");
        }
    }
}
