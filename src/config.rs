//! The configuration: a main TOML file plus `conf.d/*.toml` drop-ins beside
//! it, merged and validated once into an immutable [`Config`].
//!
//! Parsing is pure ([`parse_file`], [`build`]); [`load`] adds the file system.

use crate::acl::{Acl, parse_net};
use crate::limits;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, HashMap};
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

/// A configuration error: the file (and line, when known) it was found in
/// and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}{message}", path.display(), line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    fn new(path: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.to_path_buf(),
            line: None,
            message: message.into(),
        }
    }

    fn at(path: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            line,
            ..ConfigError::new(path, message)
        }
    }
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
}

/// The validated configuration the daemon serves with.
#[derive(Debug)]
pub struct Config {
    pub tcpmux: TcpmuxSettings,
    pub msp: MspSettings,
    pub services: Vec<Arc<Service>>,
    by_name: HashMap<String, usize>,
    /// Files this configuration was read from, main file first.
    pub files: Vec<PathBuf>,
    /// Problems that do not stop the daemon (a service's program missing).
    pub warnings: Vec<String>,
}

/// The `[tcpmux]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpmuxSettings {
    /// Addresses bound when not socket-activated.
    pub listen: Vec<SocketAddr>,
    /// Time a client has to send its request line (and take the reply).
    pub name_timeout: Duration,
    /// Connections allowed at once in the handshake phase.
    pub max_handshakes: usize,
    /// Of those, from one source (an IPv4 address, or an IPv6 prefix).
    pub max_handshakes_per_source: usize,
    /// IPv6 sources are grouped by this prefix length for per-source limits.
    pub ipv6_source_prefix: u8,
    /// Sessions running at once, all services together.
    pub max_sessions: usize,
    /// Warm units (systemd launcher) kept ready, all services together.
    pub max_warm: usize,
    /// Session units the systemd launcher has starting at once.
    pub max_starting_units: usize,
    /// Master access list, checked before each service's own.
    pub acl: Acl,
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
    pub max_instances: usize,
    /// Sessions started per second at most (a token bucket with as many
    /// in reserve).
    pub max_starts_per_second: u32,
    /// Warm units kept ready for it under the systemd launcher; 0: every
    /// session's unit starts when its client comes.
    pub warm: usize,
    pub acl: Acl,
    /// User and group to run the program as (root only).
    pub credentials: Option<Credentials>,
    /// Extra environment variables for the program.
    pub environment: Vec<(String, String)>,
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

// ---- the file format -------------------------------------------------------

/// One file as written. Every key is optional so drop-ins can set just a few.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    tcpmux: Option<RawTcpmux>,
    msp: Option<RawMsp>,
    #[serde(default, rename = "service")]
    services: Vec<RawService>,
    /// Where each key was written, for errors found after parsing.
    #[serde(skip)]
    lines: KeyLines,
}

/// The line of each key of one file, by table, as written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyLines {
    tcpmux: HashMap<String, usize>,
    msp: HashMap<String, usize>,
    /// Each `[[service]]`: the line of its header, and of its keys.
    services: Vec<(usize, HashMap<String, usize>)>,
}

impl KeyLines {
    /// Finds the tables and keys of TOML `text` line by line. Only what
    /// an error message needs: `key = ...` lines under `[tcpmux]`, `[msp]`
    /// and each `[[service]]` (its `[service.environment]` counting as the
    /// key `environment`).
    pub fn scan(text: &str) -> KeyLines {
        enum Table {
            Other,
            Tcpmux,
            Msp,
            Service,
        }
        let mut lines = KeyLines::default();
        let mut table = Table::Other;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.starts_with('[') {
                let header: String = line
                    .split('#')
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                table = match header.as_str() {
                    "[tcpmux]" => Table::Tcpmux,
                    "[msp]" => Table::Msp,
                    "[[service]]" => {
                        lines.services.push((n, HashMap::new()));
                        Table::Service
                    }
                    "[service.environment]" => {
                        if let Some((_, keys)) = lines.services.last_mut() {
                            keys.entry("environment".into()).or_insert(n);
                        }
                        Table::Other
                    }
                    _ => Table::Other,
                };
                continue;
            }
            let Some((key, _)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim().trim_matches('"');
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let keys = match table {
                Table::Tcpmux => &mut lines.tcpmux,
                Table::Msp => &mut lines.msp,
                Table::Service => match lines.services.last_mut() {
                    Some((_, keys)) => keys,
                    None => continue,
                },
                Table::Other => continue,
            };
            keys.entry(key.to_string()).or_insert(n);
        }
        lines
    }
}

/// Where the merged value of each `[tcpmux]` and `[msp]` key was set: the
/// last file that set it, and the line.
#[derive(Debug, Default)]
struct Origins {
    keys: HashMap<String, (PathBuf, usize)>,
}

