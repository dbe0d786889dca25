//! Decode, validate and normalize: the first stage, run by a few parallel workers.
//!
//! [`Decoder`] holds only what it reads (the registry, the normalizer) and where it sends what
//! it cannot accept (the dead letters, the counters): it changes no state of the hub, except
//! the Sparkplug B sessions, which are the framing of that protocol (births define what later
//! messages mean). Each inbound message becomes one [`Decoded`]:
//! - a [`Prepared`] write for the commit stage (readings, camera events and snapshots): every
//!   part that cannot be accepted goes to the dead letters with its reason, the rest is kept;
//! - a parsed [`Control`] message (health, desired state, command result) for the control
//!   stage, which applies it to the status board and the twins;
//! - devices a Sparkplug birth or death took online or offline ([`Presence`]), perhaps with a
//!   write;
//! - or nothing more to do (rejected, or a status message), `done` already completed.
//!
//! Camera events and snapshots are decoded in [`camera`], Sparkplug B in [`sparkplug`].

pub mod camera;
pub mod sparkplug;
#[cfg(test)]
mod tests;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use protocols::Quantity;
use protocols::access::Principal;
use protocols::batch::{self, AgentBatch};
use protocols::id::clip;
use protocols::messages::{CommandResult, DesiredUpdate, Health};
use protocols::telemetry;
use protocols::topic::Topic;
use protocols::{Value, ValueKind};

use super::Prepared;
use super::deadletter::{DeadLetters, Source};
use crate::feeds::{NormValue, canonical_order, write_feed};
use crate::metrics::{Metrics, TopicKind};
use crate::normalize::Normalizer;
use crate::registry::{AgentIdx, Device, DeviceIdx, Registry};
use crate::sparkplug::Sparkplug;
use mqtt_broker::ingress::{Disposition, Inbound};
use protocols::deadletter::DeadLetterReason as Reason;
use series_store::{Origin, Point, SeriesId, WriteBatch};

/// One device and timestamp group of a prepared write.
#[derive(Clone, Debug)]
pub struct Group {
    /// The device whose twin and feed the group updates.
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
        self.push(device, ts_ms, seq, true);
    }

    /// Adds values of a device to the store's write only: history, which neither updates the
    /// twin nor reaches rules and feeds (Sparkplug `is_historical`).
    fn push_history(&mut self, device: &Device, ts_ms: i64) {
        self.push(device, ts_ms, None, false);
    }

    fn push(&mut self, device: &Device, ts_ms: i64, seq: Option<u64>, live: bool) {
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
        if !live {
            sample.clear();
            self.scratch.sample = sample;
            return;
        }
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
    /// A write for the commit stage.
    Write(Box<Prepared>),
    /// A control message for the control stage, which completes its `done` (boxed: control
    /// messages are rare, and a large variant would make every write's result large).
    Control(Box<Control>),
    /// Devices a Sparkplug B birth or death took online or offline, for the status board,
    /// then perhaps a write (a birth's values).
    Presence(Box<Presence>),
    /// Nothing more to do (rejected, or nothing to store); `done` already completed.
    Handled,
}

/// Devices of one agent that came online or went offline, and what to store after.
pub struct Presence {
    /// The agent (a Sparkplug edge node).
    pub agent: AgentIdx,
    /// Each device and whether it is online now.
    pub changes: Vec<(DeviceIdx, bool)>,
    /// When (hub time).
    pub at_ms: i64,
    /// The write that follows (a birth's values), if any.
    pub then: Option<Box<Prepared>>,
}

