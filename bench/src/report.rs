//! The comparison table: for every figure, the median over the rounds of
//! each server, then tcpmuxd's as a ratio to the floor and to the best
//! peer, and whether it meets its target. Ratios, because on a shared
//! machine the absolute rates move from run to run while ratios between
//! servers measured alternately in the same minutes hold.

use crate::record::Record;
use std::collections::BTreeMap;
use std::fmt::Write;

pub const SUBJECT: &str = "tcpmuxd";
/// An earlier build of tcpmuxd measured beside it (`BASELINE=` of run.sh):
/// not a peer, but a column and a ratio of its own.
pub const BASELINE: &str = "tcpmuxd-before";
pub const FLOOR: &str = "floor";

/// The targets against the floors (issue 18): tcpmuxd's HELP within 10 %
/// of a server that does nothing but answer, its dispatch no slower than
/// one that does nothing but `posix_spawn`.
const HELP_FLOOR_TARGET: f64 = 0.9;
const DISPATCH_FLOOR_TARGET: f64 = 1.0;

/// The figures in the order of the table.
const TESTS: &[&str] = &["help", "dispatch", "msp", "rss-idle", "rss-conn"];

const KIB: f64 = 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

/// One server's figure for one row: medians over its rounds.
struct Cell {
    value: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    rounds: usize,
    note: String,
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn cell(records: &[&Record]) -> Cell {
    let pick =
        |f: fn(&Record) -> f64| median(&mut records.iter().map(|r| f(r)).collect::<Vec<_>>());
    let value = pick(|r| r.value);
    // The note of the round closest to the median tells its story.
    let note = records
        .iter()
        .min_by(|a, b| (a.value - value).abs().total_cmp(&(b.value - value).abs()))
        .map(|r| r.note.clone())
        .unwrap_or_default();
    Cell {
        value,
        p50_us: pick(|r| r.p50_us),
        p99_us: pick(|r| r.p99_us),
        errors: records.iter().map(|r| r.errors).sum(),
        rounds: records.len(),
        note,
    }
}

fn lower_is_better(test: &str) -> bool {
    test.starts_with("rss")
}

fn row_title(test: &str, concurrency: usize) -> String {
    let clients = if concurrency == 1 {
        "1 client".to_string()
    } else {
        format!("{concurrency} clients")
    };
    match test {
        "help" => format!("HELP handshakes/s, {clients}"),
        "dispatch" => format!("dispatch to /bin/cat/s, {clients}"),
        "msp" => format!("MSP B over UDP delivered/s, {clients}"),
        "rss-idle" => "RSS idle (lower is better)".into(),
        "rss-conn" => format!("RSS per silent connection, {concurrency} held (lower is better)"),
        other => format!("{other}, {concurrency}"),
    }
}

fn ms(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.0}", us / 1000.0)
    } else {
        format!("{:.2}", us / 1000.0)
    }
}

fn bytes(b: f64) -> String {
    if b >= MIB {
        format!("{:.1} MiB", b / MIB)
    } else if b >= KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{b:.0} B")
    }
}

fn show(test: &str, c: &Cell) -> String {
    let errors = if c.errors == 0 {
        "0 err".to_string()
    } else {
        format!("**{} err**", c.errors)
    };
    match test {
        "rss-idle" => bytes(c.value * KIB),
        "rss-conn" => format!("{}, {errors}", bytes(c.value)),
        _ => format!(
            "{:.0}/s (p50 {} ms, p99 {} ms), {errors}",
            c.value,
            ms(c.p50_us),
            ms(c.p99_us)
        ),
    }
}

fn absent(test: &str, server: &str) -> &'static str {
    match (test, server) {
        ("help", _) if server != FLOOR => "no HELP",
        ("msp", _) if server != FLOOR => "no MSP",
        ("rss-conn", FLOOR) => "n/a (serial)",
        _ => "not measured",
    }
}

/// tcpmuxd's value as a multiple of another's: above 1 is tcpmuxd ahead
/// for rates, behind for memory.
fn ratio(subject: &Cell, other: Option<&Cell>) -> Option<f64> {
    other
        .filter(|o| o.value > 0.0)
        .map(|o| subject.value / o.value)
}

fn show_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into())
}

