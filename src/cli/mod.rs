//! The command lines of the three binaries, here rather than in each
//! binary so that the man pages and shell completions are generated from
//! the same definitions (`cargo run --example gen-docs`).

pub mod config_doc;
pub mod daemon_doc;
pub mod exit;
pub mod msend;
pub mod tcpmux;
pub mod tcpmuxd;
