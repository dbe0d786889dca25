//! Encoding what a broker sends, appended to a connection's write buffer.

use bytes::{BufMut, BytesMut};

use super::wire::*;
use super::*;

/// The four acknowledgements of the publish flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckKind {
    /// QoS 1 acknowledgement.
    PubAck,
    /// QoS 2, step 1.
    PubRec,
    /// QoS 2, step 2.
    PubRel,
    /// QoS 2, step 3.
    PubComp,
}

/// How a delivered PUBLISH looks on the wire.
#[derive(Clone, Copy, Debug)]
pub struct OutPublish<'a> {
    /// Topic name (empty when `alias` stands for a topic the client already knows).
    pub topic: &'a str,
    /// MQTT 5 topic alias sent with the packet (with the topic when it is new to the client).
    pub alias: Option<u16>,
    /// Application payload.
    pub payload: &'a [u8],
    /// MQTT 5 properties to forward (encoded).
    pub properties: &'a [u8],
    /// Delivered QoS.
    pub qos: u8,
    /// Retain flag as delivered.
    pub retain: bool,
    /// DUP flag: a resend after reconnection (ignored for QoS 0).
    pub dup: bool,
    /// Packet identifier (QoS > 0).
    pub pid: u16,
    /// MQTT 5 subscription identifiers.
    pub subscription_ids: &'a [u32],
    /// MQTT 5 message expiry interval left, seconds.
    pub message_expiry: Option<u32>,
}

impl OutPublish<'_> {
    fn properties_len(&self) -> usize {
        self.properties.len()
            + if self.alias.is_some() { 3 } else { 0 }
            + if self.message_expiry.is_some() { 5 } else { 0 }
            + self
                .subscription_ids
                .iter()
                .map(|&id| 1 + varint_len(id as usize))
                .sum::<usize>()
    }

    fn remaining_len(&self, protocol: Protocol) -> usize {
        let mut n = 2 + self.topic.len() + self.payload.len();
        if self.qos > 0 {
            n += 2;
        }
        if protocol == Protocol::V5 {
            let p = self.properties_len();
            n += varint_len(p) + p;
        }
        n
    }

    /// Size of the whole packet on the wire.
    pub fn size(&self, protocol: Protocol) -> usize {
        let r = self.remaining_len(protocol);
        1 + varint_len(r) + r
    }

    /// Appends the packet to `buf`.
    pub fn encode(&self, protocol: Protocol, buf: &mut BytesMut) {
        let r = self.remaining_len(protocol);
        buf.reserve(1 + varint_len(r) + r);
        let first = (PUBLISH << 4)
            | (u8::from(self.dup && self.qos > 0) << 3)
            | (self.qos << 1)
            | u8::from(self.retain);
        buf.put_u8(first);
        put_varint(buf, r);
        put_str(buf, self.topic.as_bytes());
        if self.qos > 0 {
            buf.put_u16(self.pid);
        }
        if protocol == Protocol::V5 {
            put_varint(buf, self.properties_len());
            buf.put_slice(self.properties);
            if let Some(a) = self.alias {
                buf.put_u8(P_TOPIC_ALIAS);
                buf.put_u16(a);
            }
            if let Some(e) = self.message_expiry {
                buf.put_u8(P_MESSAGE_EXPIRY);
                buf.put_u32(e);
            }
            for &id in self.subscription_ids {
                buf.put_u8(P_SUBSCRIPTION_ID);
                put_varint(buf, id as usize);
            }
        }
        buf.put_slice(self.payload);
    }
}

/// What a CONNACK tells an MQTT 5 client about this broker.
#[derive(Clone, Debug, Default)]
pub struct ConnAckProps<'a> {
    /// Inbound QoS > 0 messages the client may have unacknowledged.
    pub receive_maximum: u16,
    /// Largest packet accepted.
    pub maximum_packet_size: u32,
    /// Topic aliases the client may use.
    pub topic_alias_maximum: u16,
    /// The client id the broker assigned (when the client sent none).
    pub assigned_client_id: Option<&'a str>,
    /// The session expiry the broker will apply, when it differs from the request.
    pub session_expiry: Option<u32>,
    /// Why the connection was refused.
    pub reason_string: Option<&'a str>,
    /// The keep alive the broker applies instead of the client's.
    pub server_keep_alive: Option<u16>,
}

