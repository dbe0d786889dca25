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
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use hub::config::HubConfig;
use hub::server::{Server, store_options};
use series_store::TsStore;
use tests::HubProc;

mod agent_support;
use agent_support::*;

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

fn stored(server: &Server) -> u64 {
    server.metrics().readings_stored.load(Relaxed)
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
