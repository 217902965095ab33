use super::*;
use crate::limits;

fn build_from(files: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let parsed = files
        .iter()
        .map(|(p, t)| {
            let path = PathBuf::from(p);
            parse_file(&path, t).map(|f| (path, f))
        })
        .collect::<Result<Vec<_>, _>>()?;
    build(parsed)
}

#[test]
fn defaults() {
    let c = build_from(&[(
        "main.toml",
        "[[service]]\nname = \"echo\"\ncommand = [\"/bin/cat\"]\n",
    )])
    .unwrap();
    assert_eq!(
        c.tcpmux.listen,
        vec!["[::]:1".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(c.tcpmux.name_timeout, limits::DEFAULT_NAME_TIMEOUT);
    let s = c.service("ECHO").unwrap();
    assert!(s.plus);
    assert_eq!(s.launcher, LauncherKind::Auto);
    assert_eq!(s.max_instances, limits::DEFAULT_MAX_INSTANCES);
    assert_eq!(s.warm, limits::DEFAULT_WARM);
    assert_eq!(c.tcpmux.max_warm, limits::DEFAULT_MAX_WARM);
    assert_eq!(
        c.tcpmux.max_starting_units,
        limits::default_max_starting_units()
    );
    assert!(c.tcpmux.max_starting_units >= 2);
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let e =
        build_from(&[("main.toml", "[tcpmux]\nname_timeout = \"5s\"\nbogus = 1\n")]).unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("main.toml: "), "{text}");
    assert!(text.contains("line 3"), "{text}");
    assert!(text.contains("bogus"), "{text}");
}

#[test]
fn dropins_override_keys_and_add_services() {
    let c = build_from(&[
        ("main.toml", "[tcpmux]\nname_timeout = \"5s\"\nlisten = [\"127.0.0.1:1\"]\n[[service]]\nname = \"a\"\ncommand = [\"/bin/cat\"]\n"),
        ("conf.d/10.toml", "[tcpmux]\nname_timeout = \"500ms\"\n[[service]]\nname = \"b\"\ncommand = [\"/bin/cat\"]\nplus = false\n"),
    ])
    .unwrap();
    assert_eq!(c.tcpmux.name_timeout, Duration::from_millis(500));
    assert_eq!(
        c.tcpmux.listen,
        vec!["127.0.0.1:1".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(c.services.len(), 2);
    assert!(!c.service("b").unwrap().plus);
    assert_eq!(
        c.service("b").unwrap().source,
        PathBuf::from("conf.d/10.toml")
    );
}

#[test]
fn duplicate_names_both_files() {
    let e = build_from(&[
        (
            "main.toml",
            "[[service]]\nname = \"Echo\"\ncommand = [\"/bin/cat\"]\n",
        ),
        (
            "conf.d/50-echo.toml",
            "[[service]]\nname = \"echo\"\ncommand = [\"/bin/cat\"]\n",
        ),
    ])
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("conf.d/50-echo.toml: line 1: "), "{e}");
    assert!(e.contains("main.toml line 1"), "{e}");
    assert!(e.contains("without regard to case"), "{e}");
}

#[test]
fn invalid_values_are_named() {
    let cases = [
        (
            "[[service]]\nname = \"help\"\ncommand = [\"/bin/cat\"]\n",
            "reserved",
        ),
        (
            "[[service]]\nname = \"a b\"\ncommand = [\"/bin/cat\"]\n",
            "visible ASCII",
        ),
        (
            "[[service]]\nname = \"x\"\ncommand = [\"cat\"]\n",
            "absolute path",
        ),
        (
            "[[service]]\nname = \"x\"\nlauncher = \"exec\"\n",
            "command: missing",
        ),
        (
            "[[service]]\nname = \"x\"\ncommand = []\n",
            "command: is empty",
        ),
        (
            "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nmax_instances = 0\n",
            "max_instances",
        ),
        (
            "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nallow = [\"300.0.0.1\"]\n",
            "300.0.0.1",
        ),
        (
            "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nlauncher = \"inetd\"\n",
            "inetd",
        ),
        (
            "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nuser = \"no-such-user-here\"\n",
            "no such user",
        ),
        (
            "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\ngroup = \"0\"\n",
            "without user",
        ),
        (
            "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nenvironment = { \"1X\" = \"y\" }\n",
            "1X",
        ),
        ("[tcpmux]\nname_timeout = \"0s\"\n", "name_timeout"),
        ("[tcpmux]\nname_timeout = \"ten seconds\"\n", "name_timeout"),
        ("[tcpmux]\nlisten = [\"localhost\"]\n", "listen"),
        ("[tcpmux]\nlisten = []\n", "listen: is empty"),
        (
            "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nenvironment = { REMOTE_ADDR = \"y\" }\n",
            "REMOTE_ADDR",
        ),
        ("[msp]\ndeliver = \"command\"\n", "[msp] command: missing"),
        ("[msp]\nrate_per_minute = 0\n", "rate_per_minute"),
        (
            "[msp]\nconnection_timeout = \"300000000000y\"\n",
            "connection_timeout: ",
        ),
        ("[msp]\nidle_timeout = \"2h\"\n", "at most 1h"),
        (
            "[msp]\nrecipient_rate_per_minute = 0\n",
            "[msp] recipient_rate_per_minute: must be at least 1",
        ),
        (
            "[msp]\ntotal_rate_per_minute = 0\n",
            "[msp] total_rate_per_minute: must be at least 1",
        ),
        (
            "[msp]\nmax_connections_per_source = 0\n",
            "[msp] max_connections_per_source: must be at least 1",
        ),
        (
            "[msp]\nmax_messages_per_connection = 0\n",
            "[msp] max_messages_per_connection: must be at least 1",
        ),
        ("[msp]\nallow = [\"10.0.0.0/33\"]\n", "10.0.0.0/33"),
        (
            "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nwarm = 100000\n",
            "warm: 100000",
        ),
        ("[tcpmux]\nmax_warm = 5000\n", "max_warm: 5000"),
        (
            "[tcpmux]\nmax_starting_units = 0\n",
            "[tcpmux] max_starting_units: must be at least 1",
        ),
        (
            "[tcpmux]\nmax_starting_units = 5000\n",
            "max_starting_units: 5000 is more than 1024",
        ),
    ];
    for (text, needle) in cases {
        let e = build_from(&[("main.toml", text)]).unwrap_err().to_string();
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn msp_has_its_own_access_list() {
    let c = build_from(&[
        ("main.toml", "[msp]\nallow = [\"192.0.2.0/24\"]\n"),
        ("conf.d/10.toml", "[msp]\ndeny = [\"192.0.2.7\"]\n"),
    ])
    .unwrap();
    assert!(c.msp.acl.permits("192.0.2.1".parse().unwrap()));
    assert!(!c.msp.acl.permits("192.0.2.7".parse().unwrap()));
    assert!(!c.msp.acl.permits("198.51.100.1".parse().unwrap()));
    let open = build_from(&[("main.toml", "")]).unwrap();
    assert!(open.msp.acl.permits("198.51.100.1".parse().unwrap()));
}

#[test]
fn command_may_come_from_systemd_dropins() {
    let c = build_from(&[(
        "main.toml",
        "[[service]]\nname = \"x\"\nlauncher = \"systemd\"\n",
    )])
    .unwrap();
    assert_eq!(c.service("x").unwrap().command, None);
    assert_eq!(c.service("x").unwrap().launcher, LauncherKind::Systemd);
}

#[test]
fn names_too_long_for_unit_names_need_the_exec_launcher() {
    let long = "-".repeat(60);
    let text = format!("[[service]]\nname = \"{long}\"\ncommand = [\"/bin/cat\"]\n");
    let e = build_from(&[("main.toml", &text)]).unwrap_err().to_string();
    assert!(e.contains("escaped"), "{e}");
    let text = format!("{text}launcher = \"exec\"\n");
    assert!(build_from(&[("main.toml", &text)]).is_ok());
}

#[test]
fn errors_found_after_parsing_name_the_line() {
    let main = "# tcpmuxd\n[tcpmux]\nlisten = [\"127.0.0.1:1\"]\nmax_sessions = 0\n";
    let e = build_from(&[("main.toml", main)]).unwrap_err().to_string();
    assert_eq!(
        e,
        "main.toml: line 4: [tcpmux] max_sessions: must be at least 1"
    );
    let e = build_from(&[
        ("main.toml", "[msp]\nidle_timeout = \"1s\"\n"),
        ("conf.d/10.toml", "\n[msp]\nidle_timeout = \"2h\"\n"),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("conf.d/10.toml: line 3: [msp] idle_timeout: "),
        "{e}"
    );
    let svc = "[[service]]\nname = \"a\"\ncommand = [\"/bin/cat\"]\n\n\
               [[service]]\nname = \"b\"\ncommand = [\"cat\"]\n";
    let e = build_from(&[("main.toml", svc)]).unwrap_err().to_string();
    assert!(
        e.starts_with("main.toml: line 7: service \"b\": command: "),
        "{e}"
    );
    let e = build_from(&[(
        "main.toml",
        "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\n[service.environment]\nPATH = \"/\"\n",
    )])
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("main.toml: line 4: service \"x\": environment: "),
        "{e}"
    );
}

#[test]
fn messages_use_plain_words() {
    let e = build_from(&[("main.toml", "[tcpmux]\nmax_sessions = \"many\"\n")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("expected a whole number"), "{e}");
    let e = build_from(&[("main.toml", "[tcpmux]\nname_timeout = \"ten seconds\"\n")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("ms, s, min, h, d"), "{e}");
}

#[test]
fn reload_changes_are_described() {
    let old = build_from(&[(
        "main.toml",
        "[[service]]\nname = \"a\"\ncommand = [\"/bin/cat\"]\n\
         [[service]]\nname = \"b\"\ncommand = [\"/bin/cat\"]\n",
    )])
    .unwrap();
    let new = build_from(&[(
        "main.toml",
        "[tcpmux]\nname_timeout = \"5s\"\n\
         [[service]]\nname = \"A\"\ncommand = [\"/bin/cat\"]\nmax_instances = 2\n\
         [[service]]\nname = \"c\"\ncommand = [\"/bin/cat\"]\n\
         [[service]]\nname = \"d\"\ncommand = [\"/bin/cat\"]\n",
    )])
    .unwrap();
    assert_eq!(
        describe_changes(&old, &new),
        "2 services added, 1 removed, 1 changed; [tcpmux] changed"
    );
    assert_eq!(describe_changes(&old, &old), "nothing changed");
}

#[test]
fn service_names() {
    assert!(check_service_name("example.com-chat-2").is_ok());
    assert!(check_service_name(&"a".repeat(255)).is_ok());
    assert!(check_service_name(&"a".repeat(256)).is_err());
    assert!(check_service_name("HeLp").is_err());
    let msp = check_service_name("MSP").unwrap_err();
    assert!(
        msp.contains("\"MSP\" is reserved") && msp.contains("tcpmux-msp@"),
        "{msp}"
    );
    assert!(check_service_name("msp2").is_ok());
    assert!(check_service_name("").is_err());
}