/// Appends a CONNACK.
pub fn encode_connack(
    buf: &mut BytesMut,
    protocol: Protocol,
    session_present: bool,
    code: u8,
    props: &ConnAckProps<'_>,
) {
    buf.put_u8(CONNACK << 4);
    match protocol {
        Protocol::V4 => {
            buf.put_u8(2);
            buf.put_u8(u8::from(session_present));
            buf.put_u8(code);
        }
        Protocol::V5 => {
            let mut p = BytesMut::with_capacity(64);
            if code == reason::SUCCESS {
                p.put_u8(P_RECEIVE_MAXIMUM);
                p.put_u16(props.receive_maximum);
                p.put_u8(P_MAXIMUM_PACKET_SIZE);
                p.put_u32(props.maximum_packet_size);
                p.put_u8(P_TOPIC_ALIAS_MAXIMUM);
                p.put_u16(props.topic_alias_maximum);
                p.put_u8(P_SUB_IDS_AVAILABLE);
                p.put_u8(1);
                p.put_u8(P_SHARED_AVAILABLE);
                p.put_u8(1);
                if let Some(id) = props.assigned_client_id {
                    p.put_u8(P_ASSIGNED_CLIENT_ID);
                    put_str(&mut p, id.as_bytes());
                }
                if let Some(e) = props.session_expiry {
                    p.put_u8(P_SESSION_EXPIRY);
                    p.put_u32(e);
                }
                if let Some(k) = props.server_keep_alive {
                    p.put_u8(P_SERVER_KEEP_ALIVE);
                    p.put_u16(k);
                }
            }
            if let Some(s) = props.reason_string {
                p.put_u8(P_REASON_STRING);
                put_str(&mut p, s.as_bytes());
            }
            let r = 2 + varint_len(p.len()) + p.len();
            put_varint(buf, r);
            buf.put_u8(u8::from(session_present));
            buf.put_u8(code);
            put_varint(buf, p.len());
            buf.put_slice(&p);
        }
    }
}

/// Appends a PUBACK, PUBREC, PUBREL or PUBCOMP. MQTT 5 carries `code` and an optional reason
/// string; MQTT 3.1.1 has neither.
pub fn encode_ack(
    buf: &mut BytesMut,
    protocol: Protocol,
    kind: AckKind,
    pid: u16,
    code: u8,
    reason_string: Option<&str>,
) {
    let first = match kind {
        AckKind::PubAck => PUBACK << 4,
        AckKind::PubRec => PUBREC << 4,
        AckKind::PubRel => (PUBREL << 4) | 2,
        AckKind::PubComp => PUBCOMP << 4,
    };
    buf.put_u8(first);
    if protocol == Protocol::V4 || (code == 0 && reason_string.is_none()) {
        buf.put_u8(2);
        buf.put_u16(pid);
        return;
    }
    let plen = reason_string.map_or(0, |s| 3 + s.len().min(usize::from(u16::MAX)));
    put_varint(buf, 3 + varint_len(plen) + plen);
    buf.put_u16(pid);
    buf.put_u8(code);
    put_varint(buf, plen);
    if let Some(s) = reason_string {
        buf.put_u8(P_REASON_STRING);
        put_str(buf, s.as_bytes());
    }
}

/// Appends a SUBACK with one return/reason code per filter.
pub fn encode_suback(buf: &mut BytesMut, protocol: Protocol, pid: u16, codes: &[u8]) {
    buf.put_u8(SUBACK << 4);
    let v5 = usize::from(protocol == Protocol::V5);
    put_varint(buf, 2 + v5 + codes.len());
    buf.put_u16(pid);
    if v5 == 1 {
        buf.put_u8(0);
    }
    buf.put_slice(codes);
}

/// Appends an UNSUBACK (MQTT 5: one reason code per filter).
pub fn encode_unsuback(buf: &mut BytesMut, protocol: Protocol, pid: u16, codes: &[u8]) {
    buf.put_u8(UNSUBACK << 4);
    match protocol {
        Protocol::V4 => {
            buf.put_u8(2);
            buf.put_u16(pid);
        }
        Protocol::V5 => {
            put_varint(buf, 3 + codes.len());
            buf.put_u16(pid);
            buf.put_u8(0);
            buf.put_slice(codes);
        }
    }
}

/// Appends a PINGRESP.
pub fn encode_pingresp(buf: &mut BytesMut) {
    buf.put_u8(PINGRESP << 4);
    buf.put_u8(0);
}

/// Appends an MQTT 5 DISCONNECT with a reason code (MQTT 3.1.1 has no server DISCONNECT:
/// the broker just closes).
pub fn encode_disconnect(buf: &mut BytesMut, code: u8) {
    buf.put_u8(DISCONNECT << 4);
    buf.put_u8(2);
    buf.put_u8(code);
    buf.put_u8(0);
}
