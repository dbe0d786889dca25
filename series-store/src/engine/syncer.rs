//! The syncer thread: `fdatasync`s the WAL and only then resolves the appends written before the
//! sync.
//!
//! The writer hands over its replies after each `write`; the syncer takes everything queued,
//! syncs once and answers all of it, so a group commit forms by itself while a sync runs. The
//! group-commit window only delays a sync while the writer is still working through queued
//! appends (`writer_idle` false), never when it is idle, so a lone append waits for one sync.
//! A failed sync fails the store: after it the state of the page cache is unknown, and retrying
//! could report a lost write as durable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::channels::Reply;
use super::shared::{Shared, io_copy};
use crate::Appended;

/// What the writer hands the syncer, under [`Syncer::q`].
pub(super) struct SyncQueue {
    /// Replies to send once the WAL is synced, with the answer each gets.
    pub(super) waiters: Vec<(Reply, Appended)>,
    /// The WAL segment being written (replaced when the writer rotates it).
    pub(super) file: Arc<std::fs::File>,
    /// The writer is waiting for requests: sync now instead of gathering more.
    pub(super) writer_idle: bool,
    /// Answer what is queued, then stop.
    pub(super) shutdown: bool,
}

/// The syncer's queue and the condition variable both sides signal.
pub(super) struct Syncer {
    /// Waiters and flags.
    pub(super) q: Mutex<SyncQueue>,
    /// Signalled on new waiters, the writer going idle, and shutdown.
    pub(super) cv: Condvar,
}

/// The syncer thread's loop; `window` is the group-commit wait.
pub(super) fn run(shared: &Shared, s: &Syncer, window: Duration) {
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
