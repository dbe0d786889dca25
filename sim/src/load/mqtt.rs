//! A lean MQTT 3.1.1 client codec for the load generator.
//!
//! Only what a simulated agent or a measuring subscriber needs: CONNECT, SUBSCRIBE, PUBLISH at
//! QoS 0/1, PUBACK, PINGREQ and DISCONNECT out; CONNACK, SUBACK, PUBLISH, PUBACK and PINGRESP
//! in. Packets are encoded straight into the caller's write buffer and decoded from its read
//! buffer without copying payloads, so hundreds of thousands of messages a second cost little
//! CPU next to the hub under test (rumqttc allocates and copies per message, and its event loop
//! would be a second, heavier client to measure).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest packet accepted from the server (the hub's default maximum is 2 MiB).
pub const MAX_PACKET: usize = 4 << 20;

/// A packet from the server.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// CONNACK with its return code (0 = accepted).
    ConnAck(u8),
    /// SUBACK with the granted QoS or 0x80 per filter.
    SubAck(u16, Vec<u8>),
    /// A message.
    Publish(Publish),
    /// PUBACK of one of our QoS 1 publishes.
    PubAck(u16),
    /// PINGRESP.
    PingResp,
    /// SUBSCRIBE (seen by a server): packet id and number of filters.
    Subscribe(u16, usize),
    /// Anything else (PUBREC, UNSUBACK, ...), by its packet type.
    Other(u8),
}

/// A message received.
#[derive(Debug, PartialEq)]
pub struct Publish {
    /// QoS it arrived with.
    pub qos: u8,
    /// Packet id (QoS 1/2 only).
    pub pid: u16,
    /// Topic name, as raw bytes (UTF-8 checked by the caller when needed).
    pub topic: Bytes,
    /// The message body as sent.
    pub payload: Bytes,
}

/// Why a packet could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The remaining-length field is longer than four bytes.
    #[error("malformed remaining length")]
    BadLength,
    /// Larger than [`MAX_PACKET`].
    #[error("packet of {0} bytes is too large")]
    TooLarge(usize),
    /// The body is shorter than its fields say.
    #[error("truncated {0} packet")]
    Truncated(&'static str),
}

