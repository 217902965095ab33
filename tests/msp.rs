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
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("delivered.log");
    let recorder = script(
        dir.path(),
        "deliver",
        &format!(
            "text=$(cat)\n\
             if [ \"$MSP_RECIPIENT\" = nobody ]; then echo 'nobody: no such user' >&2; echo second line >&2; exit 1; fi\n\
             printf '%s|%s|%s|%s|%s|%s|%s|%s|%s|%s\\n' \"$MSP_VERSION\" \"$MSP_RECIPIENT\" \"$MSP_RECIPIENT_TERMINAL\" \
             \"$MSP_SENDER\" \"$MSP_SENDER_TERMINAL\" \"$MSP_COOKIE\" \"$MSP_SIGNATURE\" \"$MSP_TRANSPORT\" \"$REMOTE_ADDR\" \"$text\" >> {}",
            log.display()
        ),
    );
    let rate = if extra.contains("rate_per_minute") {
        ""
    } else {
        "rate_per_minute = 100000"
    };
    let config = format!(
        "[msp]\ndeliver = \"command\"\ncommand = [\"{recorder}\"]\n{rate}\n{extra}\n\
         [[service]]\nname = \"echo\"\ncommand = [\"/bin/cat\"]\n"
    );
    let tcp_listener = loopback_listener();
    let udp_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (tcp, udp) = (
        tcp_listener.local_addr().unwrap(),
        udp_socket.local_addr().unwrap(),
    );
    let passed = vec![
        Passed::Stream(tcp_listener, "msp"),
        Passed::Stream(loopback_listener(), "tcpmux"),
        Passed::Datagram(udp_socket, "msp"),
    ];
    let d = Daemon::start_with(&config, &[], passed);
    Msp {
        _daemon: d,
        tcp,
        udp,
        log,
        _dir: dir,
    }
}

impl Msp {
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
        .rewrite_config(&text.replace("rate_per_minute = 100000", "rate_per_minute = 1"));
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

/// A pseudo-terminal the test owns, listed in a utmp file as `user`'s.
struct Pty {
    master: std::fs::File,
    line: String,
    slave_path: PathBuf,
    _slave: std::os::fd::OwnedFd,
}

fn open_pty(utmp: &Path, user: &str) -> Pty {
    let pty = nix::pty::openpty(None, None).unwrap();
    let slave_path = nix::unistd::ttyname(&pty.slave).unwrap();
    let line = slave_path
        .strip_prefix("/dev")
        .unwrap()
        .to_string_lossy()
        .trim_start_matches('/')
        .to_string();
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
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&entry as *const libc::utmpx).cast::<u8>(),
            std::mem::size_of::<libc::utmpx>(),
        )
    };
    std::fs::write(utmp, bytes).unwrap();
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

fn mesg(pty: &Pty, allow: bool) {
    use std::os::unix::fs::PermissionsExt;
    let mode = if allow { 0o620 } else { 0o600 };
    std::fs::set_permissions(&pty.slave_path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn the_tty_method_writes_to_the_users_terminal_and_honours_mesg() {
    let dir = tempfile::tempdir().unwrap();
    let utmp = dir.path().join("utmp");
    let mut pty = open_pty(&utmp, "tester");
    let config = format!("[msp]\ndeliver = \"tty\"\nutmp = \"{}\"\n", utmp.display());
    let (_d, mut s) = msp_tcp_daemon(&config);

    mesg(&pty, true);
    s.write_all(&b([
        "tester",
        "",
        "Hi\r\nlunch?",
        "sandy",
        "console",
        "1",
        "",
    ]))
    .unwrap();
    assert_eq!(reply(&mut s), "+");
    let mut shown = vec![0u8; 4096];
    let n = pty.master.read(&mut shown).unwrap();
    let mut text = String::from_utf8_lossy(&shown[..n]).into_owned();
    while !text.contains("EOF") {
        let n = pty.master.read(&mut shown).unwrap();
        text.push_str(&String::from_utf8_lossy(&shown[..n]));
    }
    assert!(
        text.contains("Message from sandy@127.0.0.1 on console"),
        "{text:?}"
    );
    assert!(text.contains("Hi\r\nlunch?\r\nEOF\r\n"), "{text:?}");

    // Named terminal, and "*".
    s.write_all(&b(["tester", &pty.line, "named", "sandy", "", "2", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "+");
    s.write_all(&b(["tester", "*", "all", "sandy", "", "3", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "+");
    s.write_all(&b(["tester", "tty63", "elsewhere", "sandy", "", "4", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "-tester is not logged in on tty63");
    s.write_all(&b(["someone", "", "hi", "sandy", "", "5", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "-someone is not logged in");

    mesg(&pty, false);
    s.write_all(&b(["tester", "", "refused", "sandy", "", "6", ""]))
        .unwrap();
    assert_eq!(reply(&mut s), "-tester has messages disabled");
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
    let out = run(&["--port", "1", "x@127.0.0.1", "\u{263a}"]);
    assert_eq!(out.status.code(), Some(2), "not ISO 8859-1");
}

#[test]
fn a_service_named_msp_is_a_config_error_naming_it() {
    // It would share drop-ins (tcpmux-msp@.service.d/) and session counting
    // with the MSP delivery units.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tcpmuxd.toml");
    std::fs::write(
        &path,
        "[[service]]\nname = \"Msp\"\ncommand = [\"/bin/cat\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(DAEMON)
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
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
    assert!(d.wait_log("listening for MSP on "), "{}", d.log());
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
    let socket = std::fs::read_to_string(units.join("tcpmuxd-msp.socket")).unwrap();
    assert!(socket.contains("Service=tcpmuxd.service"));
    assert!(socket.contains("WantedBy=sockets.target"));
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
        m._daemon.wait_log("evil\\x1b[31m@127.0.0.1"),
        "{}",
        m._daemon.log()
    );
    let log = m._daemon.log();
    assert!(log.contains("nobody\\x0aFORGED log line"), "{log}");
    assert!(log.contains("\\x1b]0;pwned\\x07"), "{log}");
    assert!(!log.contains('\x1b') && !log.contains('\x07'), "{log:?}");
    assert!(
        !log.lines().any(|l| l.starts_with("FORGED")),
        "a forged log line: {log}"
    );
}
