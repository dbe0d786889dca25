//! One client connection: [`admission`] (CONNECT, authentication, CONNACK), then a
//! [`reader`] (this task) that decodes, authorizes and hands messages to the pipeline, and a
//! [`writer`] task that owns the socket's write half and gathers acknowledgements, control
//! packets and deliveries into few writes. The protocol state both act on, without I/O, is in
//! [`state`] and [`crate::session`]; this module wires them together and cleans up after the
//! connection (will, session detach, `Disconnected` event).
//!
//! Acknowledgements of QoS 1/2 publishes go through the writer in the order the publishes
//! arrived; each waits for the pipeline's `done` without stopping the reader, so many
//! publishes are in flight at once (bounded by the receive maximum).

mod admission;
mod aliases;
mod quota;
mod reader;
mod state;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use protocols::access::Principal;
use protocols::time::now_ms;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};

use self::admission::{Admitted, ConnectFail};
use self::aliases::OutAliases;
use self::reader::Reader;
use self::state::{AckQueue, End, InboundState, Negotiated};
use self::writer::{Control, Writer};
use crate::Core;
use crate::codec::{self, Will, reason};
use crate::ingress::{Authenticator, Inbound, IngressEvent};
use crate::message::Message;
use crate::registry::{self, ConnLink};

/// How long the reader waits for the writer to flush its last bytes.
const WRITER_LINGER: Duration = Duration::from_secs(2);
/// How long a closing connection waits for room in the pipeline's channel for its last events.
const EVENT_WAIT: Duration = Duration::from_secs(5);

/// The read half of a client's byte stream (plain TCP or TLS).
pub(crate) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a client's byte stream (plain TCP or TLS).
pub(crate) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// An accepted client's byte stream, ready for MQTT.
pub(crate) struct Link {
    /// What the client sends.
    pub rd: ReadHalf,
    /// What the client receives.
    pub wr: WriteHalf,
    /// The client certificate the TLS handshake verified, if any.
    pub certificate: Option<CertificateDer<'static>>,
}

impl Link {
    /// A plain TCP connection.
    pub fn plain(stream: TcpStream) -> Link {
        let (rd, wr) = stream.into_split();
        Link {
            rd: Box::new(rd),
            wr: Box::new(wr),
            certificate: None,
        }
    }
}

/// Serves one accepted connection until it ends. `over_limit`: the broker already serves
/// `max_connections`; the client's CONNECT is read only to refuse it in its own protocol.
pub(super) async fn serve<A: Authenticator>(
    core: Arc<Core>,
    auth: Arc<A>,
    link: Link,
    peer: SocketAddr,
    over_limit: bool,
) {
    let Link {
        mut rd,
        mut wr,
        certificate,
    } = link;
    let mut buf = BytesMut::with_capacity(reader::READ_CHUNK);
    let mut stop = core.shutdown.subscribe();
    let max = core.config.max_packet_bytes;
    let read = admission::read_connect(&mut rd, &mut buf, max, &core);
    let connect = tokio::select! {
        _ = crate::stopped(&mut stop) => return,
        r = tokio::time::timeout(core.config.connect_timeout, read) => r,
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
            admission::reject_bad_connect(&core, &mut wr, &e).await;
            return;
        }
        Ok(Ok(c)) => c,
    };
    let negotiated = Negotiated::new(&core.config, &connect);
    if over_limit {
        admission::Refusal::BUSY
            .send(&core, &mut wr, negotiated.protocol, peer)
            .await;
        return;
    }
    let admitted = admission::admit(&core, &*auth, *connect, peer, certificate.as_ref());
    // Boxed: the admission's state (the authenticator's future) is not kept for the life of
    // the connection.
    match Box::pin(admitted).await {
        Ok(admitted) => run(core, negotiated, admitted, rd, wr, buf, peer).await,
        Err(refusal) => {
            refusal
                .send(&core, &mut wr, negotiated.protocol, peer)
                .await;
        }
    }
}

