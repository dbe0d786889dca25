//! Desired state reaches a Modbus device behind an agent, end to end: the hub (`Server`: store,
//! broker, pipeline, API), the real edge agent (in-process, on its own runtime) and a
//! simulated streetlight running the real firmware behind Modbus TCP (`sim::device`).
//!
//! PATCH dimming 40 -> the hub's `set` command on `v1/agents/AG-0001/cmd` -> the agent writes
//! holding register 16 through the profile -> the firmware drives its PWM at 40 % -> the
//! agent's polls report `dimming_level` 40 and the metered lamp power of a 40 % lamp -> the
//! twin's delta is empty and its command `done`.

use std::time::Duration;

use hub::config::HubConfig;
use hub::server::Server;
use protocols::messages::{CommandState, Scalar, Twin};
use protocols::profile::DeviceProfile;
use sim::device::{DeviceSpec, spawn_tcp};
use sim::world::World;

mod agent_support;
use agent_support::{profile_path, start_agent};

const WAIT: Duration = Duration::from_secs(20);
const AUTH: &str = "Bearer command-center:cc-secret-123";

async fn twin(http: std::net::SocketAddr, device: &str) -> Twin {
    let resp = reqwest::Client::new()
        .get(format!("http://{http}/api/v1/devices/{device}"))
        .header("Authorization", AUTH)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let v: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    serde_json::from_value(v["twin"].clone()).unwrap()
}

/// Polls the twin until `check` holds.
async fn twin_until(http: std::net::SocketAddr, what: &str, check: impl Fn(&Twin) -> bool) -> Twin {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let t = twin(http, "SL-0001").await;
        if check(&t) {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {t:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn number(t: &Twin, q: &str) -> Option<f64> {
    match t.reported.get(q).map(|r| &r.value) {
        Some(Scalar::Number(v)) => Some(*v),
        _ => None,
    }
}

async fn patch(http: std::net::SocketAddr, body: &str) -> (reqwest::StatusCode, serde_json::Value) {
    let resp = reqwest::Client::new()
        .patch(format!("http://{http}/api/v1/devices/SL-0001/desired"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dimming_set_through_the_twin_reaches_the_firmware() {
    let dir = tempfile::tempdir().unwrap();
    let profile = profile_path();
    let mut cfg = HubConfig::from_toml(&format!(
        r#"
[hub]
mqtt_listen = ["127.0.0.1:0"]
http_listen = "127.0.0.1:0"
command_retry = "1s"
command_timeout = "15s"

[[devices]]
id = "SL-0001"
kind = "streetlight"
agent = "AG-0001"
profile = "{}"

[[agents]]
id = "AG-0001"
secret = "ag-secret-0001"

[[apps]]
id = "command-center"
secret = "cc-secret-123"
grants = ["feeds/#", "twin/#", "alerts/#"]
"#,
        profile.display()
    ))
    .unwrap();
    cfg.hub.data_dir = dir.path().join("hub");
    let server = Server::start(cfg).await.unwrap();
    let (mqtt, http) = (server.mqtt_addrs()[0], server.http_addr());

    // The streetlight: real firmware on simulated peripherals, Modbus TCP on a free port.
    let world = World::default();
    let p = DeviceProfile::from_toml(&std::fs::read_to_string(&profile).unwrap()).unwrap();
    let mut spec = DeviceSpec::new("SL-0001", p, 1, world.site("SL-0001"));
    spec.sample_interval = Duration::from_millis(100);
    let device = spawn_tcp(spec, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let modbus = device.addr.unwrap();

    let agent_cfg = edge_agent::config::AgentConfig::from_toml(
        &format!(
            r#"
[agent]
id = "AG-0001"
secret = "ag-secret-0001"
hub = "mqtt://{mqtt}"
data_dir = "agent"
batch_max_age = "50ms"
health_interval = "1s"

[[modbus]]
device = "SL-0001"
profile = "{}"
transport = "tcp://{modbus}"
unit = 1
interval = "200ms"
"#,
            profile.display()
        ),
        dir.path(),
    )
    .unwrap();
    let agent = start_agent(agent_cfg);

    // The agent reports the lamp as the firmware starts it.
    let before = twin_until(http, "first report", |t| {
        t.online && number(t, "dimming_level").is_some() && number(t, "lamp_power").is_some()
    })
    .await;
    assert_ne!(number(&before, "dimming_level"), Some(40.0));

    // Out of the profile's range: refused, nothing sent.
    let (s, e) = patch(http, r#"{"dimming_level": 140}"#).await;
    assert_eq!(s, reqwest::StatusCode::BAD_REQUEST, "{e}");

    let (s, t) = patch(http, r#"{"dimming_level": 40}"#).await;
    assert_eq!(s, reqwest::StatusCode::OK, "{t}");
    assert_eq!(t["delta"]["dimming_level"], 40.0);

    // Reported state follows: the register reads back 40 and the meter sees a lamp driven at
    // 40 % of its 100 W (plus the driver's 0.3 W standby).
    let after = twin_until(http, "dimming 40 reported and metered", |t| {
        number(t, "dimming_level") == Some(40.0)
            && number(t, "lamp_power").is_some_and(|w| (w - 40.3).abs() < 2.0)
    })
    .await;
    let done = twin_until(http, "empty delta and a done command", |t| {
        t.delta.is_empty()
            && t.commands
                .last()
                .is_some_and(|c| c.state == CommandState::Done)
    })
    .await;
    assert_eq!(done.desired["dimming_level"], Scalar::Number(40.0));
    assert!(done.version >= after.version);
    let c = done.commands.last().unwrap();
    assert_eq!(c.args["dimming_level"], Scalar::Number(40.0));

    drop(agent);
    device.stop().await;
    server.shutdown().await.unwrap();
}
