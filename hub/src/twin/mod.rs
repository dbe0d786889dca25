//! Device twins: reported values, desired values, delta, online state and a version that only
//! grows.
//!
//! State is one small record per device behind its own lock, indexed by the registry's dense
//! device index, so the pipeline updates twins of different devices in parallel without a map
//! lookup. Reported values only move forward in time: a reading older than the one held never
//! replaces it (agents replay their queues after a link cut, out of order with live data).
//!
//! Desired state is written through [`Twins::set_desired`] (MQTT `v1/twin/{id}/desired` and
//! `PATCH /api/v1/devices/{id}/desired`): checked, made durable in `twins.redb`, applied, and
//! turned into a `set` command to the device or its agent. Pending commands are kept so that
//! retries and timeouts (a later issue) fit here without changing callers.

pub mod persist;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use parking_lot::Mutex;
use protocols::messages::{Command, CommandResult, DesiredUpdate, ReportedValue, Scalar, Twin};
use protocols::time::Rfc3339;
use protocols::{Quality, Quantity, Value};

use crate::feeds::NormValue;
use crate::metrics::Metrics;
use crate::outbound::Outlet;
use crate::registry::{DeviceIdx, Registry};
use crate::store::Point;
use persist::{DesiredRecord, Loaded, PersistError, TwinStore};

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
}

impl TwinState {
    fn bump(&mut self, now_ms: i64) {
        self.version += 1;
        self.updated_ms = now_ms;
    }

    fn reported(&self, q: Quantity) -> Option<&Reported> {
        self.reported.iter().find(|r| r.quantity == q)
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
    /// Wrong type or impossible value.
    #[error("bad value for `{quantity}`: {detail}")]
    BadValue {
        /// The quantity.
        quantity: &'static str,
        /// Why.
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
        match self {
            DesiredError::UnknownDevice(_) => "unknown_device",
            DesiredError::Empty => "empty_desired",
            DesiredError::UnknownQuantity(_) => "unknown_quantity",
            DesiredError::NotControllable(_) => "not_controllable",
            DesiredError::BadValue { .. } => "bad_value",
            DesiredError::Conflict { .. } => "version_conflict",
            DesiredError::Persist(_) => "persist_failed",
        }
    }
}

/// Pending commands kept before old ones are pruned.
const MAX_PENDING: usize = 1024;
/// How long an unanswered command is kept once pruning starts.
const PENDING_FOR_MS: i64 = 3_600_000;

/// A command waiting for its result.
#[derive(Clone, Debug)]
pub struct PendingCommand {
    /// The device it concerns.
    pub device: DeviceIdx,
    /// The command as sent.
    pub command: Command,
    /// When it was sent, epoch ms.
    pub sent_ms: i64,
}

/// All twins.
pub struct Twins {
    registry: Arc<Registry>,
    states: Vec<Mutex<TwinState>>,
    store: Arc<TwinStore>,
    /// Serializes desired-state writes (rare), so they reach the file in version order.
    desired_writes: tokio::sync::Mutex<()>,
    outlet: Outlet,
    metrics: Arc<Metrics>,
    pending: Mutex<HashMap<String, PendingCommand>>,
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
                s.updated_ms = crate::pipeline::now_ms();
            }
            states.push(Mutex::new(s));
        }
        Ok(Twins {
            registry,
            states,
            store: Arc::new(store),
            desired_writes: tokio::sync::Mutex::new(()),
            outlet,
            metrics,
            pending: Mutex::new(HashMap::new()),
        })
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
        }
    }

    /// Publishes the twin document, retained, on `v1/twin/{id}`.
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
            .ok_or_else(|| DesiredError::UnknownDevice(device_id.chars().take(64).collect()))?;
        if update.values.is_empty() {
            return Err(DesiredError::Empty);
        }
        let mut values = Vec::with_capacity(update.values.len());
        for (name, scalar) in &update.values {
            let q = Quantity::from_name(name)
                .ok_or_else(|| DesiredError::UnknownQuantity(name.chars().take(64).collect()))?;
            if !q.is_controllable() {
                return Err(DesiredError::NotControllable(q.name()));
            }
            let v = scalar.to_value(q).ok_or(DesiredError::BadValue {
                quantity: q.name(),
                detail: "wrong type",
            })?;
            if !q.is_plausible(&v) {
                return Err(DesiredError::BadValue {
                    quantity: q.name(),
                    detail: "outside the quantity's range",
                });
            }
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
        // Durable before anyone sees it.
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
        let command_args: Vec<(Quantity, Value)> = {
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
            let delta: Vec<(Quantity, Value)> = s.delta().collect();
            values
                .iter()
                .copied()
                .filter(|(q, _)| delta.iter().any(|(dq, _)| dq == q))
                .collect()
        };
        self.publish(idx);
        if !command_args.is_empty() {
            self.send_set(idx, &command_args, now_ms);
        }
        Ok(self.document(idx))
    }

    fn send_set(&self, device: DeviceIdx, values: &[(Quantity, Value)], now_ms: i64) {
        let d = self.registry.device(device);
        let version = self.version(device);
        let mut args = serde_json::Map::new();
        for (q, v) in values {
            let json = match serde_json::to_value(Scalar::from_value(*q, *v)) {
                Ok(j) => j,
                Err(_) => continue,
            };
            args.insert(q.name().to_string(), json);
        }
        let command = Command {
            id: format!("set-{}-{version}", d.id),
            name: "set".to_string(),
            device: d.agent.map(|_| d.id.to_string()),
            args,
        };
        match serde_json::to_vec(&command) {
            Ok(bytes) => {
                self.outlet.publish(&d.cmd_topic, Bytes::from(bytes), false);
                self.metrics.commands_sent.fetch_add(1, Relaxed);
                let mut pending = self.pending.lock();
                if pending.len() >= MAX_PENDING {
                    // Devices that never answer must not grow this forever.
                    pending.retain(|_, p| now_ms - p.sent_ms < PENDING_FOR_MS);
                }
                pending.insert(
                    command.id.clone(),
                    PendingCommand {
                        device,
                        command,
                        sent_ms: now_ms,
                    },
                );
            }
            Err(e) => tracing::error!("command not serializable: {e}"),
        }
    }

    /// Records a command's result; returns the command it answers, if it was pending.
    pub fn command_result(&self, result: &CommandResult) -> Option<PendingCommand> {
        let pending = self.pending.lock().remove(&result.id);
        match (&pending, result.ok) {
            (Some(p), false) => tracing::warn!(
                command = %result.id,
                device = %self.registry.device(p.device).id,
                error = result.error.as_deref().unwrap_or(""),
                "command failed"
            ),
            (None, _) => tracing::debug!(command = %result.id, "result for an unknown command"),
            _ => {}
        }
        pending
    }

    /// Commands sent and not answered yet.
    pub fn pending_commands(&self) -> Vec<PendingCommand> {
        self.pending.lock().values().cloned().collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HubConfig;
    use crate::ingress::{Outbound, Publisher};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Outbound>>);
    impl Publisher for Recorder {
        fn publish(&self, msg: Outbound) {
            self.0.lock().push(msg);
        }
    }

    const CFG: &str = r#"
