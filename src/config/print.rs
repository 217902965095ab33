//! The effective configuration as a configuration file (`tcpmuxd --check
//! --print`): every key with the value in force, defaults filled in and
//! the drop-ins merged, in TOML that tcpmuxd reads back to the same
//! configuration.

use super::{Backend, Config, Credentials, Delivery, LimitKind, ResourceLimits, show_umask};
use crate::acl::Acl;
use std::fmt::Write;
use std::time::Duration;
use toml::Value;

/// `config` as TOML, in the order of tcpmuxd.toml(5).
pub fn to_toml(config: &Config) -> String {
    let mut out = String::new();
    let t = &config.tcpmux;
    out.push_str("[tcpmux]\n");
    kv(&mut out, "listen", addresses(&t.listen));
    kv(&mut out, "name_timeout", duration(t.name_timeout));
    if let Some(secs) = t.defer_accept {
        kv(
            &mut out,
            "defer_accept",
            duration(std::time::Duration::from_secs(secs.into())),
        );
    }
    kv(&mut out, "max_handshakes", number(t.max_handshakes));
    kv(
        &mut out,
        "max_handshakes_per_source",
        number(t.max_handshakes_per_source),
    );
    kv(&mut out, "ipv6_source_prefix", number(t.ipv6_source_prefix));
    kv(&mut out, "max_sessions", number(t.max_sessions));
    kv(
        &mut out,
        "max_sessions_per_source",
        number(t.max_sessions_per_source),
    );
    kv(&mut out, "max_warm", number(t.max_warm));
    kv(&mut out, "max_starting_units", number(t.max_starting_units));
    acl(&mut out, &t.acl);
    nets(&mut out, "trusted_proxies", &t.trusted_proxies.0);
    credentials(&mut out, t.default_credentials.as_ref());
    kv(&mut out, "umask", Value::String(show_umask(t.umask)));
    environment(&mut out, "tcpmux.environment", &t.environment);
    limits(&mut out, "tcpmux.limits", &t.limits);

    let m = &config.msp;
    out.push_str("\n[msp]\n");
    kv(&mut out, "listen", addresses(&m.listen));
    let deliver = match m.deliver {
        Delivery::Tty => "tty",
        Delivery::Journal => "journal",
        Delivery::Command => "command",
    };
    kv(&mut out, "deliver", Value::String(deliver.into()));
    if let Some(command) = &m.command {
        kv(&mut out, "command", strings(command));
    }
    credentials(&mut out, m.credentials.as_ref());
    kv(&mut out, "command_timeout", duration(m.command_timeout));
    kv(&mut out, "console", Value::Boolean(m.console));
    kv(&mut out, "rate_per_minute", number(m.rate_per_minute));
    kv(
        &mut out,
        "recipient_rate_per_minute",
        number(m.recipient_rate_per_minute),
    );
    kv(
        &mut out,
        "total_rate_per_minute",
        number(m.total_rate_per_minute),
    );
    kv(&mut out, "idle_timeout", duration(m.idle_timeout));
    kv(
        &mut out,
        "connection_timeout",
        duration(m.connection_timeout),
    );
    kv(&mut out, "max_connections", number(m.max_connections));
    kv(
        &mut out,
        "max_connections_per_source",
        number(m.max_connections_per_source),
    );
    kv(
        &mut out,
        "max_messages_per_connection",
        number(m.max_messages_per_connection),
    );
    kv(&mut out, "dedup_window", duration(m.dedup_window));
    kv(
        &mut out,
        "utmp",
        Value::String(m.utmp.to_string_lossy().into_owned()),
    );
    acl(&mut out, &m.acl);
    nets(&mut out, "trusted_proxies", &m.trusted_proxies.0);

    for s in &config.services {
        let _ = writeln!(
            out,
            "\n# {}{}",
            s.source.display(),
            s.line.map(|l| format!(" line {l}")).unwrap_or_default()
        );
        out.push_str("[[service]]\n");
        kv(&mut out, "name", Value::String(s.name.clone()));
        match &s.command {
            Some(command) => kv(&mut out, "command", strings(command)),
            None if s.launcher.starts_programs() => {
                out.push_str("# command: ExecStart= of the unit's drop-ins\n")
            }
            None => {}
        }
        kv(&mut out, "plus", Value::Boolean(s.plus));
        kv(
            &mut out,
            "launcher",
            Value::String(s.launcher.as_str().into()),
        );
        match &s.backend {
            Some(Backend::Forward(f)) => {
                kv(&mut out, "forward", Value::String(f.to.to_string()));
                if let Some(v) = f.proxy_protocol {
                    kv(&mut out, "proxy_protocol", Value::String(v.as_str().into()));
                }
                kv(&mut out, "idle_timeout", duration(f.idle_timeout));
            }
            Some(Backend::Pass(path)) => {
                kv(&mut out, "pass", Value::String(path.display().to_string()));
            }
            None => {}
        }
        kv(&mut out, "max_instances", number(s.max_instances));
        kv(
            &mut out,
            "max_instances_per_source",
            number(s.max_instances_per_source),
        );
        kv(
            &mut out,
            "max_starts_per_second",
            number(s.max_starts_per_second),
        );
        acl(&mut out, &s.acl);
        if !s.launcher.starts_programs() {
            continue;
        }
        kv(&mut out, "warm", number(s.warm));
        if s.credentials.is_none() {
            out.push_str(
                "# user: none (exec launcher: tcpmuxd's own user; systemd launcher: the unit's \
                 drop-ins, DynamicUser= by default)\n",
            );
        }
        credentials(&mut out, s.credentials.as_ref());
        kv(&mut out, "umask", Value::String(show_umask(s.umask)));
        environment(&mut out, "service.environment", &s.environment);
        limits(&mut out, "service.limits", &s.limits);
    }
    out
}

