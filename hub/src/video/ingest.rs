//! The decode stage's part for video: events and snapshots checked and turned into
//! [`Prepared`] work, or refused to the dead letters.
//!
//! Refusals that the agent could never fix are still acknowledged, as rejected batch parts
//! are: an event with a seq is recorded as an empty write with its origin (so the agent's
//! queue moves on and the origin index stays contiguous), a snapshot is acknowledged by its
//! event id. Only what cannot even be parsed (no seq to acknowledge) is refused outright.

use std::sync::Arc;

use bytes::Bytes;
use protocols::messages::CameraEvent;

use super::events::{self, camera_of_id, valid_id};
use super::snapshots::jpeg_size;
use super::{Video, Work};
use crate::pipeline::decode::Decoded;
use crate::pipeline::{Context, Prepared, deadletter};
use crate::registry::{Agent, AgentIdx};
use mqtt_broker::ingress::{Disposition, Inbound};
use series_store::{Origin, WriteBatch};

/// Largest event message.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Most bytes of a refused message quoted in its dead letter (a refused snapshot can be MiBs).
const QUOTE_MAX: usize = 64 * 1024;

fn dead_letter<S>(ctx: &Context<S>, msg: &Inbound, topic: &str, label: &'static str, detail: &str) {
    deadletter::send(
        &ctx.outlet,
        &ctx.metrics,
        msg.principal.id(),
        &msg.client_id,
        topic,
        label,
        detail,
        &msg.payload[..msg.payload.len().min(QUOTE_MAX)],
        msg.received_ms,
    );
}

fn reject<S>(
    ctx: &Context<S>,
    mut msg: Inbound,
    topic: &str,
    label: &'static str,
    detail: &str,
) -> Decoded {
    dead_letter(ctx, &msg, topic, label, detail);
    msg.finish(Disposition::Rejected(format!("{label}: {detail}")));
    Decoded::Handled
}

fn prepared(
    msg: &mut Inbound,
    batch: WriteBatch,
    ack: Option<(AgentIdx, u64, u64)>,
    video: Option<Work>,
) -> Box<Prepared> {
    Box::new(Prepared {
        done: msg.done.take(),
        batch,
        ack,
        readings: 0,
        groups: Vec::new(),
        values: Vec::new(),
        feeds: Bytes::new(),
        video: video.map(Box::new),
        arrived: msg.arrived,
    })
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// `v1/agents/{id}/events` from that agent.
pub fn event<S>(
    ctx: &Arc<Context<S>>,
    video: &Arc<Video>,
    mut msg: Inbound,
    topic: &str,
) -> Decoded {
    let Some(agent) = ctx.registry.agent_by_id(msg.principal.id()) else {
        return reject(ctx, msg, topic, "unknown_agent", "not in the registry");
    };
    if msg.payload.len() > MAX_EVENT_BYTES {
        let detail = format!(
            "event of {} bytes, at most {MAX_EVENT_BYTES}",
            msg.payload.len()
        );
        return reject(ctx, msg, topic, "too_large", &detail);
    }
    let mut ev: CameraEvent = match serde_json::from_slice(&msg.payload) {
        Ok(e) => e,
        Err(e) => return reject(ctx, msg, topic, "bad_event", &e.to_string()),
    };
    let origin = match (ev.stream, ev.seq) {
        (Some(stream), Some(seq)) => Some((stream, seq)),
        _ => None,
    };
    // Refused, but acknowledged when it has a seq: the agent cannot make it acceptable.
    let refuse = |ctx: &Arc<Context<S>>, mut msg: Inbound, label: &'static str, detail: &str| {
        dead_letter(ctx, &msg, topic, label, detail);
        match origin {
            Some((stream, seq)) => {
                let batch = WriteBatch {
                    origin: Some(Origin {
                        agent: agent.id.clone(),
                        stream,
                        seq,
                    }),
                    series: Vec::new(),
                };
                Decoded::Write(prepared(
                    &mut msg,
                    batch,
                    Some((agent.idx, stream, seq)),
                    None,
                ))
            }
            None => {
                msg.finish(Disposition::Rejected(format!("{label}: {detail}")));
                Decoded::Handled
            }
        }
    };
    let device = match ctx.registry.device_by_id(&ev.camera) {
        Some(d) if d.agent != Some(agent.idx) => {
            let detail = format!("camera `{}` is not behind this agent", clip(&ev.camera));
            return refuse(ctx, msg, "device_not_of_agent", &detail);
        }
        Some(d) if !super::catalog::is_camera(d) => {
            let detail = format!("`{}` is a {}, not a camera", d.id, d.kind);
            return refuse(ctx, msg, "not_a_camera", &detail);
        }
        Some(d) => d,
        None => {
            let detail = format!("no device `{}`", clip(&ev.camera));
            return refuse(ctx, msg, "unknown_device", &detail);
        }
    };
    let id = match events::check(&mut ev) {
        Ok(id) => id,
        Err(e) => return refuse(ctx, msg, "bad_event", &e.to_string()),
    };
    // A camera clock far off is replaced by hub time, as for readings.
    ev.ts = ctx.normalizer.stamp(Some(ev.ts), msg.received_ms).ts_ms;
    let batch = WriteBatch {
        origin: origin.map(|(stream, seq)| Origin {
            agent: agent.id.clone(),
            stream,
            seq,
        }),
        series: Vec::new(),
    };
    let ack = origin.map(|(stream, seq)| (agent.idx, stream, seq));
    let work = Work::Event {
        video: video.clone(),
        agent: agent.idx,
        device: device.idx,
        id,
        event: ev,
        stored: None,
    };
    Decoded::Write(prepared(&mut msg, batch, ack, Some(work)))
}

