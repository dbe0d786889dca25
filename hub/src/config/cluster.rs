//! hub.toml's `[cluster]` table: this hub is one of several serving the district through a
//! NATS JetStream cluster (the replicated log between hubs) and PostgreSQL (the store of record).
//!
//! ```toml
//! [cluster]
//! node = "hub-1"
//! nats = ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"]
//! postgres = "postgresql://hub@127.0.0.1:5432/district"
//! partitions = 64
//! ```

use protocols::config::{ConfigError, HumanDuration};
use serde::{Deserialize, Serialize};

/// The `[cluster]` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// This hub's name, unique in the cluster (leases and `/api/v1/cluster` name it).
    pub node: String,
    /// NATS server URLs (`nats://host:port`); the client fails over between them.
    pub nats: Vec<String>,
    /// The PostgreSQL connection URL.
    pub postgres: String,
    /// Devices and agents are hashed onto this many partitions; one hub works a partition at a
    /// time. Every hub of a cluster must use the same number.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// How long a partition's lease lasts without renewal: a dead hub's partitions are taken
    /// over this long after its last renewal (renewed every third of it).
    #[serde(default = "default_lease")]
    pub lease: HumanDuration,
    /// JetStream replicas of the ingest stream (3 in a three-node NATS cluster).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

fn default_partitions() -> u32 {
    64
}

fn default_lease() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(6))
}

fn default_replicas() -> usize {
    3
}

impl ClusterSettings {
    /// One line naming the bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let node_ok = !self.node.is_empty()
            && self.node.len() <= 64
            && self
                .node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !node_ok {
            return Err(ConfigError::new(
                "cluster.node",
                "must be 1-64 letters, digits, `-` or `_`",
            ));
        }
        if self.nats.is_empty() {
            return Err(ConfigError::new("cluster.nats", "needs at least one URL"));
        }
        for (i, u) in self.nats.iter().enumerate() {
            if !u.starts_with("nats://") && !u.starts_with("tls://") {
                return Err(ConfigError::new(
                    format!("cluster.nats[{i}]"),
                    format!(
                        "`{}` is not a URL like nats://host:4222",
                        protocols::id::clip(u)
                    ),
                ));
            }
        }
        if !self.postgres.starts_with("postgresql://") && !self.postgres.starts_with("postgres://")
        {
            return Err(ConfigError::new(
                "cluster.postgres",
                "is not a URL like postgresql://user@host:5432/db",
            ));
        }
        if !(1..=4096).contains(&self.partitions) {
            return Err(ConfigError::new(
                "cluster.partitions",
                "must be between 1 and 4096",
            ));
        }
        if self.lease.0 < std::time::Duration::from_secs(2) {
            return Err(ConfigError::new("cluster.lease", "must be at least 2 s"));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(ConfigError::new("cluster.replicas", "must be 1 to 5"));
        }
        Ok(())
    }
}
