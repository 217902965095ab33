//! The man pages and shell completions the packages ship: generated from
//! the clap definitions and src/cli/config_doc.rs, each mentions everything
//! it documents. The README's table of TCPMUX replies: each is the real
//! server's reply in a situation that produces it.

#[allow(dead_code)]
#[path = "../examples/gen-docs/docs.rs"]
mod docs;

use std::fs;
use std::io::Write;

mod common;
use tcpmuxd::cli::{config_doc, daemon_doc};

#[test]
fn man_pages_and_completions_cover_every_option_and_key() {
    let out = tempfile::tempdir().expect("create a temporary directory");
    let written = docs::write_all(out.path()).expect("generate the docs");
    let read = |rel: &str| {
        let path = out.path().join(rel);
        assert!(written.contains(&path), "{rel} was not generated");
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    };
    for page in docs::PAGES {
        let man = read(&format!("man/{}.{}", page.name, page.section));
        assert!(
            man.starts_with(".ie") && man.contains(&format!(".TH {} {}", page.name, page.section)),
            "{}.{} has no title line",
            page.name,
            page.section
        );
        let completions = [
            read(&format!("completions/bash/{}", page.name)),
            read(&format!("completions/zsh/_{}", page.name)),
            read(&format!("completions/fish/{}.fish", page.name)),
        ];
        let cmd = (page.command)();
        let longs: Vec<&str> = cmd.get_arguments().filter_map(|a| a.get_long()).collect();
        assert!(!longs.is_empty(), "{} has long options", page.name);
        for long in longs {
            // roff writes "-" as "\-".
            assert!(
                man.contains(&format!("\\-\\-{}", long.replace('-', "\\-"))),
                "{}.{} does not mention --{long}",
                page.name,
                page.section
            );
            for text in &completions {
                assert!(
                    text.contains(long),
                    "a completion of {} lacks --{long}",
                    page.name
                );
            }
        }
        if let Some(after) = cmd.get_after_help() {
            assert!(
                man.contains(".SH \"EXIT STATUS\"") || !after.to_string().contains("Exit status:"),
                "{}: the exit status section of --help is missing",
                page.name
            );
        }
    }
    // roff writes "-" as "\-" and "'" as "\*(Aq".
    let config = read("man/tcpmuxd.toml.5")
        .replace("\\-", "-")
        .replace("\\*(Aq", "'");
    for key in config_doc::keys() {
        assert!(
            config.contains(&format!("\\fB{}\\fR", key.name)),
            "tcpmuxd.toml(5) does not document [{}] {}",
            key.section,
            key.name
        );
        assert!(
            config.contains(&key.default),
            "tcpmuxd.toml(5) lacks the default of {}",
            key.name
        );
    }
}

/// The README's table of TCPMUX replies, row by row: (first cell, second
/// cell).
fn readme_replies() -> Vec<(String, String)> {
    let readme = include_str!("../README.md");
    let start = readme
        .find(daemon_doc::REPLIES_TABLE_HEADER)
        .expect("README.md has the table of replies");
    readme[start..]
        .lines()
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 2, "a row of two cells: {l}");
            (cells[0].trim().to_string(), cells[1].trim().to_string())
        })
        .collect()
}

/// The reply a row documents: the text in backquotes, then CRLF. None for
/// a row that describes a reply rather than spelling it.
fn documented_reply(cell: &str) -> Option<Vec<u8>> {
    let text = cell.strip_prefix('`')?.split('`').next()?;
    Some(format!("{text}\r\n").into_bytes())
}

/// A situation that makes the real server give one documented reply.
struct Situation {
    /// The first cell of the README's row.
    row: &'static str,
    /// What this situation is, for failure messages.
    what: &'static str,
    /// Keys of tcpmuxd.toml(5) whose "A client sees" names this reply
    /// (section, key).
    keys: &'static [(&'static str, &'static str)],
    /// The reply, for a row that does not spell it.
    expected: Option<&'static [u8]>,
    /// Runs the server and returns what the client got (the first line,
    /// or for HELP the whole answer).
    run: fn() -> Vec<u8>,
}

