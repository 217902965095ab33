//! Delivering an accepted message: to a terminal, to the journal, or to a
//! command.

use super::message::{Message, decode};
use super::tty;
use crate::config::{Delivery, MspSettings};
use crate::launch::child::{ExecImage, Resources};
use crate::launch::exec::SESSION_PATH;
use crate::launch::spawn;
use crate::launch::systemd::{Oneshot, SystemdLauncher};
use crate::limits::MSP_MAX_REASON_LEN;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

/// Under systemd, the delivery command runs as `tcpmux-msp@INSTANCE.service`.
pub use crate::config::MSP_UNIT_NAME;

/// `MESSAGE_ID` of the journal entry each message becomes with
/// `deliver = "journal"`; `journalctl MESSAGE_ID=...` lists them all.
pub const JOURNAL_MESSAGE_ID: &str = "3c4f0b9e2d7a4c61a8e5f1b27d9c6e04";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// A message with where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub message: &'a Message,
    pub peer: SocketAddr,
    pub transport: Transport,
}

impl Envelope<'_> {
    /// The message's fields as environment variables or journal fields.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let m = self.message;
        vec![
            ("MSP_VERSION", m.version().as_char().to_string()),
            ("MSP_RECIPIENT", decode(&m.recipient).into_owned()),
            (
                "MSP_RECIPIENT_TERMINAL",
                decode(&m.recipient_terminal).into_owned(),
            ),
            ("MSP_SENDER", decode(&m.sender).into_owned()),
            (
                "MSP_SENDER_TERMINAL",
                decode(&m.sender_terminal).into_owned(),
            ),
            ("MSP_COOKIE", decode(&m.cookie).into_owned()),
            ("MSP_SIGNATURE", decode(&m.signature).into_owned()),
            ("MSP_TRANSPORT", self.transport.as_str().to_string()),
            ("REMOTE_ADDR", self.peer.ip().to_canonical().to_string()),
            ("REMOTE_PORT", self.peer.port().to_string()),
        ]
    }
}

/// Who runs the delivery command.
#[derive(Clone, Copy)]
pub enum Runner<'a> {
    /// tcpmuxd, as its child, as `[msp] user` (not under systemd).
    Exec,
    /// The service manager, as a transient unit
    /// `tcpmux-msp@INSTANCE.service` (under systemd). None: the launcher
    /// is not there, and the command does not run at all: it never falls
    /// back to running as tcpmuxd's child.
    Systemd(Option<&'a SystemdLauncher>),
}

/// Delivers by the configured method; the error is the reason given to the
/// sender.
pub async fn deliver(
    settings: &MspSettings,
    envelope: &Envelope<'_>,
    runner: Runner<'_>,
) -> Result<(), String> {
    match settings.deliver {
        Delivery::Journal => to_journal(envelope),
        Delivery::Command => match (runner, settings.command.as_deref()) {
            (_, None) => Err("no delivery command configured".into()),
            (Runner::Systemd(None), Some(_)) => {
                tracing::error!("[msp] command: the systemd launcher is not available");
                Err("delivery failed".into())
            }
            (Runner::Systemd(Some(launcher)), Some(command)) => {
                let text = decode(&envelope.message.text).into_owned();
                let description = format!(
                    "MSP delivery of a message from {}",
                    envelope.peer.ip().to_canonical()
                );
                launcher
                    .run_oneshot(Oneshot {
                        name: MSP_UNIT_NAME,
                        description,
                        command,
                        environment: envelope.fields(),
                        input: text.as_bytes(),
                        limit: settings.command_timeout,
                        user: settings.credentials.as_ref(),
                        umask: settings.umask,
                        limits: &settings.limits,
                    })
                    .await
            }
            (Runner::Exec, Some(_)) => to_command(settings, envelope).await,
        },
        Delivery::Tty => {
            let logins = if envelope.message.recipient.is_empty() {
                Vec::new()
            } else {
                logins(settings).await?
            };
            let message = envelope.message.clone();
            let peer = envelope.peer;
            tokio::task::spawn_blocking(move || to_tty(&logins, &message, peer))
                .await
                .map_err(|e| format!("terminal delivery failed: {e}"))?
        }
    }
}

