//! The PROXY protocol header a trusted load balancer sends: parsing it
//! must never panic, and a header it accepts is within bounds and never
//! longer than the bytes it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcpmuxd::limits::MAX_PROXY_HEADER_LEN;
use tcpmuxd::proxy::parse_header;

fuzz_target!(|data: &[u8]| {
    match parse_header(data) {
        Ok(Some((_, len))) => {
            assert!(len > 0 && len <= data.len() && len <= MAX_PROXY_HEADER_LEN);
            // The same header is found again with more bytes behind it.
            let mut more = data[..len].to_vec();
            more.extend_from_slice(b"HELP\r\n");
            assert_eq!(parse_header(&more).map(|r| r.map(|(_, n)| n)), Ok(Some(len)));
        }
        // Incomplete: every cut of what was given is incomplete too.
        Ok(None) => {
            assert!(data.len() < MAX_PROXY_HEADER_LEN);
            if !data.is_empty() {
                assert_eq!(parse_header(&data[..data.len() - 1]), Ok(None));
            }
        }
        Err(_) => {}
    }
});
