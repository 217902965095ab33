//! Every bound tcpmuxd enforces, with its default, in one place.
//!
//! Values an administrator may want to change are defaults for config keys;
//! the rest are fixed protocol or safety bounds.

use std::time::Duration;

/// Longest service name accepted from a client, in bytes, not counting the
/// line end. RFC 1078 sets none; FreeBSD inetd allows 256 with its NUL.
pub const MAX_NAME_LEN: usize = 255;

/// Longest request line, in bytes: the name plus CR and LF.
pub const MAX_LINE_LEN: usize = MAX_NAME_LEN + 2;

/// Default for `[tcpmux] name_timeout`: time a client has to send its whole
/// request line, and to take the reply.
pub const DEFAULT_NAME_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound for `name_timeout`, so a typo cannot disable the timeout.
pub const MAX_NAME_TIMEOUT: Duration = Duration::from_secs(300);

/// Default for `[tcpmux] max_handshakes`: connections allowed at once in the
/// handshake phase (accepted, not yet answered or handed to a service).
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;

/// Default for `[[service]] max_instances`: sessions of one service running
/// at once.
pub const DEFAULT_MAX_INSTANCES: usize = 64;

/// Pause after an `accept()` error (for example EMFILE) before the next try,
/// so that a full descriptor table does not make the accept loop spin.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Longest line of a service's stderr copied to the log as one entry; longer
/// lines are split.
pub const MAX_STDERR_LINE: usize = 4096;

/// How often the `STATUS=` line sent to systemd is refreshed when counters
/// changed.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Extra time given to in-flight handshakes on shutdown, beyond
/// `name_timeout`, before the daemon exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// After a refusal or the HELP list, tcpmuxd closes its side and reads what
/// the client still sends, up to this many bytes, so that closing does not
/// reset the connection before the client has read the reply.
pub const DRAIN_LIMIT: usize = 64 * 1024;

/// How long that draining may take at most.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Time systemd has to start a session unit (its start job to end) before
/// the connection is given up.
pub const UNIT_START_TIMEOUT: Duration = Duration::from_secs(30);

/// First and longest pause between attempts to reconnect to the system bus.
pub const BUS_RECONNECT_MIN: Duration = Duration::from_millis(500);
pub const BUS_RECONNECT_MAX: Duration = Duration::from_secs(30);