fn to_journal(envelope: &Envelope<'_>) -> Result<(), String> {
    let m = envelope.message;
    let text = format!(
        "Message from {}@{} to {}: {}",
        decode(&m.sender),
        envelope.peer.ip().to_canonical(),
        decode(&m.recipient),
        decode(&m.text)
    );
    let mut fields = envelope.fields();
    fields.push(("MESSAGE_ID", JOURNAL_MESSAGE_ID.to_string()));
    fields.push(("SYSLOG_IDENTIFIER", "tcpmuxd".to_string()));
    libsystemd::logging::journal_send(
        libsystemd::logging::Priority::Notice,
        &text,
        fields.into_iter(),
    )
    .map_err(|e| {
        // The cause is for the log, not for the sender.
        tracing::error!("[msp] the journal is not available: {e}");
        "delivery failed".to_string()
    })
}

async fn to_command(settings: &MspSettings, envelope: &Envelope<'_>) -> Result<(), String> {
    let Some(command) = settings.command.as_deref() else {
        return Err("no delivery command configured".into());
    };
    let spawn_error = |e: String| {
        tracing::error!("[msp] command {}: {e}", command[0]);
        "delivery failed".to_string()
    };
    let environment = std::iter::once(("PATH", SESSION_PATH.to_string())).chain(envelope.fields());
    let image = ExecImage::new(
        command,
        environment,
        None,
        // `[tcpmux]`'s, as under the systemd launcher.
        &Resources {
            umask: Some(settings.umask),
            limits: settings.limits,
        },
        settings.credentials.as_ref(),
    )
    .map_err(spawn_error)?;
    let (stdin, stderr, child_fds) = command_stdio().map_err(|e| spawn_error(e.to_string()))?;
    let child = spawn::start(image, child_fds, MSP_START_SHARE)
        .await
        .map_err(|failed| spawn_error(failed.error.to_string()))?;
    let text = decode(&envelope.message.text).into_owned();
    let (mut stdin, mut stderr) = (Some(stdin), stderr);
    let pid = child.pid;
    let run = async {
        if let Some(stdin) = stdin.as_mut() {
            // A command that does not read its input may close it early.
            let _ = stdin.write_all(text.as_bytes()).await;
        }
        drop(stdin.take());
        let mut reason = Vec::new();
        let _ = (&mut stderr)
            .take(MSP_MAX_REASON_LEN as u64)
            .read_to_end(&mut reason)
            .await;
        let status = child.wait().await;
        (status, reason)
    };
    match tokio::time::timeout(settings.command_timeout, run).await {
        Err(_) => {
            // Still not reaped: the pid is the command's. Killed, it is
            // reaped on its own.
            spawn::kill_and_reap(pid);
            Err("delivery timed out".into())
        }
        Ok((Err(e), _)) => Err(format!("delivery failed: {e}")),
        Ok((Ok(status), _)) if status.success() => Ok(()),
        Ok((Ok(status), reason)) => {
            let reason = String::from_utf8_lossy(&reason);
            let first = reason.lines().next().unwrap_or("").trim();
            if first.is_empty() {
                Err(format!(
                    "delivery failed ({})",
                    crate::launch::exec::describe_exit(status)
                ))
            } else {
                Err(first.chars().filter(|c| !c.is_control()).collect())
            }
        }
    }
}

/// Whose share of the programs being started at once MSP's delivery
/// commands take (sessions take their service's; no service has this
/// name, which is not a valid one).
const MSP_START_SHARE: &str = "[msp] command";

