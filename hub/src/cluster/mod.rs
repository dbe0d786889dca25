//! Cluster mode: several hubs serve one district through a NATS JetStream cluster and
//! PostgreSQL (hub.toml `[cluster]`; CONTRACT "Cluster mode"; decision 0027).
//!
//! ```text
//! any hub: broker ─▶ front ─▶ JetStream `district.ingest.{partition}` (R3) ─▶ PUBACK
//! owner of a partition (lease in PostgreSQL): worker ─▶ this hub's pipeline (decode,
//!   normalize, dedup + store in PostgreSQL, twins, rules, alerts) ─▶ outlet
//! outlet ─▶ core NATS `district.fanout` ─▶ every hub's relay ─▶ its MQTT and live subscribers
//! ```
//! - [`front`]: the receiving side. An agent batch is named in the log by its origin
//!   (`Nats-Msg-Id = agent:stream:seq`, so a batch re-sent to another hub inside JetStream's
//!   window is dropped there) and the MQTT PUBACK waits for the JetStream ack.
//! - [`lease`]: partitions are rows in PostgreSQL (owner, epoch, expiry, position). A hub
//!   renews what it holds, takes free or expired partitions up to its share of the live hubs,
//!   and hands over what is beyond its share. A hub that cannot renew stops its partitions
//!   before the lease can expire; a position is only written under the writer's epoch, so a
//!   hub that lost a partition cannot move it.
//! - [`worker`]: one per owned partition; replays the log after the partition's committed
//!   position into the pipeline, and advances the position past what the pipeline has stored.
//!   Replayed agent batches are dropped by the store's dedup of (agent, stream, seq), which
//!   commits with their points: every batch is stored once whichever hub replays it.
//! - [`fanout`]: the outlet's messages go to every hub, which relays them to its own
//!   subscribers (each broker checks grants on subscribe, the live stream on send).
//! - [`custody`]: a partition's open alerts and rule state go with it: loaded from PostgreSQL
//!   when it is taken, written there before it is given up.
//! - [`acks`]: an alert acknowledged on a hub that does not work its device is acknowledged by
//!   the hub that does (NATS request and reply).
//! - [`ask`]: requests between hubs (NATS request and reply) for what only a device's owner
//!   may do.
//! - [`desired`]: desired state written over HTTP on a hub that does not work the device is
//!   applied by the hub that does (NATS request and reply).
//! - [`view`]: `GET /api/v1/cluster` and the cluster's metrics.

pub mod acks;
pub mod ask;
pub mod custody;
pub mod desired;
pub mod envelope;
pub mod fanout;
pub mod front;
pub mod lease;
pub mod view;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;

use crate::config::ClusterSettings;
use crate::registry::Registry;
use view::ClusterState;

/// The JetStream stream every hub writes ingress events to.
pub const STREAM: &str = "DISTRICT_INGEST";
/// The core NATS subject of outbound messages.
pub const FANOUT_SUBJECT: &str = "district.fanout";
/// How long JetStream keeps ingest messages: the longest a partition may go unworked (every
/// hub down, PostgreSQL down) before events are lost.
const STREAM_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// JetStream's duplicate window: a batch re-sent to another hub within it is dropped by the
/// log itself (after it, by the store's dedup).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The subject of a partition's ingest messages.
pub fn ingest_subject(partition: u32) -> String {
    format!("district.ingest.{partition}")
}

/// The partition of a key (an agent's or a direct device's id): CRC-32 modulo the count, the
/// same on every hub and every platform.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    crc32fast::hash(key.as_bytes()) % partitions.max(1)
}

/// Why cluster mode could not start or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS could not be reached or refused a request.
    #[error("NATS: {0}")]
    Nats(String),
    /// PostgreSQL could not be reached or refused a statement.
    #[error("PostgreSQL: {0}")]
    Postgres(String),
}

