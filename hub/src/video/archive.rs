//! The durable archive of camera events and snapshots under `data_dir/video/`.
//!
//! ```text
//! video/video.redb                      redb, every commit fsynced before it is acknowledged
//!   events             (agent, event id)             -> EventRecord (JSON)
//!   events_by_time     (start ms, agent, event id)   -> camera
//!   events_by_camera   (camera, start ms, agent, id) -> ()
//!   snapshots          (agent, event id)             -> SnapshotMeta (JSON)
//!   snapshots_by_time  (stored ms, agent, event id)  -> ()
//! video/snapshots/{agent}/{event id}.jpg  the JPEGs, written whole (tmp, fsync, rename)
//! ```
//! Keys are (agent, event id) because event ids are unique per agent only; an agent can never
//! attach a snapshot to another agent's event. A snapshot may arrive before or after its
//! event: whichever is committed second joins them, inside its write transaction (redb write
//! transactions are exclusive, so the two never miss each other). A file is written before its
//! index entry and deleted after it, so a crash leaves at most an unindexed file, removed at
//! the next open (its snapshot was never acknowledged, so the agent sends it again).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use protocols::messages::CameraEvent;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};

use super::VideoError;
use super::events::{EventRecord, SnapshotInfo};
use super::snapshots::{file_of, write_durably};
use crate::redb_file::RedbFile;

const EVENTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("events");
const BY_TIME: TableDefinition<(i64, &str, &str), &str> = TableDefinition::new("events_by_time");
const BY_CAMERA: TableDefinition<(&str, i64, &str, &str), ()> =
    TableDefinition::new("events_by_camera");
const SNAPSHOTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("snapshots");
const SNAPSHOT_TIME: TableDefinition<(i64, &str, &str), ()> =
    TableDefinition::new("snapshots_by_time");

/// The database file under the video directory.
pub const DB_FILE: &str = "video.redb";
/// The snapshot directory under the video directory.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// What the archive knows of a stored snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// File size.
    pub bytes: u64,
    /// When the hub stored it, epoch ms.
    pub stored_ms: i64,
}

/// The newest event of a camera with a stored snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Latest {
    /// The event's start.
    pub start: i64,
    /// The agent.
    pub agent: String,
    /// The event id.
    pub id: String,
}

/// What recording an event phase did.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    /// The event as now stored.
    pub record: EventRecord,
    /// Whether the phase changed anything (a redelivered phase does not).
    pub changed: bool,
}

/// What storing a snapshot did.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotStored {
    /// Its event, if known yet (now with the snapshot).
    pub record: Option<EventRecord>,
    /// False when the same snapshot was already stored (a redelivery).
    pub fresh: bool,
}

/// What a retention pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events removed.
    pub events: u64,
    /// Snapshots removed (files and index).
    pub snapshots: u64,
}

/// The archive. Methods block on disk I/O: call them from a blocking thread.
pub struct Archive {
    db: RedbFile,
    snapshot_dir: PathBuf,
    latest: Mutex<HashMap<String, Latest>>,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("snapshot_dir", &self.snapshot_dir)
            .finish()
    }
}

fn decode_record(bytes: &[u8]) -> Option<EventRecord> {
    match serde_json::from_slice(bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!("video archive: an event record does not decode: {e}");
            None
        }
    }
}

