//! Desired state and commands with the whole hub (`Server`: store, embedded broker,
//! pipeline, API) and a real MQTT client (rumqttc) playing a direct JSON device:
//! desired -> command -> report -> empty delta; a command that is resent and times out; one
//! the device refuses; values refused by the profile's range and by writability.

use std::net::SocketAddr;
use std::time::Duration;

use hub::config::HubConfig;
use hub::server::Server;
use protocols::messages::{Command, CommandState, DeadLetter, Twin};
use reqwest::StatusCode;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn config(dir: &std::path::Path, retry: &str, timeout: &str) -> HubConfig {
    let profile = dir.join("dimmer-80.toml");
    let lc200 = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/streetlight-lc200.toml"),
    )
    .unwrap();
    // The same controller, limited to 80 % (a district policy for this pole).
    std::fs::write(&profile, lc200.replace("max = 100", "max = 80")).unwrap();
    let mut cfg = HubConfig::from_toml(&format!(
        r#"
[hub]
mqtt_listen = ["127.0.0.1:0"]
http_listen = "127.0.0.1:0"
command_retry = "{retry}"
command_timeout = "{timeout}"

[[devices]]
id = "SL-9"
kind = "streetlight"
secret = "sl9-secret-1"

[[devices]]
id = "SL-8"
kind = "streetlight"
secret = "sl8-secret-1"
profile = "{}"

[[apps]]
id = "twin-app"
secret = "twin-secret-1"
grants = ["twin/#", "feeds/#", "deadletter/#"]
"#,
        profile.display()
    ))
    .unwrap();
    cfg.hub.data_dir = dir.join("data");
    cfg
}

const AUTH: &str = "Bearer twin-app:twin-secret-1";

/// A connected MQTT client whose events arrive on a channel.
struct Mqtt {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Incoming>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connect(addr: SocketAddr, id: &str, secret: &str) -> Mqtt {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_credentials(id, secret);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(o, 100);
    loop {
        match tokio::time::timeout(WAIT, el.poll())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Incoming(Incoming::ConnAck(_)) => break,
            _ => continue,
        }
    }
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut el: EventLoop = el;
        while let Ok(ev) = el.poll().await {
            if let Event::Incoming(i) = ev
                && tx.send(i).is_err()
            {
                return;
            }
        }
    });
    Mqtt {
        client,
        events,
        task,
    }
}

impl Mqtt {
    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        self.next(|i| matches!(i, Incoming::SubAck(_)).then_some(()))
            .await;
    }

    async fn next<T>(&mut self, mut pred: impl FnMut(&Incoming) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let i = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("timed out waiting for a packet")
                .expect("connection ended");
            if let Some(t) = pred(&i) {
                return t;
            }
        }
    }

    async fn command(&mut self, topic: &str) -> Command {
        self.next(|i| match i {
            Incoming::Publish(p) if p.topic == topic => serde_json::from_slice(&p.payload).ok(),
            _ => None,
        })
        .await
    }

    async fn publish(&self, topic: &str, payload: String) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }
}

async fn patch(http: SocketAddr, device: &str, body: &str) -> (StatusCode, serde_json::Value) {
    let resp = reqwest::Client::new()
        .patch(format!("http://{http}/api/v1/devices/{device}/desired"))
        .header("Authorization", AUTH)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let s = resp.status();
    (
        s,
        serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap(),
    )
}

async fn twin(http: SocketAddr, device: &str) -> Twin {
    let resp = reqwest::Client::new()
        .get(format!("http://{http}/api/v1/devices/{device}"))
        .header("Authorization", AUTH)
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    serde_json::from_value(v["twin"].clone()).unwrap()
}

