//! tcpmuxd behind a load balancer: the PROXY protocol header from
//! `trusted_proxies`, against a real HAProxy (Debian's `haproxy`, started
//! here on loopback and stopped by its pid) and directly.
//!
//! HAProxy connects to tcpmuxd from 127.0.0.2 and 127.0.0.3 (`source`),
//! which tcpmuxd trusts; clients connect to HAProxy from other loopback
//! addresses, to be told apart. Without haproxy the HAProxy tests are
//! skipped, except when `CI` is set: CI must run them.

mod common;

use common::e2e::under_ci;
use common::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The HAProxy configuration of README.md's "Scaling out", as the tests run
/// it: the README's text, with its example addresses replaced by loopback
/// ones.
const README: &str = include_str!("../README.md");

/// The README's HAProxy configuration (the ```haproxy block).
fn readme_haproxy_config() -> String {
    let start = README
        .find("```haproxy\n")
        .expect("README.md has a ```haproxy block (Scaling out)")
        + "```haproxy\n".len();
    let len = README[start..].find("```").expect("the block ends");
    README[start..start + len].to_string()
}

/// The directories haproxy is looked for in, beside PATH.
const SBIN: [&str; 2] = ["/usr/sbin", "/sbin"];

/// haproxy's path; None (the test is skipped) when it is not installed,
/// except under CI, which must run these tests.
fn haproxy() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(SBIN.iter().map(PathBuf::from))
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file());
    if found.is_none() {
        if under_ci() {
            panic!("the HAProxy tests must run under CI, but haproxy is not installed");
        }
        let _ = writeln!(
            std::io::stderr(),
            "skipped: haproxy is not installed (apt-get install haproxy)"
        );
    }
    found
}

/// A free port on 127.0.0.1 (for HAProxy's frontend, which binds its own).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running HAProxy, stopped by its pid when dropped.
struct HaProxy {
    child: Child,
    frontend: SocketAddr,
    stats: PathBuf,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    /// Starts `haproxy -db` with `config` (a `global` section added),
    /// and waits until its frontend takes connections.
    fn start(binary: &Path, config: &str, frontend: SocketAddr) -> HaProxy {
        let dir = tempfile::tempdir().unwrap();
        let stats = dir.path().join("stats.sock");
        let file = dir.path().join("haproxy.cfg");
        let text = format!(
            "global\n    stats socket {} mode 600 level admin\n\n{config}",
            stats.display()
        );
        std::fs::write(&file, text).unwrap();
        let child = Command::new(binary)
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start haproxy");
        let h = HaProxy {
            child,
            frontend,
            stats,
            _dir: dir,
        };
        assert!(
            wait_until(|| TcpStream::connect(frontend).is_ok() && h.stats.exists()),
            "haproxy did not start listening on {frontend}"
        );
        h
    }

