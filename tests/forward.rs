//! `launcher = "forward"`: the real daemon relays each connection to a
//! backend the test runs on loopback, over TCP or a Unix socket.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

/// A backend's side of one forwarded connection.
trait Conn: Read + Write + Send + 'static {
    fn shut_write(&self);
    fn split(&self) -> Box<dyn Conn>;
    fn set_timeout(&self, d: Duration);
    fn fd(&self) -> i32;
}

impl Conn for TcpStream {
    fn shut_write(&self) {
        self.shutdown(Shutdown::Write).expect("shutdown");
    }
    fn split(&self) -> Box<dyn Conn> {
        Box::new(self.try_clone().expect("clone"))
    }
    fn set_timeout(&self, d: Duration) {
        self.set_read_timeout(Some(d)).unwrap();
        self.set_write_timeout(Some(d)).unwrap();
    }
    fn fd(&self) -> i32 {
        self.as_raw_fd()
    }
}

impl Conn for UnixStream {
    fn shut_write(&self) {
        self.shutdown(Shutdown::Write).expect("shutdown");
    }
    fn split(&self) -> Box<dyn Conn> {
        Box::new(self.try_clone().expect("clone"))
    }
    fn set_timeout(&self, d: Duration) {
        self.set_read_timeout(Some(d)).unwrap();
        self.set_write_timeout(Some(d)).unwrap();
    }
    fn fd(&self) -> i32 {
        self.as_raw_fd()
    }
}

/// Where a test's backend listens.
#[derive(Clone, Copy)]
enum Kind {
    Tcp,
    Unix,
}

/// A backend on loopback: each connection goes to `handler` on a thread
/// of its own.
struct Backend {
    /// The `forward` value that reaches it.
    address: String,
    _dir: tempfile::TempDir,
}

impl Backend {
    fn start(kind: Kind, handler: impl Fn(Box<dyn Conn>) + Send + Sync + 'static) -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let handler = std::sync::Arc::new(handler);
        let address = match kind {
            Kind::Tcp => {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let address = l.local_addr().unwrap().to_string();
                std::thread::spawn(move || {
                    for c in l.incoming().flatten() {
                        let h = std::sync::Arc::clone(&handler);
                        c.set_timeout(WAIT);
                        std::thread::spawn(move || h(Box::new(c)));
                    }
                });
                address
            }
            Kind::Unix => {
                let path = dir.path().join("backend.sock");
                let l = UnixListener::bind(&path).unwrap();
                std::thread::spawn(move || {
                    for c in l.incoming().flatten() {
                        let h = std::sync::Arc::clone(&handler);
                        c.set_timeout(WAIT);
                        std::thread::spawn(move || h(Box::new(c)));
                    }
                });
                path.to_string_lossy().into_owned()
            }
        };
        Backend { address, _dir: dir }
    }
}

/// A configuration with one forwarded service `fwd` to `to`, with
/// `extra` keys, after `head` (`[tcpmux]` keys).
fn config(head: &str, to: &str, extra: &str) -> String {
    format!(
        "[tcpmux]\nname_timeout = \"10s\"\n{head}\n\
         [[service]]\nname = \"fwd\"\nlauncher = \"forward\"\nforward = \"{to}\"\n{extra}\n"
    )
}

/// Connects, asks for `fwd` and reads the `+` line.
fn open(d: &Daemon) -> TcpStream {
    let mut s = d.connect();
    s.write_all(b"fwd\r\n").unwrap();
    assert_eq!(read_line(&mut s), b"+\r\n", "{}", d.log());
    s
}

