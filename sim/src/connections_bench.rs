//! `sim bench connections`: many direct devices, each its own MQTT 3.1.1 connection.
//!
//! The district's 5G devices (manhole covers, rain gauges, meters) connect to the hub
//! directly, tens of thousands of them. This bench runs `--connections` of them against a hub
//! started as a separate process (a process may hold only so many open files, and the hub
//! needs one per connection as the load generator does), or against any broker given by
//! `--target` (e.g. mosquitto, with `--target-pid` to read its memory and CPU):
//!
//! 1. connect storm: every device connects at once (TCP connect, CONNECT, CONNACK); a failed
//!    attempt is counted and tried again after a pause, as a device would;
//! 2. steady state: from its CONNACK on, every device publishes one QoS 1 JSON reading every
//!    `--period` (the devices spread evenly over the period; those connected early publish
//!    while the others are still connecting), until `--duration` after the storm; PUBACK
//!    latency is measured from the write to the PUBACK, the first publish of each connection
//!    left out (it pays for the hub's first sight of the device);
//! 3. reconnect storm: every device closes its socket at once (a hub restart, a 5G cell
//!    outage), then after `--outage` all connect again at once and publish on as before,
//!    for `--after` (PUBACK latency of this part apart: `reconnect_puback_*`);
//!
//! then one JSON line on stdout. The clients bind source addresses 127.0.0.2, 127.0.0.3, ...
//! (`--sources` of them) so the ephemeral ports of one address never run out.
//!
//! The hub started here gets a hub.toml with `--connections` devices `RG-00000`, ... (kind
//! `rain_gauge`, plain secrets) and, with `--registry`, more devices that never connect;
//! per-client quotas are off. Its memory (VmRSS) is read idle, after the connect storm and at
//! the end: `rss_per_conn_kb` = (after the storm - idle) / connected. Its CPU time
//! (utime + stime) is reported per phase, and the load generator's own separately.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::BytesMut;
use hub::config::{DeviceConfig, HubConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::load::mqtt::{self, Incoming};
use crate::load::stats::Histogram;

/// Arguments of `sim bench connections`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Devices, each its own connection.
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// Devices in the hub's registry (at least --connections; the rest never connect).
    #[arg(long)]
    pub registry: Option<usize>,
    /// Each device publishes one reading this often.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub period: Duration,
    /// How long the steady state lasts after the connect storm.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// How long the devices publish on after the reconnect storm.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub after: Duration,
    /// How long every device stays away in the reconnect storm.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub outage: Duration,
    /// Longest a storm may take; devices still out then are counted as not connected.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub storm_timeout: Duration,
    /// Longest one connect attempt (TCP connect to CONNACK) may take.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub attempt_timeout: Duration,
    /// Longest wait for a PUBACK.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub ack_timeout: Duration,
    /// MQTT keep alive the devices ask for, seconds.
    #[arg(long, default_value_t = 300)]
    pub keep_alive: u16,
    /// Source addresses 127.0.0.2 onwards the clients bind (loopback targets only).
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// The hub binary (default: `hub` next to this program).
    #[arg(long, value_name = "PATH")]
    pub hub_bin: Option<PathBuf>,
    /// `mqtt://HOST:PORT` of a running broker instead of starting a hub (any broker that
    /// accepts the devices' `RG-xxxxx` logins, e.g. mosquitto allowing anonymous clients).
    #[arg(long)]
    pub target: Option<String>,
    /// With --target: the broker's process id, to read its memory and CPU.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// Where the started hub's log goes (default: this program's stderr).
    #[arg(long, value_name = "FILE")]
    pub hub_log: Option<PathBuf>,
    /// MQTT over TLS: the started hub gets a development CA's certificate and a TLS listener,
    /// and every device logs in by password over TLS 1.3 with a session cache of its own (the
    /// reconnect storm resumes). Started hub only.
    #[arg(long)]
    pub tls: bool,
}

/// A device's byte stream: plain TCP, or TLS over it.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}
type Conn = Box<dyn Io>;

/// How devices reach the hub over TLS.
struct TlsClient {
    /// One client config per device: a device keeps its own session tickets.
    configs: Vec<Arc<rustls::ClientConfig>>,
}

