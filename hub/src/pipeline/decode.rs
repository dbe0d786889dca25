//! Decode, validate and normalize: the first stage, run by a few parallel workers.
//!
//! Each inbound message becomes at most one [`Prepared`] write for the store stage; every part
//! that cannot be accepted goes to the dead letters with its reason, and the rest of the
//! message is kept. Control messages (health, desired state, command results) are handled
//! here directly and never reach the store.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use protocols::Quantity;
use protocols::access::Principal;
use protocols::batch::{self, AgentBatch};
use protocols::messages::{CommandResult, DesiredUpdate, Health};
use protocols::telemetry::{self, TelemetryError};
use protocols::topic::Topic;
use protocols::{Value, ValueKind};

use super::{Context, Prepared, deadletter};
use crate::feeds::{NormValue, canonical_order, write_feed};
use crate::metrics::TopicKind;
use crate::registry::{AgentIdx, Device, DeviceIdx};
use mqtt_broker::ingress::{Disposition, Inbound};
use series_store::{Origin, Point, SeriesId, WriteBatch};

/// One device and timestamp group of a prepared write.
#[derive(Clone, Debug)]
pub struct Group {
    /// The device.
    pub device: DeviceIdx,
    /// Normalized time.
    pub ts_ms: i64,
    /// Its values in [`Prepared::values`].
    pub values: Range<usize>,
    /// Its feed document in [`Prepared::feeds`].
    pub feed: Range<usize>,
}

/// Per-worker scratch space, reused from message to message.
#[derive(Default)]
pub struct Scratch {
    feed: Vec<u8>,
    sample: Vec<NormValue>,
}

/// Builds a prepared write: series points, twin groups and feed documents.
struct Builder<'a> {
    scratch: &'a mut Scratch,
    batch: WriteBatch,
    groups: Vec<Group>,
    values: Vec<NormValue>,
    readings: usize,
    /// Index in `batch.series` where the current device's series start.
    device_series_from: usize,
    current_device: Option<DeviceIdx>,
}

