//! The handshake floor: the least a TCPMUX server can do for a HELP
//! request. One thread accepts a connection, reads up to the end of the
//! request line, writes a fixed list, and closes. No timeouts, no checks,
//! no logging: what tcpmuxd does beyond this is what its safety costs.
//!
//! usage: floor-handshake ADDR NAME...   (the list it answers with)

use std::io::{Read, Write};
use std::net::TcpListener;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(addr) = args.next() else {
        eprintln!("usage: floor-handshake ADDR NAME...");
        std::process::exit(2);
    };
    let reply: String = args.map(|name| format!("{name}\r\n")).collect();
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("floor-handshake: {addr}: {e}");
            std::process::exit(71);
        }
    };
    let mut line = [0u8; 512];
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut len = 0;
        while len < line.len() {
            match stream.read(&mut line[len..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
            if line[..len].contains(&b'\n') {
                let _ = stream.write_all(reply.as_bytes());
                break;
            }
        }
    }
}