/// Phases, in order; devices follow them through a watch channel.
const IDLE: u8 = 0;
const STORM: u8 = 1;
const DOWN: u8 = 3;
const RECONNECT: u8 = 4;
const STOP: u8 = 5;

/// What one storm counts.
#[derive(Default)]
struct Storm {
    /// Devices connected.
    connected: AtomicU64,
    /// Attempts that failed (refused, reset, timed out).
    failed: AtomicU64,
    /// Of those, CONNACK 3 "server unavailable" (busy).
    busy: AtomicU64,
    /// Attempt start to CONNACK of the attempts that succeeded.
    latency: Histogram,
    /// Microseconds from the storm's start to the last CONNACK.
    last_us: AtomicU64,
}

/// Shared by the device tasks and the conductor.
struct Ctx {
    target: SocketAddr,
    tls: Option<TlsClient>,
    sources: u8,
    keep_alive: u16,
    attempt_timeout: Duration,
    ack_timeout: Duration,
    period: Duration,
    connections: usize,
    storms: [Storm; 2],
    /// Start of each storm (set before the phase changes).
    storm_start: [OnceLock<tokio::time::Instant>; 2],
    /// Write to PUBACK, first publish of each connection apart: after the connect storm,
    /// after the reconnect storm.
    puback: [Histogram; 2],
    publishes: [AtomicU64; 2],
    pubacks: [AtomicU64; 2],
    /// Publishes without PUBACK in time, or whose connection failed.
    lost: AtomicU64,
    /// Connections lost outside the outage (the device connects again).
    dropped: AtomicU64,
    /// Devices that closed their connection for the outage.
    down: AtomicU64,
}

/// A process's figures from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct ProcSample {
    rss_kb: u64,
    cpu_s: f64,
}

/// Runs the benchmark and prints its JSON line.
pub async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    let n = a.connections;
    ensure!(n > 0, "--connections must be at least 1");
    ensure!(
        a.sources >= 1 && a.sources <= 250,
        "--sources must be 1..=250"
    );
    ensure!(!a.period.is_zero(), "--period must be positive");
    let registry = a.registry.unwrap_or(n).max(n);
    let dir = tempfile::Builder::new()
        .prefix("sim-bench-connections-")
        .tempdir()?;
    ensure!(
        !(a.tls && a.target.is_some()),
        "--tls works with the hub this bench starts, not with --target"
    );
    let (target, mut hub, pid, ca) = match &a.target {
        Some(t) => {
            // `mqtt://HOST:PORT` or `HOST:PORT` (bench.rs registers this module: no import
            // back from it).
            let hp = t.strip_prefix("mqtt://").unwrap_or(t);
            let addr = tokio::net::lookup_host(&hp)
                .await?
                .next()
                .with_context(|| format!("{hp}: no address"))?;
            (addr, None, a.target_pid, None)
        }
        None => {
            let (addr, child, ca) = start_hub(&a, registry, dir.path()).await?;
            let pid = child.id();
            (addr, Some(child), Some(pid), ca)
        }
    };
    let tls = match &ca {
        Some(ca) => {
            // The CA is read once; each device gets a copy with a session cache of its own.
            let base = client_config(ca, None, 2)?;
            let configs = (0..n)
                .map(|_| {
                    let mut c = rustls::ClientConfig::clone(&base);
                    c.resumption = rustls::client::Resumption::in_memory_sessions(2);
                    Arc::new(c)
                })
                .collect();
            Some(TlsClient { configs })
        }
        None => None,
    };
    let result = run(&a, target, pid, tls).await;
    if let Some(child) = &mut hub {
        stop_hub(child).await;
    }
    let line = result?;
    println!("{line}");
    Ok(())
}

