//! The Modbus poller against pymodbus, a peer nobody here wrote: every register type and word
//! order of the shipped profiles, merged reads, exceptions, a dead device beside a live one,
//! reconnects, RTU over a pseudo-terminal, and writes.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use edge_agent::config::AgentConfig;
use edge_agent::metrics::Metrics;
use edge_agent::modbus::{DeviceSample, Pollers};
use protocols::profile::{DeviceProfile, Table};
use protocols::{Quality, Quantity, Value};
use serde_json::json;
use tokio::sync::mpsc;

/// Engineering values per shipped profile, chosen to exercise every type: 32-bit values above
/// 65535, 64-bit values above 2^32, negatives through i16/i32/i64, all four word orders.
fn shipped() -> Vec<(u8, &'static str, &'static str, serde_json::Value)> {
    vec![
        (
            1,
            "SL-0001",
            "streetlight-lc200.toml",
            json!({
            "lamp_voltage": 231.5, "lamp_current": 0.265625, "lamp_power": 61.5,
            "lamp_energy": 123456, "lamp_status": 1, "dimming_level": 70}),
        ),
        (
            2,
            "WL-0001",
            "water-level-radar.toml",
            json!({
            "water_level": 16000, "air_temperature": -12.5, "battery_level": 87.5}),
        ),
        (
            3,
            "WQ-0001",
            "water-quality-5in1.toml",
            json!({
            "ph": 7.25, "turbidity": 12.5, "conductivity": 70000, "dissolved_oxygen": 8.75,
            "water_temperature": 18.5}),
        ),
        (
            4,
            "WS-0001",
            "weather-station.toml",
            json!({
            "rainfall": 42949673.03, "air_temperature": 21.625, "relative_humidity": -55.55,
            "air_pressure": 1013.25, "wind_speed": -0.005}),
        ),
        (
            5,
            "MH-0001",
            "manhole-cover.toml",
            json!({
            "cover_open": true, "tilt_angle": -3.5, "battery_level": 64}),
        ),
    ]
}

fn agent_toml(dir: &Path, devices: &[(String, String, String, u8, &str)]) -> AgentConfig {
    let mut t = format!(
        "[agent]\nid = \"AG-T\"\nsecret = \"s\"\nhub = \"mqtt://127.0.0.1:1\"\ndata_dir = \"{}\"\n",
        dir.join("data").display()
    );
    for (device, profile, transport, unit, interval) in devices {
        t.push_str(&format!(
            "[[modbus]]\ndevice = \"{device}\"\nprofile = \"{profile}\"\ntransport = \"{transport}\"\nunit = {unit}\ninterval = \"{interval}\"\nheartbeat = \"60s\"\ntimeout = \"300ms\"\n"
        ));
    }
    AgentConfig::from_toml(&t, dir).unwrap()
}

fn spec_of(devices: &[(u8, &str, &str, serde_json::Value)]) -> serde_json::Value {
    json!({"devices": devices.iter().map(|(unit, _, p, values)| json!({
        "unit": unit, "profile": profile(p), "values": values})).collect::<Vec<_>>()})
}

/// Collects samples until `done` says so or the timeout passes.
async fn collect(
    rx: &mut mpsc::Receiver<DeviceSample>,
    timeout: Duration,
    mut done: impl FnMut(&[DeviceSample]) -> bool,
) -> Vec<DeviceSample> {
    let mut got = Vec::new();
    let end = tokio::time::Instant::now() + timeout;
    while !done(&got) {
        match tokio::time::timeout_at(end, rx.recv()).await {
            Ok(Some(s)) => got.push(s),
            _ => break,
        }
    }
    got
}

