//! Warm session units under a real systemd: tests/systemd-e2e-warm.sh boots
//! systemd in a throw-away container and checks them as a user would. This
//! test stages the built binaries and units/ for it and runs it.
//!
//! Booting systemd needs root and systemd-nspawn. Without them the test is
//! skipped, except when `CI` is set: CI must run it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/systemd-e2e-warm.sh");
const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/units");
const DAEMON: &str = env!("CARGO_BIN_EXE_tcpmuxd");
const CLIENT: &str = env!("CARGO_BIN_EXE_tcpmux");
const HELPER: &str = env!("CARGO_BIN_EXE_tcpmux-warm");

/// The script's exit status when systemd cannot be booted here.
const EXIT_SKIP: i32 = 77;

#[test]
fn warm_units_under_systemd() {
    if !rustix::process::geteuid().is_root() {
        return skip("booting systemd in a container needs root");
    }
    let stage = tempfile::tempdir().expect("create a staging directory");
    let bin = stage.path().join("bin");
    fs::create_dir(&bin).expect("create STAGE/bin");
    fs::copy(DAEMON, bin.join("tcpmuxd")).expect("stage tcpmuxd");
    fs::copy(CLIENT, bin.join("tcpmux")).expect("stage tcpmux");
    fs::copy(HELPER, bin.join("tcpmux-warm")).expect("stage tcpmux-warm");
    let broken = bin.join("broken-elf");
    fs::write(&broken, b"\x7fELF and nothing a kernel could load").expect("stage broken-elf");
    fs::set_permissions(&broken, fs::Permissions::from_mode(0o755)).expect("chmod broken-elf");
    copy_dir(Path::new(UNITS), &stage.path().join("units"));
    fs::set_permissions(stage.path(), fs::Permissions::from_mode(0o755))
        .expect("make the staging directory readable");

    let status = Command::new("bash")
        .arg(SCRIPT)
        .arg(stage.path())
        .status()
        .expect("run bash tests/systemd-e2e-warm.sh");
    match status.code() {
        Some(0) => {}
        Some(EXIT_SKIP) => {
            skip("tests/systemd-e2e-warm.sh cannot boot systemd here (reason above)")
        }
        _ => panic!("tests/systemd-e2e-warm.sh failed ({status}): see the FAIL lines above"),
    }
}

fn skip(why: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("the warm units' end-to-end test must run under CI, but: {why}");
    }
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
