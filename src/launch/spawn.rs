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
//!   descriptors to use), and writes two atomics the parent reads after
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
//!   disposition to the default (the handler table is the child's own
//!   copy: without CLONE_SIGHAND, the daemon's stay as they are), and
//!   unblocks them only after its user switch, before the greeting. A
//!   fault is forced on it with the default action whatever the mask: it
//!   dies, and the daemon sees it exit.
//! - Its stack is [`CHILD_STACK_SIZE`] bytes mapped for this only, below
//!   them a page with no access: an overflow kills the child, it cannot
//!   reach the daemon's memory. One stack per spawning thread, kept for
//!   the next spawn: a thread runs one child at a time and the child is
//!   done with the stack when `clone` returns. It writes its report in
//!   the mapping's first page, which is shared (`MAP_SHARED`), so that the
//!   parent sees it also from a child in a copy (below).
//!
//! What a child that switches users runs in ([`child_memory`]): a change
//! of user makes the memory of the process that changes as dumpable as
//! `fs.suid_dumpable` says, and between that switch and execve the child
//! runs as the service's user, who may signal it.
//! - At 0 that memory stays not dumpable: the child runs in the daemon's,
//!   and the service's user can neither trace it (ptrace, /proc/PID/mem
//!   and process_vm_writev need CAP_SYS_PTRACE) nor have it dump core.
//! - At 2 (core files by root, as systemd-coredump and apport set it) a
//!   child in the daemon's memory would make it dumpable until it made it
//!   not dumpable again, and in that moment any other child that can take
//!   a signal could dump it (the daemon's memory in a core file; before
//!   Linux 5.16 the dump kills every process sharing that memory, the
//!   daemon too). The child runs in a copy instead (clone without
//!   CLONE_VM, still CLONE_VFORK: slower, as fork is), and makes that
//!   copy not dumpable right after its switch, with every signal still
//!   blocked: a signal from the new user then kills the child alone,
//!   without a core.
//! - At 1 (a debugging setting), or unreadable, the new user could trace
//!   the child and read even a copy of the daemon's memory (other
//!   services' environments, clients' data): starts that switch users
//!   are refused.
//!
//! What holds a start, never the daemon:
//! - That user may signal the child, and whoever owns the program file
//!   may hold its execve with a write lease: either holds the start, never
//!   the daemon. A thread that starts a child first hands the connections
//!   it serves to another ([`start`]); at most [`MAX_EXEC_STARTING`]
//!   starts hold threads at once, a quarter of them of one service
//!   ([`StartSlots`]); and a start not done within [`EXEC_START_TIMEOUT`]
//!   is killed by a thread of its own ([`Watchdog`]; SIGKILL ends a
//!   stopped child and a wait for a lease alike).
//!
//! The child is an ordinary child of tcpmuxd (it sends SIGCHLD); a pidfd
//! tells the runtime when it has exited, and [`Spawned::wait`] reaps it.

use super::child::{EXIT_CANNOT_EXECUTE, ExecImage};
use crate::limits::{
    EXEC_START_SLOT_WAIT, EXEC_START_TIMEOUT, MAX_EXEC_STARTING, MAX_EXEC_STARTING_PER_SERVICE,
};
use rustix::io::Errno;
use rustix::process::{Pid, WaitOptions};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The child's stack between `clone` and execve. What runs there is a few
/// small frames of system calls; glibc's posix_spawn gets by with less.
pub const CHILD_STACK_SIZE: usize = 64 * 1024;

/// The highest signal number (Linux's `_NSIG - 1`).
const LAST_SIGNAL: c_int = 64;

/// A started program: its pid and a pidfd for it.
#[derive(Debug)]
pub struct Spawned {
    pub pid: Pid,
    /// Killed for taking longer than [`EXEC_START_TIMEOUT`] after its
    /// greeting: its client heard `+`, the program never ran.
    pub killed_late: bool,
    /// None on kernels without pidfds (before 5.3).
    pidfd: Option<OwnedFd>,
}

/// What a start hands its child as descriptors 0, 1 and 2, owned by the
/// start until the child has exec'd.
pub trait Stdio: Send + 'static {
    fn stdio(&self) -> [BorrowedFd<'_>; 3];
}

