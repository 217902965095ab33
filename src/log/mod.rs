//! Logging: structured entries to journald when the journal is where our
//! output goes, readable lines on stderr otherwise.

pub mod budget;

use budget::BudgetLayer;
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
                    .with(BudgetLayer)
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
            .with(BudgetLayer)
            .with(fmt.without_time())
            .init();
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(BudgetLayer)
            .with(fmt)
            .init();
    }
    Ok(LogTarget::Stderr)
}

/// A value that a peer or a session's program chose, made safe for the
/// log: C0 controls, DEL and every invalid UTF-8 byte are written as
/// `\xNN`; C1 controls, the line and paragraph separators and the marks and
/// overrides of bidirectional text as `\u{NNNN}`. A line feed or an escape
/// sequence from a client then cannot forge a log line or reach the
/// terminal of whoever reads the log, on stderr or in the journal.
///
/// Every value that comes from outside is logged through this one type.
pub struct Escaped<'a>(&'a [u8]);

/// The [`Escaped`] form of `value`, for `%escaped(v)` in log fields and
/// `{}` in messages.
pub fn escaped<T: AsRef<[u8]> + ?Sized>(value: &T) -> Escaped<'_> {
    Escaped(value.as_ref())
}

/// Whether `c` must not reach a log reader's terminal as it is: controls,
/// line and paragraph separators, and the marks and overrides of
/// bidirectional text.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for chunk in self.0.utf8_chunks() {
            let text = chunk.valid();
            let mut start = 0;
            for (i, c) in text.char_indices() {
                if needs_escape(c) {
                    f.write_str(&text[start..i])?;
                    // C0 and DEL as the bytes they are; the rest as code
                    // points, told apart from invalid bytes.
                    match u8::try_from(u32::from(c)) {
                        Ok(b) if b < 0x80 => write!(f, "\\x{b:02x}")?,
                        _ => write!(f, "\\u{{{:04x}}}", u32::from(c))?,
                    }
                    start = i + c.len_utf8();
                }
            }
            f.write_str(&text[start..])?;
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escaped("plain text").to_string(), "plain text");
        assert_eq!(
            escaped("a\nb\r\x1b[31mc\x7f").to_string(),
            "a\\x0ab\\x0d\\x1b[31mc\\x7f"
        );
        assert_eq!(
            escaped("caf\u{e9} \u{20ac}").to_string(),
            "caf\u{e9} \u{20ac}"
        );
        assert_eq!(escaped("\u{85}x\u{9b}").to_string(), "\\u{0085}x\\u{009b}");
        assert_eq!(
            escaped(b"\x85".as_slice()).to_string(),
            "\\x85",
            "an invalid byte"
        );
        assert_eq!(
            escaped("a\u{2028}b\u{200f}c\u{61c}").to_string(),
            "a\\u{2028}b\\u{200f}c\\u{061c}"
        );
        assert_eq!(
            escaped("a\u{202e}b\u{2066}").to_string(),
            "a\\u{202e}b\\u{2066}"
        );
        assert_eq!(
            escaped(b"ok\xff\xfe!".as_slice()).to_string(),
            "ok\\xff\\xfe!"
        );
        assert_eq!(escaped("\t").to_string(), "\\x09");
    }
}
