//! What a clustered hub holds and has done: the state behind `GET /api/v1/cluster` and the
//! `hub_cluster_*` metrics. The document is read from PostgreSQL, so any hub answers for the
//! whole cluster (nodes, which partition each owns, each partition's lag as its owner last
//! wrote it); the counters are this hub's.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use parking_lot::Mutex;
use serde::Serialize;

use super::{ClusterError, Link};
use crate::config::ClusterSettings;
use crate::metrics::{encode_counter, encode_one};

/// Counters of this hub's cluster parts.
#[derive(Debug, Default)]
pub struct Counters {
    /// Ingress events the log acknowledged.
    pub published: AtomicU64,
    /// Ingress events the log did not take (the sender was told to send again).
    pub publish_failed: AtomicU64,
    /// Log messages this hub's workers handed to its pipeline.
    pub consumed: AtomicU64,
    /// Outbound messages relayed from the cluster to this hub's subscribers.
    pub relayed: AtomicU64,
    /// Outbound messages dropped because NATS could not take them in time.
    pub fanout_dropped: AtomicU64,
    /// Envelopes that could not be read (a newer hub's, or garbage).
    pub envelope_errors: AtomicU64,
    /// Partitions taken.
    pub acquired: AtomicU64,
    /// Partitions handed over to balance the cluster or at shutdown.
    pub released: AtomicU64,
    /// Partitions lost (a renewal failed or another hub holds a newer epoch).
    pub lost: AtomicU64,
}

/// One partition this hub works.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct OwnedPartition {
    /// The partition.
    pub partition: u32,
    /// The lease's epoch.
    pub epoch: i64,
    /// Stream sequence up to which everything is stored.
    pub position: u64,
    /// Messages in the log not yet delivered to this hub.
    pub lag: u64,
    /// Delivered and not yet stored.
    pub in_flight: u64,
}

/// A clustered hub's live state.
#[derive(Debug)]
pub struct ClusterState {
    node: String,
    partitions: u32,
    owned: Mutex<BTreeMap<u32, OwnedPartition>>,
    /// This hub's counters.
    pub counters: Counters,
}

impl ClusterState {
    /// Nothing owned yet.
    pub fn new(settings: &ClusterSettings) -> ClusterState {
        ClusterState {
            node: settings.node.clone(),
            partitions: settings.partitions,
            owned: Mutex::new(BTreeMap::new()),
            counters: Counters::default(),
        }
    }

    /// Records a partition's progress (its worker calls this).
    pub fn update(&self, p: OwnedPartition) {
        self.owned.lock().insert(p.partition, p);
    }

    /// Forgets a partition this hub no longer works.
    pub fn remove(&self, partition: u32) {
        self.owned.lock().remove(&partition);
    }

    /// The partitions this hub works now.
    pub fn owned(&self) -> Vec<OwnedPartition> {
        self.owned.lock().values().cloned().collect()
    }
}

/// A hub of the cluster, as `GET /api/v1/cluster` lists it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    /// Its `[cluster] node`.
    pub node: String,
    /// Its HTTP address.
    pub http: String,
    /// Whether it renewed its presence within a lease.
    pub alive: bool,
    /// Milliseconds since it last did.
    pub seen_ms_ago: i64,
    /// Partitions it holds.
    pub partitions: Vec<u32>,
}

/// A partition, as `GET /api/v1/cluster` lists it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PartitionView {
    /// The partition.
    pub partition: u32,
    /// The hub holding it (none while it is free).
    pub owner: Option<String>,
    /// Its lease epoch (raised by every takeover).
    pub epoch: i64,
    /// Stream sequence up to which everything is stored.
    pub position: i64,
    /// Consumer lag its owner last wrote.
    pub lag: i64,
}

/// `GET /api/v1/cluster`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// The hub that answered.
    pub node: String,
    /// Partition count.
    pub partitions: u32,
    /// Every hub that has joined.
    pub nodes: Vec<NodeView>,
    /// Every partition's owner and progress.
    pub partition_owners: Vec<PartitionView>,
    /// The answering hub's own partitions, live.
    pub owned: Vec<OwnedPartition>,
    /// Sum of the partitions' lag.
    pub total_lag: i64,
}

