//! The HJ 212-2017 ingress: environmental monitoring stations (water-quality sondes' data
//! loggers) that connect over TCP to `[hj212] listen` and send packets.
//!
//! It is an ingress like the MQTT broker: it authenticates, frames and acknowledges, and hands
//! each data upload to the same pipeline as an [`IngressEvent::Message`] from the station's
//! device (telemetry JSON on `v1/devices/{id}/telemetry`, see [`convert`]). So normalization,
//! dead letters, twins, rules and feeds are the ones every device gets.
//!
//! - **Authentication**: every packet names its station (`MN`) and password (`PW`); a station
//!   is a device with `hj212_mn` and `hj212_pw`. An unknown `MN` or a wrong `PW` gets a dead
//!   letter (`bad_credentials`) and the connection is closed. One connection may carry several
//!   stations (a data logger in front of several instruments).
//! - **Acknowledgement** (CN 9014, when the packet's `Flag` asks): only once the pipeline has
//!   stored the data (or refused it for good, into the dead letters). A packet the hub could
//!   not store (a full disk) is not acknowledged, so the station sends it again; a resent
//!   packet has the same `DataTime`, and the store keeps one point per time.
//! - **Refusals**: a packet whose length, CRC or data segment is wrong gets a dead letter
//!   (`bad_frame`) with its bytes; the reader resynchronizes on the next `##`. Split messages
//!   (`PNUM`/`PNO`) are reassembled per connection; one whose parts stop coming is dropped
//!   into the dead letters (`incomplete`) after a minute.
//! - **Status**: a station is online from its first authenticated packet until its
//!   connection ends (or is silent for `[hj212] idle_timeout`).

pub mod convert;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mqtt_broker::ingress::{Disposition, Inbound, IngressEvent};
use protocols::access::Principal;
use protocols::deadletter::DeadLetterReason;
use protocols::hj212::{FrameReader, Packet, Reassembler, data_ack};
use protocols::time::now_ms;
use protocols::topic::Topic;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::config::HubConfig;
use crate::pipeline::deadletter::{DeadLetters, Source};
use crate::shutdown::{Shutdown, Signal};

/// The dead-letter owner of what comes before a station is known (`v1/deadletter/hj212`).
pub const LISTENER_OWNER: &str = "hj212";
/// How often split messages are checked for parts that stopped coming.
const EXPIRE_EVERY: Duration = Duration::from_secs(5);

/// A configured station.
#[derive(Debug)]
struct Station {
    principal: Arc<Principal>,
    client_id: Arc<str>,
    telemetry_topic: String,
    pw: String,
}

/// Counters of the listener (`hub_hj212_*`).
#[derive(Debug, Default)]
pub struct Hj212Metrics {
    connections: AtomicU64,
    open: AtomicU64,
    packets: AtomicU64,
    acks: AtomicU64,
    closed_for_credentials: AtomicU64,
}

struct Ingress {
    stations: HashMap<String, Station>,
    offset_minutes: i32,
    idle: Duration,
    events: mpsc::Sender<IngressEvent>,
    dead_letters: DeadLetters,
    metrics: Arc<Hj212Metrics>,
}

/// Why the listener did not start.
#[derive(Debug, thiserror::Error)]
#[error("[hj212] listen {addr}: {source}")]
pub struct ListenError {
    /// The address.
    pub addr: String,
    /// The bind error.
    #[source]
    pub source: std::io::Error,
}

/// Binds every `[hj212] listen` address and serves stations on them until `group` stops;
/// returns the bound addresses (real ports for port 0). Nothing is bound when none is
/// configured.
pub async fn start(
    config: &HubConfig,
    events: mpsc::Sender<IngressEvent>,
    dead_letters: DeadLetters,
    group: &mut Shutdown,
) -> Result<(Vec<SocketAddr>, Arc<Hj212Metrics>), ListenError> {
    let metrics = Arc::new(Hj212Metrics::default());
    if config.hj212.listen.is_empty() {
        return Ok((Vec::new(), metrics));
    }
    let stations = config
        .devices
        .iter()
        .filter_map(|d| {
            let (mn, pw) = (d.hj212_mn.as_ref()?, d.hj212_pw.as_ref()?);
            let station = Station {
                principal: Arc::new(Principal::Device(d.id.clone())),
                client_id: d.id.as_str().into(),
                telemetry_topic: Topic::DeviceTelemetry(&d.id).to_string(),
                pw: pw.clone(),
            };
            Some((mn.clone(), station))
        })
        .collect();
    let ingress = Arc::new(Ingress {
        stations,
        offset_minutes: config.hj212.utc_offset.minutes,
        idle: config.hj212.idle_timeout.0,
        events,
        dead_letters,
        metrics: metrics.clone(),
    });
    let mut addrs = Vec::new();
    for a in &config.hj212.listen {
        let err = |source| ListenError {
            addr: a.clone(),
            source,
        };
        let addr: SocketAddr = a
            .parse()
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        let listener = mqtt_broker::bind_listener(addr).map_err(err)?;
        let bound = listener.local_addr().map_err(err)?;
        addrs.push(bound);
        let i = ingress.clone();
        group.spawn("hj212 listener", move |stop| accept(i, listener, stop));
    }
    tracing::info!(addrs = ?addrs, stations = ingress.stations.len(), "HJ 212 listening");
    Ok((addrs, metrics))
}

