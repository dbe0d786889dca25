//! Agent batches come from the network: decoding must never panic, and whatever decodes must
//! re-encode to something that decodes to the same batch.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = protocols::batch::decode(data) {
        let again = protocols::batch::encode(&batch);
        let back = protocols::batch::decode(&again).expect("re-encoded batch must decode");
        assert_eq!(protocols::batch::encode(&back), again);
    }
});
