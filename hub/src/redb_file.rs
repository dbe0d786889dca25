//! A redb file that outlives an I/O error: the twins' and the alerts' files.
//!
//! After a failed write (a full disk, say) redb answers every later operation with "Previous I/O
//! error occurred. Please close and re-open the database". So an operation that fails drops
//! the handle, and the next one opens the file again: a committed transaction is whole and an
//! uncommitted one is gone, so a reopened file is exactly what was last committed. Whoever wrote
//! keeps what did not commit (the twins in memory, the alert book's dirty set) and writes it
//! again, which now works once there is room.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;
use redb::Database;

/// A redb database that is closed after a failed operation and reopened on the next one.
pub struct RedbFile {
    path: PathBuf,
    cache_bytes: Option<usize>,
    db: Mutex<Option<Arc<Database>>>,
    reopens: AtomicU64,
}

impl std::fmt::Debug for RedbFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbFile {
    /// Opens (or creates) the file.
    pub fn create(path: &Path) -> Result<RedbFile, redb::DatabaseError> {
        Self::create_with_cache(path, None)
    }

    /// Opens (or creates) the file with a page cache of `cache_bytes` (redb's default if none).
    pub fn create_with_cache(
        path: &Path,
        cache_bytes: Option<usize>,
    ) -> Result<RedbFile, redb::DatabaseError> {
        let db = Self::open_db(path, cache_bytes)?;
        Ok(RedbFile {
            path: path.to_path_buf(),
            cache_bytes,
            db: Mutex::new(Some(Arc::new(db))),
            reopens: AtomicU64::new(0),
        })
    }

    /// Runs `f` on the database, opening it again first if an earlier operation failed; when
    /// `f` fails, the database is closed so that the next call starts from a fresh handle.
    pub fn with<T, E: From<redb::Error>>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, E>,
    ) -> Result<T, E> {
        self.with_unless(f, |_| false)
    }

    /// As [`RedbFile::with`], but an error for which `harmless` holds (one the operation
    /// refused by itself, not a failed read or write) keeps the handle.
    pub fn with_unless<T, E: From<redb::Error>>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, E>,
        harmless: impl FnOnce(&E) -> bool,
    ) -> Result<T, E> {
        let db = self.handle().map_err(|e| E::from(e.into()))?;
        let r = f(&db);
        if let Err(e) = &r
            && !harmless(e)
        {
            let mut slot = self.db.lock();
            if slot.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, &db)) {
                *slot = None;
            }
        }
        r
    }

    /// How many times the file was opened again after a failure.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Relaxed)
    }

    fn open_db(path: &Path, cache_bytes: Option<usize>) -> Result<Database, redb::DatabaseError> {
        let mut b = Database::builder();
        if let Some(c) = cache_bytes {
            b.set_cache_size(c);
        }
        b.create(path)
    }

    fn handle(&self) -> Result<Arc<Database>, redb::DatabaseError> {
        let mut slot = self.db.lock();
        if let Some(db) = &*slot {
            return Ok(db.clone());
        }
        // Still held by an operation in flight on the old handle: that one fails too, and
        // the call after it opens the file.
        let db = Arc::new(Self::open_db(&self.path, self.cache_bytes)?);
        tracing::info!(file = %self.path.display(), "reopened after an earlier failure");
        self.reopens.fetch_add(1, Relaxed);
        *slot = Some(db.clone());
        Ok(db)
    }
}

#[cfg(test)]
#[path = "../../series-store/tests/small_disk/mod.rs"]
pub(crate) mod small_disk;
