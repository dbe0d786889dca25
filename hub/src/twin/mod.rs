//! Device twins: reported values, desired values, delta, online state and a version that only
//! grows.
//!
//! State is one small record per device behind its own lock, indexed by the registry's dense
//! device index, so the pipeline updates twins of different devices in parallel without a map
//! lookup. Reported values only move forward in time: a reading older than the one held never
//! replaces it (agents replay their queues after a link cut, out of order with live data).
//!
//! Desired state is written through [`Twins::set_desired`] (MQTT `v1/twin/{id}/desired` and
//! `PATCH /api/v1/devices/{id}/desired`): checked against the device's profile (writable
//! points, `min`/`max`; [`controls`]), made durable in `twins.redb`, applied, and turned into a
//! `set` command to the device or its agent carrying the whole delta.
//!
//! Commands: at most one live command per device. It is resent with exponential backoff
//! (`[hub] command_retry`, doubling, at most [`MAX_RETRY_WAIT`]) until reported state matches
//! (`done`), the device or agent answers `ok: false` (`failed` at once), or
//! `[hub] command_timeout` passes (`failed`). An `ok: true` answer stops the resends
//! (`acknowledged`) but the command is `done` only once reported state matches. A newer desired
//! update `supersedes` the live command. The latest commands are in the twin document
//! (`commands`), every change moves the twin's version, and `hub_commands_*` count them. A
//! device that comes online with a non-empty delta and no live command gets a new command.

pub mod controls;
pub mod persist;
pub mod shared;
pub mod stale;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use protocols::deadletter::DeadLetterReason;
use protocols::messages::{
    Command, CommandResult, CommandState, DesiredUpdate, ReportedValue, Scalar, Twin, TwinCommand,
};
use protocols::time::Rfc3339;
use protocols::{Quality, Quantity, Value};

use crate::config::AgentProtocol;
use crate::feeds::NormValue;
use crate::metrics::Metrics;
use crate::outbound::Outlet;
use crate::registry::{DeviceIdx, Registry};
use crate::sparkplug::Sparkplug;
use controls::{ControlError, Controls};
use persist::{DesiredRecord, Loaded, PersistError, TwinStore};
use series_store::Point;

/// Longest wait between two sends of a command.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// Finished commands kept in a twin document.
const COMMANDS_KEPT: usize = 4;

/// A command tracked for a device.
#[derive(Clone, Debug)]
struct Tracked {
    id: String,
    state: CommandState,
    args: Vec<(Quantity, Value)>,
    attempts: u32,
    first_sent_ms: i64,
    updated_ms: i64,
    next_send_ms: i64,
    deadline_ms: i64,
    error: Option<String>,
}

impl Tracked {
    fn live(&self) -> bool {
        matches!(
            self.state,
            CommandState::Pending | CommandState::Acknowledged
        )
    }

    fn view(&self) -> TwinCommand {
        TwinCommand {
            id: self.id.clone(),
            state: self.state,
            args: self
                .args
                .iter()
                .map(|(q, v)| (q.name().to_string(), Scalar::from_value(*q, *v)))
                .collect(),
            attempts: self.attempts,
            sent: Rfc3339::from_ms(self.first_sent_ms).to_string(),
            updated: Rfc3339::from_ms(self.updated_ms).to_string(),
            error: self.error.clone(),
        }
    }
}

/// Retry and timeout of commands.
#[derive(Clone, Copy, Debug)]
pub struct CommandSettings {
    /// First wait before a resend; doubles with every resend.
    pub retry: Duration,
    /// A command not matched by reported state by then fails.
    pub timeout: Duration,
}