/// The target of issue 6 for a row, and whether tcpmuxd meets it.
fn target(
    test: &str,
    subject: Option<&Cell>,
    floor: Option<f64>,
    by_peer: &BTreeMap<&str, f64>,
    best: Option<f64>,
) -> (String, String) {
    let Some(s) = subject else {
        return (String::new(), "not measured".into());
    };
    let verdict = |ok: bool, why: String| {
        if ok {
            "yes".to_string()
        } else {
            format!("**no** ({why})")
        }
    };
    let at_least = |r: Option<f64>, min: f64| r.is_some_and(|r| r >= min);
    match test {
        "help" => {
            let inetutils = by_peer.get("inetutils-inetd").copied();
            let ok =
                at_least(floor, HELP_FLOOR_TARGET) && at_least(inetutils, 20.0) && s.errors == 0;
            (
                format!("≥ {HELP_FLOOR_TARGET}x floor, ≥ 20x inetutils-inetd"),
                verdict(
                    ok,
                    format!(
                        "{}x floor, {}x inetutils-inetd",
                        short(floor),
                        short(inetutils)
                    ),
                ),
            )
        }
        "dispatch" => {
            let ok = at_least(floor, DISPATCH_FLOOR_TARGET) && at_least(best, 1.2) && s.errors == 0;
            (
                format!("≥ {DISPATCH_FLOOR_TARGET}x floor, ≥ 1.2x best peer"),
                verdict(
                    ok,
                    format!("{}x floor, {}x best peer", short(floor), short(best)),
                ),
            )
        }
        "msp" => (
            "none lost, no errors".into(),
            verdict(s.errors == 0, format!("{} errors", s.errors)),
        ),
        "rss-idle" => (
            "< 8 MiB".into(),
            verdict(s.value * KIB < 8.0 * MIB, bytes(s.value * KIB)),
        ),
        "rss-conn" => (
            "< 4 KiB".into(),
            verdict(s.value < 4.0 * KIB && s.errors == 0, bytes(s.value)),
        ),
        _ => (String::new(), String::new()),
    }
}

fn short(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "?".into())
}

/// Rows of the table, in its order: for each figure and concurrency, each
/// server's records in the order of the file, which is the order of the
/// rounds.
type Groups<'a> = BTreeMap<(usize, usize), BTreeMap<&'a str, Vec<&'a Record>>>;

fn groups(records: &[Record]) -> Groups<'_> {
    let mut groups = Groups::new();
    for r in records {
        let order = TESTS
            .iter()
            .position(|t| *t == r.test)
            .unwrap_or(TESTS.len());
        groups
            .entry((order, r.concurrency))
            .or_default()
            .entry(r.server.as_str())
            .or_default()
            .push(r);
    }
    groups
}

/// The Markdown table of `records`, followed by the notes of each figure.
pub fn table(records: &[Record]) -> String {
    let mut peers: Vec<&str> = Vec::new();
    for r in records {
        if r.server != SUBJECT
            && r.server != FLOOR
            && r.server != BASELINE
            && !peers.contains(&r.server.as_str())
        {
            peers.push(&r.server);
        }
    }
    let groups = groups(records);
    let with_baseline = records.iter().any(|r| r.server == BASELINE);
    let mut servers = vec![SUBJECT, FLOOR];
    if with_baseline {
        servers.push(BASELINE);
    }
    servers.extend(&peers);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| figure | {} | tcpmuxd / floor | tcpmuxd / best peer | target | met |{}",
        servers.join(" | "),
        if with_baseline {
            " tcpmuxd / before |"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "|---|{}---|---|---|---|{}",
        "---|".repeat(servers.len()),
        if with_baseline { "---|" } else { "" }
    );
    let mut notes = String::new();
    let mut rounds = 0;
    for ((order, concurrency), by_server) in &groups {
        let test = TESTS.get(*order).copied().unwrap_or("?");
        let cells: BTreeMap<&str, Cell> = by_server.iter().map(|(s, rs)| (*s, cell(rs))).collect();
        let subject = cells.get(SUBJECT);
        let mut line = format!("| {} |", row_title(test, *concurrency));
        for server in &servers {
            let text = match cells.get(server) {
                Some(c) => {
                    rounds = rounds.max(c.rounds);
                    if !c.note.is_empty() {
                        let _ = writeln!(
                            notes,
                            "- {}, {server}: {}",
                            row_title(test, *concurrency),
                            c.note
                        );
                    }
                    show(test, c)
                }
                None => absent(test, server).to_string(),
            };
            let _ = write!(line, " {text} |");
        }
        let (floor, by_peer, best) = match subject {
            Some(s) => {
                let by_peer: BTreeMap<&str, f64> = peers
                    .iter()
                    .filter_map(|p| ratio(s, cells.get(p)).map(|r| (*p, r)))
                    .collect();
                // The best peer is the one tcpmuxd compares worst against.
                let best = if lower_is_better(test) {
                    by_peer.values().copied().reduce(f64::max)
                } else {
                    by_peer.values().copied().reduce(f64::min)
                };
                (ratio(s, cells.get(FLOOR)), by_peer, best)
            }
            None => (None, BTreeMap::new(), None),
        };
        let (goal, met) = target(test, subject, floor, &by_peer, best);
        let _ = write!(
            line,
            " {} | {} | {goal} | {met} |",
            show_ratio(floor),
            show_ratio(best)
        );
        if with_baseline {
            let before = subject.and_then(|s| ratio(s, cells.get(BASELINE)));
            let _ = write!(line, " {} |", show_ratio(before));
        }
        line.push('\n');
        out += &line;
    }
    let _ = writeln!(
        out,
        "\nMedians of {rounds} round{} per server. Ratios are tcpmuxd's figure divided by the other's: \
         above 1 is better for rates, below 1 is better for memory.",
        if rounds == 1 { "" } else { "s" }
    );
    if !notes.is_empty() {
        let _ = write!(out, "\nNotes (the median round of each figure):\n\n{notes}");
    }
    out
}

