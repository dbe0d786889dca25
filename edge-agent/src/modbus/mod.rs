//! Modbus polling through device profiles, over TCP and RTU.
//!
//! Each TCP device has its own task (a dead or slow device delays nobody else). A serial line
//! carries many unit ids, so each serial port has one task that schedules its devices
//! earliest-deadline-first with short timeouts; a unit that stops answering is polled less
//! often (backoff) so it cannot eat the bus time of the others. Every task owns its connection,
//! so writes (`set` commands) go through the same task, between polls.
//!
//! Readings leave as [`DeviceSample`]s in canonical units with the poll time and a quality,
//! after the deadband/heartbeat filter.

pub mod poll;
pub mod report;
mod rtu;
mod tcp;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use protocols::batch::Reading;
use protocols::profile::{DeviceProfile, ReadBlock};
use protocols::{Quantity, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::config::{AgentConfig, Transport};
use crate::metrics::{DeviceStats, Metrics};
use report::ReportFilter;

/// The readings of one poll of one device, ready for the batcher.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSample {
    /// The device id.
    pub device: Arc<str>,
    /// Poll time, epoch ms.
    pub ts_ms: i64,
    /// Values in canonical units.
    pub readings: Vec<Reading>,
}

/// Everything a task needs to poll one device.
#[derive(Clone, Debug)]
pub struct PollPlan {
    /// The device id at the hub.
    pub device: Arc<str>,
    /// Its profile.
    pub profile: Arc<DeviceProfile>,
    /// The merged reads.
    pub blocks: Vec<ReadBlock>,
    /// Unit id.
    pub unit: u8,
    /// Poll interval.
    pub interval: Duration,
    /// Deadband, engineering units.
    pub deadband: f64,
    /// Heartbeat.
    pub heartbeat: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// The answer to a write: the values read back, by quantity.
pub type SetReply = Result<Vec<(Quantity, Value)>, String>;

/// A request to a device task.
#[derive(Debug)]
pub enum DeviceCommand {
    /// Write these values, read them back.
    Set {
        /// The device (a bus task serves several).
        device: Arc<str>,
        /// Canonical values by quantity.
        values: Vec<(Quantity, Value)>,
        /// Where the answer goes.
        reply: oneshot::Sender<SetReply>,
    },
}

/// The state one device carries between polls, whoever polls it.
pub(crate) struct DeviceState {
    pub plan: PollPlan,
    pub filter: ReportFilter,
    pub stats: Arc<DeviceStats>,
}

impl DeviceState {
    fn new(plan: PollPlan, stats: Arc<DeviceStats>) -> DeviceState {
        let filter = ReportFilter::new(plan.profile.points.len(), plan.deadband, plan.heartbeat);
        DeviceState {
            plan,
            filter,
            stats,
        }
    }

    /// Books a poll outcome and passes the admitted readings on.
    pub fn finish_poll(
        &mut self,
        outcome: poll::PollOutcome,
        ts_ms: i64,
        out: &mpsc::Sender<DeviceSample>,
        metrics: &Metrics,
    ) {
        let s = &self.stats;
        s.requests.fetch_add(outcome.requests, Relaxed);
        let errors = outcome.failures.len() + outcome.undecodable.len();
        s.errors.fetch_add(errors as u64, Relaxed);
        for (bi, f) in &outcome.failures {
            match f {
                poll::RequestFailure::Timeout(_) => s.timeouts.fetch_add(1, Relaxed),
                poll::RequestFailure::Exception(_) => s.exceptions.fetch_add(1, Relaxed),
                poll::RequestFailure::Transport(_) => 0,
            };
            if let Some(b) = self.plan.blocks.get(*bi) {
                tracing::debug!(device = %self.plan.device, table = ?b.table, start = b.start,
                    count = b.count, "read failed: {f}");
            }
        }
        for (pi, why) in &outcome.undecodable {
            tracing::debug!(device = %self.plan.device, point = pi, "undecodable: {why}");
        }
        if outcome.any_ok() {
            s.polls.fetch_add(1, Relaxed);
            s.set_online(true);
            s.last_ok_ms.store(ts_ms, Relaxed);
        } else {
            s.set_online(false);
        }
        let mut readings = Vec::with_capacity(outcome.values.len());
        for (i, value, quality) in outcome.values {
            let Some(point) = self.plan.profile.points.get(i) else {
                continue;
            };
            if self.filter.admit(point, value, quality, ts_ms) {
                readings.push(Reading {
                    quantity: point.quantity.code(),
                    value,
                    quality,
                });
            }
        }
        self.emit(readings, ts_ms, out, metrics);
    }

    fn emit(
        &self,
        readings: Vec<Reading>,
        ts_ms: i64,
        out: &mpsc::Sender<DeviceSample>,
        metrics: &Metrics,
    ) {
        if readings.is_empty() {
            return;
        }
        self.stats
            .readings
            .fetch_add(readings.len() as u64, Relaxed);
        let sample = DeviceSample {
            device: self.plan.device.clone(),
            ts_ms,
            readings,
        };
        // Never block a poller on the batcher: a full pipeline loses this sample, counted.
        if out.try_send(sample).is_err() {
            metrics.samples_dropped.fetch_add(1, Relaxed);
        }
    }

