//! Video sensing end to end: a real RTSP server on loopback (GStreamer's gst-rtsp-server,
//! x264), the edge agent as its own process (`video-agent`, the agent's runtime), the real hub
//! (embedded broker, store, video archive, HTTP API) in this process.
//!
//! - motion events and a snapshot of the stream's size reach the hub API; the static scene
//!   and the flashing one give no events; killing the stream turns the camera offline in the
//!   catalog; another department's app is refused;
//! - an event and its snapshot queued at the agent while the hub is away survive a kill -9 of
//!   the agent and arrive exactly once after the restart.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hub::config::HubConfig;
use hub::server::Server;
use protocols::messages::CameraEntry;
use tests::{Proc, free_port, root};

/// How long any awaited condition may take.
const DEADLINE: Duration = Duration::from_secs(40);

/// The RTSP test camera server (`edge-agent/tests/peers/rtsp_server.py`): `/motion` (a ball
/// moving), `/static` (colour bars), `/flash` (the bars with a bright flash every 2 s), at
/// 640x360, 10 fps. Returns it with its port.
fn rtsp_server() -> (Proc, u16) {
    let script = root().join("edge-agent/tests/peers/rtsp_server.py");
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .arg("0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the RTSP server (python3-gi, gst-rtsp-server)");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let proc = Proc::new(child);
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("RTSP server ready");
    let port = line
        .trim_start_matches("ready ")
        .trim()
        .parse()
        .expect("RTSP port");
    (proc, port)
}

const HUB_TOML: &str = r#"
[[devices]]
id = "CAM-M"
kind = "camera"
agent = "AG-V"
dept = "traffic"
name = "Crossing with traffic"
gb_id = "33011000001320000011"
stream = "rtsp://127.0.0.1/motion"
lat = 30.42
lon = 120.30

[[devices]]
id = "CAM-S"
kind = "camera"
agent = "AG-V"
dept = "traffic"
gb_id = "33011000001320000012"

[[devices]]
id = "CAM-F"
kind = "camera"
agent = "AG-V"
dept = "traffic"
gb_id = "33011000001320000013"

[[agents]]
id = "AG-V"
secret = "ag-v-secret"

[[apps]]
id = "traffic"
secret = "traffic-secret"
grants = ["feeds/camera/#"]

[[apps]]
id = "water"
secret = "water-secret"
grants = ["feeds/water_level/#", "alerts/#"]
"#;

async fn start_hub(dir: &Path, mqtt_port: u16) -> Server {
    let mut cfg = HubConfig::from_toml(HUB_TOML).unwrap();
    cfg.hub.data_dir = dir.to_path_buf();
    cfg.hub.mqtt_listen = vec![format!("127.0.0.1:{mqtt_port}")];
    cfg.hub.http_listen = "127.0.0.1:0".into();
    Server::start(cfg).await.expect("hub starts")
}

const CAMERA: &str = r#"stall_timeout = "2s"
reconnect_min = "200ms"
reconnect_max = "1s"
health_interval = "1s"
end_after = "1s"
update_interval = "1s""#;

fn agent_toml(
    dir: &Path,
    mqtt_port: u16,
    metrics_port: u16,
    cameras: &[(&str, String)],
) -> PathBuf {
    let mut text = format!(
        r#"[agent]
id = "AG-V"
secret = "ag-v-secret"
hub = "mqtt://127.0.0.1:{mqtt_port}"
data_dir = "{data}"
batch_max_age = "500ms"
health_interval = "1s"
ack_timeout = "2s"
metrics_listen = "127.0.0.1:{metrics_port}"
"#,
        data = dir.join("agent").display()
    );
    for (id, source) in cameras {
        text.push_str(&format!(
            "\n[[camera]]\nid = \"{id}\"\nsource = \"{source}\"\n{CAMERA}\n"
        ));
    }
    let p = dir.join("agent.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn start_agent(config: &Path) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_video-agent"))
        .arg("--config")
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the agent");
    Proc::new(child)
}

