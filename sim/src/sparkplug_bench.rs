//! `sim bench sparkplug`: Sparkplug B edge nodes through the whole hub.
//!
//! Starts an embedded hub (data in a temporary directory) with `--nodes` edge nodes registered
//! as agents with `protocol = "sparkplug"`, each with `--devices` devices of `--metrics`
//! metrics (`Value/0000`, ...), every metric mapped in `[[sparkplug_metrics]]` to a quantity of
//! its own (the store keeps one series per device and quantity). Each node is one MQTT 3.1.1
//! connection of the load generator's lean client ([`crate::load::mqtt`], the same client as
//! `sim bench ingest`'s agents) on a runtime of its own. It publishes its NBIRTH (`seq` 0,
//! `bdSeq`) and a DBIRTH per device; once every node is born and every device is online on
//! `v1/status/{id}`, each node publishes DDATA by alias for `--duration`, cycling over its
//! devices, every message with the node's next `seq` in order on its one connection, with
//! `--window` messages in flight.
//!
//! Sparkplug B says QoS 0 for data. The benchmark publishes at QoS 1 because the hub sends a
//! PUBACK only once the message's readings are stored durably: PUBACK latency is stored
//! latency.
//!
//! One JSON line on stdout: `messages` (DDATA acknowledged), `messages_per_s` and
//! `readings_per_s` over the time from the start of sending to the last PUBACK, `puback_p50_ms`
//! and `puback_p99_ms` over every DDATA, `rebirth_requests` (the hub's
//! `hub_sparkplug_rebirth_requests`), `dead_letters`, and `points_expected` / `points_stored`:
//! every series of every device counted in the store afterwards (its birth's point and one per
//! acknowledged DDATA), one of them also read back through `/api/v1/series`. It fails when a
//! reading is missing, when the hub asked for a rebirth, or when anything went to the dead
//! letters. With `--feeds` an app also subscribes to `v1/feeds/#`, as `sim bench ingest`'s
//! measuring subscriber does, and `feeds_received` counts what it got (one feed per DBIRTH and
//! per DDATA; QoS 0, so a full outbox may drop some). `clock_waits` counts the times a node
//! waited rather than stamp the future (more than one message per device and millisecond for
//! longer than the 2-minute backdating allows).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::BytesMut;
use hub::config::{AgentConfig, AgentProtocol, AppConfig, DeviceConfig, SparkplugMetricConfig};
use protocols::Quantity;
use protocols::sparkplug::{EdgeTopic, MessageType, MetricValue};
use series_store::{Agg, Query, SeriesId, SeriesStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::load::mqtt::{self, Incoming};
use crate::load::stats::Histogram;
use crate::sparkplug_node::{
    FIRST_DEVICE_ALIAS, MetricDef, dbirth_payload, ddata_payload, nbirth_payload, numbered_metrics,
};

/// The Sparkplug group of every benchmark node.
const GROUP: &str = "Bench";
/// The app that watches presence and reads the series back.
const APP: (&str, &str) = ("bench-sparkplug", "bench-sparkplug-secret");
/// Births are stamped this far in the past and data from there on, a millisecond apart per
/// device at least: a node sending faster than one message per device and millisecond runs
/// ahead of the clock, and this is its margin before it would stamp the future.
const BACKDATE_MS: i64 = 120_000;
/// Longest wait for a connection, and for the births to be taken in.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BIRTH_TIMEOUT: Duration = Duration::from_secs(60);
/// The broker's in-flight limit per connection (`mqtt_broker::Config::max_inflight_in`).
const MAX_WINDOW: usize = 256;

/// What metric `Value/{i}` measures: quantity, the unit the node reports in, a typical value
/// and how far it swings, so every stored value is plausible for its quantity.
const METRICS: &[(&str, &str, f64, f64)] = &[
    ("water_level", "m", 2.0, 0.5),
    ("water_flow", "m3/h", 90.0, 30.0),
    ("pump_speed", "%", 80.0, 10.0),
    ("water_pressure", "bar", 1.5, 0.3),
    ("turbidity", "NTU", 12.0, 4.0),
    ("ph", "1", 7.4, 0.2),
    ("dissolved_oxygen", "mg/L", 8.0, 1.0),
    ("conductivity", "uS/cm", 450.0, 30.0),
    ("water_temperature", "Cel", 18.0, 1.0),
    ("ammonia_nitrogen", "mg/L", 0.5, 0.2),
    ("cod", "mg/L", 15.0, 5.0),
    ("permanganate_index", "mg/L", 3.0, 1.0),
    ("total_phosphorus", "mg/L", 0.1, 0.05),
    ("total_nitrogen", "mg/L", 1.2, 0.3),
    ("air_temperature", "Cel", 20.0, 5.0),
    ("relative_humidity", "%", 60.0, 10.0),
    ("wind_speed", "m/s", 3.0, 2.0),
    ("air_pressure", "hPa", 1013.0, 5.0),
    ("battery_level", "%", 90.0, 5.0),
];

/// Arguments of `sim bench sparkplug`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Edge nodes, one MQTT connection each.
    #[arg(long, default_value_t = 64)]
    pub nodes: usize,
    /// Devices behind each node (its DDATA messages take them in turn).
    #[arg(long, default_value_t = 2)]
    pub devices: usize,
    /// Metrics of each device: the readings in one DDATA message (at most 19).
    #[arg(long, default_value_t = 10)]
    pub metrics: usize,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unacknowledged DDATA messages per node.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Longest wait for the last PUBACKs after sending stops.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Threads of the nodes' runtime.
    #[arg(long, default_value_t = 1)]
    pub load_threads: usize,
    /// Also subscribe an app to `v1/feeds/#` (QoS 0) and count the feeds, as `sim bench
    /// ingest`'s measuring subscriber does: the hub then also fans every message out.
    #[arg(long)]
    pub feeds: bool,
}

