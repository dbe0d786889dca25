//! The writing side of a connection: one task owns the socket's write half and gathers
//! control packets, acknowledgements (in receipt order, as the pipeline answers) and
//! deliveries from the session's outbox into few writes.
//!
//! A subscriber whose oldest unacknowledged delivery is older than `stuck_timeout`, or whose
//! socket accepts nothing for that long, is disconnected: a slow client never slows others.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use super::aliases::{OutAliases, Plan};
use super::kicked;
use super::state::{AckOut, AckQueue, PendingAck};
use crate::Core;
use crate::codec::{self, AckKind, OutPublish, Protocol, reason};
use crate::session::Session;

/// Most deliveries encoded into one write, so acknowledgements interleave with big backlogs.
const MAX_BATCH: usize = 512;

/// What the reader asks the writer to send.
#[derive(Debug)]
pub(super) enum Control {
    /// A ready-made packet.
    Raw(Bytes),
    /// A PUBACK/PUBREC, sent in order once its disposition is known.
    Ack(PendingAck),
    /// PUBCOMP for a released QoS 2 message, which frees its receive-maximum slot.
    PubComp(u16, u8),
    /// MQTT 5 DISCONNECT with a reason code (nothing for 3.1.1), then close.
    Disconnect(u8),
}

/// The writing side of a connection.
pub(super) struct Writer {
    /// The broker's shared state (config, metrics).
    pub core: Arc<Core>,
    /// The session whose outbox this connection drains.
    pub session: Arc<Session>,
    /// How packets are encoded.
    pub protocol: Protocol,
    /// This connection's generation; the outbox is drained only while it owns it.
    pub generation: u64,
    /// The socket's write half, owned here alone.
    pub wr: super::WriteHalf,
    /// What is gathered for the next write (starts with the CONNACK).
    pub buf: BytesMut,
    /// From the reader.
    pub control: mpsc::Receiver<Control>,
    /// Acknowledgements of inbound publishes, in receipt order.
    pub acks: AckQueue,
    /// QoS 1/2 deliveries that may be in flight.
    pub window: usize,
    /// Largest packet the client accepts; larger deliveries are dropped (counted).
    pub client_max: usize,
    /// Set when the connection must close (takeover, shutdown).
    pub kick: watch::Receiver<Option<u8>>,
    /// MQTT 5 topic aliases of this connection's deliveries.
    pub aliases: OutAliases,
    /// Finish writing what is gathered, then close.
    pub closing: bool,
}

impl Writer {
    /// Writes until the reader goes away, the connection is taken over or the socket fails.
    pub async fn run(mut self) {
        self.resend_inflight();
        loop {
            self.fill();
            if !self.buf.is_empty() {
                if !self.flush().await {
                    return;
                }
                continue;
            }
            if self.closing {
                let _ = self.wr.shutdown().await;
                return;
            }
            let stuck_in = self.stuck_in();
            tokio::select! {
                biased;
                c = self.control.recv() => match c {
                    Some(c) => self.on_control(c),
                    None => self.closing = true,
                },
                r = self.acks.front_answer() => {
                    if let Some(out) = self.acks.complete_front(r, &self.session.qos2_in) {
                        self.encode_ack(out);
                    }
                }
                _ = self.session.wake.notified() => {}
                _ = tokio::time::sleep(stuck_in.unwrap_or_default()), if stuck_in.is_some() => {
                    if self.stuck_in() == Some(Duration::ZERO) {
                        self.core.metrics.slow_disconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(client = %self.session.client_id, "disconnecting a subscriber that acknowledges nothing");
                        if self.protocol == Protocol::V5 {
                            codec::encode_disconnect(&mut self.buf, reason::QUOTA_EXCEEDED);
                        }
                        self.closing = true;
                    }
                }
            }
        }
    }

    /// Time left before the oldest unacknowledged delivery makes this subscriber stuck.
    fn stuck_in(&self) -> Option<Duration> {
        let oldest = self.session.outbox.lock().oldest_sent_at()?;
        Some(
            self.core
                .config
                .stuck_timeout
                .saturating_sub(oldest.elapsed()),
        )
    }

    /// Writes the buffer; false when the connection is finished.
    async fn flush(&mut self) -> bool {
        let n = self.buf.len();
        let stuck = self.core.config.stuck_timeout;
        let already_kicked = self.kick.borrow().is_some();
        let limit = if already_kicked {
            Duration::from_secs(1)
        } else {
            stuck
        };
        // TLS keeps records it could not send yet inside the stream: flush hands them on.
        let (wr, buf) = (&mut self.wr, &self.buf);
        let write = tokio::time::timeout(limit, async move {
            wr.write_all(buf).await?;
            wr.flush().await
        });
        tokio::pin!(write);
        let result = tokio::select! {
            r = &mut write => r,
            _ = kicked(&mut self.kick), if !already_kicked => {
                // Closing anyway: give the write a moment, then give up on it.
                tokio::time::timeout(Duration::from_secs(1), &mut write)
                    .await
                    .unwrap_or_else(|_| Ok(Err(std::io::ErrorKind::TimedOut.into())))
            }
        };
        match result {
            Ok(Ok(())) => {
                self.core
                    .metrics
                    .bytes_out
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.buf.clear();
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(client = %self.session.client_id, error = %e, "MQTT write failed");
                false
            }
            Err(_) => {
                self.core
                    .metrics
                    .slow_disconnects
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(client = %self.session.client_id, "disconnecting a client that reads nothing");
                false
            }
        }
    }

