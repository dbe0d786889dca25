//! The real edge agent in a test: on a runtime of its own, polling a simulated streetlight
//! (the real firmware behind Modbus TCP), with helpers to read its metrics, drain it and ask a
//! store which of its batches it holds. Shared by the failover tests.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use protocols::profile::DeviceProfile;
use series_store::{Appended, Origin, SeriesStore, WriteBatch};
use sim::device::{DeviceSpec, RunningDevice, spawn_tcp};
use sim::world::World;

pub const WAIT: Duration = Duration::from_secs(30);
pub const AGENT: &str = "AG-0001";
/// The agent's window: at most this many entries are unacknowledged when a hub stops.
pub const WINDOW: usize = 16;

pub fn profile_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/streetlight-lc200.toml")
}

/// The edge agent on a runtime of its own; stopped (every task dropped) with the guard.
pub struct AgentGuard {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AgentGuard {
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AgentGuard {
    fn drop(&mut self) {
        self.halt();
    }
}

pub fn start_agent(cfg: edge_agent::config::AgentConfig) -> AgentGuard {
    let (stop, stop_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("agent runtime");
        rt.block_on(async move {
            tokio::select! {
                r = edge_agent::agent::run(cfg) => {
                    if let Err(e) = r {
                        panic!("agent stopped: {e}");
                    }
                }
                _ = stop_rx => {}
            }
        });
        rt.shutdown_timeout(Duration::from_secs(3));
    });
    AgentGuard {
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// The streetlight: real firmware on simulated peripherals, Modbus TCP on a free port.
pub async fn start_streetlight() -> RunningDevice {
    let world = World::default();
    let p = DeviceProfile::from_toml(&std::fs::read_to_string(profile_path()).unwrap()).unwrap();
    let mut spec = DeviceSpec::new("SL-0001", p, 1, world.site("SL-0001"));
    spec.sample_interval = Duration::from_millis(50);
    spawn_tcp(spec, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// The agent's config: `hubs` in order, the streetlight at `modbus`, metrics on `metrics`.
pub fn agent_config(
    dir: &Path,
    hubs: &[String],
    modbus: SocketAddr,
    metrics: SocketAddr,
) -> edge_agent::config::AgentConfig {
    let hubs = hubs
        .iter()
        .map(|h| format!("\"{h}\""))
        .collect::<Vec<_>>()
        .join(", ");
    edge_agent::config::AgentConfig::from_toml(
        &format!(
            r#"
[agent]
id = "{AGENT}"
secret = "ag-secret-0001"
hub = [{hubs}]
data_dir = "agent"
batch_max_age = "50ms"
health_interval = "1s"
max_inflight = {WINDOW}
# An ack lost on its way (a hub restarting while the fan-out carried it) is made good by
# sending the batch again; 5 s instead of 30 keeps that inside the tests' waits.
ack_timeout = "5s"
metrics_listen = "{metrics}"

[[modbus]]
device = "SL-0001"
profile = "{}"
transport = "tcp://{modbus}"
unit = 1
interval = "50ms"
"#,
            profile_path().display()
        ),
        dir,
    )
    .unwrap()
}

/// One value of the agent's `/metrics` page (first series of that name), if it answers.
pub async fn agent_metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name || n.starts_with(&format!("{name}{{")))
            .then(|| v.parse().ok())
            .flatten()
    })
}

/// Waits (checking every 20 ms, up to [`WAIT`]) until `ok` holds; panics naming `what`.
pub async fn until<F, Fut>(what: &str, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ok().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The seqs of `stream` in `1..next` that `store` holds: an append with that origin and no
/// points answers `Duplicate` (or `Recovered`) exactly when the origin is stored.
pub async fn stored_seqs<S: SeriesStore>(store: &S, stream: u64, next: u64) -> BTreeSet<u64> {
    let agent: Arc<str> = AGENT.into();
    let mut seqs = BTreeSet::new();
    for seq in 1..next {
        let probe = WriteBatch {
            origin: Some(Origin {
                agent: agent.clone(),
                stream,
                seq,
            }),
            series: Vec::new(),
        };
        match store.append(probe).await.unwrap() {
            Appended::Duplicate | Appended::Recovered => {
                seqs.insert(seq);
            }
            Appended::Stored => {}
        }
    }
    seqs
}

/// What the agent left behind when it was stopped.
pub struct AgentEnd {
    /// Its queue's stream.
    pub stream: u64,
    /// Every seq below this one was made.
    pub next: u64,
    /// Batches committed when its queue was seen empty (`edge_agent_batches_committed_total`).
    pub committed: u64,
    /// Entries re-sent (`edge_agent_entries_resent_total`).
    pub resent: u64,
    /// Still in its queue.
    pub queued: BTreeSet<u64>,
}

/// Stops the device, waits for the agent to drain its queue, stops it and reads its queue.
pub async fn drain_and_stop(
    device: RunningDevice,
    agent: AgentGuard,
    metrics: SocketAddr,
    dir: &Path,
) -> AgentEnd {
    device.stop().await;
    until("the device offline at the agent", || async {
        agent_metric(metrics, "edge_agent_device_online").await == Some(0.0)
    })
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while agent_metric(metrics, "edge_agent_queue_depth").await != Some(0.0) {
        if tokio::time::Instant::now() >= deadline {
            // Say where it stands: what is queued, sent, acknowledged, and to which hub.
            let text = reqwest::get(format!("http://{metrics}/metrics"))
                .await
                .map(|r| r.text());
            let text = match text {
                Ok(t) => t.await.unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with('#') && l.starts_with("edge_agent_"))
                .collect();
            panic!(
                "timed out waiting for the agent's queue drained:\n{}",
                lines.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let committed = agent_metric(metrics, "edge_agent_batches_committed_total")
        .await
        .unwrap() as u64;
    let resent = agent_metric(metrics, "edge_agent_entries_resent_total")
        .await
        .unwrap() as u64;
    agent.stop();
    let q = edge_agent::queue::Queue::open(&dir.join("agent"), 1 << 30, 1 << 16).unwrap();
    let s = q.stats().unwrap();
    let queued = q
        .read_range(1, s.next_seq, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert!(s.next_seq > 1, "the agent made entries");
    AgentEnd {
        stream: s.stream,
        next: s.next_seq,
        committed,
        resent,
        queued,
    }
}
