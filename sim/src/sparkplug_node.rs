//! A simulated Sparkplug B edge node: the controller of a sewage pumping station, publishing
//! its pumps and its wet well over MQTT (Eclipse Sparkplug 3.0, MQTT 3.1.1), as the district's
//! water utility runs them.
//!
//! One MQTT connection is one session: a new `bdSeq` (0..=255), the NDEATH as the last will,
//! then subscriptions to the node's NCMD and DCMD, the NBIRTH (`seq` 0) and a DBIRTH per device.
//! Every `interval` each device sends a DDATA with its metrics by alias. A rebirth request
//! (NCMD `Node Control/Rebirth` = true) repeats the births; a DCMD writing `Pump/Speed` sets
//! the pump's speed and is reported at once. Stopping publishes the NDEATH, then disconnects;
//! a lost connection is retried with backoff under the next `bdSeq`. `sim sparkplug-node`
//! runs one against any broker. The payload builders are public so a benchmark can build the
//! same messages without a broker.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use edge_agent::backoff::Backoff;
use protocols::sparkplug::payload::metric;
use protocols::sparkplug::{
    BD_SEQ_METRIC, DataType, EdgeTopic, MessageType, Metric, MetricValue, NAMESPACE, Payload,
    REBIRTH_METRIC, Topic, ValueError, decode, decode_value, encode,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Packet, QoS, SubscribeFilter,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::mqtt_events::Events;

/// A pump's state (Boolean).
pub const PUMP_RUNNING: &str = "Pump/Running";
/// A pump's speed setpoint, % (Float, writable by DCMD).
pub const PUMP_SPEED: &str = "Pump/Speed";
/// A pump's flow, m³/h (Float).
pub const PUMP_FLOW: &str = "Pump/Flow";
/// A pump's discharge pressure, bar (Float).
pub const PUMP_PRESSURE: &str = "Pump/Discharge Pressure";
/// The wet well's level, m (Double).
pub const WELL_LEVEL: &str = "Wet Well/Level";
/// The NBIRTH's software version property (String).
pub const VERSION_METRIC: &str = "Properties/Software Version";

/// Alias of `Node Control/Rebirth` in the NBIRTH.
pub const REBIRTH_ALIAS: u64 = 1;
/// Alias of [`VERSION_METRIC`] in the NBIRTH.
pub const VERSION_ALIAS: u64 = 2;
/// The first alias devices use; the ones below belong to the node's own metrics.
pub const FIRST_DEVICE_ALIAS: u64 = 16;

/// First reconnect delay (before jitter); doubles per failure.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest reconnect delay.
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// MQTT keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long a graceful stop waits for the NDEATH's PUBACK, then for the broker to close.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Rated flow of a pump at 100 % speed, m³/h.
pub const RATED_FLOW_M3H: f64 = 120.0;
/// Speed a pump starts with, %.
pub const DEFAULT_SPEED_PCT: f64 = 80.0;
/// Wet well floor area, m².
pub const WELL_AREA_M2: f64 = 12.0;
/// Level at which the lead pump starts, m; each further pump starts [`STAGE_STEP_M`] higher.
pub const START_LEVEL_M: f64 = 2.0;
/// Level difference between the start levels of successive pumps, m.
pub const STAGE_STEP_M: f64 = 0.25;
/// Level at which every pump stops, m.
pub const STOP_LEVEL_M: f64 = 0.7;
/// Level at which the well overflows (the level stays there), m.
pub const OVERFLOW_LEVEL_M: f64 = 3.5;
/// Mean inflow, m³/h.
pub const INFLOW_MEAN_M3H: f64 = 90.0;
/// Amplitude of the slow inflow swing, m³/h.
pub const INFLOW_SWING_M3H: f64 = 50.0;
/// Period of the inflow swing.
pub const INFLOW_PERIOD: Duration = Duration::from_secs(15 * 60);
/// Pressure the force main holds with no flow (its static head), bar.
pub const STATIC_HEAD_BAR: f64 = 0.9;
/// Friction loss at rated flow, bar (grows with the square of the flow).
pub const FRICTION_BAR: f64 = 1.6;

/// One pump's readings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PumpState {
    /// Whether it runs.
    pub running: bool,
    /// Speed setpoint, %.
    pub speed_pct: f64,
    /// Flow, m³/h (0 when stopped).
    pub flow_m3h: f64,
    /// Discharge pressure, bar (0 when stopped: the check valve closes).
    pub pressure_bar: f64,
}

/// The physics of a pumping station: inflow into a wet well, level-controlled pumps emptying
/// it. Deterministic for a seed and a sequence of steps.
#[derive(Debug)]
pub struct Station {
    rng: StdRng,
    t_s: f64,
    level_m: f64,
    /// Slowly wandering part of the inflow, m³/h.
    inflow_noise: f64,
    inflow_m3h: f64,
    pumps: Vec<PumpState>,
}

