//! Durable store-and-forward, end to end: the real `edge-agent` binary, mosquitto, pymodbus,
//! and a test peer that plays the hub (decodes batches, acks them). Processes are killed with
//! SIGKILL, brokers restarted, acks withheld or sent for the wrong stream.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use protocols::batch::Ack;

const AGENT: &str = "AG-0001";
const T: Duration = Duration::from_secs(30);

fn gapless(seqs: &BTreeSet<u64>) -> bool {
    seqs.iter().copied().eq(1..=seqs.len() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_backlog_then_restart_delivers_every_committed_batch() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let modbus = ModbusPeer::tcp(dir.path(), &two_devices_spec(), free_port());
    let hub = HubPeer::start(broker.port, false).await;
    let cfg = write_agent_toml(
        dir.path(),
        &fast_agent_toml(dir.path(), &broker.url(), modbus.port, ""),
    );

    // Build a backlog the hub never acknowledges, then pull the plug.
    let mut agent = start_agent(&cfg);
    assert!(
        wait_for(T, || hub.with(|h| h.max_seq() >= 15)).await,
        "no batches"
    );
    agent.kill();
    let (stream, backlog, _) = queue_contents(dir.path());
    assert!(backlog.len() >= 15, "backlog of {} batches", backlog.len());
    assert_eq!(
        backlog,
        (1..=backlog.len() as u64).collect::<Vec<_>>(),
        "nothing acked, nothing lost"
    );
    let stored: Vec<Vec<u8>> = {
        let q = edge_agent::queue::Queue::open(&dir.path().join("data"), 1 << 30, 1 << 16).unwrap();
        backlog
            .iter()
            .map(|&s| q.get(s).unwrap().unwrap().payload)
            .collect()
    };

    // Restart; now the hub acks.
    let before = hub.with(|h| h.batches.len());
    hub.set_acking(true);
    let mut agent = start_agent(&cfg);
    let last = *backlog.last().unwrap();
    assert!(
        wait_for(T, || hub.with(|h| h.batches[before..]
            .iter()
            .filter(|b| b.seq <= last)
            .map(|b| b.seq)
            .collect::<BTreeSet<_>>()
            .len()
            == backlog.len()))
        .await,
        "the backlog was not re-sent after the restart"
    );
    assert!(
        wait_for(T, || hub.with(|h| h.max_seq() >= last + 10)).await,
        "live data after the restart"
    );
    assert_eq!(agent.terminate(T).map(|s| s.code()), Some(Some(0)));

    hub.with(|h| {
        assert_eq!(h.stream(), Some(stream));
        assert!(
            h.batches
                .iter()
                .all(|b| b.stream == stream && b.agent == AGENT)
        );
        // Every committed batch arrived with exactly the bytes it was stored with.
        for (seq, bytes) in backlog.iter().zip(&stored) {
            let got = h.batches[before..].iter().find(|b| b.seq == *seq).unwrap();
            assert_eq!(&protocols::batch::encode(got), bytes, "seq {seq}");
        }
        assert!(
            gapless(&h.seqs(stream)),
            "seqs have a gap: {:?}",
            h.seqs(stream)
        );
    });
    // After a clean stop only batches the hub has not acked yet can remain.
    let (_, left, next) = queue_contents(dir.path());
    let received = hub.with(|h| h.seqs(stream));
    for s in 1..next {
        assert!(
            received.contains(&s) || left.contains(&s),
            "seq {s} neither delivered nor queued"
        );
    }
    assert!(left.len() <= 10, "{} left after acks", left.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withheld_acks_are_redelivered_then_acks_drain_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let modbus = ModbusPeer::tcp(dir.path(), &two_devices_spec(), free_port());
    let hub = HubPeer::start(broker.port, false).await;
    let cfg = write_agent_toml(
        dir.path(),
        &fast_agent_toml(dir.path(), &broker.url(), modbus.port, ""),
    );
    let mut agent = start_agent(&cfg);

    // The window is 8: without acks the agent stops at 8 in flight, then re-sends after 1 s.
    assert!(
        wait_for(T, || hub.with(|h| h.deliveries_of(1) >= 2)).await,
        "seq 1 was not redelivered"
    );
    hub.with(|h| {
        let first: Vec<u64> = h.batches.iter().take(8).map(|b| b.seq).collect();
        assert_eq!(
            first,
            (1..=8).collect::<Vec<_>>(),
            "pipelined: 8 in flight before any ack"
        );
        let waited = h.arrived[8].duration_since(h.arrived[0]);
        // The 9th send waits for a slot, which only the 1 s ack timeout of the 1st frees.
        assert!(
            waited >= Duration::from_millis(900),
            "9th send after {waited:?}: {:?}",
            h.batches
                .iter()
                .zip(&h.arrived)
                .take(12)
                .map(|(b, t)| (b.seq, t.duration_since(h.arrived[0]).as_millis()))
                .collect::<Vec<_>>()
        );
    });
    assert!(
        wait_for(T, || hub
            .with(|h| h.health.iter().any(|x| x.queue.depth >= 10)))
        .await,
        "backlog grows"
    );

    hub.set_acking(true);
    hub.ack_all(AGENT).await;
    let upto = hub.with(|h| h.max_seq()) + 20;
    assert!(wait_for(T, || hub.with(|h| h.max_seq() >= upto)).await);
    assert!(
        wait_for(T, || hub
            .with(|h| h.health.last().is_some_and(|x| x.queue.depth <= 3)))
        .await,
        "queue did not drain: {:?}",
        hub.with(|h| h.health.last().map(|x| x.queue))
    );
    assert_eq!(agent.terminate(T).map(|s| s.code()), Some(Some(0)));
    let (_, left, _) = queue_contents(dir.path());
    assert!(
        left.iter().all(|&s| s > upto - 20),
        "acked entries still on disk: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_dies_mid_stream_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(dir.path());
    let modbus = ModbusPeer::tcp(dir.path(), &two_devices_spec(), free_port());
    let hub = HubPeer::start(broker.port, true).await;
    let cfg = write_agent_toml(
        dir.path(),
        &fast_agent_toml(dir.path(), &broker.url(), modbus.port, ""),
    );
    let mut agent = start_agent(&cfg);
    assert!(wait_for(T, || hub.with(|h| h.max_seq() >= 10)).await);

    broker.proc.kill();
    // Keep polling through the outage: the pymodbus peer sees the agent's requests.
    let reqs = modbus.requests().len();
    assert!(wait_until(T, || modbus.requests().len() >= reqs + 60));
    let before = hub.with(|h| h.max_seq());
    broker.restart();
    assert!(
        wait_for(T, || hub.with(|h| h.max_seq() >= before + 30)).await,
        "delivery did not resume after the broker came back"
    );
    assert_eq!(agent.terminate(T).map(|s| s.code()), Some(Some(0)));
    let (stream, left, next) = queue_contents(dir.path());
    let received = hub.with(|h| h.seqs(stream));
    for s in 1..next {
        assert!(
            received.contains(&s) || left.contains(&s),
            "seq {s} lost in the outage"
        );
    }
    // The hub saw the agent go offline (will) and come back online (retained status).
    hub.with(|h| {
        let st: Vec<&str> = h
            .status
            .iter()
            .filter(|(a, _)| a == AGENT)
            .map(|(_, s)| s.as_str())
            .collect();
        assert!(st.contains(&"online"), "{st:?}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_for_another_stream_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let modbus = ModbusPeer::tcp(dir.path(), &two_devices_spec(), free_port());
    let hub = HubPeer::start(broker.port, false).await;
    let metrics_port = free_port();
    let cfg = write_agent_toml(
        dir.path(),
        &fast_agent_toml(
            dir.path(),
            &broker.url(),
            modbus.port,
            &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
        ),
    );
    let mut agent = start_agent(&cfg);
    assert!(wait_for(T, || hub.with(|h| h.max_seq() >= 8)).await);
    let stream = hub.with(|h| h.stream().unwrap());
    hub.publish_ack(
        AGENT,
        &Ack {
            stream: stream ^ 1,
            seqs: vec![(1, 1_000_000)],
            snapshots: vec![],
        },
    )
    .await;
    assert!(wait_until(T, || metric(
        &scrape(metrics_port),
        "edge_agent_acks_foreign_stream_total"
    ) == Some(1.0)));
    // Still queued: redelivered after the ack timeout, and the queue did not shrink.
    assert!(
        wait_for(T, || hub.with(|h| h.deliveries_of(1) >= 2)).await,
        "seq 1 was deleted by a foreign ack"
    );
    let page = scrape(metrics_port);
    assert_eq!(metric(&page, "edge_agent_entries_acked_total"), Some(0.0));
    assert!(metric(&page, "edge_agent_queue_depth").unwrap() >= 8.0);
    assert!(page.contains("edge_agent_device_online{device=\"SL-0001\"} 1"));
    // The right stream deletes.
    hub.ack_all(AGENT).await;
    assert!(wait_until(T, || metric(
        &scrape(metrics_port),
        "edge_agent_entries_acked_total"
    )
    .unwrap_or(0.0)
        >= 8.0));
    assert_eq!(agent.terminate(T).map(|s| s.code()), Some(Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_budget_drops_the_oldest_and_reports_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let modbus = ModbusPeer::tcp(dir.path(), &two_devices_spec(), free_port());
    let broker_port = free_port();
    let metrics_port = free_port();
    // No broker yet: everything stays queued, within 64 KiB.
    let cfg = write_agent_toml(
        dir.path(),
        &fast_agent_toml(
            dir.path(),
            &format!("mqtt://127.0.0.1:{broker_port}"),
            modbus.port,
            &format!("queue_max_bytes = 65536\nmetrics_listen = \"127.0.0.1:{metrics_port}\""),
        )
        // Poll fast so 64 KiB fill in seconds.
        .replace("interval = \"50ms\"", "interval = \"10ms\""),
    );
    let mut agent = start_agent(&cfg);
    assert!(
        wait_until(Duration::from_secs(60), || metric(
            &scrape(metrics_port),
            "edge_agent_queue_dropped_total"
        )
        .unwrap_or(0.0)
            >= 5.0),
        "budget never filled"
    );
    let page = scrape(metrics_port);
    assert!(metric(&page, "edge_agent_queue_bytes").unwrap() <= 65536.0);
    let broker = Mosquitto::start_on(dir.path(), broker_port);
    let hub = HubPeer::start(broker.port, true).await;
    assert!(
        wait_for(T, || hub
            .with(|h| h.health.iter().any(|x| x.queue.dropped >= 5)))
        .await,
        "health reports the drops"
    );
    // What was kept arrives without a gap: only the oldest were dropped.
    let contiguous = |h: &HubState| {
        let seqs = h.seqs(h.stream().unwrap_or(0));
        seqs.len() >= 30
            && seqs
                .iter()
                .copied()
                .eq(*seqs.first().unwrap()..=*seqs.last().unwrap())
    };
    assert!(
        wait_for(T, || hub.with(contiguous)).await,
        "{:?}",
        hub.with(|h| h.seqs(h.stream().unwrap_or(0)))
    );
    assert!(
        hub.with(|h| *h.seqs(h.stream().unwrap()).first().unwrap() > 1),
        "the oldest were dropped"
    );
    agent.terminate(T);
}
