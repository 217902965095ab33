//! The configuration: a main TOML file plus `conf.d/*.toml` drop-ins beside
//! it, merged and validated once into an immutable [`Config`].
//!
//! One module a step: [`file`] reads one file's text (pure), [`merge`]
//! puts the files together and [`validate`] checks the result (pure but
//! for looking up users); [`load`] adds the file system. Configuration
//! depends on no launcher and no protocol: they depend on it.

mod backend;
mod file;
mod merge;
mod print;
mod resources;
#[cfg(test)]
mod tests;
mod validate;

pub use backend::{Backend, Forward, ForwardAddress, ProxyVersion, parse_forward};
pub use file::{FileConfig, KeyLines, MAX_ERRORS_PER_FILE, parse_file};
pub use merge::build;
pub use print::to_toml;
pub use resources::{INFINITY, LimitKind, ResourceLimits, parse_size, show_size, show_umask};
pub use validate::{
    EXEC_CONFIG_ROOM, MAX_ESCAPED_NAME_LEN, RESERVED_ENVIRONMENT, apply_host, check_format,
    check_program, check_service_name,
};

use crate::acl::{Acl, TrustedProxies};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tcpmuxd/tcpmuxd.toml";

/// Name of the drop-in folder beside the main file.
pub const DROPIN_DIR: &str = "conf.d";

/// The address bound when neither socket activation nor `[tcpmux] listen`
/// provides one.
pub const DEFAULT_LISTEN: &str = "[::]:1";

/// The name reserved by RFC 1078 for the list of services.
pub const HELP_NAME: &str = "help";

/// Under systemd, MSP's delivery command runs as
/// `tcpmux-MSP_UNIT_NAME@INSTANCE.service`: a service may not take the name.
pub const MSP_UNIT_NAME: &str = "msp";

/// Where glibc keeps the login records.
pub const DEFAULT_UTMP: &str = "/var/run/utmp";

/// A configuration error: the file (and line, when known) it was found in
/// and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}{message}", path.display(), line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
    /// The line the error is reported in order of, when the message gives
    /// it itself (TOML's own errors, with column and caret).
    order: Option<usize>,
}

impl ConfigError {
    fn new(path: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.to_path_buf(),
            line: None,
            message: message.into(),
            order: None,
        }
    }

    fn at(path: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            line,
            order: line,
            ..ConfigError::new(path, message)
        }
    }
}

/// Every error of one reading of the configuration, in file order: the
/// main file, then the drop-ins in the order they apply, each from its
/// first line to its last.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// How many errors, and where the first is, without what any says: for
    /// a status line every local user may read, where an error quoting the
    /// value it refuses could show a secret of a file only root reads.
    pub fn whereabouts(&self) -> String {
        let count = self.0.len();
        let noun = if count == 1 { "error" } else { "errors" };
        match self.0.first() {
            Some(first) => {
                let line = first
                    .line
                    .or(first.order)
                    .map(|l| format!(" line {l}"))
                    .unwrap_or_default();
                let first_in = if count == 1 { "in" } else { "the first in" };
                format!("{count} {noun}, {first_in} {}{line}", first.path.display())
            }
            None => format!("{count} {noun}"),
        }
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl ConfigErrors {
    /// The errors in file order, `files` giving the order of the files.
    fn sorted(mut errors: Vec<ConfigError>, files: &[PathBuf]) -> ConfigErrors {
        let rank = |e: &ConfigError| {
            (
                files
                    .iter()
                    .position(|f| *f == e.path)
                    .unwrap_or(usize::MAX),
                e.order.unwrap_or(0),
            )
        };
        errors.sort_by_key(rank);
        ConfigErrors(errors)
    }
}

/// "1 file", "2 files": a count and its noun, pluralised with "s".
pub fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// How a service's program is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LauncherKind {
    /// `systemd` when tcpmuxd runs as a systemd service, else `exec`.
    #[default]
    Auto,
    /// Spawn the program directly as a child of tcpmuxd.
    Exec,
    /// Start a transient unit `tcpmux-NAME@INSTANCE.service` per connection.
    Systemd,
    /// Relay each connection to a daemon at a fixed address (`forward`).
    Forward,
    /// Hand each connection, as a descriptor, to a running daemon (`pass`).
    Pass,
}

