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
