//! The TCPMUX protocol spoken over real loopback sockets to the real daemon.

mod common;

use common::*;
use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

const BASE: &str = r#"
[tcpmux]
name_timeout = "2s"

[[service]]
name = "echo"
command = ["/bin/cat"]

[[service]]
name = "Dedicated"
command = ["/bin/sh", "-c", "printf '+Go ahead\r\n'; exec cat"]
plus = false

[[service]]
name = "env"
command = ["/usr/bin/env"]
"#;

#[test]
fn help_lists_every_service_one_per_crlf_line_then_closes() {
    let d = Daemon::start(BASE);
    let reply = d.exchange(b"HELP\r\n");
    assert_eq!(reply, b"echo\r\nDedicated\r\nenv\r\n");
    // Any case, bare LF.
    assert_eq!(d.exchange(b"help\n"), reply);
    assert_eq!(d.exchange(b"HeLp\r\n"), reply);
}

#[test]
fn names_are_case_insensitive_and_plus_comes_first() {
    let d = Daemon::start(BASE);
    for name in ["echo", "ECHO", "eChO"] {
        let mut s = d.connect();
        s.write_all(format!("{name}\r\n").as_bytes()).unwrap();
        assert_eq!(read_line(&mut s), b"+\r\n");
        s.write_all(b"ping\n").unwrap();
        assert_eq!(read_line(&mut s), b"ping\n");
    }
}

#[test]
fn bare_lf_ends_the_name() {
    let d = Daemon::start(BASE);
    let mut s = d.connect();
    s.write_all(b"echo\n").unwrap();
    assert_eq!(read_line(&mut s), b"+\r\n");
}

