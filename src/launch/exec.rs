//! The `exec` launcher: the program runs as a direct child of tcpmuxd, with
//! the connection as its standard input and output (inetd's `nowait` style).

use super::{
    Connection, Exit, Failed, LaunchError, Launcher, check_program, child, session_environment,
    spawn,
};
use crate::admission::FdGuard;
use crate::config::Service;
use crate::config::check_format;
use crate::limits::{
    MAX_STDERR_BYTES_PER_SECOND, MAX_STDERR_LINE, MAX_STDERR_LINES_PER_SECOND,
    STDERR_DRAIN_TIMEOUT, STDERR_READ_CHUNK, STDERR_WINDOW,
};
use crate::log::escaped;
use crate::server::Outcome;
use crate::sessions::SessionSlot;
use crate::tcpmux::reply;
use rustix::pipe::PipeFlags;
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::pipe;

/// PATH given to programs; the rest of tcpmuxd's environment is not passed on.
pub const SESSION_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Descriptors the daemon holds while a session is being started: the
/// connection, the two ends of the stderr pipe and the child's pidfd.
pub const EXEC_START_FDS: usize = 4;

/// Descriptors the daemon holds for a running session: the read end of
/// its stderr pipe and its pidfd.
pub const EXEC_SESSION_FDS: usize = 2;

/// The exec launcher. What all sessions' stderr may put in the log
/// together is the log's own budget of entries clients cause
/// (`log::budget`), shared fairly among their sources.
#[derive(Debug, Clone, Default)]
pub struct ExecLauncher;

impl Launcher for ExecLauncher {
    fn precheck(&self, service: &Service) -> Result<(), LaunchError> {
        let path = service.program().ok_or(LaunchError::NoCommand)?;
        check_program(path)
            .and_then(|()| check_format(path))
            .map_err(|cause| LaunchError::Program {
                path: path.to_string(),
                cause,
            })?;
        let switch = service
            .credentials
            .as_ref()
            .is_some_and(child::needs_switch);
        if let Some(cred) = service.credentials.as_ref().filter(|_| switch)
            && !may_execute(path, cred)
        {
            return Err(LaunchError::Program {
                path: path.to_string(),
                cause: format!(
                    "not executable by user {} (uid {}, gid {})",
                    cred.user, cred.uid, cred.gid
                ),
            });
        }
        if let Some(cause) = unraisable_limit(service) {
            return Err(LaunchError::Program {
                path: path.to_string(),
                cause,
            });
        }
        if switch && !can_switch_credentials() {
            return Err(LaunchError::Program {
                path: path.to_string(),
                cause: "cannot switch to the configured user or group: tcpmuxd lacks CAP_SETUID \
                        and CAP_SETGID (not root, or a service manager took them)"
                    .into(),
            });
        }
        Ok(())
    }

    fn start_fds(&self) -> usize {
        EXEC_START_FDS
    }

