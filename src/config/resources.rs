//! What a service's program gets besides its command and environment:
//! resource limits and a umask, with their parsing and spelling. Pure.

use super::file::{Number, RawLimits};
use crate::limits;

/// A limit without bound (RLIM_INFINITY; systemd's "infinity").
pub const INFINITY: u64 = u64::MAX;

/// The resource limits a service's program starts with; None: not set
/// here, the program inherits (exec launcher: tcpmuxd's own, open files
/// the limit tcpmuxd was started with; systemd launcher: the unit's
/// defaults and drop-ins). Each sets the soft and the hard limit, as
/// systemd's `Limit*=` do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Open files (RLIMIT_NOFILE, `LimitNOFILE=`).
    pub open_files: Option<u64>,
    /// Processes of the program's user (RLIMIT_NPROC, `LimitNPROC=`).
    pub processes: Option<u64>,
    /// Address space, bytes (RLIMIT_AS, `LimitAS=`).
    pub address_space: Option<u64>,
    /// CPU time, seconds (RLIMIT_CPU, `LimitCPU=`).
    pub cpu_time: Option<u64>,
    /// Core dump size, bytes (RLIMIT_CORE, `LimitCORE=`).
    pub core_size: Option<u64>,
}

/// One kind of resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    OpenFiles,
    Processes,
    AddressSpace,
    CpuTime,
    CoreSize,
}

impl LimitKind {
    pub const ALL: [LimitKind; 5] = [
        LimitKind::OpenFiles,
        LimitKind::Processes,
        LimitKind::AddressSpace,
        LimitKind::CpuTime,
        LimitKind::CoreSize,
    ];

    /// The key in a `limits` table.
    pub fn key(self) -> &'static str {
        match self {
            LimitKind::OpenFiles => "open_files",
            LimitKind::Processes => "processes",
            LimitKind::AddressSpace => "address_space",
            LimitKind::CpuTime => "cpu_time",
            LimitKind::CoreSize => "core_size",
        }
    }

    /// The unit property that sets it under systemd.
    pub fn property(self) -> &'static str {
        match self {
            LimitKind::OpenFiles => "LimitNOFILE",
            LimitKind::Processes => "LimitNPROC",
            LimitKind::AddressSpace => "LimitAS",
            LimitKind::CpuTime => "LimitCPU",
            LimitKind::CoreSize => "LimitCORE",
        }
    }

    /// The resource setrlimit(2) takes.
    pub fn resource(self) -> rustix::process::Resource {
        use rustix::process::Resource;
        match self {
            LimitKind::OpenFiles => Resource::Nofile,
            LimitKind::Processes => Resource::Nproc,
            LimitKind::AddressSpace => Resource::As,
            LimitKind::CpuTime => Resource::Cpu,
            LimitKind::CoreSize => Resource::Core,
        }
    }

    /// Reads a value as written, within this limit's bounds.
    fn parse(self, value: &Number) -> Result<u64, String> {
        let v = match (self, value) {
            (_, Number::Text(t)) if t == "infinity" => INFINITY,
            (LimitKind::OpenFiles | LimitKind::Processes, Number::Whole(n)) => whole(*n)?,
            (LimitKind::OpenFiles | LimitKind::Processes, Number::Text(t)) => {
                return Err(format!(
                    "\"{t}\" is not a number: write a whole number (or \"infinity\")"
                ));
            }
            (LimitKind::AddressSpace | LimitKind::CoreSize, Number::Whole(n)) => whole(*n)?,
            (LimitKind::AddressSpace | LimitKind::CoreSize, Number::Text(t)) => parse_size(t)?,
            (LimitKind::CpuTime, Number::Text(t)) => {
                let d = humantime::parse_duration(t).map_err(|e| {
                    format!(
                        "\"{t}\" is not a duration ({e}): write a number and a unit, such as \
                         \"10min\" or \"1h\" (or \"infinity\")"
                    )
                })?;
                // RLIMIT_CPU counts whole seconds: round up.
                d.as_secs() + u64::from(d.subsec_nanos() > 0)
            }
            (LimitKind::CpuTime, Number::Whole(n)) => {
                return Err(format!(
                    "{n} has no unit: write a duration, such as \"10min\" or \"1h\" (or \
                     \"infinity\")"
                ));
            }
        };
        let (min, max) = self.bounds();
        if v == INFINITY && self != LimitKind::OpenFiles || (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(format!(
                "{} is out of range ({})",
                self.show(v),
                self.range()
            ))
        }
    }

    /// The values accepted, other than "infinity".
    fn bounds(self) -> (u64, u64) {
        match self {
            LimitKind::OpenFiles => (1, limits::MAX_OPEN_FILES),
            LimitKind::Processes => (1, limits::MAX_PROCESSES),
            LimitKind::AddressSpace => (limits::MIN_ADDRESS_SPACE, INFINITY - 1),
            LimitKind::CpuTime => (1, INFINITY - 1),
            LimitKind::CoreSize => (0, INFINITY - 1),
        }
    }

    /// The values accepted, in words.
    pub fn range(self) -> String {
        let (min, max) = self.bounds();
        match self {
            LimitKind::OpenFiles => format!("{min} to {max}"),
            LimitKind::Processes => format!("{min} to {max}, or \"infinity\""),
            LimitKind::AddressSpace => format!(
                "a size of at least {}, or \"infinity\"",
                show_size(limits::MIN_ADDRESS_SPACE)
            ),
            LimitKind::CpuTime => "a duration of at least 1s, or \"infinity\"".into(),
            LimitKind::CoreSize => "a size, 0 for no core dumps, or \"infinity\"".into(),
        }
    }

    /// A value as the configuration file spells it.
    pub fn show(self, v: u64) -> String {
        if v == INFINITY {
            return "\"infinity\"".into();
        }
        match self {
            LimitKind::OpenFiles | LimitKind::Processes => v.to_string(),
            LimitKind::AddressSpace | LimitKind::CoreSize => show_size(v),
            LimitKind::CpuTime => format!(
                "\"{}\"",
                humantime::format_duration(std::time::Duration::from_secs(v))
            ),
        }
    }
}

