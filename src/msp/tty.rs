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

/// What starts each row of the text on the terminal. Every row the
/// terminal shows then begins with characters tcpmuxd chose: the header's
/// "Message from", this mark, the indent of a folded header, or the end
/// marker "EOF"; no text can stand at column 0 and pass for a header or
/// for the end. A visible mark rather than an indent, because a reader
/// sees it at a glance, on an empty line too, and a text line that itself
/// begins with spaces cannot make it out of place; "|" is a quoting mark
/// without other meaning on a terminal (unlike "> ", a shell's prompt).
pub const TEXT_MARK: &str = "| ";

/// What starts each further row of a header too long for one row (a long
/// sender name or terminal): it stays apart from the text's mark.
const HEADER_INDENT: &str = "  ";

/// Most columns a field of the header that the peer chose (the sender's
/// name, the sender's terminal) takes on the terminal; a longer one is cut
/// and ends in [`CUT_MARK`]. Room for any real login name or terminal
/// name, while a header with a short sender still fits one row of 80
/// columns: `Message from NAME@ADDRESS on TERMINAL at TIME ...`.
pub const HEADER_FIELD_COLUMNS: usize = 32;

/// What ends a header field that was cut: one character that no field
/// can hold as it is shown (it is not ASCII, and not a letter or digit,
/// so [`header_field`] would replace it).
pub const CUT_MARK: char = '\u{2026}';

/// What stands in a header field for a character that is not visible on
/// its own: whitespace of any kind, controls, format characters (zero
/// width, bidirectional marks), anything beyond ASCII that is not a letter
/// or a digit.
const HIDDEN_MARK: char = '_';

/// The words of the header before the sender: what every header begins
/// with at column 0.
const HEADER_START: &str = "Message from ";

/// Terminal width assumed when the terminal does not say (a window size
/// of 0 columns).
pub const DEFAULT_COLUMNS: u16 = 80;

/// Narrowest width folded for: below it every row is folded as if the
/// terminal had this many columns (a header cannot fit anyway).
const MIN_COLUMNS: u16 = 16;

/// Columns between tab stops, as terminals set them.
const TAB_STOP: usize = 8;

/// Columns a character may take, never fewer than it does: ASCII one, and
/// anything else two, as wide East Asian characters take (folding a little
/// early is harmless; folding late would let the terminal wrap a row
/// itself and put text at column 0).
fn columns(c: char) -> usize {
    if c.is_ascii() { 1 } else { 2 }
}

/// How a character is shown: itself, or, for one that would move the
/// cursor or change what the terminal does, a visible stand-in. A bare
/// CR (which would let a line overwrite itself) shows as "^M", as `cat
/// -v` shows it; other C0 controls and DEL in the same caret notation;
/// C1 controls and bidirectional overrides as "<U+XXXX>". The checks of
/// [`super::message::check_content`] refuse all but CR before delivery;
/// this keeps the terminal safe whatever reaches it.
fn shown(c: char, out: &mut String) {
    match c {
        '\t' => out.push('\t'),
        '\u{0}'..='\u{1f}' => {
            out.push('^');
            out.push(char::from(b'@' + c as u8));
        }
        '\u{7f}' => out.push_str("^?"),
        '\u{80}'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
            out.push_str(&format!("<U+{:04X}>", u32::from(c)));
        }
        c => out.push(c),
    }
}

/// Cuts one line into rows of at most `width - 1` columns (the last column
/// stays free, so no terminal wraps or scrolls on its own), the first row
/// after `first`, the others after `rest`, each ended by CRLF. Tabs are
/// expanded to spaces, so the width of a row is known.
fn fold(line: &str, first: &str, rest: &str, width: usize, out: &mut String) {
    let limit = width.saturating_sub(1);
    let mut row = String::from(first);
    let mut used = first.len();
    // Whether the row holds more than its mark: a character wider than a
    // whole row goes on a row of its own rather than on none.
    let mut filled = false;
    let mut shown_char = String::new();
    for c in line.chars() {
        shown_char.clear();
        if c == '\t' {
            let to_stop = TAB_STOP - used % TAB_STOP;
            shown_char.extend(std::iter::repeat_n(' ', to_stop));
        } else {
            shown(c, &mut shown_char);
        }
        let wide: usize = shown_char.chars().map(columns).sum();
        if used + wide > limit && filled {
            out.push_str(&row);
            out.push_str("\r\n");
            row.clear();
            row.push_str(rest);
            used = rest.len();
            filled = false;
            if c == '\t' {
                // A tab at a row's end starts the next row: nothing to show.
                continue;
            }
        }
        row.push_str(&shown_char);
        used += wide;
        filled = true;
    }
    out.push_str(&row);
    out.push_str("\r\n");
}

