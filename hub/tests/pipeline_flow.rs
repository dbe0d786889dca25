//! The real pipeline driven through the ingress seam: `IngressEvent`s in, what the hub
//! publishes recorded at the `Publisher`, points checked in the store.
//!
//! Every scenario is a function generic over `SeriesStore`; the `#[tokio::test]`s run them on
//! the test-only in-memory store until the embedded engine is merged, then on both.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use mqtt_broker::ingress::{Disposition, IngressEvent};
use protocols::batch::{Ack, AgentBatch, DeviceReadings, Reading, Sample, encode};
use protocols::messages::{Command, DeadLetter, DeviceHealth, Feed, Health, Scalar, Twin};
use protocols::{Quality, Quantity, Value};
use series_store::SeriesStore;
use support::*;

const T0: i64 = 1_795_334_400_000; // 2026-11-22T08:00:00Z

fn reading(q: Quantity, v: Value) -> Reading {
    Reading {
        quantity: q.code(),
        value: v,
        quality: Quality::Good,
    }
}

fn streetlight_batch(seq: u64) -> AgentBatch {
    AgentBatch {
        agent: "AG-0001".into(),
        stream: 77,
        seq,
        devices: vec![
            DeviceReadings {
                device: "SL-0001".into(),
                samples: vec![
                    Sample {
                        ts_ms: T0,
                        readings: vec![
                            reading(Quantity::DimmingLevel, Value::Number(40.0)),
                            reading(Quantity::LampPower, Value::Number(61.5)),
                            // Unknown quantity code: rejected alone.
                            Reading {
                                quantity: 999,
                                value: Value::Number(1.0),
                                quality: Quality::Good,
                            },
                        ],
                    },
                    Sample {
                        ts_ms: T0 + 1000,
                        readings: vec![
                            reading(Quantity::DimmingLevel, Value::Number(50.0)),
                            Reading {
                                quantity: Quantity::LampStatus.code(),
                                value: Value::State(1),
                                quality: Quality::Uncertain,
                            },
                        ],
                    },
                ],
            },
            DeviceReadings {
                device: "SL-0002".into(),
                samples: vec![Sample {
                    ts_ms: T0,
                    readings: vec![reading(Quantity::LampPower, Value::Number(1.0e9))],
                }],
            },
            // Behind another agent: rejected.
            DeviceReadings {
                device: "MH-0001".into(),
                samples: vec![Sample {
                    ts_ms: T0,
                    readings: vec![reading(Quantity::CoverOpen, Value::Bool(true))],
                }],
            },
            // Unknown: rejected.
            DeviceReadings {
                device: "XX-9".into(),
                samples: vec![],
            },
        ],
    }
}

fn deadletters(h: &TestHub<impl SeriesStore>, client: &str) -> Vec<DeadLetter> {
    h.published
        .on(&format!("v1/deadletter/{client}"))
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}

fn reasons(dls: &[DeadLetter]) -> Vec<String> {
    let mut r: Vec<String> = dls
        .iter()
        .map(|d| d.reason.split(':').next().unwrap().to_string())
        .collect();
    r.sort();
    r
}

