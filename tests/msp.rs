//! The Message Send Protocol over real loopback TCP and UDP, against the
//! real daemon.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A version B message.
fn b(parts: [&str; 7]) -> Vec<u8> {
    let mut out = b"B".to_vec();
    for p in parts {
        out.extend_from_slice(p.as_bytes());
        out.push(0);
    }
    out
}

struct Msp {
    _daemon: Daemon,
    tcp: SocketAddr,
    udp: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts the daemon with MSP sockets passed as systemd would, and
/// `[msp]` settings `extra`; unless overridden, delivery runs a command
/// that records each message in a log file.
fn start(extra: &str) -> Msp {
    start_logging(extra, "debug")
}

/// As [`start`], logging from `log_level` up.
fn start_logging(extra: &str, log_level: &str) -> Msp {
    start_as(extra, log_level, Only::Both)
}

/// What the daemon is started to serve, and how.
#[derive(Clone, Copy, PartialEq)]
enum Only {
    /// No `--only`, a TCPMUX socket passed too.
    Both,
    /// `--only msp`, MSP's sockets alone passed (tcpmuxd-msp.service).
    Msp,
    /// `--only msp`, with a configuration error appended.
    MspBroken,
}

fn start_as(extra: &str, log_level: &str, only: Only) -> Msp {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("delivered.log");
    let recorder = script(
        dir.path(),
        "deliver",
        &format!(
            "text=$(cat)\n\
             if [ \"$MSP_RECIPIENT\" = nobody ]; then echo 'nobody: no such user' >&2; echo second line >&2; exit 1; fi\n\
             if [ -e \"$0.refuse\" ]; then echo 'not now' >&2; exit 1; fi\n\
             if [ -e \"$0.slow\" ]; then sleep 0.5; fi\n\
             printf '%s|%s|%s|%s|%s|%s|%s|%s|%s|%s\\n' \"$MSP_VERSION\" \"$MSP_RECIPIENT\" \"$MSP_RECIPIENT_TERMINAL\" \
             \"$MSP_SENDER\" \"$MSP_SENDER_TERMINAL\" \"$MSP_COOKIE\" \"$MSP_SIGNATURE\" \"$MSP_TRANSPORT\" \"$REMOTE_ADDR\" \"$text\" >> {}",
            log.display()
        ),
    );
    // Rate limits out of the way, unless the test is about one.
    let rate: String = [
        "rate_per_minute",
        "recipient_rate_per_minute",
        "total_rate_per_minute",
    ]
    .iter()
    .filter(|key| !extra.lines().any(|l| l.starts_with(*key)))
    .map(|key| format!("{key} = 100000\n"))
    .collect();
    let deliver = if extra.contains("deliver = ") {
        String::new()
    } else {
        format!("deliver = \"command\"\ncommand = [\"{recorder}\"]\n")
    };
    let mut config = format!(
        "[msp]\n{deliver}{rate}\n{extra}\n\
         [[service]]\nname = \"echo\"\ncommand = [\"/bin/cat\"]\n"
    );
    if only == Only::MspBroken {
        config.push_str("no_such_key = 1\n");
    }
    let tcp_listener = loopback_listener();
    let udp_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (tcp, udp) = (
        tcp_listener.local_addr().unwrap(),
        udp_socket.local_addr().unwrap(),
    );
    let mut passed = vec![
        Passed::Stream(tcp_listener, "msp"),
        Passed::Datagram(udp_socket, "msp"),
    ];
    if only == Only::Both {
        passed.push(Passed::Stream(loopback_listener(), "tcpmux"));
    }
    let d = Daemon::start_opts(
        &config,
        Options {
            passed,
            log_level,
            customize: Box::new(move |c| {
                if only != Only::Both {
                    c.args(["--only", "msp"]);
                }
            }),
            ..Options::default()
        },
    );
    Msp {
        _daemon: d,
        tcp,
        udp,
        log,
        _dir: dir,
    }
}

impl Msp {
    /// Makes the delivery command refuse every message (`-not now`), or
    /// accept them again.
    fn refuse(&self, on: bool) {
        self.flag("refuse", on);
    }

    /// Makes the delivery command take half a second per message.
    fn slow(&self, on: bool) {
        self.flag("slow", on);
    }

    fn flag(&self, name: &str, on: bool) {
        let path = self._dir.path().join(format!("deliver.{name}"));
        if on {
            std::fs::write(path, "").unwrap();
        } else {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The texts delivered so far.
    fn texts(&self) -> Vec<String> {
        self.delivered()
            .iter()
            .map(|l| l.rsplit('|').next().unwrap().to_string())
            .collect()
    }

    fn delivered(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn tcp(&self) -> TcpStream {
        let s = TcpStream::connect(self.tcp).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    }

    fn udp(&self) -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.connect(self.udp).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        s
    }
}

/// A daemon with `config` and an MSP TCP socket, and a connection to it.
fn msp_tcp_daemon(config: &str) -> (Daemon, TcpStream) {
    let l = loopback_listener();
    let addr = l.local_addr().unwrap();
    let passed = vec![
        Passed::Stream(loopback_listener(), "tcpmux"),
        Passed::Stream(l, "msp"),
    ];
    let d = Daemon::start_with(config, &[], passed);
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    (d, s)
}

/// Reads one NUL-terminated reply.
fn reply(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        assert_eq!(s.read(&mut byte).expect("reply"), 1, "closed after {out:?}");
        if byte[0] == 0 {
            return String::from_utf8(out).unwrap();
        }
        out.push(byte[0]);
    }
}

/// A datagram reply, or None after a short wait (silence).
fn datagram(s: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = [0u8; 1024];
    s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
}

#[test]
fn tcp_version_b_is_delivered_with_its_fields_and_acknowledged() {
    let m = start("");
    let mut s = m.tcp();
    s.write_all(&b([
        "chris",
        "",
        "Hi\r\nHow about lunch?",
        "sandy",
        "console",
        "910806121325",
        "",
    ]))
    .unwrap();
    assert_eq!(reply(&mut s), "+");
    let log = std::fs::read_to_string(&m.log).unwrap();
    assert_eq!(
        log,
        "B|chris||sandy|console|910806121325||tcp|127.0.0.1|Hi\r\nHow about lunch?\n"
    );
}

#[test]
fn tcp_from_a_trusted_proxy_takes_the_sender_from_its_proxy_header() {
    let m = start("trusted_proxies = [\"127.0.0.2\"]\ndeny = [\"192.0.2.66\"]");
    let msg = |text: &str| b(["chris", "", text, "sandy", "console", "c1", ""]);
    // From the balancer: the header's client is the sender's address, for
    // the delivery and the log.
    let mut s = connect_from("127.0.0.2", m.tcp);
    let mut sent = b"PROXY TCP4 192.0.2.9 127.0.0.1 4000 18\r\n".to_vec();
    sent.extend_from_slice(&msg("via the balancer"));
    s.write_all(&sent).unwrap();
    assert_eq!(reply(&mut s), "+");
    // Version 2, cut into single bytes.
    let mut s = connect_from("127.0.0.2", m.tcp);
    let mut sent = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    sent.extend_from_slice(&[192, 0, 2, 10, 127, 0, 0, 1, 0x0f, 0xa0, 0, 18]);
    sent.extend_from_slice(&msg("byte by byte"));
    for byte in sent {
        s.write_all(&[byte]).unwrap();
    }
    assert_eq!(reply(&mut s), "+");
    // The access list judges the client the header names.
    let mut s = connect_from("127.0.0.2", m.tcp);
    let mut sent = b"PROXY TCP4 192.0.2.66 127.0.0.1 4000 18\r\n".to_vec();
    sent.extend_from_slice(&msg("denied"));
    s.write_all(&sent).unwrap();
    assert!(read_to_end(&mut s).is_empty());
    // From the balancer without a header: closed, nothing delivered.
    let mut s = connect_from("127.0.0.2", m.tcp);
    s.write_all(&msg("no header")).unwrap();
    assert!(read_to_end(&mut s).is_empty());
    // From anyone else a header is not believed: not a message at all.
    let mut s = connect_from("127.0.0.3", m.tcp);
    let mut sent = b"PROXY TCP4 192.0.2.11 127.0.0.1 4000 18\r\n".to_vec();
    sent.extend_from_slice(&msg("forged"));
    s.write_all(&sent).unwrap();
    assert!(read_to_end(&mut s).is_empty());
    let mut s = connect_from("127.0.0.3", m.tcp);
    s.write_all(&msg("direct")).unwrap();
    assert_eq!(reply(&mut s), "+");
    let addrs: Vec<String> = m
        .delivered()
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            format!("{} {}", f[8], f[9])
        })
        .collect();
    assert_eq!(
        addrs,
        [
            "192.0.2.9 via the balancer",
            "192.0.2.10 byte by byte",
            "127.0.0.3 direct"
        ]
    );
    assert!(
        m._daemon.wait_log("MSP from 127.0.0.2:") && m._daemon.wait_log("msp-bad-proxy-header"),
        "{}",
        m._daemon.log()
    );
    assert!(
        m._daemon.wait_log("MSP from 192.0.2.66:4000: msp-denied"),
        "{}",
        m._daemon.log()
    );
}

