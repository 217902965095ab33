//! The file format: one TOML file as written, every key optional so that
//! drop-ins can set just a few, and the lines keys were found on. Pure:
//! text in, [`FileConfig`] or a precise error out.

use super::{ConfigError, ConfigErrors, Delivery, LauncherKind};
use crate::acl::parse_net;
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
            /// `[tcpmux.limits]`, `[service.environment]`: keys noted as
            /// `limits.KEY` in the section's own table.
            Sub(bool, &'static str),
        }
        const SUBTABLES: [&str; 2] = ["environment", "limits"];
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
                let sub = |section: &str| {
                    SUBTABLES
                        .into_iter()
                        .find(|t| header == format!("[{section}.{t}]"))
                };
                table = match header.as_str() {
                    "[tcpmux]" => Table::Tcpmux,
                    "[msp]" => Table::Msp,
                    "[[service]]" => {
                        lines.services.push((n, HashMap::new()));
                        Table::Service
                    }
                    _ => {
                        if let Some(t) = sub("tcpmux") {
                            lines.tcpmux.entry(t.into()).or_insert(n);
                            Table::Sub(true, t)
                        } else if let Some(t) = sub("service") {
                            if let Some((_, keys)) = lines.services.last_mut() {
                                keys.entry(t.into()).or_insert(n);
                            }
                            Table::Sub(false, t)
                        } else {
                            Table::Other
                        }
                    }
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
            let prefix = match table {
                Table::Sub(_, t) => Some(t),
                _ => None,
            };
            let keys = match table {
                Table::Tcpmux | Table::Sub(true, _) => &mut lines.tcpmux,
                Table::Msp => &mut lines.msp,
                Table::Service | Table::Sub(false, _) => match lines.services.last_mut() {
                    Some((_, keys)) => keys,
                    None => continue,
                },
                Table::Other => continue,
            };
            let key = match prefix {
                Some(p) => format!("{p}.{key}"),
                None => key.to_string(),
            };
            keys.entry(key).or_insert(n);
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
    #[serde(default, deserialize_with = "duration")]
    pub(super) defer_accept: Option<Duration>,
    pub(super) max_handshakes: Option<i64>,
    pub(super) max_handshakes_per_source: Option<i64>,
    pub(super) ipv6_source_prefix: Option<i64>,
    pub(super) max_sessions: Option<i64>,
    pub(super) max_sessions_per_source: Option<i64>,
    pub(super) max_warm: Option<i64>,
    pub(super) max_starting_units: Option<i64>,
    #[serde(default, deserialize_with = "allow_nets")]
    pub(super) allow: Option<Vec<Net>>,
    #[serde(default, deserialize_with = "deny_nets")]
    pub(super) deny: Option<Vec<Net>>,
    #[serde(default, deserialize_with = "trusted_nets")]
    pub(super) trusted_proxies: Option<Vec<Net>>,
    pub(super) user: Option<String>,
    /// The former name of `user`, still accepted.
    pub(super) default_user: Option<String>,
    pub(super) group: Option<String>,
    pub(super) umask: Option<Number>,
    pub(super) environment: Option<BTreeMap<String, String>>,
    pub(super) limits: Option<RawLimits>,
}

/// Resource limits as written, in `[tcpmux] limits` or a service's.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) open_files: Option<Number>,
    pub(super) processes: Option<Number>,
    pub(super) address_space: Option<Number>,
    pub(super) cpu_time: Option<Number>,
    pub(super) core_size: Option<Number>,
}

