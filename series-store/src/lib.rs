//! Durable time series: the seam between an application and its storage engines.
//!
//! The pipeline writes [`WriteBatch`]es and reads [`Query`] results through [`SeriesStore`];
//! the embedded engine (redb + write-ahead log + compressed chunks) is one implementation, a
//! PostgreSQL one for a multi-hub city deployment would be another.
//!
//! The embedded engine is [`TsStore`] (design: docs/decisions/0004-time-series-store.md):
//!
//! ```no_run
//! # async fn demo(data_dir: std::path::PathBuf) -> Result<(), series_store::StoreError> {
//! use series_store::{SeriesStore, StoreOptions, TsStore};
//! let dir = data_dir.join("series");
//! let opts = StoreOptions::default();
//! let store = tokio::task::spawn_blocking(move || TsStore::open(dir, opts))
//!     .await
//!     .expect("open task")?;
//! // store.append(batch).await? -> Stored | Duplicate, only once fsynced
//! // store.query(&query)?, store.latest("device")?
//! store.close().await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;

use protocols::{Quality, Quantity};

mod bits;
mod chunk;
pub mod codec;
mod dedup;
mod engine;
mod head;
mod query;
mod wal;

pub use engine::{RetentionReport, StoreOptions, StoreStats, TsStore};

/// One time series: a quantity of a device.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId {
    /// Device id.
    pub device: Arc<str>,
    /// Quantity.
    pub quantity: Quantity,
}

/// One stored point, in the quantity's canonical unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Epoch milliseconds.
    pub ts_ms: i64,
    /// Canonical value (booleans 0/1, enum states by index).
    pub value: f64,
    /// Quality.
    pub quality: Quality,
}

/// Where a write came from, for deduplication of redelivered agent messages.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The agent.
    pub agent: Arc<str>,
    /// Its queue incarnation.
    pub stream: u64,
    /// The message's sequence number in that stream.
    pub seq: u64,
}

/// Points to append atomically, with their origin.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteBatch {
    /// Set for agent messages: the write is skipped if this origin is already stored.
    pub origin: Option<Origin>,
    /// Points by series; within a series, in any order.
    pub series: Vec<(SeriesId, Vec<Point>)>,
}

/// The result of an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Durable (committed to the write-ahead log and synced).
    Stored,
    /// The origin was already stored; nothing was written.
    Duplicate,
    /// The origin was already stored before the store's last restart (replayed from the
    /// write-ahead log) and this is its first redelivery since: nothing was written, but the
    /// hub died after making it durable and maybe before publishing it, so the pipeline
    /// publishes it again (feeds and rules are at-least-once across a hub crash).
    Recovered,
}

/// Aggregation of a bucketed query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agg {
    /// Mean.
    Avg,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Latest point in the bucket.
    Last,
    /// Number of points.
    Count,
}

/// A series query: raw points, or `step` buckets aggregated.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// The series.
    pub series: SeriesId,
    /// Inclusive start, epoch ms.
    pub from_ms: i64,
    /// Exclusive end, epoch ms.
    pub to_ms: i64,
    /// Bucket width; `None` for raw points.
    pub step_ms: Option<i64>,
    /// Aggregation for buckets.
    pub agg: Agg,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The embedded database refused an operation.
    #[error("store database: {0}")]
    Db(String),
    /// Stored data failed its checksum or could not be decoded.
    #[error("store data corrupt: {0}")]
    Corrupt(String),
    /// The query is malformed (e.g. `to` before `from`, a step of zero).
    #[error("bad query: {0}")]
    BadQuery(String),
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
}

/// A time-series store as the pipeline and the API use it.
///
/// `append` is the only write: atomic per batch, deduplicated by origin, and resolved only when
/// durable, so the caller may acknowledge upstream the moment it returns `Stored`.
pub trait SeriesStore: Send + Sync + 'static {
    /// Appends a batch; resolves once durable, or reports that its origin was already stored.
    fn append(
        &self,
        batch: WriteBatch,
    ) -> impl std::future::Future<Output = Result<Appended, StoreError>> + Send;

    /// Raw points (`step_ms == None`) or aggregated buckets `[bucket_start_ms, value]`, oldest
    /// first. Buckets without points are left out.
    fn query(&self, q: &Query) -> Result<Vec<(i64, f64)>, StoreError>;

    /// The newest point of each series of a device, for rebuilding twins at start.
    fn latest(&self, device: &str) -> Result<Vec<(Quantity, Point)>, StoreError>;
}
