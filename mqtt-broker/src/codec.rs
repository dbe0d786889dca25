//! MQTT 3.1.1 and 5 wire format, server side: decodes what clients send, encodes what a broker
//! sends back.
//!
//! Decoding works on a connection's read buffer and hands out zero-copy [`Bytes`] for payloads
//! and properties; every length is checked against what is in the packet, so a hostile or
//! truncated packet is an error, never a panic. Encoding appends to a write buffer so that a
//! connection gathers many packets into one write.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The protocol level of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5 (protocol level 5).
    V5,
}

/// Why bytes from a client are not a valid packet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The remaining length runs past four bytes.
    #[error("malformed remaining length")]
    BadRemainingLength,
    /// The packet is larger than the configured maximum.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A packet type a client never sends, or a reserved one.
    #[error("packet type {0} not accepted from a client")]
    UnexpectedType(u8),
    /// Flags of the fixed header do not match the packet type.
    #[error("invalid fixed header flags {flags:#x} for packet type {kind}")]
    BadFlags {
        /// Packet type.
        kind: u8,
        /// The flags nibble.
        flags: u8,
    },
    /// The packet ended before one of its fields.
    #[error("packet truncated")]
    Truncated,
    /// Bytes left over after the last field.
    #[error("trailing bytes in packet")]
    Trailing,
    /// A string that is not UTF-8 or contains U+0000.
    #[error("invalid UTF-8 string")]
    BadString,
    /// CONNECT does not name the MQTT protocol.
    #[error("protocol name is not MQTT")]
    BadProtocolName,
    /// CONNECT with a protocol level this broker does not speak.
    #[error("unsupported protocol level {0}")]
    UnsupportedLevel(u8),
    /// Any other violation, named.
    #[error("protocol violation: {0}")]
    Violation(&'static str),
}

impl DecodeError {
    /// The MQTT 5 reason code for a DISCONNECT caused by this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnexpectedType(_) | DecodeError::Violation(_) => reason::PROTOCOL_ERROR,
            _ => reason::MALFORMED_PACKET,
        }
    }
}

/// MQTT 5 reason codes used by this broker.
pub mod reason {
    /// Success / granted QoS 0.
    pub const SUCCESS: u8 = 0x00;
    /// Disconnect with will message (client to server).
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    /// No subscription existed (UNSUBACK).
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    /// Unspecified error.
    pub const UNSPECIFIED: u8 = 0x80;
    /// Malformed packet.
    pub const MALFORMED_PACKET: u8 = 0x81;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u8 = 0x82;
    /// Implementation specific error.
    pub const IMPLEMENTATION_SPECIFIC: u8 = 0x83;
    /// Unsupported protocol version.
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    /// Client identifier not valid.
    pub const CLIENT_ID_NOT_VALID: u8 = 0x85;
    /// Bad user name or password.
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
    /// Not authorized.
    pub const NOT_AUTHORIZED: u8 = 0x87;
    /// Server unavailable.
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    /// Server shutting down.
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    /// Bad authentication method.
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    /// Keep alive timeout.
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    /// Session taken over.
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    /// Topic filter invalid.
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    /// Topic name invalid.
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    /// Packet identifier not found.
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    /// Receive maximum exceeded.
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    /// Topic alias invalid.
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    /// Packet too large.
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    /// Quota exceeded.
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    /// Payload format invalid.
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    /// Shared subscriptions not supported.
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    /// Subscription identifiers not supported.
    pub const SUBSCRIPTION_IDS_NOT_SUPPORTED: u8 = 0xA1;
    /// Wildcard subscriptions not supported.
    pub const WILDCARDS_NOT_SUPPORTED: u8 = 0xA2;
}