#[test]
fn several_messages_on_one_connection_split_over_many_writes() {
    let m = start("");
    let mut s = m.tcp();
    s.set_nodelay(true).unwrap();
    let mut all = Vec::new();
    for i in 0..3 {
        all.extend(b([
            "chris",
            "",
            &format!("message {i}"),
            "sandy",
            "",
            &format!("c{i}"),
            "",
        ]));
    }
    // A version A message in between gets no reply; a stray NUL is tolerated.
    all.extend(b"Achris\0\0version a\0\0");
    all.extend(b(["nobody", "", "hello?", "sandy", "", "c9", ""]));
    for chunk in all.chunks(7) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    for _ in 0..3 {
        assert_eq!(reply(&mut s), "+");
    }
    // The command's first stderr line is the reason.
    assert_eq!(reply(&mut s), "-nobody: no such user");
    let texts: Vec<String> = m
        .delivered()
        .iter()
        .map(|l| l.rsplit('|').next().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["message 0", "message 1", "message 2", "version a"]);
}

#[test]
fn malformed_and_risky_messages_are_refused_over_tcp() {
    let m = start("");
    let mut s = m.tcp();
    s.write_all(&b(["chris", "", "\x1b[2Jgotcha", "sandy", "", "1", ""]))
        .unwrap();
    assert!(reply(&mut s).starts_with("-message contains control code 0x1b"));
    s.write_all(&b(["chris", "", "hi", "evil\x07", "", "2", ""]))
        .unwrap();
    assert!(reply(&mut s).starts_with("-sender contains control code"));
    s.write_all(&b(["chris", "", "hi", "sandy", "", &"c".repeat(33), ""]))
        .unwrap();
    assert!(reply(&mut s).contains("cookie longer than 32"));
    // No recipient, and the console is off by default.
    s.write_all(&b(["", "", "hi all", "sandy", "", "3", ""]))
        .unwrap();
    assert!(reply(&mut s).contains("console messages are disabled"));
    // Over-long: answered, then the connection closes.
    let mut long = b"Bchris\0\0".to_vec();
    long.extend(std::iter::repeat_n(b'x', 600));
    s.write_all(&long).unwrap();
    assert!(reply(&mut s).contains("longer than 511"));
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(m.delivered().is_empty(), "{:?}", m.delivered());
}

#[test]
fn udp_replies_only_where_the_rfc_wants_them() {
    let m = start("console = true");
    let s = m.udp();
    // Delivered to a named recipient: "+".
    s.send(&b(["chris", "", "hi", "sandy", "", "u1", ""]))
        .unwrap();
    assert_eq!(datagram(&s).as_deref(), Some(&b"+\0"[..]));
    // Failed: silence.
    s.send(&b(["nobody", "", "hi", "sandy", "", "u2", ""]))
        .unwrap();
    assert_eq!(datagram(&s), None);
    // Malformed: silence.
    s.send(b"Bchris\0\0hi\0").unwrap();
    assert_eq!(datagram(&s), None);
    s.send(b"Zjunk").unwrap();
    assert_eq!(datagram(&s), None);
    // Broadcast (no recipient): delivered to the console, but no reply.
    s.send(&b(["", "", "to everyone", "sandy", "", "u3", ""]))
        .unwrap();
    assert_eq!(datagram(&s), None);
    // Version A: the datagram comes back.
    let a = b"Achris\0\0version a\0".to_vec();
    s.send(&a).unwrap();
    assert_eq!(datagram(&s), Some(a));
    // The extra trailing NUL of a known client is tolerated.
    let mut extra = b(["chris", "", "extra nul", "sandy", "", "u4", ""]);
    extra.push(0);
    s.send(&extra).unwrap();
    assert_eq!(datagram(&s).as_deref(), Some(&b"+\0"[..]));
    let texts: Vec<String> = m
        .delivered()
        .iter()
        .map(|l| l.rsplit('|').next().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["hi", "to everyone", "version a", "extra nul"]);
}

#[test]
fn a_retransmitted_message_is_acknowledged_but_delivered_once() {
    let m = start("");
    let s = m.udp();
    let msg = b([
        "chris",
        "",
        "only once",
        "sandy",
        "pts/1",
        "same-cookie",
        "",
    ]);
    for _ in 0..3 {
        s.send(&msg).unwrap();
        assert_eq!(datagram(&s).as_deref(), Some(&b"+\0"[..]));
    }
    // Same cookie in another case, same sender: still the same message.
    s.send(&b([
        "chris",
        "",
        "only once",
        "SANDY",
        "PTS/1",
        "SAME-COOKIE",
        "",
    ]))
    .unwrap();
    assert_eq!(datagram(&s).as_deref(), Some(&b"+\0"[..]));
    // Another cookie is another message.
    s.send(&b(["chris", "", "again", "sandy", "pts/1", "other", ""]))
        .unwrap();
    assert_eq!(datagram(&s).as_deref(), Some(&b"+\0"[..]));
    assert_eq!(m.delivered().len(), 2, "{:?}", m.delivered());
}

#[test]
fn one_source_over_its_rate_is_refused() {
    let m = start("rate_per_minute = 3");
    let mut s = m.tcp();
    for i in 0..3 {
        s.write_all(&b(["chris", "", "hi", "sandy", "", &format!("r{i}"), ""]))
            .unwrap();
        assert_eq!(reply(&mut s), "+");
    }
    s.write_all(&b(["chris", "", "hi", "sandy", "", "r4", ""]))
        .unwrap();
    assert!(reply(&mut s).contains("too many messages"));
    assert_eq!(m.delivered().len(), 3);
    // Counted with the other limits and summed up, not logged per message.
    assert!(
        m._daemon.wait_log("1 msp rate_per_minute"),
        "{}",
        m._daemon.log()
    );
}