/// `v1/agents/{id}/snapshots/{event}` from that agent.
pub fn snapshot<S>(
    ctx: &Arc<Context<S>>,
    video: &Arc<Video>,
    mut msg: Inbound,
    topic: &str,
    event: &str,
) -> Decoded {
    let Some(agent): Option<&Agent> = ctx.registry.agent_by_id(msg.principal.id()) else {
        return reject(ctx, msg, topic, "unknown_agent", "not in the registry");
    };
    if !valid_id(event) {
        return reject(
            ctx,
            msg,
            topic,
            "bad_event_id",
            "an event id is 1..128 characters of [A-Za-z0-9_.-], not starting with `.`",
        );
    }
    let refuse = |ctx: &Arc<Context<S>>, mut msg: Inbound, label: &'static str, detail: &str| {
        dead_letter(ctx, &msg, topic, label, detail);
        let work = Work::Refused {
            agent: agent.idx,
            id: event.to_string(),
        };
        Decoded::Write(prepared(&mut msg, WriteBatch::default(), None, Some(work)))
    };
    // Our agents name events `{camera}.{ms}.{n}`: a snapshot naming another agent's camera is
    // refused at once (a snapshot is only ever joined to an event of its own agent anyway).
    if let Some(camera) = camera_of_id(event)
        && let Some(d) = ctx.registry.device_by_id(camera)
        && d.agent != Some(agent.idx)
    {
        let detail = format!("camera `{}` is not behind this agent", d.id);
        return refuse(ctx, msg, "device_not_of_agent", &detail);
    }
    let size = match jpeg_size(&msg.payload) {
        Ok(s) => s,
        Err(e) => return refuse(ctx, msg, "bad_snapshot", &e.to_string()),
    };
    let work = Work::Snapshot {
        video: video.clone(),
        agent: agent.idx,
        id: event.to_string(),
        jpeg: msg.payload.clone(),
        size,
        stored: None,
    };
    Decoded::Write(prepared(&mut msg, WriteBatch::default(), None, Some(work)))
}