impl Station {
    /// A station with `pumps` pumps, stopped, the well half full.
    pub fn new(pumps: usize, seed: u64) -> Station {
        let mut s = Station {
            rng: StdRng::seed_from_u64(seed),
            t_s: 0.0,
            level_m: (START_LEVEL_M + STOP_LEVEL_M) / 2.0,
            inflow_noise: 0.0,
            inflow_m3h: INFLOW_MEAN_M3H,
            pumps: vec![
                PumpState {
                    running: false,
                    speed_pct: DEFAULT_SPEED_PCT,
                    flow_m3h: 0.0,
                    pressure_bar: 0.0,
                };
                pumps
            ],
        };
        s.update_readings();
        s
    }

    /// Advances the physics by `dt`, in steps of at most a second so the level control sees
    /// every crossing.
    pub fn step(&mut self, dt: Duration) {
        let mut left = dt.as_secs_f64();
        while left > 0.0 {
            let h = left.min(1.0);
            left -= h;
            self.t_s += h;
            // Mean-reverting random walk: wanders by some m³/h over minutes.
            self.inflow_noise +=
                -self.inflow_noise * h / 120.0 + self.rng.gen_range(-1.0..=1.0) * h.sqrt();
            let swing = (std::f64::consts::TAU * self.t_s / INFLOW_PERIOD.as_secs_f64()).sin();
            self.inflow_m3h =
                (INFLOW_MEAN_M3H + INFLOW_SWING_M3H * swing + self.inflow_noise).max(0.0);
            let mut pumped = 0.0;
            for (i, p) in self.pumps.iter_mut().enumerate() {
                let start = START_LEVEL_M + STAGE_STEP_M * i as f64;
                if !p.running && self.level_m >= start {
                    p.running = true;
                } else if p.running && self.level_m <= STOP_LEVEL_M {
                    p.running = false;
                }
                if p.running {
                    pumped += ideal_flow(p.speed_pct);
                }
            }
            let rise = (self.inflow_m3h - pumped) / 3600.0 * h / WELL_AREA_M2;
            self.level_m = (self.level_m + rise).clamp(0.0, OVERFLOW_LEVEL_M);
        }
        self.update_readings();
    }

    /// The wet well's level, m.
    pub fn level_m(&self) -> f64 {
        self.level_m
    }

    /// The inflow at the last step, m³/h.
    pub fn inflow_m3h(&self) -> f64 {
        self.inflow_m3h
    }

    /// The pumps' readings.
    pub fn pumps(&self) -> &[PumpState] {
        &self.pumps
    }

    /// Sets a pump's speed, clamped to 0..=100 %; the speed set, `None` if there is no such
    /// pump or the value is not a number.
    pub fn set_speed(&mut self, pump: usize, pct: f64) -> Option<f64> {
        if !pct.is_finite() {
            return None;
        }
        let p = self.pumps.get_mut(pump)?;
        p.speed_pct = pct.clamp(0.0, 100.0);
        let speed = p.speed_pct;
        self.update_readings();
        Some(speed)
    }

    /// Flow and pressure from the speed, with a little measurement noise.
    fn update_readings(&mut self) {
        for p in &mut self.pumps {
            if p.running {
                let flow = ideal_flow(p.speed_pct) * (1.0 + self.rng.gen_range(-0.005..=0.005));
                p.flow_m3h = flow.max(0.0);
                p.pressure_bar =
                    STATIC_HEAD_BAR + FRICTION_BAR * (p.flow_m3h / RATED_FLOW_M3H).powi(2);
            } else {
                p.flow_m3h = 0.0;
                p.pressure_bar = 0.0;
            }
        }
    }
}

/// Flow at a speed (affinity law: proportional), m³/h.
fn ideal_flow(speed_pct: f64) -> f64 {
    RATED_FLOW_M3H * speed_pct / 100.0
}

/// One metric a birth defines: name, alias, datatype.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricDef {
    /// The metric's name.
    pub name: String,
    /// Its alias, unique across the node and all its devices.
    pub alias: u64,
    /// Its datatype.
    pub datatype: DataType,
}

fn defs(names: &[(&str, DataType)], first_alias: u64) -> Vec<MetricDef> {
    names
        .iter()
        .zip(first_alias..)
        .map(|(&(name, datatype), alias)| MetricDef {
            name: name.into(),
            alias,
            datatype,
        })
        .collect()
}

/// A pump device's metrics, aliases from `first_alias` on (4 of them).
pub fn pump_metrics(first_alias: u64) -> Vec<MetricDef> {
    defs(
        &[
            (PUMP_RUNNING, DataType::Boolean),
            (PUMP_SPEED, DataType::Float),
            (PUMP_FLOW, DataType::Float),
            (PUMP_PRESSURE, DataType::Float),
        ],
        first_alias,
    )
}

/// The wet well device's metrics, aliases from `first_alias` on (1 of them).
pub fn well_metrics(first_alias: u64) -> Vec<MetricDef> {
    defs(&[(WELL_LEVEL, DataType::Double)], first_alias)
}