/// inetutils telnet sends a CR typed as part of the input as CR NUL (RFC
/// 854's bare carriage return) and then the line end as CR LF:
/// `echo\r\0\r\n`. inetutils-inetd accepts that line; so does tcpmuxd.
#[test]
fn a_telnet_line_end_with_cr_nul_names_the_service() {
    let d = Daemon::start(BASE);
    for line in [&b"echo\r\0\r\n"[..], b"echo\r\0\n", b"HELP\r\0\r\n"] {
        let mut s = d.connect();
        s.write_all(line).unwrap();
        let reply = read_line(&mut s);
        assert!(
            reply == b"+\r\n" || reply == b"echo\r\n",
            "{line:?} got {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    // A NUL anywhere else is still no part of a name; nor is a second CR
    // or a form feed: only spaces and tabs around the name are dropped.
    for line in [
        &b"ec\0ho\r\n"[..],
        b"echo\r\r\n",
        b"\x0cecho\r\n",
        b"echo\x0b\n",
    ] {
        let mut s = d.connect();
        s.write_all(line).unwrap();
        assert_eq!(read_line(&mut s), b"-Invalid service name\r\n", "{line:?}");
    }
}

/// The longest name fits with the blanks around it and telnet's line end:
/// only the name counts against its 255 bytes.
#[test]
fn blanks_and_the_line_end_do_not_count_against_the_name() {
    let d = Daemon::start(BASE);
    let name = "n".repeat(255);
    for line in [
        format!("{name}\r\0\r\n"),
        format!("{}{name}\t\r\n", " ".repeat(20)),
    ] {
        assert_eq!(
            d.exchange(line.as_bytes()),
            b"-Unknown service\r\n",
            "{} bytes",
            line.len()
        );
    }
    assert_eq!(
        d.exchange(format!("{name}n\r\n").as_bytes()),
        b"-Service name too long\r\n"
    );
}

#[test]
fn name_split_over_many_writes() {
    let d = Daemon::start(BASE);
    let mut s = d.connect();
    s.set_nodelay(true).unwrap();
    for b in b"echo\r\n" {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(read_line(&mut s), b"+\r\n");
    s.write_all(b"x\n").unwrap();
    assert_eq!(read_line(&mut s), b"x\n");
}

/// The name is usually there as the connection is accepted, and is then
/// taken without waiting; a name that comes later, or in pieces, is waited
/// for. Either way the bytes behind the line stay for the program.
#[test]
fn a_name_that_comes_after_the_connection_is_waited_for() {
    let d = Daemon::start(BASE);
    let mut s = d.connect();
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"HELP\r\n").unwrap();
    assert_eq!(read_to_end(&mut s), b"echo\r\nDedicated\r\nenv\r\n");
    let mut s = d.connect();
    std::thread::sleep(Duration::from_millis(300));
    s.write_all(b"echo\r\nafter a pause\n").unwrap();
    assert_eq!(read_line(&mut s), b"+\r\n");
    assert_eq!(read_line(&mut s), b"after a pause\n");
}

#[test]
fn a_name_split_across_segments_keeps_the_data_behind_it() {
    let d = Daemon::start(BASE);
    for (first, rest) in [
        ("ec", "ho\r\nsplit\n"),
        ("echo", "\r\nsplit\n"),
        ("echo\r", "\nsplit\n"),
    ] {
        let mut s = d.connect();
        s.set_nodelay(true).unwrap();
        s.write_all(first.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(rest.as_bytes()).unwrap();
        assert_eq!(read_line(&mut s), b"+\r\n", "{first:?} then {rest:?}");
        assert_eq!(read_line(&mut s), b"split\n", "{first:?} then {rest:?}");
    }
}

/// With `defer_accept`, the kernel hands a connection over once its first
/// data came: a name sent at once, later or in pieces is served as
/// without it, and a silent client reaches tcpmuxd after the deferral and
/// is timed out as any other.
#[test]
fn with_defer_accept_names_are_served_and_silence_still_times_out() {
    let d = Daemon::start(&BASE.replace(
        "name_timeout = \"2s\"",
        "name_timeout = \"300ms\"\ndefer_accept = \"1s\"",
    ));
    assert_eq!(d.exchange(b"HELP\r\n"), b"echo\r\nDedicated\r\nenv\r\n");
    let mut s = d.connect();
    std::thread::sleep(Duration::from_millis(200));
    s.write_all(b"echo\r\nlater\n").unwrap();
    assert_eq!(read_line(&mut s), b"+\r\n");
    assert_eq!(read_line(&mut s), b"later\n");
    let mut s = d.connect();
    s.set_nodelay(true).unwrap();
    s.write_all(b"ec").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"ho\r\nsplit\n").unwrap();
    assert_eq!(read_line(&mut s), b"+\r\n");
    assert_eq!(read_line(&mut s), b"split\n");
    let mut silent = d.connect();
    assert_eq!(
        read_to_end(&mut silent),
        b"-Timed out waiting for the service name\r\n"
    );
    assert!(d.wait_log(": timeout (name_timeout)"), "{}", d.log());
}

/// What README.md says an administrator sees with `defer_accept`: silent
/// connections wait in the kernel, outside the per-source limit, so that a
/// client of the same address that sends its name is still served.
#[test]
fn with_defer_accept_silent_connections_wait_outside_the_per_source_limit() {
    let d = Daemon::start(&BASE.replace(
        "name_timeout = \"2s\"",
        "name_timeout = \"2s\"\ndefer_accept = \"10s\"\nmax_handshakes_per_source = 2",
    ));
    let silent: Vec<_> = (0..4).map(|_| d.connect()).collect();
    assert_eq!(d.exchange(b"HELP\r\n"), b"echo\r\nDedicated\r\nenv\r\n");
    drop(silent);
}

#[test]
fn data_sent_with_the_name_reaches_the_service() {
    let d = Daemon::start(BASE);
    // Plus mode: all in one write, then close our side.
    let mut s = d.connect();
    s.write_all(b"echo\r\nfirst line\nsecond line\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"+\r\nfirst line\nsecond line\n");
    // Dedicated mode: the program reads the pipelined bytes itself.
    let mut s = d.connect();
    s.write_all(b"dedicated\nhello\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"+Go ahead\r\nhello\n");
}

#[test]
fn dedicated_service_sends_its_own_reply() {
    let d = Daemon::start(BASE);
    let mut s = d.connect();
    s.write_all(b"DEDICATED\r\n").unwrap();
    assert_eq!(read_line(&mut s), b"+Go ahead\r\n");
    s.write_all(b"abc\n").unwrap();
    assert_eq!(read_line(&mut s), b"abc\n");
}

#[test]
fn unknown_name_gets_minus_and_close() {
    let d = Daemon::start(BASE);
    let reply = d.exchange(b"nosuch\r\n");
    assert_eq!(reply, b"-Unknown service\r\n");
    assert!(d.wait_log("nosuch from 127.0.0.1:"), "{}", d.log());
}

#[test]
fn malformed_names_get_minus_without_nul() {
    let d = Daemon::start(BASE);
    for request in [
        &b"\r\n"[..],
        b"a\0b\r\n",
        b"caf\xc3\xa9\r\n",
        b"two words\r\n",
    ] {
        let reply = d.exchange(request);
        assert!(reply.starts_with(b"-"), "{request:?}: {reply:?}");
        assert!(reply.ends_with(b"\r\n") && !reply.contains(&0), "{reply:?}");
    }
}

#[test]
fn over_long_names_are_refused_and_memory_stays_flat() {
    let d = Daemon::start(BASE);
    let mut long = vec![b'a'; 256];
    long.extend_from_slice(b"\r\n");
    assert_eq!(d.exchange(&long), b"-Service name too long\r\n");
    let mut max = vec![b'a'; 255];
    max.extend_from_slice(b"\r\n");
    assert_eq!(d.exchange(&max), b"-Unknown service\r\n");

    let before = d.rss_kib();
    for _ in 0..5 {
        let mut s = d.connect();
        let writer = {
            let mut s = s.try_clone().unwrap();
            std::thread::spawn(move || {
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..16 {
                    // 1 MiB without a line end; the daemon may close early.
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                }
            })
        };
        let reply = read_to_end(&mut s);
        assert!(
            reply.is_empty() || reply == b"-Service name too long\r\n",
            "{reply:?}"
        );
        writer.join().unwrap();
    }
    let after = d.rss_kib();
    assert!(
        after < before + 4096,
        "RSS grew from {before} KiB to {after} KiB"
    );
    // Still serving.
    assert_eq!(d.help().len(), 3);
}

#[test]
fn silent_client_is_answered_and_closed_after_name_timeout() {
    let d = Daemon::start(&BASE.replace("name_timeout = \"2s\"", "name_timeout = \"300ms\""));
    let started = Instant::now();
    let mut s = d.connect();
    s.write_all(b"ec").unwrap(); // a partial name, then silence
    let reply = read_to_end(&mut s);
    assert_eq!(reply, b"-Timed out waiting for the service name\r\n");
    assert!(started.elapsed() < WAIT);
    assert!(d.wait_log(": timeout (name_timeout)"), "{}", d.log());
}

#[test]
fn missing_or_non_executable_command_gets_minus_never_plus() {
    let dir = tempfile::tempdir().unwrap();
    let not_exec = dir.path().join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\necho hi\n").unwrap();
    let config = format!(
        r#"
[[service]]
name = "gone"
command = ["/nonexistent/program"]

[[service]]
name = "noexec"
command = ["{}"]

[[service]]
name = "gone-dedicated"
command = ["/nonexistent/program"]
plus = false
"#,
        not_exec.display()
    );
    let d = Daemon::start(&config);
    assert!(
        d.log().contains("/nonexistent/program: not found"),
        "{}",
        d.log()
    );
    for name in ["gone", "noexec", "gone-dedicated"] {
        let reply = d.exchange(format!("{name}\r\n").as_bytes());
        assert_eq!(reply, b"-Service unavailable\r\n", "{name}");
    }
    // Root may read any file, but a file without execute bits stays
    // unexecutable.
    assert!(d.wait_log("not executable"), "{}", d.log());
}

#[test]
fn master_acl_and_service_acl_filter_help_and_connections() {
    let config = r#"
[tcpmux]
deny = ["127.0.0.3"]

[[service]]
name = "public"
command = ["/bin/cat"]

[[service]]
name = "private"
command = ["/bin/cat"]
allow = ["127.0.0.1/32"]

[[service]]
name = "not-from-2"
command = ["/bin/cat"]
deny = ["127.0.0.2"]
"#;
    let d = Daemon::start(config);
    let help = |src: &str| {
        let mut s = connect_from(src, d.addr);
        s.write_all(b"HELP\r\n").unwrap();
        String::from_utf8(read_to_end(&mut s)).unwrap()
    };
    assert_eq!(help("127.0.0.1"), "public\r\nprivate\r\nnot-from-2\r\n");
    assert_eq!(help("127.0.0.2"), "public\r\n");
    assert_eq!(help("127.0.0.3"), "-Access denied\r\n");

    let ask = |src: &str, name: &str| {
        let mut s = connect_from(src, d.addr);
        s.write_all(format!("{name}\r\n").as_bytes()).unwrap();
        read_line(&mut s)
    };
    // A service hidden from a client by its ACL looks like no service.
    assert_eq!(ask("127.0.0.2", "private"), b"-Unknown service\r\n");
    assert_eq!(ask("127.0.0.2", "not-from-2"), b"-Unknown service\r\n");
    assert_eq!(ask("127.0.0.2", "public"), b"+\r\n");
    assert_eq!(ask("127.0.0.1", "private"), b"+\r\n");
    assert_eq!(ask("127.0.0.3", "public"), b"-Access denied\r\n");
    assert!(d.wait_log(": denied"));
}

#[test]
fn max_instances_refuses_the_next_client_until_one_ends() {
    let config = r#"
[[service]]
name = "echo"
command = ["/bin/cat"]
max_instances = 2
max_instances_per_source = 2
"#;
    let d = Daemon::start(config);
    let open = |d: &Daemon| {
        let mut s = d.connect();
        s.write_all(b"echo\r\n").unwrap();
        let line = read_line(&mut s);
        (s, line)
    };
    let (mut a, la) = open(&d);
    let (_b, lb) = open(&d);
    assert_eq!(
        (la.as_slice(), lb.as_slice()),
        (&b"+\r\n"[..], &b"+\r\n"[..])
    );
    let (_, lc) = open(&d);
    assert_eq!(lc, b"-Service busy, try again later\r\n");

    // End one session; its place comes back once the program has exited.
    a.shutdown(Shutdown::Write).unwrap();
    assert!(read_to_end(&mut a).is_empty());
    assert!(wait_until(|| open(&d).1 == b"+\r\n"), "{}", d.log());
}

#[test]
fn two_hundred_concurrent_sessions() {
    let config = r#"
[tcpmux]
max_handshakes_per_source = 256

[[service]]
name = "echo"
command = ["/bin/cat"]
max_instances = 250
max_instances_per_source = 250
max_starts_per_second = 1000
"#;
    let d = Daemon::start(config);
    let mut sessions = Vec::new();
    for _ in 0..200 {
        let mut s = d.connect();
        s.write_all(b"echo\r\n").unwrap();
        sessions.push(s);
    }
    for (i, s) in sessions.iter_mut().enumerate() {
        assert_eq!(read_line(s), b"+\r\n", "session {i}");
        s.write_all(format!("session {i}\n").as_bytes()).unwrap();
    }
    for (i, s) in sessions.iter_mut().enumerate() {
        assert_eq!(read_line(s), format!("session {i}\n").as_bytes());
    }
    assert!(d.wait_notify("200 sessions running"), "{}", d.log());
    for s in &sessions {
        s.shutdown(Shutdown::Write).unwrap();
    }
    for s in sessions.iter_mut() {
        assert!(read_to_end(s).is_empty());
    }
}

#[test]
fn the_child_environment_and_socket() {
    let dir = tempfile::tempdir().unwrap();
    let probe = script(
        dir.path(),
        "probe",
        "env | sort\n\
         echo FLAGS=$(awk '/^flags:/ {print $2}' /proc/self/fdinfo/0)\n\
         echo STDERR-LINE >&2",
    );
    let config = format!(
        r#"
[[service]]
name = "Probe"
command = ["{probe}"]

[service.environment]
GREETING = "hello"
"#
    );
    let d = Daemon::start(&config);
    let mut s = d.connect();
    let local = s.local_addr().unwrap();
    s.write_all(b"PROBE\r\n").unwrap();
    let out = String::from_utf8(read_to_end(&mut s)).unwrap();
    let out = out.strip_prefix("+\r\n").expect("plus first");
    let vars: std::collections::HashMap<&str, &str> =
        out.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(vars["TCPMUX_SERVICE"], "Probe");
    assert_eq!(vars["REMOTE_ADDR"], "127.0.0.1");
    assert_eq!(vars["REMOTE_PORT"], local.port().to_string());
    assert_eq!(vars["LOCAL_ADDR"], "127.0.0.1");
    assert_eq!(vars["LOCAL_PORT"], d.addr.port().to_string());
    assert_eq!(vars["GREETING"], "hello");
    for name in vars.keys() {
        assert!(!name.starts_with("LISTEN_"), "{name} leaked to the child");
        assert!(
            !name.starts_with("NOTIFY_") && !name.starts_with("WATCHDOG_"),
            "{name} leaked"
        );
    }
    // O_NONBLOCK is 04000 octal: the child gets a blocking socket.
    let flags = u32::from_str_radix(vars["FLAGS"], 8).expect("octal flags");
    assert_eq!(flags & 0o4000, 0, "the service's stdin is non-blocking");
    // stderr is logged with the service name; the exit status too.
    assert!(d.wait_log("]: STDERR-LINE"), "{}", d.log());
    assert!(d.wait_log("exited with status 0"), "{}", d.log());
    let line = d
        .log()
        .lines()
        .find(|l| l.contains("STDERR-LINE"))
        .unwrap()
        .to_string();
    assert!(line.contains("tcpmux-Probe["), "{line}");
}

#[test]
fn services_run_as_the_configured_user() {
    if !is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let config = r#"
[[service]]
name = "id"
command = ["/bin/sh", "-c", "id -u; id -g; id -G"]
user = "nobody"
group = "nogroup"
"#;
    let d = Daemon::start(config);
    let out = String::from_utf8(d.exchange(b"id\r\n")).unwrap();
    let uid = nix_id("nobody", "-u");
    let gid = nix_id("nobody", "-g");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "+");
    assert_eq!(lines[1], uid);
    assert_eq!(lines[2], gid);
    assert_eq!(lines[3], gid, "supplementary groups are dropped");
}

fn nix_id(user: &str, flag: &str) -> String {
    let out = std::process::Command::new("id")
        .arg(flag)
        .arg(user)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn reload_applies_a_valid_config_and_keeps_sessions_and_rejects_an_invalid_one() {
    let d = Daemon::start(BASE);
    let mut session = d.connect();
    session.write_all(b"echo\r\n").unwrap();
    assert_eq!(read_line(&mut session), b"+\r\n");

    let added = format!("{BASE}\n[[service]]\nname = \"added\"\ncommand = [\"/bin/cat\"]\n");
    d.rewrite_config(&added);
    d.reload();
    assert_eq!(d.help(), ["echo", "Dedicated", "env", "added"]);
    session.write_all(b"still here\n").unwrap();
    assert_eq!(read_line(&mut session), b"still here\n");

    d.rewrite_config("[tcpmux]\nthis is not toml\n");
    d.reload();
    assert!(
        d.wait_log("reload failed, still serving the previous configuration"),
        "{}",
        d.log()
    );
    assert_eq!(d.help(), ["echo", "Dedicated", "env", "added"]);
    session.write_all(b"and still\n").unwrap();
    assert_eq!(read_line(&mut session), b"and still\n");

    // Sessions keep running when the daemon stops, too.
    let status = d.stop();
    assert!(status.success(), "{status:?}");
    session.write_all(b"after stop\n").unwrap();
    assert_eq!(read_line(&mut session), b"after stop\n");
}

#[test]
fn notifies_systemd_of_status_and_stopping() {
    let d = Daemon::start(BASE);
    assert!(d.wait_notify("STATUS="), "{}", d.log());
    d.exchange(b"nosuch\r\n");
    assert!(d.wait_notify("1 refused"), "{}", d.log());
    d.signal(libc::SIGTERM);
    assert!(d.wait_notify("STOPPING=1"), "{}", d.log());
}

#[test]
fn the_summary_of_the_last_interval_is_logged_when_tcpmuxd_stops() {
    for (sig, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        let d = Daemon::start(BASE);
        for _ in 0..3 {
            assert_eq!(d.exchange(b"nosuch\r\n"), b"-Unknown service\r\n");
        }
        // Stopped well within the first summary interval.
        d.signal(sig);
        assert!(d.wait_log("stopped;"), "{name}: {}", d.log());
        let log = d.log();
        let summary = log
            .find("connections in the last ")
            .unwrap_or_else(|| panic!("{name}: no summary: {log}"));
        assert!(
            log[summary..].contains(": 3 unknown; top sources: 127.0.0.1 (3)"),
            "{name}: {log}"
        );
        assert!(summary < log.find("stopped;").unwrap(), "{name}: {log}");
    }
}

#[test]
fn at_max_handshakes_the_oldest_waiting_handshake_makes_room() {
    let d = Daemon::start(&BASE.replace("[tcpmux]", "[tcpmux]\nmax_handshakes = 2"));
    // Two silent clients hold both handshake places.
    let mut silent: Vec<_> = (0..2).map(|_| d.connect()).collect();
    assert!(d.wait_notify("2 in handshake"), "{}", d.log());
    // A client that sends its name is served; the oldest silent one is
    // told and closed.
    assert_eq!(d.exchange(b"HELP\r\n"), b"echo\r\nDedicated\r\nenv\r\n");
    assert_eq!(
        read_to_end(&mut silent[0]),
        b"-Too many connections, try again later\r\n"
    );
    assert!(d.wait_log(": shed (max_handshakes)"), "{}", d.log());
    drop(silent);
    assert!(d.wait_notify("0 in handshake"), "{}", d.log());
}

#[test]
fn feeds_the_watchdog_when_systemd_asks() {
    let passed = vec![Passed::Stream(loopback_listener(), "tcpmux")];
    let d = Daemon::start_env(BASE, &[], passed, &[("WATCHDOG_USEC", "200000")]);
    assert!(d.wait_notify("WATCHDOG=1"), "{}", d.log());
    assert!(d.wait_notify("WATCHDOG=1"), "only one WATCHDOG=1");
}

#[test]
fn a_program_that_cannot_be_executed_gets_minus_in_dedicated_mode() {
    let dir = tempfile::tempdir().unwrap();
    // A script whose interpreter is missing: exec fails (ENOENT).
    let bogus = dir.path().join("bogus");
    std::fs::write(&bogus, b"#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&bogus, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = format!(
        "[[service]]\nname = \"bogus\"\ncommand = [\"{}\"]\nplus = false\n",
        bogus.display()
    );
    let d = Daemon::start(&config);
    assert_eq!(d.exchange(b"bogus\r\n"), b"-Service unavailable\r\n");
    assert!(d.wait_log(": spawn-failed: service"), "{}", d.log());
}

#[test]
fn a_text_file_marked_executable_is_refused_before_plus() {
    let dir = tempfile::tempdir().unwrap();
    // Executable bits, but neither an ELF binary nor a `#!` script: the
    // kernel cannot execute it (ENOEXEC), and tcpmuxd tells before `+`.
    let text = dir.path().join("notes");
    std::fs::write(&text, b"echo hello\n").unwrap();
    std::fs::set_permissions(&text, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = format!(
        "[[service]]\nname = \"notes\"\ncommand = [\"{}\"]\n",
        text.display()
    );
    let d = Daemon::start(&config);
    for _ in 0..2 {
        assert_eq!(d.exchange(b"notes\r\n"), b"-Service unavailable\r\n");
    }
    assert!(
        d.wait_log(&format!(
            "program {}: not an executable format (neither an ELF binary nor a #! script)",
            text.display()
        )),
        "{}",
        d.log()
    );
    assert!(!d.log().contains("cannot execute"), "{}", d.log());
}

#[test]
fn a_program_that_cannot_be_executed_in_plus_mode_is_logged_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    // A script whose interpreter is missing: only execve itself finds
    // out (ENOENT), after `+`.
    let bogus = dir.path().join("bogus");
    std::fs::write(&bogus, b"#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&bogus, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = format!(
        "[[service]]\nname = \"bogus\"\ncommand = [\"{}\"]\n",
        bogus.display()
    );
    let d = Daemon::start(&config);
    // Everything but the exec itself is done before `+`; the exec's
    // failure comes after it, and is logged with its cause, as tcpmuxd's
    // own warning.
    assert_eq!(d.exchange(b"bogus\r\n"), b"+\r\n");
    let line = format!(
        "]: cannot execute {}: error 2 (ENOENT: no such file or directory)",
        bogus.display()
    );
    assert!(d.wait_log(&line), "{}", d.log());
    assert!(d.wait_log("exited with status 127"), "{}", d.log());
    let log = d.log();
    let logged = log.lines().find(|l| l.contains(&line)).unwrap();
    assert!(logged.contains("WARN"), "{logged}");
}

#[test]
fn a_program_cannot_forge_the_exec_failure_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forger");
    let forger = script(
        dir.path(),
        "forger",
        &format!("echo \"cannot execute {}: error 8\" >&2", path.display()),
    );
    let config = format!("[[service]]\nname = \"forger\"\ncommand = [\"{forger}\"]\n");
    let d = Daemon::start(&config);
    assert_eq!(d.exchange(b"forger\r\n"), b"+\r\n");
    let line = format!("]: cannot execute {forger}: error 8");
    assert!(d.wait_log(&line), "{}", d.log());
    assert!(d.wait_log("exited with status 0"), "{}", d.log());
    let log = d.log();
    let logged = log.lines().find(|l| l.contains(&line)).unwrap();
    assert!(!logged.contains("WARN"), "{logged}");
}

#[test]
fn binds_configured_addresses_without_socket_activation() {
    let config = format!(
        "[tcpmux]\nlisten = [\"127.0.0.1:0\"]\n{}",
        BASE.replace("[tcpmux]", "")
    );
    let d = Daemon::start_with(&config, &[], vec![]);
    assert_eq!(d.addr.ip().to_string(), "127.0.0.1");
    assert_eq!(d.help(), ["echo", "Dedicated", "env"]);
}

#[test]
fn socket_activation_maps_sockets_by_name_and_type_not_position() {
    let msp_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let msp_tcp = loopback_listener();
    let tcpmux = loopback_listener();
    let passed = vec![
        Passed::Datagram(msp_udp, "msp"),
        Passed::Stream(msp_tcp, "msp"),
        Passed::Stream(tcpmux, "tcpmux"),
    ];
    let d = Daemon::start_with(BASE, &[], passed);
    assert_eq!(d.help(), ["echo", "Dedicated", "env"]);
    // One line for each transport: both must come.
    for transport in ["/tcp\n", "/udp\n"] {
        assert!(d.wait_log(transport), "{}", d.log());
    }
}

#[test]
fn socket_activation_with_a_foreign_name_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, BASE).unwrap();
    write_root_dropin(&config);
    let passed = [Passed::Stream(loopback_listener(), "web")];
    let mut cmd = daemon_command(&config, &passed);
    cmd.args(["--log-target", "stderr"]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(71));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"web\"") && err.contains("FileDescriptorName=tcpmux"),
        "{err}"
    );
}

