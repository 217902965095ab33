//! Attacks on the real binary, on loopback: from a session's program into
//! the host, and from peers that flood. Each test reproduces one attack
//! and asserts that it no longer works.

mod common;

use common::*;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A one-service configuration running `command` (TOML array text).
fn one_service(name: &str, command: &str, extra: &str) -> String {
    format!("[[service]]\nname = \"{name}\"\ncommand = {command}\n{extra}\n")
}

/// Opens plus-mode service `name` and returns everything the session sent
/// after `+`, until it closed.
fn session_output(d: &Daemon, name: &str) -> String {
    let mut s = d.connect();
    s.write_all(format!("{name}\r\n").as_bytes()).unwrap();
    assert_eq!(read_line(&mut s), b"+\r\n", "{}", d.log());
    String::from_utf8_lossy(&read_to_end(&mut s)).into_owned()
}

/// A pty pair: (controller, terminal).
fn open_pty() -> (OwnedFd, OwnedFd) {
    let (mut controller, mut terminal) = (0, 0);
    // SAFETY: openpty writes two descriptors; the other arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two descriptors we now own.
    unsafe {
        (
            OwnedFd::from_raw_fd(controller),
            OwnedFd::from_raw_fd(terminal),
        )
    }
}

/// Fields of /proc/PID/stat after the command name: state is [0].
fn stat_fields(text: &str) -> Vec<String> {
    let rest = text.rsplit_once(')').expect("stat").1;
    rest.split_whitespace().map(str::to_string).collect()
}