/// MQTT 3.1.1 CONNACK return codes.
pub mod v4_return {
    /// Connection accepted.
    pub const ACCEPTED: u8 = 0;
    /// Unacceptable protocol version.
    pub const BAD_PROTOCOL: u8 = 1;
    /// Identifier rejected.
    pub const IDENTIFIER_REJECTED: u8 = 2;
    /// Server unavailable.
    pub const SERVER_UNAVAILABLE: u8 = 3;
    /// Bad user name or password.
    pub const BAD_CREDENTIALS: u8 = 4;
    /// Not authorized.
    pub const NOT_AUTHORIZED: u8 = 5;
}

// Packet types.
const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;
const UNSUBACK: u8 = 11;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;
const AUTH: u8 = 15;

// MQTT 5 property identifiers.
const P_PAYLOAD_FORMAT: u8 = 0x01;
const P_MESSAGE_EXPIRY: u8 = 0x02;
const P_CONTENT_TYPE: u8 = 0x03;
const P_RESPONSE_TOPIC: u8 = 0x08;
const P_CORRELATION_DATA: u8 = 0x09;
const P_SUBSCRIPTION_ID: u8 = 0x0B;
const P_SESSION_EXPIRY: u8 = 0x11;
const P_ASSIGNED_CLIENT_ID: u8 = 0x12;
const P_SERVER_KEEP_ALIVE: u8 = 0x13;
const P_AUTH_METHOD: u8 = 0x15;
const P_AUTH_DATA: u8 = 0x16;
const P_REQUEST_PROBLEM_INFO: u8 = 0x17;
const P_WILL_DELAY: u8 = 0x18;
const P_REQUEST_RESPONSE_INFO: u8 = 0x19;
const P_RESPONSE_INFO: u8 = 0x1A;
const P_SERVER_REFERENCE: u8 = 0x1C;
const P_REASON_STRING: u8 = 0x1F;
const P_RECEIVE_MAXIMUM: u8 = 0x21;
const P_TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const P_TOPIC_ALIAS: u8 = 0x23;
const P_MAXIMUM_QOS: u8 = 0x24;
const P_RETAIN_AVAILABLE: u8 = 0x25;
const P_USER_PROPERTY: u8 = 0x26;
const P_MAXIMUM_PACKET_SIZE: u8 = 0x27;
const P_WILDCARD_AVAILABLE: u8 = 0x28;
const P_SUB_IDS_AVAILABLE: u8 = 0x29;
const P_SHARED_AVAILABLE: u8 = 0x2A;

/// A packet sent by a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT.
    Connect(Box<Connect>),
    /// PUBLISH.
    Publish(Publish),
    /// PUBACK for a message the broker sent.
    PubAck(u16),
    /// PUBREC for a QoS 2 message the broker sent, with its reason code.
    PubRec(u16, u8),
    /// PUBREL for a QoS 2 message the client sent.
    PubRel(u16),
    /// PUBCOMP for a QoS 2 message the broker sent.
    PubComp(u16),
    /// SUBSCRIBE.
    Subscribe(Subscribe),
    /// UNSUBSCRIBE.
    Unsubscribe(Unsubscribe),
    /// PINGREQ.
    PingReq,
    /// DISCONNECT, with its reason code and (MQTT 5) a new session expiry interval.
    Disconnect {
        /// Reason code (0 for MQTT 3.1.1).
        reason: u8,
        /// New session expiry interval, seconds.
        session_expiry: Option<u32>,
    },
    /// AUTH (MQTT 5 enhanced authentication; not supported by this broker).
    Auth,
}

/// A CONNECT packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Connect {
    /// MQTT 5 rather than 3.1.1.
    pub v5: bool,
    /// Clean session (3.1.1) / clean start (5).
    pub clean_start: bool,
    /// Keep alive, seconds; 0 disables it.
    pub keep_alive: u16,
    /// Client identifier (may be empty).
    pub client_id: String,
    /// User name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<Bytes>,
    /// Last will.
    pub will: Option<Will>,
    /// MQTT 5 session expiry interval, seconds.
    pub session_expiry: u32,
    /// MQTT 5 receive maximum of the client (65535 when absent).
    pub receive_maximum: u16,
    /// MQTT 5 largest packet the client accepts (0 = no limit).
    pub maximum_packet_size: u32,
    /// MQTT 5: the client wants reason strings.
    pub request_problem_info: bool,
    /// MQTT 5 authentication method (enhanced authentication).
    pub auth_method: Option<String>,
}

