//! Exit statuses of the three binaries, as sysexits(3) names them. A client
//! told `-` by the server exits 1: the tool worked, the answer was no.

use std::process::ExitCode;

/// The server or the service answered `-` (or, over UDP, nothing).
pub const REFUSED: u8 = 1;
/// EX_USAGE: the command line is wrong.
pub const USAGE: u8 = 64;
/// EX_DATAERR: the input cannot be sent (a message too long, a control
/// character).
pub const DATAERR: u8 = 65;
/// EX_NOHOST: the host name cannot be resolved.
pub const NOHOST: u8 = 68;
/// EX_UNAVAILABLE: the server cannot be reached, or a service (the journal)
/// is not there.
pub const UNAVAILABLE: u8 = 69;
/// EX_OSERR: the system refused something the program needs (sockets, the
/// runtime).
pub const OSERR: u8 = 71;
/// EX_IOERR: talking to the server failed, or it answered nonsense.
pub const IOERR: u8 = 74;
/// EX_CONFIG: the configuration is invalid.
pub const CONFIG: u8 = 78;

/// Parses the command line. `--help` and `--version` print and exit 0; a
/// usage error prints clap's message and exits [`USAGE`] (clap's own
/// status would be 2).
pub fn parse<T: clap::Parser>() -> Result<T, ExitCode> {
    T::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// A failure: its exit status and what to print.
pub type Failure = (u8, String);
