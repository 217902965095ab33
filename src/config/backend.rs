//! Where a service's connections go when no program is started for them:
//! `launcher = "forward"` relays each to a fixed address, `launcher =
//! "pass"` hands each, as a descriptor, to a daemon that is already
//! running. The parsers are pure; [`validate_backend`] checks a service's
//! keys against its launcher.

use super::file::RawService;
use super::{ConfigError, LauncherKind};
use crate::limits;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the connections of a service that starts no program go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Relayed to a daemon at a fixed address.
    Forward(Forward),
    /// Handed, as a descriptor, to the daemon listening on this Unix
    /// `SOCK_SEQPACKET` socket.
    Pass(PathBuf),
}

/// A forwarded service's backend and how its pairs are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub to: ForwardAddress,
    /// A PROXY protocol header sent to the backend first, naming the
    /// client.
    pub proxy_protocol: Option<ProxyVersion>,
    /// A pair on which neither side sent a byte for this long is closed.
    pub idle_timeout: Duration,
}

/// The address a forwarded service's connections go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardAddress {
    Tcp(SocketAddr),
    /// The absolute path of a Unix stream socket.
    Unix(PathBuf),
}

impl std::fmt::Display for ForwardAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardAddress::Tcp(addr) => write!(f, "{addr}"),
            ForwardAddress::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The version of the PROXY protocol header sent to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// The text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

impl ProxyVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        }
    }
}

/// `forward`: `host:port` with an IP address as host (`[v6]:port` for
/// IPv6), or the absolute path of a Unix stream socket. Host names are
/// refused: a name is looked up when it is used, and the address it gives
/// then is not the one that was checked.
pub fn parse_forward(text: &str) -> Result<ForwardAddress, String> {
    if text.starts_with('/') {
        return unix_path(text).map(ForwardAddress::Unix);
    }
    text.parse::<SocketAddr>()
        .map_err(|_| {
            format!(
                "\"{}\" is neither IP:port ([IPv6]:port) nor the absolute path of a Unix \
                 socket; write the backend's IP address, not a host name (for example \
                 \"127.0.0.1:22\", \"[::1]:22\" or \"/run/app.sock\")",
                text.escape_debug()
            )
        })
        .and_then(|addr| match addr.port() {
            0 => Err(format!(
                "\"{}\": port 0 is not a port to connect to",
                text.escape_debug()
            )),
            _ => Ok(ForwardAddress::Tcp(addr)),
        })
}

/// `proxy_protocol`: "v1" or "v2".
pub fn parse_proxy_version(text: &str) -> Result<ProxyVersion, String> {
    match text {
        "v1" => Ok(ProxyVersion::V1),
        "v2" => Ok(ProxyVersion::V2),
        _ => Err(format!(
            "\"{}\" is not a PROXY protocol version: write \"v1\" or \"v2\"",
            text.escape_debug()
        )),
    }
}

/// `pass`: the absolute path of a Unix socket.
pub fn parse_pass(text: &str) -> Result<PathBuf, String> {
    if !text.starts_with('/') {
        return Err(format!(
            "\"{}\" is not an absolute path: write the path of the receiving daemon's Unix \
             SOCK_SEQPACKET socket (for example \"/run/app/tcpmux.sock\")",
            text.escape_debug()
        ));
    }
    unix_path(text)
}

fn unix_path(text: &str) -> Result<PathBuf, String> {
    if text.contains('\0') {
        return Err("a socket path cannot hold a NUL byte".into());
    }
    if text.len() > limits::MAX_UNIX_PATH {
        return Err(format!(
            "the socket path is {} bytes long, more than a Unix socket address holds ({})",
            text.len(),
            limits::MAX_UNIX_PATH
        ));
    }
    Ok(PathBuf::from(text))
}