/// A start that failed before any greeting: why, and the descriptors back
/// (to answer the client), but when the starting thread itself failed.
#[derive(Debug)]
pub struct NotStarted<F> {
    pub error: io::Error,
    pub fds: Option<F>,
    /// No room to start: too many starts under way (none was tried).
    pub busy: bool,
}

/// Starts `image` with `fds` as its descriptors 0, 1 and 2, on a thread
/// that no handshake waits for: the threads that serve connections never
/// wait for a child. Returns once the child has exec'd; a start not done within
/// [`EXEC_START_TIMEOUT`] is killed and returns an error of kind
/// `TimedOut` (unless the child had written its greeting already: then
/// its client heard `+`, and the session ends with the child's signal).
///
/// `share` names whose share of [`MAX_EXEC_STARTING`] the start takes (the
/// service's name); without room in time, the start is refused
/// (`NotStarted::busy`) before anything was tried ([`StartSlots`]).
pub async fn start<F: Stdio>(
    image: ExecImage,
    fds: F,
    share: &str,
) -> Result<Spawned, NotStarted<F>> {
    let Some(_slot) = StartSlots::take(share).await else {
        return Err(NotStarted {
            error: io::Error::other(format!(
                "no room to start within {}: {MAX_EXEC_STARTING} programs are being started \
                 at once, or {MAX_EXEC_STARTING_PER_SERVICE} of this service (their starts \
                 are held)",
                humantime::format_duration(EXEC_START_SLOT_WAIT)
            )),
            fds: Some(fds),
            busy: true,
        });
    };
    let watch = Arc::new(Watch::default());
    let _watched = Watchdog::watch(Arc::clone(&watch));
    let run = {
        let watch = Arc::clone(&watch);
        move || {
            let started = spawn(&image, fds.stdio(), &watch);
            (started, fds)
        }
    };
    // On the runtime's own threads, this one hands its connections to
    // another before it waits (block_in_place): no handshake waits behind
    // a start, and the start needs no second thread to hand back to.
    let joined = match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => Ok(tokio::task::block_in_place(run)),
        _ => tokio::task::spawn_blocking(run).await,
    };
    let stopped = watch.killed.load(Ordering::Acquire);
    match joined {
        Ok((Ok(spawned), _fds)) => Ok(Spawned {
            killed_late: stopped,
            ..spawned
        }),
        Ok((Err(error), fds)) => Err(NotStarted {
            error: if stopped {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "not started within {} (held before it could execute the program); \
                         killed",
                        humantime::format_duration(EXEC_START_TIMEOUT)
                    ),
                )
            } else {
                error
            },
            fds: Some(fds),
            busy: false,
        }),
        Err(e) => Err(NotStarted {
            error: io::Error::other(format!("the thread starting the program failed: {e}")),
            fds: None,
            busy: false,
        }),
    }
}

/// How a start is watched from outside its thread: the child's pid, for a
/// start that takes too long to be killed.
#[derive(Debug, Default)]
struct Watch {
    /// The child's pid, written by the kernel into this (the parent's)
    /// memory before the child runs (`CLONE_PARENT_SETTID`); 0 before.
    pid: AtomicI32,
    /// Whether `clone` has returned: from then on the child is the
    /// starting thread's to reap, and nobody's to signal (once reaped, its
    /// pid may be another process's).
    returned: Mutex<bool>,
    /// Whether [`Watch::kill`] killed the child.
    killed: AtomicBool,
}

impl Watch {
    fn kill(&self) {
        let returned = self.returned.lock().unwrap_or_else(|e| e.into_inner());
        let pid = self.pid.load(Ordering::Acquire);
        if !*returned
            && let Some(pid) = Pid::from_raw(pid)
            && rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok()
        {
            self.killed.store(true, Ordering::Release);
        }
    }

    fn set_returned(&self) {
        *self.returned.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }
}

/// Room for starts: [`MAX_EXEC_STARTING`] at once, of which at most
/// [`MAX_EXEC_STARTING_PER_SERVICE`] of one share (a service, or MSP's
/// delivery). A start waits for its room in order of arrival, for at most
/// [`EXEC_START_SLOT_WAIT`]. Starts take about a millisecond: only held
/// ones keep their room, and held ones of one service leave the others
/// theirs.
struct StartSlots {
    all: Arc<Semaphore>,
    /// One per share ever started; as many as services configured over
    /// time.
    shares: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl StartSlots {
    fn get() -> &'static StartSlots {
        static SLOTS: OnceLock<StartSlots> = OnceLock::new();
        SLOTS.get_or_init(|| StartSlots {
            all: Arc::new(Semaphore::new(MAX_EXEC_STARTING)),
            shares: Mutex::new(HashMap::new()),
        })
    }

