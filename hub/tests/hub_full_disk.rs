//! The hub on a real small filesystem (a tmpfs these tests mount; they run as root) that fills
//! up and is freed again: it refuses what it cannot store (no ack), says so in `/healthz`,
//! `/readyz` and `/metrics`, and takes data again by itself, with every acknowledged reading
//! stored.

mod hub_e2e_support;
#[path = "../../series-store/tests/small_disk/mod.rs"]
mod small_disk;

use std::time::{Duration, Instant};

use hub_e2e_support::*;
use protocols::Quantity;
use protocols::batch::{Ack, encode};
use protocols::config::ByteSize;
use rumqttc::QoS;
use small_disk::SmallDisk;

const OPS: (&str, &str) = ("ops", "ops-secret-123");
const WATER: (&str, &str) = ("water-dept", "water-secret-1");

fn alert_doc(p: &rumqttc::Publish) -> serde_json::Value {
    serde_json::from_slice(&p.payload).unwrap()
}

/// Publishes one QoS 1 telemetry message as the MQTT 5 device WL-0001; the PUBACK's reason.
async fn v5_publish_reason(hub: &E2eHub, body: &str) -> rumqttc::v5::mqttbytes::v5::PubAckReason {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions, mqttbytes::QoS};
    let mut o = MqttOptions::new("WL-0001", hub.mqtt.ip().to_string(), hub.mqtt.port());
    o.set_credentials("WL-0001", "wl-secret-0001");
    let (client, mut events) = AsyncClient::new(o, 10);
    client
        .publish(
            "v1/devices/WL-0001/telemetry",
            QoS::AtLeastOnce,
            false,
            body.to_string(),
        )
        .await
        .unwrap();
    let reason = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(a))) => return a.reason,
                Ok(_) => {}
                Err(e) => panic!("MQTT 5 connection: {e}"),
            }
        }
    })
    .await
    .expect("no PUBACK");
    let _ = client.disconnect().await;
    reason
}

/// The first alert of `GET /api/v1/alerts{query}` (as `ops`) for which `pred` holds; panics
/// after [`WAIT`].
async fn alert_until(
    base: &str,
    query: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, list) = get_json(base, &format!("/api/v1/alerts{query}"), Some(OPS)).await;
        assert_eq!(status, 200, "{list}");
        if let Some(a) = list.as_array().unwrap().iter().find(|a| pred(a)) {
            return a.clone();
        }
        assert!(Instant::now() < deadline, "no such alert in {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ack_of(p: &rumqttc::Publish) -> Ack {
    serde_json::from_slice(&p.payload).unwrap()
}

