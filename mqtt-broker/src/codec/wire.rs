//! Wire primitives shared by the decoder and the encoder: variable byte integers,
//! length-prefixed strings, MQTT 5 property identifiers and a bounds-checked cursor.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::DecodeError;

// MQTT 5 property identifiers (MQTT 5, 2.2.2.2).
pub(super) const P_PAYLOAD_FORMAT: u8 = 0x01;
pub(super) const P_MESSAGE_EXPIRY: u8 = 0x02;
pub(super) const P_CONTENT_TYPE: u8 = 0x03;
pub(super) const P_RESPONSE_TOPIC: u8 = 0x08;
pub(super) const P_CORRELATION_DATA: u8 = 0x09;
pub(super) const P_SUBSCRIPTION_ID: u8 = 0x0B;
pub(super) const P_SESSION_EXPIRY: u8 = 0x11;
pub(super) const P_ASSIGNED_CLIENT_ID: u8 = 0x12;
pub(super) const P_SERVER_KEEP_ALIVE: u8 = 0x13;
pub(super) const P_AUTH_METHOD: u8 = 0x15;
pub(super) const P_AUTH_DATA: u8 = 0x16;
pub(super) const P_REQUEST_PROBLEM_INFO: u8 = 0x17;
pub(super) const P_WILL_DELAY: u8 = 0x18;
pub(super) const P_REQUEST_RESPONSE_INFO: u8 = 0x19;
pub(super) const P_RESPONSE_INFO: u8 = 0x1A;
pub(super) const P_SERVER_REFERENCE: u8 = 0x1C;
pub(super) const P_REASON_STRING: u8 = 0x1F;
pub(super) const P_RECEIVE_MAXIMUM: u8 = 0x21;
pub(super) const P_TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(super) const P_TOPIC_ALIAS: u8 = 0x23;
pub(super) const P_MAXIMUM_QOS: u8 = 0x24;
pub(super) const P_RETAIN_AVAILABLE: u8 = 0x25;
pub(super) const P_USER_PROPERTY: u8 = 0x26;
pub(super) const P_MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(super) const P_WILDCARD_AVAILABLE: u8 = 0x28;
pub(super) const P_SUB_IDS_AVAILABLE: u8 = 0x29;
pub(super) const P_SHARED_AVAILABLE: u8 = 0x2A;

/// A bounds-checked cursor over a packet body.
pub(super) struct Reader(pub(super) Bytes);

/// One MQTT 5 property as read: its raw bytes, identifier included.
pub(super) struct PropValue {
    pub(super) raw: Bytes,
}

impl PropValue {
    pub(super) fn value(&self) -> &[u8] {
        &self.raw[1..]
    }
    pub(super) fn as_u8(&self) -> Result<u8, DecodeError> {
        match self.value() {
            [b] => Ok(*b),
            _ => Err(DecodeError::Truncated),
        }
    }
    pub(super) fn as_u16(&self) -> Result<u16, DecodeError> {
        match self.value() {
            [a, b] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(DecodeError::Truncated),
        }
    }
    pub(super) fn as_u32(&self) -> Result<u32, DecodeError> {
        match self.value() {
            [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => Err(DecodeError::Truncated),
        }
    }
    pub(super) fn as_varint(&self) -> Result<u32, DecodeError> {
        let (v, _) = varint(self.value())?.ok_or(DecodeError::Truncated)?;
        Ok(v)
    }
    pub(super) fn as_string(&self) -> Result<String, DecodeError> {
        let s = self.value().get(2..).ok_or(DecodeError::Truncated)?;
        utf8(s).map(str::to_owned)
    }
}

/// Reads a variable byte integer: `(value, bytes used)`.
pub(super) fn varint(buf: &[u8]) -> Result<Option<(u32, usize)>, DecodeError> {
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

pub(super) fn utf8(b: &[u8]) -> Result<&str, DecodeError> {
    let s = std::str::from_utf8(b).map_err(|_| DecodeError::BadString)?;
    if s.contains('\0') {
        return Err(DecodeError::BadString);
    }
    Ok(s)
}

impl Reader {
    pub(super) fn remaining(&self) -> usize {
        self.0.len()
    }
    pub(super) fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.0.len() < n {
            Err(DecodeError::Truncated)
        } else {
            Ok(())
        }
    }
    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    pub(super) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = usize::from(self.u16()?);
        self.need(n)?;
        Ok(self.0.split_to(n))
    }
    pub(super) fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.binary()?;
        utf8(&b).map(str::to_owned)
    }
    pub(super) fn rest(&mut self) -> Bytes {
        self.0.split_off(0)
    }
    /// Splits off a property block (length-prefixed).
    pub(super) fn properties(&mut self) -> Result<Reader, DecodeError> {
        let (len, used) = varint(&self.0)?.ok_or(DecodeError::Truncated)?;
        self.0.advance(used);
        let len = len as usize;
        self.need(len)?;
        Ok(Reader(self.0.split_to(len)))
    }
    pub(super) fn skip_properties(&mut self) -> Result<(), DecodeError> {
        let mut p = self.properties()?;
        while p.next_property()?.is_some() {}
        Ok(())
    }
    /// The next property of a property block.
    pub(super) fn next_property(&mut self) -> Result<Option<(u8, PropValue)>, DecodeError> {
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
pub(super) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(super) fn put_varint(buf: &mut BytesMut, mut v: usize) {
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

pub(super) fn put_str(buf: &mut BytesMut, s: &[u8]) {
    // Callers pass strings that came in as MQTT strings or are bounded by construction.
    buf.put_u16(s.len().min(usize::from(u16::MAX)) as u16);
    buf.put_slice(&s[..s.len().min(usize::from(u16::MAX))]);
}
