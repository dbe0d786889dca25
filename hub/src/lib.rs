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

pub mod api;
pub mod auth;
pub mod config;
pub mod feeds;
pub mod ingress;
pub mod metrics;
pub mod normalize;
pub mod outbound;
pub mod pipeline;
pub mod registry;
pub mod server;
pub mod store;
pub mod twin;
pub mod video;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::api::ApiState;
use crate::auth::RegistryAuthenticator;
use crate::config::HubConfig;
use crate::ingress::{IngressEvent, Publisher};
use crate::metrics::Metrics;
use crate::normalize::Normalizer;
use crate::outbound::Outlet;
use crate::pipeline::status::StatusBoard;
use crate::pipeline::{Context, Pipeline, PipelineOptions};
use crate::registry::Registry;
use crate::store::SeriesStore;
use crate::twin::Twins;

/// Capacity of the ingress event queue.
const INGRESS_QUEUE: usize = 4096;
/// How often twin versions are checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

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
    /// The HTTP listener could not be bound.
    #[error("HTTP listener {addr}: {source}")]
    Http {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A hub being assembled: the parts the ingress needs before the pipeline can start.
pub struct Hub<S> {
    config: HubConfig,
    registry: Arc<Registry>,
    auth: RegistryAuthenticator,
    metrics: Arc<Metrics>,
    store: Arc<S>,
    events_tx: mpsc::Sender<IngressEvent>,
    events_rx: mpsc::Receiver<IngressEvent>,
    options: PipelineOptions,
}

impl<S: SeriesStore> Hub<S> {
    /// Validates the configuration and builds the registry.
    pub fn new(config: HubConfig, store: Arc<S>) -> Result<Hub<S>, StartError> {
        config.validate()?;
        let registry = Arc::new(Registry::from_config(&config));
        let (events_tx, events_rx) = mpsc::channel(INGRESS_QUEUE);
        Ok(Hub {
            auth: RegistryAuthenticator::new(registry.clone()),
            registry,
            config,
            metrics: Arc::new(Metrics::default()),
            store,
            events_tx,
            events_rx,
            options: PipelineOptions::default(),
        })
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

    /// The metrics, so the ingress can add its own ([`metrics::Metrics::add_source`]).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// A sender for ingress events (give it to the ingress). The pipeline also drains and stops
    /// by itself once every sender handed out is dropped.
    pub fn ingress_sender(&self) -> mpsc::Sender<IngressEvent> {
        self.events_tx.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Loads the twins, starts the pipeline and the HTTP API, publishing through `publisher`.
    pub async fn start(self, publisher: Arc<dyn Publisher>) -> Result<RunningHub<S>, StartError> {
        let Hub {
            config,
            registry,
            auth,
            metrics,
            store,
            events_tx,
            events_rx,
            options,
        } = self;
        drop(events_tx);
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
        let outlet = Outlet::new(publisher);
        let latest = |id: &str| match store.latest(id) {
            Ok(points) => points,
            Err(e) => {
                tracing::warn!(device = id, "reported state not restored: {e}");
                Vec::new()
            }
        };
        let twins = Arc::new(Twins::open(
            registry.clone(),
            &config.hub.data_dir,
            latest,
            outlet.clone(),
            metrics.clone(),
        )?);
        // The broker's retained store may be empty after a restart: publish every twin.
        for d in registry.devices() {
            twins.publish(d.idx);
        }
        let video = {
            let (c, r, t, o) = (
                config.clone(),
                registry.clone(),
                twins.clone(),
                outlet.clone(),
            );
            tokio::task::spawn_blocking(move || video::Video::open(&c, r, t, o))
                .await
                .map_err(|e| video::VideoError::Task(e.to_string()))??
        };
        video.start_retention();
        let weak_video = Arc::downgrade(&video);
        metrics.add_source(Arc::new(move |out: &mut String| {
            if let Some(v) = weak_video.upgrade() {
                v.write_prometheus(out);
            }
        }));
        let ctx = Arc::new(Context {
            registry: registry.clone(),
            video: video.clone(),
            twins: twins.clone(),
            status: StatusBoard::new(registry.clone(), twins.clone(), outlet.clone()),
            outlet: outlet.clone(),
            metrics: metrics.clone(),
            normalizer: Normalizer::new(config.hub.max_clock_skew.0),
            store: store.clone(),
        });
        let pipeline = Pipeline::start(ctx, events_rx, options);

        let (shutdown_tx, shutdown_rx) = watch::channel(false);

        let router = api::router(Arc::new(ApiState {
            registry,
            auth,
            video,
            twins: twins.clone(),
            store,
            metrics,
            outlet,
            shutdown: shutdown_rx.clone(),
        }));
        let mut stop = shutdown_rx.clone();
        let api = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
            if let Err(e) = serve.await {
                tracing::error!("HTTP server failed: {e}");
            }
        });
        tracing::info!("HTTP API listening on http://{http_addr}");

        let checkpoint_twins = twins.clone();
        let checkpoint = tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let t = checkpoint_twins.clone();
                match tokio::task::spawn_blocking(move || t.checkpoint(false)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!("twin checkpoint failed: {e}"),
                    Err(e) => tracing::error!("twin checkpoint task failed: {e}"),
                }
            }
        });
        Ok(RunningHub {
            http_addr,
            pipeline,
            twins,
            api,
            checkpoint,
            shutdown: shutdown_tx,
            _store: std::marker::PhantomData,
        })
    }
}

/// A started hub.
pub struct RunningHub<S> {
    http_addr: SocketAddr,
    pipeline: Pipeline,
    twins: Arc<Twins>,
    api: JoinHandle<()>,
    checkpoint: JoinHandle<()>,
    shutdown: watch::Sender<bool>,
    _store: std::marker::PhantomData<fn() -> S>,
}

impl<S: SeriesStore> RunningHub<S> {
    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The twins (for embedding and tests).
    pub fn twins(&self) -> &Arc<Twins> {
        &self.twins
    }

    /// Stops the hub. Stop the ingress first; this then closes the ingress queue, waits until
    /// the pipeline has stored and acknowledged everything queued, stops the API (open streams
    /// end) and checkpoints the twins as a clean shutdown. The caller closes the store
    /// afterwards.
    pub async fn shutdown(self) {
        self.pipeline.join().await;
        let _ = self.shutdown.send(true);
        if let Err(e) = self.api.await {
            tracing::error!("HTTP server task failed: {e}");
        }
        self.checkpoint.abort();
        let _ = self.checkpoint.await;
        let twins = self.twins.clone();
        match tokio::task::spawn_blocking(move || twins.checkpoint(true)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("final twin checkpoint failed: {e}"),
            Err(e) => tracing::error!("final twin checkpoint task failed: {e}"),
        }
    }
}