fn fc(table: Table) -> u8 {
    match table {
        Table::Coil => 1,
        Table::Discrete => 2,
        Table::Holding => 3,
        Table::Input => 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decodes_every_type_and_word_order_of_the_shipped_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let devices = shipped();
    let peer = ModbusPeer::tcp(dir.path(), &spec_of(&devices), port);
    let cfg = agent_toml(
        dir.path(),
        &devices
            .iter()
            .map(|(u, id, p, _)| {
                (
                    id.to_string(),
                    profile(p).display().to_string(),
                    format!("tcp://127.0.0.1:{port}"),
                    *u,
                    "200ms",
                )
            })
            .collect::<Vec<_>>(),
    );
    let (tx, mut rx) = mpsc::channel(1000);
    let pollers = Pollers::start(&cfg, tx, Metrics::new());
    let got = collect(&mut rx, Duration::from_secs(15), |s| {
        let ids: BTreeSet<&str> = s.iter().map(|s| &*s.device).collect();
        ids.len() == devices.len()
    })
    .await;
    pollers.stop().await;

    for (unit, id, pfile, values) in &devices {
        let sample = got
            .iter()
            .find(|s| &*s.device == *id)
            .unwrap_or_else(|| panic!("no sample from {id}"));
        let profile =
            DeviceProfile::from_toml(&std::fs::read_to_string(profile(pfile)).unwrap()).unwrap();
        assert_eq!(
            sample.readings.len(),
            profile.points.len(),
            "{id}: every point"
        );
        for point in &profile.points {
            let r = sample
                .readings
                .iter()
                .find(|r| r.quantity == point.quantity.code())
                .unwrap_or_else(|| panic!("{id}: no {}", point.quantity));
            let eng = &values[point.quantity.name()];
            match r.value {
                Value::Number(v) => {
                    let want = point
                        .quantity
                        .to_canonical(eng.as_f64().unwrap(), &point.unit)
                        .unwrap();
                    assert!(
                        (v - want).abs() <= want.abs() * 1e-12,
                        "{id} {}: got {v}, server holds {want}",
                        point.quantity
                    );
                }
                Value::Bool(b) => assert_eq!(b, eng.as_bool().unwrap(), "{id} {}", point.quantity),
                Value::State(s) => {
                    assert_eq!(s as u64, eng.as_u64().unwrap(), "{id} {}", point.quantity)
                }
            }
            let want_quality = match (*id, point.quantity) {
                // 16 m is inside what water can do but outside the gauge's rated 0..15000 mm.
                ("WL-0001", Quantity::WaterLevel) => Quality::Uncertain,
                // Physically impossible values are flagged bad.
                (
                    "WS-0001",
                    Quantity::Rainfall | Quantity::WindSpeed | Quantity::RelativeHumidity,
                ) => Quality::Bad,
                _ => Quality::Good,
            };
            assert_eq!(r.quality, want_quality, "{id} {}", point.quantity);
        }
        // Adjacent registers are merged: exactly the plan's requests, fewer than points.
        let plan = profile.plan_reads(0);
        let want: BTreeSet<(u8, u16, u16)> = plan
            .iter()
            .map(|b| (fc(b.table), b.start, b.count))
            .collect();
        // The server logs a request before it answers, but its log line is read by another
        // thread: wait for the lines, not just for the readings.
        let seen_now = || -> BTreeSet<(u8, u16, u16)> {
            peer.requests()
                .into_iter()
                .filter(|r| r.0 == *unit)
                .map(|r| (r.1, r.2, r.3))
                .collect()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut seen = seen_now();
        while !want.is_subset(&seen) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            seen = seen_now();
        }
        assert_eq!(seen, want, "{id}: requests seen by the server");
        assert!(plan.len() < profile.points.len(), "{id}: merged");
    }
    // The streetlight's five metering points come in one read of 9 input registers.
    assert!(peer.requests().contains(&(1, 4, 0, 9)));
}

/// A TCP peer that accepts connections and never answers.
fn silent_device() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let l2 = l.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = l2.accept() {
            held.push(s);
        }
    });
    (l, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_device_does_not_slow_a_live_one_and_exceptions_fail_only_their_block() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let devices = shipped();
    let _peer = ModbusPeer::tcp(dir.path(), &spec_of(&devices[..2]), port);
    let (_silent, silent_port) = silent_device();
    // The radar profile plus a point the server does not have: that block gets an exception.
    let extra = dir.path().join("radar-plus.toml");
    let mut text = std::fs::read_to_string(profile("water-level-radar.toml")).unwrap();
    text.push_str("\n[[points]]\nquantity = \"tilt_angle\"\ntable = \"input\"\naddress = 300\ntype = \"i16\"\n");
    std::fs::write(&extra, text).unwrap();
    let cfg = agent_toml(
        dir.path(),
        &[
            (
                "WL-0001".into(),
                extra.display().to_string(),
                format!("tcp://127.0.0.1:{port}"),
                2,
                "100ms",
            ),
            (
                "SL-DEAD".into(),
                profile("streetlight-lc200.toml").display().to_string(),
                format!("tcp://127.0.0.1:{silent_port}"),
                1,
                "100ms",
            ),
        ],
    );
    let (tx, mut rx) = mpsc::channel(1000);
    let pollers = Pollers::start(&cfg, tx, Metrics::new());
    // Warm up, then count the live device's samples over two seconds.
    collect(&mut rx, Duration::from_secs(10), |s| !s.is_empty()).await;
    while rx.try_recv().is_ok() {}
    let window = Duration::from_secs(2);
    let got = collect(&mut rx, window, |_| false).await;
    let stats = pollers.stats();
    pollers.stop().await;
    let live: Vec<&DeviceSample> = got.iter().filter(|s| &*s.device == "WL-0001").collect();
    // 100 ms interval over 2 s is 20 polls; the dead device's 300 ms timeouts must not eat
    // into that (generous bound for a loaded 2-core machine).
    assert!(
        live.len() >= 14,
        "live device polled {} times in {window:?}",
        live.len()
    );
    assert!(got.iter().all(|s| &*s.device != "SL-DEAD"));
    // The other radar points still arrive although one block fails every poll.
    assert!(live.iter().all(|s| {
        s.readings.len() == 3
            && s.readings
                .iter()
                .all(|r| r.quantity != Quantity::TiltAngle.code())
    }));
    let (wl, dead) = (&stats[0], &stats[1]);
    assert!(wl.online.load(Relaxed));
    assert!(wl.exceptions.load(Relaxed) >= 14, "one exception per poll");
    assert!(!dead.online.load(Relaxed));
    assert!(dead.timeouts.load(Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_server_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let devices = shipped();
    let mut peer = ModbusPeer::tcp(dir.path(), &spec_of(&devices[1..2]), port);
    let cfg = agent_toml(
        dir.path(),
        &[(
            "WL-0001".into(),
            profile("water-level-radar.toml").display().to_string(),
            format!("tcp://127.0.0.1:{port}"),
            2,
            "100ms",
        )],
    );
    let (tx, mut rx) = mpsc::channel(1000);
    let pollers = Pollers::start(&cfg, tx, Metrics::new());
    let stats = pollers.stats()[0].clone();
    assert!(
        !collect(&mut rx, Duration::from_secs(10), |s| !s.is_empty())
            .await
            .is_empty()
    );
    peer.proc.kill();
    assert!(
        wait_for(Duration::from_secs(10), || !stats.online.load(Relaxed)).await,
        "goes offline"
    );
    while rx.try_recv().is_ok() {}
    peer.restart();
    let after = collect(&mut rx, Duration::from_secs(15), |s| s.len() >= 3).await;
    assert!(after.len() >= 3, "polling resumed after the restart");
    assert!(stats.online.load(Relaxed));
    pollers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtu_over_a_pseudo_terminal_with_a_missing_unit_on_the_same_bus() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("ttyA"), dir.path().join("ttyB"));
    let mut socat = std::process::Command::new("socat");
    socat
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()));
    let _socat = Proc::spawn("socat", socat);
    assert!(
        wait_until(Duration::from_secs(5), || a.exists() && b.exists()),
        "socat ptys"
    );
    let devices = shipped();
    let spec = dir.path().join("rtu-spec.json");
    std::fs::write(&spec, spec_of(&devices[1..2]).to_string()).unwrap();
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(root().join("edge-agent/tests/peers/modbus_server.py"))
        .arg("--spec")
        .arg(&spec)
        .arg("--serial")
        .arg(&a)
        .arg("--baud")
        .arg("38400");
    let server = Proc::spawn("pymodbus-rtu", cmd);
    assert!(wait_until(Duration::from_secs(10), || server
        .lines()
        .iter()
        .any(|l| l == "STARTING")));
    let tty = b.display().to_string();
    let cfg = agent_toml(
        dir.path(),
        &[
            (
                "WL-0001".into(),
                profile("water-level-radar.toml").display().to_string(),
                format!("rtu://{tty}?baud=38400&parity=N"),
                2,
                "200ms",
            ),
            (
                "WL-GONE".into(),
                profile("water-level-radar.toml").display().to_string(),
                format!("rtu://{tty}?baud=38400&parity=N"),
                9,
                "200ms",
            ),
        ],
    );
    let (tx, mut rx) = mpsc::channel(1000);
    let pollers = Pollers::start(&cfg, tx, Metrics::new());
    let first = collect(&mut rx, Duration::from_secs(15), |s| !s.is_empty()).await;
    assert!(!first.is_empty(), "no answer over RTU");
    let level = first[0]
        .readings
        .iter()
        .find(|r| r.quantity == Quantity::WaterLevel.code())
        .unwrap();
    assert_eq!(level.value, Value::Number(16.0));
    let got = collect(&mut rx, Duration::from_secs(3), |_| false).await;
    let stats = pollers.stats();
    pollers.stop().await;
    let live = got.iter().filter(|s| &*s.device == "WL-0001").count();
    // 200 ms over 3 s is 15 polls; the silent unit 9 costs one 300 ms timeout per backoff
    // period, not per interval.
    assert!(
        live >= 9,
        "live unit polled {live} times in 3 s beside a dead one"
    );
    assert!(stats[0].online.load(Relaxed));
    assert!(!stats[1].online.load(Relaxed));
    assert!(stats[1].errors.load(Relaxed) >= 1, "{:?}", stats[1]);
    let unit9 = parse_requests(&server.lines())
        .iter()
        .filter(|r| r.0 == 9)
        .count();
    let unit2 = parse_requests(&server.lines())
        .iter()
        .filter(|r| r.0 == 2)
        .count();
    // The silent unit is backed off: asked far less often than its 200 ms interval.
    assert!(
        unit9 * 3 <= unit2,
        "unit 9 asked {unit9} times, unit 2 {unit2} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_writes_through_the_profile_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let devices = shipped();
    let peer = ModbusPeer::tcp(dir.path(), &spec_of(&devices[..1]), port);
    let cfg = agent_toml(
        dir.path(),
        &[(
            "SL-0001".into(),
            profile("streetlight-lc200.toml").display().to_string(),
            format!("tcp://127.0.0.1:{port}"),
            1,
            "200ms",
        )],
    );
    let (tx, mut rx) = mpsc::channel(1000);
    let pollers = Arc::new(Pollers::start(&cfg, tx, Metrics::new()));
    collect(&mut rx, Duration::from_secs(10), |s| !s.is_empty()).await;
    let t = Duration::from_secs(5);
    let back = pollers
        .set(
            "SL-0001",
            vec![(Quantity::DimmingLevel, Value::Number(40.0))],
            t,
        )
        .await
        .unwrap();
    assert_eq!(back, vec![(Quantity::DimmingLevel, Value::Number(40.0))]);
    // The server's log line is read by another thread: wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let wrote = || {
        peer.writes()
            .iter()
            .any(|w| w == "WRITE unit=1 fc=6 addr=16 values=40")
    };
    while !wrote() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(wrote(), "{:?}", peer.writes());
    // The read-back value goes into the stream.
    let got = collect(&mut rx, Duration::from_secs(5), |s| {
        s.iter().any(|s| {
            s.readings.iter().any(|r| {
                r.quantity == Quantity::DimmingLevel.code() && r.value == Value::Number(40.0)
            })
        })
    })
    .await;
    assert!(!got.is_empty());
    // Range check through the profile (0..=100), read-only and unknown points.
    let e = pollers
        .set(
            "SL-0001",
            vec![(Quantity::DimmingLevel, Value::Number(140.0))],
            t,
        )
        .await
        .unwrap_err();
    assert!(e.contains("outside the allowed range"), "{e}");
    let e = pollers
        .set(
            "SL-0001",
            vec![(Quantity::LampVoltage, Value::Number(1.0))],
            t,
        )
        .await
        .unwrap_err();
    assert!(e.contains("not writable"), "{e}");
    let e = pollers
        .set(
            "SL-0001",
            vec![(Quantity::WaterLevel, Value::Number(1.0))],
            t,
        )
        .await
        .unwrap_err();
    assert!(e.contains("no point"), "{e}");
    let e = pollers
        .set(
            "SL-9999",
            vec![(Quantity::DimmingLevel, Value::Number(1.0))],
            t,
        )
        .await
        .unwrap_err();
    assert!(e.contains("no device"), "{e}");
    assert_eq!(
        peer.writes().len(),
        1,
        "refused writes never reach the device"
    );
    let counts: HashMap<u8, usize> = peer.requests().iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(r.1).or_default() += 1;
        m
    });
    assert_eq!(counts.get(&6), Some(&1));
}
