//! Renders the man pages and shell completions (used by main.rs and by
//! tests/docs.rs).

use clap_complete::Shell;
use roff::{Inline, Roff, bold, italic, roman};
use std::fs;
use std::path::{Path, PathBuf};
use tcpmuxd::cli::config_doc::{self, CONFIG_PATH};
use tcpmuxd::cli::daemon_doc::{self, Block};

/// A binary, its man section and what its page refers to.
pub struct Page {
    pub name: &'static str,
    pub section: &'static str,
    pub command: fn() -> clap::Command,
    see_also: &'static [&'static str],
}

pub const PAGES: &[Page] = &[
    Page {
        name: "tcpmuxd",
        section: "8",
        command: tcpmuxd::cli::tcpmuxd::command,
        see_also: &[
            "tcpmuxd.toml(5)",
            "tcpmux(1)",
            "msend(1)",
            "systemctl(1)",
            "journalctl(1)",
            "systemd-escape(1)",
            "systemd.socket(5)",
            "systemd.service(5)",
            "systemd.exec(5)",
            "systemd.resource-control(5)",
            "sd_notify(3)",
            "sysexits(3)",
            "write(1)",
        ],
    },
    Page {
        name: "tcpmux",
        section: "1",
        command: tcpmuxd::cli::tcpmux::command,
        see_also: &["tcpmuxd(8)", "tcpmuxd.toml(5)", "msend(1)"],
    },
    Page {
        name: "msend",
        section: "1",
        command: tcpmuxd::cli::msend::command,
        see_also: &["tcpmuxd(8)", "tcpmuxd.toml(5)", "write(1)", "mesg(1)"],
    },
];

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn source() -> String {
    format!("tcpmuxd {VERSION}")
}

/// Writes OUT/man/*.{1,5,8} and OUT/completions/{bash,zsh,fish}/*, and
/// returns the files written.
pub fn write_all(out: &Path) -> Result<Vec<PathBuf>, String> {
    let man = out.join("man");
    let mut written = Vec::new();
    let mut write = |path: PathBuf, text: &[u8]| -> Result<(), String> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)
                .map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
        }
        fs::write(&path, text).map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
        written.push(path);
        Ok(())
    };
    for page in PAGES {
        let path = man.join(format!("{}.{}", page.name, page.section));
        write(path, command_page(page)?.as_bytes())?;
        for (shell, dir, file) in [
            (Shell::Bash, "bash", page.name.to_string()),
            (Shell::Zsh, "zsh", format!("_{}", page.name)),
            (Shell::Fish, "fish", format!("{}.fish", page.name)),
        ] {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut (page.command)(), page.name, &mut text);
            write(out.join("completions").join(dir).join(file), &text)?;
        }
    }
    write(man.join("tcpmuxd.toml.5"), config_page().as_bytes())?;
    Ok(written)
}

/// Text with `code` spans as in the README: the spans in bold.
fn spans(text: &str) -> Vec<Inline> {
    text.split('`')
        .enumerate()
        .filter(|(_, s)| !s.is_empty())
        .map(|(i, s)| if i % 2 == 1 { bold(s) } else { roman(s) })
        .collect()
}

/// The after-help text as sections: a line "Heading:" starts one; the
/// lines of an "Examples:" section stay as they are.
fn after_help(roff: &mut Roff, text: &str) {
    for para in text.split("\n\n") {
        let mut lines = para.lines();
        let Some(first) = lines.next() else { continue };
        let examples;
        let body: Vec<&str> = match first.strip_suffix(':') {
            Some(heading) if !first.starts_with(' ') => {
                roff.control("SH", [heading.to_uppercase().as_str()]);
                examples = heading == "Examples";
                lines.collect()
            }
            _ => {
                roff.control("PP", []);
                examples = false;
                para.lines().collect()
            }
        };
        if examples {
            roff.control("nf", []).control("RS", []);
            for line in &body {
                roff.text([roman(line.trim_start())]);
            }
            roff.control("RE", []).control("fi", []);
        } else {
            let joined: Vec<&str> = body.iter().map(|l| l.trim()).collect();
            roff.text([roman(joined.join(" "))]);
        }
    }
}

