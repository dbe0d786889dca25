//! `sim bench ingest`: readings through the whole hub (or a plain broker), with feed latency.
//!
//! By default it starts an embedded hub (the same [`hub::server::Server`] the `hub` binary
//! runs, data in a temporary directory), drives it with the load generator
//! ([`crate::load`]) and ends with one JSON line on stdout:
//! `{"readings_per_s":..,"msgs_per_s":..,"p50_ms":..,"p99_ms":..,"sent":..,"stored":..,"lost":..}`
//! plus details. Progress and the hub's logs go to stderr.
//!
//! - `readings_per_s`, `msgs_per_s`: readings and batches stored, divided by the time from the
//!   first send until the last batch was acknowledged (the drain included).
//! - `p50_ms`, `p99_ms`: from the first send of a batch to the arrival of each of its feed
//!   messages at an app subscribed to `v1/feeds/#` (relay mode: to the arrival of the batch at
//!   the subscriber).
//! - `sent`: readings sent (first sends; redeliveries are not counted again); `stored`: readings
//!   in the store (embedded hub), acknowledged by the hub (`--target`), or received by the
//!   subscriber (`--relay-only`); `lost = sent - stored` after the drain.
//!
//! Targets: none (embedded hub); `mqtt://HOST:PORT` (a running hub: its hub.toml must hold the
//! load's agents, see `--write-config` / `--hub-config`); `null` (a built-in null sink that only
//! acknowledges: the generator's own ceiling); with `--relay-only`, any broker (e.g. mosquitto):
//! the same batches go to a plain subscriber of `v1/agents/+/batch`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hub::config::HubConfig;
use series_store::{Agg, Query, SeriesId, SeriesStore};

use crate::load::plan::{FleetPlan, ProbeApp};
use crate::load::{
    AckMode, Load, LoadOptions, ProbeKind, ProbeSpec, fresh_stream, null_sink::NullSink,
    readings_per_batch,
};

/// Arguments of `sim bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to measure.
    #[command(subcommand)]
    pub what: What,
}

/// The benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Readings per second through the whole hub, feed latency, nothing lost.
    Ingest(Box<IngestArgs>),
    /// HJ 212 real-time uploads per second through the whole hub, acknowledgement latency.
    Hj212(crate::hj212_station::BenchArgs),
    /// Sparkplug B DDATA per second from edge nodes through the whole hub, stored latency.
    Sparkplug(crate::sparkplug_bench::BenchArgs),
    /// TLS logins per second on the MQTT over TLS listener, full and resumed handshakes.
    Tls(crate::tls_bench::BenchArgs),
    /// Many direct devices, one connection each: connect and reconnect storms, PUBACK latency,
    /// memory per connection, against a hub started as its own process.
    Connections(crate::connections_bench::BenchArgs),
}

/// Arguments of `sim bench ingest`.
#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// `mqtt://HOST:PORT` of a running hub (or, with --relay-only, any broker); `null` for a
    /// built-in null sink. Without it, an embedded hub is started.
    #[arg(long)]
    pub target: Option<String>,
    /// Measure plain publish-to-subscriber relay of the same batches through the target broker.
    #[arg(long)]
    pub relay_only: bool,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Simulated agents (one MQTT connection each).
    #[arg(long, default_value_t = 64)]
    pub agents: usize,
    /// Devices behind each agent.
    #[arg(long, default_value_t = 100)]
    pub devices_per_agent: usize,
    /// Devices in each batch (round-robin over the agent's devices).
    #[arg(long, default_value_t = 20)]
    pub devices_per_batch: usize,
    /// Polls of each device in each batch.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Target readings per second in total; as fast as the hub acknowledges when absent.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Unacknowledged batches per agent.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// An agent sends a batch again when unacknowledged this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub ack_timeout: Duration,
    /// Longest wait for the last acknowledgements after sending stops.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    pub load_threads: usize,
    /// Read agents, devices and the probe app from this hub.toml (for --target) instead of
    /// generating them.
    #[arg(long, value_name = "FILE")]
    pub hub_config: Option<PathBuf>,
    /// Write the generated hub.toml here (load it into the hub given by --target).
    #[arg(long, value_name = "FILE")]
    pub write_config: Option<PathBuf>,
    /// Data directory of the embedded hub (a temporary one by default).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Seeds the generated secrets.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Embedded hub: count every stored series' points afterwards and compare with `stored`.
    #[arg(long)]
    pub verify: bool,
    /// Batches first sent in this first stretch (agents connecting) are left out of `p50_ms`
    /// and `p99_ms`; `p50_all_ms` and `p99_all_ms` count everything. `0s` counts all.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Embedded: N hubs in cluster mode (N >= 2) on three nats-server nodes and a PostgreSQL
    /// started here (scripts/setup-peers.sh), the agents spread over the hubs, the probe on
    /// hub 1. `stored` is counted in PostgreSQL; `ack_*` is then "in PostgreSQL".
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(2..=16))]
    pub cluster: Option<u16>,
}

