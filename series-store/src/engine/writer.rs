//! The writer thread: takes requests in order and is the only thread that writes the WAL.
//!
//! Per group of queued appends (up to [`MAX_GROUP`]): dedup check against the origin index,
//! series ids (a new id is defined inside the same WAL record, so nothing touches redb on the
//! append path), one WAL record per batch, one `write` for the group, then the points into the
//! heads, which seal full chunks into `State::pending`. The replies go to the syncer, which
//! sends them after the `fdatasync`; `Duplicate` waits for it too, since the original may be in
//! the same unsynced group.
//!
//! The writer also starts checkpoints (every `checkpoint_interval` while there are writes, or
//! after `checkpoint_wal_bytes` of WAL): it syncs and rotates the segment, copies the dirty
//! heads under the state lock and hands the cut to the checkpointer. After any failure
//! ([`Shared::fail`]) it refuses every later append with "store stopped after an earlier
//! failure".

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc as amsc, oneshot};

use super::channels::{CheckpointJob, Job, Reply, Request};
use super::shared::{Shared, encode_series, io_copy, push_pending, sort_points};
use super::syncer::Syncer;
use crate::dedup::OriginIndex;
use crate::head::{Sealed, SeriesHead};
use crate::wal::{self, Segment};
use crate::{Appended, Point, StoreError, WriteBatch};

/// Appends taken into one group at most.
const MAX_GROUP: usize = 4096;

/// The writer thread's state; built by `TsStore::open`, consumed by [`Writer::run`].
pub(super) struct Writer {
    /// State shared with the other threads and the queries.
    pub(super) shared: Arc<Shared>,
    /// Where the replies go to wait for the sync.
    pub(super) syncer: Arc<Syncer>,
    /// To the checkpointer.
    pub(super) jobs: mpsc::SyncSender<Job>,
    /// The WAL directory.
    pub(super) wal_dir: PathBuf,
    /// The segment being written.
    pub(super) segment: Segment,
    /// Which origins are stored (only the writer reads or changes it).
    pub(super) index: OriginIndex,
    /// Origins replayed from the WAL at open and not redelivered since (see `Appended`).
    pub(super) recovered: HashSet<(Arc<str>, u64, u64)>,
    /// Series defined since the last checkpoint, for its registry rows.
    pub(super) new_series: Vec<(u32, Vec<u8>)>,
    /// The generation of chunks sealed now (committed by the next checkpoint).
    pub(super) generation: u64,
    /// The group's WAL bytes, reused between groups.
    pub(super) buf: Vec<u8>,
    /// WAL bytes written since the last checkpoint.
    pub(super) since_checkpoint: u64,
    /// When the last checkpoint was cut.
    pub(super) last_checkpoint: Instant,
    /// From [`super::StoreOptions::checkpoint_interval`].
    pub(super) checkpoint_interval: Duration,
    /// From [`super::StoreOptions::checkpoint_wal_bytes`].
    pub(super) checkpoint_bytes: u64,
    /// Chunks a head just sealed, reused between pushes.
    pub(super) sealed: Vec<Sealed>,
}

/// An append ready to apply once its record is written.
struct Staged {
    ids: Vec<u32>,
    batch: WriteBatch,
}

impl Writer {
    /// The writer thread's loop, until a close or until every handle is gone.
    pub(super) fn run(mut self, mut rx: amsc::Receiver<Request>) {
        let mut group: Vec<Request> = Vec::new();
        loop {
            let first = match rx.try_recv() {
                Ok(r) => r,
                Err(_) => {
                    self.set_idle(true);
                    let r = rx.blocking_recv();
                    self.set_idle(false);
                    match r {
                        Some(r) => r,
                        None => {
                            // Every handle is gone: finish like a close, nobody to tell.
                            let _ = self.finish();
                            return;
                        }
                    }
                }
            };
            group.push(first);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            let mut appends = Vec::with_capacity(group.len());
            for req in group.drain(..) {
                match req {
                    Request::Append(b, reply) => appends.push((b, reply)),
                    Request::Tick => {}
                    Request::Checkpoint(done) => {
                        self.write_group(std::mem::take(&mut appends));
                        self.checkpoint(Some(done));
                    }
                    Request::Close(done) => {
                        self.write_group(std::mem::take(&mut appends));
                        let r = self.finish();
                        let _ = done.send(r);
                        // Anything queued after the close is answered `Closed` by dropping it.
                        return;
                    }
                }
            }
            self.write_group(appends);
            if self.since_checkpoint >= self.checkpoint_bytes
                || (self.since_checkpoint > 0
                    && self.last_checkpoint.elapsed() >= self.checkpoint_interval)
            {
                self.checkpoint(None);
            }
        }
    }

    fn set_idle(&self, idle: bool) {
        let mut q = self.syncer.q.lock();
        q.writer_idle = idle;
        if idle {
            self.syncer.cv.notify_all();
        }
    }

