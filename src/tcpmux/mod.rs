//! The RFC 1078 handshake: read the request line, parse it, answer.

pub mod handshake;
pub mod request;

pub use handshake::{
    HandshakeError, ReadyLine, read_proxy_header, read_request_line, take_ready_header_and_line,
    take_ready_request_line,
};
pub use request::{Request, RequestError, find_line_end, parse_request};

/// The replies tcpmuxd itself sends. Each is one line ending in CRLF and
/// never contains a NUL byte.
pub mod reply {
    pub const PLUS: &[u8] = b"+\r\n";
    pub const UNKNOWN: &[u8] = b"-Unknown service\r\n";
    pub const DENIED: &[u8] = b"-Access denied\r\n";
    pub const BUSY: &[u8] = b"-Service busy, try again later\r\n";
    pub const UNAVAILABLE: &[u8] = b"-Service unavailable\r\n";
    pub const TOO_LONG: &[u8] = b"-Service name too long\r\n";
    pub const BAD_NAME: &[u8] = b"-Invalid service name\r\n";
    pub const TIMEOUT: &[u8] = b"-Timed out waiting for the service name\r\n";
    pub const OVERLOADED: &[u8] = b"-Too many connections, try again later\r\n";
    pub const SOURCE_LIMIT: &[u8] = b"-Too many connections from your address, try again later\r\n";
    pub const SOURCE_SESSIONS: &[u8] = b"-Too many sessions from your address, try again later\r\n";
    pub const SESSIONS_FULL: &[u8] = b"-Server busy, try again later\r\n";
    pub const START_RATE: &[u8] = b"-Service started too often, try again later\r\n";

    /// Every refusal above: the documentation's table of replies names
    /// each (tests/docs.rs).
    pub const REFUSALS: &[&[u8]] = &[
        UNKNOWN,
        DENIED,
        BUSY,
        UNAVAILABLE,
        TOO_LONG,
        BAD_NAME,
        TIMEOUT,
        OVERLOADED,
        SOURCE_LIMIT,
        SOURCE_SESSIONS,
        SESSIONS_FULL,
        START_RATE,
    ];
}

/// The HELP answer: each name on its own CRLF-ended line.
pub fn help_text<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for name in names {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_single_crlf_lines_without_nul() {
        for &r in [reply::PLUS].iter().chain(reply::REFUSALS) {
            assert!(r.ends_with(b"\r\n"));
            assert_eq!(r.iter().filter(|&&b| b == b'\n').count(), 1);
            assert!(!r.contains(&0));
            assert!(r[0] == b'+' || r[0] == b'-');
        }
    }

    #[test]
    fn every_refusal_is_listed() {
        let defined = include_str!("mod.rs")
            .lines()
            .filter(|l| l.trim_start().starts_with("pub const") && l.contains("= b\"-"))
            .count();
        assert_eq!(
            defined,
            reply::REFUSALS.len(),
            "a refusal is missing from REFUSALS"
        );
    }

    #[test]
    fn help_lists_names() {
        assert_eq!(help_text(["a", "B"]), b"a\r\nB\r\n");
        assert_eq!(help_text([]), b"");
    }
}