/// A field of the header as the peer chose it, shown so that it cannot
/// imitate the header's own structure: every character that is not
/// visible on its own becomes [`HIDDEN_MARK`] (so no space from the peer
/// can separate words that read like "on console at ..."), and a field
/// wider than `most` columns is cut to end in [`CUT_MARK`] (never fewer
/// columns than the mark itself takes).
fn header_field(field: &str, most: usize) -> String {
    let most = most.max(columns(CUT_MARK));
    let visible = |c: char| {
        if c.is_ascii_graphic() || (!c.is_ascii() && c.is_alphanumeric()) {
            c
        } else {
            HIDDEN_MARK
        }
    };
    let whole: usize = field.chars().map(visible).map(columns).sum();
    if whole <= most {
        return field.chars().map(visible).collect();
    }
    let room = most - columns(CUT_MARK);
    let mut out = String::new();
    let mut used = 0;
    for c in field.chars().map(visible) {
        if used + columns(c) > room {
            break;
        }
        used += columns(c);
        out.push(c);
    }
    out.push(CUT_MARK);
    out
}

/// The rows of the header, `Message from SENDER@ADDRESS on TERMINAL at
/// TIME ...`, for a terminal `width` columns wide.
///
/// The sender's name and terminal are the peer's to choose, the address
/// (`host`) and the time tcpmuxd's. So that the first row always shows
/// the real address where a reader looks for the sender's host, the first
/// row is `Message from SENDER@ADDRESS` and the sender is cut to the room
/// the address leaves on it (at most [`HEADER_FIELD_COLUMNS`]); the rest
/// follows on that row when it fits, else on further rows after
/// [`HEADER_INDENT`], folded between its parts ("on TERMINAL", "at TIME
/// ..."). Both fields show no whitespace nor anything else invisible (see
/// [`header_field`]), so neither can hold words that read as a header of
/// its own, nor padding that pushes the address to a row of its own.
/// Only a terminal too narrow for `Message from …@` and the address
/// (fewer than 56 columns for the longest IPv6 address) folds the address
/// itself; its first row then still ends in `@` and the address's start.
fn header(
    sender: &str,
    host: &str,
    sender_terminal: &str,
    when: &str,
    width: usize,
) -> Vec<String> {
    let limit = width.saturating_sub(1);
    let wide = |s: &str| -> usize { s.chars().map(columns).sum() };
    let room = limit
        .saturating_sub(wide(HEADER_START) + 1 + wide(host))
        .min(HEADER_FIELD_COLUMNS);
    let sender = match sender {
        "" => "someone".to_string(),
        s => header_field(s, room),
    };
    let mut rows = Vec::new();
    let mut first = String::new();
    fold(
        &format!("{HEADER_START}{sender}@{host}"),
        "",
        HEADER_INDENT,
        width,
        &mut first,
    );
    rows.extend(first.split_terminator("\r\n").map(str::to_string));
    let mut parts = Vec::new();
    if !sender_terminal.is_empty() {
        parts.push(format!(
            "on {}",
            header_field(sender_terminal, HEADER_FIELD_COLUMNS)
        ));
    }
    parts.push(format!("at {when} ..."));
    for part in parts {
        match rows.last_mut() {
            Some(row) if wide(row) + 1 + wide(&part) <= limit => {
                row.push(' ');
                row.push_str(&part);
            }
            _ => {
                let mut more = String::new();
                fold(&part, HEADER_INDENT, HEADER_INDENT, width, &mut more);
                rows.extend(more.split_terminator("\r\n").map(str::to_string));
            }
        }
    }
    rows
}