impl From<tokio_postgres::Error> for ClusterError {
    fn from(e: tokio_postgres::Error) -> ClusterError {
        ClusterError::Postgres(e.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for ClusterError {
    fn from(e: deadpool_postgres::PoolError) -> ClusterError {
        ClusterError::Postgres(e.to_string())
    }
}

/// The connections a hub in a cluster shares among its parts.
pub struct Link {
    /// `[cluster]`.
    pub settings: ClusterSettings,
    /// Core NATS (fan-out).
    pub nats: async_nats::Client,
    /// JetStream (ingest).
    pub js: jetstream::Context,
    /// PostgreSQL (leases, positions, nodes).
    pub pg: deadpool_postgres::Pool,
    /// What this hub holds and has done, for the API and metrics.
    pub state: Arc<ClusterState>,
}

impl Link {
    /// Connects to NATS and PostgreSQL, creates the ingest stream and the cluster tables if
    /// they are missing.
    pub async fn connect(settings: ClusterSettings) -> Result<Arc<Link>, ClusterError> {
        let nats = async_nats::ConnectOptions::new()
            .name(format!("hub {}", settings.node))
            // Reconnects forever: a NATS node dying is routine in a cluster.
            .max_reconnects(None)
            .retry_on_initial_connect()
            .connect(settings.nats.clone())
            .await
            .map_err(|e| ClusterError::Nats(e.to_string()))?;
        // A stream leader's election takes 5-8 s (DESIGN): an ack is waited for briefly and the
        // publish repeated under its message id (the front), so the first one after the new
        // leader is elected is acknowledged at once.
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(2))
            .build(nats.clone());
        ensure_stream(&js, settings.replicas).await?;
        let pg = pool(&settings.postgres)?;
        lease::create_tables(&pg, settings.partitions).await?;
        let state = Arc::new(ClusterState::new(&settings));
        Ok(Arc::new(Link {
            settings,
            nats,
            js,
            pg,
            state,
        }))
    }

    /// This hub's node name.
    pub fn node(&self) -> &str {
        &self.settings.node
    }

    /// The hub working `device`'s partition now (`None` while it is changing hands).
    pub async fn owner_of(
        &self,
        registry: &Registry,
        device: &crate::registry::Device,
    ) -> Result<Option<String>, ClusterError> {
        let p = partition_of(device_key(registry, device), self.settings.partitions);
        let client = self.pg.get().await?;
        let row = client
            .query_opt(
                "SELECT owner FROM cluster_partitions
                 WHERE partition = $1 AND owner IS NOT NULL AND expires > now()",
                &[&(p as i32)],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }
}

/// A pool of PostgreSQL connections that reconnects by itself after a restart.
pub fn pool(url: &str) -> Result<deadpool_postgres::Pool, ClusterError> {
    let config: tokio_postgres::Config = url.parse()?;
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(4)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| ClusterError::Postgres(e.to_string()))
}

/// Creates the ingest stream when it does not exist (every hub tries; the first wins).
async fn ensure_stream(js: &jetstream::Context, replicas: usize) -> Result<(), ClusterError> {
    let config = jetstream::stream::Config {
        name: STREAM.to_string(),
        subjects: vec!["district.ingest.>".to_string()],
        num_replicas: replicas,
        storage: jetstream::stream::StorageType::File,
        retention: jetstream::stream::RetentionPolicy::Limits,
        max_age: STREAM_MAX_AGE,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    };
    // The meta leader may still be settling right after the NATS nodes start: retry briefly.
    let mut last = String::new();
    for _ in 0..50 {
        match js.get_or_create_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(ClusterError::Nats(format!(
        "creating stream {STREAM}: {last}"
    )))
}

/// The partition key of a device: the agent it is behind, else the device itself.
pub fn device_key<'a>(registry: &'a Registry, d: &'a crate::registry::Device) -> &'a str {
    d.agent.map_or(&*d.id, |a| &*registry.agent(a).id)
}

/// The partition key of an event: the agent a device is behind, the device itself, or for an
/// app writing to a device (`v1/twin/{device}/...`, `v1/devices/{device}/...`) that device's
/// key, so a device's twin is always worked by one hub.
pub fn partition_key<'a>(
    registry: &'a Registry,
    sender: &'a protocols::access::Principal,
    topic: &'a str,
) -> &'a str {
    use protocols::access::Principal;
    match sender {
        Principal::App { id, .. } => {
            let mut parts = topic.split('/');
            let device = match (parts.next(), parts.next(), parts.next()) {
                (Some("v1"), Some("twin" | "devices"), Some(d)) => registry.device_by_id(d),
                _ => None,
            };
            match device {
                Some(d) => device_key(registry, d),
                None => id,
            }
        }
        other => other.id(),
    }
}