/// `count` Double metrics named `Value/0000`, `Value/0001`, ..., aliases from `first_alias`
/// on: a device of any size, for benchmarks.
pub fn numbered_metrics(count: usize, first_alias: u64) -> Vec<MetricDef> {
    (0..count)
        .zip(first_alias..)
        .map(|(i, alias)| MetricDef {
            name: format!("Value/{i:04}"),
            alias,
            datatype: DataType::Double,
        })
        .collect()
}

/// The `bdSeq` metric of NBIRTH and NDEATH: Int64, as Sparkplug 3.0 says; by name only.
fn bd_seq_metric(bd_seq: u8, timestamp_ms: u64) -> Metric {
    Metric {
        name: Some(BD_SEQ_METRIC.into()),
        timestamp: Some(timestamp_ms),
        datatype: Some(DataType::Int64.code()),
        value: Some(metric::Value::LongValue(u64::from(bd_seq))),
        ..Default::default()
    }
}

/// The NBIRTH payload: `seq` 0, `bdSeq`, `Node Control/Rebirth` = false (Boolean,
/// [`REBIRTH_ALIAS`]) and the software version (String, [`VERSION_ALIAS`]).
pub fn nbirth_payload(bd_seq: u8, timestamp_ms: u64) -> Vec<u8> {
    let named = |name: &str, alias, datatype: DataType, value| Metric {
        name: Some(name.into()),
        alias: Some(alias),
        timestamp: Some(timestamp_ms),
        datatype: Some(datatype.code()),
        value: Some(value),
        ..Default::default()
    };
    encode(&Payload {
        timestamp: Some(timestamp_ms),
        seq: Some(0),
        metrics: vec![
            bd_seq_metric(bd_seq, timestamp_ms),
            named(
                REBIRTH_METRIC,
                REBIRTH_ALIAS,
                DataType::Boolean,
                metric::Value::BooleanValue(false),
            ),
            named(
                VERSION_METRIC,
                VERSION_ALIAS,
                DataType::String,
                metric::Value::StringValue(env!("CARGO_PKG_VERSION").into()),
            ),
        ],
        ..Default::default()
    })
}

/// The NDEATH payload (the last will, and what a graceful stop publishes): `bdSeq` only, no
/// `seq`.
pub fn ndeath_payload(bd_seq: u8, timestamp_ms: u64) -> Vec<u8> {
    encode(&Payload {
        timestamp: Some(timestamp_ms),
        metrics: vec![bd_seq_metric(bd_seq, timestamp_ms)],
        ..Default::default()
    })
}

/// A DBIRTH payload: every metric with name, alias, datatype, value and timestamp.
pub fn dbirth_payload<'a>(
    metrics: impl IntoIterator<Item = (&'a MetricDef, MetricValue)>,
    seq: u8,
    timestamp_ms: u64,
) -> Result<Vec<u8>, ValueError> {
    let metrics = metrics
        .into_iter()
        .map(|(d, v)| {
            Ok(Metric::new(d.datatype, &v)?
                .named(&d.name)
                .aliased(d.alias)
                .at(timestamp_ms))
        })
        .collect::<Result<Vec<_>, ValueError>>()?;
    Ok(data_message(metrics, seq, timestamp_ms))
}

/// A DDATA payload: the metrics by alias only (no name, no datatype), with value and
/// timestamp.
pub fn ddata_payload<'a>(
    metrics: impl IntoIterator<Item = (&'a MetricDef, MetricValue)>,
    seq: u8,
    timestamp_ms: u64,
) -> Result<Vec<u8>, ValueError> {
    let metrics = metrics
        .into_iter()
        .map(|(d, v)| {
            Ok(Metric::new(d.datatype, &v)?
                .aliased(d.alias)
                .at(timestamp_ms)
                .without_datatype())
        })
        .collect::<Result<Vec<_>, ValueError>>()?;
    Ok(data_message(metrics, seq, timestamp_ms))
}

fn data_message(metrics: Vec<Metric>, seq: u8, timestamp_ms: u64) -> Vec<u8> {
    encode(&Payload {
        timestamp: Some(timestamp_ms),
        seq: Some(u64::from(seq)),
        metrics,
        ..Default::default()
    })
}

/// A benchmark's DBIRTH: [`numbered_metrics`]`(metrics, first_alias)`, all 0.0.
pub fn bench_dbirth(metrics: usize, first_alias: u64, seq: u8, timestamp_ms: u64) -> Vec<u8> {
    let defs = numbered_metrics(metrics, first_alias);
    let metrics = defs
        .iter()
        .map(|d| Metric {
            name: Some(d.name.clone()),
            alias: Some(d.alias),
            timestamp: Some(timestamp_ms),
            datatype: Some(DataType::Double.code()),
            value: Some(metric::Value::DoubleValue(0.0)),
            ..Default::default()
        })
        .collect();
    data_message(metrics, seq, timestamp_ms)
}

