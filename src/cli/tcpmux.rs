//! The command line of tcpmux, the TCPMUX client.

use clap::Parser;

pub const AFTER_HELP: &str = "\
Examples:
  tcpmux localhost --list          list the services
  tcpmux example.org:1 echo        talk to the \"echo\" service
  echo hello | tcpmux [::1] echo
  ssh -o ProxyCommand='tcpmux --quiet %h ssh' example.org
                                   SSH through the server's \"ssh\" service

The server's reply line (\"+...\" or \"-...\") goes to stderr; what the service
sends goes to stdout as it comes (binary safe, nothing held back for a
newline); --quiet leaves a \"+\" line out. --list prints the names on stdout,
one a line; when the server offers this client no service, stdout stays
empty and stderr says so.
Sending stops at the end of stdin; the program ends when the service closes
the connection.

Exit status:
  0 the service accepted (or the list was printed); 1 the server or the
  service answered \"-\"; 64 bad arguments (a bad address or port too);
  68 the host cannot be resolved; 69 cannot connect; 74 the exchange failed
  or the reply is neither \"+\" nor \"-\" (as sysexits(3) names them).";

#[derive(Debug, Parser)]
#[command(
    name = "tcpmux",
    version,
    about = "Connect to a service through a TCPMUX (RFC 1078) server",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Server: HOST, HOST:PORT, [IPV6]:PORT or a bare IPv6 address (port 1 by default).
    #[arg(value_name = "HOST[:PORT]")]
    pub server: String,

    /// Service name to ask for.
    #[arg(
        value_name = "SERVICE",
        required_unless_present = "list",
        conflicts_with = "list"
    )]
    pub service: Option<String>,

    /// Print the list of services (HELP) and exit.
    #[arg(short, long)]
    pub list: bool,

    /// Print the server's reply line only when it is a refusal ("-..."):
    /// for use as ssh's ProxyCommand, where stderr is the terminal.
    #[arg(short, long)]
    pub quiet: bool,

    /// Time allowed to connect and to get the reply line, in seconds.
    #[arg(short, long, value_name = "SECONDS", default_value_t = 10.0)]
    pub timeout: f64,
}

/// The command line as clap sees it: for the binary, the man page and the
/// shell completions alike.
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}
