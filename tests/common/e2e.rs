//! What the tests that boot a real systemd share (tests/systemd_e2e.rs,
//! tests/systemd_warm_e2e.rs): staging the files their script needs, running
//! it, and the skip rules. Booting systemd needs root and systemd-nspawn;
//! without them the test is skipped, except when `CI` is set: CI must run it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

/// The script's exit status when systemd cannot be booted here.
const EXIT_SKIP: i32 = 77;

/// One end-to-end test: what it is called in messages, and its script.
pub struct Test {
    /// "the systemd end-to-end test"
    pub name: &'static str,
    /// Relative to the repository, "tests/systemd-e2e.sh".
    pub script: &'static str,
}

impl Test {
    /// Whether systemd can be booted here; skips the test when not.
    pub fn can_boot(&self) -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        self.skip("booting systemd in a container needs root");
        false
    }

    /// A staging directory for the script: `bin/` with `binaries` (name,
    /// path of the build) and copies of the repository's directories `dirs`.
    /// A copy, not the build directory: a rebuild during the run must not
    /// change the binaries under test.
    pub fn stage(&self, binaries: &[(&str, &str)], dirs: &[&str]) -> TempDir {
        let stage = tempfile::tempdir().expect("create a staging directory");
        let bin = stage.path().join("bin");
        fs::create_dir(&bin).expect("create STAGE/bin");
        for (name, built) in binaries {
            fs::copy(built, bin.join(name)).unwrap_or_else(|e| panic!("stage {name}: {e}"));
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        for dir in dirs {
            copy_dir(&repo.join(dir), &stage.path().join(dir));
        }
        // Seen from inside the container, where tcpmuxd has no capabilities.
        fs::set_permissions(stage.path(), fs::Permissions::from_mode(0o755))
            .expect("make the staging directory readable");
        stage
    }

    /// `bash SCRIPT STAGE`, to add to and then [`Test::run`].
    pub fn command(&self, stage: &Path) -> Command {
        let mut script = Command::new("bash");
        script
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(self.script))
            .arg(stage);
        script
    }

    /// Runs the script, its output streamed as it runs, not captured; panics
    /// when a check failed, and skips when it cannot boot systemd.
    pub fn run(&self, mut script: Command) {
        let script_name = self.script;
        let status = script
            .status()
            .unwrap_or_else(|e| panic!("run bash {script_name}: {e}"));
        match status.code() {
            Some(0) => {}
            Some(EXIT_SKIP) => self.skip(&format!(
                "{script_name} cannot boot systemd here (reason above)"
            )),
            _ => panic!("{script_name} failed ({status}): see the FAIL lines above"),
        }
    }

    fn skip(&self, why: &str) {
        if under_ci() {
            panic!("{} must run under CI, but: {why}", self.name);
        }
        // Straight to stderr: libtest would hide eprintln! of a passing test.
        let _ = writeln!(std::io::stderr(), "skipped: {why}");
    }
}

pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
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
