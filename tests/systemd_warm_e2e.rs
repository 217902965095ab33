//! Warm session units under a real systemd: tests/systemd-e2e-warm.sh boots
//! systemd in a throw-away container and checks them as a user would. This
//! test stages the built binaries and units/ for it and runs it.
//!
//! Booting systemd needs root and systemd-nspawn. Without them the test is
//! skipped, except when `CI` is set: CI must run it.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::e2e::Test;

const E2E: Test = Test {
    name: "the warm units' end-to-end test",
    script: "tests/systemd-e2e-warm.sh",
};

#[test]
fn warm_units_under_systemd() {
    if !E2E.can_boot() {
        return;
    }
    let binaries = [
        ("tcpmuxd", env!("CARGO_BIN_EXE_tcpmuxd")),
        ("tcpmux", env!("CARGO_BIN_EXE_tcpmux")),
        ("tcpmux-warm", env!("CARGO_BIN_EXE_tcpmux-warm")),
    ];
    let stage = E2E.stage(&binaries, &["units"]);
    let broken = stage.path().join("bin/broken-elf");
    fs::write(&broken, b"\x7fELF and nothing a kernel could load").expect("stage broken-elf");
    fs::set_permissions(&broken, fs::Permissions::from_mode(0o755)).expect("chmod broken-elf");
    E2E.run(E2E.command(stage.path()));
}
