//! Decoder and encoder tests: truncation, malformed lengths, bad strings and flags, round trips.

use bytes::{BufMut, BytesMut};

use super::wire::*;
use super::*;

fn frame(first: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(first);
    put_varint(&mut b, body.len());
    b.put_slice(body);
    b
}

fn connect_v4(client: &str, user: &str, pass: &str) -> BytesMut {
    let mut body = BytesMut::new();
    put_str(&mut body, b"MQTT");
    body.put_u8(4);
    body.put_u8(0x80 | 0x40 | 0x02);
    body.put_u16(30);
    put_str(&mut body, client.as_bytes());
    put_str(&mut body, user.as_bytes());
    put_str(&mut body, pass.as_bytes());
    frame(0x10, &body)
}

#[test]
fn connect_v4_decodes() {
    let mut b = connect_v4("WL-1", "WL-1", "s3cret");
    let p = decode(&mut b, None, 1024).unwrap().unwrap();
    let Packet::Connect(c) = p else { panic!() };
    assert!(!c.v5);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 30);
    assert_eq!(c.client_id, "WL-1");
    assert_eq!(c.username.as_deref(), Some("WL-1"));
    assert_eq!(c.password.as_deref(), Some(&b"s3cret"[..]));
    assert!(b.is_empty());
}

#[test]
fn partial_packets_wait_for_more() {
    let full = connect_v4("a", "b", "c");
    for cut in 0..full.len() {
        let mut b = BytesMut::from(&full[..cut]);
        assert_eq!(decode(&mut b, None, 1024), Ok(None), "cut at {cut}");
    }
}

#[test]
fn malformed_remaining_length_is_an_error() {
    let mut b = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
    assert_eq!(
        decode(&mut b, Some(Protocol::V4), 1 << 20),
        Err(DecodeError::BadRemainingLength)
    );
}

#[test]
fn oversized_is_refused_before_it_arrives() {
    let mut b = BytesMut::from(&[0x30, 0x80, 0x80, 0x01][..]);
    assert!(matches!(
        decode(&mut b, Some(Protocol::V4), 1024),
        Err(DecodeError::TooLarge { size: 16_388, .. })
    ));
}

#[test]
fn publish_round_trips_through_the_encoder() {
    for protocol in [Protocol::V4, Protocol::V5] {
        let out = OutPublish {
            topic: "v1/devices/WL-1/telemetry",
            alias: None,
            payload: b"{\"values\":{}}",
            properties: if protocol == Protocol::V5 {
                &[P_CONTENT_TYPE, 0, 4, b'j', b's', b'o', b'n']
            } else {
                &[]
            },
            qos: 1,
            retain: true,
            dup: false,
            pid: 7,
            subscription_ids: &[],
            message_expiry: (protocol == Protocol::V5).then_some(60),
        };
        let mut b = BytesMut::new();
        out.encode(protocol, &mut b);
        assert_eq!(b.len(), out.size(protocol));
        let Packet::Publish(p) = decode(&mut b, Some(protocol), 1024).unwrap().unwrap() else {
            panic!()
        };
        assert_eq!(p.topic, out.topic);
        assert_eq!(&p.payload[..], out.payload);
        assert_eq!(&p.properties[..], out.properties);
        assert_eq!((p.qos, p.retain, p.pid), (1, true, 7));
        assert_eq!(p.message_expiry, out.message_expiry);
    }
}

#[test]
fn a_topic_alias_goes_out_with_or_instead_of_the_topic() {
    for topic in ["v1/feeds/pump/PS-P01", ""] {
        let out = OutPublish {
            topic,
            alias: Some(3),
            payload: b"x",
            properties: &[],
            qos: 0,
            retain: false,
            dup: false,
            pid: 0,
            subscription_ids: &[],
            message_expiry: None,
        };
        let mut b = BytesMut::new();
        out.encode(Protocol::V5, &mut b);
        assert_eq!(b.len(), out.size(Protocol::V5));
        let Packet::Publish(p) = decode(&mut b, Some(Protocol::V5), 1024).unwrap().unwrap() else {
            panic!()
        };
        assert_eq!((p.topic.as_str(), p.topic_alias), (topic, Some(3)));
    }
}

#[test]
fn topic_alias_is_not_forwarded() {
    let mut body = BytesMut::new();
    put_str(&mut body, b"t");
    body.put_u16(1);
    let props = [
        P_PAYLOAD_FORMAT,
        1,
        P_TOPIC_ALIAS,
        0,
        3,
        P_CONTENT_TYPE,
        0,
        1,
        b'x',
    ];
    body.put_u8(props.len() as u8);
    body.put_slice(&props);
    body.put_slice(b"hi");
    let mut b = frame(0x32, &body);
    let Packet::Publish(p) = decode(&mut b, Some(Protocol::V5), 1024).unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(p.topic_alias, Some(3));
    assert_eq!(
        &p.properties[..],
        &[P_PAYLOAD_FORMAT, 1, P_CONTENT_TYPE, 0, 1, b'x']
    );
    assert_eq!(&p.payload[..], b"hi");
}

#[test]
fn bad_strings_and_flags_are_errors() {
    // NUL inside the topic.
    let mut b = frame(0x30, &[0, 3, b'a', 0, b'b']);
    assert_eq!(
        decode(&mut b, Some(Protocol::V4), 1024),
        Err(DecodeError::BadString)
    );
    // SUBSCRIBE with wrong fixed-header flags.
    let mut b = frame(0x80, &[0, 1, 0, 1, b'a', 0]);
    assert!(matches!(
        decode(&mut b, Some(Protocol::V4), 1024),
        Err(DecodeError::BadFlags { .. })
    ));
    // A CONNACK is never sent by a client.
    let mut b = frame(0x20, &[0, 0]);
    assert_eq!(
        decode(&mut b, Some(Protocol::V4), 1024),
        Err(DecodeError::UnexpectedType(2))
    );
}

#[test]
fn subscribe_v5_options() {
    let mut body = BytesMut::new();
    body.put_u16(9);
    body.put_slice(&[2, P_SUBSCRIPTION_ID, 5]);
    put_str(&mut body, b"v1/feeds/#");
    body.put_u8(0b0010_1101);
    let mut b = frame(0x82, &body);
    let Packet::Subscribe(s) = decode(&mut b, Some(Protocol::V5), 1024).unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(s.pid, 9);
    assert_eq!(s.subscription_id, Some(5));
    assert_eq!(
        s.filters,
        vec![(
            "v1/feeds/#".to_string(),
            SubOptions {
                qos: 1,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2
            }
        )]
    );
}

#[test]
fn acks_encode() {
    let mut b = BytesMut::new();
    encode_ack(&mut b, Protocol::V5, AckKind::PubAck, 3, 0, None);
    assert_eq!(&b[..], &[0x40, 2, 0, 3]);
    b.clear();
    encode_ack(&mut b, Protocol::V5, AckKind::PubAck, 3, 0x87, None);
    assert_eq!(&b[..], &[0x40, 4, 0, 3, 0x87, 0]);
    b.clear();
    encode_ack(&mut b, Protocol::V4, AckKind::PubRel, 3, 0x87, Some("x"));
    assert_eq!(&b[..], &[0x62, 2, 0, 3]);
}
