//! Starting a session's program without copying tcpmuxd's address space.
//!
//! std's `Command` forks as soon as it has a step to run in the child
//! (ours: the greeting, the limits, the user switch), and fork copies the
//! page tables of the whole daemon and then costs it copy-on-write faults.
//! Here the child is made as glibc's posix_spawn makes its own: with
//! `clone(CLONE_VM | CLONE_VFORK)`, it runs in the daemon's memory on a
//! small stack of its own, and the thread that spawns it waits in `clone`
//! until the child has exec'd or exited. The child runs
//! [`ExecImage::start`] and nothing else. No crate offers this with a step
//! of our own in the child: nix's `clone` runs a boxed closure (but no
//! pidfd), rustix and std none at all, and posix_spawn cannot write the
//! greeting, set limits or switch users.
//!
//! Why nothing the child does can corrupt the daemon:
//! - It only reads memory prepared before (the [`ExecImage`], the
//!   descriptors to use), and writes one atomic the parent reads after
//!   `clone` returns. It allocates nothing, takes no lock and runs no
//!   destructor: [`child_main`] ends in execve or `_exit`, never returns
//!   into Rust code of the parent's. Its system calls are rustix's raw
//!   ones or libc wrappers that only set errno (the spawning thread's, who
//!   is suspended and reads nothing of it); the user switch is per-thread
//!   (libc's setuid would signal the daemon's threads).
//! - Only the spawning thread waits; the daemon's other threads go on and
//!   may hold any lock, which is why the child takes none.
//! - Every signal is blocked in the spawning thread across `clone`, so the
//!   child starts with all blocked: none of the daemon's handlers can run
//!   on the child's stack in the daemon's memory. The child sets every
//!   disposition to the default before it unblocks them (the handler
//!   table is the child's own copy: without CLONE_SIGHAND, the daemon's
//!   stay as they are). A fault is forced on it with the default action
//!   whatever the mask: it dies, and the daemon sees it exit.
//! - Its stack is [`CHILD_STACK_SIZE`] bytes mapped for this only, below
//!   them a page with no access: an overflow kills the child, it cannot
//!   reach the daemon's memory. One stack per spawning thread, kept for
//!   the next spawn: a thread runs one child at a time and the child is
//!   done with the stack when `clone` returns.
//!
//! - Between the user switch and execve the child runs as the service's
//!   user in the daemon's memory. That user cannot reach it: the memory is
//!   not dumpable ([`crate::startup::forbid_tracing`], and the kernel
//!   makes it so at any change of user), so ptrace, /proc/PID/mem and
//!   process_vm_writev need CAP_SYS_PTRACE. It may signal the child, as
//!   it could std's forked child: SIGSTOP holds the spawning thread until
//!   SIGCONT, as it held std's spawn reading its exec-status pipe.
//!
//! The child is an ordinary child of tcpmuxd (it sends SIGCHLD); its pidfd
//! (CLONE_PIDFD) tells the runtime when it has exited, and
//! [`Spawned::wait`] reaps it.

use super::child::{EXIT_CANNOT_EXECUTE, ExecImage};
use rustix::io::Errno;
use rustix::process::{Pid, WaitOptions};
use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};

/// The child's stack between `clone` and execve. What runs there is a few
/// small frames of system calls; glibc's posix_spawn gets by with less.
pub const CHILD_STACK_SIZE: usize = 64 * 1024;

/// The highest signal number (Linux's `_NSIG - 1`).
const LAST_SIGNAL: c_int = 64;

/// A started program: its pid and a pidfd for it.
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    /// None on kernels without pidfds (before 5.3).
    pidfd: Option<OwnedFd>,
}

