//! The whole chain, end to end, with every real part in one process:
//! firmware streetlight node (simulated peripherals) -> Modbus TCP -> edge agent (poll, durable
//! queue, MQTT uplink) -> hub (ingress, pipeline, store, twin) -> feed received by an app over
//! MQTT, with the value, unit and quality the firmware measured; and back: desired dimming
//! (HTTP PATCH, then the MQTT desired topic) -> hub -> agent `set` -> Modbus write -> the
//! firmware's PWM duty and relay -> the reported dimming level in the twin.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hub::config::HubConfig;
use hub::server::Server;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use sim::device::{DeviceSpec, spawn_tcp};
use sim::world::World;
use tokio::sync::{mpsc, watch};

const DEADLINE: Duration = Duration::from_secs(20);
const APP_SECRET: &str = "cc-secret-chain-1";

fn profile() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/streetlight-lc200.toml")
}

/// Messages an app receives, and a way to wait for one.
struct App {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(String, Value)>,
}

impl App {
    async fn connect(port: u16) -> App {
        let mut opts = MqttOptions::new("command-center.chain", "127.0.0.1", port);
        opts.set_credentials("command-center", APP_SECRET);
        let (client, mut events) = AsyncClient::new(opts, 32);
        let (tx, rx) = mpsc::unbounded_channel();
        let sub = client.clone();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        sub.subscribe("v1/feeds/streetlight/SL-0001", QoS::AtLeastOnce)
                            .await
                            .unwrap();
                        sub.subscribe("v1/twin/SL-0001", QoS::AtLeastOnce)
                            .await
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: Value = serde_json::from_slice(&p.payload).unwrap();
                        if tx.send((p.topic.clone(), v)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        App { client, rx }
    }

    /// The first message on `topic` that satisfies `ok`.
    async fn wait(&mut self, topic: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last = Value::Null;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some((t, v))) if t == topic => {
                    if ok(&v) {
                        return v;
                    }
                    last = v;
                }
                Ok(Some(_)) => {}
                _ => panic!("timed out waiting for {what} on {topic}; last: {last}"),
            }
        }
    }
}

