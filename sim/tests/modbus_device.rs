//! `sim modbus-device` against peers nobody here wrote: pymodbus (TCP and RTU over the pty)
//! and mbpoll read every point of every profile, write dimming, provoke exceptions; garbage on
//! the socket does not take the device down.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn profile(name: &str) -> PathBuf {
    root().join("profiles").join(name)
}

/// A `sim modbus-device` process, killed when dropped (also when a test panics).
struct Sim {
    child: Child,
    endpoint: String,
}

impl Sim {
    fn start(profile: &Path, listen: &str, unit: u8) -> Sim {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sim"))
            .args(["modbus-device", "--profile"])
            .arg(profile)
            .args(["--listen", listen, "--unit", &unit.to_string()])
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sim");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("sim printed its endpoint");
        let endpoint = line.trim().rsplit(' ').next().unwrap().to_string();
        Sim { child, endpoint }
    }

    fn tcp_addr(&self) -> String {
        self.endpoint
            .strip_prefix("tcp://")
            .expect("a tcp endpoint")
            .to_string()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the pymodbus peer; its JSON log on success.
fn peer(target: &[&str], unit: u8, profile: &Path, actions: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(root().join("sim/tests/peers/modbus_peer.py"))
        .args(target)
        .args(["--unit", &unit.to_string(), "--profile"])
        .arg(profile)
        .args(actions)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "peer {actions:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("peer prints JSON")
}

/// Expected engineering values (profile units) of the standalone device, with the tolerance
/// its gentle drift and sensor noise need.
fn expected(quantity: &str) -> (f64, f64) {
    match quantity {
        "lamp_voltage" => (230.0, 4.0),
        "lamp_current" => (0.458, 0.02),
        "lamp_power" => (100.3, 2.0),
        "lamp_energy" => (0.0, 5.0),
        "lamp_status" => (0.0, 0.0),
        "dimming_level" => (100.0, 0.0),
        "water_level" => (2310.0, 60.0),
        "air_temperature" => (22.0, 3.0),
        "battery_level" => (87.0, 1.5),
        "ph" => (7.2, 0.1),
        "turbidity" => (12.0, 2.0),
        "conductivity" => (480.0, 15.0),
        "dissolved_oxygen" => (8.6, 0.3),
        "water_temperature" => (17.5, 0.5),
        "cover_open" => (0.0, 0.0),
        "tilt_angle" => (0.8, 0.6),
        "rainfall" => (0.0, 1.0),
        "relative_humidity" => (62.0, 5.0),
        "air_pressure" => (1013.2, 1.5),
        "wind_speed" => (2.5, 1.5),
        other => panic!("no expectation for {other}"),
    }
}

fn profiles() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("profiles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn pymodbus_reads_every_point_of_every_profile_over_tcp() {
    for p in profiles() {
        let sim = Sim::start(&p, "127.0.0.1:0", 7);
        let addr = sim.tcp_addr();
        let log = peer(&["--tcp", &addr], 7, &p, &["read"]);
        let values = log["reads"][0].as_object().unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let prof = protocols::profile::DeviceProfile::from_toml(&text).unwrap();
        assert_eq!(values.len(), prof.points.len(), "{}", p.display());
        for (q, v) in values {
            let (want, tol) = expected(q);
            let v = v.as_f64().unwrap();
            assert!(
                (v - want).abs() <= tol,
                "{} {q}: {v}, expected {want} ± {tol}",
                p.display()
            );
        }
    }
}

#[test]
fn dimming_writes_act_on_the_lamp_and_read_back() {
    let p = profile("streetlight-lc200.toml");
    let sim = Sim::start(&p, "127.0.0.1:0", 1);
    let addr = sim.tcp_addr();
    // 40 % drive: about 40 W through the meter once the firmware has sampled.
    peer(
        &["--tcp", &addr],
        1,
        &p,
        &[
            "write",
            "dimming_level",
            "40",
            "wait-for",
            "lamp_power",
            "38",
            "42.5",
        ],
    );
    // Off: the relay opens and the current goes to zero; status stays ok.
    let log = peer(
        &["--tcp", &addr],
        1,
        &p,
        &[
            "write",
            "dimming_level",
            "0",
            "wait-for",
            "lamp_current",
            "0",
            "0.001",
            "read",
        ],
    );
    assert_eq!(log["reads"][0]["lamp_status"], 0.0);
    assert_eq!(log["reads"][0]["dimming_level"], 0.0);
}

#[test]
fn exceptions_for_unmapped_addresses_read_only_points_and_bad_values() {
    let p = profile("streetlight-lc200.toml");
    let sim = Sim::start(&p, "127.0.0.1:0", 1);
    let addr = sim.tcp_addr();
    let log = peer(
        &["--tcp", &addr],
        1,
        &p,
        &[
            "expect-exception",
            "4",
            "100",
            "1",
            "2", // past the input table
            "expect-exception",
            "4",
            "8",
            "2",
            "2", // runs past the last input register
            "expect-exception",
            "3",
            "0",
            "1",
            "2", // before the holding table
            "expect-exception",
            "1",
            "0",
            "1",
            "2", // no coils at all
            "expect-exception",
            "6",
            "17",
            "5",
            "2", // not a point
            "expect-exception",
            "6",
            "16",
            "150",
            "3", // dimming above 100 %
            "expect-exception",
            "16",
            "16",
            "101",
            "3",
            "read",
        ],
    );
    assert_eq!(log["exceptions"].as_array().unwrap().len(), 7);
    assert_eq!(
        log["reads"][0]["dimming_level"], 100.0,
        "refused writes changed nothing"
    );
}

#[test]
fn mbpoll_reads_the_lamp_meter() {
    let p = profile("streetlight-lc200.toml");
    let sim = Sim::start(&p, "127.0.0.1:0", 3);
    let addr = sim.tcp_addr();
    let (host, port) = addr.rsplit_once(':').unwrap();
    // mbpoll's default float word order is low word first: the profile's cdab.
    let out = Command::new("mbpoll")
        .args([
            "-m", "tcp", "-p", port, "-a", "3", "-t", "3:float", "-r", "1", "-c", "3", "-1", host,
        ])
        .output()
        .expect("mbpoll runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let value = |reference: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(reference))
            .unwrap_or_else(|| panic!("{text}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    assert!((value("[1]:") - 230.0).abs() < 4.0, "{text}");
    assert!((value("[3]:") - 0.458).abs() < 0.02, "{text}");
    assert!((value("[5]:") - 100.3).abs() < 2.0, "{text}");
    // An unmapped register: mbpoll reports the device's "illegal data address".
    let out = Command::new("mbpoll")
        .args([
            "-m", "tcp", "-p", port, "-a", "3", "-t", "3", "-r", "200", "-1", host,
        ])
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.to_lowercase().contains("illegal data address"), "{all}");
}

fn wait_closed(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn garbage_on_the_socket_closes_that_connection_only() {
    let p = profile("water-level-radar.toml");
    let mut sim = Sim::start(&p, "127.0.0.1:0", 1);
    let addr = sim.tcp_addr();
    // A well-behaved client connected the whole time.
    let mut good = TcpStream::connect(&addr).unwrap();
    // Garbage of several shapes: random bytes, a foreign protocol id, an impossible length,
    // a header whose body never comes.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let random: Vec<u8> = (0..300)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    for junk in [
        random.as_slice(),
        &[0, 1, 0, 7, 0, 6, 1, 4, 0, 0, 0, 1],
        &[0, 1, 0, 0, 0xFF, 0xFF, 1],
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut bad = TcpStream::connect(&addr).unwrap();
        bad.write_all(junk).unwrap();
        assert!(
            wait_closed(&mut bad),
            "the device closes a connection that sends garbage"
        );
    }
    assert!(sim.alive(), "the device survived");
    // The good client still gets answers on its old connection: read input 0, one register.
    good.write_all(&[0, 9, 0, 0, 0, 6, 1, 4, 0, 0, 0, 1])
        .unwrap();
    let mut reply = [0u8; 11];
    good.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    good.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..9], &[0, 9, 0, 0, 0, 5, 1, 4, 2]);
    // And a new client does too.
    peer(&["--tcp", &addr], 1, &p, &["read"]);
}

#[test]
fn several_clients_at_once() {
    let p = profile("weather-station.toml");
    let sim = Sim::start(&p, "127.0.0.1:0", 1);
    let addr = sim.tcp_addr();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (addr, p) = (addr.clone(), p.clone());
            std::thread::spawn(move || peer(&["--tcp", &addr], 1, &p, &["read", "read", "read"]))
        })
        .collect();
    for t in threads {
        let log = t.join().unwrap();
        assert_eq!(log["reads"].as_array().unwrap().len(), 3);
    }
}