async fn agent_batch_is_stored_acked_and_fanned_out<S: SeriesStore>(open: impl OpenStore<S>) {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start_in(dir.path(), &open).await;
    let rx = h
        .send(
            agent("AG-0001"),
            "v1/agents/AG-0001/batch",
            encode(&streetlight_batch(1)),
        )
        .await;
    assert_eq!(disposition(rx).await, Disposition::Accepted);

    // Stored (qualities are checked on the feeds below).
    let dimming = series(&*h.store, "SL-0001", Quantity::DimmingLevel);
    assert_eq!(dimming, vec![(T0, 40.0), (T0 + 1000, 50.0)]);
    assert_eq!(
        series(&*h.store, "SL-0001", Quantity::LampStatus),
        vec![(T0 + 1000, 1.0)]
    );
    assert_eq!(
        series(&*h.store, "SL-0002", Quantity::LampPower),
        vec![(T0, 1.0e9)],
        "impossible values are kept (marked bad)"
    );
    assert!(series(&*h.store, "MH-0001", Quantity::CoverOpen).is_empty());

    // Acknowledged.
    let acks = h.published.wait_count("v1/agents/AG-0001/ack", 1).await;
    let ack: Ack = serde_json::from_slice(&acks[0].payload).unwrap();
    assert_eq!((ack.stream, ack.covers(1)), (77, true));

    // Feeds: one per device and timestamp, exactly the contract's shape.
    let feeds = h
        .published
        .wait_count("v1/feeds/streetlight/SL-0001", 2)
        .await;
    let first = std::str::from_utf8(&feeds[0].payload).unwrap();
    assert_eq!(
        first,
        r#"{"device":"SL-0001","kind":"streetlight","dept":"lighting","ts":"2026-11-22T08:00:00.000Z","seq":1,"location":{"lat":30.42,"lon":120.3},"values":{"dimming_level":{"value":40.0,"unit":"%","quality":"good"},"lamp_power":{"value":61.5,"unit":"W","quality":"good"}}}"#
    );
    let second: Feed = serde_json::from_slice(&feeds[1].payload).unwrap();
    assert_eq!(
        second.values["lamp_status"].value,
        Scalar::Text("lamp_failure".into())
    );
    assert_eq!(
        second.values["lamp_status"].quality,
        Quality::Uncertain,
        "the agent's worse quality is kept"
    );
    let sl2: Feed = serde_json::from_slice(
        &h.published
            .wait_count("v1/feeds/streetlight/SL-0002", 1)
            .await[0]
            .payload,
    )
    .unwrap();
    assert_eq!(sl2.values["lamp_power"].quality, Quality::Bad);
    assert!(h.published.on("v1/feeds/manhole/MH-0001").is_empty());

    // Twin: newest reported values, retained.
    let twin = h
        .published
        .wait_for("SL-0001 twin with both samples", |msgs| {
            msgs.iter()
                .filter(|m| m.topic == "v1/twin/SL-0001")
                .map(|m| serde_json::from_slice::<Twin>(&m.payload).unwrap())
                .find(|t| t.reported.contains_key("lamp_status"))
                .map(|t| (t, true))
        })
        .await
        .0;
    assert_eq!(twin.reported["dimming_level"].value, Scalar::Number(50.0));
    assert_eq!(twin.reported["dimming_level"].unit, "%");
    assert_eq!(
        twin.reported["dimming_level"].ts,
        "2026-11-22T08:00:01.000Z"
    );
    assert_eq!(twin.reported["lamp_power"].value, Scalar::Number(61.5));
    assert!(h.published.on("v1/twin/SL-0001").iter().all(|m| m.retain));

    // Dead letters: every rejected part, with its reason and bytes.
    let dls = deadletters(&h, "AG-0001");
    assert_eq!(
        reasons(&dls),
        vec!["device_not_of_agent", "unknown_device", "unknown_quantity"]
    );
    let uq = dls
        .iter()
        .find(|d| d.reason.starts_with("unknown_quantity"))
        .unwrap();
    assert!(
        uq.reason.contains("devices[0].samples[0].readings[2]"),
        "{}",
        uq.reason
    );
    let part = base64::engine::general_purpose::STANDARD
        .decode(&uq.payload_b64)
        .unwrap();
    let part: serde_json::Value = serde_json::from_slice(&part).unwrap();
    assert_eq!(part["quantity"], 999);
    assert_eq!(uq.topic, "v1/agents/AG-0001/batch");
    h.shutdown().await;
}

/// Runs a scenario on the real engine and on the fault-injecting in-memory store.
macro_rules! on_stores {
    ($($scenario:ident => $name:ident;)*) => {$(
        #[tokio::test]
        async fn $name() {
            $scenario(ts_stores()).await;
            $scenario(mem_stores()).await;
        }
    )*};
}

on_stores! {
    agent_batch_is_stored_acked_and_fanned_out => agent_batch_is_stored_acked_and_fanned_out_mem;
    redelivered_batch_is_reacked_not_stored_twice => redelivered_batch_is_reacked_not_stored_twice_mem;
    burst_of_batches_all_acknowledged => burst_of_batches_all_acknowledged_mem;
    half_valid_json_telemetry => half_valid_json_telemetry_mem;
    garbage_never_stops_the_pipeline => garbage_never_stops_the_pipeline_mem;
    status_follows_connections_and_health => status_follows_connections_and_health_mem;
    desired_state_over_mqtt => desired_state_over_mqtt_mem;
    twins_survive_restart => twins_survive_restart_mem;
}

