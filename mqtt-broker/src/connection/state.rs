//! A connection's protocol state, without I/O: what was agreed at CONNECT ([`Negotiated`]),
//! what the reader keeps between packets ([`InboundState`]: topic aliases, session expiry,
//! keep alive), how the connection ended ([`End`]), and the in-order acknowledgement of
//! inbound QoS 1/2 publishes ([`AckQueue`]).
//!
//! The reader and writer tasks feed these types events (a packet, a pipeline answer) and act
//! on what they return; the tests below drive them the same way without a socket.
//!
//! Acknowledgement invariants: PUBACK/PUBREC leave in the order the publishes arrived, each
//! only once the pipeline answered its `done` (or at once when the answer was known, e.g. a
//! refused publish); a publish the pipeline dropped unanswered is never acknowledged (the
//! client redelivers it). A QoS 1 publish holds a receive-maximum slot until its PUBACK, a
//! QoS 2 one until its PUBCOMP.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::BrokerConfig;
use crate::codec::{AckKind, ConnAckProps, Connect, Protocol, reason};
use crate::ingress::Disposition;
use crate::session::Qos2Inbound;

/// What CONNECT and the broker's configuration settled for this connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// The protocol version.
    pub protocol: Protocol,
    /// Keep alive in force, seconds (0: none).
    pub keep_alive: u16,
    /// The keep alive the broker imposed (MQTT 5 only), to tell the client in CONNACK.
    pub server_keep_alive: Option<u16>,
    /// Session expiry in force, seconds (0: the session ends with the connection).
    pub session_expiry: u32,
    /// The session expiry the client asked for (CONNACK says so when it differs).
    pub requested_expiry: u32,
    /// QoS 1/2 deliveries that may be in flight to the client at once.
    pub window: usize,
    /// Largest packet the client accepts.
    pub client_max: usize,
    /// Whether the client wants reason strings (MQTT 5 request problem information).
    pub problem_info: bool,
    /// Topic aliases the broker may use in its PUBLISH packets to this client (MQTT 5: the
    /// client's Topic Alias Maximum, at most the broker's own `topic_alias_max`).
    pub aliases_out: u16,
}

impl Negotiated {
    /// Settles the connection's parameters from its CONNECT and the broker's limits.
    pub fn new(config: &BrokerConfig, connect: &Connect) -> Negotiated {
        let protocol = if connect.v5 {
            Protocol::V5
        } else {
            Protocol::V4
        };
        let cap = config.max_session_expiry.as_secs().min(u64::from(u32::MAX)) as u32;
        // MQTT 3.1.1 has no expiry: a persistent session is kept as long as the broker allows.
        let session_expiry = match protocol {
            Protocol::V4 if connect.clean_start => 0,
            Protocol::V4 => cap,
            Protocol::V5 => connect.session_expiry.min(cap),
        };
        // MQTT 5 lets the broker impose its keep alive; 3.1.1 clients cannot be told.
        let (keep_alive, server_keep_alive) = match (protocol, config.max_keep_alive) {
            (Protocol::V5, Some(max)) if connect.keep_alive == 0 || connect.keep_alive > max => {
                (max, Some(max))
            }
            _ => (connect.keep_alive, None),
        };
        Negotiated {
            protocol,
            keep_alive,
            server_keep_alive,
            session_expiry,
            requested_expiry: connect.session_expiry,
            window: usize::from(config.max_inflight_out.min(connect.receive_maximum)).max(1),
            client_max: match connect.maximum_packet_size {
                0 => usize::MAX,
                n => n as usize,
            },
            problem_info: connect.request_problem_info,
            aliases_out: match protocol {
                Protocol::V5 => connect.topic_alias_maximum.min(config.topic_alias_max),
                Protocol::V4 => 0,
            },
        }
    }

