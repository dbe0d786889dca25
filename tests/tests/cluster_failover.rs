//! Cluster mode under failures, with every part a real process or program: three `test-hub`
//! processes in cluster mode, a three-node NATS JetStream cluster and PostgreSQL (started by
//! the `engines` crate), the real edge agent with the list of hubs, polling a simulated
//! streetlight (the real firmware behind Modbus TCP).
//!
//! Each test ends by draining the agent's queue and asking the shared store which of the
//! agent's batches it holds: every (stream, seq) the agent made is stored, and no reading is
//! stored twice (no two head rows of a series share a timestamp).

mod agent_support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::*;
use engines::nats::NatsCluster;
use engines::postgres::Postgres;
use series_store::postgres::{PgOptions, PgStore};
use sim::device::RunningDevice;
use tests::HubProc;

const PARTITIONS: u32 = 8;
const OPS: &str = "ops:ops-secret-123";

fn test_hub() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_test-hub"))
}

async fn engines() -> (NatsCluster, Postgres) {
    tokio::task::spawn_blocking(|| {
        let e =
            engines::Engines::start(3).expect("nats-server and postgres (scripts/setup-peers.sh)");
        (e.nats, e.pg)
    })
    .await
    .unwrap()
}

/// One hub of the cluster: its config file, MQTT port and process.
struct ClusterHub {
    node: String,
    config: PathBuf,
    mqtt: SocketAddr,
    proc: Option<HubProc>,
}

impl ClusterHub {
    fn http(&self) -> SocketAddr {
        self.proc.as_ref().expect("running").http
    }

    async fn start(&mut self) {
        self.proc = Some(HubProc::start(&test_hub(), &self.config, None, WAIT).await);
    }
}

/// Writes the configs of `n` hubs under `dir` and starts them.
async fn start_hubs(dir: &Path, n: usize, nats: &NatsCluster, pg: &Postgres) -> Vec<ClusterHub> {
    let urls = nats
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let mut hubs = Vec::new();
    for i in 1..=n {
        let data = dir.join(format!("hub-{i}"));
        std::fs::create_dir_all(&data).unwrap();
        let mqtt: SocketAddr = format!("127.0.0.1:{}", tests::free_port()).parse().unwrap();
        let toml = format!(
            r#"
[hub]
mqtt_listen = ["{mqtt}"]
http_listen = "127.0.0.1:0"
data_dir = "{data}"

[cluster]
node = "hub-{i}"
nats = [{urls}]
postgres = "{pg}"
partitions = {PARTITIONS}
lease = "3s"

[[devices]]
id = "SL-0001"
kind = "streetlight"
agent = "{AGENT}"
profile = "{profile}"

[[agents]]
id = "{AGENT}"
secret = "ag-secret-0001"

[[apps]]
id = "ops"
secret = "ops-secret-123"
grants = ["feeds/#", "twin/#", "alerts/#"]

# Fires on every reading: one alert episode for as long as the test runs.
[[rules]]
id = "lamp-on"
quantity = "lamp_power"
above = -1.0
level = "blue"
"#,
            data = data.display(),
            pg = pg.url(),
            profile = profile_path().display(),
        );
        let config = data.join("hub.toml");
        std::fs::write(&config, toml).unwrap();
        let mut h = ClusterHub {
            node: format!("hub-{i}"),
            config,
            mqtt,
            proc: None,
        };
        h.start().await;
        hubs.push(h);
    }
    hubs
}

