//! `TsStore`: the embedded engine behind [`SeriesStore`].
//!
//! Three threads, each owning its state:
//! - the **writer** takes append requests in order: dedup check, series ids, one WAL record per
//!   batch, one `write` per group of batches, then the points into the heads (sealing full
//!   chunks). It also rotates the WAL and prepares checkpoints.
//! - the **syncer** `fdatasync`s the WAL and only then resolves the appends (`Stored`, and
//!   `Duplicate` too, whose original may still be in flight). While it syncs, the writer keeps
//!   writing, so the next group forms by itself; the group-commit window only delays a sync while
//!   the writer still has requests queued.
//! - the **checkpointer** commits sealed chunks, head snapshots, new series and dedup state in
//!   one redb transaction, then deletes the WAL segments that transaction covers. It also runs
//!   retention.
//!
//! Queries read the heads under a short read lock, and redb through an MVCC read transaction.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use protocols::Quantity;
use protocols::time::now_ms;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{mpsc as amsc, oneshot};

use crate::chunk::{ChunkMeta, decode_meta, encode_record};
use crate::dedup::OriginIndex;
use crate::head::{SealPolicy, Sealed, SeriesHead};
use crate::query::{self, Body, Bounds, Source};
use crate::wal::{self, Segment};
use crate::{Appended, Point, Query, SeriesId, SeriesStore, StoreError, WriteBatch};

/// (series id, chunk start ms, per-series chunk seq) -> chunk record.
const CHUNKS: TableDefinition<(u32, i64, u32), &[u8]> = TableDefinition::new("chunks");
/// series id -> quantity code (2 bytes LE) + device id.
const SERIES: TableDefinition<u32, &[u8]> = TableDefinition::new("series");
/// series id -> head snapshot as of the checkpoint.
const HEADS: TableDefinition<u32, &[u8]> = TableDefinition::new("heads");
/// agent -> dedup state of its streams.
const ORIGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("origins");
/// Engine bookkeeping.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_FORMAT: &str = "format";
const META_GEN: &str = "checkpoint_gen";
const META_WAL_START: &str = "wal_start";
const META_MAX_SPAN: &str = "max_chunk_span_ms";
const FORMAT: u64 = 1;
const DB_FILE: &str = "series.redb";
const WAL_DIR: &str = "wal";
/// Appends taken into one group at most.
const MAX_GROUP: usize = 4096;

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
    /// redb page cache.
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
}

/// What a retention run removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Chunks deleted.
    pub chunks: u64,
    /// Points in them.
    pub points: u64,
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(m) => StoreError::Corrupt(m),
        redb::Error::Io(e) => StoreError::Io(e),
        other => StoreError::Db(other.to_string()),
    }
}

fn io_copy(e: &std::io::Error) -> StoreError {
    StoreError::Io(std::io::Error::new(e.kind(), e.to_string()))
}

/// A sealed chunk not yet in redb.
#[derive(Debug)]
struct PendingChunk {
    start_ts: i64,
    seq: u32,
    meta: ChunkMeta,
    rec: Vec<u8>,
    /// The checkpoint that will commit it.
    generation: u64,
}

#[derive(Debug, Default)]
struct State {
    heads: HashMap<u32, SeriesHead>,
    pending: HashMap<u32, Vec<Arc<PendingChunk>>>,
    pending_count: u64,
}

#[derive(Debug, Default)]
struct Registry {
    ids: HashMap<SeriesId, u32>,
    by_id: HashMap<u32, SeriesId>,
    by_device: HashMap<Arc<str>, Vec<(Quantity, u32)>>,
    next_id: u32,
}

impl Registry {
    fn define(&mut self, id: u32, s: SeriesId) {
        self.by_device
            .entry(s.device.clone())
            .or_default()
            .push((s.quantity, id));
        self.ids.insert(s.clone(), id);
        self.by_id.insert(id, s);
        self.next_id = self.next_id.max(id.saturating_add(1));
    }
}

fn encode_series(s: &SeriesId) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + s.device.len());
    v.extend_from_slice(&s.quantity.code().to_le_bytes());
    v.extend_from_slice(s.device.as_bytes());
    v
}

fn decode_series(b: &[u8]) -> Option<SeriesId> {
    let code = u16::from_le_bytes([*b.first()?, *b.get(1)?]);
    Some(SeriesId {
        device: Arc::from(std::str::from_utf8(&b[2..]).ok()?),
        quantity: Quantity::from_code(code)?,
    })
}

