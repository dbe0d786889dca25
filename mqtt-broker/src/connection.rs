//! One client connection: CONNECT and admission, then a reader (this task) that decodes,
//! authorizes and hands messages to the pipeline, and a writer task that owns the socket's
//! write half and gathers acknowledgements, control packets and deliveries into few writes.
//!
//! Acknowledgements of QoS 1/2 publishes go through the writer in the order the publishes
//! arrived; each waits for the pipeline's `done` without stopping the reader, so many
//! publishes are in flight at once (bounded by the receive maximum).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocols::access::Principal;
use protocols::time::now_ms;
use protocols::topic::{validate_filter, validate_topic_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};

use crate::codec::{
    self, AckKind, ConnAckProps, Connect, DecodeError, OutPublish, Packet, Protocol, Publish,
    Subscribe, Will, reason, v4_return,
};
use crate::ingress::{AuthError, Authenticator, Disposition, Inbound, IngressEvent};
use crate::metrics::RefuseReason;
use crate::router::{Delivery, Inflight, Message, Qos2In, Session, split_shared};
use crate::{ConnLink, Core, Slot, client_id_allowed};

/// Most deliveries encoded into one write, so acknowledgements interleave with big backlogs.
const MAX_BATCH: usize = 512;
/// How long a new connection waits for the one it takes over to finish.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);
/// How long the reader waits for the writer to flush its last bytes.
const WRITER_LINGER: Duration = Duration::from_secs(2);