    /// Room for one start of `share`, or None after [`EXEC_START_SLOT_WAIT`].
    async fn take(share: &str) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let slots = StartSlots::get();
        let own = {
            let mut shares = slots.shares.lock().unwrap_or_else(|e| e.into_inner());
            match shares.get(share) {
                Some(own) => Arc::clone(own),
                None => {
                    let own = Arc::new(Semaphore::new(MAX_EXEC_STARTING_PER_SERVICE));
                    shares.insert(share.to_string(), Arc::clone(&own));
                    own
                }
            }
        };
        // The share's first: a held service's clients wait in its share,
        // not in everyone's.
        let taken = async {
            let own = own.acquire_owned().await.ok()?;
            let all = Arc::clone(&slots.all).acquire_owned().await.ok()?;
            Some((own, all))
        };
        tokio::time::timeout(EXEC_START_SLOT_WAIT, taken)
            .await
            .ok()
            .flatten()
    }
}

/// Every start in progress, and one thread that kills those not done
/// within [`EXEC_START_TIMEOUT`]: it looks once every [`WATCHDOG_TICK`]
/// while starts come, and sleeps until the next after a while without.
/// (A timer per start would cost every start a task of its own.)
struct Watchdog {
    state: Mutex<WatchdogState>,
    wake: Condvar,
}

#[derive(Default)]
struct WatchdogState {
    next: u64,
    /// Every start under way: its deadline, its watch.
    watched: HashMap<u64, (Instant, Arc<Watch>)>,
    /// Whether the thread is looking (else it sleeps until woken).
    looking: bool,
    thread: bool,
}

/// How often the watchdog looks at starts in progress: a held start is
/// killed between [`EXEC_START_TIMEOUT`] and that and one tick later.
const WATCHDOG_TICK: Duration = Duration::from_secs(1);

/// Ticks without a start before the watchdog sleeps until the next.
const WATCHDOG_IDLE_TICKS: u32 = 10;

/// A start being watched; unwatched on drop.
struct Watched(u64);

impl Drop for Watched {
    fn drop(&mut self) {
        Watchdog::get().lock().watched.remove(&self.0);
    }
}