const CAT: &str = "command = [\"/bin/cat\"]\n";

fn first_line(d: &common::Daemon, request: &[u8]) -> Vec<u8> {
    let mut s = d.connect();
    s.write_all(request).expect("send the request");
    common::read_line(&mut s)
}

/// Opens a session of `name` and keeps it open.
fn hold(d: &common::Daemon, name: &str) -> std::net::TcpStream {
    let mut s = d.connect();
    s.write_all(format!("{name}\r\n").as_bytes())
        .expect("send the request");
    assert_eq!(common::read_line(&mut s), b"+\r\n", "{}", d.log());
    s
}

fn situations() -> Vec<Situation> {
    vec![
        Situation {
            row: "`+` CRLF",
            what: "a plus-mode service",
            keys: &[],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!("[[service]]\nname = \"echo\"\n{CAT}"));
                first_line(&d, b"echo\r\n")
            },
        },
        Situation {
            row: "*(service's own line)*",
            what: "a dedicated service whose program answers",
            keys: &[],
            expected: Some(b"-not today\r\n"),
            run: || {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let program = common::script(dir.path(), "refuse", "printf -- '-not today\\r\\n'");
                let d = common::Daemon::start(&format!(
                    "[[service]]\nname = \"own\"\nplus = false\ncommand = [\"{program}\"]\n"
                ));
                first_line(&d, b"own\r\n")
            },
        },
        Situation {
            row: "list of names, one per CRLF line, then close",
            what: "HELP, with one service hidden from the client",
            keys: &[],
            expected: Some(b"echo\r\n"),
            run: || {
                let d = common::Daemon::start(&format!(
                    "[[service]]\nname = \"echo\"\n{CAT}\n\
                     [[service]]\nname = \"private\"\n{CAT}allow = [\"192.0.2.0/24\"]\n"
                ));
                d.exchange(b"help\r\n")
            },
        },
        Situation {
            row: "`-Unknown service`",
            what: "a name no service has",
            keys: &[],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!("[[service]]\nname = \"echo\"\n{CAT}"));
                first_line(&d, b"nosuch\r\n")
            },
        },
        Situation {
            row: "`-Unknown service`",
            what: "a service whose allow list leaves the client out",
            keys: &[("service", "allow")],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!(
                    "[[service]]\nname = \"private\"\n{CAT}allow = [\"192.0.2.0/24\"]\n"
                ));
                first_line(&d, b"private\r\n")
            },
        },
        Situation {
            row: "`-Unknown service`",
            what: "a service whose deny list names the client",
            keys: &[("service", "deny")],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!(
                    "[[service]]\nname = \"private\"\n{CAT}deny = [\"127.0.0.0/8\"]\n"
                ));
                first_line(&d, b"private\r\n")
            },
        },
        Situation {
            row: "`-Access denied`",
            what: "a master allow list that leaves the client out",
            keys: &[("tcpmux", "allow")],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!(
                    "[tcpmux]\nallow = [\"192.0.2.0/24\"]\n\n[[service]]\nname = \"echo\"\n{CAT}"
                ));
                first_line(&d, b"echo\r\n")
            },
        },
        Situation {
            row: "`-Access denied`",
            what: "a master deny list that names the client",
            keys: &[("tcpmux", "deny")],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!(
                    "[tcpmux]\ndeny = [\"127.0.0.0/8\"]\n\n[[service]]\nname = \"echo\"\n{CAT}"
                ));
                first_line(&d, b"help\r\n")
            },
        },
        Situation {
            row: "`-Service busy, try again later`",
            what: "a service running max_instances sessions",
            keys: &[("service", "max_instances")],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!(
                    "[[service]]\nname = \"echo\"\n{CAT}max_instances = 1\n"
                ));
                let _held = hold(&d, "echo");
                first_line(&d, b"echo\r\n")
            },
        },
        Situation {
            row: "`-Too many sessions from your address, try again later`",
            what: "a source holding max_instances_per_source sessions",
            keys: &[("service", "max_instances_per_source")],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!(
                    "[[service]]\nname = \"echo\"\n{CAT}max_instances = 4\n\
                     max_instances_per_source = 1\n"
                ));
                let _held = hold(&d, "echo");
                first_line(&d, b"echo\r\n")
            },
        },
        Situation {
            row: "`-Too many sessions from your address, try again later`",
            what: "a source holding max_sessions_per_source sessions",
            keys: &[("tcpmux", "max_sessions_per_source")],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!(
                    "[tcpmux]\nmax_sessions = 4\nmax_sessions_per_source = 1\n\n\
                     [[service]]\nname = \"a\"\n{CAT}\n[[service]]\nname = \"b\"\n{CAT}"
                ));
                let _held = hold(&d, "a");
                first_line(&d, b"b\r\n")
            },
        },
        Situation {
            row: "`-Server busy, try again later`",
            what: "max_sessions sessions running",
            keys: &[("tcpmux", "max_sessions")],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!(
                    "[tcpmux]\nmax_sessions = 1\n\n\
                     [[service]]\nname = \"a\"\n{CAT}\n[[service]]\nname = \"b\"\n{CAT}"
                ));
                let _held = hold(&d, "a");
                first_line(&d, b"b\r\n")
            },
        },
        Situation {
            row: "`-Service started too often, try again later`",
            what: "a service asked for more often than max_starts_per_second",
            keys: &[("service", "max_starts_per_second")],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!(
                    "[[service]]\nname = \"echo\"\n{CAT}max_starts_per_second = 1\n"
                ));
                // The allowance and its reserve, then the refusal: the
                // first answer that is not "+".
                (0..4)
                    .map(|_| first_line(&d, b"echo\r\n"))
                    .find(|r| r.as_slice() != b"+\r\n")
                    .unwrap_or_default()
            },
        },
        Situation {
            row: "`-Service unavailable`",
            what: "a service whose program is missing",
            keys: &[],
            expected: None,
            run: || {
                let d = common::Daemon::start(
                    "[[service]]\nname = \"gone\"\ncommand = [\"/nonexistent/program\"]\n",
                );
                first_line(&d, b"gone\r\n")
            },
        },
        Situation {
            row: "`-Service name too long`",
            what: "a name of 256 bytes",
            keys: &[],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!("[[service]]\nname = \"echo\"\n{CAT}"));
                first_line(&d, format!("{}\r\n", "a".repeat(256)).as_bytes())
            },
        },
        Situation {
            row: "`-Invalid service name`",
            what: "an empty name",
            keys: &[],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!("[[service]]\nname = \"echo\"\n{CAT}"));
                first_line(&d, b"\r\n")
            },
        },
        Situation {
            row: "`-Invalid service name`",
            what: "a name with a space",
            keys: &[],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!("[[service]]\nname = \"echo\"\n{CAT}"));
                first_line(&d, b"ec ho\r\n")
            },
        },
        Situation {
            row: "`-Timed out waiting for the service name`",
            what: "a client that sends nothing",
            keys: &[("tcpmux", "name_timeout")],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!(
                    "[tcpmux]\nname_timeout = \"1s\"\n\n[[service]]\nname = \"echo\"\n{CAT}"
                ));
                let mut s = d.connect();
                common::read_line(&mut s)
            },
        },
        Situation {
            row: "`-Too many connections, try again later`",
            what: "the oldest of max_handshakes silent connections, when one more comes",
            keys: &[("tcpmux", "max_handshakes")],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!(
                    "[tcpmux]\nmax_handshakes = 1\n\n[[service]]\nname = \"echo\"\n{CAT}"
                ));
                // Accepted in the order they come: the silent one first.
                let mut silent = d.connect();
                let _newcomer = d.connect();
                common::read_line(&mut silent)
            },
        },
        Situation {
            row: "`-Too many connections from your address, try again later`",
            what: "one connection more than max_handshakes_per_source",
            keys: &[("tcpmux", "max_handshakes_per_source")],
            expected: None,
            run: || {
                let d = common::Daemon::start(&format!(
                    "[tcpmux]\nmax_handshakes_per_source = 1\n\n\
                     [[service]]\nname = \"echo\"\n{CAT}"
                ));
                let _silent = d.connect();
                let mut s = d.connect();
                common::read_line(&mut s)
            },
        },
    ]
}

