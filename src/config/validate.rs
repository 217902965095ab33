//! Validation: every value checked against its bounds, users and groups
//! looked up, and the meaning a configuration has on its host (who
//! programs run as). Errors name the file, the line and the key.

use super::file::{Net, Number, RawLimits, RawMsp, RawService, RawTcpmux};
use super::merge::Origins;
use super::resources::{ResourceLimits, parse_umask, read_limits};
use super::{
    Config, ConfigError, Credentials, DEFAULT_LISTEN, DEFAULT_UTMP, Delivery, HELP_NAME, Host,
    LauncherKind, MSP_UNIT_NAME, MspSettings, Service, TcpmuxSettings,
};
use crate::acl::{Acl, TrustedProxies};
use crate::limits;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The error of a key out of its range, and the key's default in its
/// place so that the checks after it still run.
fn count<T: TryFrom<i64> + Copy + PartialOrd + std::fmt::Display>(
    errors: &mut Vec<ConfigError>,
    err: &dyn Fn(&str, String) -> ConfigError,
    key: &str,
    value: Option<i64>,
    default: T,
    (min, max): (T, T),
) -> T {
    let Some(v) = value else {
        return default;
    };
    match T::try_from(v).ok().filter(|n| *n >= min && *n <= max) {
        Some(n) => n,
        None => {
            errors.push(err(key, format!("{v} is out of range ({min} to {max})")));
            default
        }
    }
}

/// A duration within (0, max], or its default with an error.
fn bounded(
    errors: &mut Vec<ConfigError>,
    err: &dyn Fn(&str, String) -> ConfigError,
    key: &str,
    value: Option<Duration>,
    default: Duration,
    max: Duration,
) -> Duration {
    let d = value.unwrap_or(default);
    if d.is_zero() || d > max {
        errors.push(err(
            key,
            format!(
                "{} is out of range (more than 0, at most {})",
                humantime::format_duration(d),
                humantime::format_duration(max)
            ),
        ));
        default
    } else {
        d
    }
}

/// The networks of list `key`, with a warning for each entry written with
/// host bits set ("10.0.0.1/8" means 10.0.0.0/8).
fn net_list(
    key: &str,
    nets: Option<Vec<Net>>,
    warn: &dyn Fn(&str, String) -> String,
    warnings: &mut Vec<String>,
) -> Vec<ipnet::IpNet> {
    let nets = nets.unwrap_or_default();
    for n in &nets {
        if let Some(meant) = n.host_bits_set() {
            warnings.push(warn(
                key,
                format!(
                    "\"{}\" has host bits set: it means {meant} (write \"{meant}\", or the \
                     address alone for one host)",
                    n.written
                ),
            ));
        }
    }
    nets.into_iter().map(|n| n.net).collect()
}

/// An access list, with a warning for each entry written with host bits
/// set.
fn acl(
    allow: Option<Vec<Net>>,
    deny: Option<Vec<Net>>,
    warn: &dyn Fn(&str, String) -> String,
    warnings: &mut Vec<String>,
) -> Acl {
    let allow = net_list("allow", allow, warn, warnings);
    let deny = net_list("deny", deny, warn, warnings);
    Acl::new(allow, deny)
}

/// Variable names and values of an `environment` table, checked.
fn environment(
    env: &BTreeMap<String, String>,
    errors: &mut Vec<ConfigError>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> BTreeMap<String, String> {
    let mut valid = BTreeMap::new();
    for (key, value) in env {
        let at = format!("environment.{key}");
        let name_ok = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        let problem = if !name_ok {
            Some(format!("\"{key}\" is not a valid variable name"))
        } else if value.contains('\0') {
            Some(format!("{key}: value contains a NUL character"))
        } else if let Some(p) = exec_string_problem(key.len() + 1 + value.len()) {
            Some(format!("{key}: \"{key}=...\" {p}"))
        } else if RESERVED_ENVIRONMENT.contains(&key.as_str()) || key.starts_with("LISTEN_") {
            Some(format!(
                "{key} is set by tcpmuxd for every session and cannot be configured"
            ))
        } else {
            None
        };
        match problem {
            // Named as "environment", placed on the variable's own line.
            Some(p) => errors.push(placed(err(&at, String::new()), err("environment", p))),
            None => {
                valid.insert(key.clone(), value.clone());
            }
        }
    }
    valid
}

/// Bytes one string takes in what a program is given (its arguments and
/// environment): the string, its NUL and the pointer to it.
fn exec_bytes(len: usize) -> usize {
    len + 1 + std::mem::size_of::<*const u8>()
}

/// Bytes a program's command and environment take as execve is given them
/// (the program's path counts twice: the kernel keeps a copy of it).
pub fn exec_size<'a>(
    command: &[String],
    environment: impl Iterator<Item = (&'a str, &'a str)>,
) -> usize {
    let path = command.first().map_or(0, |p| p.len() + 1);
    let args: usize = command.iter().map(|a| exec_bytes(a.len())).sum();
    let vars: usize = environment
        .map(|(k, v)| exec_bytes(k.len() + 1 + v.len()))
        .sum();
    path + args + vars
}

