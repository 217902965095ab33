//! Validation: every value checked against its bounds, users and groups
//! looked up, and the meaning a configuration has on its host (who
//! programs run as). Errors name the file, the line and the key.

use super::file::{RawMsp, RawService, RawTcpmux};
use super::merge::Origins;
use super::{
    Config, ConfigError, Credentials, DEFAULT_LISTEN, DEFAULT_UTMP, Delivery, HELP_NAME, Host,
    LauncherKind, MSP_UNIT_NAME, MspSettings, Service, TcpmuxSettings,
};
use crate::acl::Acl;
use crate::limits;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub(super) fn validate_tcpmux(
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
    let max_sessions_per_source = at_least_one(
        "max_sessions_per_source",
        raw.max_sessions_per_source,
        limits::default_source_share(max_sessions),
    )?;
    if max_sessions_per_source > max_sessions {
        return Err(err(
            "max_sessions_per_source",
            format!("{max_sessions_per_source} is more than max_sessions ({max_sessions})"),
        ));
    }
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
    let default_credentials = resolve_credentials(raw.default_user.as_deref(), None)
        .map_err(|(_, m)| err("default_user", m))?;
    Ok(TcpmuxSettings {
        default_credentials,
        listen,
        name_timeout,
        max_handshakes,
        max_handshakes_per_source,
        ipv6_source_prefix,
        max_sessions,
        max_sessions_per_source,
        max_warm,
        max_starting_units,
        acl: Acl::new(raw.allow.unwrap_or_default(), raw.deny.unwrap_or_default()),
    })
}

pub(super) fn validate_msp(
    path: &Path,
    origins: &Origins,
    raw: RawMsp,
) -> Result<MspSettings, ConfigError> {
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
    let credentials = resolve_credentials(raw.user.as_deref(), raw.group.as_deref())
        .map_err(|(key, m)| err(key, m))?;
    Ok(MspSettings {
        listen: raw.listen.unwrap_or_default(),
        deliver,
        command: raw.command,
        credentials,
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

pub(super) fn validate_service(
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
    let max_instances_per_source = raw
        .max_instances_per_source
        .unwrap_or_else(|| limits::default_source_share(raw.max_instances));
    if max_instances_per_source == 0 {
        return Err(err("max_instances_per_source", "must be at least 1".into()));
    }
    if max_instances_per_source > raw.max_instances {
        return Err(err(
            "max_instances_per_source",
            format!(
                "{max_instances_per_source} is more than max_instances ({})",
                raw.max_instances
            ),
        ));
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
        max_instances_per_source,
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

/// Settles who the programs tcpmuxd starts itself run as. As root, each
/// needs a user: its own, or `[tcpmux] default_user`; `user = "root"`
/// written out is the only way to run one as root. A program without one
/// is an error here, never a session or a delivery run as root by
/// accident. Not as root, tcpmuxd cannot switch users and
/// `default_user` does not apply.
pub fn apply_host(config: &mut Config, host: &Host) -> Result<(), ConfigError> {
    if !host.root {
        return Ok(());
    }
    let default = config.tcpmux.default_credentials.clone();
    const FIX: &str = "set user = \"nobody\" (or another user) here or [tcpmux] default_user, or \
                       user = \"root\" to run it as root on purpose";
    for service in &mut config.services {
        if !service.launcher.runs_exec(host) || service.credentials.is_some() {
            continue;
        }
        match &default {
            Some(cred) => Arc::make_mut(service).credentials = Some(cred.clone()),
            None => {
                return Err(ConfigError::at(
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
    }
    let msp = &mut config.msp;
    let command_runs_here = msp.deliver == Delivery::Command && !host.under_systemd;
    if command_runs_here && msp.credentials.is_none() {
        match default {
            Some(cred) => msp.credentials = Some(cred),
            None => {
                let (path, line) = config
                    .msp_command_origin
                    .clone()
                    .unwrap_or_else(|| (config.files[0].clone(), None));
                return Err(ConfigError::at(
                    &path,
                    line,
                    format!(
                        "[msp] command: no user: tcpmuxd runs as root and would run the delivery \
                         command as root; {FIX}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Whether `path` names a regular file this process may execute.
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
