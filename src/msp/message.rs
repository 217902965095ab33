//! Pure parsing of Message Send Protocol messages (RFC 1159 version A,
//! RFC 1312 version B): bytes in, a message or a precise error out.

/// Longest message, in octets, including the version octet and every NUL
/// (RFC 1312: "less than 512 octets").
pub const MAX_MESSAGE_LEN: usize = 511;

/// Longest cookie, in octets (RFC 1312).
pub const MAX_COOKIE_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// RFC 1159: recipient, terminal, message.
    A,
    /// RFC 1312: recipient, terminal, message, sender, sender's terminal,
    /// cookie, signature.
    B,
}

impl Version {
    pub fn from_octet(b: u8) -> Option<Version> {
        match b {
            b'A' => Some(Version::A),
            b'B' => Some(Version::B),
            _ => None,
        }
    }

    /// How many NUL-terminated parts follow the version octet.
    pub fn parts(self) -> usize {
        match self {
            Version::A => 3,
            Version::B => 7,
        }
    }

    pub fn as_char(self) -> char {
        match self {
            Version::A => 'A',
            Version::B => 'B',
        }
    }
}

/// One message. Parts are ISO 8859-1 octets, as received.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub version: Option<Version>,
    pub recipient: Vec<u8>,
    pub recipient_terminal: Vec<u8>,
    pub text: Vec<u8>,
    pub sender: Vec<u8>,
    pub sender_terminal: Vec<u8>,
    pub cookie: Vec<u8>,
    pub signature: Vec<u8>,
}