impl LauncherKind {
    /// Whether a service with this launcher starts its program as a child
    /// of tcpmuxd (the exec launcher) on `host`: `auto` means the systemd
    /// launcher whenever tcpmuxd runs as a systemd service, whether or not
    /// the service manager answers at the moment.
    pub fn runs_exec(self, host: &Host) -> bool {
        match self {
            LauncherKind::Exec => true,
            LauncherKind::Systemd => false,
            LauncherKind::Auto => !host.under_systemd,
            LauncherKind::Forward | LauncherKind::Pass => false,
        }
    }

    /// Whether a service with this launcher starts each session as a
    /// systemd unit on `host`.
    pub fn runs_systemd(self, host: &Host) -> bool {
        match self {
            LauncherKind::Systemd => true,
            LauncherKind::Auto => host.under_systemd,
            LauncherKind::Exec | LauncherKind::Forward | LauncherKind::Pass => false,
        }
    }

    /// Whether a service with this launcher starts a program at all.
    pub fn starts_programs(self) -> bool {
        !matches!(self, LauncherKind::Forward | LauncherKind::Pass)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LauncherKind::Auto => "auto",
            LauncherKind::Exec => "exec",
            LauncherKind::Systemd => "systemd",
            LauncherKind::Forward => "forward",
            LauncherKind::Pass => "pass",
        }
    }
}

/// What the configuration's meaning depends on beyond its files: who
/// tcpmuxd runs as, and whether it runs as a systemd service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// tcpmuxd runs as uid 0: a program it starts itself without a `user`
    /// would run as root.
    pub root: bool,
    /// tcpmuxd runs as a systemd service: `launcher = "auto"` means the
    /// systemd launcher, and MSP's command runs as a unit.
    pub under_systemd: bool,
}

impl Host {
    /// This process, run as a systemd service or not.
    pub fn current(under_systemd: bool) -> Host {
        Host {
            root: rustix::process::geteuid().is_root(),
            under_systemd,
        }
    }
}

/// How the Message Send Protocol delivers a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// Write it to the recipient's terminal, as write(1) does.
    #[default]
    Tty,
    /// Log it as a structured journal entry.
    Journal,
    /// Run `[msp] command` with the message on its standard input.
    Command,
}

/// The `[msp]` section: Message Send Protocol (RFC 1159, RFC 1312).
#[derive(Debug, Clone, PartialEq)]
pub struct MspSettings {
    /// Addresses bound for both TCP and UDP when not socket-activated;
    /// empty: MSP is served only on sockets passed by systemd.
    pub listen: Vec<SocketAddr>,
    pub deliver: Delivery,
    /// Program and arguments for `deliver = "command"`.
    pub command: Option<Vec<String>>,
    /// Who the command runs as when tcpmuxd starts it itself (not under
    /// systemd); under systemd, `User=` of its unit. Its own `user`, or
    /// `[tcpmux] user`.
    pub credentials: Option<Credentials>,
    /// Whether `credentials` came from `[tcpmux] user`.
    pub credentials_inherited: bool,
    /// The umask and resource limits the delivery command runs with:
    /// `[tcpmux] umask` and `limits`, as its user falls back to `[tcpmux]
    /// user`.
    pub umask: u32,
    pub limits: ResourceLimits,
    /// Time the delivery command may run.
    pub command_timeout: Duration,
    /// Whether messages with an empty recipient go to the console.
    pub console: bool,
    /// Messages accepted per source address (IPv6: per `[tcpmux] ipv6_source_prefix`) per minute.
    pub rate_per_minute: u32,
    /// Messages accepted per recipient per minute, from all sources.
    pub recipient_rate_per_minute: u32,
    /// Messages accepted per minute, all sources and recipients together.
    pub total_rate_per_minute: u32,
    /// TCP: time allowed for each message (not extended by reads), and
    /// for a whole connection.
    pub idle_timeout: Duration,
    pub connection_timeout: Duration,
    /// TCP connections served at once.
    pub max_connections: usize,
    /// Of those, from one source (IPv6: per `[tcpmux] ipv6_source_prefix`).
    pub max_connections_per_source: usize,
    /// Messages one TCP connection may carry.
    pub max_messages_per_connection: usize,
    /// How long a delivered version B message is remembered, so that a
    /// retransmission is acknowledged but not shown again.
    pub dedup_window: Duration,
    /// The login records read to find a user's terminals.
    pub utmp: PathBuf,
    /// Who may send messages, over TCP and UDP alike.
    pub acl: Acl,
    /// Load balancers whose TCP connections begin with a PROXY protocol
    /// header naming the client (`trusted_proxies`; UDP is never proxied).
    pub trusted_proxies: TrustedProxies,
}