#[test]
fn rtu_over_a_pty_with_a_pymodbus_serial_client() {
    let p = profile("water-quality-5in1.toml");
    let sim = Sim::start(&p, "rtu", 5);
    let path = sim
        .endpoint
        .strip_prefix("rtu://")
        .expect("an rtu endpoint")
        .to_string();
    assert!(path.starts_with("/dev/"), "{path}");
    let log = peer(
        &["--serial", &path],
        5,
        &p,
        &[
            "read",
            "garbage",
            "read",
            "expect-exception",
            "4",
            "9",
            "1",
            "2",
            "expect-exception",
            "3",
            "0",
            "1",
            "2",
        ],
    );
    for read in log["reads"].as_array().unwrap() {
        for (q, v) in read.as_object().unwrap() {
            let (want, tol) = expected(q);
            assert!((v.as_f64().unwrap() - want).abs() <= tol, "{q}: {v}");
        }
    }
    // Writes over RTU: the streetlight on its own pty.
    let p = profile("streetlight-lc200.toml");
    let sim = Sim::start(&p, "rtu", 9);
    let path = sim.endpoint.strip_prefix("rtu://").unwrap().to_string();
    peer(
        &["--serial", &path],
        9,
        &p,
        &[
            "write",
            "dimming_level",
            "25",
            "wait-for",
            "lamp_power",
            "23",
            "27.5",
        ],
    );
}

#[test]
fn a_profile_that_does_not_match_the_firmware_is_refused() {
    let dir = std::env::temp_dir().join(format!("sim-mismatch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(profile("manhole-cover.toml"))
        .unwrap()
        .replace("address = 1", "address = 2");
    let bad = dir.join("manhole.toml");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["modbus-device", "--profile"])
        .arg(&bad)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not match the firmware's register map"),
        "{err}"
    );
    // The demo refuses a bad speed before it binds anything (a plain `sim demo` would start the
    // district on the default ports).
    let out = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["demo", "--speed", "0", "--data-dir"])
        .arg(dir.join("demo"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--speed must be between 0 and 3600"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
