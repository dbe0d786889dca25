//! The central hub of the district sensing gateway.
//!
//! One pipeline in one direction (see docs/ARCHITECTURE.md): MQTT ingress with authentication
//! and per-topic authorization, decode and validate, normalize, dedup, durable store, twin,
//! rules and alerts, and feeds republished to apps over MQTT, HTTP and a live stream.
//!
//! Embedding the hub (the binary, `sim demo`, the benchmarks and the tests all do it this way):
//!
//! ```ignore
//! let mut hub = Hub::new(config, store)?;            // registry, metrics, ingress channel
//! let auth = hub.authenticator();                    // for the MQTT ingress
//! let events = hub.ingress_sender();                 // the ingress sends IngressEvents here
//! let broker = start_ingress(auth, events).await?;   // returns its Publisher
//! let running = hub.start(broker.publisher()).await?; // twins, pipeline, HTTP API
//! // ... stop the ingress (drops its senders), then:
//! running.shutdown().await;                          // drain, checkpoint, stop the API
//! ```

pub mod alerts;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod feeds;
pub mod health;
pub mod hj212;
pub mod incident;
pub mod metrics;
pub mod ngsi_ld;
pub mod normalize;
pub mod outbound;
pub mod pipeline;
pub mod redb_file;
pub mod registry;
pub mod rules;
pub mod server;
pub mod shutdown;
pub mod sparkplug;
pub mod tls;
pub mod twin;
pub mod video;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::alerts::AlertBook;
use crate::api::ApiState;
use crate::auth::RegistryAuthenticator;
use crate::config::HubConfig;
use crate::metrics::Metrics;
use crate::normalize::Normalizer;
use crate::outbound::Outlet;
use crate::pipeline::commit::Committer;
use crate::pipeline::control::ControlStage;
use crate::pipeline::deadletter::DeadLetters;
use crate::pipeline::decode::Decoder;
use crate::pipeline::route::Router;
use crate::pipeline::status::StatusBoard;
use crate::pipeline::{Pipeline, PipelineOptions, Stages};
use crate::registry::Registry;
use crate::rules::Rules;
use crate::shutdown::{Shutdown, Signal};
use crate::sparkplug::Sparkplug;
use crate::twin::controls::Controls;
use crate::twin::{CommandSettings, Twins};
use mqtt_broker::ingress::{IngressEvent, Publisher};
use prometheus_client::registry::Registry as MetricsRegistry;
use series_store::SeriesStore;