/// One device of a node as the node publishes it.
struct DevicePlan {
    id: String,
    defs: Vec<MetricDef>,
    dbirth_topic: String,
    ddata_topic: String,
}

/// One edge node.
struct NodePlan {
    id: String,
    secret: String,
    nbirth_topic: String,
    ncmd_topic: String,
    devices: Vec<DevicePlan>,
}

impl NodePlan {
    fn new(i: usize, devices: usize, metrics: usize) -> anyhow::Result<NodePlan> {
        let id = format!("SPB-N{i:04}");
        let topic = |kind, device: Option<&str>| -> anyhow::Result<String> {
            Ok(EdgeTopic::new(GROUP, kind, &id, device)?.to_topic())
        };
        let devices = (0..devices)
            .map(|j| {
                let dev = format!("{id}-D{j:02}");
                Ok(DevicePlan {
                    // Aliases are unique across the node and all its devices.
                    defs: numbered_metrics(metrics, FIRST_DEVICE_ALIAS + (j * metrics) as u64),
                    dbirth_topic: topic(MessageType::DBirth, Some(&dev))?,
                    ddata_topic: topic(MessageType::DData, Some(&dev))?,
                    id: dev,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(NodePlan {
            secret: format!("spbench-{i:04}-secret"),
            nbirth_topic: topic(MessageType::NBirth, None)?,
            ncmd_topic: topic(MessageType::NCmd, None)?,
            devices,
            id,
        })
    }
}

/// The values of message `k` of device `j`: each metric near its quantity's typical value.
fn values(defs: &[MetricDef], k: u64, j: usize) -> impl Iterator<Item = (&MetricDef, MetricValue)> {
    defs.iter().enumerate().map(move |(m, d)| {
        let (_, _, typical, swing) = METRICS[m];
        let v = typical + swing * (k as f64 * 0.05 + (m + j) as f64).sin();
        (d, MetricValue::Double((v * 1000.0).round() / 1000.0))
    })
}

/// The hub's configuration: the nodes as Sparkplug agents, their devices, the metric map and
/// the watching app.
fn hub_config(plans: &[NodePlan], metrics: usize) -> hub::config::HubConfig {
    let mut cfg = hub::config::HubConfig::default();
    for p in plans {
        cfg.agents.push(AgentConfig {
            id: p.id.clone(),
            secret: Some(p.secret.clone()),
            protocol: AgentProtocol::Sparkplug,
            ..AgentConfig::default()
        });
        for d in &p.devices {
            cfg.devices.push(DeviceConfig {
                id: d.id.clone(),
                kind: "pump_station".into(),
                agent: Some(p.id.clone()),
                ..DeviceConfig::default()
            });
        }
    }
    for (def, (quantity, unit, _, _)) in numbered_metrics(metrics, 0).iter().zip(METRICS) {
        cfg.sparkplug_metrics.push(SparkplugMetricConfig {
            name: def.name.clone(),
            quantity: (*quantity).into(),
            unit: Some((*unit).into()),
        });
    }
    cfg.apps.push(AppConfig {
        id: APP.0.into(),
        secret: Some(APP.1.into()),
        grants: vec!["status/#".into(), "feeds/#".into()],
        ..AppConfig::default()
    });
    cfg
}

/// What the nodes share with the benchmark.
#[derive(Default)]
struct Shared {
    /// Nodes whose births were acknowledged.
    born: AtomicUsize,
    /// DDATA messages sent and acknowledged.
    sent: AtomicU64,
    acked: AtomicU64,
    /// From a DDATA's send to its PUBACK.
    latency: Histogram,
    /// Feed messages the feeds app received.
    feeds: AtomicU64,
}

/// What one node saw.
struct NodeReport {
    /// DDATA messages acknowledged, per device.
    acked: Vec<u64>,
    /// NCMD messages received (the hub's rebirth requests).
    ncmds: u64,
    /// Times the next message would have been stamped in the future and had to wait.
    clock_waits: u64,
}

/// How every node behaves.
#[derive(Clone, Copy)]
struct NodeSettings {
    window: usize,
    drain: Duration,
    /// The births' timestamp; data is stamped after it.
    base_ms: i64,
}

fn next_pid(pid: &mut u16) -> u16 {
    *pid = pid.checked_add(1).unwrap_or(1);
    *pid
}

/// Reads from the connection into `rbuf`; an error when it closed.
async fn read_more(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    rbuf: &mut BytesMut,
) -> anyhow::Result<()> {
    if rbuf.capacity() - rbuf.len() < 4096 {
        rbuf.reserve(64 * 1024);
    }
    if rd.read_buf(rbuf).await? == 0 {
        bail!("closed by the hub");
    }
    Ok(())
}

/// One edge node: births, then data until the deadline `start` brings, then the drain.
async fn run_node(
    addr: String,
    plan: NodePlan,
    s: NodeSettings,
    shared: Arc<Shared>,
    mut start: watch::Receiver<Option<Instant>>,
) -> anyhow::Result<NodeReport> {
    let mqtt::Session {
        stream,
        mut rbuf,
        early,
    } = mqtt::open(
        &addr,
        &plan.id,
        Some(&plan.id),
        Some(&plan.secret),
        &[(&plan.ncmd_topic, 0)],
        CONNECT_TIMEOUT,
    )
    .await
    .with_context(|| format!("{}: connecting", plan.id))?;
    let ncmd = plan.ncmd_topic.as_bytes();
    let mut report = NodeReport {
        acked: vec![0; plan.devices.len()],
        ncmds: early.iter().filter(|p| p.topic == ncmd).count() as u64,
        clock_waits: 0,
    };
    let (mut rd, mut wr) = stream.into_split();
    let mut wbuf = BytesMut::with_capacity(16 * 1024);
    let mut pid = 0u16;

    // Births at QoS 1: their PUBACKs say the hub has taken them in.
    let birth_ms = s.base_ms as u64;
    mqtt::publish(
        &mut wbuf,
        &plan.nbirth_topic,
        1,
        next_pid(&mut pid),
        &nbirth_payload(0, birth_ms),
    );
    let mut seq = 0u8;
    for (j, d) in plan.devices.iter().enumerate() {
        seq = seq.wrapping_add(1);
        let payload = dbirth_payload(values(&d.defs, 0, j), seq, birth_ms)?;
        mqtt::publish(&mut wbuf, &d.dbirth_topic, 1, next_pid(&mut pid), &payload);
    }
    wr.write_all(&wbuf).await?;
    wbuf.clear();
    let mut births_unacked = plan.devices.len() + 1;
    let born_by = tokio::time::Instant::now() + BIRTH_TIMEOUT;
    while births_unacked > 0 {
        tokio::time::timeout_at(born_by, read_more(&mut rd, &mut rbuf))
            .await
            .with_context(|| format!("{}: births not acknowledged", plan.id))??;
        while let Some(p) = mqtt::decode(&mut rbuf)? {
            match p {
                Incoming::PubAck(_) => births_unacked -= 1,
                Incoming::Publish(p) if p.topic == ncmd => report.ncmds += 1,
                _ => {}
            }
        }
    }
    shared.born.fetch_add(1, Relaxed);
    let deadline = match *start.wait_for(Option::is_some).await? {
        Some(d) => d,
        None => bail!("no start"),
    };

    // Data: (pid, first send, device) of the messages in flight.
    let mut window: VecDeque<(u16, Instant, usize)> = VecDeque::with_capacity(s.window);
    let drain_by = deadline + s.drain;
    let mut k = 0u64;
    let n = plan.devices.len();
    let mut last_ts = vec![s.base_ms; n];
    loop {
        let now = Instant::now();
        let sending = now < deadline;
        // Set when the next message would be stamped in the future: try again in 1 ms.
        let mut ahead = false;
        if sending {
            while window.len() < s.window {
                let j = (k % n as u64) as usize;
                // One new point per message: distinct, increasing timestamps per device.
                let now_ms = protocols::time::now_ms();
                let ts = (now_ms - BACKDATE_MS).max(last_ts[j] + 1);
                if ts > now_ms {
                    ahead = true;
                    report.clock_waits += 1;
                    break;
                }
                last_ts[j] = ts;
                k += 1;
                seq = seq.wrapping_add(1);
                let d = &plan.devices[j];
                let payload = ddata_payload(values(&d.defs, k, j), seq, ts as u64)?;
                let id = next_pid(&mut pid);
                mqtt::publish(&mut wbuf, &d.ddata_topic, 1, id, &payload);
                window.push_back((id, now, j));
                shared.sent.fetch_add(1, Relaxed);
            }
        } else if window.is_empty() {
            break;
        } else if now >= drain_by {
            bail!(
                "{}: {} DDATA messages unacknowledged {:?} after sending stopped",
                plan.id,
                window.len(),
                s.drain
            );
        }
        if !wbuf.is_empty() {
            wr.write_all(&wbuf).await?;
            wbuf.clear();
        }
        let wake = match (sending, ahead) {
            (true, true) => deadline.min(now + Duration::from_millis(1)),
            (true, false) => deadline,
            (false, _) => drain_by,
        };
        tokio::select! {
            r = read_more(&mut rd, &mut rbuf) => r.with_context(|| plan.id.clone())?,
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        let now = Instant::now();
        while let Some(p) = mqtt::decode(&mut rbuf)? {
            match p {
                Incoming::PubAck(id) => {
                    if let Some(i) = window.iter().position(|f| f.0 == id)
                        && let Some((_, sent, j)) = window.remove(i)
                    {
                        shared.latency.record(now.duration_since(sent));
                        shared.acked.fetch_add(1, Relaxed);
                        report.acked[j] += 1;
                    }
                }
                Incoming::Publish(p) if p.topic == ncmd => report.ncmds += 1,
                _ => {}
            }
        }
    }
    mqtt::disconnect(&mut wbuf);
    let _ = wr.write_all(&wbuf).await;
    Ok(report)
}

/// Counts the messages of a subscribed session until `stop` turns true.
async fn count_feeds(
    mut app: mqtt::Session,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    shared.feeds.fetch_add(app.early.len() as u64, Relaxed);
    loop {
        while let Some(p) = mqtt::decode(&mut app.rbuf)? {
            if let Incoming::Publish(_) = p {
                shared.feeds.fetch_add(1, Relaxed);
            }
        }
        if app.rbuf.capacity() - app.rbuf.len() < 4096 {
            app.rbuf.reserve(64 * 1024);
        }
        tokio::select! {
            r = app.stream.read_buf(&mut app.rbuf) => if r? == 0 {
                bail!("the feeds app's connection closed");
            },
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// Waits until the app on `v1/status/+` has seen every device of `ids` online.
async fn wait_online(
    mut app: mqtt::Session,
    ids: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut online: HashMap<Vec<u8>, bool> = HashMap::new();
    let want: Vec<Vec<u8>> = ids
        .iter()
        .map(|d| format!("v1/status/{d}").into_bytes())
        .collect();
    let mut incoming = std::mem::take(&mut app.early);
    let by = tokio::time::Instant::now() + timeout;
    loop {
        while let Some(p) = mqtt::decode(&mut app.rbuf)? {
            if let Incoming::Publish(p) = p {
                incoming.push(p);
            }
        }
        for p in incoming.drain(..) {
            let up = p.payload == protocols::messages::STATUS_ONLINE.as_bytes();
            online.insert(p.topic.to_vec(), up);
        }
        let missing = want
            .iter()
            .filter(|t| online.get(*t) != Some(&true))
            .count();
        if missing == 0 {
            return Ok(());
        }
        let r = tokio::time::timeout_at(by, app.stream.read_buf(&mut app.rbuf)).await;
        match r {
            Err(_) => bail!("{missing} devices not online after their births"),
            Ok(Ok(0)) => bail!("the status app's connection closed"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// `GET path` over HTTP/1.0 (the hub then closes the connection after the body): status and
/// body.
async fn http_get(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let auth = bearer
        .map(|b| format!("Authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .context("HTTP answer")??;
    let text = String::from_utf8(buf).context("HTTP answer not UTF-8")?;
    let (head, body) = text.split_once("\r\n\r\n").context("no end of HTTP head")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    Ok((status, body.to_string()))
}

/// A counter of the hub's `/metrics` text (prometheus adds `_total`); 0 when absent.
fn counter(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (n, v) = l.split_once(' ')?;
            let n = n.strip_suffix("_total").unwrap_or(n);
            (n == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
        .map_or(0, |v| v as u64)
}

/// Points of one series in the store.
fn count(store: &impl SeriesStore, device: &str, quantity: Quantity) -> anyhow::Result<u64> {
    let r = store.query(&Query {
        series: SeriesId {
            device: Arc::from(device),
            quantity,
        },
        from_ms: 0,
        to_ms: i64::MAX,
        step_ms: Some(i64::MAX / 2),
        agg: Agg::Count,
    })?;
    Ok(r.iter().map(|(_, c)| *c as u64).sum())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `sim bench sparkplug`: DDATA per second through an embedded hub, PUBACK (stored) latency,
/// every reading checked in the store afterwards. One JSON line on stdout.
pub async fn bench(a: BenchArgs) -> anyhow::Result<()> {
    ensure!(
        a.nodes > 0 && a.devices > 0,
        "--nodes and --devices must be at least 1"
    );
    ensure!(
        (1..=METRICS.len()).contains(&a.metrics),
        "--metrics must be 1 to {}",
        METRICS.len()
    );
    ensure!(
        (1..=MAX_WINDOW).contains(&a.window),
        "--window must be 1 to {MAX_WINDOW} (the hub's in-flight limit per connection)"
    );
    let plans = (0..a.nodes)
        .map(|i| NodePlan::new(i, a.devices, a.metrics))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let device_ids: Vec<String> = plans
        .iter()
        .flat_map(|p| p.devices.iter().map(|d| d.id.clone()))
        .collect();

    let dir = tempfile::Builder::new()
        .prefix("sim-bench-sparkplug-")
        .tempdir()?;
    let mut cfg = hub_config(&plans, a.metrics);
    cfg.hub.data_dir = dir.path().to_path_buf();
    cfg.hub.mqtt_listen = vec!["127.0.0.1:0".into()];
    cfg.hub.http_listen = "127.0.0.1:0".into();
    // The engine's capacity is measured, not the per-client quota (hub.toml's defaults
    // would hold a few fast connections to 5,000 publishes/s each).
    cfg.hub.max_messages_per_s = 0;
    cfg.hub.max_bytes_per_s = protocols::config::ByteSize(0);
    let server = hub::server::Server::start(cfg)
        .await
        .context("starting the embedded hub")?;
    let broker = server.mqtt_addrs()[0].to_string();
    let http = server.http_addr();
    // Subscribed before any birth, so no status change is missed.
    let app = mqtt::open(
        &broker,
        APP.0,
        Some(APP.0),
        Some(APP.1),
        &[("v1/status/+", 0)],
        CONNECT_TIMEOUT,
    )
    .await
    .context("connecting the status app")?;

    // The nodes run on a runtime of their own, as `sim bench ingest`'s agents do, so the
    // hub keeps its runtime to itself.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.load_threads.max(1))
        .thread_name("nodes")
        .enable_all()
        .build()
        .context("starting the nodes' runtime")?;
    let shared = Arc::new(Shared::default());
    let (stop_feeds, stop_rx) = watch::channel(false);
    let feeds = if a.feeds {
        let app = mqtt::open(
            &broker,
            &format!("{}.feeds", APP.0),
            Some(APP.0),
            Some(APP.1),
            &[("v1/feeds/#", 0)],
            CONNECT_TIMEOUT,
        )
        .await
        .context("connecting the feeds app")?;
        Some(runtime.spawn(count_feeds(app, shared.clone(), stop_rx)))
    } else {
        None
    };
    let (start_tx, start_rx) = watch::channel(None);
    let settings = NodeSettings {
        window: a.window,
        drain: a.drain,
        base_ms: protocols::time::now_ms() - BACKDATE_MS,
    };
    eprintln!(
        "bench: sparkplug against {broker}: {} nodes x {} devices, {} readings per DDATA, window {}",
        a.nodes, a.devices, a.metrics, a.window
    );
    let mut nodes: Vec<_> = plans
        .into_iter()
        .map(|p| {
            runtime.spawn(run_node(
                broker.clone(),
                p,
                settings,
                shared.clone(),
                start_rx.clone(),
            ))
        })
        .collect();

    // Every node born (a failed node ends the wait with its error), every device online.
    let born_by = Instant::now() + BIRTH_TIMEOUT;
    while shared.born.load(Relaxed) < a.nodes {
        if let Some(i) = nodes.iter().position(|h| h.is_finished()) {
            let failed = nodes.swap_remove(i).await?;
            runtime.shutdown_background();
            failed?;
            bail!("a node ended before the start");
        }
        ensure!(Instant::now() < born_by, "births not acknowledged in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_online(app, &device_ids, Duration::from_secs(30)).await?;
    let births = server
        .local_store()
        .ok_or_else(|| anyhow::anyhow!("a local store"))?
        .stats()?
        .points_appended;
    eprintln!(
        "bench: {} nodes born, {} devices online, {births} birth readings stored",
        a.nodes,
        device_ids.len()
    );

    let t0 = Instant::now();
    let _ = start_tx.send(Some(t0 + a.duration));
    let mut last = (0u64, t0);
    while t0.elapsed() < a.duration {
        let left = a.duration.saturating_sub(t0.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        let acked = shared.acked.load(Relaxed);
        eprintln!(
            "bench: t={:>5.1}s {:>8.0} DDATA/s acknowledged",
            t0.elapsed().as_secs_f64(),
            (acked - last.0) as f64 / last.1.elapsed().as_secs_f64().max(1e-9),
        );
        last = (acked, Instant::now());
    }
    let mut reports = Vec::with_capacity(nodes.len());
    let mut failures = Vec::new();
    for h in nodes {
        match h.await? {
            Ok(r) => reports.push(r),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    // The last feeds: until none arrived for half a second.
    if let Some(task) = feeds {
        let mut seen = shared.feeds.load(Relaxed);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = shared.feeds.load(Relaxed);
            if now == seen || task.is_finished() {
                break;
            }
            seen = now;
        }
        let _ = stop_feeds.send(true);
        if let Err(e) = task.await? {
            eprintln!("bench: feeds app: {e:#}");
        }
    }
    runtime.shutdown_background();
    if !failures.is_empty() {
        server
            .shutdown()
            .await
            .context("stopping the embedded hub")?;
        bail!("{} nodes failed: {}", failures.len(), failures.join("; "));
    }

    // What the hub says.
    let metrics_text = match http_get(http, "/metrics", None).await? {
        (200, body) => body,
        (code, body) => bail!("/metrics: {code} {body}"),
    };
    let rebirths = counter(&metrics_text, "hub_sparkplug_rebirth_requests");
    let sp_messages = counter(&metrics_text, "hub_sparkplug_messages");
    let dead_letters = server
        .metrics()
        .deadletters
        .load(std::sync::atomic::Ordering::Relaxed);
    let ncmds: u64 = reports.iter().map(|r| r.ncmds).sum();
    let clock_waits: u64 = reports.iter().map(|r| r.clock_waits).sum();

    // Every device holds its birth's point and one per acknowledged DDATA, in every series.
    let quantities: Vec<Quantity> = METRICS[..a.metrics]
        .iter()
        .filter_map(|m| Quantity::from_name(m.0))
        .collect();
    let store = server
        .local_store()
        .ok_or_else(|| anyhow::anyhow!("a local store"))?;
    let mut expected = 0u64;
    let mut stored = 0u64;
    let mut short = Vec::new();
    let per_device = reports.iter().flat_map(|r| r.acked.iter());
    for (id, acked) in device_ids.iter().zip(per_device) {
        for q in &quantities {
            let n = count(store.as_ref(), id, *q)?;
            expected += 1 + acked;
            stored += n;
            if n != 1 + acked && short.len() < 5 {
                short.push(format!(
                    "{id}/{}: {n} points, {} expected",
                    q.name(),
                    1 + acked
                ));
            }
        }
    }
    // And one series read back through the API, as an application would.
    let (first, first_acked) = (&device_ids[0], reports.first().map_or(0, |r| r.acked[0]));
    let path = format!(
        "/api/v1/series?device={first}&quantity={}&from=0&to={}",
        quantities[0].name(),
        protocols::time::now_ms() + 60_000
    );
    let api_points = match http_get(http, &path, Some(&format!("{}:{}", APP.0, APP.1))).await? {
        (200, body) => {
            let v: serde_json::Value = serde_json::from_str(&body)?;
            v["points"].as_array().map_or(0, |p| p.len() as u64)
        }
        (code, body) => bail!("{path}: {code} {body}"),
    };
    server
        .shutdown()
        .await
        .context("stopping the embedded hub")?;
    drop(dir);

    let acked = shared.acked.load(Relaxed);
    let sent = shared.sent.load(Relaxed);
    let h = &shared.latency;
    println!(
        "{}",
        serde_json::json!({
            "bench": "sparkplug",
            "nodes": a.nodes,
            "devices": device_ids.len(),
            "metrics_per_message": a.metrics,
            "window": a.window,
            "messages": acked,
            "messages_per_s": (acked as f64 / elapsed).round(),
            "readings_per_s": (acked as f64 * a.metrics as f64 / elapsed).round(),
            "puback_p50_ms": round3(h.quantile_ms(0.5)),
            "puback_p99_ms": round3(h.quantile_ms(0.99)),
            "puback_max_ms": round3(h.max_ms()),
            "rebirth_requests": rebirths,
            "ncmd_received": ncmds,
            "clock_waits": clock_waits,
            "dead_letters": dead_letters,
            "sent": sent,
            "feeds_app": a.feeds,
            "feeds_received": shared.feeds.load(Relaxed),
            "feeds_expected": if a.feeds { device_ids.len() as u64 + acked } else { 0 },
            "points_expected": expected,
            "points_stored": stored,
            "api_points_first_series": api_points,
            "hub_sparkplug_messages": sp_messages,
            "elapsed_s": round3(elapsed),
        })
    );
    ensure!(
        sent == acked,
        "{} DDATA sent but not acknowledged",
        sent - acked
    );
    ensure!(
        rebirths == 0 && ncmds == 0,
        "the hub asked for {rebirths} rebirths (nodes received {ncmds} NCMDs)"
    );
    ensure!(dead_letters == 0, "{dead_letters} dead letters");
    ensure!(
        stored == expected,
        "readings lost: {stored} points stored, {expected} expected ({})",
        short.join("; ")
    );
    ensure!(
        api_points == 1 + first_acked,
        "the API returns {api_points} points of {first}, {} expected",
        1 + first_acked
    );
    Ok(())
}
