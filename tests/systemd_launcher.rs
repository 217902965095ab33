//! The systemd launcher's D-Bus conversation, against a mock service manager
//! on a peer-to-peer connection. The real thing is exercised by the
//! end-to-end test under a booted systemd.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tcpmuxd::config::{self, Config, Host};
use tcpmuxd::launch::systemd::{Connector, Oneshot, SystemdLauncher};
use tcpmuxd::launch::{Connection, Launcher};
use tcpmuxd::sessions::{Full, SessionLimits, SessionTable};
use zbus::object_server::SignalEmitter;
use zbus::{OwnedObjectPath, OwnedVariant};

const MANAGER_PATH: &str = "/org/freedesktop/systemd1";

const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// What the mock saw of one StartTransientUnit call.
struct Started {
    name: String,
    mode: String,
    props: HashMap<String, OwnedVariant>,
}

#[derive(Clone)]
struct Mock {
    started: Arc<Mutex<Vec<Started>>>,
    /// Every unit name started, in order (not popped by the tests).
    names: Arc<Mutex<Vec<String>>>,
    /// Units whose program the mock ran, as systemd would: the warm
    /// units' helper, with the unit's stdin and environment.
    children: Arc<Mutex<Vec<(String, std::process::Child)>>>,
    /// The start job's result the mock reports.
    result: Arc<Mutex<String>>,
    loaded: Arc<Mutex<Vec<String>>>,
    /// When set, start jobs stay running until [`finish_job`] ends them.
    hold: Arc<Mutex<bool>>,
    /// The manager's version string.
    version: String,
}

type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Mock {
    async fn subscribe(&self) {}

    #[zbus(property)]
    async fn version(&self) -> String {
        self.version.clone()
    }

    async fn start_transient_unit(
        &self,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
        name: String,
        mode: String,
        properties: Vec<(String, OwnedVariant)>,
        _aux: Vec<(String, Vec<(String, OwnedVariant)>)>,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        let job = OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/1").unwrap();
        let result = self.result.lock().unwrap().clone();
        if result == "done"
            && let Some(child) = run_helper(&properties)
        {
            self.children.lock().unwrap().push((name.clone(), child));
        }
        self.names.lock().unwrap().push(name.clone());
        self.started.lock().unwrap().push(Started {
            name: name.clone(),
            mode,
            props: properties.into_iter().collect(),
        });
        self.loaded.lock().unwrap().push(name.clone());
        if *self.hold.lock().unwrap() {
            return Ok(job);
        }
        Self::job_removed(&emitter, 1, job.clone(), name, result)
            .await
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
        Ok(job)
    }

    async fn list_units_by_patterns(
        &self,
        _states: Vec<String>,
        _patterns: Vec<String>,
    ) -> Vec<UnitRow> {
        let path = OwnedObjectPath::try_from("/org/freedesktop/systemd1/unit/x").unwrap();
        self.loaded
            .lock()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    String::new(),
                    "loaded".into(),
                    "active".into(),
                    "running".into(),
                    String::new(),
                    path.clone(),
                    0,
                    String::new(),
                    OwnedObjectPath::try_from("/").unwrap(),
                )
            })
            .collect()
    }

    async fn get_unit(&self, name: String) -> zbus::fdo::Result<OwnedObjectPath> {
        if self.loaded.lock().unwrap().contains(&name) {
            Ok(OwnedObjectPath::try_from("/org/freedesktop/systemd1/unit/x").unwrap())
        } else {
            Err(zbus::fdo::Error::Failed(format!("Unit {name} not loaded.")))
        }
    }

    async fn get_unit_file_state(&self, file: String) -> zbus::fdo::Result<String> {
        Err(zbus::fdo::Error::FileNotFound(format!(
            "No such file {file}"
        )))
    }

    #[zbus(signal)]
    async fn job_removed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn unit_removed(
        emitter: &SignalEmitter<'_>,
        id: String,
        unit: OwnedObjectPath,
    ) -> zbus::Result<()>;
}

/// Runs a warm unit's ExecStart (the helper) as systemd would: stdin and
/// stdout the unit's StandardInputFileDescriptor, only the unit's
/// Environment, `$$` read as `$`.
fn run_helper(props: &[(String, OwnedVariant)]) -> Option<std::process::Child> {
    let props: HashMap<&str, &OwnedVariant> = props.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let exec = props.get("ExecStart")?;
    let exec = <Vec<(String, Vec<String>, bool)>>::try_from((*exec).try_clone().unwrap()).unwrap();
    let (path, argv, _) = exec.first()?;
    if !path.ends_with("tcpmux-warm") || props.contains_key("StandardOutputFileDescriptor") {
        return None;
    }
    let stdin = zbus::Fd::try_from((*props["StandardInputFileDescriptor"]).try_clone().unwrap())
        .unwrap()
        .as_fd()
        .try_clone_to_owned()
        .unwrap();
    let stdout = stdin.try_clone().unwrap();
    let env = <Vec<String>>::try_from((*props["Environment"]).try_clone().unwrap()).unwrap();
    let mut cmd = std::process::Command::new(path);
    cmd.args(argv[1..].iter().map(|a| a.replace("$$", "$")))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(std::process::Stdio::from(stdin))
        .stdout(std::process::Stdio::from(stdout));
    // As systemd does, the unit's process gets no descriptor of its
    // parent's but its standard ones (marked close-on-exec, not closed:
    // the spawn's own error pipe is among them).
    // SAFETY: close_range is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::close_range(
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            );
            Ok(())
        });
    }
    for entry in env {
        let (k, v) = entry.split_once('=').unwrap();
        cmd.env(k, v);
    }
    Some(cmd.spawn().unwrap())
}

