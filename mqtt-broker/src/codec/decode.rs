//! Decoding what clients send: the fixed header (size checked before the body arrives), then
//! one function per packet type.

use bytes::{Buf, BytesMut};

use super::wire::*;
use super::*;

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
                P_TOPIC_ALIAS_MAXIMUM => c.topic_alias_maximum = value.as_u16()?,
                P_REQUEST_RESPONSE_INFO | P_USER_PROPERTY | P_AUTH_DATA => {}
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
