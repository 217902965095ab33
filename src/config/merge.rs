//! Merging the files: the main file first, then the drop-ins in order.
//! Later files override keys of `[tcpmux]` and `[msp]`; services add up.

use super::file::{FileConfig, RawMsp, RawTcpmux};
use super::validate::{validate_msp, validate_service, validate_tcpmux};
use super::{Config, ConfigError, DEFAULT_CONFIG_PATH, Service};
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
            merged.max_sessions_per_source =
                t.max_sessions_per_source.or(merged.max_sessions_per_source);
            merged.max_warm = t.max_warm.or(merged.max_warm);
            merged.max_starting_units = t.max_starting_units.or(merged.max_starting_units);
            merged.allow = t.allow.or(merged.allow);
            merged.deny = t.deny.or(merged.deny);
            merged.default_user = t.default_user.or(merged.default_user);
        }
        if let Some(m) = file.msp {
            msp_source = path.clone();
            msp.listen = m.listen.or(msp.listen);
            msp.deliver = m.deliver.or(msp.deliver);
            msp.command = m.command.or(msp.command);
            msp.user = m.user.or(msp.user);
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
    let msp_command_origin = origins
        .keys
        .get("msp.command")
        .map(|(path, line)| (path.clone(), Some(*line)));
    Ok(Config {
        tcpmux,
        msp,
        services,
        by_name,
        files: paths,
        warnings: Vec::new(),
        msp_command_origin,
    })
}
