//! MSP parsing and framing must never panic; what parses re-encodes to
//! the same bytes (less a tolerated trailing NUL), and framing agrees.
//! On a terminal, every row of a message's text starts with the text's
//! mark and holds no control code: nothing can pass for a header or the
//! end, nor move the cursor.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpmuxd::msp::message::{MAX_MESSAGE_LEN, check_content, encode, frame, parse};
use tcpmuxd::msp::tty::{TEXT_MARK, render};

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
        // Any width, the very narrow and "unknown" (0) included.
        let columns = (data.len() % 128) as u16;
        let shown = render("s", "h", "", "t", &message.text, columns);
        let shown = String::from_utf8(shown).expect("UTF-8 on the terminal");
        let rows: Vec<&str> = shown
            .strip_prefix("\r\n\x07")
            .and_then(|s| s.strip_suffix("\r\nEOF\r\n"))
            .expect("header first, EOF last")
            .split("\r\n")
            .collect();
        // A header folded at a narrow width goes on indented by two.
        let text = rows[1..].iter().skip_while(|r| r.starts_with("  "));
        for row in text {
            assert!(row.starts_with(TEXT_MARK), "{row:?}");
            assert!(!row.chars().any(char::is_control), "{row:?}");
        }
    }
});