impl Origins {
    fn note(&mut self, section: &str, path: &Path, keys: &HashMap<String, usize>) {
        for (key, &line) in keys {
            self.keys
                .insert(format!("{section}.{key}"), (path.to_path_buf(), line));
        }
    }

    /// An error about `[section] key`, placed where the key was set (or in
    /// `fallback`, for a default).
    fn error(&self, fallback: &Path, section: &str, key: &str, message: String) -> ConfigError {
        let text = format!("[{section}] {key}: {message}");
        match self.keys.get(&format!("{section}.{key}")) {
            Some((path, line)) => ConfigError::at(path, Some(*line), text),
            None => ConfigError::new(fallback, text),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTcpmux {
    listen: Option<Vec<SocketAddr>>,
    #[serde(default, deserialize_with = "duration")]
    name_timeout: Option<Duration>,
    max_handshakes: Option<usize>,
    max_handshakes_per_source: Option<usize>,
    ipv6_source_prefix: Option<u8>,
    max_sessions: Option<usize>,
    max_warm: Option<usize>,
    max_starting_units: Option<usize>,
    #[serde(default, deserialize_with = "nets")]
    allow: Option<Vec<IpNet>>,
    #[serde(default, deserialize_with = "nets")]
    deny: Option<Vec<IpNet>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMsp {
    listen: Option<Vec<SocketAddr>>,
    deliver: Option<Delivery>,
    command: Option<Vec<String>>,
    #[serde(default, deserialize_with = "duration")]
    command_timeout: Option<Duration>,
    console: Option<bool>,
    rate_per_minute: Option<u32>,
    recipient_rate_per_minute: Option<u32>,
    total_rate_per_minute: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    connection_timeout: Option<Duration>,
    max_connections: Option<usize>,
    max_connections_per_source: Option<usize>,
    max_messages_per_connection: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    dedup_window: Option<Duration>,
    utmp: Option<PathBuf>,
    #[serde(default, deserialize_with = "nets")]
    allow: Option<Vec<IpNet>>,
    #[serde(default, deserialize_with = "nets")]
    deny: Option<Vec<IpNet>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    command: Option<Vec<String>>,
    #[serde(default = "default_plus")]
    plus: bool,
    #[serde(default)]
    launcher: LauncherKind,
    #[serde(default = "default_max_instances")]
    max_instances: usize,
    #[serde(default = "default_max_starts_per_second")]
    max_starts_per_second: u32,
    #[serde(default = "default_warm")]
    warm: usize,
    #[serde(default, deserialize_with = "nets")]
    allow: Option<Vec<IpNet>>,
    #[serde(default, deserialize_with = "nets")]
    deny: Option<Vec<IpNet>>,
    user: Option<String>,
    group: Option<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
}

fn default_plus() -> bool {
    true
}

fn default_max_instances() -> usize {
    limits::DEFAULT_MAX_INSTANCES
}

fn default_max_starts_per_second() -> u32 {
    limits::DEFAULT_MAX_STARTS_PER_SECOND
}

/// A duration as people write it ("10s", "1m 30s", "500ms").
fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(de)?;
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "\"{text}\" is not a duration ({e}): write a number and a unit, one of ms, s, \
             min, h, d (for example \"10s\", \"1min 30s\", \"500ms\")"
        ))
    })
}

fn default_warm() -> usize {
    limits::DEFAULT_WARM
}

fn nets<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Vec<IpNet>>, D::Error> {
    let texts = Vec::<String>::deserialize(de)?;
    texts
        .iter()
        .map(|t| parse_net(t).map_err(serde::de::Error::custom))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Parses one file's text. Unknown keys are errors; the message gives the
/// line and the key.
pub fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let mut file: FileConfig = toml::from_str(text).map_err(|e| {
        let message = e.to_string().trim_end().to_string();
        ConfigError::new(path, plain_words(&message))
    })?;
    file.lines = KeyLines::scan(text);
    Ok(file)
}

/// serde's type names, in the words of the configuration's readers.
fn plain_words(message: &str) -> String {
    ["usize", "u64", "u32", "u16", "u8"]
        .iter()
        .fold(message.to_string(), |m, t| {
            m.replace(&format!("expected {t}"), "expected a whole number")
        })
}

