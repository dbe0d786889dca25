//! A client's session: what outlives one connection when the client asks for a persistent
//! session (MQTT 3.1.1 clean session 0, MQTT 5 session expiry > 0).
//!
//! It holds the outbound queue and the QoS 1/2 messages sent but not yet acknowledged
//! ([`Outbox`]), and the QoS 2 packet ids received but not yet released ([`Qos2Inbound`]). The
//! router pushes into the outbox; the connection that owns the session drains it. Nothing here
//! does I/O: the connection's reader feeds it the client's acknowledgements and its writer
//! takes what may be sent, so the flows are unit-tested below without sockets.
//!
//! Invariants: a packet id is in flight at most once; a QoS 1/2 delivery leaves the queue only
//! while fewer than the client's window are in flight; an offline session queues only QoS 1/2.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use protocols::access::Principal;
use tokio::sync::Notify;

use crate::codec::{SubOptions, reason};
use crate::message::Delivery;
use crate::metrics::Metrics;

/// A QoS 1/2 message sent to a client and not yet acknowledged.
#[derive(Debug)]
pub(crate) struct Inflight {
    /// Packet identifier, unique among the session's messages in flight.
    pub pid: u16,
    /// What was sent.
    pub delivery: Delivery,
    /// PUBREC received: waiting for PUBCOMP after our PUBREL.
    pub released: bool,
    /// When it was (last) sent; the stuck-subscriber timeout runs from the oldest.
    pub sent_at: Instant,
}

/// What waits to be written to a session's client.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// Messages not yet sent, oldest first.
    pub queue: VecDeque<Delivery>,
    /// Sent QoS 1/2 messages not yet acknowledged, oldest first.
    pub inflight: VecDeque<Inflight>,
    /// Whether a connection serves the session (offline sessions queue only QoS > 0).
    pub online: bool,
    /// The connection generation allowed to drain the outbox; a writer whose generation is
    /// not this one has been taken over and stops.
    pub owner: u64,
    next_pid: u16,
}

/// What a session did with an offered delivery.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offered {
    /// Queued; `wake` when a connection should be told.
    Queued {
        /// Whether a connection serves the session.
        wake: bool,
    },
    /// The queue is full: dropped (the caller counts it).
    Full,
    /// QoS 0 for an offline session: not kept, by the protocol's rules.
    Skipped,
}

impl Outbox {
    /// Queues a delivery unless the queue holds `cap` already.
    pub fn push(&mut self, d: Delivery, cap: usize) -> Offered {
        if !self.online && d.qos == 0 {
            return Offered::Skipped;
        }
        if self.queue.len() >= cap {
            return Offered::Full;
        }
        self.queue.push_back(d);
        Offered::Queued { wake: self.online }
    }

    /// A packet identifier not in flight (never 0).
    pub fn next_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1);
            if self.next_pid == 0 {
                continue;
            }
            let pid = self.next_pid;
            if !self.inflight.iter().any(|i| i.pid == pid) {
                return pid;
            }
        }
    }

    /// The next queued delivery that may be sent now: QoS 0 always, QoS 1/2 only while fewer
    /// than `window` are in flight. Order is kept: a QoS 1/2 at the front holds back the rest.
    pub fn next_sendable(&mut self, window: usize) -> Option<Delivery> {
        let front = self.queue.front()?;
        if front.qos > 0 && self.inflight.len() >= window {
            return None;
        }
        self.queue.pop_front()
    }

    /// Records a QoS 1/2 delivery just written with `pid`.
    pub fn sent(&mut self, pid: u16, delivery: Delivery, now: Instant) {
        self.inflight.push_back(Inflight {
            pid,
            delivery,
            released: false,
            sent_at: now,
        });
    }

    /// Removes and returns the in-flight message with this packet id (PUBACK, PUBCOMP, or a
    /// failed PUBREC).
    pub fn take_inflight(&mut self, pid: u16) -> Option<Inflight> {
        let i = self.inflight.iter().position(|m| m.pid == pid)?;
        self.inflight.remove(i)
    }

    /// A PUBREC from the client. Returns the reason code of the PUBREL to send, or `None` when
    /// the client refused the message (code >= 0x80: the flow ends there, MQTT 5 4.3.3).
    pub fn on_pubrec(&mut self, pid: u16, code: u8, now: Instant) -> Option<u8> {
        if code >= 0x80 {
            self.take_inflight(pid);
            return None;
        }
        match self.inflight.iter_mut().find(|m| m.pid == pid) {
            Some(m) => {
                m.released = true;
                m.sent_at = now;
                Some(reason::SUCCESS)
            }
            None => Some(reason::PACKET_ID_NOT_FOUND),
        }
    }

    /// When the oldest unacknowledged delivery was sent.
    pub fn oldest_sent_at(&self) -> Option<Instant> {
        self.inflight.front().map(|m| m.sent_at)
    }

    /// Hands the outbox to connection `generation`.
    pub fn attach(&mut self, generation: u64) {
        self.online = true;
        self.owner = generation;
    }

    /// The connection went away: keep only what a persistent session keeps (QoS 1/2).
    pub fn detach(&mut self) {
        self.online = false;
        self.queue.retain(|d| d.qos > 0);
    }
}

