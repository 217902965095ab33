//! The PROXY protocol header (HAProxy's, versions 1 and 2) that a trusted
//! load balancer sends before anything of its client's: who the client
//! is. Pure: bytes in, a header, "not all of it yet" or a precise error
//! out. Only connections from `trusted_proxies` are read for one; from
//! anyone else a header is never looked for (its bytes are an ordinary,
//! invalid, request).
//!
//! The parsing itself is the `ppp` crate's: both versions, the `LOCAL`
//! command told apart from `PROXY` with an unspecified or Unix address,
//! and the length a version 2 header declares, known before its rest has
//! come. (`proxy-header`, the other crate that parses both, folds those
//! three into one "no address", skips the byte after `PROXY` unchecked,
//! and reports only "too short" until the whole header is there.) Around
//! it, this module adds what a server facing the Internet needs and `ppp`
//! leaves to its user:
//! - a bound: a header longer than [`MAX_PROXY_HEADER_LEN`] is refused as
//!   soon as its length is known (version 2 says it in its first 16
//!   bytes), never waited for;
//! - "missing" told apart from "malformed": bytes that cannot begin
//!   either version's signature are refused at the first byte;
//! - a version 1 header is complete once its line end is there, and
//!   judged whole: `ppp` guesses from a line's beginning whether it may
//!   still become valid, and takes some cuts for errors;
//! - one meaning per header: a client address (`PROXY` over TCP, IPv4 or
//!   IPv6), or [`ProxyHeader::Local`] (version 2 `LOCAL`, as HAProxy's
//!   health checks send, version 1 `UNKNOWN`, and version 2 `PROXY` with
//!   an unspecified or Unix address, where the specification says to use
//!   the connection's own); a datagram's addresses on a stream are refused.

use crate::limits::MAX_PROXY_HEADER_LEN;
use ppp::v2;
use std::net::SocketAddr;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The client the balancer relays, and the address it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// No client: the balancer's own connection (a health check). The
    /// connection's own addresses stand.
    Local,
}

/// Why a header is refused. Each closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header, which a trusted proxy must send first")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("PROXY protocol header of {0} bytes, more than the {MAX_PROXY_HEADER_LEN} allowed")]
    Oversized(usize),
    #[error("connection closed in the middle of its PROXY protocol header")]
    Truncated,
    #[error("PROXY protocol header not complete within the time allowed")]
    Slow,
}

