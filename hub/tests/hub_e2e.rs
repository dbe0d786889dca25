//! The whole hub (`hub::server::Server`: embedded broker, pipeline, store, HTTP API) on free
//! ports, driven by real clients: rumqttc, mosquitto_pub / mosquitto_sub and reqwest.
//!
//! Each test proves one promise of the contract from the outside: who gets in, who may speak
//! for whom, who sees what, what happens to garbage and oversized input, what survives a
//! restart, and what queries return across chunk boundaries and retention.
//! (The crash between receipt and acknowledgement is in `hub_e2e_crash.rs`.)

mod hub_e2e_support;

use base64::Engine as _;
use hub_e2e_support::*;
use protocols::batch::{Ack, encode};
use protocols::messages::{DeadLetter, Feed};
use protocols::{Quality, Quantity, Value};
use rumqttc::{ConnectReturnCode, ConnectionError, QoS, SubscribeReasonCode};

const OPS: (&str, &str) = ("ops", "ops-secret-123");
const WATER: (&str, &str) = ("water-dept", "water-secret-1");

fn refused_with(r: Result<Client, ConnectionError>) -> ConnectReturnCode {
    match r {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a CONNACK refusal, got {e}"),
        Ok(_) => panic!("expected a CONNACK refusal, the client got in"),
    }
}

fn dead_letter(p: &rumqttc::Publish) -> DeadLetter {
    serde_json::from_slice(&p.payload).unwrap()
}

/// The next dead letter of `client` about `topic` (others, e.g. refused subscriptions, are
/// skipped).
async fn dead_letter_about(ops: &mut Client, client: &str, topic: &str) -> DeadLetter {
    loop {
        let d = dead_letter(&ops.next_on(&format!("v1/deadletter/{client}")).await);
        if d.topic == topic {
            return d;
        }
    }
}

fn label(d: &DeadLetter) -> &str {
    d.reason.split(':').next().unwrap()
}

fn ack_of(p: &rumqttc::Publish) -> Ack {
    serde_json::from_slice(&p.payload).unwrap()
}

#[tokio::test]
async fn wrong_passwords_and_foreign_client_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = E2eHub::start(config(dir.path())).await;
    let addr = hub.mqtt;

    assert_eq!(
        refused_with(connect(addr, "WL-0001", "wrong-secret").await),
        ConnectReturnCode::BadUserNamePassword
    );
    assert_eq!(
        refused_with(connect(addr, "NOBODY-1", "wl-secret-0001").await),
        ConnectReturnCode::BadUserNamePassword
    );
    // Another device's secret does not open this device.
    assert_eq!(
        refused_with(connect(addr, "WL-0001", "wl-secret-0002").await),
        ConnectReturnCode::BadUserNamePassword
    );
    // The right secret, but a client id that is someone else's.
    assert_eq!(
        refused_with(connect_with(options(addr, "WL-0002", "WL-0001", "wl-secret-0001")).await),
        ConnectReturnCode::BadClientId
    );
    assert_eq!(
        refused_with(connect_with(options(addr, "water-dept", "ops", "ops-secret-123")).await),
        ConnectReturnCode::BadClientId
    );
    // A device behind an agent has no secret of its own: it cannot connect at all.
    assert_eq!(
        refused_with(connect(addr, "SL-0002", "").await),
        ConnectReturnCode::BadUserNamePassword
    );
    // An app may use `ID.suffix`.
    connect_with(options(addr, "ops.wall-screen", "ops", "ops-secret-123"))
        .await
        .unwrap();

    // mosquitto_pub with a wrong password: refused, nothing stored.
    let t = now_ms();
    let body = format!(r#"{{"ts":{t},"values":{{"water_level":1.5}}}}"#);
    let (ok, err) = mosquitto_pub(
        addr,
        "WL-0001",
        "not-the-secret",
        "v1/devices/WL-0001/telemetry",
        body.as_bytes(),
        1,
    )
    .await;
    assert!(!ok, "a wrong password must fail mosquitto_pub");
    assert!(
        err.to_lowercase().contains("not authori") || err.contains("refused"),
        "{err}"
    );
    // The right one: stored.
    let (ok, err) = mosquitto_pub(
        addr,
        "WL-0001",
        "wl-secret-0001",
        "v1/devices/WL-0001/telemetry",
        body.as_bytes(),
        1,
    )
    .await;
    assert!(ok, "{err}");
    let base = hub.base_url();
    assert_eq!(
        series(&base, "WL-0001", "water_level", t - 1, t + 1).await,
        vec![(t, 1.5)],
        "a QoS 1 publish is acknowledged only once stored"
    );
    hub.stop().await;
}

