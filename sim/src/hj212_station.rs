//! A simulated HJ 212-2017 station: the data logger of a water-quality sonde reporting to its
//! platform over TCP, as the district's environment bureau runs them.
//!
//! Every `interval` it sends a real-time upload (CN 2011) with an acknowledgement request
//! (`Flag=5`) and waits for the platform's CN 9014. Uploads that were not acknowledged stay in
//! the logger's memory (bounded: the oldest go first) and are sent again, oldest first, after
//! a reconnect, the way loggers resend what the platform did not confirm. `sim hj212-station`
//! runs one against any platform; `sim demo` runs two against its hub.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use protocols::hj212::{Cn, CpBuilder, DataFlag, DataTime, Flag, Frame, Packet, datetime, encode};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info};

/// Longest wait for an acknowledgement.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Unacknowledged uploads a logger keeps.
pub const KEEP: usize = 1000;

/// One value of an upload: pollutant code (`w01001`), value, data flag.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    /// Pollutant code.
    pub code: &'static str,
    /// The value in the unit HJ 212 reports it in.
    pub value: f64,
    /// The instrument's data flag.
    pub flag: DataFlag,
}

/// A station's identity and where its platform is.
#[derive(Clone, Debug)]
pub struct StationSpec {
    /// `MN`.
    pub mn: String,
    /// `PW`.
    pub pw: String,
    /// The platform's HJ 212 address.
    pub platform: SocketAddr,
    /// Time between uploads.
    pub interval: Duration,
    /// The station's local time, minutes east of UTC (its `DataTime`).
    pub utc_offset_minutes: i32,
}

/// What a station did, for its operator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StationStats {
    /// Uploads made.
    pub uploads: u64,
    /// Uploads the platform acknowledged.
    pub acked: u64,
    /// Uploads dropped from a full memory.
    pub dropped: u64,
}

/// One real-time upload as the station sends it.
pub fn upload(spec: &StationSpec, at_ms: i64, values: &[Measurement]) -> Option<String> {
    let mut cp = CpBuilder::new();
    cp.data_time(DataTime::from_utc_ms(at_ms, spec.utc_offset_minutes));
    for m in values {
        cp.number(m.code, "Rtd", m.value).flag(m.code, m.flag);
    }
    let cp = cp.finish().ok()?;
    let qn = datetime::qn_for(at_ms, spec.utc_offset_minutes);
    encode(&Packet {
        qn: Some(&qn),
        st: "21",
        cn: Cn::RealTime,
        pw: &spec.pw,
        mn: &spec.mn,
        flag: Some(Flag::new(Flag::VERSION_2017, false, true)),
        split: None,
        cp: &cp,
    })
    .ok()
}

/// The `QN` of a packet we sent (to match its acknowledgement).
fn qn_of(packet: &str) -> Option<String> {
    let f = Frame::decode(packet.as_bytes()).ok()?;
    let p = f.packet().ok()?;
    p.qn.map(str::to_string)
}

/// Runs a station until `stop` turns true; `read` gives the instrument's values now.
pub async fn run(
    spec: StationSpec,
    read: impl Fn() -> Vec<Measurement> + Send,
    stats: watch::Sender<StationStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut unacked: VecDeque<String> = VecDeque::new();
    let mut tick = tokio::time::interval(spec.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<(
        BufReader<tokio::net::tcp::OwnedReadHalf>,
        tokio::net::tcp::OwnedWriteHalf,
    )> = None;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        if let Some(p) = upload(&spec, protocols::time::now_ms(), &read()) {
            stats.send_modify(|s| s.uploads += 1);
            if unacked.len() == KEEP {
                unacked.pop_front();
                stats.send_modify(|s| s.dropped += 1);
            }
            unacked.push_back(p);
        }
        if conn.is_none() {
            match TcpStream::connect(spec.platform).await {
                Ok(s) => {
                    info!(mn = %spec.mn, platform = %spec.platform, "HJ 212 station connected");
                    let (rd, wr) = s.into_split();
                    conn = Some((BufReader::new(rd), wr));
                }
                Err(e) => {
                    debug!(mn = %spec.mn, "HJ 212 connect: {e}");
                    continue;
                }
            }
        }
        // Oldest first; a packet that is not acknowledged ends the round (and the connection:
        // the platform may be gone), the rest wait for the next one.
        while let Some(packet) = unacked.front().cloned() {
            let Some((rd, wr)) = conn.as_mut() else { break };
            if exchange(rd, wr, &packet).await {
                unacked.pop_front();
                stats.send_modify(|s| s.acked += 1);
            } else {
                conn = None;
                break;
            }
        }
    }
}

/// Sends one packet and waits for its acknowledgement.
async fn exchange(
    rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    packet: &str,
) -> bool {
    let Some(qn) = qn_of(packet) else {
        return true;
    };
    if wr.write_all(packet.as_bytes()).await.is_err() {
        return false;
    }
    let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
    loop {
        let mut line = String::new();
        match tokio::time::timeout_at(deadline, rd.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => {
                let acked = Frame::decode(line.as_bytes()).ok().and_then(|f| {
                    f.packet()
                        .ok()
                        .map(|p| p.cn == Cn::DataAck && p.qn == Some(qn.as_str()))
                });
                if acked == Some(true) {
                    return true;
                }
            }
            _ => return false,
        }
    }
}

/// `sim hj212-station`: one station with a synthetic river sonde.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The platform's HJ 212 address (the hub's `[hj212] listen`).
    #[arg(long, default_value = "127.0.0.1:9212")]
    pub platform: SocketAddr,
    /// The station's MN.
    #[arg(long)]
    pub mn: String,
    /// The station's PW.
    #[arg(long)]
    pub pw: String,
    /// Time between uploads.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Stop after this many acknowledged uploads (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
}

