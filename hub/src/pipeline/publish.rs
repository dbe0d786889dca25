//! After durable: acknowledge, update twins, evaluate rules, publish feeds.
//!
//! For each durable write: the ingress is told (QoS 1 PUBACK goes out), the agent's sequence
//! number joins the next coalesced ack, twins take the new reported values, and the feed
//! documents prepared by the decode workers are published. A redelivered agent message is
//! acknowledged again (the agent missed the first ack) but not republished. A failed append is
//! neither acknowledged nor published: the sender will deliver it again.
//!
//! While items are waiting, the stage drains them before flushing acks, so under load one ack
//! covers many messages. Twin documents (retained state, heavier to serialize) are published
//! at most every [`TWIN_FLUSH`] per device, in chunks between drains: live values travel in
//! the feeds.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::ack::AckCoalescer;
use super::{Context, Stored};
use crate::ingress::Disposition;
use crate::registry::DeviceIdx;
use crate::store::Appended;

/// Most items handled before acks are flushed.
const DRAIN_MAX: usize = 512;
/// How often changed twins are published.
pub const TWIN_FLUSH: std::time::Duration = std::time::Duration::from_millis(50);
/// Twins published between two drains of the queue (a round over 6,400 devices as one block
/// held feeds up for ~13 ms: `sim bench ingest` p99 at 250,000 readings/s).
const TWIN_CHUNK: usize = 256;

/// Runs the stage until its input closes.
pub async fn run<S>(ctx: Arc<Context<S>>, mut input: mpsc::Receiver<Stored>) {
    let mut acks = AckCoalescer::default();
    let mut dirty: Vec<DeviceIdx> = Vec::new();
    let mut is_dirty = vec![false; ctx.registry.devices().len()];
    // The twins of one flush round, published TWIN_CHUNK at a time between drains so that a
    // round over thousands of devices never holds up feeds and acks for long. A device stays
    // marked dirty until its document is out, so it is in at most one of `round` and `dirty`.
    let mut round: Vec<DeviceIdx> = Vec::new();
    let mut tick = tokio::time::interval(TWIN_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            next = input.recv() => match next {
                Some(item) => item,
                None => break,
            },
            _ = tick.tick(), if !dirty.is_empty() && round.is_empty() => {
                std::mem::swap(&mut round, &mut dirty);
                flush_chunk(&ctx, &mut round, &mut is_dirty);
                continue;
            }
            _ = std::future::ready(()), if !round.is_empty() => {
                flush_chunk(&ctx, &mut round, &mut is_dirty);
                continue;
            }
        };
        handle(&ctx, first, &mut acks, &mut dirty, &mut is_dirty);
        for _ in 1..DRAIN_MAX {
            match input.try_recv() {
                Ok(next) => handle(&ctx, next, &mut acks, &mut dirty, &mut is_dirty),
                Err(_) => break,
            }
        }
        acks.flush(|agent, ack| {
            let a = ctx.registry.agent(agent);
            match serde_json::to_vec(&ack) {
                Ok(bytes) => {
                    ctx.outlet.publish(&a.ack_topic, Bytes::from(bytes), false);
                    ctx.metrics.acks_published.fetch_add(1, Relaxed);
                }
                Err(e) => tracing::error!("ack not serializable: {e}"),
            }
        });
        if !round.is_empty() {
            flush_chunk(&ctx, &mut round, &mut is_dirty);
        }
    }
    round.append(&mut dirty);
    while !round.is_empty() {
        flush_chunk(&ctx, &mut round, &mut is_dirty);
    }
}

/// Publishes up to [`TWIN_CHUNK`] twins of the round.
fn flush_chunk<S>(ctx: &Context<S>, round: &mut Vec<DeviceIdx>, is_dirty: &mut [bool]) {
    let from = round.len().saturating_sub(TWIN_CHUNK);
    for d in round.drain(from..) {
        is_dirty[d as usize] = false;
        ctx.twins.publish(d);
    }
}

fn handle<S>(
    ctx: &Context<S>,
    stored: Stored,
    acks: &mut AckCoalescer,
    dirty: &mut Vec<DeviceIdx>,
    is_dirty: &mut [bool],
) {
    ctx.metrics.publish_queue.taken.fetch_add(1, Relaxed);
    let Stored {
        mut prepared,
        result,
    } = stored;
    let appended = match result {
        Ok(a) => a,
        Err(e) => {
            ctx.metrics.store_errors.fetch_add(1, Relaxed);
            tracing::error!("store append failed, message left unacknowledged: {e}");
            // Dropping `done` without a disposition tells the ingress not to acknowledge.
            drop(prepared.done.take());
            return;
        }
    };
    if let Some(tx) = prepared.done.take() {
        let _ = tx.send(Disposition::Accepted);
    }
    if let Some((agent, stream, seq)) = prepared.ack {
        acks.add(agent, stream, seq);
    }
    if let Some(work) = &prepared.video
        && let Some((agent, event)) = work.after_durable(appended == Appended::Duplicate)
    {
        acks.add_snapshot(agent, event);
    }
    match appended {
        Appended::Duplicate => {
            ctx.metrics.duplicates.fetch_add(1, Relaxed);
            return;
        }
        // Durable before a crash, maybe never published: publish now (at-least-once).
        Appended::Recovered => {
            ctx.metrics.duplicates.fetch_add(1, Relaxed);
            ctx.metrics.recovered.fetch_add(1, Relaxed);
        }
        Appended::Stored => {
            ctx.metrics
                .readings_stored
                .fetch_add(prepared.readings as u64, Relaxed);
        }
    }
    let now = super::now_ms();
    for g in &prepared.groups {
        if ctx
            .twins
            .apply_reported(g.device, g.ts_ms, &prepared.values[g.values.clone()], now)
            && !is_dirty[g.device as usize]
        {
            is_dirty[g.device as usize] = true;
            dirty.push(g.device);
        }
        ctx.rules
            .observe(g.device, g.ts_ms, &prepared.values[g.values.clone()], now);
        let device = ctx.registry.device(g.device);
        ctx.outlet.publish(
            &device.feed_topic,
            prepared.feeds.slice(g.feed.clone()),
            false,
        );
        ctx.metrics.feeds_published.fetch_add(1, Relaxed);
    }
    ctx.metrics
        .pipeline_latency
        .observe(prepared.arrived.elapsed());
}
