//! HJ 212 packets come from station TCP connections: framing, header and CP parsing never
//! panic, the reader's result does not depend on where the reads split the stream, and a
//! packet that parses re-encodes to one that parses to the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocols::hj212::{Frame, FrameReader, Packet, encode};

fn drain(reader: &mut FrameReader, out: &mut Vec<Result<String, ()>>) {
    while let Some(f) = reader.next_frame() {
        out.push(f.map(|f| f.data.to_owned()).map_err(|_| ()));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut whole = FrameReader::new();
    whole.push(data);
    let mut expected = Vec::new();
    drain(&mut whole, &mut expected);

    // The first byte picks a read size for a second pass over the same bytes.
    let step = data.first().map_or(1, |&b| usize::from(b % 32) + 1);
    let mut chunked = FrameReader::new();
    let mut got = Vec::new();
    for chunk in data.chunks(step) {
        chunked.push(chunk);
        drain(&mut chunked, &mut got);
    }
    assert_eq!(got, expected);

    for segment in expected.iter().flatten() {
        let Ok(packet) = Packet::parse(segment) else {
            continue;
        };
        if let Ok(cp) = packet.cp_data() {
            for p in cp.pollutants() {
                let _ = (p.quality(), p.value_for(packet.cn));
            }
        }
        if let Ok(text) = encode(&packet) {
            let frame = Frame::decode(text.as_bytes()).expect("encoded packet must frame");
            let back = frame.packet().expect("encoded packet must parse");
            assert_eq!(back, packet);
        }
    }
});