/// What the configuration may give a program: execve's bound, less the
/// room kept for the variables added at start.
pub const EXEC_CONFIG_ROOM: usize = limits::MAX_EXEC_TOTAL - limits::EXEC_ENVIRONMENT_MARGIN;

/// Why a string of `len` bytes cannot be given to a program, if it
/// cannot.
fn exec_string_problem(len: usize) -> Option<String> {
    (len >= limits::MAX_EXEC_STRING).then(|| {
        format!(
            "is {len} bytes long, more than the {} bytes the kernel lets a program be given in \
             one argument or variable",
            limits::MAX_EXEC_STRING - 1
        )
    })
}

/// Why a command and environment of `bytes` cannot be given to a program,
/// if they cannot.
fn exec_total_problem(bytes: usize) -> Option<String> {
    (bytes > EXEC_CONFIG_ROOM).then(|| {
        format!(
            "{bytes} bytes (each string with its end and a pointer), more than the \
             {EXEC_CONFIG_ROOM} a program can be given: the kernel's limit on arguments and \
             environment together is taken as {} KiB, of which {} KiB are kept for the \
             variables added when the program starts",
            limits::MAX_EXEC_TOTAL / 1024,
            limits::EXEC_ENVIRONMENT_MARGIN / 1024
        )
    })
}

/// Why `command` cannot be a program's command, if it cannot: empty, a
/// relative program, a NUL, or an argument too long for execve.
fn command_problem(command: &[String]) -> Option<String> {
    match command.first() {
        None => Some("is empty".to_string()),
        Some(program) if !Path::new(program).is_absolute() => {
            Some(format!("\"{program}\" is not an absolute path"))
        }
        Some(_) if command.iter().any(|a| a.contains('\0')) => {
            Some("contains a NUL character".to_string())
        }
        Some(_) => command.iter().enumerate().find_map(|(i, a)| {
            let p = exec_string_problem(a.len())?;
            Some(match i {
                0 => format!("the program path {p}"),
                _ => format!("argument {i} {p}"),
            })
        }),
    }
}

/// `error`, on the line of `specific` when that one is known (a key of a
/// `[...environment]` or `[...limits]` table of its own).
fn placed(specific: ConfigError, error: ConfigError) -> ConfigError {
    if specific.line.is_some() {
        ConfigError::at(&specific.path, specific.line, error.message)
    } else {
        error
    }
}