/// The first bytes of a version 1 header.
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The longest version 1 header, its CR LF included (the specification's
/// bound).
const V1_MAX_LEN: usize = 107;
/// The fixed part of a version 2 header: the signature, then version and
/// command, family and protocol, and the length of the rest (2 bytes).
const V2_FIXED_LEN: usize = 16;

/// Parses the header at the start of `buf`: `Ok(Some((header, len)))` when
/// all `len` bytes of it are there, `Ok(None)` when more must come first
/// (and then every byte of `buf` belongs to the header), or the reason it
/// is refused. Looks at no more than [`MAX_PROXY_HEADER_LEN`] bytes.
pub fn parse_header(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, HeaderError> {
    let buf = &buf[..buf.len().min(MAX_PROXY_HEADER_LEN)];
    let begins = |signature: &[u8]| {
        let n = buf.len().min(signature.len());
        buf[..n] == signature[..n]
    };
    if begins(v2::PROTOCOL_PREFIX) {
        parse_v2(buf)
    } else if begins(V1_SIGNATURE) {
        parse_v1(buf)
    } else {
        Err(HeaderError::Missing)
    }
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, HeaderError> {
    // The length is known from the fixed part: a header that would not
    // fit is refused before its rest is waited for.
    if let Some(len) = buf.get(V2_FIXED_LEN - 2..V2_FIXED_LEN) {
        let total = V2_FIXED_LEN + usize::from(u16::from_be_bytes([len[0], len[1]]));
        if total > MAX_PROXY_HEADER_LEN {
            return Err(HeaderError::Oversized(total));
        }
    }
    let header = match v2::Header::try_from(buf) {
        Ok(header) => header,
        Err(v2::ParseError::Incomplete(_) | v2::ParseError::Partial(..)) => return Ok(None),
        Err(e) => return Err(HeaderError::Malformed(e.to_string())),
    };
    let len = header.len();
    let meaning = match (header.command, header.addresses) {
        (v2::Command::Local, _) => ProxyHeader::Local,
        (v2::Command::Proxy, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => {
            ProxyHeader::Local
        }
        (v2::Command::Proxy, addresses) => {
            if header.protocol != v2::Protocol::Stream {
                return Err(HeaderError::Malformed(format!(
                    "the addresses of a {:?} connection, on a TCP connection",
                    header.protocol
                )));
            }
            match addresses {
                v2::Addresses::IPv4(a) => ProxyHeader::Proxied {
                    source: SocketAddr::new(a.source_address.into(), a.source_port),
                    destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
                },
                v2::Addresses::IPv6(a) => ProxyHeader::Proxied {
                    source: SocketAddr::new(a.source_address.into(), a.source_port),
                    destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
                },
                // Taken above.
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => ProxyHeader::Local,
            }
        }
    };
    Ok(Some((meaning, len)))
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, HeaderError> {
    // A line: complete once its LF is there. (`ppp` guesses whether a
    // line without its end may still become valid, and guesses wrong for
    // some cuts: "... 51234 " is no invalid port, only an early one.)
    let Some(lf) = buf.iter().take(V1_MAX_LEN).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX_LEN {
            Err(HeaderError::Malformed(format!(
                "version 1 header without its line end in {V1_MAX_LEN} bytes"
            )))
        } else {
            Ok(None)
        };
    };
    let line = &buf[..=lf];
    let header =
        ppp::v1::Header::try_from(line).map_err(|e| HeaderError::Malformed(e.to_string()))?;
    if header.header.len() != line.len() {
        return Err(HeaderError::Malformed(
            "version 1 header with bytes after its CR LF".into(),
        ));
    }
    let meaning = match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => ProxyHeader::Proxied {
            source: SocketAddr::new(a.source_address.into(), a.source_port),
            destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
        },
        ppp::v1::Addresses::Tcp6(a) => ProxyHeader::Proxied {
            source: SocketAddr::new(a.source_address.into(), a.source_port),
            destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
        },
        ppp::v1::Addresses::Unknown => ProxyHeader::Local,
    };
    Ok(Some((meaning, line.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = v2::PROTOCOL_PREFIX.to_vec();
        h.push(command);
        h.push(family);
        h.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    const V4_BODY: [u8; 12] = [192, 0, 2, 7, 198, 51, 100, 1, 0xc8, 0x22, 0, 1];

    #[test]
    fn version_1_tcp4_and_tcp6() {
        let text = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 1\r\nHELP\r\n";
        let (h, len) = parse_header(text).unwrap().unwrap();
        assert_eq!(&text[len..], b"HELP\r\n");
        assert_eq!(
            h,
            ProxyHeader::Proxied {
                source: "192.0.2.7:51234".parse().unwrap(),
                destination: "198.51.100.1:1".parse().unwrap(),
            }
        );
        let text = b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 1\r\n";
        let (h, len) = parse_header(text).unwrap().unwrap();
        assert_eq!(len, text.len());
        assert!(
            matches!(h, ProxyHeader::Proxied { source, .. } if source == "[2001:db8::7]:51234".parse().unwrap())
        );
        let (h, _) = parse_header(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!(h, ProxyHeader::Local);
    }

    #[test]
    fn version_2_proxy_and_local() {
        let h = v2(0x21, 0x11, &V4_BODY);
        let mut buf = h.clone();
        buf.extend_from_slice(b"echo\r\n");
        let (header, len) = parse_header(&buf).unwrap().unwrap();
        assert_eq!(len, h.len());
        assert_eq!(
            header,
            ProxyHeader::Proxied {
                source: "192.0.2.7:51234".parse().unwrap(),
                destination: "198.51.100.1:1".parse().unwrap(),
            }
        );
        // LOCAL, as HAProxy's health checks send it: no addresses.
        let local = v2(0x20, 0x00, &[]);
        assert_eq!(
            parse_header(&local).unwrap(),
            Some((ProxyHeader::Local, 16))
        );
        // TLVs after the addresses are skipped.
        let mut body = V4_BODY.to_vec();
        body.extend_from_slice(&[0x04, 0, 0]);
        let (_, len) = parse_header(&v2(0x21, 0x11, &body)).unwrap().unwrap();
        assert_eq!(len, 16 + body.len());
    }

    #[test]
    fn every_cut_of_a_header_is_incomplete() {
        let headers = [
            b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 1\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 1\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2(0x21, 0x11, &V4_BODY),
            v2(0x20, 0x00, &[]),
        ];
        for h in headers {
            for cut in 0..h.len() {
                assert_eq!(parse_header(&h[..cut]), Ok(None), "{h:?} cut at {cut}");
            }
            assert!(parse_header(&h).unwrap().is_some());
        }
    }

    #[test]
    fn refused_headers() {
        assert_eq!(parse_header(b"echo\r\n"), Err(HeaderError::Missing));
        assert_eq!(parse_header(b"HELP\r\n"), Err(HeaderError::Missing));
        assert_eq!(parse_header(b"PROXX"), Err(HeaderError::Missing));
        for bad in [
            &b"PROXY TCP4 192.0.2.300 198.51.100.1 1 1\r\n"[..],
            b"PROXY TCP4 2001:db8::7 198.51.100.1 1 1\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 1\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 1\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 1\n",
        ] {
            assert!(
                matches!(parse_header(bad), Err(HeaderError::Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse_header(bad)
            );
        }
        // Version 2: a bad version, a bad command, a datagram.
        for bad in [
            v2(0x31, 0x11, &V4_BODY),
            v2(0x22, 0x11, &V4_BODY),
            v2(0x21, 0x12, &V4_BODY),
            v2(0x21, 0x11, &V4_BODY[..8]),
        ] {
            assert!(
                matches!(parse_header(&bad), Err(HeaderError::Malformed(_))),
                "{bad:?}: {:?}",
                parse_header(&bad)
            );
        }
    }

    #[test]
    fn oversized_headers_are_refused_without_waiting_for_them() {
        // Version 2 says its length in its first 16 bytes.
        let mut fixed = v2(0x21, 0x11, &[]);
        fixed[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            parse_header(&fixed),
            Err(HeaderError::Oversized(16 + 65535))
        );
        // Version 1 is at most 107 bytes; a longer line is refused once
        // that much came without its end.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(
            parse_header(&long),
            Err(HeaderError::Malformed(_))
        ));
        // The largest version 2 header allowed is taken.
        let body = vec![0u8; MAX_PROXY_HEADER_LEN - 16];
        let mut h = v2(0x21, 0x11, &body);
        h[16..28].copy_from_slice(&V4_BODY);
        // TLVs of type 0x04 (no-op), covering the rest.
        let rest = MAX_PROXY_HEADER_LEN - 28;
        h[28] = 0x04;
        h[29..31].copy_from_slice(&u16::try_from(rest - 3).unwrap().to_be_bytes());
        assert_eq!(
            parse_header(&h).map(|r| r.map(|(_, len)| len)),
            Ok(Some(MAX_PROXY_HEADER_LEN))
        );
        h[15] += 1;
        h.push(0);
        assert!(matches!(parse_header(&h), Err(HeaderError::Oversized(_))));
    }
}
