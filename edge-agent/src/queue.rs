//! The durable store-and-forward queue: everything the agent must deliver to the hub, on disk.
//!
//! One redb file under `data_dir`. Every entry gets the next sequence number of the queue's
//! `stream` (a random u64 drawn when the file is created), gapless from 1, and is committed with
//! an fsync before anyone may send it. An entry leaves the queue only when the hub's ack covers
//! its seq for this stream, or when the disk budget is full and it is the oldest (then it is
//! counted as dropped). Deletions on ack are committed without fsync: if power fails before the
//! next durable commit they come back and are sent again, which the hub's dedup by
//! (agent, stream, seq) absorbs; never the other way round.
//!
//! Entries carry a kind so the queue can hold more than reading batches: camera events share
//! the seq numbering (acknowledged like batches), and JPEG snapshots live in their own table,
//! acknowledged by event id (`Ack::snapshots`) and counted against the same budget; when it is
//! full the oldest snapshots go first, then the oldest entries.
//!
//! Disk trouble does not need a restart: when redb fails with an I/O error (it then refuses
//! every further operation with "previous I/O error" until the database is closed and
//! reopened), the queue closes the database and reopens it on the next operation after a
//! backoff (1 s doubling to 30 s, see [`Queue::retry_now`]). Meanwhile operations fail with
//! [`QueueError::Unavailable`] at once, without touching the disk. Counters are read back from
//! the file at reopen, so seqs stay gapless; ack deletions that were not yet durable (see above)
//! are applied again, so an acknowledged entry does not come back.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use protocols::batch::{Ack, AgentBatch, DeviceReadings, encode};
use rand::Rng;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use crate::backoff::Backoff;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// Snapshots by when they were stored, to drop the oldest first: (stored ms, event id) -> bytes
/// counted against the budget.
const SNAPSHOT_ORDER: TableDefinition<(i64, &str), u64> = TableDefinition::new("snapshot_order");

/// Bytes counted per entry on top of its payload (key, header, B-tree slot).
const ENTRY_OVERHEAD: u64 = 32;
/// Header of a stored entry: kind (1), enqueued at (8, epoch ms LE), readings (4, LE).
const HEADER: usize = 13;
/// Header of a stored snapshot: stored at (8, epoch ms LE), then the JPEG.
const SNAPSHOT_HEADER: usize = 8;

/// First wait before reopening the database after an I/O error.
pub const REOPEN_BASE: Duration = Duration::from_secs(1);
/// Longest wait between reopen attempts.
pub const REOPEN_MAX: Duration = Duration::from_secs(30);

/// The file name of the queue inside `data_dir`.
pub const QUEUE_FILE: &str = "queue.redb";

/// What an entry is, which decides the topic it is published on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A postcard [`AgentBatch`] for `v1/agents/{id}/batch`.
    Batch = 1,
    /// A JSON camera event for `v1/agents/{id}/events` (carries its own `stream`/`seq`).
    Event = 2,
}

impl EntryKind {
    fn from_u8(b: u8) -> Option<EntryKind> {
        match b {
            1 => Some(EntryKind::Batch),
            2 => Some(EntryKind::Event),
            _ => None,
        }
    }
}

/// One queued entry, as read back for sending.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEntry {
    /// Sequence number in the stream.
    pub seq: u64,
    /// What it is.
    pub kind: EntryKind,
    /// When it was committed, epoch ms.
    pub enqueued_ms: i64,
    /// Readings it carries (0 for events).
    pub readings: u32,
    /// The bytes to publish.
    pub payload: Vec<u8>,
}

/// The queue's counters, as health and metrics report them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// The queue's stream id.
    pub stream: u64,
    /// Entries waiting for the hub's ack.
    pub depth: u64,
    /// Bytes counted against the budget.
    pub bytes: u64,
    /// Seq of the oldest waiting entry.
    pub oldest_seq: Option<u64>,
    /// When the oldest waiting entry was committed, epoch ms.
    pub oldest_enqueued_ms: Option<i64>,
    /// The seq the next entry will get.
    pub next_seq: u64,
    /// Entries dropped for the budget since the queue was created.
    pub dropped: u64,
    /// Readings in those entries.
    pub dropped_readings: u64,
    /// Readings waiting.
    pub readings: u64,
    /// Camera snapshots waiting for the hub's ack.
    pub snapshots: u64,
    /// Snapshots dropped for the budget since the queue was created.
    pub dropped_snapshots: u64,
}

/// What storing a snapshot did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotStored {
    /// Its size against the budget.
    pub bytes: u64,
    /// Older snapshots dropped to make room.
    pub dropped_snapshots: u64,
    /// Older entries dropped to make room (only when no snapshot was left to drop).
    pub dropped: u64,
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The new entry's seq.
    pub seq: u64,
    /// Its size against the budget.
    pub bytes: u64,
    /// Oldest entries dropped to make room.
    pub dropped: u64,
}

/// What an ack did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Acked {
    /// Entries deleted.
    pub deleted: u64,
    /// Snapshots deleted.
    pub snapshots_deleted: u64,
    /// The ack named another stream and was ignored.
    pub foreign: bool,
}