/// Merges parsed files (main file first, then drop-ins in order) and
/// validates the result. Later files override keys of `[tcpmux]`; services
/// add up, and a name defined twice is an error naming both files.
pub fn build(files: Vec<(PathBuf, FileConfig)>) -> Result<Config, ConfigError> {
    let main = files
        .first()
        .map(|(p, _)| p.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let mut merged = RawTcpmux::default();
    let mut tcpmux_source = main.clone();
    let mut msp = RawMsp::default();
    let mut msp_source = main.clone();
    let mut services: Vec<Arc<Service>> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut paths = Vec::new();
    let mut origins = Origins::default();

    for (path, file) in files {
        origins.note("tcpmux", &path, &file.lines.tcpmux);
        origins.note("msp", &path, &file.lines.msp);
        if let Some(t) = file.tcpmux {
            tcpmux_source = path.clone();
            merged.listen = t.listen.or(merged.listen);
            merged.name_timeout = t.name_timeout.or(merged.name_timeout);
            merged.max_handshakes = t.max_handshakes.or(merged.max_handshakes);
            merged.max_handshakes_per_source = t
                .max_handshakes_per_source
                .or(merged.max_handshakes_per_source);
            merged.ipv6_source_prefix = t.ipv6_source_prefix.or(merged.ipv6_source_prefix);
            merged.max_sessions = t.max_sessions.or(merged.max_sessions);
            merged.max_warm = t.max_warm.or(merged.max_warm);
            merged.max_starting_units = t.max_starting_units.or(merged.max_starting_units);
            merged.allow = t.allow.or(merged.allow);
            merged.deny = t.deny.or(merged.deny);
        }
        if let Some(m) = file.msp {
            msp_source = path.clone();
            msp.listen = m.listen.or(msp.listen);
            msp.deliver = m.deliver.or(msp.deliver);
            msp.command = m.command.or(msp.command);
            msp.command_timeout = m.command_timeout.or(msp.command_timeout);
            msp.console = m.console.or(msp.console);
            msp.rate_per_minute = m.rate_per_minute.or(msp.rate_per_minute);
            msp.recipient_rate_per_minute = m
                .recipient_rate_per_minute
                .or(msp.recipient_rate_per_minute);
            msp.total_rate_per_minute = m.total_rate_per_minute.or(msp.total_rate_per_minute);
            msp.idle_timeout = m.idle_timeout.or(msp.idle_timeout);
            msp.connection_timeout = m.connection_timeout.or(msp.connection_timeout);
            msp.max_connections = m.max_connections.or(msp.max_connections);
            msp.max_connections_per_source = m
                .max_connections_per_source
                .or(msp.max_connections_per_source);
            msp.max_messages_per_connection = m
                .max_messages_per_connection
                .or(msp.max_messages_per_connection);
            msp.dedup_window = m.dedup_window.or(msp.dedup_window);
            msp.utmp = m.utmp.or(msp.utmp);
            msp.allow = m.allow.or(msp.allow);
            msp.deny = m.deny.or(msp.deny);
        }
        let no_lines = (0, HashMap::new());
        for (i, raw) in file.services.into_iter().enumerate() {
            let lines = file.lines.services.get(i).unwrap_or(&no_lines);
            let service = validate_service(&path, lines, raw)?;
            let key = service.name.to_ascii_lowercase();
            if let Some(&i) = by_name.get(&key) {
                let first = &services[i];
                return Err(ConfigError::at(
                    &path,
                    service.line,
                    format!(
                        "service \"{}\" is already defined in {}{} (service names compare \
                         without regard to case)",
                        service.name,
                        first.source.display(),
                        first.line.map(|l| format!(" line {l}")).unwrap_or_default(),
                    ),
                ));
            }
            by_name.insert(key, services.len());
            services.push(Arc::new(service));
        }
        paths.push(path);
    }

    let tcpmux = validate_tcpmux(&tcpmux_source, &origins, merged)?;
    let msp = validate_msp(&msp_source, &origins, msp)?;
    Ok(Config {
        tcpmux,
        msp,
        services,
        by_name,
        files: paths,
        warnings: Vec::new(),
    })
}

fn validate_tcpmux(
    path: &Path,
    origins: &Origins,
    raw: RawTcpmux,
) -> Result<TcpmuxSettings, ConfigError> {
    let err = |key: &str, message: String| origins.error(path, "tcpmux", key, message);
    let name_timeout = raw.name_timeout.unwrap_or(limits::DEFAULT_NAME_TIMEOUT);
    if name_timeout.is_zero() || name_timeout > limits::MAX_NAME_TIMEOUT {
        return Err(err(
            "name_timeout",
            format!(
                "{} is out of range (more than 0, at most {})",
                humantime::format_duration(name_timeout),
                humantime::format_duration(limits::MAX_NAME_TIMEOUT)
            ),
        ));
    }
    let max_handshakes = raw.max_handshakes.unwrap_or(limits::DEFAULT_MAX_HANDSHAKES);
    if max_handshakes == 0 {
        return Err(err("max_handshakes", "must be at least 1".into()));
    }
    let at_least_one =
        |key: &str, value: Option<usize>, default: usize| match value.unwrap_or(default) {
            0 => Err(err(key, "must be at least 1".into())),
            n => Ok(n),
        };
    let max_handshakes_per_source = at_least_one(
        "max_handshakes_per_source",
        raw.max_handshakes_per_source,
        limits::DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
    )?;
    let max_sessions = at_least_one(
        "max_sessions",
        raw.max_sessions,
        limits::DEFAULT_MAX_SESSIONS,
    )?;
    let max_warm = raw.max_warm.unwrap_or(limits::DEFAULT_MAX_WARM);
    if max_warm > limits::MAX_WARM {
        return Err(err(
            "max_warm",
            format!("{max_warm} is more than {}", limits::MAX_WARM),
        ));
    }
    let max_starting_units = at_least_one(
        "max_starting_units",
        raw.max_starting_units,
        limits::default_max_starting_units(),
    )?;
    if max_starting_units > limits::MAX_STARTING_UNITS {
        return Err(err(
            "max_starting_units",
            format!(
                "{max_starting_units} is more than {}",
                limits::MAX_STARTING_UNITS
            ),
        ));
    }
    let ipv6_source_prefix = raw
        .ipv6_source_prefix
        .unwrap_or(limits::DEFAULT_IPV6_SOURCE_PREFIX);
    if ipv6_source_prefix > 128 {
        return Err(err(
            "ipv6_source_prefix",
            format!("{ipv6_source_prefix} is longer than 128 bits"),
        ));
    }
    let listen = match raw.listen {
        Some(l) if l.is_empty() => {
            return Err(err(
                "listen",
                "is empty; give at least one address, or leave the key out for the default".into(),
            ));
        }
        Some(l) => l,
        None => vec![
            DEFAULT_LISTEN
                .parse()
                .expect("DEFAULT_LISTEN is a valid address"),
        ],
    };
    Ok(TcpmuxSettings {
        listen,
        name_timeout,
        max_handshakes,
        max_handshakes_per_source,
        ipv6_source_prefix,
        max_sessions,
        max_warm,
        max_starting_units,
        acl: Acl::new(raw.allow.unwrap_or_default(), raw.deny.unwrap_or_default()),
    })
}

fn validate_msp(path: &Path, origins: &Origins, raw: RawMsp) -> Result<MspSettings, ConfigError> {
    let err = |key: &str, message: String| origins.error(path, "msp", key, message);
    let deliver = raw.deliver.unwrap_or_default();
    if let Some(command) = &raw.command {
        match command.first() {
            None => return Err(err("command", "is empty".into())),
            Some(p) if !Path::new(p).is_absolute() => {
                return Err(err("command", format!("\"{p}\" is not an absolute path")));
            }
            Some(_) => {}
        }
    } else if deliver == Delivery::Command {
        return Err(err(
            "command",
            "missing, and deliver = \"command\" needs it".into(),
        ));
    }
    let bounded = |key: &str, d: Option<Duration>, default: Duration, max: Duration| {
        let d = d.unwrap_or(default);
        if d.is_zero() || d > max {
            Err(err(
                key,
                format!(
                    "{} is out of range (more than 0, at most {})",
                    humantime::format_duration(d),
                    humantime::format_duration(max)
                ),
            ))
        } else {
            Ok(d)
        }
    };
    let at_least_one = |key: &str, value: Option<u32>, default: u32| match value.unwrap_or(default)
    {
        0 => Err(err(key, "must be at least 1".to_string())),
        n => Ok(n),
    };
    let rate_per_minute = at_least_one(
        "rate_per_minute",
        raw.rate_per_minute,
        limits::DEFAULT_MSP_RATE_PER_MINUTE,
    )?;
    let recipient_rate_per_minute = at_least_one(
        "recipient_rate_per_minute",
        raw.recipient_rate_per_minute,
        limits::DEFAULT_MSP_RECIPIENT_RATE_PER_MINUTE,
    )?;
    let total_rate_per_minute = at_least_one(
        "total_rate_per_minute",
        raw.total_rate_per_minute,
        limits::DEFAULT_MSP_TOTAL_RATE_PER_MINUTE,
    )?;
    let max_connections = raw
        .max_connections
        .unwrap_or(limits::DEFAULT_MSP_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(err("max_connections", "must be at least 1".into()));
    }
    let max_connections_per_source = raw
        .max_connections_per_source
        .unwrap_or(limits::DEFAULT_MSP_MAX_CONNECTIONS_PER_SOURCE);
    if max_connections_per_source == 0 {
        return Err(err(
            "max_connections_per_source",
            "must be at least 1".into(),
        ));
    }
    let max_messages_per_connection = raw
        .max_messages_per_connection
        .unwrap_or(limits::DEFAULT_MSP_MAX_MESSAGES_PER_CONNECTION);
    if max_messages_per_connection == 0 {
        return Err(err(
            "max_messages_per_connection",
            "must be at least 1".into(),
        ));
    }
    Ok(MspSettings {
        listen: raw.listen.unwrap_or_default(),
        deliver,
        command: raw.command,
        command_timeout: bounded(
            "command_timeout",
            raw.command_timeout,
            limits::DEFAULT_MSP_COMMAND_TIMEOUT,
            limits::MAX_MSP_COMMAND_TIMEOUT,
        )?,
        console: raw.console.unwrap_or(false),
        rate_per_minute,
        recipient_rate_per_minute,
        total_rate_per_minute,
        idle_timeout: bounded(
            "idle_timeout",
            raw.idle_timeout,
            limits::DEFAULT_MSP_IDLE_TIMEOUT,
            limits::MAX_MSP_IDLE_TIMEOUT,
        )?,
        connection_timeout: bounded(
            "connection_timeout",
            raw.connection_timeout,
            limits::DEFAULT_MSP_CONNECTION_TIMEOUT,
            limits::MAX_MSP_CONNECTION_TIMEOUT,
        )?,
        max_connections,
        max_connections_per_source,
        max_messages_per_connection,
        dedup_window: bounded(
            "dedup_window",
            raw.dedup_window,
            limits::DEFAULT_MSP_DEDUP_WINDOW,
            limits::MAX_MSP_DEDUP_WINDOW,
        )?,
        utmp: raw.utmp.unwrap_or_else(|| PathBuf::from(DEFAULT_UTMP)),
        acl: Acl::new(raw.allow.unwrap_or_default(), raw.deny.unwrap_or_default()),
    })
}

/// Variables tcpmuxd sets for every session.
pub const RESERVED_ENVIRONMENT: &[&str] = &[
    "TCPMUX_SERVICE",
    "REMOTE_ADDR",
    "REMOTE_PORT",
    "LOCAL_ADDR",
    "LOCAL_PORT",
    "PATH",
];

/// Longest service name, escaped, that still fits a unit name:
/// `tcpmux-` + NAME + `@` + instance (up to 30) + `.service` within 255.
pub const MAX_ESCAPED_NAME_LEN: usize = 255 - "tcpmux-@.service".len() - 30;

/// Where glibc keeps the login records.
pub const DEFAULT_UTMP: &str = "/var/run/utmp";

/// Whether `name` may be used as a service name: 1 to 255 visible ASCII
/// characters, and neither the reserved `help` nor `msp`, the name of the
/// MSP delivery units (`tcpmux-msp@INSTANCE.service`), whose drop-ins and
/// session counting a service of that name would share.
pub fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is empty".into());
    }
    if name.len() > limits::MAX_NAME_LEN {
        return Err(format!(
            "name is {} bytes long, more than the {} a client may send",
            name.len(),
            limits::MAX_NAME_LEN
        ));
    }
    if let Some(c) = name.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "name \"{}\" contains {c:?}: only visible ASCII characters are allowed",
            name.escape_debug()
        ));
    }
    if name.eq_ignore_ascii_case(HELP_NAME) {
        return Err("name \"help\" is reserved for the list of services".into());
    }
    if name.eq_ignore_ascii_case(crate::msp::deliver::MSP_UNIT_NAME) {
        return Err(format!(
            "name \"{name}\" is reserved for the Message Send Protocol's delivery units \
             (tcpmux-{}@.service); choose another name",
            crate::msp::deliver::MSP_UNIT_NAME
        ));
    }
    Ok(())
}

