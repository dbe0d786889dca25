//! Durable time series: the seam between an application and its storage engines.
//!
//! The pipeline writes [`WriteBatch`]es and reads [`Query`] results through [`SeriesStore`];
//! the embedded engine (redb + write-ahead log + compressed chunks) is one implementation, a
//! PostgreSQL one for a multi-hub city deployment would be another. What every implementation
//! must guarantee is written on the trait; `tests/conformance/mod.rs` checks it against any of
//! them.
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
//! // store.append(batch).await? -> Stored | Duplicate | Recovered, only once fsynced
//! // store.query(&query)?, store.latest("device")?
//! store.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - `lib.rs` (this file): the seam. [`SeriesStore`] and the types that cross it: [`SeriesId`],
//!   [`Point`], [`Origin`], [`WriteBatch`], [`Appended`], [`Query`], [`Agg`], [`StoreError`].
//! - `engine/`: [`TsStore`], the embedded implementation, one module per thread.
//!   - `engine/mod.rs`: the handle, its options and stats, and the thread overview.
//!   - `engine/open.rs`: open and recovery (load the last checkpoint, replay the WAL, start the
//!     threads).
//!   - `engine/channels.rs`: the messages between the threads (requests, replies, checkpoint
//!     jobs), so no thread's module depends on another's.
//!   - `engine/shared.rs`: what the threads share: redb tables, heads and pending chunks, the
//!     series registry, the failed flag.
//!   - `engine/writer.rs`: the writer thread (dedup, WAL records, one `write` per group, heads;
//!     cuts checkpoints).
//!   - `engine/syncer.rs`: the syncer thread (`fdatasync`, then resolve the group's appends).
//!   - `engine/checkpointer.rs`: the checkpointer thread (one redb transaction per checkpoint,
//!     then delete the WAL it covers).
//!   - `engine/retention.rs`: dropping whole old chunks (run by the checkpointer).
//!   - `engine/read.rs`: gathering a query's sources (heads, pending chunks, redb) and `latest`.
//! - `wal.rs`: write-ahead log segments and the batch record format.
//! - `dedup.rs`: which origins are stored (watermark + ranges per agent stream).
//! - `head.rs`: a series' unsealed points (in-order and out-of-order buffers) and when they seal.
//! - `chunk.rs`: the sealed chunk record (metadata + payload + CRC).
//! - [`codec`]: the chunk payload codec (timestamps, values, quality); `bits.rs`: its bit and
//!   varint primitives, shared with the WAL.
//! - `query.rs`: merging sources by timestamp (last write wins) and aggregating buckets.
//! - `bin/store_crash_writer.rs`: a writer for the crash test (`tests/store_crash.rs`) to kill.
//! - `postgres/` (feature `postgres`): `postgres::PgStore`, the store of record shared by the
//!   hubs of cluster mode (PostgreSQL 15 + pg_partman; docs/decisions/0026-postgres-store.md):
//!   `schema.rs` (migrations), `write.rs` (appends and dedup), `read.rs` (queries, `latest`),
//!   `compact.rs` (head rows into chunks, retention).
//!
//! Tests: `tests/store_engine.rs` (restarts, dedup, out-of-order data, retention, torn WAL,
//! corrupt chunks), `tests/store_query_model.rs` (queries against a naive model through
//! checkpoints and restarts), `tests/store_crash.rs` (SIGKILL mid-stream),
//! `tests/store_conformance.rs` (the [`SeriesStore`] contract, for any backend),
//! `tests/pg_conformance.rs` (the same contract and more against a real PostgreSQL).

use std::sync::Arc;

use protocols::{Quality, Quantity};

mod bits;
mod chunk;
pub mod codec;
mod dedup;
mod engine;
mod head;
#[cfg(feature = "postgres")]
pub mod postgres;
mod query;
mod wal;

pub use engine::{
    REOPEN_HEADROOM, RetentionReport, StoreOptions, StoreStats, TsStore, free_disk_bytes,
};

/// One time series: a quantity of a device.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId {
    /// The device's id, as the pipeline names it (e.g. `ws-1`).
    pub device: Arc<str>,
    /// What is measured; also fixes the canonical unit of the values.
    pub quantity: Quantity,
}

/// One stored point, in the quantity's canonical unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Epoch milliseconds.
    pub ts_ms: i64,
    /// Canonical value (booleans 0/1, enum states by index).
    pub value: f64,
    /// The reading's quality as the device or agent reported it; stored with the point.
    pub quality: Quality,
}

/// Where a write came from, for deduplication of redelivered agent messages.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The agent's id.
    pub agent: Arc<str>,
    /// The agent's queue incarnation: a new stream starts again at seq 1.
    pub stream: u64,
    /// The message's sequence number in that stream (from 1, without gaps).
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
    /// Mean of the bucket's points.
    Avg,
    /// Smallest value in the bucket.
    Min,
    /// Largest value in the bucket.
    Max,
    /// The value of the bucket's newest point.
    Last,
    /// Number of points in the bucket.
    Count,
}

