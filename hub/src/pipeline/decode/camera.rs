//! Camera events and snapshots from agents: checked and turned into [`Prepared`] video work
//! for the commit stage, or refused to the dead letters.
//!
//! Refusals that the agent could never fix are still acknowledged, as rejected batch parts
//! are: an event with a seq is recorded as an empty write with its origin (so the agent's
//! queue moves on and the origin index stays contiguous), a snapshot is acknowledged by its
//! event id. Only what cannot even be parsed (no seq to acknowledge) is refused outright.

use bytes::Bytes;
use protocols::id::clip;
use protocols::messages::CameraEvent;

use super::{Decoded, Decoder, Reason};
use crate::pipeline::Prepared;
use crate::pipeline::deadletter::Source;
use crate::registry::AgentIdx;
use crate::video::Work;
use crate::video::catalog::is_camera;
use crate::video::events::{self, camera_of_id, valid_id};
use crate::video::snapshots::jpeg_size;
use mqtt_broker::ingress::{Disposition, Inbound};
use series_store::{Origin, WriteBatch};

/// Largest event message.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Most bytes of a refused message quoted in its dead letter (a refused snapshot can be MiBs).
const QUOTE_MAX: usize = 64 * 1024;

impl Decoder {
    /// Dead-letters the message (quoting at most [`QUOTE_MAX`] bytes) without completing it.
    fn camera_dead_letter(&self, msg: &Inbound, topic: &str, reason: Reason, detail: &str) {
        let part = &msg.payload[..msg.payload.len().min(QUOTE_MAX)];
        self.dead_letters
            .send(&Source::of(msg, topic), reason, detail, part);
    }

    /// Rejects the message outright: dead letter, then `Rejected`.
    fn camera_reject(
        &self,
        mut msg: Inbound,
        topic: &str,
        reason: Reason,
        detail: &str,
    ) -> Decoded {
        self.dead_letters
            .reject(&mut msg, topic, reason, detail, QUOTE_MAX);
        Decoded::Handled
    }
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

/// `v1/agents/{id}/events` from that agent.
pub fn event(dec: &Decoder, mut msg: Inbound, topic: &str) -> Decoded {
    let Some(agent) = dec.registry.agent_by_id(msg.principal.id()) else {
        return dec.camera_reject(msg, topic, Reason::UnknownAgent, "not in the registry");
    };
    if msg.payload.len() > MAX_EVENT_BYTES {
        let detail = format!(
            "event of {} bytes, at most {MAX_EVENT_BYTES}",
            msg.payload.len()
        );
        return dec.camera_reject(msg, topic, Reason::TooLarge, &detail);
    }
    let mut ev: CameraEvent = match serde_json::from_slice(&msg.payload) {
        Ok(e) => e,
        Err(e) => return dec.camera_reject(msg, topic, Reason::BadEvent, &e.to_string()),
    };
    let origin = match (ev.stream, ev.seq) {
        (Some(stream), Some(seq)) => Some((stream, seq)),
        _ => None,
    };
    // Refused, but acknowledged when it has a seq: the agent cannot make it acceptable.
    let refuse = |mut msg: Inbound, reason: Reason, detail: &str| {
        dec.camera_dead_letter(&msg, topic, reason, detail);
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
                msg.finish(Disposition::Rejected(format!("{reason}: {detail}")));
                Decoded::Handled
            }
        }
    };
    let device = match dec.registry.device_by_id(&ev.camera) {
        Some(d) if d.agent != Some(agent.idx) => {
            let detail = format!("camera `{}` is not behind this agent", clip(&ev.camera));
            return refuse(msg, Reason::DeviceNotOfAgent, &detail);
        }
        Some(d) if !is_camera(d) => {
            let detail = format!("`{}` is a {}, not a camera", d.id, d.kind);
            return refuse(msg, Reason::NotACamera, &detail);
        }
        Some(d) => d,
        None => {
            let detail = format!("no device `{}`", clip(&ev.camera));
            return refuse(msg, Reason::UnknownDevice, &detail);
        }
    };
    let id = match events::check(&mut ev) {
        Ok(id) => id,
        Err(e) => return refuse(msg, Reason::BadEvent, &e.to_string()),
    };
    // A camera clock far off is replaced by hub time, as for readings.
    ev.ts = dec.normalizer.stamp(Some(ev.ts), msg.received_ms).ts_ms;
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
        agent: agent.idx,
        device: device.idx,
        id,
        event: ev,
        stored: None,
    };
    Decoded::Write(prepared(&mut msg, batch, ack, Some(work)))
}

/// `v1/agents/{id}/snapshots/{event}` from that agent.
pub fn snapshot(dec: &Decoder, mut msg: Inbound, topic: &str, event: &str) -> Decoded {
    let Some(agent) = dec.registry.agent_by_id(msg.principal.id()) else {
        return dec.camera_reject(msg, topic, Reason::UnknownAgent, "not in the registry");
    };
    if !valid_id(event) {
        return dec.camera_reject(
            msg,
            topic,
            Reason::BadEventId,
            "an event id is 1..128 characters of [A-Za-z0-9_.-], not starting with `.`",
        );
    }
    // Refused, and acknowledged by its event id so the agent stops sending it.
    let refuse = |mut msg: Inbound, reason: Reason, detail: &str| {
        dec.camera_dead_letter(&msg, topic, reason, detail);
        let work = Work::Refused {
            agent: agent.idx,
            id: event.to_string(),
        };
        Decoded::Write(prepared(&mut msg, WriteBatch::default(), None, Some(work)))
    };
    // Our agents name events `{camera}.{ms}.{n}`: a snapshot naming another agent's camera is
    // refused at once (a snapshot is only ever joined to an event of its own agent anyway).
    if let Some(camera) = camera_of_id(event)
        && let Some(d) = dec.registry.device_by_id(camera)
        && d.agent != Some(agent.idx)
    {
        let detail = format!("camera `{}` is not behind this agent", d.id);
        return refuse(msg, Reason::DeviceNotOfAgent, &detail);
    }
    let size = match jpeg_size(&msg.payload) {
        Ok(s) => s,
        Err(e) => return refuse(msg, Reason::BadSnapshot, &e.to_string()),
    };
    let work = Work::Snapshot {
        agent: agent.idx,
        id: event.to_string(),
        jpeg: msg.payload.clone(),
        size,
        stored: None,
    };
    Decoded::Write(prepared(&mut msg, WriteBatch::default(), None, Some(work)))
}