/// A redelivered batch (the agent missed the ack) is acknowledged again, not stored again and
/// not republished.
async fn redelivered_batch_is_reacked_not_stored_twice<S: SeriesStore>(open: impl OpenStore<S>) {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start_in(dir.path(), &open).await;
    let bytes = encode(&streetlight_batch(5));
    let first = h
        .send(agent("AG-0001"), "v1/agents/AG-0001/batch", bytes.clone())
        .await;
    assert_eq!(disposition(first).await, Disposition::Accepted);
    h.published.wait_count("v1/agents/AG-0001/ack", 1).await;
    let stored = series(&*h.store, "SL-0001", Quantity::DimmingLevel);
    assert_eq!(stored.len(), 2);
    let feeds = h.published.on("v1/feeds/streetlight/SL-0001").len();

    let again = h
        .send(agent("AG-0001"), "v1/agents/AG-0001/batch", bytes)
        .await;
    assert_eq!(disposition(again).await, Disposition::Accepted);
    let acks = h.published.wait_count("v1/agents/AG-0001/ack", 2).await;
    let ack: Ack = serde_json::from_slice(&acks[1].payload).unwrap();
    assert!(ack.covers(5));
    assert_eq!(series(&*h.store, "SL-0001", Quantity::DimmingLevel), stored);
    assert_eq!(h.published.on("v1/feeds/streetlight/SL-0001").len(), feeds);
    h.shutdown().await;
}

/// Many batches in a burst: every sequence number is acknowledged, in fewer ack messages when
/// they arrive together.
async fn burst_of_batches_all_acknowledged<S: SeriesStore>(open: impl OpenStore<S>) {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start_in(dir.path(), &open).await;
    let mut rxs = Vec::new();
    for seq in 1..=200 {
        let b = AgentBatch {
            agent: "AG-0001".into(),
            stream: 9,
            seq,
            devices: vec![DeviceReadings {
                device: "SL-0001".into(),
                samples: vec![Sample {
                    ts_ms: T0 + seq as i64,
                    readings: vec![reading(Quantity::LampPower, Value::Number(seq as f64))],
                }],
            }],
        };
        rxs.push(
            h.send(agent("AG-0001"), "v1/agents/AG-0001/batch", encode(&b))
                .await,
        );
    }
    for rx in rxs {
        assert_eq!(disposition(rx).await, Disposition::Accepted);
    }
    let acks = h
        .published
        .wait_for("acks covering 1..=200", |msgs| {
            let acks: Vec<Ack> = msgs
                .iter()
                .filter(|m| m.topic == "v1/agents/AG-0001/ack")
                .map(|m| serde_json::from_slice(&m.payload).unwrap())
                .collect();
            (1..=200)
                .all(|s| acks.iter().any(|a| a.covers(s)))
                .then_some(acks)
        })
        .await;
    assert!(acks.iter().all(|a| a.stream == 9));
    assert_eq!(series(&*h.store, "SL-0001", Quantity::LampPower).len(), 200);
    // The twin holds the newest value whatever order the writes completed in.
    let doc = h.hub.as_ref().unwrap().twins().document(1);
    assert_eq!(doc.device, "SL-0001");
    assert_eq!(doc.reported["lamp_power"].value, Scalar::Number(200.0));
    h.shutdown().await;
}

