//! Delivery to a user's terminal, as write(1) does it: find the user's
//! terminals in the login records, honour `mesg n` (the terminal's
//! group-write bit), write a header line and the text.
//!
//! Terminals are only ever those the login records name for the user; a
//! terminal name from the network never becomes a path by itself. What is
//! opened must then be, on the open descriptor, a terminal device owned by
//! the recipient: a login record pointing elsewhere (a regular file, a
//! symbolic link, someone else's terminal) gets nothing written.

use super::message::decode;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
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
    /// The user's id when the source knows it (logind does; utmp only
    /// has the name).
    pub uid: Option<u32>,
}

impl Login {
    /// A login on a terminal; None for sessions without one (graphical,
    /// or a line that would lead out of /dev).
    pub fn new(user: String, line: String) -> Option<Login> {
        let line = line
            .strip_prefix("/dev/")
            .map(str::to_string)
            .unwrap_or(line);
        (!user.is_empty() && valid_line(&line)).then_some(Login {
            user,
            line,
            uid: None,
        })
    }

    pub fn with_uid(self, uid: u32) -> Login {
        Login {
            uid: Some(uid),
            ..self
        }
    }
}

/// The logins of systemd-logind's sessions and of the login records
/// together, one per terminal line: logind knows the sessions it started,
/// utmp also the terminals libutempter records (tmux and screen panes,
/// xterms), which write(1) finds too. Where both name a line, logind's
/// entry is kept; within one source, the first.
pub fn union(logind: Vec<Login>, utmp: Vec<Login>) -> Vec<Login> {
    let mut seen = std::collections::HashSet::new();
    logind
        .into_iter()
        .chain(utmp)
        .filter(|l| seen.insert(l.line.clone()))
        .collect()
}

