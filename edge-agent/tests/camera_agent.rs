//! The real agent binary with cameras, over a real broker (mosquitto), against a test peer
//! playing the hub: events and snapshots leave at once (not after `batch_max_age`) through the
//! durable queue, camera readings ride in the batches, camera online state is in the health,
//! and an unacknowledged event and snapshot survive a kill -9.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use protocols::Quantity;
use protocols::batch::{Ack, AgentBatch};
use protocols::messages::{CameraEvent, EventPhase, Health};
use rumqttc::{Event, MqttOptions, Packet, QoS};

/// What the camera hub peer saw.
#[derive(Default)]
struct Seen {
    events: Vec<(Instant, CameraEvent)>,
    snapshots: Vec<(Instant, String, Vec<u8>)>,
    batches: Vec<(Instant, AgentBatch)>,
    health: Vec<Health>,
}

/// A hub stand-in for cameras: records events, snapshots, batches and health; acknowledges
/// events and batches by seq and snapshots by id while `acking`.
struct CameraHub {
    seen: Arc<Mutex<Seen>>,
    acking: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl CameraHub {
    async fn start(port: u16, acking: bool) -> CameraHub {
        let mut o = MqttOptions::new(format!("cam-hub-{}", free_port()), "127.0.0.1", port);
        o.set_max_packet_size(8 << 20, 8 << 20);
        let (client, mut el) = rumqttc::AsyncClient::new(o, 1000);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(acking));
        let (s, a) = (seen.clone(), flag.clone());
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready = Some(ready_tx);
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        for t in [
                            "v1/agents/+/events",
                            "v1/agents/+/snapshots/+",
                            "v1/agents/+/batch",
                            "v1/agents/+/health",
                        ] {
                            el.pending.push_back(rumqttc::Request::Subscribe(
                                rumqttc::Subscribe::new(t, QoS::AtLeastOnce),
                            ));
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let now = Instant::now();
                        let parts: Vec<&str> = p.topic.split('/').collect();
                        let ack_topic = format!("v1/agents/{}/ack", parts[2]);
                        let ack = if p.topic.ends_with("/events") {
                            let e: CameraEvent = serde_json::from_slice(&p.payload).unwrap();
                            let ack = Ack::from_seqs(e.stream.unwrap(), vec![e.seq.unwrap()]);
                            s.lock().unwrap().events.push((now, e));
                            Some(ack)
                        } else if parts.get(3) == Some(&"snapshots") {
                            let id = parts[4].to_string();
                            s.lock()
                                .unwrap()
                                .snapshots
                                .push((now, id.clone(), p.payload.to_vec()));
                            Some(Ack {
                                stream: 0,
                                seqs: vec![],
                                snapshots: vec![id],
                            })
                        } else if p.topic.ends_with("/batch") {
                            let b = protocols::batch::decode(&p.payload).unwrap();
                            let ack = Ack::from_seqs(b.stream, vec![b.seq]);
                            s.lock().unwrap().batches.push((now, b));
                            Some(ack)
                        } else {
                            if let Ok(h) = serde_json::from_slice(&p.payload) {
                                s.lock().unwrap().health.push(h);
                            }
                            None
                        };
                        if let Some(ack) = ack
                            && a.load(std::sync::atomic::Ordering::SeqCst)
                        {
                            let _ = client.try_publish(
                                ack_topic,
                                QoS::AtLeastOnce,
                                false,
                                serde_json::to_vec(&ack).unwrap(),
                            );
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(10), ready_rx).await;
        CameraHub {
            seen,
            acking: flag,
            task,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&Seen) -> R) -> R {
        f(&self.seen.lock().unwrap())
    }

    async fn until(&self, what: &str, timeout: Duration, f: impl Fn(&Seen) -> bool) {
        let ok = wait_for(timeout, || self.with(&f)).await;
        assert!(ok, "timed out waiting for {what}");
    }
}

impl Drop for CameraHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn camera_agent_toml(dir: &Path, hub: &str, metrics_port: u16, cameras: &str) -> String {
    format!(
        r#"[agent]
id = "AG-CAM"
secret = "agent-secret"
hub = "{hub}"
data_dir = "{data}"
batch_max_age = "4s"
health_interval = "30s"
ack_timeout = "2s"
metrics_listen = "127.0.0.1:{metrics_port}"
{cameras}"#,
        data = dir.join("data").display(),
    )
}

const MOTION: &str = r#"
[[camera]]
id = "CAM-1"
source = "synthetic:motion?size=320x180&fps=10&seed=7"
health_interval = "1s"
end_after = "1s"
"#;

/// Snapshots and entries still queued on disk (the agent must be stopped).
fn queued(dir: &Path) -> (Vec<String>, Vec<u64>) {
    let q = edge_agent::queue::Queue::open(&dir.join("data"), 1 << 30, 1 << 16).unwrap();
    (q.snapshot_ids().unwrap(), q.seqs().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_snapshots_leave_at_once_and_go_when_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let hub = CameraHub::start(broker.port, true).await;
    let metrics_port = free_port();
    let cameras = format!(
        "{MOTION}\n[[camera]]\nid = \"CAM-STILL\"\nsource = \"synthetic:static?size=320x180&fps=10\"\nhealth_interval = \"1s\"\n"
    );
    let cfg = write_agent_toml(
        dir.path(),
        &camera_agent_toml(dir.path(), &broker.url(), metrics_port, &cameras),
    );
    let started = Instant::now();
    let mut agent = start_agent(&cfg);
    hub.until("a start with its snapshot", Duration::from_secs(20), |s| {
        s.events.iter().any(|(_, e)| e.phase == EventPhase::Start) && !s.snapshots.is_empty()
    })
    .await;
    let (first_event_at, start, snap_at, snap_id, jpeg) = hub.with(|s| {
        let (at, e) = s.events[0].clone();
        let (sat, id, j) = s.snapshots[0].clone();
        (at, e, sat, id, j)
    });
    assert_eq!(start.camera, "CAM-1");
    assert_eq!(start.phase, EventPhase::Start);
    assert!(start.stream.is_some_and(|s| s != 0) && start.seq.is_some());
    assert_eq!(start.snapshot.as_deref(), Some(snap_id.as_str()));
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
    // Sent at once: long before the first batch could be sealed by age (4 s).
    let first_batch = hub.with(|s| s.batches.first().map(|(t, _)| *t));
    assert!(
        first_batch.is_none_or(|b| b > first_event_at),
        "the event waited for a batch"
    );
    assert!(
        snap_at.duration_since(first_event_at) < Duration::from_secs(2),
        "the snapshot followed its start at once"
    );
    assert!(first_event_at.duration_since(started) < Duration::from_secs(15));
    // Camera readings ride in batches: stream health and motion, as readings of the camera.
    hub.until("camera readings in a batch", Duration::from_secs(15), |s| {
        let q: Vec<u16> = s
            .batches
            .iter()
            .flat_map(|(_, b)| &b.devices)
            .filter(|d| d.device == "CAM-1")
            .flat_map(|d| &d.samples)
            .flat_map(|s| &s.readings)
            .map(|r| r.quantity)
            .collect();
        [
            Quantity::CameraFps,
            Quantity::Motion,
            Quantity::CameraFramesLost,
        ]
        .iter()
        .all(|x| q.contains(&x.code()))
    })
    .await;
    // Health (every 30 s here) went out at once when the cameras came online.
    hub.until("cameras online in health", Duration::from_secs(10), |s| {
        s.health.iter().any(|h| {
            let on: BTreeMap<&str, bool> = h
                .devices
                .iter()
                .map(|d| (d.id.as_str(), d.online))
                .collect();
            on.get("CAM-1") == Some(&true) && on.get("CAM-STILL") == Some(&true)
        })
    })
    .await;
    // The still camera never produced an event.
    assert!(hub.with(|s| s.events.iter().all(|(_, e)| e.camera == "CAM-1")));
    // Everything acked is deleted: after a clean stop the queue holds nothing that was acked.
    hub.until("an end", Duration::from_secs(20), |s| {
        s.events.iter().any(|(_, e)| e.phase == EventPhase::End)
    })
    .await;
    // What the hub acknowledged so far, and the agent's word that it applied those acks (an
    // ack still on the wire when the agent stops is rightly kept and sent again).
    let acked_snaps: std::collections::BTreeSet<String> =
        hub.with(|s| s.snapshots.iter().map(|x| x.1.clone()).collect());
    let acked_seqs: std::collections::BTreeSet<u64> = hub.with(|s| {
        s.events
            .iter()
            .filter_map(|(_, e)| e.seq)
            .chain(s.batches.iter().map(|(_, b)| b.seq))
            .collect()
    });
    let applied = wait_for(Duration::from_secs(10), || {
        let page = scrape(metrics_port);
        metric(&page, "edge_agent_entries_acked_total")
            .is_some_and(|n| n >= acked_seqs.len() as f64)
            && metric(&page, "edge_agent_snapshots_acked_total")
                .is_some_and(|n| n >= acked_snaps.len() as f64)
    })
    .await;
    assert!(applied, "{}", scrape(metrics_port));
    agent.terminate(Duration::from_secs(15));
    let (snaps, seqs) = queued(dir.path());
    assert!(snaps.iter().all(|s| !acked_snaps.contains(s)), "{snaps:?}");
    assert!(seqs.iter().all(|s| !acked_seqs.contains(s)), "{seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_event_and_snapshot_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let hub = CameraHub::start(broker.port, false).await;
    let cfg = write_agent_toml(
        dir.path(),
        &camera_agent_toml(dir.path(), &broker.url(), free_port(), MOTION),
    );
    let mut agent = start_agent(&cfg);
    hub.until("a start with its snapshot", Duration::from_secs(20), |s| {
        s.events.iter().any(|(_, e)| e.phase == EventPhase::Start) && !s.snapshots.is_empty()
    })
    .await;
    agent.kill();
    let (start, id, jpeg) = hub.with(|s| {
        let e = s
            .events
            .iter()
            .find(|(_, e)| e.phase == EventPhase::Start)
            .unwrap()
            .1
            .clone();
        (
            e.clone(),
            e.snapshot.clone().unwrap(),
            s.snapshots[0].2.clone(),
        )
    });
    let (snaps, seqs) = queued(dir.path());
    assert!(snaps.contains(&id), "{snaps:?}");
    assert!(seqs.contains(&start.seq.unwrap()));
    // Restarted, with the hub acknowledging now: the same event (stream and seq) and the same
    // snapshot bytes come again, and then leave the queue.
    hub.acking.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent_before = hub.with(|s| (s.events.len(), s.snapshots.len()));
    let mut agent = start_agent(&cfg);
    hub.until(
        "the start and its snapshot again",
        Duration::from_secs(20),
        |s| {
            s.events[sent_before.0..].iter().any(|(_, e)| {
                e.stream == start.stream && e.seq == start.seq && e.snapshot == start.snapshot
            }) && s.snapshots[sent_before.1..]
                .iter()
                .any(|(_, i, j)| *i == id && *j == jpeg)
        },
    )
    .await;
    // Acked after the restart: gone from the queue (checked after a clean stop).
    let ok = wait_for(Duration::from_secs(10), || {
        scrape_metric(&cfg, "edge_agent_queue_snapshots").is_some_and(|n| n == 0.0)
    })
    .await;
    agent.terminate(Duration::from_secs(15));
    let (snaps, seqs) = queued(dir.path());
    assert!(!snaps.contains(&id), "{snaps:?} (metrics said empty: {ok})");
    assert!(!seqs.contains(&start.seq.unwrap()));
}

/// Reads one metric of the agent configured in `cfg` (its `metrics_listen`).
fn scrape_metric(cfg: &Path, name: &str) -> Option<f64> {
    let text = std::fs::read_to_string(cfg).ok()?;
    let port: u16 = text
        .lines()
        .find_map(|l| l.strip_prefix("metrics_listen = \"127.0.0.1:"))?
        .trim_end_matches('"')
        .parse()
        .ok()?;
    metric(&scrape(port), name)
}
