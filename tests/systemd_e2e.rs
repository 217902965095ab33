//! tcpmuxd under a real systemd: tests/systemd-e2e.sh boots systemd in a
//! throw-away container and checks the shipped units as a user would. This
//! test stages the built binaries, units/ and packaging/ for it and runs it.
//!
//! It also installs the Debian package and upgrades it to a newer build:
//! target/debian/tcpmuxd_VERSION-1_ARCH.deb and target/debian/upgrade/*.deb,
//! as `packaging/build-deb` and `packaging/build-deb --deb-revision 2
//! --output target/debian/upgrade/` make them (.ci/run does). Without them
//! those checks are left out, except under CI.
//!
//! Booting systemd needs root and systemd-nspawn. Without them the test is
//! skipped, except when `CI` is set: CI must run it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/systemd-e2e.sh");
const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/units");
const PACKAGING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging");
const DAEMON: &str = env!("CARGO_BIN_EXE_tcpmuxd");
const CLIENT: &str = env!("CARGO_BIN_EXE_tcpmux");
const MSEND: &str = env!("CARGO_BIN_EXE_msend");
const DEBIAN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/debian");
/// Where the debootstrapped root file system of the package checks is kept
/// between runs.
const ROOTFS_CACHE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/bookworm-rootfs.tar");

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

    let mut script = Command::new("bash");
    script.arg(SCRIPT).arg(stage.path());
    match packages() {
        Some((deb, newer)) => {
            script
                .env("E2E_DEB", deb)
                .env("E2E_DEB_NEWER", newer)
                .env("E2E_ROOTFS", ROOTFS_CACHE);
        }
        None if under_ci() => panic!(
            "the package checks must run under CI, but {DEBIAN}/ lacks \
             tcpmuxd_{}-1_*.deb or upgrade/tcpmuxd_*.deb (packaging/build-deb makes them)",
            env!("CARGO_PKG_VERSION")
        ),
        None => {
            let _ = writeln!(
                std::io::stderr(),
                "package checks left out: no packages in {DEBIAN}/ (packaging/build-deb)"
            );
        }
    }
    // The script's output is streamed as it runs, not captured.
    let status = script.status().expect("run bash tests/systemd-e2e.sh");
    match status.code() {
        Some(0) => {}
        Some(EXIT_SKIP) => skip("tests/systemd-e2e.sh cannot boot systemd here (reason above)"),
        _ => panic!("tests/systemd-e2e.sh failed ({status}): see the FAIL lines above"),
    }
}

/// The package of this version and the newer build to upgrade to.
fn packages() -> Option<(PathBuf, PathBuf)> {
    let first = |dir: &Path, prefix: &str| {
        let mut found: Vec<PathBuf> = fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".deb"))
            })
            .collect();
        found.sort();
        found.pop()
    };
    let version = env!("CARGO_PKG_VERSION");
    let deb = first(Path::new(DEBIAN), &format!("tcpmuxd_{version}-1_"))?;
    let newer = first(&Path::new(DEBIAN).join("upgrade"), "tcpmuxd_")?;
    Some((deb, newer))
}

fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

fn skip(why: &str) {
    if under_ci() {
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
