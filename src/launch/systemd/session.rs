//! A session unit from its start to its end, and the journal entries of
//! both: the service, the client, the unit, and how its program ended as
//! systemd reports it (`ExecMainCode`, `ExecMainStatus`, `Result` of the
//! unit's `PropertiesChanged`, sent before the unit is unloaded).
//!
//! Each entry names the unit in `UNIT=` and `OBJECT_SYSTEMD_UNIT=`: with
//! the latter, from a root sender, `journalctl -u UNIT` shows it beside
//! the program's own lines.

use super::*;
use crate::launch::Exit;
use std::net::SocketAddr;

/// A session unit tracked until systemd unloads it.
pub(super) struct Session {
    /// Held until the unit is unloaded.
    pub(super) _slot: SessionSlot,
    /// The service and the client, for the entry of its end; none for a
    /// unit adopted from an earlier run of tcpmuxd.
    pub(super) client: Option<(Arc<Service>, SocketAddr)>,
    /// How its main process ended, once it has.
    pub(super) exit: Option<Exit>,
    /// The unit's `Result`, once it is known.
    pub(super) result: Option<String>,
}

impl Session {
    pub(super) fn new(slot: SessionSlot, service: &Arc<Service>, peer: SocketAddr) -> Self {
        Session {
            _slot: slot,
            client: Some((
                Arc::clone(service),
                SocketAddr::new(peer.ip().to_canonical(), peer.port()),
            )),
            exit: None,
            result: None,
        }
    }

    pub(super) fn adopted(slot: SessionSlot) -> Self {
        Session {
            _slot: slot,
            client: None,
            exit: None,
            result: None,
        }
    }

    /// Takes what a `PropertiesChanged` of the unit's
    /// `org.freedesktop.systemd1.Service` interface says of its end.
    pub(super) fn update(&mut self, changed: &HashMap<String, zbus::OwnedVariant>) {
        let int = |name: &str| changed.get(name).and_then(|v| i32::try_from(v).ok());
        if let (Some(code), Some(status)) = (int("ExecMainCode"), int("ExecMainStatus"))
            && let Some(exit) = Exit::of_systemd(code, status)
        {
            self.exit = Some(exit);
        }
        if let Some(result) = changed.get("Result").and_then(|v| <&str>::try_from(v).ok()) {
            self.result = Some(result.to_string());
        }
    }
}

/// Logs a session's start as unit `unit`, with `OUTCOME=served`.
pub(super) fn log_start(service: &Service, peer: SocketAddr, unit: &str, warm: bool) {
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    let how = if warm { " (warm unit)" } else { "" };
    tracing::info!(
        tcpmux_service = %service.name,
        remote_addr = %peer.ip(),
        remote_port = peer.port(),
        outcome = crate::server::Outcome::Served.as_str(),
        unit,
        object_systemd_unit = unit,
        "{} from {peer}: session started as {unit}{how}",
        service.name,
    );
}

/// Logs the end of session unit `unit`, unloaded by systemd.
pub(super) fn log_end(unit: &str, session: &Session) {
    let exit = session.exit;
    let result = session.result.as_deref();
    let how = Ending { exit, result };
    let exit_code = exit.map(Exit::code);
    let exit_status = exit.map(|e| tracing::field::display(e.status()));
    match &session.client {
        Some((service, peer)) => tracing::info!(
            tcpmux_service = %service.name,
            remote_addr = %peer.ip(),
            remote_port = peer.port(),
            unit,
            object_systemd_unit = unit,
            exit_code,
            exit_status,
            unit_result = result,
            "{} from {peer}: session {unit} ended, {how}",
            service.name,
        ),
        None => tracing::info!(
            unit,
            object_systemd_unit = unit,
            exit_code,
            exit_status,
            unit_result = result,
            "session {unit} ended, {how}",
        ),
    }
}

/// "exited with status 3 (result exit-code)", "killed by signal TERM",
/// "unloaded" (nothing known of its program).
struct Ending<'a> {
    exit: Option<Exit>,
    result: Option<&'a str>,
}

impl std::fmt::Display for Ending<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.exit, self.result) {
            (Some(exit), Some(result)) if result != "success" => {
                write!(f, "{exit} (result {result})")
            }
            (Some(exit), _) => write!(f, "{exit}"),
            (None, Some(result)) => write!(f, "unloaded (result {result})"),
            (None, None) => f.write_str("unloaded"),
        }
    }
}

/// The D-Bus object path prefix of units.
pub(super) const UNIT_PATH_PREFIX: &str = "/org/freedesktop/systemd1/unit/";

/// The unit name of a unit's object path: systemd escapes every byte but
/// ASCII letters and digits as `_` and two hex digits.
pub(super) fn unit_of_path(path: &str) -> Option<String> {
    let label = path.strip_prefix(UNIT_PATH_PREFIX)?.as_bytes();
    let mut name = Vec::with_capacity(label.len());
    let mut i = 0;
    while i < label.len() {
        if label[i] == b'_' {
            let hex = std::str::from_utf8(label.get(i + 1..i + 3)?).ok()?;
            name.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            name.push(label[i]);
            i += 1;
        }
    }
    String::from_utf8(name).ok()
}

/// The match for the `PropertiesChanged` signals of every service unit.
pub(super) fn service_changes_rule() -> zbus::Result<zbus::MatchRule<'static>> {
    zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.systemd1")
        .interface("org.freedesktop.DBus.Properties")
        .member("PropertiesChanged")
        .path_namespace("/org/freedesktop/systemd1/unit")
        .arg(0, "org.freedesktop.systemd1.Service")
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_paths_decode_to_names() {
        assert_eq!(
            unit_of_path("/org/freedesktop/systemd1/unit/tcpmux_2decho_40abc_2d1_2eservice")
                .as_deref(),
            Some("tcpmux-echo@abc-1.service")
        );
        assert_eq!(unit_of_path("/org/freedesktop/systemd1/unit/x_4"), None);
        assert_eq!(unit_of_path("/elsewhere/x"), None);
    }

    #[test]
    fn endings_read_as_systemd_says_them() {
        let e = |exit, result| Ending { exit, result }.to_string();
        assert_eq!(
            e(Some(Exit::Exited(3)), Some("exit-code")),
            "exited with status 3 (result exit-code)"
        );
        assert_eq!(
            e(Some(Exit::Exited(0)), Some("success")),
            "exited with status 0"
        );
        assert_eq!(e(None, None), "unloaded");
    }
}