/// The phases against `target`; the JSON line.
async fn run(
    a: &BenchArgs,
    target: SocketAddr,
    pid: Option<u32>,
    tls: Option<TlsClient>,
) -> anyhow::Result<serde_json::Value> {
    let n = a.connections;
    let sample = || pid.and_then(proc_sample);
    // Let the hub settle (registry loaded, first twin round) before the idle figure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = sample();
    let load_cpu0 = self_cpu_s();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .thread_name("devices")
        .enable_all()
        .build()
        .context("starting the devices' runtime")?;
    let ctx = Arc::new(Ctx {
        target,
        tls,
        sources: if target.ip().is_loopback() {
            a.sources
        } else {
            0
        },
        keep_alive: a.keep_alive,
        attempt_timeout: a.attempt_timeout,
        ack_timeout: a.ack_timeout,
        period: a.period,
        connections: n,
        storms: Default::default(),
        storm_start: Default::default(),
        puback: Default::default(),
        publishes: Default::default(),
        pubacks: Default::default(),
        lost: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        down: AtomicU64::new(0),
    });
    let (phase_tx, phase_rx) = watch::channel(IDLE);
    let tasks: Vec<_> = (0..n)
        .map(|i| runtime.spawn(device(ctx.clone(), i, phase_rx.clone())))
        .collect();

    // 1. Connect storm.
    eprintln!("connections: connect storm of {n} devices against {target}");
    let storm1 = storm(&ctx, &phase_tx, 0, STORM, a.storm_timeout).await;
    let after_storm = sample();

    // 2. Steady state: the devices publish on.
    eprintln!(
        "connections: steady state for {:?}, one reading per device every {:?}",
        a.duration, a.period
    );
    tokio::time::sleep(a.duration).await;
    let steady_end = sample();
    let steady_s = a.duration.as_secs_f64();
    let live_s = ctx.storm_start[0]
        .get()
        .map_or(steady_s, |t| t.elapsed().as_secs_f64());

    // 3. Reconnect storm: everyone drops at once, and comes back at once.
    phase_tx.send_replace(DOWN);
    let down_until = tokio::time::Instant::now() + Duration::from_secs(10);
    while ctx.down.load(Relaxed) < n as u64 && tokio::time::Instant::now() < down_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "connections: all dropped; reconnect storm in {:?}",
        a.outage
    );
    tokio::time::sleep(a.outage).await;
    let before_reconnect = sample();
    let storm2 = storm(&ctx, &phase_tx, 1, RECONNECT, a.storm_timeout).await;
    let after_reconnect = sample();
    tokio::time::sleep(a.after).await;
    let end = sample();

    phase_tx.send_replace(STOP);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    runtime.shutdown_background();
    let load_cpu_s = self_cpu_s() - load_cpu0;

    let s1 = &ctx.storms[0];
    let s2 = &ctx.storms[1];
    let connected = s1.connected.load(Relaxed);
    let per_conn_kb = match (idle, after_storm) {
        (Some(i), Some(c)) if connected > 0 => Some(round2(
            (c.rss_kb as f64 - i.rss_kb as f64) / connected as f64,
        )),
        _ => None,
    };
    let cpu = |x: Option<ProcSample>, y: Option<ProcSample>| match (x, y) {
        (Some(x), Some(y)) => Some(round2(y.cpu_s - x.cpu_s)),
        _ => None,
    };
    let mb = |x: Option<ProcSample>| x.map(|s| round2(s.rss_kb as f64 / 1024.0));
    Ok(serde_json::json!({
        "bench": "connections",
        "target": a.target.clone().unwrap_or_else(|| "hub".into()),
        "tls": a.tls,
        "connections": n,
        "registry": a.registry.unwrap_or(n).max(n),
        "period_s": a.period.as_secs_f64(),
        "duration_s": steady_s,
        "connected": connected,
        "failed": s1.failed.load(Relaxed),
        "busy": s1.busy.load(Relaxed),
        "connect_p50_ms": round2(s1.latency.quantile_ms(0.5)),
        "connect_p99_ms": round2(s1.latency.quantile_ms(0.99)),
        "connect_max_ms": round2(s1.latency.max_ms()),
        "all_connected_s": storm1,
        "puback_p50_ms": round2(ctx.puback[0].quantile_ms(0.5)),
        "puback_p99_ms": round2(ctx.puback[0].quantile_ms(0.99)),
        "puback_max_ms": round2(ctx.puback[0].max_ms()),
        "publishes": ctx.publishes[0].load(Relaxed),
        "pubacks": ctx.pubacks[0].load(Relaxed),
        "msgs_per_s": round2(ctx.pubacks[0].load(Relaxed) as f64 / live_s),
        "lost": ctx.lost.load(Relaxed),
        "dropped": ctx.dropped.load(Relaxed),
        "reconnected": s2.connected.load(Relaxed),
        "reconnect_failed": s2.failed.load(Relaxed),
        "reconnect_busy": s2.busy.load(Relaxed),
        "reconnect_p50_ms": round2(s2.latency.quantile_ms(0.5)),
        "reconnect_p99_ms": round2(s2.latency.quantile_ms(0.99)),
        "reconnect_max_ms": round2(s2.latency.max_ms()),
        "all_reconnected_s": storm2,
        "reconnect_puback_p50_ms": round2(ctx.puback[1].quantile_ms(0.5)),
        "reconnect_puback_p99_ms": round2(ctx.puback[1].quantile_ms(0.99)),
        "reconnect_puback_max_ms": round2(ctx.puback[1].max_ms()),
        "reconnect_pubacks": ctx.pubacks[1].load(Relaxed),
        "rss_idle_mb": mb(idle),
        "rss_connected_mb": mb(after_storm),
        "rss_end_mb": mb(end),
        "rss_per_conn_kb": per_conn_kb,
        "cpu_storm_s": cpu(idle, after_storm),
        "cpu_steady_pct": cpu(after_storm, steady_end).map(|c| round2(100.0 * c / steady_s)),
        "cpu_reconnect_s": cpu(before_reconnect, after_reconnect),
        "load_cpu_s": round2(load_cpu_s),
        "load_threads": a.threads,
    }))
}