struct Harness {
    mock: Mock,
    server: zbus::Connection,
    launcher: SystemdLauncher,
    sessions: Arc<SessionTable>,
    config: Config,
}

fn config(text: &str) -> Config {
    let path = std::path::PathBuf::from("test.toml");
    config::build(vec![(
        path.clone(),
        config::parse_file(&path, text).unwrap(),
    )])
    .unwrap()
}

async fn harness(text: &str, preloaded: &[&str]) -> Harness {
    harness_of_version(text, preloaded, "252.36-1~deb12u1", None).await
}

/// The helper under test.
const HELPER: &str = env!("CARGO_BIN_EXE_tcpmux-warm");

/// With warm units: the helper built with these tests.
async fn warm_harness(text: &str) -> Harness {
    harness_of_version(
        text,
        &[],
        "252.36-1~deb12u1",
        Some(std::path::PathBuf::from(HELPER)),
    )
    .await
}

async fn harness_of_version(
    text: &str,
    preloaded: &[&str],
    version: &str,
    helper: Option<std::path::PathBuf>,
) -> Harness {
    let mock = Mock {
        version: version.to_string(),
        started: Arc::default(),
        names: Arc::default(),
        children: Arc::default(),
        result: Arc::new(Mutex::new("done".into())),
        hold: Arc::default(),
        loaded: Arc::new(Mutex::new(
            preloaded.iter().map(|s| s.to_string()).collect(),
        )),
    };
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    let guid = zbus::Guid::generate();
    let server = zbus::connection::Builder::unix_stream(a)
        .server(guid)
        .p2p()
        .serve_at(MANAGER_PATH, mock.clone())
        .build();
    let client = zbus::connection::Builder::unix_stream(b).p2p().build();
    let (server, client) = tokio::join!(server, client);
    let (server, client) = (server.unwrap(), client.unwrap());
    let slot = Arc::new(Mutex::new(Some(client)));
    let connector: Connector = Arc::new(move || {
        let conn = slot.lock().unwrap().take();
        Box::pin(
            async move { conn.ok_or_else(|| zbus::Error::Failure("only one connection".into())) },
        )
    });
    let sessions = Arc::new(SessionTable::default());
    let config = config(text);
    let launcher = SystemdLauncher::start(connector, Arc::clone(&sessions), &config, helper).await;
    assert!(launcher.is_connected());
    Harness {
        mock,
        server,
        launcher,
        sessions,
        config,
    }
}

/// Ends the start job of `unit`, held by [`Mock::hold`], with "done".
async fn finish_job(h: &Harness, unit: &str) {
    let iface = h
        .server
        .object_server()
        .interface::<_, Mock>(MANAGER_PATH)
        .await
        .unwrap();
    let job = OwnedObjectPath::try_from("/org/freedesktop/systemd1/job/1").unwrap();
    Mock::job_removed(iface.signal_emitter(), 1, job, unit.into(), "done".into())
        .await
        .unwrap();
}

/// The launchers' descriptor guard, from an unbounded budget.
fn no_fds() -> tcpmuxd::admission::FdGuard {
    tcpmuxd::admission::FdBudget::new(usize::MAX)
        .try_take(0)
        .unwrap()
}

/// A connected loopback pair: (the daemon's side, the client's side).
async fn tcp_pair() -> (Connection, std::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = std::net::TcpStream::connect(addr).unwrap();
    let (stream, peer) = listener.accept().await.unwrap();
    let local = stream.local_addr().unwrap();
    (
        Connection {
            stream: tcpmuxd::launch::ClientSocket::Registered(stream),
            peer,
            local,
            reply_timeout: std::time::Duration::from_secs(10),
        },
        client,
    )
}

/// A copy of the descriptor passed as property `key`.
fn fd_of(props: &HashMap<String, OwnedVariant>, key: &str) -> OwnedFd {
    zbus::Fd::try_from(props[key].try_clone().unwrap())
        .unwrap()
        .as_fd()
        .try_clone_to_owned()
        .unwrap()
}

fn string(props: &HashMap<String, OwnedVariant>, key: &str) -> String {
    String::try_from(props[key].try_clone().unwrap()).unwrap()
}

const ECHO: &str = "[[service]]\nname = \"my-echo\"\ncommand = [\"/bin/cat\", \"-u\", \"$HOME\"]\nlauncher = \"systemd\"\n";