/// A benchmark's DDATA for the device of [`bench_dbirth`]: every metric by alias, metric `i`
/// reading `value + i`.
pub fn bench_ddata(
    metrics: usize,
    first_alias: u64,
    seq: u8,
    timestamp_ms: u64,
    value: f64,
) -> Vec<u8> {
    let metrics = (0..metrics)
        .zip(first_alias..)
        .map(|(i, alias)| Metric {
            alias: Some(alias),
            timestamp: Some(timestamp_ms),
            value: Some(metric::Value::DoubleValue(value + i as f64)),
            ..Default::default()
        })
        .collect();
    data_message(metrics, seq, timestamp_ms)
}

/// An edge node's identity, where its broker is, and its devices.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// The broker, `HOST:PORT`.
    pub broker: String,
    /// The edge node id: also the MQTT client id and user name (the hub's agent id).
    pub node: String,
    /// The MQTT password (the agent's secret).
    pub secret: String,
    /// The Sparkplug group id.
    pub group: String,
    /// The pumps' device ids.
    pub pumps: Vec<String>,
    /// The wet well's device id, if it reports one.
    pub well: Option<String>,
    /// Time between DDATA messages.
    pub interval: Duration,
    /// Seed of the physics' randomness.
    pub seed: u64,
}

/// What a node did, for its operator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// MQTT connections made (CONNACKs received).
    pub connections: u64,
    /// Birth certificates published, NBIRTH and DBIRTH each counted.
    pub births: u64,
    /// DDATA messages published.
    pub data: u64,
    /// Rebirth requests served.
    pub rebirths: u64,
    /// Metric writes applied from DCMDs.
    pub commands: u64,
}

/// The current time in ms since the epoch, as Sparkplug timestamps want it.
fn now_ms() -> u64 {
    u64::try_from(protocols::time::now_ms()).unwrap_or(0)
}

