//! Bytes from MQTT clients: decoding never panics, in any protocol state, and a decoded
//! PUBLISH encodes back to a packet that decodes to the same message.
#![no_main]
use bytes::BytesMut;
use mqtt_broker::codec::{decode, OutPublish, Packet, Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for protocol in [None, Some(Protocol::V4), Some(Protocol::V5)] {
        let mut buf = BytesMut::from(data);
        while let Ok(Some(packet)) = decode(&mut buf, protocol, 64 * 1024) {
            let (Packet::Publish(p), Some(proto)) = (packet, protocol) else {
                continue;
            };
            let alias = p.topic_alias.filter(|_| proto == Protocol::V5);
            let out = OutPublish {
                topic: &p.topic,
                alias,
                payload: &p.payload,
                properties: &p.properties,
                qos: p.qos,
                retain: p.retain,
                dup: p.dup,
                pid: p.pid,
                subscription_ids: &[],
                message_expiry: p.message_expiry.filter(|_| proto == Protocol::V5),
            };
            let mut again = BytesMut::new();
            out.encode(proto, &mut again);
            assert_eq!(again.len(), out.size(proto));
            let Ok(Some(Packet::Publish(q))) = decode(&mut again, protocol, usize::MAX) else {
                panic!("re-encoded PUBLISH does not decode");
            };
            assert_eq!((q.topic, q.payload, q.qos, q.retain), (p.topic, p.payload, p.qos, p.retain));
            assert_eq!(q.properties, p.properties);
            assert_eq!(q.message_expiry, p.message_expiry);
            assert_eq!(q.topic_alias, alias);
        }
    }
});