/// A parsed control message: it changes state (status board, twins) and is never stored.
/// `msg` is the message it came in (topic included), whose `done` the control stage
/// completes.
#[derive(Debug)]
pub enum Control {
    /// `v1/agents/{id}/health` from an agent of the registry.
    Health {
        /// The sending agent.
        agent: AgentIdx,
        /// The parsed health (its `agent` is not yet compared with the sender).
        health: Health,
        /// The message it came in, topic included (its `done`, and dead letters).
        msg: Inbound,
    },
    /// `v1/twin/{id}/desired` from an app.
    Desired {
        /// The device id of the topic (not yet looked up).
        device: String,
        /// The parsed update.
        update: DesiredUpdate,
        /// The message it came in, topic included (its `done`, and dead letters).
        msg: Inbound,
    },
    /// `.../cmd/result` from a device or an agent.
    CommandResult {
        /// The parsed result.
        result: CommandResult,
        /// The message it came in, topic included (its `done`, and dead letters).
        msg: Inbound,
    },
}

/// The decode stage: decodes, validates and normalizes messages. Shared by the workers, each
/// with its own [`Scratch`].
pub struct Decoder {
    registry: Arc<Registry>,
    normalizer: Normalizer,
    dead_letters: DeadLetters,
    metrics: Arc<Metrics>,
    sparkplug: Arc<Sparkplug>,
}

impl Decoder {
    /// A decoder over the registry's devices and agents; Sparkplug B messages go through the
    /// edge node sessions of `sparkplug`.
    pub fn new(
        registry: Arc<Registry>,
        normalizer: Normalizer,
        dead_letters: DeadLetters,
        metrics: Arc<Metrics>,
        sparkplug: Arc<Sparkplug>,
    ) -> Decoder {
        Decoder {
            registry,
            normalizer,
            dead_letters,
            metrics,
            sparkplug,
        }
    }

    /// The counters the decode workers update.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Decodes, validates and normalizes one message.
    pub fn decode(&self, mut msg: Inbound, scratch: &mut Scratch) -> Decoded {
        let topic_text = std::mem::take(&mut msg.topic);
        if let Principal::SparkplugNode(_) = &*msg.principal
            && topic_text.starts_with(sparkplug::NAMESPACE_PREFIX)
        {
            self.metrics.message_in(TopicKind::Sparkplug);
            return sparkplug::message(self, msg, &topic_text, scratch);
        }
        let topic = match Topic::parse(&topic_text) {
            Ok(t) => t,
            Err(e) => {
                self.metrics.message_in(TopicKind::Other);
                return self.reject(
                    &mut msg,
                    &topic_text,
                    Reason::UnexpectedTopic,
                    &e.to_string(),
                );
            }
        };
        let principal = msg.principal.clone();
        match (topic, &*principal) {
            (Topic::AgentBatch(a), Principal::Agent(me)) if a == me => {
                self.metrics.message_in(TopicKind::Batch);
                self.agent_batch(msg, &topic_text, scratch)
            }
            (Topic::DeviceTelemetry(d), Principal::Device(me)) if d == me => {
                self.metrics.message_in(TopicKind::Telemetry);
                self.device_telemetry(msg, &topic_text, scratch)
            }
            (Topic::AgentHealth(a), Principal::Agent(me)) if a == me => {
                self.metrics.message_in(TopicKind::Health);
                self.agent_health(msg, topic_text)
            }
            (Topic::TwinDesired(d), Principal::App { .. }) => {
                self.metrics.message_in(TopicKind::Desired);
                let device = d.to_string();
                self.desired(msg, topic_text, device)
            }
            (Topic::DeviceCmdResult(d), Principal::Device(me)) if d == me => {
                self.metrics.message_in(TopicKind::CmdResult);
                self.command_result(msg, topic_text)
            }
            (Topic::AgentCmdResult(a), Principal::Agent(me)) if a == me => {
                self.metrics.message_in(TopicKind::CmdResult);
                self.command_result(msg, topic_text)
            }
            (Topic::AgentEvents(a), Principal::Agent(me)) if a == me => {
                self.metrics.message_in(TopicKind::Events);
                camera::event(self, msg, &topic_text)
            }
            (Topic::AgentSnapshot { agent, event }, Principal::Agent(me)) if agent == me => {
                self.metrics.message_in(TopicKind::Snapshot);
                camera::snapshot(self, msg, &topic_text, event)
            }
            (Topic::Status(id), _) if id == principal.id() => {
                // Online state follows connections (and wills through them); nothing to do.
                self.metrics.message_in(TopicKind::Status);
                msg.finish(Disposition::Accepted);
                Decoded::Handled
            }
            _ => {
                self.metrics.message_in(TopicKind::Other);
                self.reject(
                    &mut msg,
                    &topic_text,
                    Reason::UnexpectedTopic,
                    "the hub does not take this topic from this client",
                )
            }
        }
    }