/// A last will.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Will {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: u8,
    /// Retain.
    pub retain: bool,
    /// Forwardable MQTT 5 properties (encoded).
    pub properties: Bytes,
    /// MQTT 5 will delay interval, seconds.
    pub delay: u32,
}

/// A PUBLISH packet from a client.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Publish {
    /// Redelivery flag.
    pub dup: bool,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// Topic name (may be empty in MQTT 5 when a topic alias is set).
    pub topic: String,
    /// Packet identifier (0 for QoS 0).
    pub pid: u16,
    /// MQTT 5 topic alias.
    pub topic_alias: Option<u16>,
    /// MQTT 5 message expiry interval, seconds (kept apart: it is rewritten on delivery).
    pub message_expiry: Option<u32>,
    /// MQTT 5 properties that travel with the message to subscribers unchanged (encoded,
    /// without the length prefix).
    pub properties: Bytes,
    /// Payload.
    pub payload: Bytes,
}

/// MQTT 5 subscription options (3.1.1 uses only `qos`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubOptions {
    /// Maximum QoS.
    pub qos: u8,
    /// Do not send the client its own publications.
    pub no_local: bool,
    /// Keep the retain flag of routed messages.
    pub retain_as_published: bool,
    /// 0: send retained on subscribe; 1: only for a new subscription; 2: never.
    pub retain_handling: u8,
}

/// A SUBSCRIBE packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub pid: u16,
    /// MQTT 5 subscription identifier.
    pub subscription_id: Option<u32>,
    /// Filters with options.
    pub filters: Vec<(String, SubOptions)>,
}

/// An UNSUBSCRIBE packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub pid: u16,
    /// Filters.
    pub filters: Vec<String>,
}

/// Reads one packet's fixed header: `(first byte, header length, remaining length)`, or
/// `None` when more bytes are needed.
fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, DecodeError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            // Non-minimal encodings (a trailing 0x80 0x00) are tolerated like most brokers do.
            return Ok(Some((buf[0], 2 + i, len)));
        }
    }
    Err(DecodeError::BadRemainingLength)
}

/// Decodes the next complete packet from `buf`, removing its bytes. `None` means more bytes
/// are needed. `protocol` is `None` before CONNECT; `max_packet` bounds the whole packet.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    max_packet: usize,
) -> Result<Option<Packet>, DecodeError> {
    // Before CONNECT only a CONNECT may come: say so at the first byte instead of waiting for
    // a garbage length's worth of bytes.
    if protocol.is_none() && buf.first().is_some_and(|b| b >> 4 != CONNECT) {
        return Err(DecodeError::Violation("first packet is not CONNECT"));
    }
    let Some((first, header_len, remaining)) = fixed_header(buf)? else {
        return Ok(None);
    };
    let size = header_len + remaining;
    if size > max_packet {
        return Err(DecodeError::TooLarge {
            size,
            max: max_packet,
        });
    }
    if buf.len() < size {
        buf.reserve(size - buf.len());
        return Ok(None);
    }
    let mut packet = buf.split_to(size).freeze();
    packet.advance(header_len);
    decode_body(first, packet, protocol).map(Some)
}

