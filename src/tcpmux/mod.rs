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

/// The HELP answer: each name on its own CRLF-ended line. The list as a
/// whole, for reference: tcpmuxd writes it a chunk at a time
/// ([`HelpCursor`]), never whole.
pub fn help_text<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for name in names {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(LINE_END);
    }
    out
}

const LINE_END: &[u8] = b"\r\n";

/// The length of [`help_text`] of `names`, without building it.
pub fn help_len<'a>(names: impl IntoIterator<Item = &'a str>) -> usize {
    names
        .into_iter()
        .map(|name| name.len() + LINE_END.len())
        .sum()
}

/// Where a HELP list being written stands: the list is [`help_text`] of
/// the names `name` gives for `items` (`None`: hidden from this client),
/// and it is generated from them as the client takes it, a buffer at a
/// time, so that a long list is never held whole. The same `items` and
/// `name` must be passed each time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HelpCursor {
    /// The item whose line is next.
    item: usize,
    /// Bytes of that line already out.
    done: usize,
}

impl HelpCursor {
    /// Copies the next bytes of the list into `buf`, as many as fit, and
    /// returns how many, with the cursor past them (this one stays where
    /// it is, for a write that takes less). 0 with a non-empty `buf`: the
    /// list is over.
    pub fn fill<'a, T>(
        self,
        items: &'a [T],
        name: impl Fn(&'a T) -> Option<&'a str>,
        buf: &mut [u8],
    ) -> (usize, HelpCursor) {
        let mut at = 0;
        let after = self.walk(items, name, buf.len(), |part| {
            buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        });
        (at, after)
    }

    /// The cursor `n` bytes further on.
    pub fn advance<'a, T>(
        self,
        items: &'a [T],
        name: impl Fn(&'a T) -> Option<&'a str>,
        n: usize,
    ) -> HelpCursor {
        self.walk(items, name, n, |_| {})
    }

    /// Goes over at most `limit` bytes of the list, handing each piece to
    /// `out`; returns the cursor after them.
    fn walk<'a, T>(
        mut self,
        items: &'a [T],
        name: impl Fn(&'a T) -> Option<&'a str>,
        limit: usize,
        mut out: impl FnMut(&[u8]),
    ) -> HelpCursor {
        let mut total = 0;
        while total < limit {
            let Some(item) = items.get(self.item) else {
                break;
            };
            let Some(name) = name(item) else {
                self.item += 1;
                continue;
            };
            let name = name.as_bytes();
            let line = name.len() + LINE_END.len();
            while self.done < line && total < limit {
                let (part, from) = match self.done.checked_sub(name.len()) {
                    None => (name, self.done),
                    Some(from) => (LINE_END, from),
                };
                let take = (part.len() - from).min(limit - total);
                out(&part[from..from + take]);
                self.done += take;
                total += take;
            }
            if self.done == line {
                self.item += 1;
                self.done = 0;
            }
        }
        self
    }
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

    /// The list a client gets written in chunks of `chunk` bytes, each
    /// write taking at most `take` of them: as the writer of a long HELP
    /// goes.
    fn written<'a>(items: &'a [(&'a str, bool)], chunk: usize, take: usize) -> Vec<u8> {
        let name = |item: &'a (&'a str, bool)| item.1.then_some(item.0);
        let mut out = Vec::new();
        let mut cursor = HelpCursor::default();
        let mut buf = vec![0u8; chunk];
        loop {
            let (n, after) = cursor.fill(items, name, &mut buf);
            if n == 0 {
                return out;
            }
            assert!(n <= chunk);
            let sent = n.min(take);
            out.extend_from_slice(&buf[..sent]);
            cursor = if sent == n {
                after
            } else {
                cursor.advance(items, name, sent)
            };
        }
    }

    #[test]
    fn help_in_chunks_is_the_whole_list_for_every_view() {
        let long = "x".repeat(255);
        let names: Vec<String> = (0..300)
            .map(|i| format!("svc{i:03}-{}", &long[..i % 250]))
            .collect();
        // Views: everything, nothing, every other one, the first and last
        // hidden, one long name alone.
        let views: [&dyn Fn(usize) -> bool; 5] = [
            &|_| true,
            &|_| false,
            &|i| i % 2 == 0,
            &|i| i != 0 && i != 299,
            &|i| i == 249,
        ];
        for view in views {
            let items: Vec<(&str, bool)> = names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.as_str(), view(i)))
                .collect();
            let visible = items.iter().filter(|i| i.1).map(|i| i.0);
            let whole = help_text(visible.clone());
            assert_eq!(help_len(visible), whole.len());
            for (chunk, take) in [(4096, 4096), (4096, 1000), (1, 1), (7, 3), (256, 257)] {
                assert_eq!(
                    written(&items, chunk, take),
                    whole,
                    "chunk {chunk}, take {take}"
                );
            }
        }
        assert_eq!(written(&[], 4096, 4096), b"");
        assert_eq!(help_len([]), 0);
    }
}
