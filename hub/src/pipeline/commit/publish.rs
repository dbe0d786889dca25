//! After durable: acknowledge, update twins, evaluate rules, publish feeds.
//!
//! For each durable write: the ingress is told (QoS 1 PUBACK goes out), the agent's sequence
//! number joins the next coalesced ack, twins take the new reported values, and the feed
//! documents prepared by the decode workers are published. A redelivered agent message is
//! acknowledged again (the agent missed the first ack) but not republished. A failed append is
//! neither acknowledged nor published: the sender will deliver it again.
//!
//! Writes that complete together are all handled before acks are flushed, so under load one
//! ack covers many messages. Twin documents (retained state, heavier to serialize) are published
//! at most every [`TWIN_FLUSH`] per device by [`twin_rounds`], a task of their own that
//! yields between chunks: live values travel in the feeds.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::Committer;
use super::ack::AckCoalescer;
use crate::pipeline::Stored;
use crate::twin::Twins;
use mqtt_broker::ingress::Disposition;
use series_store::{Appended, StoreError};

/// Most completed writes handled before acks are flushed.
pub const DRAIN_MAX: usize = 512;
/// How often changed twins are published.
pub const TWIN_FLUSH: std::time::Duration = std::time::Duration::from_millis(50);
/// Twins published between two yields (a round over 6,400 devices as one block held feeds up
/// for ~13 ms: `sim bench ingest` p99 at 250,000 readings/s).
const TWIN_CHUNK: usize = 256;

/// The publish side of the commit stage: what happens to a write once it is durable. Owned by
/// the commit stage's task (see [`super::run`]), which calls it as appends complete: a
/// separate task behind a queue made every write wait for one more wake-up of the runtime
/// (up to 6 ms at p99 on a busy 2-core machine). Twin documents, the heavy part, are left to
/// [`twin_rounds`] on its own task.
#[derive(Default)]
pub struct Publish {
    acks: AckCoalescer,
}

impl Publish {
    /// A durable (or failed) write: PUBACK, ack, twins, rules, feeds.
    pub fn handle<S>(&mut self, c: &Committer<S>, stored: Stored) {
        handle(c, stored, &mut self.acks);
    }

    /// After a drain: one coalesced ack per agent.
    pub fn flush<S>(&mut self, c: &Committer<S>) {
        self.acks.flush(|agent, ack| {
            let a = c.registry.agent(agent);
            match serde_json::to_vec(&ack) {
                Ok(bytes) => {
                    c.outlet.publish(&a.ack_topic, Bytes::from(bytes), false);
                    c.metrics.acks_published.fetch_add(1, Relaxed);
                }
                Err(e) => tracing::error!("ack not serializable: {e}"),
            }
        });
    }
}

/// Publishes changed twins every [`TWIN_FLUSH`], [`TWIN_CHUNK`] at a time with a yield in
/// between, until `stop` fires or is dropped; then the last round.
pub async fn twin_rounds(twins: Arc<Twins>, mut stop: oneshot::Receiver<()>) {
    let mut tick = tokio::time::interval(TWIN_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => break,
        }
        for chunk in twins.take_stale().chunks(TWIN_CHUNK) {
            for &d in chunk {
                twins.publish_stale(d);
            }
            tokio::task::yield_now().await;
        }
    }
    for d in twins.take_stale() {
        twins.publish_stale(d);
    }
}

fn handle<S>(c: &Committer<S>, stored: Stored, acks: &mut AckCoalescer) {
    let Stored {
        mut prepared,
        result,
    } = stored;
    let appended = match result {
        Ok(a) => {
            c.append_errors.clear();
            a
        }
        Err(e) => {
            c.metrics.store_errors.fetch_add(1, Relaxed);
            c.append_errors.record(&e);
            // A full disk (or the watermark below it) is "no room": MQTT 5 senders hear
            // "Quota exceeded" and keep the message. Other failures drop `done` without a
            // disposition, which tells the ingress not to acknowledge.
            let no_room =
                matches!(&e, StoreError::Io(io) if io.kind() == std::io::ErrorKind::StorageFull);
            match prepared.done.take() {
                Some(tx) if no_room => {
                    let _ = tx.send(Disposition::NoRoom(e.to_string()));
                }
                other => drop(other),
            }
            return;
        }
    };
    // Answered once the twins and rules have seen it too: in a cluster the partition's worker
    // waits for this before the partition can be handed over with its rule state.
    let done = prepared.done.take();
    let accepted = move || {
        if let Some(tx) = done {
            let _ = tx.send(Disposition::Accepted);
        }
    };
    if let Some((agent, stream, seq)) = prepared.ack {
        acks.add(agent, stream, seq);
    }
    if let Some(work) = &prepared.video
        && let Some((agent, event)) = work.after_durable(&c.video, appended == Appended::Duplicate)
    {
        acks.add_snapshot(agent, event);
    }
    match appended {
        Appended::Duplicate => {
            c.metrics.duplicates.fetch_add(1, Relaxed);
            accepted();
            return;
        }
        // Durable before a crash, maybe never published: publish now (at-least-once).
        Appended::Recovered => {
            c.metrics.duplicates.fetch_add(1, Relaxed);
            c.metrics.recovered.fetch_add(1, Relaxed);
        }
        Appended::Stored => {
            c.metrics
                .readings_stored
                .fetch_add(prepared.readings as u64, Relaxed);
        }
    }
    let now = protocols::time::now_ms();
    for g in &prepared.groups {
        if c.twins
            .apply_reported(g.device, g.ts_ms, &prepared.values[g.values.clone()], now)
        {
            c.twins.mark_stale(g.device);
        }
        c.rules
            .observe(g.device, g.ts_ms, &prepared.values[g.values.clone()], now);
        let device = c.registry.device(g.device);
        c.outlet.publish(
            &device.feed_topic,
            prepared.feeds.slice(g.feed.clone()),
            false,
        );
        c.metrics.feeds_published.fetch_add(1, Relaxed);
    }
    accepted();
    c.metrics
        .pipeline_latency
        .observe(prepared.arrived.elapsed());
}
