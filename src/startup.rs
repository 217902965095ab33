//! What the process inherits from whoever started it, made safe at startup:
//! open descriptors, the limit on descriptors, and who may trace it.

use crate::config::Config;
use crate::launch::exec::EXEC_SESSION_FDS;
use crate::limits::{FD_RESERVE, MSP_CONNECTION_FDS, MSP_DELIVERY_FDS, MSP_MAX_UDP_IN_FLIGHT};
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

/// Makes the daemon's memory and descriptors out of reach of its own
/// children: a session's program running as the daemon's user (a service
/// without `user`, or tcpmuxd run as its own user) could otherwise take
/// the listening socket, other clients' connections and other sessions'
/// pipes with `pidfd_getfd(2)`, or read the daemon through /proc. Children
/// are dumpable again once they exec.
pub fn forbid_tracing() -> Result<(), String> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| format!("cannot make tcpmuxd non-dumpable (PR_SET_DUMPABLE): {e}"))
}

/// The soft and hard limits on open descriptors, and how many were open
/// when the daemon had set itself up (listeners, runtime, journal, and
/// whatever it inherited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
    pub open: u64,
}

/// The limit on open files tcpmuxd was started with, given back to every
/// child: programs that use select(2) break with descriptors above 1024.
static CHILDREN_FD_LIMIT: std::sync::OnceLock<rustix::process::Rlimit> = std::sync::OnceLock::new();

/// The limit on open files for children, once [`raise_fd_limit`] ran.
pub fn children_fd_limit() -> Option<rustix::process::Rlimit> {
    CHILDREN_FD_LIMIT.get().copied()
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (the default soft
/// limit of 1024 would end the daemon's connections long before its
/// configured maxima). Returns the limits in force afterwards, and why the
/// soft limit could not be raised, if it could not.
pub fn raise_fd_limit() -> (FdLimit, Option<String>) {
    let current = getrlimit(Resource::Nofile);
    let _ = CHILDREN_FD_LIMIT.set(current);
    let soft = current.current.unwrap_or(u64::MAX);
    let hard = current.maximum.unwrap_or(u64::MAX);
    let limit = |soft| FdLimit {
        soft,
        hard,
        open: 0,
    };
    if soft >= hard {
        return (limit(soft), None);
    }
    let raised = rustix::process::Rlimit {
        current: current.maximum,
        maximum: current.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => (limit(hard), None),
        Err(e) => (
            limit(soft),
            Some(format!(
                "cannot raise the soft limit on open files from {soft} to {hard}: {e}"
            )),
        ),
    }
}

/// Descriptors open in this process now.
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64)
}

/// Descriptors MSP may hold at once: each TCP connection with a delivery
/// command's three pipes, and as many for each datagram being delivered.
fn msp_fds(config: &Config) -> u64 {
    let connections = (config.msp.max_connections as u64).saturating_mul(MSP_CONNECTION_FDS);
    let datagrams = (MSP_MAX_UDP_IN_FLIGHT as u64).saturating_mul(MSP_DELIVERY_FDS);
    connections.saturating_add(datagrams)
}

/// Descriptors kept out of the budget of TCPMUX connections and sessions:
/// those open at startup, MSP's, and the reserve.
fn kept_fds(config: &Config, limit: FdLimit) -> u64 {
    limit
        .open
        .saturating_add(msp_fds(config))
        .saturating_add(FD_RESERVE as u64)
}

/// Descriptors the configured maxima need at once: one per handshake, what
/// every running session of the exec launcher holds, and what is kept.
pub fn fds_needed(config: &Config, limit: FdLimit) -> u64 {
    let handshakes = config.tcpmux.max_handshakes as u64;
    let sessions = (config.tcpmux.max_sessions as u64).saturating_mul(EXEC_SESSION_FDS as u64);
    handshakes
        .saturating_add(sessions)
        .saturating_add(kept_fds(config, limit))
}

/// The descriptors TCPMUX connections and sessions may hold: the soft
/// limit less what is kept.
pub fn fd_budget(config: &Config, limit: FdLimit) -> usize {
    let budget = limit.soft.saturating_sub(kept_fds(config, limit));
    usize::try_from(budget).unwrap_or(usize::MAX)
}

/// A warning when the configured maxima cannot all be reached within the
/// limit on open files; clients past it are told `-Server busy` or
/// `-Too many connections`, never `+` for a session that cannot start.
pub fn fd_warning(config: &Config, limit: FdLimit) -> Option<String> {
    let needed = fds_needed(config, limit);
    (needed > limit.soft).then(|| {
        format!(
            "the limit on open files ({}) is below what the configured maxima need ({needed}: \
             max_handshakes {} + {EXEC_SESSION_FDS} x max_sessions {} + {} for MSP + {} open at \
             startup + {FD_RESERVE} reserved); clients past the limit are refused. Raise \
             LimitNOFILE= (or ulimit -n), or lower the maxima",
            limit.soft,
            config.tcpmux.max_handshakes,
            config.tcpmux.max_sessions,
            msp_fds(config),
            limit.open,
        )
    })
}

/// Name of the warm units' program.
pub const WARM_HELPER: &str = "tcpmux-warm";

/// Where the packages install the warm units' program.
pub const WARM_HELPER_INSTALLED: &str = "/usr/libexec/tcpmuxd/tcpmux-warm";

/// The warm units' program: beside the running tcpmuxd (a build tree, or
/// an installation of both in one folder), else where the packages put it.
pub fn warm_helper() -> Option<std::path::PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(WARM_HELPER)));
    beside
        .into_iter()
        .chain(std::iter::once(std::path::PathBuf::from(
            WARM_HELPER_INSTALLED,
        )))
        .find(|helper| crate::launch::check_program(&helper.to_string_lossy()).is_ok())
}