#[test]
fn check_accepts_a_valid_config_with_dropins() {
    let (code, out, err) = check(&[
        ("tcpmuxd.toml", BASE),
        (
            "conf.d/50-more.toml",
            "[[service]]\nname = \"more\"\ncommand = [\"/bin/cat\"]\n",
        ),
        ("conf.d/README", "not a drop-in"),
    ]);
    assert_eq!(code, 0, "{err}");
    let files = 2 + usize::from(root_dropin().is_some());
    assert!(
        out.contains(&format!(
            "valid ({files} files, 4 services: echo, Dedicated, env, more)"
        )),
        "{out}"
    );
}

#[test]
fn check_names_file_line_and_key_of_errors() {
    let (code, _, err) = check(&[(
        "tcpmuxd.toml",
        "[tcpmux]\nname_timeout = \"1s\"\nname_timout = \"2s\"\n",
    )]);
    assert_eq!(code, 78);
    assert!(
        err.contains("tcpmuxd.toml: ") && err.contains("line 3") && err.contains("name_timout"),
        "{err}"
    );

    let (code, _, err) = check(&[
        ("tcpmuxd.toml", BASE),
        (
            "conf.d/50-echo.toml",
            "[[service]]\nname = \"ECHO\"\ncommand = [\"/bin/cat\"]\n",
        ),
    ]);
    assert_eq!(code, 78);
    assert!(
        err.contains("conf.d/50-echo.toml: line 1: service \"ECHO\" is already defined in"),
        "{err}"
    );
    assert!(err.contains("tcpmuxd.toml"), "{err}");

    let (code, _, err) = check(&[(
        "tcpmuxd.toml",
        "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nmax_instances = -1\n",
    )]);
    assert_eq!(code, 78);
    assert!(err.contains("max_instances"), "{err}");

    let (code, _, err) = check(&[(
        "tcpmuxd.toml",
        "[[service]]\nname = \"x\"\ncommand = [\"/usr/bin/nosuch\"]\n",
    )]);
    assert_eq!(code, 0);
    assert!(
        err.contains("warning: ") && err.contains("/usr/bin/nosuch: not found"),
        "{err}"
    );

    let (code, _, err) = check(&[("missing-dir/none.toml", "")]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn check_reports_an_unreadable_file() {
    let out = std::process::Command::new(DAEMON)
        .args(["--config", "/nonexistent/tcpmuxd.toml", "--check"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/tcpmuxd.toml: cannot read"),
        "{err}"
    );
}

/// A client that sends more after a name that is refused (or after HELP)
/// still gets its answer: tcpmuxd reads and drops what follows for a
/// moment before it closes, so that the kernel does not reset the
/// connection and throw the answer away.
#[test]
fn a_refused_client_that_sends_more_still_gets_its_answer() {
    let d = Daemon::start(BASE);
    for request in [&b"no-such-service\r\n"[..], b"HELP\r\n"] {
        let mut s = d.connect();
        let mut data = request.to_vec();
        data.extend(std::iter::repeat_n(b'x', 32 * 1024));
        s.write_all(&data).unwrap();
        let answer = read_to_end(&mut s);
        let expected: &[u8] = if request.starts_with(b"HELP") {
            b"echo\r\n"
        } else {
            b"-Unknown service\r\n"
        };
        assert!(
            answer.starts_with(expected),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }
}

/// The notification socket's queue holds ten datagrams: when the service
/// manager does not read it (here: the test does not), STATUS= updates
/// fill it. tcpmuxd must go on serving, not wait for room.
#[test]
fn a_service_manager_that_does_not_read_notifications_does_not_stop_tcpmuxd() {
    let d = Daemon::start(BASE);
    let until = Instant::now() + Duration::from_secs(15);
    let mut asked = 0;
    while Instant::now() < until {
        // Each answer changes the counters, and so the next STATUS= line.
        assert_eq!(
            d.exchange(b"no-such-service\r\n"),
            b"-Unknown service\r\n",
            "after {asked} requests"
        );
        asked += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A configuration error never closes the port: socket-activated with an
/// invalid configuration, tcpmuxd holds its socket, tells systemd it is
/// ready with where the errors are and the fix in `STATUS=` (never what
/// they say: any local user reads it, and an error may quote a secret),
/// and answers every request, HELP too, `-Service unavailable`. A reload
/// with a still invalid configuration logs again and changes nothing; a
/// reload with a valid one serves.
#[test]
fn socket_activated_with_an_invalid_config_it_refuses_everything_until_a_valid_reload() {
    let broken = BASE
        .replace("name_timeout", "name_timout")
        .replace("[tcpmux]\n", "[tcpmux]\nenvironment = \"TOKEN=hunter2\"\n");
    let d = Daemon::start(&broken);
    let notified = d.notified();
    assert!(
        notified.contains("READY=1")
            && notified.contains("STATUS=not serving")
            && notified.contains("2 errors, the first in ")
            && notified.contains("tcpmuxd.toml line 3 ")
            && notified.contains("fix it, then systemctl reload tcpmuxd\n")
            && !notified.contains("hunter2"),
        "{notified}"
    );
    assert!(
        d.wait_log("invalid configuration: ")
            && d.log().contains("name_timout")
            && d.log().contains("environment"),
        "{}",
        d.log()
    );
    for request in [&b"HELP\r\n"[..], b"echo\r\n", b"no-such-service\r\n"] {
        assert_eq!(
            d.exchange(request),
            b"-Service unavailable\r\n",
            "{:?}",
            String::from_utf8_lossy(request)
        );
    }
    // The usual handshake limits still hold.
    let mut silent = d.connect();
    assert_eq!(
        read_to_end(&mut silent),
        b"-Timed out waiting for the service name\r\n"
    );

    // Still broken: logged again, still refusing.
    d.rewrite_config(&BASE.replace("[tcpmux]", "[tcpmux]\nmax_handshakes = \"many\""));
    d.reload();
    assert!(d.wait_log("max_handshakes"), "{}", d.log());
    assert_eq!(d.exchange(b"HELP\r\n"), b"-Service unavailable\r\n");

    // Fixed: served.
    d.rewrite_config(BASE);
    d.reload();
    assert_eq!(d.exchange(b"HELP\r\n"), b"echo\r\nDedicated\r\nenv\r\n");
    let mut s = d.connect();
    s.write_all(b"echo\r\nping\n").unwrap();
    assert_eq!(read_line(&mut s), b"+\r\n");
    assert_eq!(read_line(&mut s), b"ping\n");
    assert!(d.wait_log("serving again"), "{}", d.log());
}

/// Without sockets to hold, an invalid configuration still ends tcpmuxd
/// with exit status 78 (systemd does not restart it for that).
#[test]
fn without_socket_activation_an_invalid_config_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[tcpmux]\nname_timout = \"2s\"\n").unwrap();
    let out = daemon_command(&config, &[])
        .args(["--log-target", "stderr"])
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("name_timout"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--only tcpmux` (tcpmuxd.service) serves TCPMUX and leaves MSP sockets
/// passed to it alone, with a warning naming the unit that serves them.
#[test]
fn only_tcpmux_serves_tcpmux_and_leaves_msp_sockets_unserved() {
    let passed = vec![
        Passed::Stream(loopback_listener(), "tcpmux"),
        Passed::Stream(loopback_listener(), "msp"),
        Passed::Datagram(std::net::UdpSocket::bind("127.0.0.1:0").unwrap(), "msp"),
    ];
    let d = Daemon::start_opts(
        BASE,
        Options {
            passed,
            customize: Box::new(|c| {
                c.args(["--only", "tcpmux"]);
            }),
            ..Options::default()
        },
    );
    assert_eq!(d.help(), ["echo", "Dedicated", "env"]);
    assert!(d.wait_log("tcpmuxd-msp.service"), "{}", d.log());
    assert!(!d.log().contains("listening for MSP"), "{}", d.log());
    let notified = d.notified();
    assert!(
        notified.contains("STATUS=0 in handshake") && !notified.contains("MSP:"),
        "{notified}"
    );
}

/// The entries a client's connection leaves: a refusal has one of its own
/// (the first few of each source in an interval; the rest only in the
/// summary), a session its start and end with the exit status, and the
/// program's stderr lines are tagged with the service. On stderr each
/// entry is its message alone, no field repeated after it.
#[test]
fn the_log_says_what_happened_to_each_client() {
    let config = r#"
[[service]]
name = "oops"
command = ["/bin/sh", "-c", "echo oops >&2; exit 3"]

[[service]]
name = "hidden"
command = ["/bin/cat"]
allow = ["192.0.2.0/24"]
"#;
    let d = Daemon::start_opts(
        config,
        Options {
            log_level: "info",
            ..Options::default()
        },
    );
    // Seven unknown names from one source: five entries, all seven counted.
    for _ in 0..7 {
        let mut s = connect_from("127.0.0.2", d.addr);
        s.write_all(b"nosuch\r\n").unwrap();
        assert_eq!(read_to_end(&mut s), b"-Unknown service\r\n");
    }
    // Denied (the service is hidden from this client).
    let mut s = connect_from("127.0.0.3", d.addr);
    let denied_port = s.local_addr().unwrap().port();
    s.write_all(b"hidden\r\n").unwrap();
    assert_eq!(read_to_end(&mut s), b"-Unknown service\r\n");
    // A session whose program complains and fails.
    let mut s = connect_from("127.0.0.4", d.addr);
    let port = s.local_addr().unwrap().port();
    s.write_all(b"oops\r\n").unwrap();
    assert_eq!(read_to_end(&mut s), b"+\r\n");
    let client = format!("oops from 127.0.0.4:{port}: ");
    assert!(
        d.wait_log(&format!("{client}session ended, pid ")),
        "{}",
        d.log()
    );
    assert!(
        d.wait_log("connections in the last 10s: 7 unknown, 1 denied"),
        "{}",
        d.log()
    );
    let log = d.log();
    let lines: Vec<&str> = log.lines().collect();
    let unknown = lines
        .iter()
        .filter(|l| l.contains(" INFO nosuch from 127.0.0.2:") && l.ends_with(": unknown"))
        .count();
    assert_eq!(unknown, 5, "{log}");
    assert!(
        lines.iter().any(|l| l.ends_with(&format!(
            " INFO hidden from 127.0.0.3:{denied_port}: denied"
        ))),
        "{log}"
    );
    let start = lines
        .iter()
        .find(|l| l.contains(&format!("{client}session started, pid ")))
        .unwrap_or_else(|| panic!("no start entry:\n{log}"));
    let pid = start.rsplit(' ').next().unwrap();
    assert!(pid.parse::<u32>().is_ok(), "{start}");
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(&format!(" INFO tcpmux-oops[{pid}]: oops"))),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(&format!(
            " INFO {client}session ended, pid {pid} exited with status 3"
        ))),
        "{log}"
    );
    // The message alone: no `key=value` after it.
    for field in ["outcome=", "remote_addr=", "services=", "tcpmux_service="] {
        assert!(!log.contains(field), "{field} on stderr:\n{log}");
    }
}

/// An IPv6 client is written `[::1]:PORT`, as Rust and systemd write a
/// socket address, never `::1:PORT`.
#[test]
fn ipv6_clients_are_written_in_brackets() {
    let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("skipped: no IPv6 loopback");
        return;
    };
    let addr = listener.local_addr().unwrap();
    let d = Daemon::start_opts(
        BASE,
        Options {
            log_level: "info",
            passed: vec![Passed::Stream(listener, "tcpmux")],
            ..Options::default()
        },
    );
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let port = s.local_addr().unwrap().port();
    s.write_all(b"nosuch\r\n").unwrap();
    assert_eq!(read_to_end(&mut s), b"-Unknown service\r\n");
    assert!(
        d.wait_log(&format!("nosuch from [::1]:{port}: unknown")),
        "{}",
        d.log()
    );
    assert!(!d.log().contains("::1:"), "{}", d.log());
}

/// A service whose program is missing answers `-Service unavailable`: a
/// refusal like any other, an entry each (with the cause) for the first
/// few of a source, all of them counted in the summary.
#[test]
fn unavailable_services_are_refusals_with_their_share_of_the_log() {
    let d = Daemon::start_opts(
        "[[service]]\nname = \"missing\"\ncommand = [\"/nonexistent/program\"]\n",
        Options {
            log_level: "info",
            ..Options::default()
        },
    );
    for _ in 0..20 {
        assert_eq!(d.exchange(b"missing\r\n"), b"-Service unavailable\r\n");
    }
    assert!(
        d.wait_log("connections in the last 10s: 20 unavailable"),
        "{}",
        d.log()
    );
    let log = d.log();
    let entries = log
        .lines()
        .filter(|l| l.contains("missing from 127.0.0.1:") && l.contains(": unavailable"))
        .count();
    assert_eq!(entries, 5, "{log}");
    assert!(log.contains("/nonexistent/program"), "{log}");
}

// The start of a session's program (launch/spawn.rs): a child made
// without copying the daemon, which must still leave the program exactly
// what a freshly exec'd program expects.

/// The `Name:\tvalue` lines of a /proc/PID/status text.
fn status_fields(text: &str) -> std::collections::HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn a_program_gets_descriptors_0_1_2_only_and_default_signals() {
    let config = r#"
[[service]]
name = "fds"
command = ["/bin/ls", "-l", "/proc/self/fd"]

[[service]]
name = "status"
command = ["/bin/cat", "/proc/self/status"]
"#;
    let d = Daemon::start(config);
    let out = String::from_utf8(d.exchange(b"fds\r\n")).unwrap();
    let out = out.strip_prefix("+\r\n").expect("plus first");
    // ls's own descriptor on the directory it lists aside, only 0, 1, 2.
    let mut fds: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .filter(|(_, target)| !(target.starts_with("/proc/") && target.ends_with("/fd")))
        .filter_map(|(name, _)| name.rsplit(' ').next())
        .collect();
    fds.sort();
    assert_eq!(fds, ["0", "1", "2"], "{out}");

    let out = String::from_utf8(d.exchange(b"status\r\n")).unwrap();
    let status = status_fields(out.strip_prefix("+\r\n").expect("plus first"));
    // Nothing blocked and nothing ignored (tcpmuxd itself ignores SIGPIPE
    // and blocks every signal while it starts a child).
    assert_eq!(status["SigBlk"], "0000000000000000", "{out}");
    assert_eq!(status["SigIgn"], "0000000000000000", "{out}");
    assert_eq!(status["SigCgt"], "0000000000000000", "{out}");
}

#[test]
fn a_program_runs_as_its_user_in_every_id_and_with_no_other_group() {
    if !is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let config = r#"
[[service]]
name = "status"
command = ["/bin/cat", "/proc/self/status"]
user = "nobody"
group = "nogroup"
"#;
    let d = Daemon::start(config);
    let out = String::from_utf8(d.exchange(b"status\r\n")).unwrap();
    let status = status_fields(out.strip_prefix("+\r\n").expect("plus first"));
    let uid = nix_id("nobody", "-u");
    let gid = nix_id("nobody", "-g");
    // Real, effective, saved and file system ids alike.
    let four = |id: &str| [id; 4].join("\t");
    assert_eq!(status["Uid"], four(&uid), "{out}");
    assert_eq!(status["Gid"], four(&gid), "{out}");
    assert_eq!(status["Groups"], "", "{out}");
}

/// The daemon's children (zombies included) and its open descriptors.
fn children_and_fds(pid: i32) -> (usize, usize) {
    let mut children = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("children");
        let list = std::fs::read_to_string(path).unwrap_or_default();
        children += list.split_whitespace().count();
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (children, fds)
}

#[test]
fn ten_thousand_sessions_leave_no_zombie_and_no_descriptor_behind() {
    const SESSIONS: usize = 10_000;
    const CLIENTS: usize = 4;
    // A hang guard, not a measure: far above what the loop takes.
    const DEADLINE: Duration = Duration::from_secs(600);
    let config = r#"
[tcpmux]
max_handshakes_per_source = 256

[[service]]
name = "true"
command = ["/bin/true"]
max_instances = 250
max_instances_per_source = 250
max_starts_per_second = 100000

[[service]]
name = "false"
command = ["/bin/sh", "-c", "echo gone >&2; exit 3"]
max_instances = 250
max_instances_per_source = 250
max_starts_per_second = 100000
"#;
    let d = Daemon::start(config);
    // The runtime's descriptors exist once the first session has run.
    assert_eq!(d.exchange(b"true\r\n"), b"+\r\n");
    assert!(
        wait_until(|| children_and_fds(d.pid()).0 == 0),
        "{}",
        d.log()
    );
    let (_, fds_before) = children_and_fds(d.pid());
    let start = Instant::now();
    let addr = d.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                for i in (c..SESSIONS).step_by(CLIENTS) {
                    if start.elapsed() > DEADLINE {
                        return Err(format!("session {i}: past the deadline"));
                    }
                    let mut s = connect(addr);
                    let name: &[u8] = if i % 2 == 0 {
                        b"true\r\n"
                    } else {
                        b"false\r\n"
                    };
                    s.write_all(name).unwrap();
                    let answer = read_to_end(&mut s);
                    if answer != b"+\r\n" {
                        return Err(format!(
                            "session {i}: {:?}",
                            String::from_utf8_lossy(&answer)
                        ));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for client in clients {
        client
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}\n{}", d.log()));
    }
    assert!(
        wait_until(|| children_and_fds(d.pid()) == (0, fds_before)),
        "children and descriptors after {SESSIONS} sessions: {:?}, {fds_before} before",
        children_and_fds(d.pid())
    );
    assert!(d.wait_log("exited with status 3"), "{}", d.log());
    assert!(d.wait_log("]: gone"), "{}", d.log());
}
