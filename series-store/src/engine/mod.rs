//! `TsStore`: the embedded engine behind [`SeriesStore`] (design:
//! docs/decisions/0004-time-series-store.md).
//!
//! Three threads, each owning its state, each in its module:
//! - the **writer** ([`writer`]) takes append requests in order: dedup check, series ids, one
//!   WAL record per batch, one `write` per group of batches, then the points into the heads
//!   (sealing full chunks). It also rotates the WAL and prepares checkpoints.
//! - the **syncer** ([`syncer`]) `fdatasync`s the WAL and only then resolves the appends
//!   (`Stored`, and `Duplicate` too, whose original may still be in flight). While it syncs, the
//!   writer keeps writing, so the next group forms by itself; the group-commit window only
//!   delays a sync while the writer still has requests queued.
//! - the **checkpointer** ([`checkpointer`]) commits sealed chunks, head snapshots, new series
//!   and dedup state in one redb transaction, then deletes the WAL segments that transaction
//!   covers. It also runs [`retention`].
//!
//! What they share (heads, pending chunks, the series registry, the failed flag, the redb
//! tables) is in [`shared`]. [`open`] loads the last checkpoint, replays the WAL and starts the
//! threads. Queries ([`read`]) read the heads under a short read lock, and redb through an MVCC
//! read transaction.
//!
//! Once a `write`, `fdatasync` or checkpoint fails the engine is failed: every later append is
//! refused ([`StoreError::Stopped`]). An fsync whose outcome is unknown is never retried; instead
//! the handle ([`TsStore`], with [`recovery`]) closes the failed engine and opens a new one on the
//! same files, which replays the WAL like a restart after a crash, and takes writes again once
//! a first checkpoint has rewritten what it replayed (a full disk that is freed again needs no
//! restart).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use protocols::Quantity;
use redb::{ReadableDatabase, ReadableTableMetadata};
use tokio::sync::{mpsc as amsc, oneshot};

use crate::{Appended, Point, Query, SeriesId, SeriesStore, StoreError, StoreHealth, WriteBatch};
use channels::Request;
use shared::{CHUNKS, DB_FILE, Shared, WAL_DIR, db_err};

mod channels;
mod checkpointer;
mod open;
mod read;
mod recovery;
mod retention;
mod shared;
mod syncer;
mod writer;

pub use recovery::{REOPEN_HEADROOM, free_disk_bytes};

/// Tuning of the engine. `Default` is what the hub uses unless hub.toml says otherwise.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Longest wait to gather more appends into one fsync while more are queued (hub.toml
    /// `group_commit`).
    pub group_commit: Duration,
    /// Points older than this are dropped and never returned (hub.toml `retention`); `None`
    /// keeps everything.
    pub retention: Option<Duration>,
    /// How often retention runs.
    pub retention_interval: Duration,
    /// Points per sealed chunk.
    pub chunk_points: usize,
    /// Longest time one chunk may span.
    pub chunk_max_span: Duration,
    /// A checkpoint runs at least this often while there are writes.
    pub checkpoint_interval: Duration,
    /// A checkpoint runs when the WAL since the last one exceeds this.
    pub checkpoint_wal_bytes: u64,
    /// Append requests queued before `append` waits (back-pressure).
    pub queue_depth: usize,
    /// Bytes of redb's page cache.
    pub cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            group_commit: Duration::from_millis(2),
            retention: Some(Duration::from_secs(90 * 86_400)),
            retention_interval: Duration::from_secs(600),
            chunk_points: 1000,
            chunk_max_span: Duration::from_secs(2 * 3600),
            checkpoint_interval: Duration::from_secs(60),
            checkpoint_wal_bytes: 64 << 20,
            queue_depth: 1024,
            cache_bytes: 64 << 20,
        }
    }
}

/// Counters and sizes, for metrics and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Known series.
    pub series: u64,
    /// Points accepted since open.
    pub points_appended: u64,
    /// Points in heads (not yet in a sealed chunk).
    pub head_points: u64,
    /// Sealed chunks not yet committed to redb.
    pub pending_chunks: u64,
    /// Sealed chunks in redb.
    pub chunks: u64,
    /// Checkpoints committed since open.
    pub checkpoints: u64,
    /// Bytes of the redb file.
    pub db_bytes: u64,
    /// Bytes of all WAL segments.
    pub wal_bytes: u64,
    /// Times the store reopened itself after a failure since it was opened.
    pub recoveries: u64,
}

/// What a retention run removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Chunks deleted.
    pub chunks: u64,
    /// Points in them.
    pub points: u64,
}

/// The embedded time-series store: WAL with group commit, compressed chunks in redb.
///
/// Open it with [`TsStore::open`] (blocking: it replays the WAL), share it in an `Arc`, close it
/// with [`TsStore::close`]. Dropping it without `close` loses nothing acknowledged; the next open
/// replays the WAL. After an I/O failure (a full disk, say) it refuses appends with
/// [`StoreError::Stopped`] and reopens itself in the background, at most once per backoff
/// interval (1 s doubling to 30 s) while appends keep coming; [`SeriesStore::health`] says which.
pub struct TsStore {
    inner: Arc<recovery::Inner>,
}

