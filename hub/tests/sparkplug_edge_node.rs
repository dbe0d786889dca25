//! A Sparkplug B edge node nobody here wrote (`pysparkplug`, driven by
//! `tests/peers/sparkplug_edge_node.py`) against the whole hub over real MQTT: births take its
//! two pumps online with their values, data by alias is stored and fed, a sequence gap brings
//! a rebirth request and the rebirth, desired state goes down as DCMD and the report closes
//! the command, the will on kill -9 takes the pumps offline, and the access rules keep a node
//! to its own topics.

mod hub_e2e_support;

use std::process::Stdio;
use std::time::Duration;

use hub_e2e_support::*;
use protocols::messages::{CommandState, Twin};
use rumqttc::QoS;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const NODE: &str = "PS-EN01";
const NODE_SECRET: &str = "ps-secret-0001";
const OPS: (&str, &str) = ("ops", "ops-secret-123");

fn hub_config(dir: &std::path::Path) -> hub::config::HubConfig {
    let mut cfg = config(dir);
    let extra = hub::config::HubConfig::from_toml(&format!(
        r#"
        [[agents]]
        id = "{NODE}"
        secret = "{NODE_SECRET}"
        protocol = "sparkplug"

        [[devices]]
        id = "PS-P01"
        kind = "pump"
        agent = "{NODE}"

        [[devices]]
        id = "PS-P02"
        kind = "pump"
        agent = "{NODE}"

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
        "#
    ))
    .unwrap();
    cfg.agents.extend(extra.agents);
    cfg.devices.extend(extra.devices);
    cfg.sparkplug_metrics = extra.sparkplug_metrics;
    cfg.sparkplug.host_id = Some("district-hub".into());
    cfg
}