/// What appears on a terminal `columns` wide (0: not known): a header like
/// write(1)'s, each line of the text after [`TEXT_MARK`], and the end
/// marker `EOF`, each row ended by CRLF and no longer than the terminal
/// is wide, in UTF-8 (the text decoded as [`decode`] does it). A line ends
/// at LF, with or without a CR before it; a CR anywhere else shows as
/// "^M". A text of no lines shows as one empty line. `host` is the
/// address tcpmuxd saw the message come from; `sender` and
/// `sender_terminal` are the peer's and are shown as [`header`] says.
pub fn render(
    sender: &str,
    host: &str,
    sender_terminal: &str,
    when: &str,
    text: &[u8],
    columns: u16,
) -> Vec<u8> {
    let width = usize::from(match columns {
        0 => DEFAULT_COLUMNS,
        n => n.max(MIN_COLUMNS),
    });
    // The bell goes before the header's first row, taking no column.
    let mut out = String::from("\r\n\x07");
    for row in header(sender, host, sender_terminal, when, width) {
        out.push_str(&row);
        out.push_str("\r\n");
    }
    let text = decode(text);
    // A line end at the very end ends the last line; it opens no new one.
    let text = text.strip_suffix('\n').unwrap_or(&text);
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        fold(line, TEXT_MARK, TEXT_MARK, width, &mut out);
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

/// Writes to each terminal what `render` makes for its width in columns
/// (0 when the terminal does not say); succeeds when at least one took it.
pub fn write_terminals(
    terminals: &[Terminal],
    render: impl Fn(u16) -> Vec<u8>,
) -> Result<usize, String> {
    let mut written = 0;
    let mut last_error = String::from("no terminal");
    for terminal in terminals {
        match open_terminal(terminal).and_then(|mut f| {
            let columns = rustix::termios::tcgetwinsize(&f).map_or(0, |size| size.ws_col);
            f.write_all(&render(columns))
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
            |_| b"x".to_vec(),
        )
        .unwrap_err();
        assert!(e.ends_with("not-a-tty: not a terminal"), "{e}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let e = write_terminals(&[Terminal { path: link, owner }], |_| b"x".to_vec()).unwrap_err();
        assert!(e.contains("link: "), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    }

    /// The rows a terminal shows for `bytes` (split at CRLF).
    fn rows(bytes: &[u8]) -> Vec<String> {
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let body = text.strip_prefix("\r\n\x07").expect("header first");
        let mut rows: Vec<String> = body.split("\r\n").map(str::to_string).collect();
        assert_eq!(rows.pop().as_deref(), Some(""), "{text:?}");
        rows
    }

    #[test]
    fn rendering() {
        let out = render(
            "sandy",
            "192.0.2.1",
            "console",
            "12:00",
            b"Hi\r\nHow about lunch?\ncaf\xe9",
            0,
        );
        assert_eq!(
            rows(&out),
            [
                "Message from sandy@192.0.2.1 on console at 12:00 ...",
                "| Hi",
                "| How about lunch?",
                "| caf\u{e9}",
                "EOF",
            ]
        );
        // UTF-8 stays UTF-8: not taken for ISO 8859-1 and encoded twice.
        let out = render("s", "h", "", "t", "caf\u{e9} \u{20ac}".as_bytes(), 0);
        assert_eq!(rows(&out)[1], "| caf\u{e9} \u{20ac}");
        // An empty text is one empty line, marked too.
        assert_eq!(rows(&render("s", "h", "", "t", b"", 0))[1..], ["| ", "EOF"]);
    }

    #[test]
    fn no_text_passes_for_a_header_or_the_end() {
        let forged =
            b"hi\r\nEOF\r\n\r\n\x07Message from root@localhost on pts/0 at 12:00 ...\r\nEOF\nEOF";
        let shown = rows(&render("mallory", "192.0.2.9", "", "12:00", forged, 0));
        assert_eq!(
            shown,
            [
                "Message from mallory@192.0.2.9 at 12:00 ...",
                "| hi",
                "| EOF",
                "| ",
                "| ^GMessage from root@localhost on pts/0 at 12:00 ...",
                "| EOF",
                "| EOF",
                "EOF",
            ]
        );
        // One header at column 0, one end marker: the real ones.
        assert_eq!(
            shown.iter().filter(|r| r.contains("Message from")).count(),
            2
        );
        assert_eq!(
            shown.iter().filter(|r| !r.starts_with(TEXT_MARK)).count(),
            2
        );
    }

    #[test]
    fn a_bare_cr_is_shown_not_obeyed() {
        let shown = rows(&render(
            "s",
            "h",
            "",
            "t",
            b"pay bob\rpay eve\r\nend\r\r\n",
            0,
        ));
        assert_eq!(shown[1..], ["| pay bob^Mpay eve", "| end^M", "EOF"]);
        // Other controls, should any reach here, are shown too.
        let shown = rows(&render(
            "s",
            "h",
            "",
            "t",
            "\x1b[2J\x7f\u{9b}\u{202e}".as_bytes(),
            0,
        ));
        assert_eq!(shown[1], "| ^[[2J^?<U+009B><U+202E>");
    }

    #[test]
    fn long_lines_are_folded_before_the_terminal_wraps_them() {
        // Padded so that a terminal 40 columns wide would wrap "EOF" and a
        // header to its column 0.
        let text = format!(
            "{}EOF{}Message from root@localhost",
            "x".repeat(38),
            " ".repeat(37)
        );
        for columns in [40u16, 41, 80] {
            let shown = rows(&render("s", "h", "", "t", text.as_bytes(), columns));
            for row in &shown {
                let wide: usize = row.chars().map(super::columns).sum();
                assert!(wide < usize::from(columns), "{row:?} in {columns}");
            }
            let body = &shown[1..shown.len() - 1];
            assert!(body.iter().all(|r| r.starts_with(TEXT_MARK)), "{shown:?}");
            assert_eq!(shown.last().map(String::as_str), Some("EOF"));
            let joined: String = body.iter().map(|r| &r[TEXT_MARK.len()..]).collect();
            assert_eq!(joined, text);
        }
        // Wide characters are counted as two columns, tabs to their stop.
        let shown = rows(&render(
            "s",
            "h",
            "",
            "t",
            "\u{4e2d}".repeat(20).as_bytes(),
            20,
        ));
        // (The header takes two rows at this width.)
        assert_eq!(
            shown[2..4],
            [
                "| \u{4e2d}\u{4e2d}\u{4e2d}\u{4e2d}\u{4e2d}\u{4e2d}\u{4e2d}\u{4e2d}",
                "| \u{4e2d}\u{4e2d}\u{4e2d}\u{4e2d}\u{4e2d}\u{4e2d}\u{4e2d}\u{4e2d}"
            ]
        );
        let shown = rows(&render("s", "h", "", "t", b"a\tb", 0));
        assert_eq!(shown[1], "| a     b");
        // A long sender is cut to leave the address on the first row; the
        // rest of the header goes on, indented.
        let sender = format!("{}EOF", "y".repeat(40));
        let shown = rows(&render(&sender, "h", "", "t", b"hi", 30));
        assert!(shown[0].starts_with("Message from y"), "{shown:?}");
        assert!(shown[0].ends_with(&format!("{CUT_MARK}@h")), "{shown:?}");
        assert_eq!(shown[1..], ["  at t ...", "| hi", "EOF"]);
        // Absurdly narrow terminals are folded for as if MIN_COLUMNS wide.
        let shown = rows(&render("s", "h", "", "t", "z".repeat(40).as_bytes(), 1));
        let first = shown.iter().find(|r| r.starts_with(TEXT_MARK)).unwrap();
        assert_eq!(first.len(), usize::from(MIN_COLUMNS) - 1);
    }

    /// The sender of the reproduction: a whole header of its own, padded
    /// so that folding would push the real address to a second row.
    fn forged_sender() -> String {
        format!(
            "root@10.9.9.9 on console at 2026-12-06T05:42:56Z ...{}",
            " ".repeat(40)
        )
    }

    #[test]
    fn a_sender_cannot_push_the_real_address_off_the_first_row() {
        for columns in [0u16, 60, 80, 132] {
            let shown = rows(&render(
                &forged_sender(),
                "127.0.0.1",
                "",
                "2026-12-06T05:43:17Z",
                b"forged addr?",
                columns,
            ));
            let first = &shown[0];
            assert!(
                first.starts_with("Message from root@10.9.9.9_on_"),
                "{shown:?}"
            );
            assert!(first.contains("@127.0.0.1"), "{shown:?}");
            // No space from the peer: nothing reads like a header's words.
            assert!(!first.contains(" on console"), "{shown:?}");
            assert!(shown.iter().all(|r| !r.contains("Z ...@")), "{shown:?}");
            assert_eq!(shown[shown.len() - 2..], ["| forged addr?", "EOF"]);
        }
        // The sender cut visibly, the header folded between its parts.
        let shown = rows(&render(
            &forged_sender(),
            "127.0.0.1",
            "",
            "2026-12-06T05:43:17Z",
            b"x",
            80,
        ));
        assert_eq!(
            shown,
            [
                format!("Message from root@10.9.9.9_on_console_at_20{CUT_MARK}@127.0.0.1"),
                format!("{HEADER_INDENT}at 2026-12-06T05:43:17Z ..."),
                "| x".to_string(),
                "EOF".to_string(),
            ]
        );
    }

    #[test]
    fn a_very_long_sender_is_cut_at_a_named_length() {
        let sender = "y".repeat(500);
        let shown = rows(&render(&sender, "2001:db8::1", "", "t", b"hi", 0));
        let cut = format!("{}{CUT_MARK}", "y".repeat(HEADER_FIELD_COLUMNS - 2));
        assert_eq!(shown[0], format!("Message from {cut}@2001:db8::1 at t ..."));
        assert_eq!(shown[1..], ["| hi", "EOF"]);
        // The longest address and a terminal too narrow for all of it:
        // the sender gives way, the address begins on the first row.
        let host = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        for columns in [24u16, 40, 55, 56, 60] {
            let shown = rows(&render(&sender, host, "", "t", b"hi", columns));
            let first = &shown[0];
            assert!(first.starts_with("Message from "), "{shown:?}");
            assert!(first.contains("@ffff"), "{columns}: {shown:?}");
            if usize::from(columns) > "Message from ".len() + 3 + host.len() {
                assert!(first.contains(&format!("@{host}")), "{columns}: {shown:?}");
            }
            for row in &shown {
                let wide: usize = row.chars().map(super::columns).sum();
                assert!(wide < usize::from(columns), "{row:?} in {columns}");
                assert!(
                    row.starts_with("Message from ")
                        || row.starts_with(HEADER_INDENT)
                        || row.starts_with(TEXT_MARK)
                        || row == "EOF",
                    "{row:?}"
                );
            }
        }
    }

    #[test]
    fn a_sender_terminal_shows_no_spaces_and_is_cut() {
        let shown = rows(&render(
            "sandy",
            "192.0.2.1",
            "pts/0 at 12:00 ...\u{a0}\u{200b}\u{202e}x",
            "12:01",
            b"hi",
            0,
        ));
        assert_eq!(
            shown[0],
            "Message from sandy@192.0.2.1 on pts/0_at_12:00_...___x at 12:01 ..."
        );
        let shown = rows(&render(
            "sandy",
            "192.0.2.1",
            &"t ".repeat(100),
            "12:01",
            b"",
            0,
        ));
        let cut = format!("{}{CUT_MARK}", "t_".repeat(15));
        assert_eq!(
            shown[0],
            format!("Message from sandy@192.0.2.1 on {cut} at 12:01 ...")
        );
        // A header too long for one row folds between its parts, never
        // inside one that fits a row.
        let shown = rows(&render(
            "sandy",
            "192.0.2.1",
            &"t".repeat(100),
            "12:01",
            b"",
            60,
        ));
        assert_eq!(
            shown[..2],
            [
                "Message from sandy@192.0.2.1".to_string(),
                format!(
                    "{HEADER_INDENT}on {}{CUT_MARK} at 12:01 ...",
                    "t".repeat(30)
                ),
            ]
        );
    }
}
