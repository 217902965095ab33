//! Merging the files: the main file first, then the drop-ins in order.
//! Later files override keys of `[tcpmux]` and `[msp]`; services add up.

use super::file::{FileConfig, RawLimits, RawMsp, RawTcpmux};
use super::validate::{check_listen, validate_msp, validate_service, validate_tcpmux};
use super::{Config, ConfigError, ConfigErrors, DEFAULT_CONFIG_PATH, Service};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the merged value of each `[tcpmux]` and `[msp]` key was set: the
/// last file that set it, and the line.
#[derive(Debug, Default)]
pub(super) struct Origins {
    pub(super) keys: HashMap<String, (PathBuf, usize)>,
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
    pub(super) fn error(
        &self,
        fallback: &Path,
        section: &str,
        key: &str,
        message: String,
    ) -> ConfigError {
        let text = format!("[{section}] {key}: {message}");
        match self.keys.get(&format!("{section}.{key}")) {
            Some((path, line)) => ConfigError::at(path, Some(*line), text),
            None => ConfigError::new(fallback, text),
        }
    }
}

/// Merges parsed files (main file first, then drop-ins in order) and
/// validates the result. Later files override keys of `[tcpmux]`; services
/// add up, and a name defined twice is an error naming both files.
pub fn build(files: Vec<(PathBuf, FileConfig)>) -> Result<Config, ConfigErrors> {
    let order: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    let mut errors = Vec::new();
    let config = merge(files, &mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors::sorted(errors, &order))
    }
}

/// Merges and validates, adding every error to `errors`: a value in error
/// is replaced by its default, so that the checks after it still run.
pub(super) fn merge(files: Vec<(PathBuf, FileConfig)>, errors: &mut Vec<ConfigError>) -> Config {
    let main = files
        .first()
        .map(|(p, _)| p.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let mut merged = RawTcpmux::default();
    let mut tcpmux_source = main.clone();
    let mut msp = RawMsp::default();
    let mut msp_source = main.clone();
    let mut raw_services = Vec::new();
    let mut paths = Vec::new();
    let mut origins = Origins::default();

    for (path, file) in files {
        origins.note("tcpmux", &path, &file.lines.tcpmux);
        origins.note("msp", &path, &file.lines.msp);
        if let Some(t) = file.tcpmux {
            tcpmux_source = path.clone();
            if t.user.is_some() && t.default_user.is_some() {
                errors.push(origins.error(
                    &path,
                    "tcpmux",
                    "default_user",
                    "is the former name of user, and user is set too: keep only user".into(),
                ));
            }
            merged.listen = t.listen.or(merged.listen);
            merged.name_timeout = t.name_timeout.or(merged.name_timeout);
            merged.defer_accept = t.defer_accept.or(merged.defer_accept);
            merged.max_handshakes = t.max_handshakes.or(merged.max_handshakes);
            merged.max_handshakes_per_source = t
                .max_handshakes_per_source
                .or(merged.max_handshakes_per_source);
            merged.ipv6_source_prefix = t.ipv6_source_prefix.or(merged.ipv6_source_prefix);
            merged.max_sessions = t.max_sessions.or(merged.max_sessions);
            merged.max_sessions_per_source =
                t.max_sessions_per_source.or(merged.max_sessions_per_source);
            merged.max_warm = t.max_warm.or(merged.max_warm);
            merged.max_starting_units = t.max_starting_units.or(merged.max_starting_units);
            merged.allow = t.allow.or(merged.allow);
            merged.deny = t.deny.or(merged.deny);
            merged.trusted_proxies = t.trusted_proxies.or(merged.trusted_proxies);
            // default_user is user's former name: one key.
            if let Some(user) = t.user.or(t.default_user) {
                merged.user = Some(user);
                // A group set with another user does not go with this one.
                merged.group = None;
            }
            merged.group = t.group.or(merged.group);
            merged.umask = t.umask.or(merged.umask);
            // Variables and limits add up, a later file's replacing one of
            // the same name.
            if let Some(env) = t.environment {
                merged.environment.get_or_insert_default().extend(env);
            }
            if let Some(l) = t.limits {
                merged.limits = Some(overlay(merged.limits.take().unwrap_or_default(), l));
            }
        }
        if let Some(m) = file.msp {
            msp_source = path.clone();
            msp.listen = m.listen.or(msp.listen);
            msp.deliver = m.deliver.or(msp.deliver);
            msp.command = m.command.or(msp.command);
            if let Some(user) = m.user {
                msp.user = Some(user);
                msp.group = None;
            }
            msp.group = m.group.or(msp.group);
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
            msp.trusted_proxies = m.trusted_proxies.or(msp.trusted_proxies);
        }
        let mut lines = file.lines.services.into_iter();
        for raw in file.services {
            let lines = lines.next().unwrap_or_default();
            raw_services.push((path.clone(), lines, raw));
        }
        paths.push(path);
    }

    let mut warnings = Vec::new();
    let tcpmux = validate_tcpmux(&tcpmux_source, &origins, merged, errors, &mut warnings);
    let mut msp = validate_msp(&msp_source, &origins, msp, errors, &mut warnings);
    check_listen(&main, &origins, &tcpmux, &msp, errors);
    if msp.credentials.is_none() {
        msp.credentials = tcpmux.default_credentials.clone();
        msp.credentials_inherited = msp.credentials.is_some();
    }
    msp.umask = tcpmux.umask;
    msp.limits = tcpmux.limits;

    let mut services: Vec<Arc<Service>> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (path, lines, raw) in raw_services {
        let Some(service) = validate_service(&path, &lines, raw, &tcpmux, errors, &mut warnings)
        else {
            continue;
        };
        let key = service.name.to_ascii_lowercase();
        if let Some(&i) = by_name.get(&key) {
            let first = &services[i];
            errors.push(ConfigError::at(
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
            continue;
        }
        by_name.insert(key, services.len());
        services.push(Arc::new(service));
    }

    let msp_command_origin = origins
        .keys
        .get("msp.command")
        .map(|(path, line)| (path.clone(), Some(*line)));
    let help_len = crate::tcpmux::help_len(services.iter().map(|s| s.name.as_str()));
    Config {
        tcpmux,
        msp,
        services,
        by_name,
        help_len,
        files: paths,
        warnings,
        msp_command_origin,
    }
}

/// The limits of `base`, with those `over` sets in their place.
fn overlay(base: RawLimits, over: RawLimits) -> RawLimits {
    RawLimits {
        open_files: over.open_files.or(base.open_files),
        processes: over.processes.or(base.processes),
        address_space: over.address_space.or(base.address_space),
        cpu_time: over.cpu_time.or(base.cpu_time),
        core_size: over.core_size.or(base.core_size),
    }
}
