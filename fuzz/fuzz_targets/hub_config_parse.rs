//! hub.toml: any text gives a config or a one-line error naming a key.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Err(e) = hub::config::HubConfig::from_toml(s) {
        assert!(!e.to_string().contains('\n'));
    }
});
