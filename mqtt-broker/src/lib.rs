//! An embeddable MQTT broker (MQTT 3.1.1 and 5), the hub's ingress.
//!
//! Every client is authenticated through an [`Authenticator`]; every publish and subscribe is
//! checked with [`Principal::may_publish`] / [`Principal::may_subscribe`]; authorized publishes
//! go to the pipeline as [`IngressEvent::Message`] and a QoS 1/2 publish is acknowledged only
//! when the pipeline answers its `done` (in order of receipt, with many in flight). The
//! [`BrokerHandle`] routes the hub's own messages to subscribers as a [`Publisher`].
//!
//! ```no_run
//! # async fn f<A: crate::ingress::Authenticator>(auth: A) -> Result<(), Box<dyn std::error::Error>> {
//! use crate::{Broker, BrokerConfig};
//! let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
//! let config = BrokerConfig::new(vec!["0.0.0.0:1883".parse()?, "[::]:1883".parse()?]);
//! let broker = Broker::start(config, auth, tx).await?;
//! // ... the pipeline drains `rx`; the hub publishes through `broker` (a `Publisher`) ...
//! broker.shutdown().await;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use protocols::access::Principal;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::ingress::{Authenticator, IngressEvent, Outbound, Publisher};

pub mod codec;
mod connection;
pub mod ingress;
pub mod metrics;
mod router;

pub use metrics::{Metrics, MetricsCollector, RefuseReason};
use router::{Message, Router, Session};

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
        }
    }
}

/// Why the broker did not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// An address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// No address to listen on.
    #[error("no MQTT listen address")]
    NoListener,
}

/// Decides what an authenticated client may publish and subscribe. The hub uses
/// [`ContractAccess`] (the rules of `protocols::access`, via [`Broker::start`]); another policy
/// exists only for protocol conformance runs against test suites whose topics are not the
/// contract's ([`Broker::start_with_access`]).
pub trait AccessPolicy: Send + Sync + 'static {
    /// Whether `who` may publish on `topic`; Err carries the reason.
    fn may_publish(&self, who: &Principal, topic: &str) -> Result<(), String>;
    /// Whether `who` may subscribe to `filter` (without `$share/group/`); Err carries the
    /// reason.
    fn may_subscribe(&self, who: &Principal, filter: &str) -> Result<(), String>;
}

/// The contract's rules: [`Principal::may_publish`] and [`Principal::may_subscribe`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ContractAccess;

impl AccessPolicy for ContractAccess {
    fn may_publish(&self, who: &Principal, topic: &str) -> Result<(), String> {
        who.may_publish(topic).map_err(|e| e.to_string())
    }
    fn may_subscribe(&self, who: &Principal, filter: &str) -> Result<(), String> {
        who.may_subscribe(filter).map_err(|e| e.to_string())
    }
}

/// A live connection as the session registry sees it.
#[derive(Debug)]
pub(crate) struct ConnLink {
    /// Connection generation (unique per accepted CONNECT).
    pub generation: u64,
    /// Asks the connection to close, with an MQTT 5 reason code.
    pub kick: watch::Sender<Option<u8>>,
    /// Becomes true when the connection has finished (will published, session detached).
    pub finished: watch::Receiver<bool>,
}

/// A session in the registry.
#[derive(Debug)]
pub(crate) struct Slot {
    pub session: Arc<Session>,
    pub conn: Option<ConnLink>,
    /// Generation of the connection that last held the session.
    pub generation: u64,
}

/// State shared by the listeners, connections and the handle.
pub(crate) struct Core {
    pub config: BrokerConfig,
    pub access: Box<dyn AccessPolicy>,
    pub router: Router,
    pub metrics: Arc<Metrics>,
    pub events: mpsc::Sender<IngressEvent>,
    pub sessions: Mutex<HashMap<Arc<str>, Slot>>,
    pub shutdown: watch::Sender<bool>,
    pub generation: AtomicU64,
    /// Connection tasks alive (any phase), for a clean shutdown.
    pub live: AtomicUsize,
    pub live_changed: Notify,
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

