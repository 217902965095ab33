//! Logging: structured entries to journald when the journal is where our
//! output goes, readable lines on stderr otherwise.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogTarget {
    /// journald when stderr is connected to the journal, else stderr.
    Auto,
    /// The journal's native protocol, with structured fields.
    Journal,
    /// Human-readable lines on stderr.
    Stderr,
}

/// Sets up the global logger. `connected_to_journal`: whether stderr is the
/// journal's stream (`JOURNAL_STREAM` matches), as found at startup.
pub fn init(
    target: LogTarget,
    filter: &str,
    connected_to_journal: bool,
) -> Result<LogTarget, String> {
    let filter =
        EnvFilter::try_new(filter).map_err(|e| format!("--log-level \"{filter}\": {e}"))?;
    let use_journal = match target {
        LogTarget::Journal => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => connected_to_journal,
    };
    if use_journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("tcpmuxd".into())
                    .with_priority_mappings(tracing_journald::PriorityMappings {
                        info: tracing_journald::Priority::Informational,
                        debug: tracing_journald::Priority::Debug,
                        ..tracing_journald::PriorityMappings::new()
                    });
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .init();
                return Ok(LogTarget::Journal);
            }
            Err(e) if target == LogTarget::Journal => {
                return Err(format!("cannot connect to the journal: {e}"));
            }
            // The journal socket is gone: stderr still reaches the journal
            // as plain text.
            Err(_) => {}
        }
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    // Under systemd, journald adds its own timestamps.
    if connected_to_journal {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.without_time())
            .init();
    } else {
        tracing_subscriber::registry().with(filter).with(fmt).init();
    }
    Ok(LogTarget::Stderr)
}