/// `HOST:PORT` (`[v6]:PORT` too) split for rumqttc.
fn host_port(broker: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = broker
        .rsplit_once(':')
        .with_context(|| format!("broker `{broker}`: expected HOST:PORT"))?;
    let port = port
        .parse()
        .with_context(|| format!("broker `{broker}`: bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    anyhow::ensure!(!host.is_empty(), "broker `{broker}`: no host");
    Ok((host.to_string(), port))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Pump(usize),
    Well,
}

#[derive(Debug)]
struct Device {
    id: String,
    role: Role,
    metrics: Vec<MetricDef>,
    dbirth_topic: String,
    ddata_topic: String,
    /// `Pump/Running` as last published: sent again only when it changes.
    reported_running: Option<bool>,
}

/// One MQTT connection's session.
struct Session {
    client: AsyncClient,
    bd_seq: u8,
    last_seq: u8,
    /// Whether the NBIRTH and every DBIRTH of this session went out.
    born: bool,
}

impl Session {
    /// Publishes with the next `seq`; the number is used up only if the message was queued,
    /// so a message dropped on a full queue leaves no gap a host would see.
    fn publish_seq(&mut self, topic: &str, build: impl FnOnce(u8) -> Option<Vec<u8>>) -> bool {
        let seq = self.last_seq.wrapping_add(1);
        let Some(payload) = build(seq) else {
            return false;
        };
        if publish(&self.client, topic, QoS::AtMostOnce, payload) {
            self.last_seq = seq;
            true
        } else {
            false
        }
    }
}

/// Queues a publication; false if rumqttc's request queue is full or closed.
fn publish(client: &AsyncClient, topic: &str, qos: QoS, payload: Vec<u8>) -> bool {
    match client.try_publish(topic, qos, false, payload) {
        Ok(()) => true,
        Err(e) => {
            debug!(topic, "publish not queued: {e}");
            false
        }
    }
}

struct Node {
    spec: NodeSpec,
    station: Station,
    devices: Vec<Device>,
    nbirth_topic: String,
    ndeath_topic: String,
    ncmd_topic: String,
    dcmd_filter: String,
    stats: NodeStats,
    stats_tx: watch::Sender<NodeStats>,
    last_step: Instant,
}

impl Node {
    fn new(spec: NodeSpec, stats_tx: watch::Sender<NodeStats>) -> anyhow::Result<Node> {
        let topic = |kind, device: Option<&str>| {
            EdgeTopic::new(&spec.group, kind, &spec.node, device)
                .map(|t| t.to_topic())
                .with_context(|| format!("{kind} topic of node `{}`", spec.node))
        };
        let nbirth_topic = topic(MessageType::NBirth, None)?;
        let ndeath_topic = topic(MessageType::NDeath, None)?;
        let ncmd_topic = topic(MessageType::NCmd, None)?;
        // Ids are checked by the topics above; `+` is no valid device id, so no EdgeTopic.
        let dcmd_filter = format!(
            "{NAMESPACE}/{}/{}/{}/+",
            spec.group,
            MessageType::DCmd,
            spec.node
        );
        let roles = spec
            .pumps
            .iter()
            .enumerate()
            .map(|(i, id)| (id, Role::Pump(i)))
            .chain(spec.well.iter().map(|id| (id, Role::Well)));
        let mut devices: Vec<Device> = Vec::new();
        let mut next_alias = FIRST_DEVICE_ALIAS;
        for (id, role) in roles {
            anyhow::ensure!(
                devices.iter().all(|d| d.id != *id),
                "device id `{id}` given twice"
            );
            let metrics = match role {
                Role::Pump(_) => pump_metrics(next_alias),
                Role::Well => well_metrics(next_alias),
            };
            next_alias += metrics.len() as u64;
            devices.push(Device {
                id: id.clone(),
                role,
                metrics,
                dbirth_topic: topic(MessageType::DBirth, Some(id))?,
                ddata_topic: topic(MessageType::DData, Some(id))?,
                reported_running: None,
            });
        }
        Ok(Node {
            station: Station::new(spec.pumps.len(), spec.seed),
            spec,
            devices,
            nbirth_topic,
            ndeath_topic,
            ncmd_topic,
            dcmd_filter,
            stats: NodeStats::default(),
            stats_tx,
            last_step: Instant::now(),
        })
    }

    fn publish_stats(&self) {
        self.stats_tx.send_replace(self.stats);
    }

    /// The current value of a device's metric.
    fn value_of(&self, role: Role, name: &str) -> Option<MetricValue> {
        // Rounded as instruments report them.
        let round = |v: f64, step: f64| ((v / step).round() * step) as f32;
        match role {
            Role::Pump(i) => {
                let p = self.station.pumps().get(i)?;
                Some(match name {
                    PUMP_RUNNING => MetricValue::Bool(p.running),
                    PUMP_SPEED => MetricValue::Float(p.speed_pct as f32),
                    PUMP_FLOW => MetricValue::Float(round(p.flow_m3h, 0.1)),
                    PUMP_PRESSURE => MetricValue::Float(round(p.pressure_bar, 0.01)),
                    _ => return None,
                })
            }
            Role::Well => match name {
                WELL_LEVEL => Some(MetricValue::Double(
                    (self.station.level_m() * 1000.0).round() / 1000.0,
                )),
                _ => None,
            },
        }
    }

    /// Just connected: subscribe to commands, then the births. The subscription goes first
    /// on the same connection, so the broker has it before any host sees the NBIRTH and
    /// answers with a command.
    fn connected(&mut self, s: &mut Session) {
        self.stats.connections += 1;
        let filters = [
            SubscribeFilter::new(self.ncmd_topic.clone(), QoS::AtLeastOnce),
            SubscribeFilter::new(self.dcmd_filter.clone(), QoS::AtLeastOnce),
        ];
        if let Err(e) = s.client.try_subscribe_many(filters) {
            warn!(node = %self.spec.node, "subscribing to commands: {e}");
        }
        self.births(s);
        self.publish_stats();
    }

    /// NBIRTH (`seq` 0) and every DBIRTH; if one cannot be queued, the next tick starts over.
    fn births(&mut self, s: &mut Session) {
        s.born = false;
        let ts = now_ms();
        if !publish(
            &s.client,
            &self.nbirth_topic,
            QoS::AtMostOnce,
            nbirth_payload(s.bd_seq, ts),
        ) {
            return;
        }
        s.last_seq = 0;
        self.stats.births += 1;
        for i in 0..self.devices.len() {
            let d = &self.devices[i];
            let values: Vec<_> = d
                .metrics
                .iter()
                .filter_map(|m| Some((m, self.value_of(d.role, &m.name)?)))
                .collect();
            let sent = s.publish_seq(&d.dbirth_topic, |seq| {
                dbirth_payload(values, seq, ts)
                    .inspect_err(|e| warn!(device = %d.id, "DBIRTH: {e}"))
                    .ok()
            });
            if !sent {
                return;
            }
            let running = self.value_of(d.role, PUMP_RUNNING);
            self.devices[i].reported_running = match running {
                Some(MetricValue::Bool(b)) => Some(b),
                _ => None,
            };
            self.stats.births += 1;
        }
        s.born = true;
        info!(node = %self.spec.node, bd_seq = s.bd_seq, devices = self.devices.len(), "Sparkplug births published");
    }

    /// A DDATA for device `i`: its analog values always, `Pump/Running` when it changed.
    fn report(&mut self, s: &mut Session, i: usize) {
        let Some(d) = self.devices.get(i) else {
            return;
        };
        let mut running = d.reported_running;
        let values: Vec<_> = d
            .metrics
            .iter()
            .filter_map(|m| {
                let v = self.value_of(d.role, &m.name)?;
                if let MetricValue::Bool(b) = v {
                    if running == Some(b) {
                        return None;
                    }
                    running = Some(b);
                }
                Some((m, v))
            })
            .collect();
        let ts = now_ms();
        let sent = s.publish_seq(&d.ddata_topic, |seq| {
            ddata_payload(values, seq, ts)
                .inspect_err(|e| warn!(device = %d.id, "DDATA: {e}"))
                .ok()
        });
        if sent {
            self.devices[i].reported_running = running;
            self.stats.data += 1;
        }
    }

    /// Physics up to now.
    fn advance(&mut self) {
        let now = Instant::now();
        self.station.step(now - self.last_step);
        self.last_step = now;
    }

    /// Every interval: the physics, then a DDATA per device (or the births, if they did not
    /// all go out).
    fn tick(&mut self, session: Option<&mut Session>) {
        self.advance();
        let Some(s) = session else {
            return;
        };
        if s.born {
            for i in 0..self.devices.len() {
                self.report(s, i);
            }
        } else {
            self.births(s);
        }
        self.publish_stats();
    }

    /// An NCMD or DCMD for this node.
    fn command(&mut self, s: &mut Session, topic: &str, bytes: &[u8]) {
        let Ok(Topic::Edge(t)) = Topic::parse(topic) else {
            debug!(topic, "not a Sparkplug command topic");
            return;
        };
        if t.group != self.spec.group || t.node != self.spec.node {
            return;
        }
        let payload = match decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                warn!(topic, "command payload: {e}");
                return;
            }
        };
        match (t.kind, t.device) {
            (MessageType::NCmd, None) => self.node_command(s, &payload),
            (MessageType::DCmd, Some(device)) => self.device_command(s, device, &payload),
            _ => {}
        }
        self.publish_stats();
    }

    fn node_command(&mut self, s: &mut Session, payload: &Payload) {
        let mut rebirth = false;
        for m in &payload.metrics {
            let is_rebirth = m.alias == Some(REBIRTH_ALIAS)
                || (m.alias.is_none() && m.name.as_deref() == Some(REBIRTH_METRIC));
            if !is_rebirth {
                info!(node = %self.spec.node, metric = ?m.name, alias = ?m.alias, "NCMD for an unknown metric ignored");
                continue;
            }
            match decode_value(m, DataType::Boolean) {
                Ok(MetricValue::Bool(true)) => rebirth = true,
                other => info!(node = %self.spec.node, "NCMD rebirth with {other:?} ignored"),
            }
        }
        if rebirth {
            info!(node = %self.spec.node, "rebirth requested");
            self.stats.rebirths += 1;
            self.births(s);
        }
    }

    fn device_command(&mut self, s: &mut Session, device: &str, payload: &Payload) {
        let Some(i) = self.devices.iter().position(|d| d.id == device) else {
            info!(node = %self.spec.node, device, "DCMD for an unknown device ignored");
            return;
        };
        let (role, mut applied) = (self.devices[i].role, false);
        for m in &payload.metrics {
            // By alias (which wins, as in data messages) or by name.
            let def = self.devices[i].metrics.iter().find(|d| match m.alias {
                Some(a) => d.alias == a,
                None => m.name.as_deref() == Some(d.name.as_str()),
            });
            let (Some(def), Role::Pump(pump)) = (def, role) else {
                info!(node = %self.spec.node, device, metric = ?m.name, alias = ?m.alias, "DCMD for an unknown metric ignored");
                continue;
            };
            if def.name != PUMP_SPEED {
                info!(node = %self.spec.node, device, metric = %def.name, "DCMD for a read-only metric ignored");
                continue;
            }
            // Any numeric datatype will do; without one, the birth's.
            let datatype = m.data_type().unwrap_or(def.datatype);
            let number = decode_value(m, datatype)
                .ok()
                .and_then(|v| match v.as_value() {
                    Some(protocols::quantity::Value::Number(x)) => Some(x),
                    _ => None,
                });
            match number.and_then(|x| self.station.set_speed(pump, x)) {
                Some(speed) => {
                    info!(node = %self.spec.node, device, speed, "pump speed set");
                    self.stats.commands += 1;
                    applied = true;
                }
                None => {
                    info!(node = %self.spec.node, device, "DCMD {PUMP_SPEED} without a usable number ignored")
                }
            }
        }
        // Reported at once, so the host sees its write take effect.
        if applied && s.born {
            self.report(s, i);
        }
    }

    /// Graceful stop: the NDEATH of this session, acknowledged, then DISCONNECT (after which
    /// the broker drops the will).
    async fn goodbye(&self, s: &Session, events: &mut Events) {
        if publish(
            &s.client,
            &self.ndeath_topic,
            QoS::AtLeastOnce,
            ndeath_payload(s.bd_seq, now_ms()),
        ) {
            // The only QoS 1 publication is the NDEATH, so the first PUBACK is its.
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
                loop {
                    match events.next().await {
                        Ok(Event::Incoming(Packet::PubAck(_))) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        if s.client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
                while events.next().await.is_ok() {}
            })
            .await;
        }
        info!(node = %self.spec.node, bd_seq = s.bd_seq, "Sparkplug node stopped");
    }
}

