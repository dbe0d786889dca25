//! One partition's worker: replays the partition's log after its committed position into this
//! hub's pipeline, and moves the position past what the pipeline has stored.
//!
//! The consumer is ephemeral (one replica, in memory, no acks): the position in PostgreSQL is
//! the truth, so a consumer lost with its NATS node is simply made again from the last
//! delivered sequence. Completions come back out of order (the pipeline stores many messages at
//! once); the position is the highest sequence below which every delivered message is stored.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::custody::Custodian;
use super::envelope::Ingest;
use super::view::OwnedPartition;
use super::{ClusterError, Link, STREAM, ingest_subject};
use mqtt_broker::ingress::{Disposition, IngressEvent};

/// How long [`Worker::stop`] waits for the pipeline to store what it was given.
pub const DRAIN: Duration = Duration::from_secs(2);

/// A partition granted to this hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The partition.
    pub partition: u32,
    /// Its new epoch.
    pub epoch: i64,
    /// Stream sequence up to which everything is stored (replay starts after it).
    pub position: u64,
}

/// How often the position is written.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Messages pulled per request.
const PULL_BATCH: usize = 256;
/// A message the store did not take (no room, or a failed append: PostgreSQL away) is offered
/// again after this.
const RETRY: Duration = Duration::from_secs(1);

/// A running partition worker.
pub struct Worker {
    epoch: i64,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Worker {
    /// The lease epoch it works under.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Whether it has ended by itself (its lease was fenced).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for a worker that has ended.
    pub async fn join(self) {
        let _ = self.task.await;
    }

    /// Stops pulling, waits (at most [`DRAIN`]) until the pipeline has stored what it was
    /// given, writes the position, and returns.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts working a granted partition: takes its devices' state (`custody`), then replays.
pub fn start(
    link: Arc<Link>,
    grant: Grant,
    events: mpsc::Sender<IngressEvent>,
    custody: Arc<dyn Custodian>,
) -> Worker {
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        custody.take(grant.partition).await;
        work(link, grant, events, stop_rx).await
    });
    Worker {
        epoch: grant.epoch,
        stop,
        task,
    }
}

/// Delivered sequences and what of them is stored.
struct Progress {
    /// Delivered, not yet stored.
    pending: BTreeSet<u64>,
    /// Highest delivered.
    delivered: u64,
    /// Messages in the log after the last delivered one.
    lag: u64,
}

impl Progress {
    /// Everything at or below this is stored.
    fn position(&self) -> u64 {
        match self.pending.first() {
            Some(&first) => first - 1,
            None => self.delivered,
        }
    }
}

