//! The reading side of a connection: decodes packets from the socket and dispatches them.
//! A PUBLISH is authorized, routed and handed to the pipeline (waiting while the pipeline's
//! channel is full: backpressure); its acknowledgement is queued to the writer at once, to be
//! sent when the pipeline answers, so reading goes on with many publishes in flight.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocols::access::Principal;
use protocols::time::now_ms;
use protocols::topic::{validate_filter, validate_topic_name};
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::kicked;
use super::quota::{Quota, Verdict};
use super::state::{AckWait, End, InboundState, PendingAck};
use super::writer::Control;
use crate::Core;
use crate::codec::{self, AckKind, Packet, Protocol, Publish, Subscribe, reason};
use crate::ingress::{Inbound, IngressEvent};
use crate::message::{Delivery, Message};
use crate::router::split_shared;
use crate::session::{Qos2Arrival, Session};

/// The reading side of a connection.
pub(super) struct Reader {
    /// The broker's shared state (config, access policy, router, pipeline channel).
    pub core: Arc<Core>,
    /// How packets are decoded and answered.
    pub protocol: Protocol,
    /// The session subscriptions and acknowledgements apply to.
    pub session: Arc<Session>,
    /// Who the client authenticated as; every publish and subscribe is checked for it.
    pub principal: Arc<Principal>,
    /// The connection's client id.
    pub client_id: Arc<str>,
    /// To the writer.
    pub control: mpsc::Sender<Control>,
    /// The receive maximum: one permit per QoS 1/2 publish not yet acknowledged.
    pub permits: Arc<Semaphore>,
    /// Topic aliases, session expiry, keep alive.
    pub state: InboundState,
    /// Set when the connection must close (takeover, shutdown).
    pub kick: watch::Receiver<Option<u8>>,
    /// The client's publish rate limits, if the broker sets any.
    pub quota: Option<Quota>,
}

/// Free space below which the read buffer grows before the next read.
const READ_MIN_FREE: usize = 512;
/// What the read buffer starts with and grows by at least; an idle device's connection keeps
/// no more (tens of thousands of them: `docs/PERFORMANCE.md`).
pub(super) const READ_CHUNK: usize = 2048;
/// An empty read buffer larger than this (after a big packet) is given back.
const READ_KEEP: usize = 64 * 1024;

/// Room for the next read: small for small packets, doubling while a big one arrives, and a
/// buffer a big packet left behind is freed once it is empty.
pub(super) fn make_room(buf: &mut BytesMut) {
    if buf.is_empty() && buf.capacity() > READ_KEEP {
        *buf = BytesMut::with_capacity(READ_CHUNK);
    } else if buf.capacity() - buf.len() < READ_MIN_FREE {
        buf.reserve(buf.len().max(READ_CHUNK));
    }
}

