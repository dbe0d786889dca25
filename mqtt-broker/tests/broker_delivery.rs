//! What is acknowledged when, and what reaches whom: QoS 1/2 flows tied to the pipeline's
//! `done`, QoS downgrade, retained messages, MQTT 5 subscription options, shared
//! subscriptions, persistent sessions, takeover and slow subscribers.

mod broker_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use broker_support::*;
use mqtt_broker::ingress::{Disposition, Outbound, Publisher};
use rumqttc::{Incoming, QoS};
use tokio::io::AsyncWriteExt;

fn feed(topic: &str, payload: &str, retain: bool) -> Outbound {
    Outbound {
        topic: topic.into(),
        payload: payload.to_string().into(),
        retain,
        at_most_once: false,
    }
}

#[tokio::test]
async fn qos1_puback_waits_for_done_and_keeps_receipt_order() {
    let b = TestBroker::start().await;
    *b.pipeline.answer.lock() = Answer::Hold;
    let mut c = v4::connect(v4::options(b.addr, "WL-1", "WL-1", "s1"))
        .await
        .unwrap();
    for i in 0..3 {
        c.client
            .publish(
                "v1/devices/WL-1/telemetry",
                QoS::AtLeastOnce,
                false,
                format!("m{i}"),
            )
            .await
            .unwrap();
    }
    b.pipeline
        .wait_for("three messages held", |s| {
            s.iter()
                .filter(|e| matches!(e, Seen::Message { acked: true, .. }))
                .count()
                == 3
        })
        .await;
    // All three are in the pipeline and none is durable yet: no PUBACK may have been sent.
    let (early, err) = c.collect_for(Duration::from_millis(300)).await;
    assert!(err.is_none());
    assert!(
        !early.iter().any(|i| matches!(i, Incoming::PubAck(_))),
        "PUBACK before done: {early:?}"
    );
    // Answer the last first: acknowledgements still go out in the order of receipt.
    let held: Vec<_> = b.pipeline.held.lock().drain(..).collect();
    assert_eq!(held.len(), 3);
    for tx in held.into_iter().rev() {
        tx.send(Disposition::Accepted).unwrap();
    }
    let mut acked = Vec::new();
    while acked.len() < 3 {
        acked.push(
            c.next_incoming(|i| match i {
                Incoming::PubAck(a) => Some(a.pkid),
                _ => None,
            })
            .await,
        );
    }
    assert_eq!(acked, vec![1, 2, 3]);
}

#[tokio::test]
async fn dropped_done_is_never_acknowledged() {
    let b = TestBroker::start().await;
    *b.pipeline.answer.lock() = Answer::Drop;
    let mut c = v4::connect(v4::options(b.addr, "WL-1", "WL-1", "s1"))
        .await
        .unwrap();
    c.client
        .publish(
            "v1/devices/WL-1/telemetry",
            QoS::AtLeastOnce,
            false,
            "lost?",
        )
        .await
        .unwrap();
    b.pipeline
        .wait_for("the first message", |s| {
            s.iter().any(|e| matches!(e, Seen::Message { .. }))
        })
        .await;
    *b.pipeline.answer.lock() = Answer::Accept;
    c.client
        .publish("v1/devices/WL-1/telemetry", QoS::AtLeastOnce, false, "kept")
        .await
        .unwrap();
    // The second is acknowledged; the first never was (the client keeps it for redelivery).
    let mut acks = Vec::new();
    loop {
        let pid = c
            .next_incoming(|i| match i {
                Incoming::PubAck(a) => Some(a.pkid),
                _ => None,
            })
            .await;
        acks.push(pid);
        if pid == 2 {
            break;
        }
    }
    assert_eq!(acks, vec![2]);
}

