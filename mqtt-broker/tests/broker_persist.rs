//! Persistent sessions and retained messages outlive a broker restart (`state_dir`): a client
//! with a persistent session finds its subscription and the QoS 1 messages queued while it
//! was away; retained messages are there for new subscribers; a clean session leaves nothing
//! behind; an expired session is gone. (A `kill -9` of the whole hub:
//! `tests/tests/broker_state_restart.rs`.)

mod broker_support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use broker_support::*;
use bytes::Bytes;
use mqtt_broker::ingress::{Outbound, Publisher};
use rumqttc::{Incoming, QoS};

async fn broker_in(dir: &Path) -> TestBroker {
    let dir = dir.to_path_buf();
    TestBroker::start_with(move |c| c.state_dir = Some(dir)).await
}

fn hub_publish(b: &TestBroker, topic: &str, payload: &str, retain: bool) {
    b.broker.publish(Outbound {
        topic: topic.into(),
        payload: Bytes::from(payload.to_string()),
        retain,
        at_most_once: false,
    });
}

fn persistent(
    addr: std::net::SocketAddr,
    id: &str,
    user: &str,
    pass: &str,
) -> rumqttc::MqttOptions {
    let mut o = v4::options(addr, id, user, pass);
    o.set_clean_session(false);
    o
}

/// WL-1 connects with a persistent session, subscribes to its commands and disconnects.
async fn subscribe_and_leave(b: &TestBroker) {
    let mut dev = v4::connect(persistent(b.addr, "WL-1", "WL-1", "s1"))
        .await
        .unwrap();
    dev.client
        .subscribe("v1/devices/WL-1/cmd", QoS::AtLeastOnce)
        .await
        .unwrap();
    dev.next_incoming(|i| matches!(i, Incoming::SubAck(_)).then_some(()))
        .await;
    dev.client.disconnect().await.unwrap();
    b.pipeline
        .wait_for("the device's disconnect", |seen| {
            seen.iter()
                .any(|s| matches!(s, Seen::Disconnected { client_id, .. } if client_id == "WL-1"))
        })
        .await;
}

#[tokio::test]
async fn sessions_queues_and_retained_messages_outlive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker_in(dir.path()).await;

    // A device with a persistent session subscribes to its commands and goes away.
    subscribe_and_leave(&b).await;
    // A clean-session client leaves nothing to restore.
    let clean = v4::connect(v4::options(b.addr, "WL-2", "WL-2", "s2"))
        .await
        .unwrap();
    drop(clean);

    // Two commands while it is away, and a retained twin.
    hub_publish(&b, "v1/devices/WL-1/cmd", "dim 40", false);
    hub_publish(&b, "v1/devices/WL-1/cmd", "dim 60", false);
    hub_publish(&b, "v1/twin/WL-1", "twin v7", true);
    assert_eq!(b.broker.metrics().queued_offline.load(Ordering::Relaxed), 2);
    b.broker.shutdown().await;
    drop(b);

    let b = broker_in(dir.path()).await;
    assert_eq!(b.broker.metrics().sessions.load(Ordering::Relaxed), 1);
    assert_eq!(b.broker.metrics().retained.load(Ordering::Relaxed), 1);
    // The device comes back: its session is there, with both commands, in order.
    let mut dev = v4::connect(persistent(b.addr, "WL-1", "WL-1", "s1"))
        .await
        .unwrap();
    assert!(dev.session_present, "the session was restored");
    let mut got = Vec::new();
    while got.len() < 2 {
        let p = dev
            .next_incoming(|i| match i {
                Incoming::Publish(p) => Some(p.clone()),
                _ => None,
            })
            .await;
        assert_eq!(p.topic, "v1/devices/WL-1/cmd");
        assert_eq!(p.qos, QoS::AtLeastOnce);
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    assert_eq!(got, ["dim 40", "dim 60"]);
    // Still subscribed: a new command arrives live.
    hub_publish(&b, "v1/devices/WL-1/cmd", "dim 80", false);
    let p = dev
        .next_incoming(|i| match i {
            Incoming::Publish(p) => Some(p.payload.clone()),
            _ => None,
        })
        .await;
    assert_eq!(&p[..], b"dim 80");

    // The retained twin is there for a new subscriber.
    let mut ops = v4::connect(v4::options(b.addr, "ops", "ops", "opss"))
        .await
        .unwrap();
    ops.client
        .subscribe("v1/twin/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let p = ops
        .next_incoming(|i| match i {
            Incoming::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await;
    assert!(p.retain);
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("v1/twin/WL-1", &b"twin v7"[..])
    );
    // Cleared retained messages stay cleared.
    hub_publish(&b, "v1/twin/WL-1", "", true);
    b.broker.shutdown().await;
    drop(b);
    let b = broker_in(dir.path()).await;
    assert_eq!(b.broker.metrics().retained.load(Ordering::Relaxed), 0);
    b.broker.shutdown().await;
}

#[tokio::test]
async fn an_expired_session_is_not_restored() {
    let dir = tempfile::tempdir().unwrap();
    let b = {
        let d = dir.path().to_path_buf();
        TestBroker::start_with(move |c| {
            c.state_dir = Some(d);
            c.max_session_expiry = Duration::from_secs(1);
        })
        .await
    };
    subscribe_and_leave(&b).await;
    b.broker.shutdown().await;
    drop(b);
    // Its one second of expiry runs out while the broker is down.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let b = broker_in(dir.path()).await;
    assert_eq!(b.broker.metrics().sessions.load(Ordering::Relaxed), 0);
    let dev = v4::connect(persistent(b.addr, "WL-1", "WL-1", "s1"))
        .await
        .unwrap();
    assert!(!dev.session_present);
    b.broker.shutdown().await;
}
