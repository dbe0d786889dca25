//! Camera events and snapshots through the real pipeline (ingress seam in, recording publisher
//! out, the real store engine and the real video archive on disk), and the video HTTP API
//! over a real socket: dedup and acks, snapshots before and after their events, refusals,
//! retention, restart, the catalog, and who may see which camera.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hub::config::HubConfig;
use mqtt_broker::ingress::{Disposition, IngressEvent};
use protocols::batch::{Ack, AgentBatch, DeviceReadings, Reading, Sample, encode};
use protocols::messages::{
    CameraEntry, CameraEvent, DeadLetter, DeviceHealth, EventPhase, Health, STATUS_ONLINE,
};
use protocols::{Quality, Quantity, Value};
use series_store::TsStore;
use support::*;

const VIDEO_CONFIG: &str = r#"
[hub]
snapshot_retention = "7d"

[[devices]]
id = "CAM-0001"
kind = "camera"
agent = "AG-CAM"
dept = "traffic"
name = "Gate north"
gb_id = "33011000001320000001"
stream = "rtsp://10.0.0.5/main"
lat = 30.4212
lon = 120.301

[[devices]]
id = "CAM-0002"
kind = "camera"
agent = "AG-CAM"
dept = "water"
gb_id = "33011000001320000002"

[[devices]]
id = "CAM-0003"
kind = "camera"
agent = "AG-OTHER"
dept = "traffic"
gb_id = "33011000001320000003"

[[devices]]
id = "WL-0001"
kind = "water_level"
agent = "AG-CAM"
dept = "water"

[[agents]]
id = "AG-CAM"
secret = "ag-cam-secret"

[[agents]]
id = "AG-OTHER"
secret = "ag-other-secret"

[[apps]]
id = "command-center"
secret = "cc-secret-123"
grants = ["feeds/#", "deadletter/#"]

[[apps]]
id = "traffic"
secret = "traffic-secret"
grants = ["feeds/camera/CAM-0001", "feeds/camera/CAM-0003"]

[[apps]]
id = "water"
secret = "water-secret"
grants = ["feeds/water_level/#", "twin/CAM-0002"]
"#;

const STREAM: u64 = 4242;

fn video_config(dir: &Path) -> HubConfig {
    let mut cfg = HubConfig::from_toml(VIDEO_CONFIG).unwrap();
    cfg.hub.data_dir = dir.to_path_buf();
    cfg.hub.http_listen = "127.0.0.1:0".to_string();
    cfg
}

async fn start(dir: &Path) -> TestHub<TsStore> {
    start_with(video_config(dir)).await
}

async fn start_with(cfg: HubConfig) -> TestHub<TsStore> {
    let store = ts_stores()(&cfg.hub.data_dir.join("series"));
    TestHub::start_with(cfg, store).await
}

async fn stop(hub: TestHub<TsStore>) {
    let store = hub.shutdown().await;
    store.close_store().await;
}

/// A JPEG header walk our size check accepts (SOI, SOF0 with the size, EOI) plus `fill`.
fn jpeg(w: u16, h: u16, fill: u8) -> Vec<u8> {
    let mut b = vec![0xFF, 0xD8];
    b.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 8]);
    b.extend_from_slice(&h.to_be_bytes());
    b.extend_from_slice(&w.to_be_bytes());
    b.extend_from_slice(&[1, 1, 0x11, 0]);
    b.extend_from_slice(&[0xFF, 0xFE, 0x00, 0x12]);
    b.extend_from_slice(&[fill; 16]);
    b.extend_from_slice(&[0xFF, 0xD9]);
    b
}

fn event(camera: &str, id: &str, phase: EventPhase, ts: i64, seq: Option<u64>) -> CameraEvent {
    CameraEvent {
        camera: camera.into(),
        event_type: "motion".into(),
        phase,
        ts,
        score: 0.5,
        boxes: vec![[0.1, 0.2, 0.3, 0.4]],
        snapshot: Some(id.into()),
        stream: seq.map(|_| STREAM),
        seq,
    }
}