/// Reads all of `conn` until its end (or an error, returned).
fn read_all(conn: &mut dyn Read) -> (Vec<u8>, Option<std::io::Error>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// A reproducible stream of bytes (xorshift), written and checked in
/// blocks, so that neither side keeps a copy of it.
struct Pattern {
    state: u64,
    block: Vec<u8>,
    at: usize,
}

const BLOCK: usize = 64 * 1024;

impl Pattern {
    fn new(seed: u64) -> Pattern {
        let mut p = Pattern {
            state: seed | 1,
            block: vec![0; BLOCK],
            at: 0,
        };
        p.next_block();
        p
    }

    fn next_block(&mut self) {
        for chunk in self.block.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes());
        }
        self.at = 0;
    }

    /// Writes `total` bytes of the stream.
    fn write(mut self, to: &mut dyn Write, total: usize) {
        let mut left = total;
        while left > 0 {
            let n = left.min(BLOCK);
            to.write_all(&self.block[..n]).expect("write the stream");
            left -= n;
            self.next_block();
        }
    }

    /// Reads the stream to its end: whether it was `total` bytes, each
    /// the one expected.
    fn check(mut self, from: &mut dyn Read, total: usize) -> Result<(), String> {
        let mut buf = vec![0u8; BLOCK];
        let mut seen = 0usize;
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return Err(format!("read after {seen} bytes: {e}")),
            };
            let mut got = &buf[..n];
            while !got.is_empty() {
                let take = got.len().min(BLOCK - self.at);
                if got[..take] != self.block[self.at..self.at + take] {
                    return Err(format!("bytes differ near offset {seen}"));
                }
                seen += take;
                self.at += take;
                got = &got[take..];
                if self.at == BLOCK {
                    self.next_block();
                }
            }
        }
        match seen == total {
            true => Ok(()),
            false => Err(format!("{seen} bytes, not {total}")),
        }
    }
}

const BULK: usize = 64 * 1024 * 1024;

fn large_transfers_both_ways(kind: Kind) {
    let (done, report) = mpsc::channel();
    let backend = Backend::start(kind, move |mut c| {
        // The backend's stream out while it checks the client's.
        let mut out = c.split();
        let writer = std::thread::spawn(move || {
            Pattern::new(2).write(&mut *out, BULK);
            out.shut_write();
        });
        let checked = Pattern::new(1).check(&mut *c, BULK);
        writer.join().unwrap();
        done.send(checked).unwrap();
    });
    let d = Daemon::start(&config("", &backend.address, ""));
    let mut s = open(&d);
    let mut out = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        Pattern::new(1).write(&mut out, BULK);
        out.shutdown(Shutdown::Write).unwrap();
    });
    assert_eq!(Pattern::new(2).check(&mut s, BULK), Ok(()), "client side");
    writer.join().unwrap();
    assert_eq!(report.recv_timeout(WAIT * 3), Ok(Ok(())), "backend side");
    assert!(d.wait_log("session ended, forwarded to"), "{}", d.log());
    let log = d.log();
    assert!(log.contains("both sides closed"), "{log}");
    assert!(
        log.contains(&format!("{BULK} bytes from the client, {BULK} bytes to it")),
        "{log}"
    );
}

#[test]
fn large_transfers_both_ways_at_once_arrive_whole_through_a_tcp_backend() {
    large_transfers_both_ways(Kind::Tcp);
}

#[test]
fn large_transfers_both_ways_at_once_arrive_whole_through_a_unix_backend() {
    large_transfers_both_ways(Kind::Unix);
}

/// A backend that reports everything it receives until the client's end.
fn recording_backend(kind: Kind) -> (Backend, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel();
    let backend = Backend::start(kind, move |mut c| {
        let (got, _) = read_all(&mut *c);
        let _ = tx.send(got);
    });
    (backend, rx)
}

#[test]
fn bytes_sent_with_the_request_line_reach_the_backend_first_in_order() {
    for kind in [Kind::Tcp, Kind::Unix] {
        let (backend, got) = recording_backend(kind);
        let d = Daemon::start(&config("", &backend.address, ""));
        let mut s = d.connect();
        // One write: the name and the first bytes of the service's protocol.
        s.write_all(b"fwd\r\nearly bytes\n").unwrap();
        assert_eq!(read_line(&mut s), b"+\r\n", "{}", d.log());
        s.write_all(b"later bytes\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(
            got.recv_timeout(WAIT).unwrap(),
            b"early bytes\nlater bytes\n"
        );
    }
}