    /// Rejects the whole message, quoting all of it in the dead letter.
    fn reject(&self, msg: &mut Inbound, topic: &str, reason: Reason, detail: &str) -> Decoded {
        self.dead_letters
            .reject(msg, topic, reason, detail, usize::MAX);
        Decoded::Handled
    }

    fn agent_batch(&self, mut msg: Inbound, topic: &str, scratch: &mut Scratch) -> Decoded {
        let Some(agent) = self.registry.agent_by_id(msg.principal.id()) else {
            return self.reject(&mut msg, topic, Reason::UnknownAgent, "not in the registry");
        };
        let b: AgentBatch = match batch::decode(&msg.payload) {
            Ok(b) => b,
            Err(e) => return self.reject(&mut msg, topic, Reason::from(&e), &e.to_string()),
        };
        if b.agent != *agent.id {
            // Never acknowledged: a batch that claims to be another agent's is not stored.
            let detail = format!("batch names agent `{}`", clip(&b.agent));
            return self.reject(&mut msg, topic, Reason::AgentMismatch, &detail);
        }
        let now = msg.received_ms;
        let origin = Origin {
            agent: agent.id.clone(),
            stream: b.stream,
            seq: b.seq,
        };
        let mut rejects = self.dead_letters.parts(Source::of(&msg, topic));
        let mut w = Builder::new(scratch, Some(origin));
        for (di, dr) in b.devices.iter().enumerate() {
            let device = match self.registry.device_by_id(&dr.device) {
                Some(d) if d.agent == Some(agent.idx) => d,
                Some(_) => {
                    rejects.reject(
                        Reason::DeviceNotOfAgent,
                        &format!("devices[{di}]: `{}` is not behind this agent", dr.device),
                        &part_json(dr),
                    );
                    continue;
                }
                None => {
                    rejects.reject(
                        Reason::UnknownDevice,
                        &format!("devices[{di}]: no device `{}`", clip(&dr.device)),
                        &part_json(dr),
                    );
                    continue;
                }
            };
            for (si, sample) in dr.samples.iter().enumerate() {
                let stamp = self.normalizer.stamp(Some(sample.ts_ms), now);
                for (ri, r) in sample.readings.iter().enumerate() {
                    let path = || format!("devices[{di}].samples[{si}].readings[{ri}]");
                    let Some(q) = Quantity::from_code(r.quantity) else {
                        rejects.reject(
                            Reason::UnknownQuantity,
                            &format!("{}: unknown quantity code {}", path(), r.quantity),
                            &part_json(r),
                        );
                        continue;
                    };
                    if let Err(reason) = check_value(q, r.value) {
                        rejects.reject(
                            reason,
                            &format!("{}: `{}` cannot take {:?}", path(), q.name(), r.value),
                            &part_json(r),
                        );
                        continue;
                    }
                    w.scratch.sample.push(NormValue {
                        quantity: q,
                        value: r.value,
                        quality: self
                            .normalizer
                            .quality(q, &r.value, stamp.quality, r.quality),
                    });
                }
                w.push_group(device, stamp.ts_ms, Some(b.seq));
            }
        }
        rejects.finish();
        // Even a batch whose every part was rejected is recorded and acknowledged: its parts
        // are in the dead letters, and an unacknowledged batch would block the agent's queue
        // forever.
        Decoded::Write(w.finish(&mut msg, Some((agent.idx, b.stream, b.seq))))
    }