async fn send_event(hub: &TestHub<TsStore>, agent_id: &str, ev: &CameraEvent) -> Disposition {
    let topic = format!("v1/agents/{agent_id}/events");
    disposition(
        hub.send(agent(agent_id), &topic, serde_json::to_vec(ev).unwrap())
            .await,
    )
    .await
}

async fn send_snapshot(
    hub: &TestHub<TsStore>,
    agent_id: &str,
    id: &str,
    jpeg: Vec<u8>,
) -> Disposition {
    let topic = format!("v1/agents/{agent_id}/snapshots/{id}");
    disposition(hub.send(agent(agent_id), &topic, jpeg).await).await
}

/// Every ack the hub published to an agent.
fn acks(hub: &TestHub<TsStore>, agent_id: &str) -> Vec<Ack> {
    hub.published
        .on(&format!("v1/agents/{agent_id}/ack"))
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}

async fn wait_ack(hub: &TestHub<TsStore>, agent_id: &str, what: &str, ok: impl Fn(&Ack) -> bool) {
    let topic = format!("v1/agents/{agent_id}/ack");
    hub.published
        .wait_for(what, |msgs| {
            msgs.iter()
                .filter(|m| m.topic == topic)
                .filter_map(|m| serde_json::from_slice::<Ack>(&m.payload).ok())
                .any(|a| ok(&a))
                .then_some(())
        })
        .await;
}

/// Waits until the agent's acks, taken together, cover `seqs` of `stream` (acks are coalesced
/// per drain of the publish stage, so how many seqs one ack carries depends on timing).
async fn wait_acked(
    hub: &TestHub<TsStore>,
    agent_id: &str,
    what: &str,
    stream: u64,
    seqs: std::ops::RangeInclusive<u64>,
) {
    let topic = format!("v1/agents/{agent_id}/ack");
    hub.published
        .wait_for(what, |msgs| {
            let acks: Vec<Ack> = msgs
                .iter()
                .filter(|m| m.topic == topic)
                .filter_map(|m| serde_json::from_slice::<Ack>(&m.payload).ok())
                .filter(|a| a.stream == stream)
                .collect();
            seqs.clone()
                .all(|s| acks.iter().any(|a| a.covers(s)))
                .then_some(())
        })
        .await;
}

