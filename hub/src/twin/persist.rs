//! Durable twin state: desired values and version checkpoints in a small redb file
//! (`data_dir/twins.redb`). Reported values are not kept here; they are rebuilt from the time
//! series store at start.
//!
//! Versions must only grow, also across restarts, but writing a version for every reading
//! would cost an fsync per reading. So versions are checkpointed every few seconds and at a
//! clean shutdown; after a crash (the `clean` flag is cleared at every start) every version
//! resumes from its checkpoint plus [`CRASH_VERSION_GAP`], more than any device can change in
//! one checkpoint interval.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use protocols::messages::Scalar;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::redb_file::RedbFile;
use serde::{Deserialize, Serialize};

const DESIRED: TableDefinition<&str, &[u8]> = TableDefinition::new("desired");
const VERSIONS: TableDefinition<&str, u64> = TableDefinition::new("versions");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Added to checkpointed versions after an unclean stop.
pub const CRASH_VERSION_GAP: u64 = 100_000;

/// Why twin persistence failed.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The file could not be created.
    #[error("twin store {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// redb refused.
    #[error("twin store: {0}")]
    Db(#[from] redb::Error),
    /// PostgreSQL refused or could not be reached (cluster mode).
    #[error("shared twins: {0}")]
    Shared(String),
    /// A stored record could not be decoded.
    #[error("twin store record for `{device}` is corrupt: {detail}")]
    Corrupt {
        /// The device.
        device: String,
        /// What was wrong.
        detail: String,
    },
}

fn dberr<E: Into<redb::Error>>(e: E) -> PersistError {
    PersistError::Db(e.into())
}

/// The desired state of one device as stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DesiredRecord {
    /// The twin version at which desired state last changed.
    pub desired_version: u64,
    /// Desired values by quantity name.
    pub desired: BTreeMap<String, Scalar>,
}

/// What was found at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Desired state by device id.
    pub desired: HashMap<String, DesiredRecord>,
    /// Version to resume from by device id (already raised after a crash).
    pub versions: HashMap<String, u64>,
    /// Whether the previous run stopped cleanly.
    pub clean: bool,
}

/// The twin file.
pub struct TwinStore {
    db: RedbFile,
}

impl TwinStore {
    /// Opens (or creates) the file, reads everything, and marks the run as not yet clean.
    pub fn open(data_dir: &Path) -> Result<(TwinStore, Loaded), PersistError> {
        std::fs::create_dir_all(data_dir).map_err(|source| PersistError::Io {
            path: data_dir.display().to_string(),
            source,
        })?;
        let path = data_dir.join("twins.redb");
        let file = RedbFile::create(&path).map_err(dberr)?;
        let loaded = file.with(Self::load)?;
        let store = TwinStore { db: file };
        // Persist the raised versions before anything can be published from them, then clear
        // `clean`: a crash from here on must raise them again.
        store.checkpoint(loaded.versions.iter().map(|(k, v)| (k.as_str(), *v)), false)?;
        Ok((store, loaded))
    }

    /// Creates the tables if needed and reads everything.
    fn load(db: &Database) -> Result<Loaded, PersistError> {
        // Make sure the tables exist so reads never meet a missing table.
        let w = db.begin_write().map_err(db_err)?;
        {
            w.open_table(DESIRED).map_err(dberr)?;
            w.open_table(VERSIONS).map_err(dberr)?;
            w.open_table(META).map_err(dberr)?;
        }
        w.commit().map_err(dberr)?;

        let mut loaded = Loaded::default();
        {
            let r = db.begin_read().map_err(dberr)?;
            let meta = r.open_table(META).map_err(dberr)?;
            loaded.clean = match meta.get("clean").map_err(dberr)? {
                Some(v) => v.value() == 1,
                // A brand-new file: nothing to protect.
                None => true,
            };
            let desired = r.open_table(DESIRED).map_err(dberr)?;
            for row in desired.iter().map_err(dberr)? {
                let (k, v) = row.map_err(dberr)?;
                let device = k.value().to_string();
                let rec: DesiredRecord =
                    serde_json::from_slice(v.value()).map_err(|e| PersistError::Corrupt {
                        device: device.clone(),
                        detail: e.to_string(),
                    })?;
                loaded.desired.insert(device, rec);
            }
            let versions = r.open_table(VERSIONS).map_err(dberr)?;
            for row in versions.iter().map_err(dberr)? {
                let (k, v) = row.map_err(dberr)?;
                let gap = if loaded.clean { 0 } else { CRASH_VERSION_GAP };
                loaded
                    .versions
                    .insert(k.value().to_string(), v.value().saturating_add(gap));
            }
        }
        Ok(loaded)
    }