impl Default for CommandSettings {
    fn default() -> Self {
        CommandSettings {
            retry: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Counters of commands.
#[derive(Debug, Default)]
pub struct CommandMetrics {
    /// Resends.
    pub retried: AtomicU64,
    /// Matched by reported state.
    pub done: AtomicU64,
    /// Refused by the device or agent.
    pub refused: AtomicU64,
    /// Timed out.
    pub timed_out: AtomicU64,
    /// Replaced by a newer command.
    pub superseded: AtomicU64,
}

/// A reported value held by a twin.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Reported {
    quantity: Quantity,
    value: Value,
    ts_ms: i64,
    quality: Quality,
}

/// The twin of one device.
#[derive(Debug, Default)]
struct TwinState {
    version: u64,
    /// Version at which desired state last changed (optimistic locking compares with it).
    desired_version: u64,
    /// Version last written to the checkpoint.
    checkpointed: u64,
    online: bool,
    reported: Vec<Reported>,
    desired: Vec<(Quantity, Value)>,
    updated_ms: i64,
    /// Latest commands, oldest first; at most one live.
    commands: Vec<Tracked>,
}

impl TwinState {
    fn bump(&mut self, now_ms: i64) {
        self.version += 1;
        self.updated_ms = now_ms;
    }

    fn reported(&self, q: Quantity) -> Option<&Reported> {
        self.reported.iter().find(|r| r.quantity == q)
    }

    /// Whether reported state matches every value of a command.
    fn matches(&self, args: &[(Quantity, Value)]) -> bool {
        args.iter().all(|(q, want)| {
            self.reported(*q)
                .is_some_and(|r| same_value(r.value, *want))
        })
    }

    fn live_command(&mut self) -> Option<&mut Tracked> {
        self.commands.iter_mut().rev().find(|c| c.live())
    }

    /// Ends the live command if reported state now matches it; returns its id if it did.
    /// `bump`: move the version (false when the caller does for the same change).
    fn settle(&mut self, now_ms: i64, metrics: &CommandMetrics, bump: bool) -> Option<String> {
        let i = self.commands.iter().rposition(|c| c.live())?;
        if !self.matches(&self.commands[i].args) {
            return None;
        }
        let c = &mut self.commands[i];
        c.state = CommandState::Done;
        c.updated_ms = now_ms;
        let id = c.id.clone();
        metrics.done.fetch_add(1, Relaxed);
        if bump {
            self.bump(now_ms);
        }
        Some(id)
    }

    fn push_command(&mut self, c: Tracked) {
        self.commands.push(c);
        // Keep the live one and the latest finished ones.
        while self.commands.len() > COMMANDS_KEPT + 1 {
            match self.commands.iter().position(|c| !c.live()) {
                Some(i) => {
                    self.commands.remove(i);
                }
                None => break,
            }
        }
    }

    /// Desired values the reported state does not match yet.
    fn delta(&self) -> impl Iterator<Item = (Quantity, Value)> + '_ {
        self.desired
            .iter()
            .filter(|(q, want)| match self.reported(*q) {
                Some(r) => !same_value(r.value, *want),
                None => true,
            })
            .copied()
    }
}

/// Equality of a reported and a desired value (numbers within rounding).
fn same_value(a: Value, b: Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        (a, b) => a == b,
    }
}

/// Why a desired-state update was refused.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// No such device.
    #[error("no device `{0}`")]
    UnknownDevice(String),
    /// The update carried no values.
    #[error("the update sets no quantity")]
    Empty,
    /// A name that is not a quantity.
    #[error("unknown quantity `{0}`")]
    UnknownQuantity(String),
    /// A quantity that cannot be set.
    #[error("`{0}` is not controllable")]
    NotControllable(&'static str),
    /// Outside the range the device's profile allows.
    #[error("{0}")]
    OutOfRange(ControlError),
    /// Wrong type or impossible value.
    #[error("bad value for `{quantity}`: {detail}")]
    BadValue {
        /// The quantity.
        quantity: &'static str,
        /// What is wrong with the value.
        detail: &'static str,
    },
    /// The desired state changed after the version the writer saw.
    #[error(
        "version {given} is stale: desired state changed at version {changed}, twin is at {current}"
    )]
    Conflict {
        /// The version in the update.
        given: u64,
        /// When desired state last changed.
        changed: u64,
        /// The twin's version now.
        current: u64,
    },
    /// It could not be made durable.
    #[error("desired state not stored: {0}")]
    Persist(#[from] PersistError),
}

impl DesiredError {
    /// A short stable label for metrics and dead letters.
    pub fn label(&self) -> &'static str {
        DeadLetterReason::from(self).label()
    }
}

impl DesiredError {
    /// The HTTP status that answers it (the same on every hub of a cluster).
    pub fn http_status(&self) -> u16 {
        match self {
            DesiredError::Conflict { .. } => 409,
            DesiredError::UnknownDevice(_) => 404,
            DesiredError::Persist(_) => 500,
            _ => 400,
        }
    }
}