impl Watchdog {
    fn get() -> &'static Watchdog {
        static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();
        WATCHDOG.get_or_init(|| Watchdog {
            state: Mutex::new(WatchdogState::default()),
            wake: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchdogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watch(watch: Arc<Watch>) -> Watched {
        let dog = Watchdog::get();
        let mut state = dog.lock();
        let id = state.next;
        state.next += 1;
        state
            .watched
            .insert(id, (Instant::now() + EXEC_START_TIMEOUT, watch));
        if !state.thread {
            // Without the thread no start is ever killed; one that cannot
            // be made is said in the log, and the start goes on.
            match std::thread::Builder::new()
                .name("start-watchdog".into())
                .spawn(|| Watchdog::get().run())
            {
                Ok(_) => state.thread = true,
                Err(e) => tracing::error!("cannot start the thread that times starts out: {e}"),
            }
        }
        if !state.looking {
            state.looking = true;
            dog.wake.notify_one();
        }
        Watched(id)
    }

    fn run(&self) {
        let mut state = self.lock();
        let mut idle = 0;
        loop {
            if !state.looking {
                state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                idle = 0;
                continue;
            }
            state = self
                .wake
                .wait_timeout(state, WATCHDOG_TICK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            let now = Instant::now();
            for (deadline, watch) in state.watched.values() {
                if *deadline <= now {
                    watch.kill();
                }
            }
            idle = if state.watched.is_empty() {
                idle + 1
            } else {
                0
            };
            if idle >= WATCHDOG_IDLE_TICKS {
                state.looking = false;
            }
        }
    }
}

/// Where a child runs until its exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildMemory {
    /// In tcpmuxd's own memory (`CLONE_VM`): no copy, the fast start.
    Shared,
    /// In a copy of it, as fork makes (the page tables copied: slower).
    Copied,
}

/// Where a child that switches users (`switches_user`) may run, given
/// `fs.suid_dumpable` (`suid_dumpable`, None when unreadable, only read
/// for a switch); None when it may not be started at all.
///
/// A change of user makes the memory of the process that changes as
/// dumpable as `fs.suid_dumpable` says. At 0 it stays not dumpable:
/// shared, the fast start. At 2 (dumpable by root: core files), a child
/// in shared memory would make tcpmuxd's memory dumpable for every other
/// child that can take a signal at that moment, whatever it does after
/// its own switch: it runs in a copy, which it makes not dumpable again
/// right after its switch, before any signal can reach it. At 1, or
/// unknown, the new user could trace the child and read even a copy of
/// tcpmuxd's memory: refused.
fn child_memory(
    switches_user: bool,
    suid_dumpable: impl FnOnce() -> Option<u8>,
) -> Option<ChildMemory> {
    if !switches_user {
        return Some(ChildMemory::Shared);
    }
    match suid_dumpable() {
        Some(0) => Some(ChildMemory::Shared),
        Some(2) => Some(ChildMemory::Copied),
        _ => None,
    }
}

/// What an administrator should hear when the configuration is loaded:
/// the services tcpmuxd starts itself as another user (`switching`, their
/// names) are refused while `fs.suid_dumpable` (`suid_dumpable`) is 1 or
/// unreadable, and start in a copy of tcpmuxd's memory (slower) at 2.
pub fn user_switch_warning(switching: &[&str], suid_dumpable: Option<u8>) -> Option<String> {
    let names = || switching.join(", ");
    match (switching.is_empty(), suid_dumpable) {
        (true, _) | (false, Some(0)) => None,
        (false, Some(2)) => Some(format!(
            "fs.suid_dumpable is 2: the programs of {} (started as other users) start in a copy \
             of tcpmuxd's memory, as fork makes, which is slower; set it to 0 for the fast start",
            names()
        )),
        (false, _) => Some(format!(
            "fs.suid_dumpable is 1 or cannot be read: the programs of {} (started as other \
             users) will be refused (their user could read tcpmuxd's memory before their exec); \
             set it to 0 (sysctl fs.suid_dumpable=0)",
            names()
        )),
    }
}

/// [`user_switch_warning`] for `config` as it would run on `host`.
pub fn user_switch_warning_for(
    config: &crate::config::Config,
    host: &crate::config::Host,
) -> Option<String> {
    let switching: Vec<&str> = config
        .services
        .iter()
        .filter(|s| s.launcher.runs_exec(host))
        .filter(|s| {
            s.credentials
                .as_ref()
                .is_some_and(super::child::needs_switch)
        })
        .map(|s| s.name.as_str())
        .collect();
    if switching.is_empty() {
        return None;
    }
    user_switch_warning(&switching, suid_dumpable())
}

/// `fs.suid_dumpable`, read at every start that switches users (the
/// administrator may change it at any time).
fn suid_dumpable() -> Option<u8> {
    static SYSCTL: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    let file = SYSCTL
        .get_or_init(|| std::fs::File::open("/proc/sys/fs/suid_dumpable").ok())
        .as_ref()?;
    let mut value = [0u8; 4];
    let n = rustix::io::pread(file, &mut value, 0).ok()?;
    match value.get(..n)? {
        [digit @ b'0'..=b'9', b'\n'] => Some(digit - b'0'),
        _ => None,
    }
}

/// Starts `image` with `stdio` as its descriptors 0, 1 and 2, on this
/// thread, which waits in `clone` until the child has exec'd or exited.
/// Returns the error of the step that failed before any greeting, or that
/// the child was killed before it (the child is then reaped already). A
/// failure after the greeting is the child's to report (see
/// [`ExecImage::start`]).
fn spawn(image: &ExecImage, stdio: [BorrowedFd<'_>; 3], watch: &Watch) -> io::Result<Spawned> {
    let Some(memory) = child_memory(image.switches_user(), suid_dumpable) else {
        return Err(io::Error::other(
            "fs.suid_dumpable is 1 or cannot be read: a program started as another user \
             could read tcpmuxd's memory before its exec; set it to 0 (sysctl \
             fs.suid_dumpable=0), or 2",
        ));
    };
    let (pid, errno, reached) = STACK.with(|cell| -> io::Result<(c_int, i32, bool)> {
        let mut cell = cell.borrow_mut();
        let stack = match &mut *cell {
            Some(stack) => stack,
            empty => empty.insert(Stack::new()?),
        };
        let report = stack.report();
        report.errno.store(0, Ordering::Relaxed);
        report.reached.store(false, Ordering::Relaxed);
        let shared = Shared {
            image,
            stdio: stdio.map(|fd| fd.as_raw_fd()),
            report,
        };
        let shared_memory = match memory {
            ChildMemory::Shared => libc::CLONE_VM,
            ChildMemory::Copied => 0,
        };
        let flags = shared_memory | libc::CLONE_VFORK | libc::CLONE_PARENT_SETTID | libc::SIGCHLD;
        let blocked = BlockedSignals::all()?;
        // SAFETY: see the module: the child runs `child_main` on its own
        // stack and reads `shared`, which outlives it (this thread waits
        // in clone until the child has exec'd or exited), in this memory
        // or a copy of it; its report is in a shared mapping, seen here
        // either way; the kernel writes the child's pid into `watch.pid`,
        // an aligned int.
        let pid = unsafe {
            libc::clone(
                child_main,
                stack.top(),
                flags,
                &shared as *const Shared<'_> as *mut c_void,
                watch.pid.as_ptr(),
            )
        };
        watch.set_returned();
        drop(blocked);
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((
            pid,
            report.errno.load(Ordering::Acquire),
            report.reached.load(Ordering::Acquire),
        ))
    })?;
    // SAFETY: clone returned a child's pid.
    let pid = unsafe { Pid::from_raw_unchecked(pid) };
    if errno != 0 {
        // The child is exiting: reap it now.
        let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
        return Err(io::Error::from_raw_os_error(errno));
    }
    if !reached {
        // Killed before the greeting: its client heard nothing.
        let status = rustix::process::waitpid(Some(pid), WaitOptions::empty())
            .ok()
            .flatten()
            .map(|(_, status)| super::exec::describe_exit(ExitStatus::from_raw(status.as_raw())));
        return Err(io::Error::other(format!(
            "the child ended before it could execute the program ({})",
            status.as_deref().unwrap_or("no status")
        )));
    }
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok();
    Ok(Spawned {
        pid,
        killed_late: false,
        pidfd,
    })
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

/// Kills a started program that is no longer waited for, and reaps it in
/// the background. `pid` must be a child of tcpmuxd not reaped yet.
pub fn kill_and_reap(pid: Pid) {
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    tokio::task::spawn_blocking(move || {
        let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
    });
}

/// What the child writes for its parent.
struct Report {
    /// The errno of a step that failed before the greeting; 0 for none.
    errno: AtomicI32,
    /// Every step before the greeting done ([`ExecImage::start`]).
    reached: AtomicBool,
}

/// What the parent gives the child, and where the child reports.
struct Shared<'a> {
    image: &'a ExecImage,
    stdio: [RawFd; 3],
    report: &'a Report,
}

/// The child, from `clone` to execve or `_exit`.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `Shared`,
    // alive until the child has exec'd or exited (the parent waits in
    // clone); it shares the parent's memory (CLONE_VM), its report too.
    let shared = unsafe { &*(arg as *const Shared<'_>) };
    reset_dispositions();
    let errno = shared
        .image
        .start(Some(shared.stdio), Some(&shared.report.reached));
    // Before the greeting: the parent returns the error, nobody heard `+`.
    shared
        .report
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
/// must not inherit a signal ignored, SIGPIPE among them). Every signal
/// stays blocked: [`ExecImage::start`] unblocks them after the user
/// switch, once the shared memory is not dumpable again (see the module). The kernel's rt_sigaction, not libc's sigaction: libc
/// refuses to touch the signals it keeps for itself, and one of them may
/// have been ignored by whoever started tcpmuxd.
fn reset_dispositions() {
    // The kernel's struct sigaction with every field zero is SIG_DFL, no
    // flags, empty mask, whatever the architecture's field order.
    let default = [0u64; 4];
    for signal in 1..=LAST_SIGNAL {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            // Refused (EINVAL), and errno is the spawning thread's.
            continue;
        }
        // SAFETY: a pointer to a zeroed kernel sigaction, no old one asked
        // for, the kernel's sigset size.
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

/// [`CHILD_STACK_SIZE`] bytes of stack above a guard page, below that a
/// page where the child reports. One shared mapping (`MAP_SHARED`): a
/// child in a copy of tcpmuxd's memory writes its report where tcpmuxd
/// reads it too.
struct Stack {
    base: *mut c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        use rustix::mm::{MapFlags, MprotectFlags, ProtFlags, mmap_anonymous, mprotect};
        let page = rustix::param::page_size();
        let len = 2 * page + CHILD_STACK_SIZE;
        // SAFETY: a new mapping, owned by the `Stack`; its first page holds
        // the report (zeroed: no errno, not reached), the second is the
        // guard.
        unsafe {
            let base = mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::STACK,
            )?;
            let stack = Stack { base, len };
            mprotect(base.wrapping_byte_add(page), page, MprotectFlags::empty())?;
            Ok(stack)
        }
    }

    /// Where the stack begins (it grows down), 16-byte aligned.
    fn top(&self) -> *mut c_void {
        // The mapping is page-aligned, and so is its length.
        self.base.wrapping_byte_add(self.len)
    }

    fn report(&self) -> &Report {
        // SAFETY: the first page of the mapping, zeroed at first (a valid
        // Report: both atomics zero), aligned, and alive as long as self;
        // written by the child only through the atomics.
        unsafe { &*(self.base as *const Report) }
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
        let watch = Watch::default();
        let spawned = spawn(image, [theirs.as_fd(), theirs.as_fd(), err.as_fd()], &watch);
        (spawned, ours)
    }

    /// A connection's two ends, for [`start`].
    struct Pair(UnixStream, OwnedFd);

    impl Stdio for Pair {
        fn stdio(&self) -> [BorrowedFd<'_>; 3] {
            [self.0.as_fd(), self.0.as_fd(), self.1.as_fd()]
        }
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

    #[tokio::test]
    async fn start_runs_the_child_off_the_runtime_and_gives_the_descriptors_back_on_failure() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_, err) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let failed = start(
            image(&["/nonexistent/program"], None, ResourceLimits::default()),
            Pair(theirs, err),
            "test",
        )
        .await
        .unwrap_err();
        assert_eq!(failed.error.raw_os_error(), Some(libc::ENOENT));
        // The descriptors came back: the client can still be answered.
        let Pair(theirs, _) = failed.fds.unwrap();
        drop(ours);
        drop(theirs);
    }

    #[test]
    fn a_child_killed_before_the_greeting_is_an_error_not_a_start() {
        // The child stops itself before anything: the watch kills it, as
        // the start timeout does.
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_, err) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let watch = std::sync::Arc::new(Watch::default());
        let killer = {
            let watch = std::sync::Arc::clone(&watch);
            std::thread::spawn(move || {
                while watch.pid.load(Ordering::Acquire) == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                watch.kill();
            })
        };
        let held = image(&["/bin/true"], Some(b"+\r\n"), ResourceLimits::default());
        let spawned = spawn(
            &held.stopping_before_anything(),
            [theirs.as_fd(), theirs.as_fd(), err.as_fd()],
            &watch,
        );
        killer.join().unwrap();
        let error = spawned.unwrap_err();
        assert!(error.to_string().contains("signal 9"), "{error}");
        drop(theirs);
        ours.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 8];
        assert!(
            !matches!((&ours).read(&mut buf), Ok(n) if n > 0),
            "nothing was written"
        );
    }

    #[test]
    fn a_user_switch_needs_suid_dumpable_0_or_2_and_at_2_a_copy() {
        let never = || -> Option<u8> { panic!("read only for a user switch") };
        assert_eq!(child_memory(false, never), Some(ChildMemory::Shared));
        assert_eq!(child_memory(true, || Some(0)), Some(ChildMemory::Shared));
        assert_eq!(child_memory(true, || Some(2)), Some(ChildMemory::Copied));
        assert_eq!(child_memory(true, || Some(1)), None);
        assert_eq!(child_memory(true, || None), None);
        // This machine's own setting is read.
        assert!(suid_dumpable().is_some());
    }

    /// /bin/true, started as nobody (a user switch when run as root).
    fn true_as_nobody() -> ExecImage {
        let nobody = crate::config::Credentials {
            user: "nobody".into(),
            uid: 65534,
            gid: 65534,
        };
        let resources = Resources {
            umask: None,
            limits: ResourceLimits::default(),
        };
        let command = vec!["/bin/true".to_string()];
        ExecImage::new(
            &command,
            std::iter::empty(),
            None,
            &resources,
            Some(&nobody),
        )
        .unwrap()
    }

    /// fs.suid_dumpable set for a test, and set back on drop; one test at
    /// a time, so that each sets back the machine's own value.
    struct SuidDumpable {
        before: String,
        _one_at_a_time: std::sync::MutexGuard<'static, ()>,
    }

    impl SuidDumpable {
        fn set(value: &str) -> Option<SuidDumpable> {
            static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
            let held = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
            let path = "/proc/sys/fs/suid_dumpable";
            let before = std::fs::read_to_string(path).ok()?;
            std::fs::write(path, value).ok()?;
            Some(SuidDumpable {
                before,
                _one_at_a_time: held,
            })
        }
    }

    impl Drop for SuidDumpable {
        fn drop(&mut self) {
            let _ = std::fs::write("/proc/sys/fs/suid_dumpable", self.before.trim());
        }
    }

    /// For the tests of a user switch at fs.suid_dumpable=2: as root, sets
    /// it to 2 (until the guard is dropped) and this process not dumpable,
    /// as tcpmuxd is; None (the test is skipped) when not root.
    fn at_suid_dumpable_2_not_dumpable() -> Option<SuidDumpable> {
        use rustix::process::{DumpableBehavior, set_dumpable_behavior};
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: switching users needs root");
            return None;
        }
        let restore = SuidDumpable::set("2").expect("cannot set fs.suid_dumpable as root");
        set_dumpable_behavior(DumpableBehavior::NotDumpable).unwrap();
        Some(restore)
    }

