//! An embeddable MQTT broker (MQTT 3.1.1 and 5), the hub's ingress.
//!
//! Every client is authenticated through an [`Authenticator`]; every publish and subscribe is
//! checked by an [`AccessPolicy`] (the hub's is [`ContractAccess`], the rules of
//! `protocols::access`); authorized publishes go to the pipeline as [`IngressEvent::Message`]
//! and a QoS 1/2 publish is acknowledged only when the pipeline answers its `done` (in order
//! of receipt, with many in flight). The [`BrokerHandle`] routes the hub's own messages to
//! subscribers as a [`Publisher`]. Why the hub embeds its own broker, and what it measured:
//! `docs/decisions/0003-mqtt-ingress.md`.
//!
//! ```no_run
//! # async fn f<A: mqtt_broker::ingress::Authenticator>(auth: A) -> Result<(), Box<dyn std::error::Error>> {
//! use mqtt_broker::{Broker, BrokerConfig};
//! let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
//! let config = BrokerConfig::new(vec!["0.0.0.0:1883".parse()?, "[::]:1883".parse()?]);
//! let broker = Broker::start(config, auth, tx).await?;
//! // ... the pipeline drains `rx`; the hub publishes through `broker` (a `Publisher`) ...
//! broker.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `lib.rs` (here): [`BrokerConfig`], [`Broker::start`], the listeners and accept loop, and
//!   [`BrokerHandle`] (the hub's [`Publisher`], metrics, shutdown).
//! - [`ingress`]: the seam between any ingress and the application: [`IngressEvent`]s in
//!   ([`Inbound`](ingress::Inbound) messages with their `done`, refusals, connects and
//!   disconnects), the [`Disposition`](ingress::Disposition) the application answers, the
//!   [`Publisher`] out and the [`Authenticator`] it provides. The application depends on this
//!   module only, never on the broker's inside.
//! - `access.rs`: the [`AccessPolicy`] asked on every PUBLISH, SUBSCRIBE and will;
//!   [`ContractAccess`] and the client id rule [`client_id_allowed`].
//! - `message.rs`: a routed message and one delivery of it, the types router, sessions and
//!   connections share.
//! - `router.rs`: the subscription trie (`+`, `#`, `$share/group/`), retained messages, and
//!   routing a message into the outbox of each matching session without waiting for any.
//! - `session.rs`: what a persistent session keeps between connections (queued and in-flight
//!   deliveries with their packet ids, QoS 2 ids received), I/O-free and unit-tested.
//! - `registry.rs`: client id -> session: takeover of a live connection, resume, detach and
//!   expiry.
//! - `persist.rs`: persistent sessions and retained messages in a redb file
//!   (`BrokerConfig::state_dir`), written by a task from what changed, restored at start.
//! - `connection/`: one task pair per client.
//!   - `mod.rs`: wires the pieces below and cleans up after a connection (will, detach).
//!   - `admission.rs`: CONNECT: protocol level, authentication, client id, will, refusals.
//!   - `reader.rs`: reads packets and dispatches them (publish, subscribe, acknowledgements).
//!   - `writer.rs`: gathers acknowledgements, control packets and deliveries into few writes;
//!     disconnects stuck subscribers.
//!   - `state.rs`: the connection's protocol state without I/O (what CONNECT settled, topic
//!     aliases, keep alive, session expiry, the in-order acknowledgement queue), unit-tested.
//! - [`codec`]: the MQTT 3.1.1/5 wire format, server side: types in `mod.rs`, `decode.rs`,
//!   `encode.rs`, and the primitives in `wire.rs`. Fuzzed by `fuzz/fuzz_targets/mqtt_codec.rs`.
//! - `tls.rs`: MQTT over TLS: the handshake in the connection's task, the verified client
//!   certificate handed on to admission.
//! - [`metrics`]: the counters and gauges, rendered as Prometheus text.
//!
//! Dependencies run one way: `connection` uses `registry`, `session`, `router` and `codec`;
//! `router` and `session` know nothing of sockets; `codec` knows nothing of the rest.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::ingress::{Authenticator, IngressEvent, Outbound, Publisher};