/// A river sonde's values around typical surface-water means, varying slowly.
pub fn synthetic_sonde(t_s: f64) -> Vec<Measurement> {
    let wave = (t_s / 600.0).sin();
    let m = |code, value: f64| Measurement {
        code,
        value: (value * 1000.0).round() / 1000.0,
        flag: DataFlag::Normal,
    };
    vec![
        m("w01001", 7.4 + 0.1 * wave),
        m("w01003", 9.0 + 2.0 * wave),
        m("w01009", 8.3 - 0.3 * wave),
        m("w01010", 18.0 + 0.5 * wave),
        m("w01014", 450.0 + 20.0 * wave),
        m("w21003", 0.30 + 0.05 * wave),
        m("w01018", 12.0 + 2.0 * wave),
    ]
}

/// Runs `sim hj212-station` until interrupted or `count` uploads are acknowledged.
pub async fn main(args: Args) -> anyhow::Result<()> {
    let spec = StationSpec {
        mn: args.mn,
        pw: args.pw,
        platform: args.platform,
        interval: args.interval,
        utc_offset_minutes: protocols::hj212::DEFAULT_UTC_OFFSET_MINUTES,
    };
    let (stats_tx, mut stats) = watch::channel(StationStats::default());
    let (stop_tx, stop) = watch::channel(false);
    let started = std::time::Instant::now();
    let station = tokio::spawn(run(
        spec,
        move || synthetic_sonde(started.elapsed().as_secs_f64()),
        stats_tx,
        stop,
    ));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            changed = stats.changed() => {
                if changed.is_err() { break; }
                let s = *stats.borrow_and_update();
                println!(
                    "{}",
                    serde_json::json!({"uploads": s.uploads, "acked": s.acked, "dropped": s.dropped})
                );
                if args.count > 0 && s.acked >= args.count {
                    break;
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = station.await;
    Ok(())
}

/// Arguments of `sim bench hj212`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Stations, one TCP connection each.
    #[arg(long, default_value_t = 64)]
    pub stations: usize,
    /// Pollutants in each real-time upload (distinct codes of the table, at most all of them).
    #[arg(long, default_value_t = 10)]
    pub pollutants: usize,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

/// `sim bench hj212`: real-time uploads through an embedded hub (the station sends its next
/// upload when the last is acknowledged, as loggers do). One JSON line on stdout.
pub async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    anyhow::ensure!(
        a.stations > 0 && a.pollutants > 0,
        "--stations and --pollutants must be at least 1"
    );
    let dir = tempfile::Builder::new()
        .prefix("sim-bench-hj212-")
        .tempdir()?;
    let mut cfg = hub::config::HubConfig::default();
    cfg.hub.data_dir = dir.path().to_path_buf();
    cfg.hub.mqtt_listen = vec!["127.0.0.1:0".into()];
    cfg.hub.http_listen = "127.0.0.1:0".into();
    cfg.hj212.listen = vec!["127.0.0.1:0".into()];
    for i in 0..a.stations {
        cfg.devices.push(hub::config::DeviceConfig {
            id: format!("WQ-B{i:05}"),
            kind: "water_quality".into(),
            hj212_mn: Some(format!("BENCH{i:09}")),
            hj212_pw: Some("123456".into()),
            ..hub::config::DeviceConfig::default()
        });
    }
    let server = hub::server::Server::start(cfg)
        .await
        .context("starting the embedded hub")?;
    let platform = server.hub().hj212_addrs()[0];
    let codes: Vec<&'static str> = protocols::hj212::codes::CODES
        .iter()
        .map(|c| c.code)
        .collect();
    let started = std::time::Instant::now();
    let until = started + a.duration;
    let mut tasks = Vec::new();
    for i in 0..a.stations {
        let spec = StationSpec {
            mn: format!("BENCH{i:09}"),
            pw: "123456".into(),
            platform,
            interval: Duration::ZERO,
            utc_offset_minutes: protocols::hj212::DEFAULT_UTC_OFFSET_MINUTES,
        };
        let values: Vec<Measurement> = (0..a.pollutants)
            .map(|k| Measurement {
                code: codes[k],
                value: 1.0 + k as f64,
                flag: DataFlag::Normal,
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            let (rd, mut wr) = TcpStream::connect(spec.platform).await?.into_split();
            let mut rd = BufReader::new(rd);
            let mut latencies = Vec::new();
            // One upload per second of data time, back from now: every upload is a new point.
            let mut at = protocols::time::now_ms() - 3_600_000;
            while std::time::Instant::now() < until {
                at += 1000;
                let Some(p) = upload(&spec, at, &values) else {
                    break;
                };
                let sent = std::time::Instant::now();
                if !exchange(&mut rd, &mut wr, &p).await {
                    anyhow::bail!("station {}: no acknowledgement", spec.mn);
                }
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let packets = latencies.len() as f64;
    println!(
        "{}",
        serde_json::json!({
            "bench": "hj212",
            "stations": a.stations,
            "pollutants": a.pollutants,
            "packets_per_s": (packets / elapsed).round(),
            "readings_per_s": (packets * a.pollutants as f64 / elapsed).round(),
            "ack_p50_ms": (pct(0.50) * 100.0).round() / 100.0,
            "ack_p99_ms": (pct(0.99) * 100.0).round() / 100.0,
            "packets": packets,
        })
    );
    server.shutdown().await?;
    Ok(())
}