    /// The properties of a successful CONNACK.
    pub fn connack<'a>(
        &self,
        config: &BrokerConfig,
        assigned_client_id: Option<&'a str>,
    ) -> ConnAckProps<'a> {
        ConnAckProps {
            server_keep_alive: self.server_keep_alive,
            receive_maximum: config.max_inflight_in,
            maximum_packet_size: config.max_packet_bytes.min(u32::MAX as usize) as u32,
            topic_alias_maximum: config.topic_alias_max,
            assigned_client_id,
            session_expiry: (self.protocol == Protocol::V5
                && self.session_expiry != self.requested_expiry)
                .then_some(self.session_expiry),
            reason_string: None,
        }
    }
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// DISCONNECT (no will).
    Graceful,
    /// MQTT 5 DISCONNECT 0x04: publish the will anyway.
    DisconnectWithWill,
    /// The socket closed or failed.
    Dropped,
    /// Keepalive expired.
    KeepAlive,
    /// Malformed or forbidden packet; MQTT 5 clients get DISCONNECT with the code.
    Protocol(u8, String),
    /// Asked to close (takeover, shutdown) with an MQTT 5 reason code.
    Kicked(u8),
    /// The writer stopped (socket error or stuck subscriber).
    WriterGone,
    /// The pipeline is gone: the hub is stopping.
    PipelineClosed,
    /// Over its publish rate for the whole grace period.
    Flood,
}

impl End {
    /// Whether the will is published: not after DISCONNECT, nor when the hub itself stops.
    pub fn publishes_will(&self) -> bool {
        match self {
            End::Graceful | End::PipelineClosed => false,
            End::Kicked(code) => *code != reason::SERVER_SHUTTING_DOWN,
            _ => true,
        }
    }

    /// The reason code of the DISCONNECT the broker sends an MQTT 5 client, if any.
    pub fn disconnect_code(&self) -> Option<u8> {
        match self {
            End::Protocol(code, _) | End::Kicked(code) => Some(*code),
            End::KeepAlive => Some(reason::KEEP_ALIVE_TIMEOUT),
            End::Flood => Some(reason::MESSAGE_RATE_TOO_HIGH),
            _ => None,
        }
    }
}

/// What the reader keeps between packets.
#[derive(Debug)]
pub(crate) struct InboundState {
    /// Topic aliases the client set (MQTT 5), alias -> topic.
    aliases: HashMap<u16, Arc<str>>,
    /// Highest alias the client may use.
    alias_max: u16,
    /// Session expiry in force, seconds; DISCONNECT may change it.
    session_expiry: u32,
    /// Highest session expiry, seconds.
    max_expiry: u64,
    /// Keep alive in force, seconds.
    keep_alive: u16,
}

impl InboundState {
    /// The state at the start of a connection.
    pub fn new(config: &BrokerConfig, n: &Negotiated) -> InboundState {
        InboundState {
            aliases: HashMap::new(),
            alias_max: config.topic_alias_max,
            session_expiry: n.session_expiry,
            max_expiry: config.max_session_expiry.as_secs(),
            keep_alive: n.keep_alive,
        }
    }

    /// Session expiry in force, seconds.
    pub fn session_expiry(&self) -> u32 {
        self.session_expiry
    }

