//! Commands over MQTT through the real binary (set, reload, reboot, unknown, bad args) and the
//! health document.

mod common;

use std::time::Duration;

use common::*;
use protocols::messages::Scalar;
use protocols::{Quantity, Value};
use serde_json::json;

const AGENT: &str = "AG-0001";
const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_over_mqtt_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path());
    let modbus = ModbusPeer::tcp(dir.path(), &two_devices_spec(), free_port());
    let hub = HubPeer::start(broker.port, true).await;
    let link = dir.path().join("modem-status");
    std::fs::write(&link, "rssi=-71\nrsrp=-98\nsinr=12\n").unwrap();
    let toml = fast_agent_toml(
        dir.path(),
        &broker.url(),
        modbus.port,
        &format!("link_source = \"{}\"", link.display()),
    );
    let cfg = write_agent_toml(dir.path(), &toml);
    let mut agent = start_agent(&cfg);
    assert!(wait_for(T, || hub.with(|h| h.max_seq() >= 2)).await);

    // Health: every field the contract lists.
    assert!(
        wait_for(T, || hub.with(|h| h.health.iter().any(|x| x
            .devices
            .iter()
            .all(|d| d.online)
            && x.devices.len() == 2)))
        .await
    );
    hub.with(|h| {
        let x = h.health.last().unwrap();
        assert_eq!(x.agent, AGENT);
        assert_eq!(x.version, edge_agent::VERSION);
        assert_eq!(
            (x.link.rssi, x.link.rsrp, x.link.sinr),
            (Some(-71.0), Some(-98.0), Some(12.0))
        );
        let ids: Vec<&str> = x.devices.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["SL-0001", "WL-0001"]);
        assert!(x.devices.iter().all(|d| d.last_ok_ms.is_some()));
    });

    // set: written through the profile, read back, reported.
    hub.command(
        AGENT,
        json!({"id":"c1","name":"set","device":"SL-0001","args":{"dimming_level":40}}),
    )
    .await;
    assert!(
        wait_for(T, || hub.with(|h| h.results.iter().any(|r| r.id == "c1"))).await,
        "no result for c1"
    );
    hub.with(|h| {
        let r = h.results.iter().find(|r| r.id == "c1").unwrap();
        assert!(r.ok, "{r:?}");
        assert_eq!(r.device.as_deref(), Some("SL-0001"));
        assert_eq!(r.values["dimming_level"], Scalar::Number(40.0));
    });
    assert!(
        modbus
            .writes()
            .iter()
            .any(|w| w == "WRITE unit=1 fc=6 addr=16 values=40")
    );
    assert!(
        wait_for(T, || hub.with(|h| h.batches.iter().any(|b| b
            .devices
            .iter()
            .any(|d| d.device == "SL-0001"
                && d.samples.iter().any(|s| s
                    .readings
                    .iter()
                    .any(|r| r.quantity == Quantity::DimmingLevel.code()
                        && r.value == Value::Number(40.0)))))))
        .await,
        "the new value did not reach a batch"
    );

    // Errors: out of range, unknown device, unknown command, bad args, garbage.
    hub.command(
        AGENT,
        json!({"id":"c2","name":"set","device":"SL-0001","args":{"dimming_level":140}}),
    )
    .await;
    hub.command(
        AGENT,
        json!({"id":"c3","name":"set","device":"XX-0001","args":{"dimming_level":1}}),
    )
    .await;
    hub.command(AGENT, json!({"id":"c4","name":"fly"})).await;
    hub.command(
        AGENT,
        json!({"id":"c5","name":"set","device":"SL-0001","args":{"dimming_level":"bright"}}),
    )
    .await;
    hub.command(AGENT, json!({"id":"c6","name":"reboot","args":{"force":1}}))
        .await;
    let ids = ["c2", "c3", "c4", "c5", "c6"];
    assert!(
        wait_for(T, || hub.with(|h| ids
            .iter()
            .all(|id| h.results.iter().any(|r| r.id == *id))))
        .await
    );
    hub.with(|h| {
        for (id, want) in [
            ("c2", "outside the allowed range"),
            ("c3", "no device `XX-0001`"),
            ("c4", "unknown command `fly`"),
            ("c5", "not a valid value"),
            ("c6", "takes no arguments"),
        ] {
            let r = h.results.iter().find(|r| r.id == id).unwrap();
            assert!(
                !r.ok && r.error.as_deref().unwrap_or("").contains(want),
                "{id}: {r:?}"
            );
        }
    });
    assert_eq!(
        modbus.writes().len(),
        1,
        "no refused command reached the device"
    );

    // reload: drop the radar from agent.toml; a broken file is refused and changes nothing.
    std::fs::write(&cfg, "this is not toml").unwrap();
    hub.command(AGENT, json!({"id":"r1","name":"reload"})).await;
    let cut = toml.find("[[modbus]]\ndevice = \"WL-0001\"").unwrap();
    assert!(wait_for(T, || hub.with(|h| h.results.iter().any(|r| r.id == "r1"))).await);
    hub.with(|h| assert!(!h.results.iter().find(|r| r.id == "r1").unwrap().ok));
    std::fs::write(&cfg, &toml[..cut]).unwrap();
    hub.command(AGENT, json!({"id":"r2","name":"reload"})).await;
    assert!(
        wait_for(T, || hub
            .with(|h| h.results.iter().any(|r| r.id == "r2" && r.ok)))
        .await,
        "reload failed"
    );
    let n = hub.with(|h| h.health.len());
    assert!(
        wait_for(T, || hub
            .with(|h| h.health[n..].iter().any(|x| x.devices.len() == 1)))
        .await,
        "health after reload"
    );
    let before = hub.with(|h| h.max_seq());
    assert!(
        wait_for(T, || hub.with(|h| h.max_seq() > before + 3)).await,
        "queue and session kept across reload"
    );

    // reboot: answered, then the process exits with the reboot code for its supervisor.
    hub.command(AGENT, json!({"id":"b1","name":"reboot"})).await;
    let status = agent.wait_exit(T).expect("agent did not exit on reboot");
    assert_eq!(status.code(), Some(edge_agent::REBOOT_EXIT_CODE as i32));
    // The broker relays the answer to the hub peer on its own time: wait for it.
    assert!(
        wait_for(T, || hub
            .with(|h| h.results.iter().any(|r| r.id == "b1" && r.ok)))
        .await,
        "reboot was not answered"
    );
    assert!(
        wait_for(T, || hub.with(|h| h
            .status
            .iter()
            .rev()
            .find(|(a, _)| a == AGENT)
            .is_some_and(|(_, s)| s == "offline")))
        .await,
        "offline not announced"
    );
}