    /// Stores a device's desired state and its version, durably.
    pub fn save_desired(
        &self,
        device: &str,
        record: &DesiredRecord,
        version: u64,
    ) -> Result<(), PersistError> {
        let bytes = serde_json::to_vec(record).map_err(|e| PersistError::Corrupt {
            device: device.to_string(),
            detail: e.to_string(),
        })?;
        self.db.with(|db| {
            let w = db.begin_write().map_err(db_err)?;
            {
                let mut t = w.open_table(DESIRED).map_err(dberr)?;
                t.insert(device, bytes.as_slice()).map_err(dberr)?;
                let mut v = w.open_table(VERSIONS).map_err(dberr)?;
                v.insert(device, version).map_err(dberr)?;
            }
            w.commit().map_err(dberr)
        })
    }

    /// Stores versions and the clean flag in one transaction.
    pub fn checkpoint<'a>(
        &self,
        versions: impl IntoIterator<Item = (&'a str, u64)>,
        clean: bool,
    ) -> Result<(), PersistError> {
        self.db.with(|db| {
            let w = db.begin_write().map_err(db_err)?;
            {
                let mut t = w.open_table(VERSIONS).map_err(dberr)?;
                for (device, version) in versions {
                    t.insert(device, version).map_err(dberr)?;
                }
                let mut m = w.open_table(META).map_err(dberr)?;
                m.insert("clean", u64::from(clean)).map_err(dberr)?;
            }
            w.commit().map_err(dberr)
        })
    }
}

fn db_err(e: redb::TransactionError) -> PersistError {
    PersistError::Db(e.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_and_versions_survive_and_crashes_raise_versions() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (s, loaded) = TwinStore::open(dir.path()).unwrap();
            assert!(loaded.clean && loaded.desired.is_empty());
            let rec = DesiredRecord {
                desired_version: 7,
                desired: [("dimming_level".to_string(), Scalar::Number(40.0))].into(),
            };
            s.save_desired("SL-1", &rec, 7).unwrap();
            s.checkpoint([("WL-1", 12)], true).unwrap();
        }
        {
            let (s, loaded) = TwinStore::open(dir.path()).unwrap();
            assert!(loaded.clean);
            assert_eq!(loaded.versions["SL-1"], 7);
            assert_eq!(loaded.versions["WL-1"], 12);
            assert_eq!(loaded.desired["SL-1"].desired_version, 7);
            // Dropped without a clean checkpoint: a crash.
            drop(s);
        }
        let (_s, loaded) = TwinStore::open(dir.path()).unwrap();
        assert!(!loaded.clean);
        assert_eq!(loaded.versions["WL-1"], 12 + CRASH_VERSION_GAP);
    }

    #[test]
    fn a_full_disk_fails_writes_then_they_work_again_without_reopening_the_store() {
        let disk = crate::redb_file::small_disk::SmallDisk::mount("8m");
        let (s, _) = TwinStore::open(disk.path()).unwrap();
        let rec = |v: u64| DesiredRecord {
            desired_version: v,
            desired: [("dimming_level".to_string(), Scalar::Number(v as f64))].into(),
        };
        s.save_desired("SL-1", &rec(1), 1).unwrap();
        let filler = disk.fill(0);
        // Big enough records that the file must grow.
        let mut failed = None;
        for v in 2..10_000u64 {
            let mut r = rec(v);
            r.desired
                .insert("note".into(), Scalar::Text("x".repeat(4096)));
            if let Err(e) = s.save_desired(&format!("SL-{v}"), &r, v) {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("the full disk never failed a write");
        assert!(e.to_string().to_lowercase().contains("space"), "{e}");
        std::fs::remove_file(filler).unwrap();
        s.save_desired("SL-1", &rec(99), 99).unwrap();
        s.checkpoint([("SL-1", 99)], true).unwrap();
        assert!(s.db.reopens() >= 1);
        drop(s);
        let (_, loaded) = TwinStore::open(disk.path()).unwrap();
        assert_eq!(loaded.desired["SL-1"].desired_version, 99);
        assert_eq!(loaded.versions["SL-1"], 99);
    }
}
