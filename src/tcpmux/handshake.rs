//! Reading the request line off the socket without taking a byte more.
//!
//! The client may send data for the service right behind its CRLF, in the
//! same segment. Those bytes must stay in the socket for the service, so the
//! line is found with MSG_PEEK and exactly the line is consumed.
//!
//! The line often arrives with the connection (always when the listener
//! defers accepting until data comes): [`take_ready_request_line`] takes it
//! then without waiting, and without the event loop.
//!
//! A connection from a trusted proxy begins with a PROXY protocol header
//! before its line: [`take_ready_header_and_line`] takes both when they
//! are there, [`read_proxy_header`] waits for the header, and neither takes
//! a byte past it that is not the line's.

use super::request::find_line_end;
use crate::limits::{MAX_LINE_LEN, MAX_PROXY_HEADER_LEN};
use crate::proxy::{HeaderError, ProxyHeader, parse_header};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("request line longer than {MAX_LINE_LEN} bytes")]
    TooLong,
    #[error("connection closed before the end of the request line")]
    Closed,
    #[error("reading the request line: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    ProxyHeader(HeaderError),
}

/// What [`take_ready_request_line`] found: the line, `None` when not all
/// of it is there yet, or why it cannot be had.
pub type ReadyLine = Result<Option<Vec<u8>>, HandshakeError>;

/// Takes a trusted proxy's header and then the request line, as far as
/// they are already in the socket's receive queue, without waiting:
/// `Ok(None)` when the header is not all there yet (nothing taken), else
/// the header (taken) and what there is of the line, as
/// [`take_ready_request_line`] would say. One peek and one read.
pub fn take_ready_header_and_line(
    socket: &std::net::TcpStream,
) -> Result<Option<(ProxyHeader, ReadyLine)>, HandshakeError> {
    use rustix::net::{RecvFlags, recv};
    let mut peeked = [0u8; MAX_PROXY_HEADER_LEN + MAX_LINE_LEN];
    let n = match crate::listen::peek_queued(socket, &mut peeked)? {
        Some(0) => return Err(HandshakeError::Closed),
        Some(n) => n,
        None => return Ok(None),
    };
    let (header, len) = match parse_header(&peeked[..n]) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(e) => return Err(HandshakeError::ProxyHeader(e)),
    };
    let rest = &peeked[len..n];
    let rest = &rest[..rest.len().min(MAX_LINE_LEN)];
    let (take, line) = match find_line_end(rest) {
        Some(lf) => (len + lf + 1, Ok(Some(rest[..lf].to_vec()))),
        None if rest.len() >= MAX_LINE_LEN => (len, Err(HandshakeError::TooLong)),
        None => (len, Ok(None)),
    };
    let mut sink = [0u8; MAX_PROXY_HEADER_LEN + MAX_LINE_LEN];
    // The peeked bytes are in the queue, and only this task reads it: one
    // call takes them all.
    match recv(socket, &mut sink[..take], RecvFlags::DONTWAIT) {
        Ok((got, _)) if got == take => Ok(Some((header, line))),
        Ok(_) => Err(HandshakeError::Closed),
        Err(e) => Err(HandshakeError::Io(e.into())),
    }
}

/// Reads a trusted proxy's PROXY protocol header, and not a byte past it.
/// Holds at most [`MAX_PROXY_HEADER_LEN`] bytes; a connection that ends
/// before the header's end is [`HeaderError::Truncated`] (plain
/// [`HandshakeError::Closed`] when not a byte came).
pub async fn read_proxy_header(stream: &mut TcpStream) -> Result<ProxyHeader, HandshakeError> {
    let mut header = Vec::with_capacity(MAX_PROXY_HEADER_LEN);
    let mut peeked = [0u8; MAX_PROXY_HEADER_LEN];
    loop {
        let taken = header.len();
        let room = MAX_PROXY_HEADER_LEN - taken;
        if room == 0 {
            // parse_header refuses an incomplete header this long; kept
            // for the bound's sake.
            return Err(HandshakeError::ProxyHeader(HeaderError::Oversized(taken)));
        }
        let n = stream.peek(&mut peeked[..room]).await?;
        if n == 0 && taken == 0 {
            return Err(HandshakeError::Closed);
        }
        if n == 0 {
            return Err(HandshakeError::ProxyHeader(HeaderError::Truncated));
        }
        header.extend_from_slice(&peeked[..n]);
        // Incomplete: every byte so far is the header's, taken so that the
        // next peek waits for new ones. Complete: only its own are taken.
        let take = match parse_header(&header) {
            Ok(Some((parsed, len))) => {
                stream.read_exact(&mut peeked[..len - taken]).await?;
                return Ok(parsed);
            }
            Ok(None) => n,
            Err(e) => return Err(HandshakeError::ProxyHeader(e)),
        };
        stream.read_exact(&mut peeked[..take]).await?;
    }
}

/// Takes the request line if all of it is already in the socket's receive
/// queue, without waiting: `Ok(None)` when it is not (yet), and then
/// nothing has been consumed, so that [`read_request_line`] can start over.
/// Like it, never consumes bytes past the LF and never holds more than
/// [`MAX_LINE_LEN`] bytes.
pub fn take_ready_request_line(
    socket: &std::net::TcpStream,
) -> Result<Option<Vec<u8>>, HandshakeError> {
    use rustix::net::{RecvFlags, recv};
    let mut peeked = [0u8; MAX_LINE_LEN];
    let n = match crate::listen::peek_queued(socket, &mut peeked)? {
        Some(0) => return Err(HandshakeError::Closed),
        Some(n) => n,
        None => return Ok(None),
    };
    let take = match find_line_end(&peeked[..n]) {
        Some(lf) => lf + 1,
        None if n >= MAX_LINE_LEN => return Err(HandshakeError::TooLong),
        None => return Ok(None),
    };
    let mut line = vec![0u8; take];
    // The peeked bytes are in the queue, and only this task reads it: one
    // call takes them all.
    match recv(socket, &mut line[..], RecvFlags::DONTWAIT) {
        Ok((got, _)) if got == take => {}
        Ok(_) => return Err(HandshakeError::Closed),
        Err(e) => return Err(HandshakeError::Io(e.into())),
    }
    line.pop();
    Ok(Some(line))
}

/// Reads one request line, up to and including its LF, and returns it
/// without the LF. Never consumes bytes past the LF, and never holds more
/// than [`MAX_LINE_LEN`] bytes, however long the client's line.
pub async fn read_request_line(stream: &mut TcpStream) -> Result<Vec<u8>, HandshakeError> {
    let mut line = Vec::with_capacity(MAX_LINE_LEN);
    let mut peeked = [0u8; MAX_LINE_LEN];
    loop {
        // Ask for one byte more than still fits, to tell "too long" apart
        // from "exactly full".
        let room = MAX_LINE_LEN - line.len();
        let n = stream.peek(&mut peeked[..room.max(1)]).await?;
        if n == 0 {
            return Err(HandshakeError::Closed);
        }
        let take = match find_line_end(&peeked[..n]) {
            Some(lf) => lf + 1,
            None if n >= room => return Err(HandshakeError::TooLong),
            // Everything peeked belongs to the line: consume it so the next
            // peek waits for new data instead of returning the same bytes.
            None => n,
        };
        let start = line.len();
        line.resize(start + take, 0);
        stream.read_exact(&mut line[start..]).await?;
        if line.last() == Some(&b'\n') {
            line.pop();
            return Ok(line);
        }
    }
}
