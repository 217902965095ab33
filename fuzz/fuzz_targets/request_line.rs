//! The TCPMUX request line: finding its end and parsing it must never
//! panic, and a name it accepts is always within bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpmuxd::limits::MAX_NAME_LEN;
use tcpmuxd::tcpmux::{Request, find_line_end, parse_request};

fuzz_target!(|data: &[u8]| {
    let line = match find_line_end(data) {
        Some(lf) => &data[..lf],
        None => data,
    };
    if let Ok(Request::Service(name)) = parse_request(line) {
        assert!(!name.is_empty() && name.len() <= MAX_NAME_LEN);
        assert!(name.bytes().all(|b| b.is_ascii_graphic()));
    }
});