impl Reader {
    /// Reads and dispatches packets until the connection ends; `buf` holds what was read
    /// after the CONNECT.
    pub async fn run(&mut self, rd: &mut super::ReadHalf, mut buf: BytesMut) -> End {
        let max = self.core.config.max_packet_bytes;
        let grace = self.state.keep_alive_grace();
        let mut deadline = tokio::time::Instant::now() + grace.unwrap_or_default();
        loop {
            loop {
                match codec::decode(&mut buf, Some(self.protocol), max) {
                    Ok(Some(p)) => {
                        // Boxed: handling a packet takes kilobytes of future state, which an
                        // idle connection (most of them) should not hold between packets.
                        if let Err(end) = Box::pin(self.on_packet(p)).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return End::Protocol(e.reason_code(), e.to_string()),
                }
            }
            make_room(&mut buf);
            let read = tokio::select! {
                biased;
                code = kicked(&mut self.kick) => return End::Kicked(code),
                _ = self.control.closed() => return End::WriterGone,
                _ = tokio::time::sleep_until(deadline), if grace.is_some() => {
                    return End::KeepAlive;
                }
                r = rd.read_buf(&mut buf) => r,
            };
            match read {
                Ok(0) | Err(_) => return End::Dropped,
                Ok(n) => {
                    self.core
                        .metrics
                        .bytes_in
                        .fetch_add(n as u64, Ordering::Relaxed);
                    deadline = tokio::time::Instant::now() + grace.unwrap_or_default();
                }
            }
        }
    }

    /// Sends to the pipeline, waiting while it is full (backpressure), but not past a kick.
    pub async fn send_event(&mut self, ev: IngressEvent) -> Result<(), End> {
        tokio::select! {
            r = self.core.events.send(ev) => r.map_err(|_| End::PipelineClosed),
            code = kicked(&mut self.kick) => Err(End::Kicked(code)),
        }
    }

    async fn send_control(&mut self, c: Control) -> Result<(), End> {
        self.control.send(c).await.map_err(|_| End::WriterGone)
    }

    async fn on_packet(&mut self, p: Packet) -> Result<(), End> {
        match p {
            Packet::Publish(p) => self.on_publish(p).await,
            Packet::PubAck(pid) | Packet::PubComp(pid) => {
                self.session.outbox.lock().take_inflight(pid);
                self.session.wake.notify_one();
                Ok(())
            }
            Packet::PubRec(pid, code) => {
                let pubrel = self
                    .session
                    .outbox
                    .lock()
                    .on_pubrec(pid, code, Instant::now());
                self.session.wake.notify_one();
                match pubrel {
                    None => Ok(()),
                    Some(code) => {
                        let mut b = BytesMut::with_capacity(8);
                        codec::encode_ack(&mut b, self.protocol, AckKind::PubRel, pid, code, None);
                        self.send_control(Control::Raw(b.freeze())).await
                    }
                }
            }
            Packet::PubRel(pid) => {
                let had = self.session.qos2_in.lock().release(pid);
                let code = if had || self.protocol == Protocol::V4 {
                    reason::SUCCESS
                } else {
                    reason::PACKET_ID_NOT_FOUND
                };
                self.send_control(Control::PubComp(pid, code)).await
            }
            Packet::Subscribe(s) => self.on_subscribe(s).await,
            Packet::Unsubscribe(u) => {
                let codes: Vec<u8> = u
                    .filters
                    .iter()
                    .map(|f| {
                        if self.core.router.unsubscribe(&self.session, f) {
                            reason::SUCCESS
                        } else {
                            reason::NO_SUBSCRIPTION_EXISTED
                        }
                    })
                    .collect();
                let mut b = BytesMut::with_capacity(8 + codes.len());
                codec::encode_unsuback(&mut b, self.protocol, u.pid, &codes);
                self.send_control(Control::Raw(b.freeze())).await
            }
            Packet::PingReq => {
                let mut b = BytesMut::with_capacity(2);
                codec::encode_pingresp(&mut b);
                self.send_control(Control::Raw(b.freeze())).await
            }
            Packet::Disconnect {
                reason: code,
                session_expiry,
            } => Err(self.state.on_disconnect(code, session_expiry)),
            Packet::Connect(_) => Err(End::Protocol(
                reason::PROTOCOL_ERROR,
                "second CONNECT".into(),
            )),
            Packet::Auth => Err(End::Protocol(
                reason::PROTOCOL_ERROR,
                "AUTH without enhanced authentication".into(),
            )),
        }
    }

    async fn on_publish(&mut self, p: Publish) -> Result<(), End> {
        self.core
            .metrics
            .messages_in
            .fetch_add(1, Ordering::Relaxed);
        if let Some(q) = &mut self.quota {
            match q.charge(p.topic.len() + p.payload.len(), Instant::now()) {
                Verdict::Pass => {}
                Verdict::Wait(d) => {
                    self.core.metrics.throttled.fetch_add(1, Ordering::Relaxed);
                    // Not reading meanwhile: TCP slows the client down.
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        code = kicked(&mut self.kick) => return Err(End::Kicked(code)),
                    }
                }
                Verdict::Flood => return Err(End::Flood),
            }
        }
        let Publish {
            qos,
            retain,
            topic,
            pid,
            topic_alias,
            message_expiry,
            properties,
            payload,
            ..
        } = p;
        let topic = self.state.resolve_topic(topic_alias, topic)?;
        if !validate_topic_name(&topic) {
            return Err(End::Protocol(
                reason::TOPIC_NAME_INVALID,
                format!("invalid topic name {topic:?}"),
            ));
        }
        if qos == 2 {
            let arrival = self.session.qos2_in.lock().arrival(pid);
            match arrival {
                Qos2Arrival::InProgress => return Ok(()),
                Qos2Arrival::Received => {
                    return self
                        .send_control(Control::Ack(PendingAck {
                            kind: AckKind::PubRec,
                            pid,
                            wait: AckWait::Ready(reason::SUCCESS),
                        }))
                        .await;
                }
                Qos2Arrival::New => {}
            }
        }
        let kind = if qos == 2 {
            AckKind::PubRec
        } else {
            AckKind::PubAck
        };
        if let Err(denied) = self.core.access.may_publish(&self.principal, &topic) {
            self.core
                .metrics
                .publishes_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(client = %self.client_id, %topic, %denied, "publish refused");
            self.send_event(IngressEvent::Refused {
                principal: self.principal.clone(),
                topic: topic.to_string(),
                reason: denied,
                payload,
            })
            .await?;
            if qos > 0 {
                if qos == 2 && self.protocol == Protocol::V4 {
                    // 3.1.1 has no failure PUBREC: finish the flow normally.
                    self.session.qos2_in.lock().begin(pid);
                }
                let code = match self.protocol {
                    Protocol::V4 => reason::SUCCESS,
                    Protocol::V5 => reason::NOT_AUTHORIZED,
                };
                self.send_control(Control::Ack(PendingAck {
                    kind,
                    pid,
                    wait: AckWait::Ready(code),
                }))
                .await?;
            }
            return Ok(());
        }
        let msg = Arc::new(Message {
            topic: topic.clone(),
            payload: payload.clone(),
            properties,
            qos,
            retain,
            origin: Some(self.client_id.clone()),
            expires_at: message_expiry.map(|s| Instant::now() + Duration::from_secs(u64::from(s))),
        });
        self.core.publish(&msg);
        let mut inbound = Inbound {
            principal: self.principal.clone(),
            client_id: self.client_id.clone(),
            topic: topic.to_string(),
            payload,
            received_ms: now_ms(),
            arrived: Instant::now(),
            done: None,
        };
        if qos == 0 {
            return self.send_event(IngressEvent::Message(inbound)).await;
        }
        let permit = match self.protocol {
            Protocol::V5 => match self.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    return Err(End::Protocol(
                        reason::RECEIVE_MAXIMUM_EXCEEDED,
                        "receive maximum exceeded".into(),
                    ));
                }
            },
            // 3.1.1 has no receive maximum: stop reading until acknowledgements drain.
            Protocol::V4 => {
                let permits = self.permits.clone();
                tokio::select! {
                    p = permits.acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return Err(End::WriterGone),
                    },
                    code = kicked(&mut self.kick) => return Err(End::Kicked(code)),
                }
            }
        };
        let (tx, rx) = oneshot::channel();
        inbound.done = Some(tx);
        if qos == 2 {
            self.session.qos2_in.lock().begin(pid);
        }
        self.send_control(Control::Ack(PendingAck {
            kind,
            pid,
            wait: AckWait::Pending {
                done: rx,
                slot: permit,
            },
        }))
        .await?;
        self.send_event(IngressEvent::Message(inbound)).await
    }

    async fn on_subscribe(&mut self, s: Subscribe) -> Result<(), End> {
        let v5 = self.protocol == Protocol::V5;
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let mut refused = Vec::new();
        for (filter, opts) in &s.filters {
            let Ok((group, inner)) = split_shared(filter) else {
                codes.push(if v5 {
                    reason::TOPIC_FILTER_INVALID
                } else {
                    reason::UNSPECIFIED
                });
                continue;
            };
            if validate_filter(inner).is_err() {
                codes.push(if v5 {
                    reason::TOPIC_FILTER_INVALID
                } else {
                    reason::UNSPECIFIED
                });
                continue;
            }
            if let Err(denied) = self.core.access.may_subscribe(&self.principal, inner) {
                self.core
                    .metrics
                    .subscribes_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(client = %self.client_id, %filter, %denied, "subscribe refused");
                refused.push((filter.clone(), denied));
                codes.push(if v5 {
                    reason::NOT_AUTHORIZED
                } else {
                    reason::UNSPECIFIED
                });
                continue;
            }
            let max = self.core.config.max_subscriptions;
            if max > 0 {
                let filters = self.session.filters.lock();
                if filters.len() >= max && !filters.contains_key(filter.as_str()) {
                    drop(filters);
                    self.core
                        .metrics
                        .subscriptions_over_quota
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(client = %self.client_id, %filter, max, "subscription refused: too many");
                    codes.push(if v5 {
                        reason::QUOTA_EXCEEDED
                    } else {
                        reason::UNSPECIFIED
                    });
                    continue;
                }
            }
            let new = self
                .core
                .router
                .subscribe(&self.session, filter, *opts, s.subscription_id);
            codes.push(opts.qos);
            let send_retained = group.is_none()
                && match opts.retain_handling {
                    0 => true,
                    1 => new,
                    _ => false,
                };
            if send_retained {
                for m in self.core.router.retained_for(inner) {
                    retained.push(Delivery {
                        qos: m.qos.min(opts.qos),
                        msg: m,
                        retain: true,
                        subscription_ids: s.subscription_id.into_iter().collect(),
                    });
                }
            }
        }
        let mut b = BytesMut::with_capacity(8 + codes.len());
        codec::encode_suback(&mut b, self.protocol, s.pid, &codes);
        // The SUBACK is queued before the retained messages: the writer drains control first.
        self.send_control(Control::Raw(b.freeze())).await?;
        let cap = self.core.router.queue_cap();
        for d in retained {
            let _ = self.session.offer(d, cap, &self.core.metrics);
        }
        for (filter, why) in refused {
            self.send_event(IngressEvent::Refused {
                principal: self.principal.clone(),
                topic: filter,
                reason: why,
                payload: Bytes::new(),
            })
            .await?;
        }
        Ok(())
    }
}