async fn json_of<T: serde::de::DeserializeOwned>(r: reqwest::Response) -> T {
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get(
    hub: &TestHub<TsStore>,
    app: &str,
    secret: &str,
    path: impl Into<String>,
) -> reqwest::Response {
    let path: String = path.into();
    http()
        .get(format!("{}{path}", hub.base_url()))
        .bearer_auth(format!("{app}:{secret}"))
        .send()
        .await
        .unwrap()
}

async fn cc_json(hub: &TestHub<TsStore>, path: &str) -> serde_json::Value {
    let r = get(hub, "command-center", "cc-secret-123", path).await;
    assert_eq!(r.status(), 200, "{path}");
    json_of(r).await
}

#[tokio::test]
async fn events_are_merged_deduplicated_acknowledged_and_published() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path()).await;
    let t = now_ms() - 10_000;
    let id = format!("CAM-0001.{t}.1");
    let phases = [
        event("CAM-0001", &id, EventPhase::Start, t, Some(1)),
        event("CAM-0001", &id, EventPhase::Update, t + 2000, Some(2)),
        event("CAM-0001", &id, EventPhase::End, t + 7000, Some(4)),
    ];
    for p in &phases {
        assert_eq!(send_event(&hub, "AG-CAM", p).await, Disposition::Accepted);
    }
    // A batch shares the seq numbering (seq 3) and carries the motion readings.
    let batch = AgentBatch {
        agent: "AG-CAM".into(),
        stream: STREAM,
        seq: 3,
        devices: vec![DeviceReadings {
            device: "CAM-0001".into(),
            samples: vec![Sample {
                ts_ms: t,
                readings: vec![Reading {
                    quantity: Quantity::Motion.code(),
                    value: Value::Bool(true),
                    quality: Quality::Good,
                }],
            }],
        }],
    };
    let d = disposition(
        hub.send(agent("AG-CAM"), "v1/agents/AG-CAM/batch", encode(&batch))
            .await,
    )
    .await;
    assert_eq!(d, Disposition::Accepted);
    wait_acked(&hub, "AG-CAM", "seqs 1..=4 acked", STREAM, 1..=4).await;
    // Redelivered: acknowledged again, not published again.
    let feed = "v1/feeds/camera/CAM-0001";
    let feeds_before = hub.published.json_on(feed).len();
    let acks_before = acks(&hub, "AG-CAM").len();
    assert_eq!(
        send_event(&hub, "AG-CAM", &phases[1]).await,
        Disposition::Accepted
    );
    hub.published
        .wait_count("v1/agents/AG-CAM/ack", acks_before + 1)
        .await;
    assert!(acks(&hub, "AG-CAM").last().unwrap().covers(2));
    // Three event feeds (motion true, true, false) and one from the batch; none for the
    // duplicate.
    let feeds = hub.published.json_on(feed);
    assert_eq!(feeds.len(), feeds_before);
    let event_feeds: Vec<_> = feeds.iter().filter(|f| f.get("event").is_some()).collect();
    assert_eq!(event_feeds.len(), 3, "{feeds:?}");
    let motion: Vec<bool> = event_feeds
        .iter()
        .map(|f| f["values"]["motion"]["value"].as_bool().unwrap())
        .collect();
    assert_eq!(motion, [true, true, false]);
    assert_eq!(event_feeds[0]["event"]["id"], id.as_str());
    assert_eq!(event_feeds[0]["kind"], "camera");
    // The motion reading went through the normal pipeline: the camera's twin has it.
    let dev = cc_json(&hub, "/api/v1/devices/CAM-0001").await;
    assert_eq!(dev["twin"]["reported"]["motion"]["value"], true);
    // One event, all phases merged.
    let evs = cc_json(&hub, "/api/v1/events?camera=CAM-0001").await;
    let evs = evs.as_array().unwrap();
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0]["id"], id.as_str());
    assert_eq!(evs[0]["phase"], "end");
    assert_eq!(evs[0]["start"], t);
    assert_eq!(evs[0]["end"], t + 7000);
    assert_eq!(evs[0]["agent"], "AG-CAM");
    assert!(evs[0].get("snapshot").is_none());
    stop(hub).await;
}