/// What the threads share.
struct Shared {
    /// `None` once closed, so that the file can be opened again while handles remain.
    db: RwLock<Option<Database>>,
    dir: PathBuf,
    state: RwLock<State>,
    registry: RwLock<Registry>,
    failed: Mutex<Option<String>>,
    policy: SealPolicy,
    /// Widest chunk span ever written (queries look back this far before `from`).
    max_span_ms: i64,
    retention_ms: Option<i64>,
    points_appended: AtomicU64,
    checkpoints: AtomicU64,
}

impl Shared {
    fn check_failed(&self) -> Result<(), StoreError> {
        match &*self.failed.lock() {
            Some(m) => Err(StoreError::Io(std::io::Error::other(format!(
                "store stopped after an earlier failure: {m}"
            )))),
            None => Ok(()),
        }
    }

    /// Runs `f` with the database, or reports `Closed`.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &*self.db.read() {
            Some(db) => f(db),
            None => Err(StoreError::Closed),
        }
    }

    fn fail(&self, msg: String) {
        tracing::error!(error = %msg, "time-series store failed; writes are refused until reopened");
        let mut f = self.failed.lock();
        if f.is_none() {
            *f = Some(msg);
        }
    }
}

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

enum Request {
    Append(WriteBatch, Reply),
    Checkpoint(oneshot::Sender<Result<(), StoreError>>),
    Tick,
    Close(oneshot::Sender<Result<(), StoreError>>),
}

struct SyncQueue {
    waiters: Vec<(Reply, Appended)>,
    file: Arc<std::fs::File>,
    writer_idle: bool,
    shutdown: bool,
}

struct Syncer {
    q: Mutex<SyncQueue>,
    cv: Condvar,
}

struct CheckpointJob {
    generation: u64,
    wal_start: u64,
    /// Dirty heads as of the cut, encoded by the checkpointer.
    heads: Vec<(u32, SeriesHead)>,
    series: Vec<(u32, Vec<u8>)>,
    origins: Vec<(Arc<str>, Vec<u8>)>,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

enum Job {
    Checkpoint(CheckpointJob),
    Stop,
}

/// The embedded time-series store: WAL with group commit, compressed chunks in redb.
///
/// Open it with [`TsStore::open`] (blocking: it replays the WAL), share it in an `Arc`, close it
/// with [`TsStore::close`]. Dropping it without `close` loses nothing acknowledged; the next open
/// replays the WAL.
pub struct TsStore {
    shared: Arc<Shared>,
    tx: amsc::Sender<Request>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for TsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsStore")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl TsStore {
    /// Opens (or creates) the store in `dir`: `dir/series.redb` and `dir/wal/`. Recovers from a
    /// crash by replaying the WAL after the last checkpoint; a torn last record is cut off.
    /// Blocking; in async code call it through `spawn_blocking`.
    pub fn open(dir: impl AsRef<Path>, opts: StoreOptions) -> Result<TsStore, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let wal_dir = dir.join(WAL_DIR);
        std::fs::create_dir_all(&wal_dir)?;
        let db = Database::builder()
            .set_cache_size(opts.cache_bytes)
            .create(dir.join(DB_FILE))
            .map_err(db_err)?;

        let policy = SealPolicy {
            chunk_points: opts.chunk_points.clamp(1, 1 << 20),
            max_span_ms: i64::try_from(opts.chunk_max_span.as_millis())
                .unwrap_or(i64::MAX)
                .max(1),
        };
        // Bookkeeping, tables, and what the last checkpoint saved.
        let (generation, wal_start, max_span_ms) = {
            let txn = db.begin_write().map_err(db_err)?;
            let r = {
                let mut meta = txn.open_table(META).map_err(db_err)?;
                txn.open_table(CHUNKS).map_err(db_err)?;
                txn.open_table(SERIES).map_err(db_err)?;
                txn.open_table(HEADS).map_err(db_err)?;
                txn.open_table(ORIGINS).map_err(db_err)?;
                let get =
                    |m: &redb::Table<&str, u64>, k: &str| -> Result<Option<u64>, StoreError> {
                        Ok(m.get(k).map_err(db_err)?.map(|v| v.value()))
                    };
                match get(&meta, META_FORMAT)? {
                    None => {
                        meta.insert(META_FORMAT, FORMAT).map_err(db_err)?;
                    }
                    Some(FORMAT) => {}
                    Some(v) => {
                        return Err(StoreError::Corrupt(format!(
                            "store format {v} is not supported (expected {FORMAT})"
                        )));
                    }
                }
                let stored_span = get(&meta, META_MAX_SPAN)?.unwrap_or(0) as i64;
                let max_span = stored_span.max(policy.max_span_ms);
                meta.insert(META_MAX_SPAN, max_span as u64)
                    .map_err(db_err)?;
                (
                    get(&meta, META_GEN)?.unwrap_or(0),
                    get(&meta, META_WAL_START)?.unwrap_or(1),
                    max_span,
                )
            };
            txn.commit().map_err(db_err)?;
            r
        };

