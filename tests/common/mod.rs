//! A harness that runs the real tcpmuxd binary on loopback.
#![allow(dead_code)]

pub mod e2e;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const DAEMON: &str = env!("CARGO_BIN_EXE_tcpmuxd");
pub const CLIENT: &str = env!("CARGO_BIN_EXE_tcpmux");

/// Generous bound for anything a test waits for; a healthy run takes far less.
pub const WAIT: Duration = Duration::from_secs(20);

/// A socket passed to the daemon as systemd would, with its name.
pub enum Passed {
    Stream(TcpListener, &'static str),
    Datagram(UdpSocket, &'static str),
}

impl Passed {
    fn fd(&self) -> RawFd {
        match self {
            Passed::Stream(l, _) => l.as_raw_fd(),
            Passed::Datagram(s, _) => s.as_raw_fd(),
        }
    }
    fn name(&self) -> &'static str {
        match self {
            Passed::Stream(_, n) | Passed::Datagram(_, n) => n,
        }
    }
}

/// How to start the daemon, beyond its main configuration file.
pub struct Options<'a> {
    pub dropins: &'a [(&'a str, &'a str)],
    /// Sockets passed as systemd would; none: the daemon binds its own.
    pub passed: Vec<Passed>,
    pub env: &'a [(&'a str, &'a str)],
    pub log_level: &'a str,
    /// Last changes to the command (a terminal, limits, descriptors).
    pub customize: Box<dyn FnOnce(&mut Command) + 'a>,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Options {
            dropins: &[],
            passed: vec![Passed::Stream(loopback_listener(), "tcpmux")],
            env: &[],
            log_level: "debug",
            customize: Box::new(|_| {}),
        }
    }
}

/// Running as root, tcpmuxd starts no program without a user: the tests'
/// programs run as root on purpose, said in a drop-in of their own (tests
/// of that rule start the daemon without it).
pub const ROOT_DROPIN: (&str, &str) = ("00-root.toml", "[tcpmux]\ndefault_user = \"root\"\n");

pub fn root_dropin() -> Option<(&'static str, &'static str)> {
    is_root().then_some(ROOT_DROPIN)
}

/// Writes [`ROOT_DROPIN`] beside configuration file `config`, as root.
pub fn write_root_dropin(config: &Path) {
    if let Some((name, text)) = root_dropin() {
        let dir = config.parent().expect("config in a folder").join("conf.d");
        std::fs::create_dir_all(&dir).expect("conf.d");
        std::fs::write(dir.join(name), text).expect("write drop-in");
    }
}

pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    notify: UnixDatagram,
    /// Every notification read so far, one a line.
    notified: Mutex<String>,
    log: Arc<Mutex<String>>,
    _passed: Vec<Passed>,
}

/// A fresh listener on 127.0.0.1 with a port the kernel picks.
/// Its backlog is systemd's default (4096), not std's 128.
pub fn loopback_listener() -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    // SAFETY: listen(2) on a socket we own; it only changes the backlog.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), 4096) }, 0);
    l
}

impl Daemon {
    /// Starts the daemon socket-activated on a fresh loopback listener named
    /// "tcpmux", with `config` as its main file.
    pub fn start(config: &str) -> Daemon {
        Self::start_with(
            config,
            &[],
            vec![Passed::Stream(loopback_listener(), "tcpmux")],
        )
    }

    /// Starts the daemon with drop-in files and the given passed sockets
    /// (none: it binds `[tcpmux] listen` itself).
    pub fn start_with(config: &str, dropins: &[(&str, &str)], passed: Vec<Passed>) -> Daemon {
        Self::start_env(config, dropins, passed, &[])
    }

    /// As [`Daemon::start_with`], with extra environment variables.
    pub fn start_env(
        config: &str,
        dropins: &[(&str, &str)],
        passed: Vec<Passed>,
        env: &[(&str, &str)],
    ) -> Daemon {
        Self::start_opts(
            config,
            Options {
                dropins,
                passed,
                env,
                ..Options::default()
            },
        )
    }

