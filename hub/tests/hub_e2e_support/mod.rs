//! Shared by the whole-hub end-to-end tests: a hub (`hub::server::Server`, or the `hub`
//! binary as a child process) on free ports with data in a temporary directory, and real
//! clients: rumqttc, mosquitto_pub / mosquitto_sub, reqwest.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use hub::config::HubConfig;
use hub::server::Server;
use protocols::batch::{AgentBatch, DeviceReadings, Reading, Sample};
use protocols::{Quality, Quantity, Value};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, QoS};
use tokio::sync::mpsc;

/// Longest any test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(15);

/// 2026-11-22T08:00:00Z.
pub const T0: i64 = 1_795_334_400_000;

/// The identities of the end-to-end tests.
pub const CONFIG: &str = r#"
[[devices]]
id = "WL-0001"
kind = "water_level"
secret = "wl-secret-0001"
dept = "water"
lat = 30.4212
lon = 120.3010

[[devices]]
id = "WL-0002"
kind = "water_level"
secret = "wl-secret-0002"
dept = "water"

[[devices]]
id = "SL-0001"
kind = "streetlight"
secret = "sl-secret-0001"
agent = "AG-0001"
dept = "lighting"

[[devices]]
id = "SL-0002"
kind = "streetlight"
agent = "AG-0001"
dept = "lighting"

[[devices]]
id = "MH-0001"
kind = "manhole"
agent = "AG-0002"
dept = "drainage"

[[agents]]
id = "AG-0001"
secret = "ag-secret-0001"

[[agents]]
id = "AG-0002"
secret = "ag-secret-0002"

[[apps]]
id = "ops"
secret = "ops-secret-123"
grants = ["feeds/#", "twin/#", "alerts/#", "deadletter/#", "status/#"]

[[apps]]
id = "water-dept"
secret = "water-secret-1"
grants = ["feeds/water_level/#", "twin/WL-0001"]
"#;

/// The test configuration, with `data_dir` and listeners on free loopback ports.
pub fn config(data_dir: &Path) -> HubConfig {
    let mut cfg = HubConfig::from_toml(CONFIG).unwrap();
    cfg.hub.data_dir = data_dir.to_path_buf();
    cfg.hub.mqtt_listen = vec!["127.0.0.1:0".into()];
    cfg.hub.http_listen = "127.0.0.1:0".into();
    cfg
}

/// A whole hub in this process.
pub struct E2eHub {
    server: Option<Server>,
    /// Its configuration (restarts reuse it).
    pub config: HubConfig,
    /// MQTT address.
    pub mqtt: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
}

impl E2eHub {
    /// Starts a hub.
    pub async fn start(config: HubConfig) -> E2eHub {
        let server = Server::start(config.clone()).await.unwrap();
        E2eHub {
            mqtt: server.mqtt_addrs()[0],
            http: server.http_addr(),
            server: Some(server),
            config,
        }
    }

    /// The server.
    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    /// Stops the hub cleanly and starts it again on the same data (new ports).
    pub async fn restart(&mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
        let server = Server::start(self.config.clone()).await.unwrap();
        self.mqtt = server.mqtt_addrs()[0];
        self.http = server.http_addr();
        self.server = Some(server);
    }

    /// Stops the hub.
    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
    }

    /// `http://ADDR`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http)
    }
}

// ------------------------------------------------------------------------------ rumqttc

/// rumqttc options for the hub (3.1.1), with packet limits wide enough for big batches.
pub fn options(addr: SocketAddr, client_id: &str, user: &str, pass: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    o.set_credentials(user, pass);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(4 << 20, 4 << 20);
    o
}