/// Runs one storm: starts it and waits until every device is connected or `timeout` passed.
/// Seconds from its start to the last CONNACK (`null` when some never connected).
async fn storm(
    ctx: &Ctx,
    phase: &watch::Sender<u8>,
    k: usize,
    id: u8,
    timeout: Duration,
) -> Option<f64> {
    let start = tokio::time::Instant::now();
    let _ = ctx.storm_start[k].set(start);
    phase.send_replace(id);
    let s = &ctx.storms[k];
    let n = ctx.connections as u64;
    let mut report = start;
    while s.connected.load(Relaxed) < n && start.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if report.elapsed() >= Duration::from_secs(2) {
            report = tokio::time::Instant::now();
            eprintln!(
                "connections: t={:.0}s {} connected, {} failed attempts",
                start.elapsed().as_secs_f64(),
                s.connected.load(Relaxed),
                s.failed.load(Relaxed)
            );
        }
    }
    let connected = s.connected.load(Relaxed);
    eprintln!(
        "connections: storm {}: {connected}/{n} connected, {} failed attempts, p99 {:.1} ms",
        k + 1,
        s.failed.load(Relaxed),
        s.latency.quantile_ms(0.99)
    );
    (connected == n).then(|| round2(s.last_us.load(Relaxed) as f64 / 1e6))
}

/// One device through every phase.
async fn device(ctx: Arc<Ctx>, i: usize, mut phase: watch::Receiver<u8>) {
    if phase.wait_for(|p| *p >= STORM).await.is_err() {
        return;
    }
    let conn = live(&ctx, i, 0, STORM, &mut phase).await;
    if phase.wait_for(|p| *p >= DOWN).await.is_err() {
        return;
    }
    // The outage: the socket closes at once, no DISCONNECT (the will, if any, would fire).
    drop(conn);
    ctx.down.fetch_add(1, Relaxed);
    if phase.wait_for(|p| *p >= RECONNECT).await.is_err() {
        return;
    }
    let conn = live(&ctx, i, 1, RECONNECT, &mut phase).await;
    let _ = phase.wait_for(|p| *p >= STOP).await;
    if let Some(mut c) = conn {
        let mut out = BytesMut::with_capacity(2);
        mqtt::disconnect(&mut out);
        let _ = c.write_all(&out).await;
    }
}

