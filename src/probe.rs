//! No-wait looks at a socket's state that the server and the launchers
//! share: what it polls for now, what its send queue still holds, and
//! whether its reading stands at TCP urgent data.

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::ioctl::{Getter, Opcode, ioctl};
use std::os::fd::AsFd;

/// What `fd` polls for `events` now, without waiting; none when the poll
/// itself fails.
pub fn poll_now(fd: &impl AsFd, events: PollFlags) -> Option<PollFlags> {
    let mut fds = [PollFd::new(fd, events)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    poll(&mut fds, Some(&zero)).ok()?;
    Some(fds[0].revents())
}

/// What the kernel still holds of what was sent on `socket` (`SIOCOUTQ`),
/// in bytes; none when it cannot say.
/// - TCP: bytes not yet sent, or sent and not acknowledged.
/// - A Unix socket: the memory of the messages its peer has not received
///   yet (each message's buffer, somewhat more than its payload).
pub fn unsent(socket: &impl AsFd) -> Option<usize> {
    // SIOCOUTQ, which Linux numbers as TIOCOUTQ.
    const OUTQ: Opcode = libc::TIOCOUTQ as Opcode;
    // SAFETY: SIOCOUTQ on a socket writes one int, which Getter provides.
    let queued = unsafe { ioctl(socket, Getter::<OUTQ, libc::c_int>::new()) };
    queued.ok().and_then(|n| usize::try_from(n).ok())
}

/// Whether the next byte to read from the TCP `socket` is at its urgent
/// mark (`SIOCATMARK`); false for other sockets, or when unknown.
pub fn at_urgent_mark(socket: &impl AsFd) -> bool {
    // SIOCATMARK: Linux's generic number (every architecture but Alpha,
    // MIPS, PA-RISC and SPARC; the libc crate does not name it).
    const ATMARK: Opcode = 0x8905;
    // SAFETY: SIOCATMARK on a socket writes one int, which Getter provides.
    let at = unsafe { ioctl(socket, Getter::<ATMARK, libc::c_int>::new()) };
    matches!(at, Ok(n) if n != 0)
}
