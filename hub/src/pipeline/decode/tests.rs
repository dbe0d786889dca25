//! The decode stage alone: a registry from a small config, dead letters into a Vec.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use protocols::access::Principal;
use protocols::batch::{self, AgentBatch, DeviceReadings, Reading, Sample};
use protocols::messages::{CameraEvent, DeadLetter, DeviceHealth, EventPhase, Health};
use protocols::{Quality, Quantity, Value};
use tokio::sync::oneshot;

use super::{Control, Decoded, Decoder, Scratch};
use crate::config::HubConfig;
use crate::metrics::Metrics;
use crate::normalize::Normalizer;
use crate::outbound::Outlet;
use crate::pipeline::deadletter::{DeadLetters, MAX_PER_MESSAGE};
use crate::registry::Registry;
use crate::sparkplug::Sparkplug;
use crate::video::Work;
use mqtt_broker::ingress::{Disposition, Inbound, Outbound, Publisher};
use protocols::deadletter::DeadLetterReason as Reason;

const CONFIG: &str = r#"
[[devices]]
id = "WL-1"
kind = "water_level"
secret = "wl-secret-1"

[[devices]]
id = "SL-1"
kind = "streetlight"
agent = "AG-1"

[[devices]]
id = "SL-2"
kind = "streetlight"
agent = "AG-2"

[[devices]]
id = "CAM-1"
kind = "camera"
agent = "AG-1"
gb_id = "33011000001320000001"

[[agents]]
id = "AG-1"
secret = "ag-secret-1"

[[agents]]
id = "AG-2"
secret = "ag-secret-2"

[[apps]]
id = "ops"
secret = "ops-secret-1"
grants = ["twin/#"]

[[agents]]
id = "PS-EN01"
secret = "ps-secret-1"
protocol = "sparkplug"

[[devices]]
id = "PS-P01"
kind = "pump"
agent = "PS-EN01"

[[sparkplug_metrics]]
name = "Pump/Speed"
quantity = "pump_speed"

[[sparkplug_metrics]]
name = "Pump/Flow"
quantity = "water_flow"
unit = "m3/h"

[[sparkplug_metrics]]
name = "Pump/Running"
quantity = "pump_running"

[[sparkplug_metrics]]
name = "Station/Level"
quantity = "water_level"
"#;

/// Hub time of every test message: device times within the skew are kept.
const NOW: i64 = 1_780_000_000_000;

/// Everything published, in order.
#[derive(Default)]
struct Sent(Mutex<Vec<Outbound>>);

impl Publisher for Sent {
    fn publish(&self, msg: Outbound) {
        self.0.lock().push(msg);
    }
}

struct Fixture {
    decoder: Decoder,
    sent: Arc<Sent>,
    metrics: Arc<Metrics>,
    scratch: Scratch,
}

impl Fixture {
    fn new() -> Fixture {
        let config = HubConfig::from_toml(CONFIG).expect("test config");
        let registry = Arc::new(Registry::from_config(&config));
        let sent = Arc::new(Sent::default());
        let metrics = Arc::new(Metrics::default());
        let dead_letters = DeadLetters::new(Outlet::new(sent.clone()), metrics.clone());
        let sparkplug = Arc::new(Sparkplug::new(&config, Outlet::new(sent.clone())));
        Fixture {
            decoder: Decoder::new(
                registry,
                Normalizer::new(Duration::from_secs(300)),
                dead_letters,
                metrics.clone(),
                sparkplug,
            ),
            sent,
            metrics,
            scratch: Scratch::default(),
        }
    }