fn kv(out: &mut String, key: &str, value: Value) {
    let _ = writeln!(out, "{key} = {value}");
}

fn number(n: impl TryInto<i64>) -> Value {
    Value::Integer(n.try_into().unwrap_or(i64::MAX))
}

fn duration(d: Duration) -> Value {
    Value::String(humantime::format_duration(d).to_string())
}

fn strings(items: &[String]) -> Value {
    Value::Array(items.iter().cloned().map(Value::String).collect())
}

fn addresses(addrs: &[std::net::SocketAddr]) -> Value {
    Value::Array(addrs.iter().map(|a| Value::String(a.to_string())).collect())
}

fn acl(out: &mut String, acl: &Acl) {
    nets(out, "allow", &acl.allow);
    nets(out, "deny", &acl.deny);
}

fn nets(out: &mut String, key: &str, nets: &[ipnet::IpNet]) {
    let list = nets.iter().map(|n| Value::String(n.to_string())).collect();
    kv(out, key, Value::Array(list));
}

fn credentials(out: &mut String, cred: Option<&Credentials>) {
    let Some(cred) = cred else {
        return;
    };
    kv(out, "user", Value::String(cred.user.clone()));
    let group = nix::unistd::Group::from_gid(cred.gid.into())
        .ok()
        .flatten()
        .map_or_else(|| cred.gid.to_string(), |g| g.name);
    kv(out, "group", Value::String(group));
}

/// A table of its own, after the section's plain keys.
fn environment(out: &mut String, header: &str, env: &[(String, String)]) {
    let table: toml::Table = env
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    kv(
        out,
        header.rsplit('.').next().unwrap_or(header),
        Value::Table(table),
    );
}

fn limits(out: &mut String, header: &str, limits: &ResourceLimits) {
    let set: Vec<String> = limits
        .set()
        .map(|(kind, v)| format!("{} = {}", kind.key(), kind.show(v)))
        .collect();
    let _ = writeln!(
        out,
        "{} = {{ {} }}",
        header.rsplit('.').next().unwrap_or(header),
        set.join(", ")
    );
    let unset: Vec<&str> = LimitKind::ALL
        .into_iter()
        .filter(|k| limits.get(*k).is_none())
        .map(LimitKind::key)
        .collect();
    if !unset.is_empty() {
        let _ = writeln!(out, "# not limited here, inherited: {}", unset.join(", "));
    }
}
