//! Dedup + store, then publish: the commit stage.
//!
//! Appends run concurrently (up to [`MAX_IN_FLIGHT`]) so the store's group commit can gather
//! many of them into one fsync. Deduplication by origin happens inside the store, atomically
//! with the write; camera work is made durable in the video archive first
//! ([`persist_then_append`]). Appends are published in the order they arrived, whatever order
//! the store finishes them in (a shared store answers concurrent transactions in any order;
//! a device's feeds, twin and rule evaluation keep its order). As appends complete, in that
//! order, the same task hands them to [`Publish`]
//! (PUBACK, agent acks, twin state, rules, feeds): completions that arrive together are handled
//! in one drain, then the acks go out. Changed twins are published by a task of their own
//! ([`twin_rounds`]).

pub mod ack;
pub mod publish;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::{Prepared, Stored};
use crate::health::DiskWatch;
use crate::incident::ErrorBurst;
use crate::metrics::Metrics;
use crate::outbound::Outlet;
use crate::registry::Registry;
use crate::rules::Rules;
use crate::twin::Twins;
use crate::video::{Video, VideoError, Work};
use publish::{DRAIN_MAX, Publish, twin_rounds};
use series_store::{Appended, SeriesStore, StoreError, WriteBatch};

/// Appends in flight at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// What the commit stage writes to and publishes through.
pub struct Committer<S> {
    /// Where prepared writes become durable (and are deduplicated by origin).
    pub store: Arc<S>,
    /// The archive of camera events and snapshots, made durable before their origin.
    pub video: Arc<Video>,
    /// Reported state after durable, and the twin rounds.
    pub twins: Arc<Twins>,
    /// Evaluated on every durable reading, on device time.
    pub rules: Arc<Rules>,
    /// Feeds, PUBACKs and agent acks go out here.
    pub outlet: Outlet,
    /// The preformatted feed and ack topics of devices and agents.
    pub registry: Arc<Registry>,
    /// Store latency, queue depth and publish counters.
    pub metrics: Arc<Metrics>,
    /// Below `[hub] min_free_disk` new writes are refused (not acknowledged).
    pub disk: Arc<DiskWatch>,
    /// Failed appends, logged as a summary per interval rather than one line each.
    pub append_errors: ErrorBurst,
}

/// Runs the stage until its input closes and every append has finished and been published.
pub async fn run<S: SeriesStore>(c: Arc<Committer<S>>, mut input: mpsc::Receiver<Prepared>) {
    let mut in_flight = FuturesOrdered::new();
    let mut publish = Publish::default();
    let (twins_stop, stop_rx) = oneshot::channel();
    let twins = tokio::spawn(twin_rounds(c.twins.clone(), stop_rx));
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(stored) = in_flight.next(), if !in_flight.is_empty() => {
                committed(&c, &mut publish, stored);
                for _ in 1..DRAIN_MAX {
                    match in_flight.next().now_or_never() {
                        Some(Some(stored)) => committed(&c, &mut publish, stored),
                        _ => break,
                    }
                }
                publish.flush(&c);
            }
            next = input.recv(), if open && in_flight.len() < MAX_IN_FLIGHT => match next {
                Some(mut p) => {
                    let c = c.clone();
                    let batch = std::mem::take(&mut p.batch);
                    in_flight.push_back(async move {
                        let started = Instant::now();
                        let result = if c.disk.is_low() {
                            // Not acknowledged: the sender keeps it and sends it again later.
                            c.disk.refused();
                            Err(StoreError::Io(std::io::Error::new(
                                std::io::ErrorKind::StorageFull,
                                c.disk.reason(),
                            )))
                        } else {
                            match p.video.as_mut() {
                                Some(work) => persist_then_append(work, &c.video, &*c.store, batch).await,
                                None => c.store.append(batch).await,
                            }
                        };
                        c.metrics.append_latency.observe(started.elapsed());
                        c.metrics.store_queue.taken.fetch_add(1, Relaxed);
                        Stored { prepared: p, result }
                    });
                }
                None => open = false,
            },
            else => break,
        }
        if !open && in_flight.is_empty() {
            break;
        }
    }
    publish.flush(&c);
    // The last twin round runs once every write is in.
    let _ = twins_stop.send(());
    if let Err(e) = twins.await {
        tracing::error!("twin rounds failed: {e}");
    }
}

/// One durable (or failed) write.
fn committed<S>(c: &Committer<S>, publish: &mut Publish, stored: Stored) {
    // Durable, and nothing about it has left the hub yet: a crash here must neither lose nor
    // double the batch (the crash tests abort here).
    #[cfg(feature = "failpoints")]
    super::failpoint::after_store(&stored);
    publish.handle(c, stored);
}

/// The store step for a message with camera work: make the work durable in the archive, then
/// append the message's origin (deduplication of agent seqs). A write with neither origin nor
/// points (a snapshot) is not sent to the store.
pub async fn persist_then_append<S: SeriesStore>(
    work: &mut Work,
    video: &Arc<Video>,
    store: &S,
    batch: WriteBatch,
) -> Result<Appended, StoreError> {
    match work.persist(video).await {
        Ok(()) => {}
        Err(VideoError::IdClash { id, camera }) => {
            // The agent can never fix this: drop the phase, still record and acknowledge it.
            tracing::warn!(
                id,
                camera,
                "event id reused for another camera; phase dropped"
            );
        }
        Err(e) => return Err(StoreError::Io(std::io::Error::other(e.to_string()))),
    }
    if batch.origin.is_none() && batch.series.is_empty() {
        return Ok(Appended::Stored);
    }
    store.append(batch).await
}
