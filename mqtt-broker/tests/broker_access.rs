//! Who gets in and who may publish or subscribe where, with real clients (rumqttc 3.1.1 and
//! 5, mosquitto_pub/sub) against the embedded broker.

mod broker_support;

use std::time::Duration;

use broker_support::*;
use rumqttc::{ConnectReturnCode, ConnectionError, Incoming, QoS, SubscribeReasonCode};

async fn refused_v4(o: rumqttc::MqttOptions) -> ConnectReturnCode {
    match v4::connect(o).await {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got connected"),
    }
}

async fn refused_v5(o: rumqttc::v5::MqttOptions) -> rumqttc::v5::mqttbytes::v5::ConnectReturnCode {
    match v5::connect(o).await {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got connected"),
    }
}

#[tokio::test]
async fn connect_refusals_carry_the_right_codes() {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5;
    let b = TestBroker::start().await;
    // 3.1.1
    assert_eq!(
        refused_v4(v4::options(b.addr, "WL-1", "WL-1", "wrong")).await,
        ConnectReturnCode::BadUserNamePassword
    );
    assert_eq!(
        refused_v4(v4::options(b.addr, "nobody", "nobody", "x")).await,
        ConnectReturnCode::BadUserNamePassword
    );
    assert_eq!(
        refused_v4(v4::options(b.addr, "WL-2", "WL-1", "s1")).await,
        ConnectReturnCode::BadClientId
    );
    // An app may use `id.suffix`, but not another id.
    assert!(
        v4::connect(v4::options(b.addr, "ops.dash", "ops", "opss"))
            .await
            .is_ok()
    );
    assert_eq!(
        refused_v4(v4::options(b.addr, "narrow.x", "ops", "opss")).await,
        ConnectReturnCode::BadClientId
    );
    // A will on another device's topic.
    let mut o = v4::options(b.addr, "WL-1", "WL-1", "s1");
    o.set_last_will(rumqttc::LastWill::new(
        "v1/status/WL-2",
        "offline",
        QoS::AtLeastOnce,
        true,
    ));
    assert_eq!(refused_v4(o).await, ConnectReturnCode::NotAuthorized);
    // 5
    assert_eq!(
        refused_v5(v5::options(b.addr, "WL-1", "WL-1", "wrong")).await,
        V5::BadUserNamePassword
    );
    assert_eq!(
        refused_v5(v5::options(b.addr, "ghost", "ghost", "x")).await,
        V5::BadUserNamePassword
    );
    assert_eq!(
        refused_v5(v5::options(b.addr, "WL-2", "WL-1", "s1")).await,
        V5::ClientIdentifierNotValid
    );
    // mosquitto_pub, both versions, fails on a bad password.
    for v in ["mqttv311", "5"] {
        let (ok, err) = mosquitto_pub(
            b.port(),
            &[
                "-V",
                v,
                "-i",
                "WL-1",
                "-u",
                "WL-1",
                "-P",
                "bad",
                "-t",
                "v1/devices/WL-1/telemetry",
                "-m",
                "{}",
            ],
        )
        .await;
        assert!(!ok, "mosquitto_pub -V {v} must fail");
        assert!(
            err.to_lowercase().contains("password")
                || err.to_lowercase().contains("not authorised")
                || err.to_lowercase().contains("bad user"),
            "{err}"
        );
    }
    let m = b.broker.metrics();
    assert!(m.refused(mqtt_broker::RefuseReason::BadCredentials) >= 6);
    assert_eq!(m.refused(mqtt_broker::RefuseReason::ClientId), 3);
    assert_eq!(m.refused(mqtt_broker::RefuseReason::WillDenied), 1);
    // Nothing reached the pipeline from refused clients.
    assert!(
        b.pipeline
            .seen()
            .iter()
            .all(|s| matches!(s, Seen::Connected { client_id } | Seen::Disconnected { client_id, .. } if client_id == "ops.dash"))
    );
}