/// Connects and publishes while phase `id` lasts, connecting again when the connection
/// fails; the connection open when the phase ended.
async fn live(
    ctx: &Ctx,
    i: usize,
    k: usize,
    id: u8,
    phase: &mut watch::Receiver<u8>,
) -> Option<Conn> {
    let mut first = true;
    loop {
        let stream = connect_phase(ctx, i, k, id, first, phase).await?;
        first = false;
        match publish_loop(ctx, i, k, id, stream, phase).await {
            Some(s) => return Some(s),
            None => {
                ctx.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Tries to connect while the phase lasts; failed attempts are counted and retried after a
/// pause (spread over devices, as real devices back off).
async fn connect_phase(
    ctx: &Ctx,
    i: usize,
    k: usize,
    id: u8,
    count: bool,
    phase: &mut watch::Receiver<u8>,
) -> Option<Conn> {
    let s = &ctx.storms[k];
    let start = *ctx.storm_start[k].get()?;
    let mut attempt = 0u32;
    loop {
        if *phase.borrow() != id {
            return None;
        }
        let t = Instant::now();
        let r = tokio::select! {
            r = tokio::time::timeout(ctx.attempt_timeout, connect_once(ctx, i)) => r,
            _ = phase.wait_for(|p| *p != id) => return None,
        };
        match r {
            Ok(Ok(stream)) => {
                if count {
                    s.latency.record(t.elapsed());
                    s.last_us
                        .fetch_max(start.elapsed().as_micros() as u64, Relaxed);
                    s.connected.fetch_add(1, Relaxed);
                }
                return Some(stream);
            }
            Ok(Err(e)) => {
                if matches!(e, ConnectError::Refused(3)) {
                    s.busy.fetch_add(1, Relaxed);
                }
                if s.failed.fetch_add(1, Relaxed) < 5 {
                    eprintln!("connections: device {i}: connect failed: {e}");
                }
            }
            Err(_) => {
                if s.failed.fetch_add(1, Relaxed) < 5 {
                    eprintln!(
                        "connections: device {i}: no CONNACK within {:?}",
                        ctx.attempt_timeout
                    );
                }
            }
        }
        attempt += 1;
        // 0.5 s, 1 s, 2 s, ... up to 8 s, plus up to 0.5 s spread by device.
        let pause = Duration::from_millis((500u64 << attempt.min(4)).min(8000))
            + Duration::from_millis((i as u64 * 7919) % 500);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = phase.wait_for(|p| *p != id) => return None,
        }
    }
}

/// Why a connect attempt failed.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Codec(#[from] mqtt::CodecError),
    #[error("CONNACK return code {0}")]
    Refused(u8),
    #[error("closed before CONNACK")]
    Closed,
}

/// The id of benchmark device `i` (a rain gauge), shared with `sim bench tls`.
pub(crate) fn device_id(i: usize) -> String {
    format!("RG-{i:05}")
}

/// The secret of benchmark device `i`.
pub(crate) fn secret(i: usize) -> String {
    format!("rg-secret-{i:05}")
}

/// `n` rain gauges `RG-00000`... with plain secrets, as the benchmarks register them.
pub(crate) fn rain_gauges(n: usize) -> Vec<DeviceConfig> {
    (0..n)
        .map(|i| DeviceConfig {
            id: device_id(i),
            kind: "rain_gauge".into(),
            secret: Some(secret(i)),
            ..DeviceConfig::default()
        })
        .collect()
}

/// A client config trusting `ca`, with a client certificate when given, keeping up to
/// `sessions` TLS sessions for resumption (0: none).
pub(crate) fn client_config(
    ca: &Path,
    cert: Option<&(std::path::PathBuf, std::path::PathBuf)>,
    sessions: usize,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in hub::tls::certificates(ca)? {
        roots.add(c)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match cert {
        None => builder.with_no_client_auth(),
        Some((crt, key)) => {
            let pem = std::fs::read(key)?;
            let key =
                rustls_pemfile::private_key(&mut pem.as_slice())?.context("no private key")?;
            builder.with_client_auth_cert(hub::tls::certificates(crt)?, key)?
        }
    };
    config.resumption = match sessions {
        0 => rustls::client::Resumption::disabled(),
        n => rustls::client::Resumption::in_memory_sessions(n),
    };
    Ok(Arc::new(config))
}

/// TCP connect from the device's source address, CONNECT, CONNACK.
async fn connect_once(ctx: &Ctx, i: usize) -> Result<Conn, ConnectError> {
    let socket = match ctx.target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if ctx.sources > 0 {
        let last = 2 + (i % usize::from(ctx.sources)) as u8;
        socket.bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)),
            0,
        ))?;
    }
    let tcp = socket.connect(ctx.target).await?;
    tcp.set_nodelay(true)?;
    let mut stream: Conn = match &ctx.tls {
        None => Box::new(tcp),
        Some(tls) => {
            let connector = tokio_rustls::TlsConnector::from(tls.configs[i].clone());
            let name = rustls::pki_types::ServerName::IpAddress(ctx.target.ip().into());
            Box::new(connector.connect(name, tcp).await?)
        }
    };
    let id = device_id(i);
    let mut out = BytesMut::with_capacity(64);
    mqtt::connect(&mut out, &id, Some(&id), Some(&secret(i)), ctx.keep_alive);
    stream.write_all(&out).await?;
    let mut rbuf = BytesMut::with_capacity(16);
    loop {
        while let Some(p) = mqtt::decode(&mut rbuf)? {
            match p {
                Incoming::ConnAck(0) => return Ok(stream),
                Incoming::ConnAck(rc) => return Err(ConnectError::Refused(rc)),
                _ => {}
            }
        }
        if stream.read_buf(&mut rbuf).await? == 0 {
            return Err(ConnectError::Closed);
        }
    }
}

