//! Opening the store: what the last checkpoint saved, the WAL replayed after it, and the threads
//! started.
//!
//! Recovery: redb holds the series, the dedup state and head snapshots as of the last committed
//! checkpoint, and `wal_start`, the first segment that checkpoint does not cover. Replaying the
//! segments from there through the same head code rebuilds the heads and the dedup index; a
//! frame that is short or fails its CRC ends a segment, and at the end of the last one it is cut
//! off (a crash mid-write). Origins met in the replay are remembered as recovered: their first
//! redelivery is answered `Recovered`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use parking_lot::{Condvar, Mutex, RwLock};
use protocols::Quantity;
use protocols::time::now_ms;
use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::mpsc as amsc;

use super::channels::Job;
use super::checkpointer;
use super::retention::drop_before;
use super::shared::{
    CHUNKS, DB_FILE, FORMAT, HEADS, META, META_FORMAT, META_GEN, META_MAX_SPAN, META_WAL_START,
    ORIGINS, Registry, SERIES, Shared, State, WAL_DIR, db_err, decode_series, encode_series,
    push_pending, sort_points,
};
use super::syncer::{self, SyncQueue, Syncer};
use super::writer::Writer;
use super::{Engine, StoreOptions};
use crate::dedup::OriginIndex;
use crate::head::{SealPolicy, SeriesHead};
use crate::wal::{self, Segment};
use crate::{SeriesId, StoreError};

impl Engine {
    /// Opens an engine on `dir`: `dir/series.redb` and `dir/wal/` (see [`super::TsStore::open`]).
    pub(super) fn open(dir: &Path, opts: &StoreOptions) -> Result<Engine, StoreError> {
        let dir = dir.to_path_buf();
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
        let (generation, wal_start, max_span_ms) = init_db(&db, &policy)?;
        let mut loaded = load_checkpoint(&db)?;
        // Chunks sealed while replaying belong to the writer's first generation, so the first
        // checkpoint commits them.
        let next_gen = generation + 1;
        let seg_id = replay_wal(&wal_dir, wal_start, next_gen, &policy, &mut loaded)?;
        let segment = Segment::create(&wal_dir, seg_id)?;
        let Loaded {
            registry,
            index,
            recovered,
            state,
            new_series,
        } = loaded;

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
                .spawn(move || syncer::run(&sh2, &s2, window))?,
        );
        let tick_tx = tx.clone().downgrade();
        let sh3 = shared.clone();
        let wal3 = wal_dir.clone();
        let retention_every = opts.retention_interval;
        threads.push(
            std::thread::Builder::new()
                .name("store-checkpoint".into())
                .spawn(move || checkpointer::run(&sh3, &wal3, job_rx, tick_tx, retention_every))?,
        );
        threads.push(
            std::thread::Builder::new()
                .name("store-write".into())
                .spawn(move || writer.run(rx))?,
        );
        Ok(Engine {
            shared,
            tx,
            threads: Mutex::new(threads),
        })
    }
}

/// What recovery rebuilds in memory: the last checkpoint, then the WAL replayed over it.
struct Loaded {
    registry: Registry,
    index: OriginIndex,
    /// Origins replayed from the WAL: durable before a crash, but their feeds and rule
    /// evaluation may never have happened. Their first redelivery is `Recovered`.
    recovered: HashSet<(Arc<str>, u64, u64)>,
    state: State,
    /// Series defined in the replayed WAL, for the next checkpoint's registry rows.
    new_series: Vec<(u32, Vec<u8>)>,
}

/// Creates the tables, checks the format and records the widest chunk span; returns the last
/// checkpoint's bookkeeping: (generation, first WAL segment not covered, widest chunk span).
fn init_db(db: &Database, policy: &SealPolicy) -> Result<(u64, u64, i64), StoreError> {
    let txn = db.begin_write().map_err(db_err)?;
    let r = {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        txn.open_table(CHUNKS).map_err(db_err)?;
        txn.open_table(SERIES).map_err(db_err)?;
        txn.open_table(HEADS).map_err(db_err)?;
        txn.open_table(ORIGINS).map_err(db_err)?;
        let get = |m: &redb::Table<&str, u64>, k: &str| -> Result<Option<u64>, StoreError> {
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
    Ok(r)
}

/// Series, dedup state and head snapshots as the last checkpoint committed them.
fn load_checkpoint(db: &Database) -> Result<Loaded, StoreError> {
    let mut registry = Registry::default();
    let mut index = OriginIndex::default();
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
                .map_err(|_| StoreError::Corrupt(format!("dedup state of agent {}", k.value())))?;
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
    Ok(Loaded {
        registry,
        index,
        recovered: HashSet::new(),
        state,
        new_series: Vec::new(),
    })
}

/// Replays the WAL segments from `wal_start` into `loaded` (chunks sealed on the way get
/// `generation`), cutting a torn record off the end of the last one; returns the id of the
/// segment to write next.
fn replay_wal(
    wal_dir: &Path,
    wal_start: u64,
    generation: u64,
    policy: &SealPolicy,
    loaded: &mut Loaded,
) -> Result<u64, StoreError> {
    let mut segments = wal::list_segments(wal_dir)?;
    for &id in segments.iter().filter(|&&id| id < wal_start) {
        // Covered by a checkpoint whose cleanup did not finish.
        std::fs::remove_file(wal::segment_path(wal_dir, id))?;
    }
    segments.retain(|&id| id >= wal_start);
    let mut replayed = 0u64;
    let mut sealed = Vec::new();
    for (i, &id) in segments.iter().enumerate() {
        let path = wal::segment_path(wal_dir, id);
        let end = wal::read_segment(&path, id, |rec| {
            for (sid, device, code) in rec.defs {
                if let Some(quantity) = Quantity::from_code(code) {
                    let s = SeriesId { device, quantity };
                    loaded.new_series.push((sid, encode_series(&s)));
                    loaded.registry.define(sid, s);
                }
            }
            if let Some(o) = &rec.origin {
                loaded.index.insert(&o.agent, o.stream, o.seq);
                loaded.recovered.insert((o.agent.clone(), o.stream, o.seq));
            }
            for (sid, mut pts) in rec.series {
                replayed += pts.len() as u64;
                sort_points(&mut pts);
                let head = loaded.state.heads.entry(sid).or_default();
                for p in pts {
                    head.push(p, policy, &mut sealed);
                }
                push_pending(&mut loaded.state, sid, &mut sealed, generation);
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
    Ok(segments.last().map_or(wal_start, |l| l + 1))
}