#[test]
fn a_session_has_no_controlling_terminal_even_when_tcpmuxd_has_one() {
    let dir = tempfile::tempdir().unwrap();
    // The program reports its pid, session and terminal, and whether it
    // can open /dev/tty (through which TIOCSTI would type into the shell
    // that started tcpmuxd).
    let probe = script(
        dir.path(),
        "probe",
        "set -- $(sed 's/.*) //' /proc/$$/stat)\n\
         echo \"pid=$$ session=$4 tty=$5\"\n\
         if (exec 3</dev/tty) 2>/dev/null; then echo tty=open; else echo tty=refused; fi",
    );
    let (_controller, terminal) = open_pty();
    let tty = terminal.as_raw_fd();
    let config = one_service("probe", &format!("[\"{probe}\"]"), "");
    let d = Daemon::start_opts(
        &config,
        Options {
            customize: Box::new(move |cmd: &mut Command| {
                // SAFETY: setsid and ioctl only, between fork and exec.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::setsid() < 0 || libc::ioctl(tty, libc::TIOCSCTTY, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }),
            ..Options::default()
        },
    );
    let daemon_stat = std::fs::read_to_string(format!("/proc/{}/stat", d.pid())).unwrap();
    assert_ne!(
        stat_fields(&daemon_stat)[4],
        "0",
        "the daemon runs with the pty as its controlling terminal"
    );
    let out = session_output(&d, "probe");
    let mut lines = out.lines();
    let ids = lines.next().unwrap_or_default().to_string();
    let fields: Vec<&str> = ids.split(' ').collect();
    assert_eq!(fields.len(), 3, "{out}");
    let pid = fields[0].trim_start_matches("pid=");
    assert_eq!(
        fields[1],
        format!("session={pid}"),
        "a session of its own: {out}"
    );
    assert_eq!(fields[2], "tty=0", "no controlling terminal: {out}");
    assert_eq!(lines.next(), Some("tty=refused"), "{out}");
}

#[test]
fn a_session_inherits_only_stdin_stdout_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let leaked = std::fs::File::create(dir.path().join("secret")).unwrap();
    let leaked_fd = leaked.as_raw_fd();
    // The shell's own descriptors, listed by a child.
    let config = one_service("fds", r#"["/bin/sh", "-c", "ls /proc/$$/fd"]"#, "");
    let d = Daemon::start_opts(
        &config,
        Options {
            customize: Box::new(move |cmd: &mut Command| {
                // As a shell redirection would: fd 9, without FD_CLOEXEC.
                // SAFETY: dup2 only, between fork and exec.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::dup2(leaked_fd, 9) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }),
            ..Options::default()
        },
    );
    assert!(
        std::fs::read_link(format!("/proc/{}/fd/9", d.pid())).is_ok(),
        "the daemon was started with fd 9 open"
    );
    let out = session_output(&d, "fds");
    let fds: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fds, ["0", "1", "2"], "{out}");
    drop(leaked);
}

#[test]
fn a_group_without_a_user_is_a_configuration_error() {
    let config = one_service("g", r#"["/bin/cat"]"#, "group = \"0\"");
    let (code, _, stderr) = check(&[("tcpmuxd.toml", &config)]);
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("without user"), "{stderr}");
    assert!(stderr.contains("root"), "{stderr}");
}

#[test]
fn a_session_run_as_a_user_keeps_none_of_the_daemons_groups() {
    if !is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let config = one_service("id", r#"["/usr/bin/id"]"#, "user = \"nobody\"");
    let d = Daemon::start_opts(
        &config,
        Options {
            customize: Box::new(|cmd: &mut Command| {
                // The daemon in groups tty (5), disk (6) and shadow (42).
                cmd.groups_for_test(&[0, 5, 6, 42]);
            }),
            ..Options::default()
        },
    );
    let daemon_status = d.proc_status();
    assert!(
        daemon_status.contains("Groups:\t0 5 6 42"),
        "{daemon_status}"
    );
    let out = session_output(&d, "id");
    assert!(out.contains("uid=65534"), "{out}");
    for group in ["(tty)", "(disk)", "(shadow)", "(root)"] {
        assert!(
            !out.contains(group),
            "{group} leaked into the session: {out}"
        );
    }
}

/// Sets the supplementary groups of the command's process before exec.
trait GroupsForTest {
    fn groups_for_test(&mut self, groups: &'static [libc::gid_t]);
}

impl GroupsForTest for Command {
    fn groups_for_test(&mut self, groups: &'static [libc::gid_t]) {
        // SAFETY: setgroups only, between fork and exec.
        unsafe {
            self.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

#[test]
fn a_session_running_as_the_daemons_user_cannot_take_its_descriptors() {
    // The daemon as root without any capability, as tcpmuxd.service runs
    // it, and a session of the same user: pidfd_getfd(2) on the daemon
    // would hand it the listening socket and other clients' connections.
    let steal = "my $p = syscall(434, getppid(), 0); \
                 if ($p < 0) { print \"pidfd_open failed: $!\\n\"; exit } \
                 my $n = 0; for my $fd (0..64) { $n++ if syscall(438, $p, $fd, 0) >= 0 } \
                 print \"stolen=$n\\n\"";
    let config = one_service(
        "steal",
        &format!("[\"/usr/bin/perl\", \"-e\", {:?}]", steal),
        "",
    );
    let d = Daemon::start_opts(
        &config,
        Options {
            customize: Box::new(|cmd: &mut Command| {
                // SAFETY: prctl only, between fork and exec.
                unsafe {
                    cmd.pre_exec(|| {
                        for cap in 0..64 {
                            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
                        }
                        Ok(())
                    });
                }
            }),
            ..Options::default()
        },
    );
    let status = d.proc_status();
    assert!(
        status.contains("CapEff:\t0000000000000000"),
        "the daemon runs without capabilities: {status}"
    );
    let out = session_output(&d, "steal");
    assert_eq!(out.trim(), "stolen=0", "{}", d.log());
}

/// Limits the command's process to `n` open files (soft and hard).
fn limit_open_files(cmd: &mut Command, n: libc::rlim_t) {
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn with_the_descriptor_table_full_clients_hear_busy_never_plus_and_nothing() {
    let config = "[tcpmux]\nmax_sessions = 1000\n\n[msp]\nmax_connections = 1\n\n\
                  [[service]]\nname = \"echo\"\ncommand = [\"/bin/cat\"]\nmax_instances = 1000\n\
                  max_starts_per_second = 10000\n";
    let d = Daemon::start_opts(
        config,
        Options {
            customize: Box::new(|cmd: &mut Command| {
                // 300 descriptors inherited from whoever started it, as a
                // supervisor may leave them (more than the reserve and
                // MSP's share together), and a tight limit.
                // SAFETY: open and dup2 only, between fork and exec.
                unsafe {
                    cmd.pre_exec(|| {
                        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                        for fd in 100..400 {
                            if null < 0 || libc::dup2(null, fd) < 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                        }
                        Ok(())
                    });
                }
                limit_open_files(cmd, 700);
            }),
            ..Options::default()
        },
    );
    let mut sessions = Vec::new();
    let mut refusal = None;
    for i in 0..500 {
        let mut s = d.connect();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"echo\r\n").unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while let Ok(1) = s.read(&mut b) {
            line.push(b[0]);
            if b[0] == b'\n' {
                break;
            }
        }
        if line != b"+\r\n" {
            refusal = Some((i, line));
            break;
        }
        // Every client told `+` has a working session.
        s.write_all(b"ping\n").unwrap();
        let mut echo = [0u8; 5];
        s.read_exact(&mut echo)
            .unwrap_or_else(|e| panic!("session {i} was told + but does not echo: {e}"));
        assert_eq!(&echo, b"ping\n");
        sessions.push(s);
    }
    let (i, line) = refusal.expect("the descriptor limit was reached");
    assert!(i > 10, "only {i} sessions fit: {}", d.log());
    assert_eq!(
        line,
        b"-Server busy, try again later\r\n",
        "after {i} sessions: {}",
        d.log()
    );
    // It said so at startup.
    assert!(
        d.wait_log("the limit on open files (700) is below what the configured maxima need"),
        "{}",
        d.log()
    );
    // The daemon goes on: a session that ends makes room again.
    drop(sessions.pop());
    assert!(wait_until(|| session_output_line(&d, "echo") == b"+\r\n"));
}

/// The first line the daemon answers to `name`.
fn session_output_line(d: &Daemon, name: &str) -> Vec<u8> {
    let mut s = d.connect();
    s.write_all(format!("{name}\r\n").as_bytes()).unwrap();
    read_line(&mut s)
}

#[test]
fn silent_connections_at_the_cap_make_room_for_a_prompt_client() {
    let d = Daemon::start(&one_service("echo", r#"["/bin/cat"]"#, "").replace(
        "[[service]]",
        "[tcpmux]\nmax_handshakes = 40\n\n[[service]]",
    ));
    // 40 silent connections from 4 addresses hold every place, and the
    // attacker renews each one that is shed.
    let mut silent = Vec::new();
    for i in 0..40 {
        silent.push(connect_from(&format!("127.0.0.{}", 10 + i % 4), d.addr));
    }
    assert!(d.wait_notify("40 in handshake"), "{}", d.log());
    for _ in 0..10 {
        assert_eq!(help_from(&d, "127.0.0.3"), b"echo\r\n");
        silent.push(connect_from("127.0.0.10", d.addr));
    }
    // The oldest silent ones were told and closed.
    for s in silent.iter_mut().take(5) {
        assert_eq!(
            read_to_end(s),
            b"-Too many connections, try again later\r\n"
        );
    }
}

#[test]
fn a_source_at_its_cap_cannot_make_others_give_way() {
    let d = Daemon::start(&one_service("echo", r#"["/bin/cat"]"#, "").replace(
        "[[service]]",
        "[tcpmux]\nmax_handshakes = 4\nmax_handshakes_per_source = 2\n\n[[service]]",
    ));
    // Another source's handshakes first (the oldest), then the attacker's.
    let others: Vec<_> = (0..2).map(|_| connect_from("127.0.0.20", d.addr)).collect();
    let own: Vec<_> = (0..2).map(|_| connect_from("127.0.0.21", d.addr)).collect();
    assert!(d.wait_notify("4 in handshake"), "{}", d.log());
    for _ in 0..5 {
        let mut s = connect_from("127.0.0.21", d.addr);
        assert_eq!(
            read_to_end(&mut s),
            b"-Too many connections from your address, try again later\r\n"
        );
    }
    // Nobody was shed for it: the four still wait, silent.
    for s in others.iter().chain(&own) {
        assert_still_waiting(s);
    }
}

#[test]
fn denied_connections_take_no_place_and_shed_nobody() {
    let d = Daemon::start(&one_service("echo", r#"["/bin/cat"]"#, "").replace(
        "[[service]]",
        "[tcpmux]\nmax_handshakes = 4\ndeny = [\"127.0.0.64/26\"]\n\n[[service]]",
    ));
    let waiting: Vec<_> = (0..4).map(|_| connect_from("127.0.0.20", d.addr)).collect();
    assert!(d.wait_notify("4 in handshake"), "{}", d.log());
    for _ in 0..20 {
        assert_eq!(help_from(&d, "127.0.0.70"), b"-Access denied\r\n");
    }
    for s in &waiting {
        assert_still_waiting(s);
    }
}

#[test]
fn when_descriptors_run_out_the_oldest_waiting_handshake_makes_room() {
    let config =
        "[msp]\nmax_connections = 1\n\n[[service]]\nname = \"echo\"\ncommand = [\"/bin/cat\"]\n";
    let d = Daemon::start_opts(
        config,
        Options {
            customize: Box::new(|cmd: &mut Command| limit_open_files(cmd, 400)),
            ..Options::default()
        },
    );
    // Far fewer descriptors than max_handshakes: silent connections use
    // them all up.
    let mut silent = Vec::new();
    for i in 0..400 {
        silent.push(connect_from(&format!("127.0.1.{}", 1 + i % 200), d.addr));
    }
    assert!(d.wait_log(": shed (max_handshakes)"), "{}", d.log());
    for _ in 0..5 {
        assert_eq!(help_from(&d, "127.0.0.3"), b"echo\r\n", "{}", d.log());
    }
}

/// The descriptor budget of TCPMUX connections and sessions, from the
/// startup warning: the limit less MSP's share, what was open at startup
/// and the reserve.
fn fd_budget_from_warning(d: &Daemon, limit: usize) -> usize {
    assert!(
        d.wait_log("reserved); clients past the limit"),
        "{}",
        d.log()
    );
    let log = d.log();
    let number_before = |label: &str| -> usize {
        let end = log.find(label).unwrap_or_else(|| panic!("{label}: {log}"));
        let digits: String = log[..end]
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.chars().rev().collect::<String>().parse().unwrap()
    };
    limit
        - number_before(" for MSP")
        - number_before(" open at startup")
        - number_before(" reserved)")
}

#[test]
fn a_start_short_of_descriptors_makes_the_oldest_waiting_handshakes_give_way() {
    let config =
        "[msp]\nmax_connections = 1\n\n[[service]]\nname = \"echo\"\ncommand = [\"/bin/cat\"]\n";
    let d = Daemon::start_opts(
        config,
        Options {
            customize: Box::new(|cmd: &mut Command| limit_open_files(cmd, 400)),
            ..Options::default()
        },
    );
    // Silent connections from eight addresses, each far below its share of
    // handshakes, hold every descriptor of the budget; none is shed yet.
    let budget = fd_budget_from_warning(&d, 400);
    let mut silent: Vec<_> = (0..budget)
        .map(|i| connect_from(&format!("127.0.2.{}", 1 + i % 8), d.addr))
        .collect();
    assert!(
        d.wait_notify(&format!("{budget} in handshake")),
        "{}",
        d.log()
    );
    // A client that names its service at once is served: its connection
    // takes the oldest silent one's descriptor, and its start the next
    // ones', as many as it lacks.
    let mut s = connect_from("127.0.0.3", d.addr);
    s.write_all(b"echo\r\n").unwrap();
    assert_eq!(read_line(&mut s), b"+\r\n", "{}", d.log());
    s.write_all(b"ping\n").unwrap();
    assert_eq!(read_n(&mut s, 5), b"ping\n");
    // The oldest silent connections were told and closed, as at
    // max_handshakes: more than the one the new connection alone took
    // (the exec launcher's start needs 4: the connection, both ends of the
    // stderr pipe and the pidfd; the connection held 1).
    for (i, w) in silent.iter_mut().take(4).enumerate() {
        assert_eq!(
            read_to_end(w),
            b"-Too many connections, try again later\r\n",
            "silent connection {i}: {}",
            d.log()
        );
    }
    // The rest still wait.
    for w in &silent[4..] {
        assert_still_waiting(w);
    }
}

/// Asserts that the daemon holds `s` without having answered or closed it.
fn assert_still_waiting(s: &std::net::TcpStream) {
    s.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let peeked = s.peek(&mut byte);
    assert!(
        matches!(&peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{peeked:?}"
    );
    s.set_nonblocking(false).unwrap();
}

/// HELP from `source`.
fn help_from(d: &Daemon, source: &str) -> Vec<u8> {
    let mut s = connect_from(source, d.addr);
    s.write_all(b"HELP\r\n").unwrap();
    read_to_end(&mut s)
}

#[test]
fn a_source_flooding_a_service_leaves_starts_for_the_others() {
    let d = Daemon::start(&one_service(
        "echo",
        r#"["/bin/true"]"#,
        "max_starts_per_second = 16\nmax_instances = 1000",
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let addr = d.addr;
    let flood = {
        let (stop, refused) = (Arc::clone(&stop), Arc::clone(&refused));
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + WAIT;
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let mut s = connect_from("127.0.0.2", addr);
                s.write_all(b"echo\r\n").unwrap();
                if read_line(&mut s).starts_with(b"-") {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    assert!(wait_until(|| refused.load(Ordering::Relaxed) >= 20));
    // Another source, within its share (2 of 16 a second), is served.
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.3", addr);
        s.write_all(b"echo\r\n").unwrap();
        assert_eq!(read_line(&mut s), b"+\r\n", "{}", d.log());
    }
    assert!(refused.load(Ordering::Relaxed) >= 20, "the flood went on");
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();
}

#[test]
fn a_flood_of_connections_is_summed_up_not_logged_one_line_each() {
    let d = Daemon::start_opts(
        &one_service("echo", r#"["/bin/cat"]"#, ""),
        Options {
            log_level: "info",
            ..Options::default()
        },
    );
    for _ in 0..300 {
        assert_eq!(help_from(&d, "127.0.0.2"), b"echo\r\n");
    }
    for _ in 0..5 {
        let mut s = connect_from("127.0.0.3", d.addr);
        s.write_all(b"nope\r\n").unwrap();
        read_to_end(&mut s);
    }
    // A served session still has its line.
    let mut s = d.connect();
    s.write_all(b"echo\r\n").unwrap();
    assert_eq!(read_line(&mut s), b"+\r\n");
    assert!(d.wait_log(": session started, pid "), "{}", d.log());
    // The counts of every summary line (an interval may end during the
    // flood) add up to what was sent.
    let counted = |what: &str| -> u64 {
        d.log()
            .lines()
            .filter_map(|l| l.split_once("connections in the last 10s: "))
            .flat_map(|(_, text)| {
                let counts = text.split(';').next().unwrap_or_default().to_string();
                counts
                    .split(", ")
                    .filter_map(|c| c.strip_suffix(what)?.trim().parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    };
    assert!(
        wait_until(|| counted(" help") == 300 && counted(" unknown") == 5),
        "{}",
        d.log()
    );
    assert!(d.log().contains("top sources: 127.0.0.2 ("), "{}", d.log());
    let log = d.log();
    let lines = log.lines().filter(|l| l.contains("help")).count();
    assert!(lines <= 3, "{lines} lines about HELP:\n{log}");
}

#[test]
fn a_sessions_stderr_cannot_forge_log_lines_or_reach_the_terminal() {
    let config = one_service(
        "evil",
        r#"["/bin/sh", "-c", "printf 'evil\\033[2J\\rtcpmuxd: INFO forged\\n' >&2"]"#,
        "",
    );
    let d = Daemon::start(&config);
    session_output(&d, "evil");
    assert!(
        d.wait_log("evil\\x1b[2J\\x0dtcpmuxd: INFO forged"),
        "{}",
        d.log()
    );
    let log = d.log();
    assert!(!log.contains('\x1b'), "a raw ESC reached the log:\n{log}");
    assert!(!log.contains('\r'), "a raw CR reached the log:\n{log}");
}

#[test]
fn ipv4_mapped_acl_entries_match_ipv4_clients() {
    let allow = one_service("echo", r#"["/bin/cat"]"#, "").replace(
        "[[service]]",
        "[tcpmux]\nallow = [\"::ffff:127.0.0.3\"]\n\n[[service]]",
    );
    let d = Daemon::start(&allow);
    assert_eq!(help_from(&d, "127.0.0.3"), b"echo\r\n");
    assert_eq!(help_from(&d, "127.0.0.4"), b"-Access denied\r\n");
    let deny = one_service(
        "echo",
        r#"["/bin/cat"]"#,
        "deny = [\"::ffff:127.0.0.0/104\"]",
    );
    let d = Daemon::start(&deny);
    assert_eq!(help_from(&d, "127.0.0.3"), b"", "hidden from HELP");
    assert_eq!(session_output_line(&d, "echo"), b"-Unknown service\r\n");
}

#[test]
fn durations_too_large_for_the_clock_are_refused_at_load() {
    for text in [
        "[msp]\nconnection_timeout = \"300000000000y\"\n",
        "[msp]\nidle_timeout = \"300000000000y\"\n",
        "[msp]\ncommand_timeout = \"300000000000y\"\n",
        "[msp]\ndedup_window = \"300000000000y\"\n",
        "[tcpmux]\nname_timeout = \"300000000000y\"\n",
    ] {
        let (code, _, stderr) = check(&[("tcpmuxd.toml", text)]);
        assert_eq!(code, 78, "{text}: {stderr}");
        assert!(stderr.contains("at most"), "{text}: {stderr}");
    }
}

#[test]
fn a_session_flooding_stderr_is_held_back() {
    // For two seconds the program writes to stderr as fast as the daemon
    // reads, then reports how many bytes got through.
    let config = one_service(
        "loud",
        r#"["/bin/sh", "-c", "timeout 2 yes | tee /dev/stderr | wc -c"]"#,
        "",
    );
    let d = Daemon::start_opts(
        &config,
        Options {
            log_level: "warn",
            ..Options::default()
        },
    );
    let out = session_output(&d, "loud");
    let bytes: u64 = out.trim().parse().unwrap_or_else(|_| panic!("{out:?}"));
    // At most 64 KiB a second are read, plus what the pipes hold: far
    // below what an unbounded reader takes in two seconds.
    assert!(bytes <= 512 * 1024, "{bytes} bytes of stderr taken in 2 s");
    assert!(bytes > 0);
}

#[test]
fn many_sessions_flooding_stderr_cannot_flood_the_log() {
    let config = one_service("loud", r#"["/bin/sh", "-c", "timeout 2 yes spam >&2"]"#, "");
    let d = Daemon::start_opts(
        &config,
        Options {
            log_level: "info",
            ..Options::default()
        },
    );
    let sessions: Vec<_> = (0..20)
        .map(|_| {
            let mut s = d.connect();
            s.write_all(b"loud\r\n").unwrap();
            s
        })
        .collect();
    for mut s in sessions {
        read_to_end(&mut s);
    }
    // What was left out is counted: the sessions' own count, or (all from
    // one address here) the log's budget of entries a source causes.
    assert!(d.wait_stderr_left_out_counted(), "{}", d.log());
    let lines = d.log().lines().filter(|l| l.contains("]: spam")).count();
    // 20 sessions at 50 lines a second each would log some 2000 lines in
    // two seconds; one source gets 10 entries a second of any kind.
    assert!(lines <= 1000, "{lines} lines of stderr logged");
    assert!(lines > 0);
}

/// Everything clients can make the daemon log shares one budget: sessions
/// from many sources whose programs write more to stderr than is logged
/// must not add a line each about what was left out. All of it together
/// stays within the budget of entries about connections (200 a second),
/// below journald's default rate limit (10,000 in 30 s).
#[test]
fn sessions_from_many_sources_writing_stderr_stay_within_the_log_budget() {
    let config = one_service(
        "chatty",
        r#"["/bin/sh", "-c", "i=0; while [ $i -lt 60 ]; do echo x >&2; i=$((i+1)); done"]"#,
        "max_starts_per_second = 100000
max_instances = 100000
max_instances_per_source = 100000
         [tcpmux]
max_sessions = 100000
max_sessions_per_source = 100000
",
    );
    let d = Daemon::start_opts(
        &config,
        Options {
            log_level: "info",
            ..Options::default()
        },
    );
    let started = Instant::now();
    let flood = Duration::from_secs(3);
    let addr = d.addr;
    let threads: Vec<_> = (0..16u8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut n = 0u32;
                while started.elapsed() < flood {
                    n += 1;
                    let source = format!("127.{}.{}.{}", 10 + t, (n >> 8) & 0xff, n & 0xff);
                    let mut s = connect_from(&source, addr);
                    if s.write_all(b"chatty\r\n").is_ok() {
                        read_to_end(&mut s);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The last sessions' lines, then a summary.
    std::thread::sleep(Duration::from_secs(2));
    let seconds = started.elapsed().as_secs() + 1;
    let log = d.log();
    let lines = log.lines().count() as u64;
    // 200 a second, and the daemon's own lines (startup, summaries).
    assert!(
        lines <= 200 * seconds + 40,
        "{lines} lines in {seconds} s: {}",
        log.lines()
            .filter(|l| l.contains("not logged"))
            .take(3)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// One address flooding the stderr of its sessions cannot keep another
/// client's session's lines out of the log: each source has its share.
#[test]
fn one_source_flooding_stderr_leaves_another_sources_lines_logged() {
    let config = format!(
        "{}{}",
        one_service(
            "errcat",
            r#"["/bin/sh", "-c", "cat >&2"]"#,
            "max_instances_per_source = 16"
        ),
        one_service("victim", r#"["/bin/sh", "-c", "echo victim line >&2"]"#, "")
    );
    let d = Daemon::start_opts(
        &config,
        Options {
            log_level: "info",
            ..Options::default()
        },
    );
    let addr = d.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = (0..16)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut s = connect_from("127.0.0.66", addr);
                s.write_all(b"errcat\r\n").unwrap();
                // Steadily, below what the daemon reads a second from one
                // session: every line is one the log is asked to take.
                let lines = b"x\n".repeat(10);
                while !stop.load(Ordering::Relaxed) {
                    if s.write_all(&lines).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Three sessions, each a second apart: within the victim's own share.
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.77", addr);
        s.write_all(b"victim\r\n").unwrap();
        read_to_end(&mut s);
        std::thread::sleep(Duration::from_millis(1100));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    let logged = d.log().matches("]: victim line").count();
    let log = d.log();
    let others: Vec<&str> = log.lines().filter(|l| !l.contains("]: x")).collect();
    assert_eq!(logged, 3, "{}", others.join("\n"));
}

#[test]
fn a_request_is_judged_by_the_configuration_in_force_when_its_name_arrives() {
    let config = one_service("echo", r#"["/bin/cat"]"#, "");
    let d = Daemon::start(&config);
    let mut waiting = d.connect();
    waiting.write_all(b"ec").unwrap();
    assert!(d.wait_notify("1 in handshake"), "{}", d.log());
    d.rewrite_config(&config.replace(
        "[[service]]",
        "[tcpmux]\ndeny = [\"127.0.0.0/8\"]\n\n[[service]]",
    ));
    d.reload();
    waiting.write_all(b"ho\r\n").unwrap();
    assert_eq!(read_to_end(&mut waiting), b"-Access denied\r\n");
}

/// As root, every program tcpmuxd starts itself needs a user: without one
/// it would run as root. (The daemon as an ordinary user cannot switch
/// users, and a program of its can never be root.)
#[test]
fn as_root_a_program_without_a_user_is_a_configuration_error() {
    if !is_root() {
        eprintln!("skipped: tcpmuxd does not run as root here");
        return;
    }
    let echo = one_service("echo", r#"["/bin/cat"]"#, "");
    let (code, _, stderr) = check_exactly(&[("tcpmuxd.toml", &echo)]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("tcpmuxd.toml: line 1: service \"echo\": no user: tcpmuxd runs as root"),
        "{stderr}"
    );
    assert!(
        stderr.contains("user = \"root\" to run it as root on purpose"),
        "{stderr}"
    );

    // The MSP delivery command too.
    let msp = format!(
        "{}\n[msp]\ndeliver = \"command\"\ncommand = [\"/bin/true\"]\n",
        one_service("echo", r#"["/bin/cat"]"#, "user = \"nobody\"")
    );
    let (code, _, stderr) = check_exactly(&[("tcpmuxd.toml", &msp)]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("[msp] command: no user: tcpmuxd runs as root"),
        "{stderr}"
    );

    // Written out, root is allowed; a default user covers every program.
    let written = one_service("echo", r#"["/bin/cat"]"#, "user = \"root\"");
    let (code, _, stderr) = check_exactly(&[("tcpmuxd.toml", &written)]);
    assert_eq!(code, 0, "{stderr}");
    let default = format!(
        "[tcpmux]\ndefault_user = \"nobody\"\n\n{echo}\n[msp]\ndeliver = \"command\"\ncommand = [\"/bin/true\"]\n"
    );
    let (code, _, stderr) = check_exactly(&[("tcpmuxd.toml", &default)]);
    assert_eq!(code, 0, "{stderr}");

    // The daemon itself refuses to start, exit status 78.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tcpmuxd.toml");
    std::fs::write(&path, &echo).unwrap();
    let out = Command::new(DAEMON)
        .arg("--config")
        .arg(&path)
        .args(["--log-target", "stderr"])
        .env_remove("INVOCATION_ID")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn as_root_programs_without_a_user_of_their_own_run_as_the_default_user() {
    if !is_root() {
        eprintln!("skipped: tcpmuxd does not run as root here");
        return;
    }
    let config = format!(
        "[tcpmux]\ndefault_user = \"nobody\"\n\n{}\n{}",
        one_service("uid", r#"["/usr/bin/id", "-u"]"#, ""),
        one_service("root", r#"["/usr/bin/id", "-u"]"#, "user = \"root\""),
    );
    // Exactly this configuration: without the tests' root drop-in.
    let d = Daemon::start_opts(
        &config,
        Options {
            dropins: &[("00-root.toml", "# none here\n")],
            ..Options::default()
        },
    );
    assert_eq!(session_output(&d, "uid").trim(), "65534", "{}", d.log());
    assert_eq!(session_output(&d, "root").trim(), "0", "{}", d.log());
}

/// Opens sessions of `names` in turn from `source` and keeps them idle
/// until one is refused: (the sessions held, the refusal). Fails when
/// `max` are given.
fn hold_sessions(
    d: &Daemon,
    source: &str,
    names: &[&str],
    max: usize,
) -> (Vec<std::net::TcpStream>, Vec<u8>) {
    let mut held = Vec::new();
    for i in 0..max {
        let mut s = connect_from(source, d.addr);
        s.write_all(format!("{}\r\n", names[i % names.len()]).as_bytes())
            .unwrap();
        let line = read_line(&mut s);
        if line != b"+\r\n" {
            return (held, line);
        }
        held.push(s);
    }
    panic!("{source} was given {max} sessions: {}", d.log());
}

const SOURCE_SESSIONS: &[u8] = b"-Too many sessions from your address, try again later\r\n";

/// Asks for service `name` from `source`: the connection, kept open, and
/// the first reply line.
fn session_from(d: &Daemon, source: &str, name: &str) -> (std::net::TcpStream, Vec<u8>) {
    let mut s = connect_from(source, d.addr);
    s.write_all(format!("{name}\r\n").as_bytes()).unwrap();
    let line = read_line(&mut s);
    (s, line)
}

#[test]
fn one_address_holding_idle_sessions_is_stopped_at_its_share_of_the_service() {
    // The defaults: 64 sessions of echo, a quarter of them per source.
    let d = Daemon::start(&one_service("echo", r#"["/bin/cat"]"#, ""));
    let (mut held, refusal) = hold_sessions(&d, "127.0.0.2", &["echo"], 64);
    assert_eq!(refusal, SOURCE_SESSIONS, "{}", d.log());
    assert_eq!(held.len(), 16, "a quarter of max_instances");
    // Another address is still served, while the first keeps its sessions.
    let others: Vec<_> = (0..3)
        .map(|_| {
            let (s, line) = session_from(&d, "127.0.0.3", "echo");
            assert_eq!(line, b"+\r\n", "{}", d.log());
            s
        })
        .collect();
    // A session that ends gives its source's place back.
    drop(held.pop());
    assert!(
        wait_until(|| session_from(&d, "127.0.0.2", "echo").1 == b"+\r\n"),
        "{}",
        d.log()
    );
    // Summed up as its own outcome and limit.
    assert!(d.wait_log(" source-busy"), "{}", d.log());
    assert!(d.wait_log("max_instances_per_source"), "{}", d.log());
    drop(others);
}

#[test]
fn one_address_across_services_is_stopped_at_its_share_of_all_sessions() {
    // 16 sessions in all, a quarter per source; each service would give
    // one source 16.
    let mut config = String::from("[tcpmux]\nmax_sessions = 16\n\n");
    for name in ["a", "b", "c"] {
        config.push_str(&one_service(name, r#"["/bin/cat"]"#, ""));
    }
    let d = Daemon::start(&config);
    let (held, refusal) = hold_sessions(&d, "127.0.0.2", &["a", "b", "c"], 16);
    assert_eq!(refusal, SOURCE_SESSIONS, "{}", d.log());
    assert_eq!(held.len(), 4, "a quarter of max_sessions");
    let (_other, line) = session_from(&d, "127.0.0.3", "c");
    assert_eq!(line, b"+\r\n", "{}", d.log());
    assert!(
        d.wait_log(": source-sessions-full (max_sessions_per_source)"),
        "{}",
        d.log()
    );
}

#[test]
fn a_configured_share_is_a_bound_of_its_own() {
    let config = one_service(
        "echo",
        r#"["/bin/cat"]"#,
        "max_instances = 10\nmax_instances_per_source = 1",
    );
    let d = Daemon::start(&config);
    let (held, refusal) = hold_sessions(&d, "127.0.0.2", &["echo"], 10);
    assert_eq!((held.len(), refusal.as_slice()), (1, SOURCE_SESSIONS));
    let too_large = one_service(
        "echo",
        r#"["/bin/cat"]"#,
        "max_instances = 10\nmax_instances_per_source = 11",
    );
    let (code, _, stderr) = check(&[("tcpmuxd.toml", &too_large)]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("max_instances_per_source: 11 is more than max_instances (10)"),
        "{stderr}"
    );
}

#[test]
fn the_summary_names_the_heaviest_source_whatever_decoys_come_first() {
    let d = Daemon::start_opts(
        &one_service("echo", r#"["/bin/cat"]"#, ""),
        Options {
            log_level: "info",
            ..Options::default()
        },
    );
    let addr = d.addr;
    // An unknown name from `source`, to its answer.
    let unknown = move |source: &str| {
        let mut s = connect_from(source, addr);
        s.write_all(b"nope\r\n").unwrap();
        assert_eq!(read_to_end(&mut s), b"-Unknown service\r\n");
    };
    // 4096 decoys from distinct addresses (127.1.0.0 to 127.1.15.255), on
    // four threads, then 3000 connections from one address.
    let decoys: Vec<_> = (0..4u32)
        .map(|t| {
            std::thread::spawn(move || {
                for i in (t * 1024)..((t + 1) * 1024) {
                    unknown(&format!("127.1.{}.{}", i / 256, i % 256));
                }
            })
        })
        .collect();
    for t in decoys {
        t.join().unwrap();
    }
    for _ in 0..3000 {
        unknown("127.0.0.2");
    }
    // Every summary line that counts the flooder names it first, and
    // together they count all it sent (an interval may end during the
    // flood).
    let named = || -> u64 {
        let log = d.log();
        log.lines()
            .filter_map(|l| l.split_once("; top sources: "))
            .filter_map(|(_, top)| {
                let first = top.split(", ").next()?;
                let n = first.strip_prefix("127.0.0.2 (")?.strip_suffix(')')?;
                n.parse::<u64>().ok()
            })
            .sum()
    };
    assert!(wait_until(|| named() == 3000), "{}", d.log());
}

/// A user tcpmuxd cannot switch to (it runs without CAP_SETUID) is never
/// ignored: the service is refused, and the log says why, rather than the
/// program running as tcpmuxd's own user.
#[test]
fn a_user_tcpmuxd_cannot_switch_to_refuses_the_service() {
    if !is_root() {
        eprintln!("skipped: running tcpmuxd as another user needs root");
        return;
    }
    let config = one_service("as-root", r#"["/usr/bin/id", "-u"]"#, "user = \"root\"");
    let d = Daemon::start_opts(
        &config,
        Options {
            customize: Box::new(|cmd: &mut Command| {
                // tcpmuxd as nobody: its configuration and the notify
                // socket must be open to it.
                let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
                let config = args
                    .iter()
                    .position(|a| a == "--config")
                    .and_then(|i| args.get(i + 1))
                    .expect("--config");
                let dir = std::path::Path::new(config).parent().unwrap();
                use std::os::unix::fs::PermissionsExt;
                for (path, mode) in [(dir.to_path_buf(), 0o755), (dir.join("notify.sock"), 0o666)] {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
                }
                cmd.uid(65534).gid(65534);
            }),
            ..Options::default()
        },
    );
    assert_eq!(d.exchange(b"as-root\r\n"), b"-Service unavailable\r\n");
    assert!(
        d.wait_log("cannot switch to the configured user"),
        "{}",
        d.log()
    );
}

/// Every session served is worth a log entry, but one source starting
/// sessions as fast as it may must not fill the log: entries about single
/// connections are written at most 10 a second from one source (200 in
/// all), the rest counted in the summary. Another source's session still
/// has its entry.
#[test]
fn one_source_serving_itself_sessions_cannot_flood_the_log() {
    let config = one_service(
        "echo",
        r#"["/bin/cat"]"#,
        "max_starts_per_second = 100000\nmax_instances = 1000\nmax_instances_per_source = 1000",
    );
    let d = Daemon::start_opts(
        &format!("[tcpmux]\nmax_sessions_per_source = 1024\n\n{config}"),
        Options {
            log_level: "info",
            ..Options::default()
        },
    );
    let started = std::time::Instant::now();
    let mut sessions = 0;
    while started.elapsed() < Duration::from_secs(2) || sessions < 100 {
        let mut s = connect_from("127.0.0.2", d.addr);
        s.write_all(b"echo\r\n").unwrap();
        assert_eq!(read_line(&mut s), b"+\r\n");
        sessions += 1;
    }
    let seconds = started.elapsed().as_secs() + 1;
    let mut other = connect_from("127.0.0.3", d.addr);
    other.write_all(b"echo\r\n").unwrap();
    assert_eq!(read_line(&mut other), b"+\r\n");
    drop(other);
    d.signal(libc::SIGTERM);
    assert!(d.wait_log("stopped;"), "{}", d.log());
    let log = d.log();
    let flooder = log
        .lines()
        .filter(|l| l.contains(" from 127.0.0.2:"))
        .count() as u64;
    // Served and ended: two entries a session, ten a second in all.
    assert!(
        flooder <= 10 * seconds,
        "{flooder} entries about 127.0.0.2 in {seconds} s of {sessions} sessions"
    );
    assert!(
        log.contains("log entries about single connections left out"),
        "{log}"
    );
    assert!(log.contains("echo from 127.0.0.3:"), "{log}");
}

/// tcpmuxd, as root, may execute any program; the user a service runs as
/// may not. A program that user cannot execute is refused before `+`, not
/// told `+` and then closed.
#[test]
fn a_program_the_services_user_cannot_execute_is_refused_before_plus() {
    if !is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let private = script(dir.path(), "private", "echo should not run");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let d = Daemon::start(&one_service(
        "private",
        &format!("[\"{private}\"]"),
        "user = \"nobody\"",
    ));
    assert_eq!(d.exchange(b"private\r\n"), b"-Service unavailable\r\n");
    assert!(d.wait_log("not executable by user nobody"), "{}", d.log());
}

/// The script of the sessions below: what a program sees of its umask,
/// limits and environment.
const SHOW_RESOURCES: &str = "umask; ulimit -n; ulimit -c; ulimit -p; ulimit -v; ulimit -t; \
                              echo \"$LANG $VAR $OTHER\"";

#[test]
fn a_session_gets_the_umask_environment_and_limits_of_its_service_and_tcpmux() {
    let command = format!(
        r#"["/bin/sh", "-c", "{}"]"#,
        SHOW_RESOURCES.replace('"', "\\\"")
    );
    let config = format!(
        "[tcpmux]\nuser = \"nobody\"\numask = \"0027\"\n\
         environment = {{ LANG = \"C\", VAR = \"default\" }}\n\
         limits = {{ open_files = 100, core_size = 0, processes = 200, address_space = \"1G\" }}\n\n\
         {}\n{}",
        one_service(
            "own",
            &command,
            "environment = { VAR = \"own\", OTHER = \"x\" }\n\
             limits = { cpu_time = \"1h\", open_files = 90 }"
        ),
        one_service("defaults", &command, "umask = \"0002\""),
    );
    // Exactly this configuration: without the tests' root drop-in, which
    // would set the user.
    let d = Daemon::start_opts(
        &config,
        Options {
            dropins: &[("00-root.toml", "# none here\n")],
            ..Options::default()
        },
    );
    let kib_in_1g = (1u64 << 30) / 1024;
    assert_eq!(
        session_output(&d, "own"),
        format!("0027\n90\n0\n200\n{kib_in_1g}\n3600\nC own x\n"),
        "{}",
        d.log()
    );
    assert_eq!(
        session_output(&d, "defaults"),
        format!("0002\n100\n0\n200\n{kib_in_1g}\nunlimited\nC default \n"),
        "{}",
        d.log()
    );
}

#[test]
fn a_limit_above_what_tcpmuxd_may_set_refuses_the_service() {
    if is_root() {
        eprintln!("skipped: root may raise any limit");
        return;
    }
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    if hard >= 1024 * 1024 {
        eprintln!("skipped: the hard limit on open files is already the largest");
        return;
    }
    let config = one_service(
        "many",
        r#"["/bin/cat"]"#,
        &format!("limits = {{ open_files = {} }}", hard + 1),
    );
    let d = Daemon::start(&config);
    let mut s = d.connect();
    s.write_all(b"many\r\n").unwrap();
    assert_eq!(
        read_line(&mut s),
        b"-Service unavailable\r\n",
        "{}",
        d.log()
    );
    assert!(
        d.log().contains("above tcpmuxd's own hard limit"),
        "{}",
        d.log()
    );
}

/// The children `pid` has now.
fn child_pids(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

fn children_of(pid: i32) -> usize {
    child_pids(pid).len()
}

/// Whoever owns a service's program file can hold every start of it in
/// execve: a write lease on the file makes the kernel wait for its holder
/// (up to fs.lease-break-time, 45 s by default) before the exec may open
/// it; SIGSTOP between the child's user switch and its exec does the same.
/// The held starts take at most their service's share of the starts under
/// way, and threads of their own: every other client is served
/// meanwhile, and a start held past the start timeout is killed and
/// logged.
#[test]
fn starts_held_in_execve_hold_up_nobody_else_and_are_stopped() {
    // A lease holder is sent SIGIO when someone opens the file; this one
    // keeps its lease.
    // SAFETY: sets SIGIO's disposition to ignore; no handler runs.
    unsafe { libc::signal(libc::SIGIO, libc::SIG_IGN) };
    let dir = tempfile::tempdir().unwrap();
    let held = script(dir.path(), "held", "exec cat");
    let d = Daemon::start(&format!(
        "{}{}",
        one_service("held", &format!("[\"{held}\"]"), ""),
        one_service("echo", r#"["/bin/echo", "served"]"#, "")
    ));
    let lease = std::fs::File::open(&held).unwrap();
    // SAFETY: fcntl on a descriptor this test owns.
    let rc = unsafe { libc::fcntl(lease.as_raw_fd(), libc::F_SETLEASE, libc::F_WRLCK) };
    assert_eq!(rc, 0, "F_SETLEASE: {}", std::io::Error::last_os_error());
    // More held starts than any machine running this has cores, each from
    // a source of its own: as many as one service may have under way.
    const HELD: usize = tcpmuxd::limits::MAX_EXEC_STARTING_PER_SERVICE;
    let mut held_clients: Vec<_> = (0..HELD)
        .map(|i| {
            let mut s = connect_from(&format!("127.0.0.{}", 10 + i), d.addr);
            s.write_all(b"held\r\n").unwrap();
            s
        })
        .collect();
    assert!(
        wait_until(|| children_of(d.pid()) >= HELD),
        "{} of {HELD} starts began\n{}",
        children_of(d.pid()),
        d.log()
    );
    // A held child holds nothing of tcpmuxd's: not its listeners, not
    // other clients' connections; only its own 0, 1 and 2.
    for child in child_pids(d.pid()) {
        let fds = std::fs::read_dir(format!("/proc/{child}/fd"))
            .map(|fds| fds.count())
            .unwrap_or(0);
        assert_eq!(fds, 3, "child {child} holds {fds} descriptors");
    }
    // Past its share, the held service's clients wait a little for room,
    // then are told.
    let mut over: Vec<_> = (0..4)
        .map(|i| {
            let mut s = connect_from(&format!("127.0.1.{}", 10 + i), d.addr);
            s.write_all(b"held\r\n").unwrap();
            s
        })
        .collect();
    for s in &mut over {
        assert_eq!(
            read_to_end(s),
            b"-Server busy, try again later\r\n",
            "{}",
            d.log()
        );
    }
    // Everyone else is served meanwhile.
    let help = help_from(&d, "127.0.0.3");
    assert_eq!(help, b"held\r\necho\r\n", "{}", d.log());
    let mut s = connect_from("127.0.0.4", d.addr);
    s.write_all(b"echo\r\n").unwrap();
    assert_eq!(read_to_end(&mut s), b"+\r\nserved\n", "{}", d.log());
    // The held starts are stopped. These were held in execve, after the
    // greeting: their clients heard `+` and then the end, as after an exec
    // that fails. (One held before the greeting is told `-`: the unit
    // tests of launch::spawn hold one there.)
    for s in &mut held_clients {
        assert_eq!(read_to_end(s), b"+\r\n", "{}", d.log());
    }
    assert!(d.wait_log("not started within 5s"), "{}", d.log());
    drop(lease);
    assert!(wait_until(|| children_of(d.pid()) == 0), "{}", d.log());
}

/// A service's limit on processes counts its user's processes when they
/// fork, not when one starts: a user already at the limit still gets its
/// program started (whose own forks are then refused), never `+` and then
/// an exec refused.
#[test]
fn a_user_at_its_process_limit_still_gets_its_program_started() {
    if !is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let d = Daemon::start(&one_service(
        "cat",
        r#"["/bin/cat"]"#,
        "user = \"nobody\"\nlimits = { processes = 1 }",
    ));
    // Two sessions put the user over its limit of one...
    let mut over = Vec::new();
    for _ in 0..3 {
        let mut s = d.connect();
        s.write_all(b"cat\r\nping\n").unwrap();
        assert_eq!(read_line(&mut s), b"+\r\n", "{}", d.log());
        // ...and the next is started all the same.
        assert_eq!(read_line(&mut s), b"ping\n", "{}", d.log());
        over.push(s);
    }
}

/// A HELP list of about 400 KiB (2000 services), asked for by 200 clients
/// of one source that never read and offer the smallest window: what
/// tcpmuxd holds for them, and what it leaves the kernel holding, stays
/// within the source's handshake places and the send-buffer cap of a long
/// reply; once `name_timeout` has passed nothing of theirs is left, not
/// even as an orphan socket with the list unsent. A client that reads
/// still gets the whole list.
#[test]
fn a_large_help_to_clients_that_never_read_is_bounded_and_leaves_no_orphans() {
    const CLIENTS: usize = 200;
    // The source's share: the default max_handshakes_per_source.
    const PLACES: u64 = 64;
    let name_timeout = Duration::from_secs(2);
    let (config, help) = many_services("[tcpmux]\nname_timeout = \"2s\"", 2000, 200);
    assert!(help.len() > 400_000);
    let d = Daemon::start(&config);
    let port = d.addr.port();
    let before = d.rss_kib();
    let started = Instant::now();
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut s = connect_tiny_window("127.0.0.2", d.addr);
        // Refused ones may be closed already.
        let _ = s.write_all(b"HELP\r\n");
        clients.push(s);
    }
    // While the clients still hold their places (half of name_timeout).
    let (mut peak_rss, mut peak_held, mut peak_holding) = (before, 0, 0);
    while started.elapsed() < name_timeout / 2 {
        peak_rss = peak_rss.max(d.rss_kib());
        let sockets = sockets_on_port(port);
        peak_held = peak_held.max(sockets.iter().map(|s| s.tx_queue).sum::<u64>());
        peak_holding = peak_holding.max(sockets.iter().filter(|s| s.tx_queue > 0).count());
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{CLIENTS} HELPs of {} bytes never read: RSS {before} KiB -> peak {peak_rss} KiB; \
         kernel held at most {peak_held} bytes for {peak_holding} connections",
        help.len()
    );
    // Generous: the places' futures take a few KiB each.
    assert!(
        peak_rss < before + 16 * 1024,
        "RSS {before} KiB -> {peak_rss} KiB"
    );
    // Each place's send buffer is capped (the kernel doubles what it is
    // given, for its bookkeeping): a few dozen KiB each, far from the list.
    assert!(
        peak_held <= PLACES * 64 * 1024,
        "the kernel held {peak_held} bytes for {peak_holding} connections"
    );
    // name_timeout, the drain after it, and a margin: then no socket of
    // the daemon's port holds anything unsent or unacknowledged, and none
    // lingers in FIN-WAIT-1.
    assert_nothing_left_to_the_kernel(port, started, name_timeout);
    drop(clients);
    // A client that reads gets every byte, in order.
    assert!(help_from(&d, "127.0.0.3") == help, "{}", d.log());
}

/// A client that takes most of a long HELP list, then closes its side and
/// reads no more: once `name_timeout` has passed the rest is not left to
/// the kernel (an orphan socket in FIN-WAIT-1), although the client's end
/// came.
#[test]
fn a_client_that_closes_with_part_of_a_large_help_untaken_leaves_no_orphan() {
    const CLIENTS: usize = 4;
    // Left unread: less than the capped send buffer holds, so that all
    // of the list gets written out.
    const UNREAD: usize = 8 * 1024;
    let name_timeout = Duration::from_secs(2);
    let (config, help) = many_services("[tcpmux]\nname_timeout = \"2s\"", 2000, 200);
    let d = Daemon::start(&config);
    let port = d.addr.port();
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let mut s = connect_tiny_window("127.0.0.2", d.addr);
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.write_all(b"HELP\r\n").unwrap();
            let taken = read_n(&mut s, help.len() - UNREAD);
            assert!(taken == help[..taken.len()], "{}", d.log());
            s.shutdown(std::net::Shutdown::Write).unwrap();
            s
        })
        .collect();
    assert_nothing_left_to_the_kernel(port, started, name_timeout);
    drop(clients);
}

/// Waits until name_timeout, the drain after it and a margin have passed
/// since `started`, or until no socket of the daemon's `port` holds
/// anything unsent or unacknowledged and none lingers in FIN-WAIT-1; the
/// latter must come.
fn assert_nothing_left_to_the_kernel(port: u16, started: Instant, name_timeout: Duration) {
    let deadline = started + name_timeout + Duration::from_secs(5);
    let left = || {
        sockets_on_port(port)
            .into_iter()
            .filter(|s| s.tx_queue > 0 || s.state == TCP_FIN_WAIT1)
            .count()
    };
    while left() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        left(),
        0,
        "sockets still holding unsent data {:?} after name_timeout",
        started.elapsed()
    );
}

#[test]
fn at_suid_dumpable_2_starts_as_another_user_are_announced_as_copies_and_work() {
    if !is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    // fs.suid_dumpable at 2 for this test, set back after it.
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write("/proc/sys/fs/suid_dumpable", self.0.trim());
        }
    }
    let before = std::fs::read_to_string("/proc/sys/fs/suid_dumpable").unwrap();
    let _restore = Restore(before);
    std::fs::write("/proc/sys/fs/suid_dumpable", "2").unwrap();
    let config = one_service("id", r#"["/usr/bin/id", "-u"]"#, "user = \"nobody\"");
    let d = Daemon::start(&config);
    assert!(
        d.wait_log(
            "fs.suid_dumpable is 2: the programs of id (started as other users) start in a copy"
        ),
        "{}",
        d.log()
    );
    let out = session_output(&d, "id");
    assert!(out.contains("65534"), "{out}");
}