impl From<&DesiredError> for DeadLetterReason {
    fn from(e: &DesiredError) -> Self {
        match e {
            DesiredError::UnknownDevice(_) => DeadLetterReason::UnknownDevice,
            DesiredError::Empty => DeadLetterReason::EmptyDesired,
            DesiredError::UnknownQuantity(_) => DeadLetterReason::UnknownQuantity,
            DesiredError::NotControllable(_) => DeadLetterReason::NotControllable,
            DesiredError::OutOfRange(_) => DeadLetterReason::OutOfRange,
            DesiredError::BadValue { .. } => DeadLetterReason::BadValue,
            DesiredError::Conflict { .. } => DeadLetterReason::VersionConflict,
            DesiredError::Persist(_) => DeadLetterReason::PersistFailed,
        }
    }
}

/// All twins.
pub struct Twins {
    registry: Arc<Registry>,
    states: Vec<Mutex<TwinState>>,
    store: Arc<TwinStore>,
    /// Serializes desired-state writes (rare), so they reach the file in version order.
    desired_writes: tokio::sync::Mutex<()>,
    /// Cluster mode: desired state and versions shared with the other hubs.
    shared: Option<shared::SharedTwins>,
    outlet: Outlet,
    metrics: Arc<Metrics>,
    /// Live commands by id (shared with [`CommandCollector`] for `hub_commands_pending`).
    pending: Arc<Mutex<HashMap<String, DeviceIdx>>>,
    controls: Controls,
    settings: CommandSettings,
    command_metrics: Arc<CommandMetrics>,
    /// Documents to publish in the next twin round.
    stale: stale::Stale,
    /// Where commands to devices of Sparkplug edge nodes go (as DCMD).
    sparkplug: Option<Arc<Sparkplug>>,
}

impl Twins {
    /// Opens `data_dir/twins.redb` and builds every twin: versions and desired state from the
    /// file, reported values from `latest` (the time series store's newest points).
    pub fn open(
        registry: Arc<Registry>,
        data_dir: &Path,
        latest: impl Fn(&str) -> Vec<(Quantity, Point)>,
        outlet: Outlet,
        metrics: Arc<Metrics>,
    ) -> Result<Twins, PersistError> {
        let (store, loaded) = TwinStore::open(data_dir)?;
        let Loaded {
            mut desired,
            versions,
            clean,
        } = loaded;
        if !clean {
            tracing::warn!("previous run did not stop cleanly; twin versions resume with a gap");
        }
        let mut states = Vec::with_capacity(registry.devices().len());
        for d in registry.devices() {
            let mut s = TwinState {
                version: versions.get(&*d.id).copied().unwrap_or(0),
                ..TwinState::default()
            };
            s.checkpointed = s.version;
            if let Some(rec) = desired.remove(&*d.id) {
                s.desired_version = rec.desired_version;
                for (name, scalar) in rec.desired {
                    if let Some(q) = Quantity::from_name(&name)
                        && let Some(v) = scalar.to_value(q)
                    {
                        s.desired.push((q, v));
                    }
                }
            }
            for (q, p) in latest(&d.id) {
                s.reported.push(Reported {
                    quantity: q,
                    value: Value::from_f64(q, p.value),
                    ts_ms: p.ts_ms,
                    quality: p.quality,
                });
                s.updated_ms = s.updated_ms.max(p.ts_ms);
            }
            if s.updated_ms == 0 {
                // A twin without history is created now.
                s.updated_ms = protocols::time::now_ms();
            }
            states.push(Mutex::new(s));
        }
        Ok(Twins {
            stale: stale::Stale::new(states.len()),
            registry,
            states,
            store: Arc::new(store),
            desired_writes: tokio::sync::Mutex::new(()),
            outlet,
            metrics,
            pending: Arc::default(),
            controls: Controls::default(),
            settings: CommandSettings::default(),
            command_metrics: Arc::default(),
            sparkplug: None,
            shared: None,
        })
    }

    /// Cluster mode: desired state and versions are also kept in PostgreSQL, for the next hub
    /// to work these devices ([`Twins::adopt`]).
    pub fn with_shared(mut self, shared: shared::SharedTwins) -> Twins {
        self.shared = Some(shared);
        self
    }

