//! Reading the request line off the socket without taking a byte more.
//!
//! The client may send data for the service right behind its CRLF, in the
//! same segment. Those bytes must stay in the socket for the service, so the
//! line is found with MSG_PEEK and exactly the line is consumed.

use super::request::find_line_end;
use crate::limits::MAX_LINE_LEN;
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