#[tokio::test]
async fn a_snapshot_may_come_before_or_after_its_event() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path()).await;
    let t = now_ms() - 60_000;
    // Before: stored and acknowledged by id, joined when the event comes.
    let early = format!("CAM-0001.{t}.1");
    let jpeg_a = jpeg(640, 360, 1);
    assert_eq!(
        send_snapshot(&hub, "AG-CAM", &early, jpeg_a.clone()).await,
        Disposition::Accepted
    );
    wait_ack(&hub, "AG-CAM", "snapshot acked", |a| {
        a.snapshots.contains(&early)
    })
    .await;
    let r = get(
        &hub,
        "command-center",
        "cc-secret-123",
        "/api/v1/cameras/CAM-0001/snapshot",
    )
    .await;
    assert_eq!(r.status(), 404, "no event names it yet");
    send_event(
        &hub,
        "AG-CAM",
        &event("CAM-0001", &early, EventPhase::Start, t, Some(1)),
    )
    .await;
    let evs = cc_json(&hub, "/api/v1/events?camera=CAM-0001").await;
    assert_eq!(evs[0]["snapshot"]["width"], 640);
    assert_eq!(evs[0]["snapshot"]["height"], 360);
    let r = get(
        &hub,
        "command-center",
        "cc-secret-123",
        "/api/v1/cameras/CAM-0001/snapshot",
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.headers()["x-event-id"], early.as_str());
    assert_eq!(r.bytes().await.unwrap(), jpeg_a);
    // After: the event first, then its snapshot; the newer event's picture is the latest.
    let late = format!("CAM-0001.{}.2", t + 30_000);
    send_event(
        &hub,
        "AG-CAM",
        &event("CAM-0001", &late, EventPhase::Start, t + 30_000, Some(2)),
    )
    .await;
    let jpeg_b = jpeg(1280, 720, 2);
    assert_eq!(
        send_snapshot(&hub, "AG-CAM", &late, jpeg_b.clone()).await,
        Disposition::Accepted
    );
    wait_ack(&hub, "AG-CAM", "second snapshot acked", |a| {
        a.snapshots.contains(&late)
    })
    .await;
    let r = get(
        &hub,
        "command-center",
        "cc-secret-123",
        "/api/v1/cameras/CAM-0001/snapshot",
    )
    .await;
    assert_eq!(r.bytes().await.unwrap(), jpeg_b);
    let path = format!("/api/v1/cameras/CAM-0001/snapshots/{early}");
    let r = get(&hub, "command-center", "cc-secret-123", &path).await;
    assert_eq!(r.bytes().await.unwrap(), jpeg_a);
    // An event of one camera is not served under another.
    let path = format!("/api/v1/cameras/CAM-0002/snapshots/{early}");
    assert_eq!(
        get(&hub, "command-center", "cc-secret-123", &path)
            .await
            .status(),
        404
    );
    // Newest first.
    let evs = cc_json(&hub, "/api/v1/events?camera=CAM-0001").await;
    let ids: Vec<&str> = evs
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [late.as_str(), early.as_str()]);
    let evs = cc_json(
        &hub,
        &format!("/api/v1/events?camera=CAM-0001&to={}", t + 1),
    )
    .await;
    assert_eq!(evs.as_array().unwrap().len(), 1);
    let evs = cc_json(&hub, "/api/v1/events?limit=1").await;
    assert_eq!(evs[0]["id"], late.as_str());
    // A snapshot sent again is acknowledged again and stays one file.
    let acks_before = acks(&hub, "AG-CAM").len();
    send_snapshot(&hub, "AG-CAM", &late, jpeg_b.clone()).await;
    hub.published
        .wait_count("v1/agents/AG-CAM/ack", acks_before + 1)
        .await;
    let files = std::fs::read_dir(dir.path().join("video/snapshots/AG-CAM"))
        .unwrap()
        .count();
    assert_eq!(files, 2);
    stop(hub).await;
}