/// The cluster as PostgreSQL records it, with this hub's live partitions.
pub async fn document(link: &Link) -> Result<ClusterView, ClusterError> {
    let client = link.pg.get().await?;
    let lease_ms = i64::try_from(link.settings.lease.0.as_millis()).unwrap_or(i64::MAX);
    let nodes = client
        .query(
            "SELECT node, http, (extract(epoch FROM now() - seen) * 1000)::bigint FROM cluster_nodes ORDER BY node",
            &[],
        )
        .await?;
    let parts = client
        .query(
            "SELECT partition, owner, epoch, position, lag, expires > now() FROM cluster_partitions ORDER BY partition",
            &[],
        )
        .await?;
    let mut partition_owners = Vec::with_capacity(parts.len());
    let mut held: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for r in &parts {
        let partition = u32::try_from(r.get::<_, i32>(0)).unwrap_or(0);
        let live: Option<bool> = r.get(5);
        let owner: Option<String> = r.get::<_, Option<String>>(1).filter(|_| live == Some(true));
        if let Some(o) = &owner {
            held.entry(o.clone()).or_default().push(partition);
        }
        partition_owners.push(PartitionView {
            partition,
            owner,
            epoch: r.get(2),
            position: r.get(3),
            lag: r.get(4),
        });
    }
    let nodes = nodes
        .iter()
        .map(|r| {
            let node: String = r.get(0);
            let seen_ms_ago: i64 = r.get(2);
            NodeView {
                partitions: held.remove(&node).unwrap_or_default(),
                http: r.get(1),
                alive: seen_ms_ago < lease_ms,
                seen_ms_ago,
                node,
            }
        })
        .collect();
    Ok(ClusterView {
        node: link.state.node.clone(),
        partitions: link.state.partitions,
        total_lag: partition_owners.iter().map(|p| p.lag).sum(),
        nodes,
        partition_owners,
        owned: link.state.owned(),
    })
}

/// The `hub_cluster_*` metrics of this hub.
#[derive(Debug)]
pub struct ClusterCollector(pub std::sync::Arc<ClusterState>);

impl prometheus_client::collector::Collector for ClusterCollector {
    fn encode(&self, mut e: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::metrics::gauge::ConstGauge;
        let s = &self.0;
        let c = &s.counters;
        let owned = s.owned();
        let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        encode_one(
            &mut e,
            "cluster_partitions_owned",
            "Partitions this hub works now.",
            gauge(owned.len() as u64),
        )?;
        encode_one(
            &mut e,
            "cluster_consumer_lag",
            "Messages in the log of this hub's partitions not yet delivered to it.",
            gauge(owned.iter().map(|p| p.lag).sum()),
        )?;
        encode_one(
            &mut e,
            "cluster_in_flight",
            "Log messages delivered to this hub's pipeline and not yet stored.",
            gauge(owned.iter().map(|p| p.in_flight).sum()),
        )?;
        for (name, help, v) in [
            (
                "cluster_published",
                "Ingress events the log acknowledged.",
                &c.published,
            ),
            (
                "cluster_publish_failed",
                "Ingress events the log did not take.",
                &c.publish_failed,
            ),
            (
                "cluster_consumed",
                "Log messages handed to this hub's pipeline.",
                &c.consumed,
            ),
            (
                "cluster_relayed",
                "Outbound messages relayed to this hub's subscribers.",
                &c.relayed,
            ),
            (
                "cluster_fanout_dropped",
                "Outbound messages NATS could not take in time.",
                &c.fanout_dropped,
            ),
            (
                "cluster_envelope_errors",
                "Envelopes that could not be read.",
                &c.envelope_errors,
            ),
            (
                "cluster_partitions_acquired",
                "Partitions taken.",
                &c.acquired,
            ),
            (
                "cluster_partitions_released",
                "Partitions handed over.",
                &c.released,
            ),
            (
                "cluster_partitions_lost",
                "Partitions lost to a failed renewal or a newer epoch.",
                &c.lost,
            ),
        ] {
            encode_counter(&mut e, name, help, v.load(Relaxed))?;
        }
        Ok(())
    }
}
