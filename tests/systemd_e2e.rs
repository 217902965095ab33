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

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::e2e::{Test, under_ci};

const E2E: Test = Test {
    name: "the systemd end-to-end test",
    script: "tests/systemd-e2e.sh",
};
const DEBIAN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/debian");
/// Where the debootstrapped root file system of the package checks is kept
/// between runs.
const ROOTFS_CACHE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/bookworm-rootfs.tar");

#[test]
fn systemd_end_to_end() {
    if !E2E.can_boot() {
        return;
    }
    let binaries = [
        ("tcpmuxd", env!("CARGO_BIN_EXE_tcpmuxd")),
        ("tcpmux", env!("CARGO_BIN_EXE_tcpmux")),
        ("msend", env!("CARGO_BIN_EXE_msend")),
    ];
    let stage = E2E.stage(&binaries, &["units", "packaging"]);
    let mut script = E2E.command(stage.path());
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
    E2E.run(script);
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