/// Decodes a packet body (everything after the fixed header).
pub fn decode_body(
    first: u8,
    body: Bytes,
    protocol: Option<Protocol>,
) -> Result<Packet, DecodeError> {
    let kind = first >> 4;
    let flags = first & 0x0f;
    let mut r = Reader(body);
    let v5 = protocol == Some(Protocol::V5);
    let expect_flags = |want: u8| {
        if flags == want {
            Ok(())
        } else {
            Err(DecodeError::BadFlags { kind, flags })
        }
    };
    let packet = match kind {
        CONNECT => {
            expect_flags(0)?;
            Packet::Connect(Box::new(decode_connect(&mut r)?))
        }
        PUBLISH => Packet::Publish(decode_publish(flags, &mut r, v5)?),
        PUBACK | PUBREC | PUBCOMP | PUBREL => {
            expect_flags(if kind == PUBREL { 2 } else { 0 })?;
            let pid = r.u16()?;
            let mut code = 0;
            if v5 && r.remaining() > 0 {
                code = r.u8()?;
                if r.remaining() > 0 {
                    r.skip_properties()?;
                }
            }
            match kind {
                PUBACK => Packet::PubAck(pid),
                PUBREC => Packet::PubRec(pid, code),
                PUBREL => Packet::PubRel(pid),
                _ => Packet::PubComp(pid),
            }
        }
        SUBSCRIBE => {
            expect_flags(2)?;
            Packet::Subscribe(decode_subscribe(&mut r, v5)?)
        }
        UNSUBSCRIBE => {
            expect_flags(2)?;
            let pid = r.u16()?;
            if v5 {
                r.skip_properties()?;
            }
            let mut filters = Vec::new();
            while r.remaining() > 0 {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                return Err(DecodeError::Violation("UNSUBSCRIBE without filters"));
            }
            Packet::Unsubscribe(Unsubscribe { pid, filters })
        }
        PINGREQ => {
            expect_flags(0)?;
            Packet::PingReq
        }
        DISCONNECT => {
            expect_flags(0)?;
            let mut reason = 0;
            let mut session_expiry = None;
            if v5 && r.remaining() > 0 {
                reason = r.u8()?;
                if r.remaining() > 0 {
                    let mut props = r.properties()?;
                    while let Some((id, value)) = props.next_property()? {
                        if id == P_SESSION_EXPIRY {
                            session_expiry = Some(value.as_u32()?);
                        }
                    }
                }
            }
            Packet::Disconnect {
                reason,
                session_expiry,
            }
        }
        AUTH if v5 => Packet::Auth,
        other => return Err(DecodeError::UnexpectedType(other)),
    };
    if r.remaining() > 0 {
        return Err(DecodeError::Trailing);
    }
    Ok(packet)
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    if &name[..] != b"MQTT" && &name[..] != b"MQIsdp" {
        return Err(DecodeError::BadProtocolName);
    }
    let level = r.u8()?;
    let v5 = match level {
        4 => false,
        5 => true,
        other => return Err(DecodeError::UnsupportedLevel(other)),
    };
    if &name[..] != b"MQTT" {
        return Err(DecodeError::UnsupportedLevel(level));
    }
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Violation("reserved CONNECT flag set"));
    }
    let mut c = Connect {
        v5,
        clean_start: flags & 0x02 != 0,
        keep_alive: r.u16()?,
        receive_maximum: u16::MAX,
        request_problem_info: true,
        ..Connect::default()
    };
    if v5 {
        let mut props = r.properties()?;
        while let Some((id, value)) = props.next_property()? {
            match id {
                P_SESSION_EXPIRY => c.session_expiry = value.as_u32()?,
                P_RECEIVE_MAXIMUM => {
                    c.receive_maximum = value.as_u16()?;
                    if c.receive_maximum == 0 {
                        return Err(DecodeError::Violation("receive maximum 0"));
                    }
                }
                P_MAXIMUM_PACKET_SIZE => {
                    c.maximum_packet_size = value.as_u32()?;
                    if c.maximum_packet_size == 0 {
                        return Err(DecodeError::Violation("maximum packet size 0"));
                    }
                }
                P_REQUEST_PROBLEM_INFO => c.request_problem_info = value.as_u8()? != 0,
                P_AUTH_METHOD => c.auth_method = Some(value.as_string()?),
                P_TOPIC_ALIAS_MAXIMUM | P_REQUEST_RESPONSE_INFO | P_USER_PROPERTY | P_AUTH_DATA => {
                }
                _ => return Err(DecodeError::Violation("property not allowed in CONNECT")),
            }
        }
    }
    c.client_id = r.string()?;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    if will_flag {
        if will_qos > 2 {
            return Err(DecodeError::Violation("will QoS 3"));
        }
        let mut will = Will {
            qos: will_qos,
            retain: will_retain,
            ..Will::default()
        };
        if v5 {
            let mut props = r.properties()?;
            let mut forward = BytesMut::new();
            while let Some((id, value)) = props.next_property()? {
                match id {
                    P_WILL_DELAY => will.delay = value.as_u32()?,
                    P_PAYLOAD_FORMAT | P_MESSAGE_EXPIRY | P_CONTENT_TYPE | P_RESPONSE_TOPIC
                    | P_CORRELATION_DATA | P_USER_PROPERTY => forward.extend_from_slice(&value.raw),
                    _ => return Err(DecodeError::Violation("property not allowed in will")),
                }
            }
            will.properties = forward.freeze();
        }
        will.topic = r.string()?;
        will.payload = r.binary()?;
        c.will = Some(will);
    } else if will_qos != 0 || will_retain {
        return Err(DecodeError::Violation("will QoS or retain without will"));
    }
    if flags & 0x80 != 0 {
        c.username = Some(r.string()?);
    }
    if flags & 0x40 != 0 {
        if !v5 && c.username.is_none() {
            return Err(DecodeError::Violation("password without user name"));
        }
        c.password = Some(r.binary()?);
    }
    Ok(c)
}

