//! Throughput and latency of the hub pipeline alone (decode, validate, normalize, dedup
//! bookkeeping, twin, feeds, acks), driven through the ingress seam.
//!
//! The store is a null store (append resolves at once) and the publisher only counts, so this
//! measures the hub core's ceiling; `sim bench ingest` measures the whole hub with the real
//! broker and store.
//!
//! `cargo bench -p hub --bench pipeline -- [--seconds N] [--devices-per-batch N]`
//!
//! Prints two JSON lines: full speed (`mode":"max"`), then half of that rate (`"mode":"half"`)
//! with the latency from handing a batch to the ingress seam until its agent ack is published
//! (acks go out after the batch's feeds).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hub::Hub;
use hub::config::{AgentConfig, DeviceConfig, HubConfig};
use mqtt_broker::ingress::{Disposition, Inbound, IngressEvent, Outbound, Publisher};
use parking_lot::Mutex;
use protocols::access::Principal;
use protocols::batch::{Ack, AgentBatch, DeviceReadings, Reading, Sample, encode};
use protocols::{Quality, Quantity, Value};
use series_store::{Appended, Point, Query, SeriesStore, StoreError, WriteBatch};

const AGENTS: usize = 16;
const DEVICES_PER_AGENT: usize = 64;

#[derive(Default)]
struct NullStore {
    points: AtomicU64,
}

impl SeriesStore for NullStore {
    async fn append(&self, batch: WriteBatch) -> Result<Appended, StoreError> {
        let n: usize = batch.series.iter().map(|(_, p)| p.len()).sum();
        self.points.fetch_add(n as u64, Relaxed);
        Ok(Appended::Stored)
    }
    fn query(&self, _: &Query) -> Result<Vec<(i64, f64)>, StoreError> {
        Ok(Vec::new())
    }
    fn latest(&self, _: &str) -> Result<Vec<(Quantity, Point)>, StoreError> {
        Ok(Vec::new())
    }
}

/// Counts feeds and measures ack latency.
struct Meter {
    feeds: AtomicU64,
    sent_at: Mutex<HashMap<(usize, u64), Instant>>,
    latencies: Mutex<Vec<Duration>>,
    acked: AtomicU64,
    agent_index: HashMap<String, usize>,
}

impl Publisher for Meter {
    fn publish(&self, msg: Outbound) {
        if msg.topic.starts_with("v1/feeds/") {
            self.feeds.fetch_add(1, Relaxed);
        } else if let Some(agent) = msg
            .topic
            .strip_prefix("v1/agents/")
            .and_then(|t| t.strip_suffix("/ack"))
        {
            let now = Instant::now();
            let Ok(ack) = serde_json::from_slice::<Ack>(&msg.payload) else {
                return;
            };
            let a = self.agent_index[agent];
            let mut sent = self.sent_at.lock();
            let mut lat = self.latencies.lock();
            for (lo, hi) in ack.seqs {
                for s in lo..=hi {
                    if let Some(t) = sent.remove(&(a, s)) {
                        lat.push(now - t);
                        self.acked.fetch_add(1, Relaxed);
                    }
                }
            }
        }
    }
}

fn config(dir: &std::path::Path) -> HubConfig {
    let mut cfg = HubConfig::default();
    cfg.hub.data_dir = dir.to_path_buf();
    cfg.hub.http_listen = "127.0.0.1:0".into();
    for a in 0..AGENTS {
        cfg.agents.push(AgentConfig {
            id: format!("AG-{a:04}"),
            secret: Some("bench-secret".into()),
            ..AgentConfig::default()
        });
        for d in 0..DEVICES_PER_AGENT {
            cfg.devices.push(DeviceConfig {
                id: format!("SL-{a:04}-{d:03}"),
                kind: "streetlight".into(),
                agent: Some(format!("AG-{a:04}")),
                dept: Some("lighting".into()),
                lat: Some(30.0 + d as f64 / 1000.0),
                lon: Some(120.0),
                ..DeviceConfig::default()
            });
        }
    }
    cfg
}

