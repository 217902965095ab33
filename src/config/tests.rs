use super::*;
use crate::limits;

fn build_from(files: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
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
        (
            "[tcpmux]\ndefer_accept = \"2m\"\n",
            "defer_accept: 2m is out of range",
        ),
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
            "[msp] recipient_rate_per_minute: 0 is out of range (1 to 100000000)",
        ),
        (
            "[msp]\ntotal_rate_per_minute = 0\n",
            "[msp] total_rate_per_minute: 0 is out of range (1 to 100000000)",
        ),
        (
            "[msp]\nmax_connections_per_source = 0\n",
            "[msp] max_connections_per_source: 0 is out of range (1 to 65536)",
        ),
        (
            "[msp]\nmax_messages_per_connection = 0\n",
            "[msp] max_messages_per_connection: 0 is out of range (1 to 1000000)",
        ),
        (
            "[msp]\nallow = [\"10.0.0.0/33\"]\n",
            "allow: \"10.0.0.0/33\"",
        ),
        (
            "[tcpmux]\ntrusted_proxies = [\"10.0.0.0/33\"]\n",
            "trusted_proxies: \"10.0.0.0/33\" is neither an address nor a network",
        ),
        (
            "[msp]\ntrusted_proxies = [\"haproxy\"]\n",
            "trusted_proxies: \"haproxy\" is neither an address nor a network",
        ),
        (
            "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nwarm = 100000\n",
            "warm: 100000",
        ),
        ("[tcpmux]\nmax_warm = 5000\n", "max_warm: 5000"),
        (
            "[tcpmux]\nmax_starting_units = 0\n",
            "[tcpmux] max_starting_units: 0 is out of range (1 to 1024)",
        ),
        (
            "[tcpmux]\nmax_starting_units = 5000\n",
            "max_starting_units: 5000 is out of range (1 to 1024)",
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
fn trusted_proxies_are_none_by_default_and_per_protocol() {
    let none = build_from(&[("main.toml", "")]).unwrap();
    assert!(none.tcpmux.trusted_proxies.is_empty() && none.msp.trusted_proxies.is_empty());
    let c = build_from(&[
        (
            "main.toml",
            "[tcpmux]\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
        ),
        (
            "conf.d/10.toml",
            "[tcpmux]\ntrusted_proxies = [\"192.0.2.2\", \"2001:db8::/64\"]\n\
             [msp]\ntrusted_proxies = [\"192.0.2.3\"]\n",
        ),
    ])
    .unwrap();
    // A later file's list replaces an earlier one's, as allow and deny.
    let t = &c.tcpmux.trusted_proxies;
    assert!(t.trusts("192.0.2.2".parse().unwrap()));
    assert!(t.trusts("::ffff:192.0.2.2".parse().unwrap()));
    assert!(t.trusts("2001:db8::9".parse().unwrap()));
    assert!(!t.trusts("10.0.0.1".parse().unwrap()));
    assert!(!t.trusts("192.0.2.3".parse().unwrap()));
    assert!(c.msp.trusted_proxies.trusts("192.0.2.3".parse().unwrap()));
    assert!(!c.msp.trusted_proxies.trusts("192.0.2.2".parse().unwrap()));
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
        "main.toml: line 4: [tcpmux] max_sessions: 0 is out of range (1 to 1048576)"
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
        e.starts_with("main.toml: line 5: service \"x\": environment: "),
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

fn errors_of(files: &[(&str, &str)]) -> Vec<String> {
    let parsed: Vec<(PathBuf, Option<FileConfig>, Vec<ConfigError>)> = files
        .iter()
        .map(|(p, t)| {
            let path = PathBuf::from(p);
            let (file, errors) = file::read_file(&path, t);
            (path, file, errors)
        })
        .collect();
    let order: Vec<PathBuf> = parsed.iter().map(|(p, _, _)| p.clone()).collect();
    let mut errors = Vec::new();
    let mut good = Vec::new();
    for (path, file, e) in parsed {
        errors.extend(e);
        if let Some(file) = file {
            good.push((path, file));
        }
    }
    merge::merge(good, &mut errors);
    ConfigErrors::sorted(errors, &order)
        .0
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn every_error_of_every_file_is_reported_in_file_order() {
    let main = "[tcpmux]\nmax_sessions = 0\nbogus = 1\nname_timeout = 5\n\n\
                [[service]]\nname = \"a\"\ncommand = [\"cat\"]\nmax_instances = \"many\"\n\
                warm = 5000\n";
    let dropin = "[[service]]\nname = \"b\"\ncommand = [\"/bin/cat\"]\nplus = 1\n\
                  [[service]]\nname = \"A\"\ncommand = [\"/bin/cat\"]\n";
    let broken = "[tcpmux\nmax_sessions = 1\n";
    let errors = errors_of(&[
        ("main.toml", main),
        ("conf.d/10.toml", dropin),
        ("conf.d/20.toml", broken),
    ]);
    let joined = errors.join("\n---\n");
    let expect = [
        (
            "main.toml",
            "max_sessions: 0 is out of range (1 to 1048576)",
        ),
        ("main.toml", "unknown field `bogus`"),
        ("main.toml", "name_timeout"),
        ("main.toml", "command: \"cat\" is not an absolute path"),
        ("main.toml", "max_instances"),
        ("main.toml", "warm: 5000 is out of range (0 to 1024)"),
        ("conf.d/10.toml", "expected a boolean"),
        (
            "conf.d/10.toml",
            "service \"A\" is already defined in main.toml line 6",
        ),
        ("conf.d/20.toml", "TOML parse error"),
    ];
    assert_eq!(errors.len(), expect.len(), "{joined}");
    for (e, (file, needle)) in errors.iter().zip(expect) {
        assert!(e.starts_with(file), "{e}\n--- all:\n{joined}");
        assert!(e.contains(needle), "{needle}: {e}\n--- all:\n{joined}");
    }
    // TOML's own errors keep their column and caret.
    assert!(errors[1].contains("column"), "{}", errors[1]);
    assert!(errors[1].contains('^'), "{}", errors[1]);
}

#[test]
fn every_count_has_an_upper_bound() {
    let cases = [
        (
            "[tcpmux]\nmax_handshakes = 4294967296\n",
            "main.toml: line 2: [tcpmux] max_handshakes: 4294967296 is out of range (1 to 1048576)",
        ),
        (
            "[tcpmux]\nmax_sessions = -1\n",
            "[tcpmux] max_sessions: -1 is out of range (1 to 1048576)",
        ),
        (
            "[tcpmux]\nipv6_source_prefix = 300\n",
            "ipv6_source_prefix: 300 is out of range (0 to 128)",
        ),
        (
            "[msp]\nrate_per_minute = 4294967296\n",
            "[msp] rate_per_minute: 4294967296 is out of range (1 to 100000000)",
        ),
        (
            "[msp]\nmax_connections = 100000\n",
            "[msp] max_connections: 100000 is out of range (1 to 65536)",
        ),
        (
            "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nmax_starts_per_second = 4294967296\n",
            "service \"x\": max_starts_per_second: 4294967296 is out of range (1 to 1000000)",
        ),
        (
            "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\nmax_instances = 9999999\n",
            "service \"x\": max_instances: 9999999 is out of range (1 to 1048576)",
        ),
    ];
    for (text, needle) in cases {
        let e = build_from(&[("main.toml", text)]).unwrap_err().to_string();
        assert!(e.contains(needle), "{text:?}: {e}");
        assert!(!e.contains("i128") && !e.contains("i64"), "{e}");
    }
}

#[test]
fn a_network_with_host_bits_set_is_warned_about() {
    let c = build_from(&[(
        "main.toml",
        "[tcpmux]\nallow = [\"10.0.0.1/8\", \"192.0.2.0/24\", \"192.0.2.7\"]\n\n\
         [[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\ndeny = [\"2001:db8::1/32\"]\n",
    )])
    .unwrap();
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert_eq!(
        c.warnings[0],
        "main.toml: line 2: [tcpmux] allow: \"10.0.0.1/8\" has host bits set: it means 10.0.0.0/8 \
         (write \"10.0.0.0/8\", or the address alone for one host)"
    );
    assert!(
        c.warnings[1].starts_with("main.toml: line 7: service \"x\": deny: \"2001:db8::1/32\" has host bits set: it means 2001:db8::/32"),
        "{}",
        c.warnings[1]
    );
}

#[test]
fn the_same_listen_address_twice_is_refused_naming_both() {
    let e = build_from(&[(
        "main.toml",
        "[tcpmux]\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n",
    )])
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "main.toml: line 2: [tcpmux] listen: \"127.0.0.1:1\" is listed twice"
    );
    let e = build_from(&[
        ("main.toml", "[tcpmux]\nlisten = [\"127.0.0.1:1025\"]\n"),
        (
            "conf.d/50-msp.toml",
            "\n[msp]\nlisten = [\"0.0.0.0:1025\"]\n",
        ),
    ])
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "conf.d/50-msp.toml: line 3: [msp] listen: \"0.0.0.0:1025\" takes the same TCP port as \
         \"127.0.0.1:1025\" of [tcpmux] listen (main.toml line 2): tcpmuxd cannot bind a TCP \
         port twice"
    );
    // [::]:1 is [tcpmux]'s default, and takes IPv4 too.
    let e = build_from(&[("main.toml", "[msp]\nlisten = [\"127.0.0.1:1\"]\n")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("[tcpmux] listen (the default)"), "{e}");
    // Different ports, different addresses, or port 0 (a new one each
    // time): no clash.
    assert!(
        build_from(&[(
            "main.toml",
            "[tcpmux]\nlisten = [\"127.0.0.1:1\", \"127.0.0.2:1\", \"[::1]:1\", \"127.0.0.1:0\"]\n\
             [msp]\nlisten = [\"127.0.0.1:18\", \"127.0.0.1:0\"]\n"
        )])
        .is_ok()
    );
}

const NOBODY_SERVICE: &str = "[[service]]\nname = \"a\"\ncommand = [\"/bin/cat\"]\n";

#[test]
fn services_inherit_user_umask_environment_and_limits_from_tcpmux() {
    let c = build_from(&[
        (
            "main.toml",
            "[tcpmux]\nuser = \"nobody\"\numask = \"0027\"\n\
             environment = { LANG = \"C\", TZ = \"UTC\" }\n\
             limits = { open_files = 1024, core_size = 0, cpu_time = \"10min\" }\n\n\
             [[service]]\nname = \"a\"\ncommand = [\"/bin/cat\"]\n\n\
             [[service]]\nname = \"b\"\ncommand = [\"/bin/cat\"]\nuser = \"root\"\n\
             umask = 0o022\nenvironment = { TZ = \"Europe/Paris\", X = \"1\" }\n\
             limits = { open_files = 64, processes = 8, address_space = \"1G\" }\n",
        ),
        (
            "conf.d/10.toml",
            "[tcpmux.limits]\nprocesses = \"infinity\"\n",
        ),
    ])
    .unwrap();
    let a = c.service("a").unwrap();
    assert_eq!(a.credentials.as_ref().unwrap().user, "nobody");
    assert!(a.credentials_inherited);
    assert_eq!(a.umask, 0o027);
    assert_eq!(
        a.environment,
        vec![("LANG".into(), "C".into()), ("TZ".into(), "UTC".into())]
    );
    assert_eq!(
        a.limits,
        ResourceLimits {
            open_files: Some(1024),
            processes: Some(INFINITY),
            address_space: None,
            cpu_time: Some(600),
            core_size: Some(0),
        }
    );
    let b = c.service("b").unwrap();
    assert_eq!(b.credentials.as_ref().unwrap().uid, 0);
    assert!(!b.credentials_inherited);
    assert_eq!(b.umask, 0o022);
    assert_eq!(
        b.environment,
        vec![
            ("LANG".into(), "C".into()),
            ("TZ".into(), "Europe/Paris".into()),
            ("X".into(), "1".into())
        ]
    );
    assert_eq!(b.limits.open_files, Some(64));
    assert_eq!(b.limits.processes, Some(8));
    assert_eq!(b.limits.address_space, Some(1 << 30));
    assert_eq!(b.limits.core_size, Some(0));
    // Nothing set: the umask default, no user, nothing limited.
    let c = build_from(&[("main.toml", NOBODY_SERVICE)]).unwrap();
    let a = c.service("a").unwrap();
    assert_eq!(a.umask, limits::DEFAULT_UMASK);
    assert_eq!(a.credentials, None);
    assert_eq!(a.limits, ResourceLimits::default());
}

#[test]
fn default_user_is_the_former_name_of_user() {
    let c = build_from(&[(
        "main.toml",
        &format!("[tcpmux]\ndefault_user = \"nobody\"\n{NOBODY_SERVICE}"),
    )])
    .unwrap();
    assert_eq!(
        c.tcpmux.default_credentials.as_ref().unwrap().user,
        "nobody"
    );
    assert_eq!(c.msp.credentials.as_ref().unwrap().user, "nobody");
    let e = build_from(&[(
        "main.toml",
        "[tcpmux]\nuser = \"nobody\"\ndefault_user = \"root\"\n",
    )])
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("line 3: [tcpmux] default_user: is the former name of user"),
        "{e}"
    );
    // A drop-in's default_user replaces the main file's user.
    let c = build_from(&[
        ("main.toml", "[tcpmux]\nuser = \"nobody\"\n"),
        ("conf.d/00-root.toml", "[tcpmux]\ndefault_user = \"root\"\n"),
    ])
    .unwrap();
    assert_eq!(c.tcpmux.default_credentials.as_ref().unwrap().uid, 0);
}

#[test]
fn resource_values_out_of_range_are_named() {
    let cases = [
        (
            "[tcpmux]\numask = \"0999\"\n",
            "[tcpmux] umask: \"0999\" is not a umask",
        ),
        (
            "[tcpmux]\nlimits = { open_files = 4294967296 }\n",
            "[tcpmux] limits: open_files: 4294967296 is out of range (1 to 1048576)",
        ),
        (
            "[tcpmux]\nlimits = { address_space = \"1 gigabyte\" }\n",
            "address_space: \"1 gigabyte\" is not a size",
        ),
        (
            "[tcpmux]\nlimits = { cpu_time = 10 }\n",
            "cpu_time: 10 has no unit",
        ),
        (
            "[tcpmux]\nlimits = { stack = 10 }\n",
            "unknown field `stack`",
        ),
        (
            "[tcpmux]\nenvironment = { PATH = \"/\" }\n",
            "[tcpmux] environment: PATH is set by tcpmuxd",
        ),
        (
            "[[service]]\nname = \"x\"\ncommand = [\"/bin/cat\"]\n[service.limits]\ncore_size = -1\n",
            "main.toml: line 5: service \"x\": limits: core_size: -1 is negative",
        ),
    ];
    for (text, needle) in cases {
        let e = build_from(&[("main.toml", text)]).unwrap_err().to_string();
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn the_printed_configuration_reads_back_the_same() {
    let c = build_from(&[
        (
            "main.toml",
            "[tcpmux]\nlisten = [\"127.0.0.1:1025\"]\nname_timeout = \"1m 30s\"\n\
             allow = [\"10.0.0.1/8\"]\nuser = \"nobody\"\numask = \"0027\"\n\
             environment = { LANG = \"C \\\"quoted\\\"\" }\n\
             limits = { open_files = 1024, core_size = 0, address_space = \"1G\", cpu_time = \"1h\", processes = \"infinity\" }\n\
             [msp]\ndeliver = \"command\"\ncommand = [\"/bin/true\", \"$x\"]\n",
        ),
        (
            "conf.d/10.toml",
            "[[service]]\nname = \"a\"\ncommand = [\"/bin/cat\"]\nlimits = { open_files = 8 }\n\
             [[service]]\nname = \"b\"\nlauncher = \"systemd\"\nwarm = 0\nuser = \"root\"\n",
        ),
    ])
    .unwrap();
    let printed = to_toml(&c);
    let again =
        build_from(&[("printed.toml", &printed)]).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    let settings = |t: &str| -> String {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    assert_eq!(settings(&to_toml(&again)), settings(&printed));
    assert_eq!(again.tcpmux, c.tcpmux);
    let mut msp = again.msp.clone();
    msp.credentials_inherited = c.msp.credentials_inherited;
    assert_eq!(msp, c.msp);
    for (s, t) in c.services.iter().zip(&again.services) {
        assert_eq!(s.limits, t.limits);
        assert_eq!(s.environment, t.environment);
        assert_eq!(s.credentials, t.credentials);
        assert_eq!(
            (s.umask, s.warm, s.acl.clone()),
            (t.umask, t.warm, t.acl.clone())
        );
    }
    assert!(printed.contains("max_handshakes = 16384\n"), "{printed}");
    assert!(
        printed.contains("limits = { open_files = 8, processes = \"infinity\""),
        "{printed}"
    );
}

#[test]
fn defer_accept_is_whole_seconds_rounded_up_and_unset_by_default() {
    let c = build_from(&[("main.toml", "")]).unwrap();
    assert_eq!(c.tcpmux.defer_accept, None);
    for (value, secs) in [
        ("\"0s\"", 0),
        ("\"1500ms\"", 2),
        ("\"5s\"", 5),
        ("\"1m\"", 60),
    ] {
        let c =
            build_from(&[("main.toml", &format!("[tcpmux]\ndefer_accept = {value}\n"))]).unwrap();
        assert_eq!(c.tcpmux.defer_accept, Some(secs), "{value}");
    }
}

#[test]
fn trusted_proxies_that_trust_everyone_or_no_ipv4_balancer_are_warned_of() {
    let c = build_from(&[(
        "main.toml",
        "[tcpmux]\ntrusted_proxies = [\"0.0.0.0/0\", \"192.0.2.2\"]\n\
         [msp]\ntrusted_proxies = [\"::/0\"]\n",
    )])
    .unwrap();
    assert!(
        acl_warnings(&c)
            .iter()
            .any(|w| w.starts_with("[tcpmux] trusted_proxies: \"0.0.0.0/0\" trusts every address")),
        "{:?}",
        acl_warnings(&c)
    );
    assert!(
        acl_warnings(&c)
            .iter()
            .any(|w| w.starts_with("[msp] trusted_proxies: \"::/0\" trusts every")),
        "{:?}",
        acl_warnings(&c)
    );
    let c = build_from(&[("main.toml", "[tcpmux]\ntrusted_proxies = [\"::/64\"]\n")]).unwrap();
    assert!(
        acl_warnings(&c)
            .iter()
            .any(|w| w.contains("covers no IPv4 balancer")),
        "{:?}",
        acl_warnings(&c)
    );
    let quiet = build_from(&[("main.toml", "[tcpmux]\ntrusted_proxies = [\"192.0.2.2\"]\n")]);
    assert!(acl_warnings(&quiet.unwrap()).is_empty());
}

#[test]
fn forward_and_pass_services() {
    let c = build_from(&[(
        "main.toml",
        "[tcpmux]\nuser = \"nobody\"\n\
         [[service]]\nname = \"ssh\"\nlauncher = \"forward\"\nforward = \"127.0.0.1:22\"\n\
         proxy_protocol = \"v2\"\nidle_timeout = \"10min\"\n\
         [[service]]\nname = \"app\"\nlauncher = \"pass\"\npass = \"/run/app/tcpmux.sock\"\n",
    )])
    .unwrap();
    let ssh = c.service("ssh").unwrap();
    assert_eq!(
        ssh.backend,
        Some(Backend::Forward(Forward {
            to: ForwardAddress::Tcp("127.0.0.1:22".parse().unwrap()),
            proxy_protocol: Some(ProxyVersion::V2),
            idle_timeout: Duration::from_secs(600),
        }))
    );
    // No program runs, so no one's credentials apply.
    assert_eq!(ssh.credentials, None);
    let app = c.service("app").unwrap();
    assert_eq!(
        app.backend,
        Some(Backend::Pass("/run/app/tcpmux.sock".into()))
    );
    let Some(Backend::Forward(f)) = build_from(&[(
        "main.toml",
        "[[service]]\nname = \"s\"\nlauncher = \"forward\"\nforward = \"/run/s.sock\"\n",
    )])
    .unwrap()
    .service("s")
    .unwrap()
    .backend
    .clone() else {
        panic!("not forwarded");
    };
    assert_eq!(f.to, ForwardAddress::Unix("/run/s.sock".into()));
    assert_eq!(f.idle_timeout, limits::DEFAULT_IDLE_TIMEOUT);
    assert_eq!(f.proxy_protocol, None);
}

#[test]
fn forward_and_pass_keys_are_checked_against_the_launcher() {
    let bad = |service: &str| {
        build_from(&[(
            "main.toml",
            &format!("[[service]]\nname = \"s\"\n{service}"),
        )])
        .unwrap_err()
        .to_string()
    };
    let e = bad("launcher = \"forward\"\n");
    assert!(e.contains("forward: missing"), "{e}");
    let e = bad("launcher = \"pass\"\n");
    assert!(e.contains("pass: missing"), "{e}");
    let e = bad("launcher = \"forward\"\nforward = \"localhost:22\"\n");
    assert!(e.contains("not a host name"), "{e}");
    let e = bad("launcher = \"pass\"\npass = \"tcpmux.sock\"\n");
    assert!(e.contains("absolute"), "{e}");
    let e = bad("command = [\"/bin/cat\"]\nforward = \"127.0.0.1:22\"\n");
    assert!(
        e.contains("forward: is only for launcher = \"forward\""),
        "{e}"
    );
    let e = bad("launcher = \"pass\"\npass = \"/a.sock\"\nproxy_protocol = \"v1\"\n");
    assert!(e.contains("proxy_protocol: is only for"), "{e}");
    let e = bad("launcher = \"forward\"\nforward = \"127.0.0.1:22\"\nproxy_protocol = \"2\"\n");
    assert!(e.contains("write \"v1\" or \"v2\""), "{e}");
    let e = bad("launcher = \"forward\"\nforward = \"127.0.0.1:22\"\nidle_timeout = \"30d\"\n");
    assert!(e.contains("idle_timeout: 30days is out of range"), "{e}");
    let e = bad(
        "launcher = \"forward\"\nforward = \"127.0.0.1:22\"\ncommand = [\"/bin/cat\"]\n\
         user = \"nobody\"\n",
    );
    assert!(
        e.contains("command: has no effect with launcher = \"forward\""),
        "{e}"
    );
    assert!(e.contains("user: has no effect"), "{e}");
}