    /// Decodes `payload` from `principal` on `topic`; also returns what `done` was told.
    fn decode(
        &mut self,
        principal: Principal,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> (Decoded, oneshot::Receiver<Disposition>) {
        let (tx, rx) = oneshot::channel();
        let msg = Inbound {
            client_id: principal.id().into(),
            principal: Arc::new(principal),
            topic: topic.to_string(),
            payload: payload.into(),
            received_ms: NOW,
            arrived: Instant::now(),
            done: Some(tx),
        };
        (self.decoder.decode(msg, &mut self.scratch), rx)
    }

    /// The dead letters published so far, with the topic they went to.
    fn dead_letters(&self) -> Vec<(String, DeadLetter)> {
        self.sent
            .0
            .lock()
            .iter()
            .map(|o| {
                let doc = serde_json::from_slice(&o.payload).expect("a dead letter");
                (o.topic.clone(), doc)
            })
            .collect()
    }

    /// The single dead letter's reason; panics unless exactly one was sent.
    fn only_reason(&self) -> String {
        let letters = self.dead_letters();
        assert_eq!(letters.len(), 1, "{letters:?}");
        letters[0].1.reason.clone()
    }
}

fn agent(id: &str) -> Principal {
    Principal::Agent(id.to_string())
}

fn device(id: &str) -> Principal {
    Principal::Device(id.to_string())
}

fn reading(q: Quantity, value: Value) -> Reading {
    Reading {
        quantity: q.code(),
        value,
        quality: Quality::Good,
    }
}

fn agent_batch(agent: &str, devices: Vec<(&str, Vec<Reading>)>) -> Vec<u8> {
    batch::encode(&AgentBatch {
        agent: agent.to_string(),
        stream: 7,
        seq: 3,
        devices: devices
            .into_iter()
            .map(|(d, readings)| DeviceReadings {
                device: d.to_string(),
                samples: vec![Sample {
                    ts_ms: NOW - 1_000,
                    readings,
                }],
            })
            .collect(),
    })
}

fn disposition(mut rx: oneshot::Receiver<Disposition>) -> Option<Disposition> {
    rx.try_recv().ok()
}

fn write(d: Decoded) -> Box<crate::pipeline::Prepared> {
    match d {
        Decoded::Write(p) => p,
        Decoded::Control(c) => panic!("expected a write, got {c:?}"),
        Decoded::Presence(_) => panic!("expected a write, got presence"),
        Decoded::Handled => panic!("expected a write, got handled"),
    }
}

fn control(d: Decoded) -> Control {
    match d {
        Decoded::Control(c) => *c,
        Decoded::Write(_) => panic!("expected a control message, got a write"),
        Decoded::Presence(_) => panic!("expected a control message, got presence"),
        Decoded::Handled => panic!("expected a control message, got handled"),
    }
}

#[test]
fn agent_batch_becomes_a_write_with_origin_ack_groups_and_feeds() {
    let mut f = Fixture::new();
    let payload = agent_batch(
        "AG-1",
        vec![(
            "SL-1",
            vec![
                reading(Quantity::LampPower, Value::Number(42.5)),
                reading(Quantity::DimmingLevel, Value::Number(80.0)),
            ],
        )],
    );
    let (d, done) = f.decode(agent("AG-1"), "v1/agents/AG-1/batch", payload);
    let p = write(d);
    let origin = p
        .batch
        .origin
        .as_ref()
        .expect("an agent batch has an origin");
    assert_eq!((&*origin.agent, origin.stream, origin.seq), ("AG-1", 7, 3));
    assert_eq!(p.readings, 2);
    assert_eq!(p.batch.series.len(), 2);
    assert!(p.batch.series.iter().all(|(s, _)| &*s.device == "SL-1"));
    assert_eq!(p.groups.len(), 1);
    assert_eq!(p.groups[0].ts_ms, NOW - 1_000);
    assert_eq!(p.values.len(), 2);
    assert!(
        p.ack
            .is_some_and(|(_, stream, seq)| (stream, seq) == (7, 3))
    );
    let feed: serde_json::Value =
        serde_json::from_slice(&p.feeds[p.groups[0].feed.clone()]).expect("the feed is JSON");
    assert_eq!(feed["device"], "SL-1");
    assert!(
        p.done.is_some(),
        "completed by the commit stage, after durable"
    );
    assert_eq!(disposition(done), None);
    assert!(f.dead_letters().is_empty());
}

#[test]
fn batch_parts_that_fail_go_to_dead_letters_and_the_rest_is_kept() {
    let mut f = Fixture::new();
    let payload = agent_batch(
        "AG-1",
        vec![
            (
                "SL-1",
                vec![
                    reading(Quantity::LampPower, Value::Number(10.0)),
                    reading(Quantity::LampPower, Value::Number(f64::NAN)),
                    reading(Quantity::CoverOpen, Value::Number(1.0)),
                    Reading {
                        quantity: 999,
                        value: Value::Number(1.0),
                        quality: Quality::Good,
                    },
                ],
            ),
            (
                "SL-2",
                vec![reading(Quantity::LampPower, Value::Number(1.0))],
            ),
            (
                "NOPE",
                vec![reading(Quantity::LampPower, Value::Number(1.0))],
            ),
        ],
    );
    let (d, _done) = f.decode(agent("AG-1"), "v1/agents/AG-1/batch", payload);
    let p = write(d);
    assert_eq!(p.readings, 1);
    let letters = f.dead_letters();
    let reasons: Vec<&str> = letters
        .iter()
        .map(|(_, l)| l.reason.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        reasons,
        [
            "not_finite",
            "wrong_type",
            "unknown_quantity",
            "device_not_of_agent",
            "unknown_device"
        ]
    );
    assert!(letters.iter().all(|(t, l)| t == "v1/deadletter/AG-1"
        && l.client == "AG-1"
        && l.topic == "v1/agents/AG-1/batch"
        && l.ts == NOW));
    for r in [
        Reason::NotFinite,
        Reason::WrongType,
        Reason::UnknownQuantity,
        Reason::DeviceNotOfAgent,
        Reason::UnknownDevice,
    ] {
        assert_eq!(f.metrics.rejected_count(r), 1, "{r}");
    }
}

#[test]
fn a_batch_with_every_part_rejected_is_still_written_to_be_acknowledged() {
    let mut f = Fixture::new();
    let payload = agent_batch(
        "AG-1",
        vec![(
            "NOPE",
            vec![reading(Quantity::LampPower, Value::Number(1.0))],
        )],
    );
    let (d, _done) = f.decode(agent("AG-1"), "v1/agents/AG-1/batch", payload);
    let p = write(d);
    assert_eq!(p.readings, 0);
    assert!(p.batch.series.is_empty());
    assert!(p.batch.origin.is_some() && p.ack.is_some());
    assert!(
        f.only_reason()
            .starts_with("unknown_device: devices[0]: no device `NOPE`")
    );
}

#[test]
fn rejected_parts_beyond_the_limit_are_counted_and_summed_up() {
    let mut f = Fixture::new();
    let bad = vec![reading(Quantity::LampPower, Value::Bool(true)); MAX_PER_MESSAGE + 10];
    let payload = agent_batch("AG-1", vec![("SL-1", bad)]);
    let (d, _done) = f.decode(agent("AG-1"), "v1/agents/AG-1/batch", payload);
    write(d);
    let letters = f.dead_letters();
    assert_eq!(letters.len(), MAX_PER_MESSAGE + 1);
    assert_eq!(
        letters[MAX_PER_MESSAGE].1.reason,
        "too_many_rejects: 10 more rejected parts, counted but not sent"
    );
    assert_eq!(
        f.metrics.rejected_count(Reason::WrongType),
        (MAX_PER_MESSAGE + 10) as u64
    );
    assert_eq!(f.metrics.rejected_count(Reason::TooManyRejects), 1);
}

#[test]
fn garbage_batches_are_rejected_whole_by_their_reason() {
    let mut f = Fixture::new();
    let (d, done) = f.decode(agent("AG-1"), "v1/agents/AG-1/batch", &b"\x01\xff\xff"[..]);
    assert!(matches!(d, Decoded::Handled));
    let reason = f.only_reason();
    assert!(reason.starts_with("malformed_batch: "), "{reason}");
    assert_eq!(disposition(done), Some(Disposition::Rejected(reason)));

    let mut f = Fixture::new();
    let (d, _) = f.decode(agent("AG-1"), "v1/agents/AG-1/batch", &b"\x09rest"[..]);
    assert!(matches!(d, Decoded::Handled));
    assert!(f.only_reason().starts_with("unknown_batch_version: "));
}

#[test]
fn a_batch_naming_another_agent_is_never_written() {
    let mut f = Fixture::new();
    let payload = agent_batch(
        "AG-2",
        vec![(
            "SL-1",
            vec![reading(Quantity::LampPower, Value::Number(1.0))],
        )],
    );
    let (d, done) = f.decode(agent("AG-1"), "v1/agents/AG-1/batch", payload);
    assert!(matches!(d, Decoded::Handled));
    assert_eq!(f.only_reason(), "agent_mismatch: batch names agent `AG-2`");
    assert!(matches!(disposition(done), Some(Disposition::Rejected(_))));
}

#[test]
fn device_json_telemetry_is_normalized_into_a_write() {
    let mut f = Fixture::new();
    let json = format!(
        r#"{{"ts":{},"seq":5,"values":{{"water_level":1.25}}}}"#,
        NOW - 500
    );
    let (d, done) = f.decode(device("WL-1"), "v1/devices/WL-1/telemetry", json);
    let p = write(d);
    assert!(p.batch.origin.is_none() && p.ack.is_none());
    assert_eq!(p.readings, 1);
    let (series, points) = &p.batch.series[0];
    assert_eq!(
        (&*series.device, series.quantity),
        ("WL-1", Quantity::WaterLevel)
    );
    assert_eq!(points[0].ts_ms, NOW - 500);
    assert_eq!(points[0].value, 1.25);
    assert_eq!(disposition(done), None);
    assert!(f.dead_letters().is_empty());
}

#[test]
fn telemetry_garbage_and_bad_values_are_dead_lettered_with_protocol_labels() {
    let mut f = Fixture::new();
    let (d, done) = f.decode(device("WL-1"), "v1/devices/WL-1/telemetry", "{not json");
    assert!(matches!(d, Decoded::Handled));
    assert!(f.only_reason().starts_with("not_json: "));
    assert!(matches!(disposition(done), Some(Disposition::Rejected(_))));
    assert_eq!(f.metrics.rejected_count(Reason::NotJson), 1);

    // Only bad values: nothing to store, each part in a dead letter.
    let mut f = Fixture::new();
    let json = r#"{"values":{"water_level":"high","flux":1}}"#;
    let (d, done) = f.decode(device("WL-1"), "v1/devices/WL-1/telemetry", json);
    assert!(matches!(d, Decoded::Handled));
    let mut reasons: Vec<String> = f
        .dead_letters()
        .into_iter()
        .map(|(_, l)| l.reason.split(':').next().unwrap_or_default().to_string())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["unknown_quantity", "wrong_type"]);
    assert_eq!(
        disposition(done),
        Some(Disposition::Rejected("no acceptable value".into()))
    );

