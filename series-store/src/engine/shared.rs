//! What the engine's threads share: the redb tables, the heads and pending chunks, the series
//! registry and the failed flag, all behind [`Shared`].
//!
//! Locks: no code holds two of `registry`, `state`, `failed` and the syncer's queue at once
//! (the writer and the queries take `registry`, release it, then take `state`), so there is no
//! lock order to keep. `db` is read-locked only around beginning a transaction (and counting
//! chunks in `stats`); `close` write-locks it to drop the database.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use parking_lot::{Mutex, RwLock};
use protocols::Quantity;
use protocols::time::now_ms;
use redb::{Database, TableDefinition};

use crate::chunk::{ChunkMeta, encode_record};
use crate::head::{SealPolicy, Sealed, SeriesHead};
use crate::{Point, SeriesId, StoreError};

/// (series id, chunk start ms, per-series chunk seq) -> chunk record.
pub(super) const CHUNKS: TableDefinition<(u32, i64, u32), &[u8]> = TableDefinition::new("chunks");
/// series id -> quantity code (2 bytes LE) + device id.
pub(super) const SERIES: TableDefinition<u32, &[u8]> = TableDefinition::new("series");
/// series id -> head snapshot as of the checkpoint.
pub(super) const HEADS: TableDefinition<u32, &[u8]> = TableDefinition::new("heads");
/// agent -> dedup state of its streams.
pub(super) const ORIGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("origins");
/// Engine bookkeeping: the `META_*` keys below.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// meta: the on-disk format version ([`FORMAT`]).
pub(super) const META_FORMAT: &str = "format";
/// meta: the generation of the last committed checkpoint.
pub(super) const META_GEN: &str = "checkpoint_gen";
/// meta: the first WAL segment the last checkpoint does not cover.
pub(super) const META_WAL_START: &str = "wal_start";
/// meta: the widest chunk span any options ever allowed (queries look back this far).
pub(super) const META_MAX_SPAN: &str = "max_chunk_span_ms";
/// The on-disk format this code reads and writes.
pub(super) const FORMAT: u64 = 1;
/// The redb file under the store directory.
pub(super) const DB_FILE: &str = "series.redb";
/// The directory of WAL segments under the store directory.
pub(super) const WAL_DIR: &str = "wal";

/// Maps a redb error onto [`StoreError`], keeping corruption and I/O apart.
pub(super) fn db_err(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(m) => StoreError::Corrupt(m),
        redb::Error::Io(e) => StoreError::Io(e),
        other => StoreError::Db(other.to_string()),
    }
}

/// The same I/O error once per waiter (`io::Error` is not `Clone`).
pub(super) fn io_copy(e: &std::io::Error) -> StoreError {
    StoreError::Io(std::io::Error::new(e.kind(), e.to_string()))
}

/// A sealed chunk not yet in redb.
#[derive(Debug)]
pub(super) struct PendingChunk {
    /// Its first timestamp (the chunk key's start).
    pub(super) start_ts: i64,
    /// Per-series chunk sequence number (the key's last part).
    pub(super) seq: u32,
    /// Count, span and aggregates, for bucketed queries.
    pub(super) meta: ChunkMeta,
    /// The record as it will be stored.
    pub(super) rec: Vec<u8>,
    /// The checkpoint that will commit it.
    pub(super) generation: u64,
}

/// The in-memory data queries read next to redb.
#[derive(Debug, Default)]
pub(super) struct State {
    /// Unsealed points per series id.
    pub(super) heads: HashMap<u32, SeriesHead>,
    /// Sealed chunks per series id, oldest first, until a checkpoint commits them.
    pub(super) pending: HashMap<u32, Vec<Arc<PendingChunk>>>,
    /// Number of chunks in `pending`.
    pub(super) pending_count: u64,
}

/// Series names and their ids (ids are what the WAL, heads and chunk keys use).
#[derive(Debug, Default)]
pub(super) struct Registry {
    /// Series -> id.
    pub(super) ids: HashMap<SeriesId, u32>,
    /// Id -> series.
    pub(super) by_id: HashMap<u32, SeriesId>,
    /// Device -> its quantities and their ids (for `latest`).
    pub(super) by_device: HashMap<Arc<str>, Vec<(Quantity, u32)>>,
    /// The id the next new series gets.
    pub(super) next_id: u32,
}