/// Checks a service's `forward`, `pass`, `proxy_protocol` and
/// `idle_timeout` against its launcher, and the keys that mean something
/// only for a program against a launcher that starts none. The backend
/// of a forward or pass service; none for the others (and for a forward
/// or pass service whose address is missing or wrong, with its error in
/// `errors`).
pub(super) fn validate_backend(
    raw: &RawService,
    errors: &mut Vec<ConfigError>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Option<Backend> {
    let launcher = raw.launcher;
    let relays = matches!(launcher, LauncherKind::Forward | LauncherKind::Pass);
    let needs = |key: &str, wanted: &str| err(key, format!("is only for launcher = \"{wanted}\""));
    if raw.forward.is_some() && launcher != LauncherKind::Forward {
        errors.push(needs("forward", "forward"));
    }
    if raw.proxy_protocol.is_some() && launcher != LauncherKind::Forward {
        errors.push(needs("proxy_protocol", "forward"));
    }
    if raw.idle_timeout.is_some() && launcher != LauncherKind::Forward {
        errors.push(needs("idle_timeout", "forward"));
    }
    if raw.pass.is_some() && launcher != LauncherKind::Pass {
        errors.push(needs("pass", "pass"));
    }
    if relays {
        // What only a started program would use: an error rather than a
        // setting that silently does nothing.
        let name = if launcher == LauncherKind::Forward {
            "forward"
        } else {
            "pass"
        };
        let program_keys = [
            ("command", raw.command.is_some()),
            ("warm", raw.warm.is_some()),
            ("user", raw.user.is_some()),
            ("group", raw.group.is_some()),
            ("umask", raw.umask.is_some()),
            ("environment", !raw.environment.is_empty()),
            ("limits", raw.limits.is_some()),
        ];
        for (key, _) in program_keys.iter().filter(|(_, set)| *set) {
            errors.push(err(
                key,
                format!(
                    "has no effect with launcher = \"{name}\", which starts no program; \
                     remove it"
                ),
            ));
        }
    }
    match launcher {
        LauncherKind::Forward => {
            let Some(text) = &raw.forward else {
                errors.push(err(
                    "forward",
                    "missing: launcher = \"forward\" needs the backend's address (IP:port, \
                     [IPv6]:port, or the absolute path of a Unix socket)"
                        .into(),
                ));
                return None;
            };
            let to = parse_forward(text)
                .map_err(|m| errors.push(err("forward", m)))
                .ok();
            let proxy_protocol = raw.proxy_protocol.as_deref().and_then(|v| {
                parse_proxy_version(v)
                    .map_err(|m| errors.push(err("proxy_protocol", m)))
                    .ok()
            });
            let idle_timeout = raw.idle_timeout.unwrap_or(limits::DEFAULT_IDLE_TIMEOUT);
            if idle_timeout.is_zero() || idle_timeout > limits::MAX_IDLE_TIMEOUT {
                errors.push(err(
                    "idle_timeout",
                    format!(
                        "{} is out of range (more than 0, at most {})",
                        humantime::format_duration(idle_timeout),
                        humantime::format_duration(limits::MAX_IDLE_TIMEOUT)
                    ),
                ));
            }
            to.map(|to| {
                Backend::Forward(Forward {
                    to,
                    proxy_protocol,
                    idle_timeout,
                })
            })
        }
        LauncherKind::Pass => {
            let Some(text) = &raw.pass else {
                errors.push(err(
                    "pass",
                    "missing: launcher = \"pass\" needs the path of the receiving daemon's \
                     Unix SOCK_SEQPACKET socket"
                        .into(),
                ));
                return None;
            };
            parse_pass(text)
                .map_err(|m| errors.push(err("pass", m)))
                .ok()
                .map(Backend::Pass)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_addresses() {
        assert_eq!(
            parse_forward("127.0.0.1:22"),
            Ok(ForwardAddress::Tcp("127.0.0.1:22".parse().unwrap()))
        );
        assert_eq!(
            parse_forward("[::1]:8080"),
            Ok(ForwardAddress::Tcp("[::1]:8080".parse().unwrap()))
        );
        assert_eq!(
            parse_forward("/run/app.sock"),
            Ok(ForwardAddress::Unix("/run/app.sock".into()))
        );
        for bad in [
            "localhost:22",
            "127.0.0.1",
            "::1:22",
            "run/app.sock",
            "",
            "10.0.0.1:0",
        ] {
            assert!(parse_forward(bad).is_err(), "{bad}");
        }
        let long = format!("/{}", "a".repeat(limits::MAX_UNIX_PATH));
        assert!(parse_forward(&long).unwrap_err().contains("more than"));
        assert!(parse_forward(&long[..limits::MAX_UNIX_PATH]).is_ok());
    }

    #[test]
    fn pass_paths_and_versions() {
        assert_eq!(parse_pass("/run/a.sock"), Ok(PathBuf::from("/run/a.sock")));
        assert!(parse_pass("a.sock").unwrap_err().contains("absolute"));
        assert!(parse_pass("/a\0b").is_err());
        assert_eq!(parse_proxy_version("v1"), Ok(ProxyVersion::V1));
        assert_eq!(parse_proxy_version("v2"), Ok(ProxyVersion::V2));
        assert!(parse_proxy_version("2").is_err());
    }
}