#[test]
fn the_client_ending_its_writing_still_receives_the_backends_remainder() {
    for kind in [Kind::Tcp, Kind::Unix] {
        let (tx, rx) = mpsc::channel();
        let backend = Backend::start(kind, move |mut c| {
            let (got, _) = read_all(&mut *c);
            // The client's end came; the backend still answers.
            c.write_all(b"remainder after your end\n").unwrap();
            c.shut_write();
            tx.send(got).unwrap();
        });
        let d = Daemon::start(&config("", &backend.address, ""));
        let mut s = open(&d);
        s.write_all(b"question\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), b"question\n");
        assert_eq!(read_to_end(&mut s), b"remainder after your end\n");
        assert!(d.wait_log("both sides closed"), "{}", d.log());
    }
}

#[test]
fn the_backend_ending_its_writing_still_receives_the_clients_remainder() {
    for kind in [Kind::Tcp, Kind::Unix] {
        let (tx, rx) = mpsc::channel();
        let backend = Backend::start(kind, move |mut c| {
            c.write_all(b"all I have to say\n").unwrap();
            c.shut_write();
            tx.send(read_all(&mut *c).0).unwrap();
        });
        let d = Daemon::start(&config("", &backend.address, ""));
        let mut s = open(&d);
        // The backend's end reaches the client while it still sends.
        assert_eq!(read_to_end(&mut s), b"all I have to say\n");
        s.write_all(b"and yet the client goes on\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(
            rx.recv_timeout(WAIT).unwrap(),
            b"and yet the client goes on\n"
        );
        assert!(d.wait_log("both sides closed"), "{}", d.log());
    }
}

/// Closes `fd`'s connection with a reset (SO_LINGER 0).
fn set_linger_zero(fd: i32) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket the test owns, with a linger struct.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    assert_eq!(r, 0);
}

#[test]
fn a_reset_by_the_client_resets_the_backends_connection() {
    let (tx, rx) = mpsc::channel();
    let backend = Backend::start(Kind::Tcp, move |mut c| {
        let (got, err) = read_all(&mut *c);
        tx.send((got, err.map(|e| e.kind()))).unwrap();
    });
    let d = Daemon::start(&config("", &backend.address, ""));
    let mut s = open(&d);
    s.write_all(b"before the reset\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    set_linger_zero(s.as_raw_fd());
    drop(s);
    let (got, err) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(got, b"before the reset\n");
    assert_eq!(err, Some(ErrorKind::ConnectionReset), "{}", d.log());
    assert!(d.wait_log("reset by the client"), "{}", d.log());
}

/// A client that resets while its pair waits for a backend that takes
/// nothing (tcpmuxd holds bytes for it, and reads nothing more from the
/// client) is seen all the same: the backend's connection is reset and the
/// pair ends, its place given back, without waiting for the backend.
#[test]
fn a_reset_by_the_client_is_passed_on_while_the_backend_takes_nothing() {
    let (tx, rx) = mpsc::channel();
    let backend = Backend::start(Kind::Tcp, move |c| {
        // Reads nothing: waits for its connection to fail.
        // SAFETY: the connection's descriptor, open while `c` lives.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(c.fd()) };
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::empty(),
        )];
        let wait = rustix::event::Timespec::try_from(WAIT).unwrap();
        let _ = rustix::event::poll(&mut fds, Some(&wait));
        let err = rustix::net::sockopt::socket_error(fd).unwrap().err();
        tx.send(err.map(|e| std::io::Error::from(e).kind()))
            .unwrap();
    });
    let d = Daemon::start(&config("", &backend.address, ""));
    let s = open(&d);
    fill(&s, &d);
    set_linger_zero(s.as_raw_fd());
    drop(s);
    assert_eq!(
        rx.recv_timeout(2 * WAIT).unwrap(),
        Some(ErrorKind::ConnectionReset),
        "{}",
        d.log()
    );
    assert!(d.wait_log("reset by the client"), "{}", d.log());
}

/// A forwarded pair is relayed by tcpmuxd itself and ends when it stops:
/// both connections are reset, so that neither side takes a stream cut
/// short for a complete one, and the log says so.
#[test]
fn stopping_tcpmuxd_resets_its_forwarded_pairs() {
    let (tx, rx) = mpsc::channel();
    let backend = Backend::start(Kind::Tcp, move |mut c| {
        let (_, err) = read_all(&mut *c);
        tx.send(err.map(|e| e.kind())).unwrap();
    });
    let d = Daemon::start(&config("", &backend.address, ""));
    let mut s = open(&d);
    s.write_all(b"partway\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    d.signal(libc::SIGTERM);
    let (_, err) = read_all(&mut s);
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::ConnectionReset));
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        Some(ErrorKind::ConnectionReset)
    );
    assert!(
        d.wait_log("1 forwarded pair ends with tcpmuxd: both its connections are reset"),
        "{}",
        d.log()
    );
}