impl ResourceLimits {
    pub fn get(&self, kind: LimitKind) -> Option<u64> {
        match kind {
            LimitKind::OpenFiles => self.open_files,
            LimitKind::Processes => self.processes,
            LimitKind::AddressSpace => self.address_space,
            LimitKind::CpuTime => self.cpu_time,
            LimitKind::CoreSize => self.core_size,
        }
    }

    fn slot(&mut self, kind: LimitKind) -> &mut Option<u64> {
        match kind {
            LimitKind::OpenFiles => &mut self.open_files,
            LimitKind::Processes => &mut self.processes,
            LimitKind::AddressSpace => &mut self.address_space,
            LimitKind::CpuTime => &mut self.cpu_time,
            LimitKind::CoreSize => &mut self.core_size,
        }
    }

    /// The limits set, with their kind.
    pub fn set(&self) -> impl Iterator<Item = (LimitKind, u64)> + '_ {
        LimitKind::ALL
            .into_iter()
            .filter_map(|k| self.get(k).map(|v| (k, v)))
    }

    /// These limits, with those `over` sets in their place.
    pub fn overridden_by(mut self, over: &ResourceLimits) -> ResourceLimits {
        for (kind, v) in over.set() {
            *self.slot(kind) = Some(v);
        }
        self
    }
}

/// Reads a `limits` table as written; errors as (key, message).
pub(super) fn read_limits(raw: &RawLimits) -> (ResourceLimits, Vec<(&'static str, String)>) {
    let mut limits = ResourceLimits::default();
    let mut errors = Vec::new();
    for kind in LimitKind::ALL {
        let value = match kind {
            LimitKind::OpenFiles => &raw.open_files,
            LimitKind::Processes => &raw.processes,
            LimitKind::AddressSpace => &raw.address_space,
            LimitKind::CpuTime => &raw.cpu_time,
            LimitKind::CoreSize => &raw.core_size,
        };
        if let Some(value) = value {
            match kind.parse(value) {
                Ok(v) => *limits.slot(kind) = Some(v),
                Err(e) => errors.push((kind.key(), e)),
            }
        }
    }
    (limits, errors)
}

fn whole(n: i64) -> Result<u64, String> {
    u64::try_from(n).map_err(|_| format!("{n} is negative"))
}

/// Binary units of sizes, as systemd reads `LimitAS=`: K is 1024 bytes.
const SIZE_UNITS: [(&str, u64); 5] = [
    ("E", 1 << 60),
    ("P", 1 << 50),
    ("T", 1 << 40),
    ("G", 1 << 30),
    ("M", 1 << 20),
];
const KIB: (&str, u64) = ("K", 1 << 10);

/// A size as written: bytes, or a whole number with K, M, G, T, P or E
/// (powers of 1024), or "infinity".
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "\"{text}\" is not a size: write a whole number of bytes, or one with K, M, G or T \
             (1024-based), such as \"512M\" or \"1G\" (or \"infinity\")"
        )
    };
    if text == "infinity" {
        return Ok(INFINITY);
    }
    let t = text.trim();
    let (digits, factor) = match SIZE_UNITS
        .iter()
        .chain(std::iter::once(&KIB))
        .find(|(u, _)| t.ends_with(u))
    {
        Some((u, f)) => (t[..t.len() - u.len()].trim_end(), *f),
        None => (t, 1),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(factor)
        .filter(|&v| v != INFINITY)
        .ok_or_else(|| format!("\"{text}\" is too large"))
}