#[tokio::test]
async fn what_does_not_belong_is_dead_lettered_and_still_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path()).await;
    let t = now_ms();
    let dead = |hub: &TestHub<TsStore>, agent_id: &str| -> Vec<DeadLetter> {
        hub.published
            .on(&format!("v1/deadletter/{agent_id}"))
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect()
    };
    // Another agent's camera: refused, acknowledged, not stored.
    let other = event("CAM-0003", "CAM-0003.1.1", EventPhase::Start, t, Some(1));
    send_event(&hub, "AG-CAM", &other).await;
    // A water gauge is no camera.
    send_event(
        &hub,
        "AG-CAM",
        &event("WL-0001", "WL-0001.1.1", EventPhase::Start, t, Some(2)),
    )
    .await;
    let mut bad = event("CAM-0001", "CAM-0001.1.1", EventPhase::Start, t, Some(3));
    bad.boxes = vec![[0.0; 4]; 100];
    send_event(&hub, "AG-CAM", &bad).await;
    wait_acked(&hub, "AG-CAM", "refused events acked", STREAM, 1..=3).await;
    // Garbage without a seq cannot be acknowledged: refused.
    let d = disposition(
        hub.send(agent("AG-CAM"), "v1/agents/AG-CAM/events", &b"{nope"[..])
            .await,
    )
    .await;
    assert!(matches!(d, Disposition::Rejected(_)), "{d:?}");
    // Snapshots: not a JPEG, cut off, another agent's camera: refused, acknowledged by id.
    send_snapshot(
        &hub,
        "AG-CAM",
        "CAM-0001.9.1",
        b"GIF89a not a jpeg".to_vec(),
    )
    .await;
    let mut cut = jpeg(64, 64, 3);
    cut.truncate(cut.len() - 2);
    send_snapshot(&hub, "AG-CAM", "CAM-0001.9.2", cut).await;
    send_snapshot(&hub, "AG-CAM", "CAM-0003.9.3", jpeg(64, 64, 4)).await;
    for id in ["CAM-0001.9.1", "CAM-0001.9.2", "CAM-0003.9.3"] {
        wait_ack(&hub, "AG-CAM", id, |a| a.snapshots.iter().any(|s| s == id)).await;
    }
    let reasons: Vec<String> = dead(&hub, "AG-CAM").into_iter().map(|d| d.reason).collect();
    for label in [
        "device_not_of_agent: camera `CAM-0003`",
        "not_a_camera",
        "bad_event: more than 64 boxes",
        "bad_event",
        "bad_snapshot: not a JPEG",
        "bad_snapshot: truncated JPEG",
    ] {
        assert!(
            reasons.iter().any(|r| r.starts_with(label)),
            "{label} in {reasons:?}"
        );
    }
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.starts_with("device_not_of_agent"))
            .count(),
        2,
        "{reasons:?}"
    );
    let evs = cc_json(&hub, "/api/v1/events").await;
    assert_eq!(evs.as_array().unwrap().len(), 0, "{evs:?}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("video/snapshots"))
            .unwrap()
            .count(),
        0
    );
    stop(hub).await;
}

#[tokio::test]
async fn events_and_snapshots_survive_a_restart_and_redeliveries_stay_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let t = now_ms() - 5_000;
    let id = format!("CAM-0001.{t}.1");
    let start_ev = event("CAM-0001", &id, EventPhase::Start, t, Some(1));
    let picture = jpeg(320, 240, 9);
    {
        let hub = start(dir.path()).await;
        send_event(&hub, "AG-CAM", &start_ev).await;
        send_snapshot(&hub, "AG-CAM", &id, picture.clone()).await;
        wait_ack(&hub, "AG-CAM", "both acked", |a| a.snapshots.contains(&id)).await;
        stop(hub).await;
    }
    let hub = start(dir.path()).await;
    let evs = cc_json(&hub, "/api/v1/events").await;
    assert_eq!(evs[0]["id"], id.as_str());
    assert_eq!(evs[0]["snapshot"]["width"], 320);
    let r = get(
        &hub,
        "command-center",
        "cc-secret-123",
        "/api/v1/cameras/CAM-0001/snapshot",
    )
    .await;
    assert_eq!(r.bytes().await.unwrap(), picture);
    // The agent never saw the ack and sends both again: acknowledged, nothing published.
    send_event(&hub, "AG-CAM", &start_ev).await;
    send_snapshot(&hub, "AG-CAM", &id, picture.clone()).await;
    wait_ack(&hub, "AG-CAM", "seq 1 acked again", |a| {
        a.stream == STREAM && a.covers(1)
    })
    .await;
    wait_ack(&hub, "AG-CAM", "snapshot acked again", |a| {
        a.snapshots.contains(&id)
    })
    .await;
    assert!(hub.published.on("v1/feeds/camera/CAM-0001").is_empty());
    assert_eq!(
        cc_json(&hub, "/api/v1/events")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    stop(hub).await;
}