/// Publishes one QoS 1 message as the MQTT 5 client WL-1 while the pipeline answers `answer`;
/// the PUBACK's reason.
async fn v5_puback_reason(
    b: &TestBroker,
    answer: Answer,
) -> rumqttc::v5::mqttbytes::v5::PubAckReason {
    use rumqttc::v5::mqttbytes::v5::Packet;
    *b.pipeline.answer.lock() = answer;
    let mut c = v5::connect(v5::options(b.addr, "WL-1", "WL-1", "s1"))
        .await
        .unwrap();
    c.client
        .publish(
            "v1/devices/WL-1/telemetry",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "{}",
        )
        .await
        .unwrap();
    c.next_incoming(|p| match p {
        Packet::PubAck(a) => Some(a.reason),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn rejected_message_is_acknowledged_with_a_reason_in_v5() {
    let b = TestBroker::start().await;
    assert_eq!(
        v5_puback_reason(&b, Answer::Reject("unknown quantity".into())).await,
        rumqttc::v5::mqttbytes::v5::PubAckReason::ImplementationSpecificError
    );
}

#[tokio::test]
async fn no_room_is_quota_exceeded_in_v5_and_no_acknowledgement_in_3_1_1() {
    let b = TestBroker::start().await;
    assert_eq!(
        v5_puback_reason(&b, Answer::NoRoom("free disk space is low".into())).await,
        rumqttc::v5::mqttbytes::v5::PubAckReason::QuotaExceeded
    );

    // 3.1.1: the first publish is not acknowledged; once there is room the next one is.
    let mut c4 = v4::connect(v4::options(b.addr, "WL-2", "WL-2", "s2"))
        .await
        .unwrap();
    c4.client
        .publish("v1/devices/WL-2/telemetry", QoS::AtLeastOnce, false, "a")
        .await
        .unwrap();
    b.pipeline
        .wait_for("the 3.1.1 client's first message", |s| {
            s.iter()
                .any(|e| matches!(e, Seen::Message { client_id, .. } if client_id == "WL-2"))
        })
        .await;
    *b.pipeline.answer.lock() = Answer::Accept;
    c4.client
        .publish("v1/devices/WL-2/telemetry", QoS::AtLeastOnce, false, "b")
        .await
        .unwrap();
    let pid = c4
        .next_incoming(|i| match i {
            Incoming::PubAck(a) => Some(a.pkid),
            _ => None,
        })
        .await;
    assert_eq!(pid, 2, "the refused publish (pid 1) was acknowledged");
}

#[tokio::test]
async fn qos2_flow_delivers_exactly_once() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5::Packet;
    let b = TestBroker::start().await;
    let mut sub = v5::connect(v5::options(b.addr, "ops", "ops", "opss"))
        .await
        .unwrap();
    sub.client
        .subscribe("v1/devices/WL-1/telemetry", Q5::ExactlyOnce)
        .await
        .unwrap();
    sub.next_incoming(|p| matches!(p, Packet::SubAck(_)).then_some(()))
        .await;
    let mut publ = v5::connect(v5::options(b.addr, "WL-1", "WL-1", "s1"))
        .await
        .unwrap();
    publ.client
        .publish("v1/devices/WL-1/telemetry", Q5::ExactlyOnce, false, "once")
        .await
        .unwrap();
    publ.next_incoming(|p| matches!(p, Packet::PubRec(_)).then_some(()))
        .await;
    publ.next_incoming(|p| matches!(p, Packet::PubComp(_)).then_some(()))
        .await;
    let got = sub
        .next_incoming(|p| match p {
            Packet::Publish(p) => Some((p.qos, p.payload.clone())),
            _ => None,
        })
        .await;
    assert_eq!(got, (Q5::ExactlyOnce, "once".into()));
    // The subscriber completes its side (rumqttc sends PUBREC, we PUBREL, it PUBCOMPs).
    let deadline = tokio::time::Instant::now() + WAIT;
    while b.broker.metrics().messages_out.load(Ordering::Relaxed) < 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(b.pipeline.messages_on("v1/devices/WL-1/telemetry").len(), 1);
    // mosquitto_pub at QoS 2, both versions, completes the flow too.
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
                "s1",
                "-q",
                "2",
                "-t",
                "v1/devices/WL-1/telemetry",
                "-m",
                v,
            ],
        )
        .await;
        assert!(ok, "{v}: {err}");
    }
    assert_eq!(b.pipeline.messages_on("v1/devices/WL-1/telemetry").len(), 3);
}