/// The figure tcpmuxd must reach as a multiple of the floor, where it has
/// one.
fn floor_target(test: &str) -> Option<f64> {
    match test {
        "help" => Some(HELP_FLOOR_TARGET),
        "dispatch" => Some(DISPATCH_FLOOR_TARGET),
        _ => None,
    }
}

/// tcpmuxd's ratio to another server in each round: run.sh measures every
/// server once a round, one after the other, so the k-th record of each
/// comes from round k.
fn round_ratios(subject: &[&Record], other: &[&Record]) -> Vec<f64> {
    subject
        .iter()
        .zip(other)
        .filter(|(_, o)| o.value > 0.0)
        .map(|(s, o)| s.value / o.value)
        .collect()
}

/// The median ratio, then the lowest and highest of a round: how far one
/// round can be trusted.
fn ratio_with_spread(
    subject: Option<&Cell>,
    other: Option<&Cell>,
    subject_records: &[&Record],
    other_records: &[&Record],
) -> String {
    let Some(median) = subject.and_then(|s| ratio(s, other)) else {
        return "-".into();
    };
    let rounds = round_ratios(subject_records, other_records);
    match (
        rounds.iter().copied().reduce(f64::min),
        rounds.iter().copied().reduce(f64::max),
    ) {
        (Some(low), Some(high)) if rounds.len() > 1 => {
            format!("{median:.2}x ({low:.2}-{high:.2})")
        }
        _ => format!("{median:.2}x"),
    }
}

fn rate(c: Option<&Cell>) -> String {
    match c {
        None => "not measured".into(),
        Some(c) if c.errors == 0 => format!("{:.0}/s", c.value),
        Some(c) => format!("{:.0}/s, **{} err**", c.value, c.errors),
    }
}