mod access;
pub mod codec;
mod connection;
pub mod ingress;
mod message;
pub mod metrics;
mod persist;
mod registry;
mod router;
mod session;
mod tls;

pub use access::{AccessPolicy, ContractAccess, client_id_allowed};
use message::Message;
pub use metrics::{Metrics, MetricsCollector, RefuseReason};
pub use persist::PersistError;
use registry::Slot;
use router::Router;

/// How the broker runs. [`BrokerConfig::new`] gives the defaults for a list of addresses.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Addresses to listen on (IPv6 sockets are v6-only, so `0.0.0.0:P` and `[::]:P` coexist).
    pub listen: Vec<SocketAddr>,
    /// Largest packet accepted from a client, bytes; larger closes the connection.
    pub max_packet_bytes: usize,
    /// How long a new connection may take to send CONNECT.
    pub connect_timeout: Duration,
    /// QoS 1/2 publishes a client may have waiting for the pipeline (MQTT 5 receive maximum).
    pub max_inflight_in: u16,
    /// QoS 1/2 messages sent to a client and not yet acknowledged.
    pub max_inflight_out: u16,
    /// Messages waiting for each session (connected or offline); beyond, messages are dropped
    /// and counted.
    pub max_queued: usize,
    /// A subscriber that acknowledges nothing, or whose socket accepts nothing, for this long
    /// while its window is full is disconnected (and counted).
    pub stuck_timeout: Duration,
    /// Longest a disconnected persistent session is kept (MQTT 3.1.1 clean session = 0 gets
    /// this; MQTT 5 session expiry is capped to it).
    pub max_session_expiry: Duration,
    /// Topic aliases an MQTT 5 client may use.
    pub topic_alias_max: u16,
    /// Longest keep alive granted to an MQTT 5 client (a longer one, or 0, is replaced and the
    /// client told so in CONNACK). `None` accepts the client's, 0 (no keep alive) included.
    pub max_keep_alive: Option<u16>,
    /// Publishes per second a client may sustain (bursts of two seconds' worth pass); 0 is no
    /// limit. Beyond it the client is throttled (its socket is not read), counted.
    pub max_messages_per_s: u32,
    /// Publish bytes (topic and payload) per second a client may sustain; 0 is no limit.
    pub max_bytes_per_s: u64,
    /// A client over its rate without pause for this long is disconnected (MQTT 5: 0x96
    /// "Message rate too high"), counted and named in the log.
    pub throttle_grace: Duration,
    /// Subscriptions a session may hold; 0 is no limit. More are refused in SUBACK (0x97).
    pub max_subscriptions: usize,
    /// Open connections (admitted or still connecting) the broker serves; 0 is no limit.
    /// Beyond it a new client is answered CONNACK 0x97 "Quota exceeded" (MQTT 5) or 3
    /// "Server unavailable" (3.1.1) and closed, counted as `server_busy`: the last resort, so
    /// that the process keeps file descriptors for its store and API and the device backs off
    /// knowingly instead of the kernel dropping its handshake without a word.
    pub max_connections: usize,
    /// Where persistent sessions and retained messages are kept across restarts
    /// (`broker.redb`); `None` keeps them in memory only.
    pub state_dir: Option<std::path::PathBuf>,
    /// Addresses for MQTT over TLS (8883 by convention); served with `tls`.
    pub tls_listen: Vec<SocketAddr>,
    /// The TLS server side (certificate chain, key, client certificate verifier) of
    /// `tls_listen`. A client certificate it verifies goes to the [`Authenticator`].
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl BrokerConfig {
    /// Defaults for the given addresses.
    pub fn new(listen: Vec<SocketAddr>) -> BrokerConfig {
        BrokerConfig {
            listen,
            max_packet_bytes: 2 << 20,
            connect_timeout: Duration::from_secs(10),
            max_inflight_in: 256,
            max_inflight_out: 256,
            max_queued: 10_000,
            stuck_timeout: Duration::from_secs(30),
            max_session_expiry: Duration::from_secs(24 * 3600),
            topic_alias_max: 64,
            max_keep_alive: None,
            tls_listen: Vec::new(),
            tls: None,
            max_messages_per_s: 0,
            max_bytes_per_s: 0,
            throttle_grace: Duration::from_secs(10),
            max_subscriptions: 0,
            max_connections: 0,
            state_dir: None,
        }
    }
}

