//! MSP parsing and framing must never panic; what parses re-encodes to
//! the same bytes (less a tolerated trailing NUL), and framing agrees.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpmuxd::msp::message::{MAX_MESSAGE_LEN, check_content, encode, frame, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(len)) = frame(data) {
        assert!(len <= MAX_MESSAGE_LEN);
    }
    if let Ok(message) = parse(data) {
        let _ = check_content(&message);
        let again = encode(&message);
        assert!(again.len() <= MAX_MESSAGE_LEN);
        assert!(data.starts_with(&again));
        assert_eq!(frame(&again), Ok(Some(again.len())));
    }
});
