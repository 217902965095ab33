//! The backend of the relay benchmarks: echoes every byte back, zero-copy
//! (splice(2) from the socket into a pipe and back), until the client's
//! end of input, then closes. The same backend behind every forwarder, so
//! that what differs between them is the forwarder.
//!
//! usage: echo-backend tcp ADDR      a TCP listener
//!        echo-backend unix PATH     a Unix stream listener
//!        echo-backend pass PATH     a Unix SOCK_SEQPACKET listener that
//!                                   receives connections from tcpmuxd's
//!                                   pass launcher (one descriptor per
//!                                   message, SCM_RIGHTS) and echoes on them
//!        echo-backend greet PATH    as pass, but writes one line ("hello")
//!                                   on each connection and closes it, at
//!                                   once: the least a daemon can do
//!
//! A pool of threads serves the connections (no thread started per
//! connection while one is idle): the connection rate measures the
//! forwarder, not this.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

/// Threads started at once; more are started when all are busy.
const WORKERS: usize = 64;

/// Bytes moved by one splice call.
const CHUNK: usize = 1 << 20;

/// Largest pass message payload read (the variables; not used here).
const MAX_PAYLOAD: usize = 4096;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, at) = match args.as_slice() {
        [mode, at] => (mode.as_str(), at.as_str()),
        _ => usage(),
    };
    let pool = Pool::new();
    let jobs = pool.clone();
    match mode {
        "tcp" => {
            let listener = std::net::TcpListener::bind(at).unwrap_or_else(|e| fail(at, e));
            for s in listener.incoming().flatten() {
                jobs.serve(OwnedFd::from(s));
            }
        }
        "unix" => {
            let _ = std::fs::remove_file(at);
            let listener =
                std::os::unix::net::UnixListener::bind(at).unwrap_or_else(|e| fail(at, e));
            for s in listener.incoming().flatten() {
                jobs.serve(OwnedFd::from(s));
            }
        }
        "pass" => receive_passed(at, Some(jobs)),
        "greet" => receive_passed(at, None),
        _ => usage(),
    }
}

/// Threads that echo, started as needed and kept: a connection is served
/// by an idle one, or by a new one when none is idle, so that no
/// connection ever waits for another to end (a peer that leaves its
/// backend connections open must not stall the next relay measured).
#[derive(Clone)]
struct Pool {
    queue: Arc<Mutex<mpsc::Receiver<OwnedFd>>>,
    jobs: mpsc::Sender<OwnedFd>,
    idle: Arc<AtomicUsize>,
}

impl Pool {
    fn new() -> Pool {
        let (jobs, queue) = mpsc::channel::<OwnedFd>();
        let pool = Pool {
            queue: Arc::new(Mutex::new(queue)),
            jobs,
            idle: Arc::new(AtomicUsize::new(0)),
        };
        for _ in 0..WORKERS {
            pool.add_worker();
        }
        pool
    }

    fn add_worker(&self) {
        let (queue, idle) = (Arc::clone(&self.queue), Arc::clone(&self.idle));
        idle.fetch_add(1, Ordering::SeqCst);
        std::thread::spawn(move || {
            loop {
                let next = match queue.lock() {
                    Ok(q) => q.recv(),
                    Err(_) => return,
                };
                let Ok(fd) = next else { return };
                idle.fetch_sub(1, Ordering::SeqCst);
                echo(&fd);
                drop(fd);
                idle.fetch_add(1, Ordering::SeqCst);
            }
        });
    }

    fn serve(&self, fd: OwnedFd) {
        if self.idle.load(Ordering::SeqCst) == 0 {
            self.add_worker();
        }
        let _ = self.jobs.send(fd);
    }
}

fn usage() -> ! {
    eprintln!("usage: echo-backend tcp ADDR | unix PATH | pass PATH | greet PATH");
    std::process::exit(2);
}

fn fail(at: &str, e: std::io::Error) -> ! {
    eprintln!("echo-backend: {at}: {e}");
    std::process::exit(71);
}