/// Half-valid JSON telemetry: good values stored, bad ones dead-lettered with reasons; time
/// and quality normalized.
async fn half_valid_json_telemetry<S: SeriesStore>(open: impl OpenStore<S>) {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start_in(dir.path(), &open).await;
    let now = T0 + 3_600_000;
    let msg = format!(
        r#"[{{"ts": {T0}, "seq": 42,
            "values": {{"water_level": 2.31, "turbidity": {{"value": 12.5, "unit": "NTU"}},
                       "water_level_raw": {{"value": 2310, "unit": "mm"}},
                       "ph": {{"value": 7, "unit": "furlongs"}}, "dissolved_oxygen": "lots"}}}},
           {{"ts": {future}, "values": {{"water_level": {{"value": 2400, "unit": "mm"}}}}}},
           {{"values": {{"ph": 15}}}},
           "garbage"]"#,
        future = now + 3_600_000
    );
    let rx = h
        .send_at(device("WL-0001"), "v1/devices/WL-0001/telemetry", msg, now)
        .await;
    assert_eq!(disposition(rx).await, Disposition::Accepted);
    let wl = series(&*h.store, "WL-0001", Quantity::WaterLevel);
    assert_eq!(wl.len(), 2);
    assert_eq!(wl[0], (T0, 2.31));
    // A timestamp an hour ahead is corrected to hub time; the unit is converted.
    assert_eq!(wl[1].0, now);
    assert!((wl[1].1 - 2.4).abs() < 1e-9);
    assert_eq!(
        series(&*h.store, "WL-0001", Quantity::Turbidity),
        vec![(T0, 12.5)]
    );
    assert_eq!(
        series(&*h.store, "WL-0001", Quantity::Ph),
        vec![(now, 15.0)]
    );

    h.published
        .wait_for("4 dead letters", |msgs| {
            let n = msgs
                .iter()
                .filter(|m| m.topic == "v1/deadletter/WL-0001")
                .count();
            (n >= 4).then_some(())
        })
        .await;
    let dls = deadletters(&h, "WL-0001");
    assert_eq!(
        reasons(&dls),
        vec![
            "sample_not_object",
            "unknown_quantity",
            "unknown_unit",
            "wrong_type"
        ]
    );
    let raw = dls
        .iter()
        .find(|d| d.reason.starts_with("unknown_quantity"))
        .unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&raw.payload_b64)
            .unwrap(),
        br#"{"unit":"mm","value":2310}"#
    );
    assert!(
        raw.reason.contains("[0].values.water_level_raw"),
        "{}",
        raw.reason
    );
    assert_eq!(raw.client, "WL-0001");

    let feeds: Vec<Feed> = h
        .published
        .wait_count("v1/feeds/water_level/WL-0001", 3)
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    assert_eq!(feeds[0].seq, Some(42));
    assert_eq!(feeds[0].dept.as_deref(), Some("water"));
    assert_eq!(feeds[0].location.unwrap().lat, 30.4212);
    assert_eq!(feeds[0].values["water_level"].quality, Quality::Good);
    // Corrected time: uncertain.
    let hub_time = protocols::time::Rfc3339::from_ms(now).to_string();
    assert_eq!(feeds[1].ts, hub_time);
    assert_eq!(feeds[1].values["water_level"].quality, Quality::Uncertain);
    // No time (uncertain) and physically impossible (bad): bad.
    assert_eq!(feeds[2].ts, hub_time);
    assert_eq!(feeds[2].values["ph"].quality, Quality::Bad);
    h.shutdown().await;
}