    /// Takes over the twins of `devices` (cluster mode, when this hub takes their partition):
    /// desired state and versions as the previous owner left them; a command is sent for what
    /// reported state does not match yet, and the documents are published.
    pub async fn adopt(&self, devices: &[DeviceIdx], now_ms: i64) -> Result<(), PersistError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let ids: Vec<String> = devices
            .iter()
            .map(|d| self.registry.device(*d).id.to_string())
            .collect();
        let mut handed = shared.take(&ids).await?;
        for (d, id) in devices.iter().zip(&ids) {
            let Some(state) = self.states.get(*d as usize) else {
                continue;
            };
            if let Some(h) = handed.remove(id) {
                let mut s = state.lock();
                s.version = s.version.max(h.version);
                if let Some(rec) = h.desired {
                    s.desired = rec
                        .desired
                        .iter()
                        .filter_map(|(name, scalar)| {
                            let q = Quantity::from_name(name)?;
                            Some((q, scalar.to_value(q)?))
                        })
                        .collect();
                    s.desired_version = rec.desired_version;
                }
                s.checkpointed = s.version;
            }
            self.issue(*d, now_ms, true);
            self.publish(*d);
        }
        Ok(())
    }

    /// Gives up the twins of `devices` (cluster mode): their commands are no longer retried
    /// here, and (`write`) their versions are written for the next owner.
    pub async fn release(&self, devices: &[DeviceIdx], write: bool) -> Result<(), PersistError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        self.pending.lock().retain(|_, d| !devices.contains(d));
        if !write {
            return Ok(());
        }
        let versions: Vec<(String, u64)> = devices
            .iter()
            .filter_map(|d| {
                let v = self.states.get(*d as usize)?.lock().version;
                Some((self.registry.device(*d).id.to_string(), v))
            })
            .collect();
        shared.give(&versions).await
    }

    /// Sends commands to devices of Sparkplug edge nodes through `sparkplug` (DCMD).
    pub fn with_sparkplug(mut self, sparkplug: Arc<Sparkplug>) -> Twins {
        self.sparkplug = Some(sparkplug);
        self
    }

    /// What may be written to each device.
    pub fn controls(&self) -> &Controls {
        &self.controls
    }

    /// Uses the devices' profiles for range checks and these retry and timeout settings.
    pub fn with_commands(mut self, controls: Controls, settings: CommandSettings) -> Twins {
        self.controls = controls;
        self.settings = settings;
        self
    }

    /// Takes reported values from the store's newest points where they are newer than what the
    /// twin has (cluster mode: when this hub takes the device's partition, the previous owner
    /// may have stored readings this hub never saw). Returns whether the twin changed.
    pub fn refresh_reported(&self, device: DeviceIdx, latest: &[(Quantity, Point)]) -> bool {
        let Some(state) = self.states.get(device as usize) else {
            return false;
        };
        let mut s = state.lock();
        let mut changed = false;
        for (q, p) in latest {
            let new = Reported {
                quantity: *q,
                value: Value::from_f64(*q, p.value),
                ts_ms: p.ts_ms,
                quality: p.quality,
            };
            match s.reported.iter_mut().find(|r| r.quantity == *q) {
                Some(r) if r.ts_ms >= p.ts_ms => {}
                Some(r) => {
                    *r = new;
                    changed = true;
                }
                None => {
                    s.reported.push(new);
                    changed = true;
                }
            }
        }
        if changed {
            s.bump(protocols::time::now_ms());
        }
        changed
    }

    /// Applies reported values of one timestamp group. Returns whether the twin changed (the
    /// caller publishes it, coalescing many changes into one document).
    pub fn apply_reported(
        &self,
        device: DeviceIdx,
        ts_ms: i64,
        values: &[NormValue],
        now_ms: i64,
    ) -> bool {
        let Some(state) = self.states.get(device as usize) else {
            return false;
        };
        let mut s = state.lock();
        let mut changed = false;
        for v in values {
            let new = Reported {
                quantity: v.quantity,
                value: v.value,
                ts_ms,
                quality: v.quality,
            };
            match s.reported.iter_mut().find(|r| r.quantity == v.quantity) {
                // Never let an older reading replace a newer one.
                Some(r) if r.ts_ms > ts_ms => {}
                Some(r) => {
                    if *r != new {
                        *r = new;
                        changed = true;
                    }
                }
                None => {
                    s.reported.push(new);
                    changed = true;
                }
            }
        }
        if changed {
            s.bump(now_ms);
            if s.commands.iter().any(Tracked::live)
                && let Some(id) = s.settle(now_ms, &self.command_metrics, false)
            {
                self.pending.lock().remove(&id);
            }
        }
        changed
    }

    /// Sets whether a device is online. Returns whether it changed.
    pub fn set_online(&self, device: DeviceIdx, online: bool, now_ms: i64) -> bool {
        let Some(state) = self.states.get(device as usize) else {
            return false;
        };
        let mut s = state.lock();
        if s.online == online {
            return false;
        }
        s.online = online;
        s.bump(now_ms);
        let reissue = online && !s.commands.iter().any(Tracked::live) && s.delta().next().is_some();
        drop(s);
        if reissue {
            // Desired state converges: a device back online gets what it missed.
            self.issue(device, now_ms, true);
        }
        true
    }

    /// Whether a device is online.
    pub fn online(&self, device: DeviceIdx) -> bool {
        self.states
            .get(device as usize)
            .is_some_and(|s| s.lock().online)
    }

    /// The twin's version now.
    pub fn version(&self, device: DeviceIdx) -> u64 {
        self.states
            .get(device as usize)
            .map_or(0, |s| s.lock().version)
    }

    /// The twin document of a device.
    pub fn document(&self, device: DeviceIdx) -> Twin {
        let d = self.registry.device(device);
        let s = self.states[device as usize].lock();
        let reported = s
            .reported
            .iter()
            .map(|r| {
                (
                    r.quantity.name().to_string(),
                    ReportedValue {
                        value: Scalar::from_value(r.quantity, r.value),
                        unit: r.quantity.unit().to_string(),
                        ts: Rfc3339::from_ms(r.ts_ms).to_string(),
                        quality: r.quality,
                    },
                )
            })
            .collect();
        let scalar_map =
            |it: &mut dyn Iterator<Item = (Quantity, Value)>| -> BTreeMap<String, Scalar> {
                it.map(|(q, v)| (q.name().to_string(), Scalar::from_value(q, v)))
                    .collect()
            };
        Twin {
            device: d.id.to_string(),
            kind: d.kind.to_string(),
            version: s.version,
            online: s.online,
            reported,
            desired: scalar_map(&mut s.desired.iter().copied()),
            delta: scalar_map(&mut s.delta()),
            updated_at: Rfc3339::from_ms(s.updated_ms).to_string(),
            commands: s.commands.iter().map(Tracked::view).collect(),
        }
    }

    /// Marks a device's document for the next twin round (reported values, online state).
    pub fn mark_stale(&self, device: DeviceIdx) {
        self.stale.mark(device);
    }

    /// The devices marked for this round; publish each with [`Twins::publish_stale`].
    pub fn take_stale(&self) -> Vec<DeviceIdx> {
        self.stale.take()
    }

    /// Unmarks and publishes a device's document (a change from now on marks it again).
    pub fn publish_stale(&self, device: DeviceIdx) {
        self.stale.clear(device);
        self.publish(device);
    }

    /// Publishes the twin document now, retained, on `v1/twin/{id}`.
    pub fn publish(&self, device: DeviceIdx) {
        let doc = self.document(device);
        match serde_json::to_vec(&doc) {
            Ok(bytes) => {
                let d = self.registry.device(device);
                self.outlet.publish(&d.twin_topic, Bytes::from(bytes), true);
                self.metrics.twins_published.fetch_add(1, Relaxed);
            }
            Err(e) => tracing::error!(device = %doc.device, "twin not serializable: {e}"),
        }
    }

    /// Validates and applies a desired-state update, makes it durable, publishes the twin and
    /// sends a `set` command for the values that differ from reported state.
    pub async fn set_desired(
        &self,
        device_id: &str,
        update: DesiredUpdate,
        now_ms: i64,
    ) -> Result<Twin, DesiredError> {
        let device = self
            .registry
            .device_by_id(device_id)
            .ok_or_else(|| DesiredError::UnknownDevice(protocols::id::clip(device_id)))?;
        if update.values.is_empty() {
            return Err(DesiredError::Empty);
        }
        let mut values = Vec::with_capacity(update.values.len());
        for (name, scalar) in &update.values {
            let q = Quantity::from_name(name)
                .ok_or_else(|| DesiredError::UnknownQuantity(protocols::id::clip(name)))?;
            let writable = match self.controls.profile(device.idx) {
                Some(p) => p.point(q).is_some_and(|pt| pt.writable),
                None => q.is_controllable(),
            };
            if !writable {
                return Err(DesiredError::NotControllable(q.name()));
            }
            let v = scalar.to_value(q).ok_or(DesiredError::BadValue {
                quantity: q.name(),
                detail: "wrong type",
            })?;
            self.controls
                .check(device.idx, q, v)
                .map_err(DesiredError::OutOfRange)?;
            values.push((q, v));
        }

        let _writer = self.desired_writes.lock().await;
        let idx = device.idx;
        let (record, version) = {
            let s = self.states[idx as usize].lock();
            if let Some(given) = update.version
                && (given < s.desired_version || given > s.version)
            {
                return Err(DesiredError::Conflict {
                    given,
                    changed: s.desired_version,
                    current: s.version,
                });
            }
            let mut desired = s.desired.clone();
            for (q, v) in &values {
                match desired.iter_mut().find(|(dq, _)| dq == q) {
                    Some(slot) => slot.1 = *v,
                    None => desired.push((*q, *v)),
                }
            }
            let version = s.version + 1;
            let record = DesiredRecord {
                desired_version: version,
                desired: desired
                    .iter()
                    .map(|(q, v)| (q.name().to_string(), Scalar::from_value(*q, *v)))
                    .collect(),
            };
            (record, version)
        };
        // Durable before anyone sees it: in a cluster, where the next owner finds it first.
        if let Some(shared) = &self.shared {
            shared.save_desired(&device.id, &record, version).await?;
        }
        let store = self.store.clone();
        let id = device.id.clone();
        let rec = record.clone();
        tokio::task::spawn_blocking(move || store.save_desired(&id, &rec, version))
            .await
            .map_err(|e| {
                DesiredError::Persist(PersistError::Corrupt {
                    device: device_id.to_string(),
                    detail: format!("writer task failed: {e}"),
                })
            })??;
        {
            let mut s = self.states[idx as usize].lock();
            for (q, v) in &values {
                match s.desired.iter_mut().find(|(dq, _)| dq == q) {
                    Some(slot) => slot.1 = *v,
                    None => s.desired.push((*q, *v)),
                }
            }
            // Reported changes may have moved the version meanwhile; it still only grows.
            s.version = s.version.max(version - 1);
            s.bump(now_ms);
            s.desired_version = s.version;
            s.checkpointed = s.checkpointed.max(version);
        }
        // The command is part of the same change: the version moved once.
        self.issue(idx, now_ms, false);
        self.publish(idx);
        Ok(self.document(idx))
    }

    /// Replaces the live command of a device with one carrying its whole delta (or settles it
    /// when the delta is empty) and sends it. `bump`: move the version (false when the caller
    /// already did for the same change).
    fn issue(&self, device: DeviceIdx, now_ms: i64, bump: bool) {
        let command = {
            let mut s = self.states[device as usize].lock();
            let delta: Vec<(Quantity, Value)> = s.delta().collect();
            let mut ended = None;
            if let Some(old) = s.live_command() {
                old.state = if delta.is_empty() {
                    self.command_metrics.done.fetch_add(1, Relaxed);
                    CommandState::Done
                } else {
                    self.command_metrics.superseded.fetch_add(1, Relaxed);
                    CommandState::Superseded
                };
                old.updated_ms = now_ms;
                ended = Some(old.id.clone());
            }
            if let Some(id) = &ended {
                self.pending.lock().remove(id);
            }
            if bump && (ended.is_some() || !delta.is_empty()) {
                s.bump(now_ms);
            }
            if delta.is_empty() {
                return;
            }
            let id = format!("set-{}-{}", self.registry.device(device).id, s.version);
            let retry = self.settings.retry.as_millis() as i64;
            let c = Tracked {
                id: id.clone(),
                state: CommandState::Pending,
                args: delta,
                attempts: 1,
                first_sent_ms: now_ms,
                updated_ms: now_ms,
                next_send_ms: now_ms + retry,
                deadline_ms: now_ms + self.settings.timeout.as_millis() as i64,
                error: None,
            };
            s.push_command(c.clone());
            self.pending.lock().insert(id, device);
            c
        };
        self.send_set(device, &command.id, &command.args);
        self.publish(device);
    }

    fn send_set(&self, device: DeviceIdx, id: &str, values: &[(Quantity, Value)]) {
        let d = self.registry.device(device);
        if let (Some(a), Some(sp)) = (d.agent, &self.sparkplug) {
            let agent = self.registry.agent(a);
            if agent.protocol == AgentProtocol::Sparkplug {
                // Sparkplug has no command ids or results: the device's data closes the
                // command when it reports the value; until then it is sent again.
                match sp.write(
                    &agent.id,
                    &d.id,
                    values,
                    protocols::time::now_ms().max(0) as u64,
                ) {
                    Ok(()) => {
                        self.metrics.commands_sent.fetch_add(1, Relaxed);
                    }
                    Err(e) => tracing::info!(device = %d.id, command = id, "DCMD not sent: {e}"),
                }
                return;
            }
        }
        let mut args = serde_json::Map::new();
        for (q, v) in values {
            let json = match serde_json::to_value(Scalar::from_value(*q, *v)) {
                Ok(j) => j,
                Err(_) => continue,
            };
            args.insert(q.name().to_string(), json);
        }
        let command = Command {
            id: id.to_string(),
            name: "set".to_string(),
            device: d.agent.map(|_| d.id.to_string()),
            args,
        };
        match serde_json::to_vec(&command) {
            Ok(bytes) => {
                self.outlet.publish(&d.cmd_topic, Bytes::from(bytes), false);
                self.metrics.commands_sent.fetch_add(1, Relaxed);
            }
            Err(e) => tracing::error!("command not serializable: {e}"),
        }
    }

    /// Records a command's result from `sender` (the device or its agent; others are
    /// ignored). `ok: false` fails the command at once; `ok: true` stops the resends.
    /// Returns whether a live command changed.
    pub fn command_result(&self, sender: &str, result: &CommandResult, now_ms: i64) -> bool {
        let Some(device) = self.pending.lock().get(&result.id).copied() else {
            tracing::debug!(command = %result.id, "result for no live command");
            return false;
        };
        let d = self.registry.device(device);
        let from_agent = d
            .agent
            .is_some_and(|a| &*self.registry.agent(a).id == sender);
        if &*d.id != sender && !from_agent {
            tracing::warn!(command = %result.id, sender, "result from a client the command was not for");
            return false;
        }
        {
            let mut s = self.states[device as usize].lock();
            let Some(c) = s
                .commands
                .iter_mut()
                .find(|c| c.id == result.id && c.live())
            else {
                return false;
            };
            if result.ok {
                if c.state == CommandState::Acknowledged {
                    return false;
                }
                c.state = CommandState::Acknowledged;
            } else {
                c.state = CommandState::Failed;
                c.error = Some(
                    result
                        .error
                        .clone()
                        .unwrap_or_else(|| "refused".to_string())
                        .chars()
                        .take(200)
                        .collect(),
                );
                self.command_metrics.refused.fetch_add(1, Relaxed);
                tracing::warn!(
                    command = %result.id,
                    device = %d.id,
                    error = result.error.as_deref().unwrap_or(""),
                    "command failed"
                );
            }
            c.updated_ms = now_ms;
            let failed = c.state == CommandState::Failed;
            s.bump(now_ms);
            if failed {
                self.pending.lock().remove(&result.id);
            } else {
                // Reported state may already match.
                if let Some(id) = s.settle(now_ms, &self.command_metrics, false) {
                    self.pending.lock().remove(&id);
                }
            }
        }
        self.publish(device);
        true
    }

    /// Resends live commands whose wait is over and fails those past their timeout. Call it
    /// every [`Twins::tick_interval`].
    pub fn tick(&self, now_ms: i64) {
        let live: Vec<(String, DeviceIdx)> = self
            .pending
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (id, device) in live {
            let mut resend = None;
            let changed = {
                let mut s = self.states[device as usize].lock();
                if let Some(done) = s.settle(now_ms, &self.command_metrics, true) {
                    self.pending.lock().remove(&done);
                    true
                } else if let Some(c) = s.commands.iter_mut().find(|c| c.id == id && c.live()) {
                    if now_ms >= c.deadline_ms {
                        c.state = CommandState::Failed;
                        c.error = Some(format!(
                            "reported state did not match within {} ({} attempts)",
                            protocols::config::format_duration(self.settings.timeout),
                            c.attempts
                        ));
                        c.updated_ms = now_ms;
                        self.command_metrics.timed_out.fetch_add(1, Relaxed);
                        self.pending.lock().remove(&id);
                        s.bump(now_ms);
                        true
                    } else if c.state == CommandState::Pending && now_ms >= c.next_send_ms {
                        c.attempts += 1;
                        let wait = self
                            .settings
                            .retry
                            .saturating_mul(1 << (c.attempts - 1).min(16))
                            .min(MAX_RETRY_WAIT);
                        c.next_send_ms = now_ms + wait.as_millis() as i64;
                        c.updated_ms = now_ms;
                        self.command_metrics.retried.fetch_add(1, Relaxed);
                        resend = Some(c.args.clone());
                        s.bump(now_ms);
                        true
                    } else {
                        false
                    }
                } else {
                    self.pending.lock().remove(&id);
                    false
                }
            };
            if let Some(args) = resend {
                self.send_set(device, &id, &args);
            }
            if changed {
                self.publish(device);
            }
        }
    }

    /// How often [`Twins::tick`] should run.
    pub fn tick_interval(&self) -> Duration {
        (self.settings.retry / 4).clamp(Duration::from_millis(20), Duration::from_millis(500))
    }

    /// Live commands (pending or acknowledged): (command id, device).
    pub fn pending_commands(&self) -> Vec<(String, DeviceIdx)> {
        self.pending
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// The collector of the `hub_commands_*` families for the `/metrics` registry. It holds
    /// the command counters and the pending-command map, not the twins.
    pub fn collector(&self) -> CommandCollector {
        CommandCollector {
            metrics: self.command_metrics.clone(),
            pending: self.pending.clone(),
        }
    }

    /// Writes changed versions to the file; `clean` marks an orderly shutdown.
    pub fn checkpoint(&self, clean: bool) -> Result<(), PersistError> {
        let mut changed: Vec<(DeviceIdx, u64)> = Vec::new();
        for (i, s) in self.states.iter().enumerate() {
            let s = s.lock();
            if s.version != s.checkpointed {
                changed.push((i as DeviceIdx, s.version));
            }
        }
        self.store.checkpoint(
            changed
                .iter()
                .map(|(i, v)| (&*self.registry.device(*i).id, *v)),
            clean,
        )?;
        for (i, v) in changed {
            let mut s = self.states[i as usize].lock();
            s.checkpointed = s.checkpointed.max(v);
        }
        Ok(())
    }
}

