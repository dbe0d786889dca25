//! The MQTT uplink: one session to the hub, the durable queue forwarded through it.
//!
//! Two tasks. The *connection* task polls rumqttc's event loop without pause (rumqttc makes
//! progress only while polled), reconnects with backoff and jitter (to the next hub of the list
//! when `[agent] hub` names several: `HubRotation`), and after every ConnAck
//! subscribes to `ack` and `cmd` again and publishes `online` (retained; the will says
//! `offline`). The *forwarder* task sends queue entries with a window of `max_inflight`
//! unacknowledged entries (pipelined, not stop-and-wait), deletes them when the hub's ack
//! covers them, and sends again what is unacked after `ack_timeout` or a reconnect. rumqttc's
//! own QoS 1 retransmission state lives only in memory; the queue on disk is the truth, so a
//! new session starts over from the oldest unacked entry.
//!
//! Live data is not starved by a backlog, nor the backlog by live data: when both wait, entries
//! committed during this session and old work (resends first, then the backlog from oldest to
//! newest) take turns for the free slots of the same window.
//!
//! Camera snapshots (JPEGs, acknowledged by event id) have a window of their own
//! ([`SNAPSHOT_WINDOW`]) so a few large pictures never hold up readings and events: each is
//! sent as soon as it is stored, again after `ack_timeout` or a reconnect, until acked.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use protocols::batch::Ack;
use protocols::messages::{CommandResult, STATUS_OFFLINE, STATUS_ONLINE};
use protocols::topic::Topic;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, Request,
    Subscribe, SubscribeFilter, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::disk::RateLog;
use crate::metrics::Metrics;
use crate::queue::{EntryKind, Queue, StoredEntry};

/// Largest MQTT packet either way: a batch may be up to 1 MiB (`MAX_BATCH_BYTES`), far above
/// rumqttc's 10 KiB default.
pub const MAX_PACKET_BYTES: usize = 2 << 20;

/// Snapshots in flight at once (each up to a few hundred KiB).
pub const SNAPSHOT_WINDOW: usize = 4;

/// How the agent reaches the hub.
#[derive(Clone, Debug)]
pub struct UplinkSettings {
    /// Agent id: client id and user name.
    pub agent: String,
    /// Password; none when `client_cert` identifies the agent.
    pub secret: Option<String>,
    /// The hubs, `mqtt://host:port` or `mqtts://host:port`, in the order the uplink tries them
    /// (at least one; see `HubRotation` for the failover).
    pub hubs: Vec<String>,
    /// MQTT keepalive.
    pub keepalive: Duration,
    /// CA certificates (PEM) for `mqtts://`; system roots when absent.
    pub ca: Option<PathBuf>,
    /// The agent's client certificate and key for `mqtts://`.
    pub client_cert: Option<ClientCert>,
    /// Unacknowledged entries in flight, at most.
    pub max_inflight: usize,
    /// Resend what is unacked after this long.
    pub ack_timeout: Duration,
}

/// The files of the agent's TLS client identity (`[agent] cert` and `key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    /// PEM certificate chain, the agent's certificate first.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// Why the uplink cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The hub URL is not `mqtt://host:port` / `mqtts://host:port`.
    #[error("hub `{0}`: expected mqtt://host:port or mqtts://host:port")]
    BadUrl(String),
    /// No hub at all (`[agent] hub = []`, which config validation refuses).
    #[error("no hub: agent.hub needs at least one mqtt:// or mqtts:// URL")]
    NoHub,
    /// TLS could not be configured.
    #[error("TLS: {0}")]
    Tls(String),
    /// A TLS file (`agent.ca`, `agent.cert`, `agent.key`) cannot be read or is not valid PEM.
    #[error("agent.{key} {}: {source}", path.display())]
    TlsFile {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's or the PEM parser's error.
        source: std::io::Error,
    },
    /// A TLS file holds nothing usable of what it should.
    #[error("agent.{key} {}: no {wanted} in the file", path.display())]
    TlsFileEmpty {
        /// The config key naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What was looked for, in words.
        wanted: &'static str,
    },
    /// A CA certificate rustls cannot use as a trust anchor.
    #[error("agent.ca {}: {source}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// rustls refused the client certificate with its key: a key that does not belong to the
    /// certificate, or a key type the ring provider cannot sign with.
    #[error("agent.cert {} with agent.key {}: {source}", cert.display(), key.display())]
    ClientCert {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
}

/// The topics of one agent.
#[derive(Clone, Debug)]
pub struct Topics {
    /// `v1/agents/{id}/batch`.
    pub batch: String,
    /// `v1/agents/{id}/events`.
    pub events: String,
    /// `v1/agents/{id}/ack`.
    pub ack: String,
    /// `v1/agents/{id}/cmd`.
    pub cmd: String,
    /// `v1/agents/{id}/cmd/result`.
    pub cmd_result: String,
    /// `v1/agents/{id}/health`.
    pub health: String,
    /// `v1/status/{id}`.
    pub status: String,
    agent: String,
}

