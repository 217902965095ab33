//! tcpmuxd under a real systemd: tests/systemd-e2e.sh boots systemd in a
//! throw-away container and checks the shipped units as a user would. This
//! test stages the built binaries, units/ and packaging/ for it and runs it.
//!
//! Booting systemd needs root and systemd-nspawn. Without them the test is
//! skipped, except when `CI` is set: CI must run it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/systemd-e2e.sh");
const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/units");
const PACKAGING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging");
const DAEMON: &str = env!("CARGO_BIN_EXE_tcpmuxd");
const CLIENT: &str = env!("CARGO_BIN_EXE_tcpmux");
const MSEND: &str = env!("CARGO_BIN_EXE_msend");

/// The script's exit status when systemd cannot be booted here.
const EXIT_SKIP: i32 = 77;

#[test]
fn systemd_end_to_end() {
    if !rustix::process::geteuid().is_root() {
        return skip("booting systemd in a container needs root");
    }

    // A copy, not the build directory: a rebuild during the run must not
    // change the binaries under test.
    let stage = tempfile::tempdir().expect("create a staging directory");
    let bin = stage.path().join("bin");
    fs::create_dir(&bin).expect("create STAGE/bin");
    fs::copy(DAEMON, bin.join("tcpmuxd")).expect("stage tcpmuxd");
    fs::copy(CLIENT, bin.join("tcpmux")).expect("stage tcpmux");
    fs::copy(MSEND, bin.join("msend")).expect("stage msend");
    copy_dir(Path::new(UNITS), &stage.path().join("units"));
    copy_dir(Path::new(PACKAGING), &stage.path().join("packaging"));
    // Seen from inside the container, where tcpmuxd has no capabilities.
    fs::set_permissions(stage.path(), fs::Permissions::from_mode(0o755))
        .expect("make the staging directory readable");

    // The script's output is streamed as it runs, not captured.
    let status = Command::new("bash")
        .arg(SCRIPT)
        .arg(stage.path())
        .status()
        .expect("run bash tests/systemd-e2e.sh");
    match status.code() {
        Some(0) => {}
        Some(EXIT_SKIP) => skip("tests/systemd-e2e.sh cannot boot systemd here (reason above)"),
        _ => panic!("tests/systemd-e2e.sh failed ({status}): see the FAIL lines above"),
    }
}

fn skip(why: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("the systemd end-to-end test must run under CI, but: {why}");
    }
    // Straight to stderr: libtest would hide eprintln! of a passing test.
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    let entries = fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            copy_dir(&src, &dst);
        } else {
            fs::copy(&src, &dst)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", src.display(), dst.display()));
        }
    }
}
