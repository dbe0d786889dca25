//! [`PgStore`]: the [`SeriesStore`] on a PostgreSQL 15 server shared by several hubs, the store
//! of record of cluster mode (design: docs/decisions/0026-postgres-store.md).
//!
//! Any hub answers the same series API from it, and an agent's batch is deduplicated by its
//! origin in the same transaction as its points, so a batch redelivered to another hub after a
//! failover is stored once.
//!
//! # Storage (schema `series_store`, created by [`PgStore::connect`])
//!
//! - `series (id, device, quantity)`: one row per series, `quantity` its wire code.
//! - `head (series_id, ts_ms, value, quality, wseq)`: what appends write, one row per point,
//!   `wseq` one number per append (a sequence) so that of equal timestamps the last written
//!   wins. Points repeated inside one batch are reduced to the batch's last before writing.
//! - `chunks (series_id, window_start, min_ts, points, rec)`: one row per series and closed time
//!   window ([`PgOptions::chunk_window`], one hour by default): the window's points in the
//!   embedded store's compressed chunk record ([`crate::codec`], checksummed) as `bytea`.
//!   Partitioned by `window_start` (one partition a day) with pg_partman 4.7, native range
//!   partitioning; retention drops whole partitions (partman's `retention` and
//!   `run_maintenance`, run by [`PgStore::maintain`]).
//! - `agent_streams (agent, stream, state, last_used)`: the dedup state of an agent stream
//!   (watermark + ranges above it, as `dedup.rs` keeps them), locked and updated in the append's
//!   transaction; at most `dedup::MAX_STREAMS` streams per agent (the least recently written is
//!   forgotten).
//! - `recent_origins (agent, stream, seq, writer)`: which store instance wrote each of a
//!   stream's last [`RECENT_ORIGINS`] origins, for `Recovered` (below).
//!
//! [`PgStore::compact`] (or the task of [`PgStore::start_background`]) turns the head rows of
//! closed windows into chunks: per (series, window), in one transaction under a
//! transaction-scoped advisory lock (another hub compacting the same window skips it), it
//! deletes the window's head rows, merges them over the window's chunk if there is one (head
//! rows are newer writes, so they win), and writes the chunk. A point written late into an
//! already compacted window waits in the head until the next compaction merges it. One edge
//! is left: of two appends writing the same (series, timestamp) concurrently, the one with the
//! later write number wins while both are in the head, but if a compaction commits between
//! their commits, the one committed after it wins. Both orders are valid for concurrent
//! writes; the answer may change once at that compaction.
//!
//! # Reads
//!
//! A query reads the range's chunks and head rows in one repeatable-read transaction (so a
//! compaction committing in between cannot hide or double points) and merges them with the
//! embedded store's query code (`query.rs`): head over chunk at equal timestamps, one point per
//! timestamp, buckets aligned to `from_ms`.
//!
//! `query` and `latest` are synchronous (the trait's) and may be called from a runtime's worker
//! or a `spawn_blocking` thread: every PostgreSQL call runs on the store's own runtime (two
//! threads, owned by a plain thread), and a synchronous read waits on a std channel, so no
//! caller ever enters a runtime. Appends run there too; the caller's future awaits the result.
//!
//! # Dedup and `Recovered` in a shared store
//!
//! Each [`PgStore`] is one instance with a number of its own (a sequence, taken at connect).
//! A redelivered origin that is stored answers `Recovered` when the instance that stored it is
//! not this one (a hub that died, or another live hub: either may not have published it), and
//! the row then names this instance, so the next redelivery here answers `Duplicate`.
//! `Recovered` is thus "stored by another process, first redelivery here", which errs on the
//! side the trait allows (publishing twice). Origins older than the last [`RECENT_ORIGINS`] of
//! their stream answer `Duplicate`, like the embedded store's origins older than its last
//! checkpoint.
//!
//! # Failures
//!
//! Every append has a timeout ([`PgOptions::append_timeout`]); while PostgreSQL is down appends
//! fail with [`StoreError::Db`] (an unknown outcome, as the trait says), the pool drops broken
//! connections and makes new ones once the server is back, without a restart of the process.
//! [`SeriesStore::health`] is `Failed` from a failure to reach PostgreSQL until an operation or
//! the store's probe (every [`PROBE_EVERY`]) reaches it again.
//!
//! Needs a role that may `CREATE EXTENSION pg_partman` the first time (the owner of the
//! database, or a superuser); later connects only check the schema's version.