        let mut registry = Registry::default();
        let mut index = OriginIndex::default();
        // Origins replayed from the WAL: durable before a crash, but their feeds and rule
        // evaluation may never have happened. Their first redelivery is `Recovered`.
        let mut recovered: HashSet<(Arc<str>, u64, u64)> = HashSet::new();
        let mut state = State::default();
        {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(SERIES).map_err(db_err)?;
            for e in t.iter().map_err(db_err)? {
                let (k, v) = e.map_err(db_err)?;
                let s = decode_series(v.value()).ok_or_else(|| {
                    StoreError::Corrupt(format!("series {} has an unreadable name", k.value()))
                })?;
                registry.define(k.value(), s);
            }
            let t = txn.open_table(ORIGINS).map_err(db_err)?;
            for e in t.iter().map_err(db_err)? {
                let (k, v) = e.map_err(db_err)?;
                index
                    .load_agent(Arc::from(k.value()), v.value())
                    .map_err(|_| {
                        StoreError::Corrupt(format!("dedup state of agent {}", k.value()))
                    })?;
            }
            let t = txn.open_table(HEADS).map_err(db_err)?;
            for e in t.iter().map_err(db_err)? {
                let (k, v) = e.map_err(db_err)?;
                let h = SeriesHead::from_snapshot(v.value()).map_err(|e| {
                    StoreError::Corrupt(format!("head snapshot of series {}: {e}", k.value()))
                })?;
                state.heads.insert(k.value(), h);
            }
        }