#[tokio::test]
async fn starts_a_transient_unit_with_the_connection_as_stdio() {
    let h = harness(ECHO, &[]).await;
    h.launcher
        .precheck(h.config.service("my-echo").unwrap())
        .unwrap();
    let (launched, mut client) = launch_one(&h, "my-echo").await;
    launched.map_err(|f| f.error).unwrap();
    let peer = client.local_addr().unwrap();

    let started = h
        .mock
        .started
        .lock()
        .unwrap()
        .pop()
        .expect("one unit started");
    assert!(
        started.name.starts_with("tcpmux-my\\x2decho@") && started.name.ends_with(".service"),
        "{}",
        started.name
    );
    assert_eq!(started.mode, "fail");
    let p = &started.props;
    assert_eq!(string(p, "Type"), "exec");
    assert_eq!(string(p, "CollectMode"), "inactive-or-failed");
    assert_eq!(string(p, "StandardError"), "journal");
    assert_eq!(string(p, "SyslogIdentifier"), "tcpmux-my-echo");
    assert!(string(p, "Description").contains(&peer.to_string()));
    assert_eq!(p["ExecStart"].value_signature().to_string(), "a(sasb)");
    assert_eq!(p["Environment"].value_signature().to_string(), "as");
    let env = format!("{:?}", p["Environment"]);
    for needle in [
        "TCPMUX_SERVICE=my-echo",
        "REMOTE_ADDR=127.0.0.1",
        &format!("REMOTE_PORT={}", peer.port()),
    ] {
        assert!(env.contains(needle), "{needle} not in {env}");
    }
    let exec = format!("{:?}", p["ExecStart"]);
    assert!(exec.contains("/bin/cat") && exec.contains("-u"), "{exec}");
    assert!(
        exec.contains("$$HOME"),
        "a $ must reach the program as written: {exec}"
    );
    // systemd 252 has no ExtraFileDescriptors.
    assert!(!p.contains_key("ExtraFileDescriptors"));

    // The descriptors are the client's connection, in blocking mode.
    let fd: OwnedFd = fd_of(p, "StandardOutputFileDescriptor");
    let flags = rustix::fs::fcntl_getfl(&fd).unwrap();
    assert!(!flags.contains(rustix::fs::OFlags::NONBLOCK));
    let mut unit_side = std::net::TcpStream::from(fd);
    unit_side.write_all(b"from the unit\n").unwrap();
    let mut buf = [0u8; 17];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(
        &buf, b"+\r\nfrom the unit\n",
        "the launcher's + comes first"
    );

    // The slot is held until systemd unloads the unit. A daemon-reload
    // sends UnitRemoved for units it loads again at once: still running.
    assert_eq!(h.sessions.running("my-echo"), 1);
    let emitter = SignalEmitter::new(&h.server, MANAGER_PATH).unwrap();
    let path = OwnedObjectPath::try_from("/org/freedesktop/systemd1/unit/x").unwrap();
    Mock::unit_removed(&emitter, started.name.clone(), path.clone())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.sessions.running("my-echo"), 1, "a reload is not the end");
    h.mock.loaded.lock().unwrap().retain(|n| n != &started.name);
    Mock::unit_removed(&emitter, started.name.clone(), path)
        .await
        .unwrap();
    for _ in 0..200 {
        if h.sessions.running("my-echo") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.sessions.running("my-echo"), 0);
}

#[tokio::test]
async fn a_service_without_command_sends_no_exec_start() {
    let h = harness(
        "[[service]]\nname = \"dropin\"\nlauncher = \"systemd\"\n",
        &[],
    )
    .await;
    h.launcher
        .precheck(h.config.service("dropin").unwrap())
        .unwrap();
    let (launched, _client) = launch_one(&h, "dropin").await;
    launched.map_err(|f| f.error).unwrap();
    let started = h.mock.started.lock().unwrap().pop().unwrap();
    assert!(!started.props.contains_key("ExecStart"));
}

/// One turn to start units, and start jobs that last until
/// [`finish_job`] ends them.
async fn one_turn_harness() -> Harness {
    let h = harness(&format!("[tcpmux]\nmax_starting_units = 1\n{ECHO}"), &[]).await;
    *h.mock.hold.lock().unwrap() = true;
    h
}

/// Launches a session of my-echo on `conn` in a task of its own.
fn launch_in_background(
    h: &Harness,
    conn: Connection,
) -> tokio::task::JoinHandle<Result<(), tcpmuxd::launch::Failed>> {
    let launcher = h.launcher.clone();
    let service = Arc::clone(h.config.service("my-echo").unwrap());
    let slot = h
        .sessions
        .try_acquire(
            "my-echo",
            conn.peer.ip(),
            &SessionLimits::without_shares(10, 10),
        )
        .unwrap();
    tokio::spawn(async move { launcher.launch(service, conn, slot, no_fds()).await })
}

/// Launches one session of service `name` on a fresh loopback connection:
/// the launch's result, and the client's end.
async fn launch_one(
    h: &Harness,
    name: &str,
) -> (Result<(), tcpmuxd::launch::Failed>, std::net::TcpStream) {
    let service = Arc::clone(h.config.service(name).unwrap());
    let (conn, client) = tcp_pair().await;
    let slot = h
        .sessions
        .try_acquire(name, conn.peer.ip(), &SessionLimits::without_shares(1, 10))
        .unwrap();
    (
        h.launcher.launch(service, conn, slot, no_fds()).await,
        client,
    )
}