impl<'a> Builder<'a> {
    fn new(scratch: &'a mut Scratch, origin: Option<Origin>) -> Builder<'a> {
        scratch.feed.clear();
        Builder {
            scratch,
            batch: WriteBatch {
                origin,
                series: Vec::new(),
            },
            groups: Vec::new(),
            values: Vec::new(),
            readings: 0,
            device_series_from: 0,
            current_device: None,
        }
    }

    /// Adds one timestamp group of a device; `scratch.sample` holds its values.
    fn push_group(&mut self, device: &Device, ts_ms: i64, seq: Option<u64>) {
        let mut sample = std::mem::take(&mut self.scratch.sample);
        if sample.is_empty() {
            self.scratch.sample = sample;
            return;
        }
        canonical_order(&mut sample);
        if self.current_device != Some(device.idx) {
            // Series of a device are contiguous unless a batch lists the device twice; then
            // a second run of series is started, which the store merges.
            self.current_device = Some(device.idx);
            self.device_series_from = self.batch.series.len();
        }
        for v in &sample {
            let point = Point {
                ts_ms,
                value: v.value.as_f64(),
                quality: v.quality,
            };
            let from = self.device_series_from;
            match self.batch.series[from..]
                .iter_mut()
                .find(|(s, _)| s.quantity == v.quantity)
            {
                Some((_, points)) => points.push(point),
                None => self.batch.series.push((
                    SeriesId {
                        device: device.id.clone(),
                        quantity: v.quantity,
                    },
                    vec![point],
                )),
            }
        }
        self.readings += sample.len();
        let feed_from = self.scratch.feed.len();
        write_feed(&mut self.scratch.feed, device, ts_ms, seq, &sample);
        let values_from = self.values.len();
        self.values.extend_from_slice(&sample);
        self.groups.push(Group {
            device: device.idx,
            ts_ms,
            values: values_from..self.values.len(),
            feed: feed_from..self.scratch.feed.len(),
        });
        sample.clear();
        self.scratch.sample = sample;
    }

    fn finish(self, msg: &mut Inbound, ack: Option<(AgentIdx, u64, u64)>) -> Box<Prepared> {
        Box::new(Prepared {
            done: msg.done.take(),
            batch: self.batch,
            ack,
            readings: self.readings,
            groups: self.groups,
            values: self.values,
            feeds: Bytes::copy_from_slice(&self.scratch.feed),
            video: None,
            arrived: msg.arrived,
        })
    }
}

/// What the decode stage made of a message.
pub enum Decoded {
    /// A write for the store stage.
    Write(Box<Prepared>),
    /// Fully handled here (or rejected); `done` already completed.
    Handled,
    /// Handed to a task of its own (desired state), which completes `done`.
    Spawned,
}

/// Decodes, validates and normalizes one message.
pub fn handle<S: series_store::SeriesStore>(
    ctx: &Arc<Context<S>>,
    mut msg: Inbound,
    scratch: &mut Scratch,
) -> Decoded {
    let topic_text = std::mem::take(&mut msg.topic);
    let topic = match Topic::parse(&topic_text) {
        Ok(t) => t,
        Err(e) => {
            ctx.metrics.message_in(TopicKind::Other);
            return reject_whole(
                ctx,
                &mut msg,
                &topic_text,
                "unexpected_topic",
                &e.to_string(),
            );
        }
    };
    let principal = msg.principal.clone();
    match (topic, &*principal) {
        (Topic::AgentBatch(a), Principal::Agent(me)) if a == me => {
            ctx.metrics.message_in(TopicKind::Batch);
            agent_batch(ctx, msg, &topic_text, scratch)
        }
        (Topic::DeviceTelemetry(d), Principal::Device(me)) if d == me => {
            ctx.metrics.message_in(TopicKind::Telemetry);
            device_telemetry(ctx, msg, &topic_text, scratch)
        }
        (Topic::AgentHealth(a), Principal::Agent(me)) if a == me => {
            ctx.metrics.message_in(TopicKind::Health);
            agent_health(ctx, msg, &topic_text)
        }
        (Topic::TwinDesired(d), Principal::App { .. }) => {
            ctx.metrics.message_in(TopicKind::Desired);
            desired(ctx, msg, topic_text.clone(), d.to_string())
        }
        (Topic::DeviceCmdResult(d), Principal::Device(me)) if d == me => {
            ctx.metrics.message_in(TopicKind::CmdResult);
            command_result(ctx, msg, &topic_text)
        }
        (Topic::AgentCmdResult(a), Principal::Agent(me)) if a == me => {
            ctx.metrics.message_in(TopicKind::CmdResult);
            command_result(ctx, msg, &topic_text)
        }
        (Topic::AgentEvents(a), Principal::Agent(me)) if a == me => {
            ctx.metrics.message_in(TopicKind::Events);
            crate::video::ingest::event(ctx, &ctx.video, msg, &topic_text)
        }
        (Topic::AgentSnapshot { agent, event }, Principal::Agent(me)) if agent == me => {
            ctx.metrics.message_in(TopicKind::Snapshot);
            crate::video::ingest::snapshot(ctx, &ctx.video, msg, &topic_text, event)
        }
        (Topic::Status(id), _) if id == principal.id() => {
            // Online state follows connections (and wills through them); nothing to do.
            ctx.metrics.message_in(TopicKind::Status);
            msg.finish(Disposition::Accepted);
            Decoded::Handled
        }
        _ => {
            ctx.metrics.message_in(TopicKind::Other);
            reject_whole(
                ctx,
                &mut msg,
                &topic_text,
                "unexpected_topic",
                "the hub does not take this topic from this client",
            )
        }
    }
}

fn dead_letter(
    ctx: &Context<impl Sized>,
    msg: &Inbound,
    topic: &str,
    label: &'static str,
    detail: &str,
    part: &[u8],
) {
    deadletter::send(
        &ctx.outlet,
        &ctx.metrics,
        msg.principal.id(),
        &msg.client_id,
        topic,
        label,
        detail,
        part,
        msg.received_ms,
    );
}

fn reject_whole<S>(
    ctx: &Context<S>,
    msg: &mut Inbound,
    topic: &str,
    label: &'static str,
    detail: &str,
) -> Decoded {
    dead_letter(ctx, msg, topic, label, detail, &msg.payload.clone());
    msg.finish(Disposition::Rejected(format!("{label}: {detail}")));
    Decoded::Handled
}

/// Dead-letters rejected parts, at most [`deadletter::MAX_PER_MESSAGE`] of them.
struct PartRejects<'a, S> {
    ctx: &'a Context<S>,
    count: usize,
}

impl<S> PartRejects<'_, S> {
    fn reject(
        &mut self,
        msg: &Inbound,
        topic: &str,
        label: &'static str,
        detail: &str,
        part: &[u8],
    ) {
        self.count += 1;
        if self.count <= deadletter::MAX_PER_MESSAGE {
            dead_letter(self.ctx, msg, topic, label, detail, part);
        } else {
            self.ctx.metrics.rejected(label);
        }
    }

    fn finish(self, msg: &Inbound, topic: &str) {
        if self.count > deadletter::MAX_PER_MESSAGE {
            let more = self.count - deadletter::MAX_PER_MESSAGE;
            deadletter::send(
                &self.ctx.outlet,
                &self.ctx.metrics,
                msg.principal.id(),
                &msg.client_id,
                topic,
                "too_many_rejects",
                &format!("{more} more rejected parts, counted but not sent"),
                &[],
                msg.received_ms,
            );
        }
    }
}