/// Polls `cond` every 20 ms until it holds, or fails naming `what`.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn value(doc: &Value, q: &str) -> f64 {
    doc["values"][q]["value"].as_f64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_to_app_and_dimming_back_to_the_pwm() {
    let dir = tempfile::tempdir().unwrap();
    let hub_toml = format!(
        r#"
[hub]
mqtt_listen = ["127.0.0.1:0"]
http_listen = "127.0.0.1:0"

[[devices]]
id = "SL-0001"
kind = "streetlight"
agent = "AG-0001"
dept = "lighting"
lat = 30.4212
lon = 120.301
profile = "{profile}"

[[agents]]
id = "AG-0001"
secret = "agent-secret-chain-1"

[[apps]]
id = "command-center"
secret = "{APP_SECRET}"
grants = ["feeds/#", "twin/#"]
"#,
        profile = profile().display()
    );
    let mut cfg = HubConfig::from_toml(&hub_toml).unwrap();
    cfg.hub.data_dir = dir.path().join("hub");
    let server = Server::start(cfg).await.unwrap();
    let mqtt_port = server.mqtt_addrs()[0].port();
    let http = format!("http://{}", server.http_addr());

    // The lamp controller: the real firmware on simulated peripherals, 100 W lamp, 230 V mains.
    let world = World::default();
    let site = world.site("SL-0001");
    let profile_text = std::fs::read_to_string(profile()).unwrap();
    let device_profile = protocols::profile::DeviceProfile::from_toml(&profile_text).unwrap();
    let mut spec = DeviceSpec::new("SL-0001", device_profile, 1, site.clone());
    spec.sample_interval = Duration::from_millis(200);
    let device = spawn_tcp(spec, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let lamp = device.lamp.clone().unwrap();
    assert_eq!(lamp.drive(), 1.0, "the firmware powers up at full light");

    let agent_toml = format!(
        r#"
[agent]
id = "AG-0001"
secret = "agent-secret-chain-1"
hub = "mqtt://127.0.0.1:{mqtt_port}"
data_dir = "agent"
health_interval = "1s"
batch_max_age = "100ms"

[[modbus]]
device = "SL-0001"
profile = "{profile}"
transport = "{endpoint}"
interval = "300ms"
"#,
        profile = profile().display(),
        endpoint = device.endpoint
    );
    let agent_cfg = edge_agent::config::AgentConfig::from_toml(&agent_toml, dir.path()).unwrap();
    let (stop, mut stop_rx) = watch::channel(false);
    let agent = tokio::spawn(edge_agent::agent::run_until(agent_cfg, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));

    let mut app = App::connect(mqtt_port).await;
    let feed_topic = "v1/feeds/streetlight/SL-0001";
    let twin_topic = "v1/twin/SL-0001";

    // Up: what the firmware measured reaches the app, normalized.
    let feed = app
        .wait(feed_topic, "a feed with the lamp's metering", |f| {
            f["values"]["lamp_power"].is_object() && f["values"]["lamp_status"].is_object()
        })
        .await;
    assert_eq!(feed["device"], "SL-0001");
    assert_eq!(feed["kind"], "streetlight");
    assert_eq!(feed["dept"], "lighting");
    assert_eq!(feed["location"], json!({"lat": 30.4212, "lon": 120.301}));
    let v = &feed["values"];
    assert_eq!(v["lamp_power"]["unit"], "W");
    assert_eq!(v["lamp_power"]["quality"], "good");
    // 100 W at full drive plus the driver's 0.3 W standby, within the meter's noise.
    assert!((value(&feed, "lamp_power") - 100.3).abs() < 2.0, "{feed}");
    assert_eq!(v["lamp_voltage"]["unit"], "V");
    assert!((value(&feed, "lamp_voltage") - 230.0).abs() < 3.0, "{feed}");
    assert_eq!(
        v["dimming_level"],
        json!({"value": 100.0, "unit": "%", "quality": "good"})
    );
    assert_eq!(v["lamp_status"]["value"], "ok");
    // The energy register counts Wh; the hub holds kWh.
    assert_eq!(v["lamp_energy"]["unit"], "kWh");

    // Down: desired dimming over HTTP reaches the PWM.
    let http_client = reqwest::Client::new();
    let resp = http_client
        .patch(format!("{http}/api/v1/devices/SL-0001/desired"))
        .header(
            "Authorization",
            format!("Bearer command-center:{APP_SECRET}"),
        )
        .body(r#"{"dimming_level": 40}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let twin: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(twin["desired"]["dimming_level"], 40.0);
    eventually("the PWM at 40 % duty", || {
        (lamp.drive() - 0.40).abs() < 1e-9 && lamp.relay_closed()
    })
    .await;
    let twin = app
        .wait(twin_topic, "the twin reporting 40 %", |t| {
            t["reported"]["dimming_level"]["value"] == 40.0
        })
        .await;
    assert_eq!(twin["delta"], json!({}), "{twin}");
    assert_eq!(twin["online"], true);
    let feed = app
        .wait(feed_topic, "the lamp drawing 40 %", |f| {
            f["values"]["lamp_power"].is_object() && value(f, "lamp_power") < 60.0
        })
        .await;
    assert!((value(&feed, "lamp_power") - 40.3).abs() < 2.0, "{feed}");

    // A value the profile refuses changes nothing.
    let resp = http_client
        .patch(format!("{http}/api/v1/devices/SL-0001/desired"))
        .header(
            "Authorization",
            format!("Bearer command-center:{APP_SECRET}"),
        )
        .body(r#"{"dimming_level": 150}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!((lamp.drive() - 0.40).abs() < 1e-9);

    // Down again through the MQTT desired topic: 0 % opens the relay.
    app.client
        .publish(
            "v1/twin/SL-0001/desired",
            QoS::AtLeastOnce,
            false,
            r#"{"dimming_level": 0}"#,
        )
        .await
        .unwrap();
    eventually("the relay open and the PWM at 0", || {
        lamp.drive() == 0.0 && !lamp.relay_closed()
    })
    .await;
    app.wait(twin_topic, "the twin reporting 0 %", |t| {
        t["reported"]["dimming_level"]["value"] == 0.0 && t["desired"]["dimming_level"] == 0.0
    })
    .await;
    let feed = app
        .wait(feed_topic, "the lamp drawing nothing", |f| {
            f["values"]["lamp_power"].is_object() && value(f, "lamp_power") < 1.0
        })
        .await;
    assert_eq!(feed["values"]["lamp_status"]["value"], "ok");

    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(15), agent)
        .await
        .expect("the agent stops")
        .unwrap()
        .unwrap();
    server.shutdown().await.unwrap();
    device.stop().await;
}