#[test]
fn a_reset_by_the_backend_resets_the_clients_connection() {
    let backend = Backend::start(Kind::Tcp, move |mut c| {
        c.write_all(b"about to reset\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        set_linger_zero(c.fd());
    });
    let d = Daemon::start(&config("", &backend.address, ""));
    let mut s = open(&d);
    let (got, err) = read_all(&mut s);
    assert_eq!(got, b"about to reset\n");
    assert_eq!(
        err.map(|e| e.kind()),
        Some(ErrorKind::ConnectionReset),
        "{}",
        d.log()
    );
    assert!(d.wait_log("reset by the backend"), "{}", d.log());
}

#[test]
fn a_silent_pair_is_closed_at_the_idle_timeout() {
    let (tx, rx) = mpsc::channel();
    let backend = Backend::start(Kind::Tcp, move |mut c| {
        let (got, err) = read_all(&mut *c);
        tx.send((got, err.map(|e| e.to_string()))).unwrap();
    });
    let d = Daemon::start(&config("", &backend.address, "idle_timeout = \"1s\""));
    let mut s = open(&d);
    s.write_all(b"one line, then silence\n").unwrap();
    // Neither side says anything more: both are closed.
    assert_eq!(read_to_end(&mut s), b"");
    assert_eq!(
        rx.recv_timeout(WAIT).unwrap(),
        (b"one line, then silence\n".to_vec(), None)
    );
    assert!(d.wait_log("idle for 1s (idle_timeout)"), "{}", d.log());
}

/// A TCP port on loopback where nothing listens.
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn a_backend_that_is_down_means_service_unavailable_and_a_logged_cause() {
    let dir = tempfile::tempdir().unwrap();
    let missing: PathBuf = dir.path().join("nobody-listens.sock");
    for (to, cause) in [
        (closed_port().to_string(), "Connection refused"),
        (
            missing.to_string_lossy().into_owned(),
            "No such file or directory",
        ),
    ] {
        let d = Daemon::start(&config("", &to, ""));
        assert_eq!(d.exchange(b"fwd\r\nearly\n"), b"-Service unavailable\r\n");
        assert!(d.wait_log("cannot connect"), "{}", d.log());
        let log = d.log();
        let entry = log
            .lines()
            .find(|l| l.contains("cannot connect"))
            .unwrap_or_default();
        assert!(entry.contains(&format!("backend {to}")), "{entry}");
        assert!(entry.contains(cause), "{entry}");
        assert!(entry.contains("fwd from 127.0.0.1:"), "{entry}");
        assert!(entry.contains(": unavailable: service \"fwd\""), "{entry}");
    }
}

#[test]
fn a_backend_that_does_not_accept_in_time_means_service_unavailable() {
    // A listener whose queue is full (backlog 0, one connection queued
    // and never accepted): the kernel drops further SYNs, so a connect
    // waits until it gives up.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen(2) on a socket the test owns: the backlog only.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 0) }, 0);
    let addr = l.local_addr().unwrap();
    let _queued = TcpStream::connect(addr).unwrap();
    // Queued too while the queue still had room, or held back: either way
    // the queue is full once the connections below are made.
    let _more: Vec<_> = (0..2)
        .filter_map(|_| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .collect();
    let d = Daemon::start(&config("", &addr.to_string(), ""));
    assert_eq!(d.exchange(b"fwd\r\n"), b"-Service unavailable\r\n");
    assert!(
        d.wait_log("did not accept the connection within 5s"),
        "{}",
        d.log()
    );
    drop(l);
}

/// What a backend received before the client's end, for a client that
/// sent `after` behind its request line.
fn received(d: &Daemon, got: &mpsc::Receiver<Vec<u8>>, s: &mut TcpStream) -> Vec<u8> {
    assert_eq!(read_line(s), b"+\r\n", "{}", d.log());
    s.shutdown(Shutdown::Write).unwrap();
    got.recv_timeout(WAIT).unwrap()
}

#[test]
fn the_proxy_header_names_the_client_byte_for_byte_before_its_bytes() {
    for kind in [Kind::Tcp, Kind::Unix] {
        for version in ["v1", "v2"] {
            let (backend, got) = recording_backend(kind);
            let extra = format!("proxy_protocol = \"{version}\"");
            let d = Daemon::start(&config("", &backend.address, &extra));
            let mut s = d.connect();
            s.write_all(b"fwd\r\nfirst bytes\n").unwrap();
            let client = s.local_addr().unwrap();
            let mut want = match version {
                "v1" => format!(
                    "PROXY TCP4 {} {} {} {}\r\n",
                    client.ip(),
                    d.addr.ip(),
                    client.port(),
                    d.addr.port()
                )
                .into_bytes(),
                _ => v2_header(client, d.addr),
            };
            want.extend_from_slice(b"first bytes\n");
            assert_eq!(received(&d, &got, &mut s), want, "{version}");
        }
    }
}

#[test]
fn behind_a_trusted_balancer_the_proxy_header_names_the_balancers_client() {
    let (backend, got) = recording_backend(Kind::Tcp);
    let d = Daemon::start(&config(
        "trusted_proxies = [\"127.0.0.2\"]",
        &backend.address,
        "proxy_protocol = \"v1\"",
    ));
    let client: SocketAddr = "192.0.2.7:51234".parse().unwrap();
    let front: SocketAddr = "198.51.100.1:1".parse().unwrap();
    let mut s = connect_from("127.0.0.2", d.addr);
    let mut hello = v2_header(client, front);
    hello.extend_from_slice(b"fwd\r\nfrom afar\n");
    s.write_all(&hello).unwrap();
    assert_eq!(
        received(&d, &got, &mut s),
        b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 1\r\nfrom afar\n"
    );
    assert!(d.wait_log("fwd from 192.0.2.7:51234: session started, forwarded to"));
}

#[test]
fn a_dedicated_service_hears_the_backends_own_first_line() {
    let backend = Backend::start(Kind::Tcp, |mut c| {
        c.write_all(b"+Backend ready\r\n").unwrap();
        let mut line = [0u8; 5];
        c.read_exact(&mut line).unwrap();
        c.write_all(&line).unwrap();
    });
    let d = Daemon::start(&config("", &backend.address, "plus = false"));
    let mut s = d.connect();
    s.write_all(b"fwd\r\nping\n").unwrap();
    assert_eq!(read_line(&mut s), b"+Backend ready\r\n");
    assert_eq!(read_line(&mut s), b"ping\n");
}

/// A backend that holds each connection until its client ends.
fn holding_backend() -> Backend {
    Backend::start(Kind::Tcp, |mut c| {
        let _ = read_all(&mut *c);
    })
}

#[test]
fn a_forwarded_pair_counts_against_max_instances() {
    let backend = holding_backend();
    let d = Daemon::start(&config("", &backend.address, "max_instances = 1"));
    let held = open(&d);
    assert_eq!(
        d.exchange(b"fwd\r\n"),
        b"-Service busy, try again later\r\n"
    );
    drop(held);
    // Once both sides are closed the slot is free again.
    assert!(
        wait_until(|| {
            let mut s = d.connect();
            s.write_all(b"fwd\r\n").unwrap();
            read_line(&mut s) == b"+\r\n"
        }),
        "{}",
        d.log()
    );
}

#[test]
fn a_forwarded_pair_counts_against_the_sources_share() {
    let backend = holding_backend();
    let d = Daemon::start(&config(
        "",
        &backend.address,
        "max_instances = 4\nmax_instances_per_source = 1",
    ));
    let mut held = connect_from("127.0.0.1", d.addr);
    held.write_all(b"fwd\r\n").unwrap();
    assert_eq!(read_line(&mut held), b"+\r\n");
    let mut again = connect_from("127.0.0.1", d.addr);
    again.write_all(b"fwd\r\n").unwrap();
    assert_eq!(
        read_to_end(&mut again),
        b"-Too many sessions from your address, try again later\r\n"
    );
    // Another source is served.
    let mut other = connect_from("127.0.0.3", d.addr);
    other.write_all(b"fwd\r\n").unwrap();
    assert_eq!(read_line(&mut other), b"+\r\n");
}

/// A client that sends without pause to a backend that takes nothing
/// makes tcpmuxd hold a bounded amount of it: each pair's receive buffers
/// are fixed and its unsent bytes kept low, not grown by the kernel's
/// tuning to the host's maximum (megabytes a pair, across many pairs the
/// machine's TCP memory).
#[test]
fn a_pair_holds_a_bounded_amount_of_what_its_client_sends() {
    let (stop, stopped) = mpsc::channel::<()>();
    let stopped = std::sync::Mutex::new(stopped);
    let backend = Backend::start(Kind::Tcp, move |_c| {
        // Holds the connection, reads nothing.
        let _ = stopped.lock().unwrap().recv_timeout(WAIT);
    });
    let d = Daemon::start(&config("", &backend.address, ""));
    let client = open(&d);
    // The client's own send buffer fixed small too: what is measured is
    // what went past it.
    rustix::net::sockopt::set_socket_send_buffer_size(&client, 64 * 1024).unwrap();
    let sent = fill(&client, &d);
    let _ = stop.send(());
    // The client's own send buffer and the backend's receive buffer are
    // in it too (a few hundred KiB).
    assert!(
        sent < 3 << 20,
        "{sent} bytes went in before the pair was full\n{}",
        d.log()
    );
}

/// Sends on `s` until nothing more goes for a second (or far past any
/// bound a pair has): how much went.
fn fill(s: &TcpStream, d: &Daemon) -> usize {
    s.set_nonblocking(true).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let (mut sent, mut still) = (0usize, 0);
    while still < 10 && sent < 64 << 20 {
        match (&*s).write(&chunk) {
            Ok(n) => {
                sent += n;
                still = 0;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                still += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("send: {e}\n{}", d.log()),
        }
    }
    sent
}

/// A TCP backend that echoes what it gets, in small reads.
fn echo_backend() -> Backend {
    Backend::start(Kind::Tcp, |mut c| {
        let mut buf = [0u8; 64];
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 || c.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .expect("/proc/PID/fd")
}

#[test]
fn ten_thousand_forwarded_sessions_leak_no_descriptor() {
    const SESSIONS: usize = 10_000;
    const CLIENTS: usize = 4;
    let backend = echo_backend();
    let d = Daemon::start_opts(
        &config(
            "",
            &backend.address,
            "max_instances = 1024\nmax_instances_per_source = 1024\n\
             max_starts_per_second = 1000000",
        ),
        Options {
            log_level: "warn",
            ..Options::default()
        },
    );
    let before = open_fds(d.pid());
    let addr = d.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..SESSIONS / CLIENTS {
                    let mut s = connect(addr);
                    s.write_all(b"fwd\r\nx").unwrap();
                    assert_eq!(read_n(&mut s, 4), b"+\r\nx");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // Every pair ends once its client is gone.
    assert!(
        wait_until(|| open_fds(d.pid()) <= before),
        "{} descriptors open before, {} after; {}",
        before,
        open_fds(d.pid()),
        d.log()
    );
}

/// Pipes are taken only by directions that move bulk, and at most
/// `FORWARD_MAX_PIPES` at once (they are charged to the pipe quota of
/// tcpmuxd's user, which every process of that user shares): idle pairs
/// hold none, and directions past the bound copy, and still relay.
#[test]
fn pipes_are_taken_only_for_bulk_and_bounded() {
    const PAIRS: usize = 160;
    const BULK: usize = 64 * 1024;
    // To a client that starts with `c`: BULK bytes at once, then the
    // count of what the client sent in all; to one that starts with `p`,
    // `pong`.
    let backend = Backend::start(Kind::Tcp, |mut c| {
        let mut first = [0u8];
        if c.read_exact(&mut first).is_err() {
            return;
        }
        if first[0] == b'p' {
            let _ = c.write_all(b"pong\n");
            return;
        }
        if c.write_all(&[b'b'; BULK]).is_err() {
            return;
        }
        let (got, _) = read_all(&mut c);
        let _ = c.write_all(format!("{}\n", got.len() + 1).as_bytes());
    });
    let d = Daemon::start(&config(
        "max_sessions = 1024\nmax_sessions_per_source = 1024",
        &backend.address,
        "max_instances = 1024\nmax_instances_per_source = 1024\n\
         max_starts_per_second = 1000000",
    ));
    let pipes = |pid: i32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("/proc/PID/fd")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("pipe:"))
            .count()
    };
    let before = pipes(d.pid());
    // Idle pairs hold no pipe.
    let mut pairs: Vec<TcpStream> = (0..PAIRS).map(|_| open(&d)).collect();
    assert_eq!(pipes(d.pid()), before, "idle pairs hold pipes");
    // Each client sends bulk, and reads nothing yet; the backend answers
    // with bulk: 2 * PAIRS directions move bulk, more than the bound.
    for p in &mut pairs {
        p.write_all(&[b'c'; BULK]).unwrap();
    }
    // Two descriptors a pipe, up to the bound, and no more.
    let most = 2 * tcpmuxd::limits::FORWARD_MAX_PIPES;
    assert!(
        wait_until(|| pipes(d.pid()) - before >= most),
        "{} pipe descriptors for {} bulk directions; log:\n{}",
        pipes(d.pid()) - before,
        2 * PAIRS,
        d.log()
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(pipes(d.pid()) - before, most, "no more than the bound");
    // Every pair relays all of it, the piped and the copying ones.
    for (i, p) in pairs.iter_mut().enumerate() {
        let mut got = vec![0u8; BULK];
        p.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|&b| b == b'b'), "pair {i}");
        p.shutdown(Shutdown::Write).unwrap();
        let (answer, err) = read_all(p);
        assert_eq!(err.map(|e| e.kind()), None, "pair {i}");
        assert_eq!(answer, format!("{BULK}\n").as_bytes(), "pair {i}");
    }
    drop(pairs);
    assert!(
        wait_until(|| pipes(d.pid()) == before),
        "pipes left after the pairs ended: {}",
        pipes(d.pid()) - before
    );
    // A short exchange takes no pipe at all.
    let mut s = open(&d);
    s.write_all(b"p").unwrap();
    assert_eq!(read_line(&mut s), b"pong\n");
    assert_eq!(pipes(d.pid()), before);
}

/// TCP urgent data in a short exchange: a read stops at the urgent mark,
/// and what follows it came with the same segment, with no new readiness
/// to come. It is passed on all the same, without waiting for more.
#[test]
fn bytes_right_behind_urgent_data_are_passed_on_at_once() {
    let (tx, got) = mpsc::channel();
    let backend = Backend::start(Kind::Tcp, move |mut c| {
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while seen.len() < 6 {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let _ = tx.send(seen);
        // Held open: only the bytes already sent may arrive.
        let _ = c.read(&mut buf);
    });
    let d = Daemon::start(&config("", &backend.address, ""));
    let s = open(&d);
    // One write each, back to back: usually one segment with its mark.
    (&s).write_all(b"abc").unwrap();
    rustix::net::send(&s, b"!", rustix::net::SendFlags::OOB).unwrap();
    (&s).write_all(b"def").unwrap();
    assert_eq!(
        got.recv_timeout(WAIT).expect("the backend got 6 bytes"),
        b"abcdef",
        "{}",
        d.log()
    );
}

/// TCP urgent data in the middle of bulk (telnet's interrupt, FTP's
/// abort): splice(2) stops at the urgent mark, so a relay that only
/// spliced would stall there for good. The stream goes on past it each
/// way, whole; the urgent byte itself is not passed on (as a program's
/// plain read does not see it either).
#[test]
fn urgent_data_in_the_middle_of_bulk_neither_stalls_nor_cuts_the_stream() {
    const HALF: usize = 300_000;
    let pattern =
        |seed: usize| -> Vec<u8> { (0..HALF).map(|i| ((i + seed) % 251) as u8).collect() };
    let (tx, got) = mpsc::channel();
    let down = [pattern(7), pattern(11)];
    let backend = Backend::start(Kind::Tcp, move |mut c| {
        let (up, _) = read_all(&mut *c);
        let _ = tx.send(up);
        // Bulk back, with an urgent byte in the middle.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(c.fd()) };
        let _ = c.write_all(&down[0]);
        let _ = rustix::net::send(fd, b"!", rustix::net::SendFlags::OOB);
        let _ = c.write_all(&down[1]);
        c.shut_write();
    });
    let d = Daemon::start(&config("", &backend.address, "idle_timeout = \"5s\""));
    let mut s = open(&d);
    let (a, b) = (pattern(1), pattern(3));
    s.write_all(&a).unwrap();
    rustix::net::send(&s, b"U", rustix::net::SendFlags::OOB).unwrap();
    s.write_all(&b).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let up = got
        .recv_timeout(WAIT)
        .expect("the backend got the stream's end");
    assert_eq!(
        up.len(),
        2 * HALF,
        "bytes to the backend; log:\n{}",
        d.log()
    );
    assert!(up == [a, b].concat(), "the stream to the backend, in order");
    let (back, err) = read_all(&mut s);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        back.len(),
        2 * HALF,
        "bytes to the client; log:\n{}",
        d.log()
    );
    assert!(
        back == [pattern(7), pattern(11)].concat(),
        "the stream to the client"
    );
}
