//! Cluster mode with real engines: a three-node NATS JetStream cluster and PostgreSQL started
//! by the test (`engines`), hubs on them, real MQTT clients and HTTP.

mod hub_e2e_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use engines::nats::NatsCluster;
use engines::postgres::Postgres;
use hub::config::{ClusterSettings, HubConfig};
use hub_e2e_support::*;
use protocols::Quantity;
use protocols::batch::{Ack, encode};
use rumqttc::QoS;

const OPS: (&str, &str) = ("ops", "ops-secret-123");

async fn engines() -> (NatsCluster, Postgres) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    tokio::task::spawn_blocking(|| {
        let e =
            engines::Engines::start(3).expect("nats-server and postgres (scripts/setup-peers.sh)");
        (e.nats, e.pg)
    })
    .await
    .unwrap()
}

fn cluster_config(dir: &Path, node: &str, nats: &NatsCluster, pg: &Postgres) -> HubConfig {
    let mut cfg = config(dir);
    cfg.cluster = Some(ClusterSettings {
        node: node.into(),
        nats: nats.urls(),
        postgres: pg.url(),
        partitions: 8,
        lease: protocols::config::HumanDuration(Duration::from_secs(3)),
        replicas: 3,
    });
    cfg
}

/// Waits until `check` holds for `GET /api/v1/cluster` of `base` (the leases settle in rounds
/// of a third of a lease; nothing announces them).
async fn cluster_until(base: &str, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get_json(base, "/api/v1/cluster", Some(OPS)).await;
        if status == 200 && check(&body) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn owned_by(body: &serde_json::Value, node: &str) -> usize {
    body["partition_owners"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|p| p["owner"] == node).count())
}