    /// The `status` column (UP, DOWN, ...) of each server, from
    /// `show stat` on the stats socket.
    fn server_status(&self) -> Vec<(String, String)> {
        let Ok(mut s) = UnixStream::connect(&self.stats) else {
            return Vec::new();
        };
        s.write_all(b"show stat\n").unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|cols| cols.len() > 17 && !matches!(cols[1], "FRONTEND" | "BACKEND"))
            .map(|cols| (cols[1].to_string(), cols[17].to_string()))
            .collect()
    }

    /// Waits until the health checks have marked every server UP, so that
    /// round robin reaches each.
    fn wait_all_up(&self) {
        let mut status = Vec::new();
        let up = wait_until(|| {
            status = self.server_status();
            !status.is_empty() && status.iter().all(|(_, s)| s == "UP")
        });
        assert!(up, "servers not UP: {status:?}");
    }

    /// Connects to the frontend from loopback address `source`.
    fn connect_from(&self, source: &str) -> TcpStream {
        connect_from(source, self.frontend)
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The probe service's program: prints its environment and exits.
fn probe(dir: &Path) -> String {
    script(dir, "probe", "env | sort")
}

/// Two tcpmuxd hosts (two daemons here), each trusting the balancer's
/// addresses, with the services `echo` (which the health check expects)
/// and `probe` (with `service_extra`), and `extra` in `[tcpmux]`.
fn two_hosts(dir: &Path, extra: &str, service_extra: &str) -> (Daemon, Daemon) {
    let probe = probe(dir);
    let config = format!(
        "[tcpmux]\ntrusted_proxies = [\"127.0.0.2\", \"127.0.0.3\"]\n{extra}\n\
         [[service]]\nname = \"echo\"\ncommand = [\"/bin/cat\"]\n\n\
         [[service]]\nname = \"probe\"\ncommand = [\"{probe}\"]\n{service_extra}\n"
    );
    (Daemon::start(&config), Daemon::start(&config))
}

/// The README's configuration, its two servers on `hosts` (connecting from
/// 127.0.0.2 and 127.0.0.3), its frontend on a free loopback port, and
/// `send-proxy-v2` replaced by `proxy` (to test version 1 too).
fn readme_config(hosts: [SocketAddr; 2], proxy: &str) -> (String, SocketAddr) {
    let frontend: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = readme_haproxy_config()
        .replace("bind :1", &format!("bind {frontend}"))
        .replace("192.0.2.11:1", &format!("{} source 127.0.0.2", hosts[0]))
        .replace("192.0.2.12:1", &format!("{} source 127.0.0.3", hosts[1]))
        .replace("inter 2s", "inter 300ms")
        .replace("send-proxy-v2", proxy);
    assert!(config.contains(&hosts[1].to_string()), "{config}");
    (config, frontend)
}

/// Asks for `probe` from `source` through HAProxy: the program's
/// environment, and the client's own address.
fn probe_through(
    h: &HaProxy,
    source: &str,
) -> (std::collections::HashMap<String, String>, SocketAddr) {
    let mut s = h.connect_from(source);
    let me = s.local_addr().unwrap();
    s.write_all(b"probe\r\n").unwrap();
    let out = String::from_utf8(read_to_end(&mut s)).unwrap();
    let env = out
        .strip_prefix("+\r\n")
        .unwrap_or_else(|| panic!("no + first: {out:?}"))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (env, me)
}

fn sessions_see_the_real_client(proxy: &str) {
    let Some(binary) = haproxy() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_hosts(dir.path(), "", "");
    let (config, frontend) = readme_config([a.addr, b.addr], proxy);
    let h = HaProxy::start(&binary, &config, frontend);
    h.wait_all_up();
    // Round robin: both hosts serve one of these.
    for _ in 0..2 {
        let (env, me) = probe_through(&h, "127.0.0.5");
        assert_eq!(env["REMOTE_ADDR"], "127.0.0.5", "{env:?}");
        assert_eq!(env["REMOTE_PORT"], me.port().to_string());
        assert_eq!(env["LOCAL_ADDR"], "127.0.0.1");
        assert_eq!(env["LOCAL_PORT"], frontend.port().to_string());
    }
    // The log names the client, not the balancer.
    let started = "probe from 127.0.0.5:";
    assert!(a.wait_log(started), "{}", a.log());
    assert!(b.wait_log(started), "{}", b.log());
    assert!(!a.log().contains("probe from 127.0.0.2"), "{}", a.log());
}

#[test]
fn through_haproxy_with_proxy_v2_the_program_sees_the_real_client() {
    sessions_see_the_real_client("send-proxy-v2");
}

#[test]
fn through_haproxy_with_proxy_v1_the_program_sees_the_real_client() {
    sessions_see_the_real_client("send-proxy");
}

#[test]
fn haproxy_health_check_asks_for_help_and_marks_the_servers_up() {
    let Some(binary) = haproxy() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_hosts(dir.path(), "", "");
    let (config, frontend) = readme_config([a.addr, b.addr], "send-proxy-v2");
    assert!(config.contains("check-send-proxy"), "{config}");
    let h = HaProxy::start(&binary, &config, frontend);
    let mut status = Vec::new();
    let up = wait_until(|| {
        status = h.server_status();
        status.len() == 2 && status.iter().all(|(_, s)| s == "UP")
    });
    assert!(up, "servers not UP: {status:?}\n{}\n{}", a.log(), b.log());
    // The checks are HELP requests with a LOCAL header: answered, from the
    // balancer's own address, never refused for their header.
    assert!(!a.log().contains("bad-proxy-header"), "{}", a.log());
    // A host that stops serving is marked DOWN.
    drop(b);
    let down = wait_until(|| {
        status = h.server_status();
        status.iter().any(|(_, s)| s.starts_with("DOWN"))
    });
    assert!(down, "a stopped host still UP: {status:?}");
}

#[test]
fn a_service_deny_applies_to_the_real_client_behind_haproxy() {
    let Some(binary) = haproxy() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_hosts(dir.path(), "", "deny = [\"127.0.0.5\"]");
    let (config, frontend) = readme_config([a.addr, b.addr], "send-proxy-v2");
    let h = HaProxy::start(&binary, &config, frontend);
    h.wait_all_up();
    // Round robin: two in a row reach both hosts.
    for _ in 0..2 {
        let mut s = h.connect_from("127.0.0.5");
        s.write_all(b"probe\r\n").unwrap();
        assert_eq!(read_to_end(&mut s), b"-Unknown service\r\n");
    }
    for _ in 0..2 {
        let (env, _) = probe_through(&h, "127.0.0.6");
        assert_eq!(env["REMOTE_ADDR"], "127.0.0.6");
    }
    let denied = "probe from 127.0.0.5:";
    assert!(
        a.wait_log(denied) && b.wait_log(denied),
        "{}\n{}",
        a.log(),
        b.log()
    );
}

#[test]
fn silent_clients_behind_haproxy_leave_another_client_served() {
    let Some(binary) = haproxy() else { return };
    let dir = tempfile::tempdir().unwrap();
    // 64 connections from one client that never finish their name,
    // spread over two hosts that allow 16 handshakes per source: the
    // balancer's addresses would be full on both, were they the source.
    // (A first byte each: HAProxy connects to a host once the client has
    // sent something.)
    let (a, b) = two_hosts(dir.path(), "max_handshakes_per_source = 16", "");
    let (config, frontend) = readme_config([a.addr, b.addr], "send-proxy-v2");
    let h = HaProxy::start(&binary, &config, frontend);
    h.wait_all_up();
    let silent: Vec<TcpStream> = (0..64)
        .map(|_| {
            let mut s = h.connect_from("127.0.0.7");
            s.write_all(b"e").unwrap();
            s
        })
        .collect();
    // The client's own connections beyond its share are refused, on both
    // hosts.
    let limit = "connection from 127.0.0.7:";
    assert!(
        wait_until(|| a.log().contains(limit) && b.log().contains(limit)),
        "{}\n{}",
        a.log(),
        b.log()
    );
    assert!(
        a.log().contains("source-limit (max_handshakes_per_source)"),
        "{}",
        a.log()
    );
    // Another client is served on both hosts meanwhile.
    for _ in 0..2 {
        let (env, _) = probe_through(&h, "127.0.0.8");
        assert_eq!(env["REMOTE_ADDR"], "127.0.0.8");
    }
    drop(silent);
}

// Directly, without HAProxy: what the daemon does with headers.

/// The version 2 LOCAL header HAProxy's health checks send.
const V2_LOCAL: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";

fn direct_daemon(dir: &Path, extra: &str) -> Daemon {
    let probe = probe(dir);
    Daemon::start(&format!(
        "[tcpmux]\ntrusted_proxies = [\"127.0.0.2\"]\n{extra}\n\
         [[service]]\nname = \"probe\"\ncommand = [\"{probe}\"]\n"
    ))
}

fn env_of(out: &[u8]) -> std::collections::HashMap<String, String> {
    String::from_utf8_lossy(out)
        .strip_prefix("+\r\n")
        .unwrap_or_else(|| panic!("no + first: {:?}", String::from_utf8_lossy(out)))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn forged_headers_from_untrusted_addresses_are_not_believed() {
    let dir = tempfile::tempdir().unwrap();
    let d = direct_daemon(dir.path(), "");
    let client: SocketAddr = "192.0.2.7:51234".parse().unwrap();
    // Version 1: its line is the request line, an invalid service name.
    let mut s = connect_from("127.0.0.1", d.addr);
    s.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 51234 1\r\nprobe\r\n")
        .unwrap();
    assert_eq!(read_to_end(&mut s), b"-Invalid service name\r\n");
    // Version 2: its first line is an empty name.
    let mut s = connect_from("127.0.0.4", d.addr);
    let mut forged = v2_header(client, d.addr);
    forged.extend_from_slice(b"probe\r\n");
    s.write_all(&forged).unwrap();
    assert_eq!(read_to_end(&mut s), b"-Invalid service name\r\n");
    // The log shows where they came from.
    assert!(d.wait_log("connection from 127.0.0.4:"), "{}", d.log());
    assert!(!d.log().contains("192.0.2.7"), "{}", d.log());
}

#[test]
fn a_trusted_proxy_header_names_the_client_in_one_write_or_many() {
    let dir = tempfile::tempdir().unwrap();
    let d = direct_daemon(dir.path(), "");
    let client: SocketAddr = "192.0.2.7:51234".parse().unwrap();
    let front: SocketAddr = "198.51.100.1:1".parse().unwrap();
    // Header and line in one write (taken at accept).
    let mut s = connect_from("127.0.0.2", d.addr);
    let mut all = v2_header(client, front);
    all.extend_from_slice(b"probe\r\n");
    s.write_all(&all).unwrap();
    let env = env_of(&read_to_end(&mut s));
    assert_eq!(
        (&*env["REMOTE_ADDR"], &*env["REMOTE_PORT"]),
        ("192.0.2.7", "51234")
    );
    assert_eq!(
        (&*env["LOCAL_ADDR"], &*env["LOCAL_PORT"]),
        ("198.51.100.1", "1")
    );
    // Byte by byte, version 1.
    let mut s = connect_from("127.0.0.2", d.addr);
    for b in b"PROXY TCP4 192.0.2.8 198.51.100.1 4000 1\r\nprobe\r\n" {
        s.write_all(&[*b]).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let env = env_of(&read_to_end(&mut s));
    assert_eq!(env["REMOTE_ADDR"], "192.0.2.8");
    assert_eq!(env["REMOTE_PORT"], "4000");
    // A LOCAL header (a health check): the connection's own address.
    let mut s = connect_from("127.0.0.2", d.addr);
    s.write_all(&[V2_LOCAL, b"HELP\r\n"].concat()).unwrap();
    assert_eq!(read_to_end(&mut s), b"probe\r\n");
    let mut s = connect_from("127.0.0.2", d.addr);
    s.write_all(&[V2_LOCAL, b"probe\r\n"].concat()).unwrap();
    assert_eq!(env_of(&read_to_end(&mut s))["REMOTE_ADDR"], "127.0.0.2");
    assert!(
        d.wait_log("probe from 192.0.2.7:51234: session started"),
        "{}",
        d.log()
    );
}

#[test]
fn from_a_trusted_address_a_missing_broken_or_slow_header_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = direct_daemon(dir.path(), "name_timeout = \"1s\"");
    let closed_unanswered = |s: &mut TcpStream| {
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(
            out.is_empty(),
            "answered {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    // No header.
    let mut s = connect_from("127.0.0.2", d.addr);
    s.write_all(b"HELP\r\n").unwrap();
    closed_unanswered(&mut s);
    // A broken one.
    let mut s = connect_from("127.0.0.2", d.addr);
    s.write_all(b"PROXY TCP4 192.0.2.300 198.51.100.1 1 1\r\nHELP\r\n")
        .unwrap();
    closed_unanswered(&mut s);
    // An oversized one (version 2 says its length first).
    let mut s = connect_from("127.0.0.2", d.addr);
    s.write_all(b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff")
        .unwrap();
    closed_unanswered(&mut s);
    // A truncated one.
    let mut s = connect_from("127.0.0.2", d.addr);
    s.write_all(b"PROXY TCP4 192.0.2.7").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    closed_unanswered(&mut s);
    // A slow one: not whole within name_timeout.
    let mut s = connect_from("127.0.0.2", d.addr);
    let t = Instant::now();
    s.write_all(b"PROXY TCP4 192.0.2.7 ").unwrap();
    closed_unanswered(&mut s);
    assert!(t.elapsed() < WAIT);
    for cause in [
        "no PROXY protocol header",
        "malformed PROXY protocol header",
        "more than the 291 allowed",
        "closed in the middle of its PROXY protocol header",
        "not complete within the time allowed",
    ] {
        assert!(d.wait_log(cause), "{cause}: {}", d.log());
    }
    assert!(
        d.wait_log("connection from 127.0.0.2:"),
        "the balancer's address is named: {}",
        d.log()
    );
    // The daemon keeps serving, the balancer too.
    let mut s = connect_from("127.0.0.2", d.addr);
    s.write_all(&[V2_LOCAL, b"HELP\r\n"].concat()).unwrap();
    assert_eq!(read_to_end(&mut s), b"probe\r\n");
    assert_eq!(d.exchange(b"HELP\r\n"), b"probe\r\n");
    // The summary counts them under their outcome.
    assert!(
        d.wait_log("bad-proxy-header"),
        "no summary with bad-proxy-header: {}",
        d.log()
    );
}

#[test]
fn the_client_from_the_header_is_held_to_its_own_limits() {
    let dir = tempfile::tempdir().unwrap();
    let d = direct_daemon(
        dir.path(),
        // The kernel hands each connection over with its header (as
        // HAProxy sends it), so that no header is still to come and
        // counted against the balancer's own share of 2.
        "max_handshakes_per_source = 2\ndefer_accept = \"10s\"\n\
         allow = [\"127.0.0.0/8\", \"192.0.2.0/24\"]\ndeny = [\"192.0.2.66\"]",
    );
    let front: SocketAddr = "198.51.100.1:1".parse().unwrap();
    let from = |client: &str| {
        let mut s = connect_from("127.0.0.2", d.addr);
        s.write_all(&v2_header(client.parse().unwrap(), front))
            .unwrap();
        s
    };
    // Two silent clients from 192.0.2.7 take its share; a third is refused,
    // while 192.0.2.8 behind the same balancer is served.
    let _silent = [from("192.0.2.7:1000"), from("192.0.2.7:1001")];
    assert!(d.wait_notify("2 in handshake"), "{}", d.notified());
    let mut third = from("192.0.2.7:1002");
    assert_eq!(
        read_to_end(&mut third),
        b"-Too many connections from your address, try again later\r\n"
    );
    let mut other = from("192.0.2.8:1003");
    other.write_all(b"probe\r\n").unwrap();
    assert_eq!(env_of(&read_to_end(&mut other))["REMOTE_ADDR"], "192.0.2.8");
    // The master list judges the client, not the balancer.
    let mut denied = from("192.0.2.66:1004");
    denied.write_all(b"HELP\r\n").unwrap();
    assert_eq!(read_to_end(&mut denied), b"-Access denied\r\n");
    let mut outside = from("203.0.113.1:1005");
    outside.write_all(b"HELP\r\n").unwrap();
    assert_eq!(read_to_end(&mut outside), b"-Access denied\r\n");
    assert!(
        d.wait_log("connection from 192.0.2.7:1002: source-limit"),
        "{}",
        d.log()
    );
    assert!(
        d.wait_log("connection from 192.0.2.66:1004: denied"),
        "{}",
        d.log()
    );
}

#[test]
fn a_header_completed_after_a_reload_that_removed_the_trust_is_not_believed() {
    let dir = tempfile::tempdir().unwrap();
    let d = direct_daemon(dir.path(), "");
    let client: SocketAddr = "192.0.2.9:40009".parse().unwrap();
    let header = v2_header(client, d.addr);
    // Trusted when it connects; half its header before the reload.
    let mut s = connect_from("127.0.0.2", d.addr);
    s.write_all(&header[..10]).unwrap();
    let probe = probe(dir.path());
    d.rewrite_config(&format!(
        "[[service]]\nname = \"probe\"\ncommand = [\"{probe}\"]\n"
    ));
    d.reload();
    s.write_all(&header[10..]).unwrap();
    s.write_all(b"probe\r\n").unwrap();
    let out = read_to_end(&mut s);
    assert!(
        !String::from_utf8_lossy(&out).contains("192.0.2.9"),
        "a header from an address no longer trusted was believed: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(d.wait_log("bad-proxy-header"), "{}", d.log());
}

#[test]
fn a_deny_added_while_a_header_was_on_its_way_applies_to_its_client() {
    let dir = tempfile::tempdir().unwrap();
    let d = direct_daemon(dir.path(), "");
    let client: SocketAddr = "192.0.2.50:40050".parse().unwrap();
    let header = v2_header(client, d.addr);
    let mut s = connect_from("127.0.0.2", d.addr);
    s.write_all(&header[..10]).unwrap();
    let probe = probe(dir.path());
    d.rewrite_config(&format!(
        "[tcpmux]\ntrusted_proxies = [\"127.0.0.2\"]\ndeny = [\"192.0.2.50\"]\n\
         [[service]]\nname = \"probe\"\ncommand = [\"{probe}\"]\n"
    ));
    d.reload();
    s.write_all(&header[10..]).unwrap();
    s.write_all(b"probe\r\n").unwrap();
    let out = String::from_utf8_lossy(&read_to_end(&mut s)).to_string();
    assert!(out.starts_with('-'), "{out:?}");
    assert!(d.wait_log("192.0.2.50:40050: denied"), "{}", d.log());
}