/// Why the broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// An address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// No address to listen on.
    #[error("no MQTT listen address")]
    NoListener,
    /// The state file of sessions and retained messages could not be used.
    #[error(transparent)]
    State(#[from] persist::PersistError),
    /// TLS addresses without a TLS configuration.
    #[error("MQTT TLS listen addresses given without a TLS certificate and key")]
    NoTlsConfig,
}

/// State shared by the listeners, connections and the handle.
pub(crate) struct Core {
    /// The configuration the broker started with.
    pub config: BrokerConfig,
    /// Who may publish and subscribe what.
    pub access: Box<dyn AccessPolicy>,
    /// Subscriptions and retained messages.
    pub router: Router,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// The bounded hand-off to the application (full: connections stop reading).
    pub events: mpsc::Sender<IngressEvent>,
    /// The session registry (see [`registry`]).
    pub sessions: Mutex<HashMap<Arc<str>, Slot>>,
    /// Becomes true when the broker shuts down.
    pub shutdown: watch::Sender<bool>,
    /// Source of connection generations and of assigned client id suffixes.
    pub generation: AtomicU64,
    /// Connection tasks alive (any phase), for a clean shutdown.
    pub live: AtomicUsize,
    /// Notified when `live` drops to zero.
    pub live_changed: Notify,
    /// The state file of persistent sessions and retained messages, if any.
    pub persist: Option<Arc<persist::Persist>>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("config", &self.config)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Routes a message and keeps it when retained.
    pub fn publish(&self, msg: &Arc<Message>) {
        if msg.retain {
            self.router.retain(msg);
        }
        self.router.route(msg);
    }
}

/// The embedded broker.
#[derive(Debug)]
pub struct Broker;

impl Broker {
    /// Binds every address of `config` and starts serving, with the contract's access rules.
    /// Inbound messages and connection events go to `events` (bounded: when it is full,
    /// connections stop reading).
    pub async fn start<A: Authenticator>(
        config: BrokerConfig,
        authenticator: A,
        events: mpsc::Sender<IngressEvent>,
    ) -> Result<BrokerHandle, BrokerError> {
        Broker::start_with_access(config, authenticator, ContractAccess, events).await
    }

