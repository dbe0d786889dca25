//! A null sink: the least an MQTT server can do to satisfy the load's agents.
//!
//! It answers CONNECT, SUBSCRIBE and PINGREQ, and for every batch a PUBACK plus the hub's ack
//! (`{"stream":S,"seqs":[[n,n]]}` on `v1/agents/{id}/ack`), reading only the batch's header.
//! Nothing is stored or relayed. Measuring the load against it shows what the generator itself
//! can produce on this machine, so a hub figure is known not to be the generator's ceiling.

use std::net::SocketAddr;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::mqtt::{self, Incoming};

/// A running null sink.
pub struct NullSink {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl NullSink {
    /// Listens on `addr` (port 0 picks a free one).
    pub async fn start(addr: &str) -> std::io::Result<NullSink> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = s.set_nodelay(true);
                    if let Err(e) = serve(s).await {
                        tracing::debug!("null sink connection: {e}");
                    }
                });
            }
        });
        Ok(NullSink { addr, task })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for NullSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let x = *b.get(*at)?;
        *at += 1;
        v |= u64::from(x & 0x7F) << shift;
        if x & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// (agent, stream, seq) from the front of an encoded batch (format version 1).
fn batch_header(payload: &[u8]) -> Option<(&str, u64, u64)> {
    if payload.first() != Some(&1) {
        return None;
    }
    let mut at = 1;
    let len = usize::try_from(varint(payload, &mut at)?).ok()?;
    let agent = std::str::from_utf8(payload.get(at..at + len)?).ok()?;
    at += len;
    let stream = varint(payload, &mut at)?;
    let seq = varint(payload, &mut at)?;
    Some((agent, stream, seq))
}

async fn serve(mut s: TcpStream) -> Result<(), String> {
    let mut rbuf = BytesMut::with_capacity(256 * 1024);
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    loop {
        let n = s.read_buf(&mut rbuf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        while let Some(p) = mqtt::decode(&mut rbuf).map_err(|e| e.to_string())? {
            match p {
                Incoming::Other(1) => wbuf.extend_from_slice(&[0x20, 0x02, 0x00, 0x00]),
                Incoming::Subscribe(pid, n) => {
                    wbuf.extend_from_slice(&[0x90, 2 + n as u8]);
                    wbuf.extend_from_slice(&pid.to_be_bytes());
                    wbuf.extend(std::iter::repeat_n(1u8, n));
                }
                Incoming::Other(12) => wbuf.extend_from_slice(&[0xD0, 0x00]),
                Incoming::Other(14) => return Ok(()),
                Incoming::Publish(p) => {
                    if p.qos > 0 {
                        mqtt::puback(&mut wbuf, p.pid);
                    }
                    if let Some((agent, stream, seq)) = batch_header(&p.payload) {
                        let topic = format!("v1/agents/{agent}/ack");
                        let body = format!("{{\"stream\":{stream},\"seqs\":[[{seq},{seq}]]}}");
                        mqtt::publish(&mut wbuf, &topic, 0, 0, body.as_bytes());
                    }
                }
                _ => {}
            }
        }
        if !wbuf.is_empty() {
            s.write_all(&wbuf).await.map_err(|e| e.to_string())?;
            wbuf.clear();
        }
        if rbuf.capacity() - rbuf.len() < 16 * 1024 {
            rbuf.reserve(256 * 1024);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::batch::{AgentBatch, encode};

    #[test]
    fn header_of_an_encoded_batch() {
        let b = AgentBatch {
            agent: "LOAD-0001".into(),
            stream: 1 << 40,
            seq: 300,
            devices: vec![],
        };
        assert_eq!(batch_header(&encode(&b)), Some(("LOAD-0001", 1 << 40, 300)));
        assert_eq!(batch_header(&[2, 0]), None);
        assert_eq!(batch_header(&[1, 5, b'a']), None);
    }
}
