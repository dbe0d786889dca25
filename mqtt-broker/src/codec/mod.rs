//! MQTT 3.1.1 and 5 wire format, server side: decodes what clients send, encodes what a broker
//! sends back.
//!
//! Decoding works on a connection's read buffer and hands out zero-copy [`Bytes`] for payloads
//! and properties; every length is checked against what is in the packet, so a hostile or
//! truncated packet is an error, never a panic. Encoding appends to a write buffer so that a
//! connection gathers many packets into one write.
//!
//! - `decode.rs` ([`decode()`]): the fixed header, then one function per packet a client sends;
//! - `encode.rs` ([`OutPublish`], `encode_*`): the packets a broker sends, appended to a write
//!   buffer;
//! - `wire.rs`: the primitives both use (variable byte integers, length-prefixed strings, the
//!   MQTT 5 property identifiers and the bounds-checked cursor that reads properties).

mod decode;
mod encode;
#[cfg(test)]
mod tests;
mod wire;

use bytes::Bytes;

pub use decode::{decode, decode_body};
pub use encode::{
    AckKind, ConnAckProps, OutPublish, encode_ack, encode_connack, encode_disconnect,
    encode_pingresp, encode_suback, encode_unsuback,
};

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
        /// Size announced by the fixed header, bytes.
        size: usize,
        /// The configured maximum, bytes.
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
    /// Message rate too high.
    pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
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

/// A packet sent by a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT: the first packet of every connection, and only the first.
    Connect(Box<Connect>),
    /// PUBLISH from the client, to authorize, route and hand to the pipeline.
    Publish(Publish),
    /// PUBACK for a message the broker sent.
    PubAck(u16),
    /// PUBREC for a QoS 2 message the broker sent, with its reason code.
    PubRec(u16, u8),
    /// PUBREL for a QoS 2 message the client sent.
    PubRel(u16),
    /// PUBCOMP for a QoS 2 message the broker sent.
    PubComp(u16),
    /// SUBSCRIBE, answered with one SUBACK code per filter.
    Subscribe(Subscribe),
    /// UNSUBSCRIBE, answered with UNSUBACK.
    Unsubscribe(Unsubscribe),
    /// PINGREQ: keep alive traffic, answered with PINGRESP.
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
    /// User name: the device, agent or app id the client authenticates as.
    pub username: Option<String>,
    /// Password: the secret checked by the [`crate::ingress::Authenticator`].
    pub password: Option<Bytes>,
    /// Last will.
    pub will: Option<Will>,
    /// MQTT 5 session expiry interval, seconds.
    pub session_expiry: u32,
    /// MQTT 5 receive maximum of the client (65535 when absent).
    pub receive_maximum: u16,
    /// MQTT 5 largest packet the client accepts (0 = no limit).
    pub maximum_packet_size: u32,
    /// MQTT 5: topic aliases the client accepts in the broker's PUBLISH packets (0: none).
    pub topic_alias_maximum: u16,
    /// MQTT 5: the client wants reason strings.
    pub request_problem_info: bool,
    /// MQTT 5 authentication method (enhanced authentication).
    pub auth_method: Option<String>,
}

/// A last will.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Will {
    /// Topic the will is published on (checked against the access policy at CONNECT).
    pub topic: String,
    /// Payload of the will message.
    pub payload: Bytes,
    /// QoS the will is published with.
    pub qos: u8,
    /// Whether the will becomes the topic's retained message.
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
    /// Application payload, shared with the read buffer (zero-copy).
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
    /// Packet identifier, echoed in the SUBACK.
    pub pid: u16,
    /// MQTT 5 subscription identifier.
    pub subscription_id: Option<u32>,
    /// Filters with options.
    pub filters: Vec<(String, SubOptions)>,
}

/// An UNSUBSCRIBE packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier, echoed in the UNSUBACK.
    pub pid: u16,
    /// Filters to remove, as subscribed (`$share/...` included).
    pub filters: Vec<String>,
}