/// A size as the configuration file spells it: "1G" when it is a whole
/// number of a unit, else the bytes.
pub fn show_size(v: u64) -> String {
    if v == INFINITY {
        return "\"infinity\"".into();
    }
    SIZE_UNITS
        .iter()
        .chain(std::iter::once(&KIB))
        .find(|(_, f)| v != 0 && v % f == 0)
        .map_or_else(|| v.to_string(), |(u, f)| format!("\"{}{u}\"", v / f))
}

/// A umask as written: a string of octal digits ("0027") or a TOML
/// integer (0o027).
pub(super) fn parse_umask(value: &Number) -> Result<u32, String> {
    let v = match value {
        Number::Whole(n) => u32::try_from(*n).ok(),
        Number::Text(t) if !t.is_empty() && t.len() <= 4 => u32::from_str_radix(t, 8).ok(),
        Number::Text(_) => None,
    };
    v.filter(|&m| m <= 0o777).ok_or_else(|| {
        let written = match value {
            Number::Whole(n) => n.to_string(),
            Number::Text(t) => format!("\"{t}\""),
        };
        format!(
            "{written} is not a umask: write octal digits from \"0000\" to \"0777\", such as \
             \"0027\""
        )
    })
}

/// A umask as the configuration file spells it.
pub fn show_umask(mask: u32) -> String {
    format!("{mask:04o}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_systemd_reads_them() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("infinity"), Ok(INFINITY));
        assert!(parse_size("1 gigabyte").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("16E").is_err());
        assert_eq!(show_size(1 << 30), "\"1G\"");
        assert_eq!(show_size(1000), "1000");
        assert_eq!(show_size(0), "0");
    }

    #[test]
    fn each_limit_has_its_bounds() {
        let w = |n| Number::Whole(n);
        let t = |s: &str| Number::Text(s.into());
        assert_eq!(LimitKind::OpenFiles.parse(&w(1024)), Ok(1024));
        let e = LimitKind::OpenFiles.parse(&w(4294967296)).unwrap_err();
        assert_eq!(e, "4294967296 is out of range (1 to 1048576)");
        assert!(LimitKind::OpenFiles.parse(&t("infinity")).is_err());
        assert_eq!(LimitKind::Processes.parse(&t("infinity")), Ok(INFINITY));
        assert_eq!(LimitKind::CpuTime.parse(&t("10min")), Ok(600));
        assert_eq!(LimitKind::CpuTime.parse(&t("1500ms")), Ok(2));
        assert!(LimitKind::CpuTime.parse(&w(10)).is_err());
        assert_eq!(LimitKind::CoreSize.parse(&w(0)), Ok(0));
        assert!(LimitKind::AddressSpace.parse(&t("1M")).is_err());
        assert!(
            LimitKind::Processes
                .parse(&w(-1))
                .unwrap_err()
                .contains("negative")
        );
    }

    #[test]
    fn umasks() {
        assert_eq!(parse_umask(&Number::Text("0027".into())), Ok(0o027));
        assert_eq!(parse_umask(&Number::Whole(0o077)), Ok(0o077));
        assert!(parse_umask(&Number::Text("0999".into())).is_err());
        assert!(parse_umask(&Number::Whole(0o1777)).is_err());
        assert_eq!(show_umask(0o27), "0027");
    }

    #[test]
    fn a_service_overrides_each_limit_of_the_default() {
        let default = ResourceLimits {
            open_files: Some(1024),
            core_size: Some(0),
            ..Default::default()
        };
        let own = ResourceLimits {
            open_files: Some(64),
            processes: Some(8),
            ..Default::default()
        };
        let both = default.overridden_by(&own);
        assert_eq!(both.open_files, Some(64));
        assert_eq!(both.processes, Some(8));
        assert_eq!(both.core_size, Some(0));
        assert_eq!(both.cpu_time, None);
    }
}