/// Garbage of every kind is dead-lettered and refused, and the pipeline keeps going.
async fn garbage_never_stops_the_pipeline<S: SeriesStore>(open: impl OpenStore<S>) {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start_in(dir.path(), &open).await;
    let spoof = AgentBatch {
        agent: "AG-0002".into(),
        ..streetlight_batch(3)
    };
    let cases: Vec<(protocols::access::Principal, &str, Vec<u8>, &str)> = vec![
        (
            agent("AG-0001"),
            "v1/agents/AG-0001/batch",
            vec![1, 0xff, 0xff],
            "malformed_batch",
        ),
        (
            agent("AG-0001"),
            "v1/agents/AG-0001/batch",
            vec![],
            "malformed_batch",
        ),
        (
            agent("AG-0001"),
            "v1/agents/AG-0001/batch",
            vec![9, 1, 2],
            "unknown_batch_version",
        ),
        (
            agent("AG-0001"),
            "v1/agents/AG-0001/batch",
            encode(&spoof),
            "agent_mismatch",
        ),
        (
            agent("AG-0001"),
            "v1/agents/AG-0001/health",
            b"{".to_vec(),
            "bad_health",
        ),
        (
            device("WL-0001"),
            "v1/devices/WL-0001/telemetry",
            b"\xff\xfe".to_vec(),
            "not_json",
        ),
        (
            device("WL-0001"),
            "v1/devices/WL-0001/telemetry",
            b"42".to_vec(),
            "not_object_or_array",
        ),
        (
            device("WL-0001"),
            "v1/devices/WL-0001/telemetry",
            br#"{"values":{}}"#.to_vec(),
            "no_values",
        ),
        (
            device("WL-0001"),
            "v1/devices/WL-0001/telemetry",
            vec![b' '; 70_000],
            "too_large",
        ),
        (
            device("WL-0001"),
            "v1/devices/WL-0002/telemetry",
            b"{}".to_vec(),
            "unexpected_topic",
        ),
        (
            device("WL-0001"),
            "nonsense/topic",
            b"{}".to_vec(),
            "unexpected_topic",
        ),
    ];
    for (p, topic, payload, label) in &cases {
        let rx = h.send(p.clone(), topic, payload.clone()).await;
        match disposition(rx).await {
            Disposition::Rejected(r) => assert!(r.starts_with(label), "{topic}: {r}"),
            d => panic!("{topic}: {d:?}"),
        }
    }
    // A refused publish from the ingress becomes a dead letter too.
    h.event(IngressEvent::Refused {
        principal: Arc::new(device("WL-0001")),
        topic: "v1/devices/SL-0001/telemetry".into(),
        reason: "topic belongs to another client".into(),
        payload: bytes::Bytes::from_static(b"{}"),
    })
    .await;
    // Nothing from a rejected batch was stored or acknowledged.
    assert!(h.published.on("v1/agents/AG-0001/ack").is_empty());
    // And the pipeline still works.
    let rx = h
        .send(
            device("WL-0001"),
            "v1/devices/WL-0001/telemetry",
            r#"{"values":{"water_level":1.5}}"#,
        )
        .await;
    assert_eq!(disposition(rx).await, Disposition::Accepted);
    h.published
        .wait_count("v1/feeds/water_level/WL-0001", 1)
        .await;
    let dls = h
        .published
        .wait_for("the refused dead letter", |msgs| {
            msgs.iter()
                .filter(|m| m.topic == "v1/deadletter/WL-0001")
                .map(|m| serde_json::from_slice::<DeadLetter>(&m.payload).unwrap())
                .find(|d| d.reason.starts_with("refused"))
        })
        .await;
    assert_eq!(dls.topic, "v1/devices/SL-0001/telemetry");
    let metrics = reqwest::get(format!("{}/metrics", h.base_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hub_rejected_total{reason=\"malformed_batch\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("hub_rejected_total{reason=\"refused\"} 1"));
    assert!(metrics.contains("hub_messages_in_total{kind=\"batch\"} 4"));
    h.shutdown().await;
}

/// A failed append leaves the message unacknowledged (no PUBACK, no agent ack); the
/// redelivery is stored. (Failure injection: in-memory store only.)
#[tokio::test]
async fn store_failure_leaves_the_message_unacknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemorySeriesStore::default());
    store.fail_appends.store(1, Ordering::SeqCst);
    let h = TestHub::start(dir.path(), store).await;
    let bytes = encode(&streetlight_batch(8));
    let rx = h
        .send(agent("AG-0001"), "v1/agents/AG-0001/batch", bytes.clone())
        .await;
    let outcome = tokio::time::timeout(DEADLINE, rx).await.unwrap();
    assert!(
        outcome.is_err(),
        "no disposition for a failed append: {outcome:?}"
    );
    assert!(h.published.on("v1/agents/AG-0001/ack").is_empty());
    assert!(h.published.on("v1/feeds/streetlight/SL-0001").is_empty());
    let rx = h
        .send(agent("AG-0001"), "v1/agents/AG-0001/batch", bytes)
        .await;
    assert_eq!(disposition(rx).await, Disposition::Accepted);
    let acks = h.published.wait_count("v1/agents/AG-0001/ack", 1).await;
    assert!(
        serde_json::from_slice::<Ack>(&acks[0].payload)
            .unwrap()
            .covers(8)
    );
    h.shutdown().await;
}