/// Starts `image` with `stdio` as its descriptors 0, 1 and 2. Returns once
/// the child has exec'd, or the error of the step that failed before any
/// greeting (the child is then reaped already). A failure after the
/// greeting is the child's to report (see [`ExecImage::start`]).
pub fn spawn(image: &ExecImage, stdio: [BorrowedFd<'_>; 3]) -> io::Result<Spawned> {
    let shared = Shared {
        image,
        stdio: stdio.map(|fd| fd.as_raw_fd()),
        errno: AtomicI32::new(0),
    };
    let mut pidfd: c_int = -1;
    let pid = STACK.with(|cell| -> io::Result<c_int> {
        let mut cell = cell.borrow_mut();
        let stack = match &mut *cell {
            Some(stack) => stack,
            empty => empty.insert(Stack::new()?),
        };
        let _blocked = BlockedSignals::all()?;
        // SAFETY: see the module: the child runs `child_main` on its own
        // stack and reads `shared`, which outlives it (this thread waits
        // in clone until the child has exec'd or exited).
        let pid = unsafe {
            libc::clone(
                child_main,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
                &shared as *const Shared<'_> as *mut c_void,
                &mut pidfd as *mut c_int,
            )
        };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(pid)
    })?;
    // SAFETY: clone returned a child's pid.
    let pid = unsafe { Pid::from_raw_unchecked(pid) };
    let pidfd = if pidfd >= 0 {
        // SAFETY: CLONE_PIDFD gave this process a new descriptor.
        Some(unsafe { OwnedFd::from_raw_fd(pidfd) })
    } else {
        // A kernel before 5.2 ignores CLONE_PIDFD.
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
    };
    match shared.errno.load(Ordering::Acquire) {
        0 => Ok(Spawned { pid, pidfd }),
        errno => {
            // The child is exiting: reap it now.
            let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
            Err(io::Error::from_raw_os_error(errno))
        }
    }
}

impl Spawned {
    /// Waits for the program to exit, and reaps it. (Only tcpmuxd reaps
    /// its children, and only by their pid: the pid stays this child's
    /// until then.)
    pub async fn wait(self) -> io::Result<ExitStatus> {
        let pid = self.pid;
        let status = |found: Option<(Pid, rustix::process::WaitStatus)>| {
            found.map(|(_, status)| ExitStatus::from_raw(status.as_raw()))
        };
        let registered = self.pidfd.map(|pidfd| {
            // SAFETY: the AsyncFd owns the OwnedFd, which stays open and
            // the same descriptor until the AsyncFd is dropped.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    pidfd,
                    tokio::io::Interest::READABLE,
                )
            }
        });
        let Some(Ok(pidfd)) = registered else {
            // No pidfd, or not pollable: wait on a thread of the blocking
            // pool.
            let found = tokio::task::spawn_blocking(move || {
                rustix::process::waitpid(Some(pid), WaitOptions::empty())
            })
            .await
            .map_err(io::Error::other)??;
            return status(found).ok_or_else(|| io::Error::other("waitpid found no child"));
        };
        loop {
            let mut ready = pidfd.readable().await?;
            if let Some(exit) = status(rustix::process::waitpid(Some(pid), WaitOptions::NOHANG)?) {
                return Ok(exit);
            }
            ready.clear_ready();
        }
    }
}

/// What the parent gives the child, and the one thing the child gives
/// back: the errno of a step that failed before the greeting.
struct Shared<'a> {
    image: &'a ExecImage,
    stdio: [RawFd; 3],
    errno: AtomicI32,
}

/// The child, from `clone` to execve or `_exit`.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `Shared`, alive until the child has
    // exec'd or exited (the parent waits in clone).
    let shared = unsafe { &*(arg as *const Shared<'_>) };
    reset_signals();
    let errno = shared.image.start(Some(shared.stdio));
    // Before the greeting: the parent returns the error, nobody heard `+`.
    shared
        .errno
        .store(nonzero(errno.raw_os_error()), Ordering::Release);
    // SAFETY: ends the child without running anything of the parent's.
    unsafe { libc::_exit(EXIT_CANNOT_EXECUTE) }
}

/// An errno of 0 would read as success.
fn nonzero(errno: i32) -> i32 {
    if errno == 0 {
        Errno::IO.raw_os_error()
    } else {
        errno
    }
}

/// In the child: every signal's disposition back to the default (a
/// handler of the daemon's must never run in the child, and the program
/// must not inherit a signal ignored, SIGPIPE among them), then no signal
/// blocked. The kernel's rt_sigaction, not libc's sigaction: libc refuses
/// to touch the signals it keeps for itself, and one of them may have
/// been ignored by whoever started tcpmuxd.
fn reset_signals() {
    // The kernel's struct sigaction with every field zero is SIG_DFL, no
    // flags, empty mask, whatever the architecture's field order.
    let default = [0u64; 4];
    for signal in 1..=LAST_SIGNAL {
        // SAFETY: a pointer to a zeroed kernel sigaction, no old one asked
        // for, the kernel's sigset size. SIGKILL and SIGSTOP are refused
        // with EINVAL, which changes nothing.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                default.as_ptr(),
                std::ptr::null_mut::<c_void>(),
                KERNEL_SIGSET_SIZE,
            );
        }
    }
    // SAFETY: sigprocmask on a local, emptied set.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// The size of the kernel's signal set, in bytes (64 signals).
