//! Writes the man pages and shell completions that the packages ship:
//!
//!   cargo run --example gen-docs -- OUTDIR
//!
//! OUTDIR/man/ gets tcpmuxd.8 (from src/cli/daemon_doc.rs, its options from
//! the clap definitions in src/cli/), tcpmux.1, msend.1 (from the clap
//! definitions) and tcpmuxd.toml.5 (from src/cli/config_doc.rs);
//! OUTDIR/completions/{bash,zsh,fish}/ the completions of the three
//! binaries. `--readme-table` prints the README's table of limits instead,
//! `--readme-replies` its table of TCPMUX replies.

mod docs;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag] if flag == "--readme-table" => {
            print!("{}", tcpmuxd::cli::config_doc::limits_markdown());
            ExitCode::SUCCESS
        }
        [flag] if flag == "--readme-replies" => {
            print!("{}", tcpmuxd::cli::daemon_doc::replies_markdown());
            ExitCode::SUCCESS
        }
        [dir] if !dir.starts_with('-') => match docs::write_all(&PathBuf::from(dir)) {
            Ok(files) => {
                for f in files {
                    println!("{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gen-docs: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!(
                "usage: gen-docs OUTDIR | gen-docs --readme-table | gen-docs --readme-replies"
            );
            ExitCode::from(2)
        }
    }
}