    /// [`Broker::start`] with another access policy (conformance test runs only).
    pub async fn start_with_access<A: Authenticator, P: AccessPolicy>(
        config: BrokerConfig,
        authenticator: A,
        access: P,
        events: mpsc::Sender<IngressEvent>,
    ) -> Result<BrokerHandle, BrokerError> {
        if config.listen.is_empty() && config.tls_listen.is_empty() {
            return Err(BrokerError::NoListener);
        }
        let acceptor = match (&config.tls, config.tls_listen.is_empty()) {
            (_, true) => None,
            (Some(tls), false) => Some(tokio_rustls::TlsAcceptor::from(tls.clone())),
            (None, false) => return Err(BrokerError::NoTlsConfig),
        };
        // Plain listeners first, then TLS ones, each with its acceptor.
        let mut listeners = Vec::new();
        let plain = config.listen.iter().map(|a| (*a, None));
        let tls = config.tls_listen.iter().map(|a| (*a, acceptor.clone()));
        for (addr, acceptor) in plain.chain(tls) {
            let l = bind_listener(addr).map_err(|source| BrokerError::Bind { addr, source })?;
            listeners.push((addr, l, acceptor));
        }
        let metrics = Arc::new(Metrics::default());
        let persist = match &config.state_dir {
            Some(dir) => Some(Arc::new(persist::Persist::open(dir, metrics.clone())?)),
            None => None,
        };
        let (shutdown, _) = watch::channel(false);
        let core = Arc::new(Core {
            router: Router::new(metrics.clone(), config.max_queued, persist.clone()),
            config,
            access: Box::new(access),
            metrics,
            events,
            sessions: Mutex::new(HashMap::new()),
            shutdown,
            generation: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            live_changed: Notify::new(),
            persist: persist.clone(),
        });
        let mut state_writer = None;
        if let Some(p) = persist {
            p.restore(&core)?;
            let stop = core.shutdown.subscribe();
            state_writer = Some(tokio::spawn(p.run(core.clone(), stop)));
        }
        let auth = Arc::new(authenticator);
        let mut addrs = Vec::new();
        let mut tls_addrs = Vec::new();
        let mut tasks = Vec::new();
        for (asked, l, acceptor) in listeners {
            let addr = l.local_addr().map_err(|source| BrokerError::Bind {
                addr: asked,
                source,
            })?;
            if acceptor.is_some() {
                tracing::info!(%addr, "MQTT over TLS listening");
                tls_addrs.push(addr);
            } else {
                tracing::info!(%addr, "MQTT listening");
                addrs.push(addr);
            }
            tasks.push(tokio::spawn(accept_loop(
                core.clone(),
                auth.clone(),
                l,
                acceptor,
            )));
        }
        Ok(BrokerHandle {
            core,
            addrs: addrs.into(),
            tls_addrs: tls_addrs.into(),
            listeners: Arc::new(Mutex::new(tasks)),
            state_writer: Arc::new(Mutex::new(state_writer)),
        })
    }
}

/// Binds one listening socket the way the broker does (other TCP ingresses of an application
/// use it too): IPv6 sockets are v6-only so that `[::]:P` and `0.0.0.0:P` coexist on every
/// platform; a backlog of [`LISTEN_BACKLOG`] for connection storms.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    warn_if_backlog_capped();
    TcpListener::from_std(s.into())
}

/// The listen backlog asked for. Thousands of devices reconnect at once after a hub restart
/// or a cell outage; when the accept queue overflows the kernel drops their handshakes and
/// each retries only after 1 s, 3 s, 7 s (measured: a queue of 1024 gave connect p99 of 2 s
/// at 16,000 devices, `docs/PERFORMANCE.md`). Linux caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: i32 = 65_535;

/// Says once when `net.core.somaxconn` caps the backlog well below [`LISTEN_BACKLOG`].
fn warn_if_backlog_capped() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(cap) = cap
            && cap < 16_384
        {
            tracing::info!(
                somaxconn = cap,
                "listen backlog capped by net.core.somaxconn; raise it for connection storms \
                 of more than a few thousand devices"
            );
        }
    });
}