#[tokio::test]
async fn snapshots_older_than_the_retention_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = video_config(dir.path());
    cfg.hub.snapshot_retention = protocols::config::HumanDuration::secs(1);
    let hub = start_with(cfg).await;
    let t = now_ms();
    let id = format!("CAM-0001.{t}.1");
    send_event(
        &hub,
        "AG-CAM",
        &event("CAM-0001", &id, EventPhase::Start, t, Some(1)),
    )
    .await;
    send_snapshot(&hub, "AG-CAM", &id, jpeg(64, 48, 1)).await;
    wait_ack(&hub, "AG-CAM", "snapshot acked", |a| {
        a.snapshots.contains(&id)
    })
    .await;
    let file = dir.path().join(format!("video/snapshots/AG-CAM/{id}.jpg"));
    assert!(file.exists());
    // Retention runs every second here; poll until the snapshot is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(
            &hub,
            "command-center",
            "cc-secret-123",
            "/api/v1/cameras/CAM-0001/snapshot",
        )
        .await;
        if r.status() == 404 && !file.exists() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "snapshot still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The event is kept (events follow `retention`), without its snapshot.
    let evs = cc_json(&hub, "/api/v1/events").await;
    assert_eq!(evs[0]["id"], id.as_str());
    assert!(evs[0].get("snapshot").is_none(), "{evs:?}");
    stop(hub).await;
}

