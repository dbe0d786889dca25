//! The whole hub in one call: the embedded store, the embedded MQTT ingress and the pipeline
//! with its HTTP API, wired together. The `hub` binary, `sim demo`, the benchmarks and the
//! end-to-end tests all start the hub through [`Server::start`], so they run the same thing.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{HubConfig, HubSettings};
use crate::pipeline::PipelineOptions;
use crate::{Hub, RunningHub, StartError};
use mqtt_broker::{Broker, BrokerConfig, BrokerError, BrokerHandle};
use series_store::postgres::{BackgroundTask, PgOptions, PgStore};
use series_store::{SeriesStore, StoreError, StoreOptions, TsStore};

/// How often a clustered hub compacts closed windows of the shared store and runs its
/// maintenance (every hub does; they skip each other's windows).
const COMPACT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// A window is compacted once it closed this long ago (late points still land in the head).
const COMPACT_AFTER: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    /// The MQTT ingress could not start.
    #[error("starting the MQTT ingress: {0}")]
    Broker(#[from] BrokerError),
    /// The pipeline or the HTTP API could not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The store's opening task failed.
    #[error("opening the store: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The TLS certificate, key or client CA could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Cluster mode could not reach NATS or PostgreSQL.
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    /// A listen address that does not parse.
    #[error("`{0}` is not an address like 0.0.0.0:1883 or [::]:1883")]
    BadAddress(String),
}

/// The store options hub.toml's `[hub]` table implies (a zero `retention` keeps everything).
pub fn store_options(s: &HubSettings) -> StoreOptions {
    StoreOptions {
        group_commit: s.group_commit.0,
        retention: (!s.retention.0.is_zero()).then_some(s.retention.0),
        ..StoreOptions::default()
    }
}

/// The broker defaults with hub.toml's `[hub] mqtt_listen`, `max_packet_bytes`, the per-client
/// quotas and the MQTT over TLS listeners with their certificate, key and client CA.
pub fn broker_config(settings: &HubSettings) -> Result<BrokerConfig, ServerError> {
    let listen = settings
        .mqtt_listen
        .iter()
        .map(|a| a.parse().map_err(|_| ServerError::BadAddress(a.clone())))
        .collect::<Result<Vec<SocketAddr>, _>>()?;
    let mut c = BrokerConfig::new(listen);
    c.max_packet_bytes = settings.max_packet_bytes;
    c.max_messages_per_s = settings.max_messages_per_s;
    c.max_bytes_per_s = settings.max_bytes_per_s.0;
    c.throttle_grace = settings.throttle_grace.0;
    c.max_subscriptions = settings.max_subscriptions;
    c.max_connections = match settings.max_connections {
        0 => connection_limit_from_open_files(),
        n => n,
    };
    // Persistent sessions (a command queued for an offline device) and retained messages
    // outlive a restart.
    c.state_dir = Some(settings.data_dir.join("broker"));
    c.tls_listen = settings
        .mqtt_tls_listen
        .iter()
        .map(|a| a.parse().map_err(|_| ServerError::BadAddress(a.clone())))
        .collect::<Result<Vec<SocketAddr>, _>>()?;
    c.tls = crate::tls::server_config(settings, crate::tls::Listener::Mqtt)?;
    Ok(c)
}

/// File descriptors kept back from MQTT connections: store segments, the broker's and twins'
/// state files, HTTP clients, HJ 212 stations, logs.
const RESERVED_FILES: u64 = 1_024;

/// The connection limit when hub.toml sets none: the soft open-file limit less
/// [`RESERVED_FILES`] (at least 64), so a storm beyond what the process can hold is refused
/// in CONNACK rather than failing `accept` and the store's own file opens. No limit when the
/// open-file limit is unlimited or unknown.
fn connection_limit_from_open_files() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match soft {
        Some(n) => usize::try_from(n.saturating_sub(RESERVED_FILES).max(64)).unwrap_or(0),
        None => 0,
    }
}

/// The store a hub runs on: its own on disk, or in cluster mode the one every hub shares.
enum Store {
    /// `data_dir/series`.
    Local(Arc<TsStore>),
    /// PostgreSQL, with this hub's compaction and maintenance task.
    Shared(Arc<PgStore>, BackgroundTask),
}