const KERNEL_SIGSET_SIZE: usize = 8;

/// Every signal blocked in this thread while it lives; the mask before
/// restored on drop.
struct BlockedSignals(libc::sigset_t);

impl BlockedSignals {
    fn all() -> io::Result<Self> {
        // SAFETY: sigset_t is plain data, filled by sigfillset.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            match libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) {
                0 => Ok(BlockedSignals(old)),
                e => Err(io::Error::from_raw_os_error(e)),
            }
        }
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `all`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

thread_local! {
    /// This thread's child stack, made at its first spawn.
    static STACK: RefCell<Option<Stack>> = const { RefCell::new(None) };
}

/// [`CHILD_STACK_SIZE`] bytes of stack above a guard page.
struct Stack {
    base: *mut c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        use rustix::mm::{MapFlags, MprotectFlags, ProtFlags, mmap_anonymous, mprotect};
        let guard = rustix::param::page_size();
        let len = guard + CHILD_STACK_SIZE;
        // SAFETY: a new private mapping, owned by the `Stack`.
        unsafe {
            let base = mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::STACK,
            )?;
            let stack = Stack { base, len };
            mprotect(base, guard, MprotectFlags::empty())?;
            Ok(stack)
        }
    }

    /// Where the stack begins (it grows down), 16-byte aligned.
    fn top(&mut self) -> *mut c_void {
        // The mapping is page-aligned, and so is its length.
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, used by no child any more.
        unsafe {
            let _ = rustix::mm::munmap(self.base, self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ResourceLimits;
    use crate::launch::child::Resources;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn image(
        command: &[&str],
        greeting: Option<&'static [u8]>,
        limits: ResourceLimits,
    ) -> ExecImage {
        let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
        let resources = Resources {
            umask: None,
            limits,
        };
        ExecImage::new(&command, std::iter::empty(), greeting, &resources, None).unwrap()
    }

    /// Runs `image` with one end of a socket pair as stdin and stdout,
    /// the other returned.
    fn run(image: &ExecImage) -> (io::Result<Spawned>, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_, err) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let spawned = spawn(image, [theirs.as_fd(), theirs.as_fd(), err.as_fd()]);
        (spawned, ours)
    }

    fn reaped(pid: Pid) -> bool {
        matches!(
            rustix::process::waitpid(Some(pid), WaitOptions::NOHANG),
            Err(Errno::CHILD)
        )
    }

    #[tokio::test]
    async fn a_program_runs_with_the_greeting_first_and_is_reaped() {
        let (spawned, mut ours) = run(&image(
            &["/bin/echo", "hi"],
            Some(b"+\r\n"),
            ResourceLimits::default(),
        ));
        let spawned = spawned.unwrap();
        let pid = spawned.pid;
        assert!(spawned.wait().await.unwrap().success());
        assert!(reaped(pid));
        let mut out = String::new();
        ours.read_to_string(&mut out).unwrap();
        assert_eq!(out, "+\r\nhi\n");
    }

    #[test]
    fn an_exec_failure_without_greeting_is_the_error() {
        let (spawned, _ours) = run(&image(
            &["/nonexistent/program"],
            None,
            ResourceLimits::default(),
        ));
        assert_eq!(spawned.unwrap_err().raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn a_step_that_fails_before_the_greeting_is_the_error_and_nothing_is_written() {
        // Above fs.nr_open: no process may have it, root included.
        let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let limits = ResourceLimits {
            open_files: Some(nr_open + 1),
            ..ResourceLimits::default()
        };
        let (spawned, mut ours) = run(&image(&["/bin/true"], Some(b"+\r\n"), limits));
        assert_eq!(spawned.unwrap_err().raw_os_error(), Some(libc::EPERM));
        ours.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 8];
        // Nothing was written: end of file, or nothing yet while another
        // test's child still holds a copy of the descriptor, never `+`.
        let read = ours.read(&mut buf);
        assert!(
            matches!(&read, Ok(0))
                || matches!(&read, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            "{read:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_spawns_from_many_threads_leave_no_child() {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                tokio::spawn(async {
                    for _ in 0..50 {
                        let (spawned, _ours) =
                            run(&image(&["/bin/true"], None, ResourceLimits::default()));
                        let spawned = spawned.unwrap();
                        let pid = spawned.pid;
                        assert!(spawned.wait().await.unwrap().success());
                        assert!(reaped(pid));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
}