/// Status follows connections; devices behind an agent follow the agent and its health.
async fn status_follows_connections_and_health<S: SeriesStore>(open: impl OpenStore<S>) {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start_in(dir.path(), &open).await;
    let conn = |p| IngressEvent::Connected {
        principal: Arc::new(p),
        client_id: "x".into(),
    };
    let disc = |p| IngressEvent::Disconnected {
        principal: Arc::new(p),
        client_id: "x".into(),
        graceful: false,
    };
    let last = |topic: &str| {
        h.published
            .on(topic)
            .last()
            .map(|m| (String::from_utf8(m.payload.to_vec()).unwrap(), m.retain))
    };
    h.event(conn(agent("AG-0001"))).await;
    h.published.wait_count("v1/status/SL-0002", 1).await;
    assert_eq!(last("v1/status/AG-0001"), Some(("online".into(), true)));
    assert_eq!(last("v1/status/SL-0001"), Some(("online".into(), true)));
    assert!(h.hub.as_ref().unwrap().twins().online(1));

    let health = Health {
        agent: "AG-0001".into(),
        ts: T0,
        version: "1.0.0".into(),
        devices: vec![
            DeviceHealth {
                id: "SL-0002".into(),
                online: false,
                errors: 3,
                last_ok_ms: None,
            },
            DeviceHealth {
                id: "MH-0001".into(),
                online: true,
                errors: 0,
                last_ok_ms: None,
            },
        ],
        ..Health::default()
    };
    let rx = h
        .send(
            agent("AG-0001"),
            "v1/agents/AG-0001/health",
            serde_json::to_vec(&health).unwrap(),
        )
        .await;
    assert_eq!(disposition(rx).await, Disposition::Accepted);
    h.published.wait_count("v1/status/SL-0002", 2).await;
    assert_eq!(last("v1/status/SL-0002"), Some(("offline".into(), true)));
    assert_eq!(last("v1/status/SL-0001"), Some(("online".into(), true)));
    // MH-0001 is not behind AG-0001: dead-lettered, not applied.
    let dl = h.published.wait_count("v1/deadletter/AG-0001", 1).await;
    assert!(String::from_utf8_lossy(&dl[0].payload).contains("device_not_of_agent"));
    assert!(h.published.on("v1/status/MH-0001").is_empty());

    // A second connection (session takeover) and the end of the first: no flapping.
    h.event(conn(agent("AG-0001"))).await;
    h.event(disc(agent("AG-0001"))).await;
    h.event(conn(device("WL-0001"))).await;
    h.published.wait_count("v1/status/WL-0001", 1).await;
    assert_eq!(h.published.on("v1/status/AG-0001").len(), 1);
    h.event(disc(agent("AG-0001"))).await;
    h.published.wait_count("v1/status/SL-0001", 2).await;
    assert_eq!(last("v1/status/AG-0001"), Some(("offline".into(), true)));
    assert_eq!(last("v1/status/SL-0001"), Some(("offline".into(), true)));
    // The twin's `online` goes out with the next twin round, after the status.
    let twin: Twin = h
        .published
        .wait_for("the twin of SL-0001 offline", |all| {
            let last = all.iter().rev().find(|m| m.topic == "v1/twin/SL-0001")?;
            let t: Twin = serde_json::from_slice(&last.payload).ok()?;
            (!t.online).then_some(t)
        })
        .await;
    assert!(!twin.online);
    h.event(disc(device("WL-0001"))).await;
    h.published.wait_count("v1/status/WL-0001", 2).await;
    assert_eq!(last("v1/status/WL-0001"), Some(("offline".into(), true)));
    h.shutdown().await;
}