/// A running hub: store, ingress, pipeline and API.
pub struct Server {
    store: Store,
    broker: BrokerHandle,
    running: RunningHub,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Server {
    /// Opens the store (under `data_dir/series`, or with `[cluster]` the shared one in
    /// PostgreSQL), starts the ingress on `mqtt_listen` and the pipeline and API on
    /// `http_listen`.
    pub async fn start(config: HubConfig) -> Result<Server, ServerError> {
        Server::start_with(config, PipelineOptions::default()).await
    }

    /// [`Server::start`] with explicit pipeline sizes (benchmarks).
    pub async fn start_with(
        config: HubConfig,
        options: PipelineOptions,
    ) -> Result<Server, ServerError> {
        let Some(settings) = config.cluster.clone() else {
            let dir = config.hub.data_dir.join("series");
            let opts = store_options(&config.hub);
            // Opening replays the write-ahead log: blocking work.
            let store =
                Arc::new(tokio::task::spawn_blocking(move || TsStore::open(dir, opts)).await??);
            return match start_hub(config, store.clone(), options, None).await {
                Ok((broker, running, metrics)) => Ok(Server {
                    store: Store::Local(store),
                    broker,
                    running,
                    metrics,
                }),
                Err(e) => {
                    let _ = store.close().await;
                    Err(e)
                }
            };
        };
        let opts = PgOptions {
            retention: (!config.hub.retention.0.is_zero()).then_some(config.hub.retention.0),
            ..PgOptions::default()
        };
        let store = Arc::new(PgStore::connect(&settings.postgres, opts).await?);
        let link = crate::cluster::Link::connect(settings).await?;
        let (broker, running, metrics) =
            start_hub(config, store.clone(), options, Some(link)).await?;
        let background = store.start_background(COMPACT_EVERY, COMPACT_AFTER);
        Ok(Server {
            store: Store::Shared(store, background),
            broker,
            running,
            metrics,
        })
    }

    /// The bound MQTT addresses (real ports when the config asked for port 0).
    pub fn mqtt_addrs(&self) -> &[SocketAddr] {
        self.broker.local_addrs()
    }

    /// The bound MQTT over TLS addresses.
    pub fn mqtt_tls_addrs(&self) -> &[SocketAddr] {
        self.broker.tls_addrs()
    }

    /// The bound HTTPS address, if `[hub] https_listen` is set.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.running.https_addr()
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.running.http_addr()
    }

    /// The running pipeline and API (twins, registry).
    pub fn hub(&self) -> &RunningHub {
        &self.running
    }

    /// The hub core's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The hub's own store (`None` in cluster mode, where the store is shared).
    pub fn local_store(&self) -> Option<&Arc<TsStore>> {
        match &self.store {
            Store::Local(s) => Some(s),
            Store::Shared(..) => None,
        }
    }

    /// The shared store (cluster mode).
    pub fn shared_store(&self) -> Option<&Arc<PgStore>> {
        match &self.store {
            Store::Shared(s, _) => Some(s),
            Store::Local(_) => None,
        }
    }

    /// Stops accepting, drains the pipeline (in cluster mode: hands its partitions over),
    /// checkpoints twins and closes the store.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        self.broker.shutdown().await;
        self.running.shutdown().await;
        match self.store {
            Store::Local(s) => s.close().await,
            Store::Shared(_, background) => {
                drop(background);
                Ok(())
            }
        }
    }
}

/// Builds the hub on `store`, starts the ingress and then the hub.
async fn start_hub<S: SeriesStore>(
    config: HubConfig,
    store: Arc<S>,
    options: PipelineOptions,
    cluster: Option<Arc<crate::cluster::Link>>,
) -> Result<(BrokerHandle, RunningHub, Arc<crate::metrics::Metrics>), ServerError> {
    let mut hub = Hub::new(config, store)?.with_options(options);
    if let Some(link) = cluster {
        hub = hub.with_cluster(link);
    }
    let broker_cfg = broker_config(&hub.config().hub)?;
    let broker = Broker::start(broker_cfg, hub.authenticator(), hub.ingress_sender()).await?;
    let metrics = hub.metrics();
    hub.metrics_registry()
        .sub_registry_with_prefix("mqtt")
        .register_collector(Box::new(mqtt_broker::MetricsCollector::new(
            broker.metrics().clone(),
        )));
    let running = match hub.start(Arc::new(broker.clone())).await {
        Ok(r) => r,
        Err(e) => {
            broker.shutdown().await;
            return Err(e.into());
        }
    };
    tracing::info!(
        mqtt = ?broker.local_addrs(),
        mqtt_tls = ?broker.tls_addrs(),
        http = %running.http_addr(),
        "hub serving"
    );
    Ok((broker, running, metrics))
}