fn validate_service(
    path: &Path,
    (header, lines): &(usize, HashMap<String, usize>),
    raw: RawService,
) -> Result<Service, ConfigError> {
    let name = raw.name;
    let line = (*header > 0).then_some(*header);
    let err = |key: &str, message: String| {
        ConfigError::at(
            path,
            lines.get(key).copied().or(line),
            format!("service \"{}\": {key}: {message}", name.escape_debug()),
        )
    };
    check_service_name(&name).map_err(|m| err("name", m))?;
    if let Some(command) = &raw.command {
        let Some(program) = command.first() else {
            return Err(err("command", "is empty".into()));
        };
        if !Path::new(program).is_absolute() {
            return Err(err(
                "command",
                format!("\"{program}\" is not an absolute path"),
            ));
        }
        if command.iter().any(|a| a.contains('\0')) {
            return Err(err("command", "contains a NUL character".into()));
        }
    } else if raw.launcher == LauncherKind::Exec {
        return Err(err(
            "command",
            "missing (a list: program path, then arguments); only the systemd launcher can \
             take the program from unit drop-ins"
                .into(),
        ));
    }
    if raw.launcher != LauncherKind::Exec {
        let escaped = libsystemd::unit::escape_name(&name).len();
        if escaped > MAX_ESCAPED_NAME_LEN {
            return Err(err(
                "name",
                format!(
                    "{escaped} characters long once escaped for systemd unit names, more than \
                 {MAX_ESCAPED_NAME_LEN}; shorten it, or set launcher = \"exec\""
                ),
            ));
        }
    }
    if raw.max_instances == 0 {
        return Err(err("max_instances", "must be at least 1".into()));
    }
    if raw.max_starts_per_second == 0 {
        return Err(err("max_starts_per_second", "must be at least 1".into()));
    }
    if raw.warm > limits::MAX_WARM {
        return Err(err(
            "warm",
            format!("{} is more than {}", raw.warm, limits::MAX_WARM),
        ));
    }
    for (key, value) in &raw.environment {
        let valid = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(err(
                "environment",
                format!("\"{key}\" is not a valid variable name"),
            ));
        }
        if value.contains('\0') {
            return Err(err(
                "environment",
                format!("{key}: value contains a NUL character"),
            ));
        }
        if RESERVED_ENVIRONMENT.contains(&key.as_str()) || key.starts_with("LISTEN_") {
            return Err(err(
                "environment",
                format!("{key} is set by tcpmuxd for every session and cannot be configured"),
            ));
        }
    }
    let credentials = resolve_credentials(raw.user.as_deref(), raw.group.as_deref())
        .map_err(|(key, m)| err(key, m))?;
    Ok(Service {
        command: raw.command,
        plus: raw.plus,
        launcher: raw.launcher,
        max_instances: raw.max_instances,
        max_starts_per_second: raw.max_starts_per_second,
        warm: raw.warm,
        acl: Acl::new(raw.allow.unwrap_or_default(), raw.deny.unwrap_or_default()),
        credentials,
        environment: raw.environment.into_iter().collect(),
        source: path.to_path_buf(),
        line,
        name,
    })
}

