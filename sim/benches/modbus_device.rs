//! Throughput and latency of simulated devices, and what one costs in memory.
//!
//! `cargo bench -p sim --bench modbus_device` prints one JSON line per measurement:
//! - the firmware's PDU handler and RTU slave on the host (a bound for the MCU's share),
//! - Modbus TCP round trips with tokio-modbus clients against one device and against 50,
//! - resident memory per device when 50 run in one process.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use firmware::modbus::pdu::{MAX_PDU, handle};
use firmware::modbus::rtu;
use protocols::profile::DeviceProfile;
use sim::device::{DeviceSpec, RunningDevice, spawn_fleet};
use sim::node::SimNode;
use sim::world::World;
use tokio_modbus::client::{Reader, tcp};
use tokio_modbus::prelude::Slave;

fn load(name: &str) -> DeviceProfile {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../profiles")
        .join(name);
    DeviceProfile::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn firmware_path() {
    let world = World::default();
    let profile = load("weather-station.toml");
    let mut node = SimNode::build(&profile, &world.site("bench")).unwrap();
    node.sample(0).unwrap();
    let n = 200_000;
    let mut out = [0u8; MAX_PDU];
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(handle(node.data_model(), &[4, 0, 0, 0, 18], &mut out));
    }
    let pdu_ns = start.elapsed().as_nanos() as f64 / n as f64;
    let mut frame = vec![1u8, 4, 0, 0, 0, 18];
    frame.extend(firmware::modbus::crc::crc16(&frame).to_le_bytes());
    let mut slave = rtu::Slave::new(1);
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(
            slave
                .process(&frame, node.data_model())
                .map(|r| r.len())
                .ok(),
        );
    }
    let rtu_ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "{{\"bench\":\"firmware_read_18_registers\",\"pdu_handle_ns\":{pdu_ns:.0},\"rtu_process_ns\":{rtu_ns:.0}}}"
    );
}

async fn load_devices(
    name: &str,
    devices: &[RunningDevice],
    clients_per_device: usize,
    duration: Duration,
) {
    let mut tasks = Vec::new();
    let deadline = Instant::now() + duration;
    for d in devices {
        for _ in 0..clients_per_device {
            let addr = d.addr.unwrap();
            tasks.push(tokio::spawn(async move {
                let mut ctx = tcp::connect_slave(addr, Slave(1)).await.unwrap();
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    ctx.read_input_registers(0, 9).await.unwrap().unwrap();
                    lat.push(t.elapsed().as_micros() as u64);
                }
                lat
            }));
        }
    }
    let mut lat: Vec<u64> = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    lat.sort_unstable();
    let q = |f: f64| lat[((lat.len() as f64 * f) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "{{\"bench\":\"{name}\",\"devices\":{},\"clients\":{},\"requests_per_s\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3}}}",
        devices.len(),
        devices.len() * clients_per_device,
        lat.len() as f64 / duration.as_secs_f64(),
        q(0.5),
        q(0.99)
    );
}

async fn tcp_paths() {
    let world = World::default();
    let profile = load("streetlight-lc200.toml");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let before = rss_kib();
    let specs = (0..50).map(|i| {
        let id = format!("SL-{i:04}");
        (
            DeviceSpec::new(id.clone(), profile.clone(), 1, world.site(&id)),
            any,
        )
    });
    let devices = spawn_fleet(specs).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    println!(
        "{{\"bench\":\"memory\",\"devices\":50,\"rss_kib_before\":{before},\"rss_kib_after\":{after},\"kib_per_device\":{:.1}}}",
        (after.saturating_sub(before)) as f64 / 50.0
    );
    load_devices(
        "tcp_one_device_one_client",
        &devices[..1],
        1,
        Duration::from_secs(3),
    )
    .await;
    load_devices(
        "tcp_one_device_four_clients",
        &devices[..1],
        4,
        Duration::from_secs(3),
    )
    .await;
    load_devices(
        "tcp_fifty_devices_one_client_each",
        &devices,
        1,
        Duration::from_secs(3),
    )
    .await;
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to filter here.
    firmware_path();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(tcp_paths());
}