#[tokio::test]
async fn an_app_sees_only_the_cameras_its_grants_cover() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path()).await;
    let t = now_ms() - 1000;
    for (n, cam) in ["CAM-0002", "CAM-0001"].iter().enumerate() {
        let id = format!("{cam}.{t}.{n}");
        send_event(
            &hub,
            "AG-CAM",
            &event(cam, &id, EventPhase::Start, t, Some(n as u64 + 1)),
        )
        .await;
        send_snapshot(&hub, "AG-CAM", &id, jpeg(64, 48, n as u8)).await;
    }
    send_event(
        &hub,
        "AG-OTHER",
        &event("CAM-0003", "CAM-0003.1.1", EventPhase::Start, t, Some(1)),
    )
    .await;
    wait_ack(&hub, "AG-CAM", "snapshots acked", |a| {
        a.snapshots.iter().any(|s| s.starts_with("CAM-0001"))
    })
    .await;
    let list = |v: serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect()
    };
    let cams: Vec<CameraEntry> =
        json_of(get(&hub, "command-center", "cc-secret-123", "/api/v1/cameras").await).await;
    assert_eq!(cams.len(), 3);
    let gate = cams.iter().find(|c| c.id == "CAM-0001").unwrap();
    assert_eq!(gate.gb_id, "33011000001320000001");
    assert_eq!(gate.name, "Gate north");
    assert_eq!((gate.lat, gate.lon), (Some(30.4212), Some(120.301)));
    assert_eq!(
        (gate.dept.as_str(), gate.stream.as_str()),
        ("traffic", "rtsp://10.0.0.5/main")
    );
    let t_get = |path: &str| get(&hub, "traffic", "traffic-secret", path.to_string());
    let r = t_get("/api/v1/cameras").await;
    assert_eq!(list(json_of(r).await), ["CAM-0001", "CAM-0003"]);
    let r = t_get("/api/v1/events").await;
    let seen: Vec<String> = json_of::<serde_json::Value>(r)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["camera"].as_str().unwrap().to_string())
        .collect();
    assert!(
        seen.contains(&"CAM-0001".to_string()) && !seen.contains(&"CAM-0002".to_string()),
        "{seen:?}"
    );
    for path in [
        "/api/v1/cameras/CAM-0002",
        "/api/v1/cameras/CAM-0002/snapshot",
        &format!("/api/v1/cameras/CAM-0002/snapshots/CAM-0002.{t}.0"),
        "/api/v1/events?camera=CAM-0002",
    ] {
        let r = t_get(path).await;
        assert_eq!(r.status(), 403, "{path}");
        let body: serde_json::Value = json_of(r).await;
        assert_eq!(body["error"], "forbidden");
    }
    assert_eq!(
        t_get("/api/v1/cameras/CAM-0001/snapshot").await.status(),
        200
    );
    // A twin grant is not a camera grant: the water app sees no camera at all.
    let r = get(&hub, "water", "water-secret", "/api/v1/cameras").await;
    assert!(list(json_of(r).await).is_empty());
    let r = get(&hub, "water", "water-secret", "/api/v1/events").await;
    assert!(
        json_of::<serde_json::Value>(r)
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        get(
            &hub,
            "water",
            "water-secret",
            "/api/v1/cameras/CAM-0002/snapshot"
        )
        .await
        .status(),
        403
    );
    // Unknown camera, no credentials, bad query.
    assert_eq!(t_get("/api/v1/cameras/CAM-9999").await.status(), 404);
    assert_eq!(t_get("/api/v1/cameras/WL-0001").await.status(), 404);
    let r = http()
        .get(format!("{}/api/v1/cameras", hub.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(t_get("/api/v1/events?limit=0").await.status(), 400);
    assert_eq!(t_get("/api/v1/events?from=soon").await.status(), 400);
    stop(hub).await;
}

#[tokio::test]
async fn the_live_stream_carries_events_inside_the_grants() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path()).await;
    let mut resp = http()
        .get(format!("{}/api/v1/stream", hub.base_url()))
        .bearer_auth("traffic:traffic-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let t = now_ms();
    // CAM-0002 first (outside the grants), then CAM-0001 and its snapshot.
    send_event(
        &hub,
        "AG-CAM",
        &event("CAM-0002", "CAM-0002.1.1", EventPhase::Start, t, Some(1)),
    )
    .await;
    let id = format!("CAM-0001.{t}.2");
    send_event(
        &hub,
        "AG-CAM",
        &event("CAM-0001", &id, EventPhase::Start, t, Some(2)),
    )
    .await;
    send_snapshot(&hub, "AG-CAM", &id, jpeg(64, 48, 1)).await;
    let mut text = String::new();
    let mut events: Vec<serde_json::Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !events.iter().any(|e| e["snapshot"].is_object()) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("live events in time")
            .unwrap()
            .expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = text.find("\n\n") {
            let block: String = text.drain(..i + 2).collect();
            if block.contains("event: event") || block.contains("event:event") {
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data:"))
                    .unwrap()
                    .trim();
                events.push(serde_json::from_str(data).unwrap());
            }
        }
    }
    assert!(
        events.iter().all(|e| e["camera"] == "CAM-0001"),
        "{events:?}"
    );
    assert_eq!(
        events.last().unwrap()["snapshot"]["url"],
        format!("/api/v1/cameras/CAM-0001/snapshots/{id}")
    );
    drop(resp);
    stop(hub).await;
}