    #[tokio::test]
    async fn a_start_as_another_user_leaves_the_daemons_memory_not_dumpable() {
        use rustix::process::{DumpableBehavior, dumpable_behavior};
        // At 2, as many systems have it, a change of user makes the memory
        // it happens in dumpable (by root).
        let Some(_restore) = at_suid_dumpable_2_not_dumpable() else {
            return;
        };
        let (spawned, _ours) = run(&true_as_nobody());
        let status = spawned.unwrap().wait().await.unwrap();
        assert!(status.success(), "{status:?}");
        assert_eq!(
            dumpable_behavior().unwrap(),
            DumpableBehavior::NotDumpable,
            "the child's user switch left tcpmuxd's memory dumpable"
        );
    }

    #[test]
    fn starts_as_another_user_at_once_never_make_the_daemons_memory_dumpable() {
        use rustix::process::{DumpableBehavior, dumpable_behavior};
        // At 2, a child's change of user makes the memory it runs in
        // dumpable until it makes it not dumpable again: were that
        // tcpmuxd's own, every other child able to take a signal then
        // could dump it (or, before Linux 5.16, kill tcpmuxd).
        let Some(_restore) = at_suid_dumpable_2_not_dumpable() else {
            return;
        };
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let watcher = {
            let done = std::sync::Arc::clone(&done);
            std::thread::spawn(move || {
                let mut seen = 0u32;
                while !done.load(Ordering::Relaxed) {
                    if dumpable_behavior().ok() != Some(DumpableBehavior::NotDumpable) {
                        seen += 1;
                    }
                }
                seen
            })
        };
        let starters: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    let image = true_as_nobody();
                    for _ in 0..200 {
                        let (spawned, _ours) = run(&image);
                        let pid = spawned.unwrap().pid;
                        let _ = rustix::process::waitpid(Some(pid), WaitOptions::empty());
                    }
                })
            })
            .collect();
        for s in starters {
            s.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        let seen = watcher.join().unwrap();
        assert_eq!(seen, 0, "tcpmuxd's memory was dumpable {seen} times");
    }

    #[test]
    fn a_load_warns_of_starts_as_other_users_that_suid_dumpable_refuses_or_slows() {
        assert_eq!(user_switch_warning(&[], None), None);
        assert_eq!(user_switch_warning(&["a"], Some(0)), None);
        let slow = user_switch_warning(&["a", "b"], Some(2)).unwrap();
        assert!(slow.contains("of a, b") && slow.contains("copy"), "{slow}");
        let refused = user_switch_warning(&["a"], Some(1)).unwrap();
        assert!(refused.contains("will be refused"), "{refused}");
        assert!(
            user_switch_warning(&["a"], None)
                .unwrap()
                .contains("will be refused")
        );
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
