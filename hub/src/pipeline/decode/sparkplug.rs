//! Sparkplug B messages of edge nodes (`spBv1.0/{group}/{type}/{node}[/{device}]`): through
//! the node's session ([`crate::sparkplug::Sparkplug`]), then like every reading.
//!
//! - Births and data: each mapped metric (`[[sparkplug_metrics]]`) becomes a canonical value
//!   of the Sparkplug device with the same id behind this edge node, normalized like any
//!   device's (time checked against hub time, quality the worst of time, plausibility and the
//!   metric's `Quality` property), grouped by timestamp. Historical metrics are stored only:
//!   no twin, rules or feeds. Values that do not fit their quantity go to the dead letters one
//!   by one and the rest is kept. Unmapped metrics are counted, not stored.
//! - A device's birth takes it online, its death or its node's death offline ([`Presence`]).
//! - Data the session cannot interpret (before a birth, after a `seq` gap, an unknown alias)
//!   goes to the dead letters (`out_of_session`) while the rebirth the session asked for is on
//!   its way: the rebirth carries every current value again. A message that is not Sparkplug
//!   B, or a birth that cannot be accepted, is `bad_sparkplug`.
//! - Metrics of the edge node itself (NBIRTH, NDATA) have no platform device: a mapped one is
//!   dead-lettered (`unknown_device`) with a hint to publish it from a device.

use std::sync::Arc;

use protocols::id::clip;
use protocols::sparkplug::{IgnoreReason, Outcome, Reading, RebirthReason, Rejected};
use protocols::{Quality, Quantity, Value};

use super::{Builder, Decoded, Decoder, Presence, Reason, Scratch};
use crate::feeds::NormValue;
use crate::pipeline::deadletter::{PartRejects, Source};
use crate::registry::{Agent, Device};
use crate::sparkplug::mapping::{MapError, Mapped, MetricMap};
use mqtt_broker::ingress::{Disposition, Inbound};

/// Topics of this namespace from a Sparkplug edge node are decoded here.
pub const NAMESPACE_PREFIX: &str = "spBv1.0/";

/// One `spBv1.0/...` message from a Sparkplug edge node.
pub fn message(dec: &Decoder, mut msg: Inbound, topic: &str, scratch: &mut Scratch) -> Decoded {
    let Some(agent) = dec.registry.agent_by_id(msg.principal.id()) else {
        return dec.reject(&mut msg, topic, Reason::UnknownAgent, "not in the registry");
    };
    let now = msg.received_ms;
    let outcome = match dec
        .sparkplug
        .handle(&agent.id, topic, &msg.payload, now.max(0) as u64)
    {
        Ok(o) => o,
        Err(e) => return dec.reject(&mut msg, topic, Reason::BadSparkplug, &e.to_string()),
    };
    match outcome {
        Outcome::Online {
            device,
            readings,
            rejected,
            devices_offline,
        } => {
            let mut changes: Vec<_> = devices_offline
                .iter()
                .filter_map(|d| own_device(dec, agent, d))
                .map(|d| (d.idx, false))
                .collect();
            let target = match device.as_deref() {
                Some(d) => match resolve(dec, agent, d) {
                    Ok(dev) => {
                        changes.push((dev.idx, true));
                        Some(dev)
                    }
                    Err((reason, detail)) => {
                        return presence_then_reject(
                            dec, agent, changes, msg, topic, reason, &detail,
                        );
                    }
                },
                None => None,
            };
            let then = values(dec, &mut msg, topic, target, &readings, &rejected, scratch);
            Decoded::Presence(Box::new(Presence {
                agent: agent.idx,
                changes,
                at_ms: now,
                then,
            }))
        }
        Outcome::Readings {
            device,
            readings,
            rejected,
        } => {
            let target = match device.as_deref() {
                Some(d) => match resolve(dec, agent, d) {
                    Ok(dev) => Some(dev),
                    Err((reason, detail)) => return dec.reject(&mut msg, topic, reason, &detail),
                },
                None => None,
            };
            match values(dec, &mut msg, topic, target, &readings, &rejected, scratch) {
                Some(w) => Decoded::Write(w),
                None => Decoded::Handled,
            }
        }
        Outcome::Offline {
            device, devices, ..
        } => {
            let changes = device
                .iter()
                .chain(devices.iter())
                .filter_map(|d| own_device(dec, agent, d))
                .map(|d| (d.idx, false))
                .collect();
            msg.finish(Disposition::Accepted);
            Decoded::Presence(Box::new(Presence {
                agent: agent.idx,
                changes,
                at_ms: now,
                then: None,
            }))
        }
        Outcome::RequestRebirth { reason } => {
            let label = match reason {
                RebirthReason::BadBirth { .. } => Reason::BadSparkplug,
                _ => Reason::OutOfSession,
            };
            let detail = format!("{reason}; a rebirth was requested");
            dec.reject(&mut msg, topic, label, &detail)
        }
        Outcome::Ignored { reason } => match reason {
            IgnoreReason::RebirthPending(r) => {
                let detail = format!("{r}; waiting for the requested rebirth");
                dec.reject(&mut msg, topic, Reason::OutOfSession, &detail)
            }
            IgnoreReason::TooManyNodes => dec.reject(
                &mut msg,
                topic,
                Reason::OutOfSession,
                "the hub tracks no more edge nodes",
            ),
            // A late will of an older session, a death of what is already offline: nothing
            // to change, nothing wrong.
            other => {
                tracing::debug!(node = %agent.id, topic, "Sparkplug message ignored: {other}");
                msg.finish(Disposition::Accepted);
                Decoded::Handled
            }
        },
    }
}