    /// How long the reader waits for the next bytes before the keep alive expires (1.5 times
    /// the keep alive, MQTT 3.1.2.10); `None` when there is no keep alive.
    pub fn keep_alive_grace(&self) -> Option<Duration> {
        (self.keep_alive > 0).then(|| Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// The topic of a PUBLISH: its topic name, or the one its alias stands for. A topic name
    /// with an alias (re)defines the alias.
    pub fn resolve_topic(&mut self, alias: Option<u16>, topic: String) -> Result<Arc<str>, End> {
        match alias {
            None => Ok(topic.into()),
            Some(a) if a > self.alias_max => Err(End::Protocol(
                reason::TOPIC_ALIAS_INVALID,
                format!("topic alias {a} above the maximum"),
            )),
            Some(a) if topic.is_empty() => match self.aliases.get(&a) {
                Some(t) => Ok(t.clone()),
                None => Err(End::Protocol(
                    reason::PROTOCOL_ERROR,
                    format!("unknown topic alias {a}"),
                )),
            },
            Some(a) => {
                let t: Arc<str> = topic.into();
                self.aliases.insert(a, t.clone());
                Ok(t)
            }
        }
    }

    /// A DISCONNECT from the client: how the connection ends. An MQTT 5 DISCONNECT may change
    /// the session expiry, but not from 0 (MQTT 5 3.14.2.2.2).
    pub fn on_disconnect(&mut self, code: u8, session_expiry: Option<u32>) -> End {
        if let Some(e) = session_expiry {
            if self.session_expiry == 0 && e != 0 {
                return End::Protocol(
                    reason::PROTOCOL_ERROR,
                    "session expiry set on DISCONNECT after 0 at CONNECT".into(),
                );
            }
            self.session_expiry = u64::from(e).min(self.max_expiry) as u32;
        }
        if code == reason::DISCONNECT_WITH_WILL {
            End::DisconnectWithWill
        } else {
            End::Graceful
        }
    }
}

/// An acknowledgement of an inbound publish, queued in receipt order.
#[derive(Debug)]
pub(crate) struct PendingAck {
    /// PUBACK (QoS 1) or PUBREC (QoS 2).
    pub kind: AckKind,
    /// The publish's packet id.
    pub pid: u16,
    /// What it waits for.
    pub wait: AckWait,
}

/// What an acknowledgement waits for.
#[derive(Debug)]
pub(crate) enum AckWait {
    /// Known already (a refused publish, a duplicate QoS 2): the reason code.
    Ready(u8),
    /// Waiting for the pipeline.
    Pending {
        /// The pipeline's answer.
        done: oneshot::Receiver<Disposition>,
        /// One slot of the receive maximum, freed with the PUBACK (QoS 1) or PUBCOMP (QoS 2).
        slot: OwnedSemaphorePermit,
    },
}

/// The pipeline's answer to one publish; `Err` when it dropped the message unanswered.
pub(crate) type Answer = Result<Disposition, ()>;

/// An acknowledgement ready to be written.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AckOut {
    /// PUBACK or PUBREC.
    pub kind: AckKind,
    /// Packet id.
    pub pid: u16,
    /// Reason code (always success for MQTT 3.1.1, which has no failure acknowledgement).
    pub code: u8,
    /// Reason string, when the client asked for problem information.
    pub reason: Option<String>,
}

/// Acknowledgements of inbound QoS 1/2 publishes, released in receipt order as the pipeline
/// answers.
#[derive(Debug)]
pub(crate) struct AckQueue {
    protocol: Protocol,
    problem_info: bool,
    /// Oldest first; only the front may be written.
    queue: VecDeque<PendingAck>,
    /// Receive-maximum slots of QoS 2 messages between PUBREC and PUBCOMP.
    qos2_slots: HashMap<u16, OwnedSemaphorePermit>,
}

impl AckQueue {
    /// An empty queue for a connection.
    pub fn new(protocol: Protocol, problem_info: bool) -> AckQueue {
        AckQueue {
            protocol,
            problem_info,
            queue: VecDeque::new(),
            qos2_slots: HashMap::new(),
        }
    }

    /// Queues the acknowledgement of the latest publish.
    pub fn push(&mut self, a: PendingAck) {
        self.queue.push_back(a);
    }

    /// Acknowledgements not yet written.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// The answer for the oldest acknowledgement; never resolves when there is none. Cancel
    /// safe: nothing is taken unless it resolves, and then [`AckQueue::complete_front`] must
    /// follow.
    pub async fn front_answer(&mut self) -> Answer {
        match self.queue.front_mut() {
            Some(PendingAck {
                wait: AckWait::Pending { done, .. },
                ..
            }) => done.await.map_err(|_| ()),
            Some(PendingAck {
                wait: AckWait::Ready(_),
                ..
            }) => Ok(Disposition::Accepted),
            None => std::future::pending().await,
        }
    }