    fn on_control(&mut self, c: Control) {
        match c {
            Control::Raw(b) => self.buf.extend_from_slice(&b),
            Control::Ack(a) => self.acks.push(a),
            Control::PubComp(pid, code) => {
                self.acks.release(pid);
                codec::encode_ack(
                    &mut self.buf,
                    self.protocol,
                    AckKind::PubComp,
                    pid,
                    code,
                    None,
                );
            }
            Control::Disconnect(code) => {
                if self.protocol == Protocol::V5 {
                    codec::encode_disconnect(&mut self.buf, code);
                }
                self.closing = true;
            }
        }
    }

    /// Gathers everything ready to send: control packets first (a SUBACK precedes the retained
    /// messages it triggers), then acknowledgements in order, then deliveries.
    fn fill(&mut self) {
        while !self.closing {
            match self.control.try_recv() {
                Ok(c) => self.on_control(c),
                Err(_) => break,
            }
        }
        while let Some(out) = self.acks.next_ready(&self.session.qos2_in) {
            self.encode_ack(out);
        }
        if !self.closing {
            self.drain_outbox();
        }
    }

    fn encode_ack(&mut self, a: AckOut) {
        codec::encode_ack(
            &mut self.buf,
            self.protocol,
            a.kind,
            a.pid,
            a.code,
            a.reason.as_deref(),
        );
    }

    /// A resumed session first repeats what the client never acknowledged.
    fn resend_inflight(&mut self) {
        let mut o = self.session.outbox.lock();
        if o.owner != self.generation {
            return;
        }
        let now = Instant::now();
        for m in o.inflight.iter_mut() {
            m.sent_at = now;
            if m.released {
                codec::encode_ack(
                    &mut self.buf,
                    self.protocol,
                    AckKind::PubRel,
                    m.pid,
                    0,
                    None,
                );
            } else {
                let d = &m.delivery;
                // At the start of a connection no alias is known yet: full topics.
                OutPublish {
                    topic: &d.msg.topic,
                    alias: None,
                    payload: &d.msg.payload,
                    properties: &d.msg.properties,
                    qos: d.qos,
                    retain: d.retain,
                    dup: true,
                    pid: m.pid,
                    subscription_ids: &d.subscription_ids,
                    message_expiry: d.msg.expiry_left().ok().flatten(),
                }
                .encode(self.protocol, &mut self.buf);
            }
        }
    }

    /// Encodes up to [`MAX_BATCH`] deliveries the window allows.
    fn drain_outbox(&mut self) {
        let mut o = self.session.outbox.lock();
        if o.owner != self.generation {
            // Another connection took the session over.
            self.closing = true;
            return;
        }
        let mut sent = 0u64;
        let mut dropped = 0u64;
        while sent < MAX_BATCH as u64 {
            let Some(d) = o.next_sendable(self.window) else {
                break;
            };
            let Ok(message_expiry) = d.msg.expiry_left() else {
                // Expired while queued: never delivered (MQTT 5 message expiry).
                dropped += 1;
                continue;
            };
            let pid = if d.qos > 0 { o.next_pid() } else { 0 };
            let plan = self.aliases.plan(&d.msg.topic);
            let (topic, alias) = match plan {
                Plan::Topic => (&*d.msg.topic, None),
                Plan::New(a) => (&*d.msg.topic, Some(a)),
                Plan::Known(a) => ("", Some(a)),
            };
            let out = OutPublish {
                topic,
                alias,
                payload: &d.msg.payload,
                properties: &d.msg.properties,
                qos: d.qos,
                retain: d.retain,
                dup: false,
                pid,
                subscription_ids: &d.subscription_ids,
                message_expiry,
            };
            if out.size(self.protocol) > self.client_max {
                dropped += 1;
                continue;
            }
            out.encode(self.protocol, &mut self.buf);
            if let Plan::New(a) = plan {
                self.aliases.commit(&d.msg.topic, a);
            }
            sent += 1;
            if d.qos > 0 {
                o.sent(pid, d, Instant::now());
            }
        }
        drop(o);
        let m = &self.core.metrics;
        m.messages_out.fetch_add(sent, Ordering::Relaxed);
        if dropped > 0 {
            m.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }
}
