//! How every child of tcpmuxd starts, a session's program or MSP's
//! delivery command: in a session of its own with no controlling terminal,
//! with exactly the environment given, in `/`. (Descriptors beyond 0, 1 and
//! 2 are close-on-exec from startup on: see [`crate::startup`].)

use std::ffi::CString;
use std::os::unix::process::CommandExt;

/// Sets `cmd` up to run `command` (program path, then arguments) with
/// only `environment`. Stdio, user and group are the caller's to set.
pub fn prepare<'a>(
    cmd: &mut std::process::Command,
    command: &[String],
    environment: impl Iterator<Item = (&'a str, String)>,
) -> Result<(), String> {
    let image = ExecImage::new(command, environment)?;
    cmd.current_dir("/");
    // SAFETY: the closure runs between fork and exec and calls only
    // setsid(2) and execve(2), both async-signal-safe, on memory made
    // before the fork.
    unsafe {
        cmd.pre_exec(move || image.exec());
    }
    Ok(())
}

/// A program's path, arguments and environment as C arrays, made before the
/// fork so that the child does nothing but start a session and execve.
///
/// The child execs here rather than through std: std's execvp would run a
/// file the kernel cannot execute (ENOEXEC) with /bin/sh, where execve
/// fails and the client is told `-`.
struct ExecImage {
    path: CString,
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into `_strings` and `path`, owned by the same
// value and never changed after `new`.
unsafe impl Send for ExecImage {}
// SAFETY: as above; nothing is mutated through a shared reference.
unsafe impl Sync for ExecImage {}

impl ExecImage {
    fn new<'a>(
        command: &[String],
        environment: impl Iterator<Item = (&'a str, String)>,
    ) -> Result<Self, String> {
        let c = |s: String| {
            CString::new(s)
                .map_err(|_| "an argument or variable contains a NUL character".to_string())
        };
        let path = c(command[0].clone())?;
        let args: Vec<CString> = command.iter().cloned().map(c).collect::<Result<_, _>>()?;
        let vars: Vec<CString> = environment
            .map(|(k, v)| c(format!("{k}={v}")))
            .collect::<Result<_, _>>()?;
        let pointers = |strings: &[CString]| {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect::<Vec<_>>()
        };
        let argv = pointers(&args);
        let envp = pointers(&vars);
        let mut strings = args;
        strings.extend(vars);
        Ok(ExecImage {
            path,
            _strings: strings,
            argv,
            envp,
        })
    }

    /// In the child: a session and process group of its own, and so no
    /// controlling terminal (a program must not reach the terminal tcpmuxd
    /// was started from, as with TIOCSTI, nor get its signals); then the
    /// program. Returns only on failure.
    fn exec(&self) -> std::io::Result<()> {
        rustix::process::setsid()?;
        // SAFETY: NUL-terminated arrays of pointers to NUL-terminated
        // strings, all alive as long as `self`.
        unsafe { libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
        Err(std::io::Error::last_os_error())
    }
}