    /// Completes the oldest acknowledgement with its answer; `None` when nothing is to be
    /// written for it (the pipeline dropped it).
    pub fn complete_front(&mut self, answer: Answer, qos2: &Mutex<Qos2Inbound>) -> Option<AckOut> {
        let a = self.queue.pop_front()?;
        self.complete(a, answer, qos2)
    }

    /// The next acknowledgement whose answer is in, in order; `None` when the oldest still
    /// waits (or none is left).
    pub fn next_ready(&mut self, qos2: &Mutex<Qos2Inbound>) -> Option<AckOut> {
        loop {
            let front = self.queue.front_mut()?;
            let answer = match &mut front.wait {
                AckWait::Ready(_) => Ok(Disposition::Accepted),
                AckWait::Pending { done, .. } => match done.try_recv() {
                    Ok(d) => Ok(d),
                    Err(oneshot::error::TryRecvError::Empty) => return None,
                    Err(oneshot::error::TryRecvError::Closed) => Err(()),
                },
            };
            if let Some(out) = self.complete_front(answer, qos2) {
                return Some(out);
            }
        }
    }

    /// PUBCOMP for a released QoS 2 message: frees its receive-maximum slot.
    pub fn release(&mut self, pid: u16) {
        self.qos2_slots.remove(&pid);
    }