/// Every reply the README's table documents is the server's real reply in
/// a situation that produces it; every refusal the server can send has a
/// row; and tcpmuxd.toml(5) names the same reply for the keys that lead
/// to it.
#[test]
fn the_documented_replies_are_the_servers() {
    let rows = readme_replies();
    let situations = situations();
    for (row, _) in &rows {
        assert!(
            situations.iter().any(|s| s.row == row),
            "README's reply \"{row}\" has no situation in tests/docs.rs that produces it"
        );
    }
    for &refusal in tcpmuxd::tcpmux::reply::REFUSALS {
        assert!(
            rows.iter()
                .any(|(row, _)| documented_reply(row).as_deref() == Some(refusal)),
            "the server's reply {:?} is not in README's table of replies",
            String::from_utf8_lossy(refusal)
        );
    }
    let keys = config_doc::keys();
    for s in &situations {
        assert!(
            rows.iter().any(|(row, _)| row == s.row),
            "{}: the row \"{}\" is not in README's table of replies",
            s.what,
            s.row
        );
        let expected = match s.expected {
            Some(e) => e.to_vec(),
            None => documented_reply(s.row)
                .unwrap_or_else(|| panic!("the row \"{}\" spells no reply", s.row)),
        };
        let got = (s.run)();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected),
            "{}: the server's reply (left) and the documented one (right)",
            s.what
        );
        let text = String::from_utf8_lossy(&expected);
        let text = text.trim_end();
        for (section, name) in s.keys {
            let key = keys
                .iter()
                .find(|k| k.section == *section && k.name == *name)
                .unwrap_or_else(|| panic!("no key [{section}] {name} in tcpmuxd.toml(5)"));
            let when_hit = key.when_hit.as_deref().unwrap_or("");
            assert!(
                when_hit.contains(&format!("`{text}`")),
                "tcpmuxd.toml(5): [{section}] {name} says a client sees \"{when_hit}\"; \
                 the server answers `{text}`"
            );
        }
    }
}

