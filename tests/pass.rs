//! `launcher = "pass"`: each client's connection handed, as a descriptor,
//! to a daemon that already runs. The real tcpmuxd on loopback; the
//! daemon is examples/pass-receiver.rs, or the test's own socket where it
//! must misbehave.

mod common;

use common::{Daemon, WAIT, read_line, read_to_end};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketAddrUnix,
    SocketFlags, SocketType, accept_with, bind, listen, recvmsg, socket_with,
};
use std::io::{BufRead, BufReader, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The example receiver, built beside the test binaries
/// (target/PROFILE/examples, this binary being in target/PROFILE/deps).
fn receiver_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe.parent().and_then(Path::parent).expect("target/PROFILE");
    let path = profile.join("examples").join("pass-receiver");
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --example pass-receiver` (plain `cargo test` builds it)",
        path.display()
    );
    path
}

/// The example receiver, running on `socket`; killed when dropped.
struct Receiver {
    child: Child,
}

impl Receiver {
    fn start(socket: &Path) -> Receiver {
        let mut child = Command::new(receiver_binary())
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start pass-receiver");
        let mut ready = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut ready)
            .expect("read pass-receiver's first line");
        assert!(ready.starts_with("listening on "), "{ready:?}");
        Receiver { child }
    }

    /// Stops it (SIGKILL to its PID) and waits for it.
    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A configuration with pass service `app` to `socket`, `extra` added to
/// the service.
fn config(socket: &Path, extra: &str) -> String {
    format!(
        "[tcpmux]\nmax_sessions_per_source = 1024\n\
         [[service]]\nname = \"app\"\nlauncher = \"pass\"\npass = \"{}\"\n\
         max_instances = 1024\nmax_instances_per_source = {DEFAULT_SHARE}\n\
         max_starts_per_second = 1000000\n{extra}",
        socket.display()
    )
}

/// Connects to `d` and asks for `name`.
fn ask(d: &Daemon, name: &str) -> TcpStream {
    let mut s = d.connect();
    s.write_all(format!("{name}\r\n").as_bytes())
        .expect("write");
    s
}

/// The variables of the receiver's hello line.
fn hello_variables(line: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8(line.to_vec()).expect("UTF-8");
    let rest = text
        .strip_prefix("hello ")
        .unwrap_or_else(|| panic!("not a hello: {text:?}"));
    rest.trim_end()
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("KEY=VALUE");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// What a program of `d` would get for client `s`.
fn expected_variables(d: &Daemon, s: &TcpStream) -> Vec<(String, String)> {
    let me = s.local_addr().unwrap();
    [
        ("TCPMUX_SERVICE", "app".to_string()),
        ("REMOTE_ADDR", me.ip().to_string()),
        ("REMOTE_PORT", me.port().to_string()),
        ("LOCAL_ADDR", d.addr.ip().to_string()),
        ("LOCAL_PORT", d.addr.port().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[test]
fn plus_mode_the_client_hears_plus_then_the_daemon_which_got_its_variables() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("app.sock");
    let _receiver = Receiver::start(&socket);
    let d = Daemon::start(&config(&socket, ""));
    for _ in 0..3 {
        let mut s = ask(&d, "app");
        assert_eq!(read_line(&mut s), b"+\r\n", "log:\n{}", d.log());
        let hello = read_line(&mut s);
        assert_eq!(hello_variables(&hello), expected_variables(&d, &s));
        s.write_all(b"ping\n").unwrap();
        assert_eq!(read_line(&mut s), b"ping\n", "the daemon serves the client");
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(read_to_end(&mut s), b"");
    }
    assert!(
        d.wait_log(&format!("passed to {}", socket.display())),
        "{}",
        d.log()
    );
    assert!(d.log().contains("app from 127.0.0.1:"), "{}", d.log());
}

#[test]
fn dedicated_mode_the_daemons_first_line_is_the_reply() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("app.sock");
    let _receiver = Receiver::start(&socket);
    let d = Daemon::start(&config(&socket, "plus = false\n"));
    let mut s = ask(&d, "app");
    let first = read_line(&mut s);
    assert!(first.starts_with(b"hello TCPMUX_SERVICE=app "), "{first:?}");
    assert_eq!(hello_variables(&first), expected_variables(&d, &s));
}

/// A daemon of the test's own: listens on `path`, and hands back
/// tcpmuxd's connection once accepted.
fn raw_listener(path: &Path) -> OwnedFd {
    let l = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    bind(&l, &SocketAddrUnix::new(path).unwrap()).unwrap();
    listen(&l, 16).unwrap();
    l
}

/// One message on `link`, waiting at most [`WAIT`]: its bytes and
/// descriptors; none when there is none.
fn raw_receive(link: &OwnedFd, wait: bool) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = [0u8; 4096];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if !wait {
        flags |= RecvFlags::DONTWAIT;
    }
    let got = recvmsg(link, &mut [IoSliceMut::new(&mut buf)], &mut control, flags).ok()?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(r) = m {
            fds.extend(r);
        }
    }
    Some((buf[..got.bytes].to_vec(), fds))
}

/// Makes receives on `link` (and accepts, on a listener) wait at most
/// [`WAIT`].
fn wait_at_most(link: &OwnedFd) {
    rustix::net::sockopt::set_socket_timeout(link, rustix::net::sockopt::Timeout::Recv, Some(WAIT))
        .unwrap();
}

/// The per-source share of [`config`].
const DEFAULT_SHARE: usize = 1024;

/// tcpmuxd with pass service `app` ([`config`], `share` its
/// `max_instances_per_source`) to a socket the test listens on itself:
/// the scratch directory that holds it, its path, the listener, tcpmuxd.
fn with_raw_listener(share: usize) -> (tempfile::TempDir, PathBuf, OwnedFd, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("app.sock");
    let listener = raw_listener(&socket);
    let config = config(&socket, "").replace(
        &format!("max_instances_per_source = {DEFAULT_SHARE}"),
        &format!("max_instances_per_source = {share}"),
    );
    let d = Daemon::start(&config);
    (dir, socket, listener, d)
}

#[test]
fn the_message_is_key_value_lines_with_one_blocking_descriptor() {
    let (_dir, _, listener, d) = with_raw_listener(DEFAULT_SHARE);
    let mut s = ask(&d, "app");
    assert_eq!(read_line(&mut s), b"+\r\n");
    let link = accept_with(&listener, SocketFlags::CLOEXEC).unwrap();
    wait_at_most(&link);
    let (payload, mut fds) = raw_receive(&link, true).expect("a message");
    let me = s.local_addr().unwrap();
    let want = format!(
        "TCPMUX_SERVICE=app\nREMOTE_ADDR={}\nREMOTE_PORT={}\nLOCAL_ADDR={}\nLOCAL_PORT={}\n",
        me.ip(),
        me.port(),
        d.addr.ip(),
        d.addr.port()
    );
    assert_eq!(String::from_utf8(payload).unwrap(), want);
    assert_eq!(fds.len(), 1, "exactly the client's connection");
    let client = TcpStream::from(fds.remove(0));
    assert_eq!(
        client.peer_addr().unwrap(),
        me,
        "the client's own connection"
    );
    let flags = rustix::fs::fcntl_getfl(&client).unwrap();
    assert!(
        !flags.contains(rustix::fs::OFlags::NONBLOCK),
        "handed over in blocking mode"
    );
    (&client).write_all(b"from the daemon\n").unwrap();
    assert_eq!(read_line(&mut s), b"from the daemon\n");
}

#[test]
fn no_daemon_means_service_unavailable_with_the_cause_logged() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("app.sock");
    let d = Daemon::start(&config(&socket, ""));
    // No socket file.
    let mut s = ask(&d, "app");
    assert_eq!(read_to_end(&mut s), b"-Service unavailable\r\n");
    assert!(d.wait_log("no such socket file"), "{}", d.log());
    // A socket file nobody listens on (its daemon gone).
    let gone = socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    bind(&gone, &SocketAddrUnix::new(&socket).unwrap()).unwrap();
    drop(gone);
    // Another source: refusals are logged within each source's budget.
    let mut s = common::connect_from("127.0.0.2", d.addr);
    s.write_all(b"app\r\n").unwrap();
    assert_eq!(read_to_end(&mut s), b"-Service unavailable\r\n");
    assert!(d.wait_log("nobody listens on it"), "{}", d.log());
    assert!(
        d.log()
            .contains(&format!("pass socket {}", socket.display())),
        "{}",
        d.log()
    );
}

#[test]
fn a_daemon_that_restarts_gets_the_next_client() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("app.sock");
    let receiver = Receiver::start(&socket);
    let d = Daemon::start(&config(&socket, ""));
    let mut s = ask(&d, "app");
    assert_eq!(read_line(&mut s), b"+\r\n");
    assert!(read_line(&mut s).starts_with(b"hello "));
    drop(s);
    receiver.stop();
    // While it is down, clients hear that the service is unavailable.
    let mut s = ask(&d, "app");
    assert_eq!(read_to_end(&mut s), b"-Service unavailable\r\n");
    let _receiver = Receiver::start(&socket);
    for _ in 0..2 {
        let mut s = ask(&d, "app");
        assert_eq!(read_line(&mut s), b"+\r\n", "{}", d.log());
        assert!(read_line(&mut s).starts_with(b"hello "));
    }
}

#[test]
fn a_full_queue_means_service_unavailable_never_plus_then_nothing() {
    let (_dir, _, listener, d) = with_raw_listener(DEFAULT_SHARE);
    // The daemon accepts tcpmuxd's connection and reads nothing.
    let mut link = None;
    let mut plus = Vec::new();
    let mut refused = 0;
    let deadline = Instant::now() + WAIT;
    while refused < 3 {
        assert!(plus.len() < 5000, "the queue never filled");
        assert!(Instant::now() < deadline, "too slow");
        let mut s = ask(&d, "app");
        let line = read_line(&mut s);
        match line.as_slice() {
            b"+\r\n" => {
                plus.push(s);
                if link.is_none() {
                    link = Some(accept_with(&listener, SocketFlags::CLOEXEC).unwrap());
                }
            }
            b"-Service unavailable\r\n" => {
                assert_eq!(read_to_end(&mut s), b"", "closed after the reply");
                refused += 1;
            }
            other => panic!("{:?}; log:\n{}", String::from_utf8_lossy(other), d.log()),
        }
    }
    assert!(!plus.is_empty());
    // The cause is logged (from a source whose entries the passes above
    // did not use up).
    let mut s = common::connect_from("127.0.0.2", d.addr);
    s.write_all(b"app\r\n").unwrap();
    assert_eq!(read_to_end(&mut s), b"-Service unavailable\r\n");
    assert!(d.wait_log("queue full"), "{}", d.log());
    // The daemon stays responsive meanwhile.
    assert_eq!(d.exchange(b"HELP\r\n"), b"app\r\n");
    // Each client that heard `+` is in the queue, in order: none is left
    // with `+` and then nothing.
    let link = link.expect("tcpmuxd connected");
    for client in &plus {
        let (_, mut fds) = raw_receive(&link, false).expect("a queued client");
        assert_eq!(fds.len(), 1);
        let passed = TcpStream::from(fds.remove(0));
        assert_eq!(passed.peer_addr().unwrap(), client.local_addr().unwrap());
    }
    assert!(raw_receive(&link, false).is_none(), "no more than those");
    // Once there is room again, clients are passed again.
    let mut s = ask(&d, "app");
    assert_eq!(read_line(&mut s), b"+\r\n");
}

#[test]
fn session_limits_and_the_start_rate_apply_to_passes() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("app.sock");
    let _receiver = Receiver::start(&socket);
    // The place is given back once the daemon took the client: with one
    // instance, passed clients the daemon still serves do not stop the
    // next.
    let d = Daemon::start(&format!(
        "[tcpmux]\nmax_sessions_per_source = 2\n\
         [[service]]\nname = \"app\"\nlauncher = \"pass\"\npass = \"{}\"\n\
         max_instances = 1\n\
         [[service]]\nname = \"hold\"\ncommand = [\"/bin/cat\"]\n",
        socket.display()
    ));
    let mut served = Vec::new();
    for _ in 0..3 {
        let mut s = ask(&d, "app");
        assert_eq!(read_line(&mut s), b"+\r\n", "{}", d.log());
        assert!(read_line(&mut s).starts_with(b"hello "));
        served.push(s);
    }
    // The source's share of all sessions counts passes too: held by two
    // running sessions, it leaves no room for one.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = ask(&d, "hold");
        assert_eq!(read_line(&mut s), b"+\r\n");
        held.push(s);
    }
    let mut s = ask(&d, "app");
    assert_eq!(
        read_to_end(&mut s),
        b"-Too many sessions from your address, try again later\r\n"
    );
    // Another source still gets its pass.
    let mut s = common::connect_from("127.0.0.2", d.addr);
    s.write_all(b"app\r\n").unwrap();
    assert_eq!(read_line(&mut s), b"+\r\n");
    drop(held);
    drop(d);

    // max_starts_per_second bounds the rate of passes.
    let d = Daemon::start(&config(&socket, "").replace(
        "max_starts_per_second = 1000000",
        "max_starts_per_second = 2",
    ));
    let mut rate_refused = 0;
    for _ in 0..20 {
        let mut s = ask(&d, "app");
        let line = read_line(&mut s);
        if line == b"-Service started too often, try again later\r\n" {
            rate_refused += 1;
        } else {
            assert_eq!(line, b"+\r\n");
        }
    }
    assert!(rate_refused > 0, "20 at once at 2 a second, none refused");
}

/// Descriptors the process has open now.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

#[test]
fn ten_thousand_passes_leave_no_descriptor_behind() {
    const PASSES: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("app.sock");
    let _receiver = Receiver::start(&socket);
    let d = Daemon::start_opts(
        &config(&socket, "plus = false\n"),
        common::Options {
            log_level: "warn",
            ..Default::default()
        },
    );
    // The link to the daemon is made by the first pass.
    let mut s = ask(&d, "app");
    assert!(read_line(&mut s).starts_with(b"hello "));
    drop(s);
    let before = open_fds(d.pid());
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..PASSES {
        assert!(Instant::now() < deadline, "only {i} passes in time");
        let mut s = ask(&d, "app");
        let hello = read_line(&mut s);
        assert!(hello.starts_with(b"hello "), "pass {i}: {hello:?}");
    }
    // Every client's descriptor is given away as it is passed.
    assert!(
        common::wait_until(|| open_fds(d.pid()) <= before),
        "{} descriptors before, {} after",
        before,
        open_fds(d.pid())
    );
}

/// A daemon that stops taking messages on tcpmuxd's connection (it shut
/// down its reading end: the connection still polls writable) while it
/// still listens: the next client, told `+` already when the send fails,
/// is passed on a new connection, never left with `+` and then nothing.
#[test]
fn a_client_told_plus_when_the_daemon_dropped_the_connection_is_passed_on_a_new_one() {
    let (_dir, _, listener, d) = with_raw_listener(DEFAULT_SHARE);
    // Accepts and receives wait at most WAIT.
    wait_at_most(&listener);
    // The first client makes tcpmuxd's connection; then the daemon stops
    // reading it.
    let mut first = ask(&d, "app");
    assert_eq!(read_line(&mut first), b"+\r\n");
    let old = accept_with(&listener, SocketFlags::CLOEXEC).unwrap();
    wait_at_most(&old);
    assert!(raw_receive(&old, true).is_some(), "the first client");
    rustix::net::shutdown(&old, rustix::net::Shutdown::Read).unwrap();
    let mut second = ask(&d, "app");
    assert_eq!(read_line(&mut second), b"+\r\n");
    let new = accept_with(&listener, SocketFlags::CLOEXEC)
        .expect("tcpmuxd connects again for the client it told +");
    wait_at_most(&new);
    let (_, mut fds) = raw_receive(&new, true).expect("the second client, on a new connection");
    let client = TcpStream::from(fds.remove(0));
    (&client).write_all(b"served\n").unwrap();
    assert_eq!(read_line(&mut second), b"served\n");
    drop(old);
}

/// A daemon that falls behind: each source holds at most its
/// `max_instances_per_source` of the clients waiting in the daemon's
/// queue, so one address cannot fill it; the places come back as the
/// daemon takes its clients, and when it closes its connection.
#[test]
fn one_source_holds_no_more_than_its_share_of_the_daemons_queue() {
    const SHARE: usize = 4;
    let (_dir, socket, listener, d) = with_raw_listener(SHARE);
    // The daemon reads nothing yet: one source's clients wait.
    let mut waiting = Vec::new();
    let mut refused = 0;
    for _ in 0..3 * SHARE {
        let mut s = ask(&d, "app");
        let line = read_line(&mut s);
        match line.as_slice() {
            b"+\r\n" => waiting.push(s),
            b"-Too many sessions from your address, try again later\r\n" => refused += 1,
            other => panic!("{:?}; log:\n{}", String::from_utf8_lossy(other), d.log()),
        }
    }
    assert_eq!(waiting.len(), SHARE, "{refused} refused; log:\n{}", d.log());
    // Another source still gets its place in the queue.
    let mut other = common::connect_from("127.0.0.2", d.addr);
    other.write_all(b"app\r\n").unwrap();
    assert_eq!(read_line(&mut other), b"+\r\n");
    // The daemon takes two clients: two places come back.
    let link = accept_with(&listener, SocketFlags::CLOEXEC).unwrap();
    wait_at_most(&link);
    for _ in 0..2 {
        raw_receive(&link, true).expect("a queued client");
    }
    let mut more = Vec::new();
    for _ in 0..2 {
        let mut s = ask(&d, "app");
        assert_eq!(
            read_line(&mut s),
            b"+\r\n",
            "place not given back; log:\n{}",
            d.log()
        );
        more.push(s);
    }
    let mut s = ask(&d, "app");
    assert_eq!(
        read_line(&mut s),
        b"-Too many sessions from your address, try again later\r\n",
        "two taken, two more passed: the share is held again"
    );
    // The daemon closes its connection with clients queued: the kernel
    // closes them, and their places come back.
    drop(link);
    drop(listener);
    let listener = raw_listener(&{
        std::fs::remove_file(&socket).unwrap();
        socket.clone()
    });
    for _ in 0..SHARE {
        let mut s = ask(&d, "app");
        assert_eq!(
            read_line(&mut s),
            b"+\r\n",
            "places not given back; log:\n{}",
            d.log()
        );
    }
    drop(listener);
}

/// One source's clients queued, then the daemon shuts down its end of
/// tcpmuxd's connection both ways (or only its reading) and keeps it
/// open: tcpmuxd stays responsive, passes the next clients on a new
/// connection, and still counts the clients queued on the old one until
/// the daemon takes them.
#[test]
fn clients_queued_on_a_connection_the_daemon_shut_down_keep_their_places() {
    const SHARE: usize = 2;
    for how in [rustix::net::Shutdown::Both, rustix::net::Shutdown::Read] {
        let (_dir, _, listener, d) = with_raw_listener(SHARE);
        let mut queued = Vec::new();
        for _ in 0..SHARE {
            let mut s = ask(&d, "app");
            assert_eq!(read_line(&mut s), b"+\r\n", "{how:?}");
            queued.push(s);
        }
        // A refusal (which waits for passes in progress) says both are
        // in the queue, not only told `+`.
        let mut s = ask(&d, "app");
        assert_eq!(
            read_line(&mut s),
            b"-Too many sessions from your address, try again later\r\n"
        );
        let old = accept_with(&listener, SocketFlags::CLOEXEC).unwrap();
        rustix::net::shutdown(&old, how).unwrap();
        // Still answering.
        assert_eq!(d.exchange(b"HELP\r\n"), b"app\r\n", "{how:?}");
        // Another source is passed on a new connection.
        let mut other = common::connect_from("127.0.0.2", d.addr);
        other.write_all(b"app\r\n").unwrap();
        assert_eq!(read_line(&mut other), b"+\r\n", "{how:?}: {}", d.log());
        let new = accept_with(&listener, SocketFlags::CLOEXEC).unwrap();
        wait_at_most(&new);
        // (`+` goes out just before the message.)
        assert!(raw_receive(&new, true).is_some(), "{how:?}");
        // The first source's clients still wait on the old connection:
        // its share is held.
        let mut s = ask(&d, "app");
        assert_eq!(
            read_line(&mut s),
            b"-Too many sessions from your address, try again later\r\n",
            "{how:?}: its clients on the old connection no longer counted"
        );
        // Taken: the places come back.
        for client in &queued {
            let (_, mut fds) = raw_receive(&old, false).expect("a client on the old connection");
            let passed = TcpStream::from(fds.remove(0));
            assert_eq!(passed.peer_addr().unwrap(), client.local_addr().unwrap());
        }
        let mut s = ask(&d, "app");
        assert_eq!(read_line(&mut s), b"+\r\n", "{how:?}: {}", d.log());
    }
}

/// tcpmuxd never reads its connection to a daemon, and shuts its reading
/// side: a daemon cannot park anything there (its own socket, to outlive
/// its exit), and learns at once that writing to it is a mistake.
#[test]
fn a_daemon_cannot_send_anything_to_tcpmuxd() {
    let (_dir, _, listener, d) = with_raw_listener(DEFAULT_SHARE);
    let mut s = ask(&d, "app");
    assert_eq!(read_line(&mut s), b"+\r\n");
    let link = accept_with(&listener, SocketFlags::CLOEXEC).unwrap();
    let sent = rustix::net::send(
        &link,
        b"hello tcpmuxd",
        rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
    );
    assert_eq!(sent, Err(rustix::io::Errno::PIPE));
}

/// A daemon that shuts down connection after connection with clients
/// still in them: tcpmuxd keeps at most 8 such connections, and then
/// makes no new one (clients hear `-Service unavailable`) until the daemon
/// takes or closes what they hold: the places of clients the daemon can
/// still take are never given back early.
#[test]
fn past_eight_shut_down_connections_with_clients_waiting_no_new_one_is_made() {
    const KEPT: usize = 8;
    let (_dir, _, listener, d) = with_raw_listener(DEFAULT_SHARE);
    let mut links = Vec::new();
    let mut clients = Vec::new();
    for i in 0..KEPT {
        let mut s = ask(&d, "app");
        assert_eq!(read_line(&mut s), b"+\r\n", "client {i}: {}", d.log());
        clients.push(s);
        let link = accept_with(&listener, SocketFlags::CLOEXEC).unwrap();
        wait_at_most(&link);
        // The client is in it (`+` goes out just before the message).
        rustix::net::recv(&link, &mut [0u8; 1], rustix::net::RecvFlags::PEEK)
            .expect("a client in the connection");
        rustix::net::shutdown(&link, rustix::net::Shutdown::Read).unwrap();
        links.push(link);
    }
    let mut s = ask(&d, "app");
    assert_eq!(
        read_to_end(&mut s),
        b"-Service unavailable\r\n",
        "a ninth connection was made"
    );
    assert!(
        d.wait_log("shut down 8 of tcpmuxd's connections"),
        "{}",
        d.log()
    );
    // The daemon takes the client of the first one: it is let go, and a
    // new connection is made.
    let (_, mut fds) = raw_receive(&links[0], true).expect("the first client");
    let first = TcpStream::from(fds.remove(0));
    assert_eq!(first.peer_addr().unwrap(), clients[0].local_addr().unwrap());
    let mut s = common::connect_from("127.0.0.2", d.addr);
    s.write_all(b"app\r\n").unwrap();
    assert_eq!(read_line(&mut s), b"+\r\n", "{}", d.log());
}