/// Polls the twin until `check` holds (or fails the test after [`WAIT`]).
async fn twin_until(
    http: SocketAddr,
    device: &str,
    what: &str,
    check: impl Fn(&Twin) -> bool,
) -> Twin {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let t = twin(http, device).await;
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

async fn metrics(http: SocketAddr) -> String {
    reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn desired_command_report_empty_delta_for_a_direct_device() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path(), "2s", "30s"))
        .await
        .unwrap();
    let (mqtt, http) = (server.mqtt_addrs()[0], server.http_addr());
    let mut dev = connect(mqtt, "SL-9", "sl9-secret-1").await;
    dev.subscribe("v1/devices/SL-9/cmd").await;
    dev.publish(
        "v1/devices/SL-9/telemetry",
        r#"{"values":{"dimming_level":100}}"#.into(),
    )
    .await;
    twin_until(http, "SL-9", "reported 100", |t| {
        t.reported.contains_key("dimming_level")
    })
    .await;

    let (s, t) = patch(http, "SL-9", r#"{"dimming_level": 40}"#).await;
    assert_eq!(s, StatusCode::OK, "{t}");
    assert_eq!(t["delta"]["dimming_level"], 40.0);
    assert_eq!(t["commands"][0]["state"], "pending");
    let version = t["version"].as_u64().unwrap();

    // The device gets the command, sets the lamp and reports.
    let cmd = dev.command("v1/devices/SL-9/cmd").await;
    assert_eq!(cmd.name, "set");
    assert_eq!(cmd.device, None);
    assert_eq!(cmd.args["dimming_level"], serde_json::json!(40.0));
    assert_eq!(cmd.id, t["commands"][0]["id"].as_str().unwrap());
    dev.publish(
        "v1/devices/SL-9/cmd/result",
        format!(
            r#"{{"id":"{}","ok":true,"values":{{"dimming_level":40}},"ts":1}}"#,
            cmd.id
        ),
    )
    .await;
    dev.publish(
        "v1/devices/SL-9/telemetry",
        r#"{"values":{"dimming_level":40}}"#.into(),
    )
    .await;
    let done = twin_until(http, "SL-9", "empty delta", |t| {
        t.delta.is_empty()
            && t.commands
                .last()
                .is_some_and(|c| c.state == CommandState::Done)
    })
    .await;
    assert!(done.version > version);
    assert_eq!(done.commands.len(), 1);
    let m = metrics(http).await;
    assert!(
        m.contains("hub_commands_finished_total{result=\"done\"} 1"),
        "{m}"
    );
    assert!(m.contains("hub_commands_pending 0"));
    drop(dev);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unanswered_command_is_resent_with_backoff_then_fails() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path(), "100ms", "1500ms"))
        .await
        .unwrap();
    let (mqtt, http) = (server.mqtt_addrs()[0], server.http_addr());
    let mut dev = connect(mqtt, "SL-9", "sl9-secret-1").await;
    dev.subscribe("v1/devices/SL-9/cmd").await;
    let (s, t) = patch(http, "SL-9", r#"{"dimming_level": 30}"#).await;
    assert_eq!(s, StatusCode::OK, "{t}");
    // Sent again and again (100 ms, 200 ms, 400 ms, ...), always the same command id.
    let first = dev.command("v1/devices/SL-9/cmd").await;
    for _ in 0..2 {
        let again = dev.command("v1/devices/SL-9/cmd").await;
        assert_eq!(again.id, first.id);
    }
    let failed = twin_until(http, "SL-9", "timeout", |t| {
        t.commands
            .last()
            .is_some_and(|c| c.state == CommandState::Failed)
    })
    .await;
    let c = failed.commands.last().unwrap();
    assert!(c.attempts >= 3, "{c:?}");
    assert!(
        c.error
            .as_deref()
            .unwrap()
            .contains("did not match within 1s500ms"),
        "{c:?}"
    );
    // Desired stays; the delta shows what is still missing.
    assert_eq!(
        failed.delta["dimming_level"],
        protocols::messages::Scalar::Number(30.0)
    );
    let m = metrics(http).await;
    assert!(
        m.contains("hub_commands_finished_total{result=\"timeout\"} 1"),
        "{m}"
    );
    assert!(!m.contains("hub_commands_retried_total 0\n"));
    drop(dev);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_command_the_device_refuses_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path(), "5s", "60s"))
        .await
        .unwrap();
    let (mqtt, http) = (server.mqtt_addrs()[0], server.http_addr());
    let mut dev = connect(mqtt, "SL-9", "sl9-secret-1").await;
    dev.subscribe("v1/devices/SL-9/cmd").await;
    patch(http, "SL-9", r#"{"dimming_level": 55}"#).await;
    let cmd = dev.command("v1/devices/SL-9/cmd").await;
    dev.publish(
        "v1/devices/SL-9/cmd/result",
        format!(
            r#"{{"id":"{}","ok":false,"error":"driver fault","ts":1}}"#,
            cmd.id
        ),
    )
    .await;
    let t = twin_until(http, "SL-9", "refused", |t| {
        t.commands
            .last()
            .is_some_and(|c| c.state == CommandState::Failed)
    })
    .await;
    let c = t.commands.last().unwrap();
    assert_eq!(c.error.as_deref(), Some("driver fault"));
    assert_eq!(c.attempts, 1, "no resend after a refusal");
    assert!(
        metrics(http)
            .await
            .contains("hub_commands_finished_total{result=\"refused\"} 1")
    );
    drop(dev);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn desired_values_are_checked_against_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(config(dir.path(), "2s", "30s"))
        .await
        .unwrap();
    let (mqtt, http) = (server.mqtt_addrs()[0], server.http_addr());
    // SL-8's profile allows 0..80 %.
    let (s, e) = patch(http, "SL-8", r#"{"dimming_level": 90}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("90 is outside the allowed range 0..=80 of `dimming_level`"),
        "{e}"
    );
    let (s, _) = patch(http, "SL-8", r#"{"dimming_level": 80}"#).await;
    assert_eq!(s, StatusCode::OK);
    // SL-9 has no profile: the physical range 0..100 applies.
    assert_eq!(
        patch(http, "SL-9", r#"{"dimming_level": 90}"#).await.0,
        StatusCode::OK
    );
    let (s, e) = patch(http, "SL-9", r#"{"dimming_level": 150}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(e["detail"].as_str().unwrap().contains("0..=100"), "{e}");
    // Not writable: neither by profile nor by quantity.
    for dev in ["SL-8", "SL-9"] {
        let (s, e) = patch(http, dev, r#"{"lamp_power": 10}"#).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{dev}");
        assert!(
            e["detail"].as_str().unwrap().contains("not controllable"),
            "{e}"
        );
    }
    // Over MQTT the refusal is a dead letter with its reason.
    let mut app = connect(mqtt, "twin-app", "twin-secret-1").await;
    app.subscribe("v1/deadletter/twin-app").await;
    app.publish("v1/twin/SL-8/desired", r#"{"dimming_level": 95}"#.into())
        .await;
    let dl: DeadLetter = app
        .next(|i| match i {
            Incoming::Publish(p) if p.topic == "v1/deadletter/twin-app" => {
                serde_json::from_slice(&p.payload).ok()
            }
            _ => None,
        })
        .await;
    assert!(
        dl.reason.starts_with("out_of_range: 95 is outside"),
        "{}",
        dl.reason
    );
    // Still 80 as desired.
    let t = twin(http, "SL-8").await;
    assert_eq!(
        t.desired["dimming_level"],
        protocols::messages::Scalar::Number(80.0)
    );
    drop(app);
    server.shutdown().await.unwrap();
}
