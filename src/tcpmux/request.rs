//! Pure parsing of the request line: bytes in, a request or a precise error
//! out.

use crate::config::HELP_NAME;
use crate::limits::MAX_NAME_LEN;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `HELP`, in any case: list the services.
    Help,
    /// A service name, as the client wrote it.
    Service(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("empty service name")]
    Empty,
    #[error("service name longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    #[error("service name contains byte {0:#04x}, which no service name has")]
    BadByte(u8),
}

/// The index of the LF that ends the request line in `buf`, if any.
pub fn find_line_end(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

/// Telnet's bare carriage return (RFC 854): what inetutils telnet sends for
/// a CR in its input, just before the line end.
const TELNET_BARE_CR: &[u8] = b"\r\0";

/// `bytes` without the spaces and tabs around it (and nothing else: a CR or
/// a form feed there is an invalid byte, as the README says).
fn trim_blanks(bytes: &[u8]) -> &[u8] {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !blank(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !blank(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Parses a request line without its LF. A trailing CR is dropped (CRLF and
/// bare LF are both accepted), then telnet's CR NUL before the line end (as
/// inetutils-inetd does), then spaces and tabs around the name.
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.strip_suffix(TELNET_BARE_CR).unwrap_or(line);
    let name = trim_blanks(line);
    if name.is_empty() {
        return Err(RequestError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(RequestError::TooLong);
    }
    if let Some(&b) = name.iter().find(|b| !b.is_ascii_graphic()) {
        return Err(RequestError::BadByte(b));
    }
    // Only visible ASCII is left, so this cannot fail.
    let name = String::from_utf8_lossy(name).into_owned();
    if name.eq_ignore_ascii_case(HELP_NAME) {
        Ok(Request::Help)
    } else {
        Ok(Request::Service(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_help() {
        assert_eq!(
            parse_request(b"echo\r"),
            Ok(Request::Service("echo".into()))
        );
        assert_eq!(parse_request(b"echo"), Ok(Request::Service("echo".into())));
        assert_eq!(
            parse_request(b" Echo \r"),
            Ok(Request::Service("Echo".into()))
        );
        assert_eq!(parse_request(b"HELP\r"), Ok(Request::Help));
        assert_eq!(parse_request(b"hElP"), Ok(Request::Help));
        // Telnet: `echo\r\0\r\n` and `echo\r\0\n`.
        assert_eq!(
            parse_request(b"echo\r\0\r"),
            Ok(Request::Service("echo".into()))
        );
        assert_eq!(
            parse_request(b"echo\r\0"),
            Ok(Request::Service("echo".into()))
        );
    }

    #[test]
    fn malformed() {
        assert_eq!(parse_request(b"\r"), Err(RequestError::Empty));
        assert_eq!(parse_request(b""), Err(RequestError::Empty));
        assert_eq!(parse_request(b"a\0b"), Err(RequestError::BadByte(0)));
        // Only one CR NUL, and only right before the line end.
        assert_eq!(parse_request(b"a\0\r"), Err(RequestError::BadByte(0)));
        assert!(parse_request(b"a\r\0\r\0").is_err());
        assert_eq!(parse_request(b"a b"), Err(RequestError::BadByte(b' ')));
        assert_eq!(parse_request(b"a\r\r"), Err(RequestError::BadByte(b'\r')));
        assert_eq!(parse_request(b"\x0ca"), Err(RequestError::BadByte(0x0c)));
        assert_eq!(parse_request(b" \t "), Err(RequestError::Empty));
        assert_eq!(parse_request(b"\ta \r"), Ok(Request::Service("a".into())));
        assert_eq!(
            parse_request(b"caf\xc3\xa9"),
            Err(RequestError::BadByte(0xc3))
        );
        assert_eq!(parse_request(&[b'a'; 256]), Err(RequestError::TooLong));
        assert!(parse_request(&[b'a'; 255]).is_ok());
    }

    #[test]
    fn line_end() {
        assert_eq!(find_line_end(b"abc\r\nrest"), Some(4));
        assert_eq!(find_line_end(b"abc"), None);
    }
}
