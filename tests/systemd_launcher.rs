//! The systemd launcher's D-Bus conversation, against a mock service manager
//! on a peer-to-peer connection. The real thing is exercised by the
//! end-to-end test under a booted systemd.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tcpmuxd::config::{self, Config};
use tcpmuxd::launch::systemd::{Connector, SystemdLauncher};
use tcpmuxd::launch::{Connection, Launcher};
use tcpmuxd::sessions::SessionTable;
use zbus::object_server::SignalEmitter;
use zbus::{OwnedObjectPath, OwnedVariant};

const MANAGER_PATH: &str = "/org/freedesktop/systemd1";

/// What the mock saw of one StartTransientUnit call.
struct Started {
    name: String,
    mode: String,
    props: HashMap<String, OwnedVariant>,
}

#[derive(Clone)]
struct Mock {
    started: Arc<Mutex<Vec<Started>>>,
    /// The start job's result the mock reports.
    result: Arc<Mutex<String>>,
    loaded: Arc<Mutex<Vec<String>>>,
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
        self.started.lock().unwrap().push(Started {
            name: name.clone(),
            mode,
            props: properties.into_iter().collect(),
        });
        self.loaded.lock().unwrap().push(name.clone());
        let result = self.result.lock().unwrap().clone();
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
    harness_of_version(text, preloaded, "252.36-1~deb12u1").await
}

async fn harness_of_version(text: &str, preloaded: &[&str], version: &str) -> Harness {
    let mock = Mock {
        version: version.to_string(),
        started: Arc::default(),
        result: Arc::new(Mutex::new("done".into())),
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
    let launcher = SystemdLauncher::start(connector, Arc::clone(&sessions), &config).await;
    assert!(launcher.is_connected());
    Harness {
        mock,
        server,
        launcher,
        sessions,
        config,
    }
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
            stream,
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
    let service = Arc::clone(h.config.service("my-echo").unwrap());
    let slot = h.sessions.try_acquire("my-echo", 1, 10).unwrap();
    let (conn, mut client) = tcp_pair().await;
    let peer = conn.peer;
    h.launcher.precheck(&service).unwrap();
    h.launcher
        .launch(service, conn, slot, no_fds())
        .await
        .map_err(|f| f.error)
        .unwrap();

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
    let service = Arc::clone(h.config.service("dropin").unwrap());
    let slot = h.sessions.try_acquire("dropin", 1, 10).unwrap();
    let (conn, _client) = tcp_pair().await;
    h.launcher.precheck(&service).unwrap();
    h.launcher
        .launch(service, conn, slot, no_fds())
        .await
        .map_err(|f| f.error)
        .unwrap();
    let started = h.mock.started.lock().unwrap().pop().unwrap();
    assert!(!started.props.contains_key("ExecStart"));
}

#[tokio::test]
async fn a_failed_start_job_is_an_error_that_returns_the_connection() {
    let dedicated = format!("{ECHO}plus = false\n");
    let h = harness(&dedicated, &[]).await;
    *h.mock.result.lock().unwrap() = "failed".into();
    let service = Arc::clone(h.config.service("my-echo").unwrap());
    let slot = h.sessions.try_acquire("my-echo", 1, 10).unwrap();
    let (conn, _client) = tcp_pair().await;
    let failed = h
        .launcher
        .launch(service, conn, slot, no_fds())
        .await
        .unwrap_err();
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
    let service = Arc::clone(h.config.service("my-echo").unwrap());
    let slot = h.sessions.try_acquire("my-echo", 1, 10).unwrap();
    let (conn, mut client) = tcp_pair().await;
    let failed = h
        .launcher
        .launch(service, conn, slot, no_fds())
        .await
        .unwrap_err();
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
        .run_oneshot(
            "msp",
            "MSP delivery".into(),
            &command,
            env.clone(),
            b"hello",
            Duration::from_secs(3),
        )
        .await
        .unwrap();
    let started = h.mock.started.lock().unwrap().pop().unwrap();
    assert!(started.name.starts_with("tcpmux-msp@"), "{}", started.name);
    let p = &started.props;
    assert_eq!(string(p, "Type"), "oneshot");
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
        .run_oneshot(
            "msp",
            "MSP delivery".into(),
            &command,
            env,
            b"hi",
            Duration::from_secs(3),
        )
        .await
        .unwrap_err();
    writer.await.unwrap();
    assert_eq!(err, "alice is away");
}

#[tokio::test]
async fn systemd_257_also_gets_the_connection_in_extra_file_descriptors() {
    let h = harness_of_version(ECHO, &[], "257.1").await;
    let service = Arc::clone(h.config.service("my-echo").unwrap());
    let slot = h.sessions.try_acquire("my-echo", 1, 10).unwrap();
    let (conn, _client) = tcp_pair().await;
    h.launcher
        .launch(service, conn, slot, no_fds())
        .await
        .map_err(|f| f.error)
        .unwrap();
    let started = h.mock.started.lock().unwrap().pop().unwrap();
    let extra = &started.props["ExtraFileDescriptors"];
    assert_eq!(extra.value_signature().to_string(), "a(hs)");
    assert!(format!("{extra:?}").contains("\"connection\""), "{extra:?}");
}