/// Exports the `hub_commands_*` families (besides `hub_commands_sent_total`, which the core
/// metrics carry) at scrape time; see [`Twins::collector`].
pub struct CommandCollector {
    metrics: Arc<CommandMetrics>,
    pending: Arc<Mutex<HashMap<String, DeviceIdx>>>,
}

impl std::fmt::Debug for CommandCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandCollector")
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for CommandCollector {
    fn encode(&self, mut e: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use crate::metrics::{encode_counter, encode_family, encode_one};
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let m = &*self.metrics;
        encode_counter(
            &mut e,
            "commands_retried",
            "Commands sent again (no matching report yet).",
            m.retried.load(Relaxed),
        )?;
        encode_family(
            &mut e,
            "commands_finished",
            "Commands by how they ended.",
            MetricType::Counter,
            [
                ("done", &m.done),
                ("refused", &m.refused),
                ("timeout", &m.timed_out),
                ("superseded", &m.superseded),
            ]
            .map(|(how, v)| ([("result", how)], ConstCounter::new(v.load(Relaxed)))),
        )?;
        let pending = self.pending.lock().len() as u64;
        encode_one(
            &mut e,
            "commands_pending",
            "Commands waiting for reported state to match.",
            ConstGauge::new(pending),
        )
    }
}

#[cfg(test)]
mod tests;