mod compact;
mod read;
mod schema;
mod write;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use parking_lot::{Mutex, RwLock};
use tokio_postgres::NoTls;

use crate::{Appended, Point, Query, SeriesId, SeriesStore, StoreError, StoreHealth, WriteBatch};
use protocols::Quantity;

pub use compact::{CompactReport, MaintenanceReport};
pub use read::StorageStats;

/// How many of a stream's newest origins remember which instance wrote them.
pub const RECENT_ORIGINS: i64 = 4096;
/// How often the store checks that PostgreSQL answers, for [`SeriesStore::health`].
pub const PROBE_EVERY: Duration = Duration::from_secs(2);

/// How a [`PgStore`] connects and behaves.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Points older than this are dropped (whole day partitions, by [`PgStore::maintain`]);
    /// `None` keeps everything. Written into pg_partman's configuration at connect, so the last
    /// hub to connect sets it for all.
    pub retention: Option<Duration>,
    /// The time window of a chunk. Fixed when the schema is created (later connects use the
    /// stored one); must divide a day.
    pub chunk_window: Duration,
    /// Connections per pool (the store has two: appends and reads).
    pub pool_size: usize,
    /// How long an append may take before it fails (outcome unknown).
    pub append_timeout: Duration,
    /// How long a query, `latest` or a compaction step may take.
    pub query_timeout: Duration,
    /// How long connecting to PostgreSQL may take.
    pub connect_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            retention: Some(Duration::from_secs(90 * 86_400)),
            chunk_window: Duration::from_secs(3600),
            pool_size: 8,
            append_timeout: Duration::from_secs(10),
            query_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What went wrong talking to PostgreSQL; converted into [`StoreError`] at the seam.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL or the options cannot be used.
    #[error("postgres configuration: {0}")]
    Config(String),
    /// No connection could be had from the pool (server down, refused, pool timeout).
    #[error("postgres unreachable: {0}")]
    Unreachable(String),
    /// A statement failed.
    #[error("postgres: {0}")]
    Sql(#[from] tokio_postgres::Error),
    /// An operation took longer than its timeout.
    #[error("postgres {what} timed out after {after:?}")]
    Timeout {
        /// The operation.
        what: &'static str,
        /// Its timeout.
        after: Duration,
    },
    /// A stored row cannot be decoded.
    #[error("{0}")]
    Corrupt(String),
    /// The schema is of a newer version than this build knows.
    #[error("schema version {found} is newer than this build's {known}")]
    SchemaTooNew {
        /// In the database.
        found: i32,
        /// The newest this build writes.
        known: i32,
    },
    /// The store's runtime is gone (the store was dropped).
    #[error("postgres store is closed")]
    Closed,
}

impl PgError {
    /// Whether the failure says PostgreSQL could not be reached (rather than refusing a
    /// statement).
    pub fn is_unreachable(&self) -> bool {
        match self {
            PgError::Unreachable(_) | PgError::Timeout { .. } => true,
            PgError::Sql(e) => e.as_db_error().is_none() || e.is_closed(),
            _ => false,
        }
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        PgError::Unreachable(e.to_string())
    }
}

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        match e {
            PgError::Corrupt(m) => StoreError::Corrupt(m),
            PgError::Closed => StoreError::Closed,
            other => StoreError::Db(other.to_string()),
        }
    }
}

/// The PostgreSQL [`SeriesStore`]. Dropping it stops its tasks at once (as a crash would,
/// which is safe: everything acknowledged is committed).
pub struct PgStore {
    inner: Arc<Inner>,
    worker: Worker,
}

/// What the store's tasks share.
struct Inner {
    /// Appends and compaction.
    writes: Pool,
    /// Queries and `latest`, so that reads never wait behind a burst of appends.
    reads: Pool,
    opts: PgOptions,
    window_ms: i64,
    instance: i64,
    series_ids: RwLock<HashMap<SeriesId, i32>>,
    /// Day partitions of `chunks` known to exist (their start, epoch ms).
    partitions: Mutex<HashSet<i64>>,
    /// The last failure to reach PostgreSQL, until something reaches it again.
    unreachable: Mutex<Option<(String, i64)>>,
}