fn decode_publish(flags: u8, r: &mut Reader, v5: bool) -> Result<Publish, DecodeError> {
    let qos = (flags >> 1) & 0x03;
    if qos == 3 {
        return Err(DecodeError::Violation("PUBLISH with QoS 3"));
    }
    let dup = flags & 0x08 != 0;
    if dup && qos == 0 {
        return Err(DecodeError::Violation("DUP set on a QoS 0 PUBLISH"));
    }
    let mut p = Publish {
        dup,
        qos,
        retain: flags & 0x01 != 0,
        topic: r.string()?,
        ..Publish::default()
    };
    if qos > 0 {
        p.pid = r.u16()?;
        if p.pid == 0 {
            return Err(DecodeError::Violation("packet identifier 0"));
        }
    }
    if v5 {
        let mut props = r.properties()?;
        let all = props.0.clone();
        let mut forward: Option<BytesMut> = None;
        let mut consumed = 0usize;
        while let Some((id, value)) = props.next_property()? {
            match id {
                P_PAYLOAD_FORMAT | P_CONTENT_TYPE | P_RESPONSE_TOPIC | P_CORRELATION_DATA
                | P_USER_PROPERTY => {
                    if let Some(f) = forward.as_mut() {
                        f.extend_from_slice(&value.raw);
                    }
                }
                P_TOPIC_ALIAS | P_MESSAGE_EXPIRY => {
                    if id == P_TOPIC_ALIAS {
                        let alias = value.as_u16()?;
                        if alias == 0 {
                            return Err(DecodeError::Violation("topic alias 0"));
                        }
                        p.topic_alias = Some(alias);
                    } else {
                        p.message_expiry = Some(value.as_u32()?);
                    }
                    // Not forwarded as is: copy what came before it, then go on copying.
                    if forward.is_none() {
                        forward = Some(BytesMut::from(&all[..consumed]));
                    }
                }
                _ => return Err(DecodeError::Violation("property not allowed in PUBLISH")),
            }
            consumed += value.raw.len();
        }
        p.properties = match forward {
            Some(f) => f.freeze(),
            None => all,
        };
    }
    p.payload = r.rest();
    Ok(p)
}