fn decode_meta(bytes: &[u8]) -> Option<SnapshotMeta> {
    serde_json::from_slice(bytes).ok()
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Records are plain structs of strings and numbers: serializing them cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// The API address of an event's snapshot.
pub fn snapshot_url(camera: &str, id: &str) -> String {
    format!("/api/v1/cameras/{camera}/snapshots/{id}")
}

fn info(camera: &str, id: &str, m: &SnapshotMeta) -> SnapshotInfo {
    SnapshotInfo {
        url: snapshot_url(camera, id),
        width: m.width,
        height: m.height,
        bytes: m.bytes,
    }
}

impl Archive {
    /// Opens (or creates) the archive in `dir`, removes files a crash left unindexed, and finds
    /// the latest snapshot of each of `cameras`.
    pub fn open<'a>(
        dir: &Path,
        cameras: impl IntoIterator<Item = &'a str>,
    ) -> Result<Archive, VideoError> {
        let io = |e: std::io::Error| VideoError::Io(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let snapshot_dir = dir.join(SNAPSHOT_DIR);
        std::fs::create_dir_all(&snapshot_dir).map_err(io)?;
        let path = dir.join(DB_FILE);
        let db = match RedbFile::create_with_cache(&path, Some(8 << 20)) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(VideoError::Locked(path));
            }
            Err(e) => return Err(VideoError::db(e)),
        };
        db.with(|db| {
            let tx = db.begin_write().map_err(VideoError::db)?;
            tx.open_table(EVENTS).map_err(VideoError::db)?;
            tx.open_table(BY_TIME).map_err(VideoError::db)?;
            tx.open_table(BY_CAMERA).map_err(VideoError::db)?;
            tx.open_table(SNAPSHOTS).map_err(VideoError::db)?;
            tx.open_table(SNAPSHOT_TIME).map_err(VideoError::db)?;
            tx.commit().map_err(VideoError::db)
        })?;
        let archive = Archive {
            db,
            snapshot_dir,
            latest: Mutex::new(HashMap::new()),
        };
        archive.remove_unindexed_files()?;
        for camera in cameras {
            archive.refresh_latest(camera)?;
        }
        Ok(archive)
    }

    /// Runs `f` on the database. A database error closes the handle (redb refuses everything
    /// after a failed write until the file is opened again) and the next call reopens it; the
    /// archive's own refusals and snapshot file errors keep it.
    fn guarded<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, VideoError>,
    ) -> Result<T, VideoError> {
        self.db.with_unless(f, |e| !matches!(e, VideoError::Db(_)))
    }

    /// How many times the database was opened again after a failure.
    pub fn reopens(&self) -> u64 {
        self.db.reopens()
    }

    /// The directory of the JPEG files.
    pub fn snapshot_dir(&self) -> &Path {
        &self.snapshot_dir
    }

    fn remove_unindexed_files(&self) -> Result<(), VideoError> {
        self.guarded(|db| self.remove_unindexed_in(db))
    }

    fn remove_unindexed_in(&self, db: &Database) -> Result<(), VideoError> {
        let tx = db.begin_read().map_err(VideoError::db)?;
        let snaps = tx.open_table(SNAPSHOTS).map_err(VideoError::db)?;
        let Ok(agents) = std::fs::read_dir(&self.snapshot_dir) else {
            return Ok(());
        };
        for agent in agents.flatten() {
            let agent_name = agent.file_name().to_string_lossy().into_owned();
            let Ok(files) = std::fs::read_dir(agent.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                let indexed = match name.strip_suffix(".jpg") {
                    Some(id) => snaps
                        .get((agent_name.as_str(), id))
                        .map_err(VideoError::db)?
                        .is_some(),
                    None => false,
                };
                if !indexed {
                    tracing::info!(file = %f.path().display(), "removing an unindexed snapshot file");
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        Ok(())
    }

    /// Recomputes a camera's latest snapshot from the index.
    fn refresh_latest(&self, camera: &str) -> Result<(), VideoError> {
        self.guarded(|db| {
            let tx = db.begin_read().map_err(VideoError::db)?;
            let by_camera = tx.open_table(BY_CAMERA).map_err(VideoError::db)?;
            let events = tx.open_table(EVENTS).map_err(VideoError::db)?;
            let mut found = None;
            let range = by_camera
                .range((camera, i64::MIN, "", "")..(camera, i64::MAX, "", ""))
                .map_err(VideoError::db)?;
            for item in range.rev() {
                let (k, _) = item.map_err(VideoError::db)?;
                let (_, start, agent, id) = k.value();
                let has = events
                    .get((agent, id))
                    .map_err(VideoError::db)?
                    .and_then(|v| decode_record(v.value()))
                    .is_some_and(|r| r.snapshot.is_some());
                if has {
                    found = Some(Latest {
                        start,
                        agent: agent.to_string(),
                        id: id.to_string(),
                    });
                    break;
                }
            }
            let mut latest = self.latest.lock();
            match found {
                Some(l) => latest.insert(camera.to_string(), l),
                None => latest.remove(camera),
            };
            Ok(())
        })
    }

    fn note_latest(&self, r: &EventRecord) {
        if r.snapshot.is_none() {
            return;
        }
        let mut latest = self.latest.lock();
        let newer = latest
            .get(&r.camera)
            .is_none_or(|l| (r.start, &r.agent, &r.id) >= (l.start, &l.agent, &l.id));
        if newer {
            latest.insert(
                r.camera.clone(),
                Latest {
                    start: r.start,
                    agent: r.agent.clone(),
                    id: r.id.clone(),
                },
            );
        }
    }

    /// The newest event of `camera` that has a snapshot.
    pub fn latest(&self, camera: &str) -> Option<Latest> {
        self.latest.lock().get(camera).cloned()
    }

    /// Merges an event phase into its record (durably, fsynced), joining a snapshot that
    /// arrived first. An event id already used by another camera of the agent is refused.
    pub fn record_event(
        &self,
        agent: &str,
        id: &str,
        ev: &CameraEvent,
    ) -> Result<Recorded, VideoError> {
        self.guarded(|db| {
            let mut tx = db.begin_write().map_err(VideoError::db)?;
            tx.set_durability(Durability::Immediate)
                .map_err(VideoError::db)?;
            let (record, changed) = {
                let mut events = tx.open_table(EVENTS).map_err(VideoError::db)?;
                let old = events
                    .get((agent, id))
                    .map_err(VideoError::db)?
                    .and_then(|v| decode_record(v.value()));
                if let Some(o) = &old
                    && o.camera != ev.camera
                {
                    return Err(VideoError::IdClash {
                        id: id.to_string(),
                        camera: o.camera.clone(),
                    });
                }
                let mut rec = old
                    .clone()
                    .unwrap_or_else(|| EventRecord::new(id, agent, ev));
                rec.merge(ev);
                if rec.snapshot.is_none() {
                    let snaps = tx.open_table(SNAPSHOTS).map_err(VideoError::db)?;
                    if let Some(m) = snaps
                        .get((agent, id))
                        .map_err(VideoError::db)?
                        .and_then(|v| decode_meta(v.value()))
                    {
                        rec.snapshot = Some(info(&rec.camera, id, &m));
                    }
                }
                if old.as_ref() == Some(&rec) {
                    (rec, false)
                } else {
                    events
                        .insert((agent, id), json(&rec).as_slice())
                        .map_err(VideoError::db)?;
                    let mut by_time = tx.open_table(BY_TIME).map_err(VideoError::db)?;
                    let mut by_camera = tx.open_table(BY_CAMERA).map_err(VideoError::db)?;
                    if let Some(o) = &old
                        && o.start != rec.start
                    {
                        by_time
                            .remove((o.start, agent, id))
                            .map_err(VideoError::db)?;
                        by_camera
                            .remove((o.camera.as_str(), o.start, agent, id))
                            .map_err(VideoError::db)?;
                    }
                    by_time
                        .insert((rec.start, agent, id), rec.camera.as_str())
                        .map_err(VideoError::db)?;
                    by_camera
                        .insert((rec.camera.as_str(), rec.start, agent, id), ())
                        .map_err(VideoError::db)?;
                    (rec, true)
                }
            };
            if changed {
                tx.commit().map_err(VideoError::db)?;
                self.note_latest(&record);
            } else {
                tx.abort().map_err(VideoError::db)?;
            }
            Ok(Recorded { record, changed })
        })
    }

    /// Stores a snapshot (file, then index, both fsynced) and joins it to its event if that
    /// is stored already.
    pub fn store_snapshot(
        &self,
        agent: &str,
        id: &str,
        jpeg: &[u8],
        size: (u32, u32),
        now_ms: i64,
    ) -> Result<SnapshotStored, VideoError> {
        self.guarded(|db| {
            let path = file_of(&self.snapshot_dir, agent, id);
            let meta = SnapshotMeta {
                width: size.0,
                height: size.1,
                bytes: jpeg.len() as u64,
                stored_ms: now_ms,
            };
            let existing = {
                let tx = db.begin_read().map_err(VideoError::db)?;
                let snaps = tx.open_table(SNAPSHOTS).map_err(VideoError::db)?;
                snaps
                    .get((agent, id))
                    .map_err(VideoError::db)?
                    .and_then(|v| decode_meta(v.value()))
            };
            if let Some(m) = &existing
                && m.bytes == meta.bytes
                && (m.width, m.height) == size
                && path.exists()
            {
                return Ok(SnapshotStored {
                    record: self.event(agent, id)?,
                    fresh: false,
                });
            }
            write_durably(&path, jpeg)
                .map_err(|e| VideoError::Io(format!("{}: {e}", path.display())))?;
            let mut tx = db.begin_write().map_err(VideoError::db)?;
            tx.set_durability(Durability::Immediate)
                .map_err(VideoError::db)?;
            let record = {
                let mut snaps = tx.open_table(SNAPSHOTS).map_err(VideoError::db)?;
                let mut times = tx.open_table(SNAPSHOT_TIME).map_err(VideoError::db)?;
                if let Some(old) = snaps
                    .insert((agent, id), json(&meta).as_slice())
                    .map_err(VideoError::db)?
                    .and_then(|v| decode_meta(v.value()))
                {
                    times
                        .remove((old.stored_ms, agent, id))
                        .map_err(VideoError::db)?;
                }
                times
                    .insert((now_ms, agent, id), ())
                    .map_err(VideoError::db)?;
                let mut events = tx.open_table(EVENTS).map_err(VideoError::db)?;
                let rec = events
                    .get((agent, id))
                    .map_err(VideoError::db)?
                    .and_then(|v| decode_record(v.value()));
                match rec {
                    Some(mut r) => {
                        r.snapshot = Some(info(&r.camera, id, &meta));
                        events
                            .insert((agent, id), json(&r).as_slice())
                            .map_err(VideoError::db)?;
                        Some(r)
                    }
                    None => None,
                }
            };
            tx.commit().map_err(VideoError::db)?;
            if let Some(r) = &record {
                self.note_latest(r);
            }
            Ok(SnapshotStored {
                record,
                fresh: true,
            })
        })
    }

    /// An event record.
    pub fn event(&self, agent: &str, id: &str) -> Result<Option<EventRecord>, VideoError> {
        self.guarded(|db| {
            let tx = db.begin_read().map_err(VideoError::db)?;
            let events = tx.open_table(EVENTS).map_err(VideoError::db)?;
            let got = events
                .get((agent, id))
                .map_err(VideoError::db)?
                .and_then(|v| decode_record(v.value()));
            Ok(got)
        })
    }

    /// The JPEG of an agent's event, if stored.
    pub fn snapshot_jpeg(&self, agent: &str, id: &str) -> Result<Option<Vec<u8>>, VideoError> {
        self.guarded(|db| {
            let indexed = {
                let tx = db.begin_read().map_err(VideoError::db)?;
                let snaps = tx.open_table(SNAPSHOTS).map_err(VideoError::db)?;
                snaps.get((agent, id)).map_err(VideoError::db)?.is_some()
            };
            if !indexed {
                return Ok(None);
            }
            let path = file_of(&self.snapshot_dir, agent, id);
            match std::fs::read(&path) {
                Ok(b) => Ok(Some(b)),
                // Pruned between the index read and the file read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(VideoError::Io(format!("{}: {e}", path.display()))),
            }
        })
    }

    /// Events newest first (by start) with start in `[from, to)`: of one camera, or of every
    /// camera `visible` accepts; at most `limit`.
    pub fn events(
        &self,
        camera: Option<&str>,
        visible: &dyn Fn(&str) -> bool,
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, VideoError> {
        self.guarded(|db| {
            let tx = db.begin_read().map_err(VideoError::db)?;
            let events = tx.open_table(EVENTS).map_err(VideoError::db)?;
            let mut out = Vec::new();
            if from >= to || limit == 0 {
                return Ok(out);
            }
            let mut load = |agent: &str, id: &str| -> Result<bool, VideoError> {
                if let Some(r) = events
                    .get((agent, id))
                    .map_err(VideoError::db)?
                    .and_then(|v| decode_record(v.value()))
                {
                    out.push(r);
                }
                Ok(out.len() >= limit)
            };
            match camera {
                Some(c) => {
                    let t = tx.open_table(BY_CAMERA).map_err(VideoError::db)?;
                    for item in t
                        .range((c, from, "", "")..(c, to, "", ""))
                        .map_err(VideoError::db)?
                        .rev()
                    {
                        let (k, _) = item.map_err(VideoError::db)?;
                        let (_, _, agent, id) = k.value();
                        if load(agent, id)? {
                            break;
                        }
                    }
                }
                None => {
                    let t = tx.open_table(BY_TIME).map_err(VideoError::db)?;
                    for item in t
                        .range((from, "", "")..(to, "", ""))
                        .map_err(VideoError::db)?
                        .rev()
                    {
                        let (k, v) = item.map_err(VideoError::db)?;
                        if !visible(v.value()) {
                            continue;
                        }
                        let (_, agent, id) = k.value();
                        if load(agent, id)? {
                            break;
                        }
                    }
                }
            }
            Ok(out)
        })
    }

    /// Removes events that started before `events_before` and snapshots stored before
    /// `snapshots_before` (index first, then files).
    pub fn prune(&self, events_before: i64, snapshots_before: i64) -> Result<Pruned, VideoError> {
        self.guarded(|db| {
            let mut pruned = Pruned::default();
            let mut files = Vec::new();
            let mut cameras = Vec::new();
            let mut tx = db.begin_write().map_err(VideoError::db)?;
            tx.set_durability(Durability::Immediate)
                .map_err(VideoError::db)?;
            {
                let mut times = tx.open_table(SNAPSHOT_TIME).map_err(VideoError::db)?;
                let mut snaps = tx.open_table(SNAPSHOTS).map_err(VideoError::db)?;
                let mut events = tx.open_table(EVENTS).map_err(VideoError::db)?;
                let old: Vec<(i64, String, String)> = times
                    .range(..(snapshots_before, "", ""))
                    .map_err(VideoError::db)?
                    .map(|item| {
                        item.map(|(k, _)| {
                            let (t, a, i) = k.value();
                            (t, a.to_string(), i.to_string())
                        })
                    })
                    .collect::<Result<_, _>>()
                    .map_err(VideoError::db)?;
                for (t, agent, id) in old {
                    times
                        .remove((t, agent.as_str(), id.as_str()))
                        .map_err(VideoError::db)?;
                    snaps
                        .remove((agent.as_str(), id.as_str()))
                        .map_err(VideoError::db)?;
                    let rec = events
                        .get((agent.as_str(), id.as_str()))
                        .map_err(VideoError::db)?
                        .and_then(|v| decode_record(v.value()));
                    if let Some(mut r) = rec {
                        r.snapshot = None;
                        events
                            .insert((agent.as_str(), id.as_str()), json(&r).as_slice())
                            .map_err(VideoError::db)?;
                        cameras.push(r.camera);
                    }
                    files.push(file_of(&self.snapshot_dir, &agent, &id));
                    pruned.snapshots += 1;
                }
                let mut by_time = tx.open_table(BY_TIME).map_err(VideoError::db)?;
                let mut by_camera = tx.open_table(BY_CAMERA).map_err(VideoError::db)?;
                let old: Vec<(i64, String, String, String)> = by_time
                    .range(..(events_before, "", ""))
                    .map_err(VideoError::db)?
                    .map(|item| {
                        item.map(|(k, v)| {
                            let (t, a, i) = k.value();
                            (t, a.to_string(), i.to_string(), v.value().to_string())
                        })
                    })
                    .collect::<Result<_, _>>()
                    .map_err(VideoError::db)?;
                for (t, agent, id, camera) in old {
                    by_time
                        .remove((t, agent.as_str(), id.as_str()))
                        .map_err(VideoError::db)?;
                    by_camera
                        .remove((camera.as_str(), t, agent.as_str(), id.as_str()))
                        .map_err(VideoError::db)?;
                    events
                        .remove((agent.as_str(), id.as_str()))
                        .map_err(VideoError::db)?;
                    cameras.push(camera);
                    pruned.events += 1;
                }
            }
            if pruned == Pruned::default() {
                tx.abort().map_err(VideoError::db)?;
                return Ok(pruned);
            }
            tx.commit().map_err(VideoError::db)?;
            for f in files {
                if let Err(e) = std::fs::remove_file(&f)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(file = %f.display(), "cannot remove an expired snapshot: {e}");
                }
            }
            cameras.sort();
            cameras.dedup();
            for c in cameras {
                self.refresh_latest(&c)?;
            }
            Ok(pruned)
        })
    }

    /// Snapshots in the index (for metrics and tests).
    pub fn snapshot_count(&self) -> Result<u64, VideoError> {
        self.guarded(|db| {
            let tx = db.begin_read().map_err(VideoError::db)?;
            let t = tx.open_table(SNAPSHOTS).map_err(VideoError::db)?;
            t.len().map_err(VideoError::db)
        })
    }

    /// Events in the archive (for metrics and tests).
    pub fn event_count(&self) -> Result<u64, VideoError> {
        self.guarded(|db| {
            let tx = db.begin_read().map_err(VideoError::db)?;
            let t = tx.open_table(EVENTS).map_err(VideoError::db)?;
            t.len().map_err(VideoError::db)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::messages::EventPhase;

    fn event(i: u64) -> CameraEvent {
        CameraEvent {
            camera: "CAM.1".into(),
            event_type: "motion".into(),
            phase: EventPhase::Start,
            ts: 1_000 + i as i64,
            score: 0.9,
            // Large records so that the file has to grow.
            boxes: vec![[0.1, 0.2, 0.3, 0.4]; 200],
            snapshot: None,
            stream: Some(1),
            seq: Some(i),
        }
    }

    #[test]
    fn a_full_disk_fails_writes_then_they_work_again_without_reopening_the_archive() {
        let disk = crate::redb_file::small_disk::SmallDisk::mount("8m");
        let a = Archive::open(&disk.path().join("video"), ["CAM.1"]).unwrap();
        a.record_event("AG-1", "e0", &event(0)).unwrap();
        let filler = disk.fill(0);
        let mut failed = None;
        for i in 1..10_000u64 {
            if let Err(e) = a.record_event("AG-1", &format!("e{i}"), &event(i)) {
                failed = Some((i, e));
                break;
            }
        }
        let (first_failed, e) = failed.expect("the full disk never failed a write");
        assert!(matches!(e, VideoError::Db(_)), "{e}");
        // A snapshot file that cannot be written is refused as I/O, not as a broken database.
        let jpeg = vec![0u8; 256 << 10];
        let snap = a.store_snapshot("AG-1", "e0", &jpeg, (2, 1), 5_000);
        assert!(matches!(
            snap,
            Err(VideoError::Io(_)) | Err(VideoError::Db(_))
        ));
        std::fs::remove_file(filler).unwrap();
        let again = a
            .record_event("AG-1", &format!("e{first_failed}"), &event(first_failed))
            .unwrap();
        assert!(again.changed);
        a.store_snapshot("AG-1", "e0", &jpeg, (2, 1), 5_000)
            .unwrap();
        assert!(a.reopens() >= 1);
        let stored = a.event_count().unwrap();
        drop(a);
        let a = Archive::open(&disk.path().join("video"), ["CAM.1"]).unwrap();
        assert_eq!(a.event_count().unwrap(), stored);
        assert!(
            a.event("AG-1", &format!("e{first_failed}"))
                .unwrap()
                .is_some()
        );
        assert_eq!(a.latest("CAM.1").map(|l| l.id), Some("e0".to_string()));
    }
}
