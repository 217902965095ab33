//! The man pages and shell completions the packages ship: generated from
//! the clap definitions and src/cli/config_doc.rs, each mentions everything
//! it documents.

#[allow(dead_code)]
#[path = "../examples/gen-docs/docs.rs"]
mod docs;

use std::fs;
use tcpmuxd::cli::config_doc;

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