/// The validated configuration the daemon serves with.
#[derive(Debug)]
pub struct Config {
    pub tcpmux: TcpmuxSettings,
    pub msp: MspSettings,
    pub services: Vec<Arc<Service>>,
    by_name: HashMap<String, usize>,
    /// The length of the HELP list of every service.
    help_len: usize,
    /// Files this configuration was read from, main file first.
    pub files: Vec<PathBuf>,
    /// Problems that do not stop the daemon (a service's program missing).
    pub warnings: Vec<String>,
    /// Where `[msp] command` was set, for errors about it.
    msp_command_origin: Option<(PathBuf, Option<usize>)>,
}

/// The `[tcpmux]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpmuxSettings {
    /// Addresses bound when not socket-activated.
    pub listen: Vec<SocketAddr>,
    /// Time a client has to send its request line (and take the reply).
    pub name_timeout: Duration,
    /// TCP_DEFER_ACCEPT on the TCPMUX listeners, in whole seconds (0: off);
    /// None leaves them as they are.
    pub defer_accept: Option<u32>,
    /// Connections allowed at once in the handshake phase.
    pub max_handshakes: usize,
    /// Of those, from one source (an IPv4 address, or an IPv6 prefix).
    pub max_handshakes_per_source: usize,
    /// IPv6 sources are grouped by this prefix length for per-source limits.
    pub ipv6_source_prefix: u8,
    /// Sessions running at once, all services together.
    pub max_sessions: usize,
    /// Of those, held by one source (an IPv4 address, or an IPv6 prefix).
    pub max_sessions_per_source: usize,
    /// Warm units (systemd launcher) kept ready, all services together.
    pub max_warm: usize,
    /// Session units the systemd launcher has starting at once.
    pub max_starting_units: usize,
    /// Master access list, checked before each service's own.
    pub acl: Acl,
    /// Load balancers whose connections begin with a PROXY protocol
    /// header naming the client (`trusted_proxies`; default none).
    pub trusted_proxies: TrustedProxies,
    /// `user` and `group`: who programs run as whose service (or `[msp]`)
    /// names no user: under the systemd launcher, and for programs
    /// tcpmuxd starts itself when it runs as root.
    pub default_credentials: Option<Credentials>,
    /// `umask`: the umask of every service that sets none.
    pub umask: u32,
    /// `environment`: variables of every service, which a service's own
    /// of the same name replace.
    pub environment: Vec<(String, String)>,
    /// `limits`: resource limits of every service, each of which a
    /// service's own `limits` may replace.
    pub limits: ResourceLimits,
}