async fn accept_loop<A: Authenticator>(
    core: Arc<Core>,
    auth: Arc<A>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut stop = core.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    spawn_connection(&core, &auth, &tls, stream, peer);
                    // A storm fills the accept queue faster than one accept per wakeup
                    // empties it: take everything queued now, so the kernel never drops a
                    // handshake while the hub has time (bounded, so shutdown is seen).
                    for _ in 0..ACCEPT_BURST {
                        match poll_accept_now(&listener) {
                            Some(Ok((stream, peer))) => {
                                spawn_connection(&core, &auth, &tls, stream, peer);
                            }
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "MQTT accept failed");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "MQTT accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Connections accepted in one go after a wakeup.
const ACCEPT_BURST: usize = 256;

/// A connection already waiting in the accept queue, without waiting for one.
fn poll_accept_now(
    listener: &TcpListener,
) -> Option<std::io::Result<(tokio::net::TcpStream, SocketAddr)>> {
    // Only looks: the accept loop's next `accept()` registers its own waker again.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match listener.poll_accept(&mut cx) {
        std::task::Poll::Ready(r) => Some(r),
        std::task::Poll::Pending => None,
    }
}

/// Serves an accepted connection in a task of its own.
fn spawn_connection<A: Authenticator>(
    core: &Arc<Core>,
    auth: &Arc<A>,
    tls: &Option<tokio_rustls::TlsAcceptor>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    core.metrics.tcp_accepted.fetch_add(1, Ordering::Relaxed);
    let open = core.live.fetch_add(1, Ordering::SeqCst);
    let limit = core.config.max_connections;
    let over_limit = limit > 0 && open >= limit;
    let core = core.clone();
    let auth = auth.clone();
    let tls = tls.clone();
    tokio::spawn(async move {
        let _ = stream.set_nodelay(true);
        // The TLS handshake runs here, in the connection's task, so a slow
        // or hostile client never holds up the accept loop.
        let link = match &tls {
            None => Some(connection::Link::plain(stream)),
            Some(acceptor) => {
                let mut stop = core.shutdown.subscribe();
                // Boxed, like the other steps around the reader's loop: the task of an idle
                // connection keeps only the state of the step it is in.
                tokio::select! {
                    l = Box::pin(tls::handshake(&core, acceptor, stream, peer)) => l,
                    _ = stopped(&mut stop) => None,
                }
            }
        };
        if let Some(link) = link {
            connection::serve(core.clone(), auth, link, peer, over_limit).await;
        }
        if core.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            core.live_changed.notify_waiters();
        }
    });
}

/// Waits until the broker shuts down.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The running broker: the hub's [`Publisher`], its metrics, its shutdown. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BrokerHandle {
    core: Arc<Core>,
    addrs: Arc<[SocketAddr]>,
    tls_addrs: Arc<[SocketAddr]>,
    listeners: Arc<Mutex<Vec<JoinHandle<()>>>>,
    state_writer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl BrokerHandle {
    /// The bound addresses, in the order of the config (with real ports when 0 was asked).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The bound MQTT over TLS addresses, in the order of the config.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// The ingress metrics (export them on /metrics with a [`MetricsCollector`]).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.core.metrics
    }

    /// Stops accepting, closes every connection (MQTT 5 clients get DISCONNECT 0x8B; no wills
    /// are published) and waits up to five seconds for them to finish.
    pub async fn shutdown(&self) {
        self.core.shutdown.send_replace(true);
        let tasks: Vec<_> = self.listeners.lock().drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
        {
            let sessions = self.core.sessions.lock();
            for slot in sessions.values() {
                if let Some(c) = &slot.conn {
                    c.kick
                        .send_replace(Some(codec::reason::SERVER_SHUTTING_DOWN));
                }
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let changed = self.core.live_changed.notified();
            if self.core.live.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                tracing::warn!(
                    left = self.core.live.load(Ordering::SeqCst),
                    "MQTT connections still open after shutdown deadline"
                );
                break;
            }
        }
        // Every connection has detached its session: write the state file one last time.
        self.core.final_flush();
        let writer = self.state_writer.lock().take();
        if let Some(w) = writer {
            let _ = w.await;
        }
    }
}

impl Publisher for BrokerHandle {
    /// Routes at QoS 1: each subscriber receives min(1, its granted QoS).
    fn publish(&self, msg: Outbound) {
        if msg.topic.is_empty() || msg.topic.len() > usize::from(u16::MAX) {
            tracing::warn!(
                len = msg.topic.len(),
                "hub message with an unusable topic dropped"
            );
            return;
        }
        let m = Arc::new(Message {
            topic: msg.topic.into(),
            payload: msg.payload,
            properties: bytes::Bytes::new(),
            qos: if msg.at_most_once { 0 } else { 1 },
            retain: msg.retain,
            origin: None,
            expires_at: None,
        });
        self.core.publish(&m);
    }
}