fn ack_of(p: &rumqttc::Publish) -> Ack {
    serde_json::from_slice(&p.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_on_one_hub_is_heard_by_an_app_on_another() {
    let (nats, pg) = engines().await;
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let h1 = E2eHub::start(cluster_config(d1.path(), "hub-1", &nats, &pg)).await;
    let h2 = E2eHub::start(cluster_config(d2.path(), "hub-2", &nats, &pg)).await;
    cluster_until(&h2.base_url(), "both hubs hold half the partitions", |b| {
        owned_by(b, "hub-1") == 4 && owned_by(b, "hub-2") == 4
    })
    .await;

    let mut app = connect(h2.mqtt, "ops", OPS.1).await.unwrap();
    app.subscribe("v1/feeds/streetlight/SL-0001", QoS::AtLeastOnce)
        .await;
    let mut agent = connect(h1.mqtt, "AG-0001", "ag-secret-0001").await.unwrap();
    agent
        .subscribe("v1/agents/AG-0001/ack", QoS::AtLeastOnce)
        .await;

    let t0 = now_ms() - 60_000;
    let n = 20u64;
    for seq in 1..=n {
        let b = batch(
            "AG-0001",
            7,
            seq,
            "SL-0001",
            vec![(
                t0 + seq as i64 * 1000,
                vec![reading(Quantity::LampPower, seq as f64)],
            )],
        );
        agent
            .publish("v1/agents/AG-0001/batch", QoS::AtLeastOnce, encode(&b))
            .await;
    }
    let mut acked = BTreeSet::new();
    while acked.len() < n as usize {
        let ack = ack_of(&agent.next_on("v1/agents/AG-0001/ack").await);
        assert_eq!(ack.stream, 7);
        for seq in 1..=n {
            if ack.covers(seq) {
                acked.insert(seq);
            }
        }
    }
    // The app on the other hub hears every reading once, in order.
    let mut heard = Vec::new();
    while heard.len() < n as usize {
        let p = app.next_on("v1/feeds/streetlight/SL-0001").await;
        let doc: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
        heard.push(
            doc["values"]["lamp_power"]["value"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
    }
    let expected: Vec<f64> = (1..=n).map(|s| s as f64).collect();
    assert_eq!(heard, expected, "each feed once, in order");
    // Any hub answers the series API from the shared store.
    for h in [&h1, &h2] {
        let points = series(&h.base_url(), "SL-0001", "lamp_power", t0, t0 + 60_000).await;
        let values: Vec<f64> = points.iter().map(|p| p.1).collect();
        assert_eq!(
            values,
            expected,
            "stored once each, read from {}",
            h.base_url()
        );
    }

    // A batch sent again (its ack lost on the way) is acknowledged again and stored once,
    // although the log already holds it under the same message id.
    let again = batch(
        "AG-0001",
        7,
        3,
        "SL-0001",
        vec![(t0 + 3000, vec![reading(Quantity::LampPower, 3.0)])],
    );
    agent
        .publish("v1/agents/AG-0001/batch", QoS::AtLeastOnce, encode(&again))
        .await;
    loop {
        let ack = ack_of(&agent.next_on("v1/agents/AG-0001/ack").await);
        if ack.stream == 7 && ack.covers(3) {
            break;
        }
    }
    let points = series(&h2.base_url(), "SL-0001", "lamp_power", t0, t0 + 60_000).await;
    assert_eq!(points.len(), n as usize, "stored once");

    h2.stop().await;
    cluster_until(
        &h1.base_url(),
        "hub-1 takes every partition when hub-2 leaves",
        |b| owned_by(b, "hub-1") == 8,
    )
    .await;
    h1.stop().await;
}

/// Publishes one lamp-power reading of SL-0001 as AG-0001 (stream 9, `seq`) and waits for the
/// agent's ack of it.
async fn lamp_power(agent: &mut Client, seq: u64, t0: i64, watts: f64) {
    let b = batch(
        "AG-0001",
        9,
        seq,
        "SL-0001",
        vec![(
            t0 + seq as i64 * 1000,
            vec![reading(Quantity::LampPower, watts)],
        )],
    );
    agent
        .publish("v1/agents/AG-0001/batch", QoS::AtLeastOnce, encode(&b))
        .await;
    loop {
        let ack = ack_of(&agent.next_on("v1/agents/AG-0001/ack").await);
        if ack.stream == 9 && ack.covers(seq) {
            return;
        }
    }
}

/// The next alert message an app hears.
async fn next_alert(app: &mut Client) -> serde_json::Value {
    let p = app.next_on("v1/alerts/#").await;
    serde_json::from_slice(&p.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_alert_episode_and_a_twin_go_on_when_their_partition_moves_between_hubs() {
    let (nats, pg) = engines().await;
    let rule: HubConfig = HubConfig::from_toml(&format!(
        "{CONFIG}\n[[rules]]\nid = \"lamp-overload\"\nquantity = \"lamp_power\"\nabove = 100.0\nlevel = \"orange\"\n"
    ))
    .unwrap();
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let with_rule = |dir: &Path, node: &str| {
        let mut c = cluster_config(dir, node, &nats, &pg);
        c.rules = rule.rules.clone();
        c
    };
    let h1 = E2eHub::start(with_rule(d1.path(), "hub-1")).await;
    let h2 = E2eHub::start(with_rule(d2.path(), "hub-2")).await;
    cluster_until(&h2.base_url(), "both hubs hold half the partitions", |b| {
        owned_by(b, "hub-1") == 4 && owned_by(b, "hub-2") == 4
    })
    .await;
    // The hub that works AG-0001's partition leaves mid-episode; the other one stays.
    let p = hub::cluster::partition_of("AG-0001", 8);
    let (_, body) = get_json(&h1.base_url(), "/api/v1/cluster", Some(OPS)).await;
    let first_owner = body["partition_owners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["partition"] == p)
        .and_then(|o| o["owner"].as_str())
        .unwrap()
        .to_string();
    let (leaving, staying) = if first_owner == "hub-1" {
        (h1, h2)
    } else {
        (h2, h1)
    };
    let mut app = connect(staying.mqtt, "ops", OPS.1).await.unwrap();
    app.subscribe("v1/alerts/#", QoS::AtLeastOnce).await;
    let mut agent = connect(staying.mqtt, "AG-0001", "ag-secret-0001")
        .await
        .unwrap();
    agent
        .subscribe("v1/agents/AG-0001/ack", QoS::AtLeastOnce)
        .await;
    agent
        .subscribe("v1/agents/AG-0001/cmd", QoS::AtLeastOnce)
        .await;

    // Desired state written over HTTP on the hub that does not work the device: the owner
    // applies it, and its command reaches the agent on the other hub.
    let resp = reqwest::Client::new()
        .patch(format!(
            "{}/api/v1/devices/SL-0001/desired",
            staying.base_url()
        ))
        .header("authorization", format!("Bearer {}:{}", OPS.0, OPS.1))
        .body(r#"{"dimming_level":40}"#)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let twin: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(status, 200, "{twin}");
    assert_eq!(twin["desired"]["dimming_level"], 40.0, "{twin}");
    let version = twin["version"].as_u64().unwrap();
    let cmd = agent.next_on("v1/agents/AG-0001/cmd").await;
    let cmd: serde_json::Value = serde_json::from_slice(&cmd.payload).unwrap();
    assert!(cmd.to_string().contains("dimming_level"), "{cmd}");
    let (_, on_owner) = get_json(&leaving.base_url(), "/api/v1/devices/SL-0001", Some(OPS)).await;
    assert_eq!(
        on_owner["twin"]["desired"]["dimming_level"], 40.0,
        "applied by the owner: {on_owner}"
    );
    // A write against a version before that change is refused by the owner, as on one hub.
    let resp = reqwest::Client::new()
        .patch(format!(
            "{}/api/v1/devices/SL-0001/desired",
            staying.base_url()
        ))
        .header("authorization", format!("Bearer {}:{}", OPS.0, OPS.1))
        .body(format!(
            r#"{{"dimming_level":30,"version":{}}}"#,
            version - 1
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);

    let t0 = now_ms() - 60_000;
    lamp_power(&mut agent, 1, t0, 150.0).await;
    let raised = next_alert(&mut app).await;
    assert_eq!(raised["state"], "active", "{raised}");
    assert_eq!(raised["revision"], 1, "{raised}");
    let id = raised["id"].as_str().unwrap().to_string();

    // Acknowledged through the hub that does not work the device: the owner applies it.
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/api/v1/alerts/{id}/ack", staying.base_url()))
        .header("authorization", format!("Bearer {}:{}", OPS.0, OPS.1))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let acked: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(status, 200, "{acked}");
    assert_eq!(acked["state"], "acknowledged", "{acked}");
    assert_eq!(acked["acked_by"], "ops", "{acked}");
    let heard = next_alert(&mut app).await;
    assert_eq!(
        (heard["id"].as_str(), heard["state"].as_str()),
        (Some(id.as_str()), Some("acknowledged"))
    );

    leaving.stop().await;
    cluster_until(
        &staying.base_url(),
        "the staying hub takes every partition",
        |b| owned_by(b, "hub-1") + owned_by(b, "hub-2") == 8 && b["nodes"].as_array().is_some(),
    )
    .await;
    cluster_until(&staying.base_url(), "the partition moved", |b| {
        b["partition_owners"].as_array().unwrap().iter().any(|o| {
            o["partition"] == p
                && o["owner"].as_str() != Some(first_owner.as_str())
                && o["owner"].is_string()
        })
    })
    .await;

    // The twin came with the partition: the staying hub shows the value the leaving hub stored.
    // (Refreshed beside the worker: waited for.)
    let deadline = tokio::time::Instant::now() + WAIT;
    let device = loop {
        let (status, device) =
            get_json(&staying.base_url(), "/api/v1/devices/SL-0001", Some(OPS)).await;
        assert_eq!(status, 200, "{device}");
        if device["twin"]["reported"]["lamp_power"]["value"] == 150.0 {
            break device;
        }
        assert!(tokio::time::Instant::now() < deadline, "{device}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // ... and the desired state it was given, at a version that only grew, and it sends the
    // command again for what the device has not reported yet.
    assert_eq!(device["twin"]["desired"]["dimming_level"], 40.0, "{device}");
    assert!(
        device["twin"]["version"].as_u64().unwrap() > version,
        "{device}"
    );
    let again = agent.next_on("v1/agents/AG-0001/cmd").await;
    let again: serde_json::Value = serde_json::from_slice(&again.payload).unwrap();
    // Not a late retry of the first owner's command: a new one.
    let mut again = again;
    while again["id"] == cmd["id"] {
        let p = agent.next_on("v1/agents/AG-0001/cmd").await;
        again = serde_json::from_slice(&p.payload).unwrap();
    }
    assert!(again.to_string().contains("dimming_level"), "{again}");

    // The episode goes on at the new owner: the same alert, updated, then cleared.
    lamp_power(&mut agent, 2, t0, 180.0).await;
    lamp_power(&mut agent, 3, t0, 40.0).await;
    let mut last = serde_json::Value::Null;
    while last["state"] != "cleared" {
        last = next_alert(&mut app).await;
        assert_eq!(last["id"], id.as_str(), "one alert, one id: {last}");
        assert_ne!(last["revision"], 1, "raised once: {last}");
    }
    assert_eq!(last["value"], 40.0, "{last}");
    assert!(
        last["acked_at"].is_string(),
        "the acknowledgement kept: {last}"
    );

    let (status, list) = get_json(
        &staying.base_url(),
        "/api/v1/alerts?device=SL-0001",
        Some(OPS),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "one alert for the episode: {list:?}");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["state"], "cleared");
    staying.stop().await;
}