    /// Removes a session that ended (clean) or expired, unless a newer connection holds it.
    pub fn end_session(&self, client_id: &Arc<str>, generation: u64) {
        let mut sessions = self.sessions.lock();
        let Some(slot) = sessions.get(client_id) else {
            return;
        };
        if slot.generation != generation || slot.conn.is_some() {
            return;
        }
        if let Some(slot) = sessions.remove(client_id) {
            drop(sessions);
            self.router.remove_session(&slot.session);
            self.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
        }
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
        if config.listen.is_empty() {
            return Err(BrokerError::NoListener);
        }
        let mut listeners = Vec::new();
        for addr in &config.listen {
            let l = bind(*addr).map_err(|source| BrokerError::Bind {
                addr: *addr,
                source,
            })?;
            listeners.push(l);
        }
        let metrics = Arc::new(Metrics::default());
        let (shutdown, _) = watch::channel(false);
        let core = Arc::new(Core {
            router: Router::new(metrics.clone(), config.max_queued),
            config,
            access: Box::new(access),
            metrics,
            events,
            sessions: Mutex::new(HashMap::new()),
            shutdown,
            generation: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            live_changed: Notify::new(),
        });
        let auth = Arc::new(authenticator);
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for l in listeners {
            let addr = l.local_addr().map_err(|source| BrokerError::Bind {
                addr: core.config.listen[addrs.len()],
                source,
            })?;
            tracing::info!(%addr, "MQTT listening");
            addrs.push(addr);
            tasks.push(tokio::spawn(accept_loop(core.clone(), auth.clone(), l)));
        }
        Ok(BrokerHandle {
            core,
            addrs: addrs.into(),
            listeners: Arc::new(Mutex::new(tasks)),
        })
    }
}

/// Binds one listening socket; IPv6 sockets are v6-only so that `[::]:P` and `0.0.0.0:P`
/// coexist on every platform.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
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
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

async fn accept_loop<A: Authenticator>(core: Arc<Core>, auth: Arc<A>, listener: TcpListener) {
    let mut stop = core.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    core.metrics.tcp_accepted.fetch_add(1, Ordering::Relaxed);
                    core.live.fetch_add(1, Ordering::SeqCst);
                    let core = core.clone();
                    let auth = auth.clone();
                    tokio::spawn(async move {
                        connection::serve(core.clone(), auth, stream, peer).await;
                        if core.live.fetch_sub(1, Ordering::SeqCst) == 1 {
                            core.live_changed.notify_waiters();
                        }
                    });
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

/// Waits until the broker shuts down.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The running broker: the hub's [`Publisher`], its metrics, its shutdown. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BrokerHandle {
    core: Arc<Core>,
    addrs: Arc<[SocketAddr]>,
    listeners: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl BrokerHandle {
    /// The bound addresses, in the order of the config (with real ports when 0 was asked).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
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
            qos: 1,
            retain: msg.retain,
            origin: None,
            expires_at: None,
        });
        self.core.publish(&m);
    }
}

/// Whether `client_id` may be used by `principal`: devices and agents connect with their id,
/// apps with their id or `ID.suffix`.
pub fn client_id_allowed(principal: &Principal, client_id: &str) -> bool {
    match principal {
        Principal::Device(id) | Principal::Agent(id) => client_id == id,
        Principal::App { id, .. } => {
            client_id == id
                || client_id
                    .strip_prefix(id.as_str())
                    .and_then(|r| r.strip_prefix('.'))
                    .is_some_and(|suffix| !suffix.is_empty())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_rules() {
        let d = Principal::Device("WL-1".into());
        assert!(client_id_allowed(&d, "WL-1"));
        assert!(!client_id_allowed(&d, "WL-1.x"));
        assert!(!client_id_allowed(&d, "WL-2"));
        let a = Principal::App {
            id: "cc".into(),
            grants: vec![],
        };
        assert!(client_id_allowed(&a, "cc"));
        assert!(client_id_allowed(&a, "cc.dash-1"));
        assert!(!client_id_allowed(&a, "cc."));
        assert!(!client_id_allowed(&a, "ccx"));
        assert!(!client_id_allowed(&a, "other"));
    }
}