fn decode_subscribe(r: &mut Reader, v5: bool) -> Result<Subscribe, DecodeError> {
    let mut s = Subscribe {
        pid: r.u16()?,
        ..Subscribe::default()
    };
    if s.pid == 0 {
        return Err(DecodeError::Violation("packet identifier 0"));
    }
    if v5 {
        let mut props = r.properties()?;
        while let Some((id, value)) = props.next_property()? {
            match id {
                P_SUBSCRIPTION_ID => {
                    let v = value.as_varint()?;
                    if v == 0 {
                        return Err(DecodeError::Violation("subscription identifier 0"));
                    }
                    s.subscription_id = Some(v);
                }
                P_USER_PROPERTY => {}
                _ => return Err(DecodeError::Violation("property not allowed in SUBSCRIBE")),
            }
        }
    }
    while r.remaining() > 0 {
        let filter = r.string()?;
        let o = r.u8()?;
        let reserved = if v5 { o & 0xc0 } else { o & 0xfc };
        if reserved != 0 {
            return Err(DecodeError::Violation(
                "reserved subscription option bits set",
            ));
        }
        let opts = SubOptions {
            qos: o & 0x03,
            no_local: v5 && o & 0x04 != 0,
            retain_as_published: v5 && o & 0x08 != 0,
            retain_handling: if v5 { (o >> 4) & 0x03 } else { 0 },
        };
        if opts.qos == 3 || opts.retain_handling == 3 {
            return Err(DecodeError::Violation("invalid subscription options"));
        }
        s.filters.push((filter, opts));
    }
    if s.filters.is_empty() {
        return Err(DecodeError::Violation("SUBSCRIBE without filters"));
    }
    Ok(s)
}

/// A bounds-checked cursor over a packet body.
struct Reader(Bytes);

/// One MQTT 5 property as read: its raw bytes, identifier included.
struct PropValue {
    raw: Bytes,
}

impl PropValue {
    fn value(&self) -> &[u8] {
        &self.raw[1..]
    }
    fn as_u8(&self) -> Result<u8, DecodeError> {
        match self.value() {
            [b] => Ok(*b),
            _ => Err(DecodeError::Truncated),
        }
    }
    fn as_u16(&self) -> Result<u16, DecodeError> {
        match self.value() {
            [a, b] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(DecodeError::Truncated),
        }
    }
    fn as_u32(&self) -> Result<u32, DecodeError> {
        match self.value() {
            [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => Err(DecodeError::Truncated),
        }
    }
    fn as_varint(&self) -> Result<u32, DecodeError> {
        let (v, _) = varint(self.value())?.ok_or(DecodeError::Truncated)?;
        Ok(v)
    }
    fn as_string(&self) -> Result<String, DecodeError> {
        let s = self.value().get(2..).ok_or(DecodeError::Truncated)?;
        utf8(s).map(str::to_owned)
    }
}

/// Reads a variable byte integer: `(value, bytes used)`.
fn varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
    let mut v = 0u32;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        v |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    Err(DecodeError::BadRemainingLength)
}

fn utf8(b: &[u8]) -> Result<&str, DecodeError> {
    let s = std::str::from_utf8(b).map_err(|_| DecodeError::BadString)?;
    if s.contains('\0') {
        return Err(DecodeError::BadString);
    }
    Ok(s)
}