impl Inner {
    fn note<T>(&self, r: &Result<T, PgError>) {
        match r {
            Ok(_) => *self.unreachable.lock() = None,
            Err(e) if e.is_unreachable() => {
                let mut u = self.unreachable.lock();
                if u.is_none() {
                    *u = Some((e.to_string(), protocols::time::now_ms()));
                }
            }
            Err(_) => {}
        }
    }
}

/// The store's own runtime, on a thread of its own that drops it when the store is dropped.
struct Worker {
    handle: tokio::runtime::Handle,
    _stop: std::sync::mpsc::Sender<()>,
}

impl Worker {
    fn start() -> Result<Worker, PgError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pg-store")
            .enable_all()
            .build()
            .map_err(|e| PgError::Config(format!("store runtime: {e}")))?;
        let handle = rt.handle().clone();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("pg-store-owner".into())
            .spawn(move || {
                // Returns when the store (the only sender) is dropped.
                let _ = stopped.recv();
                rt.shutdown_background();
            })
            .map_err(|e| PgError::Config(format!("store thread: {e}")))?;
        Ok(Worker {
            handle,
            _stop: stop,
        })
    }

    /// Runs `f` on the store's runtime and awaits it from any runtime.
    async fn run<T, F>(&self, f: F) -> Result<T, PgError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, PgError>> + Send + 'static,
    {
        self.handle.spawn(f).await.map_err(|_| PgError::Closed)?
    }

    /// Runs `f` on the store's runtime and waits for it on this thread (never entering a
    /// runtime), at most `limit`.
    fn block<T, F>(&self, limit: Duration, f: F) -> Result<T, PgError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, PgError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let task = self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        match rx.recv_timeout(limit + Duration::from_secs(1)) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                task.abort();
                Err(PgError::Timeout {
                    what: "read",
                    after: limit,
                })
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(PgError::Closed),
        }
    }
}

fn pool(url: &str, opts: &PgOptions) -> Result<Pool, PgError> {
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| PgError::Config(e.to_string()))?;
    cfg.connect_timeout(opts.connect_timeout);
    cfg.application_name("series-store");
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(opts.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(opts.connect_timeout))
        .create_timeout(Some(opts.connect_timeout))
        .recycle_timeout(Some(opts.connect_timeout))
        .build()
        .map_err(|e| PgError::Config(e.to_string()))
}

/// Runs `f` with a timeout, as `what`.
async fn timed<T>(
    what: &'static str,
    after: Duration,
    f: impl std::future::Future<Output = Result<T, PgError>>,
) -> Result<T, PgError> {
    match tokio::time::timeout(after, f).await {
        Ok(r) => r,
        Err(_) => Err(PgError::Timeout { what, after }),
    }
}

/// A background task of the store ([`PgStore::start_background`]); stopped when dropped.
pub struct BackgroundTask {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BackgroundTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PgStore {
    /// Connects, creates or checks the schema (idempotent; several hubs may connect at once:
    /// migrations run under an advisory lock) and applies `opts.retention`.
    pub async fn connect(url: &str, opts: PgOptions) -> Result<PgStore, StoreError> {
        let worker = Worker::start()?;
        let writes = pool(url, &opts)?;
        let reads = pool(url, &opts)?;
        let setup_pool = writes.clone();
        let setup_opts = opts.clone();
        let (window_ms, instance) = worker
            .run(async move {
                let limit = setup_opts.query_timeout + setup_opts.connect_timeout;
                timed(
                    "schema setup",
                    limit,
                    schema::setup(&setup_pool, &setup_opts),
                )
                .await
            })
            .await?;
        let inner = Arc::new(Inner {
            writes,
            reads,
            opts,
            window_ms,
            instance,
            series_ids: RwLock::new(HashMap::new()),
            partitions: Mutex::new(HashSet::new()),
            unreachable: Mutex::new(None),
        });
        let probe = inner.clone();
        worker.handle.spawn(async move {
            let mut tick = tokio::time::interval(PROBE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if probe.unreachable.lock().is_some() {
                    let r = timed("probe", probe.opts.connect_timeout, async {
                        let c = probe.reads.get().await?;
                        c.simple_query("SELECT 1").await?;
                        Ok(())
                    })
                    .await;
                    probe.note(&r);
                }
            }
        });
        Ok(PgStore { inner, worker })
    }