        // Replay the WAL after the checkpoint.
        let next_gen = generation + 1;
        let mut new_series: Vec<(u32, Vec<u8>)> = Vec::new();
        let mut segments = wal::list_segments(&wal_dir)?;
        for &id in segments.iter().filter(|&&id| id < wal_start) {
            // Covered by a checkpoint whose cleanup did not finish.
            std::fs::remove_file(wal::segment_path(&wal_dir, id))?;
        }
        segments.retain(|&id| id >= wal_start);
        let mut replayed = 0u64;
        let mut sealed = Vec::new();
        for (i, &id) in segments.iter().enumerate() {
            let path = wal::segment_path(&wal_dir, id);
            let end = wal::read_segment(&path, id, |rec| {
                for (sid, device, code) in rec.defs {
                    if let Some(quantity) = Quantity::from_code(code) {
                        let s = SeriesId { device, quantity };
                        new_series.push((sid, encode_series(&s)));
                        registry.define(sid, s);
                    }
                }
                if let Some(o) = &rec.origin {
                    index.insert(&o.agent, o.stream, o.seq);
                    recovered.insert((o.agent.clone(), o.stream, o.seq));
                }
                for (sid, mut pts) in rec.series {
                    replayed += pts.len() as u64;
                    sort_points(&mut pts);
                    let head = state.heads.entry(sid).or_default();
                    for p in pts {
                        head.push(p, &policy, &mut sealed);
                    }
                    push_pending(&mut state, sid, &mut sealed, next_gen);
                }
            })?;
            if end.garbage > 0 {
                if i + 1 == segments.len() {
                    tracing::warn!(
                        segment = id,
                        bytes = end.garbage,
                        "cutting a torn record off the end of the write-ahead log"
                    );
                    wal::truncate_segment(&path, end.valid_len)?;
                } else {
                    tracing::error!(
                        segment = id,
                        bytes = end.garbage,
                        "write-ahead log segment is damaged in the middle; records after the damage are lost"
                    );
                }
            }
        }
        if replayed > 0 {
            tracing::info!(
                points = replayed,
                segments = segments.len(),
                "replayed write-ahead log"
            );
        }
        let seg_id = segments.last().map_or(wal_start, |l| l + 1);
        let segment = Segment::create(&wal_dir, seg_id)?;

        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db)),
            dir: dir.clone(),
            state: RwLock::new(state),
            registry: RwLock::new(registry),
            failed: Mutex::new(None),
            policy,
            max_span_ms,
            retention_ms: opts
                .retention
                .map(|r| i64::try_from(r.as_millis()).unwrap_or(i64::MAX)),
            points_appended: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
        });
        if let Some(r) = shared.retention_ms {
            drop_before(&shared, now_ms().saturating_sub(r))?;
        }
        let syncer = Arc::new(Syncer {
            q: Mutex::new(SyncQueue {
                waiters: Vec::new(),
                file: segment.file.clone(),
                writer_idle: true,
                shutdown: false,
            }),
            cv: Condvar::new(),
        });
        let (tx, rx) = amsc::channel(opts.queue_depth.max(1));
        let (job_tx, job_rx) = mpsc::sync_channel::<Job>(2);
        let writer = Writer {
            shared: shared.clone(),
            syncer: syncer.clone(),
            jobs: job_tx,
            wal_dir: wal_dir.clone(),
            segment,
            index,
            recovered,
            new_series,
            generation: next_gen,
            buf: Vec::with_capacity(1 << 20),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            checkpoint_interval: opts.checkpoint_interval,
            checkpoint_bytes: opts.checkpoint_wal_bytes.max(1),
            sealed: Vec::new(),
        };
        let mut threads = Vec::new();
        let s2 = syncer.clone();
        let sh2 = shared.clone();
        let window = opts.group_commit;
        threads.push(
            std::thread::Builder::new()
                .name("store-sync".into())
                .spawn(move || sync_loop(&sh2, &s2, window))?,
        );
        let tick_tx = tx.clone().downgrade();
        let sh3 = shared.clone();
        let wal3 = wal_dir.clone();
        let retention_every = opts.retention_interval;
        threads.push(
            std::thread::Builder::new()
                .name("store-checkpoint".into())
                .spawn(move || checkpoint_loop(&sh3, &wal3, job_rx, tick_tx, retention_every))?,
        );
        threads.push(
            std::thread::Builder::new()
                .name("store-write".into())
                .spawn(move || writer.run(rx))?,
        );
        Ok(TsStore {
            shared,
            tx,
            threads: Mutex::new(threads),
        })
    }

    /// Commits everything to redb now (sealed chunks, head snapshots, dedup state) and deletes
    /// the WAL segments that covers. Normally periodic; useful before measuring disk use.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Checkpoint(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Finishes queued appends, checkpoints, syncs and stops the store's threads. Later calls
    /// return `Closed`.
    pub async fn close(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Close(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        let r = rx.await.map_err(|_| StoreError::Closed)?;
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.join();
        }
        *self.shared.db.write() = None;
        r
    }

    /// Drops every chunk whose newest point is older than `cutoff_ms`. Runs by itself every
    /// `retention_interval` with `now - retention`; blocking.
    pub fn drop_before(&self, cutoff_ms: i64) -> Result<RetentionReport, StoreError> {
        drop_before(&self.shared, cutoff_ms)
    }

    /// Every known series.
    pub fn series(&self) -> Vec<SeriesId> {
        let mut v: Vec<SeriesId> = self.shared.registry.read().ids.keys().cloned().collect();
        v.sort();
        v
    }

    /// Counters and sizes.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
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
        })
    }

    fn query_inner(&self, q: &Query) -> Result<Vec<(i64, f64)>, StoreError> {
        if q.to_ms < q.from_ms {
            return Err(StoreError::BadQuery(format!(
                "`to` ({}) is before `from` ({})",
                q.to_ms, q.from_ms
            )));
        }
        if let Some(step) = q.step_ms
            && step <= 0
        {
            return Err(StoreError::BadQuery(format!(
                "step must be positive, got {step}"
            )));
        }
        let sh = &self.shared;
        let from = match sh.retention_ms {
            Some(r) => q.from_ms.max(now_ms().saturating_sub(r)),
            None => q.from_ms,
        };
        if from >= q.to_ms {
            return Ok(Vec::new());
        }
        let Some(id) = sh.registry.read().ids.get(&q.series).copied() else {
            return Ok(Vec::new());
        };
        let mut sources = Vec::new();
        let pending: Vec<Arc<PendingChunk>> = {
            let st = sh.state.read();
            if let Some(h) = st.heads.get(&id) {
                let (inorder, ooo) = h.range(from, q.to_ms);
                for (pts, prio) in [(inorder, 0), (ooo, u64::MAX)] {
                    if let (Some(f), Some(l)) = (pts.first(), pts.last()) {
                        sources.push(Source {
                            min_ts: f.ts_ms,
                            max_ts: l.ts_ms,
                            prio,
                            body: Body::Points(pts),
                            label: String::new(),
                        });
                    }
                }
            }
            st.pending
                .get(&id)
                .map(|v| {
                    v.iter()
                        .filter(|c| c.meta.max_ts >= from && c.start_ts < q.to_ms)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        // Taken after the pending list: a chunk committed in between is then in both, and the
        // generation below tells which copy to use.
        let txn = sh.with_db(|db| db.begin_read().map_err(db_err))?;
        let committed = txn
            .open_table(META)
            .map_err(db_err)?
            .get(META_GEN)
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        for c in pending {
            if c.generation > committed {
                sources.push(Source {
                    min_ts: c.start_ts,
                    max_ts: c.meta.max_ts,
                    prio: chunk_prio(&c.meta, c.seq),
                    body: Body::Chunk {
                        meta: c.meta,
                        rec: c.rec.clone(),
                    },
                    label: format!("series {id} start {} (pending)", c.start_ts),
                });
            }
        }
        let chunks = txn.open_table(CHUNKS).map_err(db_err)?;
        let lo = (id, from.saturating_sub(sh.max_span_ms), 0u32);
        let hi = (id, q.to_ms, 0u32);
        for e in chunks.range(lo..hi).map_err(db_err)? {
            let (k, v) = e.map_err(db_err)?;
            let (_, start, seq) = k.value();
            let rec = v.value();
            let (meta, _) = decode_meta(start, rec).map_err(|e| {
                StoreError::Corrupt(format!("chunk of series {id} starting {start}: {e}"))
            })?;
            if meta.max_ts < from {
                continue;
            }
            sources.push(Source {
                min_ts: start,
                max_ts: meta.max_ts,
                prio: chunk_prio(&meta, seq),
                body: Body::Chunk {
                    meta,
                    rec: rec.to_vec(),
                },
                label: format!("series {id} starting {start}"),
            });
        }
        query::run(
            sources,
            Bounds {
                from,
                to: q.to_ms,
                align: q.from_ms,
                step: q.step_ms,
                agg: q.agg,
            },
        )
        .map_err(StoreError::Corrupt)
    }
}

/// In-order chunks never share timestamps; out-of-order ones win over them, later over earlier.
fn chunk_prio(meta: &ChunkMeta, seq: u32) -> u64 {
    if meta.out_of_order {
        1 + u64::from(seq)
    } else {
        0
    }
}

fn sort_points(pts: &mut [Point]) {
    if !pts.is_sorted_by_key(|p| p.ts_ms) {
        // Stable: of equal timestamps the later one in the batch is applied last and wins.
        pts.sort_by_key(|p| p.ts_ms);
    }
}

fn push_pending(state: &mut State, sid: u32, sealed: &mut Vec<Sealed>, generation: u64) {
    for s in sealed.drain(..) {
        let (meta, rec) = encode_record(&s.points, s.out_of_order);
        state
            .pending
            .entry(sid)
            .or_default()
            .push(Arc::new(PendingChunk {
                start_ts: meta.min_ts,
                seq: s.seq,
                meta,
                rec,
                generation,
            }));
        state.pending_count += 1;
    }
}

impl SeriesStore for TsStore {
    async fn append(&self, batch: WriteBatch) -> Result<Appended, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Append(batch, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn query(&self, q: &Query) -> Result<Vec<(i64, f64)>, StoreError> {
        self.query_inner(q)
    }

    fn latest(&self, device: &str) -> Result<Vec<(Quantity, Point)>, StoreError> {
        let ids: Vec<(Quantity, u32)> = self
            .shared
            .registry
            .read()
            .by_device
            .get(device)
            .cloned()
            .unwrap_or_default();
        let st = self.shared.state.read();
        let mut out: Vec<(Quantity, Point)> = ids
            .into_iter()
            .filter_map(|(q, id)| st.heads.get(&id).and_then(|h| h.latest).map(|p| (q, p)))
            .collect();
        out.sort_by_key(|(q, _)| *q);
        Ok(out)
    }
}

struct Writer {
    shared: Arc<Shared>,
    syncer: Arc<Syncer>,
    jobs: mpsc::SyncSender<Job>,
    wal_dir: PathBuf,
    segment: Segment,
    index: OriginIndex,
    /// Origins replayed from the WAL at open and not redelivered since (see `Appended`).
    recovered: HashSet<(Arc<str>, u64, u64)>,
    /// Series defined since the last checkpoint, for its registry rows.
    new_series: Vec<(u32, Vec<u8>)>,
    /// The generation of chunks sealed now (committed by the next checkpoint).
    generation: u64,
    buf: Vec<u8>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    checkpoint_interval: Duration,
    checkpoint_bytes: u64,
    sealed: Vec<Sealed>,
}

/// An append ready to apply once its record is written.
struct Staged {
    ids: Vec<u32>,
    batch: WriteBatch,
}

impl Writer {
    fn run(mut self, mut rx: amsc::Receiver<Request>) {
        let mut group: Vec<Request> = Vec::new();
        loop {
            let first = match rx.try_recv() {
                Ok(r) => r,
                Err(_) => {
                    self.set_idle(true);
                    let r = rx.blocking_recv();
                    self.set_idle(false);
                    match r {
                        Some(r) => r,
                        None => {
                            // Every handle is gone: finish like a close, nobody to tell.
                            let _ = self.finish();
                            return;
                        }
                    }
                }
            };
            group.push(first);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            let mut appends = Vec::with_capacity(group.len());
            for req in group.drain(..) {
                match req {
                    Request::Append(b, reply) => appends.push((b, reply)),
                    Request::Tick => {}
                    Request::Checkpoint(done) => {
                        self.write_group(std::mem::take(&mut appends));
                        self.checkpoint(Some(done));
                    }
                    Request::Close(done) => {
                        self.write_group(std::mem::take(&mut appends));
                        let r = self.finish();
                        let _ = done.send(r);
                        // Anything queued after the close is answered `Closed` by dropping it.
                        return;
                    }
                }
            }
            self.write_group(appends);
            if self.since_checkpoint >= self.checkpoint_bytes
                || (self.since_checkpoint > 0
                    && self.last_checkpoint.elapsed() >= self.checkpoint_interval)
            {
                self.checkpoint(None);
            }
        }
    }

    fn set_idle(&self, idle: bool) {
        let mut q = self.syncer.q.lock();
        q.writer_idle = idle;
        if idle {
            self.syncer.cv.notify_all();
        }
    }

    /// Dedup, record, write, apply; then hand the replies to the syncer.
    fn write_group(&mut self, appends: Vec<(WriteBatch, Reply)>) {
        if appends.is_empty() {
            return;
        }
        if let Err(e) = self.shared.check_failed() {
            let msg = e.to_string();
            for (_, reply) in appends {
                let _ = reply.send(Err(StoreError::Io(std::io::Error::other(msg.clone()))));
            }
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut waiters = Vec::with_capacity(appends.len());
        let mut staged = Vec::with_capacity(appends.len());
        let mut defs: Vec<(u32, Arc<str>, u16)> = Vec::new();
        for (batch, reply) in appends {
            if let Some(o) = &batch.origin {
                if self.index.contains(&o.agent, o.stream, o.seq) {
                    let key = (o.agent.clone(), o.stream, o.seq);
                    let r = if self.recovered.remove(&key) {
                        Appended::Recovered
                    } else {
                        Appended::Duplicate
                    };
                    waiters.push((reply, r));
                    continue;
                }
                self.index.insert(&o.agent, o.stream, o.seq);
            }
            defs.clear();
            let ids = self.resolve_ids(&batch, &mut defs);
            let refs: Vec<(u32, &[Point])> = ids
                .iter()
                .zip(&batch.series)
                .map(|(&id, (_, p))| (id, p.as_slice()))
                .collect();
            wal::encode_batch(&mut buf, batch.origin.as_ref(), &defs, &refs);
            drop(refs);
            staged.push(Staged { ids, batch });
            waiters.push((reply, Appended::Stored));
        }
        if let Err(e) = self.segment.append(&buf) {
            self.shared.fail(format!("write-ahead log write: {e}"));
            for (reply, _) in waiters {
                let _ = reply.send(Err(io_copy(&e)));
            }
            self.buf = buf;
            return;
        }
        self.since_checkpoint += buf.len() as u64;
        self.buf = buf;
        self.apply(staged);
        let mut q = self.syncer.q.lock();
        q.waiters.extend(waiters);
        self.syncer.cv.notify_all();
    }

    fn resolve_ids(
        &mut self,
        batch: &WriteBatch,
        defs: &mut Vec<(u32, Arc<str>, u16)>,
    ) -> Vec<u32> {
        let mut ids = Vec::with_capacity(batch.series.len());
        let reg = self.shared.registry.read();
        let mut missing = false;
        for (s, _) in &batch.series {
            match reg.ids.get(s) {
                Some(&id) => ids.push(id),
                None => {
                    missing = true;
                    break;
                }
            }
        }
        drop(reg);
        if !missing {
            return ids;
        }
        ids.clear();
        let mut reg = self.shared.registry.write();
        for (s, _) in &batch.series {
            let id = match reg.ids.get(s) {
                Some(&id) => id,
                None => {
                    let id = reg.next_id;
                    reg.define(id, s.clone());
                    defs.push((id, s.device.clone(), s.quantity.code()));
                    self.new_series.push((id, encode_series(s)));
                    id
                }
            };
            ids.push(id);
        }
        ids
    }

    fn apply(&mut self, staged: Vec<Staged>) {
        let policy = self.shared.policy;
        let mut n = 0u64;
        let mut st = self.shared.state.write();
        for Staged { ids, batch } in staged {
            for (id, (_, mut pts)) in ids.into_iter().zip(batch.series) {
                n += pts.len() as u64;
                sort_points(&mut pts);
                let head = st.heads.entry(id).or_default();
                for p in pts {
                    head.push(p, &policy, &mut self.sealed);
                }
                if !self.sealed.is_empty() {
                    push_pending(&mut st, id, &mut self.sealed, self.generation);
                }
            }
        }
        drop(st);
        self.shared.points_appended.fetch_add(n, Ordering::Relaxed);
    }

    /// Rotates the WAL and hands a consistent cut to the checkpointer.
    fn checkpoint(&mut self, done: Option<oneshot::Sender<Result<(), StoreError>>>) {
        if let Err(e) = self.shared.check_failed() {
            if let Some(d) = done {
                let _ = d.send(Err(e));
            }
            return;
        }
        match self.rotate_and_queue(done) {
            Ok(()) => {}
            Err((e, done)) => {
                self.shared.fail(format!("checkpoint: {e}"));
                if let Some(d) = done {
                    let _ = d.send(Err(e));
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn rotate_and_queue(
        &mut self,
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
    ) -> Result<(), (StoreError, Option<oneshot::Sender<Result<(), StoreError>>>)> {
        // Everything in the old segment must be durable before the syncer moves to the new one.
        if let Err(e) = self.segment.file.sync_data() {
            return Err((e.into(), done));
        }
        let next = match Segment::create(&self.wal_dir, self.segment.id + 1) {
            Ok(s) => s,
            Err(e) => return Err((e.into(), done)),
        };
        self.syncer.q.lock().file = next.file.clone();
        self.segment = next;
        // Copies, not encodings: encoding every dirty head here held the state lock and the
        // writer (so every group commit) for the whole encode; the checkpointer encodes.
        let heads: Vec<(u32, SeriesHead)> = {
            let mut st = self.shared.state.write();
            st.heads
                .iter_mut()
                .filter(|(_, h)| h.dirty)
                .map(|(&id, h)| {
                    h.dirty = false;
                    (id, h.clone())
                })
                .collect()
        };
        let job = CheckpointJob {
            generation: self.generation,
            wal_start: self.segment.id,
            heads,
            series: std::mem::take(&mut self.new_series),
            origins: self.index.take_dirty(),
            done,
        };
        self.generation += 1;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        if let Err(mpsc::SendError(Job::Checkpoint(j))) = self.jobs.send(Job::Checkpoint(job)) {
            return Err((StoreError::Closed, j.done));
        }
        Ok(())
    }

    /// The last checkpoint, then the other threads stop.
    fn finish(&mut self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.checkpoint(Some(tx));
        let _ = self.jobs.send(Job::Stop);
        let r = rx.blocking_recv().unwrap_or(Err(StoreError::Closed));
        let mut q = self.syncer.q.lock();
        q.shutdown = true;
        self.syncer.cv.notify_all();
        r
    }
}

fn sync_loop(shared: &Shared, s: &Syncer, window: Duration) {
    loop {
        let (waiters, file) = {
            let mut q = s.q.lock();
            while q.waiters.is_empty() && !q.shutdown {
                s.cv.wait(&mut q);
            }
            if q.waiters.is_empty() && q.shutdown {
                return;
            }
            // Gather more only while the writer is still working through queued appends.
            let deadline = Instant::now() + window;
            while !q.writer_idle && !q.shutdown {
                if s.cv.wait_until(&mut q, deadline).timed_out() {
                    break;
                }
            }
            (std::mem::take(&mut q.waiters), q.file.clone())
        };
        match file.sync_data() {
            Ok(()) => {
                for (reply, r) in waiters {
                    let _ = reply.send(Ok(r));
                }
            }
            Err(e) => {
                // After a failed fsync the page cache state is unknown: refuse further writes.
                shared.fail(format!("write-ahead log fsync: {e}"));
                for (reply, _) in waiters {
                    let _ = reply.send(Err(io_copy(&e)));
                }
            }
        }
    }
}

fn checkpoint_loop(
    shared: &Shared,
    wal_dir: &Path,
    jobs: mpsc::Receiver<Job>,
    ticks: amsc::WeakSender<Request>,
    retention_every: Duration,
) {
    // `open` ran retention once already.
    let mut last_retention = Instant::now();
    loop {
        match jobs.recv_timeout(Duration::from_secs(1)) {
            Ok(Job::Checkpoint(job)) => {
                let done = job.done;
                let job = CheckpointJob { done: None, ..job };
                let r = commit_checkpoint(shared, wal_dir, &job);
                if let Err(e) = &r {
                    shared.fail(format!("checkpoint commit: {e}"));
                }
                if let Some(d) = done {
                    let _ = d.send(r);
                }
            }
            Ok(Job::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Wake the writer so an idle store still checkpoints on time.
                if let Some(tx) = ticks.upgrade() {
                    let _ = tx.try_send(Request::Tick);
                }
            }
        }
        if let Some(r) = shared.retention_ms
            && last_retention.elapsed() >= retention_every
        {
            last_retention = Instant::now();
            if let Err(e) = drop_before(shared, now_ms().saturating_sub(r)) {
                tracing::warn!(error = %e, "retention run failed");
            }
        }
    }
}

fn commit_checkpoint(
    shared: &Shared,
    wal_dir: &Path,
    job: &CheckpointJob,
) -> Result<(), StoreError> {
    let chunks: Vec<(u32, Arc<PendingChunk>)> = {
        let st = shared.state.read();
        st.pending
            .iter()
            .flat_map(|(&id, v)| {
                v.iter()
                    .filter(|c| c.generation <= job.generation)
                    .map(move |c| (id, c.clone()))
            })
            .collect()
    };
    let txn = shared.with_db(|db| db.begin_write().map_err(db_err))?;
    {
        let mut t = txn.open_table(CHUNKS).map_err(db_err)?;
        for (id, c) in &chunks {
            t.insert((*id, c.start_ts, c.seq), c.rec.as_slice())
                .map_err(db_err)?;
        }
        let mut t = txn.open_table(HEADS).map_err(db_err)?;
        for (id, head) in &job.heads {
            t.insert(*id, head.snapshot().as_slice()).map_err(db_err)?;
        }
        let mut t = txn.open_table(SERIES).map_err(db_err)?;
        for (id, s) in &job.series {
            t.insert(*id, s.as_slice()).map_err(db_err)?;
        }
        let mut t = txn.open_table(ORIGINS).map_err(db_err)?;
        for (agent, s) in &job.origins {
            t.insert(&**agent, s.as_slice()).map_err(db_err)?;
        }
        let mut t = txn.open_table(META).map_err(db_err)?;
        t.insert(META_GEN, job.generation).map_err(db_err)?;
        t.insert(META_WAL_START, job.wal_start).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)?;
    {
        let mut st = shared.state.write();
        let mut removed = 0u64;
        for v in st.pending.values_mut() {
            let before = v.len();
            v.retain(|c| c.generation > job.generation);
            removed += (before - v.len()) as u64;
        }
        st.pending.retain(|_, v| !v.is_empty());
        st.pending_count -= removed;
    }
    for id in wal::list_segments(wal_dir)? {
        if id < job.wal_start {
            std::fs::remove_file(wal::segment_path(wal_dir, id))?;
        }
    }
    wal::sync_dir(wal_dir)?;
    shared.checkpoints.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

fn drop_before(shared: &Shared, cutoff_ms: i64) -> Result<RetentionReport, StoreError> {
    let ids: Vec<u32> = shared.registry.read().by_id.keys().copied().collect();
    let mut report = RetentionReport::default();
    let txn = shared.with_db(|db| db.begin_write().map_err(db_err))?;
    {
        let mut t = txn.open_table(CHUNKS).map_err(db_err)?;
        let span = shared.max_span_ms;
        for id in ids {
            t.retain_in(
                (id, i64::MIN, 0u32)..(id, cutoff_ms, 0u32),
                |(_, start, _), rec| {
                    match decode_meta(start, rec) {
                        Ok((m, _)) if m.max_ts < cutoff_ms => {
                            report.chunks += 1;
                            report.points += u64::from(m.count);
                            false
                        }
                        Ok(_) => true,
                        // Unreadable: its key still bounds its time range.
                        Err(_) => {
                            let gone = start.saturating_add(span) < cutoff_ms;
                            report.chunks += u64::from(gone);
                            !gone
                        }
                    }
                },
            )
            .map_err(db_err)?;
        }
    }
    txn.commit().map_err(db_err)?;
    if report.chunks > 0 {
        tracing::info!(
            chunks = report.chunks,
            points = report.points,
            "retention dropped old chunks"
        );
    }
    Ok(report)
}