async fn work(
    link: Arc<Link>,
    grant: Grant,
    events: mpsc::Sender<IngressEvent>,
    mut stop: watch::Receiver<bool>,
) {
    let p = grant.partition;
    let mut progress = Progress {
        pending: BTreeSet::new(),
        delivered: grant.position,
        lag: 0,
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written = grant.position;
    'consumers: loop {
        if *stop.borrow() {
            break;
        }
        let mut messages = match messages(&link, p, progress.delivered + 1).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(
                    partition = p,
                    "cannot read the partition's log: {e}; retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = stop.changed() => break,
                }
            }
        };
        loop {
            tokio::select! {
                _ = stop.changed() => break 'consumers,
                Some(seq) = done_rx.recv() => {
                    progress.pending.remove(&seq);
                }
                _ = flush.tick() => {
                    let pos = progress.position();
                    link.state.update(OwnedPartition {
                        partition: p,
                        epoch: grant.epoch,
                        position: pos,
                        lag: progress.lag,
                        in_flight: progress.pending.len() as u64,
                    });
                    match write_position(&link, p, grant.epoch, pos, progress.lag).await {
                        Ok(true) => written = pos,
                        Ok(false) => {
                            tracing::warn!(partition = p, epoch = grant.epoch, "fenced: another hub holds the partition");
                            return;
                        }
                        // PostgreSQL away: the lease keeper decides when to stop.
                        Err(_) => {}
                    }
                }
                m = messages.next() => {
                    let msg = match m {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            tracing::debug!(partition = p, "log consumer: {e}; making it again");
                            continue 'consumers;
                        }
                        None => continue 'consumers,
                    };
                    let Ok(info) = msg.info() else { continue };
                    let seq = info.stream_sequence;
                    if seq <= progress.delivered {
                        continue;
                    }
                    progress.delivered = seq;
                    progress.lag = info.pending;
                    link.state.counters.consumed.fetch_add(1, Relaxed);
                    match Ingest::decode(&msg.payload) {
                        Ok(env @ Ingest::Message { .. }) => {
                            progress.pending.insert(seq);
                            let (events, done_tx) = (events.clone(), done_tx.clone());
                            // Sent in order here; waited for on its own.
                            let (tx, rx) = oneshot::channel();
                            if events.send(env.clone().into_event(Some(tx))).await.is_err() {
                                break 'consumers;
                            }
                            tokio::spawn(complete(env, rx, events, seq, done_tx, stop.clone()));
                        }
                        Ok(env) => {
                            if events.send(env.into_event(None)).await.is_err() {
                                break 'consumers;
                            }
                        }
                        Err(e) => {
                            link.state.counters.envelope_errors.fetch_add(1, Relaxed);
                            tracing::warn!(partition = p, seq, "log message skipped: {e}");
                        }
                    }
                }
            }
        }
    }
    // Drain: what was handed to the pipeline is stored (or the pipeline is gone) before the
    // position is written for the next owner.
    let deadline = tokio::time::Instant::now() + DRAIN;
    while !progress.pending.is_empty() {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(seq)) => {
                progress.pending.remove(&seq);
            }
            _ => break,
        }
    }
    let pos = progress.position();
    if pos > written {
        let _ = write_position(&link, p, grant.epoch, pos, progress.lag).await;
    }
}

/// Waits for the pipeline's answer for one message and reports its sequence once it is stored
/// or refused for good. A message the store did not take (no room; a failed append, which the
/// pipeline answers by dropping `done`) is offered again until it is, for as long as this hub
/// works the partition: the sender waits for its ack, and the position must not pass it.
async fn complete(
    env: Ingest,
    mut rx: oneshot::Receiver<Disposition>,
    events: mpsc::Sender<IngressEvent>,
    seq: u64,
    done: mpsc::UnboundedSender<u64>,
    stop: watch::Receiver<bool>,
) {
    loop {
        match rx.await {
            Ok(Disposition::Accepted | Disposition::Rejected(_)) => {
                let _ = done.send(seq);
                return;
            }
            Ok(Disposition::NoRoom(_)) | Err(_) => {
                tokio::time::sleep(RETRY).await;
                // Stopped: not stored here; the next owner replays it from the position.
                if *stop.borrow() {
                    return;
                }
                let (tx, next) = oneshot::channel();
                if events.send(env.clone().into_event(Some(tx))).await.is_err() {
                    return;
                }
                rx = next;
            }
        }
    }
}

/// An ephemeral consumer of partition `p` from `start` on.
async fn messages(link: &Link, p: u32, start: u64) -> Result<pull::Stream, String> {
    let stream = link
        .js
        .get_stream(STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: ingest_subject(p),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start.max(1),
            },
            ack_policy: AckPolicy::None,
            memory_storage: true,
            num_replicas: 1,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| e.to_string())
}

/// Writes a partition's position and lag under the writer's lease; `Ok(false)` when the lease
/// is no longer the writer's (fenced).
pub async fn write_position(
    link: &Link,
    partition: u32,
    epoch: i64,
    position: u64,
    lag: u64,
) -> Result<bool, ClusterError> {
    let client = link.pg.get().await?;
    let n = client
        .execute(
            "UPDATE cluster_partitions SET position = GREATEST(position, $1), lag = $2
             WHERE partition = $3 AND owner = $4 AND epoch = $5",
            &[
                &i64::try_from(position).unwrap_or(i64::MAX),
                &i64::try_from(lag).unwrap_or(i64::MAX),
                &(partition as i32),
                &link.node(),
                &epoch,
            ],
        )
        .await?;
    Ok(n == 1)
}
