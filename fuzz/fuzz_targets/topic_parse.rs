//! Topic names and filters come from clients: parse, build back, and check access never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocols::access::Principal;
use protocols::topic::{filter_matches, filter_within, validate_filter, Topic};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(t) = Topic::parse(s) {
        assert_eq!(t.to_string(), s);
    }
    let p = Principal::App { id: "a".into(), grants: vec!["v1/feeds/#".into(), "v1/twin/+".into()] };
    let _ = p.may_publish(s);
    if validate_filter(s).is_ok() {
        let _ = p.may_subscribe(s);
        let _ = filter_within(s, "v1/feeds/#");
        let _ = filter_matches(s, "v1/feeds/water_level/WL-1");
    }
});