/// Runs an admitted connection: attaches it to its session, sends CONNACK, runs the reader
/// here and the writer beside it, then finishes (DISCONNECT, will, detach, event).
async fn run(
    core: Arc<Core>,
    n: Negotiated,
    admitted: Admitted,
    mut rd: ReadHalf,
    wr: WriteHalf,
    buf: BytesMut,
    peer: SocketAddr,
) {
    let Admitted {
        mut connect,
        principal,
        client_id,
        assigned,
    } = admitted;
    let protocol = n.protocol;
    let generation = core.generation.fetch_add(1, Ordering::Relaxed) + 1;
    let (kick_tx, kick_rx) = watch::channel(None);
    let (finished_tx, finished_rx) = watch::channel(false);
    let link = ConnLink {
        generation,
        kick: kick_tx,
        finished: finished_rx,
    };
    // The steps before and after the reader's loop are boxed: a connection's task keeps only
    // the state of the step it is in, and idle devices are most of a hub's connections
    // (`docs/PERFORMANCE.md`, "Direct devices at scale").
    let (session, present) = Box::pin(registry::attach(
        &core,
        &client_id,
        &principal,
        connect.clean_start,
        n.session_expiry,
        generation,
        Some(link),
    ))
    .await;
    core.metrics.connects.fetch_add(1, Ordering::Relaxed);
    core.metrics.connections.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, client = %client_id, role = principal.role(), ?protocol, present, "MQTT client connected");

    let mut first = BytesMut::with_capacity(64);
    let props = n.connack(&core.config, assigned.then_some(&*client_id));
    codec::encode_connack(&mut first, protocol, present, reason::SUCCESS, &props);

    let (control_tx, control_rx) = mpsc::channel(1024);
    let writer = Writer {
        core: core.clone(),
        session: session.clone(),
        protocol,
        generation,
        wr,
        buf: first,
        control: control_rx,
        acks: AckQueue::new(protocol, n.problem_info),
        window: n.window,
        client_max: n.client_max,
        kick: kick_rx.clone(),
        aliases: OutAliases::new(n.aliases_out),
        closing: false,
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
        state: InboundState::new(&core.config, &n),
        quota: quota::Quota::new(&core.config, Instant::now()),
        kick: kick_rx,
    };
    let connected = IngressEvent::Connected {
        principal: principal.clone(),
        client_id: client_id.clone(),
    };
    let end = match Box::pin(reader.send_event(connected)).await {
        Err(end) => end,
        Ok(()) => reader.run(&mut rd, buf).await,
    };
    Box::pin(async move {
            match &end {
                End::Protocol(code, why) => {
                    core.metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    if *code == reason::PACKET_TOO_LARGE {
                        core.metrics.oversized.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(%peer, client = %client_id, error = %why, "closing MQTT connection");
                }
                End::Flood => {
                    core.metrics
                        .flood_disconnects
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, client = %client_id, "disconnecting a client that stays over its publish rate");
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
            let expiry = reader.state.session_expiry();
            let control = reader.control;
            if let Some(code) = end.disconnect_code() {
                let _ = control.try_send(Control::Disconnect(code));
            }
            drop(control);
            let abort = writer.abort_handle();
            if tokio::time::timeout(WRITER_LINGER, writer).await.is_err() {
                abort.abort();
            }
            if protocol == codec::Protocol::V5 && matches!(end, End::Protocol(..)) {
                // Let the client read our DISCONNECT before the socket goes: its writes in the
                // meantime would otherwise reset the connection under the reason code.
                let mut scratch = vec![0u8; 4096];
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
            registry::detach(&core, &client_id, generation, expiry);
            if let Some(w) = delayed {
                let (core, principal, client_id) = (core.clone(), principal.clone(), client_id.clone());
                tokio::spawn(async move {
                    let mut stop = core.shutdown.subscribe();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => {
                            if !registry::resumed_since(&core, &client_id, generation) {
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
            let _ = tokio::time::timeout(EVENT_WAIT, core.events.send(disconnected)).await;
            finished_tx.send_replace(true);
    })
    .await;
}

/// Routes a will and hands it to the pipeline like a QoS 0 publish of its client.
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
    let _ = tokio::time::timeout(EVENT_WAIT, core.events.send(ev)).await;
}

/// Waits until the connection is asked to close; returns the MQTT 5 reason code.
async fn kicked(kick: &mut watch::Receiver<Option<u8>>) -> u8 {
    match kick.wait_for(|k| k.is_some()).await {
        Ok(code) => code.unwrap_or(reason::UNSPECIFIED),
        // The registry dropped the sender: the session is gone.
        Err(_) => reason::UNSPECIFIED,
    }
}
