//! The pipeline: typed stages in one direction, bounded queues between them.
//!
//! ```text
//! ingress events ─▶ route ─▶ decode+validate+normalize (N workers, by client) ─▶ commit:
//!   store (dedup + durable append, many in flight) then publish (PUBACK, coalesced agent
//!   acks, twins, feeds) in the same task
//! ```
//! Connection events and refusals are handled by the router (status, dead letters); health,
//! desired state and command results by the decode workers. Every stage counts what it takes,
//! and the queue depths are on `/metrics`.
//!
//! Shutdown is by closing: [`Pipeline::join`] closes the ingress queue (the ingress holds a
//! sender for as long as it lives, and the ingress may itself be held by the pipeline as its
//! publisher, so waiting for every sender to drop could wait forever); what is queued is still
//! processed, each stage drains and closes the next, and `join` returns after everything taken
//! was stored and acknowledged.

pub mod ack;
pub mod deadletter;
pub mod decode;
pub mod durable;
#[cfg(feature = "failpoints")]
pub mod failpoint;
pub mod publish;
pub mod status;

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::feeds::NormValue;
use crate::metrics::Metrics;
use crate::normalize::Normalizer;
use crate::outbound::Outlet;
use crate::registry::{AgentIdx, Registry};
use crate::twin::Twins;
use decode::{Decoded, Group, Scratch};
use mqtt_broker::ingress::{Disposition, Inbound, IngressEvent};
use series_store::{Appended, SeriesStore, StoreError, WriteBatch};
use status::StatusBoard;

/// What every stage shares.
pub struct Context<S> {
    /// The catalog.
    pub registry: Arc<Registry>,
    /// Camera events and snapshots.
    pub video: Arc<crate::video::Video>,
    /// The twins.
    pub twins: Arc<Twins>,
    /// Online state.
    pub status: StatusBoard,
    /// Outbound messages.
    pub outlet: Outlet,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Time and quality rules.
    pub normalizer: Normalizer,
    /// The time series store.
    pub store: Arc<S>,
    /// The rule engine (evaluated after durable, on device time).
    pub rules: Arc<crate::rules::Rules>,
}

/// A message made ready for the store: its points, and what to do once they are durable.
pub struct Prepared {
    /// Completed once durable.
    pub done: Option<oneshot::Sender<Disposition>>,
    /// The write (taken by the store stage).
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
    /// The message.
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
        ctx: Arc<Context<S>>,
        events: mpsc::Receiver<IngressEvent>,
        opts: PipelineOptions,
    ) -> Pipeline {
        let mut tasks = Vec::new();
        let (store_tx, store_rx) = mpsc::channel(opts.queue);
        tasks.push(tokio::spawn(durable::run(ctx.clone(), store_rx)));
        let mut workers = Vec::with_capacity(opts.workers);
        for _ in 0..opts.workers.max(1) {
            let (tx, rx) = mpsc::channel(opts.queue);
            workers.push(tx);
            tasks.push(tokio::spawn(decode_worker(
                ctx.clone(),
                rx,
                store_tx.clone(),
            )));
        }
        drop(store_tx);
        let (stop, stop_rx) = oneshot::channel();
        tasks.push(tokio::spawn(route(ctx, events, workers, stop_rx)));
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

async fn decode_worker<S: SeriesStore>(
    ctx: Arc<Context<S>>,
    mut input: mpsc::Receiver<Inbound>,
    output: mpsc::Sender<Prepared>,
) {
    let mut scratch = Scratch::default();
    while let Some(msg) = input.recv().await {
        ctx.metrics.decode_queue.taken.fetch_add(1, Relaxed);
        if let Decoded::Write(p) = decode::handle(&ctx, msg, &mut scratch) {
            ctx.metrics.store_queue.sent.fetch_add(1, Relaxed);
            if output.send(*p).await.is_err() {
                tracing::error!("store stage is gone; stopping a decode worker");
                return;
            }
        }
    }
}

/// Spreads messages over the workers by client, so one client's messages stay in order.
async fn route<S: SeriesStore>(
    ctx: Arc<Context<S>>,
    mut events: mpsc::Receiver<IngressEvent>,
    workers: Vec<mpsc::Sender<Inbound>>,
    stop: oneshot::Receiver<()>,
) {
    let hasher = BuildHasherDefault::<DefaultHasher>::default();
    let mut stop = Some(stop);
    loop {
        let next = tokio::select! {
            biased;
            ev = events.recv() => ev,
            _ = async { if let Some(s) = stop.as_mut() { let _ = s.await; } }, if stop.is_some() => {
                // Refuse new events; the ones queued are still taken below.
                events.close();
                stop = None;
                continue;
            }
        };
        let Some(ev) = next else { break };
        match ev {
            IngressEvent::Message(m) => {
                let w = (hasher.hash_one(&*m.client_id) % workers.len() as u64) as usize;
                ctx.metrics.decode_queue.sent.fetch_add(1, Relaxed);
                if workers[w].send(m).await.is_err() {
                    tracing::error!("decode worker is gone; stopping the router");
                    return;
                }
            }
            IngressEvent::Refused {
                principal,
                topic,
                reason,
                payload,
            } => {
                deadletter::send(
                    &ctx.outlet,
                    &ctx.metrics,
                    principal.id(),
                    principal.id(),
                    &topic,
                    "refused",
                    &reason,
                    &payload,
                    protocols::time::now_ms(),
                );
            }
            IngressEvent::Connected { principal, .. } => {
                ctx.status.connected(&principal, protocols::time::now_ms());
            }
            IngressEvent::Disconnected { principal, .. } => {
                ctx.status
                    .disconnected(&principal, protocols::time::now_ms());
            }
        }
    }
}
