//! The dispatch floor: the least a TCPMUX server can do to start a
//! plus-mode service. One thread accepts a connection, reads the request
//! line, answers `+`, and starts /bin/cat on the connection with
//! posix_spawn (a vfork-style clone in glibc: no copy of the parent's
//! memory map). Children are reaped by the kernel (SIGCHLD ignored), so
//! nothing waits for them.
//!
//! usage: floor-dispatch ADDR

use std::ffi::CStr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

const PROGRAM: &CStr = c"/bin/cat";

fn main() {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: floor-dispatch ADDR");
        std::process::exit(2);
    };
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("floor-dispatch: {addr}: {e}");
            std::process::exit(71);
        }
    };
    // SAFETY: setting a disposition before any thread or child exists.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        if read_line(&mut stream)
            && stream.write_all(b"+\r\n").is_ok()
            && let Err(e) = spawn_on(&stream)
        {
            eprintln!("floor-dispatch: posix_spawn {PROGRAM:?}: {e}");
        }
        // Our copy of the connection closes here; the child keeps its own.
    }
}

/// Reads the request line, and nothing behind it (which is the service's):
/// peek, then read exactly up to the LF, as tcpmuxd does.
fn read_line(stream: &mut TcpStream) -> bool {
    let mut line = [0u8; 512];
    let Ok(n) = stream.peek(&mut line) else {
        return false;
    };
    match line[..n].iter().position(|&b| b == b'\n') {
        Some(lf) => stream.read_exact(&mut line[..=lf]).is_ok(),
        // A line in pieces: the clients measured never send one.
        None => false,
    }
}

fn spawn_on(stream: &TcpStream) -> std::io::Result<()> {
    let fd = stream.as_raw_fd();
    let argv = [c"cat".as_ptr().cast_mut(), std::ptr::null_mut()];
    let envp = [std::ptr::null_mut()];
    // SAFETY: the attribute and file-action objects are initialised before
    // use and destroyed after; argv and envp are NULL-terminated arrays of
    // C strings that outlive the call.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        libc::posix_spawn_file_actions_init(&mut actions);
        libc::posix_spawn_file_actions_adddup2(&mut actions, fd, 0);
        libc::posix_spawn_file_actions_adddup2(&mut actions, fd, 1);
        libc::posix_spawnattr_init(&mut attr);
        // The child gets SIGCHLD's default back: an ignored SIGCHLD would
        // otherwise be inherited across exec.
        let mut defaults: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut defaults);
        libc::sigaddset(&mut defaults, libc::SIGCHLD);
        libc::posix_spawnattr_setsigdefault(&mut attr, &defaults);
        libc::posix_spawnattr_setflags(&mut attr, libc::POSIX_SPAWN_SETSIGDEF as libc::c_short);
        let mut pid = 0;
        let rc = libc::posix_spawn(
            &mut pid,
            PROGRAM.as_ptr(),
            &actions,
            &attr,
            argv.as_ptr(),
            envp.as_ptr(),
        );
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::from_raw_os_error(rc))
        }
    }
}