/// State of a QoS 2 message received from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Qos2In {
    /// Handed to the pipeline, PUBREC not yet sent.
    Pending,
    /// PUBREC sent, waiting for PUBREL.
    Received,
}

/// What to do with a QoS 2 PUBLISH, given the packet ids already seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Qos2Arrival {
    /// A new message: process it.
    New,
    /// Redelivered before we answered: the answer is on its way, ignore it.
    InProgress,
    /// Redelivered after our PUBREC: send PUBREC again, do not process it twice.
    Received,
}

/// QoS 2 packet ids received from the client and not yet released (exactly-once delivery).
#[derive(Debug, Default)]
pub(crate) struct Qos2Inbound {
    ids: HashMap<u16, Qos2In>,
}

impl Qos2Inbound {
    /// Classifies a QoS 2 PUBLISH with `pid`.
    pub fn arrival(&self, pid: u16) -> Qos2Arrival {
        match self.ids.get(&pid) {
            None => Qos2Arrival::New,
            Some(Qos2In::Pending) => Qos2Arrival::InProgress,
            Some(Qos2In::Received) => Qos2Arrival::Received,
        }
    }

    /// The message was handed on; its PUBREC is pending.
    pub fn begin(&mut self, pid: u16) {
        self.ids.insert(pid, Qos2In::Pending);
    }

    /// Its PUBREC went out with `code`: a success waits for PUBREL, a failure ends the flow.
    pub fn answered(&mut self, pid: u16, code: u8) {
        if code < 0x80 {
            self.ids.insert(pid, Qos2In::Received);
        } else {
            self.ids.remove(&pid);
        }
    }

    /// The pipeline dropped it unanswered: no PUBREC, the client will send it again.
    pub fn forget(&mut self, pid: u16) {
        self.ids.remove(&pid);
    }

    /// PUBREL: the flow is complete; whether `pid` was known.
    pub fn release(&mut self, pid: u16) -> bool {
        self.ids.remove(&pid).is_some()
    }

    /// The state of `pid`, if any.
    #[cfg(test)]
    pub fn get(&self, pid: u16) -> Option<Qos2In> {
        self.ids.get(&pid).copied()
    }
}

/// A client's session: its subscriptions, outbox and QoS 2 state. Outlives connections when
/// the client asked for a persistent session.
#[derive(Debug)]
pub(crate) struct Session {
    /// The client id the session belongs to (its key in the registry).
    pub client_id: Arc<str>,
    /// Who owns it; a new connection resumes it only as the same principal.
    pub principal: Arc<Principal>,
    /// Deliveries queued and in flight to the client.
    pub outbox: Mutex<Outbox>,
    /// Wakes the connection's writer when the outbox changes.
    pub wake: Notify,
    /// The session's subscription filters as the client wrote them (`$share/...` included),
    /// with their options and subscription identifier.
    pub filters: Mutex<HashMap<String, (SubOptions, Option<u32>)>>,
    /// Session expiry in force, seconds (0: the session ends with its connection).
    pub expiry: AtomicU32,
    /// When its client left (epoch ms; 0 while connected or never).
    pub offline_since_ms: AtomicI64,
    /// QoS 2 packet ids received from the client and not yet released.
    pub qos2_in: Mutex<Qos2Inbound>,
}

impl Session {
    /// A new, empty session.
    pub fn new(client_id: Arc<str>, principal: Arc<Principal>) -> Session {
        Session {
            client_id,
            principal,
            outbox: Mutex::new(Outbox::default()),
            wake: Notify::new(),
            filters: Mutex::new(HashMap::new()),
            expiry: AtomicU32::new(0),
            offline_since_ms: AtomicI64::new(0),
            qos2_in: Mutex::new(Qos2Inbound::default()),
        }
    }