    let mut f = Fixture::new();
    let (d, _) = f.decode(
        device("WL-1"),
        "v1/devices/WL-1/telemetry",
        r#"{"values":{}}"#,
    );
    assert!(matches!(d, Decoded::Handled));
    assert_eq!(f.only_reason(), "no_values: the message has no values");
}

#[test]
fn unknown_senders_and_foreign_topics_are_rejected() {
    let mut f = Fixture::new();
    let (d, _) = f.decode(device("GHOST"), "v1/devices/GHOST/telemetry", "{}");
    assert!(matches!(d, Decoded::Handled));
    assert_eq!(f.only_reason(), "unknown_device: not in the registry");
    assert_eq!(f.dead_letters()[0].0, "v1/deadletter/GHOST");

    let mut f = Fixture::new();
    let (d, _) = f.decode(agent("AG-9"), "v1/agents/AG-9/health", "{}");
    assert!(matches!(d, Decoded::Handled));
    assert_eq!(f.only_reason(), "unknown_agent: not in the registry");

    // Another device's topic, and a topic the hub does not know.
    let mut f = Fixture::new();
    let (d, done) = f.decode(device("WL-1"), "v1/devices/SL-1/telemetry", "{}");
    assert!(matches!(d, Decoded::Handled));
    assert!(f.only_reason().starts_with("unexpected_topic: "));
    assert!(matches!(disposition(done), Some(Disposition::Rejected(_))));
    let mut f = Fixture::new();
    let (d, _) = f.decode(device("WL-1"), "nowhere", "{}");
    assert!(matches!(d, Decoded::Handled));
    assert!(f.only_reason().starts_with("unexpected_topic: "));
    assert_eq!(f.metrics.rejected_count(Reason::UnexpectedTopic), 1);
}