fn batch(agent: usize, seq: u64, devices: usize, ts: i64) -> Vec<u8> {
    let r = |q: Quantity, v: f64| Reading {
        quantity: q.code(),
        value: Value::Number(v),
        quality: Quality::Good,
    };
    let b = AgentBatch {
        agent: format!("AG-{agent:04}"),
        stream: 1,
        seq,
        devices: (0..devices)
            .map(|d| DeviceReadings {
                device: format!(
                    "SL-{agent:04}-{:03}",
                    (seq as usize * devices + d) % DEVICES_PER_AGENT
                ),
                samples: vec![Sample {
                    ts_ms: ts,
                    readings: vec![
                        r(Quantity::LampVoltage, 230.0 + (seq % 7) as f64),
                        r(Quantity::LampCurrent, 0.27),
                        r(Quantity::LampPower, 61.5 + (seq % 3) as f64),
                        r(Quantity::LampEnergy, 1234.5 + seq as f64 / 1000.0),
                        r(Quantity::DimmingLevel, 40.0),
                    ],
                }],
            })
            .collect(),
    };
    encode(&b)
}

struct Run {
    readings_per_s: f64,
    msgs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    sent: u64,
    acked: u64,
    stored: u64,
    feeds: u64,
}

async fn run(seconds: f64, devices_per_batch: usize, rate_msgs: Option<f64>) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(dir.path());
    let store = Arc::new(NullStore::default());
    let hub = Hub::new(cfg, store.clone()).expect("hub");
    let events = hub.ingress_sender();
    let meter = Arc::new(Meter {
        feeds: AtomicU64::new(0),
        sent_at: Mutex::new(HashMap::new()),
        latencies: Mutex::new(Vec::new()),
        acked: AtomicU64::new(0),
        agent_index: (0..AGENTS).map(|a| (format!("AG-{a:04}"), a)).collect(),
    });
    let running = hub.start(meter.clone()).await.expect("start");
    let principals: Vec<Arc<Principal>> = (0..AGENTS)
        .map(|a| Arc::new(Principal::Agent(format!("AG-{a:04}"))))
        .collect();
    let topics: Vec<String> = (0..AGENTS)
        .map(|a| format!("v1/agents/AG-{a:04}/batch"))
        .collect();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut sent = 0u64;
    let mut dispositions = Vec::new();
    let ts = protocols::time::now_ms();
    let mut seq = 0u64;
    while Instant::now() < deadline {
        seq += 1;
        for a in 0..AGENTS {
            if let Some(rate) = rate_msgs {
                let due = started + Duration::from_secs_f64(sent as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            let payload = batch(a, seq, devices_per_batch, ts + seq as i64);
            let (tx, rx) = tokio::sync::oneshot::channel();
            meter.sent_at.lock().insert((a, seq), Instant::now());
            events
                .send(IngressEvent::Message(Inbound {
                    principal: principals[a].clone(),
                    client_id: principals[a].id().into(),
                    topic: topics[a].clone(),
                    payload: payload.into(),
                    received_ms: ts + seq as i64,
                    arrived: Instant::now(),
                    done: Some(tx),
                }))
                .await
                .expect("pipeline open");
            dispositions.push(rx);
            sent += 1;
        }
    }
    drop(events);
    let mut accepted = 0u64;
    for rx in dispositions {
        if rx.await == Ok(Disposition::Accepted) {
            accepted += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    running.shutdown().await;
    let mut lat = meter.latencies.lock().clone();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    assert_eq!(accepted, sent, "every batch accepted");
    let stored = store.points.load(Relaxed);
    Run {
        readings_per_s: stored as f64 / elapsed,
        msgs_per_s: sent as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        sent,
        acked: meter.acked.load(Relaxed),
        stored,
        feeds: meter.feeds.load(Relaxed),
    }
}

fn print(mode: &str, devices: usize, r: &Run) {
    println!(
        "{{\"mode\":\"{mode}\",\"readings_per_batch\":{},\"readings_per_s\":{:.0},\"msgs_per_s\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"sent\":{},\"acked\":{},\"stored\":{},\"feeds\":{},\"lost\":{}}}",
        devices * 5,
        r.readings_per_s,
        r.msgs_per_s,
        r.p50_ms,
        r.p99_ms,
        r.sent,
        r.acked,
        r.stored,
        r.feeds,
        r.sent - r.acked
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: f64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let seconds = arg("--seconds", 5.0);
    let devices = arg("--devices-per-batch", 20.0) as usize;
    let workers = arg("--threads", 2.0) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    let max = rt.block_on(run(seconds, devices, None));
    print("max", devices, &max);
    let half = rt.block_on(run(seconds, devices, Some(max.msgs_per_s / 2.0)));
    print("half", devices, &half);
}
