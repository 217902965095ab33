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

/// A part as text. RFC 1312 says ISO 8859-1, but today's clients send
/// UTF-8 (and terminals show it): a part that is valid UTF-8 is taken as
/// UTF-8, anything else as ISO 8859-1 (each octet the code point of its
/// value). Either way the result is UTF-8, as terminals, the journal and
/// the environment want it.
pub fn decode(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => std::borrow::Cow::Owned(latin1(bytes)),
    }
}

/// ISO 8859-1 octets as text (each octet is the code point of its value).
pub fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

/// Why `c` must not be shown, if it must not: a C0 control (CR, LF and
/// TAB are allowed in the text only), DEL, a C1 control, or a
/// bidirectional override or isolate (U+202A to U+202E, U+2066 to U+2069),
/// which would make the text read other than it is.
fn refused(c: char, in_text: bool) -> Option<&'static str> {
    match c {
        '\r' | '\n' | '\t' if in_text => None,
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => Some("control code"),
        '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => Some("bidirectional override"),
        _ => None,
    }
}

/// Refuses control codes in every part a person or a program may see:
/// the text may hold CR, LF and TAB besides printable characters; the
/// names, terminals, cookie and signature printable characters only.
/// Parts are checked by code point once decoded (see [`decode`]), so the
/// octets of UTF-8 "€" (0xe2 0x82 0xac) are not taken for a C1 control.
pub fn check_content(m: &Message) -> Result<(), String> {
    let parts = [
        ("recipient", &m.recipient, false),
        ("recipient terminal", &m.recipient_terminal, false),
        ("message", &m.text, true),
        ("sender", &m.sender, false),
        ("sender terminal", &m.sender_terminal, false),
        ("cookie", &m.cookie, false),
        ("signature", &m.signature, false),
    ];
    for (what, part, in_text) in parts {
        let text = decode(part);
        if let Some((c, kind)) = text
            .chars()
            .find_map(|c| refused(c, in_text).map(|kind| (c, kind)))
        {
            let code = u32::from(c);
            return Err(if code <= 0xff {
                format!("{what} contains {kind} {code:#04x}")
            } else {
                format!("{what} contains {kind} U+{code:04X}")
            });
        }
    }
    Ok(())
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
        // Not UTF-8, so ISO 8859-1: 0x9b is a C1 control.
        m.text = b"c1 \x9b code".to_vec();
        assert_eq!(
            check_content(&m).unwrap_err(),
            "message contains control code 0x9b"
        );
        // C1 as UTF-8 (U+009B) is refused just the same.
        m.text = "c1 \u{9b} code".into();
        assert!(check_content(&m).is_err());
        m.text = b"del\x7f".to_vec();
        assert!(check_content(&m).is_err());
    }

    #[test]
    fn utf8_parts_are_checked_by_code_point() {
        let mut m = parse(&b(&["chris", "", "hi", "sandy", "", "1", ""])).unwrap();
        // Their UTF-8 octets hold 0x82 and 0x9b, C1 controls in ISO 8859-1.
        m.text = "caf\u{e9} 5 \u{20ac}, \u{15b}wit".into();
        m.sender = "\u{15b}wit".into();
        assert!(check_content(&m).is_ok());
        for bidi in ['\u{202a}', '\u{202e}', '\u{2066}', '\u{2069}'] {
            let mut m = m.clone();
            m.text = format!("abc{bidi}def").into_bytes();
            let e = check_content(&m).unwrap_err();
            assert!(
                e.starts_with("message contains bidirectional override U+20"),
                "{e}"
            );
        }
        let mut n = m.clone();
        n.sender = "evil\u{202e}".into();
        assert!(check_content(&n).unwrap_err().starts_with("sender"));
    }

    #[test]
    fn every_part_is_checked_the_cookie_and_signature_too() {
        let ok = parse(&b(&["chris", "*", "hi", "sandy", "pts/1", "1", "sig"])).unwrap();
        let fields: [fn(&mut Message) -> &mut Vec<u8>; 6] = [
            |m| &mut m.recipient,
            |m| &mut m.recipient_terminal,
            |m| &mut m.sender,
            |m| &mut m.sender_terminal,
            |m| &mut m.cookie,
            |m| &mut m.signature,
        ];
        for field in fields {
            for bad in [&b"a\nb"[..], b"\x1b[31m", b"tab\there", b"\r"] {
                let mut m = ok.clone();
                *field(&mut m) = bad.to_vec();
                assert!(check_content(&m).is_err(), "{m:?}");
            }
        }
        let mut m = ok.clone();
        m.cookie = b"\x1b]0;title\x07".to_vec();
        assert_eq!(
            check_content(&m).unwrap_err(),
            "cookie contains control code 0x1b"
        );
        let mut m = ok;
        m.signature = b"\x85".to_vec();
        assert_eq!(
            check_content(&m).unwrap_err(),
            "signature contains control code 0x85"
        );
    }

    #[test]
    fn decoding_takes_utf8_when_valid_else_latin1() {
        assert_eq!(decode("caf\u{e9}".as_bytes()), "caf\u{e9}");
        assert_eq!(decode(b"caf\xe9"), "caf\u{e9}");
        assert_eq!(decode("\u{20ac}".as_bytes()), "\u{20ac}");
        // Not valid UTF-8 as a whole: every octet is ISO 8859-1.
        assert_eq!(decode(b"\xe2\x82\xac \xff"), "\u{e2}\u{82}\u{ac} \u{ff}");
        assert_eq!(decode(b""), "");
    }
}