impl Message {
    pub fn version(&self) -> Version {
        self.version.unwrap_or(Version::A)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MspError {
    #[error("empty message")]
    Empty,
    #[error("unknown version octet {0:#04x} (expected 'A' or 'B')")]
    BadVersion(u8),
    #[error("message longer than {MAX_MESSAGE_LEN} octets")]
    TooLong,
    #[error("version {version} needs {expected} NUL-terminated parts, found {found}")]
    Parts {
        version: char,
        expected: usize,
        found: usize,
    },
    #[error("cookie longer than {MAX_COOKIE_LEN} octets")]
    CookieTooLong,
}

/// Where a message ends in a TCP stream, found by counting NULs (never by
/// read boundaries): `Ok(Some(n))` when the first `n` bytes of `buf` are one
/// whole message, `Ok(None)` when more bytes are needed.
pub fn frame(buf: &[u8]) -> Result<Option<usize>, MspError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let version = Version::from_octet(first).ok_or(MspError::BadVersion(first))?;
    let mut nuls = 0;
    // The version octet and at most MAX_MESSAGE_LEN - 1 more.
    for (i, &b) in buf.iter().enumerate().take(MAX_MESSAGE_LEN).skip(1) {
        if b == 0 {
            nuls += 1;
            if nuls == version.parts() {
                return Ok(Some(i + 1));
            }
        }
    }
    if buf.len() >= MAX_MESSAGE_LEN {
        Err(MspError::TooLong)
    } else {
        Ok(None)
    }
}

/// Parses one whole message (a datagram, or a frame cut by [`frame`]). One
/// extra NUL at the end is tolerated: a known client sends it.
pub fn parse(buf: &[u8]) -> Result<Message, MspError> {
    let (&first, _) = buf.split_first().ok_or(MspError::Empty)?;
    let version = Version::from_octet(first).ok_or(MspError::BadVersion(first))?;
    let mut buf = buf;
    if buf.len() > MAX_MESSAGE_LEN {
        // Only the tolerated extra NUL may take it past the limit.
        let nuls = buf[1..].iter().filter(|&&b| b == 0).count();
        if buf.len() == MAX_MESSAGE_LEN + 1 && buf.ends_with(&[0, 0]) && nuls == version.parts() + 1
        {
            buf = &buf[..MAX_MESSAGE_LEN];
        } else {
            return Err(MspError::TooLong);
        }
    }
    let body = &buf[1..];
    let mut parts: Vec<&[u8]> = body.split(|&b| b == 0).collect();
    // A well-formed body ends in NUL, which leaves one empty piece last.
    let terminated = parts.pop().is_some_and(|last| last.is_empty());
    let expected = version.parts();
    if terminated && parts.len() == expected + 1 && parts[expected].is_empty() {
        parts.pop();
    }
    if !terminated || parts.len() != expected {
        return Err(MspError::Parts {
            version: version.as_char(),
            expected,
            found: if terminated {
                parts.len()
            } else {
                parts.len().saturating_sub(1)
            },
        });
    }
    let part = |i: usize| parts.get(i).map(|p| p.to_vec()).unwrap_or_default();
    let message = Message {
        version: Some(version),
        recipient: part(0),
        recipient_terminal: part(1),
        text: part(2),
        sender: part(3),
        sender_terminal: part(4),
        cookie: part(5),
        signature: part(6),
    };
    if message.cookie.len() > MAX_COOKIE_LEN {
        return Err(MspError::CookieTooLong);
    }
    Ok(message)
}

/// Encodes a message (the `msend` client's side).
pub fn encode(m: &Message) -> Vec<u8> {
    let version = m.version();
    let mut out = vec![version.as_char() as u8];
    let mut parts = vec![&m.recipient, &m.recipient_terminal, &m.text];
    if version == Version::B {
        parts.extend([&m.sender, &m.sender_terminal, &m.cookie, &m.signature]);
    }
    for p in parts {
        out.extend_from_slice(p);
        out.push(0);
    }
    out
}

/// Whether `b` may be shown on a terminal: printable ISO 8859-1.
fn printable(b: u8) -> bool {
    matches!(b, 0x20..=0x7e | 0xa0..=0xff)
}

/// Refuses control codes in every part that may be displayed: only
/// printable ISO 8859-1 plus CR, LF and TAB in the text, printable only in
/// the names and terminals.
pub fn check_content(m: &Message) -> Result<(), String> {
    let named = [
        ("recipient", &m.recipient),
        ("recipient terminal", &m.recipient_terminal),
        ("sender", &m.sender),
        ("sender terminal", &m.sender_terminal),
    ];
    for (what, part) in named {
        if let Some(&b) = part.iter().find(|&&b| !printable(b)) {
            return Err(format!("{what} contains control code {b:#04x}"));
        }
    }
    if let Some(&b) = m
        .text
        .iter()
        .find(|&&b| !(printable(b) || matches!(b, b'\r' | b'\n' | b'\t')))
    {
        return Err(format!("message contains control code {b:#04x}"));
    }
    Ok(())
}

/// ISO 8859-1 octets as text (each octet is the code point of its value).
pub fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(parts: &[&str]) -> Vec<u8> {
        let mut out = b"B".to_vec();
        for p in parts {
            out.extend_from_slice(p.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn rfc_example_version_b() {
        let raw = b(&[
            "chris",
            "",
            "Hi\r\nHow about lunch?",
            "sandy",
            "console",
            "910806121325",
            "",
        ]);
        let m = parse(&raw).unwrap();
        assert_eq!(m.version, Some(Version::B));
        assert_eq!(m.recipient, b"chris");
        assert!(m.recipient_terminal.is_empty());
        assert_eq!(m.text, b"Hi\r\nHow about lunch?");
        assert_eq!(m.sender, b"sandy");
        assert_eq!(m.sender_terminal, b"console");
        assert_eq!(m.cookie, b"910806121325");
        assert_eq!(encode(&m), raw);
        assert_eq!(frame(&raw), Ok(Some(raw.len())));
    }

    #[test]
    fn version_a_and_empty_parts() {
        let m = parse(b"A\0\0\0").unwrap();
        assert_eq!(m.version, Some(Version::A));
        assert!(m.recipient.is_empty() && m.text.is_empty());
        let m = parse(b"Ajoe\0tty1\0hello\0").unwrap();
        assert_eq!(
            (m.recipient.as_slice(), m.text.as_slice()),
            (&b"joe"[..], &b"hello"[..])
        );
    }

    #[test]
    fn one_extra_trailing_nul_is_tolerated() {
        let mut raw = b(&["chris", "", "hi", "sandy", "", "1", ""]);
        raw.push(0);
        assert_eq!(parse(&raw).unwrap().text, b"hi");
        raw.push(0);
        assert!(matches!(parse(&raw), Err(MspError::Parts { .. })));
    }

    #[test]
    fn malformed_shapes() {
        assert_eq!(parse(b""), Err(MspError::Empty));
        assert_eq!(parse(b"C\0\0\0"), Err(MspError::BadVersion(b'C')));
        assert!(matches!(
            parse(b"Ajoe\0tty\0"),
            Err(MspError::Parts { found: 2, .. })
        ));
        assert!(matches!(
            parse(b"Ajoe\0tty\0hi"),
            Err(MspError::Parts { .. })
        ));
        assert!(matches!(
            parse(b"Ajoe\0tty\0hi\0x\0"),
            Err(MspError::Parts { found: 4, .. })
        ));
        assert!(matches!(
            parse(&b(&["a", "", "hi", "s", ""])),
            Err(MspError::Parts { .. })
        ));
        let long_cookie = "c".repeat(33);
        assert_eq!(
            parse(&b(&["a", "", "hi", "s", "", &long_cookie, ""])),
            Err(MspError::CookieTooLong)
        );
        let long = b(&["a", "", &"x".repeat(600), "s", "", "1", ""]);
        assert_eq!(parse(&long), Err(MspError::TooLong));
    }

    #[test]
    fn the_length_limit_is_exact() {
        // 1 version octet + 7 NULs + parts = 511 octets.
        let text = "x".repeat(MAX_MESSAGE_LEN - 8);
        let raw = b(&["", "", &text, "", "", "", ""]);
        assert_eq!(raw.len(), MAX_MESSAGE_LEN);
        assert!(parse(&raw).is_ok());
        let raw = b(&["", "", &format!("{text}x"), "", "", "", ""]);
        assert_eq!(parse(&raw), Err(MspError::TooLong));
        // Framing draws the same line (found by fuzzing).
        assert_eq!(frame(&raw), Err(MspError::TooLong));
    }

    #[test]
    fn framing_counts_nuls_across_reads() {
        let raw = b(&["chris", "", "hi", "sandy", "", "1", ""]);
        for cut in 0..raw.len() {
            assert_eq!(frame(&raw[..cut]), Ok(None), "cut at {cut}");
        }
        let mut two = raw.clone();
        two.extend_from_slice(&raw);
        assert_eq!(frame(&two), Ok(Some(raw.len())));
        assert_eq!(frame(b"Z"), Err(MspError::BadVersion(b'Z')));
        let mut endless = b"B".to_vec();
        endless.extend(std::iter::repeat_n(b'x', 600));
        assert_eq!(frame(&endless), Err(MspError::TooLong));
    }

    #[test]
    fn control_codes_are_refused_where_displayed() {
        let ok = parse(&b(&[
            "chris",
            "*",
            "Hi\r\n\tthere \u{e9}",
            "sandy",
            "pts/1",
            "1",
            "",
        ]))
        .unwrap();
        // é was sent as UTF-8 here, two octets, both printable ISO 8859-1.
        assert!(check_content(&ok).is_ok());
        let mut m = ok.clone();
        m.text = b"\x1b[2Jgotcha".to_vec();
        assert!(check_content(&m).unwrap_err().contains("0x1b"));
        let mut m = ok.clone();
        m.sender = b"evil\rname".to_vec();
        assert!(check_content(&m).unwrap_err().contains("sender"));
        let mut m = ok.clone();
        m.sender_terminal = b"tty\x07".to_vec();
        assert!(check_content(&m).is_err());
        let mut m = ok;
        m.text = b"bell\x07".to_vec();
        assert!(check_content(&m).is_err());
        m.text = b"c1 \x9b code".to_vec();
        assert!(check_content(&m).is_err());
    }
}
