//! How every child of tcpmuxd starts, a session's program or MSP's
//! delivery command: in a session of its own with no controlling terminal,
//! with exactly the environment given, in `/`, with the umask and resource
//! limits of its service, and otherwise the limit on open files tcpmuxd
//! itself was started with. (Descriptors beyond 0, 1 and 2 are
//! close-on-exec from startup on: see [`crate::startup`].)

use crate::config::{Credentials, INFINITY, ResourceLimits};
use crate::startup;
use rustix::io::{Errno, FdFlags};
use rustix::process::{Gid, Resource, Rlimit, Uid, setrlimit};
use std::ffi::CString;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether running as `cred` takes a change of user or group.
pub fn needs_switch(cred: &Credentials) -> bool {
    // tcpmuxd never changes its own user or group: read once.
    static OWN: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    let (uid, gid) = *OWN.get_or_init(|| {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    });
    cred.uid != uid || cred.gid != gid
}

/// Exit status of a child whose program could not be executed after its
/// client was told `+` (as shells use it for a command that cannot run).
pub const EXIT_CANNOT_EXECUTE: i32 = 127;

/// Names and meanings of the errors execve fails with most, for the line
/// a child writes when it cannot execute its program after `+` (others
/// are given by number alone): a static table, as the child must not
/// allocate or format.
const EXEC_ERRORS: &[(Errno, &str)] = &[
    (Errno::NOENT, "ENOENT: no such file or directory"),
    (Errno::ACCESS, "EACCES: permission denied"),
    (Errno::NOEXEC, "ENOEXEC: exec format error"),
    (Errno::TOOBIG, "E2BIG: argument list too long"),
    (Errno::TXTBSY, "ETXTBSY: text file busy"),
    (Errno::NOMEM, "ENOMEM: cannot allocate memory"),
    (Errno::LOOP, "ELOOP: too many levels of symbolic links"),
    (Errno::ISDIR, "EISDIR: is a directory"),
    (Errno::NOTDIR, "ENOTDIR: not a directory"),
    (Errno::NAMETOOLONG, "ENAMETOOLONG: file name too long"),
    (Errno::PERM, "EPERM: operation not permitted"),
    (Errno::AGAIN, "EAGAIN: resource temporarily unavailable"),
    (Errno::INVAL, "EINVAL: invalid argument"),
    (Errno::IO, "EIO: input/output error"),
];

/// The name and meaning of `errno` from [`EXEC_ERRORS`], if there.
fn exec_error_text(errno: Errno) -> Option<&'static str> {
    EXEC_ERRORS
        .iter()
        .find(|(e, _)| *e == errno)
        .map(|(_, text)| *text)
}

/// What begins the line a child writes on its stderr when it cannot
/// execute its program after `+`, so that the daemon logs that line as
/// its own warning, not as a line of the program's: random, made once,
/// and known to nobody but tcpmuxd (the program never runs), so that no
/// program can have a line of its own taken for it. None when the
/// kernel gave no random bytes: the line is then logged as the
/// program's.
pub fn exec_failure_marker() -> Option<&'static [u8]> {
    static MARKER: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    MARKER
        .get_or_init(|| {
            let mut key = [0u8; 16];
            let n =
                rustix::rand::getrandom(&mut key, rustix::rand::GetRandomFlags::empty()).ok()?;
            (n == key.len()).then(|| {
                key.iter()
                    .map(|b| format!("{b:02x}"))
                    .chain(std::iter::once(" ".to_string()))
                    .collect::<String>()
                    .into_bytes()
            })
        })
        .as_deref()
}

/// What a program starts with besides its command and environment: a
/// service's `umask` and `limits`. The default changes nothing: the child
/// keeps tcpmuxd's umask and limits (but open files, see the module).
#[derive(Debug, Clone, Copy, Default)]
pub struct Resources {
    pub umask: Option<u32>,
    pub limits: ResourceLimits,
}