/// Resolves when `stop` turns true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs an edge node until `stop` turns true (or its sender is dropped), reconnecting with
/// backoff; `stats` follows what it did. Errors only for a spec that cannot work (bad ids,
/// a device id given twice, a bad broker address, a zero interval).
pub async fn run(
    spec: NodeSpec,
    stats: watch::Sender<NodeStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<NodeStats> {
    let (host, port) = host_port(&spec.broker)?;
    anyhow::ensure!(!spec.interval.is_zero(), "the interval must not be zero");
    let mut node = Node::new(spec, stats)?;
    let mut tick = tokio::time::interval(node.spec.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = Backoff::new(RECONNECT_MIN, RECONNECT_MAX);
    let mut bd_seq: u8 = 0;
    loop {
        let mut opts = MqttOptions::new(&node.spec.node, &host, port);
        opts.set_credentials(&node.spec.node, &node.spec.secret);
        opts.set_keep_alive(KEEP_ALIVE);
        // Sparkplug 3.0 over MQTT 3.1.1 wants clean sessions; a new client per connection also
        // means nothing queued for the last session is sent in this one.
        opts.set_clean_session(true);
        opts.set_last_will(LastWill::new(
            &node.ndeath_topic,
            ndeath_payload(bd_seq, now_ms()),
            QoS::AtLeastOnce,
            false,
        ));
        // Room for a round of births and data at once.
        let capacity = 2 * node.devices.len() + 16;
        let (client, events) = AsyncClient::new(opts, capacity);
        let mut events = Events::new(events);
        let mut session = Session {
            client,
            bd_seq,
            last_seq: 0,
            born: false,
        };
        let mut connected = false;
        let lost = loop {
            tokio::select! {
                _ = stopped(&mut stop) => {
                    if connected {
                        node.goodbye(&session, &mut events).await;
                    }
                    return Ok(node.stats);
                }
                ev = events.next() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        info!(node = %node.spec.node, broker = %node.spec.broker, bd_seq, "Sparkplug node connected");
                        connected = true;
                        backoff.reset();
                        node.connected(&mut session);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        node.command(&mut session, &p.topic, &p.payload);
                    }
                    Ok(_) => {}
                    Err(e) => break e,
                },
                _ = tick.tick() => node.tick(connected.then_some(&mut session)),
            }
        };
        if connected {
            warn!(node = %node.spec.node, "connection lost: {lost}");
        } else if matches!(lost, ConnectionError::ConnectionRefused(_)) {
            // A wrong secret or an unknown node: worth seeing at every attempt.
            warn!(node = %node.spec.node, "broker refused the connection: {lost}");
        } else {
            debug!(node = %node.spec.node, "connect: {lost}");
        }
        // This session's client goes; the next connection has its own will.
        drop(session);
        drop(events);
        let delay = backoff.next_delay();
        tokio::select! {
            _ = stopped(&mut stop) => return Ok(node.stats),
            _ = tokio::time::sleep(delay) => {}
        }
        bd_seq = bd_seq.wrapping_add(1);
    }
}