/// One `[[service]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// The name as configured: what HELP lists and `TCPMUX_SERVICE` carries.
    pub name: String,
    /// Program and arguments; the first element is an absolute path. None:
    /// systemd takes `ExecStart=` from the drop-ins of the service's template
    /// (systemd launcher only).
    pub command: Option<Vec<String>>,
    /// Whether tcpmuxd sends the `+` line (true) or the program does (false).
    pub plus: bool,
    pub launcher: LauncherKind,
    /// Where the connections go, for a service that starts no program
    /// (`launcher = "forward"` or `"pass"`).
    pub backend: Option<Backend>,
    pub max_instances: usize,
    /// Of those, held by one source (an IPv4 address, or an IPv6 prefix).
    pub max_instances_per_source: usize,
    /// Sessions started per second at most (a token bucket with as many
    /// in reserve).
    pub max_starts_per_second: u32,
    /// Warm units kept ready for it under the systemd launcher; 0: every
    /// session's unit starts when its client comes.
    pub warm: usize,
    pub acl: Acl,
    /// User and group to run the program as: its own, or `[tcpmux]`'s.
    /// The exec launcher switches only as root; the systemd launcher sets
    /// `User=` and `Group=` (none: the unit's drop-ins decide, DynamicUser=
    /// by default).
    pub credentials: Option<Credentials>,
    /// Whether `credentials` came from `[tcpmux] user`.
    pub credentials_inherited: bool,
    /// Extra environment variables for the program: `[tcpmux]`'s, with the
    /// service's own in place of those of the same name; by name.
    pub environment: Vec<(String, String)>,
    /// The program's umask.
    pub umask: u32,
    /// The program's resource limits: `[tcpmux]`'s, each replaced by the
    /// service's own.
    pub limits: ResourceLimits,
    /// The file the service was defined in, and the line of its header.
    pub source: PathBuf,
    pub line: Option<usize>,
}

/// Who a service's program runs as: always a user, with that user's
/// primary group or the configured one, and no supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

impl Service {
    /// The program's path, when the configuration gives a command.
    pub fn program(&self) -> Option<&str> {
        self.command
            .as_ref()
            .and_then(|c| c.first())
            .map(String::as_str)
    }
}

impl Config {
    /// The service a client named, compared without regard to case.
    pub fn service(&self, name: &str) -> Option<&Arc<Service>> {
        self.by_name
            .get(&name.to_ascii_lowercase())
            .map(|&i| &self.services[i])
    }

    /// The length of the HELP list of every service: no client's list,
    /// whatever the access lists hide from it, is longer.
    pub fn help_len(&self) -> usize {
        self.help_len
    }
}

/// What a reload changes, for its log line: "2 services added, 1
/// removed, 1 changed; [tcpmux] changed", or "nothing changed".
pub fn describe_changes(old: &Config, new: &Config) -> String {
    let count = |from: &Config, to: &Config| {
        from.services
            .iter()
            .filter(|s| to.service(&s.name).is_none())
            .count()
    };
    let added = count(new, old);
    let removed = count(old, new);
    let changed = new
        .services
        .iter()
        .filter(|s| old.service(&s.name).is_some_and(|o| o != *s))
        .count();
    let mut parts = Vec::new();
    if added + removed + changed > 0 {
        parts.push(format!(
            "{added} {} added, {removed} removed, {changed} changed",
            if added == 1 { "service" } else { "services" }
        ));
    }
    if old.tcpmux != new.tcpmux {
        parts.push("[tcpmux] changed".to_string());
    }
    if old.msp != new.msp {
        parts.push("[msp] changed".to_string());
    }
    if parts.is_empty() {
        "nothing changed".to_string()
    } else {
        parts.join("; ")
    }
}

// ---- the file system -------------------------------------------------------