/// The blocks of a section of src/cli/daemon_doc.rs.
fn blocks(roff: &mut Roff, blocks: &[Block]) {
    for (i, block) in blocks.iter().enumerate() {
        match block {
            Block::Para(text) => {
                if i > 0 {
                    roff.control("PP", []);
                }
                roff.text(spans(text));
            }
            Block::Terms(items) => {
                for (term, text) in items {
                    roff.control("TP", []);
                    roff.text(spans(term));
                    roff.text(spans(text));
                }
                roff.control("PP", []);
            }
            Block::Lines(lines) => {
                roff.control("PP", []).control("nf", []).control("RS", []);
                for line in lines {
                    roff.text([roman(line.as_str())]);
                }
                roff.control("RE", []).control("fi", []);
            }
            Block::Sub(title) => {
                roff.control("SS", [*title]);
            }
        }
    }
}

fn see_also(roff: &mut Roff, pages: &[&str]) {
    roff.control("SH", ["SEE ALSO"]);
    let mut inlines = Vec::new();
    for (i, p) in pages.iter().enumerate() {
        let (name, section) = p.split_once('(').unwrap_or((p, ""));
        if i > 0 {
            inlines.push(roman(", "));
        }
        inlines.push(bold(name));
        inlines.push(roman(format!("({section}")));
    }
    roff.text(inlines);
}

fn command_page(page: &Page) -> Result<String, String> {
    let cmd = (page.command)();
    let after = cmd.get_after_help().map(|s| s.to_string());
    let man = clap_mangen::Man::new(cmd)
        .section(page.section)
        .source(source())
        .manual(if page.section == "8" {
            "System Manager's Manual"
        } else {
            "User Commands"
        });
    // Man::render would put the after-help under a heading "EXTRA": render
    // the sections one by one and that text as sections of its own.
    let mut buf = Vec::new();
    let failed = |e: std::io::Error| format!("{}: cannot render the man page: {e}", page.name);
    man.render_title(&mut buf).map_err(failed)?;
    if page.name == "tcpmuxd" {
        let mut head = Roff::new();
        head.control("SH", ["NAME"]);
        head.text([roman(format!("tcpmuxd - {}", daemon_doc::SUMMARY))]);
        buf.extend_from_slice(head.to_roff().as_bytes());
        man.render_synopsis_section(&mut buf).map_err(failed)?;
        let mut description = Roff::new();
        description.control("SH", ["DESCRIPTION"]);
        blocks(&mut description, &daemon_doc::description());
        buf.extend_from_slice(description.to_roff().as_bytes());
    } else {
        man.render_name_section(&mut buf).map_err(failed)?;
        man.render_synopsis_section(&mut buf).map_err(failed)?;
        man.render_description_section(&mut buf).map_err(failed)?;
    }
    man.render_options_section(&mut buf).map_err(failed)?;
    let mut rest = Roff::new();
    if page.name == "tcpmuxd" {
        // The manual's own sections (src/cli/daemon_doc.rs) say all the
        // after-help says, and more.
        for section in daemon_doc::sections() {
            rest.control("SH", [section.title]);
            blocks(&mut rest, &section.blocks);
        }
    } else if let Some(text) = after {
        after_help(&mut rest, &text);
    }
    see_also(&mut rest, page.see_also);
    man.render_version_section(&mut buf).map_err(failed)?;
    let mut text = String::from_utf8(buf).map_err(|e| format!("{}: {e}", page.name))?;
    // Each rendered part starts with the same preamble; keep the first.
    let preamble = Roff::new().render();
    let (head, tail) = text.split_at(preamble.len());
    let mut joined = head.to_string() + &tail.replace(&preamble, "");
    // The version section last, after ours.
    if let Some(at) = joined.find(".SH VERSION") {
        let version = joined.split_off(at);
        joined.push_str(&rest.to_roff());
        joined.push_str(&version);
    } else {
        joined.push_str(&rest.to_roff());
    }
    text = joined;
    Ok(text)
}