    /// Starts the daemon as [`Options`] say.
    pub fn start_opts(config: &str, opts: Options<'_>) -> Daemon {
        let Options {
            dropins,
            passed,
            env,
            log_level,
            customize,
        } = opts;
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("tcpmuxd.toml");
        std::fs::write(&config_path, config).expect("write config");
        let dropins: Vec<(&str, &str)> = root_dropin()
            .into_iter()
            .chain(dropins.iter().copied())
            .collect();
        if !dropins.is_empty() {
            std::fs::create_dir(dir.path().join("conf.d")).expect("conf.d");
            for (name, text) in dropins {
                std::fs::write(dir.path().join("conf.d").join(name), text).expect("write drop-in");
            }
        }
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");

        let addr = passed
            .iter()
            .find_map(|p| match p {
                Passed::Stream(l, "tcpmux") => l.local_addr().ok(),
                _ => None,
            })
            .unwrap_or_else(|| "0.0.0.0:0".parse().unwrap());

        let mut cmd = daemon_command(&config_path, &passed);
        cmd.arg("--log-target")
            .arg("stderr")
            .arg("--log-level")
            .arg(log_level)
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("JOURNAL_STREAM")
            .env_remove("INVOCATION_ID")
            .env("NOTIFY_SOCKET", &notify_path)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        customize(&mut cmd);
        let mut child = cmd.spawn().expect("start tcpmuxd");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut daemon = Daemon {
            child,
            addr,
            dir,
            notify,
            notified: Mutex::default(),
            log,
            _passed: passed,
        };
        if !daemon.wait_notify("READY=1") {
            panic!("tcpmuxd did not become ready; log:\n{}", daemon.log());
        }
        // Not socket-activated: the address it bound, found in its log
        // (TCPMUX's comes before MSP's; `--only msp` binds none).
        if daemon.addr.port() == 0 && daemon._passed.is_empty() {
            assert!(daemon.wait_log("listening for "), "{}", daemon.log());
            if daemon.log().contains("listening for TCPMUX on ") {
                daemon.addr = daemon.bound_addr();
            }
        }
        daemon
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("tcpmuxd.toml")
    }

    /// The address the daemon reported binding, when not socket-activated.
    fn bound_addr(&self) -> SocketAddr {
        let log = self.log();
        let line = log
            .lines()
            .find(|l| l.contains("listening for TCPMUX on "))
            .unwrap_or_else(|| panic!("no listening line in log:\n{log}"));
        let addr = line
            .split("listening for TCPMUX on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("address");
        addr.parse().expect("address parses")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        wait_until(|| self.log().contains(needle))
    }

    /// Waits until the log counts stderr lines it left out: in a session's
    /// own warning, or (all from one source) in the log budget's count of
    /// entries left out.
    pub fn wait_stderr_left_out_counted(&self) -> bool {
        wait_until(|| {
            let log = self.log();
            log.contains("lines of stderr not logged")
                || log.contains("log entries about single connections left out")
        })
    }

    /// Reads notifications until one contains `needle`.
    pub fn wait_notify(&self, needle: &str) -> bool {
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                self.notified.lock().unwrap().push_str(&format!("{text}\n"));
                if text.contains(needle) {
                    return true;
                }
            }
            if let Ok(Some(_)) = self.child_status() {
                return false;
            }
        }
        false
    }

    /// Every notification read so far (by [`Daemon::wait_notify`] and
    /// [`Daemon::start_opts`]'s wait for `READY=1`).
    pub fn notified(&self) -> String {
        self.notified.lock().unwrap().clone()
    }

    fn child_status(&self) -> std::io::Result<Option<std::process::ExitStatus>> {
        // Peek without reaping by checking /proc.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()));
        Ok(match stat {
            Ok(s) if s.contains(") Z ") => Some(Default::default()),
            Ok(_) => None,
            Err(_) => Some(Default::default()),
        })
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// SIGHUP, then waits for the reload to finish (READY=1 again).
    pub fn reload(&self) {
        // Drain notifications already queued, so READY=1 is the new one.
        let mut buf = [0u8; 4096];
        while self.notify.recv(&mut buf).is_ok() {}
        self.signal(libc::SIGHUP);
        assert!(
            self.wait_notify("RELOADING=1"),
            "no RELOADING=1; log:\n{}",
            self.log()
        );
        assert!(
            self.wait_notify("READY=1"),
            "no READY=1 after reload; log:\n{}",
            self.log()
        );
    }

    /// Rewrites the main configuration file.
    pub fn rewrite_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("rewrite config");
    }

    pub fn connect(&self) -> TcpStream {
        connect(self.addr)
    }

    /// Sends `request` in one write and reads everything until the daemon
    /// closes.
    pub fn exchange(&self, request: &[u8]) -> Vec<u8> {
        let mut s = self.connect();
        s.write_all(request).expect("write");
        read_to_end(&mut s)
    }

    /// The HELP list as names.
    pub fn help(&self) -> Vec<String> {
        let reply = self.exchange(b"HELP\r\n");
        let text = String::from_utf8(reply).expect("HELP is ASCII");
        assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
        text.split_terminator("\r\n").map(str::to_string).collect()
    }

    /// The daemon's /proc/PID/status.
    pub fn proc_status(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status")
    }

    /// Resident memory of the daemon, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// Stops the daemon with SIGTERM and returns its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        wait_child(&mut self.child)
    }
}

