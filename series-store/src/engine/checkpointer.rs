//! The checkpointer thread: commits what the writer cut at a checkpoint, then deletes the WAL
//! segments that commit covers; also the clock for idle checkpoints and for retention.
//!
//! One redb write transaction per checkpoint holds the sealed chunks of its generation (and
//! older), the dirty heads' snapshots, the series defined since the last one, the changed dedup
//! state, and `checkpoint_gen`/`wal_start`. Until it commits, those chunks stay in
//! `State::pending` and the data in the WAL, so a crash at any point replays to the same state.
//! Head snapshots are encoded here rather than on the writer (the writer only copies the dirty
//! heads), so group commits do not wait for thousands of encodes.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use protocols::time::now_ms;
use tokio::sync::mpsc as amsc;

use super::channels::{CheckpointJob, Job, Request};
use super::retention::drop_before;
use super::shared::{
    CHUNKS, HEADS, META, META_GEN, META_WAL_START, ORIGINS, PendingChunk, SERIES, Shared, db_err,
};
use crate::StoreError;
use crate::wal;

/// The checkpointer thread's loop. Wakes the writer (`ticks`) when a second passes without a
/// job, so an idle store still checkpoints on time, and runs retention every `retention_every`.
pub(super) fn run(
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

/// Commits `job` in one transaction, then forgets the pending chunks it covered and deletes the
/// WAL segments before `job.wal_start`.
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
