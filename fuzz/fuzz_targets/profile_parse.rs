//! Profiles are written by integrators: any text must give a profile or a clear error, and a
//! valid profile's read plan must cover its points.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(p) = protocols::profile::DeviceProfile::from_toml(s) {
        let plan = p.plan_reads(2);
        let covered: usize = plan.iter().map(|b| b.points.len()).sum();
        assert_eq!(covered, p.points.len());
        for pt in &p.points {
            let words = [0x1234u16, 0x5678, 0x9abc, 0xdef0];
            let _ = pt.decode(&words[..pt.width() as usize]);
        }
    }
});