fn config_page() -> String {
    let mut r = Roff::new();
    r.control(
        "TH",
        [
            "TCPMUXD.TOML",
            "5",
            "",
            source().as_str(),
            "File Formats Manual",
        ],
    );
    r.control("SH", ["NAME"]);
    r.text([roman(
        "tcpmuxd.toml - configuration of tcpmuxd, the TCPMUX and Message Send Protocol server",
    )]);
    r.control("SH", ["SYNOPSIS"]);
    r.text([italic(CONFIG_PATH)]);
    r.control("br", []);
    r.text([italic("/etc/tcpmuxd/conf.d/*.toml")]);
    r.control("SH", ["DESCRIPTION"]);
    r.text([roman(
        "tcpmuxd(8) reads its configuration, in TOML, from the file given with --config, then \
         from every file ending in .toml in the folder conf.d/ beside it, in lexical order. A \
         drop-in may set [tcpmux] and [msp] keys (a later file wins key by key) and add \
         [[service]] tables; a service defined twice is an error naming both files. Unknown \
         keys are errors.",
    )]);
    r.control("PP", []);
    r.text([roman(
        "Check a configuration with tcpmuxd --check, apply it with systemctl reload tcpmuxd (or \
         SIGHUP). An invalid configuration is refused and the one in force kept. Durations are \
         written as \"10s\", \"5m\", \"1h\"; every duration has an upper bound. Each key below \
         gives its type, its default, the values accepted and, for a limit, what a client sees \
         when it is reached.",
    )]);
    let keys = config_doc::keys();
    for (section, title, intro) in [
        (
            "tcpmux",
            "[tcpmux]",
            "The TCPMUX port (RFC 1078) and the limits of its handshake.",
        ),
        (
            "msp",
            "[msp]",
            "The Message Send Protocol (RFC 1159, RFC 1312) on TCP and UDP port 18.",
        ),
        (
            "service",
            "[[service]]",
            "One table per service a client may name.",
        ),
    ] {
        r.control("SH", [title]);
        r.text([roman(intro)]);
        for k in keys.iter().filter(|k| k.section == section) {
            r.control("TP", []);
            r.text([bold(k.name), roman(format!(" ({})", k.kind))]);
            r.text([roman(k.description)]);
            r.control("br", []);
            r.text([italic("Default:"), roman(format!(" {}", k.default))]);
            r.control("br", []);
            r.text([italic("Accepted:"), roman(format!(" {}", k.bounds))]);
            if let Some(when_hit) = &k.when_hit {
                r.control("br", []);
                let mut line = vec![italic("A client sees:"), roman(" ")];
                line.extend(spans(when_hit));
                r.text(line);
            }
        }
    }
    r.control("SH", ["LIMITS"]);
    r.text([roman(
        "Every bound tcpmuxd enforces, configurable or fixed, with its default and what a \
         client sees when it is hit. A limit answers at once and recovers by itself.",
    )]);
    for l in config_doc::limits_table() {
        r.control("TP", []);
        r.text(spans(&l.limit));
        let mut line = vec![italic("Default:"), roman(" ")];
        line.extend(spans(&l.default));
        r.text(line);
        r.control("br", []);
        let mut line = vec![italic("A client sees:"), roman(" ")];
        line.extend(spans(&l.when_hit));
        r.text(line);
    }
    r.control("SH", ["EXAMPLE"]);
    r.control("nf", []).control("RS", []);
    for line in [
        "# /etc/tcpmuxd/conf.d/50-echo.toml",
        "[[service]]",
        "name = \"echo\"",
        "command = [\"/bin/cat\"]",
        "max_instances = 16",
        "allow = [\"192.0.2.0/24\", \"2001:db8::/32\"]",
    ] {
        r.text([roman(line)]);
    }
    r.control("RE", []).control("fi", []);
    see_also(
        &mut r,
        &["tcpmuxd(8)", "tcpmux(1)", "msend(1)", "systemd.exec(5)"],
    );
    r.render()
}
