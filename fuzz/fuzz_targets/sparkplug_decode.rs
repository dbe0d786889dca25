//! Sparkplug B payloads come from edge nodes over MQTT: decoding never panics, a payload that
//! decodes re-encodes to bytes that decode to the same bytes again, its metrics read through
//! every datatype without panicking, and an edge node session takes any message, in any state.
#![no_main]
use libfuzzer_sys::fuzz_target;
use protocols::sparkplug::{
    self, BD_SEQ_METRIC, DataType, EdgeNodes, EdgeTopic, MessageType, Metric, MetricValue, Payload,
    decode_value,
};

/// A valid NBIRTH (seq 0, bdSeq 0) with aliases 0..4, so that data messages get as far as the
/// seq, alias and datatype checks.
fn birth() -> Payload {
    let defs = [
        (DataType::Int8, MetricValue::Int(-1)),
        (DataType::UInt32, MetricValue::UInt(7)),
        (DataType::Double, MetricValue::Double(1.5)),
        (DataType::Boolean, MetricValue::Bool(true)),
        (DataType::String, MetricValue::Text("x".into())),
    ];
    let mut metrics = vec![
        Metric::new(DataType::Int64, &MetricValue::Int(0))
            .expect("fits")
            .named(BD_SEQ_METRIC),
    ];
    for (alias, (t, v)) in defs.iter().enumerate() {
        let name = format!("m{alias}");
        metrics.push(
            Metric::new(*t, v)
                .expect("fits")
                .named(&name)
                .aliased(alias as u64),
        );
    }
    Payload {
        timestamp: Some(0),
        seq: Some(0),
        metrics,
        ..Default::default()
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the message type and whether a birth comes first; the rest is the
    // payload.
    let Some((&first, payload)) = data.split_first() else {
        return;
    };
    let kind = MessageType::ALL[usize::from(first % 8)];
    let device = kind.is_device().then_some("dev");
    let topic = EdgeTopic::new("g", kind, "node", device).expect("valid topic");

    let mut nodes = EdgeNodes::default();
    if first & 0x80 != 0 {
        nodes.handle(
            &EdgeTopic::new("g", MessageType::NBirth, "node", None).expect("valid"),
            &birth(),
            0,
        );
        if device.is_some() {
            let mut dbirth = birth();
            dbirth.metrics.remove(0);
            dbirth.seq = Some(1);
            for m in &mut dbirth.metrics {
                m.alias = m.alias.map(|a| a + 100);
            }
            nodes.handle(
                &EdgeTopic::new("g", MessageType::DBirth, "node", device).expect("valid"),
                &dbirth,
                0,
            );
        }
    }
    // Twice: the second time the seq is a repeat and the rebirth interval has not passed.
    let _ = nodes.handle_message(&topic.to_topic(), payload, 1);
    let _ = nodes.handle_message(&topic.to_topic(), payload, 2);

    let Ok(decoded) = sparkplug::decode(payload) else {
        return;
    };
    for m in &decoded.metrics {
        for &t in DataType::ALL {
            if let Ok(v) = decode_value(m, t) {
                let _ = v.as_value();
                // What was read writes back as the same datatype (Unsupported has no field).
                if v != MetricValue::Unsupported {
                    let again = Metric::new(t, &v).expect("a value read as a datatype writes back");
                    assert_eq!(decode_value(&again, t).as_ref().map(|_| ()), Ok(()));
                }
            }
        }
    }
    // Bytes, not values: a NaN is not equal to itself but encodes the same.
    let bytes = sparkplug::encode(&decoded);
    let back = sparkplug::decode(&bytes).expect("own encoding must decode");
    assert_eq!(sparkplug::encode(&back), bytes);
});