/// A program's path, arguments and environment as C arrays, and everything
/// else its child needs, made before the child exists, so that the child
/// does nothing but system calls on memory it only reads (see
/// [`super::spawn`] for why that matters).
///
/// `greeting`, when given, is written to the child's standard output just
/// before it execs the program: the `+` of a plus-mode service. Everything
/// that can fail before (descriptors, the child, the limits, the user
/// switch) then fails before the client hears `+`, and the start returns
/// the error. Should the exec itself fail after the greeting, the child
/// says why on its stderr and exits [`EXIT_CANNOT_EXECUTE`].
///
/// The child execs here rather than through std: std's execvp would run a
/// file the kernel cannot execute (ENOEXEC) with /bin/sh, where execve
/// fails and the client is told `-`.
pub struct ExecImage {
    path: CString,
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    greeting: Option<&'static [u8]>,
    /// [`exec_failure_marker`], then "cannot execute PATH: error ",
    /// followed in the child by the errno and its name and meaning.
    exec_failed: Vec<u8>,
    /// tcpmuxd's own limit on open files, when the service sets none.
    fd_limit: Option<Rlimit>,
    umask: Option<rustix::fs::Mode>,
    /// The limits the service sets, soft and hard alike, but processes.
    limits: Vec<(Resource, Rlimit)>,
    /// The service's limit on processes, set after the user switch: set
    /// before it, a user already over the limit would make the switch
    /// mark the child (PF_NPROC_EXCEEDED) and its execve fail, after `+`.
    processes: Option<Rlimit>,
    /// tcpmuxd's own limit on processes with its hard limit raised to the
    /// service's, set before the switch when the service's is above it
    /// (the switch takes the capability to raise it).
    processes_room: Option<Rlimit>,
    /// The user and group to switch to, when they differ from tcpmuxd's.
    switch: Option<(Uid, Gid)>,
    /// The child stops itself before its first step, for tests of a start
    /// held from outside.
    #[cfg(test)]
    stop_first: bool,
}

// SAFETY: the pointers point into `_strings` and `path`, owned by the same
// value and never changed after `new`.
unsafe impl Send for ExecImage {}
// SAFETY: as above; nothing is mutated through a shared reference.
unsafe impl Sync for ExecImage {}