/// The user logins in a utmp file.
pub fn read_logins(path: &Path) -> Result<Vec<Login>, String> {
    match std::fs::read(path) {
        Ok(data) => Ok(parse_utmp(&data)),
        // No login records: nobody is logged in.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The user logins in the contents of a utmp file (records of other
/// kinds, and a cut-off last record, are skipped).
pub fn parse_utmp(data: &[u8]) -> Vec<Login> {
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
    logins
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

/// A terminal to write to, and whose it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminal {
    pub path: PathBuf,
    /// The recipient's user id; None for the console (a message without
    /// a recipient).
    pub owner: Option<u32>,
}

/// The user id of a login, from the record or the user database.
fn uid_of(login: &Login) -> Option<u32> {
    login.uid.or_else(|| {
        nix::unistd::User::from_name(&login.user)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    })
}

/// The terminals to write to for `recipient` and `terminal` ("" = the most
/// recently used one, "*" = all, else that one): character devices whose
/// owner has messages enabled.
pub fn choose_terminals(
    logins: &[Login],
    recipient: &str,
    terminal: &str,
) -> Result<Vec<Terminal>, String> {
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
    // Terminal devices of the recipient's own (a link is not followed).
    // Checked again on the open descriptor: this choice is only a guess.
    let theirs: Vec<(Terminal, std::fs::Metadata)> = named
        .iter()
        .filter_map(|l| {
            let path = PathBuf::from("/dev").join(&l.line);
            let meta = std::fs::symlink_metadata(&path).ok()?;
            let uid = uid_of(l)?;
            (meta.file_type().is_char_device() && meta.uid() == uid).then_some((
                Terminal {
                    path,
                    owner: Some(uid),
                },
                meta,
            ))
        })
        .collect();
    if theirs.is_empty() {
        return Err(format!("{recipient} has no terminal to write to"));
    }
    let mut open: Vec<(Terminal, i64)> = theirs
        .into_iter()
        .filter(|(_, meta)| meta.mode() & GROUP_WRITE != 0)
        .map(|(t, meta)| (t, meta.atime()))
        .collect();
    if open.is_empty() {
        return Err(format!("{recipient} has messages disabled"));
    }
    open.sort_by_key(|t| std::cmp::Reverse(t.1));
    open.dedup_by(|a, b| a.0.path == b.0.path);
    if wanted.is_empty() {
        open.truncate(1);
    }
    Ok(open.into_iter().map(|(t, _)| t).collect())
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

/// Opens a terminal for writing, never following a link, never making it
/// the controlling terminal, appending, without blocking; then checks the
/// open descriptor: a terminal device, owned by `owner` when given, with
/// messages enabled (group write).
fn open_terminal(terminal: &Terminal) -> Result<std::fs::File, String> {
    let path = terminal.path.display();
    // append(true) opens write-only with O_APPEND.
    let file = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(&terminal.path)
        .map_err(|e| format!("{path}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{path}: {e}"))?;
    if !meta.file_type().is_char_device() || !rustix::termios::isatty(&file) {
        return Err(format!("{path}: not a terminal"));
    }
    if terminal.owner.is_some_and(|uid| uid != meta.uid()) {
        return Err(format!("{path}: not the recipient's terminal"));
    }
    if terminal.owner.is_some() && meta.mode() & GROUP_WRITE == 0 {
        return Err(format!("{path}: messages disabled"));
    }
    Ok(file)
}

/// Writes `bytes` to each terminal; succeeds when at least one took it.
pub fn write_terminals(terminals: &[Terminal], bytes: &[u8]) -> Result<usize, String> {
    let mut written = 0;
    let mut last_error = String::from("no terminal");
    for terminal in terminals {
        match open_terminal(terminal).and_then(|mut f| {
            f.write_all(bytes)
                .map_err(|e| format!("{}: {e}", terminal.path.display()))
        }) {
            Ok(()) => written += 1,
            Err(e) => last_error = e,
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
            uid: Some(1000),
        }];
        assert_eq!(
            choose_terminals(&logins, "bob", "").unwrap_err(),
            "bob is not logged in"
        );
        assert_eq!(
            choose_terminals(&logins, "alice", "tty7").unwrap_err(),
            "alice is not logged in on tty7"
        );
        // Listed, but no such device.
        assert_eq!(
            choose_terminals(&logins, "ALICE", "*").unwrap_err(),
            "ALICE has no terminal to write to"
        );
    }

    /// A utmp file's contents with these (type, user, line) records.
    fn utmp(records: &[(libc::c_short, &str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(kind, user, line) in records {
            // SAFETY: utmpx is plain data; zero is valid for every field.
            let mut entry: libc::utmpx = unsafe { std::mem::zeroed() };
            entry.ut_type = kind;
            for (dst, src) in entry.ut_user.iter_mut().zip(user.bytes()) {
                *dst = src as libc::c_char;
            }
            for (dst, src) in entry.ut_line.iter_mut().zip(line.bytes()) {
                *dst = src as libc::c_char;
            }
            // SAFETY: viewing a plain struct as bytes.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(
                    (&entry as *const libc::utmpx).cast::<u8>(),
                    std::mem::size_of::<libc::utmpx>(),
                )
            });
        }
        out
    }

    fn login(user: &str, line: &str, uid: Option<u32>) -> Login {
        Login {
            user: user.into(),
            line: line.into(),
            uid,
        }
    }

    #[test]
    fn utmp_records_of_users_on_terminals_are_read() {
        let mut data = utmp(&[
            (libc::USER_PROCESS, "alice", "pts/1"),
            (libc::DEAD_PROCESS, "gone", "pts/2"),
            (libc::LOGIN_PROCESS, "LOGIN", "tty3"),
            (libc::USER_PROCESS, "bob", "/dev/pts/5"),
            (libc::USER_PROCESS, "eve", "../etc/passwd"),
            (libc::USER_PROCESS, "", "pts/6"),
        ]);
        // A record cut off at the end is ignored.
        data.extend_from_slice(&[0u8; 17]);
        assert_eq!(
            parse_utmp(&data),
            [login("alice", "pts/1", None), login("bob", "pts/5", None)]
        );
    }

    #[test]
    fn logind_and_utmp_together_one_entry_per_terminal() {
        // logind: a console login and an SSH session.
        let logind = vec![
            login("alice", "tty2", Some(1000)),
            login("alice", "pts/1", Some(1000)),
        ];
        // utmp: the SSH session again, and two tmux panes libutempter
        // recorded, which logind does not know.
        let utmp = parse_utmp(&utmp(&[
            (libc::USER_PROCESS, "alice", "pts/1"),
            (libc::USER_PROCESS, "alice", "pts/4"),
            (libc::USER_PROCESS, "bob", "pts/7"),
            (libc::USER_PROCESS, "mallory", "pts/7"),
        ]));
        assert_eq!(
            union(logind.clone(), utmp.clone()),
            [
                login("alice", "tty2", Some(1000)),
                login("alice", "pts/1", Some(1000)),
                login("alice", "pts/4", None),
                login("bob", "pts/7", None),
            ]
        );
        // Either source alone.
        assert_eq!(union(Vec::new(), utmp.clone()).len(), 3);
        assert_eq!(union(logind.clone(), Vec::new()), logind);
    }

    #[test]
    fn only_terminal_devices_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-tty");
        std::fs::write(&file, "keep").unwrap();
        let owner = Some(rustix::process::geteuid().as_raw());
        let e = write_terminals(
            &[Terminal {
                path: file.clone(),
                owner,
            }],
            b"x",
        )
        .unwrap_err();
        assert!(e.ends_with("not-a-tty: not a terminal"), "{e}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let e = write_terminals(&[Terminal { path: link, owner }], b"x").unwrap_err();
        assert!(e.contains("link: "), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
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
