//! The pipeline: typed stages in one direction, bounded queues between them.
//!
//! ```text
//! ingress events ─▶ route ─▶ decode+validate+normalize (N workers, by client) ─▶ commit:
//!   store (dedup + durable append, many in flight) then publish (PUBACK, coalesced agent
//!   acks, twins, rules, feeds) in the same task
//!                                    └─▶ control (health, desired state, command results)
//! ```
//! Each stage is a type that holds only what it uses, so what a stage can touch is visible in
//! its fields:
//! - [`route::Router`]: the status board (connections), the dead letters (refusals);
//! - [`decode::Decoder`]: the registry, the normalizer, the dead letters, the Sparkplug B
//!   sessions. It returns typed results ([`decode::Decoded`]): a [`Prepared`] write, a parsed
//!   [`decode::Control`] message, a [`decode::Presence`] change, or nothing more to do;
//! - [`control::ControlStage`]: the status board and the twins; the decode workers call it
//!   inline;
//! - [`commit::Committer`]: the store, the video archive, the twins, the rules, the outlet.
//!
//! Every rejection goes through one [`deadletter::DeadLetters`] sink, counted per
//! [`deadletter::DeadLetterReason`]. Every stage counts what it takes, and the queue depths
//! are on `/metrics`.
//!
//! Shutdown is by closing: [`Pipeline::join`] closes the ingress queue (the ingress holds a
//! sender for as long as it lives, and the ingress may itself be held by the pipeline as its
//! publisher, so waiting for every sender to drop could wait forever); what is queued is still
//! processed, each stage drains and closes the next, and `join` returns after everything taken
//! was stored and acknowledged.

pub mod commit;
pub mod control;
pub mod deadletter;
pub mod decode;
#[cfg(feature = "failpoints")]
pub mod failpoint;
pub mod route;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::feeds::NormValue;
use crate::registry::AgentIdx;
use commit::Committer;
use control::ControlStage;
use decode::{Decoded, Decoder, Group, Scratch};
use mqtt_broker::ingress::{Disposition, Inbound, IngressEvent};
use route::Router;
use series_store::{Appended, SeriesStore, StoreError, WriteBatch};

/// The stages, built by the hub from its parts.
pub struct Stages<S> {
    /// Spreads messages over the decode workers; connections and refusals.
    pub router: Router,
    /// Decode, validate, normalize (shared by the workers).
    pub decoder: Decoder,
    /// Applies health, desired state and command results (called by the workers).
    pub control: ControlStage,
    /// Store, then publish.
    pub commit: Committer<S>,
}

/// A message made ready for the store: its points, and what to do once they are durable.
pub struct Prepared {
    /// Completed once durable.
    pub done: Option<oneshot::Sender<Disposition>>,
    /// The write (taken by the commit stage).
    pub batch: WriteBatch,
    /// The agent sequence number to acknowledge once durable.
    pub ack: Option<(AgentIdx, u64, u64)>,
    /// Readings in the write.
    pub readings: usize,
    /// Device and timestamp groups (twin updates and feeds).
    pub groups: Vec<Group>,
    /// Values of all groups.
    pub values: Vec<NormValue>,
    /// Feed documents of all groups, back to back.
    pub feeds: Bytes,
    /// Camera work made durable before the origin is appended (events, snapshots).
    pub video: Option<Box<crate::video::Work>>,
    /// When the message arrived at the ingress.
    pub arrived: std::time::Instant,
}

/// A prepared message with the store's answer.
pub struct Stored {
    /// The message as the decode stage prepared it (its write taken by the store).
    pub prepared: Prepared,
    /// What the store said.
    pub result: Result<Appended, StoreError>,
}

/// Sizes of the pipeline.
#[derive(Clone, Copy, Debug)]
pub struct PipelineOptions {
    /// Decode workers (parallel decode, validate, normalize).
    pub workers: usize,
    /// Capacity of each bounded queue.
    pub queue: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            workers: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(1, 4),
            queue: 1024,
        }
    }
}

/// The running pipeline.
pub struct Pipeline {
    tasks: Vec<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Pipeline {
    /// Starts every stage, reading ingress events from `events`.
    pub fn start<S: SeriesStore>(
        stages: Stages<S>,
        events: mpsc::Receiver<IngressEvent>,
        opts: PipelineOptions,
    ) -> Pipeline {
        let Stages {
            router,
            decoder,
            control,
            commit,
        } = stages;
        let (decoder, control) = (Arc::new(decoder), Arc::new(control));
        let mut tasks = Vec::new();
        let (store_tx, store_rx) = mpsc::channel(opts.queue);
        tasks.push(tokio::spawn(commit::run(Arc::new(commit), store_rx)));
        let mut workers = Vec::with_capacity(opts.workers);
        for _ in 0..opts.workers.max(1) {
            let (tx, rx) = mpsc::channel(opts.queue);
            workers.push(tx);
            tasks.push(tokio::spawn(decode_worker(
                decoder.clone(),
                control.clone(),
                rx,
                store_tx.clone(),
            )));
        }
        drop(store_tx);
        let (stop, stop_rx) = oneshot::channel();
        tasks.push(tokio::spawn(router.run(events, workers, stop_rx)));
        Pipeline {
            tasks,
            stop: Some(stop),
        }
    }

    /// Closes the ingress queue and waits until every stage has drained and stopped. Stop the
    /// ingress first: whatever it still sends after this is refused.
    pub async fn join(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        for t in self.tasks {
            if let Err(e) = t.await {
                tracing::error!("pipeline stage failed: {e}");
            }
        }
    }
}

/// One decode worker: decodes its share of the messages, hands writes to the commit stage and
/// applies control messages inline.
async fn decode_worker(
    decoder: Arc<Decoder>,
    control: Arc<ControlStage>,
    mut input: mpsc::Receiver<Inbound>,
    output: mpsc::Sender<Prepared>,
) {
    let mut scratch = Scratch::default();
    let metrics = decoder.metrics();
    while let Some(msg) = input.recv().await {
        metrics.decode_queue.taken.fetch_add(1, Relaxed);
        match decoder.decode(msg, &mut scratch) {
            Decoded::Write(p) => {
                metrics.store_queue.sent.fetch_add(1, Relaxed);
                if output.send(*p).await.is_err() {
                    tracing::error!("commit stage is gone; stopping a decode worker");
                    return;
                }
            }
            Decoded::Control(c) => control.apply(*c),
            Decoded::Presence(p) => {
                let p = *p;
                control.presence(p.agent, &p.changes, p.at_ms);
                if let Some(w) = p.then {
                    metrics.store_queue.sent.fetch_add(1, Relaxed);
                    if output.send(*w).await.is_err() {
                        tracing::error!("commit stage is gone; stopping a decode worker");
                        return;
                    }
                }
            }
            Decoded::Handled => {}
        }
    }
}