/// The drop-in files for main file `path`, in the order they apply, and
/// the other files found beside them, which are not read. (Hidden files,
/// such as an editor's, are neither.)
pub fn dropin_files(path: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), ConfigError> {
    let dir = path.parent().unwrap_or(Path::new(".")).join(DROPIN_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(ConfigError::new(&dir, format!("cannot read folder: {e}"))),
    };
    let (mut files, mut ignored) = (Vec::new(), Vec::new());
    for entry in entries {
        let entry =
            entry.map_err(|e| ConfigError::new(&dir, format!("cannot read folder: {e}")))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        if name.ends_with(".toml") {
            files.push(entry.path());
        } else {
            ignored.push(entry.path());
        }
    }
    files.sort();
    ignored.sort();
    Ok((files, ignored))
}

/// Reads, merges and validates the main file and its drop-ins for `host`,
/// and notes services whose program cannot be run now. On failure, every
/// error found, in file order.
pub fn load(path: &Path, host: &Host) -> Result<Config, ConfigErrors> {
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    let (dropins, ignored) = dropin_files(path)?;
    let files: Vec<PathBuf> = std::iter::once(path.to_path_buf()).chain(dropins).collect();
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(ConfigError::new(file, format!("cannot read: {e}")));
                continue;
            }
        };
        let (config, file_errors) = file::read_file(file, &text);
        errors.extend(file_errors);
        if let Some(config) = config {
            parsed.push((file.clone(), config));
        }
    }
    let mut config = merge::merge(parsed, &mut errors);
    config.files = files.clone();
    validate::apply_host(&mut config, host, &mut errors);
    if !errors.is_empty() {
        return Err(ConfigErrors::sorted(errors, &files));
    }
    for file in ignored {
        config.warnings.push(format!(
            "{}: ignored: only files whose names end in .toml are read",
            file.display()
        ));
    }
    config.warnings.extend(acl_warnings(&config));
    for service in &config.services {
        let Some(program) = service.program() else {
            continue;
        };
        if let Err(e) = check_program(program) {
            config.warnings.push(format!(
                "{}: service \"{}\": command {program}: {e}; clients are refused until it is installed or fixed",
                service.source.display(),
                service.name,
            ));
        }
    }
    Ok(config)
}

/// A configuration with every default and no service, for main file
/// `path`: what tcpmuxd serves (nothing, every request refused) while its
/// configuration is invalid and it holds sockets systemd passed it.
pub fn serving_nothing(path: &Path) -> Result<Config, ConfigErrors> {
    let empty = parse_file(path, "")?;
    build(vec![(path.to_path_buf(), empty)])
}

/// Warnings for access-list entries that do not do what they seem to:
/// `deny = ["::/0"]` lets every IPv4 client in, `allow = ["::/0"]` keeps
/// every one out; and for `trusted_proxies` that trust everyone, or no
/// IPv4 balancer.
fn acl_warnings(config: &Config) -> Vec<String> {
    let lists = [
        ("[tcpmux]".to_string(), &config.tcpmux.acl),
        ("[msp]".to_string(), &config.msp.acl),
    ]
    .into_iter()
    .chain(config.services.iter().map(|s| {
        (
            format!("{}: service \"{}\"", s.source.display(), s.name),
            &s.acl,
        )
    }));
    lists
        .flat_map(|(owner, acl)| {
            acl.ipv6_entries_that_miss_ipv4()
                .into_iter()
                .map(move |(list, net)| {
                    format!(
                        "{owner} {list}: \"{net}\" is IPv6 and covers no IPv4 client, not even one \
                         seen on an IPv6 socket (IPv4 clients are matched by IPv4 entries such as \
                         \"0.0.0.0/0\")"
                    )
                })
        })
        .chain(
            [
                ("[tcpmux]", &config.tcpmux.trusted_proxies),
                ("[msp]", &config.msp.trusted_proxies),
            ]
            .into_iter()
            .flat_map(|(owner, trusted)| {
                trusted
                    .warnings()
                    .into_iter()
                    .map(move |w| format!("{owner} trusted_proxies: {w}"))
            }),
        )
        .collect()
}