/// `sim sparkplug-node`: one pumping station's controller as a Sparkplug B edge node.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The MQTT broker, HOST:PORT (the hub's MQTT listener).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub broker: String,
    /// The edge node id: the agent id registered at the hub, also the MQTT client id and user
    /// name.
    #[arg(long)]
    pub node: String,
    /// The agent's secret, the MQTT password.
    #[arg(long, env = "SIM_SPARKPLUG_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The Sparkplug group id.
    #[arg(long, default_value = "District")]
    pub group: String,
    /// A pump's device id (repeat for more pumps; they start in this order).
    #[arg(long = "pump")]
    pub pumps: Vec<String>,
    /// The wet well's device id (no wet well device without it).
    #[arg(long)]
    pub well: Option<String>,
    /// Time between DDATA messages.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Seed of the simulated inflow.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop after this many DDATA messages (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
}

/// Runs `sim sparkplug-node` until interrupted or `count` DDATA messages are sent; a JSON line
/// of statistics on stdout whenever they change.
pub async fn main(args: Args) -> anyhow::Result<()> {
    let spec = NodeSpec {
        broker: args.broker,
        node: args.node,
        secret: args.secret,
        group: args.group,
        pumps: args.pumps,
        well: args.well,
        interval: args.interval,
        seed: args.seed,
    };
    let (stats_tx, mut stats) = watch::channel(NodeStats::default());
    let (stop_tx, stop) = watch::channel(false);
    let node = tokio::spawn(run(spec, stats_tx, stop));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            changed = stats.changed() => {
                if changed.is_err() { break; }
                let s = *stats.borrow_and_update();
                println!(
                    "{}",
                    serde_json::json!({
                        "connections": s.connections,
                        "births": s.births,
                        "data": s.data,
                        "rebirths": s.rebirths,
                        "commands": s.commands,
                    })
                );
                if args.count > 0 && s.data >= args.count {
                    break;
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    node.await.context("the node task")??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::sparkplug::{EdgeNodes, Outcome};

    #[test]
    fn the_level_controls_the_pumps() {
        let mut s = Station::new(2, 7);
        let mut started = false;
        let mut stopped_again = false;
        for _ in 0..(4 * 3600) {
            s.step(Duration::from_secs(1));
            let level = s.level_m();
            assert!((0.0..=OVERFLOW_LEVEL_M).contains(&level));
            let lead = s.pumps()[0];
            if lead.running {
                started = true;
                assert!(lead.flow_m3h > 0.0 && lead.pressure_bar > STATIC_HEAD_BAR);
            } else {
                stopped_again |= started;
                assert_eq!((lead.flow_m3h, lead.pressure_bar), (0.0, 0.0));
            }
        }
        assert!(started && stopped_again, "the lead pump should cycle");
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let run = |seed| {
            let mut s = Station::new(2, seed);
            (0..600)
                .map(|_| {
                    s.step(Duration::from_millis(1500));
                    s.level_m()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn speed_is_clamped_and_moves_the_flow() {
        let mut s = Station::new(1, 1);
        while !s.pumps()[0].running {
            s.step(Duration::from_secs(10));
        }
        assert_eq!(s.set_speed(0, 50.0), Some(50.0));
        let half = s.pumps()[0];
        assert!(
            (half.flow_m3h - RATED_FLOW_M3H / 2.0).abs() < 1.0,
            "{half:?}"
        );
        assert_eq!(s.set_speed(0, 140.0), Some(100.0));
        let full = s.pumps()[0];
        assert!((full.flow_m3h - RATED_FLOW_M3H).abs() < 1.0, "{full:?}");
        assert!(full.pressure_bar > half.pressure_bar);
        assert_eq!(s.set_speed(0, -3.0), Some(0.0));
        assert_eq!(s.pumps()[0].flow_m3h, 0.0);
        assert_eq!(s.set_speed(0, f64::NAN), None);
        assert_eq!(s.set_speed(1, 50.0), None);
    }

    #[test]
    fn the_payload_builders_make_a_session_a_host_accepts() {
        let mut host = EdgeNodes::default();
        let ts = 1_700_000_000_000;
        let pump = pump_metrics(FIRST_DEVICE_ALIAS);
        let values = [
            MetricValue::Bool(true),
            MetricValue::Float(80.0),
            MetricValue::Float(96.0),
            MetricValue::Float(1.9),
        ];
        let birth = dbirth_payload(pump.iter().zip(values.clone()), 1, ts).unwrap();
        let data = ddata_payload(pump.iter().zip(values).skip(1), 2, ts).unwrap();
        let bench = bench_dbirth(3, 100, 3, ts);
        let bench_data = bench_ddata(3, 100, 4, ts, 5.0);
        let msgs: [(&str, Vec<u8>); 5] = [
            ("spBv1.0/G/NBIRTH/N", nbirth_payload(9, ts)),
            ("spBv1.0/G/DBIRTH/N/P1", birth),
            ("spBv1.0/G/DDATA/N/P1", data),
            ("spBv1.0/G/DBIRTH/N/B", bench),
            ("spBv1.0/G/DDATA/N/B", bench_data),
        ];
        let mut outcomes = Vec::new();
        for (topic, bytes) in &msgs {
            outcomes.push(host.handle_message(topic, bytes, 0).unwrap());
        }
        assert!(matches!(&outcomes[0], Outcome::Online { device: None, .. }));
        let names: Vec<_> = outcomes[1].readings().iter().map(|r| &*r.name).collect();
        assert_eq!(names, [PUMP_RUNNING, PUMP_SPEED, PUMP_FLOW, PUMP_PRESSURE]);
        let r = &outcomes[2].readings()[0];
        assert_eq!(
            (&*r.name, &r.value),
            (PUMP_SPEED, &MetricValue::Float(80.0))
        );
        assert_eq!(outcomes[3].readings().len(), 3);
        let r = &outcomes[4].readings()[2];
        assert_eq!(
            (&*r.name, &r.value),
            ("Value/0002", &MetricValue::Double(7.0))
        );
        let death = host
            .handle_message("spBv1.0/G/NDEATH/N", &ndeath_payload(9, ts), 0)
            .unwrap();
        assert!(
            matches!(death, Outcome::Offline { device: None, .. }),
            "{death:?}"
        );
    }

    #[test]
    fn brokers_are_host_and_port() {
        assert_eq!(
            host_port("127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883)
        );
        assert_eq!(host_port("[::1]:1883").unwrap(), ("::1".into(), 1883));
        assert!(host_port("localhost").is_err());
        assert!(host_port(":1883").is_err());
    }

    #[test]
    fn bad_ids_and_twice_given_devices_are_refused() {
        let spec = |node: &str, pumps: &[&str], well: Option<&str>| NodeSpec {
            broker: "127.0.0.1:1".into(),
            node: node.into(),
            secret: String::new(),
            group: "G".into(),
            pumps: pumps.iter().map(|s| s.to_string()).collect(),
            well: well.map(str::to_string),
            interval: Duration::from_secs(1),
            seed: 0,
        };
        let (tx, _rx) = watch::channel(NodeStats::default());
        assert!(Node::new(spec("N", &["P1", "P2"], Some("W")), tx.clone()).is_ok());
        assert!(Node::new(spec("N/x", &["P1"], None), tx.clone()).is_err());
        assert!(Node::new(spec("N", &["P1", "P1"], None), tx.clone()).is_err());
        assert!(Node::new(spec("N", &["P1"], Some("P1")), tx.clone()).is_err());
        assert!(Node::new(spec("N", &["P+"], None), tx).is_err());
    }
}