#[test]
fn a_reload_applies_a_new_rate_at_once() {
    let m = start("");
    let text = std::fs::read_to_string(m._daemon.config_path()).unwrap();
    m._daemon
        .rewrite_config(&text.replace("\nrate_per_minute = 100000", "\nrate_per_minute = 1"));
    m._daemon.reload();
    let mut s = m.tcp();
    s.write_all(&b(["chris", "", "hi", "sandy", "", "n1", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "+");
    s.write_all(&b(["chris", "", "hi", "sandy", "", "n2", ""]))
        .unwrap();
    assert!(reply(&mut s).contains("too many messages"));
}

#[test]
fn a_thousand_datagrams_from_many_sockets_are_delivered_exactly_once() {
    let m = start("");
    let senders: Vec<_> = (0..20)
        .map(|k| {
            let udp = m.udp;
            std::thread::spawn(move || {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.connect(udp).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                for i in 0..50 {
                    let msg = b(["chris", "", "load", "sandy", "", &format!("k{k}-{i}"), ""]);
                    // Retransmit, as a client does, until acknowledged.
                    let mut acked = false;
                    for _ in 0..40 {
                        s.send(&msg).unwrap();
                        if datagram(&s).is_some() {
                            acked = true;
                            break;
                        }
                    }
                    assert!(acked, "k{k}-{i} never acknowledged");
                }
            })
        })
        .collect();
    for t in senders {
        t.join().unwrap();
    }
    let mut cookies: Vec<String> = m
        .delivered()
        .iter()
        .map(|l| l.split('|').nth(5).unwrap().to_string())
        .collect();
    let total = cookies.len();
    cookies.sort();
    cookies.dedup();
    assert_eq!(cookies.len(), 1000, "lost messages");
    assert_eq!(total, 1000, "doubled deliveries");
}

#[test]
fn the_command_method_reports_its_exit_and_times_out() {
    let m = start("command_timeout = \"300ms\"");
    let mut s = m.tcp();
    s.write_all(&b(["nobody", "", "hi", "sandy", "", "1", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "-nobody: no such user");
    drop(s);
    let dir = tempfile::tempdir().unwrap();
    let slow = script(dir.path(), "slow", "sleep 5");
    let config = format!(
        "[msp]\ndeliver = \"command\"\ncommand = [\"{slow}\"]\ncommand_timeout = \"300ms\"\n"
    );
    let (d, mut s) = msp_tcp_daemon(&config);
    s.write_all(&b(["chris", "", "hi", "sandy", "", "1", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "-delivery timed out");
    drop(d);
}

/// A pseudo-terminal the test owns.
struct Pty {
    master: std::fs::File,
    line: String,
    slave_path: PathBuf,
    _slave: std::os::fd::OwnedFd,
}

/// The name of the user the test runs as: the owner of its ptys.
fn me() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .expect("the test's user has a name")
        .name
}

/// Writes a utmp file with a login record (USER_PROCESS) for each (user,
/// line).
fn write_utmp(utmp: &Path, logins: &[(&str, &str)]) {
    let mut data = Vec::new();
    for (user, line) in logins {
        // SAFETY: utmpx is plain data; zero is a valid value for every field.
        let mut entry: libc::utmpx = unsafe { std::mem::zeroed() };
        entry.ut_type = libc::USER_PROCESS;
        entry.ut_pid = std::process::id() as i32;
        for (dst, src) in entry.ut_line.iter_mut().zip(line.bytes()) {
            *dst = src as libc::c_char;
        }
        for (dst, src) in entry.ut_user.iter_mut().zip(user.bytes()) {
            *dst = src as libc::c_char;
        }
        // SAFETY: viewing a plain struct as bytes.
        data.extend_from_slice(unsafe {
            std::slice::from_raw_parts(
                (&entry as *const libc::utmpx).cast::<u8>(),
                std::mem::size_of::<libc::utmpx>(),
            )
        });
    }
    std::fs::write(utmp, data).unwrap();
}

fn new_pty() -> Pty {
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave_path = nix::unistd::ttyname(&pty.slave).unwrap();
    let line = slave_path
        .strip_prefix("/dev")
        .unwrap()
        .to_string_lossy()
        .trim_start_matches('/')
        .to_string();
    // Raw mode: what is written arrives unchanged.
    let mut t = nix::sys::termios::tcgetattr(&pty.slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &t).unwrap();
    Pty {
        master: std::fs::File::from(pty.master),
        line,
        slave_path,
        _slave: pty.slave,
    }
}

/// A pty listed in `utmp` as `user`'s (a login record of its own, as
/// libutempter writes for a terminal emulator or a tmux pane).
fn open_pty(utmp: &Path, user: &str) -> Pty {
    let pty = new_pty();
    write_utmp(utmp, &[(user, &pty.line)]);
    pty
}

fn mesg(pty: &Pty, allow: bool) {
    set_mode(&pty.slave_path, if allow { 0o620 } else { 0o600 });
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Pty {
    /// What the terminal shows for the next message, through its "EOF"
    /// (at the start of a row).
    fn next_message(&mut self) -> String {
        let mut shown = vec![0u8; 4096];
        let mut text = Vec::new();
        while !String::from_utf8_lossy(&text).contains("\r\nEOF\r\n") {
            let n = self.master.read(&mut shown).unwrap();
            text.extend_from_slice(&shown[..n]);
        }
        String::from_utf8(text).expect("UTF-8 on the terminal")
    }

    /// Whether anything was written to the terminal and not read yet.
    fn is_quiet(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut fd = libc::pollfd {
            fd: self.master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one descriptor we own, without waiting.
        let ready = unsafe { libc::poll(&mut fd, 1, 0) };
        assert!(ready >= 0, "poll: {}", std::io::Error::last_os_error());
        ready == 0
    }
}

#[test]
fn the_tty_method_writes_to_the_users_terminal_and_honours_mesg() {
    let dir = tempfile::tempdir().unwrap();
    let utmp = dir.path().join("utmp");
    let user = me();
    let mut pty = open_pty(&utmp, &user);
    let config = format!("[msp]\ndeliver = \"tty\"\nutmp = \"{}\"\n", utmp.display());
    let (_d, mut s) = msp_tcp_daemon(&config);

    mesg(&pty, true);
    s.write_all(&b([&user, "", "Hi\r\nlunch?", "sandy", "console", "1", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "+");
    let text = pty.next_message();
    assert!(
        text.contains("Message from sandy@127.0.0.1 on console"),
        "{text:?}"
    );
    assert!(text.contains("\r\n| Hi\r\n| lunch?\r\nEOF\r\n"), "{text:?}");

    // Named terminal, and "*".
    s.write_all(&b([&user, &pty.line, "named", "sandy", "", "2", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "+");
    assert!(pty.next_message().contains("named"));
    s.write_all(&b([&user, "*", "all", "sandy", "", "3", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "+");
    assert!(pty.next_message().contains("all"));
    s.write_all(&b([&user, "tty63", "elsewhere", "sandy", "", "4", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), format!("-{user} is not logged in on tty63"));
    s.write_all(&b(["someone", "", "hi", "sandy", "", "5", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "-someone is not logged in");

    // UTF-8 and ISO 8859-1 both reach the terminal as UTF-8.
    s.write_all(&b([
        &user,
        "",
        "caf\u{e9} 5\u{20ac}",
        "\u{15b}wit",
        "",
        "6",
        "",
    ]))
    .unwrap();
    assert_eq!(reply(&mut s), "+");
    let text = pty.next_message();
    assert!(text.contains("from \u{15b}wit@"), "{text:?}");
    assert!(text.contains("caf\u{e9} 5\u{20ac}\r\nEOF"), "{text:?}");
    let mut latin = format!("B{user}\0\0").into_bytes();
    latin.extend_from_slice(b"caf\xe9\0sandy\0\x007\0\0");
    s.write_all(&latin).unwrap();
    assert_eq!(reply(&mut s), "+");
    assert!(pty.next_message().contains("caf\u{e9}\r\nEOF"));

    mesg(&pty, false);
    s.write_all(&b([&user, "", "refused", "sandy", "", "8", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), format!("-{user} has messages disabled"));
    assert!(pty.is_quiet());
}

/// Gives the terminal a window `columns` wide, as a terminal emulator does.
fn set_columns(pty: &Pty, columns: u16) {
    use std::os::fd::AsRawFd;
    let size = libc::winsize {
        ws_row: 24,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
    let done = unsafe { libc::ioctl(pty.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
    assert_eq!(done, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
}

/// The rows of one message as a terminal shows it: after the bell, up to
/// the last CRLF.
fn rows_of(shown: &str) -> Vec<&str> {
    shown
        .strip_prefix("\r\n\x07")
        .and_then(|t| t.strip_suffix("\r\n"))
        .unwrap_or_else(|| panic!("{shown:?}"))
        .split("\r\n")
        .collect()
}

#[test]
fn a_message_cannot_forge_a_header_or_the_end_on_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let utmp = dir.path().join("utmp");
    let user = me();
    let mut pty = open_pty(&utmp, &user);
    mesg(&pty, true);
    const COLUMNS: u16 = 60;
    set_columns(&pty, COLUMNS);
    let config = format!("[msp]\ndeliver = \"tty\"\nutmp = \"{}\"\n", utmp.display());
    let (_d, mut s) = msp_tcp_daemon(&config);

    // An end marker and a second header at column 0 (all but the bell,
    // which the checks refuse), a bare CR that would let a line overwrite
    // itself, and a line padded so that the terminal's own wrapping would
    // put "EOF" at column 0.
    let forged = format!(
        "hi\r\nEOF\r\nMessage from root@localhost on pts/0 at 2026-12-06T05:00:00Z ...\r\n\
         pay bob 10\rpay eve 99\r\n{}EOF",
        "x".repeat(usize::from(COLUMNS) - 2)
    );
    s.write_all(&b([&user, "", &forged, "sandy", "", "1", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "+");
    let shown = pty.next_message();
    assert!(pty.is_quiet(), "{shown:?}");
    let rows = rows_of(&shown);
    // The real header and end marker, and every row between them marked.
    assert!(
        rows[0].starts_with("Message from sandy@127.0.0.1 at "),
        "{rows:?}"
    );
    assert_eq!(rows.last(), Some(&"EOF"), "{rows:?}");
    let text: Vec<&str> = rows
        .iter()
        .skip_while(|r| !r.starts_with("| "))
        .take_while(|r| r.starts_with("| "))
        .copied()
        .collect();
    assert_eq!(text.len(), rows.len() - 2, "{rows:?}");
    assert_eq!(text[..2], ["| hi", "| EOF"], "{rows:?}");
    assert!(
        text[2].starts_with("| Message from root@localhost"),
        "{rows:?}"
    );
    // The CR is shown, not obeyed.
    assert!(text.contains(&"| pay bob 10^Mpay eve 99"), "{rows:?}");
    // No row reaches the terminal's last column: it never wraps one itself.
    for row in &rows {
        assert!(row.chars().count() < usize::from(COLUMNS), "{row:?}");
    }
    assert_eq!(
        rows.iter().filter(|r| r.contains("EOF")).count(),
        3,
        "{rows:?}"
    );

    // A sender that reads like a whole header of its own, padded so that
    // folding would push the real address to a second row; a sender
    // terminal with spaces that would go on imitating one.
    let forged_sender = format!(
        "root@10.9.9.9 on console at 2026-12-06T05:42:56Z ...{}",
        " ".repeat(40)
    );
    s.write_all(&b([
        &user,
        "",
        "forged addr?",
        &forged_sender,
        "console at 2026-12-06T05:42:56Z ...",
        "2",
        "",
    ]))
    .unwrap();
    assert_eq!(reply(&mut s), "+");
    let shown = pty.next_message();
    assert!(pty.is_quiet(), "{shown:?}");
    let rows = rows_of(&shown);
    // The real address stands on the first row, right after the sender,
    // and nothing the peer chose has a space in it to imitate a header.
    assert!(
        rows[0].starts_with("Message from root@10.9.9.9_on_"),
        "{rows:?}"
    );
    assert!(rows[0].contains("@127.0.0.1"), "{rows:?}");
    assert!(!rows[0].contains(" on console at 2026"), "{rows:?}");
    assert!(!shown.contains("at 2026-12-06T05:42:56Z ..."), "{rows:?}");
    assert_eq!(
        rows[rows.len() - 2..],
        ["| forged addr?", "EOF"],
        "{rows:?}"
    );
    for row in &rows {
        assert!(row.chars().count() < usize::from(COLUMNS), "{row:?}");
    }
}

/// A file in /dev/shm (the one place under /dev a test may write), removed
/// when dropped.
struct ShmFile(PathBuf);

impl ShmFile {
    fn line(&self) -> String {
        self.0
            .strip_prefix("/dev")
            .unwrap()
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string()
    }
}

impl Drop for ShmFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_tty_method_writes_only_to_terminal_devices_of_the_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let utmp = dir.path().join("utmp");
    let user = me();
    let mut pty = new_pty();
    mesg(&pty, true);
    // Login records pointing at a regular file, with messages "enabled",
    // and at a link to the recipient's own terminal.
    let id = std::process::id();
    let file = ShmFile(PathBuf::from(format!("/dev/shm/tmsp{id}f")));
    std::fs::write(&file.0, "precious\n").unwrap();
    set_mode(&file.0, 0o620);
    let link = ShmFile(PathBuf::from(format!("/dev/shm/tmsp{id}l")));
    std::os::unix::fs::symlink(&pty.slave_path, &link.0).unwrap();
    // And a terminal of someone else's, listed as the recipient's (as root
    // only: a pty can be given away only by root).
    let other = is_root().then(|| {
        let other = new_pty();
        mesg(&other, true);
        std::os::unix::fs::chown(&other.slave_path, Some(65534), None).unwrap();
        other
    });
    let mut logins = vec![(user.as_str(), file.line()), (user.as_str(), link.line())];
    if let Some(other) = &other {
        logins.push((user.as_str(), other.line.clone()));
    }
    logins.push((user.as_str(), pty.line.clone()));
    let logins: Vec<(&str, &str)> = logins.iter().map(|(u, l)| (*u, l.as_str())).collect();
    write_utmp(&utmp, &logins);
    let config = format!("[msp]\ndeliver = \"tty\"\nutmp = \"{}\"\n", utmp.display());
    let (_d, mut s) = msp_tcp_daemon(&config);

    let no_terminal = format!("-{user} has no terminal to write to");
    s.write_all(&b([&user, &file.line(), "overwrite?", "x", "", "1", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), no_terminal);
    s.write_all(&b([&user, &link.line(), "via link", "x", "", "2", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), no_terminal);
    if let Some(other) = &other {
        s.write_all(&b([&user, &other.line, "not theirs", "x", "", "3", ""]))
            .unwrap();
        assert_eq!(reply(&mut s), no_terminal);
    }
    assert!(pty.is_quiet());
    // All terminals, and the most recent one: only the real one is written.
    for (terminal, cookie) in [("*", "4"), ("", "5")] {
        s.write_all(&b([&user, terminal, "only here", "x", "", cookie, ""]))
            .unwrap();
        assert_eq!(reply(&mut s), "+");
        assert!(pty.next_message().contains("only here"));
    }
    assert!(pty.is_quiet());
    assert!(other.as_ref().is_none_or(Pty::is_quiet));
    assert_eq!(std::fs::read_to_string(&file.0).unwrap(), "precious\n");
}

#[test]
fn msend_sends_over_tcp_and_udp() {
    let m = start("");
    let host = |addr: SocketAddr| format!("chris@{}", addr.ip());
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_msend"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&[
        "--port",
        &m.tcp.port().to_string(),
        &host(m.tcp),
        "hello",
        "there",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "--udp",
        "--port",
        &m.udp.port().to_string(),
        &host(m.udp),
        "by datagram",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "--port",
        &m.tcp.port().to_string(),
        &format!("nobody@{}", m.tcp.ip()),
        "hi",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused: nobody: no such user"));
    let texts: Vec<String> = m
        .delivered()
        .iter()
        .map(|l| l.rsplit('|').next().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["hello there", "by datagram"]);
    let out = run(&["--port", "1", "x@127.0.0.1", "a bell \u{7}"]);
    assert_eq!(
        out.status.code(),
        Some(65),
        "a control character cannot be sent"
    );
}

#[test]
fn a_service_named_msp_is_a_config_error_naming_it() {
    // It would share drop-ins (tcpmux-msp@.service.d/) and session counting
    // with the MSP delivery units.
    let (code, _, stderr) = check(&[(
        "tcpmuxd.toml",
        "[[service]]\nname = \"Msp\"\ncommand = [\"/bin/cat\"]\n",
    )]);
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("service \"Msp\""), "{stderr}");
    assert!(stderr.contains("\"Msp\" is reserved"), "{stderr}");
    assert!(stderr.contains("tcpmux-msp@.service"), "{stderr}");
}

/// A UDP socket bound to `source` (any address of 127.0.0.0/8) and
/// connected to `to`.
fn udp_from(source: &str, to: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind((source, 0)).unwrap();
    s.connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    s
}

#[test]
fn msp_allow_and_deny_refuse_tcp_and_udp_before_reading() {
    let m = start("allow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.1\"]");
    // Denied: the connection is closed without a reply, the datagram is
    // not answered, nothing is delivered.
    let mut s = m.tcp();
    let _ = s.write_all(&b(["chris", "", "denied", "sandy", "", "d1", ""]));
    assert!(read_to_end(&mut s).is_empty());
    let u = udp_from("127.0.0.1", m.udp);
    u.send(&b(["chris", "", "denied", "sandy", "", "d2", ""]))
        .unwrap();
    assert_eq!(datagram(&u), None);
    u.send(b"Achris\0\0denied a\0").unwrap();
    assert_eq!(datagram(&u), None, "not even version A's echo");
    // Allowed.
    let mut s = connect_from("127.0.0.2", m.tcp);
    s.write_all(&b(["chris", "", "allowed", "sandy", "", "a1", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "+");
    let u = udp_from("127.0.0.2", m.udp);
    u.send(&b(["chris", "", "allowed by udp", "sandy", "", "a2", ""]))
        .unwrap();
    assert_eq!(datagram(&u).as_deref(), Some(&b"+\0"[..]));
    let texts: Vec<String> = m
        .delivered()
        .iter()
        .map(|l| l.rsplit('|').next().unwrap().to_string())
        .collect();
    assert_eq!(texts, ["allowed", "allowed by udp"]);
}

/// The addresses the daemon reported listening on for MSP.
fn msp_addresses(log: &str, transport: &str) -> Vec<SocketAddr> {
    log.lines()
        .filter_map(|l| l.split("listening for MSP on ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|a| a.strip_suffix(&format!("/{transport}")))
        .map(|a| a.parse().unwrap())
        .collect()
}

#[test]
fn msp_is_served_only_when_configured_or_passed() {
    // Neither an MSP socket from systemd nor [msp] listen: no MSP at all.
    let d = Daemon::start("[[service]]\nname = \"echo\"\ncommand = [\"/bin/cat\"]\n");
    assert_eq!(d.help(), ["echo"]);
    assert!(!d.log().contains("listening for MSP"), "{}", d.log());
    drop(d);
    // Without socket activation, [msp] listen turns it on.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("delivered");
    let recorder = script(dir.path(), "deliver", &format!("cat >> {}", log.display()));
    let config = format!(
        "[tcpmux]\nlisten = [\"127.0.0.1:0\"]\n\
         [msp]\nlisten = [\"127.0.0.1:0\"]\ndeliver = \"command\"\ncommand = [\"{recorder}\"]\n"
    );
    let d = Daemon::start_with(&config, &[], vec![]);
    // One line for each transport, the TCP one first.
    for transport in ["/tcp\n", "/udp\n"] {
        assert!(d.wait_log(transport), "{}", d.log());
    }
    let (tcp, udp) = (
        msp_addresses(&d.log(), "tcp"),
        msp_addresses(&d.log(), "udp"),
    );
    assert_eq!((tcp.len(), udp.len()), (1, 1), "{}", d.log());
    let mut s = connect(tcp[0]);
    s.write_all(&b(["chris", "", "bound by tcpmuxd", "sandy", "", "1", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "+");
    let u = udp_from("127.0.0.1", udp[0]);
    u.send(&b(["chris", "", "+udp", "sandy", "", "2", ""]))
        .unwrap();
    assert_eq!(datagram(&u).as_deref(), Some(&b"+\0"[..]));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "bound by tcpmuxd+udp"
    );
}

#[test]
fn the_shipped_units_leave_msp_off_until_its_socket_is_enabled() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("units");
    let service = std::fs::read_to_string(units.join("tcpmuxd.service")).unwrap();
    for line in service.lines().filter(|l| !l.starts_with('#')) {
        let pulls = ["Wants=", "Requires=", "BindsTo=", "Also=", "Upholds="]
            .iter()
            .any(|k| line.starts_with(k));
        assert!(
            !(pulls && line.contains("tcpmuxd-msp.socket")),
            "tcpmuxd.service turns MSP on: {line}"
        );
    }
    // MSP has a daemon of its own, the only one with the group tty; the
    // TCPMUX daemon serves TCPMUX alone.
    assert!(
        service
            .lines()
            .any(|l| l.starts_with("ExecStart=") && l.contains("--only tcpmux")),
        "{service}"
    );
    assert!(
        !service
            .lines()
            .any(|l| l.starts_with("SupplementaryGroups="))
    );
    let socket = std::fs::read_to_string(units.join("tcpmuxd-msp.socket")).unwrap();
    assert!(
        socket.contains("\nService=tcpmuxd-msp.service\n"),
        "{socket}"
    );
    assert!(socket.contains("WantedBy=sockets.target"));
    let msp = std::fs::read_to_string(units.join("tcpmuxd-msp.service")).unwrap();
    assert!(
        msp.lines()
            .any(|l| l.starts_with("ExecStart=") && l.contains("--only msp")),
        "{msp}"
    );
    assert!(msp.contains("\nRequires=tcpmuxd-msp.socket\n"));
    assert!(msp.contains("\nSupplementaryGroups=tty\n"));
    // Whatever the distribution's default preset, MSP stays off.
    let preset =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd-preset/80-tcpmuxd.preset");
    let preset = std::fs::read_to_string(preset).unwrap();
    assert!(preset.lines().any(|l| l == "disable tcpmuxd-msp.socket"));
}

/// Every unit names the manuals, and a reload checks the configuration
/// before it signals the daemon.
#[test]
fn the_shipped_units_name_the_manuals_and_check_before_reloading() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("units");
    for unit in [
        "tcpmuxd.service",
        "tcpmuxd.socket",
        "tcpmuxd-msp.service",
        "tcpmuxd-msp.socket",
    ] {
        let text = std::fs::read_to_string(units.join(unit)).unwrap();
        let docs = text
            .lines()
            .find(|l| l.starts_with("Documentation="))
            .unwrap_or_default();
        assert!(
            docs.contains("man:tcpmuxd(8)") && docs.contains("man:tcpmuxd.toml(5)"),
            "{unit}: {docs}"
        );
        if unit.ends_with(".service") {
            let reloads: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("ExecReload="))
                .collect();
            assert_eq!(reloads.len(), 2, "{unit}: {reloads:?}");
            assert!(reloads[0].contains("--check"), "{unit}: {reloads:?}");
            assert!(reloads[1].contains("kill -HUP"), "{unit}: {reloads:?}");
        }
    }
}

#[test]
fn utf8_parts_are_taken_as_utf8_and_latin1_as_latin1() {
    let m = start("");
    let mut s = m.tcp();
    // "€" and "ś" hold 0x82 and 0x9b in UTF-8: not controls.
    s.write_all(&b([
        "chris",
        "",
        "caf\u{e9} 5\u{20ac} \u{15b}",
        "\u{15b}wit",
        "",
        "u1",
        "",
    ]))
    .unwrap();
    assert_eq!(reply(&mut s), "+");
    // Not UTF-8: ISO 8859-1, handed on as UTF-8.
    let mut latin = b"Bchris\0\0caf\xe9\0sandy\0\0u2\0\0".to_vec();
    s.write_all(&latin).unwrap();
    assert_eq!(reply(&mut s), "+");
    // ISO 8859-1 C1 controls are still refused, and so are the UTF-8
    // controls and the bidirectional overrides.
    latin = b"Bchris\0\0csi\x9b2J\0sandy\0\0u3\0\0".to_vec();
    s.write_all(&latin).unwrap();
    assert_eq!(reply(&mut s), "-message contains control code 0x9b");
    s.write_all(&b(["chris", "", "c1 \u{9b}2J", "sandy", "", "u4", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "-message contains control code 0x9b");
    s.write_all(&b(["chris", "", "abc\u{202e}fed", "sandy", "", "u5", ""]))
        .unwrap();
    assert_eq!(
        reply(&mut s),
        "-message contains bidirectional override U+202E"
    );
    s.write_all(&b(["chris", "", "ok", "sandy\u{2066}", "", "u6", ""]))
        .unwrap();
    assert_eq!(
        reply(&mut s),
        "-sender contains bidirectional override U+2066"
    );
    assert_eq!(
        m.delivered(),
        [
            "B|chris||\u{15b}wit||u1||tcp|127.0.0.1|caf\u{e9} 5\u{20ac} \u{15b}",
            "B|chris||sandy||u2||tcp|127.0.0.1|caf\u{e9}",
        ]
    );
}

#[test]
fn control_codes_are_refused_in_every_part_and_escaped_in_the_log() {
    let m = start("");
    let mut s = m.tcp();
    let cases: [([&str; 7], &str); 4] = [
        (
            ["chris", "", "hi", "sandy", "", "\x1b]0;pwned\x07", ""],
            "-cookie contains control code 0x1b",
        ),
        (
            ["chris", "", "hi", "sandy", "", "s1", "sig\x1b[2J"],
            "-signature contains control code 0x1b",
        ),
        (
            ["nobody\nFORGED log line", "", "hi", "sandy", "", "s2", ""],
            "-recipient contains control code 0x0a",
        ),
        (
            ["chris", "", "hi", "evil\x1b[31m", "", "s3", ""],
            "-sender contains control code 0x1b",
        ),
    ];
    for (parts, answer) in cases {
        s.write_all(&b(parts)).unwrap();
        assert_eq!(reply(&mut s), answer);
    }
    // Nothing reached the command's environment.
    assert!(m.delivered().is_empty(), "{:?}", m.delivered());
    assert!(
        m._daemon.wait_log("\"evil\\x1b[31m\"@127.0.0.1"),
        "{}",
        m._daemon.log()
    );
    let log = m._daemon.log();
    assert!(log.contains("nobody\\x0aFORGED log line"), "{log}");
    // The cookie is in the journal's MSP_COOKIE alone; stderr shows the
    // message, which names sender and recipient.
    assert!(!log.contains('\x1b') && !log.contains('\x07'), "{log:?}");
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "a forged log line: {log}"
    );
}

const PLUS: Option<&[u8]> = Some(b"+\0");

#[test]
fn only_udp_retransmissions_of_the_whole_message_are_suppressed() {
    let m = start("");
    let u = m.udp();
    // A client whose cookie is always "-": every text is a new message.
    for text in ["one", "two", "three"] {
        u.send(&b(["chris", "", text, "sandy", "tty1", "-", ""]))
            .unwrap();
        assert_eq!(datagram(&u).as_deref(), PLUS);
    }
    // The same message again over UDP is a retransmission: answered, not
    // shown again.
    u.send(&b(["chris", "", "three", "SANDY", "TTY1", "-", ""]))
        .unwrap();
    assert_eq!(datagram(&u).as_deref(), PLUS);
    // TCP clients do not retransmit: the same message twice is shown twice.
    let mut s = m.tcp();
    for _ in 0..2 {
        s.write_all(&b(["chris", "", "by tcp", "sandy", "tty1", "-", ""]))
            .unwrap();
        assert_eq!(reply(&mut s), "+");
    }
    assert_eq!(m.texts(), ["one", "two", "three", "by tcp", "by tcp"]);
}

#[test]
fn a_retransmission_gets_the_answer_its_first_copy_got() {
    let m = start("");
    let u = m.udp();
    let first = b(["chris", "", "lunch?", "sandy", "", "c1", ""]);
    u.send(&first).unwrap();
    assert_eq!(datagram(&u).as_deref(), PLUS);
    // Now the recipient refuses messages: the retransmission of the
    // delivered message is still acknowledged (it was delivered), a new
    // message is not.
    m.refuse(true);
    u.send(&first).unwrap();
    assert_eq!(datagram(&u).as_deref(), PLUS);
    let refused = b(["chris", "", "dinner?", "sandy", "", "c2", ""]);
    u.send(&refused).unwrap();
    assert_eq!(datagram(&u), None);
    // The refused message stays refused for its retransmissions, even once
    // the recipient accepts messages again, and is never shown.
    m.refuse(false);
    u.send(&refused).unwrap();
    assert_eq!(datagram(&u), None);
    assert_eq!(m.texts(), ["lunch?"]);
}

#[test]
fn copies_arriving_together_are_delivered_once_and_all_answered() {
    let m = start("");
    m.slow(true);
    let msg = b(["chris", "", "at once", "sandy", "", "same", ""]);
    // Copies from several ports of one address while the first is still
    // being delivered: each waits for the first's outcome.
    let copies: Vec<_> = (0..6)
        .map(|_| {
            let (udp, msg) = (m.udp, msg.clone());
            std::thread::spawn(move || {
                let s = udp_from("127.0.0.1", udp);
                s.set_read_timeout(Some(WAIT)).unwrap();
                s.send(&msg).unwrap();
                datagram(&s)
            })
        })
        .collect();
    for c in copies {
        assert_eq!(c.join().unwrap().as_deref(), PLUS);
    }
    assert_eq!(m.texts(), ["at once"]);
}

#[test]
fn version_a_datagrams_are_echoed_only_when_delivered() {
    // Every datagram is charged to the rate, refused or not: three reach
    // the limit below.
    let m = start("rate_per_minute = 3");
    let u = m.udp();
    let delivered = b"Achris\0\0delivered\0".to_vec();
    u.send(&delivered).unwrap();
    assert_eq!(datagram(&u), Some(delivered));
    // Refused by the delivery command, or for a control code: silence, as
    // for every other failure over UDP (an echo would make tcpmuxd a
    // reflector).
    u.send(b"Anobody\0\0refused\0").unwrap();
    assert_eq!(datagram(&u), None);
    u.send(b"Achris\0\0\x1b[2J\0").unwrap();
    assert_eq!(datagram(&u), None);
    // Over the rate limit: silence.
    u.send(b"Achris\0\0over the rate\0").unwrap();
    assert_eq!(datagram(&u), None);
    assert_eq!(m.texts(), ["delivered"]);
}

/// Answers to `u` until none comes within its read timeout.
fn count_answers(u: &UdpSocket) -> usize {
    std::iter::from_fn(|| datagram(u)).count()
}

#[test]
fn a_flood_of_version_a_datagrams_gets_at_most_the_rate_in_answers() {
    // The reflection attack: 200 datagrams from a forged source, each with
    // a control code, used to be echoed one by one.
    let m = start("rate_per_minute = 5");
    let risky = udp_from("127.0.0.1", m.udp);
    for i in 0..200 {
        risky
            .send(format!("Achris\0\0\x1b[2J{i}\0").as_bytes())
            .unwrap();
    }
    assert_eq!(count_answers(&risky), 0, "refusals are never echoed");
    // Deliverable ones get at most the source's rate in answers.
    let valid = udp_from("127.0.0.3", m.udp);
    for i in 0..200 {
        valid
            .send(format!("Achris\0\0hello {i}\0").as_bytes())
            .unwrap();
    }
    let answers = count_answers(&valid);
    assert!((1..=5).contains(&answers), "{answers} answers");
    assert!(m.delivered().len() <= 5, "{:?}", m.delivered());
}

#[test]
fn refused_messages_are_charged_to_the_source_rate() {
    let m = start("rate_per_minute = 3");
    let mut s = m.tcp();
    for i in 0..3 {
        s.write_all(&b([
            "chris",
            "",
            "\x1b[2J",
            "sandy",
            "",
            &format!("c{i}"),
            "",
        ]))
        .unwrap();
        assert_eq!(reply(&mut s), "-message contains control code 0x1b");
    }
    s.write_all(&b(["chris", "", "fine", "sandy", "", "c3", ""]))
        .unwrap();
    assert_eq!(
        reply(&mut s),
        "-too many messages from your address; slow down"
    );
    assert!(m.delivered().is_empty());
}

/// Sends a UDP datagram with a forged source address and port, through a
/// raw socket (root only).
fn send_forged(from: SocketAddr, to: SocketAddr, payload: &[u8]) {
    let (SocketAddr::V4(from), SocketAddr::V4(to)) = (from, to) else {
        panic!("IPv4 only")
    };
    let udp_len = 8 + payload.len();
    let mut packet = Vec::with_capacity(20 + udp_len);
    // IPv4 header: the kernel fills in the total length and the checksum.
    packet.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    packet.extend_from_slice(&from.ip().octets());
    packet.extend_from_slice(&to.ip().octets());
    // UDP header, checksum 0: none.
    packet.extend_from_slice(&from.port().to_be_bytes());
    packet.extend_from_slice(&to.port().to_be_bytes());
    packet.extend_from_slice(&(udp_len as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    // SAFETY: plain socket calls on a descriptor we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(*to.ip()).to_be();
        let sent = libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of_val(&sa) as u32,
        );
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(sent, packet.len() as isize, "sendto: {error}");
    }
}

#[test]
fn a_datagram_from_the_servers_own_address_and_port_is_not_answered() {
    if !is_root() {
        eprintln!("skipped: forging a source address needs a raw socket, and root");
        return;
    }
    // The self-loop: one datagram that seems to come from the server's own
    // address and port used to make it answer itself endlessly.
    let m = start("");
    send_forged(m.udp, m.udp, b"Achris\0\0myself\0");
    assert!(
        m._daemon.wait_log(": msp-service-port"),
        "{}",
        m._daemon.log()
    );
    // Served as before, and the forged one never delivered nor answered.
    let u = m.udp();
    u.send(b"Achris\0\0after\0").unwrap();
    assert!(datagram(&u).is_some());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(m.texts(), ["after"]);
}

#[test]
fn two_servers_answer_each_other_at_most_once() {
    if !is_root() {
        eprintln!("skipped: forging a source address needs a raw socket, and root");
        return;
    }
    // The two-server loop: one datagram forged to come from B's port, sent
    // to A. A answers B, B answers A, and there it stops.
    let a = start("");
    let b = start("");
    send_forged(b.udp, a.udp, b"Achris\0\0ping-pong\0");
    assert!(a._daemon.wait_log(": msp-loop"), "{}", a._daemon.log());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(a.texts(), ["ping-pong"], "A answered once");
    assert_eq!(b.texts(), ["ping-pong"], "B answered once");
    // A second server's answer is not an answer to the next message.
    let u = a.udp();
    u.send(b"Achris\0\0ping-pong\0").unwrap();
    assert!(datagram(&u).is_some());
}

#[test]
fn a_flood_of_refusals_is_summed_up_and_a_session_after_it_is_logged() {
    let m = start_logging("", "info");
    // Over TCP: five connections of 101 messages with a control code each.
    // Each is cut after max_messages_per_connection (100) answers.
    let flood = b(["chris", "", "\x1b[2J", "sandy", "", "f", ""]).repeat(101);
    for _ in 0..5 {
        let mut s = m.tcp();
        s.write_all(&flood).unwrap();
        let replies = read_to_end(&mut s);
        let replies: Vec<&[u8]> = replies
            .strip_suffix(b"\0")
            .unwrap_or(&replies)
            .split(|&c| c == 0)
            .collect();
        assert_eq!(replies.len(), 101, "one connection carries at most 100");
        assert_eq!(
            replies[100],
            b"-too many messages on one connection; connect again"
        );
    }
    // Over UDP: 2000 refused datagrams, and malformed ones.
    let u = m.udp();
    for i in 0..2000 {
        u.send(&b(["chris", "", "\x07", "sandy", "", &format!("u{i}"), ""]))
            .unwrap();
        if i % 10 == 0 {
            u.send(b"Bjunk").unwrap();
        }
    }
    // A TCPMUX session right after it has its entry.
    let mut s = m._daemon.connect();
    s.write_all(b"echo\r\nafter the flood").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let out = read_to_end(&mut s);
    assert!(out.starts_with(b"+"), "{out:?}");
    assert!(
        m._daemon.wait_log("echo from 127.0.0.1"),
        "{}",
        m._daemon.log()
    );
    // The flood is one summary line, with counts.
    assert!(m._daemon.wait_log("msp-refused"), "{}", m._daemon.log());
    let log = m._daemon.log();
    assert!(m.delivered().is_empty());
    // The startup lines, a summary and the limits hit in each interval,
    // the session: nothing per message.
    assert!(
        log.lines().count() <= 30,
        "{} lines:\n{log}",
        log.lines().count()
    );
}

#[test]
fn silent_connections_give_way_to_a_sender_from_a_new_address() {
    // 16 addresses x 16 silent connections fill the 256 places (each
    // address at its share of 16).
    let m = start("");
    let mut silent = Vec::new();
    for a in 1..=16 {
        for _ in 0..16 {
            silent.push(connect_from(&format!("127.0.1.{a}"), m.tcp));
        }
    }
    // A sender from a new address is served while they stay.
    let mut s = connect_from("127.0.2.1", m.tcp);
    s.write_all(&b(["chris", "", "still served", "sandy", "", "1", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "+");
    // It took the place of the oldest silent one.
    assert!(m._daemon.wait_log(": msp-shed"), "{}", m._daemon.log());
    assert!(closed_by_daemon(&mut silent[0]), "the oldest gave way");
    assert!(
        !closed_by_daemon(&mut silent[255]),
        "the newest kept its place"
    );
    // A source at its share still makes no one give way.
    let mut over = connect_from("127.0.1.16", m.tcp);
    assert!(read_to_end(&mut over).is_empty());
    assert!(!closed_by_daemon(&mut silent[1]));
    assert_eq!(m.texts(), ["still served"]);
}

#[test]
fn remembered_messages_are_forgotten_after_the_window_without_new_traffic() {
    let m = start("dedup_window = \"3s\"");
    for i in 0..20 {
        let u = m.udp();
        u.send(&b(["chris", "", "hi", "sandy", "", &format!("w{i}"), ""]))
            .unwrap();
        assert_eq!(datagram(&u).as_deref(), PLUS);
    }
    // 20 messages and 20 answers (one per source port) remembered, then
    // forgotten on the timer, with no datagram to trigger it.
    assert!(
        m._daemon
            .wait_notify("MSP: 20 delivered, 0 refused, 40 remembered"),
        "{}",
        m._daemon.log()
    );
    assert!(
        m._daemon
            .wait_notify("MSP: 20 delivered, 0 refused, 0 remembered"),
        "{}",
        m._daemon.log()
    );
}

/// Whether the daemon has closed `s` (reading shows the end, or a reset).
fn closed_by_daemon(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn a_message_trickled_a_byte_at_a_time_is_cut_off_after_idle_timeout() {
    let m = start("idle_timeout = \"1s\"\nconnection_timeout = \"5m\"");
    let mut s = m.tcp();
    s.set_nodelay(true).unwrap();
    s.write_all(b"Bchris\0\0").unwrap();
    // Each byte used to restart the timer; now the message has its
    // idle_timeout, however it is cut up. 400 bytes at 0.1 s would take 40 s.
    let mut cut_off = false;
    for _ in 0..400 {
        if s.write_all(b"x").is_err() || closed_by_daemon(&mut s) {
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "a trickling client holds its connection");
    assert!(m.delivered().is_empty());
    // Whole messages, each in time, go on until connection_timeout.
    let m = start("idle_timeout = \"1s\"\nconnection_timeout = \"2s\"");
    let mut s = m.tcp();
    let mut answered = 0;
    for i in 0..200 {
        let sent = s.write_all(&b(["chris", "", "hi", "sandy", "", &format!("k{i}"), ""]));
        let mut byte = [0u8; 2];
        if sent.is_err() || !matches!(s.read(&mut byte), Ok(2)) {
            break;
        }
        answered += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(answered > 0 && answered < 200, "{answered} answered");
}

#[test]
fn one_source_cannot_hold_all_tcp_connections() {
    let m = start("max_connections_per_source = 2");
    let held: Vec<TcpStream> = (0..2).map(|_| m.tcp()).collect();
    // The third from the same address is closed at once.
    let mut third = m.tcp();
    assert!(read_to_end(&mut third).is_empty());
    // Another source still gets in.
    let mut other = connect_from("127.0.0.2", m.tcp);
    other
        .write_all(&b(["chris", "", "from elsewhere", "sandy", "", "1", ""]))
        .unwrap();
    assert_eq!(reply(&mut other), "+");
    // A place given back is a place free again.
    drop(held);
    assert!(wait_until(|| {
        let mut s = m.tcp();
        let _ = s.write_all(&b(["chris", "", "back", "sandy", "", "2", ""]));
        let _ = s.shutdown(std::net::Shutdown::Write);
        read_to_end(&mut s) == b"+\0"
    }));
    assert!(
        m._daemon.wait_log("msp max_connections_per_source"),
        "{}",
        m._daemon.log()
    );
    assert_eq!(m.texts(), ["from elsewhere", "back"]);
}

#[test]
fn one_recipient_gets_at_most_its_rate_from_all_sources_together() {
    let m = start("recipient_rate_per_minute = 3");
    // Three sources, one message each: the recipient's allowance.
    for i in 2..5 {
        let mut s = connect_from(&format!("127.0.0.{i}"), m.tcp);
        s.write_all(&b([
            "chris",
            "",
            &format!("from {i}"),
            "sandy",
            "",
            "r",
            "",
        ]))
        .unwrap();
        assert_eq!(reply(&mut s), "+");
    }
    // A fourth source: refused over TCP, silence over UDP.
    let mut s = connect_from("127.0.0.5", m.tcp);
    s.write_all(&b(["CHRIS", "", "one more", "sandy", "", "r", ""]))
        .unwrap();
    assert_eq!(
        reply(&mut s),
        "-too many messages for this recipient; try again later"
    );
    let u = udp_from("127.0.0.6", m.udp);
    u.send(&b(["chris", "", "by udp", "sandy", "", "r6", ""]))
        .unwrap();
    assert_eq!(datagram(&u), None);
    // Other recipients are not affected.
    s.write_all(&b(["dana", "", "for dana", "sandy", "", "r", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "+");
    assert!(
        m._daemon.wait_log("2 msp recipient_rate_per_minute"),
        "{}",
        m._daemon.log()
    );
    assert_eq!(m.texts(), ["from 2", "from 3", "from 4", "for dana"]);
}

#[test]
fn all_messages_together_are_held_to_the_total_rate() {
    let m = start("total_rate_per_minute = 4");
    for i in 2..6 {
        let mut s = connect_from(&format!("127.0.0.{i}"), m.tcp);
        s.write_all(&b([&format!("user{i}"), "", "hi", "sandy", "", "t", ""]))
            .unwrap();
        assert_eq!(reply(&mut s), "+");
    }
    let mut s = connect_from("127.0.0.9", m.tcp);
    s.write_all(&b(["user9", "", "hi", "sandy", "", "t", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "-too many messages; try again later");
    let u = udp_from("127.0.0.10", m.udp);
    u.send(&b(["user10", "", "hi", "sandy", "", "t10", ""]))
        .unwrap();
    assert_eq!(datagram(&u), None);
    assert!(
        m._daemon.wait_log("2 msp total_rate_per_minute"),
        "{}",
        m._daemon.log()
    );
    assert_eq!(m.delivered().len(), 4);
}

#[test]
fn a_flood_from_more_sources_than_are_tracked_is_served_and_still_limited() {
    // More sources than the per-source table holds (16384), one message
    // each, answered one by one: the table cleans up as it goes instead of
    // scanning itself for every new source.
    // Journal delivery: no process per message (and, without journald,
    // refused at once; over TCP every message is answered either way).
    let m = start("deliver = \"journal\"\nrate_per_minute = 2");
    let sources = 17_000u32;
    let message = b(["chris", "", "flood", "sandy", "", "f", ""]);
    for i in 0..sources {
        let ip = format!("127.{}.{}.{}", 1 + i / 62_500, (i / 250) % 250, 1 + i % 250);
        let mut s = connect_from(&ip, m.tcp);
        s.write_all(&message).unwrap();
        let answer = reply(&mut s);
        assert!(!answer.contains("too many"), "{ip}: {answer}");
    }
    // The limit still holds for a source that sends too much.
    let mut s = connect_from("127.0.0.1", m.tcp);
    for _ in 0..2 {
        s.write_all(&message).unwrap();
        assert!(!reply(&mut s).contains("too many"));
    }
    s.write_all(&message).unwrap();
    assert_eq!(
        reply(&mut s),
        "-too many messages from your address; slow down"
    );
}

/// Datagrams being delivered take one of a few places (64): one source
/// holding them all with slow deliveries would silence every other sender.
/// A source has a share of them.
#[test]
fn one_source_cannot_hold_every_delivery_place() {
    let m = start("");
    m.slow(true);
    let flooder = udp_from("127.0.0.2", m.udp);
    for i in 0..100 {
        flooder
            .send(&b([
                "chris",
                "",
                &format!("flood {i}"),
                "sandy",
                "",
                &i.to_string(),
                "",
            ]))
            .unwrap();
    }
    let other = udp_from("127.0.0.3", m.udp);
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    other
        .send(&b(["chris", "", "from another source", "pat", "", "1", ""]))
        .unwrap();
    assert_eq!(
        datagram(&other).as_deref(),
        PLUS,
        "the other source's message was dropped while one source's deliveries held every place"
    );
}

/// The total rate is what tcpmuxd will deliver for everyone together: junk
/// (malformed or refused messages, from any number of made-up UDP
/// sources) must not use it up, and UDP, whose sources can be forged,
/// takes at most half of it, so that TCP senders (whose addresses are
/// real) keep the rest.
#[test]
fn junk_and_forgeable_udp_cannot_use_up_the_total_rate() {
    let m = start("total_rate_per_minute = 20");
    // Junk from 100 sources: each within its own rate.
    for i in 0..100u32 {
        let u = udp_from(&format!("127.9.{}.{}", i / 50, 1 + i % 50), m.udp);
        u.send(b"x").unwrap();
    }
    // Well-formed messages over UDP from 30 more sources.
    let senders: Vec<UdpSocket> = (0..30u32)
        .map(|i| {
            let u = udp_from(&format!("127.10.0.{}", 1 + i), m.udp);
            let text = format!("udp {i}");
            u.send(&b(["chris", "", &text, "sandy", "", &i.to_string(), ""]))
                .unwrap();
            u
        })
        .collect();
    let acknowledged = senders
        .iter()
        .filter(|u| datagram(u).as_deref() == PLUS)
        .count();
    // Half the total, and what a few seconds add to it (one every 6 s).
    assert!(
        acknowledged <= 11,
        "UDP took {acknowledged} of a total of 20"
    );
    // A TCP sender from a new address is still served.
    let mut s = connect_from("127.11.0.1", m.tcp);
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&b(["chris", "", "over tcp", "sandy", "", "t", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "+");
}

/// `--only msp` (tcpmuxd-msp.service): MSP's sockets alone are enough,
/// no TCPMUX is served, and messages are delivered over TCP and UDP.
#[test]
fn only_msp_serves_msp_without_a_tcpmux_socket() {
    let m = start_as("", "debug", Only::Msp);
    let mut s = m.tcp();
    s.write_all(&b(["chris", "", "over tcp", "sandy", "", "o1", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "+");
    let u = m.udp();
    u.send(&b(["chris", "", "over udp", "sandy", "", "o2", ""]))
        .unwrap();
    assert_eq!(datagram(&u).as_deref(), Some(&b"+\0"[..]));
    assert_eq!(m.texts(), ["over tcp", "over udp"]);
    let log = m._daemon.log();
    assert!(
        log.contains("serving the Message Send Protocol only"),
        "{log}"
    );
    assert!(!log.contains("listening for TCPMUX"), "{log}");
    // Its STATUS= line is MSP's alone.
    let notified = m._daemon.notified();
    assert!(
        notified.contains("STATUS=MSP: ") && !notified.contains("in handshake"),
        "{notified}"
    );
}

/// Without socket activation, `--only msp` binds `[msp] listen` and
/// nothing else; with `[msp] listen` empty it has nothing to serve, and
/// says so (exit 78).
#[test]
fn only_msp_binds_only_msp_listen() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[msp]\ndeliver = \"journal\"\n").unwrap();
    let out = daemon_command(&config, &[])
        .args(["--only", "msp", "--log-target", "stderr"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("[msp] listen") && err.contains("empty"),
        "{err}"
    );

    let d = Daemon::start_opts(
        "[msp]\nlisten = [\"127.0.0.1:0\"]\ndeliver = \"journal\"\n",
        Options {
            passed: vec![],
            customize: Box::new(|c| {
                c.args(["--only", "msp"]);
            }),
            ..Options::default()
        },
    );
    assert!(d.wait_log("listening for MSP on 127.0.0.1:"), "{}", d.log());
    assert!(!d.log().contains("listening for TCPMUX"), "{}", d.log());
}

/// An invalid configuration under `--only msp`, socket-activated: the
/// sockets are held, TCP messages are refused, datagrams get silence and
/// are not remembered; after a valid reload the same message is
/// delivered.
#[test]
fn only_msp_with_an_invalid_config_refuses_until_a_valid_reload() {
    let m = start_as("", "debug", Only::MspBroken);
    let notified = m._daemon.notified();
    assert!(
        notified.contains("STATUS=not serving")
            && notified.contains("1 error, in ")
            && notified.contains("systemctl reload tcpmuxd-msp"),
        "{notified}"
    );
    let mut s = m.tcp();
    s.write_all(&b(["chris", "", "too early", "sandy", "", "e1", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "-service unavailable");
    let u = m.udp();
    let early = b(["chris", "", "retried", "sandy", "", "e2", ""]);
    u.send(&early).unwrap();
    assert_eq!(datagram(&u), None);
    assert!(m.delivered().is_empty());

    let path = m._daemon.config_path();
    let fixed = std::fs::read_to_string(&path)
        .unwrap()
        .replace("no_such_key = 1\n", "");
    m._daemon.rewrite_config(&fixed);
    m._daemon.reload();
    u.send(&early).unwrap();
    assert_eq!(datagram(&u).as_deref(), Some(&b"+\0"[..]));
    assert_eq!(m.texts(), ["retried"]);
}

/// The delivery command, run by tcpmuxd itself, creates its files with the
/// umask of every program tcpmuxd starts (0077, as under systemd): the
/// messages it records are readable by its user alone.
#[test]
fn the_delivery_command_runs_with_the_safe_umask() {
    use std::os::unix::fs::PermissionsExt;
    let m = start("");
    let mut s = m.tcp();
    s.write_all(&b(["chris", "", "private", "sandy", "", "u1", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "+");
    assert_eq!(m.texts(), ["private"]);
    let mode = std::fs::metadata(&m.log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
}

/// `[tcpmux] umask` is the delivery command's too, as `[tcpmux] user` is.
#[test]
fn the_delivery_command_gets_the_umask_of_tcpmux() {
    use std::os::unix::fs::PermissionsExt;
    let m = start("\n[tcpmux]\numask = \"0027\"\n");
    let mut s = m.tcp();
    s.write_all(&b(["chris", "", "shared", "sandy", "", "u2", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "+");
    assert_eq!(m.texts(), ["shared"]);
    let mode = std::fs::metadata(&m.log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "{mode:o}");
}

#[test]
fn a_burst_through_a_trusted_proxy_is_held_to_each_clients_share_not_the_balancers() {
    // Many clients behind one balancer, each connection's header and
    // message in one write, all queued before the daemon reads any: each
    // client has a share of its own, so none is refused for the
    // balancer's (max_connections_per_source = 4 here).
    let m = start(
        "trusted_proxies = [\"127.0.0.2\"]\nmax_connections_per_source = 4\n\
         rate_per_minute = 100000\ntotal_rate_per_minute = 100000\n\
         recipient_rate_per_minute = 100000",
    );
    let msg = |text: &str| b(["chris", "", text, "sandy", "console", "c1", ""]);
    let mut conns: Vec<TcpStream> = (0..32)
        .map(|i| {
            let mut s = connect_from("127.0.0.2", m.tcp);
            let mut sent =
                format!("PROXY TCP4 192.0.2.{} 127.0.0.1 4000 18\r\n", i + 1).into_bytes();
            sent.extend_from_slice(&msg(&format!("burst {i}")));
            s.write_all(&sent).unwrap();
            s
        })
        .collect();
    let answered = conns
        .iter_mut()
        .map(|s| {
            let mut out = [0u8; 2];
            s.read_exact(&mut out).is_ok() && &out == b"+\0"
        })
        .filter(|&ok| ok)
        .count();
    assert_eq!(answered, 32, "{}", m._daemon.log());
}

#[test]
fn an_msp_header_completed_after_a_reload_that_removed_the_trust_is_not_believed() {
    let m = start("trusted_proxies = [\"127.0.0.2\"]");
    let msg = |text: &str| b(["chris", "", text, "sandy", "console", "c1", ""]);
    let header = b"PROXY TCP4 192.0.2.9 127.0.0.1 4000 18\r\n";
    let mut s = connect_from("127.0.0.2", m.tcp);
    s.write_all(&header[..10]).unwrap();
    let config = std::fs::read_to_string(m._daemon.config_path()).unwrap();
    m._daemon
        .rewrite_config(&config.replace("trusted_proxies = [\"127.0.0.2\"]", ""));
    m._daemon.reload();
    s.write_all(&header[10..]).unwrap();
    s.write_all(&msg("after the reload")).unwrap();
    // Closed without a reply (the daemon keeps the connection open after
    // a message it answered: then the read times out).
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.is_empty(), "{out:?}");
    assert!(
        !m.delivered().iter().any(|l| l.contains("192.0.2.9")),
        "a header from an address no longer trusted was believed: {:?}",
        m.delivered()
    );
}

#[test]
fn an_msp_deny_added_while_a_header_was_on_its_way_applies_to_its_client() {
    let m = start("trusted_proxies = [\"127.0.0.2\"]");
    let msg = |text: &str| b(["chris", "", text, "sandy", "console", "c1", ""]);
    let header = b"PROXY TCP4 192.0.2.51 127.0.0.1 4000 18\r\n";
    let mut s = connect_from("127.0.0.2", m.tcp);
    s.write_all(&header[..10]).unwrap();
    let config = std::fs::read_to_string(m._daemon.config_path()).unwrap();
    m._daemon.rewrite_config(&config.replace(
        "trusted_proxies = [\"127.0.0.2\"]",
        "trusted_proxies = [\"127.0.0.2\"]\ndeny = [\"192.0.2.51\"]",
    ));
    m._daemon.reload();
    s.write_all(&header[10..]).unwrap();
    s.write_all(&msg("denied after the reload")).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.is_empty(), "{out:?}");
    assert!(
        !m.delivered().iter().any(|l| l.contains("192.0.2.51")),
        "{:?}",
        m.delivered()
    );
}