/// A connected rumqttc client whose event loop runs in a task.
pub struct Client {
    /// The client.
    pub client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects as `id` with `secret`; Err is the refusal.
pub async fn connect(addr: SocketAddr, id: &str, secret: &str) -> Result<Client, ConnectionError> {
    connect_with(options(addr, id, id, secret)).await
}

/// Connects with explicit options.
pub async fn connect_with(o: MqttOptions) -> Result<Client, ConnectionError> {
    let (client, mut el) = AsyncClient::new(o, 256);
    loop {
        match tokio::time::timeout(WAIT, el.poll())
            .await
            .expect("CONNACK in time")?
        {
            Event::Incoming(Incoming::ConnAck(_)) => break,
            _ => continue,
        }
    }
    let (tx, events) = mpsc::unbounded_channel();
    let task = tokio::spawn(pump(el, tx));
    Ok(Client {
        client,
        events,
        task,
    })
}

async fn pump(mut el: EventLoop, tx: mpsc::UnboundedSender<Result<Event, String>>) {
    loop {
        let r = el.poll().await;
        let end = r.is_err();
        if tx.send(r.map_err(|e| e.to_string())).is_err() || end {
            return;
        }
    }
}

impl Client {
    /// Subscribes and returns the SUBACK's return codes.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.unwrap();
        self.next(|i| match i {
            Incoming::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Publishes (QoS 1 waits for nothing here; see [`Client::next`] for the PUBACK).
    pub async fn publish(&self, topic: &str, qos: QoS, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, qos, false, payload.into())
            .await
            .unwrap();
    }

    /// The next incoming packet for which `pick` returns something (panics after [`WAIT`]).
    pub async fn next<T>(&mut self, mut pick: impl FnMut(&Incoming) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("timed out waiting for a packet")
                .expect("event loop ended");
            match ev {
                Ok(Event::Incoming(i)) => {
                    if let Some(t) = pick(&i) {
                        return t;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("connection error: {e}"),
            }
        }
    }

    /// The next message on a topic matching `filter` (MQTT wildcards).
    pub async fn next_on(&mut self, filter: &str) -> rumqttc::Publish {
        self.next(|i| match i {
            Incoming::Publish(p) if protocols::topic::filter_matches(filter, &p.topic) => {
                Some(p.clone())
            }
            _ => None,
        })
        .await
    }

    /// The connection error that ends the event loop (panics after [`WAIT`]).
    pub async fn closed(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("timed out waiting for the connection to end")
            {
                Some(Err(e)) => return e,
                Some(Ok(_)) => {}
                None => return "event loop ended".into(),
            }
        }
    }
}

// ----------------------------------------------------------------------- mosquitto clients

/// `mosquitto_pub` once; returns (success, stderr).
pub async fn mosquitto_pub(
    addr: SocketAddr,
    id: &str,
    secret: &str,
    topic: &str,
    payload: &[u8],
    qos: u8,
) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-i", id, "-u", id, "-P", secret, "-t", topic])
        .args(["-q", &qos.to_string(), "-s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_pub (mosquitto-clients) installed");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(payload).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("mosquitto_pub finished")
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `mosquitto_sub` printing `topic payload` lines; killed on drop.
pub struct MosquittoSub {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl MosquittoSub {
    /// Subscribes to `filter` with client id `id` (an app's `ID.suffix` logs in as `ID`);
    /// waits until the subscription is in place (`-d` prints the SUBACK).
    pub async fn start(addr: SocketAddr, id: &str, secret: &str, filter: &str) -> MosquittoSub {
        use tokio::io::AsyncBufReadExt;
        let user = id.split('.').next().unwrap_or(id);
        // Line-buffered: mosquitto_sub's debug lines (the SUBACK) are otherwise held in its
        // stdio buffer until the first message is printed.
        let mut child = tokio::process::Command::new("stdbuf")
            .args(["-oL", "mosquitto_sub"])
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(["-i", id, "-u", user, "-P", secret, "-t", filter, "-v", "-d"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("stdbuf (coreutils) and mosquitto_sub (mosquitto-clients) installed");
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .expect("mosquitto_sub subscribed in time")
                .unwrap()
                .expect("mosquitto_sub ended before subscribing");
            if line.contains("SUBACK") {
                break;
            }
        }
        MosquittoSub { child, lines }
    }

    /// The next message line whose topic matches `filter`: (topic, payload).
    pub async fn next_on(&mut self, filter: &str) -> (String, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .expect("mosquitto_sub message in time")
                .unwrap()
                .expect("mosquitto_sub ended");
            // Debug lines start with "Client "; messages are "topic payload".
            if line.starts_with("Client ") {
                continue;
            }
            if let Some((topic, payload)) = line.split_once(' ')
                && protocols::topic::filter_matches(filter, topic)
            {
                return (topic.to_string(), payload.to_string());
            }
        }
    }

    /// Stops it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

// ----------------------------------------------------------------------------- HTTP

/// GET `path` with an app's bearer token; (status, JSON body).
pub async fn get_json(
    base: &str,
    path: &str,
    app: Option<(&str, &str)>,
) -> (reqwest::StatusCode, serde_json::Value) {
    let client = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let mut req = client.get(format!("{base}{path}"));
    if let Some((id, secret)) = app {
        req = req.header("authorization", format!("Bearer {id}:{secret}"));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let json =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
    (status, json)
}

/// The raw points of a series through the HTTP API (as the `ops` app).
pub async fn series(
    base: &str,
    device: &str,
    quantity: &str,
    from: i64,
    to: i64,
) -> Vec<(i64, f64)> {
    let (status, body) = get_json(
        base,
        &format!("/api/v1/series?device={device}&quantity={quantity}&from={from}&to={to}"),
        Some(("ops", "ops-secret-123")),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body["points"].clone()).unwrap()
}

/// A metric's value from `/metrics` (0 when absent).
pub async fn metric(base: &str, name: &str) -> f64 {
    let client = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------- batches

/// A reading in canonical units.
pub fn reading(q: Quantity, v: f64) -> Reading {
    Reading {
        quantity: q.code(),
        value: Value::Number(v),
        quality: Quality::Good,
    }
}

/// A batch of `agent` with one device's samples `(ts, readings)`.
pub fn batch(
    agent: &str,
    stream: u64,
    seq: u64,
    device: &str,
    samples: Vec<(i64, Vec<Reading>)>,
) -> AgentBatch {
    AgentBatch {
        agent: agent.into(),
        stream,
        seq,
        devices: vec![DeviceReadings {
            device: device.into(),
            samples: samples
                .into_iter()
                .map(|(ts_ms, readings)| Sample { ts_ms, readings })
                .collect(),
        }],
    }
}

pub use protocols::time::now_ms;

/// The `hub` binary of this build.
pub fn hub_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hub"))
}
