//! An agent whose `[agent] hub` is a list fails over between the hubs, end to end: real hubs
//! (`Server`: store, broker, pipeline), the real edge agent (in-process, on its own runtime)
//! and a simulated streetlight running the real firmware behind Modbus TCP.
//!
//! - A dead first hub (a loopback port nobody listens on) is skipped: the readings are stored
//!   on the second.
//! - Two independent hubs A and B; the agent sends to A, A stops mid-stream (a clean shutdown,
//!   or a process that aborts after making a batch durable and before acknowledging it), the
//!   agent turns to B and sends there everything A did not acknowledge. Every (stream, seq) the
//!   agent made is stored on A or B, and only what was in flight when A went away is stored on
//!   both (the two stores do not share their dedup; a cluster's shared store does).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hub::config::HubConfig;
use hub::server::{Server, store_options};
use protocols::profile::DeviceProfile;
use series_store::{Appended, Origin, SeriesStore, TsStore, WriteBatch};
use sim::device::{DeviceSpec, RunningDevice, spawn_tcp};
use sim::world::World;
use tests::HubProc;

const WAIT: Duration = Duration::from_secs(30);
const AGENT: &str = "AG-0001";
/// The agent's window: at most this many entries are unacknowledged when a hub stops.
const WINDOW: usize = 16;

fn profile_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/streetlight-lc200.toml")
}

