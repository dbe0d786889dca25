//! RFC 3339 timestamps from devices: never panic; accepted ones format and parse back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocols::time::{parse_rfc3339, Rfc3339, MAX_MS};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(ms) = parse_rfc3339(s) {
        if (0..=MAX_MS).contains(&ms) {
            assert_eq!(parse_rfc3339(Rfc3339::from_ms(ms).as_str()), Ok(ms));
        }
    }
});