async fn accept(ingress: Arc<Ingress>, listener: TcpListener, mut stop: Signal) {
    // Connections end with the listener: each holds a sender of the pipeline's queue, which
    // must be gone before the pipeline can drain.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.recv() => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    ingress.metrics.connections.fetch_add(1, Relaxed);
                    conns.spawn(serve(ingress.clone(), stream, peer, stop.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!("HJ 212 accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    while conns.join_next().await.is_some() {}
}

/// What handling one packet decided for the connection.
enum Next {
    Continue,
    Close,
}

/// One connection: its frame reader, its split messages and the stations seen on it.
struct Conn {
    ingress: Arc<Ingress>,
    peer: SocketAddr,
    reassembler: Reassembler,
    /// MNs authenticated on this connection (online until it ends).
    seen: Vec<String>,
}

async fn serve(ingress: Arc<Ingress>, stream: TcpStream, peer: SocketAddr, mut stop: Signal) {
    ingress.metrics.open.fetch_add(1, Relaxed);
    let (mut rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new();
    let mut conn = Conn {
        ingress: ingress.clone(),
        peer,
        reassembler: Reassembler::default(),
        seen: Vec::new(),
    };
    let mut buf = vec![0u8; 8192];
    let mut expire = tokio::time::interval(EXPIRE_EVERY);
    expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_read = Instant::now();
    'conn: loop {
        let n = tokio::select! {
            _ = stop.recv() => break,
            _ = expire.tick() => {
                conn.expire();
                if last_read.elapsed() >= ingress.idle {
                    tracing::info!(%peer, "HJ 212 connection silent for [hj212] idle_timeout; closing");
                    break;
                }
                continue;
            }
            r = rd.read(&mut buf) => match r {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(%peer, "HJ 212 read: {e}");
                    break;
                }
            },
        };
        last_read = Instant::now();
        reader.push(&buf[..n]);
        loop {
            // Owned, so that the reader is free while the pipeline stores the packet.
            let frame = match reader.next_frame() {
                None => break,
                Some(Ok(f)) => Ok(f.data.to_string()),
                Some(Err(e)) => Err(e),
            };
            let next = match frame {
                Ok(segment) => conn.packet(&segment, &mut wr).await,
                Err(e) => {
                    conn.refuse(None, DeadLetterReason::BadFrame, &e.to_string(), b"");
                    Next::Continue
                }
            };
            if let Next::Close = next {
                break 'conn;
            }
        }
    }
    let _ = wr.shutdown().await;
    for mn in &conn.seen {
        if let Some(s) = ingress.stations.get(mn) {
            let _ = ingress
                .events
                .send(IngressEvent::Disconnected {
                    principal: s.principal.clone(),
                    client_id: s.client_id.clone(),
                    graceful: false,
                })
                .await;
        }
    }
    ingress.metrics.open.fetch_sub(1, Relaxed);
}

impl Conn {
    /// A dead letter of this connection: the station's when it is known.
    fn refuse(
        &self,
        station: Option<&Station>,
        reason: DeadLetterReason,
        detail: &str,
        part: &[u8],
    ) {
        let peer = format!("hj212:{}", self.peer);
        let (owner, client) = match station {
            Some(s) => (s.principal.id(), &*s.client_id),
            None => (LISTENER_OWNER, peer.as_str()),
        };
        let topic = station.map_or("hj212", |s| s.telemetry_topic.as_str());
        self.ingress.dead_letters.send(
            &Source {
                owner,
                client,
                topic,
                ts_ms: now_ms(),
            },
            reason,
            detail,
            part,
        );
    }

    fn expire(&mut self) {
        let now = u64::try_from(now_ms()).unwrap_or(0);
        for e in self.reassembler.expire(now) {
            let detail = format!(
                "split message QN={} CN={} of MN {}: {} of {} parts arrived",
                e.qn,
                e.cn.code(),
                e.mn,
                e.received,
                e.total
            );
            let station = self.ingress.stations.get(&e.mn);
            self.refuse(station, DeadLetterReason::Incomplete, &detail, b"");
        }
    }

    async fn packet(&mut self, segment: &str, wr: &mut tokio::net::tcp::OwnedWriteHalf) -> Next {
        let ingress = self.ingress.clone();
        ingress.metrics.packets.fetch_add(1, Relaxed);
        let packet = match Packet::parse(segment) {
            Ok(p) => p,
            Err(e) => {
                self.refuse(
                    None,
                    DeadLetterReason::BadFrame,
                    &e.to_string(),
                    segment.as_bytes(),
                );
                return Next::Continue;
            }
        };
        let Some(station) = ingress.stations.get(packet.mn) else {
            self.refuse(
                None,
                DeadLetterReason::BadCredentials,
                &format!(
                    "unknown MN `{}`; connection closed",
                    protocols::id::clip(packet.mn)
                ),
                b"",
            );
            ingress.metrics.closed_for_credentials.fetch_add(1, Relaxed);
            return Next::Close;
        };
        if !bool::from(packet.pw.as_bytes().ct_eq(station.pw.as_bytes())) {
            // The packet is not echoed: it holds the (wrong) password.
            self.refuse(
                Some(station),
                DeadLetterReason::BadCredentials,
                "wrong PW; connection closed",
                b"",
            );
            ingress.metrics.closed_for_credentials.fetch_add(1, Relaxed);
            return Next::Close;
        }
        if !self.seen.iter().any(|m| m == packet.mn) {
            self.seen.push(packet.mn.to_string());
            let _ = ingress
                .events
                .send(IngressEvent::Connected {
                    principal: station.principal.clone(),
                    client_id: station.client_id.clone(),
                })
                .await;
        }
        if packet.split.is_some() {
            let now = u64::try_from(now_ms()).unwrap_or(0);
            match self.reassembler.push(&packet, now) {
                Ok(None) => {
                    // A part: acknowledged on arrival, as the standard has each packet answered.
                    if packet.wants_ack() {
                        self.ack(&packet, wr).await;
                    }
                    Next::Continue
                }
                Ok(Some(whole)) => {
                    let ack = packet.wants_ack();
                    let whole_packet = whole.as_packet();
                    let stored = self.upload(station, &whole_packet).await;
                    if ack && stored {
                        self.ack(&packet, wr).await;
                    }
                    Next::Continue
                }
                Err(e) => {
                    self.refuse(
                        Some(station),
                        DeadLetterReason::BadFrame,
                        &format!("split packet: {e}"),
                        segment.as_bytes(),
                    );
                    Next::Continue
                }
            }
        } else {
            if !packet.cn.is_data_upload() {
                tracing::debug!(
                    mn = packet.mn,
                    cn = packet.cn.code(),
                    "HJ 212 packet ignored (not a data upload)"
                );
                return Next::Continue;
            }
            if self.upload(station, &packet).await && packet.wants_ack() {
                self.ack(&packet, wr).await;
            }
            Next::Continue
        }
    }

    /// Hands a data upload to the pipeline; true once it is stored or refused for good (so the
    /// station may forget it), false when it should come again.
    async fn upload(&self, station: &Station, packet: &Packet<'_>) -> bool {
        let payload = match convert::telemetry(packet, self.ingress.offset_minutes) {
            Ok(p) => p,
            Err(e) => {
                self.refuse(
                    Some(station),
                    DeadLetterReason::BadFrame,
                    &e.to_string(),
                    packet.cp.as_bytes(),
                );
                return true;
            }
        };
        let (tx, rx) = oneshot::channel();
        let msg = Inbound {
            principal: station.principal.clone(),
            client_id: station.client_id.clone(),
            topic: station.telemetry_topic.clone(),
            payload: Bytes::from(payload),
            received_ms: now_ms(),
            arrived: Instant::now(),
            done: Some(tx),
        };
        if self
            .ingress
            .events
            .send(IngressEvent::Message(msg))
            .await
            .is_err()
        {
            return false;
        }
        matches!(
            rx.await,
            Ok(Disposition::Accepted | Disposition::Rejected(_))
        )
    }

    async fn ack(&self, packet: &Packet<'_>, wr: &mut tokio::net::tcp::OwnedWriteHalf) {
        match data_ack(packet) {
            Ok(reply) => {
                if let Err(e) = wr.write_all(reply.as_bytes()).await {
                    tracing::debug!(peer = %self.peer, "HJ 212 ack not written: {e}");
                } else {
                    self.ingress.metrics.acks.fetch_add(1, Relaxed);
                }
            }
            Err(e) => tracing::warn!(mn = packet.mn, "HJ 212 ack not encodable: {e}"),
        }
    }
}

/// Exports `hub_hj212_*` at scrape time.
#[derive(Debug)]
pub struct Hj212Collector(pub Arc<Hj212Metrics>);

impl prometheus_client::collector::Collector for Hj212Collector {
    fn encode(&self, mut e: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::metrics::gauge::ConstGauge;
        let m = &*self.0;
        crate::metrics::encode_counter(
            &mut e,
            "hj212_connections",
            "HJ 212 connections accepted.",
            m.connections.load(Relaxed),
        )?;
        crate::metrics::encode_one(
            &mut e,
            "hj212_open_connections",
            "HJ 212 connections open now.",
            ConstGauge::new(m.open.load(Relaxed) as i64),
        )?;
        crate::metrics::encode_counter(
            &mut e,
            "hj212_packets",
            "HJ 212 packets with a good frame.",
            m.packets.load(Relaxed),
        )?;
        crate::metrics::encode_counter(
            &mut e,
            "hj212_acks",
            "HJ 212 data acknowledgements (CN 9014) sent.",
            m.acks.load(Relaxed),
        )?;
        crate::metrics::encode_counter(
            &mut e,
            "hj212_closed_for_credentials",
            "HJ 212 connections closed for an unknown MN or a wrong PW.",
            m.closed_for_credentials.load(Relaxed),
        )
    }
}
