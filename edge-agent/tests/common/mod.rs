//! Test harness: real peers (pymodbus, mosquitto, socat) started on free ports and killed on
//! drop, plus a test peer that plays the hub's side of the agent protocol.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A profile shipped in `profiles/`.
pub fn profile(name: &str) -> PathBuf {
    root().join("profiles").join(name)
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Async flavour of [`wait_until`].
pub async fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A child process killed (SIGKILL) and reaped on drop, with its stdout lines collected.
pub struct Proc {
    pub child: Option<Child>,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        if std::env::var_os("TEST_VERBOSE").is_none() {
            cmd.stderr(Stdio::null());
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Proc {
            child: Some(child),
            lines,
            name: name.to_string(),
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (graceful) and wait.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.as_ref()?.id();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        self.wait_exit(timeout)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until something accepts TCP connections on `port`.
pub fn wait_port(port: u16, timeout: Duration) -> bool {
    wait_until(timeout, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
}

/// A pymodbus server for the devices of `spec` (JSON, see tests/peers/modbus_server.py).
pub struct ModbusPeer {
    pub proc: Proc,
    pub port: u16,
    spec: PathBuf,
}

impl ModbusPeer {
    pub fn tcp(dir: &Path, spec: &serde_json::Value, port: u16) -> ModbusPeer {
        let path = dir.join(format!("spec-{port}.json"));
        std::fs::write(&path, spec.to_string()).unwrap();
        let proc = Self::start_tcp(&path, port);
        ModbusPeer {
            proc,
            port,
            spec: path,
        }
    }

    fn start_tcp(spec: &Path, port: u16) -> Proc {
        let mut cmd = Command::new("python3");
        cmd.arg(root().join("edge-agent/tests/peers/modbus_server.py"))
            .arg("--spec")
            .arg(spec)
            .arg("--tcp")
            .arg(port.to_string());
        let p = Proc::spawn("pymodbus", cmd);
        assert!(
            wait_port(port, Duration::from_secs(15)),
            "pymodbus did not start on {port}"
        );
        p
    }

    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc = Self::start_tcp(&self.spec, self.port);
    }

    /// The REQ lines: (unit, fc, addr, count).
    pub fn requests(&self) -> Vec<(u8, u8, u16, u16)> {
        parse_requests(&self.proc.lines())
    }

    pub fn writes(&self) -> Vec<String> {
        self.proc
            .lines()
            .into_iter()
            .filter(|l| l.starts_with("WRITE"))
            .collect()
    }
}

pub fn parse_requests(lines: &[String]) -> Vec<(u8, u8, u16, u16)> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("REQ "))
        .map(|l| {
            let f: Vec<u64> = l
                .split(' ')
                .map(|kv| kv.split_once('=').unwrap().1.parse().unwrap())
                .collect();
            (f[0] as u8, f[1] as u8, f[2] as u16, f[3] as u16)
        })
        .collect()
}

/// A mosquitto broker on a free port.
pub struct Mosquitto {
    pub proc: Proc,
    pub port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        Self::start_on(dir, free_port())
    }

    pub fn start_on(dir: &Path, port: u16) -> Mosquitto {
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\nmax_inflight_messages 100\nlog_type error\n"
            ),
        )
        .unwrap();
        let proc = Self::run(&conf, port);
        Mosquitto { proc, port, conf }
    }

    fn run(conf: &Path, port: u16) -> Proc {
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(conf);
        let p = Proc::spawn("mosquitto", cmd);
        assert!(
            wait_port(port, Duration::from_secs(10)),
            "mosquitto did not start on {port}"
        );
        p
    }

    pub fn restart(&mut self) {
        self.proc.kill();
        self.proc = Self::run(&self.conf, self.port);
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// Writes an agent.toml into `dir` and returns its path.
pub fn write_agent_toml(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// The edge-agent binary under test.
pub fn agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edge-agent"))
}

/// Starts `edge-agent --config FILE`.
pub fn start_agent(config: &Path) -> Proc {
    let mut cmd = Command::new(agent_bin());
    cmd.arg("--config").arg(config);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "edge_agent=debug");
    }
    Proc::spawn("edge-agent", cmd)
}

/// What the hub test peer saw.
#[derive(Default)]
pub struct HubState {
    /// Every batch delivery, in arrival order (duplicates included).
    pub batches: Vec<protocols::batch::AgentBatch>,
    /// When each delivery arrived.
    pub arrived: Vec<Instant>,
    pub health: Vec<protocols::messages::Health>,
    /// The same health messages as JSON, with the agent's own fields (`disk`, `buffer`).
    pub health_json: Vec<serde_json::Value>,
    pub results: Vec<protocols::messages::CommandResult>,
    pub status: Vec<(String, String)>,
}

impl HubState {
    /// Distinct seqs received for `stream`.
    pub fn seqs(&self, stream: u64) -> std::collections::BTreeSet<u64> {
        self.batches
            .iter()
            .filter(|b| b.stream == stream)
            .map(|b| b.seq)
            .collect()
    }

    pub fn deliveries_of(&self, seq: u64) -> usize {
        self.batches.iter().filter(|b| b.seq == seq).count()
    }

    pub fn max_seq(&self) -> u64 {
        self.batches.iter().map(|b| b.seq).max().unwrap_or(0)
    }

    pub fn stream(&self) -> Option<u64> {
        self.batches.first().map(|b| b.stream)
    }
}