/// The Python edge node: commands on stdin, events on stdout.
struct EdgeNode {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl EdgeNode {
    async fn start(hub: &E2eHub) -> EdgeNode {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/peers/sparkplug_edge_node.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--port", &hub.mqtt.port().to_string()])
            .args([
                "--node",
                NODE,
                "--password",
                NODE_SECRET,
                "--group",
                "District",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with pysparkplug (scripts/setup-peers.sh)");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut node = EdgeNode {
            child,
            stdin,
            lines,
        };
        node.expect("ready").await;
        node
    }

    async fn send(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The next event line that starts with `prefix`.
    async fn expect(&mut self, prefix: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("edge node said no `{prefix}` in time"))
                .unwrap()
                .unwrap_or_else(|| panic!("edge node ended before `{prefix}`"));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }
}

fn json(p: &rumqttc::Publish) -> serde_json::Value {
    serde_json::from_slice(&p.payload).unwrap()
}

/// The next feed of `device` whose `pump_speed` is `speed` (births and data before it are
/// skipped).
async fn feed_with_speed(feeds: &mut Client, device: &str, speed: f64) -> serde_json::Value {
    loop {
        let f = json(&feeds.next_on(&format!("v1/feeds/pump/{device}")).await);
        if f["values"]["pump_speed"]["value"] == speed {
            return f;
        }
    }
}

async fn status(st: &mut Client, device: &str) -> String {
    let p = st.next_on(&format!("v1/status/{device}")).await;
    String::from_utf8(p.payload.to_vec()).unwrap()
}

async fn twin_until(base: &str, device: &str, what: &str, check: impl Fn(&Twin) -> bool) -> Twin {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = get_json(base, &format!("/api/v1/devices/{device}"), Some(OPS)).await;
        assert_eq!(code, 200, "{body}");
        let t: Twin = serde_json::from_value(body["twin"].clone()).unwrap();
        if check(&t) {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparkplug_edge_node_reports_rebirths_obeys_and_dies() {
    let dir = tempfile::tempdir().unwrap();
    let hub = E2eHub::start(hub_config(dir.path())).await;
    let base = hub.base_url();
    // One connection per topic family: `next_on` skips what it does not wait for.
    let mut feeds = connect_with(options(hub.mqtt, "ops.feeds", "ops", OPS.1))
        .await
        .unwrap();
    feeds.subscribe("v1/feeds/pump/#", QoS::AtLeastOnce).await;
    let mut st = connect_with(options(hub.mqtt, "ops.status", "ops", OPS.1))
        .await
        .unwrap();
    st.subscribe("v1/status/PS-P01", QoS::AtLeastOnce).await;
    twin_until(&base, "PS-P01", "PS-P01 offline before its birth", |t| {
        !t.online
    })
    .await;
    let mut letters = connect_with(options(hub.mqtt, "ops.letters", "ops", OPS.1))
        .await
        .unwrap();
    letters
        .subscribe(&format!("v1/deadletter/{NODE}"), QoS::AtLeastOnce)
        .await;

    // Births: the pumps come online with their birth values (360 m3/h = 0.1 m3/s).
    let mut node = EdgeNode::start(&hub).await;
    assert_eq!(status(&mut st, "PS-P01").await, "online");
    let f = feed_with_speed(&mut feeds, "PS-P01", 40.0).await;
    assert!((f["values"]["water_flow"]["value"].as_f64().unwrap() - 0.1).abs() < 1e-9);
    assert_eq!(f["values"]["pump_running"]["value"], true);

    // Data by alias only.
    node.send("data PS-P02 55.5 720").await;
    let f = feed_with_speed(&mut feeds, "PS-P02", 55.5).await;
    assert!((f["values"]["water_flow"]["value"].as_f64().unwrap() - 0.2).abs() < 1e-9);
    let now = now_ms();
    let points = series(&base, "PS-P02", "pump_speed", now - 600_000, now + 60_000).await;
    assert!(points.iter().any(|(_, v)| *v == 55.5), "{points:?}");

    // A seq gap: that message goes to the dead letters, the hub asks for a rebirth, the node
    // publishes its births again, and data flows on.
    node.send("gap").await;
    node.expect("skipped").await;
    node.send("data PS-P01 61 500").await;
    node.expect("rebirth").await;
    let letter = json(&letters.next_on(&format!("v1/deadletter/{NODE}")).await);
    assert!(
        letter["reason"]
            .as_str()
            .unwrap()
            .starts_with("out_of_session"),
        "{letter}"
    );
    node.send("data PS-P01 62 500").await;
    // After the rebirth's values, the new data (61 never arrives: it was out of sequence).
    let f = feed_with_speed(&mut feeds, "PS-P01", 62.0).await;
    assert!((f["values"]["water_flow"]["value"].as_f64().unwrap() - 500.0 / 3600.0).abs() < 1e-9);
    let now = now_ms();
    let points = series(&base, "PS-P01", "pump_speed", now - 600_000, now + 60_000).await;
    assert!(points.iter().any(|(_, v)| *v == 62.0), "{points:?}");
    assert!(!points.iter().any(|(_, v)| *v == 61.0), "{points:?}");

    // Desired speed goes down as DCMD; the node applies it and reports it by name, which
    // closes the command.
    let resp = reqwest::Client::new()
        .patch(format!("{base}/api/v1/devices/PS-P01/desired"))
        .header("Authorization", format!("Bearer {}:{}", OPS.0, OPS.1))
        .body(r#"{"pump_speed": 35}"#)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    let dcmd = node.expect("dcmd").await;
    assert_eq!(dcmd, "dcmd PS-P01 Pump/Speed 35.0");
    let t = twin_until(&base, "PS-P01", "the command done", |t| {
        t.commands
            .last()
            .is_some_and(|c| c.state == CommandState::Done)
    })
    .await;
    assert!(t.delta.is_empty(), "{t:?}");
    assert_eq!(
        t.reported["pump_speed"].value,
        protocols::messages::Scalar::Number(35.0)
    );

    // kill -9: the broker publishes the node's will (NDEATH with the session's bdSeq), and
    // the pumps go offline.
    node.child.start_kill().unwrap();
    node.child.wait().await.unwrap();
    assert_eq!(status(&mut st, "PS-P01").await, "offline");
    twin_until(&base, "PS-P02", "PS-P02 offline", |t| !t.online).await;

    // The access rules: the node's credentials publish only its own node's topics.
    let mut impostor = connect_with(options(hub.mqtt, NODE, NODE, NODE_SECRET))
        .await
        .unwrap();
    impostor
        .publish(
            "spBv1.0/District/NDATA/PS-EN02",
            QoS::AtLeastOnce,
            vec![0u8],
        )
        .await;
    let letter = json(&letters.next_on(&format!("v1/deadletter/{NODE}")).await);
    assert!(
        letter["reason"].as_str().unwrap().starts_with("refused"),
        "{letter}"
    );
    let codes = impostor
        .subscribe("spBv1.0/District/DDATA/#", QoS::AtLeastOnce)
        .await;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure]);
    // What a node may read: the hub's state as its primary host, retained.
    impostor
        .subscribe("spBv1.0/STATE/+", QoS::AtLeastOnce)
        .await;
    let state = json(&impostor.next_on("spBv1.0/STATE/district-hub").await);
    assert_eq!(state["online"], true, "{state}");
    drop(impostor);
    hub.stop().await;
}
