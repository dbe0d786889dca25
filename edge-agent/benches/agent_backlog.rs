//! Bench: the agent's memory, disk use and backlog drain rate, against real peers.
//!
//! 50 points polled every second (10 pymodbus weather stations of 5 points each) while a
//! 100,000-reading backlog (2,000 batches of 50, as the agent itself cuts them) drains through
//! mosquitto to an acking test peer that plays the hub. Reports resident memory (VmRSS, peak
//! and steady), bytes per queued reading and the projected 24-hour outage, and the drain rate.
//!
//!   cargo bench -p edge-agent --bench agent_backlog
//!
//! Env: BENCH_BACKLOG (readings, default 100000), BENCH_INFLIGHT (window, default 64),
//! BENCH_STEADY_S (seconds of steady state after the drain, default 20).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocols::batch::{DeviceReadings, Reading, Sample};
use protocols::{Quality, Quantity, Value};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let end = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < end, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn env_u64(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

#[derive(Default)]
struct Seen {
    seqs: BTreeSet<u64>,
    readings: u64,
    first_at: Option<Instant>,
}

fn main() {
    let backlog_readings = env_u64("BENCH_BACKLOG", 100_000);
    let inflight = env_u64("BENCH_INFLIGHT", 64);
    let steady_s = env_u64("BENCH_STEADY_S", 20);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // Peers: mosquitto and ten pymodbus weather stations on one port.
    let mport = free_port();
    std::fs::write(d.join("m.conf"), format!("listener {mport} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\nset_tcp_nodelay true\n")).unwrap();
    let _broker = Kill(
        Command::new("mosquitto")
            .arg("-c")
            .arg(d.join("m.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(mport);
    let profile = root().join("profiles/weather-station.toml");
    let spec = serde_json::json!({"devices": (1..=10).map(|u| serde_json::json!({"unit": u, "profile": profile,
        "values": {"rainfall": 12.5, "air_temperature": 21.5, "relative_humidity": 55.5, "air_pressure": 1013.25, "wind_speed": 3.5}})).collect::<Vec<_>>()});
    std::fs::write(d.join("spec.json"), spec.to_string()).unwrap();
    let bport = free_port();
    let _modbus = Kill(
        Command::new("python3")
            .arg(root().join("edge-agent/tests/peers/modbus_server.py"))
            .args([
                "--spec",
                d.join("spec.json").to_str().unwrap(),
                "--tcp",
                &bport.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(bport);

    // The backlog, committed by the agent's own queue code in the shape the agent cuts:
    // one batch per second of 10 devices x 5 readings.
    let data = d.join("data");
    let per_batch = 50u64;
    let batches = backlog_readings / per_batch;
    let (stream, queue_bytes, file_bytes) = {
        let q = edge_agent::queue::Queue::open(&data, 256 << 20, 1 << 20).unwrap();
        let t0 = 1_795_334_400_000i64;
        let fill = Instant::now();
        for b in 0..batches {
            let devices = (1..=10)
                .map(|u| DeviceReadings {
                    device: format!("WS-{u:04}"),
                    samples: vec![Sample {
                        ts_ms: t0 + b as i64 * 1000,
                        readings: [
                            Quantity::Rainfall,
                            Quantity::AirTemperature,
                            Quantity::RelativeHumidity,
                            Quantity::AirPressure,
                            Quantity::WindSpeed,
                        ]
                        .iter()
                        .enumerate()
                        .map(|(i, q)| Reading {
                            quantity: q.code(),
                            value: Value::Number(10.0 + (b % 97) as f64 * 0.1 + i as f64),
                            quality: Quality::Good,
                        })
                        .collect(),
                    }],
                })
                .collect();
            q.append_batch("AG-BENCH", devices, t0).unwrap();
        }
        let s = q.stats().unwrap();
        eprintln!(
            "backlog: {batches} batches committed (fsync each) in {:?}",
            fill.elapsed()
        );
        (
            s.stream,
            s.bytes,
            std::fs::metadata(data.join(edge_agent::queue::QUEUE_FILE))
                .unwrap()
                .len(),
        )
    };

    // The acking peer playing the hub.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s2 = seen.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let mut o = MqttOptions::new("bench-hub", "127.0.0.1", mport);
        o.set_max_packet_size(4 << 20, 4 << 20);
        o.set_inflight(1000);
        let (client, mut el) = AsyncClient::new(o, 10_000);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        el.set_network_options(net);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    el.pending
                        .push_back(rumqttc::Request::Subscribe(rumqttc::Subscribe::new(
                            "v1/agents/+/batch",
                            QoS::AtLeastOnce,
                        )));
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let b = protocols::batch::decode(&p.payload).unwrap();
                    let ack = protocols::batch::Ack::from_seqs(b.stream, vec![b.seq]);
                    {
                        let mut s = s2.lock().unwrap();
                        s.first_at.get_or_insert_with(Instant::now);
                        if s.seqs.insert(b.seq) {
                            s.readings += b.reading_count() as u64;
                        }
                    }
                    let _ = client.try_publish(
                        "v1/agents/AG-BENCH/ack",
                        QoS::AtLeastOnce,
                        false,
                        serde_json::to_vec(&ack).unwrap(),
                    );
                }
                Ok(_) => {}
                Err(e) => panic!("bench hub peer: {e}"),
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    // The agent, release build, 50 points every second.
    let metrics_port = free_port();
    let mut toml = format!(
        "[agent]\nid = \"AG-BENCH\"\nsecret = \"s\"\nhub = \"mqtt://127.0.0.1:{mport}\"\ndata_dir = \"{}\"\nmax_inflight = {inflight}\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\nhealth_interval = \"5s\"\n",
        data.display()
    );
    for u in 1..=10 {
        toml.push_str(&format!(
            "[[modbus]]\ndevice = \"WS-{u:04}\"\nprofile = \"{}\"\ntransport = \"tcp://127.0.0.1:{bport}\"\nunit = {u}\ninterval = \"1s\"\n",
            profile.display()
        ));
    }
    std::fs::write(d.join("agent.toml"), toml).unwrap();
    let start = Instant::now();
    let mut agent = Kill(
        Command::new(env!("CARGO_BIN_EXE_edge-agent"))
            .args(["--config", d.join("agent.toml").to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = agent.0.id();
    let stderr = agent.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("agent: {l}");
        }
    });

    let mut peak_drain = 0;
    let drained_at = loop {
        peak_drain = peak_drain.max(rss_kib(pid));
        let done = seen.lock().unwrap().seqs.range(1..=batches).count() as u64 == batches;
        if done {
            break Instant::now();
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "backlog did not drain in 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let first = seen.lock().unwrap().first_at.unwrap();
    let drain_s = drained_at.duration_since(first).as_secs_f64();
    let live_before = seen.lock().unwrap().seqs.range(batches + 1..).count();

    // Steady state: 50 points a second, memory over time.
    let mut peak_steady = 0;
    let steady_end = Instant::now() + Duration::from_secs(steady_s);
    while Instant::now() < steady_end {
        peak_steady = peak_steady.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    let end_rss = rss_kib(pid);
    let live_after = seen.lock().unwrap().seqs.range(batches + 1..).count();
    drop(agent);

    let bytes_per_reading = queue_bytes as f64 / (batches * per_batch) as f64;
    let day = 50.0 * 86_400.0;
    let bin = std::fs::metadata(env!("CARGO_BIN_EXE_edge-agent"))
        .map(|m| m.len())
        .unwrap_or(0);
    let result = serde_json::json!({
        "backlog_readings": batches * per_batch,
        "backlog_batches": batches,
        "stream": stream,
        "inflight_window": inflight,
        "drain_s": (drain_s * 1000.0).round() / 1000.0,
        "drain_readings_per_s": ((batches * per_batch) as f64 / drain_s).round(),
        "live_batches_during_drain": live_before,
        "live_batches_in_steady_state": live_after - live_before,
        "rss_peak_drain_kib": peak_drain,
        "rss_peak_steady_kib": peak_steady,
        "rss_end_kib": end_rss,
        "queue_bytes_per_reading": (bytes_per_reading * 10.0).round() / 10.0,
        "queue_file_bytes": file_bytes,
        "outage_24h_bytes_projected": (day * bytes_per_reading).round(),
        "default_budget_bytes": 256u64 << 20,
        "binary_bytes": bin,
    });
    println!("{result}");
}