fn put_len(out: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

/// CONNECT (clean session; user name and password when given).
pub fn connect(
    out: &mut BytesMut,
    client_id: &str,
    user: Option<&str>,
    password: Option<&str>,
    keep_alive_s: u16,
) {
    let mut flags = 0x02u8;
    let mut len = 10 + 2 + client_id.len();
    if let Some(u) = user {
        flags |= 0x80;
        len += 2 + u.len();
    }
    if let Some(p) = password {
        flags |= 0x40;
        len += 2 + p.len();
    }
    out.put_u8(0x10);
    put_len(out, len);
    put_str(out, b"MQTT");
    out.put_u8(4);
    out.put_u8(flags);
    out.put_u16(keep_alive_s);
    put_str(out, client_id.as_bytes());
    if let Some(u) = user {
        put_str(out, u.as_bytes());
    }
    if let Some(p) = password {
        put_str(out, p.as_bytes());
    }
}

/// SUBSCRIBE to filters with their requested QoS.
pub fn subscribe(out: &mut BytesMut, pid: u16, filters: &[(&str, u8)]) {
    let len = 2 + filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>();
    out.put_u8(0x82);
    put_len(out, len);
    out.put_u16(pid);
    for (f, q) in filters {
        put_str(out, f.as_bytes());
        out.put_u8(*q);
    }
}

/// PUBLISH at QoS 0 (`pid` ignored) or 1.
pub fn publish(out: &mut BytesMut, topic: &str, qos: u8, pid: u16, payload: &[u8]) {
    publish_flags(out, topic, qos, false, pid, payload);
}

/// PUBLISH, with the DUP flag for a QoS 1 redelivery.
pub fn publish_flags(
    out: &mut BytesMut,
    topic: &str,
    qos: u8,
    dup: bool,
    pid: u16,
    payload: &[u8],
) {
    let len = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
    out.put_u8(0x30 | (qos << 1) | if dup && qos > 0 { 0x08 } else { 0 });
    put_len(out, len);
    put_str(out, topic.as_bytes());
    if qos > 0 {
        out.put_u16(pid);
    }
    out.put_slice(payload);
}

/// PUBACK.
pub fn puback(out: &mut BytesMut, pid: u16) {
    out.put_slice(&[0x40, 0x02]);
    out.put_u16(pid);
}

/// PINGREQ.
pub fn pingreq(out: &mut BytesMut) {
    out.put_slice(&[0xC0, 0x00]);
}

/// DISCONNECT.
pub fn disconnect(out: &mut BytesMut) {
    out.put_slice(&[0xE0, 0x00]);
}

/// Takes one packet off the front of `buf`, or `None` until it is complete.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut len = 0usize;
    let mut header = 1usize;
    loop {
        let Some(&b) = buf.get(header) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7F) << (7 * (header - 1));
        header += 1;
        if b & 0x80 == 0 {
            break;
        }
        if header > 4 {
            return Err(CodecError::BadLength);
        }
    }
    if len > MAX_PACKET {
        return Err(CodecError::TooLarge(len));
    }
    if buf.len() < header + len {
        return Ok(None);
    }
    let first = buf[0];
    buf.advance(header);
    let mut body = buf.split_to(len).freeze();
    let kind = first >> 4;
    Ok(Some(match kind {
        2 => {
            if body.len() < 2 {
                return Err(CodecError::Truncated("CONNACK"));
            }
            Incoming::ConnAck(body[1])
        }
        3 => {
            let qos = (first >> 1) & 3;
            if body.len() < 2 {
                return Err(CodecError::Truncated("PUBLISH"));
            }
            let tlen = usize::from(body.get_u16());
            let need = tlen + if qos > 0 { 2 } else { 0 };
            if body.len() < need {
                return Err(CodecError::Truncated("PUBLISH"));
            }
            let topic = body.split_to(tlen);
            let pid = if qos > 0 { body.get_u16() } else { 0 };
            Incoming::Publish(Publish {
                qos,
                pid,
                topic,
                payload: body,
            })
        }
        4 => {
            if body.len() < 2 {
                return Err(CodecError::Truncated("PUBACK"));
            }
            Incoming::PubAck(body.get_u16())
        }
        9 => {
            if body.len() < 2 {
                return Err(CodecError::Truncated("SUBACK"));
            }
            let pid = body.get_u16();
            Incoming::SubAck(pid, body.to_vec())
        }
        8 => {
            if body.len() < 2 {
                return Err(CodecError::Truncated("SUBSCRIBE"));
            }
            let pid = body.get_u16();
            let mut filters = 0;
            while body.len() >= 2 {
                let n = usize::from(body.get_u16());
                if body.len() < n + 1 {
                    return Err(CodecError::Truncated("SUBSCRIBE"));
                }
                body.advance(n + 1);
                filters += 1;
            }
            Incoming::Subscribe(pid, filters)
        }
        13 => Incoming::PingResp,
        k => Incoming::Other(k),
    }))
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// TCP or socket trouble.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server sent something unparsable.
    #[error("{0}")]
    Codec(#[from] CodecError),
    /// CONNACK refused the client.
    #[error("connection refused by the broker, CONNACK return code {0}")]
    Refused(u8),
    /// A filter was refused in SUBACK.
    #[error("subscription to `{0}` refused")]
    SubscribeRefused(String),
    /// The server did not answer in time or closed the connection.
    #[error("{0}")]
    Protocol(String),
}

