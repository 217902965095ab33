//! Delivery to a user's terminal, as write(1) does it: find the user's
//! terminals in the login records, honour `mesg n` (the terminal's
//! group-write bit), write a header line and the text.
//!
//! Terminals are only ever those the login records name for the user; a
//! terminal name from the network never becomes a path by itself.

use super::message::decode;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The system console, for messages without a recipient.
pub const CONSOLE: &str = "/dev/console";

/// Permission bit that `mesg y` sets on a terminal.
const GROUP_WRITE: u32 = 0o020;

/// One login: a user on a terminal (its line, as "pts/3" or "tty1").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub line: String,
}

impl Login {
    /// A login on a terminal; None for sessions without one (graphical,
    /// or a line that would lead out of /dev).
    pub fn new(user: String, line: String) -> Option<Login> {
        let line = line
            .strip_prefix("/dev/")
            .map(str::to_string)
            .unwrap_or(line);
        (!user.is_empty() && valid_line(&line)).then_some(Login { user, line })
    }
}

/// The user logins in a utmp file.
pub fn read_logins(path: &Path) -> Result<Vec<Login>, String> {
    let data = match std::fs::read(path) {
        Ok(data) => data,
        // No login records: nobody is logged in.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let size = std::mem::size_of::<libc::utmpx>();
    let mut logins = Vec::new();
    for record in data.chunks_exact(size) {
        // SAFETY: `record` holds exactly one utmpx; every bit pattern is a
        // valid value of its integer and char-array fields.
        let entry: libc::utmpx = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
        if entry.ut_type != libc::USER_PROCESS {
            continue;
        }
        let text = |chars: &[libc::c_char]| {
            let bytes: Vec<u8> = chars
                .iter()
                .map(|&c| c as u8)
                .take_while(|&b| b != 0)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        };
        if let Some(login) = Login::new(text(&entry.ut_user), text(&entry.ut_line)) {
            logins.push(login);
        }
    }
    Ok(logins)
}

/// A terminal line as login records hold it: "pts/3", "tty1"; never a way
/// out of /dev.
fn valid_line(line: &str) -> bool {
    !line.is_empty()
        && !line.starts_with('/')
        && line
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && line
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | ':'))
}

/// The terminals to write to for `recipient` and `terminal` ("" = the most
/// recently used one, "*" = all, else that one).
pub fn choose_terminals(
    logins: &[Login],
    recipient: &str,
    terminal: &str,
) -> Result<Vec<PathBuf>, String> {
    let mine: Vec<&Login> = logins
        .iter()
        .filter(|l| l.user.eq_ignore_ascii_case(recipient))
        .collect();
    if mine.is_empty() {
        return Err(format!("{recipient} is not logged in"));
    }
    let wanted = terminal.strip_prefix("/dev/").unwrap_or(terminal);
    let named: Vec<&Login> = match wanted {
        "" | "*" => mine,
        t => mine
            .into_iter()
            .filter(|l| l.line.eq_ignore_ascii_case(t))
            .collect(),
    };
    if named.is_empty() {
        return Err(format!("{recipient} is not logged in on {terminal}"));
    }
    let mut open: Vec<(PathBuf, i64)> = named
        .iter()
        .map(|l| PathBuf::from("/dev").join(&l.line))
        .filter_map(|p| {
            let meta = std::fs::metadata(&p).ok()?;
            (meta.mode() & GROUP_WRITE != 0).then_some((p, meta.atime()))
        })
        .collect();
    if open.is_empty() {
        return Err(format!("{recipient} has messages disabled"));
    }
    open.sort_by_key(|t| std::cmp::Reverse(t.1));
    open.dedup_by(|a, b| a.0 == b.0);
    if wanted.is_empty() {
        open.truncate(1);
    }
    Ok(open.into_iter().map(|(p, _)| p).collect())
}

/// What appears on the terminal: a header like write(1)'s, the text with
/// CRLF line ends, and an end marker, in UTF-8 (the text decoded as
/// [`decode`] does it).
pub fn render(sender: &str, host: &str, sender_terminal: &str, when: &str, text: &[u8]) -> Vec<u8> {
    let sender = if sender.is_empty() { "someone" } else { sender };
    let on = if sender_terminal.is_empty() {
        String::new()
    } else {
        format!(" on {sender_terminal}")
    };
    let mut out = format!("\r\n\x07Message from {sender}@{host}{on} at {when} ...\r\n");
    let text = decode(text);
    for line in text.split('\n') {
        out.push_str(line.trim_end_matches('\r'));
        out.push_str("\r\n");
    }
    out.push_str("EOF\r\n");
    out.into_bytes()
}

/// Writes `bytes` to each terminal; succeeds when at least one took it.
pub fn write_terminals(terminals: &[PathBuf], bytes: &[u8]) -> Result<usize, String> {
    let mut written = 0;
    let mut last_error = String::from("no terminal");
    for path in terminals {
        let result = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(path)
            .and_then(|mut f| f.write_all(bytes));
        match result {
            Ok(()) => written += 1,
            Err(e) => last_error = format!("{}: {e}", path.display()),
        }
    }
    if written == 0 {
        Err(format!("cannot write to the terminal: {last_error}"))
    } else {
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_never_leave_dev() {
        assert!(valid_line("pts/3") && valid_line("tty1"));
        for bad in [
            "",
            "/etc/passwd",
            "../etc/passwd",
            "pts/../../etc",
            "pts//1",
            "tty 1",
        ] {
            assert!(!valid_line(bad), "{bad}");
        }
    }

    #[test]
    fn not_logged_in_and_wrong_terminal() {
        let logins = vec![Login {
            user: "alice".into(),
            line: "pts/999999".into(),
        }];
        assert_eq!(
            choose_terminals(&logins, "bob", "").unwrap_err(),
            "bob is not logged in"
        );
        assert_eq!(
            choose_terminals(&logins, "alice", "tty7").unwrap_err(),
            "alice is not logged in on tty7"
        );
        // Listed, but no such device: treated as refusing.
        assert!(
            choose_terminals(&logins, "ALICE", "*")
                .unwrap_err()
                .contains("disabled")
        );
    }

    #[test]
    fn rendering() {
        let out = render(
            "sandy",
            "192.0.2.1",
            "console",
            "12:00",
            b"Hi\r\nHow about lunch?\ncaf\xe9",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Message from sandy@192.0.2.1 on console at 12:00"));
        assert!(
            text.ends_with("Hi\r\nHow about lunch?\r\ncafé\r\nEOF\r\n"),
            "{text:?}"
        );
        // UTF-8 stays UTF-8: not taken for ISO 8859-1 and encoded twice.
        let out = render("s", "h", "", "t", "caf\u{e9} \u{20ac}".as_bytes());
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("caf\u{e9} \u{20ac}\r\nEOF\r\n"), "{text:?}");
    }
}