#[test]
fn health_is_parsed_into_a_control_message() {
    let mut f = Fixture::new();
    let health = Health {
        agent: "AG-1".into(),
        devices: vec![DeviceHealth {
            id: "SL-1".into(),
            ..DeviceHealth::default()
        }],
        ..Health::default()
    };
    let json = serde_json::to_vec(&health).expect("serializable");
    let (d, done) = f.decode(agent("AG-1"), "v1/agents/AG-1/health", json);
    match control(d) {
        Control::Health { health, msg, .. } => {
            assert_eq!(health.agent, "AG-1");
            assert_eq!(health.devices.len(), 1);
            assert_eq!(msg.topic, "v1/agents/AG-1/health");
            assert!(msg.done.is_some(), "completed by the control stage");
        }
        _ => panic!("expected health"),
    }
    assert_eq!(disposition(done), None);
    assert!(f.dead_letters().is_empty());

    let mut f = Fixture::new();
    let (d, _) = f.decode(agent("AG-1"), "v1/agents/AG-1/health", "[]");
    assert!(matches!(d, Decoded::Handled));
    assert!(f.only_reason().starts_with("bad_health: "));
}

#[test]
fn desired_and_command_results_are_parsed_into_control_messages() {
    let mut f = Fixture::new();
    let app = Principal::App {
        id: "ops".into(),
        grants: vec!["v1/twin/#".into()],
    };
    let (d, _) = f.decode(
        app.clone(),
        "v1/twin/SL-1/desired",
        r#"{"version":4,"dimming_level":30}"#,
    );
    match control(d) {
        Control::Desired { device, update, .. } => {
            assert_eq!(device, "SL-1");
            assert_eq!(update.version, Some(4));
            assert!(update.values.contains_key("dimming_level"));
        }
        _ => panic!("expected desired"),
    }
    let (d, _) = f.decode(app, "v1/twin/SL-1/desired", "nope");
    assert!(matches!(d, Decoded::Handled));
    assert!(f.only_reason().starts_with("bad_desired: "));

    let mut f = Fixture::new();
    let (d, _) = f.decode(
        device("WL-1"),
        "v1/devices/WL-1/cmd/result",
        r#"{"id":"c-1","ok":true,"ts":1}"#,
    );
    match control(d) {
        Control::CommandResult { result, msg } => {
            assert_eq!((result.id.as_str(), result.ok), ("c-1", true));
            assert_eq!(msg.principal.id(), "WL-1");
        }
        _ => panic!("expected a command result"),
    }
    let (d, _) = f.decode(device("WL-1"), "v1/devices/WL-1/cmd/result", "{}");
    assert!(matches!(d, Decoded::Handled));
    assert!(f.only_reason().starts_with("bad_command_result: "));
}

