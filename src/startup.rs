//! What the process inherits from whoever started it, made safe at startup:
//! open descriptors, and the limit on descriptors.

use crate::config::Config;
use crate::launch::exec::EXEC_SESSION_FDS;
use crate::limits::FD_RESERVE;
use rustix::io::{FdFlags, fcntl_getfd, fcntl_setfd};
use rustix::process::{Resource, getrlimit, setrlimit};
use std::os::fd::{BorrowedFd, RawFd};

/// Marks every descriptor above stderr close-on-exec. A shell redirection
/// or a supervisor may leave descriptors open without `FD_CLOEXEC`; no
/// session's program may inherit them. Sockets passed by systemd are used
/// by the daemon itself and are never meant for a child either.
pub fn close_inherited_on_exec() -> Result<(), String> {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("/proc/self/fd: {e}"))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for raw in fds {
        // SAFETY: the descriptor is only borrowed for two fcntl calls; one
        // that was the directory stream, already closed, fails with EBADF.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        if let Ok(flags) = fcntl_getfd(fd) {
            fcntl_setfd(fd, flags | FdFlags::CLOEXEC)
                .map_err(|e| format!("descriptor {raw}: cannot set close-on-exec: {e}"))?;
        }
    }
    Ok(())
}

/// The soft and hard limits on open descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (the default soft
/// limit of 1024 would end the daemon's connections long before its
/// configured maxima). Returns the limits in force afterwards, and why the
/// soft limit could not be raised, if it could not.
pub fn raise_fd_limit() -> (FdLimit, Option<String>) {
    let current = getrlimit(Resource::Nofile);
    let soft = current.current.unwrap_or(u64::MAX);
    let hard = current.maximum.unwrap_or(u64::MAX);
    if soft >= hard {
        return (FdLimit { soft, hard }, None);
    }
    let raised = rustix::process::Rlimit {
        current: current.maximum,
        maximum: current.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => (FdLimit { soft: hard, hard }, None),
        Err(e) => (
            FdLimit { soft, hard },
            Some(format!(
                "cannot raise the soft limit on open files from {soft} to {hard}: {e}"
            )),
        ),
    }
}

/// Descriptors the configured maxima need at once: one per handshake, what
/// every running session of the exec launcher holds, one per MSP
/// connection, and the reserve.
pub fn fds_needed(config: &Config) -> u64 {
    let handshakes = config.tcpmux.max_handshakes as u64;
    let sessions = config.tcpmux.max_sessions as u64 * EXEC_SESSION_FDS as u64;
    let msp = config.msp.max_connections as u64;
    handshakes + sessions + msp + FD_RESERVE as u64
}

/// The descriptors connections and sessions may hold: the soft limit less
/// the reserve and MSP's connections, which are bounded on their own.
pub fn fd_budget(config: &Config, limit: FdLimit) -> usize {
    let kept = FD_RESERVE as u64 + config.msp.max_connections as u64;
    usize::try_from(limit.soft.saturating_sub(kept)).unwrap_or(usize::MAX)
}

/// A warning when the configured maxima cannot all be reached within the
/// limit on open files; clients past it are told `-Server busy` or
/// `-Too many connections`, never `+` for a session that cannot start.
pub fn fd_warning(config: &Config, limit: FdLimit) -> Option<String> {
    let needed = fds_needed(config);
    (needed > limit.soft).then(|| {
        format!(
            "the limit on open files ({}) is below what the configured maxima need ({needed}: \
             max_handshakes {} + {EXEC_SESSION_FDS} x max_sessions {} + [msp] max_connections {} \
             + {FD_RESERVE} reserved); clients past the limit are refused. Raise LimitNOFILE= \
             (or ulimit -n), or lower the maxima",
            limit.soft,
            config.tcpmux.max_handshakes,
            config.tcpmux.max_sessions,
            config.msp.max_connections,
        )
    })
}

/// Name of the warm units' program, installed beside tcpmuxd.
pub const WARM_HELPER: &str = "tcpmux-warm";

/// The warm units' program beside the running tcpmuxd, if it is there.
pub fn warm_helper() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let helper = exe.parent()?.join(WARM_HELPER);
    crate::launch::check_program(&helper.to_string_lossy())
        .ok()
        .map(|()| helper)
}
