//! The messages between the engine's threads: what a `TsStore` handle (and the checkpointer's
//! ticks) ask the writer, what an append is answered through, and what the writer hands the
//! checkpointer. They live apart from the threads so every thread depends on them and none on
//! another thread's module.

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::head::SeriesHead;
use crate::{Appended, StoreError, WriteBatch};

/// Where an append's answer goes.
pub(super) type Reply = oneshot::Sender<Result<Appended, StoreError>>;

/// What a [`super::TsStore`] handle asks the writer.
pub(super) enum Request {
    /// Append a batch; answered after the sync.
    Append(WriteBatch, Reply),
    /// Checkpoint now; answered once committed.
    Checkpoint(oneshot::Sender<Result<(), StoreError>>),
    /// Nothing to do but look at the checkpoint clock (sent by the checkpointer).
    Tick,
    /// Write what is queued, checkpoint, stop the other threads, stop.
    Close(oneshot::Sender<Result<(), StoreError>>),
}

/// A consistent cut of the writer's state, to commit in one transaction.
pub(super) struct CheckpointJob {
    /// Pending chunks of this generation and older go into this checkpoint.
    pub(super) generation: u64,
    /// The first WAL segment written after the cut; older ones are covered once committed.
    pub(super) wal_start: u64,
    /// Dirty heads as of the cut, encoded by the checkpointer.
    pub(super) heads: Vec<(u32, SeriesHead)>,
    /// Series defined since the last checkpoint: (id, [`super::shared::encode_series`]).
    pub(super) series: Vec<(u32, Vec<u8>)>,
    /// Changed dedup state per agent.
    pub(super) origins: Vec<(Arc<str>, Vec<u8>)>,
    /// Told the outcome, for [`super::TsStore::checkpoint`] and close.
    pub(super) done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// What the writer sends the checkpointer.
pub(super) enum Job {
    /// Commit this cut.
    Checkpoint(CheckpointJob),
    /// The store is closing.
    Stop,
}
