//! tcpmux-warm: the program of a warm session unit. tcpmuxd's systemd
//! launcher starts it ahead of need as `tcpmux-NAME@INSTANCE.service`, with
//! the service's command as its arguments and one end of a
//! `SOCK_SEQPACKET` socket as its standard input, so that the unit's whole
//! sandbox is in place before any client comes. It then only waits:
//!
//! - for EOF (tcpmuxd went away or retired the unit): it exits at once;
//! - for a connection: it makes it its standard input and output, in
//!   blocking mode, with `REMOTE_ADDR`, `REMOTE_PORT`, `LOCAL_ADDR` and
//!   `LOCAL_PORT` set, and execs the command. When the hand-over names the
//!   connection (systemd 257 and later give a cold unit's program the
//!   connection as a named `LISTEN_FDS` descriptor), the program gets the
//!   same: the connection as fd 3 too, with `LISTEN_FDS=1`,
//!   `LISTEN_FDNAMES=NAME` and `LISTEN_PID` (the helper's pid, which exec
//!   keeps).
//!
//! The protocol is in `src/launch/handover.rs`. No async runtime, no
//! allocation after the hand-over but for the exec's arrays.
//!
//! Usage (by tcpmuxd only): tcpmux-warm PROGRAM [ARGUMENT...]

use rustix::fs::{Access, Mode, OFlags};
use rustix::io::Errno;
use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
// The protocol's one source, compiled in rather than linked from tcpmuxd's
// library: the library would bring its unwinding tables along and triple
// the helper's size.
#[path = "../launch/handover.rs"]
#[allow(dead_code)]
mod handover;
use handover::{HANDOVER_FDS, LISTEN_FD, LISTEN_VARIABLES, MAX_MESSAGE, READY, VARIABLES};
// What execve runs by itself, as tcpmuxd's own program check says it.
#[path = "../exec_format.rs"]
mod exec_format;

/// Exit status when the program cannot be run here (sysexits EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: i32 = 69;
/// Exit status for a hand-over that is not one (sysexits EX_PROTOCOL).
const EXIT_PROTOCOL: i32 = 76;
/// Exit status when exec failed, as a shell's for a command it cannot run.
const EXIT_EXEC_FAILED: i32 = 127;

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let command: Vec<OsString> = std::env::args_os().skip(1).collect();
    // SAFETY: fd 0 is open for the life of the process (systemd passed it).
    let stdin = unsafe { BorrowedFd::borrow_raw(0) };
    // The control socket moves out of the way of the connection, and is
    // close-on-exec: the program must not inherit it.
    let mut control = match rustix::io::fcntl_dupfd_cloexec(stdin, 3) {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("tcpmux-warm: standard input: {e}");
            return EXIT_PROTOCOL;
        }
    };
    let Some(program) = command.first() else {
        let _ = report(control.as_fd(), "no program given");
        return EXIT_UNAVAILABLE;
    };
    let path = program.to_string_lossy().into_owned();
    // Checked here, inside the sandbox, where it will run: no `+` for a
    // client whose program cannot start.
    let mut image = match open_program(program) {
        Ok(fd) => fd,
        Err(cause) => {
            let text = format!("program {path}: {cause}");
            if report(control.as_fd(), &text).is_err() {
                eprintln!("tcpmux-warm: {text}");
            }
            return EXIT_UNAVAILABLE;
        }
    };
    if handover::send(control.as_fd(), READY, &[], false).is_err() {
        // tcpmuxd is gone already.
        return 0;
    }

    let mut buf = [0u8; MAX_MESSAGE];
    let (n, fds) = loop {
        match handover::recv(&control, &mut buf, false) {
            Err(e) if e.raw_os_error() == Some(Errno::INTR.raw_os_error()) => continue,
            // tcpmuxd closed its end before reading all we said: gone too.
            Err(e) if e.raw_os_error() == Some(Errno::CONNRESET.raw_os_error()) => return 0,
            Err(e) => {
                eprintln!("tcpmux-warm: receiving the connection: {e}");
                return EXIT_PROTOCOL;
            }
            Ok(got) => break got,
        }
    };
    if n == 0 && fds.is_empty() {
        return 0;
    }
    let given = match handover::parse_handover(&buf[..n]) {
        Ok(v) if fds.len() == HANDOVER_FDS => v,
        Ok(_) => {
            eprintln!("tcpmux-warm: hand-over with {} descriptors", fds.len());
            return EXIT_PROTOCOL;
        }
        Err(e) => {
            eprintln!("tcpmux-warm: {e}");
            return EXIT_PROTOCOL;
        }
    };
    let mut fds = fds.into_iter();
    let (Some(mut connection), Some(mut status)) = (fds.next(), fds.next()) else {
        return EXIT_PROTOCOL;
    };
    let passed = given.fd_name.is_some();
    if passed {
        // fd 3 becomes the connection: whichever of the helper's own
        // descriptors is there moves away first.
        if let Err(e) = move_off(
            LISTEN_FD,
            &mut [&mut control, &mut image, &mut status, &mut connection],
        ) {
            let _ = report(status.as_fd(), &format!("freeing fd {LISTEN_FD}: {e}"));
            return EXIT_EXEC_FAILED;
        }
    }
    if let Err(e) = become_connection(&connection, passed) {
        let what = if passed {
            "stdin, stdout and fd 3"
        } else {
            "stdin and stdout"
        };
        let _ = report(status.as_fd(), &format!("the connection as {what}: {e}"));
        return EXIT_EXEC_FAILED;
    }
    drop(connection);
    let cause = exec(&image, &command, &given);
    let _ = report(status.as_fd(), &format!("exec {path}: {cause}"));
    EXIT_EXEC_FAILED
}