    fn complete(
        &mut self,
        a: PendingAck,
        answer: Answer,
        qos2: &Mutex<Qos2Inbound>,
    ) -> Option<AckOut> {
        let is_qos2 = a.kind == AckKind::PubRec;
        let (code, why) = match (&a.wait, answer) {
            (AckWait::Ready(code), _) => (*code, None),
            (_, Ok(Disposition::Accepted)) => (reason::SUCCESS, None),
            (_, Ok(Disposition::Rejected(why))) => (reason::IMPLEMENTATION_SPECIFIC, Some(why)),
            (_, Ok(Disposition::NoRoom(why))) if self.protocol == Protocol::V5 => {
                (reason::QUOTA_EXCEEDED, Some(why))
            }
            (_, Ok(Disposition::NoRoom(_)) | Err(())) => {
                tracing::debug!(
                    pid = a.pid,
                    "publish not answered by the pipeline: not acknowledged"
                );
                if is_qos2 {
                    qos2.lock().forget(a.pid);
                }
                return None;
            }
        };
        let code = match self.protocol {
            Protocol::V4 => reason::SUCCESS,
            Protocol::V5 => code,
        };
        if is_qos2 {
            qos2.lock().answered(a.pid, code);
            if code < 0x80
                && let AckWait::Pending { slot, .. } = a.wait
            {
                self.qos2_slots.insert(a.pid, slot);
            }
        }
        Some(AckOut {
            kind: a.kind,
            pid: a.pid,
            code,
            reason: why.filter(|_| self.problem_info),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::session::{Qos2Arrival, Qos2In};

    fn config() -> BrokerConfig {
        let mut c = BrokerConfig::new(vec![]);
        c.max_session_expiry = Duration::from_secs(3600);
        c.max_inflight_out = 8;
        c.topic_alias_max = 4;
        c
    }

    fn connect(v5: bool) -> Connect {
        Connect {
            v5,
            keep_alive: 30,
            receive_maximum: u16::MAX,
            request_problem_info: true,
            ..Connect::default()
        }
    }

    /// A pending acknowledgement and the pipeline's end of it.
    fn pending(
        kind: AckKind,
        pid: u16,
        slots: &Arc<Semaphore>,
    ) -> (PendingAck, oneshot::Sender<Disposition>) {
        let (tx, rx) = oneshot::channel();
        let slot = slots
            .clone()
            .try_acquire_owned()
            .expect("a free receive-maximum slot");
        let a = PendingAck {
            kind,
            pid,
            wait: AckWait::Pending { done: rx, slot },
        };
        (a, tx)
    }

    fn drain(q: &mut AckQueue, qos2: &Mutex<Qos2Inbound>) -> Vec<(u16, u8)> {
        std::iter::from_fn(|| q.next_ready(qos2))
            .map(|a| (a.pid, a.code))
            .collect()
    }

    #[test]
    fn session_expiry_by_protocol() {
        let mut c = connect(false);
        c.clean_start = true;
        assert_eq!(Negotiated::new(&config(), &c).session_expiry, 0);
        c.clean_start = false;
        assert_eq!(Negotiated::new(&config(), &c).session_expiry, 3600);
        let mut c = connect(true);
        c.session_expiry = 60;
        let n = Negotiated::new(&config(), &c);
        assert_eq!(n.session_expiry, 60);
        assert_eq!(n.connack(&config(), None).session_expiry, None);
        c.session_expiry = u32::MAX;
        let n = Negotiated::new(&config(), &c);
        assert_eq!(n.session_expiry, 3600, "capped");
        assert_eq!(
            n.connack(&config(), None).session_expiry,
            Some(3600),
            "an MQTT 5 client is told the expiry it got"
        );
    }

    #[test]
    fn server_keep_alive_only_for_mqtt5() {
        let mut cfg = config();
        cfg.max_keep_alive = Some(60);
        let mut c = connect(true);
        for (asked, got, told) in [(30, 30, None), (0, 60, Some(60)), (600, 60, Some(60))] {
            c.keep_alive = asked;
            let n = Negotiated::new(&cfg, &c);
            assert_eq!((n.keep_alive, n.server_keep_alive), (got, told), "{asked}");
        }
        let mut c = connect(false);
        c.keep_alive = 0;
        let n = Negotiated::new(&cfg, &c);
        assert_eq!((n.keep_alive, n.server_keep_alive), (0, None));
        let n = Negotiated::new(&config(), &connect(true));
        assert_eq!(n.connack(&config(), None).server_keep_alive, None);
    }

    #[test]
    fn window_and_packet_limit_follow_the_client() {
        let mut c = connect(true);
        let n = Negotiated::new(&config(), &c);
        assert_eq!((n.window, n.client_max), (8, usize::MAX));
        c.receive_maximum = 3;
        c.maximum_packet_size = 1024;
        let n = Negotiated::new(&config(), &c);
        assert_eq!((n.window, n.client_max), (3, 1024));
        let mut cfg = config();
        cfg.max_inflight_out = 0;
        assert_eq!(Negotiated::new(&cfg, &c).window, 1, "never zero");
    }

    #[test]
    fn keep_alive_grace_is_one_and_a_half_times() {
        let mut c = connect(false);
        let n = Negotiated::new(&config(), &c);
        let s = InboundState::new(&config(), &n);
        assert_eq!(s.keep_alive_grace(), Some(Duration::from_secs(45)));
        c.keep_alive = 0;
        let n = Negotiated::new(&config(), &c);
        assert_eq!(InboundState::new(&config(), &n).keep_alive_grace(), None);
    }

    #[test]
    fn topic_aliases() {
        let n = Negotiated::new(&config(), &connect(true));
        let mut s = InboundState::new(&config(), &n);
        assert_eq!(&*s.resolve_topic(None, "a/b".into()).unwrap(), "a/b");
        assert!(matches!(
            s.resolve_topic(Some(1), String::new()),
            Err(End::Protocol(reason::PROTOCOL_ERROR, _))
        ));
        assert_eq!(&*s.resolve_topic(Some(1), "a/b".into()).unwrap(), "a/b");
        assert_eq!(&*s.resolve_topic(Some(1), String::new()).unwrap(), "a/b");
        assert_eq!(&*s.resolve_topic(Some(1), "c".into()).unwrap(), "c");
        assert_eq!(&*s.resolve_topic(Some(1), String::new()).unwrap(), "c");
        assert!(matches!(
            s.resolve_topic(Some(5), "x".into()),
            Err(End::Protocol(reason::TOPIC_ALIAS_INVALID, _))
        ));
    }

    #[test]
    fn disconnect_and_session_expiry() {
        let mut c = connect(true);
        c.session_expiry = 10;
        let n = Negotiated::new(&config(), &c);
        let mut s = InboundState::new(&config(), &n);
        assert_eq!(s.on_disconnect(0, Some(u32::MAX)), End::Graceful);
        assert_eq!(s.session_expiry(), 3600, "capped");
        assert_eq!(
            s.on_disconnect(reason::DISCONNECT_WITH_WILL, None),
            End::DisconnectWithWill
        );
        let n = Negotiated::new(&config(), &connect(true));
        let mut s = InboundState::new(&config(), &n);
        assert!(matches!(
            s.on_disconnect(0, Some(5)),
            End::Protocol(reason::PROTOCOL_ERROR, _)
        ));
        assert_eq!(s.on_disconnect(0, Some(0)), End::Graceful);
    }

    #[test]
    fn will_and_disconnect_code_by_end() {
        assert!(!End::Graceful.publishes_will());
        assert!(!End::PipelineClosed.publishes_will());
        assert!(!End::Kicked(reason::SERVER_SHUTTING_DOWN).publishes_will());
        assert!(End::Kicked(reason::SESSION_TAKEN_OVER).publishes_will());
        assert!(End::Dropped.publishes_will());
        assert!(End::KeepAlive.publishes_will());
        assert!(End::DisconnectWithWill.publishes_will());
        assert_eq!(
            End::KeepAlive.disconnect_code(),
            Some(reason::KEEP_ALIVE_TIMEOUT)
        );
        assert_eq!(
            End::Protocol(0x95, "big".into()).disconnect_code(),
            Some(0x95)
        );
        assert_eq!(End::Dropped.disconnect_code(), None);
        assert_eq!(End::Graceful.disconnect_code(), None);
    }

    #[test]
    fn acks_leave_in_receipt_order() {
        let slots = Arc::new(Semaphore::new(4));
        let qos2 = Mutex::new(Qos2Inbound::default());
        let mut q = AckQueue::new(Protocol::V5, true);
        let (a1, t1) = pending(AckKind::PubAck, 1, &slots);
        let (a2, t2) = pending(AckKind::PubAck, 2, &slots);
        q.push(a1);
        q.push(a2);
        q.push(PendingAck {
            kind: AckKind::PubAck,
            pid: 3,
            wait: AckWait::Ready(reason::NOT_AUTHORIZED),
        });
        assert!(t2.send(Disposition::Accepted).is_ok());
        assert!(drain(&mut q, &qos2).is_empty(), "2 waits behind 1");
        assert!(t1.send(Disposition::Accepted).is_ok());
        assert_eq!(
            drain(&mut q, &qos2),
            vec![(1, 0), (2, 0), (3, reason::NOT_AUTHORIZED)]
        );
        assert_eq!(q.len(), 0);
        assert_eq!(slots.available_permits(), 4, "PUBACK frees the slots");
    }

    #[test]
    fn rejection_carries_a_reason_only_when_asked() {
        let slots = Arc::new(Semaphore::new(4));
        let qos2 = Mutex::new(Qos2Inbound::default());
        for (protocol, problem_info, code, why) in [
            (
                Protocol::V5,
                true,
                reason::IMPLEMENTATION_SPECIFIC,
                Some("bad"),
            ),
            (Protocol::V5, false, reason::IMPLEMENTATION_SPECIFIC, None),
            (Protocol::V4, true, reason::SUCCESS, Some("bad")),
        ] {
            let mut q = AckQueue::new(protocol, problem_info);
            let (a, t) = pending(AckKind::PubAck, 9, &slots);
            q.push(a);
            assert!(t.send(Disposition::Rejected("bad".into())).is_ok());
            let out = q.next_ready(&qos2).expect("answered");
            assert_eq!((out.code, out.reason.as_deref()), (code, why));
        }
    }

    #[test]
    fn unanswered_publish_is_not_acknowledged() {
        let slots = Arc::new(Semaphore::new(4));
        let qos2 = Mutex::new(Qos2Inbound::default());
        let mut q = AckQueue::new(Protocol::V5, true);
        let (a1, t1) = pending(AckKind::PubRec, 1, &slots);
        let (a2, t2) = pending(AckKind::PubAck, 2, &slots);
        qos2.lock().begin(1);
        q.push(a1);
        q.push(a2);
        drop(t1);
        assert!(t2.send(Disposition::Accepted).is_ok());
        assert_eq!(drain(&mut q, &qos2), vec![(2, 0)], "1 skipped, 2 goes");
        assert_eq!(
            qos2.lock().arrival(1),
            Qos2Arrival::New,
            "redelivery is new"
        );
        assert_eq!(slots.available_permits(), 4);
    }

    #[test]
    fn qos2_slot_is_held_until_pubcomp() {
        let slots = Arc::new(Semaphore::new(2));
        let qos2 = Mutex::new(Qos2Inbound::default());
        let mut q = AckQueue::new(Protocol::V5, true);
        let (a, t) = pending(AckKind::PubRec, 5, &slots);
        qos2.lock().begin(5);
        q.push(a);
        assert!(t.send(Disposition::Accepted).is_ok());
        let out = q.next_ready(&qos2).expect("answered");
        assert_eq!((out.kind, out.code), (AckKind::PubRec, reason::SUCCESS));
        assert_eq!(qos2.lock().get(5), Some(Qos2In::Received));
        assert_eq!(slots.available_permits(), 1, "held after PUBREC");
        assert!(qos2.lock().release(5));
        q.release(5);
        assert_eq!(slots.available_permits(), 2, "freed by PUBCOMP");
    }

    #[test]
    fn rejected_qos2_ends_the_flow_in_mqtt5_only() {
        let slots = Arc::new(Semaphore::new(2));
        for (protocol, state) in [(Protocol::V5, None), (Protocol::V4, Some(Qos2In::Received))] {
            let qos2 = Mutex::new(Qos2Inbound::default());
            let mut q = AckQueue::new(protocol, true);
            let (a, t) = pending(AckKind::PubRec, 5, &slots);
            qos2.lock().begin(5);
            q.push(a);
            assert!(t.send(Disposition::Rejected("no".into())).is_ok());
            assert!(q.next_ready(&qos2).is_some());
            // 3.1.1 has no failure PUBREC: the flow goes on to PUBREL/PUBCOMP.
            assert_eq!(qos2.lock().get(5), state, "{protocol:?}");
            q.release(5);
            assert_eq!(slots.available_permits(), 2);
        }
    }

    #[test]
    fn front_answer_then_complete_front() {
        let slots = Arc::new(Semaphore::new(2));
        let qos2 = Mutex::new(Qos2Inbound::default());
        let mut q = AckQueue::new(Protocol::V5, true);
        let (a, t) = pending(AckKind::PubAck, 4, &slots);
        q.push(a);
        assert!(t.send(Disposition::Accepted).is_ok());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let answer = rt.block_on(q.front_answer());
        assert_eq!(answer, Ok(Disposition::Accepted));
        let out = q.complete_front(answer, &qos2).expect("written");
        assert_eq!((out.pid, out.code), (4, reason::SUCCESS));
        assert!(q.complete_front(Ok(Disposition::Accepted), &qos2).is_none());
    }
}