/// A registered device of this agent with the Sparkplug device id, or why not.
fn resolve<'a>(dec: &'a Decoder, agent: &Agent, id: &str) -> Result<&'a Device, (Reason, String)> {
    match dec.registry.device_by_id(id) {
        Some(d) if d.agent == Some(agent.idx) => Ok(d),
        Some(_) => Err((
            Reason::DeviceNotOfAgent,
            format!("device `{}` is not behind this edge node", clip(id)),
        )),
        None => Err((
            Reason::UnknownDevice,
            format!("no device `{}` in the registry", clip(id)),
        )),
    }
}

fn own_device<'a>(dec: &'a Decoder, agent: &Agent, id: &str) -> Option<&'a Device> {
    resolve(dec, agent, id).ok()
}

/// A birth of a device the hub does not know: the other devices' changes still apply.
fn presence_then_reject(
    dec: &Decoder,
    agent: &Agent,
    changes: Vec<(crate::registry::DeviceIdx, bool)>,
    mut msg: Inbound,
    topic: &str,
    reason: Reason,
    detail: &str,
) -> Decoded {
    dec.dead_letters
        .reject(&mut msg, topic, reason, detail, usize::MAX);
    if changes.is_empty() {
        return Decoded::Handled;
    }
    Decoded::Presence(Box::new(Presence {
        agent: agent.idx,
        changes,
        at_ms: msg.received_ms,
        then: None,
    }))
}

/// The readings of a birth or data message as a write of `device` (`None`: the edge node's
/// own metrics); completes `msg` itself when there is nothing to store.
fn values(
    dec: &Decoder,
    msg: &mut Inbound,
    topic: &str,
    device: Option<&Device>,
    readings: &[Reading],
    rejected: &[Rejected],
    scratch: &mut Scratch,
) -> Option<Box<super::Prepared>> {
    let map = dec.sparkplug.map();
    let now = msg.received_ms;
    let mut rejects = dec.dead_letters.parts(Source::of(msg, topic));
    for r in rejected {
        let name = r.name.as_deref().unwrap_or("");
        rejects.reject(
            Reason::WrongType,
            &format!("metric `{}` (alias {:?}): {}", clip(name), r.alias, r.error),
            name.as_bytes(),
        );
    }
    // (historical, timestamp, quantity, value, reported quality), grouped below by time.
    let mut accepted: Vec<(bool, i64, Quantity, Value, Quality)> = Vec::new();
    let mut unmapped = 0;
    for r in readings {
        if MetricMap::is_control(&r.name) {
            continue;
        }
        match map.value(&r.name, &r.value) {
            Ok(None) => unmapped += 1,
            Ok(Some(Mapped::Null)) => {}
            Ok(Some(Mapped::Value(q, v))) => {
                let stamp = dec.normalizer.stamp(r.timestamp_ms.map(|t| t as i64), now);
                let reported = r.quality.unwrap_or(Quality::Good);
                let quality = dec.normalizer.quality(q, &v, stamp.quality, reported);
                accepted.push((r.historical, stamp.ts_ms, q, v, quality));
            }
            Err(e) => reject_value(&mut rejects, &e, &r.name),
        }
    }
    dec.sparkplug.metrics().unmapped(unmapped);
    let Some(device) = device else {
        if !accepted.is_empty() {
            let names: Vec<_> = readings
                .iter()
                .filter(|r| map.get(&r.name).is_some())
                .map(|r| clip(&r.name))
                .collect();
            rejects.reject(
                Reason::UnknownDevice,
                &format!(
                    "metrics {names:?} of the edge node itself have no platform device; \
                     publish them from a Sparkplug device registered behind the node"
                ),
                names.join(",").as_bytes(),
            );
        }
        rejects.finish();
        msg.finish(Disposition::Accepted);
        return None;
    };
    rejects.finish();
    if accepted.is_empty() {
        msg.finish(Disposition::Accepted);
        return None;
    }
    // Live values first, each run of one timestamp a group (twin, rules, feed).
    accepted.sort_by_key(|a| (a.0, a.1));
    let mut w = Builder::new(scratch, None);
    let mut i = 0;
    while i < accepted.len() {
        let (historical, ts) = (accepted[i].0, accepted[i].1);
        while i < accepted.len() && (accepted[i].0, accepted[i].1) == (historical, ts) {
            let (_, _, quantity, value, quality) = accepted[i];
            w.scratch.sample.push(NormValue {
                quantity,
                value,
                quality,
            });
            i += 1;
        }
        if historical {
            w.push_history(device, ts);
        } else {
            w.push_group(device, ts, None);
        }
    }
    Some(w.finish(msg, None))
}

fn reject_value(rejects: &mut PartRejects<'_>, e: &MapError, name: &Arc<str>) {
    let reason = match e {
        MapError::WrongType { .. } => Reason::WrongType,
        MapError::NotFinite { .. } => Reason::NotFinite,
    };
    rejects.reject(reason, &e.to_string(), name.as_bytes());
}