    /// This instance's number (unique among all instances that ever connected).
    pub fn instance(&self) -> i64 {
        self.inner.instance
    }

    /// The chunk window in force (the schema's).
    pub fn chunk_window(&self) -> Duration {
        Duration::from_millis(self.inner.window_ms as u64)
    }

    /// Compacts the head rows of every window that ended at least `older_than` ago into
    /// chunks (see the module doc). Safe to run from several hubs at once.
    pub async fn compact(&self, older_than: Duration) -> Result<CompactReport, StoreError> {
        let inner = self.inner.clone();
        let r = self
            .worker
            .run(async move { compact::compact(&inner, older_than).await })
            .await;
        self.inner.note(&r);
        Ok(r?)
    }

    /// Retention: pg_partman's maintenance (drops day partitions older than the retention,
    /// makes future ones) and deletes head rows older than the retention.
    pub async fn maintain(&self) -> Result<MaintenanceReport, StoreError> {
        let inner = self.inner.clone();
        let r = self
            .worker
            .run(async move { compact::maintain(&inner).await })
            .await;
        self.inner.note(&r);
        Ok(r?)
    }

    /// Starts compaction (of windows closed `older_than` ago) and maintenance every `every`, on
    /// the store's runtime; failures are logged and retried at the next tick. Several hubs may
    /// run it.
    pub fn start_background(&self, every: Duration, older_than: Duration) -> BackgroundTask {
        let inner = self.inner.clone();
        let task = self.worker.handle.spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let r = compact::compact(&inner, older_than).await;
                inner.note(&r);
                match r {
                    Ok(rep) if rep.chunks_written > 0 => {
                        tracing::debug!(?rep, "series compacted into chunks")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "series compaction failed"),
                }
                let r = compact::maintain(&inner).await;
                inner.note(&r);
                if let Err(e) = r {
                    tracing::warn!(error = %e, "series store maintenance failed");
                }
            }
        });
        BackgroundTask { task }
    }

    /// Sizes and point counts, for measurements and metrics.
    pub async fn storage(&self) -> Result<StorageStats, StoreError> {
        let inner = self.inner.clone();
        Ok(self
            .worker
            .run(async move { read::storage(&inner).await })
            .await?)
    }
}

impl SeriesStore for PgStore {
    async fn append(&self, batch: WriteBatch) -> Result<Appended, StoreError> {
        let inner = self.inner.clone();
        let limit = self.inner.opts.append_timeout;
        let r = self
            .worker
            .run(async move {
                let r = timed("append", limit, write::append(&inner, batch)).await;
                inner.note(&r);
                r
            })
            .await;
        Ok(r?)
    }

    fn query(&self, q: &Query) -> Result<Vec<(i64, f64)>, StoreError> {
        read::check(q)?;
        if q.from_ms == q.to_ms {
            return Ok(Vec::new());
        }
        let inner = self.inner.clone();
        let q = q.clone();
        let limit = self.inner.opts.query_timeout;
        let r = self.worker.block(limit, async move {
            let r = timed("query", limit, read::query(&inner, &q)).await;
            inner.note(&r);
            r
        });
        Ok(r?)
    }

    fn latest(&self, device: &str) -> Result<Vec<(Quantity, Point)>, StoreError> {
        let inner = self.inner.clone();
        let device = device.to_owned();
        let limit = self.inner.opts.query_timeout;
        let r = self.worker.block(limit, async move {
            let r = timed("latest", limit, read::latest(&inner, &device)).await;
            inner.note(&r);
            r
        });
        Ok(r?)
    }

    fn health(&self) -> StoreHealth {
        match self.inner.unreachable.lock().clone() {
            None => StoreHealth::Writable,
            Some((reason, since_ms)) => StoreHealth::Failed { reason, since_ms },
        }
    }
}

/// Epoch ms as a `timestamptz` parameter.
fn ts(ms: i64) -> std::time::SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        std::time::UNIX_EPOCH + d
    } else {
        std::time::UNIX_EPOCH - d
    }
}

/// Timestamps beyond these (years 1 and 9999) are kept in the head only: their windows are not
/// compacted, and chunk lookups are clamped to them.
const MIN_CHUNK_MS: i64 = -62_135_596_800_000;
const MAX_CHUNK_MS: i64 = 253_402_300_799_999;