/// Capacity of the ingress event queue.
const INGRESS_QUEUE: usize = 4096;
/// How often twin versions are checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// Failed appends are summarized in one log line per this interval.
const APPEND_ERRORS_EVERY: Duration = Duration::from_secs(10);

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(#[from] protocols::config::ConfigError),
    /// The video archive could not be opened.
    #[error(transparent)]
    Video(#[from] video::VideoError),
    /// The twin file could not be opened.
    #[error(transparent)]
    Twins(#[from] twin::persist::PersistError),
    /// The alert file could not be opened.
    #[error(transparent)]
    Alerts(#[from] alerts::store::AlertStoreError),
    /// The HJ 212 listener could not be bound.
    #[error(transparent)]
    Hj212(#[from] hj212::ListenError),
    /// The TLS certificate, key or client CA could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The HTTP listener could not be bound.
    #[error("HTTP listener {addr}: {source}")]
    Http {
        /// The address as configured.
        addr: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// A hub being assembled: the parts the ingress needs before the pipeline can start.
pub struct Hub<S> {
    config: HubConfig,
    registry: Arc<Registry>,
    auth: RegistryAuthenticator,
    metrics: Arc<Metrics>,
    metrics_registry: MetricsRegistry,
    store: Arc<S>,
    events_tx: mpsc::Sender<IngressEvent>,
    events_rx: mpsc::Receiver<IngressEvent>,
    options: PipelineOptions,
    controls: Controls,
    dashboard: Arc<api::dashboard::Site>,
    cluster: Option<Clustered>,
}

/// A hub's cluster parts before it starts: the connections, and the queue between the ingress
/// and the front that puts every event into the replicated log.
struct Clustered {
    link: Arc<cluster::Link>,
    front_tx: mpsc::Sender<IngressEvent>,
    front_rx: mpsc::Receiver<IngressEvent>,
}

impl<S: SeriesStore> Hub<S> {
    /// Validates the configuration and builds the registry.
    pub fn new(config: HubConfig, store: Arc<S>) -> Result<Hub<S>, StartError> {
        config.validate()?;
        let controls = Controls::load(&config)?;
        let dashboard = Arc::new(api::dashboard::Site::load(&config)?);
        let registry = Arc::new(Registry::from_config(&config));
        let (events_tx, events_rx) = mpsc::channel(INGRESS_QUEUE);
        let metrics = Arc::new(Metrics::default());
        Ok(Hub {
            auth: RegistryAuthenticator::new(registry.clone()),
            registry,
            config,
            metrics_registry: metrics::registry(&metrics),
            metrics,
            store,
            events_tx,
            events_rx,
            options: PipelineOptions::default(),
            controls,
            dashboard,
            cluster: None,
        })
    }

    /// Runs this hub as one of a cluster (see [`cluster`]): the ingress's events go into the
    /// replicated log, and the pipeline works the partitions this hub holds.
    pub fn with_cluster(mut self, link: Arc<cluster::Link>) -> Hub<S> {
        let (front_tx, front_rx) = mpsc::channel(INGRESS_QUEUE);
        self.metrics_registry
            .register_collector(Box::new(cluster::view::ClusterCollector(
                link.state.clone(),
            )));
        self.cluster = Some(Clustered {
            link,
            front_tx,
            front_rx,
        });
        self
    }

    /// Overrides the pipeline's sizes.
    pub fn with_options(mut self, options: PipelineOptions) -> Hub<S> {
        self.options = options;
        self
    }

    /// The authenticator for the ingress (shares its cache with the API).
    pub fn authenticator(&self) -> RegistryAuthenticator {
        self.auth.clone()
    }

    /// The registry.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The hub core's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The registry behind `/metrics` (prefix `hub`), so the ingress can register its
    /// collector, e.g. under `sub_registry_with_prefix("mqtt")`.
    pub fn metrics_registry(&mut self) -> &mut MetricsRegistry {
        &mut self.metrics_registry
    }

    /// A sender for ingress events (give it to the ingress). The pipeline also drains and stops
    /// by itself once every sender handed out is dropped.
    pub fn ingress_sender(&self) -> mpsc::Sender<IngressEvent> {
        match &self.cluster {
            Some(c) => c.front_tx.clone(),
            None => self.events_tx.clone(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Loads the twins, starts the pipeline and the HTTP API, publishing through `publisher`.
    pub async fn start(self, publisher: Arc<dyn Publisher>) -> Result<RunningHub, StartError> {
        let Hub {
            config,
            registry,
            auth,
            metrics,
            mut metrics_registry,
            store,
            events_tx,
            events_rx,
            options,
            controls,
            dashboard,
            cluster,
        } = self;
        // Bind first: a taken port must fail the start before anything runs.
        let listener = tokio::net::TcpListener::bind(&config.hub.http_listen)
            .await
            .map_err(|source| StartError::Http {
                addr: config.hub.http_listen.clone(),
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Http {
            addr: config.hub.http_listen.clone(),
            source,
        })?;
        let https = match (
            &config.hub.https_listen,
            tls::server_config(&config.hub, tls::Listener::Https)?,
        ) {
            (Some(addr), Some(tls)) => {
                let bound = tokio::net::TcpListener::bind(addr).await;
                let l = bound.and_then(|l| tls::HttpsListener::new(l, tls));
                Some(l.map_err(|source| StartError::Http {
                    addr: addr.clone(),
                    source,
                })?)
            }
            _ => None,
        };
        let https_addr = https.as_ref().map(|l| {
            use axum::serve::Listener;
            l.local_addr().unwrap_or(http_addr)
        });
        let (outlet, cluster) = match cluster {
            None => (Outlet::new(publisher), None),
            Some(c) => {
                let (remote, publishing) = cluster::fanout::NatsRemote::new(c.link.clone());
                tokio::spawn(publishing);
                (Outlet::clustered(publisher, Arc::new(remote)), Some(c))
            }
        };
        let dead_letters = DeadLetters::new(outlet.clone(), metrics.clone());
        // Stations enter where MQTT clients do: the log in cluster mode, the pipeline otherwise.
        let station_events = match &cluster {
            Some(c) => c.front_tx.clone(),
            None => events_tx.clone(),
        };
        // The hub's own ingress (stations on TCP): bound before anything runs, like HTTP. It
        // holds the last sender of the pipeline's queue beside the broker's and stops first.
        let mut ingress = Shutdown::new("ingress");
        let (hj212_addrs, hj212_metrics) =
            hj212::start(&config, station_events, dead_letters.clone(), &mut ingress).await?;
        metrics_registry.register_collector(Box::new(hj212::Hj212Collector(hj212_metrics)));
        let latest = |id: &str| match store.latest(id) {
            Ok(points) => points,
            Err(e) => {
                tracing::warn!(device = id, "reported state not restored: {e}");
                Vec::new()
            }
        };
        let sparkplug = Arc::new(Sparkplug::new(&config, outlet.clone()));
        metrics_registry.register_collector(Box::new(sparkplug::SparkplugCollector(
            sparkplug.metrics().clone(),
        )));
        sparkplug.announce(true, protocols::time::now_ms().max(0) as u64);
        let mut twins = Twins::open(
            registry.clone(),
            &config.hub.data_dir,
            latest,
            outlet.clone(),
            metrics.clone(),
        )?
        .with_commands(
            controls,
            CommandSettings {
                retry: config.hub.command_retry.0,
                timeout: config.hub.command_timeout.0,
            },
        )
        .with_sparkplug(sparkplug.clone());
        if let Some(c) = &cluster {
            twins = twins.with_shared(twin::shared::SharedTwins::open(c.link.pg.clone()).await?);
        }
        let twins = Arc::new(twins);
        let started = protocols::time::now_ms();
        // In a cluster, alerts live in PostgreSQL and a hub works only the devices of the
        // partitions it holds: their alerts and rule state come with each partition.
        let alerts = Arc::new(match &cluster {
            None => AlertBook::open(&config, registry.clone(), outlet.clone(), started)?,
            Some(c) => {
                AlertBook::open_shared(
                    &config,
                    registry.clone(),
                    outlet.clone(),
                    c.link.pg.clone(),
                    started,
                )
                .await?
            }
        });
        let rules = Arc::new(Rules::new(
            &config,
            registry.clone(),
            alerts.clone(),
            started,
        ));
        if cluster.is_some() {
            rules.disown_all();
        } else {
            // Hold timers and rate windows resume from the stored readings.
            let (rules, store) = (rules.clone(), store.clone());
            if let Err(e) =
                tokio::task::spawn_blocking(move || rules.warm_up(&*store, started)).await
            {
                tracing::error!("rule warm-up failed: {e}");
            }
        }
        // The collectors hold the services' counters, not the services.
        metrics_registry.register_collector(Box::new(alerts.collector()));
        metrics_registry.register_collector(Box::new(rules.collector()));
        metrics_registry.register_collector(Box::new(twins.collector()));
        // The broker's retained store may be empty after a restart: publish every twin.
        for d in registry.devices() {
            twins.publish(d.idx);
        }
        let video = {
            let (c, r, o) = (config.clone(), registry.clone(), outlet.clone());
            tokio::task::spawn_blocking(move || video::Video::open(&c, r, o))
                .await
                .map_err(|e| video::VideoError::Task(e.to_string()))??
        };
        let mut maintenance = Shutdown::new("maintenance");
        {
            let v = video.clone();
            maintenance.spawn("video retention", move |stop| v.run_retention(stop));
        }
        let disk = health::DiskWatch::new(
            config.hub.data_dir.clone(),
            config.hub.min_free_disk.bytes(),
        );
        {
            let (d, s, a) = (disk.clone(), store.clone(), alerts.clone());
            maintenance.spawn("disk and store watch", move |stop| {
                health::watch(d, s, a, stop)
            });
        }
        metrics_registry.register_collector(Box::new(disk.collector()));
        metrics_registry.register_collector(Box::new(health::StoreCollector(store.clone())));
        metrics_registry.register_collector(Box::new(video.collector()));
        let status = Arc::new(StatusBoard::new(
            registry.clone(),
            twins.clone(),
            outlet.clone(),
        ));
        let stages = Stages {
            router: Router::new(status.clone(), dead_letters.clone(), metrics.clone()),
            decoder: Decoder::new(
                registry.clone(),
                Normalizer::new(config.hub.max_clock_skew.0),
                dead_letters.clone(),
                metrics.clone(),
                sparkplug.clone(),
            ),
            control: ControlStage::new(status, twins.clone(), dead_letters),
            commit: Committer {
                store: store.clone(),
                video: video.clone(),
                twins: twins.clone(),
                rules: rules.clone(),
                outlet: outlet.clone(),
                registry: registry.clone(),
                metrics: metrics.clone(),
                disk: disk.clone(),
                append_errors: incident::ErrorBurst::new(
                    "store append failed, messages not accepted",
                    APPEND_ERRORS_EVERY,
                ),
            },
        };
        let pipeline = Pipeline::start(stages, events_rx, options);
        // Cluster mode: the front (ingress -> log) ends with the ingress; the leases and their
        // workers (log -> pipeline) and the relay (cluster -> this hub's subscribers) stop
        // before the pipeline drains.
        let mut clustering = Shutdown::new("cluster");
        let cluster_link = match cluster {
            None => None,
            Some(Clustered {
                link,
                front_tx,
                front_rx,
            }) => {
                drop(front_tx);
                let (l, r, local) = (link.clone(), registry.clone(), events_tx.clone());
                ingress.spawn("cluster front", move |stop| {
                    cluster::front::run(l, r, front_rx, local, stop)
                });
                let custody = Arc::new(cluster::custody::Custody {
                    registry: registry.clone(),
                    alerts: alerts.clone(),
                    rules: rules.clone(),
                    twins: twins.clone(),
                    store: store.clone(),
                    partitions: link.settings.partitions,
                });
                let (l, ev, http) = (link.clone(), events_tx.clone(), http_addr.to_string());
                clustering.spawn("partition leases", move |stop| {
                    cluster::lease::run(l, http, ev, custody, stop)
                });
                alerts.route_acks(Arc::new(cluster::acks::AckRouter {
                    link: link.clone(),
                    registry: registry.clone(),
                }));
                let (l, a) = (link.clone(), alerts.clone());
                clustering.spawn("alert acks between hubs", move |stop| {
                    cluster::acks::serve(l, a, stop)
                });
                let (l, t) = (link.clone(), twins.clone());
                clustering.spawn("desired state between hubs", move |stop| {
                    cluster::desired::serve(l, t, stop)
                });
                let (l, o) = (link.clone(), outlet.clone());
                clustering.spawn("cluster relay", move |stop| {
                    cluster::fanout::relay(l, o, stop)
                });
                Some(link)
            }
        };
        drop(events_tx);

        // Stopped right after the pipeline: the alert writer flushes what its last readings
        // changed.
        let mut timers = Shutdown::new("timers");
        {
            let (a, r, t) = (alerts.clone(), rules.clone(), twins.clone());
            timers.spawn("alert writer", move |stop| a.run_writer(stop));
            timers.spawn("rule and command timers", move |stop| {
                run_timers(r, t, stop)
            });
        }
        let mut http = Shutdown::new("http");

        let router = api::router(Arc::new(ApiState {
            registry,
            auth,
            video,
            twins: twins.clone(),
            store,
            metrics: Arc::new(metrics_registry),
            outlet,
            shutdown: http.signal(),
            alerts: alerts.clone(),
            rules: rules.clone(),
            config_source: config.source.clone(),
            disk,
            dashboard,
            cluster: cluster_link,
        }));
        if let Some(https) = https {
            let router = router.clone();
            http.spawn("HTTPS server", move |mut stop| async move {
                let serve = axum::serve(https, router)
                    .with_graceful_shutdown(async move { stop.recv().await });
                if let Err(e) = serve.await {
                    tracing::error!("HTTPS server failed: {e}");
                }
            });
        }
        http.spawn("HTTP server", move |mut stop| async move {
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.recv().await });
            if let Err(e) = serve.await {
                tracing::error!("HTTP server failed: {e}");
            }
        });
        tracing::info!("HTTP API listening on http://{http_addr}");
        if let Some(a) = https_addr {
            tracing::info!("HTTP API listening on https://{a}");
        }

        {
            let t = twins.clone();
            maintenance.spawn("twin checkpoints", move |stop| checkpoint_twins(t, stop));
        }
        Ok(RunningHub {
            http_addr,
            https_addr,
            hj212_addrs,
            ingress,
            pipeline,
            twins,
            sparkplug,
            alerts,
            rules,
            config_source: config.source.clone(),
            timers,
            http,
            maintenance,
            clustering,
        })
    }
}

/// Checkpoints the twins' versions every [`CHECKPOINT_EVERY`] until `stop`.
async fn checkpoint_twins(twins: Arc<Twins>, mut stop: Signal) {
    // A full disk fails every checkpoint until there is room: summarize, and say when it ends.
    let failures = incident::ErrorBurst::new(
        "twin checkpoint failed, retrying",
        CHECKPOINT_EVERY.saturating_mul(6),
    );
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.recv() => return,
        }
        let t = twins.clone();
        match tokio::task::spawn_blocking(move || t.checkpoint(false)).await {
            Ok(Ok(())) => failures.clear(),
            Ok(Err(e)) => failures.record(&e),
            Err(e) => failures.record(&e),
        }
    }
}

/// Silence rules and command retries run on timers of hub time.
async fn run_timers(rules: Arc<Rules>, twins: Arc<Twins>, mut stop: Signal) {
    let mut silence = tokio::time::interval(rules.tick_interval());
    silence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut commands = tokio::time::interval(twins.tick_interval());
    commands.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut period = rules.tick_interval();
    loop {
        tokio::select! {
            _ = silence.tick() => {
                rules.tick(protocols::time::now_ms());
                // A reload may have brought shorter silences.
                let p = rules.tick_interval();
                if p != period {
                    period = p;
                    silence = tokio::time::interval(p);
                    silence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
            }
            _ = commands.tick() => twins.tick(protocols::time::now_ms()),
            _ = stop.recv() => break,
        }
    }
}

/// Why rules could not be reloaded.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The hub was started without a config file.
    #[error("the hub was started without a config file; nothing to reload")]
    NoSource,
    /// The file could not be read or is invalid (one line naming the key).
    #[error(transparent)]
    Load(#[from] config::LoadError),
    /// A rule is bad for the running hub.
    #[error("{0}")]
    Rule(protocols::config::ConfigError),
}

/// Re-reads the rules from the config file the hub was started with.
pub fn reload_rules(
    rules: &Rules,
    source: Option<&std::path::Path>,
) -> Result<rules::ReloadReport, ReloadError> {
    let path = source.ok_or(ReloadError::NoSource)?;
    let cfg = config::HubConfig::load(path)?;
    rules
        .reload(&cfg, protocols::time::now_ms())
        .map_err(ReloadError::Rule)
}

/// A started hub.
pub struct RunningHub {
    http_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    hj212_addrs: Vec<SocketAddr>,
    /// The HJ 212 listener and its connections.
    ingress: Shutdown,
    pipeline: Pipeline,
    twins: Arc<Twins>,
    /// The Sparkplug host (its state goes offline first when the hub stops).
    sparkplug: Arc<Sparkplug>,
    alerts: Arc<AlertBook>,
    rules: Arc<Rules>,
    config_source: Option<std::path::PathBuf>,
    /// Rule and command timers, the alert writer.
    timers: Shutdown,
    /// The HTTP server and its open streams.
    http: Shutdown,
    /// Twin checkpoints, video retention.
    maintenance: Shutdown,
    /// Cluster mode's leases, partition workers and relay (empty for a hub on its own).
    clustering: Shutdown,
}

impl RunningHub {
    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the HTTPS API listens (`None` without `[hub] https_listen`).
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// Where HJ 212 stations connect (empty when `[hj212] listen` is).
    pub fn hj212_addrs(&self) -> &[SocketAddr] {
        &self.hj212_addrs
    }

    /// The twins (for embedding and tests).
    pub fn twins(&self) -> &Arc<Twins> {
        &self.twins
    }

    /// The alert book.
    pub fn alerts(&self) -> &Arc<AlertBook> {
        &self.alerts
    }

    /// The rule engine.
    pub fn rules(&self) -> &Arc<Rules> {
        &self.rules
    }

    /// Re-reads the rules from the config file (SIGHUP, `POST /api/v1/rules/reload`).
    pub fn reload_rules(&self) -> Result<rules::ReloadReport, ReloadError> {
        reload_rules(&self.rules, self.config_source.as_deref())
    }

    /// Stops the hub. Stop the ingress first; this then closes the ingress queue, waits until
    /// the pipeline has stored and acknowledged everything queued, stops the API (open streams
    /// end) and checkpoints the twins as a clean shutdown. The caller closes the store
    /// afterwards.
    pub async fn shutdown(self) {
        self.sparkplug
            .announce(false, protocols::time::now_ms().max(0) as u64);
        self.ingress.stop().await;
        // Partitions are drained and handed over before the pipeline stops.
        self.clustering.stop().await;
        self.pipeline.join().await;
        self.timers.stop().await;
        self.http.stop().await;
        self.maintenance.stop().await;
        let twins = self.twins.clone();
        match tokio::task::spawn_blocking(move || twins.checkpoint(true)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("final twin checkpoint failed: {e}"),
            Err(e) => tracing::error!("final twin checkpoint task failed: {e}"),
        }
    }
}
