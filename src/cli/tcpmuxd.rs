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
  SIGHUP reloads the configuration (an invalid one is rejected, logged, and
  the old one kept; check it first with --check, as the units' ExecReload=
  does); SIGTERM and SIGINT stop accepting, finish handshakes in progress and
  exit. Sessions of programs and units are left running, and passed
  connections are their daemon's; forwarded pairs, relayed by tcpmuxd
  itself, end with it (both connections reset).

Exit status:
  0 success; 64 bad arguments; 69 the journal was asked for and is not
  there; 71 sockets or the runtime cannot be had; 78 invalid configuration
  with no socket-activated sockets to hold (as sysexits(3) names them).";

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

    /// Serve only this protocol: "tcpmux" (port 1) or "msp" (port 18).
    /// Default: both.
    #[arg(long, value_enum, value_name = "PROTOCOL")]
    pub only: Option<Protocol>,

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
    #[arg(
        long,
        value_name = "LEVEL",
        default_value = "info",
        value_parser = LogFilter,
        hide_possible_values = true
    )]
    pub log_level: String,
}

/// The levels `--log-level` offers (shell completion); any tracing filter
/// is accepted as well.
pub const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

/// A protocol tcpmuxd serves, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// TCPMUX (RFC 1078), the "tcpmux" socket or [tcpmux] listen.
    Tcpmux,
    /// The Message Send Protocol (RFC 1159, RFC 1312), the "msp" sockets
    /// or [msp] listen.
    Msp,
}

/// A `--log-level` that tracing accepts.
fn log_filter(text: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_string())
        .map_err(|e| format!("not a level or filter: {e}"))
}

/// [`log_filter`] as a value parser whose possible values are the
/// levels, for completion only: unlike clap's `PossibleValuesParser`, a
/// filter such as "tcpmuxd=debug" is accepted too.
#[derive(Clone)]
struct LogFilter;

impl clap::builder::TypedValueParser for LogFilter {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        log_filter.parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            LOG_LEVELS
                .iter()
                .map(|l| clap::builder::PossibleValue::new(*l)),
        ))
    }
}

/// The command line as clap sees it: for the binary, the man page and the
/// shell completions alike.
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_level(value: &str) -> Result<String, String> {
        Args::try_parse_from(["tcpmuxd", "--log-level", value])
            .map(|a| a.log_level)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn log_level_takes_a_level_or_any_filter() {
        for level in LOG_LEVELS {
            assert_eq!(log_level(level).as_deref(), Ok(*level));
        }
        assert_eq!(
            log_level("tcpmuxd=debug,warn").as_deref(),
            Ok("tcpmuxd=debug,warn")
        );
        let err = log_level("tcpmuxd=loud").unwrap_err();
        assert!(err.contains("tcpmuxd=loud"), "{err}");
        assert!(err.contains("not a level or filter"), "{err}");
    }
}
