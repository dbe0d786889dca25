//! Per-client quotas: a client flooding publishes is throttled (its socket is not read), then
//! disconnected with MQTT 5 "Message rate too high", counted, while another client's
//! publishes go on being acknowledged; subscriptions beyond the session's limit are refused
//! in SUBACK (MQTT 5 0x97, 3.1.1 0x80); clients beyond the connection limit are refused in
//! CONNACK.

mod broker_support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use broker_support::*;
use rumqttc::{Incoming, QoS};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const RATE: u32 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_throttled_then_disconnected_while_others_go_on() {
    let b = TestBroker::start_with(|c| {
        c.max_messages_per_s = RATE;
        c.throttle_grace = Duration::from_secs(2);
    })
    .await;
    let started = Instant::now();

    // The flooder: MQTT 5 (to hear the reason), QoS 0 publishes as fast as the socket takes
    // them, from a task of its own.
    let mut flood = TcpStream::connect(b.addr).await.unwrap();
    flood
        .write_all(&raw_connect_v5("WL-2", "WL-2", "s2", 60))
        .await
        .unwrap();
    let (first, body) = read_packet(&mut flood).await.expect("CONNACK");
    assert_eq!((first, body[1]), (0x20, 0));
    let (mut rd, mut wr) = flood.into_split();
    let writer = tokio::spawn(async move {
        let mut packet = Vec::new();
        for i in 0..64u32 {
            // v5 PUBLISH: topic, no packet id (QoS 0), empty properties, payload.
            let mut body = Vec::new();
            let topic = b"v1/devices/WL-2/telemetry";
            body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            body.extend_from_slice(topic);
            body.push(0);
            body.extend_from_slice(format!("flood {i}").as_bytes());
            packet.push(0x30);
            packet.push(body.len() as u8);
            packet.extend_from_slice(&body);
        }
        // Until the broker closes the connection.
        while wr.write_all(&packet).await.is_ok() {}
    });

    // The quiet client meanwhile: ten QoS 1 publishes, each acknowledged.
    let mut quiet = v4::connect(v4::options(b.addr, "WL-1", "WL-1", "s1"))
        .await
        .unwrap();
    let mut latencies = Vec::new();
    for i in 0..10 {
        let t = Instant::now();
        quiet
            .client
            .publish(
                "v1/devices/WL-1/telemetry",
                QoS::AtLeastOnce,
                false,
                format!("quiet {i}"),
            )
            .await
            .unwrap();
        quiet
            .next_incoming(|p| matches!(p, Incoming::PubAck(_)).then_some(()))
            .await;
        latencies.push(t.elapsed());
        // Paced well under the limit, as a device reports.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("quiet client's PUBACK latencies during the flood: {latencies:?}");

    // The flooder hears DISCONNECT 0x96 and the connection closes.
    let mut reason = None;
    while let Some((first, body)) = read_packet(&mut rd).await {
        if first == 0xE0 {
            reason = body.first().copied();
        }
    }
    let elapsed = started.elapsed();
    writer.await.unwrap();
    assert_eq!(reason, Some(0x96), "DISCONNECT Message rate too high");

    let m = b.broker.metrics();
    assert_eq!(m.flood_disconnects.load(Ordering::Relaxed), 1);
    assert!(m.throttled.load(Ordering::Relaxed) > 0);
    b.pipeline
        .wait_for("the flooder's disconnect", |seen| {
            seen.iter().any(|s| {
                matches!(s, Seen::Disconnected { client_id, graceful: false } if client_id == "WL-2")
            })
        })
        .await;
    // The quiet client lost nothing.
    assert_eq!(
        b.pipeline.messages_on("v1/devices/WL-1/telemetry").len(),
        10
    );
    // The flooder got no more through than its rate and burst allow over the whole run.
    let taken = b.pipeline.messages_on("v1/devices/WL-2/telemetry").len() as f64;
    let allowed = f64::from(RATE) * (elapsed.as_secs_f64() + 2.0) + 1.0;
    assert!(
        taken <= allowed,
        "{taken} publishes taken in {elapsed:?}, at most {allowed}"
    );
    assert!(taken >= f64::from(RATE), "the burst passed: {taken}");
}

#[tokio::test]
async fn subscriptions_beyond_the_limit_are_refused_in_suback() {
    let b = TestBroker::start_with(|c| c.max_subscriptions = 3).await;
    let filters = [
        "v1/feeds/a/#",
        "v1/feeds/b/#",
        "v1/feeds/c/#",
        "v1/feeds/d/#",
    ];
    // MQTT 5: 0x97 Quota exceeded for the fourth.
    let mut s = TcpStream::connect(b.addr).await.unwrap();
    s.write_all(&raw_connect_v5("ops", "ops", "opss", 60))
        .await
        .unwrap();
    read_packet(&mut s).await.expect("CONNACK");
    s.write_all(&subscribe(true, 1, &filters)).await.unwrap();
    let (first, body) = read_packet(&mut s).await.expect("SUBACK");
    assert_eq!(first, 0x90);
    // pid (2), properties length (1), then the codes.
    assert_eq!(&body[3..], &[1, 1, 1, 0x97]);
    // Subscribing again to one it holds is no new subscription: granted.
    s.write_all(&subscribe(true, 2, &filters[..1]))
        .await
        .unwrap();
    let (_, body) = read_packet(&mut s).await.expect("SUBACK");
    assert_eq!(&body[3..], &[1]);

    // MQTT 3.1.1: 0x80.
    let mut s4 = raw_client(b.addr, "ops.v4", "ops", "opss", 60).await;
    s4.write_all(&subscribe(false, 1, &filters)).await.unwrap();
    let (_, body) = read_packet(&mut s4).await.expect("SUBACK");
    assert_eq!(&body[2..], &[1, 1, 1, 0x80]);
    assert_eq!(
        b.broker
            .metrics()
            .subscriptions_over_quota
            .load(Ordering::Relaxed),
        2
    );
}

/// A SUBSCRIBE of `filters` at QoS 1 (MQTT 5 with an empty property list when `v5`).
fn subscribe(v5: bool, pid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    for f in filters {
        body.extend_from_slice(&(f.len() as u16).to_be_bytes());
        body.extend_from_slice(f.as_bytes());
        body.push(1);
    }
    let mut out = vec![0x82, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

/// Beyond `max_connections` a client is told so in its own protocol (3.1.1: return code 3
/// "Server unavailable"; MQTT 5: 0x97 "Quota exceeded") and closed, counted as
/// `server_busy`; the clients already in go on, and a freed place is taken again.
#[tokio::test]
async fn beyond_the_connection_limit_clients_are_refused_in_connack() {
    let b = TestBroker::start_with(|c| c.max_connections = 2).await;
    let first = raw_client(b.addr, "WL-1", "WL-1", "s1", 60).await;
    let mut second = raw_client(b.addr, "AG-1", "AG-1", "a1", 60).await;

    let mut v4 = TcpStream::connect(b.addr).await.unwrap();
    v4.write_all(&raw_connect("WL-2", "WL-2", "s2", 60))
        .await
        .unwrap();
    let (kind, body) = read_packet(&mut v4).await.expect("CONNACK");
    assert_eq!((kind, body[1]), (0x20, 3), "3.1.1: server unavailable");
    assert!(closed_by_peer(&mut v4).await);

    let mut v5 = TcpStream::connect(b.addr).await.unwrap();
    v5.write_all(&raw_connect_v5("WL-2", "WL-2", "s2", 60))
        .await
        .unwrap();
    let (kind, body) = read_packet(&mut v5).await.expect("CONNACK");
    assert_eq!((kind, body[1]), (0x20, 0x97), "MQTT 5: quota exceeded");
    assert!(closed_by_peer(&mut v5).await);
    assert_eq!(
        b.broker
            .metrics()
            .refused(mqtt_broker::RefuseReason::ServerBusy),
        2
    );

    // The clients in are served as before.
    second
        .write_all(&raw_publish("agents/AG-1/status", 1, 7, b"online"))
        .await
        .unwrap();
    let (kind, body) = read_packet(&mut second).await.expect("PUBACK");
    assert_eq!((kind, &body[..2]), (0x40, &7u16.to_be_bytes()[..]));

    // A place freed is a place for the next device (its task ends a moment after the close).
    drop(first);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = TcpStream::connect(b.addr).await.unwrap();
        s.write_all(&raw_connect("WL-2", "WL-2", "s2", 60))
            .await
            .unwrap();
        let (_, body) = read_packet(&mut s).await.expect("CONNACK");
        if body[1] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the freed place was not taken");
        tokio::task::yield_now().await;
    }
}