impl std::fmt::Debug for TsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsStore")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl TsStore {
    /// Opens (or creates) the store in `dir`: `dir/series.redb` and `dir/wal/`. Recovers from a
    /// crash by replaying the WAL after the last checkpoint; a torn last record is cut off.
    /// Blocking; in async code call it through `spawn_blocking`.
    pub fn open(
        dir: impl AsRef<std::path::Path>,
        opts: StoreOptions,
    ) -> Result<TsStore, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let engine = Engine::open(&dir, &opts)?;
        Ok(TsStore {
            inner: recovery::Inner::new(dir, opts, engine),
        })
    }

    fn engine(&self) -> Arc<Engine> {
        self.inner.engine.read().clone()
    }

    /// Commits everything to redb now (sealed chunks, head snapshots, dedup state) and deletes
    /// the WAL segments that covers. Normally periodic; useful before measuring disk use.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        self.engine().checkpoint().await
    }

    /// Finishes queued appends, checkpoints, syncs and stops the store's threads (after a
    /// reopen in progress has finished). Later calls return `Closed`.
    pub async fn close(&self) -> Result<(), StoreError> {
        self.inner.stop_recovering().await;
        self.engine().close().await
    }

    /// Drops every chunk whose newest point is older than `cutoff_ms`. Runs by itself every
    /// `retention_interval` with `now - retention`; blocking.
    pub fn drop_before(&self, cutoff_ms: i64) -> Result<RetentionReport, StoreError> {
        self.engine().drop_before(cutoff_ms)
    }

    /// Every series ever written (retention does not forget series), sorted.
    pub fn series(&self) -> Vec<SeriesId> {
        self.engine().series()
    }

    /// Counters and sizes, for metrics and benchmarks.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut s = self.engine().stats()?;
        s.recoveries = self.inner.recoveries.load(Ordering::Relaxed);
        Ok(s)
    }
}

impl SeriesStore for TsStore {
    async fn append(&self, batch: WriteBatch) -> Result<Appended, StoreError> {
        let engine = self.engine();
        if let Some(reason) = engine.failure() {
            self.inner.kick();
            return Err(StoreError::Stopped(reason.reason));
        }
        let r = engine.append(batch).await;
        if r.is_err() && engine.failure().is_some() {
            self.inner.kick();
        }
        r
    }

    fn query(&self, q: &Query) -> Result<Vec<(i64, f64)>, StoreError> {
        read::query(&self.engine().shared, q)
    }

    fn latest(&self, device: &str) -> Result<Vec<(Quantity, Point)>, StoreError> {
        read::latest(&self.engine().shared, device)
    }

    fn health(&self) -> StoreHealth {
        match self.engine().failure() {
            None => StoreHealth::Writable,
            Some(f) => StoreHealth::Failed {
                reason: f.reason,
                since_ms: f.since_ms,
            },
        }
    }
}

/// One open instance of the engine on the store's files: its threads and what they share. A
/// [`TsStore`] replaces it with a new one after a failure.
struct Engine {
    shared: Arc<Shared>,
    tx: amsc::Sender<Request>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    /// Why this engine stopped taking writes, once it has.
    fn failure(&self) -> Option<shared::Failure> {
        self.shared.failed.lock().clone()
    }

    async fn append(&self, batch: WriteBatch) -> Result<Appended, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Append(batch, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn checkpoint(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Checkpoint(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// [`Engine::checkpoint`] from a thread outside the runtime.
    fn checkpoint_blocking(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .blocking_send(Request::Checkpoint(tx))
            .map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    async fn close(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Close(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        let r = rx.await.map_err(|_| StoreError::Closed)?;
        self.join();
        r
    }

    /// [`Engine::close`] from a thread outside the runtime.
    fn close_blocking(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .blocking_send(Request::Close(tx))
            .map_err(|_| StoreError::Closed)?;
        let r = rx.blocking_recv().map_err(|_| StoreError::Closed)?;
        self.join();
        r
    }

    /// Waits for the threads and lets go of the database file (a new engine may open it).
    fn join(&self) {
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.join();
        }
        *self.shared.db.write() = None;
    }

    /// Drops every chunk whose newest point is older than `cutoff_ms`. Runs by itself every
    /// `retention_interval` with `now - retention`; blocking.
    fn drop_before(&self, cutoff_ms: i64) -> Result<RetentionReport, StoreError> {
        retention::drop_before(&self.shared, cutoff_ms)
    }

    /// Every series ever written (retention does not forget series), sorted.
    fn series(&self) -> Vec<SeriesId> {
        let mut v: Vec<SeriesId> = self.shared.registry.read().ids.keys().cloned().collect();
        v.sort();
        v
    }

    /// Counters and sizes, for metrics and benchmarks.
    fn stats(&self) -> Result<StoreStats, StoreError> {
        let (head_points, pending_chunks) = {
            let st = self.shared.state.read();
            (
                st.heads
                    .values()
                    .map(|h| (h.inorder.len() + h.ooo.len()) as u64)
                    .sum(),
                st.pending_count,
            )
        };
        let chunks = self.shared.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(CHUNKS).map_err(db_err)?;
            t.len().map_err(db_err)
        })?;
        let mut wal_bytes = 0;
        for e in std::fs::read_dir(self.shared.dir.join(WAL_DIR))? {
            wal_bytes += e?.metadata()?.len();
        }
        Ok(StoreStats {
            series: self.shared.registry.read().ids.len() as u64,
            points_appended: self.shared.points_appended.load(Ordering::Relaxed),
            head_points,
            pending_chunks,
            chunks,
            checkpoints: self.shared.checkpoints.load(Ordering::Relaxed),
            db_bytes: std::fs::metadata(self.shared.dir.join(DB_FILE))?.len(),
            wal_bytes,
            recoveries: 0,
        })
    }
}