fn report(socket: BorrowedFd<'_>, text: &str) -> std::io::Result<()> {
    handover::send(socket, &handover::error_message(text), &[], false)
}

/// Opens the program to exec it later, once it is known to be a regular,
/// executable file in a format the kernel runs.
fn open_program(program: &OsString) -> Result<OwnedFd, String> {
    let path = program.as_os_str();
    let describe = |e: Errno| match e {
        Errno::NOENT => "not found".to_string(),
        Errno::ACCESS => "permission denied".to_string(),
        e => e.to_string(),
    };
    // Readable to check its format; a program that may only be executed is
    // opened by path alone.
    let (fd, readable) =
        match rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
            Ok(fd) => (fd, true),
            Err(Errno::ACCESS) => (
                rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
                    .map_err(describe)?,
                false,
            ),
            Err(e) => return Err(describe(e)),
        };
    let stat = rustix::fs::fstat(&fd).map_err(describe)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err("not a regular file".into());
    }
    rustix::fs::access(path, Access::EXEC_OK).map_err(|_| "not executable".to_string())?;
    if readable {
        let mut head = [0u8; exec_format::HEAD_LEN];
        let n = rustix::io::pread(&fd, &mut head, 0).map_err(describe)?;
        if !exec_format::is_executable_format(&head[..n]) {
            return Err(exec_format::NOT_EXECUTABLE_FORMAT.into());
        }
    }
    Ok(fd)
}

/// Moves whichever of `fds` is descriptor `target` to another number,
/// close-on-exec, so that none of them is `target`.
fn move_off(target: RawFd, fds: &mut [&mut OwnedFd]) -> rustix::io::Result<()> {
    for fd in fds.iter_mut() {
        if fd.as_raw_fd() == target {
            // The old one is closed as it is replaced.
            **fd = rustix::io::fcntl_dupfd_cloexec(&**fd, target + 1)?;
        }
    }
    Ok(())
}

/// Makes `connection` fds 0 and 1, and [`LISTEN_FD`] too when `passed`, in
/// blocking mode.
fn become_connection(connection: &OwnedFd, passed: bool) -> rustix::io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(connection)?;
    rustix::fs::fcntl_setfl(connection, flags - OFlags::NONBLOCK)?;
    let targets: &[RawFd] = if passed { &[0, 1, LISTEN_FD] } else { &[0, 1] };
    for &target in targets {
        // SAFETY: fds 0 and 1 are ours (the control socket's copies, moved
        // away above), and fd 3 none of the helper's own (moved off it);
        // dup2 replaces them and clears close-on-exec. Never closed here:
        // they are the program's.
        let mut fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(target) };
        let result = rustix::io::dup2(connection, &mut fd);
        std::mem::forget(fd);
        result?;
    }
    Ok(())
}

/// Execs the program with the helper's own environment (what systemd gave
/// the unit), the connection's variables and, when the connection is
/// passed as a named descriptor, the `LISTEN_*` variables systemd sets for
/// it. Returns only on failure.
fn exec(image: &OwnedFd, command: &[OsString], handover: &handover::Handover) -> String {
    let c = |bytes: &[u8]| CString::new(bytes).map_err(|_| "a NUL character".to_string());
    let argv: Result<Vec<CString>, String> = command.iter().map(|a| c(a.as_bytes())).collect();
    let replaced = |name: &[u8]| {
        VARIABLES.iter().any(|v| name == v.as_bytes())
            || (handover.fd_name.is_some() && LISTEN_VARIABLES.iter().any(|v| name == v.as_bytes()))
    };
    let mut env: Vec<Vec<u8>> = std::env::vars_os()
        .filter(|(k, _)| !replaced(k.as_bytes()))
        .map(|(k, v)| {
            let mut entry = k.into_vec();
            entry.push(b'=');
            entry.extend(v.into_vec());
            entry
        })
        .collect();
    env.extend(
        handover
            .variables
            .iter()
            .map(|(k, v)| format!("{k}={v}").into_bytes()),
    );
    if let Some(name) = &handover.fd_name {
        // As systemd sets them for ExtraFileDescriptors=. The pid is the
        // helper's, which the program keeps.
        env.push(format!("LISTEN_PID={}", std::process::id()).into_bytes());
        env.push(b"LISTEN_FDS=1".to_vec());
        env.push(format!("LISTEN_FDNAMES={name}").into_bytes());
    }
    let envp: Result<Vec<CString>, String> = env.iter().map(|e| c(e)).collect();
    let (argv, envp) = match (argv, envp) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return format!("an argument or variable contains {e}"),
    };
    let pointers = |strings: &[CString]| {
        strings
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect::<Vec<_>>()
    };
    let (argp, envpp) = (pointers(&argv), pointers(&envp));
    // The program gets the default disposition of SIGPIPE, as under a
    // cold start; Rust's runtime ignores it, and exec would keep that.
    // SAFETY: setting a signal's disposition to its default.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // SAFETY: NUL-terminated arrays of pointers to NUL-terminated strings,
    // alive until exec returns.
    unsafe { libc::fexecve(image.as_raw_fd(), argp.as_ptr(), envpp.as_ptr()) };
    let mut error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ENOENT) {
        // A script run through a close-on-exec descriptor: its interpreter
        // could not reopen it. The path is the one checked at readiness.
        // SAFETY: as above.
        unsafe { libc::execve(argv[0].as_ptr(), argp.as_ptr(), envpp.as_ptr()) };
        error = std::io::Error::last_os_error();
    }
    error.to_string()
}
