//! The `tcpmux` client against the real daemon.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

const CONFIG: &str = r#"
[[service]]
name = "echo"
command = ["/bin/cat"]

[[service]]
name = "refuser"
command = ["/bin/sh", "-c", "printf -- '-Not today\r\n'"]
plus = false
"#;

fn client(d: &Daemon, args: &[&str], input: &[u8]) -> (i32, Vec<u8>, String) {
    let mut child = Command::new(CLIENT)
        .arg(d.addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn lists_services() {
    let d = Daemon::start(CONFIG);
    let (code, out, _) = client(&d, &["--list"], b"");
    assert_eq!(code, 0);
    assert_eq!(out, b"echo\r\nrefuser\r\n");
}

#[test]
fn an_empty_list_is_said_on_stderr() {
    // No service at all, and one hidden from this client: stdout stays
    // the (empty) list, stderr says why nothing is shown.
    for config in [
        "",
        "[[service]]\nname = \"private\"\ncommand = [\"/bin/cat\"]\nallow = [\"192.0.2.0/24\"]\n",
    ] {
        let d = Daemon::start(config);
        let (code, out, err) = client(&d, &["--list"], b"");
        assert_eq!(code, 0, "{err}");
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(
            err.trim(),
            format!("tcpmux: {}: no service is offered to this client", d.addr)
        );
    }
}

#[test]
fn bridges_stdin_and_stdout_after_plus() {
    let d = Daemon::start(CONFIG);
    let (code, out, err) = client(&d, &["ECHO"], b"one\ntwo\n");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, b"one\ntwo\n");
    assert_eq!(err.trim(), "+");
}

#[test]
fn exits_non_zero_on_minus_and_prints_the_reason() {
    let d = Daemon::start(CONFIG);
    let (code, out, err) = client(&d, &["nosuch"], b"");
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert_eq!(err.trim(), "-Unknown service");
    let (code, _, err) = client(&d, &["refuser"], b"");
    assert_eq!(code, 1);
    assert_eq!(err.trim(), "-Not today");
}

#[test]
fn exit_statuses_follow_sysexits() {
    let status = |cmd: &str, args: &[&str]| {
        let out = Command::new(cmd).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = status(CLIENT, &["127.0.0.1:99999", "echo"]);
    assert_eq!(code, Some(64), "a bad port is a usage error: {err}");
    assert!(err.contains("99999"), "{err}");
    let (code, err) = status(CLIENT, &["--no-such-option"]);
    assert_eq!(code, Some(64), "{err}");
    let (code, err) = status(DAEMON, &["--log-level", "loud=x=y", "--check"]);
    assert_eq!(code, Some(64), "an invalid --log-level: {err}");
    assert!(err.contains("--log-level"), "{err}");
    let (code, _) = status(DAEMON, &["--help"]);
    assert_eq!(code, Some(0));
    let (code, err) = status(CLIENT, &["no-such-host.invalid", "echo"]);
    assert_eq!(code, Some(68), "{err}");
}

#[test]
fn cannot_connect_is_exit_69() {
    let l = loopback_listener();
    let addr = l.local_addr().unwrap();
    drop(l);
    let out = Command::new(CLIENT)
        .arg(addr.to_string())
        .arg("echo")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

/// As a ProxyCommand (ssh -o ProxyCommand='tcpmux --quiet %h ssh'): bytes
/// reach stdout as they come, without a newline and long before the end,
/// and --quiet keeps the `+` line off the terminal.
#[test]
fn relays_bytes_as_they_come_and_quiet_keeps_the_plus_line_off_stderr() {
    use std::io::Read;
    let d = Daemon::start(CONFIG);
    let mut child = Command::new(CLIENT)
        .args(["--quiet", &d.addr.to_string(), "echo"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // A banner-like exchange with no newline: it must come back while the
    // session is still open.
    stdin.write_all(b"SSH-\x00\x01\xff").unwrap();
    stdin.flush().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = [0u8; 7];
        let read = stdout.read_exact(&mut got).map(|()| got);
        let _ = tx.send(read.map_err(|e| e.to_string()));
    });
    let echoed = rx.recv_timeout(std::time::Duration::from_secs(10));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        echoed.expect("the bytes did not come back before the end of the session"),
        Ok(*b"SSH-\x00\x01\xff")
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn quiet_still_says_why_a_service_was_refused() {
    let d = Daemon::start(CONFIG);
    let (code, _, err) = client(&d, &["--quiet", "nosuch"], b"");
    assert_eq!(code, 1);
    assert!(err.starts_with("-"), "{err}");
}
