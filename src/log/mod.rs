//! Logging: structured entries to journald when the journal is where our
//! output goes, readable lines on stderr otherwise.

pub mod budget;

use budget::BudgetLayer;
use clap::ValueEnum;
use std::fmt::Write as _;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::layer::Context;
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// The target of the entries that carry a line of an exec session's
/// standard error. In the journal, such an entry is the program's own, as
/// a unit's stderr line is: `SYSLOG_IDENTIFIER=tcpmux-NAME`,
/// `SYSLOG_PID=` the program's, the line as `MESSAGE`. Its fields:
/// `tcpmux_service`, `pid`, `line` (escaped); its message is the line as
/// stderr shows it, `tcpmux-NAME[PID]: LINE`.
pub const SESSION_STDERR: &str = "tcpmuxd::session_stderr";

/// The `SYSLOG_IDENTIFIER` of a session's own lines, exec or systemd:
/// `tcpmux-` and the service's name.
pub const SESSION_IDENTIFIER_PREFIX: &str = "tcpmux-";

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
                    .with(JournalLayer(layer))
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
    // Under systemd, journald adds its own timestamps.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(Plain {
            time: !connected_to_journal,
        });
    tracing_subscriber::registry()
        .with(filter)
        .with(BudgetLayer)
        .with(fmt)
        .init();
    Ok(LogTarget::Stderr)
}

/// The lines on stderr: time (unless journald adds its own), level and
/// the message alone. Every message says in words what its entry's fields
/// hold for the journal (`echo from 192.0.2.7:51234: denied`), so the
/// fields are not written again after it.
struct Plain {
    time: bool,
}

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if self.time {
            SystemTime.format_time(&mut writer)?;
            writer.write_char(' ')?;
        }
        write!(writer, "{:>5} ", event.metadata().level())?;
        let mut message = MessageOnly {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut message);
        message.result?;
        writeln!(writer)
    }
}

/// Writes the `message` field of an event, and nothing else.
struct MessageOnly<'a, 'w> {
    writer: &'a mut Writer<'w>,
    result: std::fmt::Result,
}

impl Visit for MessageOnly<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.result = write!(self.writer, "{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.result = self.writer.write_str(value);
        }
    }
}

/// tracing-journald's layer for tcpmuxd's own entries; the lines of an
/// exec session's stderr ([`SESSION_STDERR`]) go to the journal as the
/// program's, under its service's identifier, which that layer cannot
/// set per entry.
struct JournalLayer(tracing_journald::Layer);

impl<S> tracing_subscriber::Layer<S> for JournalLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        self.0.on_new_span(attrs, id, ctx);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        self.0.on_record(id, values, ctx);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != SESSION_STDERR {
            return self.0.on_event(event, ctx);
        }
        let mut line = StderrLine::default();
        event.record(&mut line);
        let fields = [
            (
                "SYSLOG_IDENTIFIER",
                format!("{SESSION_IDENTIFIER_PREFIX}{}", line.service),
            ),
            ("SYSLOG_PID", line.pid),
            ("TCPMUX_SERVICE", line.service),
            ("REMOTE_ADDR", line.remote_addr),
        ];
        // Nothing to do about a journal that went away: as tracing-journald.
        let _ = libsystemd::logging::journal_send(
            libsystemd::logging::Priority::Info,
            &line.line,
            fields.iter().map(|(k, v)| (k, v)),
        );
    }
}

/// The fields of a [`SESSION_STDERR`] entry.
#[derive(Default)]
struct StderrLine {
    service: String,
    pid: String,
    remote_addr: String,
    line: String,
}

impl Visit for StderrLine {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let slot = match field.name() {
            "tcpmux_service" => &mut self.service,
            "pid" => &mut self.pid,
            "remote_addr" => &mut self.remote_addr,
            "line" => &mut self.line,
            _ => return,
        };
        let _ = write!(slot, "{value:?}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "pid" {
            let _ = write!(self.pid, "{value}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }
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