// Multi-threaded: the test's own reads block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_start_in_turn_and_a_waiting_client_hears_no_plus_before_its_turn() {
    let h = one_turn_harness().await;
    let launch = |conn| launch_in_background(&h, conn);
    let (first, mut first_client) = tcp_pair().await;
    let first = launch(first);
    until("the first unit's start", || {
        h.mock.names.lock().unwrap().len() == 1
    })
    .await;
    let mut plus = [0u8; 3];
    first_client.read_exact(&mut plus).unwrap();
    assert_eq!(&plus, b"+\r\n");

    let (second, mut second_client) = tcp_pair().await;
    let second = launch(second);
    // While the first start runs, the second waits: no unit, no `+`.
    second_client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let waited = second_client.read(&mut plus);
    assert!(
        matches!(&waited, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the second client heard {waited:?} before its turn"
    );
    assert_eq!(h.mock.names.lock().unwrap().len(), 1);
    assert_eq!(h.launcher.starts(), (1, 1), "one starting, one waiting");

    let unit = h.mock.names.lock().unwrap()[0].clone();
    finish_job(&h, &unit).await;
    first.await.unwrap().unwrap();
    until("the second unit's start", || {
        h.mock.names.lock().unwrap().len() == 2
    })
    .await;
    second_client.set_read_timeout(None).unwrap();
    second_client.read_exact(&mut plus).unwrap();
    assert_eq!(&plus, b"+\r\n");
    let unit = h.mock.names.lock().unwrap()[1].clone();
    finish_job(&h, &unit).await;
    second.await.unwrap().unwrap();
    assert_eq!(h.launcher.starts(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_while_waiting_for_its_turn_starts_no_unit() {
    let h = one_turn_harness().await;
    let launch = |conn| launch_in_background(&h, conn);
    let (first, _first_client) = tcp_pair().await;
    let first = launch(first);
    until("the first unit's start", || {
        h.mock.names.lock().unwrap().len() == 1
    })
    .await;
    let (second, second_client) = tcp_pair().await;
    let second = launch(second);
    drop(second_client);
    let unit = h.mock.names.lock().unwrap()[0].clone();
    finish_job(&h, &unit).await;
    first.await.unwrap().unwrap();
    let gone = second.await.unwrap().unwrap_err();
    assert!(
        matches!(gone.error, tcpmuxd::launch::LaunchError::ClientGone(_)),
        "{}",
        gone.error
    );
    assert_eq!(h.mock.names.lock().unwrap().len(), 1, "no unit for it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_for_its_turn_holds_its_sources_place() {
    let h = one_turn_harness().await;
    let share = SessionLimits {
        max_instances: 10,
        max_instances_per_source: 2,
        max_sessions: 10,
        max_sessions_per_source: 10,
    };
    let launch = |conn: Connection| {
        let slot = h
            .sessions
            .try_acquire("my-echo", conn.peer.ip(), &share)
            .unwrap();
        let launcher = h.launcher.clone();
        let service = Arc::clone(h.config.service("my-echo").unwrap());
        tokio::spawn(async move { launcher.launch(service, conn, slot, no_fds()).await })
    };
    let (first, _first_client) = tcp_pair().await;
    let first = launch(first);
    until("the first unit's start", || {
        h.mock.names.lock().unwrap().len() == 1
    })
    .await;
    let (second, second_client) = tcp_pair().await;
    let second = launch(second);
    until("the second client in the queue", || {
        h.launcher.starts() == (1, 1)
    })
    .await;
    // One start under way and one place in the queue: the source's share
    // is taken, another source's is not.
    assert_eq!(h.sessions.of_source(LOOPBACK), 2);
    assert_eq!(
        h.sessions
            .try_acquire("my-echo", LOOPBACK, &share)
            .unwrap_err(),
        Full::SourceService
    );
    let other: std::net::IpAddr = "192.0.2.9".parse().unwrap();
    drop(h.sessions.try_acquire("my-echo", other, &share).unwrap());
    // The waiting client hangs up: its place goes when its turn comes.
    drop(second_client);
    let unit = h.mock.names.lock().unwrap()[0].clone();
    finish_job(&h, &unit).await;
    first.await.unwrap().unwrap();
    assert!(second.await.unwrap().is_err());
    assert_eq!(h.sessions.of_source(LOOPBACK), 1, "the running session's");
    assert!(h.sessions.try_acquire("my-echo", LOOPBACK, &share).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_takes_long_gives_its_turn_to_the_next() {
    let h = one_turn_harness().await;
    let launch = |conn| launch_in_background(&h, conn);
    let (first, _first_client) = tcp_pair().await;
    let first = launch(first);
    let (second, _second_client) = tcp_pair().await;
    let second = launch(second);
    // The first job never ends by itself; the second unit starts anyway,
    // once the first start has had its turn long enough.
    until("the second unit's start", || {
        h.mock.names.lock().unwrap().len() == 2
    })
    .await;
    let names = h.mock.names.lock().unwrap().clone();
    for unit in &names {
        finish_job(&h, unit).await;
    }
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_failed_start_job_is_an_error_that_returns_the_connection() {
    let dedicated = format!("{ECHO}plus = false\n");
    let h = harness(&dedicated, &[]).await;
    *h.mock.result.lock().unwrap() = "failed".into();
    let (launched, _client) = launch_one(&h, "my-echo").await;
    let failed = launched.unwrap_err();
    assert!(
        failed.error.to_string().contains("\"failed\""),
        "{}",
        failed.error
    );
    assert!(
        failed.conn.is_some(),
        "the connection comes back to be answered"
    );
}

#[tokio::test]
async fn a_plus_client_hears_plus_before_the_start_and_nothing_after_a_failure() {
    let h = harness(ECHO, &[]).await;
    *h.mock.result.lock().unwrap() = "failed".into();
    let (launched, mut client) = launch_one(&h, "my-echo").await;
    let failed = launched.unwrap_err();
    assert!(failed.conn.is_none(), "{}", failed.error);
    let mut plus = [0u8; 3];
    std::io::Read::read_exact(&mut client, &mut plus).unwrap();
    assert_eq!(&plus, b"+\r\n");
}

#[tokio::test]
async fn units_found_running_are_counted_against_their_service() {
    let h = harness(
        ECHO,
        &[
            "tcpmux-my\\x2decho@1-0.service",
            "tcpmux-my\\x2decho@1-1.service",
            "tcpmux-other@1-2.service",
        ],
    )
    .await;
    assert_eq!(h.sessions.running("my-echo"), 2);
    assert_eq!(h.launcher.tracked_units(), 2);
    assert_eq!(h.sessions.total(), 2);
}

#[tokio::test]
async fn msp_commands_run_as_oneshot_units_with_the_message_on_stdin() {
    let h = harness(ECHO, &[]).await;
    let command = vec!["/usr/local/bin/on-message".to_string(), "$X".to_string()];
    let env = vec![("MSP_RECIPIENT", "alice".to_string())];
    h.launcher
        .run_oneshot(Oneshot {
            name: "msp",
            description: "MSP delivery".into(),
            command: &command,
            environment: env.clone(),
            input: b"hello",
            limit: Duration::from_secs(3),
            user: None,
            umask: 0o027,
            limits: &config::ResourceLimits {
                processes: Some(32),
                ..Default::default()
            },
        })
        .await
        .unwrap();
    let started = h.mock.started.lock().unwrap().pop().unwrap();
    assert!(started.name.starts_with("tcpmux-msp@"), "{}", started.name);
    let p = &started.props;
    assert_eq!(string(p, "Type"), "oneshot");
    assert_eq!(
        u32::try_from(p["UMask"].try_clone().unwrap()).unwrap(),
        0o027
    );
    assert_eq!(
        u64::try_from(p["LimitNPROC"].try_clone().unwrap()).unwrap(),
        32
    );
    assert_eq!(
        u64::try_from(p["TimeoutStartUSec"].try_clone().unwrap()).unwrap(),
        3_000_000
    );
    assert!(format!("{:?}", p["Environment"]).contains("MSP_RECIPIENT=alice"));
    assert!(format!("{:?}", p["ExecStart"]).contains("$$X"));
    let stdin: OwnedFd = fd_of(p, "StandardInputFileDescriptor");
    let mut text = String::new();
    std::fs::File::from(stdin)
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "hello");

    // A failed job: the first line of the program's stderr is the reason.
    *h.mock.result.lock().unwrap() = "failed".into();
    let mock = h.mock.clone();
    let writer = tokio::spawn(async move {
        // Play the program: write to the stderr the unit was given.
        loop {
            if let Some(s) = mock.started.lock().unwrap().pop() {
                let fd: OwnedFd = fd_of(&s.props, "StandardErrorFileDescriptor");
                std::fs::File::from(fd)
                    .write_all(b"alice is away\nmore\n")
                    .unwrap();
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let err = h
        .launcher
        .run_oneshot(Oneshot {
            name: "msp",
            description: "MSP delivery".into(),
            command: &command,
            environment: env,
            input: b"hi",
            limit: Duration::from_secs(3),
            user: None,
            umask: 0o077,
            limits: &config::ResourceLimits::default(),
        })
        .await
        .unwrap_err();
    writer.await.unwrap();
    assert_eq!(err, "alice is away");
}

#[tokio::test]
async fn systemd_257_also_gets_the_connection_in_extra_file_descriptors() {
    let h = harness_of_version(ECHO, &[], "257.1", None).await;
    let (launched, _client) = launch_one(&h, "my-echo").await;
    launched.map_err(|f| f.error).unwrap();
    let started = h.mock.started.lock().unwrap().pop().unwrap();
    let extra = &started.props["ExtraFileDescriptors"];
    assert_eq!(extra.value_signature().to_string(), "a(hs)");
    assert!(format!("{extra:?}").contains("\"connection\""), "{extra:?}");
}

// ---- warm units ---------------------------------------------------------------

/// Waits up to 10 s for `cond`.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn warm_service(name: &str, command: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\ncommand = {command}\nlauncher = \"systemd\"\nwarm = 1\n{extra}"
    )
}

/// Reads from `client` until `needle` has come, or 5 s passed.
fn read_until(client: &mut std::net::TcpStream, needle: &str) -> String {
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&text).contains(needle) {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// A file the kernel will not run, but with an executable bit and, when
/// `elf`, ELF's magic number: it passes the helper's readiness check and
/// fails at exec.
fn not_a_program(dir: &std::path::Path, elf: bool) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(if elf { "broken-elf" } else { "text" });
    let body: &[u8] = if elf {
        b"\x7fELF but nothing more"
    } else {
        b"plain text"
    };
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn a_warm_unit_runs_the_helper_with_the_sessions_properties_and_is_no_session() {
    let text = warm_service("my-echo", "[\"/bin/cat\", \"-u\", \"$HOME\"]", "");
    let h = warm_harness(&text).await;
    until("a ready warm unit", || {
        h.launcher.warm_ready("my-echo") == 1
    })
    .await;
    let started = h.mock.started.lock().unwrap().pop().expect("a warm unit");
    assert!(
        started.name.starts_with("tcpmux-my\\x2decho@"),
        "{}",
        started.name
    );
    let p = &started.props;
    assert_eq!(string(p, "Type"), "exec");
    assert_eq!(string(p, "CollectMode"), "inactive-or-failed");
    assert_eq!(string(p, "StandardError"), "journal");
    assert!(p.contains_key("StandardInputFileDescriptor"));
    assert!(!p.contains_key("StandardOutputFileDescriptor"));
    let exec = format!("{:?}", p["ExecStart"]);
    assert!(
        exec.contains(HELPER) && exec.contains("/bin/cat") && exec.contains("$$HOME"),
        "{exec}"
    );
    let env = format!("{:?}", p["Environment"]);
    assert!(env.contains("TCPMUX_SERVICE=my-echo"), "{env}");
    assert!(!env.contains("REMOTE_ADDR"), "{env}");
    assert_eq!(h.sessions.total(), 0, "a warm unit is not a session");
    assert_eq!(h.launcher.tracked_units(), 0);
    assert_eq!(h.mock.names.lock().unwrap().len(), 1, "warm = 1: one unit");
}

#[tokio::test]
async fn a_connection_goes_to_a_ready_warm_unit_which_is_replaced() {
    let command = "[\"/bin/sh\", \"-c\", \"echo \\\"$REMOTE_ADDR $TCPMUX_SERVICE [$LISTEN_FDS]\\\"; exec cat\"]";
    let h = warm_harness(&warm_service("w", command, "")).await;
    until("a ready warm unit", || h.launcher.warm_ready("w") == 1).await;
    let warm_unit = h.mock.names.lock().unwrap()[0].clone();
    h.launcher.precheck(h.config.service("w").unwrap()).unwrap();
    let (launched, mut client) = launch_one(&h, "w").await;
    launched.map_err(|f| f.error).unwrap();
    let said = read_until(&mut client, "]\n");
    assert_eq!(said, "+\r\n127.0.0.1 w []\n", "+ first, then the program");
    client.write_all(b"echoed\n").unwrap();
    assert_eq!(read_until(&mut client, "echoed\n"), "echoed\n");
    // No unit was started for the connection: the warm one took it, and is
    // a session now, counted until systemd unloads it.
    assert_eq!(h.launcher.tracked_units(), 1);
    assert_eq!(h.sessions.running("w"), 1);
    let names = h.mock.names.lock().unwrap().clone();
    assert_eq!(names[0], warm_unit);
    until("a replacement", || h.launcher.warm_ready("w") == 1).await;
    assert_eq!(h.mock.names.lock().unwrap().len(), 2, "one replacement");
    drop(client);
}

#[tokio::test]
async fn an_exec_failure_gives_a_dedicated_services_client_its_connection_back() {
    let dir = tempfile::tempdir().unwrap();
    let program = not_a_program(dir.path(), true);
    let text = warm_service("d", &format!("[\"{program}\"]"), "plus = false\n");
    let h = warm_harness(&text).await;
    until("a ready warm unit", || h.launcher.warm_ready("d") == 1).await;
    let (launched, _client) = launch_one(&h, "d").await;
    let failed = launched.unwrap_err();
    let error = failed.error.to_string();
    assert!(
        error.contains(&format!("exec {program}")) && error.contains("format"),
        "{error}"
    );
    assert!(failed.conn.is_some(), "the client can still be told -");
}

#[tokio::test]
async fn a_plus_client_hears_nothing_after_plus_when_exec_fails() {
    let dir = tempfile::tempdir().unwrap();
    let program = not_a_program(dir.path(), true);
    let h = warm_harness(&warm_service("p", &format!("[\"{program}\"]"), "")).await;
    until("a ready warm unit", || h.launcher.warm_ready("p") == 1).await;
    let (launched, mut client) = launch_one(&h, "p").await;
    let failed = launched.unwrap_err();
    assert!(failed.conn.is_none(), "{}", failed.error);
    assert_eq!(read_until(&mut client, "never"), "+\r\n");
}

/// A program the helper finds it cannot run is said once: no unit of the
/// service is started again, and clients are refused, until a reload.
#[tokio::test]
async fn a_program_the_helper_cannot_run_is_tried_once_until_the_next_reload() {
    let dir = tempfile::tempdir().unwrap();
    let program = not_a_program(dir.path(), false);
    let h = warm_harness(&warm_service("f", &format!("[\"{program}\"]"), "")).await;
    let service = Arc::clone(h.config.service("f").unwrap());
    until("a failed warm start", || {
        h.launcher
            .precheck(&service)
            .is_err_and(|e| e.to_string().contains("not an executable format"))
    })
    .await;
    // No refill loop: one attempt, however long.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(h.mock.names.lock().unwrap().len(), 1, "one attempt");
    assert_eq!(h.launcher.warm_ready("f"), 0);
    assert!(h.launcher.precheck(&service).is_err());

    // Fixed and reloaded: units start again, and clients are served.
    std::fs::write(&program, "#!/bin/sh\nexec cat\n").unwrap();
    let host = tcpmuxd::config::Host {
        root: false,
        under_systemd: false,
    };
    h.launcher.set_services(&h.config, &host);
    until("a warm unit once the program is fixed and reloaded", || {
        h.launcher.warm_ready("f") == 1
    })
    .await;
    h.launcher.precheck(&service).unwrap();
}

#[tokio::test]
async fn a_failed_start_job_of_a_warm_unit_is_a_failure() {
    let text = warm_service("j", "[\"/bin/cat\"]", "");
    let mock_result = "failed";
    let h = warm_harness(&text).await;
    *h.mock.result.lock().unwrap() = mock_result.into();
    let service = Arc::clone(h.config.service("j").unwrap());
    until("the failure to show", || {
        h.launcher
            .precheck(&service)
            .is_err_and(|e| e.to_string().contains("\"failed\""))
    })
    .await;
}

#[tokio::test]
async fn a_reload_replaces_the_warm_units_of_changed_services_and_stops_removed_ones() {
    let text = format!(
        "{}{}",
        warm_service("a", "[\"/bin/cat\"]", ""),
        warm_service("b", "[\"/bin/cat\"]", "")
    );
    let h = warm_harness(&text).await;
    until("both ready", || h.launcher.warm_ready_total() == 2).await;
    let unit_of = |service: &str| {
        h.mock
            .names
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n.starts_with(&format!("tcpmux-{service}@")))
            .cloned()
            .collect::<Vec<_>>()
    };
    let (a0, b0) = (unit_of("a"), unit_of("b"));
    // a changes, b goes away.
    let changed = config(&warm_service("a", "[\"/bin/cat\", \"-u\"]", ""));
    h.launcher.set_services(
        &changed,
        &Host {
            root: false,
            under_systemd: false,
        },
    );
    until("the retired helpers to exit", || {
        h.mock
            .children
            .lock()
            .unwrap()
            .iter_mut()
            .filter(|(n, _)| a0.contains(n) || b0.contains(n))
            .all(|(_, c)| c.try_wait().unwrap().is_some())
    })
    .await;
    until("a's new unit", || h.launcher.warm_ready("a") == 1).await;
    assert_eq!(unit_of("a").len(), 2, "one new unit for a");
    assert_eq!(unit_of("b").len(), 1, "none for b");
    assert_eq!(h.launcher.warm_ready_total(), 1);
    // A connection judged by the old configuration starts cold.
    let old = Arc::clone(h.config.service("a").unwrap());
    let slot = h
        .sessions
        .try_acquire("a", LOOPBACK, &SessionLimits::without_shares(1, 10))
        .unwrap();
    let (conn, _client) = tcp_pair().await;
    h.launcher
        .launch(old, conn, slot, no_fds())
        .await
        .map_err(|f| f.error)
        .unwrap();
    assert_eq!(h.launcher.warm_ready("a"), 1, "the new unit is kept");
}

#[tokio::test]
async fn max_warm_bounds_all_services_together_and_zero_turns_a_service_off() {
    let text = format!(
        "[tcpmux]\nmax_warm = 3\n{}{}{}",
        warm_service("a", "[\"/bin/cat\"]", "warm = 2\n").replace("warm = 1\nwarm = 2", "warm = 2"),
        warm_service("b", "[\"/bin/cat\"]", "").replace("warm = 1", "warm = 2"),
        warm_service("c", "[\"/bin/cat\"]", "").replace("warm = 1", "warm = 0"),
    );
    let h = warm_harness(&text).await;
    until("three ready", || h.launcher.warm_ready_total() == 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.launcher.warm_ready_total(), 3);
    assert_eq!(h.launcher.warm_ready("c"), 0);
    assert_eq!(h.mock.names.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_service_without_command_stays_cold() {
    let h =
        warm_harness("[[service]]\nname = \"dropin\"\nlauncher = \"systemd\"\nwarm = 2\n").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.mock.names.lock().unwrap().is_empty());
}

#[tokio::test]
async fn helpers_exit_when_the_launcher_goes_away() {
    let h = warm_harness(&warm_service("e", "[\"/bin/cat\"]", "")).await;
    until("a ready unit", || h.launcher.warm_ready("e") == 1).await;
    let children = Arc::clone(&h.mock.children);
    drop(h);
    until("the helper to exit on EOF", || {
        children
            .lock()
            .unwrap()
            .iter_mut()
            .all(|(_, c)| c.try_wait().unwrap().is_some_and(|s| s.success()))
    })
    .await;
}

/// A program that tells its client what it got: the `LISTEN_*` variables
/// and its own pid, its open descriptors, which socket its standard input
/// and its fd 3 are, and a line written through fd 3. (No command
/// substitution: the shell would hold a pipe of its own meanwhile.)
const SHOW_FDS: &str = r#"["/bin/sh", "-c", 'echo "vars $LISTEN_FDS:$LISTEN_FDNAMES:$LISTEN_PID:$$"; ls /proc/$$/fd; echo fd0; readlink /proc/$$/fd/0; echo fd3; readlink /proc/$$/fd/3; echo through-fd-3 >&3; echo end']"#;

/// What [`SHOW_FDS`] said on a warm unit of a manager of `version`:
/// `[LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID, its pid]`, its open
/// descriptors, the sockets of its fds 0 and 3, and the lines after those.
async fn warm_program_sees(version: &str) -> ([String; 4], String, (String, String), Vec<String>) {
    let h = harness_of_version(
        &warm_service("fds", SHOW_FDS, ""),
        &[],
        version,
        Some(std::path::PathBuf::from(HELPER)),
    )
    .await;
    until("a ready warm unit", || h.launcher.warm_ready("fds") == 1).await;
    let (launched, mut client) = launch_one(&h, "fds").await;
    launched.map_err(|f| f.error).unwrap();
    let said = read_until(&mut client, "end\n");
    let started = h.mock.started.lock().unwrap();
    assert!(
        started
            .iter()
            .all(|u| !u.props.contains_key("StandardOutputFileDescriptor")),
        "no unit started cold: a warm unit took the connection"
    );
    drop(started);
    let lines: Vec<&str> = said.lines().collect();
    let at = |what: &str| {
        lines
            .iter()
            .position(|l| *l == what)
            .unwrap_or_else(|| panic!("no {what:?} in {said:?}"))
    };
    let (fd0, fd3, end) = (at("fd0"), at("fd3"), at("end"));
    assert_eq!(lines[0], "+", "{said:?}");
    let vars: Vec<String> = lines[1]
        .strip_prefix("vars ")
        .unwrap_or_else(|| panic!("{said:?}"))
        .split(':')
        .map(String::from)
        .collect();
    (
        vars.try_into().unwrap_or_else(|_| panic!("{said:?}")),
        lines[2..fd0].join(" "),
        (
            lines[fd0 + 1..fd3].join(" "),
            lines[fd3 + 1..end]
                .iter()
                .filter(|l| l.starts_with("socket:"))
                .copied()
                .collect(),
        ),
        lines[fd3 + 1..=end]
            .iter()
            .filter(|l| !l.starts_with("socket:"))
            .map(|l| l.to_string())
            .collect(),
    )
}

#[tokio::test]
async fn on_systemd_257_a_warm_units_program_also_gets_the_connection_as_fd_3_named_connection() {
    // What ExtraFileDescriptors= gives a cold unit's program there.
    let (vars, open, (stdin, fd3), rest) = warm_program_sees("257.1").await;
    assert_eq!(vars[..2], ["1", "connection"]);
    assert_eq!(vars[2], vars[3], "LISTEN_PID is the program's own pid");
    assert_eq!(open, "0 1 2 3");
    assert!(stdin.starts_with("socket:["), "{stdin}");
    assert_eq!(fd3, stdin, "fd 3 is the connection itself");
    assert_eq!(rest, ["through-fd-3", "end"]);
}

#[tokio::test]
async fn before_systemd_257_a_warm_units_program_gets_stdio_alone_as_a_cold_units_does() {
    let (vars, open, (stdin, fd3), rest) = warm_program_sees("252.36-1~deb12u1").await;
    assert_eq!(vars[..3], ["", "", ""], "no LISTEN_* variables");
    assert_eq!(open, "0 1 2");
    assert!(stdin.starts_with("socket:["), "{stdin}");
    assert_eq!(fd3, "");
    assert_eq!(rest, ["end"]);
}

#[tokio::test]
async fn the_helper_refuses_a_hand_over_whose_descriptor_name_is_not_one() {
    use tcpmuxd::launch::handover;
    let (ours, theirs) = tcpmuxd::launch::warm::socket_pair().unwrap();
    let stdout = theirs.try_clone().unwrap();
    let mut helper = std::process::Command::new(HELPER)
        .args(["/bin/sh", "-c", "echo ran"])
        .stdin(std::process::Stdio::from(theirs))
        .stdout(std::process::Stdio::from(stdout))
        .spawn()
        .unwrap();
    let (status, ready) = warm_message(ours).await;
    assert_eq!(status, Some(handover::Status::Ready));
    let (conn, mut client) = tcp_pair().await;
    let (socket, _, _) = conn.into_blocking().unwrap();
    let (_status_ours, status_theirs) = tcpmuxd::launch::warm::socket_pair().unwrap();
    let vars = [
        ("REMOTE_ADDR", "127.0.0.1".to_string()),
        ("REMOTE_PORT", "1".to_string()),
        ("LOCAL_ADDR", "127.0.0.1".to_string()),
        ("LOCAL_PORT", "1".to_string()),
    ];
    let message = handover::encode_handover(&vars, Some("two:names"));
    handover::send(
        ready.as_fd(),
        &message,
        &[socket.as_fd(), status_theirs.as_fd()],
        false,
    )
    .unwrap();
    drop((socket, status_theirs));
    let exit = tokio::task::spawn_blocking(move || helper.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(76), "EX_PROTOCOL");
    assert_eq!(read_until(&mut client, "ran"), "", "the program never ran");
}

/// One message of the helper on tcpmuxd's end of its standard input.
async fn warm_message(ours: OwnedFd) -> (Option<tcpmuxd::launch::handover::Status>, OwnedFd) {
    tcpmuxd::launch::warm::receive(ours, Duration::from_secs(10))
        .await
        .unwrap()
}
