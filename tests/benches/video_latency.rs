//! Camera event to snapshot served by the hub: end-to-end latency.
//!
//! The hub runs in this process (embedded broker, store, video archive, HTTP API); the agent
//! runs as its own process (`video-agent`, the agent's runtime) with N synthetic 720p H.264
//! cameras (`synthetic:motion`, a car crossing every 4 s, decoded by OpenH264 like an RTSP
//! stream). An app follows `GET /api/v1/stream`; for every event it notes when the event is
//! visible, and when the event says its snapshot is stored it fetches the JPEG from the API.
//! Latency is measured from the timestamp of the picture that confirmed the motion (the
//! event's `start`) to the end of that GET (same machine clock).
//!
//! `cargo bench -p tests --bench video_latency` (env: `VIDEO_BENCH_SECS`, default 60;
//! `VIDEO_BENCH_CAMERAS`, default 8). Ends with one JSON line.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hub::config::HubConfig;
use hub::server::Server;
use tests::free_port;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

use protocols::time::now_ms;

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let secs = env_num("VIDEO_BENCH_SECS", 60);
    let cameras = env_num("VIDEO_BENCH_CAMERAS", 8) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(secs, cameras));
}

async fn run(secs: u64, cameras: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mqtt_port = free_port();
    let mut toml = String::from(
        "[[agents]]\nid = \"AG-B\"\nsecret = \"bench-agent-secret\"\n\n[[apps]]\nid = \"cc\"\nsecret = \"cc-bench-secret\"\ngrants = [\"feeds/#\"]\n",
    );
    let mut agent = format!(
        "[agent]\nid = \"AG-B\"\nsecret = \"bench-agent-secret\"\nhub = \"mqtt://127.0.0.1:{mqtt_port}\"\ndata_dir = \"{}\"\nhealth_interval = \"5s\"\n",
        dir.path().join("agent").display()
    );
    for i in 0..cameras {
        toml.push_str(&format!(
            "\n[[devices]]\nid = \"CAM-{i:02}\"\nkind = \"camera\"\nagent = \"AG-B\"\ngb_id = \"330110000013200001{i:02}\"\n"
        ));
        agent.push_str(&format!(
            "\n[[camera]]\nid = \"CAM-{i:02}\"\nsource = \"synthetic:motion?size=1280x720&fps=10&codec=h264&seed={}\"\nend_after = \"500ms\"\nsnapshot_max_width = 1280\n",
            i + 1
        ));
    }
    let mut cfg = HubConfig::from_toml(&toml).unwrap();
    cfg.hub.data_dir = dir.path().join("hub");
    cfg.hub.mqtt_listen = vec![format!("127.0.0.1:{mqtt_port}")];
    cfg.hub.http_listen = "127.0.0.1:0".into();
    let server = Server::start(cfg).await.unwrap();
    let base = format!("http://{}", server.http_addr());
    let agent_toml = dir.path().join("agent.toml");
    std::fs::write(&agent_toml, agent).unwrap();

    let http = reqwest::Client::new();
    let mut stream = http
        .get(format!("{base}/api/v1/stream"))
        .bearer_auth("cc:cc-bench-secret")
        .send()
        .await
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_video-agent"))
        .arg("--config")
        .arg(&agent_toml)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();

    let mut visible: HashMap<String, i64> = HashMap::new();
    let mut served: HashMap<String, i64> = HashMap::new();
    let mut warm: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut buf = String::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let warmup = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        let chunk = match tokio::time::timeout(Duration::from_secs(5), stream.chunk()).await {
            Ok(Ok(Some(c))) => c,
            _ => continue,
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            if !block.lines().any(|l| l.trim() == "event: event") {
                continue;
            }
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let ev: serde_json::Value = serde_json::from_str(data).unwrap();
            let (Some(id), Some(start)) = (ev["id"].as_str(), ev["start"].as_i64()) else {
                continue;
            };
            // Skip events of the first seconds (cameras and decoders starting), also their
            // later phases: latency counts from an event's start, seen the first time.
            if Instant::now() < warmup || warm.contains(id) {
                warm.insert(id.to_string());
                continue;
            }
            let now = now_ms();
            visible.entry(id.to_string()).or_insert(now - start);
            if let Some(url) = ev["snapshot"]["url"].as_str()
                && !served.contains_key(id)
            {
                let r = http
                    .get(format!("{base}{url}"))
                    .bearer_auth("cc:cc-bench-secret")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                let jpeg = r.bytes().await.unwrap();
                assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
                served.insert(id.to_string(), now_ms() - start);
            }
        }
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    drop(stream);
    server.shutdown().await.unwrap();

    let mut v: Vec<i64> = visible.values().copied().collect();
    let mut s: Vec<i64> = served.values().copied().collect();
    v.sort_unstable();
    s.sort_unstable();
    println!(
        "cameras {cameras} x 1280x720 H.264 10 fps, {secs} s: {} events, {} snapshots served",
        v.len(),
        s.len()
    );
    println!(
        "event visible (live stream):  p50 {} ms  p99 {} ms  max {} ms",
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or(0)
    );
    println!(
        "snapshot served by the API:   p50 {} ms  p99 {} ms  max {} ms",
        percentile(&s, 0.5),
        percentile(&s, 0.99),
        s.last().copied().unwrap_or(0)
    );
    println!(
        "{}",
        serde_json::json!({
            "cameras": cameras, "secs": secs, "events": v.len(), "snapshots": s.len(),
            "event_p50_ms": percentile(&v, 0.5), "event_p99_ms": percentile(&v, 0.99),
            "snapshot_p50_ms": percentile(&s, 0.5), "snapshot_p99_ms": percentile(&s, 0.99),
            "snapshot_max_ms": s.last().copied().unwrap_or(0),
        })
    );
}
