//! GB/T 28181 ids from config and catalogs: never panic; accepted ids print back unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(id) = protocols::gb28181::GbId::parse(s) {
        assert_eq!(id.as_str(), s);
        let _ = id.type_name();
    }
});
