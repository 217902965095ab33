//! The configuration loader must turn any text into a config or an error,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use tcpmuxd::config::{build, parse_file};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = PathBuf::from("fuzz.toml");
    if let Ok(file) = parse_file(&path, text) {
        let _ = build(vec![(path, file)]);
    }
});
