//! The command line of tcpmuxd, the daemon.

use crate::config::DEFAULT_CONFIG_PATH;
use crate::log::LogTarget;
use clap::Parser;
use std::path::PathBuf;

pub const AFTER_HELP: &str = "\
Sockets:
  Under systemd, tcpmuxd takes its sockets from socket activation, by
  FileDescriptorName=: \"tcpmux\" (stream, TCP port 1) and \"msp\" (stream and
  datagram, port 18). Otherwise it binds [tcpmux] listen from the config
  (default [::]:1).

Configuration:
  FILE, then every *.toml in conf.d/ beside it, in lexical order. Drop-ins may
  set [tcpmux] keys (a later file wins) and add [[service]] entries. Unknown
  keys are errors. Check a configuration with --check before reloading: it
  reports every error of every file, in file order. --check --print shows
  the configuration in force (each service with the user, umask,
  environment and limits it gets), as TOML: `tcpmuxd --check --print >
  FILE` is a valid configuration file.

Signals:
  SIGHUP reloads the configuration (an invalid one is rejected and the old one
  kept); SIGTERM and SIGINT stop accepting, finish handshakes in progress and
  exit. Running sessions are left running.

Exit status:
  0 success; 64 bad arguments; 69 the journal was asked for and is not
  there; 71 sockets or the runtime cannot be had; 78 invalid configuration
  (as sysexits(3) names them).";

#[derive(Debug, Parser)]
#[command(
    name = "tcpmuxd",
    version,
    about = "TCPMUX (RFC 1078) server: hands each connection to the service its client names",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Main configuration file; drop-ins are read from conf.d/ beside it.
    #[arg(short, long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Validate the configuration and its drop-ins, print every error (or
    /// a summary) and exit.
    #[arg(long)]
    pub check: bool,

    /// With --check: print the effective configuration instead of the
    /// summary, drop-ins merged and every default filled in, as a
    /// configuration file tcpmuxd reads back (like sshd -T).
    #[arg(long, requires = "check")]
    pub print: bool,

    /// Where log entries go.
    #[arg(long, value_enum, value_name = "TARGET", default_value = "auto")]
    pub log_target: LogTarget,

    /// Least severe level logged: error, warn, info, debug or trace (or a
    /// tracing filter such as "tcpmuxd=debug").
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = log_filter)]
    pub log_level: String,
}

/// A `--log-level` that tracing accepts.
fn log_filter(text: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_string())
        .map_err(|e| format!("not a level or filter: {e}"))
}

/// The command line as clap sees it: for the binary, the man page and the
/// shell completions alike.
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}