impl Topics {
    /// The topics of `agent`.
    pub fn new(agent: &str) -> Topics {
        Topics {
            batch: Topic::AgentBatch(agent).to_string(),
            events: Topic::AgentEvents(agent).to_string(),
            ack: Topic::AgentAck(agent).to_string(),
            cmd: Topic::AgentCmd(agent).to_string(),
            cmd_result: Topic::AgentCmdResult(agent).to_string(),
            health: Topic::AgentHealth(agent).to_string(),
            status: Topic::Status(agent).to_string(),
            agent: agent.to_string(),
        }
    }

    /// `v1/agents/{id}/snapshots/{event}`.
    pub fn snapshot(&self, event: &str) -> String {
        Topic::AgentSnapshot {
            agent: &self.agent,
            event,
        }
        .to_string()
    }
}

/// Splits `mqtt[s]://host:port` into (tls, host, port).
pub fn parse_hub_url(url: &str) -> Result<(bool, String, u16), UplinkError> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(UplinkError::BadUrl(url.into()));
    };
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| UplinkError::BadUrl(url.into()))?;
    let port = port.parse().map_err(|_| UplinkError::BadUrl(url.into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(UplinkError::BadUrl(url.into()));
    }
    Ok((tls, host.to_string(), port))
}

/// Reads a PEM file named by `agent.{key}`.
fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, UplinkError> {
    std::fs::read(path).map_err(|source| UplinkError::TlsFile {
        key,
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM file named by `agent.{key}`; at least one.
fn read_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, UplinkError> {
    let pem = read_pem(key, path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| UplinkError::TlsFile {
            key,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(UplinkError::TlsFileEmpty {
            key,
            path: path.to_owned(),
            wanted: "PEM certificate",
        });
    }
    Ok(certs)
}

/// The trust anchors of the PEM file `agent.ca`.
fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, UplinkError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs("ca", path)? {
        roots.add(cert).map_err(|source| UplinkError::BadCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// A rustls client config with the ring provider, trusting `ca` or the system roots, and
/// presenting `client` (certificate chain and key) when the hub asks for a client certificate.
pub fn tls_config(
    ca: Option<&Path>,
    client: Option<&ClientCert>,
) -> Result<rustls::ClientConfig, UplinkError> {
    let roots = match ca {
        Some(path) => ca_roots(path)?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(UplinkError::Tls(
                    "no system CA certificates found; set agent.ca".into(),
                ));
            }
            roots
        }
    };
    client_config(roots, client)
}

/// Reads and checks the TLS files that are named (`ca`, and `cert` with `key`) as
/// [`tls_config`] does, without the system roots (for `check-config` on another machine).
pub fn check_tls_files(ca: Option<&Path>, client: Option<&ClientCert>) -> Result<(), UplinkError> {
    let roots = match ca {
        Some(path) => ca_roots(path)?,
        None => rustls::RootCertStore::empty(),
    };
    client_config(roots, client).map(drop)
}

fn client_config(
    roots: rustls::RootCertStore,
    client: Option<&ClientCert>,
) -> Result<rustls::ClientConfig, UplinkError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UplinkError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let Some(client) = client else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = read_certs("cert", &client.cert)?;
    let pem = read_pem("key", &client.key)?;
    // `private_key` takes the first PKCS#8, PKCS#1 or SEC1 key and skips other sections, so a
    // key file with the certificate in it works too.
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| UplinkError::TlsFile {
            key: "key",
            path: client.key.clone(),
            source,
        })?
        .ok_or_else(|| UplinkError::TlsFileEmpty {
            key: "key",
            path: client.key.clone(),
            wanted: "PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC; unencrypted)",
        })?;
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|source| UplinkError::ClientCert {
            cert: client.cert.clone(),
            key: client.key.clone(),
            source,
        })
}

/// MQTT options for the agent to reach `hub`: client id = user = agent id, password = secret
/// (none with a client certificate and no secret), the `offline` will, a clean session, large
/// packets, TLS for `mqtts://`.
pub fn mqtt_options(s: &UplinkSettings, hub: &str) -> Result<MqttOptions, UplinkError> {
    options_with(s, hub, None)
}

/// The options of every hub of `s.hubs`, same order; the TLS files are read once.
pub fn hub_options(s: &UplinkSettings) -> Result<Vec<MqttOptions>, UplinkError> {
    if s.hubs.is_empty() {
        return Err(UplinkError::NoHub);
    }
    let mut tls = None;
    s.hubs
        .iter()
        .map(|hub| {
            let config = match hub.starts_with("mqtts://") {
                true => match &tls {
                    Some(c) => Some(Arc::clone(c)),
                    None => {
                        let c = Arc::new(tls_config(s.ca.as_deref(), s.client_cert.as_ref())?);
                        tls = Some(c.clone());
                        Some(c)
                    }
                },
                false => None,
            };
            options_with(s, hub, config)
        })
        .collect()
}

fn options_with(
    s: &UplinkSettings,
    hub: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<MqttOptions, UplinkError> {
    let (is_tls, host, port) = parse_hub_url(hub)?;
    let mut o = MqttOptions::new(s.agent.clone(), host, port);
    // rumqttc leaves the password flag off for an empty password, so a certificate-only agent
    // sends its id as user name and no password at all.
    o.set_credentials(s.agent.clone(), s.secret.clone().unwrap_or_default());
    o.set_keep_alive(s.keepalive.max(Duration::from_secs(5)));
    o.set_clean_session(true);
    o.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    o.set_inflight((s.max_inflight + 64).min(u16::MAX as usize) as u16);
    o.set_last_will(LastWill::new(
        Topic::Status(&s.agent).to_string(),
        STATUS_OFFLINE,
        QoS::AtLeastOnce,
        true,
    ));
    if is_tls {
        let config = match tls {
            Some(c) => c,
            None => Arc::new(tls_config(s.ca.as_deref(), s.client_cert.as_ref())?),
        };
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    }
    Ok(o)
}

/// What the connection task tells the forwarder.
#[derive(Debug)]
enum LinkEvent {
    Up,
    Down,
    Ack(Ack),
}

/// A handle on the running uplink: publish results and health, shut down.
#[derive(Clone, Debug)]
pub struct Uplink {
    client: AsyncClient,
    topics: Topics,
    connected: watch::Receiver<bool>,
    snapshots: mpsc::UnboundedSender<String>,
}

/// The running uplink's tasks.
#[derive(Debug)]
pub struct UplinkTasks {
    connection: JoinHandle<()>,
    forwarder: JoinHandle<()>,
}

impl Uplink {
    /// Starts the connection and forwarder tasks. Commands from the hub (raw payloads of the
    /// `cmd` topic) arrive on the returned receiver.
    pub fn start(
        settings: &UplinkSettings,
        queue: Arc<Queue>,
        metrics: Arc<Metrics>,
        committed: watch::Receiver<u64>,
    ) -> Result<(Uplink, UplinkTasks, mpsc::Receiver<Vec<u8>>), UplinkError> {
        let hubs = hub_options(settings)?;
        let (client, mut eventloop) =
            AsyncClient::new(hubs[0].clone(), settings.max_inflight * 2 + 64);
        // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add up to ~100 ms to each small
        // publish/ack exchange (measured: a window of 1 drained 500 readings/s on loopback).
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        net.set_connection_timeout(10);
        eventloop.set_network_options(net);
        let topics = Topics::new(&settings.agent);
        let (link_tx, link_rx) = mpsc::unbounded_channel();
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (connected_tx, connected) = watch::channel(false);
        let (snapshots, snapshots_rx) = mpsc::unbounded_channel();
        let credentials = if settings.secret.is_some() {
            "agent.id and agent.secret"
        } else {
            "agent.id and agent.cert"
        };
        let hubs = settings.hubs.iter().cloned().zip(hubs).collect();
        let connection = tokio::spawn(run_connection(
            eventloop,
            hubs,
            credentials,
            topics.clone(),
            link_tx,
            cmd_tx,
            connected_tx,
            metrics.clone(),
        ));
        let forwarder = Forwarder {
            queue,
            client: client.clone(),
            topics: topics.clone(),
            metrics,
            window: settings.max_inflight.max(1),
            ack_timeout: settings.ack_timeout,
            connected: false,
            inflight: BTreeMap::new(),
            resend: BTreeSet::new(),
            live: VecDeque::new(),
            backlog_next: 0,
            live_from: 0,
            last_committed: 0,
            max_sent: 0,
            live_turn: true,
            snaps: Snapshots::default(),
            queue_log: RateLog::new("queue access"),
        };
        let forwarder = tokio::spawn(forwarder.run(link_rx, committed, snapshots_rx));
        Ok((
            Uplink {
                client,
                topics,
                connected,
                snapshots,
            },
            UplinkTasks {
                connection,
                forwarder,
            },
            cmd_rx,
        ))
    }

    /// The agent's topics.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Whether the session is up.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// The session state as it changes (true while connected).
    pub fn connection(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Waits until the session is up (or `timeout`).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.connected.clone();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until the session is up; false if the uplink stopped first.
    pub async fn until_connected(&self) -> bool {
        let mut rx = self.connected.clone();
        rx.wait_for(|c| *c).await.is_ok()
    }

    /// Tells the forwarder a snapshot was stored in the queue under `event_id`: it is sent at
    /// once if the session is up (and on every reconnect until acknowledged).
    pub fn snapshot_stored(&self, event_id: String) {
        let _ = self.snapshots.send(event_id);
    }

    /// Publishes a command result (QoS 1).
    pub async fn publish_result(&self, result: &CommandResult) {
        let body = serde_json::to_vec(result).unwrap_or_default();
        if let Err(e) = self
            .client
            .publish(
                self.topics.cmd_result.clone(),
                QoS::AtLeastOnce,
                false,
                body,
            )
            .await
        {
            tracing::warn!("cannot queue command result {}: {e}", result.id);
        }
    }

    /// Publishes health (QoS 0; the next one replaces a lost one). Never waits.
    pub fn publish_health(&self, health: &crate::health::AgentHealth) -> bool {
        let body = serde_json::to_vec(health).unwrap_or_default();
        self.client
            .try_publish(self.topics.health.clone(), QoS::AtMostOnce, false, body)
            .is_ok()
    }

    /// Says `offline` (retained), disconnects cleanly and waits for the tasks to end.
    pub async fn shutdown(&self, tasks: UplinkTasks, timeout: Duration) {
        tasks.forwarder.abort();
        if self.is_connected() {
            let _ = self
                .client
                .publish(
                    self.topics.status.clone(),
                    QoS::AtLeastOnce,
                    true,
                    STATUS_OFFLINE,
                )
                .await;
            let _ = self.client.disconnect().await;
        }
        let mut connection = tasks.connection;
        if tokio::time::timeout(timeout, &mut connection)
            .await
            .is_err()
        {
            connection.abort();
        }
    }
}

/// Which hub of the list the next connection attempt goes to, and how long to wait before it.
///
/// Failover order: the first hub, then after every failed attempt or lost connection the next
/// one, round robin (`[A, B, C]`: A, B, C, A, ...). A success does not send the agent back to
/// the first hub: it stays where it is connected until that connection fails.
///
/// Backoff: one delay before *every* attempt, as with a single hub, so a list of dead hubs is
/// never a tight loop and a district's agents that lost one hub together reach the next one
/// spread over the jitter rather than in one burst. But the step grows only once per full
/// pass over the list: with `[A, B]` and A dead after a good session, B is tried after the
/// base delay (0.5 s, halved by the jitter at most) rather than after a step A's failure
/// doubled. A ConnAck resets it. With one hub this is exactly the old per-attempt backoff.
#[derive(Debug)]
struct HubRotation {
    current: usize,
    len: usize,
    /// Failed attempts since the last full pass (or the last success).
    failures_in_pass: usize,
    backoff: Backoff,
}

impl HubRotation {
    fn new(len: usize) -> HubRotation {
        HubRotation {
            current: 0,
            len: len.max(1),
            failures_in_pass: 0,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(60)),
        }
    }

    fn connected(&mut self) {
        self.backoff.reset();
        self.failures_in_pass = 0;
    }

    /// After a failed attempt or a lost connection: the hub to try next and the delay before.
    fn failed(&mut self) -> (usize, Duration) {
        self.current = (self.current + 1) % self.len;
        self.failures_in_pass += 1;
        let delay = if self.failures_in_pass >= self.len {
            self.failures_in_pass = 0;
            self.backoff.next_delay()
        } else {
            self.backoff.delay()
        };
        (self.current, delay)
    }
}

/// The connection task: polls the event loop, turns to the next hub of `hubs` (URL and its
/// options) after each failure (`HubRotation`). `credentials` names the config keys to check
/// when a hub refuses the login.
#[allow(clippy::too_many_arguments)]
async fn run_connection(
    mut eventloop: EventLoop,
    hubs: Vec<(String, MqttOptions)>,
    credentials: &'static str,
    topics: Topics,
    link: mpsc::UnboundedSender<LinkEvent>,
    commands: mpsc::Sender<Vec<u8>>,
    connected: watch::Sender<bool>,
    metrics: Arc<Metrics>,
) {
    let mut rotation = HubRotation::new(hubs.len());
    let url = |i: usize| hubs.get(i).map(|(u, _)| u.as_str()).unwrap_or_default();
    metrics.set_hub(url(0));
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                rotation.connected();
                metrics.mqtt_connects.fetch_add(1, Relaxed);
                metrics.mqtt_connected.store(true, Relaxed);
                tracing::info!(hub = url(rotation.current), "connected to the hub");
                // Straight into the event loop's own queue, ahead of anything else: the request
                // channel may be full of publishes, and this task is the one that drains it.
                // A clean session (every connection, whichever hub) has no subscriptions: they
                // are made again here each time.
                eventloop.pending.push_front(Request::Publish({
                    let mut p = rumqttc::Publish::new(
                        topics.status.clone(),
                        QoS::AtLeastOnce,
                        STATUS_ONLINE,
                    );
                    p.retain = true;
                    p
                }));
                eventloop
                    .pending
                    .push_front(Request::Subscribe(Subscribe::new_many([
                        SubscribeFilter::new(topics.ack.clone(), QoS::AtLeastOnce),
                        SubscribeFilter::new(topics.cmd.clone(), QoS::AtLeastOnce),
                    ])));
                connected.send_replace(true);
                // The forwarder restarts its window from the oldest unacknowledged entry: after
                // a switch, everything the previous hub did not acknowledge goes to this one.
                let _ = link.send(LinkEvent::Up);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic == topics.ack {
                    match serde_json::from_slice::<Ack>(&p.payload) {
                        Ok(ack) => {
                            metrics.acks.fetch_add(1, Relaxed);
                            let _ = link.send(LinkEvent::Ack(ack));
                        }
                        Err(e) => {
                            metrics.acks_invalid.fetch_add(1, Relaxed);
                            tracing::warn!("ignoring an ack that does not parse: {e}");
                        }
                    }
                } else if p.topic == topics.cmd && commands.try_send(p.payload.to_vec()).is_err() {
                    metrics.commands_failed.fetch_add(1, Relaxed);
                    tracing::warn!("command input full; dropping a command");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(s))) => {
                let refused = s
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if refused {
                    tracing::error!(
                        "the hub refused a subscription to {} or {}",
                        topics.ack,
                        topics.cmd
                    );
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                connected.send_replace(false);
                metrics.mqtt_connected.store(false, Relaxed);
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let was_up = *connected.borrow();
                connected.send_replace(false);
                metrics.mqtt_connected.store(false, Relaxed);
                metrics.mqtt_errors.fetch_add(1, Relaxed);
                if was_up {
                    let _ = link.send(LinkEvent::Down);
                }
                let failed = rotation.current;
                let (next, delay) = rotation.failed();
                let hub = url(failed);
                let then = match hubs.get(next) {
                    Some((to, options)) if next != failed => {
                        // rumqttc keeps one broker address in its options, read at each
                        // connect; the event loop (its request channel, shared with the
                        // forwarder, health and commands) stays. What it still holds for the
                        // old hub is dropped when the new hub's ConnAck starts a clean session.
                        eventloop.mqtt_options = options.clone();
                        metrics.hub_switches.fetch_add(1, Relaxed);
                        metrics.set_hub(to);
                        format!("switching to hub {to} in {delay:?}")
                    }
                    _ => format!("retry in {delay:?}"),
                };
                match &e {
                    rumqttc::ConnectionError::ConnectionRefused(code) => tracing::error!(
                        hub,
                        "the hub refused the connection ({code:?}); check {credentials}; {then}"
                    ),
                    _ => tracing::warn!(hub, "hub connection: {e}; {then}"),
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// The forwarder's state: what is in flight, what is waiting, in which order.
struct Forwarder {
    queue: Arc<Queue>,
    client: AsyncClient,
    topics: Topics,
    metrics: Arc<Metrics>,
    window: usize,
    ack_timeout: Duration,
    connected: bool,
    /// Sent, unacked: seq -> when sent.
    inflight: BTreeMap<u64, Instant>,
    /// Sent, timed out, to send again.
    resend: BTreeSet<u64>,
    /// Committed while connected, not yet sent (go first).
    live: VecDeque<u64>,
    /// Next seq of the backlog to send (entries older than `live_from`).
    backlog_next: u64,
    /// First seq committed during this session.
    live_from: u64,
    last_committed: u64,
    /// Highest seq ever sent, to count re-sends.
    max_sent: u64,
    /// Whose turn it is when live and old work both wait.
    live_turn: bool,
    snaps: Snapshots,
    /// Queue errors (a failing disk) are summed up, not logged per ack and per read.
    queue_log: RateLog,
}

/// Snapshots to send and in flight, by event id.
#[derive(Default)]
struct Snapshots {
    /// To send, in order.
    waiting: VecDeque<String>,
    /// Sent, unacked: id -> when sent.
    inflight: BTreeMap<String, Instant>,
    /// Every id waiting or in flight.
    known: std::collections::HashSet<String>,
}

impl Snapshots {
    fn clear(&mut self) {
        self.waiting.clear();
        self.inflight.clear();
        self.known.clear();
    }

    fn add(&mut self, id: String) {
        if self.known.insert(id.clone()) {
            self.waiting.push_back(id);
        }
    }
}

impl Forwarder {
    async fn run(
        mut self,
        mut link: mpsc::UnboundedReceiver<LinkEvent>,
        mut committed: watch::Receiver<u64>,
        mut snapshots: mpsc::UnboundedReceiver<String>,
    ) {
        let check_every = (self.ack_timeout / 4).max(Duration::from_millis(50));
        let mut ticker = tokio::time::interval(check_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batcher_alive = true;
        loop {
            tokio::select! {
                ev = link.recv() => match ev {
                    Some(LinkEvent::Up) => self.on_up().await,
                    Some(LinkEvent::Down) => self.on_down(),
                    Some(LinkEvent::Ack(ack)) => self.on_ack(ack).await,
                    None => return,
                },
                changed = committed.changed(), if batcher_alive => {
                    if changed.is_err() {
                        // The batcher is gone (shutdown); keep forwarding what is queued.
                        batcher_alive = false;
                        continue;
                    }
                    let seq = *committed.borrow_and_update();
                    if self.connected {
                        for s in self.last_committed.max(self.live_from.saturating_sub(1)) + 1..=seq {
                            self.live.push_back(s);
                        }
                    }
                    self.last_committed = self.last_committed.max(seq);
                }
                Some(id) = snapshots.recv() => {
                    // While down, the reconnect reloads every stored snapshot anyway.
                    if self.connected {
                        self.snaps.add(id);
                    }
                }
                _ = ticker.tick() => self.check_timeouts(),
            }
            self.pump().await;
            self.pump_snapshots().await;
        }
    }

    async fn stats(&self) -> Option<crate::queue::QueueStats> {
        let q = self.queue.clone();
        match tokio::task::spawn_blocking(move || q.stats()).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                self.queue_log.failed(&e);
                None
            }
            Err(_) => None,
        }
    }

    async fn on_up(&mut self) {
        let Some(s) = self.stats().await else { return };
        self.inflight.clear();
        self.resend.clear();
        self.live.clear();
        // A queue that cannot be read now (a full disk) does not say where its backlog starts:
        // start from the first seq, which the first read after it recovers skips to the
        // oldest entry, rather than leaving the backlog unsent until the next reconnect.
        self.backlog_next = match s.oldest_seq {
            Some(oldest) => oldest,
            None if s.depth > 0 => 1,
            None => s.next_seq,
        };
        self.live_from = s.next_seq;
        self.last_committed = s.next_seq - 1;
        self.connected = true;
        self.metrics.inflight.store(0, Relaxed);
        self.snaps.clear();
        let q = self.queue.clone();
        match tokio::task::spawn_blocking(move || q.snapshot_ids()).await {
            Ok(Ok(ids)) => ids.into_iter().for_each(|id| self.snaps.add(id)),
            Ok(Err(e)) => {
                self.queue_log
                    .failed(&format_args!("cannot list snapshots: {e}"));
            }
            Err(_) => {}
        }
        if s.depth > 0 {
            tracing::info!(
                entries = s.depth,
                readings = s.readings,
                "sending the backlog"
            );
        }
    }

    fn on_down(&mut self) {
        self.connected = false;
        self.snaps.clear();
        self.inflight.clear();
        self.resend.clear();
        self.live.clear();
        self.metrics.inflight.store(0, Relaxed);
    }

    async fn on_ack(&mut self, ack: Ack) {
        let q = self.queue.clone();
        let ack = Arc::new(ack);
        let a2 = ack.clone();
        let outcome = match tokio::task::spawn_blocking(move || q.ack(&a2)).await {
            Ok(Ok(o)) => {
                self.queue_log.ok();
                o
            }
            Ok(Err(e)) => {
                // The entries stay in flight: their ack timeout sends them again, and the
                // hub's ack of the re-send deletes them once the disk works.
                self.queue_log
                    .failed(&format_args!("cannot apply an ack: {e}"));
                return;
            }
            Err(_) => return,
        };
        self.metrics
            .snapshots_acked
            .fetch_add(outcome.snapshots_deleted, Relaxed);
        for id in &ack.snapshots {
            if self.snaps.inflight.remove(id).is_some() {
                self.snaps.known.remove(id);
            } else if self.snaps.known.remove(id) {
                self.snaps.waiting.retain(|w| w != id);
            }
        }
        if outcome.foreign && !ack.seqs.is_empty() {
            self.metrics.acks_foreign.fetch_add(1, Relaxed);
            tracing::warn!(
                stream = ack.stream,
                "ignoring an ack for another queue stream"
            );
            return;
        }
        self.metrics
            .entries_acked
            .fetch_add(outcome.deleted, Relaxed);
        for &(a, b) in &ack.seqs {
            if a > b {
                continue;
            }
            let done: Vec<u64> = self.inflight.range(a..=b).map(|(&s, _)| s).collect();
            for s in done {
                self.inflight.remove(&s);
            }
            let done: Vec<u64> = self.resend.range(a..=b).copied().collect();
            for s in done {
                self.resend.remove(&s);
            }
        }
        self.metrics
            .inflight
            .store(self.inflight.len() as u64, Relaxed);
    }

    fn check_timeouts(&mut self) {
        let now = Instant::now();
        let late: Vec<String> = self
            .snaps
            .inflight
            .iter()
            .filter(|(_, sent)| now.duration_since(**sent) >= self.ack_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in late.into_iter().rev() {
            self.snaps.inflight.remove(&id);
            self.snaps.waiting.push_front(id);
        }
        let expired: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, sent)| now.duration_since(**sent) >= self.ack_timeout)
            .map(|(&s, _)| s)
            .collect();
        if expired.is_empty() {
            return;
        }
        tracing::info!(
            entries = expired.len(),
            first = expired[0],
            "no ack within {:?}; sending again",
            self.ack_timeout
        );
        for s in expired {
            self.inflight.remove(&s);
            self.resend.insert(s);
        }
        self.metrics
            .inflight
            .store(self.inflight.len() as u64, Relaxed);
    }

    /// Entries in `from..until`; `None` when the queue cannot be read now (a failing disk):
    /// the caller keeps the seqs for a later try instead of treating them as gone.
    async fn read(&self, from: u64, until: u64, limit: usize) -> Option<Vec<StoredEntry>> {
        let q = self.queue.clone();
        match tokio::task::spawn_blocking(move || q.read_range(from, until, limit)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                self.queue_log
                    .failed(&format_args!("cannot read entries {from}..{until}: {e}"));
                None
            }
            Err(_) => None,
        }
    }

    /// Fills the window: live first, then resends, then the backlog.
    async fn pump(&mut self) {
        while self.connected && self.inflight.len() < self.window {
            let room = self.window - self.inflight.len();
            // Live and old work alternate when both wait: live data is never stuck behind a
            // backlog, and a backlog (or resends to a slow hub) is never starved by live data.
            let old_waiting = !self.resend.is_empty() || self.backlog_next < self.live_from;
            let take_live = !self.live.is_empty() && (self.live_turn || !old_waiting);
            if !self.live.is_empty() && old_waiting {
                self.live_turn = !self.live_turn;
            }
            // A failed read leaves the seq where it was; the next tick tries again.
            let entries = if take_live {
                let s = self.live.pop_front().unwrap_or_default();
                let Some(got) = self.read(s, s + 1, 1).await else {
                    self.live.push_front(s);
                    break;
                };
                got
            } else if let Some(s) = self.resend.pop_first() {
                let Some(got) = self.read(s, s + 1, 1).await else {
                    self.resend.insert(s);
                    break;
                };
                got
            } else if self.backlog_next < self.live_from {
                let Some(got) = self.read(self.backlog_next, self.live_from, room).await else {
                    break;
                };
                self.backlog_next = got.last().map(|e| e.seq + 1).unwrap_or(self.live_from);
                got
            } else {
                break;
            };
            for e in entries {
                if !self.send(e).await {
                    return;
                }
            }
        }
        self.metrics
            .inflight
            .store(self.inflight.len() as u64, Relaxed);
    }

    /// Fills the snapshot window.
    async fn pump_snapshots(&mut self) {
        while self.connected && self.snaps.inflight.len() < SNAPSHOT_WINDOW {
            let Some(id) = self.snaps.waiting.pop_front() else {
                break;
            };
            let q = self.queue.clone();
            let key = id.clone();
            let jpeg = match tokio::task::spawn_blocking(move || q.snapshot(&key)).await {
                Ok(Ok(Some(j))) => j,
                Ok(Ok(None)) => {
                    // Acked or dropped for the budget meanwhile.
                    self.snaps.known.remove(&id);
                    continue;
                }
                Ok(Err(e)) if e.is_disk_trouble() => {
                    // Kept for a later try: the disk, not the snapshot, is the problem.
                    self.queue_log
                        .failed(&format_args!("cannot read snapshot {id}: {e}"));
                    self.snaps.waiting.push_front(id);
                    return;
                }
                Ok(Err(e)) => {
                    tracing::error!("queue: cannot read snapshot {id}: {e}");
                    self.snaps.known.remove(&id);
                    continue;
                }
                Err(_) => return,
            };
            let topic = self.topics.snapshot(&id);
            if let Err(err) = self
                .client
                .publish(topic, QoS::AtLeastOnce, false, jpeg)
                .await
            {
                tracing::warn!("cannot hand snapshot {id} to the MQTT client: {err}");
                self.snaps.waiting.push_front(id);
                return;
            }
            self.metrics.snapshots_sent.fetch_add(1, Relaxed);
            self.snaps.inflight.insert(id, Instant::now());
        }
    }

    async fn send(&mut self, e: StoredEntry) -> bool {
        let topic = match e.kind {
            EntryKind::Batch => self.topics.batch.clone(),
            EntryKind::Event => self.topics.events.clone(),
        };
        if let Err(err) = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, e.payload)
            .await
        {
            tracing::warn!("cannot hand entry {} to the MQTT client: {err}", e.seq);
            return false;
        }
        self.metrics.entries_sent.fetch_add(1, Relaxed);
        if e.seq <= self.max_sent {
            self.metrics.entries_resent.fetch_add(1, Relaxed);
        }
        self.max_sent = self.max_sent.max(e.seq);
        self.inflight.insert(e.seq, Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls() {
        assert_eq!(
            parse_hub_url("mqtt://127.0.0.1:1883").unwrap(),
            (false, "127.0.0.1".into(), 1883)
        );
        assert_eq!(
            parse_hub_url("mqtts://hub.example:8883").unwrap(),
            (true, "hub.example".into(), 8883)
        );
        assert_eq!(
            parse_hub_url("mqtt://[::1]:1883").unwrap(),
            (false, "::1".into(), 1883)
        );
        for bad in ["http://x:1", "mqtt://x", "mqtt://:1", "mqtt://x:port"] {
            assert!(parse_hub_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_carry_identity_will_and_packet_size() {
        let s = UplinkSettings {
            agent: "AG-0001".into(),
            secret: Some("s3cret".into()),
            hubs: vec!["mqtt://127.0.0.1:1883".into()],
            keepalive: Duration::from_secs(30),
            ca: None,
            client_cert: None,
            max_inflight: 32,
            ack_timeout: Duration::from_secs(30),
        };
        let o = mqtt_options(&s, &s.hubs[0]).unwrap();
        assert_eq!(o.client_id(), "AG-0001");
        let login = o.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("AG-0001", "s3cret")
        );
        let will = o.last_will().unwrap();
        assert_eq!(will.topic, "v1/status/AG-0001");
        assert_eq!(&will.message[..], b"offline");
        assert!(will.retain);
        assert_eq!(o.max_packet_size(), MAX_PACKET_BYTES);
    }

    #[test]
    fn every_hub_of_the_list_gets_its_options_in_order() {
        let s = UplinkSettings {
            agent: "AG-0001".into(),
            secret: Some("s3cret".into()),
            hubs: vec!["mqtt://10.0.0.1:1883".into(), "mqtt://[::1]:1884".into()],
            keepalive: Duration::from_secs(30),
            ca: None,
            client_cert: None,
            max_inflight: 32,
            ack_timeout: Duration::from_secs(30),
        };
        let o = hub_options(&s).unwrap();
        let addrs: Vec<_> = o.iter().map(|o| o.broker_address()).collect();
        assert_eq!(
            addrs,
            [("10.0.0.1".to_string(), 1883), ("::1".to_string(), 1884)]
        );
        assert!(o.iter().all(|o| o.client_id() == "AG-0001"));
        let bad = UplinkSettings {
            hubs: vec!["mqtt://10.0.0.1:1883".into(), "mqtt://nohost".into()],
            ..s.clone()
        };
        assert!(matches!(hub_options(&bad), Err(UplinkError::BadUrl(u)) if u == "mqtt://nohost"));
        let none = UplinkSettings { hubs: vec![], ..s };
        assert!(matches!(hub_options(&none), Err(UplinkError::NoHub)));
    }

    #[test]
    fn hubs_rotate_round_robin_and_back_off_once_per_pass() {
        let mut r = HubRotation::new(3);
        let mut seen = Vec::new();
        for _ in 0..6 {
            let step = r.backoff.step();
            let (next, delay) = r.failed();
            assert!(delay >= step / 2 && delay <= step, "{delay:?} for {step:?}");
            seen.push((next, step.as_millis()));
        }
        assert_eq!(
            seen,
            [
                (1, 500),
                (2, 500),
                (0, 500),
                (1, 1000),
                (2, 1000),
                (0, 1000)
            ]
        );
        // Connected to hub 0: the backoff starts over, and a loss moves on to hub 1.
        r.connected();
        assert_eq!(r.backoff.step(), Duration::from_millis(500));
        assert_eq!(r.failed().0, 1);
        assert_eq!(r.backoff.step(), Duration::from_millis(500));

        // One hub: the step grows at every failure, as before lists.
        let mut one = HubRotation::new(1);
        let steps: Vec<u128> = (0..3)
            .map(|_| {
                let s = one.backoff.step().as_millis();
                assert_eq!(one.failed().0, 0);
                s
            })
            .collect();
        assert_eq!(steps, [500, 1000, 2000]);
    }

    #[test]
    fn without_a_secret_the_agent_sends_its_id_and_no_password() {
        let s = UplinkSettings {
            agent: "AG-0001".into(),
            secret: None,
            hubs: vec!["mqtt://127.0.0.1:1883".into()],
            keepalive: Duration::from_secs(30),
            ca: None,
            client_cert: None,
            max_inflight: 32,
            ack_timeout: Duration::from_secs(30),
        };
        let o = mqtt_options(&s, &s.hubs[0]).unwrap();
        let login = o.credentials().unwrap();
        assert_eq!(login.username, "AG-0001");
        // rumqttc sets the password flag only for a non-empty password.
        assert!(login.password.is_empty());
    }

    #[test]
    fn unreadable_or_empty_client_files_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        let garbage = d.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let bad_base64 = d.path().join("bad.pem");
        std::fs::write(
            &bad_base64,
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let client = |cert: &Path| ClientCert {
            cert: cert.to_owned(),
            key: d.path().join("none.key"),
        };
        let e = check_tls_files(None, Some(&client(&d.path().join("none.crt")))).unwrap_err();
        assert!(
            matches!(e, UplinkError::TlsFile { key: "cert", .. }),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("agent.cert "), "{e}");
        assert!(e.to_string().contains("none.crt"), "{e}");
        let e = check_tls_files(None, Some(&client(&garbage))).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "agent.cert {}: no PEM certificate in the file",
                garbage.display()
            )
        );
        let e = check_tls_files(None, Some(&client(&bad_base64))).unwrap_err();
        assert!(
            matches!(e, UplinkError::TlsFile { key: "cert", .. }),
            "{e:?}"
        );
        let e = check_tls_files(Some(&garbage), None).unwrap_err();
        assert!(e.to_string().starts_with("agent.ca "), "{e}");
    }

    #[test]
    fn tls_with_a_missing_ca_file_is_a_clear_error() {
        let e = tls_config(Some(Path::new("/nonexistent/ca.pem")), None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
