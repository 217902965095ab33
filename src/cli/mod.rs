//! The command lines of the three binaries, here rather than in each
//! binary so that the man pages and shell completions are generated from
//! the same definitions (`cargo run --example gen-docs`).

pub mod config_doc;
pub mod daemon_doc;
pub mod exit;
pub mod msend;
pub mod tcpmux;
pub mod tcpmuxd;

/// The Markdown table of README.md that starts at `header`, each line with
/// its line end: for the tests that keep README's generated tables equal
/// to the code's.
#[cfg(test)]
pub(crate) fn readme_table(header: &str) -> Option<String> {
    let readme = include_str!("../../README.md");
    let start = readme.find(header)?;
    Some(
        readme[start..]
            .lines()
            .take_while(|l| l.starts_with('|'))
            .map(|l| format!("{l}\n"))
            .collect(),
    )
}