fn resolve_credentials(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<Credentials>, (&'static str, String)> {
    use nix::unistd::{Group, User};
    let Some(u) = user else {
        return match group {
            None => Ok(None),
            // The program would keep uid 0 and, through it, all of root's
            // power: a group alone would only look like a restriction.
            Some(g) => Err((
                "group",
                format!(
                    "\"{g}\" without user: the program would still run as root; set user \
                 as well (for example user = \"nobody\")"
                ),
            )),
        };
    };
    let found = match u.parse::<u32>() {
        Ok(uid) => User::from_uid(uid.into()),
        Err(_) => User::from_name(u),
    };
    let user = match found {
        Ok(Some(entry)) => entry,
        Ok(None) => return Err(("user", format!("\"{u}\": no such user"))),
        Err(e) => return Err(("user", format!("\"{u}\": cannot look up: {e}"))),
    };
    let gid = match group {
        None => user.gid.as_raw(),
        Some(g) => {
            let found = match g.parse::<u32>() {
                Ok(gid) => Group::from_gid(gid.into()),
                Err(_) => Group::from_name(g),
            };
            match found {
                Ok(Some(entry)) => entry.gid.as_raw(),
                Ok(None) => return Err(("group", format!("\"{g}\": no such group"))),
                Err(e) => return Err(("group", format!("\"{g}\": cannot look up: {e}"))),
            }
        }
    };
    Ok(Some(Credentials {
        user: user.name,
        uid: user.uid.as_raw(),
        gid,
    }))
}

// ---- the file system -------------------------------------------------------

/// The drop-in files for main file `path`, in the order they apply.
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

/// Reads, merges and validates the main file and its drop-ins, and notes
/// services whose program cannot be run now.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let mut parsed = Vec::new();
    let (dropins, ignored) = dropin_files(path)?;
    for file in std::iter::once(path.to_path_buf()).chain(dropins) {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| ConfigError::new(&file, format!("cannot read: {e}")))?;
        parsed.push((file.clone(), parse_file(&file, &text)?));
    }
    let mut config = build(parsed)?;
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
        if let Err(e) = crate::launch::check_program(program) {
            config.warnings.push(format!(
                "{}: service \"{}\": command {program}: {e}; clients will be refused until it is installed",
                service.source.display(),
                service.name,
            ));
        }
    }
    Ok(config)
}