    /// Queues a delivery unless the outbox is full (then it is dropped and counted). Offline
    /// sessions keep only QoS 1/2 messages. True when it was queued for an offline session.
    pub fn offer(&self, d: Delivery, cap: usize, metrics: &Metrics) -> bool {
        let offered = self.outbox.lock().push(d, cap);
        match offered {
            Offered::Queued { wake: true } => self.wake.notify_one(),
            Offered::Full => {
                metrics.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Offered::Queued { wake: false } => return true,
            Offered::Skipped => {}
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::message::Message;

    fn delivery(qos: u8) -> Delivery {
        Delivery {
            msg: Arc::new(Message {
                topic: "t".into(),
                payload: Bytes::from_static(b"x"),
                properties: Bytes::new(),
                qos,
                retain: false,
                origin: None,
                expires_at: None,
            }),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
        }
    }

    fn online() -> Outbox {
        let mut o = Outbox::default();
        o.attach(1);
        o
    }

    /// Sends what the window allows, as the writer does; returns the QoS of each.
    fn send_all(o: &mut Outbox, window: usize) -> Vec<u8> {
        let mut sent = Vec::new();
        while let Some(d) = o.next_sendable(window) {
            sent.push(d.qos);
            if d.qos > 0 {
                let pid = o.next_pid();
                o.sent(pid, d, Instant::now());
            }
        }
        sent
    }

    #[test]
    fn window_bounds_qos1_in_flight_and_keeps_order() {
        let mut o = online();
        for qos in [1, 0, 1, 1, 0] {
            assert_eq!(o.push(delivery(qos), 100), Offered::Queued { wake: true });
        }
        // Window 2: the third QoS 1 waits, and the QoS 0 behind it waits too (order).
        assert_eq!(send_all(&mut o, 2), vec![1, 0, 1]);
        assert_eq!(o.inflight.len(), 2);
        assert_eq!(o.queue.len(), 2);
        let first = o.inflight[0].pid;
        assert!(o.take_inflight(first).is_some(), "PUBACK frees a slot");
        assert_eq!(send_all(&mut o, 2), vec![1, 0]);
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_flight() {
        let mut o = online();
        o.next_pid = u16::MAX - 1;
        let a = o.next_pid();
        o.sent(a, delivery(1), Instant::now());
        assert_eq!(a, u16::MAX);
        assert_eq!(o.next_pid(), 1, "0 is never a packet id");
        // Wrap all the way round: the id still in flight is skipped.
        o.next_pid = u16::MAX - 1;
        assert_eq!(o.next_pid(), 1);
        assert!(o.take_inflight(a).is_some());
        assert!(o.take_inflight(a).is_none(), "an id is acknowledged once");
    }

    #[test]
    fn pubrec_releases_known_ids_and_reports_unknown_ones() {
        let mut o = online();
        let pid = o.next_pid();
        let before = Instant::now();
        o.sent(pid, delivery(2), before);
        let later = before + Duration::from_secs(1);
        assert_eq!(o.on_pubrec(pid, 0, later), Some(reason::SUCCESS));
        assert!(o.inflight[0].released);
        assert_eq!(
            o.oldest_sent_at(),
            Some(later),
            "the PUBREL restarts the clock"
        );
        assert_eq!(
            o.on_pubrec(pid + 1, 0, later),
            Some(reason::PACKET_ID_NOT_FOUND)
        );
        // PUBCOMP ends it.
        assert!(o.take_inflight(pid).is_some());
        assert!(o.inflight.is_empty());
    }

    #[test]
    fn failed_pubrec_ends_the_flow_without_pubrel() {
        let mut o = online();
        let pid = o.next_pid();
        o.sent(pid, delivery(2), Instant::now());
        assert_eq!(
            o.on_pubrec(pid, reason::NOT_AUTHORIZED, Instant::now()),
            None
        );
        assert!(o.inflight.is_empty());
    }

    #[test]
    fn offline_session_keeps_only_qos1_and_2() {
        let mut o = online();
        o.push(delivery(0), 100);
        o.push(delivery(1), 100);
        o.detach();
        assert_eq!(o.queue.len(), 1, "QoS 0 dropped when the connection goes");
        assert_eq!(o.push(delivery(0), 100), Offered::Skipped);
        assert_eq!(o.push(delivery(2), 100), Offered::Queued { wake: false });
        o.attach(7);
        assert_eq!((o.online, o.owner), (true, 7));
        assert_eq!(send_all(&mut o, 10), vec![1, 2]);
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let s = Session::new("c".into(), Arc::new(Principal::Device("c".into())));
        s.outbox.lock().attach(1);
        let m = Metrics::default();
        for _ in 0..3 {
            let _ = s.offer(delivery(1), 2, &m);
        }
        assert_eq!(s.outbox.lock().queue.len(), 2);
        assert_eq!(m.dropped.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn qos2_inbound_is_exactly_once() {
        let mut q = Qos2Inbound::default();
        assert_eq!(q.arrival(7), Qos2Arrival::New);
        q.begin(7);
        assert_eq!(
            q.arrival(7),
            Qos2Arrival::InProgress,
            "duplicate before PUBREC"
        );
        q.answered(7, reason::SUCCESS);
        assert_eq!(q.get(7), Some(Qos2In::Received));
        assert_eq!(
            q.arrival(7),
            Qos2Arrival::Received,
            "duplicate after PUBREC"
        );
        assert!(q.release(7));
        assert!(!q.release(7), "a second PUBREL finds nothing");
        assert_eq!(q.arrival(7), Qos2Arrival::New, "the id may be reused");
    }

    #[test]
    fn qos2_inbound_failure_or_no_answer_forgets_the_id() {
        let mut q = Qos2Inbound::default();
        q.begin(1);
        q.answered(1, reason::NOT_AUTHORIZED);
        assert_eq!(q.arrival(1), Qos2Arrival::New);
        q.begin(2);
        q.forget(2);
        assert_eq!(q.arrival(2), Qos2Arrival::New);
    }
}