/// The daemon's command line for `config_path`, socket-activated with
/// `passed` (as systemd does it: fds from 3 on, named by LISTEN_FDNAMES), or
/// binding its own sockets when `passed` is empty.
pub fn daemon_command(config_path: &Path, passed: &[Passed]) -> Command {
    if passed.is_empty() {
        let mut c = Command::new(DAEMON);
        c.arg("--config").arg(config_path);
        return c;
    }
    // LISTEN_PID must be the daemon's pid: let a shell set it to its own
    // and then exec the daemon in its place.
    let names: Vec<&str> = passed.iter().map(|p| p.name()).collect();
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES={} exec \"$0\" \"$@\"",
            passed.len(),
            names.join(":")
        ))
        .arg(DAEMON)
        .arg("--config")
        .arg(config_path);
    let fds: Vec<RawFd> = passed.iter().map(|p| p.fd()).collect();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            // Move every fd out of the way first, then into 3, 4, ...; dup2
            // leaves the copies without FD_CLOEXEC.
            let mut high = Vec::with_capacity(fds.len());
            for &fd in &fds {
                let h = libc::fcntl(fd, libc::F_DUPFD, 100);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(h);
            }
            for (i, &h) in high.iter().enumerate() {
                if libc::dup2(h, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(h);
            }
            Ok(())
        });
    }
    c
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_child(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// Connects to `addr` from the given local source address.
pub fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let s = connect_bound(source, addr, None);
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// A socket bound to `source` (with `receive_buffer` set before the
/// connection, when given), connected to `addr`. std has no
/// bind-before-connect; done with libc.
fn connect_bound(source: &str, addr: SocketAddr, receive_buffer: Option<libc::c_int>) -> TcpStream {
    use std::os::fd::FromRawFd;
    let src: std::net::Ipv4Addr = source.parse().unwrap();
    let SocketAddr::V4(dst) = addr else {
        panic!("IPv4 only")
    };
    // SAFETY: plain socket calls on a descriptor we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        if let Some(size) = receive_buffer {
            assert_eq!(
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                ),
                0
            );
        }
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(src).to_be();
        let len = std::mem::size_of_val(&sa) as u32;
        assert_eq!(
            libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len),
            0,
            "bind {source}"
        );
        sa.sin_addr.s_addr = u32::from(*dst.ip()).to_be();
        sa.sin_port = dst.port().to_be();
        assert_eq!(
            libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len),
            0,
            "connect: {}",
            std::io::Error::last_os_error()
        );
        TcpStream::from_raw_fd(fd)
    }
}