/// An open connection: the socket, bytes read but not decoded, and messages that arrived
/// before the SUBACK (e.g. retained ones), oldest first.
pub struct Session {
    /// The socket.
    pub stream: TcpStream,
    /// Bytes read but not decoded yet.
    pub rbuf: BytesMut,
    /// Messages decoded while waiting for CONNACK/SUBACK.
    pub early: Vec<Publish>,
}

/// Connects, logs in and subscribes (QoS per filter).
pub async fn open(
    addr: &str,
    client_id: &str,
    user: Option<&str>,
    password: Option<&str>,
    filters: &[(&str, u8)],
    timeout: Duration,
) -> Result<Session, SessionError> {
    tokio::time::timeout(
        timeout,
        open_inner(addr, client_id, user, password, filters),
    )
    .await
    .map_err(|_| SessionError::Protocol(format!("{addr}: no CONNACK/SUBACK in {timeout:?}")))?
}

async fn open_inner(
    addr: &str,
    client_id: &str,
    user: Option<&str>,
    password: Option<&str>,
    filters: &[(&str, u8)],
) -> Result<Session, SessionError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut out = BytesMut::with_capacity(256);
    connect(&mut out, client_id, user, password, 60);
    if !filters.is_empty() {
        subscribe(&mut out, 1, filters);
    }
    stream.write_all(&out).await?;
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut connacked = false;
    let mut early = Vec::new();
    loop {
        while let Some(p) = decode(&mut rbuf)? {
            match p {
                Incoming::ConnAck(0) => {
                    connacked = true;
                    if filters.is_empty() {
                        return Ok(Session {
                            stream,
                            rbuf,
                            early,
                        });
                    }
                }
                Incoming::ConnAck(rc) => return Err(SessionError::Refused(rc)),
                Incoming::SubAck(_, codes) if connacked => {
                    if let Some(i) = codes.iter().position(|&c| c >= 0x80) {
                        let f = filters.get(i).map_or("?", |f| f.0);
                        return Err(SessionError::SubscribeRefused(f.to_string()));
                    }
                    return Ok(Session {
                        stream,
                        rbuf,
                        early,
                    });
                }
                Incoming::Publish(p) => early.push(p),
                _ => {}
            }
        }
        if stream.read_buf(&mut rbuf).await? == 0 {
            return Err(SessionError::Protocol(format!(
                "{addr}: connection closed during login"
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trip_and_split_input() {
        let mut out = BytesMut::new();
        publish(&mut out, "v1/agents/A/batch", 1, 7, &[1, 2, 3]);
        let payload = vec![9u8; 300];
        publish(&mut out, "t", 0, 0, &payload);
        puback(&mut out, 513);
        let all = out.clone();
        // Byte by byte: nothing decodes early.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in all.iter() {
            buf.put_u8(*b);
            while let Some(p) = decode(&mut buf).unwrap() {
                got.push(p);
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            Incoming::Publish(Publish {
                qos: 1,
                pid: 7,
                topic: Bytes::from_static(b"v1/agents/A/batch"),
                payload: Bytes::from_static(&[1, 2, 3]),
            })
        );
        match &got[1] {
            Incoming::Publish(p) => assert_eq!((p.qos, p.payload.len()), (0, 300)),
            other => panic!("{other:?}"),
        }
        assert_eq!(got[2], Incoming::PubAck(513));
    }

    #[test]
    fn connect_bytes() {
        let mut out = BytesMut::new();
        connect(&mut out, "c", Some("u"), Some("p"), 60);
        assert_eq!(
            &out[..],
            &[
                0x10, 19, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60, 0, 1, b'c', 0, 1, b'u', 0,
                1, b'p'
            ]
        );
    }

    #[test]
    fn bad_length_and_too_large() {
        let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..]);
        assert!(matches!(decode(&mut buf), Err(CodecError::BadLength)));
        let mut buf = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF, 0x7F][..]);
        assert!(matches!(decode(&mut buf), Err(CodecError::TooLarge(_))));
    }
}