[[devices]]
id = "SL-1"
kind = "streetlight"
agent = "AG-1"

[[devices]]
id = "SL-2"
kind = "streetlight"
secret = "device-secret"

[[agents]]
id = "AG-1"
secret = "agent-secret"
"#;

    fn twins(dir: &Path) -> (Twins, Arc<Recorder>) {
        let registry = Arc::new(Registry::from_config(&HubConfig::from_toml(CFG).unwrap()));
        let rec = Arc::new(Recorder::default());
        let t = Twins::open(
            registry,
            dir,
            |_| Vec::new(),
            Outlet::new(rec.clone()),
            Arc::new(Metrics::default()),
        )
        .unwrap();
        (t, rec)
    }

    fn nv(q: Quantity, v: f64) -> NormValue {
        NormValue {
            quantity: q,
            value: Value::Number(v),
            quality: Quality::Good,
        }
    }

    #[test]
    fn versions_grow_and_older_readings_never_win() {
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = twins(dir.path());
        assert!(t.apply_reported(0, 2000, &[nv(Quantity::DimmingLevel, 40.0)], 5));
        assert_eq!(t.version(0), 1);
        // Older: ignored, no version change.
        assert!(!t.apply_reported(0, 1000, &[nv(Quantity::DimmingLevel, 10.0)], 6));
        assert_eq!(t.version(0), 1);
        // The same again: no change.
        assert!(!t.apply_reported(0, 2000, &[nv(Quantity::DimmingLevel, 40.0)], 6));
        // Mixed: one older, one new quantity.
        assert!(t.apply_reported(
            0,
            1500,
            &[
                nv(Quantity::DimmingLevel, 5.0),
                nv(Quantity::LampPower, 61.5)
            ],
            7
        ));
        let doc = t.document(0);
        assert_eq!(doc.version, 2);
        assert_eq!(doc.reported["dimming_level"].value, Scalar::Number(40.0));
        assert_eq!(doc.reported["lamp_power"].unit, "W");
        assert_eq!(doc.reported["lamp_power"].ts, "1970-01-01T00:00:01.500Z");
        assert!(t.set_online(0, true, 8));
        assert!(!t.set_online(0, true, 9));
        assert_eq!(t.version(0), 3);
    }

    #[tokio::test]
    async fn desired_delta_command_conflict_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (t, rec) = twins(dir.path());
            t.apply_reported(0, 1000, &[nv(Quantity::DimmingLevel, 100.0)], 1);
            let v = t.version(0);
            let upd = |version, level: f64| DesiredUpdate {
                version,
                values: [("dimming_level".to_string(), Scalar::Number(level))].into(),
            };
            let doc = t.set_desired("SL-1", upd(Some(v), 40.0), 2).await.unwrap();
            assert_eq!(doc.version, v + 1);
            assert_eq!(doc.desired["dimming_level"], Scalar::Number(40.0));
            assert_eq!(doc.delta["dimming_level"], Scalar::Number(40.0));
            let sent = rec.0.lock().clone();
            let cmd = sent
                .iter()
                .find(|m| m.topic == "v1/agents/AG-1/cmd")
                .unwrap();
            let cmd: Command = serde_json::from_slice(&cmd.payload).unwrap();
            assert_eq!(cmd.name, "set");
            assert_eq!(cmd.device.as_deref(), Some("SL-1"));
            assert_eq!(cmd.args["dimming_level"], serde_json::json!(40.0));
            assert_eq!(t.pending_commands().len(), 1);
            let twin_msg = sent.iter().find(|m| m.topic == "v1/twin/SL-1").unwrap();
            assert!(twin_msg.retain);

            // Telemetry moving the version does not make a writer's version stale ...
            t.apply_reported(0, 2000, &[nv(Quantity::LampPower, 3.0)], 3);
            let seen = doc.version;
            t.set_desired("SL-1", upd(Some(seen + 1), 30.0), 4)
                .await
                .unwrap();
            // ... but a desired change after the writer's version does.
            let e = t
                .set_desired("SL-1", upd(Some(seen), 20.0), 5)
                .await
                .unwrap_err();
            assert!(matches!(e, DesiredError::Conflict { .. }), "{e}");
            // Nor can a writer claim a version from the future.
            let e = t
                .set_desired("SL-1", upd(Some(u64::MAX), 20.0), 5)
                .await
                .unwrap_err();
            assert!(matches!(e, DesiredError::Conflict { .. }));

            // Reported catches up: delta empties.
            t.apply_reported(0, 3000, &[nv(Quantity::DimmingLevel, 30.0)], 6);
            assert!(t.document(0).delta.is_empty());

            let bad = |name: &str, s: Scalar| DesiredUpdate {
                version: None,
                values: [(name.to_string(), s)].into(),
            };
            assert_eq!(
                t.set_desired("SL-1", bad("lamp_power", Scalar::Number(1.0)), 7)
                    .await
                    .unwrap_err()
                    .label(),
                "not_controllable"
            );
            assert_eq!(
                t.set_desired("SL-1", bad("dimming_level", Scalar::Bool(true)), 7)
                    .await
                    .unwrap_err()
                    .label(),
                "bad_value"
            );
            assert_eq!(
                t.set_desired("SL-1", bad("dimming_level", Scalar::Number(250.0)), 7)
                    .await
                    .unwrap_err()
                    .label(),
                "bad_value"
            );
            assert_eq!(
                t.set_desired("SL-1", bad("flux", Scalar::Number(1.0)), 7)
                    .await
                    .unwrap_err()
                    .label(),
                "unknown_quantity"
            );
            assert_eq!(
                t.set_desired("nope", bad("dimming_level", Scalar::Number(1.0)), 7)
                    .await
                    .unwrap_err()
                    .label(),
                "unknown_device"
            );
            // Direct device: command on its own topic, without `device`.
            let before = rec.0.lock().len();
            t.set_desired("SL-2", upd(None, 10.0), 8).await.unwrap();
            let sent = rec.0.lock()[before..].to_vec();
            let cmd = sent
                .iter()
                .find(|m| m.topic == "v1/devices/SL-2/cmd")
                .unwrap();
            let cmd: Command = serde_json::from_slice(&cmd.payload).unwrap();
            assert_eq!(cmd.device, None);
            t.checkpoint(true).unwrap();
        }
        let (t, _) = twins(dir.path());
        let doc = t.document(0);
        assert_eq!(doc.desired["dimming_level"], Scalar::Number(30.0));
        // A clean stop: the version resumes exactly where it was.
        assert_eq!(doc.version, 5);
        assert!(t.set_online(0, true, 9));
        assert_eq!(t.version(0), 6);
    }
}
