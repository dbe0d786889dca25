//! `sim demo --cluster 3` in-process on free ports: three hubs in cluster mode on three NATS
//! nodes and a PostgreSQL started by the demo (scripts/setup-peers.sh installs them). The
//! leases settle over the three hubs, and readings of agents that start out on hub 1 and on
//! hub 3 are answered for by hub 2 (the shared store).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use sim::district::demo::{CLUSTER_PARTITIONS, Demo, DemoOptions, partitions_held};

const DEADLINE: Duration = Duration::from_secs(90);

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hubs_share_the_partitions_and_any_hub_answers_for_every_agent() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(DemoOptions {
        speed: 60.0,
        incidents: false,
        cluster: Some(3),
        ..DemoOptions::local(dir.path())
    })
    .await
    .expect("demo --cluster 3 starts (nats-server and PostgreSQL from scripts/setup-peers.sh)");
    let hubs = demo.hubs().to_vec();
    assert_eq!(
        hubs.iter().map(|h| h.node.as_str()).collect::<Vec<_>>(),
        ["hub-1", "hub-2", "hub-3"]
    );
    let (app, secret) = demo.command_center();
    let auth = format!("Bearer {app}:{secret}");

    // Every hub alive and holding its share of the partitions, as any hub tells.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let held: Option<BTreeMap<String, usize>> = partitions_held(hubs[1].http, &auth).await;
        if let Some(h) = &held
            && h.len() == 3
            && h.values().all(|&n| n > 0)
            && h.values().sum::<usize>() == CLUSTER_PARTITIONS as usize
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leases did not settle over 3 hubs: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The agents' hub lists are rotated agent by agent: the first starts on hub 1, the
    // third on hub 3. Hub 2 answers with their lamps' readings.
    let layout = demo.layout();
    let lamp_of = |agent: usize| {
        let id = &layout.agents[agent].id;
        layout
            .lamps()
            .find(|d| &d.agent == id)
            .map(|d| d.id.clone())
            .expect("a cabinet with lamps")
    };
    let http = reqwest::Client::new();
    for (agent, first_hub) in [(0, "hub-1"), (2, "hub-3")] {
        let config = std::fs::read_to_string(
            dir.path()
                .join(format!("agents/{}.toml", layout.agents[agent].id)),
        )
        .unwrap();
        assert_eq!(
            config.matches("mqtts://127.0.0.1:").count(),
            3,
            "every hub in the list: {config}"
        );
        let lamp = lamp_of(agent);
        let path = format!(
            "http://{}/api/v1/series?device={lamp}&quantity=lamp_power&from={}&to={}",
            hubs[1].http,
            now_ms() - 3_600_000,
            now_ms() + 3_600_000
        );
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let r = http
                .get(&path)
                .header("authorization", &auth)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            let points = body["points"].as_array().map_or(0, Vec::len);
            if status == 200 && points > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "hub-2 has no lamp_power of {lamp} (agent starting on {first_hub}): {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    demo.shutdown().await;
}
