//! `sim bench tls`: TLS handshakes per second on the hub's MQTT over TLS listener.
//!
//! Starts an embedded hub (data in a temporary directory) with a development PKI (ECDSA P-256
//! keys, [`hub::tls::dev::DevCa`]) and MQTT over TLS on loopback, with `--devices` direct
//! devices registered with a password. `--clients` clients on a runtime of their own each
//! log in over and over for `--duration`, cycling over the devices: TCP connect, TLS handshake,
//! MQTT 3.1.1 CONNECT, CONNACK, DISCONNECT, close. Each client keeps its TLS session cache, so
//! from its second login on it resumes (TLS 1.3 tickets), as a device reconnecting after a
//! cut does; `--full` turns resumption off and every handshake is a full one. With `--cert`
//! the devices log in by client certificate (the hub's `client_ca`) instead of a password.
//!
//! Client and hub share the machine's cores, so the figure is what both sides reach together
//! (a client's handshake costs about as much as the server's).
//!
//! One JSON line on stdout: `logins` (CONNACK 0 received), `logins_per_s`, `resumed` (logins
//! whose handshake was resumed), `failed`, and `login_p50_ms` / `login_p99_ms` from TCP
//! connect to CONNACK.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hub::tls::dev::{ClientName, DevCa};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::connections_bench::{client_config, device_id, rain_gauges, secret};
use crate::load::stats::Histogram;

/// Arguments of `sim bench tls`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Clients logging in at once.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Devices in the hub's registry the clients log in as.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// No session resumption: every handshake is a full one.
    #[arg(long)]
    pub full: bool,
    /// Log in by client certificate instead of password (one certificate per client).
    #[arg(long)]
    pub cert: bool,
    /// Worker threads of the clients' runtime.
    #[arg(long, default_value_t = 1)]
    pub load_threads: usize,
}

/// What the clients count.
#[derive(Default)]
struct Counts {
    logins: AtomicU64,
    resumed: AtomicU64,
    failed: AtomicU64,
    latency: Histogram,
}

/// Runs the benchmark and prints its JSON line.
pub async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    ensure!(
        a.clients > 0 && a.devices >= a.clients,
        "--clients must be at least 1 and --devices at least --clients"
    );
    let dir = tempfile::Builder::new()
        .prefix("sim-bench-tls-")
        .tempdir()?;
    let pki = dir.path().join("tls");
    std::fs::create_dir_all(&pki)?;
    let ca = DevCa::new("bench CA")?;
    let ca_path = ca.write(&pki, "ca")?;
    let (crt, key) = ca.server(&["127.0.0.1"])?.write(&pki, "hub")?;

    let mut cfg = hub::config::HubConfig::default();
    cfg.hub.data_dir = dir.path().join("hub");
    cfg.hub.mqtt_listen = vec!["127.0.0.1:0".into()];
    cfg.hub.http_listen = "127.0.0.1:0".into();
    // The engine's capacity is measured, not the per-client quota (hub.toml's defaults
    // would hold a few fast connections to 5,000 publishes/s each).
    cfg.hub.max_messages_per_s = 0;
    cfg.hub.max_bytes_per_s = protocols::config::ByteSize(0);
    cfg.hub.mqtt_tls_listen = vec!["127.0.0.1:0".into()];
    cfg.hub.tls_cert = Some(crt);
    cfg.hub.tls_key = Some(key);
    cfg.hub.client_ca = Some(ca_path.clone());
    cfg.devices = rain_gauges(a.devices);
    let server = hub::server::Server::start(cfg)
        .await
        .context("starting the embedded hub")?;
    let addr = server.mqtt_tls_addrs()[0];

    // One client config per client: each has its own session cache, as separate devices do.
    let configs = (0..a.clients)
        .map(|c| {
            let cert = if a.cert {
                let k = ca.client(&device_id(c), ClientName::Uri)?;
                Some(k.write(&pki, &format!("client-{c}"))?)
            } else {
                None
            };
            client_config(&ca_path, cert.as_ref(), if a.full { 0 } else { 256 })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.load_threads.max(1))
        .thread_name("tls-clients")
        .enable_all()
        .build()
        .context("starting the clients' runtime")?;
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = configs
        .into_iter()
        .enumerate()
        .map(|(c, config)| {
            let (counts, stop) = (counts.clone(), stop.clone());
            let (devices, clients, cert) = (a.devices, a.clients, a.cert);
            runtime.spawn(async move {
                let connector = tokio_rustls::TlsConnector::from(config);
                // Each client logs in as devices of its own (c, c + clients, ...): two clients
                // with one id would take each other's session over.
                let own = (devices / clients).max(1);
                let mut k = 0;
                while !stop.load(Relaxed) {
                    // A client with a certificate is always the device its certificate names.
                    let device = if cert { c } else { c + (k % own) * clients };
                    k += 1;
                    let t = Instant::now();
                    match login(&connector, addr, device, cert).await {
                        Ok(resumed) => {
                            counts.latency.record(t.elapsed());
                            counts.logins.fetch_add(1, Relaxed);
                            if resumed {
                                counts.resumed.fetch_add(1, Relaxed);
                            }
                        }
                        Err(e) => {
                            if counts.failed.fetch_add(1, Relaxed) < 5 {
                                eprintln!("sim bench tls: login failed: {e:#}");
                            }
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(a.duration).await;
    stop.store(true, Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    runtime.shutdown_background();
    let logins = counts.logins.load(Relaxed);
    let line = serde_json::json!({
        "bench": "tls",
        "clients": a.clients,
        "devices": a.devices,
        "resumption": !a.full,
        "login": if a.cert { "certificate" } else { "password" },
        "logins": logins,
        "logins_per_s": (logins as f64 / elapsed).round(),
        "resumed": counts.resumed.load(Relaxed),
        "failed": counts.failed.load(Relaxed),
        "login_p50_ms": counts.latency.quantile_ms(0.5),
        "login_p99_ms": counts.latency.quantile_ms(0.99),
    });
    println!("{line}");
    server.shutdown().await?;
    ensure!(logins > 0, "no client logged in");
    Ok(())
}

/// One login; whether its handshake was resumed.
async fn login(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    device: usize,
    by_cert: bool,
) -> anyhow::Result<bool> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let id = device_id(device);
    let password = (!by_cert).then(|| secret(device));
    tls.write_all(&connect_packet(&id, password.as_deref()))
        .await?;
    let mut connack = [0u8; 4];
    tls.read_exact(&mut connack).await?;
    ensure!(
        connack[0] == 0x20 && connack[3] == 0,
        "CONNACK {connack:02x?}"
    );
    // DISCONNECT, then close_notify: a clean end, no will.
    tls.write_all(&[0xe0, 0x00]).await?;
    tls.shutdown().await?;
    Ok(resumed)
}

/// An MQTT 3.1.1 CONNECT, clean session, keep alive 60 s, user name = id.
fn connect_packet(id: &str, password: Option<&str>) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(b"\x00\x04MQTT\x04");
    let flags = 0x02 | 0x80 | if password.is_some() { 0x40 } else { 0 };
    body.push(flags);
    body.extend_from_slice(&60u16.to_be_bytes());
    for field in [Some(id), Some(id), password].into_iter().flatten() {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    let mut out = vec![0x10];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
    out
}