/// A metric of the agent (its `metrics_listen` page).
fn agent_metric(port: u16, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut page = String::new();
    s.read_to_string(&mut page).ok()?;
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    fn new(server: &Server) -> Api {
        Api {
            base: format!("http://{}", server.http_addr()),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, who: &str, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(who)
            .send()
            .await
            .unwrap()
    }

    async fn json(&self, who: &str, path: &str) -> serde_json::Value {
        let r = self.get(who, path).await;
        assert_eq!(r.status(), 200, "{path}");
        serde_json::from_str(&r.text().await.unwrap()).unwrap()
    }

    async fn cameras(&self) -> Vec<CameraEntry> {
        let r = self.get(TRAFFIC, "/api/v1/cameras").await;
        serde_json::from_str(&r.text().await.unwrap()).unwrap()
    }

    async fn events(&self, camera: &str) -> Vec<serde_json::Value> {
        let v = self
            .json(TRAFFIC, &format!("/api/v1/events?camera={camera}"))
            .await;
        v.as_array().unwrap().clone()
    }

    /// Polls `check` until it returns something or the deadline passes.
    async fn until<T, F: std::future::Future<Output = Option<T>>>(
        &self,
        what: &str,
        mut check: impl FnMut() -> F,
    ) -> T {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(t) = check().await {
                return t;
            }
            assert!(tokio::time::Instant::now() < end, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

const TRAFFIC: &str = "traffic:traffic-secret";
const WATER: &str = "water:water-secret";

/// An app subscribed to `v1/feeds/camera/#` over the hub's MQTT, collecting the event
/// documents of the feeds as (event id, phase).
struct FeedWatcher {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FeedWatcher {
    async fn start(port: u16) -> FeedWatcher {
        use rumqttc::{Event, MqttOptions, Packet, QoS};
        let mut o = MqttOptions::new("traffic.e2e", "127.0.0.1", port);
        o.set_credentials("traffic", "traffic-secret");
        let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
        client
            .subscribe("v1/feeds/camera/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready = Some(ready_tx);
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: serde_json::Value = match serde_json::from_slice(&p.payload) {
                            Ok(v) => v,
                            Err(_) => continue,
                        };
                        if let (Some(id), Some(phase)) =
                            (v["event"]["id"].as_str(), v["event"]["phase"].as_str())
                        {
                            s.lock().unwrap().push((id.to_string(), phase.to_string()));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .expect("subscribed to the camera feeds")
            .unwrap();
        FeedWatcher { seen, task }
    }

    fn event_phases(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FeedWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn decode_jpeg(bytes: &[u8]) -> (usize, usize) {
    let mut d = zune_jpeg::JpegDecoder::new(bytes);
    d.decode().expect("a decodable JPEG");
    let (w, h) = d.dimensions().unwrap();
    (w, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn motion_reaches_the_hub_still_scenes_do_not_and_a_dead_stream_goes_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (mut rtsp, port) = rtsp_server();
    let mqtt_port = free_port();
    let hub = start_hub(&dir.path().join("hub"), mqtt_port).await;
    let api = Api::new(&hub);
    let url = |path: &str| format!("rtsp://127.0.0.1:{port}/{path}");
    let cfg = agent_toml(
        dir.path(),
        mqtt_port,
        free_port(),
        &[
            ("CAM-M", url("motion")),
            ("CAM-S", url("static")),
            ("CAM-F", url("flash")),
        ],
    );
    let mut agent = start_agent(&cfg);

    // All three cameras stream: online, ~10 fps, a real bitrate.
    let cams = api
        .until("every camera online with stream readings", || async {
            let c = api.cameras().await;
            (c.len() == 3
                && c.iter()
                    .all(|c| c.online && c.fps > 5.0 && c.bitrate_kbps > 0.0))
            .then_some(c)
        })
        .await;
    let m = cams.iter().find(|c| c.id == "CAM-M").unwrap();
    assert_eq!(m.gb_id, "33011000001320000011");
    assert_eq!(m.name, "Crossing with traffic");
    assert!((5.0..=15.0).contains(&m.fps), "{m:?}");

    // The moving ball: events and a snapshot of the stream's size.
    let events = api
        .until("a motion event with its snapshot", || async {
            let e = api.events("CAM-M").await;
            e.iter().any(|e| e["snapshot"].is_object()).then_some(e)
        })
        .await;
    let ev = events.iter().find(|e| e["snapshot"].is_object()).unwrap();
    assert_eq!(ev["camera"], "CAM-M");
    assert_eq!(ev["type"], "motion");
    assert_eq!(
        (
            ev["snapshot"]["width"].as_u64(),
            ev["snapshot"]["height"].as_u64()
        ),
        (Some(640), Some(360))
    );
    let r = api.get(TRAFFIC, "/api/v1/cameras/CAM-M/snapshot").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(decode_jpeg(&r.bytes().await.unwrap()), (640, 360));
    let path = ev["snapshot"]["url"].as_str().unwrap();
    let r = api.get(TRAFFIC, path).await;
    assert_eq!(decode_jpeg(&r.bytes().await.unwrap()), (640, 360));
    // Motion readings went through the normal pipeline into the camera's twin.
    let twin = api
        .until("motion in the camera's twin", || async {
            let d = api.json(TRAFFIC, "/api/v1/devices/CAM-M").await;
            d["twin"]["reported"].get("motion").is_some().then_some(d)
        })
        .await;
    assert_eq!(twin["twin"]["reported"]["motion"]["unit"], "bool");

    // The static bars and the lighting flashes: no event at all, after several flashes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(api.events("CAM-S").await.is_empty());
    assert!(api.events("CAM-F").await.is_empty(), "a flash is no motion");

    // Another department's app sees no camera and is refused a named one.
    let r = api.get(WATER, "/api/v1/cameras").await;
    assert_eq!(r.text().await.unwrap(), "[]");
    for path in [
        "/api/v1/cameras/CAM-M",
        "/api/v1/cameras/CAM-M/snapshot",
        "/api/v1/events?camera=CAM-M",
    ] {
        assert_eq!(api.get(WATER, path).await.status(), 403, "{path}");
    }
    let all = api.json(WATER, "/api/v1/events").await;
    assert!(all.as_array().unwrap().is_empty());

    // The stream dies: the camera goes offline in the catalog.
    rtsp.kill();
    api.until("cameras offline after the stream died", || async {
        let c = api.cameras().await;
        c.iter().all(|c| !c.online).then_some(())
    })
    .await;
    agent.terminate(Duration::from_secs(15)).await;
    hub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_and_snapshot_queued_at_a_killed_agent_arrive_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut rtsp, port) = rtsp_server();
    // The hub is not there yet: the agent keeps everything in its queue.
    let mqtt_port = free_port();
    let metrics_port = free_port();
    let cfg = agent_toml(
        dir.path(),
        mqtt_port,
        metrics_port,
        &[("CAM-M", format!("rtsp://127.0.0.1:{port}/motion"))],
    );
    let mut agent = start_agent(&cfg);
    let end = Instant::now() + DEADLINE;
    while !(agent_metric(metrics_port, "edge_agent_camera_events_total").unwrap_or(0.0) >= 1.0
        && agent_metric(metrics_port, "edge_agent_queue_snapshots").unwrap_or(0.0) >= 1.0)
    {
        assert!(
            Instant::now() < end,
            "no event and snapshot queued at the agent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.kill();
    rtsp.kill();
    let queued = {
        let q =
            edge_agent::queue::Queue::open(&dir.path().join("agent"), 1 << 30, 1 << 16).unwrap();
        q.snapshot_ids().unwrap()
    };
    assert!(!queued.is_empty());

    // The hub comes up, the agent restarts: what was queued arrives, once.
    let hub = start_hub(&dir.path().join("hub"), mqtt_port).await;
    let api = Api::new(&hub);
    let feeds = FeedWatcher::start(mqtt_port).await;
    let mut agent = start_agent(&cfg);
    for id in &queued {
        let events = api
            .until("the queued event with its snapshot at the hub", || async {
                let e = api.events("CAM-M").await;
                e.iter()
                    .any(|e| e["id"] == id.as_str() && e["snapshot"].is_object())
                    .then_some(e)
            })
            .await;
        assert_eq!(events.iter().filter(|e| e["id"] == id.as_str()).count(), 1);
    }
    // The agent's queue drains (the hub acknowledged everything).
    let end = Instant::now() + DEADLINE;
    while !(agent_metric(metrics_port, "edge_agent_queue_snapshots") == Some(0.0)
        && agent_metric(metrics_port, "edge_agent_queue_depth") == Some(0.0))
    {
        assert!(Instant::now() < end, "the agent's queue did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Kill -9 again and restart: acknowledged deletions not yet synced may come back and be
    // sent again; the hub keeps each event and snapshot once.
    agent.kill();
    let mut agent = start_agent(&cfg);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events = api.events("CAM-M").await;
    for id in &queued {
        assert_eq!(events.iter().filter(|e| e["id"] == id.as_str()).count(), 1);
        let file = dir
            .path()
            .join(format!("hub/video/snapshots/AG-V/{id}.jpg"));
        assert!(file.exists(), "{}", file.display());
    }
    // Each event phase was published once on the camera's feed, however often it was sent.
    let published = feeds.event_phases();
    for id in &queued {
        let starts = published
            .iter()
            .filter(|(i, phase)| i == id && phase == "start")
            .count();
        assert_eq!(starts, 1, "{id}: {published:?}");
    }
    let files = std::fs::read_dir(dir.path().join("hub/video/snapshots/AG-V"))
        .unwrap()
        .count();
    assert_eq!(files, queued.len());
    agent.terminate(Duration::from_secs(15)).await;
    hub.shutdown().await.unwrap();
}