#[tokio::test]
async fn qos_is_downgraded_to_the_subscription() {
    let b = TestBroker::start().await;
    let mut q0 = v4::connect(v4::options(b.addr, "ops.q0", "ops", "opss"))
        .await
        .unwrap();
    q0.client
        .subscribe("v1/devices/WL-1/telemetry", QoS::AtMostOnce)
        .await
        .unwrap();
    q0.next_incoming(|i| matches!(i, Incoming::SubAck(_)).then_some(()))
        .await;
    let mut q2 = v4::connect(v4::options(b.addr, "ops.q2", "ops", "opss"))
        .await
        .unwrap();
    q2.client
        .subscribe("v1/devices/WL-1/telemetry", QoS::ExactlyOnce)
        .await
        .unwrap();
    q2.next_incoming(|i| matches!(i, Incoming::SubAck(_)).then_some(()))
        .await;
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
            "v1/devices/WL-1/telemetry",
            "-m",
            "x",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let qos_of = |i: &Incoming| match i {
        Incoming::Publish(p) => Some(p.qos),
        _ => None,
    };
    // QoS 1 published: the QoS 0 subscriber gets 0, the QoS 2 one gets 1 (not 2).
    assert_eq!(q0.next_incoming(qos_of).await, QoS::AtMostOnce);
    assert_eq!(q2.next_incoming(qos_of).await, QoS::AtLeastOnce);
}

#[tokio::test]
async fn hub_messages_marked_at_most_once_go_out_at_qos_0() {
    let b = TestBroker::start().await;
    let mut q2 = v4::connect(v4::options(b.addr, "ops.q2", "ops", "opss"))
        .await
        .unwrap();
    q2.client
        .subscribe("v1/twin/#", QoS::ExactlyOnce)
        .await
        .unwrap();
    q2.next_incoming(|i| matches!(i, Incoming::SubAck(_)).then_some(()))
        .await;
    b.broker.publish(Outbound {
        at_most_once: true,
        ..feed("v1/twin/SL-1", "command", false)
    });
    b.broker.publish(feed("v1/twin/SL-2", "feed", false));
    let got = |i: &Incoming| match i {
        Incoming::Publish(p) => Some((p.topic.clone(), p.qos)),
        _ => None,
    };
    assert_eq!(
        q2.next_incoming(got).await,
        ("v1/twin/SL-1".to_string(), QoS::AtMostOnce)
    );
    assert_eq!(
        q2.next_incoming(got).await,
        ("v1/twin/SL-2".to_string(), QoS::AtLeastOnce)
    );
}

#[tokio::test]
async fn retained_messages_are_delivered_on_subscribe_and_cleared() {
    let b = TestBroker::start().await;
    b.broker
        .publish(feed("v1/twin/SL-1", "{\"version\":1}", true));
    b.broker
        .publish(feed("v1/twin/SL-2", "{\"version\":7}", true));
    assert_eq!(b.broker.metrics().retained.load(Ordering::Relaxed), 2);
    let mut sub = MosquittoSub::spawn(
        "127.0.0.1",
        b.port(),
        &[
            "-V",
            "5",
            "-i",
            "ops.r",
            "-u",
            "ops",
            "-P",
            "opss",
            "-t",
            "v1/twin/SL-1",
            "-F",
            "%r %t %p",
            "-C",
            "1",
        ],
    )
    .await;
    assert_eq!(sub.next_line().await, "1 v1/twin/SL-1 {\"version\":1}");
    // Cleared by an empty retained payload: the next subscriber gets only live messages.
    b.broker.publish(feed("v1/twin/SL-1", "", true));
    assert_eq!(b.broker.metrics().retained.load(Ordering::Relaxed), 1);
    let mut c = v4::connect(v4::options(b.addr, "ops.r2", "ops", "opss"))
        .await
        .unwrap();
    c.client
        .subscribe("v1/twin/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    let first = c
        .next_incoming(|i| match i {
            Incoming::Publish(p) => Some((p.topic.clone(), p.retain)),
            _ => None,
        })
        .await;
    assert_eq!(first, ("v1/twin/SL-2".to_string(), true));
    b.broker.publish(feed("v1/twin/SL-3", "live", false));
    let next = c
        .next_incoming(|i| match i {
            Incoming::Publish(p) => Some((p.topic.clone(), p.retain)),
            _ => None,
        })
        .await;
    assert_eq!(next, ("v1/twin/SL-3".to_string(), false));
    // A device's retained status (its will or its own publish) is kept too.
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
            "-r",
            "-t",
            "v1/status/WL-1",
            "-m",
            "online",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let mut st = MosquittoSub::spawn(
        "127.0.0.1",
        b.port(),
        &[
            "-V",
            "mqttv311",
            "-i",
            "ops.s",
            "-u",
            "ops",
            "-P",
            "opss",
            "-t",
            "v1/status/#",
            "-v",
            "-C",
            "1",
        ],
    )
    .await;
    assert_eq!(st.next_line().await, "v1/status/WL-1 online");
}

#[tokio::test]
async fn v5_subscription_options_are_honoured() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet, RetainForwardRule};
    let b = TestBroker::start().await;
    b.broker.publish(feed("v1/twin/SL-1", "retained", true));
    let mut c = v5::connect(v5::options(b.addr, "ops.v5", "ops", "opss"))
        .await
        .unwrap();
    let mut no_local = Filter::new("v1/twin/+/desired", Q5::AtLeastOnce);
    no_local.nolocal = true;
    let mut never = Filter::new("v1/twin/+", Q5::AtLeastOnce);
    never.retain_forward_rule = RetainForwardRule::Never;
    never.preserve_retain = true;
    c.client.subscribe_many([no_local, never]).await.unwrap();
    c.next_incoming(|p| matches!(p, Packet::SubAck(_)).then_some(()))
        .await;
    // Its own desired-state publish is not echoed back (no local)...
    c.client
        .publish("v1/twin/SL-1/desired", Q5::AtLeastOnce, false, "mine")
        .await
        .unwrap();
    // ...but another client's is; and the retained twin was not sent on subscribe (handling 2),
    // while a live retained publish keeps its flag (retain as published).
    let (ok, err) = mosquitto_pub(
        b.port(),
        &[
            "-V",
            "5",
            "-i",
            "ops.other",
            "-u",
            "ops",
            "-P",
            "opss",
            "-q",
            "1",
            "-t",
            "v1/twin/SL-1/desired",
            "-m",
            "theirs",
        ],
    )
    .await;
    assert!(ok, "{err}");
    b.broker
        .publish(feed("v1/twin/SL-2", "live-retained", true));
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(
            c.next_incoming(|p| match p {
                Packet::Publish(p) => {
                    Some((String::from_utf8_lossy(&p.payload).into_owned(), p.retain))
                }
                _ => None,
            })
            .await,
        );
    }
    assert_eq!(
        got,
        vec![
            ("theirs".to_string(), false),
            ("live-retained".to_string(), true)
        ]
    );
}