    fn device_telemetry(&self, mut msg: Inbound, topic: &str, scratch: &mut Scratch) -> Decoded {
        let Some(device) = self.registry.device_by_id(msg.principal.id()) else {
            return self.reject(
                &mut msg,
                topic,
                Reason::UnknownDevice,
                "not in the registry",
            );
        };
        let parsed = match telemetry::parse(&msg.payload) {
            Ok(p) => p,
            Err(e) => return self.reject(&mut msg, topic, Reason::from(&e), &e.to_string()),
        };
        let mut rejects = self.dead_letters.parts(Source::of(&msg, topic));
        for r in &parsed.rejected {
            rejects.reject(
                Reason::from(&r.reason),
                &format!("{}: {}", r.path, r.reason),
                r.part.as_bytes(),
            );
        }
        rejects.finish();
        if parsed.samples.is_empty() {
            if parsed.rejected.is_empty() {
                // Nothing wrong in particular, and nothing to store (e.g. empty `values`).
                return self.reject(
                    &mut msg,
                    topic,
                    Reason::NoValues,
                    "the message has no values",
                );
            }
            msg.finish(Disposition::Rejected("no acceptable value".to_string()));
            return Decoded::Handled;
        }
        let now = msg.received_ms;
        let mut w = Builder::new(scratch, None);
        for s in &parsed.samples {
            let stamp = self.normalizer.stamp(s.ts_ms, now);
            for (q, v, reported) in &s.values {
                w.scratch.sample.push(NormValue {
                    quantity: *q,
                    value: *v,
                    quality: self.normalizer.quality(*q, v, stamp.quality, *reported),
                });
            }
            w.push_group(device, stamp.ts_ms, s.seq);
        }
        Decoded::Write(w.finish(&mut msg, None))
    }

    fn agent_health(&self, mut msg: Inbound, topic: String) -> Decoded {
        let Some(agent) = self.registry.agent_by_id(msg.principal.id()) else {
            return self.reject(
                &mut msg,
                &topic,
                Reason::UnknownAgent,
                "not in the registry",
            );
        };
        match serde_json::from_slice(&msg.payload) {
            Ok(health) => {
                msg.topic = topic;
                Decoded::Control(Box::new(Control::Health {
                    agent: agent.idx,
                    health,
                    msg,
                }))
            }
            Err(e) => self.reject(&mut msg, &topic, Reason::BadHealth, &e.to_string()),
        }
    }

    fn command_result(&self, mut msg: Inbound, topic: String) -> Decoded {
        match serde_json::from_slice(&msg.payload) {
            Ok(result) => {
                msg.topic = topic;
                Decoded::Control(Box::new(Control::CommandResult { result, msg }))
            }
            Err(e) => self.reject(&mut msg, &topic, Reason::BadCommandResult, &e.to_string()),
        }
    }

    fn desired(&self, mut msg: Inbound, topic: String, device: String) -> Decoded {
        match serde_json::from_slice(&msg.payload) {
            Ok(update) => {
                msg.topic = topic;
                Decoded::Control(Box::new(Control::Desired {
                    device,
                    update,
                    msg,
                }))
            }
            Err(e) => self.reject(&mut msg, &topic, Reason::BadDesired, &e.to_string()),
        }
    }
}

/// A batch part as JSON, the bytes of its dead letter.
fn part_json<T: serde::Serialize>(part: &T) -> Vec<u8> {
    serde_json::to_vec(part).unwrap_or_default()
}

/// Whether a canonical value has the quantity's type and is a number at all.
fn check_value(q: Quantity, v: Value) -> Result<(), Reason> {
    match (q.kind(), v) {
        (ValueKind::Number, Value::Number(x)) if !x.is_finite() => Err(Reason::NotFinite),
        (ValueKind::Number, Value::Number(_))
        | (ValueKind::Bool, Value::Bool(_))
        | (ValueKind::Enum(_), Value::State(_)) => Ok(()),
        _ => Err(Reason::WrongType),
    }
}
