//! The command line of msend, the Message Send Protocol client.

use clap::Parser;

/// The MSP port (RFC 1312).
pub const DEFAULT_PORT: u16 = 18;

pub const AFTER_HELP: &str = "\
Examples:
  msend alice@example.org 'lunch at noon?'
  msend alice:pts/2@example.org < note.txt
  msend --udp @example.org 'the printer is on fire'    (any user; console)

The sender is you, on your terminal; every message carries a fresh cookie so
that a server shows a retransmitted datagram only once. Text is sent as
UTF-8, as today's MSP clients do (RFC 1312 names ISO 8859-1, which is the
same for ASCII), with CRLF line ends.

Exit status:
  0 delivered (over UDP: acknowledged); 1 refused, or no answer over UDP;
  64 bad arguments; 65 a message that cannot be sent (too long, control
  characters); 68 the host cannot be resolved; 69 cannot connect; 74 the
  exchange failed (as sysexits(3) names them).";

#[derive(Debug, Parser)]
#[command(
    name = "msend",
    version,
    about = "Send a short message to a user's terminal on another host (Message Send Protocol)",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Recipient: USER[:TERMINAL]@HOST; an empty USER means any user (the console).
    /// TERMINAL "*" means all of the user's terminals.
    #[arg(value_name = "USER[:TERMINAL]@HOST")]
    pub to: String,

    /// The message; read from standard input when not given.
    #[arg(value_name = "MESSAGE")]
    pub message: Vec<String>,

    /// Send over UDP (retransmitted until acknowledged) instead of TCP.
    #[arg(short, long)]
    pub udp: bool,

    /// Server port.
    #[arg(short, long, default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Seconds to wait for the server's answer (over UDP: in all, over the tries).
    #[arg(short, long, value_name = "SECONDS", default_value_t = 5.0)]
    pub timeout: f64,
}

/// The command line as clap sees it: for the binary, the man page and the
/// shell completions alike.
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}