/// Reads until EOF (or a reset, which ends the read as EOF would).
pub fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("read: {e} (after {:?})", String::from_utf8_lossy(&out)),
        }
    }
}

/// Reads exactly one line (through LF), byte by byte.
pub fn read_line(s: &mut TcpStream) -> Vec<u8> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).expect("read line") == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    line
}

/// Reads exactly `n` bytes.
pub fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).expect("read_exact");
    buf
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Writes an executable shell script into `dir` and returns its path.
pub fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

/// `tcpmuxd --check` on `files` (name, text), the first being the main file,
/// written into a fresh folder: (exit code, stdout, stderr).
pub fn check(files: &[(&str, &str)]) -> (i32, String, String) {
    let root = root_dropin().map(|(name, text)| (format!("conf.d/{name}"), text));
    let mut all: Vec<(&str, &str)> = files.to_vec();
    if let Some((name, text)) = &root {
        all.push((name.as_str(), text));
    }
    check_exactly(&all)
}

/// As [`check`], with these files only: as root, no drop-in names the user
/// of programs.
pub fn check_exactly(files: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let out = Command::new(DAEMON)
        .arg("--config")
        .arg(dir.path().join(files[0].0))
        .arg("--check")
        .output()
        .expect("run tcpmuxd --check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A configuration of `count` services with long names (`svc0000-xxx...`,
/// `name_len` bytes each) running /bin/true, after `head` (TOML text):
/// a HELP list of `count * (name_len + 2)` bytes.
pub fn many_services(head: &str, count: usize, name_len: usize) -> (String, Vec<u8>) {
    let mut config = format!("{head}\n");
    let mut help = Vec::new();
    for i in 0..count {
        let prefix = format!("svc{i:04}-");
        let name = format!("{prefix}{}", "x".repeat(name_len - prefix.len()));
        config.push_str(&format!(
            "\n[[service]]\nname = \"{name}\"\ncommand = [\"/bin/true\"]\n"
        ));
        help.extend_from_slice(name.as_bytes());
        help.extend_from_slice(b"\r\n");
    }
    (config, help)
}

/// A connection from `source` whose receive buffer is as small as the
/// kernel allows (asked for before the connection, so that the window it
/// offers stays tiny): a client that takes a reply as slowly as it can.
pub fn connect_tiny_window(source: &str, addr: SocketAddr) -> TcpStream {
    connect_bound(source, addr, Some(1024))
}

/// TCP states as /proc/net/tcp numbers them.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_FIN_WAIT1: u8 = 4;

/// One IPv4 TCP socket of this network namespace, from /proc/net/tcp.
#[derive(Debug, Clone)]
pub struct KernelSocket {
    pub local_port: u16,
    pub remote: std::net::Ipv4Addr,
    pub state: u8,
    /// Bytes sent and not yet acknowledged, or not yet sent.
    pub tx_queue: u64,
}

/// The IPv4 TCP sockets whose local port is `port` (a server's side of
/// its connections, listener included), orphans too.
pub fn sockets_on_port(port: u16) -> Vec<KernelSocket> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let hex_port = |field: &str| field.rsplit_once(':').map(|(_, p)| p.to_string());
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(&hex_port(f.get(1)?)?, 16).ok()?;
            let (remote_ip, _) = f.get(2)?.split_once(':')?;
            // Written as the host's u32 in hex.
            let remote =
                std::net::Ipv4Addr::from(u32::from_be(u32::from_str_radix(remote_ip, 16).ok()?));
            let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
            let (tx, _) = f.get(4)?.split_once(':')?;
            let tx_queue = u64::from_str_radix(tx, 16).ok()?;
            Some(KernelSocket {
                local_port,
                remote,
                state,
                tx_queue,
            })
        })
        .filter(|s| s.local_port == port)
        .collect()
}

/// A PROXY protocol version 2 header for TCP over IPv4, as the
/// specification lays it out: what a trusted balancer sends first.
pub fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (source, destination) else {
        panic!("IPv4 only");
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&d.ip().octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}