/// Echoes until EOF: socket -> pipe -> socket, then shuts down writing.
fn echo(socket: &OwnedFd) {
    let mut pipe = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two descriptors, owned right below.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return;
    }
    // SAFETY: fresh descriptors from pipe2, owned by nothing else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    // SAFETY: plain descriptor arguments.
    unsafe {
        libc::fcntl(
            write_end.as_raw_fd(),
            libc::F_SETPIPE_SZ,
            CHUNK as libc::c_int,
        )
    };
    let fd = socket.as_raw_fd();
    // A passed connection may come non-blocking: this thread waits on it.
    // SAFETY: plain descriptor arguments.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    loop {
        // SAFETY: valid descriptors, null offsets (sockets and pipes).
        let n = unsafe {
            libc::splice(
                fd,
                std::ptr::null_mut(),
                write_end.as_raw_fd(),
                std::ptr::null_mut(),
                CHUNK,
                libc::SPLICE_F_MOVE,
            )
        };
        if n <= 0 {
            break;
        }
        let mut left = n as usize;
        while left > 0 {
            // SAFETY: as above.
            let m = unsafe {
                libc::splice(
                    read_end.as_raw_fd(),
                    std::ptr::null_mut(),
                    fd,
                    std::ptr::null_mut(),
                    left,
                    libc::SPLICE_F_MOVE,
                )
            };
            if m <= 0 {
                return;
            }
            left -= m as usize;
        }
    }
    // SAFETY: a valid socket.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Accepts tcpmuxd's connections to the pass socket; each message brings
/// one client's connection, echoed on by `jobs`, or without, greeted and
/// closed at once.
fn receive_passed(path: &str, jobs: Option<Pool>) {
    let _ = std::fs::remove_file(path);
    // SAFETY: plain socket calls on descriptors owned right after.
    let listener =
        unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if listener < 0 {
        fail(path, std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created.
    let listener = unsafe { OwnedFd::from_raw_fd(listener) };
    // SAFETY: a zeroed sockaddr_un is valid; the path is copied within it.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.len() >= addr.sun_path.len() {
        fail(path, std::io::Error::other("path too long"));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(path.bytes()) {
        *d = s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: a valid socket and address.
    if unsafe { libc::bind(listener.as_raw_fd(), (&raw const addr).cast(), len) } != 0
        || unsafe { libc::listen(listener.as_raw_fd(), 64) } != 0
    {
        fail(path, std::io::Error::last_os_error());
    }
    loop {
        // SAFETY: a valid listening socket.
        let conn = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if conn < 0 {
            continue;
        }
        // SAFETY: accept4 returned a new descriptor.
        let conn = unsafe { OwnedFd::from_raw_fd(conn) };
        let jobs = jobs.clone();
        std::thread::spawn(move || {
            while let Some(fd) = receive_one(&conn) {
                if let Some(fd) = fd {
                    match &jobs {
                        Some(jobs) => jobs.serve(fd),
                        None => greet(fd),
                    }
                }
            }
        });
    }
}

/// Writes one line on a passed connection and closes it.
fn greet(fd: OwnedFd) {
    let line = b"hello\r\n";
    // SAFETY: a valid socket and buffer; a failure only loses the line.
    unsafe {
        libc::send(
            fd.as_raw_fd(),
            line.as_ptr().cast(),
            line.len(),
            libc::MSG_NOSIGNAL,
        );
    }
}

/// One message: `Some(Some(fd))` with a descriptor, `Some(None)` without
/// one, `None` at the end of the connection.
fn receive_one(conn: &OwnedFd) -> Option<Option<OwnedFd>> {
    let mut payload = [0u8; MAX_PAYLOAD];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // Room for a few descriptors, so that none is left unseen if more came.
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; its buffers outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: as above.
    let n = unsafe { libc::recvmsg(conn.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n <= 0 {
        return None;
    }
    let mut first = None;
    // SAFETY: walking the control messages recvmsg filled in.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = OwnedFd::from_raw_fd(data.add(i).read_unaligned());
                    if first.is_none() {
                        first = Some(fd);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Some(first)
}
