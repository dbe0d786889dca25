//! Direct-device JSON telemetry: never panic; every accepted value is finite and plausible in type.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = protocols::telemetry::parse(data) {
        for s in &parsed.samples {
            assert!(!s.values.is_empty());
            for (_, v, _) in &s.values {
                assert!(v.as_f64().is_finite());
            }
        }
    }
});
