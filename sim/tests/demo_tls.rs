//! The demo on TLS, as its banner tells a user to connect: the agents' data arrives through
//! the hub's MQTT over TLS listener (every agent online, handshakes counted, none failed), and
//! `mosquitto_sub --cafile DIR/tls/ca.crt` and `curl --cacert DIR/tls/ca.crt` with the command
//! center's credentials get a feed and the device list.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use sim::district::demo::{Demo, DemoOptions};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long anything the test waits for may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// A running `mosquitto_sub -v -d` over TLS; killed on drop.
struct Sub {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Sub {
    /// Subscribes to `filters` as `app` trusting `ca`; returns once every SUBACK is in.
    async fn start(addr: SocketAddr, ca: &Path, app: &str, secret: &str, filters: &[&str]) -> Sub {
        // Line-buffered: the debug lines (the SUBACK) would otherwise wait in mosquitto_sub's
        // stdio buffer for the first message.
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "mosquitto_sub", "--cafile"])
            .arg(ca)
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(["-u", app, "-P", secret, "-i", &format!("{app}.tls-test")])
            .args(["-v", "-d"]);
        for f in filters {
            cmd.args(["-t", f]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("stdbuf (coreutils) and mosquitto_sub (mosquitto-clients) installed");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let line = tokio::time::timeout_at(deadline, lines.next_line())
                .await
                .expect("mosquitto_sub subscribed in time")
                .unwrap()
                .expect("mosquitto_sub ended before its SUBACK (TLS refused?)");
            if line.contains("SUBACK") {
                break;
            }
        }
        Sub {
            _child: child,
            lines,
        }
    }

    /// The next message, `(topic, payload)`, skipping debug lines.
    async fn next(&mut self, deadline: tokio::time::Instant) -> (String, String) {
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .expect("mosquitto_sub message in time")
                .unwrap()
                .expect("mosquitto_sub ended");
            if line.starts_with("Client ") {
                continue;
            }
            if let Some((topic, payload)) = line.split_once(' ') {
                return (topic.to_string(), payload.to_string());
            }
        }
    }
}

/// A sample of the hub's `/metrics` (0 when absent).
async fn metric(http: SocketAddr, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_report_over_tls_and_clients_connect_with_the_demo_ca() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(DemoOptions {
        speed: 30.0,
        start: Some("12:00".parse().unwrap()),
        incidents: false,
        ..DemoOptions::local(dir.path())
    })
    .await
    .unwrap();
    let ca = demo.ca_file().expect("TLS on by default").to_path_buf();
    assert_eq!(ca, dir.path().join("tls/ca.crt"));
    let tls = demo.mqtt_tls_addr().expect("MQTT over TLS listening");
    let https = demo.https_addr().expect("HTTPS listening");
    for a in &demo.layout().agents {
        let cfg =
            std::fs::read_to_string(dir.path().join(format!("agents/{}.toml", a.id))).unwrap();
        assert!(
            cfg.contains("hub = \"mqtts://127.0.0.1:"),
            "{}: {cfg}",
            a.id
        );
    }

    let (app, secret) = demo.command_center();
    let mut sub = Sub::start(tls, &ca, app, secret, &["v1/status/+", "v1/feeds/#"]).await;
    let agents: Vec<String> = demo.layout().agents.iter().map(|a| a.id.clone()).collect();
    let behind_agents: Vec<String> = demo.layout().field.iter().map(|d| d.id.clone()).collect();
    let mut online = std::collections::HashSet::new();
    let mut agent_feed = None;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !(agents.iter().all(|a| online.contains(a)) && agent_feed.is_some()) {
        let (topic, payload) = sub.next(deadline).await;
        if let Some(id) = topic.strip_prefix("v1/status/") {
            if payload == "online" {
                online.insert(id.to_string());
            }
        } else if let Some(device) = topic.rsplit('/').next()
            && behind_agents.iter().any(|d| d == device)
        {
            agent_feed = Some(topic);
        }
    }
    eprintln!("over TLS: every agent online, {agent_feed:?}");

    // Every agent dialled the TLS listener (through its backhaul), and so did mosquitto_sub.
    let http = demo.http_addr();
    let handshakes = metric(http, "hub_mqtt_tls_handshakes_total").await;
    assert!(
        handshakes > agents.len() as f64,
        "{handshakes} TLS handshakes for {} agents and mosquitto_sub",
        agents.len()
    );
    assert_eq!(metric(http, "hub_mqtt_tls_failures_total").await, 0.0);

    // The banner's HTTPS line.
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca)
        .args(["-H", &format!("Authorization: Bearer {app}:{secret}")])
        .arg(format!("https://{https}/api/v1/devices"))
        .output()
        .await
        .expect("curl installed");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    demo.shutdown().await;
}