/// Waits until every hub at `https` holds its share of the partitions and together they hold
/// all `partitions` (each hub's `hub_cluster_partitions_owned`), at most a minute.
async fn leases_settled(https: &[std::net::SocketAddr], partitions: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut owned = Vec::with_capacity(https.len());
        for h in https {
            let text = metrics_page(*h).await.unwrap_or_default();
            let n: u64 = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("hub_cluster_partitions_owned ")?
                        .trim()
                        .parse()
                        .ok()
                })
                .unwrap_or(0);
            owned.push(n);
        }
        // A hub holds at most its share ceil(P / hubs): beyond it, it still has to hand over.
        let share = partitions.div_ceil(https.len().max(1) as u64);
        if owned.iter().all(|n| *n > 0 && *n <= share) && owned.iter().sum::<u64>() == partitions {
            eprintln!("bench: leases settled {owned:?}");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the hubs' leases did not settle within a minute: {owned:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A hub's `/metrics` page (plain HTTP/1.0, read to the end).
async fn metrics_page(http: std::net::SocketAddr) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(http).await?;
    c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await?;
    let mut body = String::new();
    c.read_to_string(&mut body).await?;
    Ok(body)
}

/// The engines and hubs of `--cluster`.
struct Cluster {
    /// Hubs 2..N (hub 1 is the bench's `server`).
    peers: Vec<hub::server::Server>,
    engines: Option<engines::Engines>,
}

impl Cluster {
    /// Stops the hubs, then the engines.
    async fn stop(mut self) -> anyhow::Result<()> {
        for s in self.peers.drain(..) {
            s.shutdown().await.context("stopping a hub")?;
        }
        if let Some(e) = self.engines.take() {
            tokio::task::spawn_blocking(move || drop(e)).await?;
        }
        Ok(())
    }
}

/// Runs a benchmark.
pub async fn run(args: Args) -> anyhow::Result<()> {
    match args.what {
        What::Ingest(a) => ingest(*a).await,
        What::Hj212(a) => crate::hj212_station::bench(a).await,
        What::Sparkplug(a) => crate::sparkplug_bench::bench(a).await,
        What::Tls(a) => crate::tls_bench::bench(a).await,
        What::Connections(a) => crate::connections_bench::bench(a).await,
    }
}

/// The probe app of a generated plan.
pub fn probe_app(seed: u64) -> ProbeApp {
    ProbeApp {
        id: "bench-feeds".into(),
        secret: format!(
            "feeds-{:016x}",
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5eed
        ),
    }
}

/// `mqtt://HOST:PORT` or `HOST:PORT` to `HOST:PORT`.
pub fn host_port(target: &str) -> anyhow::Result<String> {
    let t = target.strip_prefix("mqtt://").unwrap_or(target);
    if t.contains("://") || !t.contains(':') {
        bail!("`{target}`: expected mqtt://HOST:PORT");
    }
    Ok(t.to_string())
}

