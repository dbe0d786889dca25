//! Durable alerts: one redb file (`data_dir/alerts.redb`), one row per alert keyed by its
//! sequence number, the record as JSON. Written in batches by the book's writer task, each
//! batch one transaction with redb's default (immediate) durability.

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use crate::redb_file::RedbFile;

use super::StoredAlert;

const ALERTS: TableDefinition<u64, &[u8]> = TableDefinition::new("alerts");

/// Why the alert file failed.
#[derive(Debug, thiserror::Error)]
pub enum AlertStoreError {
    /// The directory could not be created.
    #[error("alert store {path}: {source}")]
    Io {
        /// The directory.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// redb refused.
    #[error("alert store: {0}")]
    Db(#[from] redb::Error),
    /// PostgreSQL refused or could not be reached (cluster mode).
    #[error("shared alerts: {0}")]
    Shared(String),
    /// A record could not be encoded or decoded.
    #[error("alert store record {seq}: {detail}")]
    Corrupt {
        /// The alert's sequence number.
        seq: u64,
        /// What was wrong.
        detail: String,
    },
}

fn dberr<E: Into<redb::Error>>(e: E) -> AlertStoreError {
    AlertStoreError::Db(e.into())
}

/// The alert file.
pub struct AlertStore {
    db: RedbFile,
}

impl AlertStore {
    /// Opens (or creates) the file and reads every alert, oldest first. A record that cannot
    /// be decoded is skipped with an error log (it cannot be shown, and must not stop the hub).
    pub fn open(data_dir: &Path) -> Result<(AlertStore, Vec<StoredAlert>), AlertStoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| AlertStoreError::Io {
            path: data_dir.display().to_string(),
            source,
        })?;
        let file = RedbFile::create(&data_dir.join("alerts.redb")).map_err(dberr)?;
        let out = file.with(|db| {
            let w = db.begin_write().map_err(dberr)?;
            w.open_table(ALERTS).map_err(dberr)?;
            w.commit().map_err(dberr)?;
            let mut out = Vec::new();
            let r = db.begin_read().map_err(dberr)?;
            let t = r.open_table(ALERTS).map_err(dberr)?;
            for row in t.iter().map_err(dberr)? {
                let (k, v) = row.map_err(dberr)?;
                match serde_json::from_slice::<StoredAlert>(v.value()) {
                    Ok(a) => out.push(a),
                    Err(e) => tracing::error!(seq = k.value(), "alert record unreadable: {e}"),
                }
            }
            Ok::<_, AlertStoreError>(out)
        })?;
        Ok((AlertStore { db: file }, out))
    }

    /// Writes alerts in one transaction.
    pub fn save(&self, alerts: &[StoredAlert]) -> Result<(), AlertStoreError> {
        self.db.with(|db| {
            let w = db.begin_write().map_err(dberr)?;
            {
                let mut t = w.open_table(ALERTS).map_err(dberr)?;
                for a in alerts {
                    let bytes = serde_json::to_vec(a).map_err(|e| AlertStoreError::Corrupt {
                        seq: a.seq,
                        detail: e.to_string(),
                    })?;
                    t.insert(a.seq, bytes.as_slice()).map_err(dberr)?;
                }
            }
            w.commit().map_err(dberr)
        })
    }

    /// Deletes alerts by sequence number (cleared ones past retention).
    pub fn delete(&self, seqs: &[u64]) -> Result<(), AlertStoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.db.with(|db| {
            let w = db.begin_write().map_err(dberr)?;
            {
                let mut t = w.open_table(ALERTS).map_err(dberr)?;
                for s in seqs {
                    t.remove(*s).map_err(dberr)?;
                }
            }
            w.commit().map_err(dberr)
        })
    }
}