#[tokio::test]
async fn the_catalog_follows_the_agent_the_health_and_the_readings() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path()).await;
    let now = now_ms();
    let ag = Arc::new(agent("AG-CAM"));
    hub.event(IngressEvent::Connected {
        principal: ag.clone(),
        client_id: "AG-CAM".into(),
    })
    .await;
    hub.published
        .wait_for("agent online", |m| {
            m.iter()
                .any(|m| {
                    m.topic == "v1/status/AG-CAM" && &m.payload[..] == STATUS_ONLINE.as_bytes()
                })
                .then_some(())
        })
        .await;
    let readings = |seq: u64, ts: i64, fps: f64| AgentBatch {
        agent: "AG-CAM".into(),
        stream: STREAM,
        seq,
        devices: vec![DeviceReadings {
            device: "CAM-0001".into(),
            samples: vec![Sample {
                ts_ms: ts,
                readings: vec![
                    Reading {
                        quantity: Quantity::CameraFps.code(),
                        value: Value::Number(fps),
                        quality: Quality::Good,
                    },
                    Reading {
                        quantity: Quantity::CameraBitrate.code(),
                        value: Value::Number(812.5),
                        quality: Quality::Good,
                    },
                ],
            }],
        }],
    };
    let entry = |hub: &TestHub<TsStore>| {
        let url = format!("{}/api/v1/cameras/CAM-0001", hub.base_url());
        async move {
            let r = http()
                .get(url)
                .bearer_auth("command-center:cc-secret-123")
                .send()
                .await
                .unwrap();
            json_of::<CameraEntry>(r).await
        }
    };
    let send_batch = |b: AgentBatch| {
        let hub = &hub;
        async move {
            disposition(
                hub.send(agent("AG-CAM"), "v1/agents/AG-CAM/batch", encode(&b))
                    .await,
            )
            .await
        }
    };
    send_batch(readings(1, now - 1000, 9.8)).await;
    let e = entry(&hub).await;
    assert!(e.online);
    assert_eq!((e.fps, e.bitrate_kbps), (9.8, 812.5));
    // The agent says the stream stalled.
    let health = |online: bool| Health {
        agent: "AG-CAM".into(),
        ts: now,
        version: "test".into(),
        devices: vec![DeviceHealth {
            id: "CAM-0001".into(),
            online,
            errors: 0,
            last_ok_ms: None,
        }],
        ..Health::default()
    };
    disposition(
        hub.send(
            agent("AG-CAM"),
            "v1/agents/AG-CAM/health",
            serde_json::to_vec(&health(false)).unwrap(),
        )
        .await,
    )
    .await;
    let e = entry(&hub).await;
    assert!(!e.online);
    assert_eq!(e.fps, 0.0);
    disposition(
        hub.send(
            agent("AG-CAM"),
            "v1/agents/AG-CAM/health",
            serde_json::to_vec(&health(true)).unwrap(),
        )
        .await,
    )
    .await;
    assert!(entry(&hub).await.online);
    // The agent dies: every camera behind it goes offline.
    hub.event(IngressEvent::Disconnected {
        principal: ag,
        client_id: "AG-CAM".into(),
        graceful: false,
    })
    .await;
    hub.published
        .wait_for("agent offline", |m| {
            m.iter()
                .any(|m| m.topic == "v1/status/AG-CAM" && &m.payload[..] == b"offline")
                .then_some(())
        })
        .await;
    assert!(!entry(&hub).await.online);
    stop(hub).await;
}

#[tokio::test]
async fn a_camera_whose_readings_stopped_is_offline() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start(dir.path()).await;
    let now = now_ms();
    hub.event(IngressEvent::Connected {
        principal: Arc::new(agent("AG-CAM")),
        client_id: "AG-CAM".into(),
    })
    .await;
    let b = AgentBatch {
        agent: "AG-CAM".into(),
        stream: STREAM,
        seq: 1,
        devices: vec![DeviceReadings {
            device: "CAM-0001".into(),
            samples: vec![Sample {
                ts_ms: now - 120_000,
                readings: vec![Reading {
                    quantity: Quantity::CameraFps.code(),
                    value: Value::Number(10.0),
                    quality: Quality::Good,
                }],
            }],
        }],
    };
    disposition(
        hub.send(agent("AG-CAM"), "v1/agents/AG-CAM/batch", encode(&b))
            .await,
    )
    .await;
    let e: CameraEntry = json_of(
        get(
            &hub,
            "command-center",
            "cc-secret-123",
            "/api/v1/cameras/CAM-0001",
        )
        .await,
    )
    .await;
    assert!(!e.online, "last stream reading two minutes old: {e:?}");
    // CAM-0002 never sent readings: the agent's word (connected, not reported down) counts.
    let e: CameraEntry = json_of(
        get(
            &hub,
            "command-center",
            "cc-secret-123",
            "/api/v1/cameras/CAM-0002",
        )
        .await,
    )
    .await;
    assert!(e.online);
    stop(hub).await;
}