#[tokio::test]
async fn devices_and_agents_cannot_speak_for_others() {
    let dir = tempfile::tempdir().unwrap();
    let hub = E2eHub::start(config(dir.path())).await;
    let (addr, base) = (hub.mqtt, hub.base_url());
    let mut ops = connect(addr, OPS.0, OPS.1).await.unwrap();
    assert_eq!(
        ops.subscribe("v1/deadletter/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let t = now_ms();

    // A device publishing another device's telemetry.
    let mut wl1 = connect(addr, "WL-0001", "wl-secret-0001").await.unwrap();
    wl1.publish(
        "v1/devices/WL-0002/telemetry",
        QoS::AtLeastOnce,
        format!(r#"{{"ts":{t},"values":{{"water_level":9.99}}}}"#),
    )
    .await;
    let d = dead_letter(&ops.next_on("v1/deadletter/WL-0001").await);
    assert_eq!(
        (label(&d), d.topic.as_str()),
        ("refused", "v1/devices/WL-0002/telemetry")
    );
    // A device may not read feeds or commands of others.
    assert_eq!(
        wl1.subscribe("v1/feeds/#", QoS::AtMostOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
    assert_eq!(
        wl1.subscribe("v1/devices/WL-0002/cmd", QoS::AtMostOnce)
            .await,
        vec![SubscribeReasonCode::Failure]
    );
    // Refused subscriptions are dead letters too.
    let d = dead_letter_about(&mut ops, "WL-0001", "v1/feeds/#").await;
    assert_eq!(label(&d), "refused");

    // The same with mosquitto_pub (3.1.1 has no failure PUBACK: it is acknowledged, never
    // stored). It takes over the client id, so the rumqttc session ends first.
    drop(wl1);
    let (ok, err) = mosquitto_pub(
        addr,
        "WL-0001",
        "wl-secret-0001",
        "v1/devices/WL-0002/telemetry",
        format!(r#"{{"ts":{t},"values":{{"water_level":8.88}}}}"#).as_bytes(),
        1,
    )
    .await;
    assert!(ok, "{err}");
    let d = dead_letter_about(&mut ops, "WL-0001", "v1/devices/WL-0002/telemetry").await;
    assert_eq!(label(&d), "refused");
    // An agent publishing on another agent's topic.
    let mut ag1 = connect(addr, "AG-0001", "ag-secret-0001").await.unwrap();
    ag1.subscribe("v1/agents/AG-0001/ack", QoS::AtLeastOnce)
        .await;
    assert_eq!(
        ag1.subscribe("v1/agents/AG-0002/ack", QoS::AtLeastOnce)
            .await,
        vec![SubscribeReasonCode::Failure]
    );
    let mh = |seq| {
        batch(
            "AG-0002",
            5,
            seq,
            "MH-0001",
            vec![(t, vec![reading(Quantity::TiltAngle, 45.0)])],
        )
    };
    ag1.publish("v1/agents/AG-0002/batch", QoS::AtLeastOnce, encode(&mh(1)))
        .await;
    let d = dead_letter_about(&mut ops, "AG-0001", "v1/agents/AG-0002/batch").await;
    assert_eq!(label(&d), "refused");
    // On its own topic, but the batch claims to be the other agent's: never stored or acked.
    ag1.publish("v1/agents/AG-0001/batch", QoS::AtLeastOnce, encode(&mh(1)))
        .await;
    let d = dead_letter_about(&mut ops, "AG-0001", "v1/agents/AG-0001/batch").await;
    assert_eq!(label(&d), "agent_mismatch");
    // A batch of its own with a device of the other agent: that part refused, the rest kept.
    let mut mixed = batch(
        "AG-0001",
        5,
        2,
        "SL-0001",
        vec![(t, vec![reading(Quantity::LampPower, 61.5)])],
    );
    mixed.devices.push(mh(0).devices.remove(0));
    ag1.publish("v1/agents/AG-0001/batch", QoS::AtLeastOnce, encode(&mixed))
        .await;
    let d = dead_letter_about(&mut ops, "AG-0001", "v1/agents/AG-0001/batch").await;
    assert_eq!(label(&d), "device_not_of_agent");
    let ack = ack_of(&ag1.next_on("v1/agents/AG-0001/ack").await);
    assert!(
        ack.covers(2) && !ack.covers(1),
        "{ack:?}: the spoofed seq 1 is never acked"
    );
    assert_eq!(
        series(&base, "SL-0001", "lamp_power", t, t + 1).await,
        vec![(t, 61.5)]
    );
    assert!(
        series(&base, "MH-0001", "tilt_angle", t, t + 1)
            .await
            .is_empty()
    );
    assert!(
        series(&base, "WL-0002", "water_level", t, t + 1)
            .await
            .is_empty()
    );
    // An agent may not post telemetry as one of its devices either.
    ag1.publish(
        "v1/devices/SL-0001/telemetry",
        QoS::AtLeastOnce,
        format!(r#"{{"ts":{t},"values":{{"lamp_power":1.0}}}}"#),
    )
    .await;
    let d = dead_letter_about(&mut ops, "AG-0001", "v1/devices/SL-0001/telemetry").await;
    assert_eq!(label(&d), "refused");
    assert_eq!(metric(&base, "hub_readings_stored_total").await, 1.0);
    hub.stop().await;
}

#[tokio::test]
async fn apps_see_only_their_grants() {
    let dir = tempfile::tempdir().unwrap();
    let hub = E2eHub::start(config(dir.path())).await;
    let (addr, base) = (hub.mqtt, hub.base_url());
    let mut water = connect(addr, WATER.0, WATER.1).await.unwrap();
    for outside in [
        "v1/feeds/#",
        "v1/twin/SL-0001",
        "v1/deadletter/#",
        "v1/agents/+/batch",
        "#",
    ] {
        assert_eq!(
            water.subscribe(outside, QoS::AtMostOnce).await,
            vec![SubscribeReasonCode::Failure],
            "{outside}"
        );
    }
    assert_eq!(
        water
            .subscribe("v1/feeds/water_level/#", QoS::AtMostOnce)
            .await,
        vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]
    );
    let mut water_sub =
        MosquittoSub::start(addr, "water-dept.cli", WATER.1, "v1/feeds/water_level/#").await;
    let mut ops = connect(addr, OPS.0, OPS.1).await.unwrap();
    ops.subscribe("v1/feeds/#", QoS::AtMostOnce).await;
    // An app may publish desired state inside its grants only.
    water
        .publish(
            "v1/twin/SL-0001/desired",
            QoS::AtLeastOnce,
            r#"{"dimming_level":10}"#,
        )
        .await;

    // A streetlight feed first: ops sees it, the water department must not.
    let t = now_ms();
    let ag1 = connect(addr, "AG-0001", "ag-secret-0001").await.unwrap();
    ag1.publish(
        "v1/agents/AG-0001/batch",
        QoS::AtLeastOnce,
        encode(&batch(
            "AG-0001",
            9,
            1,
            "SL-0001",
            vec![(t, vec![reading(Quantity::LampPower, 75.0)])],
        )),
    )
    .await;
    let p = ops.next_on("v1/feeds/#").await;
    assert_eq!(p.topic, "v1/feeds/streetlight/SL-0001");
    // Then a water level feed. The hub published the streetlight feed before this one, so had
    // the water app been allowed it, that would be the first message it gets.
    let wl = connect(addr, "WL-0001", "wl-secret-0001").await.unwrap();
    wl.publish(
        "v1/devices/WL-0001/telemetry",
        QoS::AtLeastOnce,
        format!(r#"{{"ts":{t},"values":{{"water_level":2.5}}}}"#),
    )
    .await;
    let first = water
        .next(|i| match i {
            rumqttc::Incoming::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await;
    assert_eq!(first.topic, "v1/feeds/water_level/WL-0001");
    let feed: Feed = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(feed.device, "WL-0001");
    let (topic, payload) = water_sub.next_on("v1/#").await;
    assert_eq!(topic, "v1/feeds/water_level/WL-0001", "{payload}");
    water_sub.stop().await;

    // The HTTP API applies the same grants.
    let (status, list) = get_json(&base, "/api/v1/devices", Some(WATER)).await;
    assert_eq!(status, 200);
    let mut ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["WL-0001", "WL-0002"]);
    let (status, body) = get_json(
        &base,
        "/api/v1/series?device=SL-0001&quantity=lamp_power",
        Some(WATER),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].is_string());
    let (status, _) = get_json(
        &base,
        "/api/v1/series?device=SL-0001&quantity=lamp_power",
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = get_json(
        &base,
        "/api/v1/series?device=SL-0001&quantity=lamp_power",
        Some(("water-dept", "wrong")),
    )
    .await;
    assert_eq!(status, 401);
    // Devices and agents do not use the API.
    let (status, _) = get_json(
        &base,
        "/api/v1/devices",
        Some(("WL-0001", "wl-secret-0001")),
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = get_json(
        &base,
        &format!(
            "/api/v1/series?device=WL-0001&quantity=water_level&from={t}&to={}",
            t + 1
        ),
        Some(WATER),
    )
    .await;
    assert_eq!(
        (status.as_u16(), body["points"].clone()),
        (200, serde_json::json!([[t, 2.5]]))
    );
    // The refused desired state changed nothing.
    let (_, sl) = get_json(&base, "/api/v1/devices/SL-0001", Some(OPS)).await;
    assert_eq!(sl["twin"]["desired"], serde_json::json!({}));
    hub.stop().await;
}

#[tokio::test]
async fn garbage_and_half_valid_telemetry() {
    let dir = tempfile::tempdir().unwrap();
    let hub = E2eHub::start(config(dir.path())).await;
    let (addr, base) = (hub.mqtt, hub.base_url());
    let mut ops = connect(addr, OPS.0, OPS.1).await.unwrap();
    ops.subscribe("v1/deadletter/#", QoS::AtLeastOnce).await;
    ops.subscribe("v1/feeds/#", QoS::AtLeastOnce).await;
    let topic = "v1/devices/WL-0001/telemetry";
    let send = |payload: Vec<u8>| async move {
        let (ok, err) = mosquitto_pub(addr, "WL-0001", "wl-secret-0001", topic, &payload, 1).await;
        assert!(ok, "{err}");
    };

    // Not JSON at all.
    send(b"\x00\xffnot json {".to_vec()).await;
    let d = dead_letter(&ops.next_on("v1/deadletter/WL-0001").await);
    assert_eq!(
        (label(&d), d.client.as_str(), d.topic.as_str()),
        ("not_json", "WL-0001", topic)
    );
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&d.payload_b64)
            .unwrap(),
        b"\x00\xffnot json {"
    );
    send(b"[]".to_vec()).await;
    assert_eq!(
        label(&dead_letter(&ops.next_on("v1/deadletter/WL-0001").await)),
        "empty_batch"
    );
    send(b"42".to_vec()).await;
    assert_eq!(
        label(&dead_letter(&ops.next_on("v1/deadletter/WL-0001").await)),
        "not_object_or_array"
    );

    // Half valid: the good values are stored (converted), each bad one is dead-lettered alone.
    let t = now_ms();
    send(
        format!(
            r#"{{"ts":{t},"seq":7,"values":{{"water_level":2.31,"air_temperature":{{"value":68,"unit":"degF"}},"bogus_quantity":1,"turbidity":{{"value":5,"unit":"furlongs"}},"battery_level":"full","ph":{{"value":7}}}}}}"#
        )
        .into_bytes(),
    )
    .await;
    let mut labels = Vec::new();
    for _ in 0..3 {
        labels.push(label(&dead_letter(&ops.next_on("v1/deadletter/WL-0001").await)).to_string());
    }
    labels.sort();
    assert_eq!(
        labels,
        vec!["unknown_quantity", "unknown_unit", "wrong_type"]
    );
    let feed: Feed =
        serde_json::from_slice(&ops.next_on("v1/feeds/water_level/WL-0001").await.payload).unwrap();
    let mut names: Vec<&String> = feed.values.keys().collect();
    names.sort();
    assert_eq!(names, vec!["air_temperature", "ph", "water_level"]);
    assert_eq!(feed.seq, Some(7));
    assert_eq!(
        series(&base, "WL-0001", "water_level", t, t + 1).await,
        vec![(t, 2.31)]
    );
    let air = series(&base, "WL-0001", "air_temperature", t, t + 1).await;
    assert_eq!(air.len(), 1);
    assert!(
        (air[0].1 - 20.0).abs() < 1e-9,
        "68 degF is 20 Cel, got {}",
        air[0].1
    );
    assert!(
        series(&base, "WL-0001", "battery_level", t, t + 1)
            .await
            .is_empty()
    );

    // An array with a garbage element: the others are stored.
    send(
        format!(
            r#"[{{"ts":{},"values":{{"water_level":2.4}}}}, 17, {{"ts":{},"values":{{"water_level":2.5}}}}]"#,
            t + 1000,
            t + 2000
        )
        .into_bytes(),
    )
    .await;
    assert_eq!(
        label(&dead_letter(&ops.next_on("v1/deadletter/WL-0001").await)),
        "sample_not_object"
    );
    assert_eq!(
        series(&base, "WL-0001", "water_level", t, t + 3000).await,
        vec![(t, 2.31), (t + 1000, 2.4), (t + 2000, 2.5)]
    );
    // Quality: a value no sensor can measure is kept and marked bad; a time an hour ahead is
    // replaced by the hub's.
    let far = t + 3_600_000;
    let (ok, err) = mosquitto_pub(
        addr,
        "WL-0002",
        "wl-secret-0002",
        "v1/devices/WL-0002/telemetry",
        format!(r#"{{"ts":{far},"values":{{"water_level":5000}}}}"#).as_bytes(),
        1,
    )
    .await;
    assert!(ok, "{err}");
    let feed: Feed =
        serde_json::from_slice(&ops.next_on("v1/feeds/water_level/WL-0002").await.payload).unwrap();
    assert_eq!(feed.values["water_level"].quality, Quality::Bad);
    let pts = series(&base, "WL-0002", "water_level", t - 60_000, far + 1).await;
    assert_eq!(pts.len(), 1);
    assert!(pts[0].0 < far && pts[0].1 == 5000.0, "{pts:?}");
    assert_eq!(metric(&base, "hub_readings_stored_total").await, 6.0);
    hub.stop().await;
}

#[tokio::test]
async fn garbage_batches_never_stop_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub = E2eHub::start(config(dir.path())).await;
    let (addr, base) = (hub.mqtt, hub.base_url());
    let mut ops = connect(addr, OPS.0, OPS.1).await.unwrap();
    ops.subscribe("v1/deadletter/#", QoS::AtLeastOnce).await;
    let mut ag = connect(addr, "AG-0001", "ag-secret-0001").await.unwrap();
    ag.subscribe("v1/agents/AG-0001/ack", QoS::AtLeastOnce)
        .await;
    let topic = "v1/agents/AG-0001/batch";
    let t = now_ms();
    let good = |seq: u64| {
        encode(&batch(
            "AG-0001",
            3,
            seq,
            "SL-0001",
            vec![(
                t + seq as i64,
                vec![reading(Quantity::LampPower, seq as f64)],
            )],
        ))
    };
    let mut truncated = good(1);
    truncated.truncate(truncated.len() - 3);
    let mut trailing = good(1);
    trailing.push(0);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "malformed_batch"),
        (vec![0xde, 0xad, 0xbe, 0xef], "unknown_batch_version"),
        (
            vec![
                1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ],
            "malformed_batch",
        ),
        (truncated, "malformed_batch"),
        (trailing, "malformed_batch"),
        (
            b"{\"json\":\"is not a batch\"}".to_vec(),
            "unknown_batch_version",
        ),
    ];
    for (payload, want) in cases {
        ag.publish(topic, QoS::AtLeastOnce, payload).await;
        let d = dead_letter(&ops.next_on("v1/deadletter/AG-0001").await);
        assert_eq!(label(&d), want, "{}", d.reason);
    }
    // Bad parts inside a good batch: rejected alone, the rest stored and acknowledged.
    let mut b = batch(
        "AG-0001",
        3,
        1,
        "SL-0001",
        vec![(
            t,
            vec![
                reading(Quantity::LampPower, 61.5),
                reading(Quantity::LampVoltage, f64::NAN),
                protocols::batch::Reading {
                    quantity: 999,
                    value: Value::Number(1.0),
                    quality: Quality::Good,
                },
                protocols::batch::Reading {
                    quantity: Quantity::CoverOpen.code(),
                    value: Value::Number(1.0),
                    quality: Quality::Good,
                },
            ],
        )],
    );
    b.devices.push(protocols::batch::DeviceReadings {
        device: "NO-SUCH-DEVICE".into(),
        samples: vec![],
    });
    ag.publish(topic, QoS::AtLeastOnce, encode(&b)).await;
    let mut labels = Vec::new();
    for _ in 0..4 {
        labels.push(label(&dead_letter(&ops.next_on("v1/deadletter/AG-0001").await)).to_string());
    }
    labels.sort();
    assert_eq!(
        labels,
        vec![
            "not_finite",
            "unknown_device",
            "unknown_quantity",
            "wrong_type"
        ]
    );
    assert!(ack_of(&ag.next_on("v1/agents/AG-0001/ack").await).covers(1));
    // Garbage health and desired state as well.
    ag.publish("v1/agents/AG-0001/health", QoS::AtLeastOnce, "{{{")
        .await;
    assert_eq!(
        label(&dead_letter(&ops.next_on("v1/deadletter/AG-0001").await)),
        "bad_health"
    );
    ops.publish("v1/twin/SL-0001/desired", QoS::AtLeastOnce, "[1,2")
        .await;
    assert_eq!(
        label(&dead_letter(&ops.next_on("v1/deadletter/ops").await)),
        "bad_desired"
    );

    // Still serving: the same connection stores and acknowledges the next batch.
    ag.publish(topic, QoS::AtLeastOnce, good(2)).await;
    assert!(ack_of(&ag.next_on("v1/agents/AG-0001/ack").await).covers(2));
    assert_eq!(
        series(&base, "SL-0001", "lamp_power", t, t + 10).await,
        vec![(t, 61.5), (t + 2, 2.0)]
    );
    let (status, _) = get_json(&base, "/healthz", None).await;
    assert_eq!(status, 200);
    hub.stop().await;
}

#[tokio::test]
async fn oversized_payloads_are_refused_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.hub.max_packet_bytes = 2 << 20;
    let hub = E2eHub::start(cfg).await;
    let (addr, base) = (hub.mqtt, hub.base_url());
    let mut ops = connect(addr, OPS.0, OPS.1).await.unwrap();
    ops.subscribe("v1/deadletter/#", QoS::AtLeastOnce).await;
    let t = now_ms();

    // JSON telemetry over 64 KiB: dead-lettered; the connection stays and is still served.
    let mut wl = connect(addr, "WL-0001", "wl-secret-0001").await.unwrap();
    let mut big = format!(r#"{{"ts":{t},"values":{{"water_level":1.0}}}}"#).into_bytes();
    big.resize(70 * 1024, b' ');
    wl.publish("v1/devices/WL-0001/telemetry", QoS::AtLeastOnce, big)
        .await;
    assert_eq!(
        label(&dead_letter(&ops.next_on("v1/deadletter/WL-0001").await)),
        "too_large"
    );
    wl.publish(
        "v1/devices/WL-0001/telemetry",
        QoS::AtLeastOnce,
        format!(r#"{{"ts":{t},"values":{{"water_level":1.25}}}}"#),
    )
    .await;
    wl.next(|i| matches!(i, rumqttc::Incoming::PubAck(_)).then_some(()))
        .await;
    wl.next(|i| matches!(i, rumqttc::Incoming::PubAck(_)).then_some(()))
        .await;
    assert_eq!(
        series(&base, "WL-0001", "water_level", t, t + 1).await,
        vec![(t, 1.25)]
    );

    // A batch over 1 MiB (within the packet limit): dead-lettered, never acknowledged.
    let mut ag = connect(addr, "AG-0001", "ag-secret-0001").await.unwrap();
    ag.subscribe("v1/agents/AG-0001/ack", QoS::AtLeastOnce)
        .await;
    let samples: Vec<(i64, Vec<protocols::batch::Reading>)> = (0..110_000)
        .map(|i| (t + i, vec![reading(Quantity::LampPower, i as f64)]))
        .collect();
    let huge = encode(&batch("AG-0001", 4, 1, "SL-0001", samples));
    assert!(huge.len() > protocols::batch::MAX_BATCH_BYTES && huge.len() < 2 << 20);
    ag.publish("v1/agents/AG-0001/batch", QoS::AtLeastOnce, huge)
        .await;
    assert_eq!(
        label(&dead_letter(&ops.next_on("v1/deadletter/AG-0001").await)),
        "too_large"
    );

    // A packet over the broker's limit: that connection is closed, nobody else notices.
    let mut flood = connect(addr, "WL-0002", "wl-secret-0002").await.unwrap();
    flood
        .publish(
            "v1/devices/WL-0002/telemetry",
            QoS::AtLeastOnce,
            vec![b' '; 3 << 20],
        )
        .await;
    flood.closed().await;
    ag.publish(
        "v1/agents/AG-0001/batch",
        QoS::AtLeastOnce,
        encode(&batch(
            "AG-0001",
            4,
            2,
            "SL-0001",
            vec![(t, vec![reading(Quantity::LampPower, 7.0)])],
        )),
    )
    .await;
    let ack = ack_of(&ag.next_on("v1/agents/AG-0001/ack").await);
    assert!(ack.covers(2) && !ack.covers(1), "{ack:?}");
    assert_eq!(
        series(&base, "SL-0001", "lamp_power", t, t + 200_000).await,
        vec![(t, 7.0)]
    );
    // The closed client may come back.
    connect(addr, "WL-0002", "wl-secret-0002").await.unwrap();
    hub.stop().await;
}

#[tokio::test]
async fn restart_keeps_series_twins_desired_state_and_dedup() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = E2eHub::start(config(dir.path())).await;
    let t = now_ms() - 60_000;
    let sample = |seq: u64| {
        encode(&batch(
            "AG-0001",
            21,
            seq,
            "SL-0001",
            vec![(
                t + seq as i64 * 1000,
                vec![
                    reading(Quantity::LampPower, 60.0 + seq as f64),
                    reading(Quantity::DimmingLevel, 40.0),
                ],
            )],
        ))
    };
    let mut ag = connect(hub.mqtt, "AG-0001", "ag-secret-0001")
        .await
        .unwrap();
    ag.subscribe("v1/agents/AG-0001/ack", QoS::AtLeastOnce)
        .await;
    for seq in 1..=3 {
        ag.publish("v1/agents/AG-0001/batch", QoS::AtLeastOnce, sample(seq))
            .await;
        assert!(ack_of(&ag.next_on("v1/agents/AG-0001/ack").await).covers(seq));
    }
    let client = reqwest::Client::new();
    let resp = client
        .patch(format!("{}/api/v1/devices/SL-0001/desired", hub.base_url()))
        .header("authorization", "Bearer ops:ops-secret-123")
        .body(r#"{"dimming_level":80}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, before) = get_json(&hub.base_url(), "/api/v1/devices/SL-0001", Some(OPS)).await;
    let power_before = series(&hub.base_url(), "SL-0001", "lamp_power", t, t + 10_000).await;
    assert_eq!(power_before.len(), 3);
    drop(ag);

    hub.restart().await;
    let base = hub.base_url();
    assert_eq!(
        series(&base, "SL-0001", "lamp_power", t, t + 10_000).await,
        power_before
    );
    let (_, after) = get_json(&base, "/api/v1/devices/SL-0001", Some(OPS)).await;
    assert_eq!(after["twin"]["reported"], before["twin"]["reported"]);
    assert_eq!(
        after["twin"]["desired"],
        serde_json::json!({"dimming_level": 80.0})
    );
    assert!(after["twin"]["version"].as_u64() >= before["twin"]["version"].as_u64());
    // The retained twin is there again for a new subscriber (mosquitto_sub).
    let mut sub = MosquittoSub::start(hub.mqtt, "ops.twin", OPS.1, "v1/twin/SL-0001").await;
    let (_, twin) = sub.next_on("v1/twin/SL-0001").await;
    let twin: serde_json::Value = serde_json::from_str(&twin).unwrap();
    assert_eq!(twin["reported"]["lamp_power"]["value"], 63.0);
    sub.stop().await;

    // Dedup survives the restart: a redelivered batch is acknowledged again, not stored or
    // published again.
    let mut ops = connect(hub.mqtt, OPS.0, OPS.1).await.unwrap();
    ops.subscribe("v1/feeds/streetlight/SL-0001", QoS::AtLeastOnce)
        .await;
    let mut ag = connect(hub.mqtt, "AG-0001", "ag-secret-0001")
        .await
        .unwrap();
    ag.subscribe("v1/agents/AG-0001/ack", QoS::AtLeastOnce)
        .await;
    ag.publish("v1/agents/AG-0001/batch", QoS::AtLeastOnce, sample(2))
        .await;
    assert!(ack_of(&ag.next_on("v1/agents/AG-0001/ack").await).covers(2));
    ag.publish("v1/agents/AG-0001/batch", QoS::AtLeastOnce, sample(4))
        .await;
    assert!(ack_of(&ag.next_on("v1/agents/AG-0001/ack").await).covers(4));
    let feed: Feed =
        serde_json::from_slice(&ops.next_on("v1/feeds/streetlight/SL-0001").await.payload).unwrap();
    assert_eq!(
        feed.seq,
        Some(4),
        "the redelivered seq 2 is not published again"
    );
    assert_eq!(metric(&base, "hub_duplicates_total").await, 1.0);
    assert_eq!(metric(&base, "hub_readings_stored_total").await, 2.0);
    assert_eq!(
        series(&base, "SL-0001", "lamp_power", t, t + 10_000)
            .await
            .len(),
        4
    );
    hub.stop().await;
}

#[tokio::test]
async fn queries_across_chunk_boundaries_restart_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.hub.retention = protocols::config::HumanDuration::secs(30 * 86_400);
    let mut hub = E2eHub::start(cfg).await;
    // 2500 points one second apart: three chunks of at most 1000 points (two sealed, one head).
    let n = 2500i64;
    let start = (now_ms() - 3 * 3_600_000) / 1000 * 1000;
    let value = |i: i64| (i % 500) as f64 * 0.25;
    let mut ag = connect(hub.mqtt, "AG-0001", "ag-secret-0001")
        .await
        .unwrap();
    ag.subscribe("v1/agents/AG-0001/ack", QoS::AtLeastOnce)
        .await;
    for (seq, part) in (0..n).collect::<Vec<_>>().chunks(500).enumerate() {
        let samples = part
            .iter()
            .map(|&i| {
                (
                    start + i * 1000,
                    vec![reading(Quantity::LampPower, value(i))],
                )
            })
            .collect();
        let seq = seq as u64 + 1;
        ag.publish(
            "v1/agents/AG-0001/batch",
            QoS::AtLeastOnce,
            encode(&batch("AG-0001", 8, seq, "SL-0001", samples)),
        )
        .await;
        assert!(ack_of(&ag.next_on("v1/agents/AG-0001/ack").await).covers(seq));
    }
    // And points older than the retention: accepted, but never returned.
    let old = now_ms() - 40 * 86_400_000;
    ag.publish(
        "v1/agents/AG-0001/batch",
        QoS::AtLeastOnce,
        encode(&batch(
            "AG-0001",
            8,
            6,
            "SL-0001",
            (0..10)
                .map(|i| (old + i * 1000, vec![reading(Quantity::LampPower, 1.0)]))
                .collect(),
        )),
    )
    .await;
    assert!(ack_of(&ag.next_on("v1/agents/AG-0001/ack").await).covers(6));
    drop(ag);

    let expected: Vec<(i64, f64)> = (0..n).map(|i| (start + i * 1000, value(i))).collect();
    for round in 0..2 {
        let base = hub.base_url();
        let all = series(&base, "SL-0001", "lamp_power", start, start + n * 1000).await;
        assert_eq!(all, expected, "round {round}: every point, in order, exact");
        // Across the first chunk boundary (point 1000) and the second (2000).
        for edge in [1000i64, 2000] {
            let from = start + (edge - 7) * 1000;
            let to = start + (edge + 5) * 1000;
            let part = series(&base, "SL-0001", "lamp_power", from, to).await;
            assert_eq!(
                part,
                expected[(edge - 7) as usize..(edge + 5) as usize],
                "edge {edge}"
            );
        }
        // Buckets spanning chunks: 100 s averages and 700 s counts.
        let (status, body) = get_json(
            &base,
            &format!(
                "/api/v1/series?device=SL-0001&quantity=lamp_power&from={start}&to={}&step=100s&agg=avg",
                start + n * 1000
            ),
            Some(OPS),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let avg: Vec<(i64, f64)> = serde_json::from_value(body["points"].clone()).unwrap();
        assert_eq!(avg.len(), 25);
        for (k, (ts, v)) in avg.iter().enumerate() {
            let k = k as i64;
            let want: f64 = (k * 100..k * 100 + 100).map(value).sum::<f64>() / 100.0;
            assert_eq!(*ts, start + k * 100_000);
            assert!((v - want).abs() < 1e-9, "bucket {k}: {v} vs {want}");
        }
        let (_, body) = get_json(
            &base,
            &format!(
                "/api/v1/series?device=SL-0001&quantity=lamp_power&from={start}&to={}&step=700s&agg=count",
                start + n * 1000
            ),
            Some(OPS),
        )
        .await;
        let counts: Vec<(i64, f64)> = serde_json::from_value(body["points"].clone()).unwrap();
        assert_eq!(
            counts.iter().map(|c| c.1).collect::<Vec<_>>(),
            vec![700.0, 700.0, 700.0, 400.0]
        );
        assert!(
            series(&base, "SL-0001", "lamp_power", old - 1000, old + 60_000)
                .await
                .is_empty(),
            "round {round}: nothing older than the retention comes back"
        );
        if round == 0 {
            hub.restart().await;
        }
    }
    hub.stop().await;
}