impl Registry {
    /// Records series `id` (from redb, the WAL or a new append).
    pub(super) fn define(&mut self, id: u32, s: SeriesId) {
        self.by_device
            .entry(s.device.clone())
            .or_default()
            .push((s.quantity, id));
        self.ids.insert(s.clone(), id);
        self.by_id.insert(id, s);
        self.next_id = self.next_id.max(id.saturating_add(1));
    }
}

/// A `SERIES` table value: quantity code (2 bytes LE) + device id.
pub(super) fn encode_series(s: &SeriesId) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + s.device.len());
    v.extend_from_slice(&s.quantity.code().to_le_bytes());
    v.extend_from_slice(s.device.as_bytes());
    v
}

/// Reads [`encode_series`]; `None` if the bytes are not a series name.
pub(super) fn decode_series(b: &[u8]) -> Option<SeriesId> {
    let code = u16::from_le_bytes([*b.first()?, *b.get(1)?]);
    Some(SeriesId {
        device: Arc::from(std::str::from_utf8(&b[2..]).ok()?),
        quantity: Quantity::from_code(code)?,
    })
}

/// What the writer, syncer and checkpointer threads share, and what queries read.
pub(super) struct Shared {
    /// `None` once closed, so that the file can be opened again while handles remain.
    pub(super) db: RwLock<Option<Database>>,
    /// The store directory.
    pub(super) dir: PathBuf,
    /// Heads and pending chunks.
    pub(super) state: RwLock<State>,
    /// Series names and ids.
    pub(super) registry: RwLock<Registry>,
    /// Why the store stopped taking writes, once it has.
    pub(super) failed: Mutex<Option<Failure>>,
    /// When heads seal chunks.
    pub(super) policy: SealPolicy,
    /// Widest chunk span ever written (queries look back this far before `from`).
    pub(super) max_span_ms: i64,
    /// Points older than `now - retention_ms` are never returned.
    pub(super) retention_ms: Option<i64>,
    /// Points accepted since open.
    pub(super) points_appended: AtomicU64,
    /// Checkpoints committed since open.
    pub(super) checkpoints: AtomicU64,
}

/// Why and since when an engine refuses writes.
#[derive(Clone, Debug)]
pub(super) struct Failure {
    /// The first error, e.g. "write-ahead log write: No space left on device (os error 28)".
    pub(super) reason: String,
    /// When it happened, epoch ms.
    pub(super) since_ms: i64,
}

impl Shared {
    /// `Err` once the store has failed: nothing more is written until it is reopened.
    pub(super) fn check_failed(&self) -> Result<(), StoreError> {
        match &*self.failed.lock() {
            Some(f) => Err(StoreError::Stopped(f.reason.clone())),
            None => Ok(()),
        }
    }

    /// Runs `f` with the database, or reports `Closed`.
    pub(super) fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match &*self.db.read() {
            Some(db) => f(db),
            None => Err(StoreError::Closed),
        }
    }

    /// Puts the store into the failed state; the first reason is kept.
    pub(super) fn fail(&self, msg: String) {
        let mut f = self.failed.lock();
        if f.is_none() {
            tracing::error!(error = %msg, "time-series store failed; writes are refused until it reopens");
            *f = Some(Failure {
                reason: msg,
                since_ms: now_ms(),
            });
        }
    }
}

/// Sorts a series' points of one batch by time before they go into the head.
pub(super) fn sort_points(pts: &mut [Point]) {
    if !pts.is_sorted_by_key(|p| p.ts_ms) {
        // Stable: of equal timestamps the later one in the batch is applied last and wins.
        pts.sort_by_key(|p| p.ts_ms);
    }
}

/// Encodes the chunks a head just sealed and makes them visible to queries until the
/// checkpoint of `generation` commits them.
pub(super) fn push_pending(state: &mut State, sid: u32, sealed: &mut Vec<Sealed>, generation: u64) {
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