enum Mode {
    Embedded,
    External,
    Null,
    Relay,
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::Embedded => "embedded-hub",
            Mode::External => "hub",
            Mode::Null => "null-sink",
            Mode::Relay => "relay",
        }
    }
}

/// A probe app with a plain secret and a grant covering every feed, from a hub.toml.
fn feed_app(cfg: &HubConfig) -> Option<ProbeApp> {
    cfg.apps
        .iter()
        .find(|a| {
            a.secret.is_some()
                && a.grants
                    .iter()
                    .any(|g| g == "#" || g == "feeds/#" || g == "v1/feeds/#")
        })
        .map(|a| ProbeApp {
            id: a.id.clone(),
            secret: a.secret.clone().unwrap_or_default(),
        })
}

async fn ingest(a: IngestArgs) -> anyhow::Result<()> {
    if a.agents == 0 || a.devices_per_agent == 0 {
        bail!("--agents and --devices-per-agent must be at least 1");
    }
    let mode = match (&a.target, a.relay_only) {
        (None, true) => bail!("--relay-only needs --target mqtt://HOST:PORT of the broker"),
        (Some(_), true) => Mode::Relay,
        (Some(t), false) if t == "null" => Mode::Null,
        (Some(_), false) => Mode::External,
        (None, false) => Mode::Embedded,
    };
    let (plan, probe) = match &a.hub_config {
        Some(path) => {
            let cfg = HubConfig::load(path).with_context(|| format!("{}", path.display()))?;
            (FleetPlan::from_hub_config(&cfg)?, feed_app(&cfg))
        }
        None => (
            FleetPlan::generate(a.agents, a.devices_per_agent, a.seed),
            Some(probe_app(a.seed)),
        ),
    };
    let probe_for_config = probe.clone().unwrap_or_else(|| probe_app(a.seed));
    if let Some(path) = &a.write_config {
        let text = toml::to_string(&plan.hub_config(&probe_for_config))?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }

    // The system under test.
    let mut tmp = None;
    let mut server = None;
    let mut sink = None;
    let mut cluster: Option<Cluster> = None;
    let mut spread = Vec::new();
    if a.cluster.is_some() && !matches!(mode, Mode::Embedded) {
        bail!("--cluster starts its own hubs: leave out --target and --relay-only");
    }
    let target = match mode {
        Mode::Embedded => {
            let dir = match &a.data_dir {
                Some(d) => d.clone(),
                None => {
                    let t = tempfile::Builder::new().prefix("sim-bench-").tempdir()?;
                    let p = t.path().to_path_buf();
                    tmp = Some(t);
                    p
                }
            };
            let mut cfg = plan.hub_config(&probe_for_config);
            cfg.hub.data_dir = dir;
            cfg.hub.mqtt_listen = vec!["127.0.0.1:0".into()];
            cfg.hub.http_listen = "127.0.0.1:0".into();
            // The engine's capacity is measured, not the per-client quota (hub.toml's defaults
            // would hold a few fast connections to 5,000 publishes/s each).
            cfg.hub.max_messages_per_s = 0;
            cfg.hub.max_bytes_per_s = protocols::config::ByteSize(0);
            if let Some(n) = a.cluster {
                let started = tokio::task::spawn_blocking(|| engines::Engines::start(3))
                    .await?
                    .context("starting nats-server and PostgreSQL (scripts/setup-peers.sh)")?;
                let mut c = Cluster {
                    peers: Vec::new(),
                    engines: Some(started),
                };
                for i in 1..=n {
                    let mut cfg = cfg.clone();
                    cfg.hub.data_dir = cfg.hub.data_dir.join(format!("hub-{i}"));
                    std::fs::create_dir_all(&cfg.hub.data_dir)?;
                    if let Some(engines::Engines { nats, pg }) = &c.engines {
                        cfg.cluster = Some(hub::config::ClusterSettings {
                            node: format!("hub-{i}"),
                            nats: nats.urls(),
                            postgres: pg.url(),
                            partitions: 64,
                            lease: protocols::config::HumanDuration(Duration::from_secs(6)),
                            replicas: 3,
                        });
                    }
                    let s = match hub::server::Server::start(cfg).await {
                        Ok(s) => s,
                        Err(e) => {
                            if let Some(first) = server.take() {
                                c.peers.push(first);
                            }
                            c.stop().await?;
                            return Err(e).context(format!("starting hub-{i}"));
                        }
                    };
                    let addr = s
                        .mqtt_addrs()
                        .first()
                        .ok_or_else(|| anyhow::anyhow!("hub-{i} has no MQTT listener"))?
                        .to_string();
                    spread.push(addr);
                    if server.is_none() {
                        server = Some(s);
                    } else {
                        c.peers.push(s);
                    }
                }
                // Measure the cluster at work, not its first hand-overs: the hubs start one
                // after another, and the first takes every partition until the others join.
                let mut https: Vec<std::net::SocketAddr> =
                    c.peers.iter().map(|p| p.http_addr()).collect();
                if let Some(s) = &server {
                    https.push(s.http_addr());
                }
                cluster = Some(c);
                leases_settled(&https, 64).await?;
                spread[0].clone()
            } else {
                let s = hub::server::Server::start(cfg)
                    .await
                    .context("starting the embedded hub")?;
                let addr = s.mqtt_addrs()[0].to_string();
                server = Some(s);
                addr
            }
        }
        Mode::Null => {
            let s = NullSink::start("127.0.0.1:0").await?;
            let addr = s.addr().to_string();
            sink = Some(s);
            addr
        }
        Mode::External | Mode::Relay => host_port(a.target.as_deref().unwrap_or_default())?,
    };

    let mut opts = LoadOptions::new(&target);
    opts.threads = a.load_threads;
    opts.warmup = a.warmup;
    opts.settings.devices_per_batch = a.devices_per_batch;
    opts.settings.samples_per_device = a.samples;
    opts.settings.window = a.window.max(1);
    opts.settings.ack_timeout = a.ack_timeout;
    opts.settings.stream = fresh_stream();
    opts.settings.spread = spread;
    if matches!(mode, Mode::Relay) {
        opts.settings.ack = AckMode::PubAck;
    }
    let per_batch = readings_per_batch(&plan, &opts.settings);
    if let Some(rate) = a.rate {
        if rate <= 0.0 {
            bail!("--rate must be positive");
        }
        let batches_per_agent = rate / per_batch / plan.agents.len() as f64;
        opts.settings.batch_interval = Some(Duration::from_secs_f64(1.0 / batches_per_agent));
    }
    opts.probe = match mode {
        Mode::Embedded | Mode::External => probe.as_ref().map(|p| ProbeSpec {
            kind: ProbeKind::Feeds,
            client_id: p.id.clone(),
            credentials: Some((p.id.clone(), p.secret.clone())),
        }),
        Mode::Relay => Some(ProbeSpec {
            kind: ProbeKind::Relay,
            client_id: "bench-relay-subscriber".into(),
            credentials: None,
        }),
        Mode::Null => None,
    };
    if opts.probe.is_none() && !matches!(mode, Mode::Null) {
        eprintln!(
            "bench: no app with a plain secret and a feeds/# grant in the hub config: latency is \
             measured to the acknowledgement instead of the feed"
        );
    }
    eprintln!(
        "bench: {} against {target}: {} agents, {} devices, {:.0} readings per batch, {}",
        mode.name(),
        plan.agents.len(),
        plan.device_count(),
        per_batch,
        match a.rate {
            Some(r) => format!("{r:.0} readings/s"),
            None => "as fast as acknowledged".into(),
        }
    );

    let mut load = Load::start(&plan, opts).await?;
    let t0 = load.started();
    let mut last = (0u64, Instant::now());
    while t0.elapsed() < a.duration {
        let left = a.duration.saturating_sub(t0.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        let c = load.counters();
        let done = if matches!(mode, Mode::Relay) {
            c.probe_readings
        } else {
            c.readings_acked
        };
        let dt = last.1.elapsed().as_secs_f64();
        let (r50, r99, rmax) = load.take_recent();
        eprintln!(
            "bench: t={:>5.1}s {:>10.0} readings/s {}, latency p50 {r50:.2} p99 {r99:.2} max {rmax:.2} ms, {} resent, {} window stalls",
            t0.elapsed().as_secs_f64(),
            (done - last.0) as f64 / dt.max(1e-9),
            if matches!(mode, Mode::Relay) {
                "relayed"
            } else {
                "acknowledged"
            },
            c.resent,
            c.window_stalls,
        );
        last = (done, Instant::now());
    }
    let sending_s = t0.elapsed().as_secs_f64();
    let drained = load.drain(a.drain).await;
    let mut end = Instant::now();
    if !drained {
        eprintln!(
            "bench: not everything was acknowledged within {:?}",
            a.drain
        );
    }
    let c = load.counters();
    let expected_probe = match mode {
        Mode::Relay => c.batches_sent,
        _ => c.groups_sent,
    };
    if !matches!(mode, Mode::Null) {
        load.settle_probe(expected_probe, Duration::from_secs(2))
            .await;
        if matches!(mode, Mode::Relay) {
            end = Instant::now();
        }
    }
    let elapsed = end.duration_since(t0).as_secs_f64();
    let c = load.counters();

    let mut verified = None;
    // The hub's own part of the feed latency (arrival to feeds out), as bucket bounds.
    let hub_pipeline = server.as_ref().map(|s| {
        let m = s.metrics();
        let ms = |h: &hub::metrics::Histogram, q| h.quantile_bound(q).map(|b| b * 1000.0);
        (
            ms(&m.pipeline_latency, 0.5),
            ms(&m.pipeline_latency, 0.99),
            ms(&m.append_latency, 0.99),
        )
    });
    let stored = match (&mode, &server) {
        (Mode::Embedded, Some(s)) if s.shared_store().is_some() => {
            let pg = s
                .shared_store()
                .ok_or_else(|| anyhow::anyhow!("the shared store"))?
                .clone();
            let st = pg.storage().await?;
            if a.verify {
                let plan = plan.clone();
                verified = Some(
                    tokio::task::spawn_blocking(move || count_points(pg.as_ref(), &plan)).await??,
                );
            }
            (st.chunk_points + st.head_rows).max(0) as u64
        }
        (Mode::Embedded, Some(s)) => {
            let stats = s
                .local_store()
                .ok_or_else(|| anyhow::anyhow!("a local store"))?
                .stats()?;
            if a.verify {
                verified = Some(count_points(
                    s.local_store()
                        .ok_or_else(|| anyhow::anyhow!("a local store"))?
                        .as_ref(),
                    &plan,
                )?);
            }
            stats.points_appended
        }
        (Mode::Relay, _) => c.probe_readings,
        _ => c.readings_acked,
    };
    let stored_batches = match mode {
        Mode::Relay => c.probe_messages,
        _ => c.batches_acked,
    };
    // Headline figures after the warm-up; the overall ones beside them.
    let (all, steady, latency_of) = if load.probe_latency().count() > 0 {
        (
            load.probe_latency(),
            load.probe_steady(),
            if matches!(mode, Mode::Relay) {
                "relayed_batch"
            } else {
                "feed"
            },
        )
    } else {
        (load.ack_latency(), load.ack_steady(), "ack")
    };
    let (p50_all, p99_all, pmax) = (all.quantile_ms(0.5), all.quantile_ms(0.99), all.max_ms());
    let steady = if steady.count() > 0 {
        steady
    } else {
        eprintln!("bench: nothing was sent after the warm-up; p50/p99 count everything");
        all
    };
    let (p50, p99) = (steady.quantile_ms(0.5), steady.quantile_ms(0.99));
    let ack = match load.ack_steady() {
        h if h.count() > 0 => h,
        _ => load.ack_latency(),
    };
    let (ack_p50, ack_p99) = (ack.quantile_ms(0.5), ack.quantile_ms(0.99));
    let puback = load.puback_steady();
    let puback_ms = (puback.count() > 0).then(|| {
        (
            round3(puback.quantile_ms(0.5)),
            round3(puback.quantile_ms(0.99)),
        )
    });
    load.stop().await;
    if let Some(s) = server.take() {
        s.shutdown().await.context("stopping the embedded hub")?;
    }
    if let Some(c) = cluster.take() {
        c.stop().await?;
    }
    drop(sink);
    drop(tmp);

    let lost = c.readings_sent as i64 - stored as i64;
    // The contract's fields first, in its order; details after.
    let mut details = serde_json::json!({
        "mode": mode.name(),
        "latency_of": latency_of,
        "warmup_s": a.warmup.as_secs_f64(),
        "p50_all_ms": round3(p50_all),
        "p99_all_ms": round3(p99_all),
        "max_ms": round3(pmax),
        "ack_p50_ms": round3(ack_p50),
        "ack_p99_ms": round3(ack_p99),
        "rate_target": a.rate,
        "sending_s": round3(sending_s),
        "elapsed_s": round3(elapsed),
        "agents": plan.agents.len(),
        "devices": plan.device_count(),
        "readings_per_batch": (per_batch * 10.0).round() / 10.0,
        "batches_sent": c.batches_sent,
        "batches_acked": c.batches_acked,
        "probe_messages": c.probe_messages,
        "probe_expected": expected_probe,
        "resent": c.resent,
        "reconnects": c.reconnects,
        "window_stalls": c.window_stalls,
    });
    if let Some(v) = verified {
        details["verified_points"] = v.into();
    }
    if let Some((p50, p99)) = puback_ms {
        details["puback_p50_ms"] = p50.into();
        details["puback_p99_ms"] = p99.into();
    }
    if let Some(n) = a.cluster {
        details["hubs"] = n.into();
        // The hub acknowledges a batch once it is in PostgreSQL.
        details["stored_ack_p50_ms"] = round3(ack_p50).into();
        details["stored_ack_p99_ms"] = round3(ack_p99).into();
    }
    if let Some((p50, p99, append_p99)) = hub_pipeline {
        details["hub_pipeline_p50_le_ms"] = p50.into();
        details["hub_pipeline_p99_le_ms"] = p99.into();
        details["hub_store_append_p99_le_ms"] = append_p99.into();
    }
    let details = details.to_string();
    println!(
        "{{\"readings_per_s\":{},\"msgs_per_s\":{},\"p50_ms\":{},\"p99_ms\":{},\"sent\":{},\"stored\":{},\"lost\":{},{}",
        (stored as f64 / elapsed).round(),
        (stored_batches as f64 / elapsed).round(),
        round3(p50),
        round3(p99),
        c.readings_sent,
        stored,
        lost,
        &details[1..]
    );
    if lost != 0 {
        bail!("{lost} readings sent but not stored");
    }
    if let Some(v) = verified
        && v != stored
    {
        bail!("the store's series hold {v} points, the store counted {stored}");
    }
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Every point of every series of the plan, counted by querying the store.
fn count_points(store: &impl SeriesStore, plan: &FleetPlan) -> anyhow::Result<u64> {
    let mut n = 0u64;
    for a in &plan.agents {
        for d in &a.devices {
            for q in d.kind.quantities() {
                let r = store.query(&Query {
                    series: SeriesId {
                        device: Arc::clone(&d.id),
                        quantity: *q,
                    },
                    from_ms: 0,
                    to_ms: i64::MAX,
                    step_ms: Some(i64::MAX / 2),
                    agg: Agg::Count,
                })?;
                n += r.iter().map(|(_, c)| *c as u64).sum::<u64>();
            }
        }
    }
    Ok(n)
}