/// Plays the hub's side of the agent protocol over a real broker: decodes batches, acks them
/// (when `acking`), collects health, command results and status.
pub struct HubPeer {
    pub state: Arc<Mutex<HubState>>,
    pub acking: Arc<std::sync::atomic::AtomicBool>,
    client: rumqttc::AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl HubPeer {
    pub async fn start(port: u16, acking: bool) -> HubPeer {
        use rumqttc::{Event, MqttOptions, Packet, QoS};
        let mut o = MqttOptions::new(format!("hub-peer-{}", free_port()), "127.0.0.1", port);
        o.set_max_packet_size(4 << 20, 4 << 20);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut el) = rumqttc::AsyncClient::new(o, 1000);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        el.set_network_options(net);
        let state = Arc::new(Mutex::new(HubState::default()));
        let ack_flag = Arc::new(std::sync::atomic::AtomicBool::new(acking));
        let (s, a, c) = (state.clone(), ack_flag.clone(), client.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for t in [
                            "v1/agents/+/batch",
                            "v1/agents/+/health",
                            "v1/agents/+/cmd/result",
                            "v1/status/+",
                        ] {
                            el.pending.push_back(rumqttc::Request::Subscribe(
                                rumqttc::Subscribe::new(t, QoS::AtLeastOnce),
                            ));
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let parts: Vec<&str> = p.topic.split('/').collect();
                        if p.topic.ends_with("/batch") {
                            let b = protocols::batch::decode(&p.payload)
                                .expect("agent sent an undecodable batch");
                            let ack_topic = format!("v1/agents/{}/ack", parts[2]);
                            let ack = protocols::batch::Ack::from_seqs(b.stream, vec![b.seq]);
                            {
                                let mut st = s.lock().unwrap();
                                st.batches.push(b);
                                st.arrived.push(Instant::now());
                            }
                            if a.load(std::sync::atomic::Ordering::SeqCst) {
                                let _ = c.try_publish(
                                    ack_topic,
                                    QoS::AtLeastOnce,
                                    false,
                                    serde_json::to_vec(&ack).unwrap(),
                                );
                            }
                        } else if p.topic.ends_with("/health") {
                            let mut st = s.lock().unwrap();
                            st.health
                                .push(serde_json::from_slice(&p.payload).expect("health JSON"));
                            st.health_json
                                .push(serde_json::from_slice(&p.payload).expect("health JSON"));
                        } else if p.topic.ends_with("/cmd/result") {
                            s.lock()
                                .unwrap()
                                .results
                                .push(serde_json::from_slice(&p.payload).expect("result JSON"));
                        } else if parts[1] == "status" {
                            s.lock().unwrap().status.push((
                                parts[2].to_string(),
                                String::from_utf8_lossy(&p.payload).into_owned(),
                            ));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(10), ready_rx).await;
        HubPeer {
            state,
            acking: ack_flag,
            client,
            task,
        }
    }

    pub fn set_acking(&self, on: bool) {
        self.acking.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Acks every seq received so far (for `stream`).
    pub async fn ack_all(&self, agent: &str) {
        let (stream, seqs) = {
            let s = self.state.lock().unwrap();
            let Some(stream) = s.stream() else { return };
            (stream, s.seqs(stream).into_iter().collect::<Vec<_>>())
        };
        self.publish_ack(agent, &protocols::batch::Ack::from_seqs(stream, seqs))
            .await;
    }

    pub async fn publish_ack(&self, agent: &str, ack: &protocols::batch::Ack) {
        self.client
            .publish(
                format!("v1/agents/{agent}/ack"),
                rumqttc::QoS::AtLeastOnce,
                false,
                serde_json::to_vec(ack).unwrap(),
            )
            .await
            .unwrap();
    }

    pub async fn command(&self, agent: &str, json: serde_json::Value) {
        self.client
            .publish(
                format!("v1/agents/{agent}/cmd"),
                rumqttc::QoS::AtLeastOnce,
                false,
                json.to_string(),
            )
            .await
            .unwrap();
    }

    pub fn with<R>(&self, f: impl FnOnce(&HubState) -> R) -> R {
        f(&self.state.lock().unwrap())
    }
}

impl Drop for HubPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A minimal spec: a streetlight (unit 1) and a radar gauge (unit 2).
pub fn two_devices_spec() -> serde_json::Value {
    serde_json::json!({"devices": [
        {"unit": 1, "profile": profile("streetlight-lc200.toml"), "values": {"lamp_voltage": 230.0, "dimming_level": 70}},
        {"unit": 2, "profile": profile("water-level-radar.toml"), "values": {"water_level": 2310}}
    ]})
}

/// An agent.toml polling both devices of [`two_devices_spec`] every 50 ms.
pub fn fast_agent_toml(dir: &Path, hub: &str, modbus_port: u16, extra: &str) -> String {
    format!(
        r#"[agent]
id = "AG-0001"
secret = "agent-secret"
hub = "{hub}"
data_dir = "{data}"
batch_max_age = "100ms"
health_interval = "300ms"
ack_timeout = "1s"
max_inflight = 8
{extra}

[[modbus]]
device = "SL-0001"
profile = "{sl}"
transport = "tcp://127.0.0.1:{modbus_port}"
unit = 1
interval = "50ms"

[[modbus]]
device = "WL-0001"
profile = "{wl}"
transport = "tcp://127.0.0.1:{modbus_port}"
unit = 2
interval = "50ms"
"#,
        data = dir.join("data").display(),
        sl = profile("streetlight-lc200.toml").display(),
        wl = profile("water-level-radar.toml").display(),
    )
}

/// Opens the agent's queue (the agent must not be running) and returns (stream, seqs, next_seq).
pub fn queue_contents(dir: &Path) -> (u64, Vec<u64>, u64) {
    let q = edge_agent::queue::Queue::open(&dir.join("data"), 1 << 30, 1 << 16).unwrap();
    let s = q.stats().unwrap();
    (s.stream, q.seqs().unwrap(), s.next_seq)
}

/// GETs the agent's metrics page.
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of an un-labelled metric on a scraped page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}
