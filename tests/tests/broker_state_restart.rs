//! A command for an offline lamp survives a `kill -9` of the hub: the lamp (a direct device
//! with a persistent MQTT session) subscribes to its commands and goes away; an operator sets
//! its dimming through the HTTP API; the hub queues the `set` command in the lamp's session
//! and writes it to its state file; the hub is SIGKILLed and started again on the same data;
//! the lamp comes back, finds its session (CONNACK session present) and receives the very
//! command, once. Command retries are set far beyond the test, so the command can only come
//! from the restored queue.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS};
use tests::{HubProc, free_port};

const DEADLINE: Duration = Duration::from_secs(30);
const OPS: &str = "Bearer ops:ops-secret-state";

async fn start_hub(config: &Path) -> HubProc {
    HubProc::start(
        Path::new(env!("CARGO_BIN_EXE_test-hub")),
        config,
        None,
        DEADLINE,
    )
    .await
}

fn hub_toml(dir: &Path, mqtt_port: u16) -> PathBuf {
    let text = format!(
        r#"[hub]
mqtt_listen = ["127.0.0.1:{mqtt_port}"]
http_listen = "127.0.0.1:0"
data_dir = "{data}"
command_retry = "10m"
command_timeout = "1h"

[[devices]]
id = "SL-0001"
kind = "streetlight"
secret = "sl-secret-0001"

[[apps]]
id = "ops"
secret = "ops-secret-state"
grants = ["twin/#", "feeds/#"]
"#,
        data = dir.join("hub").display()
    );
    let p = dir.join("hub.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A counter of the hub's `/metrics` (0 when absent).
async fn metric(hub: &HubProc, name: &str) -> f64 {
    let page = reqwest::get(format!("http://{}/metrics", hub.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls a metric every 20 ms until it reaches `at_least`.
async fn metric_reaches(hub: &HubProc, name: &str, at_least: f64) {
    let end = Instant::now() + DEADLINE;
    loop {
        let v = metric(hub, name).await;
        if v >= at_least {
            return;
        }
        assert!(
            Instant::now() < end,
            "{name} stayed at {v}, below {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls a gauge every 20 ms until it is 0.
async fn metric_settles(hub: &HubProc, name: &str) {
    let end = Instant::now() + DEADLINE;
    loop {
        let v = metric(hub, name).await;
        if v == 0.0 {
            return;
        }
        assert!(Instant::now() < end, "{name} stayed at {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The lamp with a persistent session: (client, event loop, CONNACK session present).
async fn lamp(port: u16) -> (AsyncClient, EventLoop, bool) {
    let mut o = MqttOptions::new("SL-0001", "127.0.0.1", port);
    o.set_credentials("SL-0001", "sl-secret-0001");
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 16);
    let present = loop {
        match tokio::time::timeout(DEADLINE, el.poll())
            .await
            .expect("CONNACK in time")
            .expect("the lamp connects")
        {
            Event::Incoming(Incoming::ConnAck(a)) => break a.session_present,
            _ => continue,
        }
    };
    (client, el, present)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_for_an_offline_lamp_survives_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = hub_toml(dir.path(), port);
    let mut hub = start_hub(&config).await;

    // The lamp subscribes to its commands, then goes away (a clean DISCONNECT: no will).
    let (client, mut el, present) = lamp(port).await;
    assert!(!present);
    client
        .subscribe("v1/devices/SL-0001/cmd", QoS::AtLeastOnce)
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Incoming::SubAck(_)) = el.poll().await.unwrap() {
            break;
        }
    }
    client.disconnect().await.unwrap();
    while el.poll().await.is_ok() {}

    // The operator dims it while it is away.
    let resp = reqwest::Client::new()
        .patch(format!(
            "http://{}/api/v1/devices/SL-0001/desired",
            hub.http
        ))
        .header("Authorization", OPS)
        .body(r#"{"dimming_level": 35}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let twin: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let command_id = twin["commands"][0]["id"].as_str().unwrap().to_string();

    // The command is queued in the lamp's session (marked for the state file first); once
    // nothing is pending any more, it is on disk.
    metric_reaches(&hub, "hub_mqtt_queued_offline_total", 1.0).await;
    metric_settles(&hub, "hub_mqtt_state_pending").await;

    hub.proc.kill();
    let hub = start_hub(&config).await;
    assert_eq!(metric(&hub, "hub_mqtt_sessions").await, 1.0, "restored");

    // The lamp returns: its session is there, and the command with it.
    let (_client, mut el, present) = lamp(port).await;
    assert!(present, "CONNACK session present after the restart");
    let cmd = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Event::Incoming(Incoming::Publish(p)) = el.poll().await.unwrap() {
                break p;
            }
        }
    })
    .await
    .expect("the queued command arrives");
    assert_eq!(cmd.topic, "v1/devices/SL-0001/cmd");
    let body: serde_json::Value = serde_json::from_slice(&cmd.payload).unwrap();
    assert_eq!(body["id"], command_id.as_str());
    assert_eq!(body["name"], "set");
    assert_eq!(body["args"]["dimming_level"], serde_json::json!(35.0));
}