#[tokio::test]
async fn shared_subscription_spreads_messages() {
    let b = TestBroker::start().await;
    let mut subs = Vec::new();
    for i in 0..2 {
        let mut c = v4::connect(v4::options(b.addr, &format!("ops.g{i}"), "ops", "opss"))
            .await
            .unwrap();
        c.client
            .subscribe("$share/workers/v1/feeds/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let code = c
            .next_incoming(|i| match i {
                Incoming::SubAck(s) => Some(s.return_codes.clone()),
                _ => None,
            })
            .await;
        assert_eq!(
            code,
            vec![rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
        );
        subs.push(c);
    }
    for i in 0..4 {
        b.broker
            .publish(feed(&format!("v1/feeds/water_level/WL-{i}"), "x", false));
    }
    for c in &mut subs {
        for _ in 0..2 {
            c.next_incoming(|i| matches!(i, Incoming::Publish(_)).then_some(()))
                .await;
        }
    }
    // Inside a share, the grant still applies to the inner filter.
    let mut n = v4::connect(v4::options(b.addr, "narrow", "narrow", "ns"))
        .await
        .unwrap();
    n.client
        .subscribe("$share/x/v1/twin/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let code = n
        .next_incoming(|i| match i {
            Incoming::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await;
    assert_eq!(code, vec![rumqttc::SubscribeReasonCode::Failure]);
}

#[tokio::test]
async fn persistent_session_receives_what_was_queued_while_away() {
    let b = TestBroker::start().await;
    let mut o = v4::options(b.addr, "ops.p", "ops", "opss");
    o.set_clean_session(false);
    let mut c = v4::connect(o.clone()).await.unwrap();
    assert!(!c.session_present);
    c.client
        .subscribe("v1/feeds/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    c.next_incoming(|i| matches!(i, Incoming::SubAck(_)).then_some(()))
        .await;
    c.client.disconnect().await.unwrap();
    b.pipeline
        .wait_for("the disconnect", |s| {
            s.iter().any(|e| matches!(e, Seen::Disconnected { client_id, graceful: true } if client_id == "ops.p"))
        })
        .await;
    drop(c);
    for i in 0..3 {
        b.broker
            .publish(feed("v1/feeds/water_level/WL-1", &format!("q{i}"), false));
    }
    let mut c = v4::connect(o.clone()).await.unwrap();
    assert!(c.session_present);
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(
            c.next_incoming(|i| match i {
                Incoming::Publish(p) => Some(String::from_utf8_lossy(&p.payload).into_owned()),
                _ => None,
            })
            .await,
        );
    }
    assert_eq!(got, vec!["q0", "q1", "q2"]);
    // mosquitto_sub with a persistent session (-c) as well, in MQTT 5 (session expiry).
    let args = [
        "-V",
        "5",
        "-i",
        "ops.m",
        "-u",
        "ops",
        "-P",
        "opss",
        "-c",
        "-x",
        "600",
        "-q",
        "1",
        "-t",
        "v1/twin/#",
    ];
    let mut s = MosquittoSub::spawn("127.0.0.1", b.port(), &args).await;
    wait_subscriptions(&b, 2).await;
    s.kill();
    s.exit_code().await;
    b.pipeline
        .wait_for("mosquitto_sub gone", |ev| {
            ev.iter()
                .any(|e| matches!(e, Seen::Disconnected { client_id, .. } if client_id == "ops.m"))
        })
        .await;
    b.broker.publish(feed("v1/twin/WL-1", "while-away", false));
    let mut s = MosquittoSub::spawn("127.0.0.1", b.port(), &args).await;
    assert_eq!(s.next_line().await, "while-away");
}

#[tokio::test]
async fn second_connection_takes_the_session_over() {
    let b = TestBroker::start().await;
    let mut first = v4::connect(v4::options(b.addr, "WL-1", "WL-1", "s1"))
        .await
        .unwrap();
    let mut second = v4::connect(v4::options(b.addr, "WL-1", "WL-1", "s1"))
        .await
        .unwrap();
    // The first connection is closed by the broker.
    let err = first.wait_error().await;
    assert!(!err.is_empty());
    assert_eq!(b.broker.metrics().takeovers.load(Ordering::Relaxed), 1);
    second
        .client
        .subscribe("v1/devices/WL-1/cmd", QoS::AtLeastOnce)
        .await
        .unwrap();
    second
        .next_incoming(|i| matches!(i, Incoming::SubAck(_)).then_some(()))
        .await;
    b.broker
        .publish(feed("v1/devices/WL-1/cmd", "to-second", false));
    let p = second
        .next_incoming(|i| match i {
            Incoming::Publish(p) => Some(p.payload.clone()),
            _ => None,
        })
        .await;
    assert_eq!(&p[..], b"to-second");
    assert_eq!(b.broker.metrics().connections.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn slow_subscribers_lose_qos0_and_stuck_ones_are_disconnected() {
    let b = TestBroker::start_with(|c| {
        c.max_queued = 50;
        c.max_inflight_out = 4;
        c.stuck_timeout = Duration::from_millis(300);
    })
    .await;
    // A QoS 0 subscriber that never reads its socket.
    let mut lazy = raw_client(b.addr, "ops.lazy", "ops", "opss", 0).await;
    lazy.write_all(&raw_subscribe(1, "v1/feeds/#", 0))
        .await
        .unwrap();
    // A QoS 1 subscriber that reads but never acknowledges.
    let mut mute = raw_client(b.addr, "ops.mute", "ops", "opss", 0).await;
    mute.write_all(&raw_subscribe(1, "v1/feeds/#", 1))
        .await
        .unwrap();
    // A healthy subscriber to the end marker.
    let mut good = v4::connect(v4::options(b.addr, "ops.good", "ops", "opss"))
        .await
        .unwrap();
    good.client
        .subscribe("v1/feeds/end", QoS::AtLeastOnce)
        .await
        .unwrap();
    good.next_incoming(|i| matches!(i, Incoming::SubAck(_)).then_some(()))
        .await;
    wait_subscriptions(&b, 3).await;
    // 20k messages of 1 KiB: more than socket buffers hold, so the lazy one's queue fills.
    let payload = "x".repeat(1024);
    for i in 0..20_000 {
        b.broker.publish(feed(
            &format!("v1/feeds/water_level/WL-{}", i % 10),
            &payload,
            false,
        ));
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    b.broker.publish(feed("v1/feeds/end", "end", false));
    // The healthy one sees the end marker (the hub was never blocked).
    good.next_incoming(|i| match i {
        Incoming::Publish(p) if p.topic == "v1/feeds/end" => Some(()),
        _ => None,
    })
    .await;
    assert!(b.broker.metrics().dropped.load(Ordering::Relaxed) > 0);
    // The one that never acknowledges is cut off.
    assert!(closed_by_peer(&mut mute).await);
    assert!(b.broker.metrics().slow_disconnects.load(Ordering::Relaxed) >= 1);
    drop(lazy);
}

#[tokio::test]
async fn v5_message_expiry_drops_what_went_stale_in_a_queue() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    let b = TestBroker::start().await;
    let mut o = v5::options(b.addr, "ops.x", "ops", "opss");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(60));
    let c = v5::connect(o.clone()).await.unwrap();
    c.client
        .subscribe("v1/devices/WL-1/telemetry", Q5::AtLeastOnce)
        .await
        .unwrap();
    let mut c = c;
    c.next_incoming(|p| matches!(p, Packet::SubAck(_)).then_some(()))
        .await;
    c.client.disconnect().await.unwrap();
    b.pipeline
        .wait_for("ops.x gone", |s| {
            s.iter()
                .any(|e| matches!(e, Seen::Disconnected { client_id, .. } if client_id == "ops.x"))
        })
        .await;
    drop(c);
    let p = v5::connect(v5::options(b.addr, "WL-1", "WL-1", "s1"))
        .await
        .unwrap();
    let stale = PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    p.client
        .publish_with_properties(
            "v1/devices/WL-1/telemetry",
            Q5::AtLeastOnce,
            false,
            "stale",
            stale,
        )
        .await
        .unwrap();
    let fresh = PublishProperties {
        message_expiry_interval: Some(600),
        ..Default::default()
    };
    p.client
        .publish_with_properties(
            "v1/devices/WL-1/telemetry",
            Q5::AtLeastOnce,
            false,
            "fresh",
            fresh,
        )
        .await
        .unwrap();
    b.pipeline
        .wait_for("both publishes", |s| {
            s.iter()
                .filter(|e| matches!(e, Seen::Message { .. }))
                .count()
                == 2
        })
        .await;
    // Time is the subject here: let the one-second expiry pass while the subscriber is away.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut c = v5::connect(o).await.unwrap();
    assert!(c.session_present);
    let (payload, expiry) = c
        .next_incoming(|p| match p {
            Packet::Publish(p) => Some((
                p.payload.clone(),
                p.properties
                    .as_ref()
                    .and_then(|pr| pr.message_expiry_interval),
            )),
            _ => None,
        })
        .await;
    assert_eq!(&payload[..], b"fresh");
    // Forwarded with the time left, not the original interval.
    assert!(
        matches!(expiry, Some(s) if (590..=599).contains(&s)),
        "{expiry:?}"
    );
}

#[tokio::test]
async fn v5_deliveries_use_server_topic_aliases_the_client_allows() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5::Packet;
    let b = TestBroker::start().await;
    let mut o = v5::options(b.addr, "ops.alias", "ops", "opss");
    o.set_topic_alias_max(Some(1));
    let mut c = v5::connect(o).await.unwrap();
    c.client
        .subscribe("v1/twin/#", Q5::AtLeastOnce)
        .await
        .unwrap();
    c.next_incoming(|p| matches!(p, Packet::SubAck(_)).then_some(()))
        .await;
    for (topic, body) in [
        ("v1/twin/SL-1", "a"),
        ("v1/twin/SL-1", "b"),
        ("v1/twin/SL-2", "c"),
    ] {
        b.broker.publish(feed(topic, body, false));
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(
            c.next_incoming(|p| match p {
                Packet::Publish(p) => Some((
                    String::from_utf8_lossy(&p.topic).to_string(),
                    p.properties.as_ref().and_then(|pr| pr.topic_alias),
                    String::from_utf8_lossy(&p.payload).to_string(),
                )),
                _ => None,
            })
            .await,
        );
    }
    // The first names the topic and its alias, the second the alias alone; the client allows
    // one alias, so the second topic goes out in full.
    assert_eq!(got[0], ("v1/twin/SL-1".into(), Some(1), "a".into()));
    assert_eq!(got[1], (String::new(), Some(1), "b".into()));
    assert_eq!(got[2], ("v1/twin/SL-2".into(), None, "c".into()));
}