impl ExecImage {
    /// `credentials`: the program runs as that user, its group, and no
    /// supplementary group. Nothing to switch when tcpmuxd already runs as
    /// exactly that user and group (as root with `user = "root"` under a
    /// service manager that took its capabilities).
    pub fn new<'a>(
        command: &[String],
        environment: impl Iterator<Item = (&'a str, String)>,
        greeting: Option<&'static [u8]>,
        resources: &Resources,
        credentials: Option<&Credentials>,
    ) -> Result<Self, String> {
        let c = |s: String| {
            CString::new(s)
                .map_err(|_| "an argument or variable contains a NUL character".to_string())
        };
        let path = c(command[0].clone())?;
        let args: Vec<CString> = command.iter().cloned().map(c).collect::<Result<_, _>>()?;
        let vars: Vec<CString> = environment
            .map(|(k, v)| c(format!("{k}={v}")))
            .collect::<Result<_, _>>()?;
        let pointers = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        let argv = pointers(&args);
        let envp = pointers(&vars);
        let mut strings = args;
        strings.extend(vars);
        Ok(ExecImage {
            exec_failed: [
                exec_failure_marker().unwrap_or_default(),
                format!("cannot execute {}: error ", command[0]).as_bytes(),
            ]
            .concat(),
            path,
            _strings: strings,
            argv,
            envp,
            greeting,
            fd_limit: startup::children_fd_limit()
                .filter(|_| resources.limits.open_files.is_none()),
            umask: resources.umask.map(rustix::fs::Mode::from_raw_mode),
            limits: resources
                .limits
                .set()
                .filter(|(kind, _)| kind.resource() != Resource::Nproc)
                .map(|(kind, v)| (kind.resource(), both(v)))
                .collect(),
            processes: resources.limits.processes.map(both),
            processes_room: resources.limits.processes.and_then(|v| {
                let own = rustix::process::getrlimit(Resource::Nproc);
                let above = match (own.maximum, both(v).maximum) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(hard), Some(v)) => v > hard,
                };
                above.then_some(Rlimit {
                    current: own.current,
                    maximum: both(v).maximum,
                })
            }),
            switch: credentials
                .filter(|c| needs_switch(c))
                .map(|c| (Uid::from_raw(c.uid), Gid::from_raw(c.gid))),
            #[cfg(test)]
            stop_first: false,
        })
    }

    /// This image, with a child that stops itself (SIGSTOP) before it does
    /// anything.
    #[cfg(test)]
    pub fn stopping_before_anything(mut self) -> Self {
        self.stop_first = true;
        self
    }

    /// Whether the child changes its user or group before the program.
    pub fn switches_user(&self) -> bool {
        self.switch.is_some()
    }

    /// In the child: `stdio` (when given) as descriptors 0, 1 and 2; a
    /// session and process group of its own, and so no controlling
    /// terminal (a program must not reach the terminal tcpmuxd was started
    /// from, as with TIOCSTI, nor get its signals); the service's umask and
    /// limits, else the limit on open files tcpmuxd was started with; the
    /// user switch; `/` as working directory; the greeting; then the
    /// program. Returns only on a failure before the greeting, with its
    /// errno.
    ///
    /// Async-signal-safe and without allocation, locks or destructors: it
    /// runs in a child that may share the daemon's memory. The user switch
    /// is rustix's raw per-thread system calls, not libc's setuid, which
    /// would signal the daemon's other threads through memory the child
    /// shares (glibc's set*id broadcast).
    ///
    /// `reached`, when given, is set once every step before the greeting
    /// has succeeded: whoever started the child can tell one that was
    /// killed before it from one that exec'd.
    ///
    /// Called with every signal blocked (they are unblocked after the
    /// user switch, before the greeting): none is delivered while the
    /// child runs as the service's user in memory that is still dumpable.
    pub fn start(&self, stdio: Option<[RawFd; 3]>, reached: Option<&AtomicBool>) -> Errno {
        match self.before_greeting(stdio) {
            Err(errno) => errno,
            Ok(()) => match self.greeting {
                None => {
                    mark(reached);
                    self.execve()
                }
                Some(greeting) => {
                    mark(reached);
                    // SAFETY: the connection is this process's stdout.
                    if let Err(errno) = write_all(unsafe { BorrowedFd::borrow_raw(1) }, greeting) {
                        return errno;
                    }
                    let errno = self.execve();
                    self.cannot_execute(errno)
                }
            },
        }
    }

    fn before_greeting(&self, stdio: Option<[RawFd; 3]>) -> Result<(), Errno> {
        #[cfg(test)]
        if self.stop_first {
            // getpid, not libc's raise: in a child that shares the
            // daemon's memory, libc's idea of the current thread is the
            // parent's.
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::STOP,
            );
        }
        if let Some(fds) = stdio {
            for (target, fd) in (0..).zip(fds) {
                redirect(fd, target)?;
            }
        }
        // Every other descriptor is close-on-exec, but until the exec the
        // child would hold tcpmuxd's listeners and other clients'
        // connections, for as long as a start can be held. The child's
        // descriptor table is its own (no CLONE_FILES). Before Linux 5.9
        // (no close_range), close-on-exec alone.
        // SAFETY: close_range closes only this process's descriptors above 2.
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
        rustix::process::setsid()?;
        if let Some(limit) = &self.fd_limit {
            // Under a seccomp filter that denies setrlimit, the program
            // keeps tcpmuxd's limit: no reason to fail the session.
            let _ = setrlimit(Resource::Nofile, *limit);
        }
        if let Some(mask) = self.umask {
            rustix::process::umask(mask);
        }
        // A limit the configuration sets and the kernel refuses fails the
        // start: the program must not run without it. Set before the user
        // switch, while tcpmuxd's capability to raise them still holds.
        for (resource, limit) in &self.limits {
            setrlimit(*resource, *limit)?;
        }
        if let Some(room) = self.processes_room {
            setrlimit(Resource::Nproc, room)?;
        }
        if let Some((uid, gid)) = self.switch {
            rustix::thread::set_thread_groups(&[])?;
            rustix::thread::set_thread_res_gid(gid, gid, gid)?;
            rustix::thread::set_thread_res_uid(uid, uid, uid)?;
            // The change of user made the memory this child runs in (a
            // copy of tcpmuxd's unless fs.suid_dumpable is 0: launch::spawn)
            // as dumpable as fs.suid_dumpable says: a signal the new user
            // sends that dumps core would write it to disk. Signals are
            // still blocked here, so none is delivered before this.
            rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
        }
        // The limit on processes counts the user's processes at fork, not
        // at exec: the program starts, and its own forks are refused.
        if let Some(limit) = self.processes {
            setrlimit(Resource::Nproc, limit)?;
        }
        rustix::process::chdir(c"/")?;
        // The program starts with no signal blocked. One sent while they
        // were is delivered now, before the greeting, to a child whose
        // memory is not dumpable: its client hears no `+`.
        // SAFETY: sigprocmask on a local, emptied set.
        unsafe {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        }
        Ok(())
    }

    /// After the greeting: says why on stderr and exits
    /// [`EXIT_CANNOT_EXECUTE`].
    fn cannot_execute(&self, errno: Errno) -> ! {
        // SAFETY: stderr is the pipe tcpmuxd logs.
        let stderr = unsafe { BorrowedFd::borrow_raw(2) };
        let mut digits = [0u8; 12];
        let _ = write_all(stderr, &self.exec_failed);
        let _ = write_all(stderr, decimal(errno.raw_os_error(), &mut digits));
        if let Some(text) = exec_error_text(errno) {
            let _ = write_all(stderr, b" (");
            let _ = write_all(stderr, text.as_bytes());
            let _ = write_all(stderr, b")");
        }
        let _ = write_all(stderr, b"\n");
        // SAFETY: _exit ends the child without running anything of the
        // parent's (no atexit handlers, no buffered output).
        unsafe { libc::_exit(EXIT_CANNOT_EXECUTE) }
    }

    /// Returns only if execve failed, with its errno.
    fn execve(&self) -> Errno {
        // SAFETY: NUL-terminated arrays of pointers to NUL-terminated
        // strings, all alive as long as `self`.
        unsafe { libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
        // SAFETY: errno of this thread, just set by the failed execve.
        Errno::from_raw_os_error(unsafe { *libc::__errno_location() })
    }
}