impl Reader {
    fn remaining(&self) -> usize {
        self.0.len()
    }
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.0.len() < n {
            Err(DecodeError::Truncated)
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = usize::from(self.u16()?);
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.binary()?;
        utf8(&b).map(str::to_owned)
    }
    fn rest(&mut self) -> Bytes {
        self.0.split_off(0)
    }
    /// Splits off a property block (length-prefixed).
    fn properties(&mut self) -> Result<Reader, DecodeError> {
        let (len, used) = varint(&self.0)?.ok_or(DecodeError::Truncated)?;
        self.0.advance(used);
        let len = len as usize;
        self.need(len)?;
        Ok(Reader(self.0.split_to(len)))
    }
    fn skip_properties(&mut self) -> Result<(), DecodeError> {
        let mut p = self.properties()?;
        while p.next_property()?.is_some() {}
        Ok(())
    }
    /// The next property of a property block.
    fn next_property(&mut self) -> Result<Option<(u8, PropValue)>, DecodeError> {
        let buf = &self.0[..];
        let Some(&id) = buf.first() else {
            return Ok(None);
        };
        let body = &buf[1..];
        let len = match id {
            P_PAYLOAD_FORMAT
            | P_REQUEST_PROBLEM_INFO
            | P_REQUEST_RESPONSE_INFO
            | P_MAXIMUM_QOS
            | P_RETAIN_AVAILABLE
            | P_WILDCARD_AVAILABLE
            | P_SUB_IDS_AVAILABLE
            | P_SHARED_AVAILABLE => 1,
            P_SERVER_KEEP_ALIVE | P_RECEIVE_MAXIMUM | P_TOPIC_ALIAS_MAXIMUM | P_TOPIC_ALIAS => 2,
            P_MESSAGE_EXPIRY | P_SESSION_EXPIRY | P_WILL_DELAY | P_MAXIMUM_PACKET_SIZE => 4,
            P_SUBSCRIPTION_ID => varint(body)?.ok_or(DecodeError::Truncated)?.1,
            P_CONTENT_TYPE | P_RESPONSE_TOPIC | P_CORRELATION_DATA | P_ASSIGNED_CLIENT_ID
            | P_AUTH_METHOD | P_AUTH_DATA | P_RESPONSE_INFO | P_SERVER_REFERENCE
            | P_REASON_STRING => {
                let n = body.get(..2).ok_or(DecodeError::Truncated)?;
                2 + usize::from(u16::from_be_bytes([n[0], n[1]]))
            }
            P_USER_PROPERTY => {
                let k = body.get(..2).ok_or(DecodeError::Truncated)?;
                let klen = 2 + usize::from(u16::from_be_bytes([k[0], k[1]]));
                let v = body.get(klen..klen + 2).ok_or(DecodeError::Truncated)?;
                klen + 2 + usize::from(u16::from_be_bytes([v[0], v[1]]))
            }
            _ => return Err(DecodeError::Violation("unknown property")),
        };
        if body.len() < len {
            return Err(DecodeError::Truncated);
        }
        let value = &body[..len];
        // Strings inside properties must be valid UTF-8 like any other.
        match id {
            P_CONTENT_TYPE | P_RESPONSE_TOPIC | P_AUTH_METHOD | P_REASON_STRING => {
                utf8(&value[2..])?;
            }
            P_USER_PROPERTY => {
                let klen = usize::from(u16::from_be_bytes([value[0], value[1]]));
                utf8(&value[2..2 + klen])?;
                utf8(&value[4 + klen..])?;
            }
            _ => {}
        }
        let raw = self.0.split_to(1 + len);
        Ok(Some((id, PropValue { raw })))
    }
}

/// Number of bytes of a variable byte integer.
fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_varint(buf: &mut BytesMut, mut v: usize) {
    loop {
        let mut b = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        buf.put_u8(b);
        if v == 0 {
            break;
        }
    }
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    // Callers pass strings that came in as MQTT strings or are bounded by construction.
    buf.put_u16(s.len().min(usize::from(u16::MAX)) as u16);
    buf.put_slice(&s[..s.len().min(usize::from(u16::MAX))]);
}

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
    /// Topic.
    pub topic: &'a str,
    /// Payload.
    pub payload: &'a [u8],
    /// MQTT 5 properties to forward (encoded).
    pub properties: &'a [u8],
    /// Delivered QoS.
    pub qos: u8,
    /// Retain flag as delivered.
    pub retain: bool,
    /// Redelivery.
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

#[cfg(test)]
mod tests {
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
        let Packet::Subscribe(s) = decode(&mut b, Some(Protocol::V5), 1024).unwrap().unwrap()
        else {
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
}