fn camera_event(camera: &str, seq: Option<u64>) -> Vec<u8> {
    let ev = CameraEvent {
        camera: camera.into(),
        event_type: "motion".into(),
        phase: EventPhase::Start,
        ts: NOW - 2_000,
        score: 0.5,
        boxes: vec![[0.1, 0.2, 0.3, 0.4]],
        snapshot: Some(format!("{camera}.{}.1", NOW - 2_000)),
        stream: seq.map(|_| 7),
        seq,
    };
    serde_json::to_vec(&ev).expect("serializable")
}

#[test]
fn camera_events_become_video_work_or_acknowledged_refusals() {
    let mut f = Fixture::new();
    let (d, _) = f.decode(
        agent("AG-1"),
        "v1/agents/AG-1/events",
        camera_event("CAM-1", Some(9)),
    );
    let p = write(d);
    assert!(matches!(p.video.as_deref(), Some(Work::Event { .. })));
    assert!(
        p.ack
            .is_some_and(|(_, stream, seq)| (stream, seq) == (7, 9))
    );
    assert!(f.dead_letters().is_empty());

    // Not a camera: refused, still written (origin only) so the agent's queue moves on.
    let (d, _) = f.decode(
        agent("AG-1"),
        "v1/agents/AG-1/events",
        camera_event("SL-1", Some(10)),
    );
    let p = write(d);
    assert!(p.video.is_none() && p.batch.origin.is_some());
    assert!(f.only_reason().starts_with("not_a_camera: "));

    // Without a seq there is nothing to acknowledge: rejected outright.
    let mut f = Fixture::new();
    let (d, done) = f.decode(
        agent("AG-1"),
        "v1/agents/AG-1/events",
        camera_event("CAM-9", None),
    );
    assert!(matches!(d, Decoded::Handled));
    assert_eq!(f.only_reason(), "unknown_device: no device `CAM-9`");
    assert!(matches!(disposition(done), Some(Disposition::Rejected(_))));

    let mut f = Fixture::new();
    let (d, _) = f.decode(agent("AG-1"), "v1/agents/AG-1/events", "not an event");
    assert!(matches!(d, Decoded::Handled));
    assert!(f.only_reason().starts_with("bad_event: "));
}