/// Publishes one reading every period while phase `id` lasts: the stream when the phase
/// ended, `None` when the connection failed.
async fn publish_loop(
    ctx: &Ctx,
    i: usize,
    h: usize,
    id: u8,
    mut stream: Conn,
    phase: &mut watch::Receiver<u8>,
) -> Option<Conn> {
    let origin = *ctx.storm_start[0].get()?;
    let n = ctx.connections as u128;
    // Devices spread evenly over the period, on one schedule for the whole run.
    let offset = Duration::from_nanos((ctx.period.as_nanos() * i as u128 / n) as u64);
    let topic = format!("v1/devices/{}/telemetry", device_id(i));
    let mut out = BytesMut::with_capacity(128);
    let mut rbuf = BytesMut::with_capacity(16);
    let now = tokio::time::Instant::now();
    let first_slot = if now > origin + offset {
        ((now - origin - offset).as_nanos() / ctx.period.as_nanos()) as u32 + 1
    } else {
        0
    };
    let mut k = first_slot;
    loop {
        let at = origin + offset + ctx.period * k;
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = phase.wait_for(|p| *p != id) => return Some(stream),
        }
        let pid = (k % 65_535 + 1) as u16;
        let rain = ((i as u32 + k) % 50) as f64 / 10.0;
        let payload = format!(
            r#"{{"ts":{},"seq":{k},"values":{{"rainfall":{rain:.1}}}}}"#,
            protocols::time::now_ms()
        );
        out.clear();
        mqtt::publish(&mut out, &topic, 1, pid, payload.as_bytes());
        ctx.publishes[h].fetch_add(1, Relaxed);
        let t = Instant::now();
        let wait = tokio::time::timeout(ctx.ack_timeout, async {
            stream.write_all(&out).await?;
            loop {
                while let Some(p) = mqtt::decode(&mut rbuf)? {
                    if p == Incoming::PubAck(pid) {
                        return Ok::<_, ConnectError>(());
                    }
                }
                if stream.read_buf(&mut rbuf).await? == 0 {
                    return Err(ConnectError::Closed);
                }
            }
        });
        let acked = tokio::select! {
            r = wait => r,
            // The outage cuts the wait short: not a loss.
            _ = phase.wait_for(|p| *p != id) => return Some(stream),
        };
        match acked {
            Ok(Ok(())) => {
                ctx.pubacks[h].fetch_add(1, Relaxed);
                // The first publish pays for the hub's first sight of the connection.
                if k > first_slot {
                    ctx.puback[h].record(t.elapsed());
                }
            }
            Ok(Err(e)) => {
                ctx.lost.fetch_add(1, Relaxed);
                if ctx.lost.load(Relaxed) <= 5 {
                    eprintln!("connections: device {i}: publish failed: {e}");
                }
                return None;
            }
            Err(_) => {
                ctx.lost.fetch_add(1, Relaxed);
                if ctx.lost.load(Relaxed) <= 5 {
                    eprintln!(
                        "connections: device {i}: no PUBACK within {:?}",
                        ctx.ack_timeout
                    );
                }
                return None;
            }
        }
        k += 1;
    }
}

