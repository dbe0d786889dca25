//! Reopening after a failure: what lets a store whose disk filled up take writes again once
//! there is room, without a restart.
//!
//! A failed engine cannot be repaired in place: after a failed `fdatasync` the state of the page
//! cache is unknown, and redb refuses every operation after an I/O error until the database is
//! reopened. So the handle closes the failed engine (its threads stop, the database file is
//! released) and opens a new one on the same files: the same path as a restart after a crash
//! (load the last checkpoint, replay the WAL, cut a torn tail off). The new engine takes over
//! only after a first checkpoint has committed what it replayed to redb, because what the
//! replay read may have come from pages whose writeback failed: rewriting it through redb,
//! which syncs, makes it durable before anything is acknowledged again. Appends that were
//! refused or failed were never acknowledged; their redeliveries are deduplicated against the
//! replayed origins (answered `Recovered`, so they are published).
//!
//! Attempts run on their own thread, started by an append that finds the engine failed, at most
//! once per backoff interval (1 s, doubling to 30 s while the disk stays full). An attempt
//! closes the failed engine only when the filesystem has room for the replay and a checkpoint
//! (the WAL's size and [`REOPEN_HEADROOM`] free): until then the failed engine stays, and queries
//! keep answering from it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::{Engine, StoreOptions};

/// First wait between attempts.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Free bytes an attempt needs besides the WAL's size (redb pages of the first checkpoint).
pub const REOPEN_HEADROOM: u64 = 4 << 20;

/// What a [`super::TsStore`] handle holds: the current engine and how to replace it.
pub(super) struct Inner {
    /// The store's directory.
    pub(super) dir: PathBuf,
    /// How engines are opened.
    opts: StoreOptions,
    /// The engine appends and queries go to.
    pub(super) engine: RwLock<Arc<Engine>>,
    /// When the next attempt may start, and whether one runs.
    attempts: Mutex<Attempts>,
    /// `true` while no attempt runs (close waits for it).
    idle: watch::Sender<bool>,
    /// Successful reopens.
    pub(super) recoveries: AtomicU64,
}

struct Attempts {
    running: bool,
    closed: bool,
    next: Instant,
    backoff: Duration,
}

impl Inner {
    pub(super) fn new(dir: PathBuf, opts: StoreOptions, engine: Engine) -> Arc<Inner> {
        Arc::new(Inner {
            dir,
            opts,
            engine: RwLock::new(Arc::new(engine)),
            attempts: Mutex::new(Attempts {
                running: false,
                closed: false,
                next: Instant::now(),
                backoff: FIRST_BACKOFF,
            }),
            idle: watch::Sender::new(true),
            recoveries: AtomicU64::new(0),
        })
    }

    /// Starts an attempt to reopen unless one runs, the last one was too recent, or the store
    /// is closing.
    pub(super) fn kick(self: &Arc<Self>) {
        {
            let mut a = self.attempts.lock();
            if a.running || a.closed || Instant::now() < a.next {
                return;
            }
            a.running = true;
        }
        self.idle.send_replace(false);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("store-recover".into())
            .spawn(move || me.attempt());
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a thread to reopen the time-series store");
            self.finish_attempt(false);
        }
    }

    /// One attempt: close the failed engine, open a new one, checkpoint, swap it in.
    fn attempt(&self) {
        match room(&self.dir) {
            Ok((free, needed)) if free < needed => {
                tracing::info!(
                    free,
                    needed,
                    "time-series store waits for free disk space before it reopens"
                );
                self.finish_attempt(false);
                return;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the store's free disk space"),
        }
        let old = self.engine.read().clone();
        // A failed engine's close reports its failure; it still stops its threads.
        let _ = old.close_blocking();
        let opened =
            Engine::open(&self.dir, &self.opts).and_then(|e| match e.checkpoint_blocking() {
                Ok(()) => Ok(e),
                Err(err) => {
                    let _ = e.close_blocking();
                    Err(err)
                }
            });
        match opened {
            Ok(e) => {
                *self.engine.write() = Arc::new(e);
                self.recoveries.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    dir = %self.dir.display(),
                    "time-series store reopened after a failure; taking writes again"
                );
                self.finish_attempt(true);
            }
            Err(e) => {
                let wait = self.attempts.lock().backoff;
                tracing::warn!(
                    error = %e,
                    retry_in = ?wait,
                    "time-series store cannot reopen yet"
                );
                self.finish_attempt(false);
            }
        }
    }

    fn finish_attempt(&self, ok: bool) {
        {
            let mut a = self.attempts.lock();
            a.running = false;
            if ok {
                a.backoff = FIRST_BACKOFF;
                a.next = Instant::now();
            } else {
                a.next = Instant::now() + a.backoff;
                a.backoff = (a.backoff * 2).min(MAX_BACKOFF);
            }
        }
        self.idle.send_replace(true);
    }

    /// No more attempts; waits for one that runs.
    pub(super) async fn stop_recovering(&self) {
        self.attempts.lock().closed = true;
        let mut idle = self.idle.subscribe();
        let _ = idle.wait_for(|idle| *idle).await;
    }
}

/// Free bytes on the store's filesystem (for an unprivileged process) and the bytes a reopen
/// needs: the WAL it replays and [`REOPEN_HEADROOM`].
fn room(dir: &std::path::Path) -> std::io::Result<(u64, u64)> {
    let free = free_disk_bytes(dir)?;
    let mut wal = 0;
    for e in std::fs::read_dir(dir.join(super::shared::WAL_DIR))? {
        wal += e?.metadata()?.len();
    }
    Ok((free, wal + REOPEN_HEADROOM))
}

/// Bytes an unprivileged process may still write on the filesystem holding `path`.
pub fn free_disk_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}