/// A value written as a whole number or as a string ("1G", "10min",
/// "0027", "infinity"), read by the key's own rules when validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Number {
    Whole(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Number;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a whole number or a string")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Number, E> {
                Ok(Number::Whole(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Number, E> {
                Ok(Number::Whole(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Number, E> {
                Ok(Number::Text(v.to_string()))
            }
        }
        de.deserialize_any(Visitor)
    }
}

/// One entry of an access list: the network, and how it was written (for
/// the warning about `10.0.0.1/8`, which means 10.0.0.0/8).
#[derive(Debug, Clone)]
pub(super) struct Net {
    pub(super) net: IpNet,
    pub(super) written: String,
}

impl Net {
    /// The network, when the entry as written has host bits set.
    pub(super) fn host_bits_set(&self) -> Option<IpNet> {
        self.written
            .parse::<IpNet>()
            .ok()
            .filter(|n| n.trunc() != *n)
            .map(|_| self.net)
    }
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
    pub(super) rate_per_minute: Option<i64>,
    pub(super) recipient_rate_per_minute: Option<i64>,
    pub(super) total_rate_per_minute: Option<i64>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) connection_timeout: Option<Duration>,
    pub(super) max_connections: Option<i64>,
    pub(super) max_connections_per_source: Option<i64>,
    pub(super) max_messages_per_connection: Option<i64>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) dedup_window: Option<Duration>,
    pub(super) utmp: Option<PathBuf>,
    #[serde(default, deserialize_with = "allow_nets")]
    pub(super) allow: Option<Vec<Net>>,
    #[serde(default, deserialize_with = "deny_nets")]
    pub(super) deny: Option<Vec<Net>>,
    #[serde(default, deserialize_with = "trusted_nets")]
    pub(super) trusted_proxies: Option<Vec<Net>>,
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
    pub(super) max_instances: Option<i64>,
    pub(super) max_instances_per_source: Option<i64>,
    pub(super) max_starts_per_second: Option<i64>,
    pub(super) warm: Option<i64>,
    #[serde(default, deserialize_with = "allow_nets")]
    pub(super) allow: Option<Vec<Net>>,
    #[serde(default, deserialize_with = "deny_nets")]
    pub(super) deny: Option<Vec<Net>>,
    pub(super) user: Option<String>,
    pub(super) group: Option<String>,
    pub(super) umask: Option<Number>,
    #[serde(default)]
    pub(super) environment: BTreeMap<String, String>,
    pub(super) limits: Option<RawLimits>,
    pub(super) forward: Option<String>,
    pub(super) proxy_protocol: Option<String>,
    #[serde(default, deserialize_with = "duration")]
    pub(super) idle_timeout: Option<Duration>,
    pub(super) pass: Option<String>,
}

pub(super) fn default_plus() -> bool {
    true
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

/// The lists of networks, each one's errors naming its key (the TOML
/// error shows the line, not which key of it).
pub(super) fn allow_nets<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Vec<Net>>, D::Error> {
    nets_of("allow: ", de)
}

pub(super) fn deny_nets<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Vec<Net>>, D::Error> {
    nets_of("deny: ", de)
}

pub(super) fn trusted_nets<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Vec<Net>>, D::Error> {
    nets_of("trusted_proxies: ", de)
}

fn nets_of<'de, D: Deserializer<'de>>(prefix: &str, de: D) -> Result<Option<Vec<Net>>, D::Error> {
    let texts = Vec::<String>::deserialize(de)?;
    texts
        .into_iter()
        .map(|written| {
            parse_net(&written)
                .map(|net| Net { net, written })
                .map_err(|e| serde::de::Error::custom(format!("{prefix}{e}")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Errors of the file format reported per file at most: past them, the
/// file is surely not what was meant.
pub const MAX_ERRORS_PER_FILE: usize = 50;

/// Parses one file's text. Every error is reported: unknown keys, values
/// of the wrong type, each with its line, column and a caret.
pub fn parse_file(path: &Path, text: &str) -> Result<FileConfig, ConfigErrors> {
    match read_file(path, text) {
        (Some(file), errors) if errors.is_empty() => Ok(file),
        (_, errors) => Err(ConfigErrors(errors)),
    }
}

/// Parses one file's text as far as it is valid. A syntax error ends the
/// reading (one error, no file); past the syntax, each key of the wrong
/// name or type is reported and left out, and the rest is read again, so
/// that one run reports every one.
pub(super) fn read_file(path: &Path, text: &str) -> (Option<FileConfig>, Vec<ConfigError>) {
    let mut root = match toml::de::DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => return (None, vec![toml_error(path, text, e)]),
    };
    let mut lines = KeyLines::scan(text);
    let mut errors = Vec::new();
    loop {
        match FileConfig::deserialize(toml::de::Deserializer::from(root.clone())) {
            Ok(mut file) => {
                file.lines = lines;
                return (Some(file), errors);
            }
            Err(mut e) => {
                e.set_input(Some(text));
                let at = e.span().map(|s| s.start);
                errors.push(toml_error(path, text, e));
                let pruned = at.is_some_and(|at| prune(root.get_mut(), at, &mut lines, true));
                if !pruned || errors.len() >= MAX_ERRORS_PER_FILE {
                    return (None, errors);
                }
            }
        }
    }
}

/// A TOML error as toml shows it (line, column, caret), in plain words,
/// ordered by its line.
fn toml_error(path: &Path, text: &str, e: toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let message = e.to_string().trim_end().to_string();
    ConfigError {
        order: line,
        ..ConfigError::new(path, plain_words(&message))
    }
}

/// Removes from `table` the entry at byte `at` of the text, the innermost
/// one: a key of a table (with its value), or a whole `[[service]]` table
/// (and its lines). False when nothing is there.
fn prune(table: &mut toml::de::DeTable<'_>, at: usize, lines: &mut KeyLines, top: bool) -> bool {
    use toml::de::{DeArray, DeValue};
    let keys: Vec<_> = table.keys().cloned().collect();
    for key in keys {
        let Some(value) = table.get_mut(&key) else {
            continue;
        };
        let here = key.span().contains(&at) || value.span().contains(&at);
        match value.get_mut() {
            DeValue::Table(inner) => {
                let found = prune(inner, at, lines, false);
                if found {
                    return true;
                }
            }
            DeValue::Array(items) => {
                for i in 0..items.len() {
                    let item = &mut (**items)[i];
                    let in_item = item.span().contains(&at);
                    let DeValue::Table(inner) = item.get_mut() else {
                        continue;
                    };
                    if prune(inner, at, lines, false) {
                        return true;
                    }
                    if in_item {
                        let mut kept = DeArray::new();
                        for (j, item) in items.iter().enumerate() {
                            if j != i {
                                kept.push(item.clone());
                            }
                        }
                        *items = kept;
                        if top && key.get_ref() == "service" && i < lines.services.len() {
                            lines.services.remove(i);
                        }
                        return true;
                    }
                }
            }
            _ => {}
        }
        if here {
            table.remove(&key);
            return true;
        }
    }
    false
}

/// serde's type names, in the words of the configuration's readers.
pub(super) fn plain_words(message: &str) -> String {
    ["usize", "u64", "u32", "u16", "u8", "i64"]
        .iter()
        .fold(message.to_string(), |m, t| {
            m.replace(&format!("expected {t}"), "expected a whole number")
        })
}