/// Desired state from an app over MQTT: stored in the twin, delta, a `set` command to the
/// device's agent; bad updates dead-lettered.
async fn desired_state_over_mqtt<S: SeriesStore>(open: impl OpenStore<S>) {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start_in(dir.path(), &open).await;
    let cc = app("command-center", &["feeds/#", "twin/#"]);
    let rx = h
        .send(
            cc.clone(),
            "v1/twin/SL-0001/desired",
            r#"{"dimming_level": 40}"#,
        )
        .await;
    assert_eq!(disposition(rx).await, Disposition::Accepted);
    let cmd = h.published.wait_count("v1/agents/AG-0001/cmd", 1).await;
    let cmd: Command = serde_json::from_slice(&cmd[0].payload).unwrap();
    assert_eq!(cmd.name, "set");
    assert_eq!(cmd.device.as_deref(), Some("SL-0001"));
    assert_eq!(cmd.args["dimming_level"], serde_json::json!(40.0));
    let twin: Twin =
        serde_json::from_slice(&h.published.on("v1/twin/SL-0001").last().unwrap().payload).unwrap();
    assert_eq!(twin.desired["dimming_level"], Scalar::Number(40.0));
    assert_eq!(twin.delta["dimming_level"], Scalar::Number(40.0));

    for (body, label) in [
        (r#"{"lamp_power": 40}"#, "not_controllable"),
        (r#"{"dimming_level": "bright"}"#, "bad_value"),
        (r#"{"dimming_level": 40, "version": 0}"#, "version_conflict"),
        (r#"[1,2]"#, "bad_desired"),
    ] {
        let rx = h.send(cc.clone(), "v1/twin/SL-0001/desired", body).await;
        match disposition(rx).await {
            Disposition::Rejected(r) => assert!(r.starts_with(label), "{body}: {r}"),
            d => panic!("{body}: {d:?}"),
        }
    }
    let dls = deadletters(&h, "command-center");
    assert_eq!(dls.len(), 4);

    // The agent reports the new level: delta empties.
    let b = AgentBatch {
        agent: "AG-0001".into(),
        stream: 1,
        seq: 1,
        devices: vec![DeviceReadings {
            device: "SL-0001".into(),
            samples: vec![Sample {
                ts_ms: now_ms(),
                readings: vec![reading(Quantity::DimmingLevel, Value::Number(40.0))],
            }],
        }],
    };
    let rx = h
        .send(agent("AG-0001"), "v1/agents/AG-0001/batch", encode(&b))
        .await;
    assert_eq!(disposition(rx).await, Disposition::Accepted);
    h.published
        .wait_for("twin without delta", |msgs| {
            msgs.iter()
                .filter(|m| m.topic == "v1/twin/SL-0001")
                .map(|m| serde_json::from_slice::<Twin>(&m.payload).unwrap())
                .find(|t| t.delta.is_empty() && !t.desired.is_empty())
        })
        .await;
    h.shutdown().await;
}

/// Twins survive a restart: reported from the store, desired and version from the twin file.
async fn twins_survive_restart<S: Closable>(open: impl OpenStore<S>) {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let h = TestHub::start_in(dir.path(), &open).await;
        let rx = h
            .send(
                agent("AG-0001"),
                "v1/agents/AG-0001/batch",
                encode(&streetlight_batch(1)),
            )
            .await;
        assert_eq!(disposition(rx).await, Disposition::Accepted);
        let cc = app("command-center", &["twin/#"]);
        let rx = h
            .send(cc, "v1/twin/SL-0001/desired", r#"{"dimming_level": 10}"#)
            .await;
        assert_eq!(disposition(rx).await, Disposition::Accepted);
        let doc = h.hub.as_ref().unwrap().twins().document(1);
        h.shutdown().await.close_store().await;
        doc
    };
    let h = TestHub::start_in(dir.path(), &open).await;
    let after = h.hub.as_ref().unwrap().twins().document(1);
    assert_eq!(after.reported, before.reported);
    assert_eq!(after.desired, before.desired);
    assert_eq!(after.delta, before.delta);
    assert!(after.version >= before.version);
    // Published again at start, retained, for apps that connect after the restart.
    let retained = h.published.on("v1/twin/SL-0001");
    assert!(retained[0].retain);
    assert_eq!(
        serde_json::from_slice::<Twin>(&retained[0].payload)
            .unwrap()
            .desired,
        before.desired
    );
    h.shutdown().await;
}

/// The ingress may live on after `shutdown` starts (the broker is also the hub's publisher,
/// which the pipeline holds): shutdown still drains what was queued and then refuses more.
#[tokio::test]
async fn shutdown_drains_while_the_ingress_still_holds_a_sender() {
    let dir = tempfile::tempdir().unwrap();
    let open = ts_stores();
    let h = TestHub::start_in(dir.path(), &open).await;
    let kept = h.events.clone().unwrap();
    let mut pending = Vec::new();
    for i in 0..50 {
        let body = format!(r#"{{"ts":{},"values":{{"water_level":{i}}}}}"#, T0 + i);
        pending.push(
            h.send(device("WL-0001"), "v1/devices/WL-0001/telemetry", body)
                .await,
        );
    }
    let store = h.shutdown().await;
    for rx in pending {
        assert_eq!(disposition(rx).await, Disposition::Accepted);
    }
    assert_eq!(series(&*store, "WL-0001", Quantity::WaterLevel).len(), 50);
    let late = IngressEvent::Connected {
        principal: Arc::new(device("WL-0001")),
        client_id: "WL-0001".into(),
    };
    assert!(
        kept.send(late).await.is_err(),
        "the ingress queue is closed"
    );
}