    /// Writes the values of a `set` through `ctx`; the read-back values also go into the
    /// next batch.
    pub async fn set(
        &mut self,
        ctx: &mut tokio_modbus::client::Context,
        values: &[(Quantity, Value)],
        out: &mpsc::Sender<DeviceSample>,
        metrics: &Metrics,
    ) -> (SetReply, bool) {
        let mut back = Vec::new();
        let mut readings = Vec::new();
        let ts_ms = protocols::time::now_ms();
        let mut result = Ok(());
        let mut broken = false;
        for &(q, v) in values {
            let Some(point) = self.plan.profile.point(q) else {
                result = Err(format!(
                    "device {} has no point for `{q}`",
                    self.plan.device
                ));
                break;
            };
            self.stats.requests.fetch_add(2, Relaxed);
            match poll::write_point(ctx, point, v, self.plan.timeout).await {
                Ok(read) => {
                    let quality = poll::quality_of(point, read);
                    self.filter.force(point, read, quality, ts_ms);
                    readings.push(Reading {
                        quantity: q.code(),
                        value: read,
                        quality,
                    });
                    back.push((q, read));
                }
                Err(e) => {
                    self.stats.errors.fetch_add(1, Relaxed);
                    broken = e.breaks_link();
                    result = Err(format!("{q}: {e}"));
                    break;
                }
            }
        }
        self.emit(readings, ts_ms, out, metrics);
        (result.map(|()| back), broken)
    }
}

/// Where a device's commands go.
pub type CommandRoute = mpsc::Sender<DeviceCommand>;

/// The running pollers of one configuration.
pub struct Pollers {
    tasks: Vec<JoinHandle<()>>,
    routes: HashMap<Arc<str>, CommandRoute>,
    stats: Vec<Arc<DeviceStats>>,
}

impl std::fmt::Debug for Pollers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pollers")
            .field("devices", &self.stats.len())
            .finish()
    }
}

/// Builds the poll plan of each `[[modbus]]` entry.
pub fn plans(cfg: &AgentConfig) -> Vec<(PollPlan, Transport)> {
    cfg.file
        .modbus
        .iter()
        .zip(&cfg.profiles)
        .zip(&cfg.transports)
        .map(|((m, profile), transport)| {
            (
                PollPlan {
                    device: Arc::from(m.device.as_str()),
                    blocks: profile.plan_reads(0),
                    profile: Arc::new(profile.clone()),
                    unit: m.unit,
                    interval: m.interval.0,
                    deadband: m.deadband,
                    heartbeat: m.heartbeat.0,
                    timeout: m.timeout.0,
                },
                transport.clone(),
            )
        })
        .collect()
}

impl Pollers {
    /// No devices, no tasks.
    pub fn empty() -> Pollers {
        Pollers {
            tasks: Vec::new(),
            routes: HashMap::new(),
            stats: Vec::new(),
        }
    }

    /// Starts one task per TCP device and one per serial port.
    pub fn start(
        cfg: &AgentConfig,
        out: mpsc::Sender<DeviceSample>,
        metrics: Arc<Metrics>,
    ) -> Pollers {
        let mut tasks = Vec::new();
        let mut routes = HashMap::new();
        let mut stats = Vec::new();
        let mut buses: Vec<(rtu::SerialLine, Vec<DeviceState>, Vec<Arc<str>>)> = Vec::new();
        for (plan, transport) in plans(cfg) {
            let st = DeviceStats::new(&plan.device);
            stats.push(st.clone());
            let device = plan.device.clone();
            let state = DeviceState::new(plan, st);
            match transport {
                Transport::Tcp { addr } => {
                    let (tx, rx) = mpsc::channel(8);
                    routes.insert(device, tx);
                    tasks.push(tokio::spawn(tcp::run(
                        addr,
                        state,
                        rx,
                        out.clone(),
                        metrics.clone(),
                    )));
                }
                Transport::Rtu {
                    path,
                    baud,
                    parity,
                    stop_bits,
                } => {
                    let line = rtu::SerialLine {
                        path,
                        baud,
                        parity,
                        stop_bits,
                    };
                    match buses.iter_mut().find(|(l, _, _)| l.path == line.path) {
                        Some((_, devices, ids)) => {
                            devices.push(state);
                            ids.push(device);
                        }
                        None => buses.push((line, vec![state], vec![device])),
                    }
                }
            }
        }
        for (line, devices, ids) in buses {
            let (tx, rx) = mpsc::channel(8);
            for id in ids {
                routes.insert(id, tx.clone());
            }
            tasks.push(tokio::spawn(rtu::run(
                line,
                devices,
                rx,
                out.clone(),
                metrics.clone(),
            )));
        }
        Pollers {
            tasks,
            routes,
            stats,
        }
    }

    /// The counters of every device, in config order.
    pub fn stats(&self) -> Vec<Arc<DeviceStats>> {
        self.stats.clone()
    }

    /// Writes values to a device and returns what was read back.
    pub async fn set(
        &self,
        device: &str,
        values: Vec<(Quantity, Value)>,
        timeout: Duration,
    ) -> SetReply {
        let (key, route) = self
            .routes
            .get_key_value(device)
            .ok_or_else(|| format!("no device `{device}` behind this agent"))?;
        let (reply, rx) = oneshot::channel();
        route
            .send(DeviceCommand::Set {
                device: key.clone(),
                values,
                reply,
            })
            .await
            .map_err(|_| format!("the poller of {device} has stopped"))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(format!("the poller of {device} dropped the command")),
            Err(_) => Err(format!(
                "device {device} did not complete the write in {timeout:?}"
            )),
        }
    }

    /// Stops every task.
    pub async fn stop(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Pollers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Answers a command that arrives while the device cannot be reached.
pub(crate) fn refuse_offline(cmd: DeviceCommand, why: &str) {
    let DeviceCommand::Set { device, reply, .. } = cmd;
    let _ = reply.send(Err(format!("device {device} is not reachable: {why}")));
}
