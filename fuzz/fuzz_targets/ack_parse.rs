//! The agent parses acks from the network: never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ack) = serde_json::from_slice::<protocols::batch::Ack>(data) {
        for &(a, b) in &ack.seqs {
            let _ = ack.covers(a) && ack.covers(b);
        }
    }
});
