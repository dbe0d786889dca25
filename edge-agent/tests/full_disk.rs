//! The agent rides out a full disk: its data_dir on a real 8 MiB tmpfs, the real binary polling
//! pymodbus through mosquitto to a test hub. The file system is filled to ENOSPC while the hub
//! withholds acks (the queue must grow into the full disk), then freed: the agent must keep
//! polling, buffer in memory within `buffer_readings` (dropping and counting the oldest), say
//! so in health, and recover the queue without a restart, delivering what it buffered.
//!
//! Needs root (it mounts a tmpfs); it fails, not skips, without it.

mod common;
#[path = "../../series-store/tests/small_disk/mod.rs"]
mod small_disk;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use small_disk::SmallDisk;

const AGENT: &str = "AG-0001";
const T: Duration = Duration::from_secs(20);
const BUFFER: u64 = 1000;

fn last_health(hub: &HubPeer) -> Option<serde_json::Value> {
    hub.with(|h| h.health_json.last().cloned())
}

fn health_where(hub: &HubPeer, pred: impl Fn(&serde_json::Value) -> bool) -> bool {
    hub.with(|h| h.health_json.iter().any(&pred))
}

/// Readings the hub received whose sample time is in `from..until` (epoch ms), counting each
/// seq once.
fn readings_between(hub: &HubPeer, from: i64, until: i64) -> u64 {
    hub.with(|h| {
        let mut seen = BTreeSet::new();
        let mut n = 0u64;
        for b in &h.batches {
            if !seen.insert(b.seq) {
                continue;
            }
            for d in &b.devices {
                for s in &d.samples {
                    if (from..until).contains(&s.ts_ms) {
                        n += s.readings.len() as u64;
                    }
                }
            }
        }
        n
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_ridden_out_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = SmallDisk::mount("8m");
    let disk = tmpfs.path();
    let broker = Mosquitto::start(dir.path());
    let modbus = ModbusPeer::tcp(dir.path(), &two_devices_spec(), free_port());
    let hub = HubPeer::start(broker.port, true).await;
    let metrics_port = free_port();
    // min_free_disk = 0: no watermark, so the queue really meets ENOSPC (the watermark has its
    // own test below).
    let extra = format!(
        "batch_max_readings = 100\nbuffer_readings = {BUFFER}\nmin_free_disk = 0\nmetrics_listen = \"127.0.0.1:{metrics_port}\""
    );
    let cfg = write_agent_toml(
        dir.path(),
        &fast_agent_toml(disk, &broker.url(), modbus.port, &extra),
    );
    let log = dir.path().join("agent.log");
    let mut agent = start_agent_logging(&cfg, &log);
    let pid = agent.pid();
    assert!(
        wait_for(T, || hub.with(|h| h.max_seq() >= 5)).await,
        "no batches before the outage"
    );

    // The hub goes away (no acks), so the queue must grow; then the disk fills up.
    hub.set_acking(false);
    let t_full = protocols::time::now_ms();
    let filler = tmpfs.fill(0);
    let filled = std::fs::metadata(&filler).unwrap().len();
    assert!(filled > 1 << 20, "filled only {filled} bytes");

    // The queue fails with ENOSPC, health says so, polling goes on.
    assert!(
        wait_for(T, || health_where(&hub, |j| j["disk"]["queue_writable"]
            == false
            && j["disk"]["queue_error"].is_string()))
        .await,
        "health never reported the failing queue: {:?}",
        last_health(&hub)
    );
    let reqs = modbus.requests().len();
    assert!(
        wait_until(T, || modbus.requests().len() >= reqs + 40),
        "polling stopped while the disk was full"
    );
    // The buffer fills up to its bound, then drops (and counts) the oldest.
    assert!(
        wait_for(T, || health_where(&hub, |j| {
            j["buffer"]["dropped_readings"]
                .as_u64()
                .is_some_and(|d| d > 0)
        }))
        .await,
        "no drops past the buffer: {:?}",
        last_health(&hub)
    );
    let page = scrape(metrics_port);
    assert_eq!(
        metric(&page, "edge_agent_queue_writable"),
        Some(0.0),
        "{page}"
    );
    assert!(metric(&page, "edge_agent_buffer_dropped_readings_total").unwrap_or(0.0) > 0.0);
    assert!(
        metric(&page, "edge_agent_disk_free_bytes").is_some_and(|f| f < (1 << 20) as f64),
        "{page}"
    );

    // Space comes back: the queue is reopened and the buffer committed, same process.
    let t_free = protocols::time::now_ms();
    std::fs::remove_file(&filler).unwrap();
    hub.set_acking(true);
    hub.ack_all(AGENT).await;
    assert!(
        wait_for(Duration::from_secs(40), || hub.with(|h| h
            .health_json
            .iter()
            .rev()
            .take(1)
            .any(|j| j["disk"]["queue_writable"] == true
                && j["disk"]["queue_reopens"].as_u64() >= Some(1)
                && j["buffer"]["readings"].as_u64() < Some(300))))
        .await,
        "the queue did not recover: {:?}",
        last_health(&hub)
    );
    assert_eq!(agent.pid(), pid);
    assert!(
        agent.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the agent exited"
    );

    // What was buffered reaches the hub: the newest BUFFER readings of the outage at least
    // nearly (a batch's worth may have been polled after the filler went away).
    let outage = || readings_between(&hub, t_full, t_free);
    assert!(
        wait_for(T, || outage() >= BUFFER - 200).await,
        "only {} readings of the outage arrived",
        outage()
    );
    // Seqs stay gapless across the failures and the reopen: every one arrives (entries that
    // waited for acks during the outage are re-sent after their ack timeout).
    let stream = hub.with(|h| h.stream().unwrap());
    let gapless = || {
        hub.with(|h| {
            let seqs = h.seqs(stream);
            seqs.iter().copied().eq(1..=seqs.len() as u64)
        })
    };
    assert!(
        wait_for(T, gapless).await,
        "gaps in stream {stream}: {:?}",
        hub.with(|h| h.seqs(stream))
    );
    let health = last_health(&hub).unwrap();
    let dropped = health["buffer"]["dropped_readings"].as_u64().unwrap();
    assert!(dropped > 0);
    assert!(
        hub.with(|h| h
            .health_json
            .iter()
            .all(|j| j["buffer"]["readings"].as_u64() <= Some(BUFFER))),
        "the buffer went past its bound"
    );
    assert_eq!(agent.terminate(T).map(|s| s.code()), Some(Some(0)));

    // The log sums up the failures instead of one line per attempt.
    let text = std::fs::read_to_string(&log).unwrap();
    let failures = text.matches("queue commit failed").count();
    assert!(failures >= 1, "no commit failure logged:\n{text}");
    assert!(
        failures <= 2 + (protocols::time::now_ms() - t_full) as usize / 10_000,
        "{failures} commit failure lines:\n{text}"
    );
    assert!(
        text.contains("queue commit works again"),
        "no recovery line:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_watermark_the_queue_is_left_alone_until_space_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let tmpfs = SmallDisk::mount("8m");
    let disk = tmpfs.path();
    let broker = Mosquitto::start(dir.path());
    let modbus = ModbusPeer::tcp(dir.path(), &two_devices_spec(), free_port());
    let hub = HubPeer::start(broker.port, true).await;
    let extra =
        format!("batch_max_readings = 100\nbuffer_readings = {BUFFER}\nmin_free_disk = \"3MiB\"");
    let cfg = write_agent_toml(
        dir.path(),
        &fast_agent_toml(disk, &broker.url(), modbus.port, &extra),
    );
    let mut agent = start_agent(&cfg);
    assert!(
        wait_for(T, || hub.with(|h| h.max_seq() >= 5)).await,
        "no batches before the outage"
    );
    // Leave about 1 MiB free: below the 3 MiB watermark, but room enough that the queue would
    // not fail if written.
    let filler = disk.join("filler");
    {
        let free = edge_agent::disk::free_bytes(disk).unwrap();
        let f = std::fs::File::create(&filler).unwrap();
        let mut w = std::io::BufWriter::new(f);
        let chunk = vec![1u8; 64 << 10];
        let mut left = free.saturating_sub(1 << 20);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            w.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
        w.flush().unwrap();
    }
    assert!(
        wait_for(T, || health_where(&hub, |j| j["disk"]["below_watermark"]
            == true
            && j["buffer"]["readings"].as_u64() > Some(300)))
        .await,
        "health never reported the watermark: {:?}",
        last_health(&hub)
    );
    // Nothing is committed while below: the hub's seqs stand still.
    let seq_below = hub.with(|h| h.max_seq());
    let reqs = modbus.requests().len();
    assert!(wait_until(T, || modbus.requests().len() >= reqs + 40));
    assert!(
        hub.with(|h| h.max_seq()) <= seq_below + 1,
        "committed below the watermark"
    );
    let h = last_health(&hub).unwrap();
    assert_eq!(h["disk"]["queue_writable"], true, "{h}");
    assert!(h["disk"]["free_bytes"].as_u64() < Some(3 << 20), "{h}");

    std::fs::remove_file(&filler).unwrap();
    assert!(
        wait_for(T, || hub.with(|h| h
            .health_json
            .last()
            .is_some_and(|j| j["disk"]["below_watermark"] == false
                && j["buffer"]["readings"].as_u64() < Some(300))))
        .await,
        "writing did not resume: {:?}",
        last_health(&hub)
    );
    assert!(
        wait_for(T, || hub.with(|h| h.max_seq()) > seq_below + 3).await,
        "buffered batches not delivered"
    );
    let stream = hub.with(|h| h.stream().unwrap());
    let seqs = hub.with(|h| h.seqs(stream));
    assert!(seqs.iter().copied().eq(1..=*seqs.last().unwrap()));
    assert_eq!(agent.terminate(T).map(|s| s.code()), Some(Some(0)));
}

/// Starts the agent with its log (stderr) in `log`.
fn start_agent_logging(config: &Path, log: &Path) -> Proc {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("exec \"$0\" --config \"$1\" 2>>\"$2\"")
        .arg(agent_bin())
        .arg(config)
        .arg(log)
        .env("RUST_LOG", "edge_agent=info");
    Proc::spawn("edge-agent", cmd)
}
