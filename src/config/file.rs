//! The file format: one TOML file as written, every key optional so that
//! drop-ins can set just a few, and the lines keys were found on. Pure:
//! text in, [`FileConfig`] or a precise error out.

use super::{ConfigError, Delivery, LauncherKind};
use crate::acl::parse_net;
use crate::limits;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One file as written. Every key is optional so drop-ins can set just a few.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub(super) tcpmux: Option<RawTcpmux>,
    pub(super) msp: Option<RawMsp>,
    #[serde(default, rename = "service")]
    pub(super) services: Vec<RawService>,
    /// Where each key was written, for errors found after parsing.
    #[serde(skip)]
    pub(super) lines: KeyLines,
}

/// The line of each key of one file, by table, as written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyLines {
    pub(super) tcpmux: HashMap<String, usize>,
    pub(super) msp: HashMap<String, usize>,
    /// Each `[[service]]`: the line of its header, and of its keys.
    pub(super) services: Vec<(usize, HashMap<String, usize>)>,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTcpmux {
    pub(super) listen: Option<Vec<SocketAddr>>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) name_timeout: Option<Duration>,
    pub(super) max_handshakes: Option<usize>,
    pub(super) max_handshakes_per_source: Option<usize>,
    pub(super) ipv6_source_prefix: Option<u8>,
    pub(super) max_sessions: Option<usize>,
    pub(super) max_sessions_per_source: Option<usize>,
    pub(super) max_warm: Option<usize>,
    pub(super) max_starting_units: Option<usize>,
    #[serde(default, deserialize_with = "nets")]
    pub(super) allow: Option<Vec<IpNet>>,
    #[serde(default, deserialize_with = "nets")]
    pub(super) deny: Option<Vec<IpNet>>,
    pub(super) default_user: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMsp {
    pub(super) listen: Option<Vec<SocketAddr>>,
    pub(super) deliver: Option<Delivery>,
    pub(super) command: Option<Vec<String>>,
    pub(super) user: Option<String>,
    pub(super) group: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) command_timeout: Option<Duration>,
    pub(super) console: Option<bool>,
    pub(super) rate_per_minute: Option<u32>,
    pub(super) recipient_rate_per_minute: Option<u32>,
    pub(super) total_rate_per_minute: Option<u32>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) connection_timeout: Option<Duration>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_source: Option<usize>,
    pub(super) max_messages_per_connection: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) dedup_window: Option<Duration>,
    pub(super) utmp: Option<PathBuf>,
    #[serde(default, deserialize_with = "nets")]
    pub(super) allow: Option<Vec<IpNet>>,
    #[serde(default, deserialize_with = "nets")]
    pub(super) deny: Option<Vec<IpNet>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: String,
    pub(super) command: Option<Vec<String>>,
    #[serde(default = "default_plus")]
    pub(super) plus: bool,
    #[serde(default)]
    pub(super) launcher: LauncherKind,
    #[serde(default = "default_max_instances")]
    pub(super) max_instances: usize,
    pub(super) max_instances_per_source: Option<usize>,
    #[serde(default = "default_max_starts_per_second")]
    pub(super) max_starts_per_second: u32,
    #[serde(default = "default_warm")]
    pub(super) warm: usize,
    #[serde(default, deserialize_with = "nets")]
    pub(super) allow: Option<Vec<IpNet>>,
    #[serde(default, deserialize_with = "nets")]
    pub(super) deny: Option<Vec<IpNet>>,
    pub(super) user: Option<String>,
    pub(super) group: Option<String>,
    #[serde(default)]
    pub(super) environment: BTreeMap<String, String>,
}

pub(super) fn default_plus() -> bool {
    true
}

pub(super) fn default_max_instances() -> usize {
    limits::DEFAULT_MAX_INSTANCES
}

pub(super) fn default_max_starts_per_second() -> u32 {
    limits::DEFAULT_MAX_STARTS_PER_SECOND
}

/// A duration as people write it ("10s", "1m 30s", "500ms").
pub(super) fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(de)?;
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "\"{text}\" is not a duration ({e}): write a number and a unit, one of ms, s, \
             min, h, d (for example \"10s\", \"1min 30s\", \"500ms\")"
        ))
    })
}

pub(super) fn default_warm() -> usize {
    limits::DEFAULT_WARM
}

pub(super) fn nets<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Vec<IpNet>>, D::Error> {
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
pub(super) fn plain_words(message: &str) -> String {
    ["usize", "u64", "u32", "u16", "u8"]
        .iter()
        .fold(message.to_string(), |m, t| {
            m.replace(&format!("expected {t}"), "expected a whole number")
        })
}