fn part_json<T: serde::Serialize>(part: &T) -> Vec<u8> {
    serde_json::to_vec(part).unwrap_or_default()
}

fn agent_batch<S>(
    ctx: &Arc<Context<S>>,
    mut msg: Inbound,
    topic: &str,
    scratch: &mut Scratch,
) -> Decoded {
    let me = msg.principal.id();
    let Some(agent) = ctx.registry.agent_by_id(me) else {
        return reject_whole(ctx, &mut msg, topic, "unknown_agent", "not in the registry");
    };
    let b: AgentBatch = match batch::decode(&msg.payload) {
        Ok(b) => b,
        Err(e) => {
            let label = match e {
                batch::BatchError::TooLarge(_) => "too_large",
                batch::BatchError::UnknownVersion(_) => "unknown_batch_version",
                _ => "malformed_batch",
            };
            return reject_whole(ctx, &mut msg, topic, label, &e.to_string());
        }
    };
    if b.agent != *agent.id {
        // Never acknowledged: a batch that claims to be another agent's is not stored.
        let detail = format!(
            "batch names agent `{}`",
            b.agent.chars().take(64).collect::<String>()
        );
        return reject_whole(ctx, &mut msg, topic, "agent_mismatch", &detail);
    }
    let now = msg.received_ms;
    let origin = Origin {
        agent: agent.id.clone(),
        stream: b.stream,
        seq: b.seq,
    };
    let mut rejects = PartRejects { ctx, count: 0 };
    let mut w = Builder::new(scratch, Some(origin));
    for (di, dr) in b.devices.iter().enumerate() {
        let device = match ctx.registry.device_by_id(&dr.device) {
            Some(d) if d.agent == Some(agent.idx) => d,
            Some(_) => {
                rejects.reject(
                    &msg,
                    topic,
                    "device_not_of_agent",
                    &format!("devices[{di}]: `{}` is not behind this agent", dr.device),
                    &part_json(dr),
                );
                continue;
            }
            None => {
                let id: String = dr.device.chars().take(64).collect();
                rejects.reject(
                    &msg,
                    topic,
                    "unknown_device",
                    &format!("devices[{di}]: no device `{id}`"),
                    &part_json(dr),
                );
                continue;
            }
        };
        for (si, sample) in dr.samples.iter().enumerate() {
            let stamp = ctx.normalizer.stamp(Some(sample.ts_ms), now);
            for (ri, r) in sample.readings.iter().enumerate() {
                let path = || format!("devices[{di}].samples[{si}].readings[{ri}]");
                let Some(q) = Quantity::from_code(r.quantity) else {
                    rejects.reject(
                        &msg,
                        topic,
                        "unknown_quantity",
                        &format!("{}: unknown quantity code {}", path(), r.quantity),
                        &part_json(r),
                    );
                    continue;
                };
                if let Err(label) = check_value(q, r.value) {
                    rejects.reject(
                        &msg,
                        topic,
                        label,
                        &format!("{}: `{}` cannot take {:?}", path(), q.name(), r.value),
                        &part_json(r),
                    );
                    continue;
                }
                w.scratch.sample.push(NormValue {
                    quantity: q,
                    value: r.value,
                    quality: ctx
                        .normalizer
                        .quality(q, &r.value, stamp.quality, r.quality),
                });
            }
            w.push_group(device, stamp.ts_ms, Some(b.seq));
        }
    }
    rejects.finish(&msg, topic);
    // Even a batch whose every part was rejected is recorded and acknowledged: its parts are in
    // the dead letters, and an unacknowledged batch would block the agent's queue forever.
    Decoded::Write(w.finish(&mut msg, Some((agent.idx, b.stream, b.seq))))
}

/// Whether a canonical value has the quantity's type and is a number at all.
fn check_value(q: Quantity, v: Value) -> Result<(), &'static str> {
    match (q.kind(), v) {
        (ValueKind::Number, Value::Number(x)) if !x.is_finite() => Err("not_finite"),
        (ValueKind::Number, Value::Number(_))
        | (ValueKind::Bool, Value::Bool(_))
        | (ValueKind::Enum(_), Value::State(_)) => Ok(()),
        _ => Err("wrong_type"),
    }
}

