//! `tcpmuxd --check` on configurations an administrator gets wrong: the
//! real binary, its messages and exit status.

mod common;

use common::check;

const ECHO: &str = "[[service]]\nname = \"echo\"\ncommand = [\"/bin/cat\"]\n";

#[test]
fn a_duplicate_service_names_both_places_and_how_names_compare() {
    let main = format!("# main\n{ECHO}");
    let dropin = ECHO.replace("echo\"", "ECHO\"");
    let (code, _, stderr) = check(&[("tcpmuxd.toml", &main), ("conf.d/50-echo.toml", &dropin)]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("conf.d/50-echo.toml: line 1: service \"ECHO\" is already defined in "),
        "{stderr}"
    );
    assert!(stderr.contains("tcpmuxd.toml line 2"), "{stderr}");
    assert!(stderr.contains("without regard to case"), "{stderr}");
}

#[test]
fn a_value_out_of_range_names_the_file_and_line() {
    let main = format!("[tcpmux]\nname_timeout = \"1h\"\n\n{ECHO}");
    let (code, _, stderr) = check(&[("tcpmuxd.toml", &main)]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("tcpmuxd.toml: line 2: [tcpmux] name_timeout: 1h is out of range"),
        "{stderr}"
    );
}

#[test]
fn a_dropin_that_is_not_toml_is_named_in_a_warning() {
    let (code, _, stderr) = check(&[
        ("tcpmuxd.toml", ECHO),
        ("conf.d/50-date.conf", "[[service]]\nname = \"date\"\n"),
        ("conf.d/.50-date.toml.swp", "editor state"),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.starts_with("warning: "))
        .unwrap_or_default();
    assert!(
        warning.ends_with(
            "/conf.d/50-date.conf: ignored: only files whose names end in .toml are read"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains(".swp"),
        "hidden files are an editor's: {stderr}"
    );
}

#[test]
fn an_ipv6_entry_that_seems_to_cover_ipv4_clients_is_warned_about() {
    let main = format!("[tcpmux]\ndeny = [\"::/0\"]\n\n{ECHO}allow = [\"::/0\", \"0.0.0.0/0\"]\n");
    let (code, _, stderr) = check(&[("tcpmuxd.toml", &main)]);
    assert_eq!(code, 0, "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(
        warnings[0].contains("[tcpmux] deny: \"::/0\" is IPv6 and covers no IPv4 client"),
        "{stderr}"
    );
    assert!(
        warnings[1].contains("service \"echo\" allow: \"::/0\" is IPv6"),
        "{stderr}"
    );
}

/// `tcpmuxd --check --print` on these files (the first is the main file):
/// exit status, stdout, stderr.
fn check_print(files: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let root = common::root_dropin().map(|(name, text)| (format!("conf.d/{name}"), text));
    for (name, text) in files
        .iter()
        .copied()
        .chain(root.as_ref().map(|(n, t)| (n.as_str(), *t)))
    {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let out = std::process::Command::new(common::DAEMON)
        .arg("--config")
        .arg(dir.path().join(files[0].0))
        .args(["--check", "--print"])
        .output()
        .expect("run tcpmuxd --check --print");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_error_of_every_file_is_reported_in_file_order() {
    let main = format!(
        "[tcpmux]\nmax_handshakes = 4294967296\nbogus = 1\n\n{ECHO}max_instances = \"many\"\n"
    );
    let dropin = "[[service]]\nname = \"date\"\ncommand = [\"date\"]\nwarm = 5000\n";
    let (code, stdout, stderr) = check(&[("tcpmuxd.toml", &main), ("conf.d/50-date.toml", dropin)]);
    assert_eq!(code, 78, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    let expected = [
        "tcpmuxd.toml: line 2: [tcpmux] max_handshakes: 4294967296 is out of range (1 to 1048576)",
        "tcpmuxd.toml: TOML parse error at line 3, column 1",
        "tcpmuxd.toml: TOML parse error at line 8, column 17",
        "conf.d/50-date.toml: line 3: service \"date\": command: \"date\" is not an absolute path",
        "conf.d/50-date.toml: line 4: service \"date\": warm: 5000 is out of range (0 to 1024)",
    ];
    assert_eq!(errors.len(), expected.len(), "{stderr}");
    for (line, want) in errors.iter().zip(expected) {
        assert!(line.contains(want), "{want}\n--- in:\n{stderr}");
    }
    assert!(stderr.contains("unknown field `bogus`"), "{stderr}");
    assert!(stderr.contains("^^^^^"), "a caret under the key: {stderr}");
    assert!(
        stderr.contains("invalid type: string \"many\", expected a whole number"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("tcpmuxd: invalid configuration: 5 errors\n"),
        "{stderr}"
    );
}

#[test]
fn counts_are_in_plain_words() {
    let (code, stdout, stderr) = check(&[("tcpmuxd.toml", ECHO)]);
    assert_eq!(code, 0, "{stderr}");
    let files = if common::is_root() {
        "2 files"
    } else {
        "1 file"
    };
    assert!(
        stdout.contains(&format!("valid ({files}, 1 service: echo)")),
        "{stdout}"
    );
    let (_, _, stderr) = check(&[("tcpmuxd.toml", "[tcpmux]\nmax_sessions = 1.5\n")]);
    assert!(stderr.contains("expected a whole number"), "{stderr}");
    assert!(
        !stderr.contains("i128") && !stderr.contains("i64"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("invalid configuration: 1 error\n"),
        "{stderr}"
    );
}

#[test]
fn a_network_with_host_bits_set_is_warned_about() {
    let main = format!("[tcpmux]\nallow = [\"10.0.0.1/8\"]\n\n{ECHO}");
    let (code, _, stderr) = check(&[("tcpmuxd.toml", &main)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(
            "tcpmuxd.toml: line 2: [tcpmux] allow: \"10.0.0.1/8\" has host bits set: it means \
             10.0.0.0/8"
        ),
        "{stderr}"
    );
}

#[test]
fn the_same_listen_address_twice_is_refused_naming_both() {
    let main = format!("[tcpmux]\nlisten = [\"127.0.0.1:1025\"]\n\n{ECHO}");
    let dropin = "[msp]\nlisten = [\"127.0.0.1:1025\"]\n";
    let (code, _, stderr) = check(&[("tcpmuxd.toml", &main), ("conf.d/50-msp.toml", dropin)]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains(
            "conf.d/50-msp.toml: line 2: [msp] listen: \"127.0.0.1:1025\" is also in [tcpmux] \
             listen ("
        ) && stderr.contains("tcpmuxd.toml line 2): tcpmuxd cannot bind a TCP port twice"),
        "{stderr}"
    );
}

#[test]
fn check_print_shows_the_configuration_in_force_and_reads_back() {
    let main = format!(
        "[tcpmux]\nlisten = [\"127.0.0.1:1025\"]\numask = \"0027\"\n\
         environment = {{ LANG = \"C.UTF-8\" }}\nlimits = {{ open_files = 1024, core_size = 0 }}\n\n\
         {ECHO}limits = {{ open_files = 64, cpu_time = \"10min\" }}\n\
         environment = {{ GREETING = \"hello \\\"there\\\"\" }}\n"
    );
    let dropin = "[[service]]\nname = \"date\"\ncommand = [\"/bin/date\", \"+%s\"]\nplus = false\n";
    let (code, printed, stderr) =
        check_print(&[("tcpmuxd.toml", &main), ("conf.d/50-date.toml", dropin)]);
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "max_handshakes = 16384\n",
        "name_timeout = \"10s\"\n",
        "umask = \"0027\"\n",
        "[[service]]\nname = \"date\"\n",
        "limits = { open_files = 64, cpu_time = \"10m\", core_size = 0 }\n",
        "environment = { GREETING = 'hello \"there\"', LANG = \"C.UTF-8\" }\n",
        "dedup_window = \"5m\"\n",
    ] {
        assert!(printed.contains(line), "{line}\n--- in:\n{printed}");
    }
    // The printout is a configuration tcpmuxd accepts, and prints alike.
    let (code, again, stderr) = check_print(&[("tcpmuxd.toml", &printed)]);
    assert_eq!(code, 0, "{stderr}\n--- printed:\n{printed}");
    let settings = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(settings(&again), settings(&printed));
}

#[test]
fn print_needs_check() {
    let out = std::process::Command::new(common::DAEMON)
        .arg("--print")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--check"), "{stderr}");
}

/// A user or group by number is written as one: `0`, `65534`; `00` or
/// `+0` is a name, which no user has (it would be root in disguise).
#[test]
fn only_a_plain_number_is_a_user_or_group_by_number() {
    for (key, value) in [
        ("user", "00"),
        ("user", "+0"),
        ("user", "000000"),
        ("group", "+0"),
    ] {
        let user = if key == "group" {
            "user = \"nobody\"\n"
        } else {
            ""
        };
        let text = format!(
            "[[service]]\nname = \"s\"\ncommand = [\"/bin/cat\"]\n{user}{key} = \"{value}\"\n"
        );
        let (code, _, stderr) = check(&[("tcpmuxd.toml", &text)]);
        assert_eq!(code, 78, "{key} = {value}: {stderr}");
        assert!(
            stderr.contains(&format!("\"{value}\": no such")),
            "{stderr}"
        );
    }
    let text = "[[service]]\nname = \"s\"\ncommand = [\"/bin/cat\"]\nuser = \"65534\"\n";
    let (code, _, stderr) = check(&[("tcpmuxd.toml", text)]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn values_too_big_for_a_program_are_refused_naming_the_limit() {
    // execve takes at most 128 KiB in one string (E2BIG), and all of
    // them together are bounded too: such a program could never start,
    // and every client would hear `+` and a closed connection.
    let big = "x".repeat(140 * 1024);
    let quarter = "y".repeat(100 * 1024);
    let main = format!(
        "[tcpmux]\n[tcpmux.environment]\nGREETING = \"{big}\"\n\n{ECHO}\n\
         [[service]]\nname = \"big\"\ncommand = [\"/bin/echo\", \"{big}\"]\n\n\
         [[service]]\nname = \"many\"\ncommand = [\"/bin/echo\"{}]\n\n\
         [msp]\ncommand = [\"/bin/cat\", \"{big}\"]\n",
        format!(", \"{quarter}\"").repeat(11)
    );
    let (code, _, stderr) = check(&[("tcpmuxd.toml", &main)]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains(
            "tcpmuxd.toml: line 3: [tcpmux] environment: GREETING: \"GREETING=...\" is 143369 \
             bytes long, more than the 131071 bytes the kernel lets a program be given in one \
             argument or variable"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 11: service \"big\": command: argument 1 is 143360 bytes long"),
        "{stderr}"
    );
    assert!(
        stderr.contains("service \"many\": command: command and environment take 1126"),
        "{stderr}"
    );
    assert!(
        stderr.contains("more than the 1032192 a program can be given"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[msp] command: argument 1 is 143360 bytes long"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("invalid configuration: 4 errors\n"),
        "{stderr}"
    );
}

#[test]
fn a_tcpmux_environment_too_big_in_all_is_refused_once() {
    let value = "z".repeat(100 * 1024);
    let vars: String = (0..11).map(|i| format!("V{i} = \"{value}\"\n")).collect();
    let main = format!("[tcpmux]\n[tcpmux.environment]\n{vars}\n{ECHO}");
    let (code, _, stderr) = check(&[("tcpmuxd.toml", &main)]);
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("[tcpmux] environment: takes 1126"),
        "{stderr}"
    );
    assert!(
        stderr.contains("every service's program is given it"),
        "{stderr}"
    );
    assert!(!stderr.contains("service \"echo\""), "said once: {stderr}");
    assert!(
        stderr.ends_with("invalid configuration: 1 error\n"),
        "{stderr}"
    );
}