/// Reads a umask and limits table as written, with their errors.
fn umask_and_limits(
    umask: Option<&Number>,
    limits: Option<&RawLimits>,
    errors: &mut Vec<ConfigError>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> (Option<u32>, ResourceLimits) {
    let umask = umask.and_then(|u| {
        parse_umask(u)
            .map_err(|m| errors.push(err("umask", m)))
            .ok()
    });
    let limits = match limits {
        None => ResourceLimits::default(),
        Some(raw) => {
            let (limits, problems) = read_limits(raw);
            for (key, m) in problems {
                let at = format!("limits.{key}");
                errors.push(placed(
                    err(&at, String::new()),
                    err(&format!("limits: {key}"), m),
                ));
            }
            limits
        }
    };
    (umask, limits)
}

pub(super) fn validate_tcpmux(
    path: &Path,
    origins: &Origins,
    raw: RawTcpmux,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> TcpmuxSettings {
    let err = |key: &str, message: String| origins.error(path, "tcpmux", key, message);
    let warn = |key: &str, message: String| err(key, message).to_string();
    let name_timeout = bounded(
        errors,
        &err,
        "name_timeout",
        raw.name_timeout,
        limits::DEFAULT_NAME_TIMEOUT,
        limits::MAX_NAME_TIMEOUT,
    );
    let defer_accept = raw.defer_accept.and_then(|d| {
        if d > limits::MAX_DEFER_ACCEPT {
            errors.push(err(
                "defer_accept",
                format!(
                    "{} is out of range (at most {})",
                    humantime::format_duration(d),
                    humantime::format_duration(limits::MAX_DEFER_ACCEPT)
                ),
            ));
            return None;
        }
        // Whole seconds, rounded up: the kernel counts in seconds.
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        u32::try_from(secs).ok()
    });
    let max_handshakes = count(
        errors,
        &err,
        "max_handshakes",
        raw.max_handshakes,
        limits::DEFAULT_MAX_HANDSHAKES,
        (1, limits::MAX_HANDSHAKES),
    );
    let max_handshakes_per_source = count(
        errors,
        &err,
        "max_handshakes_per_source",
        raw.max_handshakes_per_source,
        limits::DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
        (1, limits::MAX_HANDSHAKES),
    );
    let max_sessions = count(
        errors,
        &err,
        "max_sessions",
        raw.max_sessions,
        limits::DEFAULT_MAX_SESSIONS,
        (1, limits::MAX_SESSIONS),
    );
    let mut max_sessions_per_source = count(
        errors,
        &err,
        "max_sessions_per_source",
        raw.max_sessions_per_source,
        limits::default_source_share(max_sessions),
        (1, limits::MAX_SESSIONS),
    );
    if max_sessions_per_source > max_sessions {
        errors.push(err(
            "max_sessions_per_source",
            format!("{max_sessions_per_source} is more than max_sessions ({max_sessions})"),
        ));
        max_sessions_per_source = limits::default_source_share(max_sessions);
    }
    let max_warm = count(
        errors,
        &err,
        "max_warm",
        raw.max_warm,
        limits::DEFAULT_MAX_WARM,
        (0, limits::MAX_WARM),
    );
    let max_starting_units = count(
        errors,
        &err,
        "max_starting_units",
        raw.max_starting_units,
        limits::default_max_starting_units(),
        (1, limits::MAX_STARTING_UNITS),
    );
    let ipv6_source_prefix = count(
        errors,
        &err,
        "ipv6_source_prefix",
        raw.ipv6_source_prefix,
        limits::DEFAULT_IPV6_SOURCE_PREFIX,
        (0, 128),
    );
    let default_listen: SocketAddr = DEFAULT_LISTEN
        .parse()
        .expect("DEFAULT_LISTEN is a valid address");
    let listen = match raw.listen {
        Some(l) if l.is_empty() => {
            errors.push(err(
                "listen",
                "is empty; give at least one address, or leave the key out for the default".into(),
            ));
            vec![default_listen]
        }
        Some(l) => l,
        None => vec![default_listen],
    };
    let default_credentials = resolve_credentials(raw.user.as_deref(), raw.group.as_deref())
        .unwrap_or_else(|(key, m)| {
            errors.push(err(key, m));
            None
        });
    let (umask, limits) = umask_and_limits(raw.umask.as_ref(), raw.limits.as_ref(), errors, &err);
    let environment = environment(&raw.environment.unwrap_or_default(), errors, &err);
    let size = exec_size(
        &[],
        environment.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    if let Some(p) = exec_total_problem(size) {
        errors.push(err(
            "environment",
            format!("takes {p}; every service's program is given it"),
        ));
    }
    TcpmuxSettings {
        default_credentials,
        listen,
        name_timeout,
        defer_accept,
        max_handshakes,
        max_handshakes_per_source,
        ipv6_source_prefix,
        max_sessions,
        max_sessions_per_source,
        max_warm,
        max_starting_units,
        acl: acl(raw.allow, raw.deny, &warn, warnings),
        trusted_proxies: TrustedProxies(net_list(
            "trusted_proxies",
            raw.trusted_proxies,
            &warn,
            warnings,
        )),
        umask: umask.unwrap_or(limits::DEFAULT_UMASK),
        environment: environment.into_iter().collect(),
        limits,
    }
}

pub(super) fn validate_msp(
    path: &Path,
    origins: &Origins,
    raw: RawMsp,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> MspSettings {
    let err = |key: &str, message: String| origins.error(path, "msp", key, message);
    let warn = |key: &str, message: String| err(key, message).to_string();
    let deliver = raw.deliver.unwrap_or_default();
    let mut command = raw.command;
    if let Some(c) = &command {
        let problem = command_problem(c).or_else(|| {
            exec_total_problem(exec_size(c, std::iter::empty())).map(|p| format!("takes {p}"))
        });
        if let Some(p) = problem {
            errors.push(err("command", p));
            command = None;
        }
    } else if deliver == Delivery::Command {
        errors.push(err(
            "command",
            "missing, and deliver = \"command\" needs it".into(),
        ));
    }
    let rate = |errors: &mut Vec<ConfigError>, key: &str, v: Option<i64>, default: u32| {
        count(
            errors,
            &err,
            key,
            v,
            default,
            (1, limits::MAX_MSP_RATE_PER_MINUTE),
        )
    };
    let rate_per_minute = rate(
        errors,
        "rate_per_minute",
        raw.rate_per_minute,
        limits::DEFAULT_MSP_RATE_PER_MINUTE,
    );
    let recipient_rate_per_minute = rate(
        errors,
        "recipient_rate_per_minute",
        raw.recipient_rate_per_minute,
        limits::DEFAULT_MSP_RECIPIENT_RATE_PER_MINUTE,
    );
    let total_rate_per_minute = rate(
        errors,
        "total_rate_per_minute",
        raw.total_rate_per_minute,
        limits::DEFAULT_MSP_TOTAL_RATE_PER_MINUTE,
    );
    let max_connections = count(
        errors,
        &err,
        "max_connections",
        raw.max_connections,
        limits::DEFAULT_MSP_MAX_CONNECTIONS,
        (1, limits::MAX_MSP_CONNECTIONS),
    );
    let max_connections_per_source = count(
        errors,
        &err,
        "max_connections_per_source",
        raw.max_connections_per_source,
        limits::DEFAULT_MSP_MAX_CONNECTIONS_PER_SOURCE,
        (1, limits::MAX_MSP_CONNECTIONS),
    );
    let max_messages_per_connection = count(
        errors,
        &err,
        "max_messages_per_connection",
        raw.max_messages_per_connection,
        limits::DEFAULT_MSP_MAX_MESSAGES_PER_CONNECTION,
        (1, limits::MAX_MSP_MESSAGES_PER_CONNECTION),
    );
    let credentials = resolve_credentials(raw.user.as_deref(), raw.group.as_deref())
        .unwrap_or_else(|(key, m)| {
            errors.push(err(key, m));
            None
        });
    let command_timeout = bounded(
        errors,
        &err,
        "command_timeout",
        raw.command_timeout,
        limits::DEFAULT_MSP_COMMAND_TIMEOUT,
        limits::MAX_MSP_COMMAND_TIMEOUT,
    );
    let idle_timeout = bounded(
        errors,
        &err,
        "idle_timeout",
        raw.idle_timeout,
        limits::DEFAULT_MSP_IDLE_TIMEOUT,
        limits::MAX_MSP_IDLE_TIMEOUT,
    );
    let connection_timeout = bounded(
        errors,
        &err,
        "connection_timeout",
        raw.connection_timeout,
        limits::DEFAULT_MSP_CONNECTION_TIMEOUT,
        limits::MAX_MSP_CONNECTION_TIMEOUT,
    );
    let dedup_window = bounded(
        errors,
        &err,
        "dedup_window",
        raw.dedup_window,
        limits::DEFAULT_MSP_DEDUP_WINDOW,
        limits::MAX_MSP_DEDUP_WINDOW,
    );
    MspSettings {
        listen: raw.listen.unwrap_or_default(),
        deliver,
        command,
        credentials,
        credentials_inherited: false,
        umask: limits::DEFAULT_UMASK,
        limits: ResourceLimits::default(),
        command_timeout,
        console: raw.console.unwrap_or(false),
        rate_per_minute,
        recipient_rate_per_minute,
        total_rate_per_minute,
        idle_timeout,
        connection_timeout,
        max_connections,
        max_connections_per_source,
        max_messages_per_connection,
        dedup_window,
        utmp: raw.utmp.unwrap_or_else(|| PathBuf::from(DEFAULT_UTMP)),
        acl: acl(raw.allow, raw.deny, &warn, warnings),
        trusted_proxies: TrustedProxies(net_list(
            "trusted_proxies",
            raw.trusted_proxies,
            &warn,
            warnings,
        )),
    }
}

/// Whether binding `a` and then `b` for TCP fails because the first holds
/// the port: the same port, and the same address or a wildcard that covers
/// the other (`[::]` covers IPv4 too, as Linux binds it by default).
/// Port 0 is a new port each time: never the same.
fn clash(a: SocketAddr, b: SocketAddr) -> bool {
    let covers =
        |w: SocketAddr, x: SocketAddr| w.ip().is_unspecified() && (w.is_ipv6() || x.is_ipv4());
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || covers(a, b) || covers(b, a))
}

/// Refuses listen addresses that would take the same TCP port twice: within
/// `[tcpmux] listen`, within `[msp] listen`, and across the two; each error
/// names both addresses and where they were set.
pub(super) fn check_listen(
    main: &Path,
    origins: &Origins,
    tcpmux: &TcpmuxSettings,
    msp: &MspSettings,
    errors: &mut Vec<ConfigError>,
) {
    let place = |section: &str| match origins.keys.get(&format!("{section}.listen")) {
        Some((path, line)) => format!("{} line {line}", path.display()),
        None => "the default".to_string(),
    };
    let lists = [("tcpmux", &tcpmux.listen), ("msp", &msp.listen)];
    for (i, (section, list)) in lists.iter().enumerate() {
        for (j, &b) in list.iter().enumerate() {
            // Against the earlier addresses of the same list, then (for
            // [msp]) against every one of [tcpmux].
            let earlier = list[..j].iter().map(|&a| (*section, a));
            let before = lists[..i]
                .iter()
                .flat_map(|(s, l)| l.iter().map(move |&a| (*s, a)));
            if let Some((other, a)) = earlier.chain(before).find(|&(_, a)| clash(a, b)) {
                let what = if a == b {
                    "is listed twice".to_string()
                } else {
                    format!("takes the same TCP port as \"{a}\"")
                };
                let message = if other == *section {
                    format!("\"{b}\" {what}")
                } else {
                    format!(
                        "\"{b}\" {} [tcpmux] listen ({}): tcpmuxd cannot bind a TCP port \
                         twice",
                        if a == b {
                            "is also in".to_string()
                        } else {
                            format!("takes the same TCP port as \"{a}\" of")
                        },
                        place(other)
                    )
                };
                errors.push(origins.error(main, section, "listen", message));
            }
        }
    }
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
    if name.eq_ignore_ascii_case(MSP_UNIT_NAME) {
        return Err(format!(
            "name \"{name}\" is reserved for the Message Send Protocol's delivery units \
             (tcpmux-{}@.service); choose another name",
            MSP_UNIT_NAME
        ));
    }
    Ok(())
}

/// Checks one service and settles what it inherits from `[tcpmux]`: user
/// and group, umask, environment and limits. None when it cannot be a
/// service at all (its name); its other errors are added to `errors`, and
/// the service, with defaults in their place, is still returned so that a
/// second one of its name is found too.
pub(super) fn validate_service(
    path: &Path,
    (header, lines): &(usize, HashMap<String, usize>),
    raw: RawService,
    defaults: &TcpmuxSettings,
    errors: &mut Vec<ConfigError>,
    warnings: &mut Vec<String>,
) -> Option<Service> {
    let name = raw.name.clone();
    let line = (*header > 0).then_some(*header);
    let err = |key: &str, message: String| {
        ConfigError::at(
            path,
            lines.get(key).copied().or(line),
            format!("service \"{}\": {key}: {message}", name.escape_debug()),
        )
    };
    let warn = |key: &str, message: String| err(key, message).to_string();
    if let Err(m) = check_service_name(&name) {
        errors.push(err("name", m));
        return None;
    }
    let backend = super::backend::validate_backend(&raw, errors, &err);
    let mut command = raw.command;
    if let Some(c) = &command {
        if let Some(p) = command_problem(c) {
            errors.push(err("command", p));
            command = None;
        }
    } else if raw.launcher == LauncherKind::Exec {
        errors.push(err(
            "command",
            "missing (a list: program path, then arguments); only the systemd launcher can \
             take the program from unit drop-ins"
                .into(),
        ));
    }
    if matches!(raw.launcher, LauncherKind::Auto | LauncherKind::Systemd) {
        let escaped = libsystemd::unit::escape_name(&name).len();
        if escaped > MAX_ESCAPED_NAME_LEN {
            errors.push(err(
                "name",
                format!(
                    "{escaped} characters long once escaped for systemd unit names, more than \
                 {MAX_ESCAPED_NAME_LEN}; shorten it, or set launcher = \"exec\""
                ),
            ));
        }
    }
    let max_instances = count(
        errors,
        &err,
        "max_instances",
        raw.max_instances,
        limits::DEFAULT_MAX_INSTANCES,
        (1, limits::MAX_SESSIONS),
    );
    let mut max_instances_per_source = count(
        errors,
        &err,
        "max_instances_per_source",
        raw.max_instances_per_source,
        limits::default_source_share(max_instances),
        (1, limits::MAX_SESSIONS),
    );
    if max_instances_per_source > max_instances {
        errors.push(err(
            "max_instances_per_source",
            format!("{max_instances_per_source} is more than max_instances ({max_instances})"),
        ));
        max_instances_per_source = limits::default_source_share(max_instances);
    }
    let max_starts_per_second = count(
        errors,
        &err,
        "max_starts_per_second",
        raw.max_starts_per_second,
        limits::DEFAULT_MAX_STARTS_PER_SECOND,
        (1, limits::MAX_STARTS_PER_SECOND),
    );
    let warm = count(
        errors,
        &err,
        "warm",
        raw.warm,
        limits::DEFAULT_WARM,
        (0, limits::MAX_WARM),
    );
    let own_environment = environment(&raw.environment, errors, &err);
    let mut environment: BTreeMap<String, String> = defaults.environment.iter().cloned().collect();
    let has_own_environment = !own_environment.is_empty();
    environment.extend(own_environment);
    // Too much in [tcpmux] environment alone is its own error, said once.
    let inherited = defaults.environment.iter();
    let inherited_fits = exec_total_problem(exec_size(
        &[],
        inherited.map(|(k, v)| (k.as_str(), v.as_str())),
    ))
    .is_none();
    let size = exec_size(
        command.as_deref().unwrap_or_default(),
        environment.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    if let Some(p) = exec_total_problem(size).filter(|_| inherited_fits) {
        let (key, what) = match (command.is_some(), has_own_environment) {
            (true, true) => ("environment", "command and environment"),
            (false, true) => ("environment", "environment"),
            _ => ("command", "command and environment"),
        };
        let inherited = if defaults.environment.is_empty() {
            ""
        } else {
            " (with [tcpmux] environment)"
        };
        errors.push(err(key, format!("{what}{inherited} take {p}")));
    }
    let (umask, own_limits) =
        umask_and_limits(raw.umask.as_ref(), raw.limits.as_ref(), errors, &err);
    // User and group go together: the service's own user with its own
    // group (or the user's primary group), else [tcpmux]'s. A group alone
    // is an error, as it would not change the user.
    let (credentials, inherited) = match (&raw.user, &raw.group, &defaults.default_credentials) {
        // No program runs as anyone (its own user and group are errors).
        _ if !raw.launcher.starts_programs() => (None, false),
        (None, None, Some(default)) => (Some(default.clone()), true),
        _ => (
            resolve_credentials(raw.user.as_deref(), raw.group.as_deref()).unwrap_or_else(
                |(key, m)| {
                    errors.push(err(key, m));
                    None
                },
            ),
            false,
        ),
    };
    let acl = acl(raw.allow, raw.deny, &warn, warnings);
    Some(Service {
        command,
        plus: raw.plus,
        launcher: raw.launcher,
        backend,
        max_instances,
        max_instances_per_source,
        max_starts_per_second,
        warm,
        acl,
        credentials,
        credentials_inherited: inherited,
        environment: environment.into_iter().collect(),
        umask: umask.unwrap_or(defaults.umask),
        limits: defaults.limits.overridden_by(&own_limits),
        source: path.to_path_buf(),
        line,
        name,
    })
}

pub(super) fn resolve_credentials(
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
    let found = match plain_number(u) {
        Some(uid) => User::from_uid(uid.into()),
        None => User::from_name(u),
    };
    let user = match found {
        Ok(Some(entry)) => entry,
        Ok(None) => return Err(("user", format!("\"{u}\": no such user"))),
        Err(e) => return Err(("user", format!("\"{u}\": cannot look up: {e}"))),
    };
    let gid = match group {
        None => user.gid.as_raw(),
        Some(g) => {
            let found = match plain_number(g) {
                Some(gid) => Group::from_gid(gid.into()),
                None => Group::from_name(g),
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

/// A user or group id as a number is written plainly: digits, no sign, no
/// leading zero (`0`, `65534`). Anything else is a name, so that `00` or
/// `+0` is no user rather than root in disguise.
fn plain_number(text: &str) -> Option<u32> {
    let plain = text.bytes().all(|b| b.is_ascii_digit())
        && !text.is_empty()
        && (text == "0" || !text.starts_with('0'));
    plain.then(|| text.parse().ok()).flatten()
}

/// Settles who the programs tcpmuxd starts itself run as. As root, each
/// needs a user: its own, or `[tcpmux] user`; `user = "root"` written out
/// is the only way to run one as root. A program without one is an error
/// here (one for each), never a session or a delivery run as root by
/// accident. Not as root, tcpmuxd cannot switch users: `[tcpmux] user`
/// does not apply to the programs it starts itself (the systemd launcher's
/// units still get it).
pub fn apply_host(config: &mut Config, host: &Host, errors: &mut Vec<ConfigError>) {
    let msp_runs_here = config.msp.deliver == Delivery::Command && !host.under_systemd;
    if !host.root {
        for service in &mut config.services {
            if service.launcher.runs_exec(host) && service.credentials_inherited {
                let service = Arc::make_mut(service);
                service.credentials = None;
                service.credentials_inherited = false;
            }
        }
        if msp_runs_here && config.msp.credentials_inherited {
            config.msp.credentials = None;
            config.msp.credentials_inherited = false;
        }
        return;
    }
    const FIX: &str = "set user = \"nobody\" (or another user) here or in [tcpmux] (a \
                       service that sets group needs a user of its own), or user = \"root\" \
                       to run it as root on purpose";
    for service in &config.services {
        if service.launcher.runs_exec(host) && service.credentials.is_none() {
            errors.push(ConfigError::at(
                &service.source,
                service.line,
                format!(
                    "service \"{}\": no user: tcpmuxd runs as root and the exec launcher \
                     would run its program as root; {FIX}",
                    service.name.escape_debug()
                ),
            ));
        }
    }
    if msp_runs_here && config.msp.credentials.is_none() {
        let (path, line) = config
            .msp_command_origin
            .clone()
            .unwrap_or_else(|| (config.files[0].clone(), None));
        errors.push(ConfigError::at(
            &path,
            line,
            format!(
                "[msp] command: no user: tcpmuxd runs as root and would run the delivery \
                 command as root; {FIX}"
            ),
        ));
    }
}

/// Whether `path` names a regular file this process may execute. (Whether
/// it is in a format the kernel runs is [`check_format`]'s, for programs
/// tcpmuxd starts itself: under the systemd launcher the unit's helper
/// looks, in the unit's own view of the files.)
pub fn check_program(path: &str) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "not found".to_string(),
        _ => e.to_string(),
    })?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    rustix::fs::access(Path::new(path), rustix::fs::Access::EXEC_OK)
        .map_err(|_| "not executable".to_string())
}

/// Where the kernel lists the further formats it was taught to run.
const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// Whether the kernel can run the file at `path`: an executable file in
/// no format it knows is refused by execve (ENOEXEC), after a plus-mode
/// client was told `+`. One open, one read of 4 bytes and one close; a
/// file tcpmuxd cannot read (execute-only, or opened by its owner with a
/// lease) passes, and execve says.
pub fn check_format(path: &str) -> Result<(), String> {
    let mut head = [0u8; crate::exec_format::HEAD_LEN];
    let Some(n) = read_head(path, &mut head) else {
        return Ok(());
    };
    let head = &head[..n];
    if crate::exec_format::is_executable_format(head) || binfmt_misc_enabled() {
        Ok(())
    } else {
        Err(crate::exec_format::NOT_EXECUTABLE_FORMAT.into())
    }
}

/// The first bytes of the file at `path`, as many as fit `buf` and it
/// has; none when it cannot be read. Not blocking: a file swapped for a
/// FIFO since it was looked at, or under a lease, is not waited for.
fn read_head(path: &str, buf: &mut [u8]) -> Option<usize> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let file = rustix::fs::open(path, flags, Mode::empty()).ok()?;
    let mut n = 0;
    while n < buf.len() {
        match rustix::io::read(&file, &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return None,
        }
    }
    Some(n)
}

/// Whether the kernel has a further format enabled (binfmt_misc: foreign
/// binaries, Java archives, ...), which may run what is neither ELF nor
/// `#!`. Looked at only for such a file.
fn binfmt_misc_enabled() -> bool {
    let enabled = |file: &Path| std::fs::read(file).is_ok_and(|text| text.starts_with(b"enabled"));
    let dir = Path::new(BINFMT_MISC);
    if !enabled(&dir.join("status")) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        name != "status" && name != "register" && enabled(&entry.path())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_string_may_take_execves_limit_with_its_nul() {
        let most = limits::MAX_EXEC_STRING - 1;
        assert_eq!(exec_string_problem(most), None);
        assert!(exec_string_problem(most + 1).is_some());
        let arg = |len| vec!["/bin/echo".to_string(), "x".repeat(len)];
        assert_eq!(command_problem(&arg(most)), None);
        assert_eq!(
            command_problem(&arg(most + 1)).unwrap(),
            "argument 1 is 131072 bytes long, more than the 131071 bytes the kernel lets a \
             program be given in one argument or variable"
        );
        let program = format!("/{}", "p".repeat(most));
        assert!(
            command_problem(&[program])
                .unwrap()
                .starts_with("the program path is 131072 bytes long")
        );
    }

    #[test]
    fn a_variable_counts_its_name_and_equals_sign() {
        let err = |key: &str, m: String| {
            ConfigError::at(Path::new("t.toml"), None, format!("{key}: {m}"))
        };
        let fits = "v".repeat(limits::MAX_EXEC_STRING - 1 - "NAME=".len());
        let mut errors = Vec::new();
        let env = BTreeMap::from([("NAME".to_string(), fits.clone())]);
        assert_eq!(environment(&env, &mut errors, &err).len(), 1);
        assert!(errors.is_empty());
        let env = BTreeMap::from([("NAME".to_string(), fits + "v")]);
        assert!(environment(&env, &mut errors, &err).is_empty());
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .message
                .contains("NAME: \"NAME=...\" is 131072 bytes long"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn the_total_counts_strings_their_ends_and_pointers() {
        let command = ["/bin/cat".to_string(), "-u".to_string()];
        // The path twice (the kernel's copy), then each string with its
        // NUL and its 8-byte pointer.
        assert_eq!(
            exec_size(&command, [("A", "bc")].into_iter()),
            9 + (9 + 8) + (3 + 8) + (5 + 8)
        );
        assert_eq!(exec_total_problem(EXEC_CONFIG_ROOM), None);
        assert!(exec_total_problem(EXEC_CONFIG_ROOM + 1).is_some());
        assert_eq!(
            EXEC_CONFIG_ROOM + limits::EXEC_ENVIRONMENT_MARGIN,
            limits::MAX_EXEC_TOTAL
        );
    }

    #[test]
    fn files_the_kernel_cannot_execute_are_told_apart() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path.to_string_lossy().into_owned()
        };
        assert_eq!(check_format(&file("elf", b"\x7fELF\x02\x01")), Ok(()));
        assert_eq!(check_format(&file("script", b"#!/bin/sh\n")), Ok(()));
        assert_eq!(check_format("/bin/sh"), Ok(()));
        if !binfmt_misc_enabled() {
            let refused = Err(crate::exec_format::NOT_EXECUTABLE_FORMAT.to_string());
            assert_eq!(check_format(&file("text", b"echo hello\n")), refused);
            assert_eq!(check_format(&file("empty", b"")), refused);
            assert_eq!(check_format(&file("short", b"#")), refused);
        }
    }
}