fn device_telemetry<S>(
    ctx: &Arc<Context<S>>,
    mut msg: Inbound,
    topic: &str,
    scratch: &mut Scratch,
) -> Decoded {
    let Some(device) = ctx.registry.device_by_id(msg.principal.id()) else {
        return reject_whole(
            ctx,
            &mut msg,
            topic,
            "unknown_device",
            "not in the registry",
        );
    };
    let parsed = match telemetry::parse(&msg.payload) {
        Ok(p) => p,
        Err(e) => {
            let label = match e {
                TelemetryError::TooLarge(_) => "too_large",
                TelemetryError::NotJson(_) => "not_json",
                TelemetryError::NotObjectOrArray => "not_object_or_array",
                TelemetryError::EmptyBatch => "empty_batch",
            };
            return reject_whole(ctx, &mut msg, topic, label, &e.to_string());
        }
    };
    let mut rejects = PartRejects { ctx, count: 0 };
    for r in &parsed.rejected {
        rejects.reject(
            &msg,
            topic,
            r.reason.label(),
            &format!("{}: {}", r.path, r.reason),
            r.part.as_bytes(),
        );
    }
    rejects.finish(&msg, topic);
    if parsed.samples.is_empty() {
        if parsed.rejected.is_empty() {
            // Nothing wrong in particular, and nothing to store (e.g. empty `values`).
            return reject_whole(
                ctx,
                &mut msg,
                topic,
                "no_values",
                "the message has no values",
            );
        }
        msg.finish(Disposition::Rejected("no acceptable value".to_string()));
        return Decoded::Handled;
    }
    let now = msg.received_ms;
    let mut w = Builder::new(scratch, None);
    for s in &parsed.samples {
        let stamp = ctx.normalizer.stamp(s.ts_ms, now);
        for (q, v) in &s.values {
            w.scratch.sample.push(NormValue {
                quantity: *q,
                value: *v,
                quality: ctx
                    .normalizer
                    .quality(*q, v, stamp.quality, protocols::Quality::Good),
            });
        }
        w.push_group(device, stamp.ts_ms, s.seq);
    }
    Decoded::Write(w.finish(&mut msg, None))
}

fn agent_health<S>(ctx: &Arc<Context<S>>, mut msg: Inbound, topic: &str) -> Decoded {
    let Some(agent) = ctx.registry.agent_by_id(msg.principal.id()) else {
        return reject_whole(ctx, &mut msg, topic, "unknown_agent", "not in the registry");
    };
    let h: Health = match serde_json::from_slice(&msg.payload) {
        Ok(h) => h,
        Err(e) => return reject_whole(ctx, &mut msg, topic, "bad_health", &e.to_string()),
    };
    match ctx.status.health(agent.idx, &h, msg.received_ms) {
        Ok(foreign) => {
            for id in foreign {
                dead_letter(
                    ctx,
                    &msg,
                    topic,
                    "device_not_of_agent",
                    &format!("health lists `{id}`, which is not behind this agent"),
                    id.as_bytes(),
                );
            }
            msg.finish(Disposition::Accepted);
            Decoded::Handled
        }
        Err(e) => reject_whole(ctx, &mut msg, topic, "agent_mismatch", &e.to_string()),
    }
}

fn command_result<S>(ctx: &Arc<Context<S>>, mut msg: Inbound, topic: &str) -> Decoded {
    match serde_json::from_slice::<CommandResult>(&msg.payload) {
        Ok(r) => {
            ctx.twins
                .command_result(msg.principal.id(), &r, msg.received_ms);
            msg.finish(Disposition::Accepted);
            Decoded::Handled
        }
        Err(e) => reject_whole(ctx, &mut msg, topic, "bad_command_result", &e.to_string()),
    }
}

fn desired<S: series_store::SeriesStore>(
    ctx: &Arc<Context<S>>,
    mut msg: Inbound,
    topic: String,
    device: String,
) -> Decoded {
    let update: DesiredUpdate = match serde_json::from_slice(&msg.payload) {
        Ok(u) => u,
        Err(e) => return reject_whole(ctx, &mut msg, &topic, "bad_desired", &e.to_string()),
    };
    let ctx = ctx.clone();
    // Desired state is written durably (an fsync): not on the decode worker.
    tokio::spawn(async move {
        match ctx
            .twins
            .set_desired(&device, update, msg.received_ms)
            .await
        {
            Ok(_) => msg.finish(Disposition::Accepted),
            Err(e) => {
                reject_whole(&ctx, &mut msg, &topic, e.label(), &e.to_string());
            }
        }
    });
    Decoded::Spawned
}
