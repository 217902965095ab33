//! A floor for MSP over UDP with command delivery (beyond the two floors
//! of the handshake and the dispatch): one thread receives a datagram,
//! takes the text of a version B message, runs the delivery command with
//! it on standard input, waits for it, and acknowledges with `+` NUL. No
//! checks, no rate limit, no duplicate filter.
//!
//! usage: floor-msp ADDR PROGRAM [ARG...]

use std::io::Write;
use std::net::UdpSocket;
use std::process::{Command, Stdio};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(program)) = (args.next(), args.next()) else {
        eprintln!("usage: floor-msp ADDR PROGRAM [ARG...]");
        std::process::exit(2);
    };
    let program_args: Vec<String> = args.collect();
    let socket = match UdpSocket::bind(&addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("floor-msp: {addr}: {e}");
            std::process::exit(71);
        }
    };
    let mut buf = [0u8; 1024];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        // 'B', then recipient, recipient's terminal, text, ... each ended
        // by NUL.
        let Some(text) = buf[..n]
            .strip_prefix(b"B")
            .and_then(|m| m.split(|&b| b == 0).nth(2))
        else {
            continue;
        };
        let delivered = Command::new(&program)
            .args(&program_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .and_then(|mut child| {
                if let Some(mut stdin) = child.stdin.take() {
                    stdin.write_all(text)?;
                }
                child.wait()
            })
            .is_ok_and(|status| status.success());
        if delivered {
            let _ = socket.send_to(b"+\0", peer);
        }
    }
}
