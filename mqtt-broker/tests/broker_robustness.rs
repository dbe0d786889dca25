//! Wills, keepalive, oversized packets, garbage on the socket and shutdown: each bad
//! connection is closed alone while good clients keep working.

mod broker_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use broker_support::*;
use rumqttc::{Incoming, LastWill, QoS};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn status_watcher(b: &TestBroker) -> v4::Client {
    let mut w = v4::connect(v4::options(b.addr, "ops.status", "ops", "opss"))
        .await
        .unwrap();
    w.client
        .subscribe("v1/status/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    w.next_incoming(|i| matches!(i, Incoming::SubAck(_)).then_some(()))
        .await;
    w
}

async fn next_status(w: &mut v4::Client) -> (String, String) {
    w.next_incoming(|i| match i {
        Incoming::Publish(p) => Some((
            p.topic.clone(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        )),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn will_is_published_when_the_client_process_dies() {
    let b = TestBroker::start().await;
    let mut w = status_watcher(&b).await;
    let mut sub = MosquittoSub::spawn(
        "127.0.0.1",
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
            "-t",
            "v1/devices/WL-1/cmd",
            "--will-topic",
            "v1/status/WL-1",
            "--will-payload",
            "offline",
            "--will-retain",
            "--will-qos",
            "1",
        ],
    )
    .await;
    wait_subscriptions(&b, 2).await;
    sub.kill();
    sub.exit_code().await;
    assert_eq!(
        next_status(&mut w).await,
        ("v1/status/WL-1".into(), "offline".into())
    );
    b.pipeline
        .wait_for("the will in the pipeline and the abrupt end", |s| {
            s.iter().any(|e| matches!(e, Seen::Message { topic, .. } if topic == "v1/status/WL-1"))
                && s.iter().any(|e| matches!(e, Seen::Disconnected { client_id, graceful: false } if client_id == "WL-1"))
        })
        .await;
    // Retained: a later subscriber sees the device offline.
    let mut late = MosquittoSub::spawn(
        "127.0.0.1",
        b.port(),
        &[
            "-V",
            "5",
            "-i",
            "ops.late",
            "-u",
            "ops",
            "-P",
            "opss",
            "-t",
            "v1/status/WL-1",
            "-C",
            "1",
        ],
    )
    .await;
    assert_eq!(late.next_line().await, "offline");
    assert_eq!(b.broker.metrics().wills.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn will_on_dropped_tcp_but_not_on_disconnect() {
    let b = TestBroker::start().await;
    let mut w = status_watcher(&b).await;
    let will = |who: &str| {
        LastWill::new(
            format!("v1/status/{who}"),
            "offline",
            QoS::AtLeastOnce,
            false,
        )
    };
    // AG-1 says DISCONNECT: no will.
    let mut o = v4::options(b.addr, "AG-1", "AG-1", "a1");
    o.set_last_will(will("AG-1"));
    let c = v4::connect(o).await.unwrap();
    c.client.disconnect().await.unwrap();
    b.pipeline
        .wait_for("a graceful end", |s| {
            s.iter().any(|e| matches!(e, Seen::Disconnected { client_id, graceful: true } if client_id == "AG-1"))
        })
        .await;
    drop(c);
    // WL-2's TCP connection just drops (the client's event loop is gone): its will is sent.
    let mut o = v4::options(b.addr, "WL-2", "WL-2", "s2");
    o.set_last_will(will("WL-2"));
    let c = v4::connect(o).await.unwrap();
    drop(c);
    // The first status message the watcher sees is WL-2's, so AG-1 sent none.
    assert_eq!(
        next_status(&mut w).await,
        ("v1/status/WL-2".into(), "offline".into())
    );
    assert_eq!(b.pipeline.messages_on("v1/status/AG-1").len(), 0);
}

#[tokio::test]
async fn keepalive_expiry_closes_and_keepalive_zero_does_not() {
    let b = TestBroker::start().await;
    let mut w = status_watcher(&b).await;
    // Keepalive 0: no timeout at all.
    let mut forever = raw_client(b.addr, "WL-1", "WL-1", "s1", 0).await;
    // Keepalive 1 s and a will: silent, so closed after 1.5 s and the will goes out.
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let mut connect = raw_connect("WL-2", "WL-2", "s2", 1);
    // Add a will (flags: will, QoS 0) by rebuilding with the will fields.
    connect.clear();
    {
        let mut body = Vec::new();
        let put = |b: &mut Vec<u8>, s: &[u8]| {
            b.extend_from_slice(&(s.len() as u16).to_be_bytes());
            b.extend_from_slice(s);
        };
        put(&mut body, b"MQTT");
        body.push(4);
        body.push(0xC2 | 0x04);
        body.extend_from_slice(&1u16.to_be_bytes());
        put(&mut body, b"WL-2");
        put(&mut body, b"v1/status/WL-2");
        put(&mut body, b"offline");
        put(&mut body, b"WL-2");
        put(&mut body, b"s2");
        connect.push(0x10);
        connect.push(body.len() as u8);
        connect.extend_from_slice(&body);
    }
    s.write_all(&connect).await.unwrap();
    let (first, _) = read_packet(&mut s).await.unwrap();
    assert_eq!(first, 0x20);
    let started = tokio::time::Instant::now();
    assert!(closed_by_peer(&mut s).await, "silent client not closed");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400),
        "closed too early: {took:?}"
    );
    assert_eq!(
        next_status(&mut w).await,
        ("v1/status/WL-2".into(), "offline".into())
    );
    assert_eq!(
        b.broker
            .metrics()
            .keepalive_timeouts
            .load(Ordering::Relaxed),
        1
    );
    // Longer than the other's grace, the keepalive-0 client is still served.
    forever.write_all(&[0xC0, 0]).await.unwrap();
    let (first, _) = read_packet(&mut forever).await.unwrap();
    assert_eq!(first, 0xD0, "PINGRESP");
}

#[tokio::test]
async fn oversized_packets_close_the_connection() {
    let b = TestBroker::start_with(|c| c.max_packet_bytes = 4096).await;
    // 3.1.1: just closed.
    let mut s = raw_client(b.addr, "WL-1", "WL-1", "s1", 30).await;
    s.write_all(&raw_publish(
        "v1/devices/WL-1/telemetry",
        0,
        0,
        &[b'x'; 5000],
    ))
    .await
    .unwrap();
    assert!(closed_by_peer(&mut s).await);
    // 5: DISCONNECT with 0x95 first.
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(&raw_connect_v5("WL-2", "WL-2", "s2", 30))
        .await
        .unwrap();
    let (first, body) = read_packet(&mut s).await.unwrap();
    assert_eq!((first, body[1]), (0x20, 0));
    // Announced size alone is enough: the broker does not wait for 1 MiB to arrive.
    s.write_all(&[0x30, 0x80, 0x80, 0x40]).await.unwrap();
    let (first, body) = read_packet(&mut s).await.unwrap();
    assert_eq!((first, body[0]), (0xE0, 0x95));
    assert!(closed_by_peer(&mut s).await);
    assert_eq!(b.broker.metrics().oversized.load(Ordering::Relaxed), 2);
    assert!(
        b.pipeline
            .messages_on("v1/devices/WL-1/telemetry")
            .is_empty()
    );
}

#[tokio::test]
async fn garbage_closes_only_that_connection() {
    let b = TestBroker::start().await;
    let mut sub = v4::connect(v4::options(b.addr, "ops", "ops", "opss"))
        .await
        .unwrap();
    sub.client
        .subscribe("v1/devices/WL-1/telemetry", QoS::AtLeastOnce)
        .await
        .unwrap();
    sub.next_incoming(|i| matches!(i, Incoming::SubAck(_)).then_some(()))
        .await;
    let publ = v4::connect(v4::options(b.addr, "WL-1", "WL-1", "s1"))
        .await
        .unwrap();

    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random = |n: usize| {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect::<Vec<u8>>()
    };
    let mut second_connect = raw_connect("WL-2", "WL-2", "s2", 30);
    second_connect.extend(raw_connect("WL-2", "WL-2", "s2", 30));
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", {
            let mut r = random(4096);
            r[0] = 0xF7; // not a CONNECT
            r
        }),
        (
            "malformed remaining length",
            vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x7f],
        ),
        (
            "publish before connect",
            raw_publish("v1/devices/WL-1/telemetry", 0, 0, b"sneaky"),
        ),
        ("second connect", second_connect),
        ("garbage after connect", {
            let mut v = raw_connect("AG-1", "AG-1", "a1", 30);
            v.extend(random(512).into_iter().map(|x| x | 0x0f));
            v
        }),
    ];
    for (what, bytes) in attacks {
        let mut s = TcpStream::connect(b.addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        assert!(closed_by_peer(&mut s).await, "{what}: not closed");
        // The good clients keep working after each.
        publ.client
            .publish("v1/devices/WL-1/telemetry", QoS::AtLeastOnce, false, what)
            .await
            .unwrap();
        let got = sub
            .next_incoming(|i| match i {
                Incoming::Publish(p) => Some(String::from_utf8_lossy(&p.payload).into_owned()),
                _ => None,
            })
            .await;
        assert_eq!(got, what);
    }
    // A truncated packet followed by a close is just a dropped connection.
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    let c = raw_connect("WL-2", "WL-2", "s2", 30);
    s.write_all(&c[..c.len() / 2]).await.unwrap();
    drop(s);
    assert!(b.broker.metrics().protocol_errors.load(Ordering::Relaxed) >= 4);
    assert!(
        !b.pipeline
            .messages_on("v1/devices/WL-1/telemetry")
            .iter()
            .any(|p| p == b"sneaky")
    );
    assert_eq!(b.broker.metrics().connections.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn shutdown_closes_connections_and_stops_listening() {
    let b = TestBroker::start().await;
    let mut c = v5::connect(v5::options(b.addr, "ops", "ops", "opss"))
        .await
        .unwrap();
    let mut raw = raw_client(b.addr, "WL-1", "WL-1", "s1", 0).await;
    b.broker.shutdown().await;
    // rumqttc reports the server's DISCONNECT as the end of its event loop.
    let end = c.wait_error().await;
    assert!(end.contains("ServerShuttingDown"), "{end}");
    assert!(closed_by_peer(&mut raw).await);
    assert!(TcpStream::connect(b.addr).await.is_err());
    assert_eq!(b.broker.metrics().connections.load(Ordering::Relaxed), 0);
}