/// `GET /api/v1/cluster` of a hub (`None` while it does not answer).
async fn cluster_view(http: SocketAddr) -> Option<serde_json::Value> {
    let r = reqwest::Client::new()
        .get(format!("http://{http}/api/v1/cluster"))
        .header("authorization", format!("Bearer {OPS}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    serde_json::from_str(&r.text().await.ok()?).ok()
}

/// The live owner of `partition` as `http` sees it.
async fn owner_of(http: SocketAddr, partition: u32) -> Option<String> {
    let v = cluster_view(http).await?;
    v["partition_owners"][partition as usize]["owner"]
        .as_str()
        .map(str::to_string)
}

/// Waits until every partition is owned and each of `nodes` holds some.
async fn settled(http: SocketAddr, nodes: &[&str]) {
    until("the partitions shared by the live hubs", || async {
        let Some(v) = cluster_view(http).await else {
            return false;
        };
        let owners: Vec<Option<&str>> = v["partition_owners"]
            .as_array()
            .map(|a| a.iter().map(|p| p["owner"].as_str()).collect())
            .unwrap_or_default();
        owners.len() == PARTITIONS as usize
            && owners.iter().all(|o| o.is_some_and(|o| nodes.contains(&o)))
            && nodes.iter().all(|n| owners.contains(&Some(n)))
    })
    .await;
}

/// A counter of a hub's `/metrics` (0 while it does not answer).
async fn hub_metric(http: SocketAddr, name: &str) -> f64 {
    let Ok(r) = reqwest::get(format!("http://{http}/metrics")).await else {
        return 0.0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// What `psql` prints for one query (unaligned, tuples only).
fn psql(pg: &Postgres, sql: &str) -> String {
    let out = Command::new("psql")
        .args([&pg.url(), "-XAtc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Readings stored twice: head rows of one series sharing a timestamp.
fn doubled_rows(pg: &Postgres) -> u64 {
    psql(
        pg,
        "SELECT count(*) FROM (SELECT series_id, ts_ms FROM series_store.head \
         GROUP BY 1, 2 HAVING count(*) > 1) d",
    )
    .parse()
    .unwrap()
}

/// The streetlight's alerts in the shared rows: (id, state, device time of the newest reading
/// it covers), oldest first.
fn lamp_alerts(pg: &Postgres) -> Vec<(String, String, i64)> {
    psql(
        pg,
        "SELECT id || '|' || state || '|' || (record::json->>'reading_ts_ms') \
         FROM cluster_alerts WHERE device = 'SL-0001' ORDER BY seq",
    )
    .lines()
    .map(|l| {
        let f: Vec<&str> = l.split('|').collect();
        (f[0].to_string(), f[1].to_string(), f[2].parse().unwrap())
    })
    .collect()
}

/// Every batch the agent let go of (deleted from its queue on the hub's ack) is in the shared
/// store, and no reading is stored twice.
async fn assert_exactly_once(pg: &Postgres, end: &AgentEnd) {
    let store = PgStore::connect(&pg.url(), PgOptions::default())
        .await
        .unwrap();
    let stored = stored_seqs(&store, end.stream, end.next).await;
    let missing: Vec<u64> = (1..end.next)
        .filter(|s| !stored.contains(s) && !end.queued.contains(s))
        .collect();
    assert!(end.next > 40, "the agent made {} batches", end.next - 1);
    assert!(
        missing.is_empty(),
        "acknowledged, never stored: {missing:?}"
    );
    assert_eq!(doubled_rows(pg), 0, "a reading stored twice");
}

/// Starts the engines and `n` hubs under `dir`, and waits for the leases to settle.
async fn start_cluster(dir: &Path, n: usize) -> (NatsCluster, Postgres, Vec<ClusterHub>) {
    let (nats, pg) = engines().await;
    let hubs = start_hubs(dir, n, &nats, &pg).await;
    let names: Vec<&str> = hubs.iter().map(|h| h.node.as_str()).collect();
    settled(hubs[0].http(), &names).await;
    (nats, pg, hubs)
}

/// The agent under test, polling its streetlight.
struct Field {
    device: RunningDevice,
    agent: AgentGuard,
    metrics: SocketAddr,
}

impl Field {
    /// Starts the streetlight and the agent with every hub in its list, hub `first` first.
    async fn start(dir: &Path, hubs: &[ClusterHub], first: usize) -> Field {
        let list: Vec<String> = (0..hubs.len())
            .map(|k| format!("mqtt://{}", hubs[(first + k) % hubs.len()].mqtt))
            .collect();
        let device = start_streetlight().await;
        let metrics: SocketAddr = format!("127.0.0.1:{}", tests::free_port()).parse().unwrap();
        let agent = start_agent(agent_config(dir, &list, device.addr.unwrap(), metrics));
        Field {
            device,
            agent,
            metrics,
        }
    }

    /// Drains the agent and checks the shared store (see [`assert_exactly_once`]).
    async fn finish(self, dir: &Path, pg: &Postgres) {
        let end = drain_and_stop(self.device, self.agent, self.metrics, dir).await;
        assert_exactly_once(pg, &end).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_hub_with_the_agent_and_its_partition_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_nats, pg, mut hubs) = start_cluster(dir.path(), 3).await;
    // The agent's first hub is the one working its partition: kill -9 takes both.
    let partition = hub::cluster::partition_of(AGENT, PARTITIONS);
    let owner = owner_of(hubs[0].http(), partition).await.unwrap();
    let o = hubs.iter().position(|h| h.node == owner).unwrap();
    let field = Field::start(dir.path(), &hubs, o).await;
    let owner_http = hubs[o].http();
    until("the owner works the agent's batches", || async {
        hub_metric(owner_http, "hub_cluster_consumed_total").await >= 30.0
    })
    .await;
    until("the streetlight's alert raised", || async {
        !lamp_alerts(&pg).is_empty()
    })
    .await;
    let alert = lamp_alerts(&pg)[0].0.clone();

    hubs[o].proc.take().unwrap().proc.kill();
    let killed = Instant::now();
    let killed_ms = protocols::time::now_ms();
    let other = hubs[(o + 1) % hubs.len()].http();
    until("another hub working the partition", || async {
        owner_of(other, partition).await.is_some_and(|n| n != owner)
    })
    .await;
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_secs(10),
        "taken over after {takeover:?}"
    );
    until("the agent on another hub", || async {
        agent_metric(field.metrics, "edge_agent_hub_switches_total").await >= Some(1.0)
    })
    .await;
    let survivors: Vec<SocketAddr> = (0..hubs.len())
        .filter(|&k| k != o)
        .map(|k| hubs[k].http())
        .collect();
    let consumed = || async {
        let mut total = 0.0;
        for h in &survivors {
            total += hub_metric(*h, "hub_cluster_consumed_total").await;
        }
        total
    };
    let before = consumed().await;
    until("batches stored after the takeover", || async {
        consumed().await >= before + 30.0
    })
    .await;
    // The alert episode went on at the new owner: the same alert, updated with readings made
    // after the kill, and no second one raised.
    until("the alert updated by the new owner", || async {
        lamp_alerts(&pg)
            .iter()
            .any(|(id, _, ts)| *id == alert && *ts > killed_ms + 1000)
    })
    .await;
    let alerts = lamp_alerts(&pg);
    assert_eq!(alerts.len(), 1, "one alert, raised once: {alerts:?}");
    assert_eq!((&alerts[0].0, alerts[0].1.as_str()), (&alert, "active"));
    field.finish(dir.path(), &pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_away_for_ten_seconds_pauses_stored_acks_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_nats, mut pg, hubs) = start_cluster(dir.path(), 2).await;
    let field = Field::start(dir.path(), &hubs, 0).await;
    let h1 = hubs[0].http();
    let published = || hub_metric(h1, "hub_cluster_published_total");
    until("batches flowing", || async { published().await >= 20.0 }).await;

    tokio::task::block_in_place(|| pg.stop_immediate()).unwrap();
    let before = published().await;
    // The log keeps taking the agent's batches (PUBACKs go on) while nothing can be stored.
    until("PUBACKs going on without PostgreSQL", || async {
        published().await >= before + 20.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await; // the outage itself, not a wait for an event
    assert!(
        agent_metric(field.metrics, "edge_agent_queue_depth").await > Some(0.0),
        "stored-acks pause while PostgreSQL is away"
    );
    tokio::task::block_in_place(|| pg.start_again()).unwrap();
    field.finish(dir.path(), &pg).await;
}

/// The NATS node leading the ingest stream, by its index in `nats`.
fn stream_leader(nats: &NatsCluster) -> Option<usize> {
    (0..nats.urls().len()).find_map(|i| {
        let text = nats.jsz(i, "streams=true")?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        let streams = v["account_details"]
            .as_array()?
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default());
        let leader = streams
            .into_iter()
            .find(|s| s["name"] == hub::cluster::STREAM)?["cluster"]["leader"]
            .as_str()?
            .to_string();
        nats.index_of(&leader)
    })
}

/// Kills NATS node `i`, measures how long the log takes no batch from `http`, and starts the
/// node again.
async fn kill_nats_node(nats: &mut NatsCluster, i: usize, http: SocketAddr) -> Duration {
    let before = hub_metric(http, "hub_cluster_published_total").await;
    nats.kill(i);
    let killed = Instant::now();
    until("the log taking batches again", || async {
        hub_metric(http, "hub_cluster_published_total").await >= before + 10.0
    })
    .await;
    let stalled = killed.elapsed();
    tokio::task::block_in_place(|| nats.restart(i)).unwrap();
    stalled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_stream_leader_or_a_follower_stalls_acks_briefly_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nats, pg, hubs) = start_cluster(dir.path(), 2).await;
    let field = Field::start(dir.path(), &hubs, 0).await;
    let h1 = hubs[0].http();
    until("batches flowing", || async {
        hub_metric(h1, "hub_cluster_published_total").await >= 20.0
    })
    .await;

    let leader = stream_leader(&nats).expect("the ingest stream has a leader");
    let stalled = kill_nats_node(&mut nats, leader, h1).await;
    assert!(
        stalled < Duration::from_secs(10),
        "acks stalled {stalled:?} (leader)"
    );
    let follower = (0..3).find(|&i| Some(i) != stream_leader(&nats)).unwrap();
    let stalled = kill_nats_node(&mut nats, follower, h1).await;
    assert!(
        stalled < Duration::from_secs(10),
        "acks stalled {stalled:?} (follower)"
    );
    field.finish(dir.path(), &pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_every_hub_under_load_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_nats, pg, mut hubs) = start_cluster(dir.path(), 3).await;
    let field = Field::start(dir.path(), &hubs, 0).await;
    let metrics = field.metrics;
    let sent = || agent_metric(metrics, "edge_agent_entries_sent_total");
    until("batches flowing", || async { sent().await >= Some(20.0) }).await;

    for k in 0..hubs.len() {
        let mut p = hubs[k].proc.take().unwrap();
        let status = p.proc.terminate(WAIT).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "{} stops cleanly",
            hubs[k].node
        );
        hubs[k].start().await;
        let names: Vec<&str> = hubs.iter().map(|h| h.node.as_str()).collect();
        settled(hubs[k].http(), &names).await;
        let now = sent().await.unwrap_or(0.0);
        until("the agent sending again", || async {
            sent().await >= Some(now + 10.0)
        })
        .await;
    }
    field.finish(dir.path(), &pg).await;
}