/// Serves one accepted TCP connection until it ends.
pub(super) async fn serve<A: Authenticator>(
    core: Arc<Core>,
    auth: Arc<A>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut stop = core.shutdown.subscribe();
    let max = core.config.max_packet_bytes;
    let connect = tokio::select! {
        _ = crate::stopped(&mut stop) => return,
        r = tokio::time::timeout(core.config.connect_timeout, read_connect(&mut rd, &mut buf, max, &core)) => r,
    };
    let connect = match connect {
        Err(_) => {
            tracing::info!(%peer, "MQTT connection closed: no CONNECT in time");
            return;
        }
        Ok(Err(ConnectFail::Closed)) => return,
        Ok(Err(ConnectFail::Io(e))) => {
            tracing::debug!(%peer, error = %e, "MQTT connection failed before CONNECT");
            return;
        }
        Ok(Err(ConnectFail::Decode(e))) => {
            tracing::warn!(%peer, error = %e, "MQTT connection closed: bad CONNECT");
            if let DecodeError::UnsupportedLevel(_) = e {
                core.metrics.refuse(RefuseReason::Protocol);
                let mut out = BytesMut::new();
                codec::encode_connack(
                    &mut out,
                    Protocol::V4,
                    false,
                    v4_return::BAD_PROTOCOL,
                    &ConnAckProps::default(),
                );
                let _ = wr.write_all(&out).await;
            } else {
                core.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                if matches!(e, DecodeError::TooLarge { .. }) {
                    core.metrics.oversized.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = wr.shutdown().await;
            return;
        }
        Ok(Ok(c)) => c,
    };
    let protocol = if connect.v5 {
        Protocol::V5
    } else {
        Protocol::V4
    };
    let admitted = match admit(&core, &*auth, *connect, peer).await {
        Ok(a) => a,
        Err(refusal) => {
            core.metrics.refuse(refusal.reason);
            tracing::info!(%peer, reason = refusal.log, "MQTT CONNECT refused");
            let mut out = BytesMut::new();
            let code = match protocol {
                Protocol::V4 => refusal.v4,
                Protocol::V5 => refusal.v5,
            };
            codec::encode_connack(&mut out, protocol, false, code, &ConnAckProps::default());
            let _ = wr.write_all(&out).await;
            let _ = wr.shutdown().await;
            return;
        }
    };
    run_session(core, protocol, admitted, rd, wr, buf, peer).await;
}

enum ConnectFail {
    Closed,
    Io(std::io::Error),
    Decode(DecodeError),
}

async fn read_connect(
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    max: usize,
    core: &Core,
) -> Result<Box<Connect>, ConnectFail> {
    loop {
        match codec::decode(buf, None, max) {
            Ok(Some(Packet::Connect(c))) => return Ok(c),
            Ok(Some(_)) => {
                return Err(ConnectFail::Decode(DecodeError::Violation(
                    "first packet is not CONNECT",
                )));
            }
            Ok(None) => {}
            Err(e) => return Err(ConnectFail::Decode(e)),
        }
        match rd.read_buf(buf).await {
            Ok(0) => return Err(ConnectFail::Closed),
            Ok(n) => {
                core.metrics.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => return Err(ConnectFail::Io(e)),
        }
    }
}

/// Why a CONNECT was refused, in both protocol versions.
struct Refusal {
    reason: RefuseReason,
    v4: u8,
    v5: u8,
    log: &'static str,
}

/// An admitted client.
struct Admitted {
    connect: Connect,
    principal: Arc<Principal>,
    client_id: Arc<str>,
    assigned: bool,
}

async fn admit<A: Authenticator>(
    core: &Core,
    auth: &A,
    connect: Connect,
    peer: SocketAddr,
) -> Result<Admitted, Refusal> {
    if connect.client_id.is_empty() && !connect.v5 && !connect.clean_start {
        return Err(Refusal {
            reason: RefuseReason::ClientId,
            v4: v4_return::IDENTIFIER_REJECTED,
            v5: reason::CLIENT_ID_NOT_VALID,
            log: "empty client id with a persistent session",
        });
    }
    if connect.auth_method.is_some() {
        return Err(Refusal {
            reason: RefuseReason::Protocol,
            v4: v4_return::BAD_PROTOCOL,
            v5: reason::BAD_AUTHENTICATION_METHOD,
            log: "enhanced authentication is not supported",
        });
    }
    // A client without an id is given one: its user name is valid for every role.
    let asked_id = if connect.client_id.is_empty() {
        connect.username.clone().unwrap_or_default()
    } else {
        connect.client_id.clone()
    };
    let principal = auth
        .authenticate(
            &asked_id,
            connect.username.as_deref(),
            connect.password.as_deref(),
        )
        .await
        .map_err(|e| match e {
            AuthError::BadCredentials => Refusal {
                reason: RefuseReason::BadCredentials,
                v4: v4_return::BAD_CREDENTIALS,
                v5: reason::BAD_USER_NAME_OR_PASSWORD,
                log: "bad user name or password",
            },
            AuthError::ClientIdMismatch(_) => Refusal {
                reason: RefuseReason::ClientId,
                v4: v4_return::IDENTIFIER_REJECTED,
                v5: reason::CLIENT_ID_NOT_VALID,
                log: "client id does not belong to the user",
            },
        })?;
    // Defence in depth: the rule holds whatever the authenticator checked.
    if !client_id_allowed(&principal, &asked_id) {
        return Err(Refusal {
            reason: RefuseReason::ClientId,
            v4: v4_return::IDENTIFIER_REJECTED,
            v5: reason::CLIENT_ID_NOT_VALID,
            log: "client id does not belong to the user",
        });
    }
    let assigned = connect.client_id.is_empty();
    let client_id: Arc<str> = match (&*principal, assigned) {
        (Principal::App { id, .. }, true) => {
            let n = core.generation.fetch_add(1, Ordering::Relaxed);
            format!("{id}.auto-{n}").into()
        }
        _ => asked_id.into(),
    };
    if let Some(w) = &connect.will
        && let Err(denied) = core.access.may_publish(&principal, &w.topic)
    {
        tracing::info!(%peer, client = %client_id, topic = %w.topic, %denied, "will topic refused");
        return Err(Refusal {
            reason: RefuseReason::WillDenied,
            v4: v4_return::NOT_AUTHORIZED,
            v5: reason::NOT_AUTHORIZED,
            log: "will topic not allowed",
        });
    }
    if *core.shutdown.borrow() {
        return Err(Refusal {
            reason: RefuseReason::ShuttingDown,
            v4: v4_return::SERVER_UNAVAILABLE,
            v5: reason::SERVER_SHUTTING_DOWN,
            log: "shutting down",
        });
    }
    Ok(Admitted {
        connect,
        principal,
        client_id,
        assigned,
    })
}

/// Attaches the connection to its session: takes over a live connection with the same client
/// id (waiting for it to finish), resumes a persistent session or starts a new one.
async fn attach(
    core: &Arc<Core>,
    client_id: &Arc<str>,
    principal: &Arc<Principal>,
    clean_start: bool,
    generation: u64,
    mut link: Option<ConnLink>,
) -> (Arc<Session>, bool) {
    loop {
        let wait = {
            let mut sessions = core.sessions.lock();
            match sessions.get_mut(client_id) {
                Some(Slot {
                    conn: Some(old), ..
                }) => {
                    old.kick.send_replace(Some(reason::SESSION_TAKEN_OVER));
                    Some((old.finished.clone(), old.generation))
                }
                Some(slot) if !clean_start && *slot.session.principal == **principal => {
                    slot.conn = link.take();
                    slot.generation = generation;
                    let mut o = slot.session.outbox.lock();
                    o.online = true;
                    o.owner = generation;
                    return (slot.session.clone(), true);
                }
                existing => {
                    if let Some(old) = existing {
                        core.router.remove_session(&old.session);
                        core.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
                    }
                    let session = Arc::new(Session::new(client_id.clone(), principal.clone()));
                    {
                        let mut o = session.outbox.lock();
                        o.online = true;
                        o.owner = generation;
                    }
                    sessions.insert(
                        client_id.clone(),
                        Slot {
                            session: session.clone(),
                            conn: link.take(),
                            generation,
                        },
                    );
                    core.metrics.sessions.fetch_add(1, Ordering::Relaxed);
                    return (session, false);
                }
            }
        };
        if let Some((mut finished, old_gen)) = wait {
            core.metrics.takeovers.fetch_add(1, Ordering::Relaxed);
            tracing::info!(client = %client_id, "MQTT session taken over by a new connection");
            let done = async move {
                let _ = finished.wait_for(|f| *f).await;
            };
            if tokio::time::timeout(TAKEOVER_WAIT, done).await.is_err() {
                tracing::warn!(client = %client_id, "previous connection did not finish; detaching it");
                if let Some(slot) = core.sessions.lock().get_mut(client_id)
                    && slot.conn.as_ref().is_some_and(|c| c.generation == old_gen)
                {
                    slot.conn = None;
                }
            }
        }
    }
}

/// How the reader ended.
#[derive(Debug)]
enum End {
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
}

impl End {
    fn publishes_will(&self) -> bool {
        match self {
            End::Graceful | End::PipelineClosed => false,
            End::Kicked(code) => *code != reason::SERVER_SHUTTING_DOWN,
            _ => true,
        }
    }
}

/// What the reader asks the writer to send.
enum Control {
    /// A ready-made packet.
    Raw(Bytes),
    /// A PUBACK/PUBREC, sent in order once its disposition is known.
    Ack(PendingAck),
    /// PUBCOMP for a released QoS 2 message, which frees its receive-maximum slot.
    PubComp(u16, u8),
    /// MQTT 5 DISCONNECT with a reason code (nothing for 3.1.1), then close.
    Disconnect(u8),
}

struct PendingAck {
    kind: AckKind,
    pid: u16,
    wait: AckWait,
}

enum AckWait {
    /// Known already (a refused publish): the reason code.
    Ready(u8),
    /// Waiting for the pipeline.
    Pending {
        /// The pipeline's answer.
        done: oneshot::Receiver<Disposition>,
        /// One slot of the receive maximum, freed with the PUBACK (QoS 1) or PUBCOMP (QoS 2).
        slot: OwnedSemaphorePermit,
    },
}

async fn run_session(
    core: Arc<Core>,
    protocol: Protocol,
    admitted: Admitted,
    mut rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
    peer: SocketAddr,
) {
    let Admitted {
        mut connect,
        principal,
        client_id,
        assigned,
    } = admitted;
    let generation = core.generation.fetch_add(1, Ordering::Relaxed) + 1;
    let (kick_tx, kick_rx) = watch::channel(None);
    let (finished_tx, finished_rx) = watch::channel(false);
    let link = ConnLink {
        generation,
        kick: kick_tx,
        finished: finished_rx,
    };
    let cap = core
        .config
        .max_session_expiry
        .as_secs()
        .min(u64::from(u32::MAX)) as u32;
    let mut expiry = match protocol {
        Protocol::V4 if connect.clean_start => 0,
        Protocol::V4 => cap,
        Protocol::V5 => connect.session_expiry.min(cap),
    };
    let (session, present) = attach(
        &core,
        &client_id,
        &principal,
        connect.clean_start,
        generation,
        Some(link),
    )
    .await;
    core.metrics.connects.fetch_add(1, Ordering::Relaxed);
    core.metrics.connections.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, client = %client_id, role = principal.role(), ?protocol, present, "MQTT client connected");

    // MQTT 5 lets the broker impose its keep alive; 3.1.1 clients cannot be told.
    let server_keep_alive = match (protocol, core.config.max_keep_alive) {
        (Protocol::V5, Some(max)) if connect.keep_alive == 0 || connect.keep_alive > max => {
            connect.keep_alive = max;
            Some(max)
        }
        _ => None,
    };
    let mut first = BytesMut::with_capacity(64);
    let props = ConnAckProps {
        server_keep_alive,
        receive_maximum: core.config.max_inflight_in,
        maximum_packet_size: core.config.max_packet_bytes.min(u32::MAX as usize) as u32,
        topic_alias_maximum: core.config.topic_alias_max,
        assigned_client_id: assigned.then_some(&*client_id),
        session_expiry: (protocol == Protocol::V5 && expiry != connect.session_expiry)
            .then_some(expiry),
        reason_string: None,
    };
    codec::encode_connack(&mut first, protocol, present, reason::SUCCESS, &props);

    let (control_tx, control_rx) = mpsc::channel(1024);
    let window = usize::from(core.config.max_inflight_out.min(connect.receive_maximum)).max(1);
    let client_max = match connect.maximum_packet_size {
        0 => usize::MAX,
        n => n as usize,
    };
    let writer = Writer {
        core: core.clone(),
        session: session.clone(),
        protocol,
        generation,
        wr,
        buf: first,
        control: control_rx,
        head: None,
        rest: VecDeque::new(),
        window,
        client_max,
        problem_info: connect.request_problem_info,
        kick: kick_rx.clone(),
        closing: false,
        qos2_slots: HashMap::new(),
    };
    let writer = tokio::spawn(writer.run());

    let will = connect.will.take();
    let mut reader = Reader {
        core: core.clone(),
        protocol,
        session,
        principal: principal.clone(),
        client_id: client_id.clone(),
        control: control_tx,
        permits: Arc::new(Semaphore::new(usize::from(core.config.max_inflight_in))),
        aliases: HashMap::new(),
        kick: kick_rx,
        expiry: &mut expiry,
        keep_alive: connect.keep_alive,
    };
    let connected = IngressEvent::Connected {
        principal: principal.clone(),
        client_id: client_id.clone(),
    };
    let end = match reader.send_event(connected).await {
        Err(end) => end,
        Ok(()) => reader.run(&mut rd, buf).await,
    };
    match &end {
        End::Protocol(code, why) => {
            core.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
            if *code == reason::PACKET_TOO_LARGE {
                core.metrics.oversized.fetch_add(1, Ordering::Relaxed);
            }
            tracing::warn!(%peer, client = %client_id, error = %why, "closing MQTT connection");
        }
        End::KeepAlive => {
            core.metrics
                .keepalive_timeouts
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, client = %client_id, "MQTT keepalive expired");
        }
        other => {
            tracing::debug!(%peer, client = %client_id, end = ?other, "MQTT connection ended");
        }
    }
    // Tell the writer how to finish, then let it flush.
    let last = match &end {
        End::Protocol(code, _) | End::Kicked(code) => Some(*code),
        End::KeepAlive => Some(reason::KEEP_ALIVE_TIMEOUT),
        _ => None,
    };
    let control = reader.control;
    if let Some(code) = last {
        let _ = control.try_send(Control::Disconnect(code));
    }
    drop(control);
    let abort = writer.abort_handle();
    if tokio::time::timeout(WRITER_LINGER, writer).await.is_err() {
        abort.abort();
    }
    if protocol == Protocol::V5 && matches!(end, End::Protocol(..)) {
        // Let the client read our DISCONNECT before the socket goes: its writes in the
        // meantime would otherwise reset the connection under the reason code.
        let mut scratch = [0u8; 4096];
        let _ = tokio::time::timeout(WRITER_LINGER, async {
            while let Ok(n) = rd.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
    }

    let will = will.filter(|_| end.publishes_will());
    // MQTT 5 will delay: published after min(delay, session expiry) unless a new connection
    // resumes the session first.
    let delay = will.as_ref().map_or(0, |w| w.delay.min(expiry));
    let mut delayed = None;
    match will {
        Some(w) if delay == 0 => publish_will(&core, &principal, &client_id, w).await,
        other => delayed = other,
    }
    detach(&core, &client_id, generation, expiry);
    if let Some(w) = delayed {
        let (core, principal, client_id) = (core.clone(), principal.clone(), client_id.clone());
        tokio::spawn(async move {
            let mut stop = core.shutdown.subscribe();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => {
                    let resumed = core.sessions.lock().get(&client_id).is_some_and(|s| {
                        s.generation != generation || s.conn.is_some()
                    });
                    if !resumed {
                        publish_will(&core, &principal, &client_id, w).await;
                    }
                }
                _ = crate::stopped(&mut stop) => {}
            }
        });
    }
    core.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    let disconnected = IngressEvent::Disconnected {
        principal,
        client_id,
        graceful: matches!(end, End::Graceful),
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), core.events.send(disconnected)).await;
    finished_tx.send_replace(true);
}

async fn publish_will(core: &Core, principal: &Arc<Principal>, client_id: &Arc<str>, w: Will) {
    core.metrics.wills.fetch_add(1, Ordering::Relaxed);
    let msg = Arc::new(Message {
        topic: w.topic.as_str().into(),
        payload: w.payload.clone(),
        properties: w.properties,
        qos: w.qos,
        retain: w.retain,
        origin: Some(client_id.clone()),
        expires_at: None,
    });
    core.publish(&msg);
    let ev = IngressEvent::Message(Inbound {
        principal: principal.clone(),
        client_id: client_id.clone(),
        topic: w.topic,
        payload: w.payload,
        received_ms: now_ms(),
        arrived: Instant::now(),
        done: None,
    });
    let _ = tokio::time::timeout(Duration::from_secs(5), core.events.send(ev)).await;
}

/// Detaches a finished connection from its session; a session without expiry ends now, a
/// persistent one is kept (queueing QoS 1/2) until it expires or the client returns.
fn detach(core: &Arc<Core>, client_id: &Arc<str>, generation: u64, expiry: u32) {
    let mut sessions = core.sessions.lock();
    let Some(slot) = sessions.get_mut(client_id) else {
        return;
    };
    if slot.generation != generation {
        return;
    }
    slot.conn = None;
    {
        let mut o = slot.session.outbox.lock();
        o.online = false;
        o.queue.retain(|d| d.qos > 0);
    }
    drop(sessions);
    if expiry == 0 {
        core.end_session(client_id, generation);
        return;
    }
    let core = core.clone();
    let client_id = client_id.clone();
    tokio::spawn(async move {
        let mut stop = core.shutdown.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(u64::from(expiry))) => {
                core.end_session(&client_id, generation);
            }
            _ = crate::stopped(&mut stop) => {}
        }
    });
}