    async fn launch(
        &self,
        service: Arc<Service>,
        conn: Connection,
        slot: SessionSlot,
        mut fds: FdGuard,
    ) -> Result<(), Failed> {
        let Some(command) = service.command.as_deref() else {
            return Err(LaunchError::NoCommand.into());
        };
        // The program's `+` comes from the child itself, right before it
        // execs the program (launch::child): every descriptor and the
        // child come first, and a failure there still finds the client
        // waiting for an answer.
        let (socket, peer, local) = conn.into_blocking()?;
        let program = &command[0];
        let spawn_failed = |source: std::io::Error, socket| Failed {
            error: LaunchError::Spawn {
                path: program.clone(),
                source,
            },
            conn: Some(socket),
        };
        let (stderr, stderr_writer) = match rustix::pipe::pipe_with(PipeFlags::CLOEXEC) {
            Ok(pipe) => pipe,
            Err(e) => return Err(spawn_failed(e.into(), socket)),
        };
        let stderr = match pipe::Receiver::from_owned_fd(stderr) {
            Ok(r) => r,
            Err(e) => return Err(spawn_failed(e, socket)),
        };

        let environment = std::iter::once(("PATH", SESSION_PATH.to_string()))
            .chain(
                service
                    .environment
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.clone())),
            )
            .chain(session_environment(&service, peer, local));
        let greeting = service.plus.then_some(reply::PLUS);
        let resources = child::Resources {
            umask: Some(service.umask),
            limits: service.limits,
        };
        let image = match child::ExecImage::new(
            command,
            environment,
            greeting,
            &resources,
            service.credentials.as_ref(),
        ) {
            Ok(image) => image,
            Err(cause) => {
                return Err(Failed {
                    error: LaunchError::Program {
                        path: program.clone(),
                        cause,
                    },
                    conn: Some(socket),
                });
            }
        };
        let child = match spawn::start(
            image,
            SessionStdio {
                socket,
                stderr: stderr_writer,
            },
            &service.name,
        )
        .await
        {
            Ok(child) => child,
            Err(spawn::NotStarted { error, fds, busy }) => {
                return Err(Failed {
                    error: if busy {
                        LaunchError::NoTurn(error.to_string())
                    } else {
                        LaunchError::Spawn {
                            path: program.clone(),
                            source: error,
                        }
                    },
                    conn: fds.map(|fds| fds.socket),
                });
            }
        };
        // The program has its copies of the connection and the pipe's
        // write end; the daemon keeps the pipe's read end and the pidfd.
        fds.shrink_to(EXEC_SESSION_FDS);
        let pid = child.pid.as_raw_nonzero().get() as u32;
        let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
        if child.killed_late {
            tracing::warn!(
                tcpmux_service = %service.name,
                remote_addr = %peer.ip(),
                remote_port = peer.port(),
                object_pid = pid,
                "{} from {peer}: {program} not started within {} (held in its exec, after \
                 `+`); killed",
                service.name,
                humantime::format_duration(crate::limits::EXEC_START_TIMEOUT),
            );
        }
        // OBJECT_PID: journald adds the program's own fields (OBJECT_COMM,
        // OBJECT_EXE, ...) to the entry while it runs.
        tracing::info!(
            tcpmux_service = %service.name,
            remote_addr = %peer.ip(),
            remote_port = peer.port(),
            outcome = Outcome::Served.as_str(),
            object_pid = pid,
            "{} from {peer}: session started, pid {pid}",
            service.name
        );

        // One task per session: it copies stderr to the log while it waits
        // for the program.
        tokio::spawn(async move {
            let log = log_stderr(service.name.clone(), pid, peer.ip(), stderr);
            tokio::pin!(log);
            let wait = child.wait();
            tokio::pin!(wait);
            let mut logged_all = false;
            let status = loop {
                tokio::select! {
                    status = &mut wait => break status,
                    _ = &mut log, if !logged_all => logged_all = true,
                }
            };
            // Let the last lines through, but do not wait for a grandchild
            // that kept stderr open: the program's exit ends the session.
            if !logged_all {
                let _ = tokio::time::timeout(STDERR_DRAIN_TIMEOUT, &mut log).await;
            }
            drop(slot);
            drop(fds);
            match status.map(|s| (s, Exit::of(s))) {
                Ok((_, Some(exit))) => tracing::info!(
                    tcpmux_service = %service.name,
                    remote_addr = %peer.ip(),
                    remote_port = peer.port(),
                    object_pid = pid,
                    exit_code = exit.code(),
                    exit_status = %exit.status(),
                    "{} from {peer}: session ended, pid {pid} {exit}",
                    service.name,
                ),
                Ok((status, None)) => tracing::info!(
                    tcpmux_service = %service.name,
                    remote_addr = %peer.ip(),
                    remote_port = peer.port(),
                    object_pid = pid,
                    "{} from {peer}: session ended, pid {pid}: {status}",
                    service.name,
                ),
                Err(e) => tracing::error!(
                    tcpmux_service = %service.name,
                    remote_addr = %peer.ip(),
                    remote_port = peer.port(),
                    object_pid = pid,
                    "{} from {peer}: session pid {pid}: cannot wait for the program: {e}",
                    service.name,
                ),
            }
        });
        Ok(())
    }
}

/// A session's descriptors 0, 1 and 2: the connection, twice, and the
/// write end of the pipe its stderr is logged from.
struct SessionStdio {
    socket: std::net::TcpStream,
    stderr: std::os::fd::OwnedFd,
}

impl spawn::Stdio for SessionStdio {
    fn stdio(&self) -> [std::os::fd::BorrowedFd<'_>; 3] {
        [
            self.socket.as_fd(),
            self.socket.as_fd(),
            self.stderr.as_fd(),
        ]
    }
}

/// Whether `cred` (a user with one group and no other) may execute the
/// file at `path`, by its mode bits: tcpmuxd's own check (as root) says
/// nothing of the user the program runs as.
fn may_execute(path: &str, cred: &crate::config::Credentials) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let mode = meta.mode();
    if cred.uid == 0 {
        return mode & 0o111 != 0;
    }
    let bit = if meta.uid() == cred.uid {
        0o100
    } else if meta.gid() == cred.gid {
        0o010
    } else {
        0o001
    };
    mode & bit != 0
}

/// Whether this process may change the user and group of its children.
/// Why a limit of `service` cannot be set in its program, if one cannot:
/// above tcpmuxd's own hard limit, without CAP_SYS_RESOURCE to raise it.
fn unraisable_limit(service: &Service) -> Option<String> {
    if has_capabilities(rustix::thread::CapabilitySet::SYS_RESOURCE) {
        return None;
    }
    service.limits.set().find_map(|(kind, v)| {
        let hard = rustix::process::getrlimit(kind.resource())
            .maximum
            .unwrap_or(crate::config::INFINITY);
        (v > hard).then(|| {
            format!(
                "limits: {} = {} is above tcpmuxd's own hard limit ({}), which it cannot raise \
                 without CAP_SYS_RESOURCE",
                kind.key(),
                kind.show(v),
                kind.show(hard)
            )
        })
    })
}