    /// Dedup, record, write, apply; then hand the replies to the syncer.
    fn write_group(&mut self, appends: Vec<(WriteBatch, Reply)>) {
        if appends.is_empty() {
            return;
        }
        if let Err(e) = self.shared.check_failed() {
            let msg = e.to_string();
            for (_, reply) in appends {
                let _ = reply.send(Err(StoreError::Io(std::io::Error::other(msg.clone()))));
            }
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut waiters = Vec::with_capacity(appends.len());
        let mut staged = Vec::with_capacity(appends.len());
        let mut defs: Vec<(u32, Arc<str>, u16)> = Vec::new();
        for (batch, reply) in appends {
            if let Some(o) = &batch.origin {
                if self.index.contains(&o.agent, o.stream, o.seq) {
                    let key = (o.agent.clone(), o.stream, o.seq);
                    let r = if self.recovered.remove(&key) {
                        Appended::Recovered
                    } else {
                        Appended::Duplicate
                    };
                    waiters.push((reply, r));
                    continue;
                }
                self.index.insert(&o.agent, o.stream, o.seq);
            }
            defs.clear();
            let ids = self.resolve_ids(&batch, &mut defs);
            let refs: Vec<(u32, &[Point])> = ids
                .iter()
                .zip(&batch.series)
                .map(|(&id, (_, p))| (id, p.as_slice()))
                .collect();
            wal::encode_batch(&mut buf, batch.origin.as_ref(), &defs, &refs);
            drop(refs);
            staged.push(Staged { ids, batch });
            waiters.push((reply, Appended::Stored));
        }
        if let Err(e) = self.segment.append(&buf) {
            self.shared.fail(format!("write-ahead log write: {e}"));
            for (reply, _) in waiters {
                let _ = reply.send(Err(io_copy(&e)));
            }
            self.buf = buf;
            return;
        }
        self.since_checkpoint += buf.len() as u64;
        self.buf = buf;
        self.apply(staged);
        let mut q = self.syncer.q.lock();
        q.waiters.extend(waiters);
        self.syncer.cv.notify_all();
    }

    fn resolve_ids(
        &mut self,
        batch: &WriteBatch,
        defs: &mut Vec<(u32, Arc<str>, u16)>,
    ) -> Vec<u32> {
        let mut ids = Vec::with_capacity(batch.series.len());
        let reg = self.shared.registry.read();
        let mut missing = false;
        for (s, _) in &batch.series {
            match reg.ids.get(s) {
                Some(&id) => ids.push(id),
                None => {
                    missing = true;
                    break;
                }
            }
        }
        drop(reg);
        if !missing {
            return ids;
        }
        ids.clear();
        let mut reg = self.shared.registry.write();
        for (s, _) in &batch.series {
            let id = match reg.ids.get(s) {
                Some(&id) => id,
                None => {
                    let id = reg.next_id;
                    reg.define(id, s.clone());
                    defs.push((id, s.device.clone(), s.quantity.code()));
                    self.new_series.push((id, encode_series(s)));
                    id
                }
            };
            ids.push(id);
        }
        ids
    }

    fn apply(&mut self, staged: Vec<Staged>) {
        let policy = self.shared.policy;
        let mut n = 0u64;
        let mut st = self.shared.state.write();
        for Staged { ids, batch } in staged {
            for (id, (_, mut pts)) in ids.into_iter().zip(batch.series) {
                n += pts.len() as u64;
                sort_points(&mut pts);
                let head = st.heads.entry(id).or_default();
                for p in pts {
                    head.push(p, &policy, &mut self.sealed);
                }
                if !self.sealed.is_empty() {
                    push_pending(&mut st, id, &mut self.sealed, self.generation);
                }
            }
        }
        drop(st);
        self.shared.points_appended.fetch_add(n, Ordering::Relaxed);
    }

    /// Rotates the WAL and hands a consistent cut to the checkpointer.
    fn checkpoint(&mut self, done: Option<oneshot::Sender<Result<(), StoreError>>>) {
        if let Err(e) = self.shared.check_failed() {
            if let Some(d) = done {
                let _ = d.send(Err(e));
            }
            return;
        }
        match self.rotate_and_queue(done) {
            Ok(()) => {}
            Err((e, done)) => {
                self.shared.fail(format!("checkpoint: {e}"));
                if let Some(d) = done {
                    let _ = d.send(Err(e));
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn rotate_and_queue(
        &mut self,
        done: Option<oneshot::Sender<Result<(), StoreError>>>,
    ) -> Result<(), (StoreError, Option<oneshot::Sender<Result<(), StoreError>>>)> {
        // Everything in the old segment must be durable before the syncer moves to the new one.
        if let Err(e) = self.segment.file.sync_data() {
            return Err((e.into(), done));
        }
        let next = match Segment::create(&self.wal_dir, self.segment.id + 1) {
            Ok(s) => s,
            Err(e) => return Err((e.into(), done)),
        };
        self.syncer.q.lock().file = next.file.clone();
        self.segment = next;
        // Copies, not encodings: encoding every dirty head here held the state lock and the
        // writer (so every group commit) for the whole encode; the checkpointer encodes.
        let heads: Vec<(u32, SeriesHead)> = {
            let mut st = self.shared.state.write();
            st.heads
                .iter_mut()
                .filter(|(_, h)| h.dirty)
                .map(|(&id, h)| {
                    h.dirty = false;
                    (id, h.clone())
                })
                .collect()
        };
        let job = CheckpointJob {
            generation: self.generation,
            wal_start: self.segment.id,
            heads,
            series: std::mem::take(&mut self.new_series),
            origins: self.index.take_dirty(),
            done,
        };
        self.generation += 1;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        if let Err(mpsc::SendError(Job::Checkpoint(j))) = self.jobs.send(Job::Checkpoint(job)) {
            return Err((StoreError::Closed, j.done));
        }
        Ok(())
    }

    /// The last checkpoint, then the other threads stop.
    fn finish(&mut self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.checkpoint(Some(tx));
        let _ = self.jobs.send(Job::Stop);
        let r = rx.blocking_recv().unwrap_or(Err(StoreError::Closed));
        let mut q = self.syncer.q.lock();
        q.shutdown = true;
        self.syncer.cv.notify_all();
        r
    }
}