/// The edge agent on a runtime of its own; stopped (every task dropped) with the guard.
struct AgentGuard {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AgentGuard {
    fn stop(mut self) {
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

fn start_agent(cfg: edge_agent::config::AgentConfig) -> AgentGuard {
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

/// hub.toml of a hub with the streetlight and its agent registered: MQTT on `mqtt`, its data
/// under `data`.
fn hub_toml(data: &Path, mqtt: &str) -> String {
    format!(
        r#"
[hub]
mqtt_listen = ["{mqtt}"]
http_listen = "127.0.0.1:0"
data_dir = "{}"

[[devices]]
id = "SL-0001"
kind = "streetlight"
agent = "{AGENT}"
profile = "{}"

[[agents]]
id = "{AGENT}"
secret = "ag-secret-0001"
"#,
        data.display(),
        profile_path().display()
    )
}

/// An embedded hub (in this process), its data under `dir`.
async fn start_hub(dir: &Path) -> (Server, HubConfig) {
    let cfg = HubConfig::from_toml(&hub_toml(dir, "127.0.0.1:0")).unwrap();
    let server = Server::start(cfg.clone()).await.unwrap();
    (server, cfg)
}

/// The streetlight: real firmware on simulated peripherals, Modbus TCP on a free port.
async fn start_streetlight() -> RunningDevice {
    let world = World::default();
    let p = DeviceProfile::from_toml(&std::fs::read_to_string(profile_path()).unwrap()).unwrap();
    let mut spec = DeviceSpec::new("SL-0001", p, 1, world.site("SL-0001"));
    spec.sample_interval = Duration::from_millis(50);
    spawn_tcp(spec, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// The agent's config: `hubs` in order, the streetlight at `modbus`, metrics on `metrics`.
fn agent_config(
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
async fn agent_metric(addr: SocketAddr, name: &str) -> Option<f64> {
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
async fn until<F, Fut>(what: &str, mut ok: F)
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

fn stored(server: &Server) -> u64 {
    server.metrics().readings_stored.load(Relaxed)
}

/// The seqs of `stream` in `1..next` that `store` holds: an append with that origin and no
/// points answers `Duplicate` (or `Recovered`) exactly when the origin is stored.
async fn stored_seqs(store: &TsStore, stream: u64, next: u64) -> BTreeSet<u64> {
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

/// Reopens a stopped hub's store.
async fn reopen_store(cfg: &HubConfig) -> TsStore {
    let dir = cfg.hub.data_dir.join("series");
    let opts = store_options(&cfg.hub);
    tokio::task::spawn_blocking(move || TsStore::open(dir, opts))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_hub_is_skipped_and_the_readings_are_stored_on_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (live, _) = start_hub(&dir.path().join("hub")).await;
    let device = start_streetlight().await;
    let dead = format!("mqtt://127.0.0.1:{}", tests::free_port());
    let metrics: SocketAddr = format!("127.0.0.1:{}", tests::free_port()).parse().unwrap();
    let cfg = agent_config(
        dir.path(),
        &[dead, format!("mqtt://{}", live.mqtt_addrs()[0])],
        device.addr.unwrap(),
        metrics,
    );
    assert_eq!(cfg.file.agent.hub.len(), 2);
    let agent = start_agent(cfg);

    until("readings stored on the live hub", || async {
        stored(&live) >= 50
    })
    .await;
    until("the agent to report one switch, connected", || async {
        agent_metric(metrics, "edge_agent_hub_switches_total").await == Some(1.0)
            && agent_metric(metrics, "edge_agent_mqtt_connected").await == Some(1.0)
    })
    .await;

    agent.stop();
    device.stop().await;
    live.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_hub_stops_the_agent_sends_what_it_did_not_acknowledge_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let (a, a_cfg) = start_hub(&dir.path().join("hub-a")).await;
    let (b, b_cfg) = start_hub(&dir.path().join("hub-b")).await;
    let device = start_streetlight().await;
    let metrics: SocketAddr = format!("127.0.0.1:{}", tests::free_port()).parse().unwrap();
    let cfg = agent_config(
        dir.path(),
        &[
            format!("mqtt://{}", a.mqtt_addrs()[0]),
            format!("mqtt://{}", b.mqtt_addrs()[0]),
        ],
        device.addr.unwrap(),
        metrics,
    );
    let agent = start_agent(cfg);

    // Mid-stream on A: readings keep coming while A stops.
    until("readings stored on hub A", || async { stored(&a) >= 200 }).await;
    assert_eq!(stored(&b), 0, "B is only the second choice");
    a.shutdown().await.unwrap();

    until("the agent to switch to hub B and store there", || async {
        stored(&b) >= 200
            && agent_metric(metrics, "edge_agent_hub_switches_total").await == Some(1.0)
    })
    .await;

    // No more readings: the agent drains its queue into B.
    let end = drain_and_stop(device, agent, metrics, dir.path()).await;
    b.shutdown().await.unwrap();
    let (stream, next) = (end.stream, end.next);
    let on_a = stored_seqs(&reopen_store(&a_cfg).await, stream, next).await;
    let on_b = stored_seqs(&reopen_store(&b_cfg).await, stream, next).await;
    assert_failed_over(&on_a, &on_b, &end);
}

/// What the agent left behind when it was stopped.
struct AgentEnd {
    /// Its queue's stream.
    stream: u64,
    /// Every seq below this one was made.
    next: u64,
    /// Batches committed when its queue was seen empty (`edge_agent_batches_committed_total`).
    committed: u64,
    /// Entries re-sent (`edge_agent_entries_resent_total`).
    resent: u64,
    /// Still in its queue.
    queued: BTreeSet<u64>,
}

/// Stops the device, waits for the agent to drain its queue, stops it and reads its queue.
async fn drain_and_stop(
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
    until("the agent's queue drained", || async {
        agent_metric(metrics, "edge_agent_queue_depth").await == Some(0.0)
    })
    .await;
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

/// Every seq the agent made is stored on A or B; B has everything after A's last; only A's
/// newest entries (those in flight when A went away, at most the window) are on both.
fn assert_failed_over(on_a: &BTreeSet<u64>, on_b: &BTreeSet<u64>, end: &AgentEnd) {
    let AgentEnd {
        next,
        committed,
        resent,
        queued,
        ..
    } = end;
    let (next, committed, resent) = (*next, *committed, *resent);
    assert!(
        !on_a.is_empty() && !on_b.is_empty(),
        "A: {on_a:?}, B: {on_b:?}"
    );
    // Nothing lost. Only a batch sealed after the queue was seen empty (committed after
    // `committed`) may still wait in the queue for the next connection.
    for seq in 1..next {
        assert!(
            on_a.contains(&seq)
                || on_b.contains(&seq)
                || (seq > committed && queued.contains(&seq)),
            "seq {seq} is on neither hub (A: {on_a:?}, B: {on_b:?}, queued: {queued:?})"
        );
    }
    assert!(queued.iter().all(|&s| s > committed), "queued: {queued:?}");
    // Everything after what A stored went to B.
    let last_on_a = *on_a.last().unwrap();
    for seq in last_on_a + 1..=committed.min(next - 1) {
        assert!(
            on_b.contains(&seq),
            "seq {seq} after A went away is not on B"
        );
    }
    // Only what was unacknowledged when A went away was sent again: at most the window, and
    // those are A's newest entries.
    let both: Vec<u64> = on_a.intersection(on_b).copied().collect();
    assert!(
        both.len() <= WINDOW,
        "{} entries stored on both: {both:?}",
        both.len()
    );
    assert!(
        both.iter().all(|s| s + WINDOW as u64 > last_on_a),
        "re-sent entries that are not A's newest: {both:?} (A's last {last_on_a})"
    );
    assert!(
        resent as usize <= WINDOW,
        "{resent} entries re-sent: more than the window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_hub_dies_before_its_ack_the_next_hub_gets_what_it_did_not_acknowledge() {
    let dir = tempfile::tempdir().unwrap();
    // A is a process of its own that aborts right after making its 20th batch durable, before
    // acknowledging it (the hub's `failpoints` feature, as in agent_hub_reliability.rs).
    let a_text = hub_toml(
        &dir.path().join("hub-a"),
        &format!("127.0.0.1:{}", tests::free_port()),
    );
    let a_cfg = HubConfig::from_toml(&a_text).unwrap();
    let a_toml = dir.path().join("hub-a.toml");
    std::fs::write(&a_toml, &a_text).unwrap();
    let mut a = HubProc::start(
        Path::new(env!("CARGO_BIN_EXE_test-hub")),
        &a_toml,
        Some("abort_after_store:20"),
        WAIT,
    )
    .await;
    let (b, b_cfg) = start_hub(&dir.path().join("hub-b")).await;
    let device = start_streetlight().await;
    let metrics: SocketAddr = format!("127.0.0.1:{}", tests::free_port()).parse().unwrap();
    let cfg = agent_config(
        dir.path(),
        &[
            format!("mqtt://{}", a_cfg.hub.mqtt_listen[0]),
            format!("mqtt://{}", b.mqtt_addrs()[0]),
        ],
        device.addr.unwrap(),
        metrics,
    );
    let agent = start_agent(cfg);

    assert!(
        a.proc.exited(WAIT).await.is_some(),
        "hub A did not abort at its failpoint"
    );
    until("the agent to switch to hub B and store there", || async {
        stored(&b) >= 100
            && agent_metric(metrics, "edge_agent_hub_switches_total").await == Some(1.0)
    })
    .await;
    let end = drain_and_stop(device, agent, metrics, dir.path()).await;
    b.shutdown().await.unwrap();

    let on_a = stored_seqs(&reopen_store(&a_cfg).await, end.stream, end.next).await;
    let on_b = stored_seqs(&reopen_store(&b_cfg).await, end.stream, end.next).await;
    // At least the 20 of the failpoint (more if a group commit made later ones durable with it).
    assert!(on_a.len() >= 20, "A stored 20 batches: {on_a:?}");
    assert_failed_over(&on_a, &on_b, &end);
    // A's last batch was durable there but never acknowledged: the agent sent it to B.
    let last_on_a = *on_a.last().unwrap();
    assert!(
        on_b.contains(&last_on_a),
        "seq {last_on_a}, stored on A but not acked, is not on B: {on_b:?}"
    );
    assert!(end.resent >= 1, "nothing re-sent after A died");
}