fn can_switch_credentials() -> bool {
    use rustix::thread::CapabilitySet;
    has_capabilities(CapabilitySet::SETUID | CapabilitySet::SETGID)
}

/// Whether tcpmuxd has all of `wanted` in its effective set. Read once:
/// tcpmuxd never changes its capabilities, and the checks run for every
/// connection.
fn has_capabilities(wanted: rustix::thread::CapabilitySet) -> bool {
    static EFFECTIVE: std::sync::OnceLock<rustix::thread::CapabilitySet> =
        std::sync::OnceLock::new();
    EFFECTIVE
        .get_or_init(|| {
            rustix::thread::capabilities(None)
                .map(|caps| caps.effective)
                .unwrap_or(rustix::thread::CapabilitySet::empty())
        })
        .contains(wanted)
}

/// "exit code 0", "signal 9 (core dumped)".
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(sig) = status.signal() {
        let core = if status.core_dumped() {
            " (core dumped)"
        } else {
            ""
        };
        format!("signal {sig}{core}")
    } else {
        status.to_string()
    }
}

/// Copies a program's stderr into the log, line by line, each line cut at
/// [`MAX_STDERR_LINE`] bytes and at most [`MAX_STDERR_LINES_PER_SECOND`]
/// lines a second: programs that flood their stderr must not flood the
/// log. Lines over the rate are counted and reported at the end. At most
/// [`MAX_STDERR_BYTES_PER_SECOND`] are read a second: past that, reading
/// pauses until the second is over, and the program blocks on its full
/// pipe instead of costing the daemon a core.
/// Every line, and the count of those left out, names the session's client
/// in `remote_addr`: they are entries a client caused, and share the log's
/// budget of those (`log::budget`: a few a second from one source, a total
/// for all) with every other. There is no second budget for all sessions'
/// stderr in front of it: one that every source drew from would let one
/// source's flood keep every other source's lines out.
async fn log_stderr(
    service: String,
    pid: u32,
    client: std::net::IpAddr,
    mut stderr: impl AsyncRead + Unpin,
) {
    let mut buf = Vec::with_capacity(MAX_STDERR_LINE);
    let mut chunk = [0u8; STDERR_READ_CHUNK];
    let mut window = tokio::time::Instant::now();
    let (mut logged, mut dropped, mut bytes) = (0u32, 0u64, 0usize);
    loop {
        if window.elapsed() >= STDERR_WINDOW {
            window = tokio::time::Instant::now();
            (logged, bytes) = (0, 0);
        }
        if bytes >= MAX_STDERR_BYTES_PER_SECOND {
            tokio::time::sleep_until(window + STDERR_WINDOW).await;
            continue;
        }
        let room = chunk.len().min(MAX_STDERR_BYTES_PER_SECOND - bytes);
        let n = match stderr.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        bytes += n;
        let mut emit = |line: &[u8]| {
            if logged < MAX_STDERR_LINES_PER_SECOND {
                logged += 1;
                emit_stderr_line(&service, pid, client, line);
            } else {
                dropped += 1;
            }
        };
        for &b in &chunk[..n] {
            if b == b'\n' || buf.len() >= MAX_STDERR_LINE {
                emit(&buf);
                buf.clear();
                if b == b'\n' {
                    continue;
                }
            }
            buf.push(b);
        }
    }
    if !buf.is_empty() && logged < MAX_STDERR_LINES_PER_SECOND {
        emit_stderr_line(&service, pid, client, &buf);
    } else if !buf.is_empty() {
        dropped += 1;
    }
    if dropped > 0 {
        tracing::warn!(
            tcpmux_service = %service,
            remote_addr = %client,
            pid,
            "{service}[{pid}]: {dropped} lines of stderr not logged (more than \
             {MAX_STDERR_LINES_PER_SECOND} a second from one session)"
        );
    }
}

/// One line of a session's stderr: in the journal, an entry of the
/// program's own (`SYSLOG_IDENTIFIER=tcpmux-NAME`, as under the systemd
/// launcher); on stderr, `tcpmux-NAME[PID]: LINE`.
///
/// The line the child writes when its program cannot be executed after
/// `+` (it begins with [`child::exec_failure_marker`], which no program
/// can know) is tcpmuxd's own warning instead: the program never ran.
fn emit_stderr_line(service: &str, pid: u32, client: std::net::IpAddr, line: &[u8]) {
    if let Some(failure) = child::exec_failure_marker().and_then(|m| line.strip_prefix(m)) {
        let failure = escaped(failure);
        tracing::warn!(
            tcpmux_service = %service,
            remote_addr = %client,
            pid,
            "{service}[{pid}]: {failure}",
        );
        return;
    }
    let line = escaped(line.strip_suffix(b"\r").unwrap_or(line));
    tracing::info!(
        target: crate::log::SESSION_STDERR,
        tcpmux_service = %service,
        remote_addr = %client,
        pid,
        line = %line,
        "{}{service}[{pid}]: {line}",
        crate::log::SESSION_IDENTIFIER_PREFIX
    );
}
