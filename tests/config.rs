//! `tcpmuxd --check` on configurations an administrator gets wrong: the
//! real binary, its messages and exit status.

mod common;

use common::DAEMON;
use std::path::Path;
use std::process::{Command, Output};

fn check(dir: &Path) -> Output {
    Command::new(DAEMON)
        .arg("--config")
        .arg(dir.join("tcpmuxd.toml"))
        .arg("--check")
        .output()
        .expect("run tcpmuxd --check")
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const ECHO: &str = "[[service]]\nname = \"echo\"\ncommand = [\"/bin/cat\"]\n";

#[test]
fn a_duplicate_service_names_both_places_and_how_names_compare() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "tcpmuxd.toml", &format!("# main\n{ECHO}"));
    write(
        dir.path(),
        "conf.d/50-echo.toml",
        &ECHO.replace("echo\"", "ECHO\""),
    );
    let out = check(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("conf.d/50-echo.toml: line 1: service \"ECHO\" is already defined in "),
        "{stderr}"
    );
    assert!(stderr.contains("tcpmuxd.toml line 2"), "{stderr}");
    assert!(stderr.contains("without regard to case"), "{stderr}");
}

#[test]
fn a_value_out_of_range_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "tcpmuxd.toml",
        &format!("[tcpmux]\nname_timeout = \"1h\"\n\n{ECHO}"),
    );
    let out = check(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("tcpmuxd.toml: line 2: [tcpmux] name_timeout: 1h is out of range"),
        "{stderr}"
    );
}

#[test]
fn a_dropin_that_is_not_toml_is_named_in_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "tcpmuxd.toml", ECHO);
    write(
        dir.path(),
        "conf.d/50-date.conf",
        "[[service]]\nname = \"date\"\n",
    );
    write(dir.path(), "conf.d/.50-date.toml.swp", "editor state");
    let out = check(dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning: "), "{stderr}");
    assert!(
        stderr
            .contains("conf.d/50-date.conf: ignored: only files whose names end in .toml are read"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(".swp"),
        "hidden files are an editor's: {stderr}"
    );
}