/// A limit of `v` (soft and hard), or none at [`INFINITY`].
fn both(v: u64) -> Rlimit {
    let v = (v != INFINITY).then_some(v);
    Rlimit {
        current: v,
        maximum: v,
    }
}

fn mark(reached: Option<&AtomicBool>) {
    if let Some(reached) = reached {
        reached.store(true, Ordering::Release);
    }
}

/// Makes `fd` descriptor `target`, open across exec.
fn redirect(fd: RawFd, target: RawFd) -> Result<(), Errno> {
    // SAFETY: `fd` is a descriptor the parent keeps open until the child
    // has exec'd or exited.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    if std::os::fd::AsRawFd::as_raw_fd(&fd) == target {
        // dup2 onto itself keeps close-on-exec: clear it.
        let flags = rustix::io::fcntl_getfd(fd)?;
        return rustix::io::fcntl_setfd(fd, flags - FdFlags::CLOEXEC);
    }
    match target {
        0 => rustix::stdio::dup2_stdin(fd),
        1 => rustix::stdio::dup2_stdout(fd),
        _ => rustix::stdio::dup2_stderr(fd),
    }
}

/// Writes all of `bytes`, with nothing but write(2), and without a path
/// that could panic.
fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> Result<(), Errno> {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `n` in decimal, in `buf`, without allocating.
fn decimal(n: i32, buf: &mut [u8; 12]) -> &[u8] {
    let mut i = buf.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        let mut buf = [0u8; 12];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(8, &mut buf), b"8");
        assert_eq!(decimal(-2147483648, &mut buf), b"-2147483648");
        assert_eq!(decimal(1234, &mut buf), b"1234");
    }

    #[test]
    fn exec_errors_have_their_names() {
        assert_eq!(
            exec_error_text(Errno::NOEXEC),
            Some("ENOEXEC: exec format error")
        );
        assert_eq!(
            exec_error_text(Errno::TOOBIG),
            Some("E2BIG: argument list too long")
        );
        assert_eq!(exec_error_text(Errno::PIPE), None);
    }

    #[test]
    fn the_exec_failure_marker_is_random_and_fixed() {
        let marker = exec_failure_marker().unwrap();
        assert_eq!(marker.len(), 33);
        assert!(!marker.contains(&b'\n'));
        assert_eq!(exec_failure_marker(), Some(marker));
    }
}