#[test]
fn snapshots_that_are_not_jpeg_are_refused_and_acknowledged() {
    let mut f = Fixture::new();
    let (d, _) = f.decode(
        agent("AG-1"),
        "v1/agents/AG-1/snapshots/CAM-1.1.1",
        &b"not a jpeg"[..],
    );
    let p = write(d);
    assert!(matches!(p.video.as_deref(), Some(Work::Refused { id, .. }) if id == "CAM-1.1.1"));
    assert!(f.only_reason().starts_with("bad_snapshot: "));
    assert_eq!(f.metrics.rejected_count(Reason::BadSnapshot), 1);
}

#[test]
fn status_messages_of_the_sender_are_accepted_and_dropped() {
    let mut f = Fixture::new();
    let (d, done) = f.decode(device("WL-1"), "v1/status/WL-1", "offline");
    assert!(matches!(d, Decoded::Handled));
    assert_eq!(disposition(done), Some(Disposition::Accepted));
    assert!(f.dead_letters().is_empty());
}

mod sparkplug {
    //! Sparkplug B through the decode stage: sessions, mapping, presence, refusals.

    use super::*;
    use protocols::sparkplug::{self as sp, DataType, Metric, MetricValue, Payload};

    const NODE: &str = "PS-EN01";
    const T: u64 = (NOW - 2_000) as u64;

    fn node() -> Principal {
        Principal::SparkplugNode(NODE.to_string())
    }

    fn m(name: &str, alias: u64, t: DataType, v: MetricValue) -> Metric {
        Metric::new(t, &v).unwrap().named(name).aliased(alias).at(T)
    }

    fn by_alias(alias: u64, t: DataType, v: MetricValue) -> Metric {
        Metric::new(t, &v)
            .unwrap()
            .aliased(alias)
            .without_datatype()
            .at(T)
    }

    fn payload(seq: u64, metrics: Vec<Metric>) -> Vec<u8> {
        sp::encode(&Payload {
            timestamp: Some(T),
            seq: Some(seq),
            metrics,
            ..Default::default()
        })
    }

    fn nbirth(bd_seq: i64) -> Vec<u8> {
        payload(
            0,
            vec![
                Metric::new(DataType::Int64, &MetricValue::Int(bd_seq))
                    .unwrap()
                    .named("bdSeq"),
                m(
                    "Node Control/Rebirth",
                    1,
                    DataType::Boolean,
                    MetricValue::Bool(false),
                ),
            ],
        )
    }

    /// A pump's birth; aliases from `base` (unique across the node's devices).
    fn dbirth(seq: u64, base: u64) -> Vec<u8> {
        payload(
            seq,
            vec![
                m(
                    "Pump/Speed",
                    base,
                    DataType::Float,
                    MetricValue::Float(40.0),
                ),
                m(
                    "Pump/Flow",
                    base + 1,
                    DataType::Float,
                    MetricValue::Float(360.0),
                ),
                m(
                    "Pump/Running",
                    base + 2,
                    DataType::Boolean,
                    MetricValue::Bool(true),
                ),
                m(
                    "Pump/Vibration",
                    base + 3,
                    DataType::Double,
                    MetricValue::Double(0.2),
                ),
            ],
        )
    }

    fn topic(kind: &str, device: Option<&str>) -> String {
        match device {
            Some(d) => format!("spBv1.0/District/{kind}/{NODE}/{d}"),
            None => format!("spBv1.0/District/{kind}/{NODE}"),
        }
    }

    fn presence(d: Decoded) -> super::super::Presence {
        match d {
            Decoded::Presence(p) => *p,
            Decoded::Write(_) => panic!("expected presence, got a write"),
            Decoded::Control(c) => panic!("expected presence, got {c:?}"),
            Decoded::Handled => panic!("expected presence, got handled"),
        }
    }

