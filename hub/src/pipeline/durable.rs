//! Dedup + store, then publish: the commit stage.
//!
//! Appends run concurrently (up to [`MAX_IN_FLIGHT`]) so the store's group commit can gather
//! many of them into one fsync. Deduplication by origin happens inside the store, atomically
//! with the write. As appends complete, the same task hands them to [`Publish`] (PUBACK, agent
//! acks, twin state, feeds): completions that arrive together are handled in one drain, then
//! the acks go out. Changed twins are published by a task of their own ([`twin_rounds`]).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::publish::{DRAIN_MAX, Publish, twin_rounds};
use super::{Context, Prepared, Stored};
use series_store::SeriesStore;

/// Appends in flight at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// Runs the stage until its input closes and every append has finished and been published.
pub async fn run<S: SeriesStore>(ctx: Arc<Context<S>>, mut input: mpsc::Receiver<Prepared>) {
    let mut in_flight = FuturesUnordered::new();
    let mut publish = Publish::default();
    let (twins_stop, stop_rx) = oneshot::channel();
    let twins = tokio::spawn(twin_rounds(ctx.clone(), stop_rx));
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(stored) = in_flight.next(), if !in_flight.is_empty() => {
                committed(&ctx, &mut publish, stored);
                for _ in 1..DRAIN_MAX {
                    match in_flight.next().now_or_never() {
                        Some(Some(stored)) => committed(&ctx, &mut publish, stored),
                        _ => break,
                    }
                }
                publish.flush(&ctx);
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
    publish.flush(&ctx);
    // The last twin round runs once every write is in.
    let _ = twins_stop.send(());
    if let Err(e) = twins.await {
        tracing::error!("twin rounds failed: {e}");
    }
}

/// One durable (or failed) write.
fn committed<S>(ctx: &Context<S>, publish: &mut Publish, stored: Stored) {
    // Durable, and nothing about it has left the hub yet: a crash here must neither lose nor
    // double the batch (the crash tests abort here).
    #[cfg(feature = "failpoints")]
    super::failpoint::after_store(&stored);
    publish.handle(ctx, stored);
}