/// The short table of `run.sh --quick`: each load figure of tcpmuxd as a
/// ratio to the floor (and to the earlier build, when there is one), with
/// the spread over the rounds and the floor target. Memory figures and
/// peers, which the quick mode does not measure, are left out.
pub fn quick_table(records: &[Record]) -> String {
    let with_baseline = records.iter().any(|r| r.server == BASELINE);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| figure | tcpmuxd | floor | tcpmuxd / floor | target |{}",
        if with_baseline {
            " before | tcpmuxd / before |"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---|{}",
        if with_baseline { "---|---|" } else { "" }
    );
    let mut rounds = 0;
    for ((order, concurrency), by_server) in &groups(records) {
        let test = TESTS.get(*order).copied().unwrap_or("?");
        if lower_is_better(test) {
            continue;
        }
        let records_of = |server: &str| by_server.get(server).cloned().unwrap_or_default();
        let cell_of = |server: &str| by_server.get(server).map(|rs| cell(rs));
        let (subject, floor, before) = (cell_of(SUBJECT), cell_of(FLOOR), cell_of(BASELINE));
        rounds = [&subject, &floor, &before]
            .iter()
            .filter_map(|c| c.as_ref().map(|c| c.rounds))
            .fold(rounds, usize::max);
        let to_floor = subject.as_ref().and_then(|s| ratio(s, floor.as_ref()));
        let goal = match floor_target(test) {
            Some(min) => {
                let met = to_floor.is_some_and(|r| r >= min)
                    && subject.as_ref().is_some_and(|s| s.errors == 0);
                format!("≥ {min}x: {}", if met { "yes" } else { "**no**" })
            }
            None => "-".into(),
        };
        let _ = write!(
            out,
            "| {} | {} | {} | {} | {goal} |",
            row_title(test, *concurrency),
            rate(subject.as_ref()),
            rate(floor.as_ref()),
            ratio_with_spread(
                subject.as_ref(),
                floor.as_ref(),
                &records_of(SUBJECT),
                &records_of(FLOOR)
            ),
        );
        if with_baseline {
            let _ = write!(
                out,
                " {} | {} |",
                rate(before.as_ref()),
                ratio_with_spread(
                    subject.as_ref(),
                    before.as_ref(),
                    &records_of(SUBJECT),
                    &records_of(BASELINE)
                ),
            );
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "\nMedians of {rounds} round{}; in brackets the lowest and highest ratio of one round. \
         Above 1 is tcpmuxd faster.",
        if rounds == 1 { "" } else { "s" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(test: &str, server: &str, value: f64, errors: u64) -> Record {
        Record {
            test: test.into(),
            concurrency: 8,
            server: server.into(),
            value,
            p50_us: 100.0,
            p99_us: 900.0,
            errors,
            note: String::new(),
        }
    }

    #[test]
    fn ratios_and_targets() {
        let records = vec![
            rec("help", SUBJECT, 950.0, 0),
            rec("help", SUBJECT, 1000.0, 0),
            rec("help", SUBJECT, 2000.0, 0),
            rec("help", FLOOR, 1000.0, 0),
            rec("help", "inetutils-inetd", 40.0, 0),
            rec("dispatch", SUBJECT, 100.0, 0),
            rec("dispatch", FLOOR, 100.0, 0),
            rec("dispatch", "xinetd", 90.0, 0),
            rec("dispatch", "inetutils-inetd", 50.0, 0),
        ];
        let t = table(&records);
        let help = t.lines().find(|l| l.contains("HELP")).unwrap();
        assert!(help.contains("| 1.00x | 25.00x |"), "{help}");
        assert!(help.contains("no HELP"), "{help}");
        assert!(help.ends_with("| yes |"), "{help}");
        let dispatch = t.lines().find(|l| l.contains("dispatch")).unwrap();
        assert!(dispatch.contains("| 1.00x | 1.11x |"), "{dispatch}");
        assert!(dispatch.contains("**no**"), "{dispatch}");
    }

    fn rounds(test: &str, server: &str, values: &[f64]) -> Vec<Record> {
        values.iter().map(|v| rec(test, server, *v, 0)).collect()
    }

    #[test]
    fn quick_table_gives_median_ratios_their_spread_and_the_floor_targets() {
        let mut records = Vec::new();
        // Round by round, as run.sh appends them: tcpmuxd and the floor
        // alternate.
        for (s, f) in [(900.0, 1000.0), (1000.0, 1000.0), (1100.0, 1000.0)] {
            records.extend(rounds("help", SUBJECT, &[s]));
            records.extend(rounds("help", FLOOR, &[f]));
        }
        records.extend(rounds("dispatch", SUBJECT, &[80.0, 95.0, 90.0]));
        records.extend(rounds("dispatch", FLOOR, &[100.0, 100.0, 100.0]));
        // What the quick mode does not measure is not shown.
        records.push(rec("dispatch", "xinetd", 50.0, 0));
        records.push(rec("rss-idle", SUBJECT, 4000.0, 0));
        let t = quick_table(&records);
        let help = t.lines().find(|l| l.contains("HELP")).unwrap();
        assert_eq!(
            help,
            "| HELP handshakes/s, 8 clients | 1000/s | 1000/s | 1.00x (0.90-1.10) | ≥ 0.9x: yes |"
        );
        let dispatch = t.lines().find(|l| l.contains("dispatch")).unwrap();
        assert_eq!(
            dispatch,
            "| dispatch to /bin/cat/s, 8 clients | 90/s | 100/s | 0.90x (0.80-0.95) | ≥ 1x: **no** |"
        );
        assert!(
            !t.contains("xinetd") && !t.contains("RSS") && !t.contains("before"),
            "{t}"
        );
        assert!(t.contains("Medians of 3 rounds"), "{t}");
    }

    #[test]
    fn quick_table_compares_with_the_earlier_build_and_flags_errors() {
        let mut records = rounds("dispatch", SUBJECT, &[120.0]);
        records.push(rec("dispatch", SUBJECT, 100.0, 3));
        records.extend(rounds("dispatch", FLOOR, &[100.0, 100.0]));
        records.extend(rounds("dispatch", BASELINE, &[80.0, 100.0]));
        let t = quick_table(&records);
        assert!(t.starts_with("| figure | tcpmuxd | floor | tcpmuxd / floor | target | before | tcpmuxd / before |\n"), "{t}");
        let dispatch = t.lines().find(|l| l.contains("dispatch")).unwrap();
        assert_eq!(
            dispatch,
            "| dispatch to /bin/cat/s, 8 clients | 110/s, **3 err** | 100/s | 1.10x (1.00-1.20) \
             | ≥ 1x: **no** | 90/s | 1.22x (1.00-1.50) |"
        );
    }
}