    /// A fixture with the node and its pump born (NBIRTH seq 0, DBIRTH seq 1).
    fn born() -> Fixture {
        let mut f = Fixture::new();
        let (d, rx) = f.decode(node(), &topic("NBIRTH", None), nbirth(7));
        let p = presence(d);
        assert!(p.changes.is_empty() && p.then.is_none());
        assert_eq!(disposition(rx), Some(Disposition::Accepted));
        let (d, _) = f.decode(node(), &topic("DBIRTH", Some("PS-P01")), dbirth(1, 10));
        let p = presence(d);
        assert_eq!(p.changes, vec![(4, true)]);
        let w = p.then.expect("the birth's values");
        // Speed, flow (360 m3/h = 0.1 m3/s) and running; the vibration has no mapping.
        assert_eq!(w.readings, 3);
        let flow = w.values.iter().find(|v| v.quantity == Quantity::WaterFlow);
        assert_eq!(flow.map(|v| v.value), Some(Value::Number(0.1)));
        assert_eq!(w.groups.len(), 1);
        assert!(f.dead_letters().is_empty());
        f
    }

    #[test]
    fn births_take_the_device_online_and_data_by_alias_is_stored() {
        let mut f = born();
        let (d, _) = f.decode(
            node(),
            &topic("DDATA", Some("PS-P01")),
            payload(
                2,
                vec![by_alias(10, DataType::Float, MetricValue::Float(55.0))],
            ),
        );
        let w = write(d);
        assert_eq!(w.readings, 1);
        assert_eq!(w.values[0].quantity, Quantity::PumpSpeed);
        assert_eq!(w.values[0].value, Value::Number(55.0));
        assert_eq!(w.groups[0].ts_ms, T as i64);
        assert!(f.dead_letters().is_empty());
    }

    #[test]
    fn a_sequence_gap_asks_for_a_rebirth_once_and_data_waits_for_it() {
        let mut f = born();
        let data = |seq| {
            payload(
                seq,
                vec![by_alias(10, DataType::Float, MetricValue::Float(50.0))],
            )
        };
        let (d, rx) = f.decode(node(), &topic("DDATA", Some("PS-P01")), data(5));
        assert!(matches!(d, Decoded::Handled));
        assert!(matches!(disposition(rx), Some(Disposition::Rejected(_))));
        let (d, _) = f.decode(node(), &topic("DDATA", Some("PS-P01")), data(6));
        assert!(matches!(d, Decoded::Handled));
        let sent = f.sent.0.lock().clone();
        let ncmd: Vec<_> = sent
            .iter()
            .filter(|o| o.topic == "spBv1.0/District/NCMD/PS-EN01")
            .collect();
        assert_eq!(ncmd.len(), 1, "one rebirth request within the interval");
        let req = sp::decode(&ncmd[0].payload).unwrap();
        assert_eq!(req.metrics[0].name.as_deref(), Some("Node Control/Rebirth"));
        let reasons: Vec<_> = f
            .dead_letters_except_commands()
            .into_iter()
            .map(|(_, d)| d.reason)
            .collect();
        assert_eq!(reasons.len(), 2);
        assert!(reasons.iter().all(|r| r.starts_with("out_of_session")));
        // The rebirth restores the session.
        let (d, _) = f.decode(node(), &topic("NBIRTH", None), nbirth(7));
        presence(d);
        let (d, _) = f.decode(node(), &topic("DBIRTH", Some("PS-P01")), dbirth(1, 10));
        assert!(presence(d).then.is_some());
    }

    #[test]
    fn history_is_stored_without_twin_rules_or_feeds() {
        let mut f = born();
        let old = T - 3_600_000;
        let (d, _) = f.decode(
            node(),
            &topic("DDATA", Some("PS-P01")),
            payload(
                2,
                vec![
                    by_alias(11, DataType::Float, MetricValue::Float(720.0))
                        .at(old)
                        .historical_data(),
                    by_alias(10, DataType::Float, MetricValue::Float(60.0)),
                ],
            ),
        );
        let w = write(d);
        assert_eq!(w.readings, 2);
        // One live group (the speed); the flow is in the store's write only.
        assert_eq!(w.groups.len(), 1);
        assert_eq!(w.values.len(), 1);
        let flow = w
            .batch
            .series
            .iter()
            .find(|(s, _)| s.quantity == Quantity::WaterFlow)
            .expect("history stored");
        assert_eq!(flow.1[0].ts_ms, old as i64);
        assert!((flow.1[0].value - 0.2).abs() < 1e-12);
    }