/// `tcpmuxd --log-level <TAB>` offers the levels, in every shell, rather
/// than file names; any tracing filter is still accepted (unit tests in
/// src/cli/tcpmuxd.rs).
#[test]
fn log_level_completes_the_levels() {
    let out = tempfile::tempdir().expect("create a temporary directory");
    docs::write_all(out.path()).expect("generate the docs");
    let read = |rel: &str| {
        fs::read_to_string(out.path().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    };
    let bash = read("completions/bash/tcpmuxd");
    let case = bash
        .split("--log-level)")
        .nth(1)
        .and_then(|rest| rest.split(";;").next())
        .expect("bash completes --log-level");
    let zsh = read("completions/zsh/_tcpmuxd");
    let zsh_line = zsh
        .lines()
        .find(|l| l.contains("--log-level="))
        .expect("zsh completes --log-level");
    let fish = read("completions/fish/tcpmuxd.fish");
    let fish_line = fish
        .lines()
        .find(|l| l.contains("-l log-level"))
        .expect("fish completes --log-level");
    assert!(
        !case.contains("compgen -f"),
        "bash offers file names: {case}"
    );
    assert!(
        !zsh_line.contains("_default"),
        "zsh offers file names: {zsh_line}"
    );
    for level in tcpmuxd::cli::tcpmuxd::LOG_LEVELS {
        for (shell, text) in [("bash", case), ("zsh", zsh_line), ("fish", fish_line)] {
            assert!(
                text.split(|c: char| !c.is_ascii_alphanumeric())
                    .any(|w| w == *level),
                "{shell} does not offer --log-level {level}: {text}"
            );
        }
    }
}

/// tcpmuxd(8) as installed has the sections administrators look for, and
/// names every `OUTCOME` value and every reply; the README names every
/// `OUTCOME` value too.
#[test]
fn the_daemon_manual_names_every_outcome_and_reply() {
    let out = tempfile::tempdir().expect("create a temporary directory");
    docs::write_all(out.path()).expect("generate the docs");
    // roff writes "-" as "\-".
    let man = fs::read_to_string(out.path().join("man/tcpmuxd.8"))
        .expect("read tcpmuxd.8")
        .replace("\\-", "-");
    for title in daemon_doc::titles() {
        let heading = if title.contains(' ') {
            format!(".SH \"{title}\"")
        } else {
            format!(".SH {title}")
        };
        assert!(man.contains(&heading), "tcpmuxd(8) has no section {title}");
    }
    let readme = include_str!("../README.md");
    for (value, _) in daemon_doc::outcomes() {
        assert!(
            man.contains(&format!("\\fB{value}\\fR")),
            "tcpmuxd(8) does not name OUTCOME={value}"
        );
        assert!(
            readme.contains(&format!("`{value}`")),
            "README.md does not name OUTCOME={value}"
        );
    }
    for &refusal in tcpmuxd::tcpmux::reply::REFUSALS {
        let text = String::from_utf8_lossy(refusal);
        assert!(
            man.contains(&format!("\\fB{}\\fR", text.trim_end())),
            "tcpmuxd(8) does not name the reply {}",
            text.trim_end()
        );
    }
}

/// The documentation the packages install names no document they do not
/// install: every `*.md` named in the README, packaging/README.md and the
/// man pages is installed by both packages, and both install the same.
#[test]
fn the_installed_documentation_names_only_installed_documents() {
    const DOC_DIR: &str = "usr/share/doc/tcpmuxd/";
    let manifest: toml::Table =
        toml::from_str(include_str!("../Cargo.toml")).expect("Cargo.toml parses");
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .expect("[package.metadata.deb] assets");
    let base = |path: &str| path.rsplit('/').next().unwrap_or(path).to_string();
    let mut deb: Vec<String> = assets
        .iter()
        .filter_map(|a| {
            let (from, to) = (a.get(0)?.as_str()?, a.get(1)?.as_str()?);
            let rest = to.strip_prefix(DOC_DIR)?;
            Some(if rest.is_empty() {
                base(from)
            } else {
                rest.split('/').next().unwrap_or(rest).to_string()
            })
        })
        .collect();
    deb.sort();
    deb.dedup();
    let spec = include_str!("../packaging/rpm/tcpmuxd.spec");
    let mut rpm: Vec<String> = spec
        .lines()
        .filter_map(|l| l.strip_prefix("%doc "))
        .flat_map(|l| l.split_whitespace().map(base))
        .collect();
    rpm.sort();
    assert_eq!(deb, rpm, "documents of the .deb (left) and the RPM (right)");

    let out = tempfile::tempdir().expect("create a temporary directory");
    docs::write_all(out.path()).expect("generate the docs");
    let mut texts = vec![
        ("README.md", include_str!("../README.md").to_string()),
        (
            "packaging/README.md",
            include_str!("../packaging/README.md").to_string(),
        ),
    ];
    for page in ["tcpmuxd.8", "tcpmuxd.toml.5", "tcpmux.1", "msend.1"] {
        let text = fs::read_to_string(out.path().join("man").join(page)).expect("a man page");
        texts.push((page, text));
    }
    for (doc, text) in &texts {
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || "._/-".contains(c))) {
            let Some(name) = word.strip_suffix(".md").map(|_| word) else {
                continue;
            };
            let installed = if name == "packaging/README.md" {
                "README.packaging.md".to_string()
            } else {
                name.to_string()
            };
            assert!(
                deb.contains(&installed),
                "{doc} names {name}, which the packages do not install"
            );
        }
    }
}