/// A queue failure.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The data directory could not be made.
    #[error("{path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The database is held by another process (a second agent on the same data_dir).
    #[error(
        "{0}: the queue is open in another process (is another agent running on this data_dir?)"
    )]
    Locked(PathBuf),
    /// The storage engine failed.
    #[error("queue storage: {0}")]
    Storage(#[from] redb::Error),
    /// An entry alone is larger than the whole budget.
    #[error("entry of {size} bytes exceeds the queue budget of {max} bytes")]
    TooLarge {
        /// The entry's size.
        size: u64,
        /// The budget.
        max: u64,
    },
    /// A stored entry is not in a form this agent wrote.
    #[error("queue entry {0} is corrupt")]
    Corrupt(u64),
    /// The database was closed after an I/O error and is not reopened yet.
    #[error("queue closed after an I/O error ({reason}); reopening in {}s", retry_in.as_secs_f32().ceil())]
    Unavailable {
        /// The error that closed it (or the last failed reopen).
        reason: String,
        /// Time until the next reopen attempt.
        retry_in: Duration,
    },
}

impl QueueError {
    /// An I/O failure of the storage (or redb's latched "previous I/O error"): the database
    /// must be closed and reopened before it works again.
    pub fn is_io(&self) -> bool {
        matches!(
            self,
            QueueError::Storage(
                redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed
            )
        )
    }

    /// The disk is failing: an I/O error, or the queue is closed waiting for a reopen.
    pub fn is_disk_trouble(&self) -> bool {
        self.is_io() || matches!(self, QueueError::Unavailable { .. })
    }
}

/// Whether the queue works, as health reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueCondition {
    /// The last operation failed with an I/O error, or the database is closed for a reopen.
    pub failing: bool,
    /// The error, while failing.
    pub error: Option<String>,
    /// Reopens after I/O errors since the queue was opened.
    pub reopens: u64,
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for QueueError {
            fn from(e: $t) -> QueueError {
                QueueError::Storage(e.into())
            }
        }
    )*};
}
storage_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

#[derive(Debug)]
struct Counters {
    stream: u64,
    next_seq: u64,
    bytes: u64,
    depth: u64,
    readings: u64,
    dropped: u64,
    dropped_readings: u64,
    snapshots: u64,
    dropped_snapshots: u64,
    /// Entry ranges deleted by acks since the last durable commit: a database closed after an
    /// I/O error may lose them, so a reopen deletes them again.
    undurable_acks: Vec<(u64, u64)>,
    /// Snapshot ids deleted the same way.
    undurable_snapshot_acks: Vec<String>,
}

impl Counters {
    /// Everything committed so far is durable.
    fn durable(&mut self) {
        self.undurable_acks.clear();
        self.undurable_snapshot_acks.clear();
    }

    fn acked_range(&mut self, first: u64, last: u64) {
        // Acks come mostly in order: extend the last range instead of growing the list.
        if let Some(r) = self.undurable_acks.last_mut()
            && first <= r.1.saturating_add(1)
            && last >= r.0
        {
            r.0 = r.0.min(first);
            r.1 = r.1.max(last);
            return;
        }
        self.undurable_acks.push((first, last));
    }

    fn evicted(&mut self, ev: &Evicted) {
        self.bytes = self.bytes.saturating_sub(ev.bytes);
        self.depth = self.depth.saturating_sub(ev.entries);
        self.readings = self.readings.saturating_sub(ev.readings);
        self.snapshots = self.snapshots.saturating_sub(ev.snapshots);
        self.dropped += ev.entries;
        self.dropped_readings += ev.readings;
        self.dropped_snapshots += ev.snapshots;
    }
}

/// What making room in a full queue dropped.
#[derive(Debug, Default)]
struct Evicted {
    bytes: u64,
    entries: u64,
    readings: u64,
    snapshots: u64,
}

/// Drops the oldest snapshots, then the oldest entries, until `need` more bytes fit in `room`
/// bytes of budget already holding `used`. Snapshots go first: they are the largest and least
/// vital part (their event record, kept, still says what happened).
fn make_room(
    tx: &redb::WriteTransaction,
    used: u64,
    need: u64,
    room: u64,
) -> Result<Evicted, QueueError> {
    let mut ev = Evicted::default();
    if used + need <= room {
        return Ok(ev);
    }
    let mut order = tx.open_table(SNAPSHOT_ORDER)?;
    let mut snaps = tx.open_table(SNAPSHOTS)?;
    while used - ev.bytes + need > room {
        let Some((k, v)) = order.pop_first()? else {
            break;
        };
        let (_, id) = k.value();
        snaps.remove(id)?;
        ev.bytes += v.value();
        ev.snapshots += 1;
    }
    let mut entries = tx.open_table(ENTRIES)?;
    while used.saturating_sub(ev.bytes) + need > room {
        let Some((_, v)) = entries.pop_first()? else {
            break;
        };
        ev.bytes += entry_size(v.value());
        ev.readings += entry_readings(v.value());
        ev.entries += 1;
    }
    Ok(ev)
}

/// The durable queue. Methods block on disk I/O: call them from a blocking thread.
pub struct Queue {
    // `None` while closed after an I/O error. Lock order: `counters`, then `db`.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    max_bytes: u64,
    cache_bytes: usize,
    // Mirrors the meta table; guarded so appends and acks from different threads agree.
    counters: Mutex<Counters>,
    reopen: Mutex<ReopenState>,
}