/// The delivery command's descriptors: its input a pipe from tcpmuxd, no
/// output, its errors a pipe to tcpmuxd (the first line is the reason a
/// delivery failed). Returns tcpmuxd's ends and the command's.
fn command_stdio() -> std::io::Result<(pipe::Sender, pipe::Receiver, CommandStdio)> {
    use rustix::pipe::{PipeFlags, pipe_with};
    let (stdin, stdin_ours) = pipe_with(PipeFlags::CLOEXEC)?;
    let (stderr_ours, stderr) = pipe_with(PipeFlags::CLOEXEC)?;
    let null = std::fs::File::options()
        .write(true)
        .open("/dev/null")?
        .into();
    Ok((
        pipe::Sender::from_owned_fd(stdin_ours)?,
        pipe::Receiver::from_owned_fd(stderr_ours)?,
        CommandStdio {
            stdin,
            stdout: null,
            stderr,
        },
    ))
}

struct CommandStdio {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl spawn::Stdio for CommandStdio {
    fn stdio(&self) -> [BorrowedFd<'_>; 3] {
        [self.stdin.as_fd(), self.stdout.as_fd(), self.stderr.as_fd()]
    }
}

/// Where systemd-logind keeps its state, and the bus it answers on: both
/// present when logind runs.
const LOGIND_RUNTIME_DIR: &str = "/run/systemd/seats";
const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";

/// The users logged in on terminals: systemd-logind's sessions (when it
/// runs) and the login records (utmp) together, one entry per terminal.
/// Either source failing leaves the other.
async fn logins(settings: &MspSettings) -> Result<Vec<tty::Login>, String> {
    let logind_running = std::path::Path::new(LOGIND_RUNTIME_DIR).exists()
        && std::path::Path::new(SYSTEM_BUS_SOCKET).exists();
    let logind = if logind_running {
        match tokio::time::timeout(crate::limits::DBUS_CALL_TIMEOUT, logind_logins()).await {
            Ok(Ok(logins)) => Some(logins),
            Ok(Err(e)) => {
                tracing::warn!("[msp] systemd-logind: {e}; using the login records alone");
                None
            }
            Err(_) => {
                tracing::warn!(
                    "[msp] systemd-logind did not answer; using the login records alone"
                );
                None
            }
        }
    } else {
        None
    };
    let path = settings.utmp.clone();
    let utmp = tokio::task::spawn_blocking(move || tty::read_logins(&path))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
    match (logind, utmp) {
        (logind, Ok(utmp)) => Ok(tty::union(logind.unwrap_or_default(), utmp)),
        (Some(logind), Err(e)) => {
            tracing::warn!(
                "[msp] cannot read the login records: {e}; using systemd-logind's alone"
            );
            Ok(logind)
        }
        (None, Err(e)) => {
            tracing::error!("[msp] cannot read the login records: {e}");
            Err("cannot find the recipient's terminals".to_string())
        }
    }
}

async fn logind_logins() -> zbus::Result<Vec<tty::Login>> {
    use zbus_systemd::login1::{ManagerProxy, SessionProxy};
    let conn = zbus::Connection::system().await?;
    let manager = ManagerProxy::new(&conn).await?;
    let mut logins = Vec::new();
    for (_id, uid, user, _seat, path) in manager.list_sessions().await? {
        let session = SessionProxy::builder(&conn).path(path).build().await?;
        let line = session.tty().await.unwrap_or_default();
        if let Some(login) = tty::Login::new(user, line) {
            logins.push(login.with_uid(uid));
        }
    }
    Ok(logins)
}

fn to_tty(logins: &[tty::Login], m: &Message, peer: SocketAddr) -> Result<(), String> {
    let recipient = decode(&m.recipient).into_owned();
    let terminal = decode(&m.recipient_terminal).into_owned();
    let terminals = if recipient.is_empty() {
        vec![tty::Terminal {
            path: std::path::PathBuf::from(tty::CONSOLE),
            owner: None,
        }]
    } else {
        tty::choose_terminals(logins, &recipient, &terminal)?
    };
    let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let sender = decode(&m.sender);
    let host = peer.ip().to_canonical().to_string();
    let sender_terminal = decode(&m.sender_terminal);
    tty::write_terminals(&terminals, |columns| {
        tty::render(&sender, &host, &sender_terminal, &when, &m.text, columns)
    })
    .map(|_| ())
}