#[tokio::test]
async fn device_publishing_another_devices_telemetry_is_refused_and_not_routed() {
    let b = TestBroker::start().await;
    let mut watcher = v4::connect(v4::options(b.addr, "ops", "ops", "opss"))
        .await
        .unwrap();
    watcher
        .client
        .subscribe("v1/devices/+/telemetry", QoS::AtLeastOnce)
        .await
        .unwrap();
    watcher
        .next_incoming(|i| matches!(i, Incoming::SubAck(_)).then_some(()))
        .await;

    // mosquitto_pub as WL-1, QoS 1, on WL-2's topic: the client gets its PUBACK (no loop).
    let (ok, err) = mosquitto_pub(
        b.port(),
        &[
            "-V",
            "mqttv311",
            "-i",
            "WL-1",
            "-u",
            "WL-1",
            "-P",
            "s1",
            "-q",
            "1",
            "-t",
            "v1/devices/WL-2/telemetry",
            "-m",
            "forged",
        ],
    )
    .await;
    assert!(ok, "{err}");
    b.pipeline
        .wait_for("the refusal", |s| {
            s.iter().any(|e| matches!(e, Seen::Refused { who, topic, .. } if who == "WL-1" && topic == "v1/devices/WL-2/telemetry"))
        })
        .await;
    // Then its own topic, which goes through.
    let (ok, err) = mosquitto_pub(
        b.port(),
        &[
            "-V",
            "5",
            "-i",
            "WL-1",
            "-u",
            "WL-1",
            "-P",
            "s1",
            "-q",
            "1",
            "-t",
            "v1/devices/WL-1/telemetry",
            "-m",
            "mine",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let p = watcher
        .next_incoming(|i| match i {
            Incoming::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await;
    // The first publish the watcher sees is the legitimate one: the forged one was not routed.
    assert_eq!(p.topic, "v1/devices/WL-1/telemetry");
    assert_eq!(&p.payload[..], b"mine");
    assert!(
        b.pipeline
            .messages_on("v1/devices/WL-2/telemetry")
            .is_empty()
    );
    assert_eq!(
        b.pipeline.messages_on("v1/devices/WL-1/telemetry"),
        vec![b"mine".to_vec()]
    );
    assert_eq!(
        b.broker
            .metrics()
            .publishes_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn refused_publish_gets_puback_0x87_in_v5() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
    let b = TestBroker::start().await;
    let mut c = v5::connect(v5::options(b.addr, "AG-1", "AG-1", "a1"))
        .await
        .unwrap();
    c.client
        .publish(
            "v1/agents/AG-9/batch",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "x",
        )
        .await
        .unwrap();
    let reason = c
        .next_incoming(|p| match p {
            Packet::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .await;
    assert_eq!(reason, PubAckReason::NotAuthorized);
    assert_eq!(b.pipeline.refusals_of("v1/agents/AG-9/batch"), 1);
    assert!(b.pipeline.messages_on("v1/agents/AG-9/batch").is_empty());
}

#[tokio::test]
async fn app_subscriptions_stay_inside_grants() {
    let b = TestBroker::start().await;
    let mut app = v4::connect(v4::options(b.addr, "narrow.1", "narrow", "ns"))
        .await
        .unwrap();
    app.client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("v1/feeds/water_level/#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("v1/feeds/#".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("#".into(), QoS::AtMostOnce),
        ])
        .await
        .unwrap();
    let codes = app
        .next_incoming(|i| match i {
            Incoming::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Failure
        ]
    );
    b.pipeline
        .wait_for("two refusals", |s| {
            s.iter()
                .filter(|e| matches!(e, Seen::Refused { .. }))
                .count()
                == 2
        })
        .await;
    // The hub's feed inside the grant arrives; one outside does not.
    use mqtt_broker::ingress::{Outbound, Publisher};
    b.broker.publish(Outbound {
        topic: "v1/feeds/camera/CAM-1".into(),
        payload: "outside".into(),
        retain: false,
        at_most_once: false,
    });
    b.broker.publish(Outbound {
        topic: "v1/feeds/water_level/WL-1".into(),
        payload: "inside".into(),
        retain: false,
        at_most_once: false,
    });
    let p = app
        .next_incoming(|i| match i {
            Incoming::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await;
    assert_eq!(p.topic, "v1/feeds/water_level/WL-1");

    // mosquitto_sub -V 5 outside its grants: SUBACK failure, mosquitto_sub says so.
    let mut sub = MosquittoSub::spawn(
        "127.0.0.1",
        b.port(),
        &[
            "-V",
            "5",
            "-i",
            "narrow.2",
            "-u",
            "narrow",
            "-P",
            "ns",
            "-t",
            "v1/twin/#",
        ],
    )
    .await;
    let line = sub.next_line().await;
    assert!(
        line.contains("denied")
            || line.contains("Not authorized")
            || line.contains("not authorised"),
        "{line}"
    );
}

#[tokio::test]
async fn app_publishes_desired_state_only_inside_grants() {
    let b = TestBroker::start().await;
    let mut dev_sub = MosquittoSub::spawn(
        "127.0.0.1",
        b.port(),
        &[
            "-V",
            "mqttv311",
            "-i",
            "ops.w",
            "-u",
            "ops",
            "-P",
            "opss",
            "-t",
            "v1/twin/+/desired",
            "-v",
        ],
    )
    .await;
    b.pipeline
        .wait_for("the watcher", |s| {
            s.iter()
                .any(|e| matches!(e, Seen::Connected { client_id } if client_id == "ops.w"))
        })
        .await;
    // A subscribe is acknowledged before the first publish below goes out: wait for its
    // session to hold the subscription.
    let deadline = tokio::time::Instant::now() + WAIT;
    while b
        .broker
        .metrics()
        .subscriptions
        .load(std::sync::atomic::Ordering::Relaxed)
        < 1
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // `narrow` has only feeds grants: its desired state is refused.
    let (ok, _) = mosquitto_pub(
        b.port(),
        &[
            "-V",
            "5",
            "-i",
            "narrow",
            "-u",
            "narrow",
            "-P",
            "ns",
            "-q",
            "1",
            "-t",
            "v1/twin/SL-1/desired",
            "-m",
            "{\"dimming_level\":10}",
        ],
    )
    .await;
    assert!(ok);
    // `ops` has twin/#: accepted, handed to the pipeline and routed.
    let (ok, err) = mosquitto_pub(
        b.port(),
        &[
            "-V",
            "mqttv311",
            "-i",
            "ops.cli",
            "-u",
            "ops",
            "-P",
            "opss",
            "-q",
            "1",
            "-t",
            "v1/twin/SL-1/desired",
            "-m",
            "{\"dimming_level\":40}",
        ],
    )
    .await;
    assert!(ok, "{err}");
    // And an app may not publish a feed even inside its grants.
    let (ok, _) = mosquitto_pub(
        b.port(),
        &[
            "-V",
            "mqttv311",
            "-i",
            "ops.cli",
            "-u",
            "ops",
            "-P",
            "opss",
            "-t",
            "v1/feeds/water_level/WL-1",
            "-m",
            "{}",
        ],
    )
    .await;
    assert!(ok);
    assert_eq!(
        dev_sub.next_line().await,
        "v1/twin/SL-1/desired {\"dimming_level\":40}"
    );
    b.pipeline
        .wait_for("both refusals", |s| {
            s.iter()
                .filter(|e| matches!(e, Seen::Refused { .. }))
                .count()
                == 2
        })
        .await;
    assert_eq!(
        b.pipeline.messages_on("v1/twin/SL-1/desired"),
        vec![b"{\"dimming_level\":40}".to_vec()]
    );
    assert_eq!(b.pipeline.refusals_of("v1/feeds/water_level/WL-1"), 1);
}

#[tokio::test]
async fn device_subscribes_only_to_its_own_commands() {
    let b = TestBroker::start().await;
    let mut d = v4::connect(v4::options(b.addr, "WL-1", "WL-1", "s1"))
        .await
        .unwrap();
    d.client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("v1/devices/WL-1/cmd".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("v1/devices/WL-2/cmd".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("v1/devices/+/cmd".into(), QoS::AtLeastOnce),
        ])
        .await
        .unwrap();
    let codes = d
        .next_incoming(|i| match i {
            Incoming::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Failure
        ]
    );
    use mqtt_broker::ingress::{Outbound, Publisher};
    b.broker.publish(Outbound {
        topic: "v1/devices/WL-2/cmd".into(),
        payload: "not yours".into(),
        retain: false,
        at_most_once: false,
    });
    b.broker.publish(Outbound {
        topic: "v1/devices/WL-1/cmd".into(),
        payload: "{\"id\":\"1\",\"name\":\"set\"}".into(),
        retain: false,
        at_most_once: false,
    });
    let p = d
        .next_incoming(|i| match i {
            Incoming::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await;
    assert_eq!(p.topic, "v1/devices/WL-1/cmd");
    assert_eq!(p.qos, QoS::AtLeastOnce);
}

#[tokio::test]
async fn ipv4_and_ipv6_listeners_coexist_on_one_port() {
    // Find a port free on both families, then listen on both at once.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let b = TestBroker::start_with(|c| {
        c.listen = vec![
            format!("127.0.0.1:{port}").parse().unwrap(),
            format!("[::1]:{port}").parse().unwrap(),
        ];
    })
    .await;
    assert_eq!(b.broker.local_addrs().len(), 2);
    let mut sub = MosquittoSub::spawn(
        "::1",
        port,
        &[
            "-V",
            "5",
            "-i",
            "WL-1",
            "-u",
            "WL-1",
            "-P",
            "s1",
            "-t",
            "v1/devices/WL-1/cmd",
            "-C",
            "1",
        ],
    )
    .await;
    b.pipeline
        .wait_for("the v6 client", |s| {
            s.iter()
                .any(|e| matches!(e, Seen::Connected { client_id } if client_id == "WL-1"))
        })
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while b
        .broker
        .metrics()
        .subscriptions
        .load(std::sync::atomic::Ordering::Relaxed)
        < 1
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Published over IPv4 by an app, through the hub to the IPv6 subscriber.
    use mqtt_broker::ingress::{Outbound, Publisher};
    b.broker.publish(Outbound {
        topic: "v1/devices/WL-1/cmd".into(),
        payload: "over-v6".into(),
        retain: false,
        at_most_once: false,
    });
    assert_eq!(sub.next_line().await, "over-v6");
    assert_eq!(sub.exit_code().await, Some(0));
    let v4c = v4::connect(v4::options(b.addr, "ops", "ops", "opss")).await;
    assert!(v4c.is_ok());
}

#[tokio::test]
async fn metrics_render_with_the_hub_prefix() {
    let b = TestBroker::start().await;
    let _c = v4::connect(v4::options(b.addr, "ops", "ops", "opss"))
        .await
        .unwrap();
    let mut registry = prometheus_client::registry::Registry::with_prefix("hub");
    registry
        .sub_registry_with_prefix("mqtt")
        .register_collector(Box::new(mqtt_broker::MetricsCollector::new(
            b.broker.metrics().clone(),
        )));
    let mut s = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut s, &registry).unwrap();
    assert!(s.contains("hub_mqtt_connections 1\n"), "{s}");
    assert!(s.contains("hub_mqtt_connects_total 1\n"), "{s}");
}