/// Warnings for access-list entries that do not do what they seem to:
/// `deny = ["::/0"]` lets every IPv4 client in, `allow = ["::/0"]` keeps
/// every one out.
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
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_from(files: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let parsed = files
            .iter()
            .map(|(p, t)| {
                let path = PathBuf::from(p);
                parse_file(&path, t).map(|f| (path, f))
            })
            .collect::<Result<Vec<_>, _>>()?;
        build(parsed)
    }

    #[test]
    fn defaults() {
        let c = build_from(&[(
            "main.toml",
            "[[service]]\nname = \"echo\"\ncommand = [\"/bin/cat\"]\n",
        )])
        .unwrap();
        assert_eq!(
            c.tcpmux.listen,
            vec!["[::]:1".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.tcpmux.name_timeout, limits::DEFAULT_NAME_TIMEOUT);
        let s = c.service("ECHO").unwrap();
        assert!(s.plus);
        assert_eq!(s.launcher, LauncherKind::Auto);
        assert_eq!(s.max_instances, limits::DEFAULT_MAX_INSTANCES);
        assert_eq!(s.warm, limits::DEFAULT_WARM);
        assert_eq!(c.tcpmux.max_warm, limits::DEFAULT_MAX_WARM);
        assert_eq!(
            c.tcpmux.max_starting_units,
            limits::default_max_starting_units()
        );
        assert!(c.tcpmux.max_starting_units >= 2);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = build_from(&[("main.toml", "[tcpmux]\nname_timeout = \"5s\"\nbogus = 1\n")])
            .unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("main.toml: "), "{text}");
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("bogus"), "{text}");
    }

    #[test]
    fn dropins_override_keys_and_add_services() {
        let c = build_from(&[
            ("main.toml", "[tcpmux]\nname_timeout = \"5s\"\nlisten = [\"127.0.0.1:1\"]\n[[service]]\nname = \"a\"\ncommand = [\"/bin/cat\"]\n"),
            ("conf.d/10.toml", "[tcpmux]\nname_timeout = \"500ms\"\n[[service]]\nname = \"b\"\ncommand = [\"/bin/cat\"]\nplus = false\n"),
        ])
        .unwrap();
        assert_eq!(c.tcpmux.name_timeout, Duration::from_millis(500));
        assert_eq!(
            c.tcpmux.listen,
            vec!["127.0.0.1:1".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.services.len(), 2);
        assert!(!c.service("b").unwrap().plus);
        assert_eq!(
            c.service("b").unwrap().source,
            PathBuf::from("conf.d/10.toml")
        );
    }

    #[test]
    fn duplicate_names_both_files() {
        let e = build_from(&[
            (
                "main.toml",
                "[[service]]\nname = \"Echo\"\ncommand = [\"/bin/cat\"]\n",
            ),
            (
                "conf.d/50-echo.toml",
                "[[service]]\nname = \"echo\"\ncommand = [\"/bin/cat\"]\n",
            ),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("conf.d/50-echo.toml: line 1: "), "{e}");
        assert!(e.contains("main.toml line 1"), "{e}");
        assert!(e.contains("without regard to case"), "{e}");
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            (
                "[[service]]\nname = \"help\"\ncommand = [\"/bin/cat\"]\n",
                "reserved",
            ),
            (
                "[[service]]\nname = \"a b\"\ncommand = [\"/bin/cat\"]\n",
                "visible ASCII",
            ),
            (
                "[[service]]\nname = \"x\"\ncommand = [\"cat\"]\n",
                "absolute path",
            ),
            (
                "[[service]]\nname = \"x\"\nlauncher = \"exec\"\n",
                "command: missing",
            ),
            (
                "[[service]]\nname = \"x\"\ncommand = []\n",
                "command: is empty",
            ),
            (
                "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nmax_instances = 0\n",
                "max_instances",
            ),
            (
                "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nallow = [\"300.0.0.1\"]\n",
                "300.0.0.1",
            ),
            (
                "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nlauncher = \"inetd\"\n",
                "inetd",
            ),
            (
                "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nuser = \"no-such-user-here\"\n",
                "no such user",
            ),
            (
                "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\ngroup = \"0\"\n",
                "without user",
            ),
            (
                "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nenvironment = { \"1X\" = \"y\" }\n",
                "1X",
            ),
            ("[tcpmux]\nname_timeout = \"0s\"\n", "name_timeout"),
            ("[tcpmux]\nname_timeout = \"ten seconds\"\n", "name_timeout"),
            ("[tcpmux]\nlisten = [\"localhost\"]\n", "listen"),
            ("[tcpmux]\nlisten = []\n", "listen: is empty"),
            (
                "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nenvironment = { REMOTE_ADDR = \"y\" }\n",
                "REMOTE_ADDR",
            ),
            ("[msp]\ndeliver = \"command\"\n", "[msp] command: missing"),
            ("[msp]\nrate_per_minute = 0\n", "rate_per_minute"),
            (
                "[msp]\nconnection_timeout = \"300000000000y\"\n",
                "connection_timeout: ",
            ),
            ("[msp]\nidle_timeout = \"2h\"\n", "at most 1h"),
            (
                "[msp]\nrecipient_rate_per_minute = 0\n",
                "[msp] recipient_rate_per_minute: must be at least 1",
            ),
            (
                "[msp]\ntotal_rate_per_minute = 0\n",
                "[msp] total_rate_per_minute: must be at least 1",
            ),
            (
                "[msp]\nmax_connections_per_source = 0\n",
                "[msp] max_connections_per_source: must be at least 1",
            ),
            (
                "[msp]\nmax_messages_per_connection = 0\n",
                "[msp] max_messages_per_connection: must be at least 1",
            ),
            ("[msp]\nallow = [\"10.0.0.0/33\"]\n", "10.0.0.0/33"),
            (
                "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nwarm = 100000\n",
                "warm: 100000",
            ),
            ("[tcpmux]\nmax_warm = 5000\n", "max_warm: 5000"),
            (
                "[tcpmux]\nmax_starting_units = 0\n",
                "[tcpmux] max_starting_units: must be at least 1",
            ),
            (
                "[tcpmux]\nmax_starting_units = 5000\n",
                "max_starting_units: 5000 is more than 1024",
            ),
        ];
        for (text, needle) in cases {
            let e = build_from(&[("main.toml", text)]).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn msp_has_its_own_access_list() {
        let c = build_from(&[
            ("main.toml", "[msp]\nallow = [\"192.0.2.0/24\"]\n"),
            ("conf.d/10.toml", "[msp]\ndeny = [\"192.0.2.7\"]\n"),
        ])
        .unwrap();
        assert!(c.msp.acl.permits("192.0.2.1".parse().unwrap()));
        assert!(!c.msp.acl.permits("192.0.2.7".parse().unwrap()));
        assert!(!c.msp.acl.permits("198.51.100.1".parse().unwrap()));
        let open = build_from(&[("main.toml", "")]).unwrap();
        assert!(open.msp.acl.permits("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn command_may_come_from_systemd_dropins() {
        let c = build_from(&[(
            "main.toml",
            "[[service]]\nname = \"x\"\nlauncher = \"systemd\"\n",
        )])
        .unwrap();
        assert_eq!(c.service("x").unwrap().command, None);
        assert_eq!(c.service("x").unwrap().launcher, LauncherKind::Systemd);
    }

    #[test]
    fn names_too_long_for_unit_names_need_the_exec_launcher() {
        let long = "-".repeat(60);
        let text = format!("[[service]]\nname = \"{long}\"\ncommand = [\"/bin/cat\"]\n");
        let e = build_from(&[("main.toml", &text)]).unwrap_err().to_string();
        assert!(e.contains("escaped"), "{e}");
        let text = format!("{text}launcher = \"exec\"\n");
        assert!(build_from(&[("main.toml", &text)]).is_ok());
    }

    #[test]
    fn errors_found_after_parsing_name_the_line() {
        let main = "# tcpmuxd\n[tcpmux]\nlisten = [\"127.0.0.1:1\"]\nmax_sessions = 0\n";
        let e = build_from(&[("main.toml", main)]).unwrap_err().to_string();
        assert_eq!(
            e,
            "main.toml: line 4: [tcpmux] max_sessions: must be at least 1"
        );
        let e = build_from(&[
            ("main.toml", "[msp]\nidle_timeout = \"1s\"\n"),
            ("conf.d/10.toml", "\n[msp]\nidle_timeout = \"2h\"\n"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("conf.d/10.toml: line 3: [msp] idle_timeout: "),
            "{e}"
        );
        let svc = "[[service]]\nname = \"a\"\ncommand = [\"/bin/cat\"]\n\n\
                   [[service]]\nname = \"b\"\ncommand = [\"cat\"]\n";
        let e = build_from(&[("main.toml", svc)]).unwrap_err().to_string();
        assert!(
            e.starts_with("main.toml: line 7: service \"b\": command: "),
            "{e}"
        );
        let e = build_from(&[(
            "main.toml",
            "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\n[service.environment]\nPATH = \"/\"\n",
        )])
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("main.toml: line 4: service \"x\": environment: "),
            "{e}"
        );
    }

    #[test]
    fn messages_use_plain_words() {
        let e = build_from(&[("main.toml", "[tcpmux]\nmax_sessions = \"many\"\n")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a whole number"), "{e}");
        let e = build_from(&[("main.toml", "[tcpmux]\nname_timeout = \"ten seconds\"\n")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("ms, s, min, h, d"), "{e}");
    }

    #[test]
    fn reload_changes_are_described() {
        let old = build_from(&[(
            "main.toml",
            "[[service]]\nname = \"a\"\ncommand = [\"/bin/cat\"]\n\
             [[service]]\nname = \"b\"\ncommand = [\"/bin/cat\"]\n",
        )])
        .unwrap();
        let new = build_from(&[(
            "main.toml",
            "[tcpmux]\nname_timeout = \"5s\"\n\
             [[service]]\nname = \"A\"\ncommand = [\"/bin/cat\"]\nmax_instances = 2\n\
             [[service]]\nname = \"c\"\ncommand = [\"/bin/cat\"]\n\
             [[service]]\nname = \"d\"\ncommand = [\"/bin/cat\"]\n",
        )])
        .unwrap();
        assert_eq!(
            describe_changes(&old, &new),
            "2 services added, 1 removed, 1 changed; [tcpmux] changed"
        );
        assert_eq!(describe_changes(&old, &old), "nothing changed");
    }

    #[test]
    fn service_names() {
        assert!(check_service_name("example.com-chat-2").is_ok());
        assert!(check_service_name(&"a".repeat(255)).is_ok());
        assert!(check_service_name(&"a".repeat(256)).is_err());
        assert!(check_service_name("HeLp").is_err());
        let msp = check_service_name("MSP").unwrap_err();
        assert!(
            msp.contains("\"MSP\" is reserved") && msp.contains("tcpmux-msp@"),
            "{msp}"
        );
        assert!(check_service_name("msp2").is_ok());
        assert!(check_service_name("").is_err());
    }
}