/// Writes the hub.toml, starts the hub and waits until its MQTT port accepts connections.
async fn start_hub(
    a: &BenchArgs,
    registry: usize,
    dir: &Path,
) -> anyhow::Result<(SocketAddr, Child, Option<PathBuf>)> {
    let bin = match &a.hub_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory of this program")?
            .join("hub"),
    };
    ensure!(
        bin.exists(),
        "{}: no hub binary (build it: cargo build --release -p hub, or give --hub-bin)",
        bin.display()
    );
    let mqtt = free_port()?;
    let http = free_port()?;
    let mut cfg = HubConfig::default();
    cfg.hub.data_dir = dir.join("data");
    cfg.hub.mqtt_listen = vec![mqtt.to_string()];
    cfg.hub.http_listen = http.to_string();
    // The hub's capacity for connections is measured, not the per-client quotas.
    cfg.hub.max_messages_per_s = 0;
    cfg.hub.max_bytes_per_s = protocols::config::ByteSize(0);
    cfg.devices = rain_gauges(registry);
    // With TLS the devices reach the hub on its TLS port only, by password over TLS.
    let mut ca_path = None;
    let mut target = mqtt;
    if a.tls {
        let pki = dir.join("tls");
        std::fs::create_dir_all(&pki)?;
        let ca = hub::tls::dev::DevCa::new("bench CA")?;
        ca_path = Some(ca.write(&pki, "ca")?);
        let (crt, key) = ca.server(&["127.0.0.1"])?.write(&pki, "hub")?;
        target = free_port()?;
        cfg.hub.mqtt_tls_listen = vec![target.to_string()];
        cfg.hub.tls_cert = Some(crt);
        cfg.hub.tls_key = Some(key);
    }
    let path = dir.join("hub.toml");
    std::fs::write(&path, toml::to_string(&cfg)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let mut cmd = Command::new(&bin);
    cmd.arg("--config").arg(&path).stdin(Stdio::null());
    if std::env::var_os("RUST_LOG").is_none() {
        // 18,000 connects would otherwise be 18,000 lines.
        cmd.env("RUST_LOG", "warn");
    }
    if let Some(log) = &a.hub_log {
        let f = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
        cmd.stderr(f);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    eprintln!(
        "connections: hub pid {} on {mqtt} ({registry} devices in its registry)",
        child.id()
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the hub exited during start: {status}");
        }
        if TcpStream::connect(target).await.is_ok() {
            return Ok((target, child, ca_path));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the hub did not listen on {mqtt} within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM (the hub closes its store cleanly), SIGKILL after 30 s.
async fn stop_hub(child: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("connections: the hub did not stop within 30 s; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

/// A loopback port free right now.
fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// VmRSS and CPU time of a process, from /proc.
fn proc_sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(ProcSample {
        rss_kb,
        cpu_s: stat_cpu_s(&stat)?,
    })
}

/// utime + stime of a /proc/PID/stat line, seconds.
fn stat_cpu_s(stat: &str) -> Option<f64> {
    // The command name may hold spaces and parentheses: fields count from the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15 (1-based in proc(5)).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Some((utime + stime) as f64 / hz)
}

/// CPU time of this process (the load generator), seconds.
fn self_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| stat_cpu_s(&s))
        .unwrap_or(0.0)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_from_stat_line_with_odd_name() {
        let line = "1234 (hub (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1";
        let hz = rustix::param::clock_ticks_per_second() as f64;
        assert_eq!(stat_cpu_s(line), Some(300.0 / hz));
    }
}