/// A series query: raw points, or `step` buckets aggregated.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    /// The series.
    pub series: SeriesId,
    /// Inclusive start, epoch ms; also where the first bucket starts.
    pub from_ms: i64,
    /// Exclusive end, epoch ms.
    pub to_ms: i64,
    /// Bucket width; `None` for raw points.
    pub step_ms: Option<i64>,
    /// Aggregation for buckets; ignored for raw points.
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
    /// An earlier failure stopped writes (the reason is that failure's); the store reopens
    /// itself once it can (see [`SeriesStore::health`]).
    #[error("store stopped after an earlier failure, reopening: {0}")]
    Stopped(String),
}

/// Whether a store takes writes now, for health checks and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreHealth {
    /// Appends are taken.
    Writable,
    /// Appends are refused until the store has recovered.
    Failed {
        /// The failure, e.g. "write-ahead log write: No space left on device (os error 28)".
        reason: String,
        /// When it happened, epoch ms.
        since_ms: i64,
    },
}

/// A time-series store as the pipeline and the API use it: the seam a backend implements.
///
/// [`TsStore`] is the embedded implementation; `postgres::PgStore` (feature `postgres`) is the
/// PostgreSQL one (several hubs, one store of record). `tests/conformance/mod.rs` checks the rules below that a test can
/// observe (dedup, `Recovered` after a crash, query and `latest` semantics) against any
/// implementation.
///
/// # Writes
///
/// [`append`](SeriesStore::append) is the only write. An implementation must guarantee:
/// - **Atomic per batch.** After a crash either every point of a batch is stored or none is;
///   a query never sees part of a batch.
/// - **Resolved only when durable.** `Ok(Stored)` means the batch survives a crash of the
///   process and of the machine (fsync or a committed transaction), so the caller acknowledges
///   upstream (the agent deletes its copy) the moment it returns.
/// - **Deduplicated by origin.** A batch whose [`Origin`] (agent, stream, seq) is already stored
///   writes nothing and answers `Duplicate`, also across restarts. It, too, resolves only once
///   the original is durable, since the original may still be in flight. The first redelivery
///   after a restart of an origin whose publication may have been lost (the process died
///   between making it durable and the caller acting on `Stored`) answers `Recovered` instead,
///   so the caller publishes it again (at-least-once); later redeliveries answer `Duplicate`.
///   Answering `Recovered` too often is safe (a feed sees a reading twice), `Duplicate` for a
///   lost publication is not. [`TsStore`] answers `Recovered` for the origins it replayed from
///   its write-ahead log at open. The one allowed failure of dedup is forgetting (storing a
///   batch twice, which queries cannot tell since equal timestamps collapse), never a false
///   `Duplicate`. Batches without an origin are always stored.
/// - **Same series and timestamp twice: the last write wins**, in queries and in `latest`.
/// - **Errors are unknown outcomes.** On `Err` the batch may or may not be stored; the caller
///   does not acknowledge it, and the redelivery is deduplicated. After an I/O failure an
///   implementation may refuse every later append until it has recovered ([`TsStore`] refuses
///   with [`StoreError::Stopped`] and reopens itself; [`SeriesStore::health`] tells).
///
/// # Reads
///
/// Both reads are synchronous and may block briefly (the API runs queries through
/// `spawn_blocking`); neither waits for appends in flight. An append's points may be visible
/// before it resolves.
pub trait SeriesStore: Send + Sync + 'static {
    /// Appends a batch; resolves once durable, or reports that its origin was already stored
    /// (see the trait's doc for the guarantees).
    fn append(
        &self,
        batch: WriteBatch,
    ) -> impl std::future::Future<Output = Result<Appended, StoreError>> + Send;

    /// Points of `q.series` in the half-open range `[from_ms, to_ms)`, oldest first, one per
    /// timestamp (the last written).
    ///
    /// - `step_ms == None`: raw points, `(ts_ms, value)`.
    /// - `step_ms == Some(step)`: buckets `[from_ms + k * step, from_ms + (k + 1) * step)`,
    ///   each as `(bucket_start_ms, value)` with `value` the bucket's [`Agg`] (`Count` as a
    ///   float). Buckets are aligned to `from_ms` (the caller chooses the alignment); the last
    ///   one is cut at `to_ms`. Buckets without points are left out, not returned as zero or NaN.
    ///
    /// An unknown series or an empty range (`from_ms == to_ms`) gives no points. `to_ms <
    /// from_ms` or a step that is not positive is [`StoreError::BadQuery`]. Points older than
    /// the store's retention may be left out. Stored data that fails its check is
    /// [`StoreError::Corrupt`] for the queries touching it, never a panic.
    fn query(&self, q: &Query) -> Result<Vec<(i64, f64)>, StoreError>;

    /// The newest point (by timestamp; of equal timestamps the last written) of each series of
    /// `device`, sorted by quantity; series without points and unknown devices give nothing.
    /// Used to rebuild twins at start, so it must reflect everything stored before a restart.
    fn latest(&self, device: &str) -> Result<Vec<(Quantity, Point)>, StoreError>;

    /// Whether appends are taken now. A store that never stops taking writes needs not
    /// implement it.
    fn health(&self) -> StoreHealth {
        StoreHealth::Writable
    }
}