/// `/healthz` until `pred` holds on (status, body); panics after a minute.
async fn health_until(
    base: &str,
    path: &str,
    pred: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = get_json(base, path, None).await;
        if pred(status.as_u16(), &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{path} stayed {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn component<'a>(body: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    body["components"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["component"] == name))
        .unwrap_or_else(|| panic!("no {name} in {body}"))
}

struct Agent {
    client: Client,
    t0: i64,
}

impl Agent {
    async fn connect(hub: &E2eHub) -> Agent {
        // Withheld PUBACKs hold their packet ids until the session ends: room for many.
        let mut o = options(hub.mqtt, "AG-0001", "AG-0001", "ag-secret-0001");
        o.set_inflight(u16::MAX);
        let mut client = connect_with(o).await.unwrap();
        client
            .subscribe("v1/agents/AG-0001/ack", QoS::AtLeastOnce)
            .await;
        Agent {
            client,
            t0: now_ms() - 600_000,
        }
    }

    async fn send(&self, seq: u64) {
        let b = batch(
            "AG-0001",
            1,
            seq,
            "SL-0001",
            vec![(
                self.t0 + seq as i64 * 1000,
                vec![reading(Quantity::LampPower, 100.0 + seq as f64)],
            )],
        );
        self.client
            .publish("v1/agents/AG-0001/batch", QoS::AtLeastOnce, encode(&b))
            .await;
    }

    /// Sends `seq` and waits for the ack that covers it.
    async fn send_acked(&mut self, seq: u64) {
        self.send(seq).await;
        let deadline = Instant::now() + WAIT;
        while !ack_of(&self.client.next_on("v1/agents/AG-0001/ack").await).covers(seq) {
            assert!(Instant::now() < deadline, "seq {seq} never acked");
        }
    }

    /// Sends `seq` again every 300 ms (as an agent redelivers) until an ack covers it.
    async fn redeliver_until_acked(&mut self, seq: u64) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            self.send(seq).await;
            let got = tokio::time::timeout(
                Duration::from_millis(300),
                self.client.next_on("v1/agents/AG-0001/ack"),
            )
            .await;
            if let Ok(p) = got
                && ack_of(&p).covers(seq)
            {
                return;
            }
            assert!(Instant::now() < deadline, "seq {seq} never acked");
        }
    }

    fn expected(&self, seqs: impl IntoIterator<Item = u64>) -> Vec<(i64, f64)> {
        seqs.into_iter()
            .map(|s| (self.t0 + s as i64 * 1000, 100.0 + s as f64))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_free_disk_data_is_refused_and_taken_again_once_freed() {
    let disk = SmallDisk::mount("64m");
    let mut cfg = config(&disk.path().join("data"));
    cfg.hub.min_free_disk = ByteSize::mib(16);
    let hub = E2eHub::start(cfg).await;
    let base = hub.base_url();
    let body = health_until(&base, "/healthz", |s, _| s == 200).await;
    assert_eq!(body["status"], "ok");
    assert_eq!(component(&body, "disk")["status"], "ok");
    assert_eq!(get_json(&base, "/readyz", None).await.0, 200);

    let mut agent = Agent::connect(&hub).await;
    for seq in 1..=5 {
        agent.send_acked(seq).await;
    }
    // The command center, subscribed to every alert.
    let mut ops = connect_with(options(hub.mqtt, "ops", "ops", "ops-secret-123"))
        .await
        .unwrap();
    ops.subscribe("v1/alerts/#", QoS::AtLeastOnce).await;

    // 4 MiB left: the store could still write, but the hub keeps the rest for recovery.
    let filler = disk.fill(4 << 20);
    let body = health_until(&base, "/healthz", |s, _| s == 503).await;
    assert_eq!(body["status"], "failing");
    let d = component(&body, "disk");
    assert_eq!(d["status"], "failing");
    assert!(
        d["detail"].as_str().unwrap().contains("min_free_disk"),
        "{d}"
    );
    assert_eq!(component(&body, "store")["status"], "ok");
    let ready = health_until(&base, "/readyz", |s, _| s == 503).await;
    assert_eq!(ready["ready"], false);
    assert!(ready["reasons"][0].as_str().unwrap().starts_with("disk:"));
    assert_eq!(metric(&base, "hub_disk_low").await, 1.0);

    // A hub-level alert tells the command center, over MQTT and in the alert list.
    let raised = alert_doc(&ops.next_on("v1/alerts/orange/hub").await);
    assert_eq!(raised["rule"], "hub-disk-low");
    assert_eq!(raised["device"], "hub");
    assert_eq!(raised["state"], "active");
    assert_eq!(raised["threshold"], 16.0 * 1024.0 * 1024.0);
    assert!(raised["value"].as_f64().unwrap() < 16.0 * 1024.0 * 1024.0);
    assert!(
        raised["message"]
            .as_str()
            .unwrap()
            .contains("min_free_disk"),
        "{raised}"
    );
    let id = raised["id"].as_str().unwrap().to_string();
    let (status, open) = get_json(&base, "/api/v1/alerts?state=open", Some(OPS)).await;
    assert_eq!(status, 200);
    assert!(
        open.as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == id.as_str()),
        "{open}"
    );
    // A department without the grant does not see it.
    let (_, water) = get_json(&base, "/api/v1/alerts", Some(WATER)).await;
    assert!(!water.to_string().contains(&id), "{water}");
    let (status, cap) = get_json(&base, &format!("/api/v1/alerts/{id}/cap"), Some(OPS)).await;
    assert_eq!(status, 404);
    assert!(cap["detail"].as_str().unwrap().contains("no CAP"), "{cap}");

    // Refused, counted, not acknowledged.
    agent.send(6).await;
    let deadline = Instant::now() + WAIT;
    while metric(&base, "hub_disk_refused_total").await < 1.0 {
        assert!(Instant::now() < deadline, "refusal never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An MQTT 5 device hears why: PUBACK "Quota exceeded", the message is still its own.
    let t = now_ms();
    assert_eq!(
        v5_publish_reason(
            &hub,
            &format!(r#"{{"ts":{t},"values":{{"water_level":1.5}}}}"#)
        )
        .await,
        rumqttc::v5::mqttbytes::v5::PubAckReason::QuotaExceeded
    );

    std::fs::remove_file(&filler).unwrap();
    health_until(&base, "/healthz", |s, _| s == 200).await;
    assert_eq!(get_json(&base, "/readyz", None).await.0, 200);
    assert_eq!(
        v5_publish_reason(
            &hub,
            &format!(r#"{{"ts":{t},"values":{{"water_level":1.5}}}}"#)
        )
        .await,
        rumqttc::v5::mqttbytes::v5::PubAckReason::Success
    );
    assert_eq!(
        series(&base, "WL-0001", "water_level", t - 1, t + 1).await,
        vec![(t, 1.5)]
    );
    let cleared = alert_doc(&ops.next_on("v1/alerts/orange/hub").await);
    assert_eq!(cleared["id"], id.as_str());
    assert_eq!(cleared["state"], "cleared");
    let (_, one) = get_json(&base, &format!("/api/v1/alerts/{id}"), Some(OPS)).await;
    assert_eq!(one["state"], "cleared");
    agent.redeliver_until_acked(6).await;
    agent.send_acked(7).await;

    let now = now_ms();
    assert_eq!(
        series(&base, "SL-0001", "lamp_power", agent.t0, now).await,
        agent.expected(1..=7)
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_hit_enospc_reports_it_and_recovers_without_restart() {
    let disk = SmallDisk::mount("64m");
    let mut cfg = config(&disk.path().join("data"));
    // No watermark: the store itself meets the full disk.
    cfg.hub.min_free_disk = ByteSize(0);
    let hub = E2eHub::start(cfg).await;
    let base = hub.base_url();
    let mut agent = Agent::connect(&hub).await;
    let mut acked = Vec::new();
    for seq in 1..=5 {
        agent.send_acked(seq).await;
        acked.push(seq);
    }

    let filler = disk.fill(0);
    // New messages until the store's log needs a page the filesystem does not have.
    let mut seq = 6;
    let body = loop {
        agent.send(seq).await;
        let (status, body) = get_json(&base, "/healthz", None).await;
        if status == 503 {
            break body;
        }
        seq += 1;
        assert!(seq < 50_000, "the store never met the full disk");
    };
    let store = component(&body, "store");
    assert_eq!(store["status"], "failing", "{body}");
    assert!(
        store["detail"].as_str().unwrap().contains("No space left"),
        "{store}"
    );
    assert!(store["since"].is_string());
    assert_eq!(metric(&base, "hub_store_writable").await, 0.0);
    assert_eq!(get_json(&base, "/readyz", None).await.0, 503);
    // The watch raises the store's alert within a second of the store failing.
    let failing = alert_until(&base, "?state=open&level=red", |a| {
        a["rule"] == "hub-store-failing"
    })
    .await;
    assert_eq!(failing["device"], "hub");
    assert!(
        failing["message"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{failing}"
    );

    std::fs::remove_file(&filler).unwrap();
    // Every message sent so far is redelivered until acknowledged (an agent's uplink does
    // this); the store reopens on its own along the way.
    for s in 6..=seq {
        agent.redeliver_until_acked(s).await;
        acked.push(s);
    }
    health_until(&base, "/healthz", |s, _| s == 200).await;
    // ... and clears it within a second of the store writing again.
    let id = failing["id"].as_str().unwrap();
    alert_until(&base, "?state=cleared", |a| a["id"] == id).await;
    agent.send_acked(seq + 1).await;
    acked.push(seq + 1);
    assert!(metric(&base, "hub_store_errors_total").await >= 1.0);
    assert_eq!(metric(&base, "hub_store_writable").await, 1.0);

    let now = now_ms();
    assert_eq!(
        series(&base, "SL-0001", "lamp_power", agent.t0, now).await,
        agent.expected(acked.iter().copied())
    );
    hub.stop().await;
}
