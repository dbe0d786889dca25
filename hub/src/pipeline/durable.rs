//! Dedup + store: the stage that makes writes durable.
//!
//! Appends run concurrently (up to [`MAX_IN_FLIGHT`]) so the store's group commit can gather
//! many of them into one fsync; each result goes on to the publish stage as it completes.
//! Deduplication by origin happens inside the store, atomically with the write.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;

use super::{Context, Prepared, Stored};
use crate::store::SeriesStore;

/// Appends in flight at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// Runs the stage until its input closes and every append has finished.
pub async fn run<S: SeriesStore>(
    ctx: Arc<Context<S>>,
    mut input: mpsc::Receiver<Prepared>,
    output: mpsc::Sender<Stored>,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(stored) = in_flight.next(), if !in_flight.is_empty() => {
                // Durable, and nothing about it has left the hub yet: a crash here must
                // neither lose nor double the batch (the crash tests abort here).
                #[cfg(feature = "failpoints")]
                super::failpoint::after_store(&stored);
                ctx.metrics.publish_queue.sent.fetch_add(1, Relaxed);
                if output.send(stored).await.is_err() {
                    tracing::error!("publish stage is gone; stopping the store stage");
                    return;
                }
            }
            next = input.recv(), if open && in_flight.len() < MAX_IN_FLIGHT => match next {
                Some(mut p) => {
                    let store = ctx.store.clone();
                    let metrics = ctx.metrics.clone();
                    let batch = std::mem::take(&mut p.batch);
                    in_flight.push(async move {
                        let started = Instant::now();
                        let result = match p.video.as_mut() {
                            Some(work) => crate::video::persist_then_append(work, &*store, batch).await,
                            None => store.append(batch).await,
                        };
                        metrics.append_latency.observe(started.elapsed());
                        metrics.store_queue.taken.fetch_add(1, Relaxed);
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
}