    #[test]
    fn deaths_take_devices_offline_and_late_wills_change_nothing() {
        let mut f = born();
        // The will of an older session is ignored.
        let (d, rx) = f.decode(node(), &topic("NDEATH", None), ndeath(6));
        assert!(matches!(d, Decoded::Handled));
        assert_eq!(disposition(rx), Some(Disposition::Accepted));
        let (d, _) = f.decode(node(), &topic("NDEATH", None), ndeath(7));
        assert_eq!(presence(d).changes, vec![(4, false)]);
        assert!(f.dead_letters_except_commands().is_empty());
    }

    fn ndeath(bd_seq: i64) -> Vec<u8> {
        sp::encode(&Payload {
            timestamp: Some(T),
            metrics: vec![
                Metric::new(DataType::Int64, &MetricValue::Int(bd_seq))
                    .unwrap()
                    .named("bdSeq"),
            ],
            ..Default::default()
        })
    }

    #[test]
    fn refusals_name_their_reason() {
        let mut f = born();
        // Not protobuf.
        let (_, rx) = f.decode(
            node(),
            &topic("DDATA", Some("PS-P01")),
            &b"\xff\xff\xff"[..],
        );
        assert!(matches!(disposition(rx), Some(Disposition::Rejected(_))));
        assert!(f.only_reason().starts_with("bad_sparkplug"));
        f.sent.0.lock().clear();
        // A device the registry does not have, and another agent's.
        let (_, _) = f.decode(node(), &topic("DBIRTH", Some("PS-P99")), dbirth(2, 20));
        assert!(f.only_reason().starts_with("unknown_device"));
        f.sent.0.lock().clear();
        let (_, _) = f.decode(node(), &topic("DBIRTH", Some("SL-1")), dbirth(3, 30));
        assert!(f.only_reason().starts_with("device_not_of_agent"));
        f.sent.0.lock().clear();
        // Another node's topic.
        let (_, _) = f.decode(node(), "spBv1.0/District/NDATA/PS-EN02", payload(5, vec![]));
        assert!(f.only_reason().starts_with("bad_sparkplug"));
    }

    #[test]
    fn node_metrics_have_no_device_and_wrong_values_are_refused_alone() {
        let mut f = Fixture::new();
        let level = Metric::new(DataType::Double, &MetricValue::Double(2.5))
            .unwrap()
            .named("Station/Level")
            .aliased(2)
            .at(T);
        let mut birth = sp::decode(&nbirth(1)).unwrap();
        birth.metrics.push(level);
        let (d, rx) = f.decode(node(), &topic("NBIRTH", None), sp::encode(&birth));
        assert!(presence(d).then.is_none());
        assert_eq!(disposition(rx), Some(Disposition::Accepted));
        assert!(f.only_reason().starts_with("unknown_device"));
        f.sent.0.lock().clear();
        let (d, _) = f.decode(node(), &topic("DBIRTH", Some("PS-P01")), dbirth(1, 10));
        presence(d);
        // Text where the flow should be: that metric alone goes to the dead letters.
        let (d, _) = f.decode(
            node(),
            &topic("DDATA", Some("PS-P01")),
            payload(
                2,
                vec![
                    by_alias(10, DataType::Float, MetricValue::Float(20.0)),
                    Metric::new(DataType::String, &MetricValue::Text("high".into()))
                        .unwrap()
                        .named("Pump/Flow")
                        .at(T),
                ],
            ),
        );
        let w = write(d);
        assert_eq!(w.readings, 1);
        assert!(f.only_reason().starts_with("wrong_type"));
    }

    impl Fixture {
        /// Dead letters, leaving out the commands the hub sent to the node.
        fn dead_letters_except_commands(&self) -> Vec<(String, DeadLetter)> {
            let sent = self.sent.0.lock().clone();
            sent.iter()
                .filter(|o| !o.topic.starts_with("spBv1.0/"))
                .map(|o| {
                    let doc = serde_json::from_slice(&o.payload).expect("a dead letter");
                    (o.topic.clone(), doc)
                })
                .collect()
        }
    }
}