/// Waits until the connection is asked to close; returns the MQTT 5 reason code.
async fn kicked(kick: &mut watch::Receiver<Option<u8>>) -> u8 {
    match kick.wait_for(|k| k.is_some()).await {
        Ok(code) => code.unwrap_or(reason::UNSPECIFIED),
        // The registry dropped the sender: the session is gone.
        Err(_) => reason::UNSPECIFIED,
    }
}

/// The reading side of a connection.
struct Reader<'e> {
    core: Arc<Core>,
    protocol: Protocol,
    session: Arc<Session>,
    principal: Arc<Principal>,
    client_id: Arc<str>,
    control: mpsc::Sender<Control>,
    permits: Arc<Semaphore>,
    aliases: HashMap<u16, Arc<str>>,
    kick: watch::Receiver<Option<u8>>,
    expiry: &'e mut u32,
    keep_alive: u16,
}

impl Reader<'_> {
    async fn run(&mut self, rd: &mut OwnedReadHalf, mut buf: BytesMut) -> End {
        let max = self.core.config.max_packet_bytes;
        let grace = (u64::from(self.keep_alive) * 1500).max(1);
        let mut deadline = tokio::time::Instant::now() + Duration::from_millis(grace);
        loop {
            loop {
                match codec::decode(&mut buf, Some(self.protocol), max) {
                    Ok(Some(p)) => {
                        if let Err(end) = self.on_packet(p).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return End::Protocol(e.reason_code(), e.to_string()),
                }
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
            let read = tokio::select! {
                biased;
                code = kicked(&mut self.kick) => return End::Kicked(code),
                _ = self.control.closed() => return End::WriterGone,
                _ = tokio::time::sleep_until(deadline), if self.keep_alive > 0 => {
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
                    deadline = tokio::time::Instant::now() + Duration::from_millis(grace);
                }
            }
        }
    }

    /// Sends to the pipeline, waiting while it is full (backpressure), but not past a kick.
    async fn send_event(&mut self, ev: IngressEvent) -> Result<(), End> {
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
                let known = {
                    let mut o = self.session.outbox.lock();
                    if code >= 0x80 {
                        o.take_inflight(pid);
                        None
                    } else {
                        let m = o.inflight.iter_mut().find(|m| m.pid == pid);
                        Some(m.map(|m| {
                            m.released = true;
                            m.sent_at = Instant::now();
                        }))
                    }
                };
                self.session.wake.notify_one();
                match known {
                    None => Ok(()),
                    Some(found) => {
                        let code = if found.is_some() {
                            0
                        } else {
                            reason::PACKET_ID_NOT_FOUND
                        };
                        let mut b = BytesMut::with_capacity(8);
                        codec::encode_ack(&mut b, self.protocol, AckKind::PubRel, pid, code, None);
                        self.send_control(Control::Raw(b.freeze())).await
                    }
                }
            }
            Packet::PubRel(pid) => {
                let had = self.session.qos2_in.lock().remove(&pid).is_some();
                let code = if had || self.protocol == Protocol::V4 {
                    0
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
                self.send_control(Control::Raw(Bytes::from_static(&[0xD0, 0])))
                    .await
            }
            Packet::Disconnect {
                reason: code,
                session_expiry,
            } => {
                if let Some(e) = session_expiry {
                    if *self.expiry == 0 && e != 0 {
                        return Err(End::Protocol(
                            reason::PROTOCOL_ERROR,
                            "session expiry set on DISCONNECT after 0 at CONNECT".into(),
                        ));
                    }
                    let cap = self.core.config.max_session_expiry.as_secs();
                    *self.expiry = u64::from(e).min(cap) as u32;
                }
                if code == reason::DISCONNECT_WITH_WILL {
                    Err(End::DisconnectWithWill)
                } else {
                    Err(End::Graceful)
                }
            }
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
        let topic: Arc<str> = match topic_alias {
            None => topic.into(),
            Some(a) if a > self.core.config.topic_alias_max => {
                return Err(End::Protocol(
                    reason::TOPIC_ALIAS_INVALID,
                    format!("topic alias {a} above the maximum"),
                ));
            }
            Some(a) if topic.is_empty() => match self.aliases.get(&a) {
                Some(t) => t.clone(),
                None => {
                    return Err(End::Protocol(
                        reason::PROTOCOL_ERROR,
                        format!("unknown topic alias {a}"),
                    ));
                }
            },
            Some(a) => {
                let t: Arc<str> = topic.into();
                self.aliases.insert(a, t.clone());
                t
            }
        };
        if !validate_topic_name(&topic) {
            return Err(End::Protocol(
                reason::TOPIC_NAME_INVALID,
                format!("invalid topic name {topic:?}"),
            ));
        }
        if qos == 2 {
            let state = self.session.qos2_in.lock().get(&pid).copied();
            match state {
                // Redelivered before we answered: the answer is on its way.
                Some(Qos2In::Pending) => return Ok(()),
                Some(Qos2In::Received) => {
                    return self
                        .send_control(Control::Ack(PendingAck {
                            kind: AckKind::PubRec,
                            pid,
                            wait: AckWait::Ready(reason::SUCCESS),
                        }))
                        .await;
                }
                None => {}
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
                    self.session.qos2_in.lock().insert(pid, Qos2In::Pending);
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
            self.session.qos2_in.lock().insert(pid, Qos2In::Pending);
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
            self.session.offer(d, cap, &self.core.metrics);
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

/// The writing side of a connection.
struct Writer {
    core: Arc<Core>,
    session: Arc<Session>,
    protocol: Protocol,
    generation: u64,
    wr: OwnedWriteHalf,
    buf: BytesMut,
    control: mpsc::Receiver<Control>,
    head: Option<PendingAck>,
    rest: VecDeque<PendingAck>,
    window: usize,
    client_max: usize,
    problem_info: bool,
    kick: watch::Receiver<Option<u8>>,
    closing: bool,
    /// Receive-maximum slots of QoS 2 messages between PUBREC and PUBCOMP.
    qos2_slots: HashMap<u16, OwnedSemaphorePermit>,
}

/// The result of the oldest pending acknowledgement; never resolves when there is none.
async fn next_ack(head: &mut Option<PendingAck>) -> Result<Disposition, ()> {
    match head {
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

impl Writer {
    async fn run(mut self) {
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
                r = next_ack(&mut self.head) => {
                    if let Some(h) = self.head.take() {
                        self.emit_ack(h, r);
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
        let o = self.session.outbox.lock();
        let oldest = o.inflight.front()?;
        Some(
            self.core
                .config
                .stuck_timeout
                .saturating_sub(oldest.sent_at.elapsed()),
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
        let write = tokio::time::timeout(limit, self.wr.write_all(&self.buf));
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
            Control::Ack(a) => {
                if self.head.is_none() && self.rest.is_empty() {
                    self.head = Some(a);
                } else {
                    self.rest.push_back(a);
                }
            }
            Control::PubComp(pid, code) => {
                self.qos2_slots.remove(&pid);
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
        self.drain_acks();
        if !self.closing {
            self.drain_outbox();
        }
    }

    fn drain_acks(&mut self) {
        loop {
            if self.head.is_none() {
                match self.rest.pop_front() {
                    Some(a) => self.head = Some(a),
                    None => return,
                }
            }
            let Some(h) = self.head.as_mut() else { return };
            let result = match &mut h.wait {
                AckWait::Ready(_) => Ok(Disposition::Accepted),
                AckWait::Pending { done, .. } => match done.try_recv() {
                    Ok(d) => Ok(d),
                    Err(oneshot::error::TryRecvError::Empty) => return,
                    Err(oneshot::error::TryRecvError::Closed) => Err(()),
                },
            };
            if let Some(h) = self.head.take() {
                self.emit_ack(h, result);
            }
        }
    }

    /// Writes the acknowledgement of one inbound publish, or nothing when the pipeline dropped
    /// it unanswered (the client will redeliver).
    fn emit_ack(&mut self, a: PendingAck, result: Result<Disposition, ()>) {
        let qos2 = a.kind == AckKind::PubRec;
        let (code, why) = match (&a.wait, result) {
            (AckWait::Ready(code), _) => (*code, None),
            (_, Ok(Disposition::Accepted)) => (reason::SUCCESS, None),
            (_, Ok(Disposition::Rejected(why))) => (reason::IMPLEMENTATION_SPECIFIC, Some(why)),
            (_, Err(())) => {
                tracing::debug!(client = %self.session.client_id, pid = a.pid, "publish not answered by the pipeline: not acknowledged");
                if qos2 {
                    self.session.qos2_in.lock().remove(&a.pid);
                }
                return;
            }
        };
        let code = if self.protocol == Protocol::V4 {
            reason::SUCCESS
        } else {
            code
        };
        if qos2 {
            let mut q = self.session.qos2_in.lock();
            if code < 0x80 {
                q.insert(a.pid, Qos2In::Received);
                if let AckWait::Pending { slot, .. } = a.wait {
                    self.qos2_slots.insert(a.pid, slot);
                }
            } else {
                q.remove(&a.pid);
            }
        }
        let why = if self.problem_info { why } else { None };
        codec::encode_ack(
            &mut self.buf,
            self.protocol,
            a.kind,
            a.pid,
            code,
            why.as_deref(),
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
                OutPublish {
                    topic: &d.msg.topic,
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
            let Some(front) = o.queue.front() else { break };
            if front.qos > 0 && o.inflight.len() >= self.window {
                break;
            }
            let Some(d) = o.queue.pop_front() else { break };
            let Ok(message_expiry) = d.msg.expiry_left() else {
                // Expired while queued: never delivered (MQTT 5 message expiry).
                dropped += 1;
                continue;
            };
            let pid = if d.qos > 0 { o.next_pid() } else { 0 };
            let out = OutPublish {
                topic: &d.msg.topic,
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
            sent += 1;
            if d.qos > 0 {
                o.inflight.push_back(Inflight {
                    pid,
                    delivery: d,
                    released: false,
                    sent_at: Instant::now(),
                });
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