#[derive(Debug)]
struct ReopenState {
    backoff: Backoff,
    /// When the closed database may be opened again.
    next_attempt: Option<Instant>,
    /// When it was last closed after an I/O error.
    last_close: Option<Instant>,
    /// The error that closed it or made the last reopen fail.
    error: Option<String>,
    reopens: u64,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("path", &self.path)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

fn meta_get(t: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, QueueError> {
    Ok(t.get(key)?.map(|v| v.value()).unwrap_or(0))
}

fn entry_size(stored: &[u8]) -> u64 {
    stored.len() as u64 + ENTRY_OVERHEAD
}

fn entry_readings(stored: &[u8]) -> u64 {
    stored
        .get(9..13)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64)
        .unwrap_or(0)
}

fn snapshot_stored_ms(stored: &[u8]) -> i64 {
    let mut ms = [0u8; 8];
    if let Some(b) = stored.get(..SNAPSHOT_HEADER) {
        ms.copy_from_slice(b);
    }
    i64::from_le_bytes(ms)
}

fn parse_entry(seq: u64, stored: &[u8]) -> Result<StoredEntry, QueueError> {
    if stored.len() < HEADER {
        return Err(QueueError::Corrupt(seq));
    }
    let kind = EntryKind::from_u8(stored[0]).ok_or(QueueError::Corrupt(seq))?;
    let mut ms = [0u8; 8];
    ms.copy_from_slice(&stored[1..9]);
    Ok(StoredEntry {
        seq,
        kind,
        enqueued_ms: i64::from_le_bytes(ms),
        readings: entry_readings(stored) as u32,
        payload: stored[HEADER..].to_vec(),
    })
}

fn open_db(path: &Path, cache_bytes: usize) -> Result<Database, QueueError> {
    match Database::builder().set_cache_size(cache_bytes).create(path) {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(QueueError::Locked(path.to_owned())),
        Err(e) => Err(QueueError::Storage(e.into())),
    }
}

/// Reads the counters (creating the stream on a new file).
fn load_counters(db: &Database) -> Result<Counters, QueueError> {
    let tx = db.begin_write()?;
    let c = {
        let mut meta = tx.open_table(META)?;
        let entries = tx.open_table(ENTRIES)?;
        tx.open_table(SNAPSHOTS)?;
        let order = tx.open_table(SNAPSHOT_ORDER)?;
        let mut stream = meta_get(&meta, "stream")?;
        if stream == 0 {
            // 0 means "not created yet"; a stream id is never 0.
            stream = rand::thread_rng().gen_range(1..=u64::MAX);
            meta.insert("stream", stream)?;
            meta.insert("next_seq", 1)?;
        }
        let next_seq = meta_get(&meta, "next_seq")?.max(1);
        // Bytes and readings are recomputed from the entries: cheap at open and always
        // consistent with what is really there.
        let (mut bytes, mut readings) = (0u64, 0u64);
        for item in entries.iter()? {
            let (_, v) = item?;
            bytes += entry_size(v.value());
            readings += entry_readings(v.value());
        }
        for item in order.iter()? {
            let (_, v) = item?;
            bytes += v.value();
        }
        Counters {
            stream,
            next_seq,
            bytes,
            depth: entries.len()?,
            readings,
            dropped: meta_get(&meta, "dropped")?,
            dropped_readings: meta_get(&meta, "dropped_readings")?,
            snapshots: order.len()?,
            dropped_snapshots: meta_get(&meta, "dropped_snapshots")?,
            undurable_acks: Vec::new(),
            undurable_snapshot_acks: Vec::new(),
        }
    };
    tx.commit()?;
    Ok(c)
}

/// Deletes again, durably, what acks deleted before the database was closed.
fn reapply_acks(db: &Database, ranges: &[(u64, u64)], snaps: &[String]) -> Result<(), QueueError> {
    if ranges.is_empty() && snaps.is_empty() {
        return Ok(());
    }
    let tx = db.begin_write()?;
    {
        let mut entries = tx.open_table(ENTRIES)?;
        for &(first, last) in ranges {
            entries.retain_in(first..=last, |_, _| false)?;
        }
        let mut by_id = tx.open_table(SNAPSHOTS)?;
        let mut order = tx.open_table(SNAPSHOT_ORDER)?;
        for id in snaps {
            if let Some(v) = by_id.remove(id.as_str())? {
                let at = snapshot_stored_ms(v.value());
                order.remove((at, id.as_str()))?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

impl Queue {
    /// Opens (or creates) the queue in `data_dir` with a disk budget of `max_bytes`.
    ///
    /// `cache_bytes` bounds redb's page cache: the agent keeps it small (the queue is written
    /// once and read once per entry, so a cache buys little and costs resident memory).
    pub fn open(data_dir: &Path, max_bytes: u64, cache_bytes: usize) -> Result<Queue, QueueError> {
        std::fs::create_dir_all(data_dir).map_err(|source| QueueError::Dir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(QUEUE_FILE);
        let db = open_db(&path, cache_bytes)?;
        let counters = load_counters(&db)?;
        Ok(Queue {
            db: RwLock::new(Some(db)),
            path,
            max_bytes,
            cache_bytes,
            counters: Mutex::new(counters),
            reopen: Mutex::new(ReopenState {
                backoff: Backoff::new(REOPEN_BASE, REOPEN_MAX),
                next_attempt: None,
                last_close: None,
                error: None,
                reopens: 0,
            }),
        })
    }

    /// Sets the reopen backoff (tests use short ones).
    pub fn with_reopen_backoff(self, base: Duration, max: Duration) -> Queue {
        self.reopen_state().backoff = Backoff::new(base, max);
        self
    }

    fn reopen_state(&self) -> std::sync::MutexGuard<'_, ReopenState> {
        self.reopen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the queue works, and why not.
    pub fn condition(&self) -> QueueCondition {
        let r = self.reopen_state();
        QueueCondition {
            failing: r.error.is_some(),
            error: r.error.clone(),
            reopens: r.reopens,
        }
    }

    /// Lets the next operation reopen a closed database without waiting out the backoff
    /// (the agent calls it when free space came back).
    pub fn retry_now(&self) {
        let mut r = self.reopen_state();
        if r.next_attempt.is_some() {
            r.next_attempt = Some(Instant::now());
        }
    }

    fn unavailable(&self) -> QueueError {
        let r = self.reopen_state();
        QueueError::Unavailable {
            reason: r.error.clone().unwrap_or_else(|| "closed".into()),
            retry_in: r
                .next_attempt
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or_default(),
        }
    }

    /// Runs `f` on the open database; an I/O error closes it for a later reopen.
    fn with_db<R>(
        &self,
        f: impl FnOnce(&Database) -> Result<R, QueueError>,
    ) -> Result<R, QueueError> {
        let r = {
            let g = self.db.read().unwrap_or_else(|e| e.into_inner());
            match g.as_ref() {
                Some(db) => f(db),
                None => return Err(self.unavailable()),
            }
        };
        if let Err(e) = &r
            && e.is_io()
        {
            self.close_after(e);
        }
        r
    }

    /// Closes the database after an I/O error: redb refuses everything after one until it is
    /// closed and reopened.
    fn close_after(&self, e: &QueueError) {
        let taken = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        let mut r = self.reopen_state();
        r.error = Some(e.to_string());
        let Some(db) = taken else {
            // Another thread closed it for the same trouble.
            return;
        };
        // Its error is the one we already have; the next open recovers the file.
        let _ = db.close();
        let delay = r.backoff.next_delay();
        r.next_attempt = Some(Instant::now() + delay);
        r.last_close = Some(Instant::now());
        tracing::warn!(
            attempt = r.backoff.failures(),
            "queue storage failed: {e}; closed it, reopening in {:.1}s",
            delay.as_secs_f32()
        );
    }

    /// Reopens a closed database when its backoff has passed; `Unavailable` before that.
    /// Takes the counters' guard because a reopen reloads them.
    fn ensure_open(&self, c: &mut Counters) -> Result<(), QueueError> {
        if self.db.read().unwrap_or_else(|e| e.into_inner()).is_some() {
            return Ok(());
        }
        let due = self
            .reopen_state()
            .next_attempt
            .is_none_or(|t| Instant::now() >= t);
        if !due {
            return Err(self.unavailable());
        }
        let mut g = self.db.write().unwrap_or_else(|e| e.into_inner());
        if g.is_some() {
            return Ok(());
        }
        let opened = open_db(&self.path, self.cache_bytes).and_then(|db| {
            reapply_acks(&db, &c.undurable_acks, &c.undurable_snapshot_acks)?;
            let fresh = load_counters(&db)?;
            Ok((db, fresh))
        });
        let mut r = self.reopen_state();
        match opened {
            Ok((db, fresh)) => {
                *c = fresh;
                *g = Some(db);
                r.next_attempt = None;
                r.reopens += 1;
                tracing::info!(
                    reopens = r.reopens,
                    next_seq = c.next_seq,
                    depth = c.depth,
                    "queue reopened after an I/O error"
                );
                // `error` stays until an operation succeeds: reopening is not writing.
                Ok(())
            }
            Err(e) => {
                let delay = r.backoff.next_delay();
                r.next_attempt = Some(Instant::now() + delay);
                r.error = Some(e.to_string());
                tracing::warn!(
                    attempt = r.backoff.failures(),
                    "cannot reopen the queue: {e}; next attempt in {:.1}s",
                    delay.as_secs_f32()
                );
                Err(e)
            }
        }
    }

    /// [`Queue::ensure_open`] for readers: they take the counters' lock (which a commit holds
    /// through its fsync) only when the database is closed.
    fn ensure_open_for_read(&self) -> Result<(), QueueError> {
        if self.db.read().unwrap_or_else(|e| e.into_inner()).is_some() {
            return Ok(());
        }
        self.ensure_open(&mut self.counters())
    }

    /// After a successful write: the disk works. The backoff starts over only once the queue
    /// has stayed up for [`REOPEN_MAX`]: a nearly full disk lets a commit or two through after
    /// each reopen, and resetting then would reopen it every second forever.
    fn wrote(&self) {
        let mut r = self.reopen_state();
        r.error = None;
        if r.backoff.failures() > 0 && r.last_close.is_some_and(|t| t.elapsed() >= REOPEN_MAX) {
            r.backoff.reset();
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        // A panic while holding the lock cannot leave the counters half-updated in a way that
        // matters more than losing the process: recover the guard.
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The queue's stream id.
    pub fn stream(&self) -> u64 {
        self.counters().stream
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits a batch of readings (fsync) and returns its seq. The batch is encoded here so
    /// it carries exactly the stream and seq it is stored under.
    pub fn append_batch(
        &self,
        agent: &str,
        devices: Vec<DeviceReadings>,
        now_ms: i64,
    ) -> Result<Appended, QueueError> {
        let mut batch = AgentBatch {
            agent: agent.to_string(),
            stream: 0,
            seq: 0,
            devices,
        };
        let readings = batch.reading_count() as u32;
        self.append(EntryKind::Batch, now_ms, readings, |stream, seq| {
            batch.stream = stream;
            batch.seq = seq;
            encode(&batch)
        })
    }

    /// Commits an entry (fsync); `build` makes the payload for the assigned stream and seq.
    pub fn append(
        &self,
        kind: EntryKind,
        now_ms: i64,
        readings: u32,
        build: impl FnOnce(u64, u64) -> Vec<u8>,
    ) -> Result<Appended, QueueError> {
        let mut c = self.counters();
        self.ensure_open(&mut c)?;
        let seq = c.next_seq;
        let payload = build(c.stream, seq);
        let mut stored = Vec::with_capacity(HEADER + payload.len());
        stored.push(kind as u8);
        stored.extend_from_slice(&now_ms.to_le_bytes());
        stored.extend_from_slice(&readings.to_le_bytes());
        stored.extend_from_slice(&payload);
        let size = entry_size(&stored);
        if size > self.max_bytes {
            return Err(QueueError::TooLarge {
                size,
                max: self.max_bytes,
            });
        }
        let ev = self.with_db(|db| {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            let ev = make_room(&tx, c.bytes, size, self.max_bytes)?;
            {
                let mut entries = tx.open_table(ENTRIES)?;
                entries.insert(seq, stored.as_slice())?;
                let mut meta = tx.open_table(META)?;
                meta.insert("next_seq", seq + 1)?;
                if ev.entries > 0 {
                    meta.insert("dropped", c.dropped + ev.entries)?;
                    meta.insert("dropped_readings", c.dropped_readings + ev.readings)?;
                }
                if ev.snapshots > 0 {
                    meta.insert("dropped_snapshots", c.dropped_snapshots + ev.snapshots)?;
                }
            }
            tx.commit()?;
            Ok(ev)
        })?;
        self.wrote();
        c.durable();
        c.next_seq = seq + 1;
        c.evicted(&ev);
        c.bytes += size;
        c.depth += 1;
        c.readings += readings as u64;
        let dropped_now = ev.entries;
        Ok(Appended {
            seq,
            bytes: size,
            dropped: dropped_now,
        })
    }

    /// Up to `limit` entries with seq in `from..until`, oldest first.
    pub fn read_range(
        &self,
        from: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<StoredEntry>, QueueError> {
        if from >= until || limit == 0 {
            return Ok(Vec::new());
        }
        self.ensure_open_for_read()?;
        self.with_db(|db| {
            let tx = db.begin_read()?;
            let entries = tx.open_table(ENTRIES)?;
            let mut out = Vec::new();
            for item in entries.range(from..until)? {
                let (k, v) = item?;
                out.push(parse_entry(k.value(), v.value())?);
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// One entry, if still queued.
    pub fn get(&self, seq: u64) -> Result<Option<StoredEntry>, QueueError> {
        self.ensure_open_for_read()?;
        self.with_db(|db| {
            let tx = db.begin_read()?;
            let entries = tx.open_table(ENTRIES)?;
            let got = entries.get(seq)?;
            got.map(|v| parse_entry(seq, v.value())).transpose()
        })
    }

    /// Deletes what the hub's ack covers: entries if the ack is for this stream, snapshots by
    /// event id whatever its stream (an event id names one snapshot of this agent, and the hub
    /// may acknowledge a snapshot before it has seen any entry of the stream). Not fsynced (see
    /// the module docs); [`Queue::sync`] makes it durable.
    pub fn ack(&self, ack: &Ack) -> Result<Acked, QueueError> {
        let mut c = self.counters();
        let foreign = ack.stream != c.stream;
        if foreign && ack.snapshots.is_empty() {
            return Ok(Acked {
                foreign: true,
                ..Acked::default()
            });
        }
        self.ensure_open(&mut c)?;
        // Clip to what can exist so a wild range costs nothing.
        let ranges: Vec<(u64, u64)> = ack
            .seqs
            .iter()
            .filter(|_| !foreign)
            .map(|&(first, last)| (first, last.min(c.next_seq.saturating_sub(1))))
            .filter(|(first, last)| first <= last)
            .collect();
        let (freed, deleted, readings, snapshots_deleted) = self.with_db(|db| {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::None)?;
            let (mut freed, mut deleted, mut readings) = (0u64, 0u64, 0u64);
            let mut snapshots_deleted = Vec::new();
            {
                let mut entries = tx.open_table(ENTRIES)?;
                for &(first, last) in &ranges {
                    entries.retain_in(first..=last, |_, v| {
                        freed += entry_size(v);
                        readings += entry_readings(v);
                        deleted += 1;
                        false
                    })?;
                }
                let mut snaps = tx.open_table(SNAPSHOTS)?;
                let mut order = tx.open_table(SNAPSHOT_ORDER)?;
                for id in &ack.snapshots {
                    if let Some(v) = snaps.remove(id.as_str())? {
                        let stored = snapshot_stored_ms(v.value());
                        if let Some(size) = order.remove((stored, id.as_str()))? {
                            freed += size.value();
                        }
                        snapshots_deleted.push(id.clone());
                    }
                }
            }
            tx.commit()?;
            Ok((freed, deleted, readings, snapshots_deleted))
        })?;
        self.wrote();
        for &(first, last) in &ranges {
            c.acked_range(first, last);
        }
        let n_snaps = snapshots_deleted.len() as u64;
        c.undurable_snapshot_acks.extend(snapshots_deleted);
        c.bytes = c.bytes.saturating_sub(freed);
        c.depth = c.depth.saturating_sub(deleted);
        c.readings = c.readings.saturating_sub(readings);
        c.snapshots = c.snapshots.saturating_sub(n_snaps);
        Ok(Acked {
            deleted,
            snapshots_deleted: n_snaps,
            foreign,
        })
    }

    /// Stores a camera snapshot (fsync) under its event id, until an ack names the id. The
    /// same id again replaces it. When the budget is full the oldest snapshots are dropped
    /// first, then the oldest entries.
    pub fn put_snapshot(
        &self,
        event_id: &str,
        jpeg: &[u8],
        now_ms: i64,
    ) -> Result<SnapshotStored, QueueError> {
        let mut c = self.counters();
        let size = (SNAPSHOT_HEADER + jpeg.len()) as u64 + ENTRY_OVERHEAD;
        if size > self.max_bytes {
            return Err(QueueError::TooLarge {
                size,
                max: self.max_bytes,
            });
        }
        let mut stored = Vec::with_capacity(SNAPSHOT_HEADER + jpeg.len());
        stored.extend_from_slice(&now_ms.to_le_bytes());
        stored.extend_from_slice(jpeg);
        self.ensure_open(&mut c)?;
        let (used, had, ev) = self.with_db(|db| {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            // A replaced snapshot gives its room back first.
            let mut replaced = 0u64;
            let mut had = false;
            {
                let mut snaps = tx.open_table(SNAPSHOTS)?;
                let mut order = tx.open_table(SNAPSHOT_ORDER)?;
                if let Some(old) = snaps.remove(event_id)? {
                    let at = snapshot_stored_ms(old.value());
                    if let Some(b) = order.remove((at, event_id))? {
                        replaced = b.value();
                    }
                    had = true;
                }
            }
            let used = c.bytes.saturating_sub(replaced);
            let ev = make_room(&tx, used, size, self.max_bytes)?;
            {
                let mut snaps = tx.open_table(SNAPSHOTS)?;
                snaps.insert(event_id, stored.as_slice())?;
                let mut order = tx.open_table(SNAPSHOT_ORDER)?;
                order.insert((now_ms, event_id), size)?;
                let mut meta = tx.open_table(META)?;
                if ev.entries > 0 {
                    meta.insert("dropped", c.dropped + ev.entries)?;
                    meta.insert("dropped_readings", c.dropped_readings + ev.readings)?;
                }
                if ev.snapshots > 0 {
                    meta.insert("dropped_snapshots", c.dropped_snapshots + ev.snapshots)?;
                }
            }
            tx.commit()?;
            Ok((used, had, ev))
        })?;
        self.wrote();
        c.durable();
        c.bytes = used;
        if had {
            c.snapshots = c.snapshots.saturating_sub(1);
        }
        c.evicted(&ev);
        c.bytes += size;
        c.snapshots += 1;
        Ok(SnapshotStored {
            bytes: size,
            dropped_snapshots: ev.snapshots,
            dropped: ev.entries,
        })
    }

    /// The JPEG of a stored snapshot, if still queued.
    pub fn snapshot(&self, event_id: &str) -> Result<Option<Vec<u8>>, QueueError> {
        self.ensure_open_for_read()?;
        self.with_db(|db| {
            let tx = db.begin_read()?;
            let snaps = tx.open_table(SNAPSHOTS)?;
            let got = snaps.get(event_id)?;
            Ok(got.map(|v| {
                v.value()
                    .get(SNAPSHOT_HEADER..)
                    .unwrap_or_default()
                    .to_vec()
            }))
        })
    }

    /// Event ids of the queued snapshots, oldest first.
    pub fn snapshot_ids(&self) -> Result<Vec<String>, QueueError> {
        self.ensure_open_for_read()?;
        self.with_db(|db| {
            let tx = db.begin_read()?;
            let order = tx.open_table(SNAPSHOT_ORDER)?;
            let mut out = Vec::new();
            for item in order.iter()? {
                out.push(item?.0.value().1.to_string());
            }
            Ok(out)
        })
    }

    /// Makes every earlier non-durable commit (ack deletions) durable.
    pub fn sync(&self) -> Result<(), QueueError> {
        let mut c = self.counters();
        self.ensure_open(&mut c)?;
        self.with_db(|db| {
            let mut tx = db.begin_write()?;
            tx.set_durability(Durability::Immediate)?;
            tx.commit()?;
            Ok(())
        })?;
        self.wrote();
        c.durable();
        Ok(())
    }

    /// The counters, with the oldest entry's age. While the disk is failing the counters are
    /// still reported, without the oldest entry (it cannot be read).
    pub fn stats(&self) -> Result<QueueStats, QueueError> {
        let mut c = self.counters();
        let oldest = self.ensure_open(&mut c).and_then(|()| {
            self.with_db(|db| {
                let tx = db.begin_read()?;
                let entries = tx.open_table(ENTRIES)?;
                let oldest = entries.first()?;
                Ok(match oldest {
                    Some((k, v)) => {
                        let e = parse_entry(k.value(), v.value())?;
                        (Some(e.seq), Some(e.enqueued_ms))
                    }
                    None => (None, None),
                })
            })
        });
        let (oldest_seq, oldest_enqueued_ms) = match oldest {
            Ok(o) => o,
            Err(e) if e.is_disk_trouble() => (None, None),
            Err(e) => return Err(e),
        };
        Ok(QueueStats {
            stream: c.stream,
            depth: c.depth,
            bytes: c.bytes,
            oldest_seq,
            oldest_enqueued_ms,
            next_seq: c.next_seq,
            dropped: c.dropped,
            dropped_readings: c.dropped_readings,
            readings: c.readings,
            snapshots: c.snapshots,
            dropped_snapshots: c.dropped_snapshots,
        })
    }

    /// Seqs of every queued entry (for tests and diagnostics).
    pub fn seqs(&self) -> Result<Vec<u64>, QueueError> {
        self.ensure_open_for_read()?;
        self.with_db(|db| {
            let tx = db.begin_read()?;
            let entries = tx.open_table(ENTRIES)?;
            let mut out = Vec::new();
            for item in entries.iter()? {
                out.push(item?.0.value());
            }
            Ok(out)
        })
    }
}

/// A real small filesystem for the tests (shared with the store's and the hub's tests).
#[cfg(test)]
#[path = "../../series-store/tests/small_disk/mod.rs"]
mod small_disk;

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::batch::{Reading, Sample, decode};
    use protocols::{Quality, Quantity, Value};

    fn readings(n: usize, base: f64) -> Vec<DeviceReadings> {
        vec![DeviceReadings {
            device: "WL-0001".into(),
            samples: vec![Sample {
                ts_ms: 1_700_000_000_000,
                readings: (0..n)
                    .map(|i| Reading {
                        quantity: Quantity::WaterLevel.code(),
                        value: Value::Number(base + i as f64),
                        quality: Quality::Good,
                    })
                    .collect(),
            }],
        }]
    }

    #[test]
    fn seqs_are_gapless_and_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        let stream = {
            let q = Queue::open(d.path(), 1 << 20, 1 << 16).unwrap();
            for i in 0..5 {
                let a = q.append_batch("AG-1", readings(2, i as f64), 1000).unwrap();
                assert_eq!(a.seq, i + 1);
            }
            q.stream()
        };
        let q = Queue::open(d.path(), 1 << 20, 1 << 16).unwrap();
        assert_eq!(q.stream(), stream);
        assert_ne!(stream, 0);
        let a = q.append_batch("AG-1", readings(1, 0.0), 1000).unwrap();
        assert_eq!(a.seq, 6);
        let e = q.read_range(1, 100, 100).unwrap();
        assert_eq!(
            e.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
        let b = decode(&e[2].payload).unwrap();
        assert_eq!((b.stream, b.seq, b.agent.as_str()), (stream, 3, "AG-1"));
        assert_eq!(b.reading_count(), 2);
        let s = q.stats().unwrap();
        assert_eq!((s.depth, s.readings, s.oldest_seq), (6, 11, Some(1)));
    }

    #[test]
    fn ack_deletes_only_covered_seqs_of_this_stream() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue::open(d.path(), 1 << 20, 1 << 16).unwrap();
        for _ in 0..10 {
            q.append_batch("AG-1", readings(3, 0.0), 1).unwrap();
        }
        let foreign = Ack::from_seqs(q.stream().wrapping_add(1), (1..=10).collect());
        assert!(q.ack(&foreign).unwrap().foreign);
        assert_eq!(q.stats().unwrap().depth, 10);
        let a = q
            .ack(&Ack {
                stream: q.stream(),
                seqs: vec![(2, 4), (7, 7), (9, u64::MAX)],
                snapshots: vec![],
            })
            .unwrap();
        assert_eq!(a.deleted, 6);
        assert_eq!(q.seqs().unwrap(), [1, 5, 6, 8]);
        let s = q.stats().unwrap();
        assert_eq!((s.depth, s.readings), (4, 12));
        q.sync().unwrap();
        drop(q);
        let q = Queue::open(d.path(), 1 << 20, 1 << 16).unwrap();
        assert_eq!(q.seqs().unwrap(), [1, 5, 6, 8]);
        assert_eq!(q.stats().unwrap().next_seq, 11);
    }

    #[test]
    fn full_budget_drops_oldest_and_counts_it() {
        let d = tempfile::tempdir().unwrap();
        let budget = 64 * 1024;
        let q = Queue::open(d.path(), budget, 1 << 16).unwrap();
        let mut dropped = 0;
        for i in 0..200 {
            dropped += q
                .append_batch("AG-1", readings(50, i as f64), 1)
                .unwrap()
                .dropped;
        }
        let s = q.stats().unwrap();
        assert!(s.bytes <= budget, "{} > {budget}", s.bytes);
        assert!(dropped > 0);
        assert_eq!(s.dropped, dropped);
        assert_eq!(s.dropped_readings, dropped * 50);
        assert_eq!(s.depth + dropped, 200);
        // What is left is the newest, contiguous up to the last seq.
        let seqs = q.seqs().unwrap();
        assert_eq!(*seqs.last().unwrap(), 200);
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(seqs[0], dropped + 1);
        drop(q);
        let q = Queue::open(d.path(), budget, 1 << 16).unwrap();
        assert_eq!(q.stats().unwrap().dropped, dropped);
    }

    #[test]
    fn second_open_of_the_same_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let _q = Queue::open(d.path(), 1 << 20, 1 << 16).unwrap();
        let e = Queue::open(d.path(), 1 << 20, 1 << 16).unwrap_err();
        assert!(matches!(e, QueueError::Locked(_)), "{e}");
    }

    #[test]
    fn snapshots_wait_for_their_ack_whatever_the_stream() {
        let d = tempfile::tempdir().unwrap();
        let q = Queue::open(d.path(), 1 << 20, 1 << 16).unwrap();
        q.put_snapshot("CAM-1.1000.1", b"\xff\xd8one\xff\xd9", 1000)
            .unwrap();
        q.put_snapshot("CAM-1.2000.2", b"\xff\xd8two\xff\xd9", 2000)
            .unwrap();
        // The same id again replaces, never duplicates.
        q.put_snapshot("CAM-1.1000.1", b"\xff\xd8uno\xff\xd9", 1500)
            .unwrap();
        assert_eq!(q.snapshot_ids().unwrap(), ["CAM-1.1000.1", "CAM-1.2000.2"]);
        assert_eq!(
            q.snapshot("CAM-1.1000.1").unwrap().unwrap(),
            b"\xff\xd8uno\xff\xd9"
        );
        let s = q.stats().unwrap();
        assert_eq!((s.snapshots, s.depth), (2, 0));
        let bytes = s.bytes;
        drop(q);
        let q = Queue::open(d.path(), 1 << 20, 1 << 16).unwrap();
        let s = q.stats().unwrap();
        assert_eq!((s.snapshots, s.bytes), (2, bytes));
        // An ack for another stream still deletes the snapshots it names, not entries.
        q.append_batch("AG-1", readings(1, 0.0), 1).unwrap();
        let a = q
            .ack(&Ack {
                stream: q.stream().wrapping_add(1),
                seqs: vec![(1, 1)],
                snapshots: vec!["CAM-1.1000.1".into(), "CAM-9.1.1".into()],
            })
            .unwrap();
        assert_eq!((a.deleted, a.snapshots_deleted, a.foreign), (0, 1, true));
        assert_eq!(q.snapshot_ids().unwrap(), ["CAM-1.2000.2"]);
        assert!(q.snapshot("CAM-1.1000.1").unwrap().is_none());
        let s = q.stats().unwrap();
        assert_eq!((s.snapshots, s.depth), (1, 1));
    }

    #[test]
    fn a_full_budget_drops_the_oldest_snapshots_before_entries() {
        let d = tempfile::tempdir().unwrap();
        let budget = 64 * 1024;
        let q = Queue::open(d.path(), budget, 1 << 16).unwrap();
        for i in 0..5 {
            q.append_batch("AG-1", readings(10, i as f64), 1).unwrap();
        }
        let jpeg = vec![7u8; 20_000];
        let mut dropped = 0;
        for i in 0..6 {
            let r = q.put_snapshot(&format!("CAM-1.{i}.{i}"), &jpeg, i).unwrap();
            assert_eq!(r.dropped, 0, "entries stay while snapshots can go");
            dropped += r.dropped_snapshots;
        }
        let s = q.stats().unwrap();
        assert!(s.bytes <= budget, "{} > {budget}", s.bytes);
        assert_eq!(s.depth, 5);
        assert_eq!(s.dropped_snapshots, dropped);
        assert_eq!(s.snapshots + dropped, 6);
        let ids = q.snapshot_ids().unwrap();
        assert_eq!(ids.last().unwrap(), "CAM-1.5.5", "the newest is kept");
        assert!(
            q.put_snapshot("big", &vec![0u8; budget as usize], 9)
                .is_err()
        );
    }

    #[test]
    fn an_io_error_closes_the_database_and_a_later_operation_reopens_it() {
        let fs = super::small_disk::SmallDisk::mount("4m");
        let dir = fs.path();
        let q = Queue::open(dir, 64 << 20, 1 << 16)
            .unwrap()
            .with_reopen_backoff(Duration::from_millis(500), Duration::from_secs(1));
        for i in 0..3 {
            q.append_batch("AG-1", readings(10, i as f64), 1).unwrap();
        }
        // Not durable yet: a close after an I/O error would lose it, the reopen applies it again.
        assert_eq!(
            q.ack(&Ack::from_seqs(q.stream(), vec![1])).unwrap().deleted,
            1
        );

        let filler = fs.fill(0);
        let mut last_ok = 3;
        let err = loop {
            match q.append_batch("AG-1", readings(200, 0.0), 1) {
                Ok(a) => last_ok = a.seq,
                Err(e) => break e,
            }
            assert!(
                last_ok < 10_000,
                "the full file system never failed a commit"
            );
        };
        assert!(err.is_io(), "{err}");
        assert!(q.condition().failing);
        // Closed: refused at once, without touching the disk, until the backoff has passed.
        let again = q.append_batch("AG-1", readings(1, 0.0), 1).unwrap_err();
        assert!(matches!(again, QueueError::Unavailable { .. }), "{again}");
        // Counters are still reported.
        assert_eq!(q.stats().unwrap().next_seq, last_ok + 1);

        std::fs::remove_file(&filler).unwrap();
        q.retry_now();
        let a = q.append_batch("AG-1", readings(1, 0.0), 1).unwrap();
        assert_eq!(a.seq, last_ok + 1, "gapless across the reopen");
        let c = q.condition();
        assert!(!c.failing && c.error.is_none(), "{c:?}");
        assert_eq!(c.reopens, 1);
        let seqs = q.seqs().unwrap();
        assert_eq!(
            seqs,
            (2..=last_ok + 1).collect::<Vec<_>>(),
            "acked 1 stays deleted"
        );
        assert_eq!(q.stats().unwrap().depth, seqs.len() as u64);
    }
}
