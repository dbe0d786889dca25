//! The rule engine: `[[rules]]` of hub.toml evaluated on every stored reading, on device time.
//!
//! A rule set is compiled once (and again on reload) into a table per device: which
//! quantities of the device any rule watches (a bit mask) and which rules those are. A reading
//! of a quantity no rule watches costs one mask test, so the common case in a 500k readings/s
//! pipeline is nearly free. State per (rule, device) lives in [`SHARDS`] locked maps, sharded
//! by device, so evaluations of different devices never wait for each other.
//!
//! Conditions (semantics in docs/decisions/0011-alerts-and-commands.md):
//! - `above`/`below` with optional hysteresis (`clear_below`/`clear_above`) and hold (`for`);
//! - `equals` (booleans such as `motion`, enum states such as `lamp_status`);
//! - `rise_per_hour` over `window`, a least-squares slope on device time ([`window`]);
//! - `silent_for`, evaluated by [`Rules::tick`] on hub time.
//!
//! Every condition may be limited to a daily window (`active = "22:00-06:00"`, local time at
//! `[hub] utc_offset`); outside it the condition counts as false.
//!
//! The engine decides *when* an alert starts, continues and ends, and tells an [`AlertSink`]
//! (the alert book). The sink is told under the (rule, device) lock, so for one key the
//! transitions arrive in order and an episode is raised exactly once.

pub mod window;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use protocols::config::ConfigError;
use protocols::topic::AlertLevel;
use protocols::{Quantity, Value, ValueKind};

use crate::config::{DailyWindow, HubConfig, RuleConfig, UtcOffset};
use crate::feeds::NormValue;
use crate::registry::{Device, DeviceIdx, Registry};
use series_store::{Agg, Query, SeriesId, SeriesStore};
use window::RiseWindow;

/// Shards of the (rule, device) state.
pub const SHARDS: usize = 64;
/// Default window of `rise_per_hour`.
pub const DEFAULT_RISE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Index of a rule in its set.
pub type RuleIdx = u16;

/// A compiled condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// Fires while `value > limit`; clears when `value < clear`, or when `value <= limit`
    /// without hysteresis.
    Above {
        /// The threshold.
        limit: f64,
        /// `clear_below`.
        clear: Option<f64>,
    },
    /// Fires while `value < limit`; clears when `value > clear`, or when `value >= limit`.
    Below {
        /// The threshold.
        limit: f64,
        /// `clear_above`.
        clear: Option<f64>,
    },
    /// Fires while the value equals this; clears when it differs.
    Equals(Value),
    /// Fires while the rise per hour over the window exceeds `per_hour`; clears when it is
    /// below `clear` (`clear_below`), or at or below `per_hour`.
    Rise {
        /// Threshold, canonical unit per hour.
        per_hour: f64,
        /// `clear_below`.
        clear: Option<f64>,
        /// Window, ms.
        window_ms: i64,
    },
    /// Fires when nothing arrived from the device for this long (hub time).
    Silent {
        /// ms.
        after_ms: i64,
    },
}

impl Condition {
    /// (fires, clears) for a value.
    fn test(&self, v: f64) -> (bool, bool) {
        match *self {
            Condition::Above { limit, clear } => (v > limit, clear.map_or(v <= limit, |c| v < c)),
            Condition::Below { limit, clear } => (v < limit, clear.map_or(v >= limit, |c| v > c)),
            Condition::Rise {
                per_hour, clear, ..
            } => (v > per_hour, clear.map_or(v <= per_hour, |c| v < c)),
            Condition::Equals(want) => {
                let hit = (want.as_f64() - v).abs() <= 1e-9 * v.abs().max(1.0);
                (hit, !hit)
            }
            Condition::Silent { after_ms } => {
                let hit = v * 1000.0 >= after_ms as f64;
                (hit, !hit)
            }
        }
    }

    /// The threshold shown in alerts.
    pub fn threshold(&self) -> f64 {
        match *self {
            Condition::Above { limit, .. } | Condition::Below { limit, .. } => limit,
            Condition::Equals(v) => v.as_f64(),
            Condition::Rise { per_hour, .. } => per_hour,
            Condition::Silent { after_ms } => after_ms as f64 / 1000.0,
        }
    }
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// Its id.
    pub id: Arc<str>,
    /// As configured.
    pub config: RuleConfig,
    /// The watched quantity.
    pub quantity: Option<Quantity>,
    /// The condition.
    pub condition: Condition,
    /// `for`, ms.
    pub hold_ms: i64,
    /// `active`.
    pub active: Option<DailyWindow>,
    /// Warning level.
    pub level: AlertLevel,
}

impl Rule {
    fn compile(c: &RuleConfig) -> Rule {
        let quantity = c.quantity.as_deref().and_then(Quantity::from_name);
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        let condition = if let Some(limit) = c.above {
            Condition::Above {
                limit,
                clear: c.clear_below,
            }
        } else if let Some(limit) = c.below {
            Condition::Below {
                limit,
                clear: c.clear_above,
            }
        } else if let (Some(want), Some(q)) = (&c.equals, quantity) {
            // Validated: the value has the quantity's type.
            Condition::Equals(want.to_value(q).unwrap_or(Value::Number(f64::NAN)))
        } else if let Some(per_hour) = c.rise_per_hour {
            Condition::Rise {
                per_hour,
                clear: c.clear_below,
                window_ms: ms(c.window.map_or(DEFAULT_RISE_WINDOW, |w| w.0)),
            }
        } else {
            Condition::Silent {
                after_ms: ms(c.silent_for.map_or(Duration::from_secs(600), |s| s.0)),
            }
        };
        Rule {
            id: c.id.as_str().into(),
            config: c.clone(),
            quantity,
            condition,
            hold_ms: c.hold.map_or(0, |h| ms(h.0)),
            active: c.active,
            level: c.level,
        }
    }

    /// Whether the rule applies to a device (kind, device and department scope).
    pub fn applies_to(&self, d: &Device) -> bool {
        let c = &self.config;
        c.kind.as_deref().is_none_or(|k| k == "*" || k == &*d.kind)
            && c.device.as_deref().is_none_or(|id| id == &*d.id)
            && c.dept
                .as_deref()
                .is_none_or(|dept| d.config.dept.as_deref() == Some(dept))
    }

    /// Whether the rule watches readings (all but silence).
    fn watches_readings(&self) -> bool {
        !matches!(self.condition, Condition::Silent { .. }) || self.quantity.is_some()
    }

    /// The unit of the alert's value.
    pub fn unit(&self) -> String {
        match (&self.condition, self.quantity) {
            (Condition::Silent { .. }, _) => "s".to_string(),
            (Condition::Rise { .. }, Some(q)) => format!("{}/h", q.unit()),
            (_, Some(q)) => match q.kind() {
                ValueKind::Number => q.unit().to_string(),
                _ => String::new(),
            },
            (_, None) => String::new(),
        }
    }

    /// The human text of the alert.
    pub fn message(&self, device: &str, value: f64) -> String {
        let unit = self.unit();
        let fmt = |v: f64| match (&self.condition, self.quantity) {
            (Condition::Equals(_), Some(q)) => scalar_text(q, v),
            _ => number_text(v),
        };
        let threshold = self.condition.threshold();
        let q = self.quantity.map_or("", |q| q.name());
        if let Some(t) = &self.config.message {
            return t
                .replace("{device}", device)
                .replace("{value}", &fmt(value))
                .replace("{threshold}", &fmt(threshold))
                .replace("{unit}", &unit)
                .replace("{quantity}", q)
                .replace("{level}", self.level.name());
        }
        let with_unit = |v: f64| {
            let t = fmt(v);
            if unit.is_empty() {
                t
            } else {
                format!("{t} {unit}")
            }
        };
        let mut text = match self.condition {
            Condition::Above { .. } => format!(
                "{device}: {q} {} above {}",
                with_unit(value),
                with_unit(threshold)
            ),
            Condition::Below { .. } => format!(
                "{device}: {q} {} below {}",
                with_unit(value),
                with_unit(threshold)
            ),
            Condition::Equals(_) => format!("{device}: {q} is {}", fmt(value)),
            Condition::Rise { .. } => format!(
                "{device}: {q} rising {} (limit {})",
                with_unit(value),
                with_unit(threshold)
            ),
            Condition::Silent { .. } => format!(
                "{device}: nothing received for {} (limit {})",
                with_unit(value.round()),
                with_unit(threshold)
            ),
        };
        if let Some(w) = self.active {
            text.push_str(&format!(" during {w}"));
        }
        text
    }
}

/// A number as people read it: at most three decimals, no trailing zeros.
pub fn number_text(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

fn scalar_text(q: Quantity, v: f64) -> String {
    match q.kind() {
        ValueKind::Bool => (v != 0.0).to_string(),
        ValueKind::Enum(states) => states
            .get(v as usize)
            .map_or_else(|| number_text(v), |s| s.to_string()),
        ValueKind::Number => number_text(v),
    }
}

/// A rule starts firing for a device, or goes on firing with a new value.
#[derive(Debug)]
pub struct Firing<'a> {
    /// The rule.
    pub rule: &'a Rule,
    /// The device.
    pub device: DeviceIdx,
    /// The value that fired it (for rates the rate per hour, for silence the seconds).
    pub value: f64,
    /// Device time of the reading (hub time for silence).
    pub ts_ms: i64,
    /// True when the episode starts; false for a repeat.
    pub start: bool,
}

/// Where the engine's decisions go: the alert book.
pub trait AlertSink: Send + Sync + 'static {
    /// A rule fires (or keeps firing) for a device. A start for a key that already has an open
    /// alert must update it, never duplicate it.
    fn firing(&self, f: &Firing<'_>);
    /// A rule stopped firing for a device.
    fn cleared(&self, rule: &Rule, device: DeviceIdx, value: Option<f64>, ts_ms: i64);
    /// The device time of the latest reading of the open alert of (rule, device), if one is
    /// open (the engine resumes it after a restart or reload instead of raising another).
    fn open_since(&self, rule: &str, device: DeviceIdx) -> Option<i64>;
    /// Clears every open alert of a rule that left the set or changed.
    fn retire(&self, rule: &str, reason: &str, now_ms: i64);
}

/// The state of one (rule, device).
#[derive(Debug)]
struct Binding {
    /// Latest device time evaluated (level conditions ignore older readings).
    last_ts: i64,
    /// Device time the condition started to hold, while waiting for `for`.
    pending_since: Option<i64>,
    firing: bool,
    /// Set when resumed from an open alert: readings up to this time were already counted.
    resumed_upto: Option<i64>,
    window: Option<RiseWindow>,
    /// Silence rules with a quantity: when it last arrived (hub time).
    heard_ms: i64,
}

/// The (rule, device) state of one shard.
type Shard = Mutex<HashMap<(RuleIdx, DeviceIdx), Binding>>;
/// Which rules watch which quantity of a device.
type Watches = Arc<[(Quantity, RuleIdx)]>;

/// Per device: which quantities rules watch, and which rules.
#[derive(Clone, Debug, Default)]
struct DeviceRules {
    /// Bit `code % 64` for every watched quantity.
    mask: u64,
    rules: Watches,
}

/// A compiled set of rules with its state.
struct RuleSet {
    rules: Vec<Rule>,
    devices: Vec<DeviceRules>,
    /// Silence rules and the devices they cover.
    silence: Vec<(RuleIdx, Vec<DeviceIdx>)>,
    shards: Box<[Shard]>,
}

fn bit(q: Quantity) -> u64 {
    1u64 << (q.code() % 64)
}

fn shard_of(device: DeviceIdx) -> usize {
    device as usize % SHARDS
}

impl RuleSet {
    fn compile(configs: &[RuleConfig], registry: &Registry) -> RuleSet {
        let rules: Vec<Rule> = configs.iter().map(Rule::compile).collect();
        let mut shared: HashMap<Vec<(Quantity, RuleIdx)>, Watches> = HashMap::new();
        let mut devices = Vec::with_capacity(registry.devices().len());
        let mut silence: Vec<(RuleIdx, Vec<DeviceIdx>)> = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            if matches!(r.condition, Condition::Silent { .. }) {
                let covered = registry
                    .devices()
                    .iter()
                    .filter(|d| r.applies_to(d))
                    .map(|d| d.idx)
                    .collect();
                silence.push((i as RuleIdx, covered));
            }
        }
        for d in registry.devices() {
            let list: Vec<(Quantity, RuleIdx)> = rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r.watches_readings() && r.applies_to(d))
                .filter_map(|(i, r)| r.quantity.map(|q| (q, i as RuleIdx)))
                .collect();
            let mask = list.iter().fold(0, |m, (q, _)| m | bit(*q));
            // Devices with the same rules share one list (typically one per kind).
            let rules = shared
                .entry(list.clone())
                .or_insert_with(|| list.into())
                .clone();
            devices.push(DeviceRules { mask, rules });
        }
        RuleSet {
            rules,
            devices,
            silence,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct ReloadReport {
    /// Rules now loaded.
    pub rules: usize,
    /// Ids of new rules.
    pub added: Vec<String>,
    /// Ids of changed rules (their open alerts were cleared; they start over).
    pub changed: Vec<String>,
    /// Ids of removed rules (their open alerts were cleared).
    pub removed: Vec<String>,
    /// Rules kept as they were, with their state.
    pub unchanged: usize,
}

/// Counters of the engine.
#[derive(Debug, Default)]
pub struct RuleMetrics {
    /// Readings evaluated against a rule.
    pub evaluations: AtomicU64,
    /// Successful reloads.
    pub reloads_ok: AtomicU64,
    /// Refused reloads.
    pub reloads_failed: AtomicU64,
}

/// The engine.
pub struct Rules {
    registry: Arc<Registry>,
    /// The running set (shared with [`RulesCollector`] for `hub_rules_loaded`).
    set: Arc<RwLock<Arc<RuleSet>>>,
    /// Per device: when a reading last arrived (hub time).
    heard: Vec<AtomicI64>,
    /// Per device: whether this hub works it (all, except in a cluster, where a hub works the
    /// devices of the partitions it holds). Silence is watched only for these.
    owned: Vec<AtomicBool>,
    sink: Arc<dyn AlertSink>,
    offset: UtcOffset,
    metrics: Arc<RuleMetrics>,
}

impl Rules {
    /// Compiles `config.rules` (already validated with the config) for the registry's devices.
    /// Open alerts of rules that are no longer configured are cleared.
    pub fn new(
        config: &HubConfig,
        registry: Arc<Registry>,
        sink: Arc<dyn AlertSink>,
        now_ms: i64,
    ) -> Rules {
        let set = RuleSet::compile(&config.rules, &registry);
        let heard = (0..registry.devices().len())
            .map(|_| AtomicI64::new(now_ms))
            .collect();
        let owned = (0..registry.devices().len())
            .map(|_| AtomicBool::new(true))
            .collect();
        Rules {
            registry,
            set: Arc::new(RwLock::new(Arc::new(set))),
            heard,
            owned,
            sink,
            offset: config.hub.utc_offset,
            metrics: Arc::default(),
        }
    }

    /// Cluster mode: this hub works no device until it takes their partitions
    /// ([`Rules::adopt`]).
    pub fn disown_all(&self) {
        for o in &self.owned {
            o.store(false, Relaxed);
        }
    }

    /// Takes over the rule state of `devices` (cluster mode, when this hub takes their
    /// partition, after the alert book has loaded their open alerts): whatever this hub held
    /// for them is dropped and warmed up again from the shared store, so hold timers, rate
    /// windows and silence clocks resume where the previous owner left them, and an open
    /// alert goes on instead of being raised again.
    pub fn adopt<S: SeriesStore>(&self, devices: &[DeviceIdx], store: &S, now_ms: i64) {
        self.drop_state(devices);
        for d in devices {
            if let Some(o) = self.owned.get(*d as usize) {
                o.store(true, Relaxed);
            }
            if let Some(h) = self.heard.get(*d as usize) {
                h.store(now_ms, Relaxed);
            }
        }
        self.warm(store, now_ms, Some(devices));
    }

    /// Gives up the rule state of `devices` (cluster mode, when this hub hands their
    /// partition over): no silence is watched for them here any more.
    pub fn release(&self, devices: &[DeviceIdx]) {
        for d in devices {
            if let Some(o) = self.owned.get(*d as usize) {
                o.store(false, Relaxed);
            }
        }
        self.drop_state(devices);
    }

    fn drop_state(&self, devices: &[DeviceIdx]) {
        let set = self.set.read();
        for d in devices {
            set.shards[shard_of(*d)].lock().retain(|(_, bd), _| bd != d);
        }
    }

    /// The rules now loaded.
    pub fn configs(&self) -> Vec<RuleConfig> {
        self.set
            .read()
            .rules
            .iter()
            .map(|r| r.config.clone())
            .collect()
    }

    /// The engine's counters.
    pub fn metrics(&self) -> &RuleMetrics {
        &self.metrics
    }

    /// How often [`Rules::tick`] should run: a quarter of the shortest silence, within
    /// 20 ms..1 s.
    pub fn tick_interval(&self) -> Duration {
        let set = self.set.read();
        let shortest = set
            .silence
            .iter()
            .filter_map(|(r, _)| match set.rules[*r as usize].condition {
                Condition::Silent { after_ms } => Some(after_ms),
                _ => None,
            })
            .min()
            .unwrap_or(4000);
        Duration::from_millis((shortest / 4).clamp(20, 1000) as u64)
    }

    /// Evaluates the values of one stored timestamp group of a device.
    pub fn observe(&self, device: DeviceIdx, ts_ms: i64, values: &[NormValue], now_ms: i64) {
        if let Some(h) = self.heard.get(device as usize) {
            h.fetch_max(now_ms, Relaxed);
        }
        let set = self.set.read();
        let Some(dr) = set.devices.get(device as usize) else {
            return;
        };
        if dr.mask == 0 {
            return;
        }
        for v in values {
            if dr.mask & bit(v.quantity) == 0 {
                continue;
            }
            for &(q, r) in dr.rules.iter() {
                if q == v.quantity {
                    self.evaluate(&set, r, device, ts_ms, v.value.as_f64(), now_ms, false);
                }
            }
        }
    }

    fn binding<'a>(
        &self,
        set: &RuleSet,
        shard: &'a mut HashMap<(RuleIdx, DeviceIdx), Binding>,
        r: RuleIdx,
        device: DeviceIdx,
        now_ms: i64,
    ) -> &'a mut Binding {
        shard.entry((r, device)).or_insert_with(|| {
            let rule = &set.rules[r as usize];
            let resumed = self.sink.open_since(&rule.id, device);
            Binding {
                last_ts: i64::MIN,
                pending_since: None,
                firing: resumed.is_some(),
                resumed_upto: resumed,
                window: match rule.condition {
                    Condition::Rise { window_ms, .. } => Some(RiseWindow::new(window_ms)),
                    _ => None,
                },
                heard_ms: now_ms,
            }
        })
    }

    /// One reading against one rule. `history` only absorbs it (restart replay of readings an
    /// open alert already covered).
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &self,
        set: &RuleSet,
        r: RuleIdx,
        device: DeviceIdx,
        ts_ms: i64,
        value: f64,
        now_ms: i64,
        history: bool,
    ) {
        self.metrics.evaluations.fetch_add(1, Relaxed);
        let rule = &set.rules[r as usize];
        let mut shard = set.shards[shard_of(device)].lock();
        let b = self.binding(set, &mut shard, r, device, now_ms);
        let history = history || b.resumed_upto.is_some_and(|upto| ts_ms <= upto);
        let (at, measured) = match rule.condition {
            Condition::Silent { .. } => {
                b.heard_ms = b.heard_ms.max(now_ms);
                return;
            }
            Condition::Rise { .. } => {
                let Some(w) = b.window.as_mut() else { return };
                if !w.add(ts_ms, value) || history {
                    return;
                }
                let Some(rate) = w.rate_per_hour() else {
                    return;
                };
                (w.newest(), rate)
            }
            _ => {
                // Level conditions follow the newest reading; a back-dated one is history.
                if ts_ms < b.last_ts {
                    return;
                }
                b.last_ts = ts_ms;
                if history {
                    return;
                }
                (ts_ms, value)
            }
        };
        let inside = rule.active.is_none_or(|w| w.contains_ms(at, self.offset));
        let (fires, clears) = if inside {
            rule.condition.test(measured)
        } else {
            (false, true)
        };
        self.step(rule, b, device, fires, clears, at, measured);
    }

    /// The hold and hysteresis state machine of one (rule, device).
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        rule: &Rule,
        b: &mut Binding,
        device: DeviceIdx,
        fires: bool,
        clears: bool,
        ts_ms: i64,
        value: f64,
    ) {
        if b.firing {
            if clears {
                b.firing = false;
                b.pending_since = None;
                b.resumed_upto = None;
                self.sink.cleared(rule, device, Some(value), ts_ms);
            } else {
                self.sink.firing(&Firing {
                    rule,
                    device,
                    value,
                    ts_ms,
                    start: false,
                });
            }
            return;
        }
        if !fires {
            b.pending_since = None;
            return;
        }
        let since = *b.pending_since.get_or_insert(ts_ms);
        if ts_ms.saturating_sub(since) >= rule.hold_ms {
            b.firing = true;
            b.pending_since = None;
            b.resumed_upto = None;
            self.sink.firing(&Firing {
                rule,
                device,
                value,
                ts_ms,
                start: true,
            });
        }
    }

    /// Evaluates silence rules at hub time `now_ms`.
    pub fn tick(&self, now_ms: i64) {
        let set = self.set.read();
        for (r, devices) in &set.silence {
            let rule = &set.rules[*r as usize];
            let Condition::Silent { after_ms } = rule.condition else {
                continue;
            };
            let inside = rule
                .active
                .is_none_or(|w| w.contains_ms(now_ms, self.offset));
            for &d in devices {
                if !self.owned[d as usize].load(Relaxed) {
                    continue;
                }
                let device_heard = self.heard[d as usize].load(Relaxed);
                let mut shard = set.shards[shard_of(d)].lock();
                let b = self.binding(&set, &mut shard, *r, d, now_ms);
                let heard = if rule.quantity.is_some() {
                    b.heard_ms
                } else {
                    device_heard
                };
                let gap = now_ms.saturating_sub(heard);
                let fires = inside && gap >= after_ms;
                if b.firing == fires {
                    // Silence alerts keep the time they were raised with; no repeats.
                    continue;
                }
                let secs = gap.max(0) as f64 / 1000.0;
                self.step(rule, b, d, fires, !fires, now_ms, secs);
            }
        }
    }

    /// Replays recent stored readings after a start, so hold timers and rate windows resume
    /// where they were and alerts that were open stay open (readings they already covered are
    /// only absorbed). Level conditions without `for` need only the newest reading.
    pub fn warm_up<S: SeriesStore>(&self, store: &S, now_ms: i64) {
        self.warm(store, now_ms, None);
    }

    /// [`Rules::warm_up`] for some devices (`None`: all).
    fn warm<S: SeriesStore>(&self, store: &S, now_ms: i64, only: Option<&[DeviceIdx]>) {
        let set = self.set.read();
        let chosen = |d: DeviceIdx| only.is_none_or(|o| o.contains(&d));
        for d in self.registry.devices() {
            if !chosen(d.idx) {
                continue;
            }
            let dr = &set.devices[d.idx as usize];
            if dr.mask == 0 {
                continue;
            }
            let latest = match store.latest(&d.id) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(device = %d.id, "rule state not restored: {e}");
                    continue;
                }
            };
            for &(q, r) in dr.rules.iter() {
                let Some((_, newest)) = latest.iter().find(|(lq, _)| *lq == q) else {
                    continue;
                };
                let rule = &set.rules[r as usize];
                let span = match rule.condition {
                    Condition::Rise { window_ms, .. } => window_ms.max(rule.hold_ms) + 1,
                    Condition::Silent { .. } => continue,
                    _ if rule.hold_ms > 0 => rule.hold_ms + 1,
                    _ => 0,
                };
                let points = if span == 0 {
                    vec![(newest.ts_ms, newest.value)]
                } else {
                    let q = Query {
                        series: SeriesId {
                            device: d.id.clone(),
                            quantity: q,
                        },
                        from_ms: newest.ts_ms.saturating_sub(span),
                        to_ms: newest.ts_ms.saturating_add(1),
                        step_ms: None,
                        agg: Agg::Last,
                    };
                    match store.query(&q) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(device = %d.id, rule = %rule.id, "replay failed: {e}");
                            continue;
                        }
                    }
                };
                for (ts, v) in points {
                    self.evaluate(&set, r, d.idx, ts, v, now_ms, false);
                }
            }
        }
        self.restore_silence(&set, store, now_ms, &chosen);
    }

    /// Silence clocks resume from the newest stored reading instead of restarting at hub start:
    /// a device silent before a restart stays silent (its open alert is kept, not cleared and
    /// raised again under a new id), and one that never reported still counts from the start.
    fn restore_silence<S: SeriesStore>(
        &self,
        set: &RuleSet,
        store: &S,
        now_ms: i64,
        chosen: &impl Fn(DeviceIdx) -> bool,
    ) {
        let mut newest: HashMap<DeviceIdx, Vec<(Quantity, i64)>> = HashMap::new();
        for (r, devices) in &set.silence {
            let rule = &set.rules[*r as usize];
            for &d in devices.iter().filter(|d| chosen(**d)) {
                let latest = newest.entry(d).or_insert_with(|| {
                    match store.latest(&self.registry.device(d).id) {
                        Ok(l) => l
                            .into_iter()
                            .map(|(q, p)| (q, p.ts_ms.min(now_ms)))
                            .collect(),
                        Err(e) => {
                            tracing::warn!(device = d, "silence clock not restored: {e}");
                            Vec::new()
                        }
                    }
                });
                let heard = latest
                    .iter()
                    .filter(|(q, _)| rule.quantity.is_none_or(|rq| rq == *q))
                    .map(|(_, ts)| *ts)
                    .max();
                let Some(heard) = heard else { continue };
                if rule.quantity.is_some() {
                    let mut shard = set.shards[shard_of(d)].lock();
                    self.binding(set, &mut shard, *r, d, now_ms).heard_ms = heard;
                } else if let Some(h) = self.heard.get(d as usize) {
                    // Warm-up runs before the pipeline starts: nothing live to overwrite.
                    h.store(heard, Relaxed);
                }
            }
        }
    }

    /// Replaces the rule set. The new rules are validated against the running devices first;
    /// a bad rule refuses the whole reload (one line naming it) and the old set stays.
    /// Unchanged rules keep their state; open alerts of changed and removed rules are cleared.
    pub fn reload(&self, config: &HubConfig, now_ms: i64) -> Result<ReloadReport, ConfigError> {
        let result = self.try_reload(config, now_ms);
        match &result {
            Ok(_) => self.metrics.reloads_ok.fetch_add(1, Relaxed),
            Err(_) => self.metrics.reloads_failed.fetch_add(1, Relaxed),
        };
        result
    }

    fn try_reload(&self, config: &HubConfig, now_ms: i64) -> Result<ReloadReport, ConfigError> {
        // Rules may only name devices that are running (devices change on restart).
        let mut ids: HashMap<&str, usize> = HashMap::new();
        for (i, r) in config.rules.iter().enumerate() {
            let key = format!("rules[{i}]");
            if let Some(first) = ids.insert(&r.id, i) {
                return Err(ConfigError::new(
                    format!("{key}.id"),
                    format!("`{}` is already used by rules[{first}]", r.id),
                ));
            }
            r.validate(&key, config)?;
            if let Some(d) = &r.device
                && self.registry.device_by_id(d).is_none()
            {
                return Err(ConfigError::new(
                    format!("{key} ({}).device", r.id),
                    format!("`{d}` is not a running device (devices change on restart)"),
                ));
            }
        }
        let new = RuleSet::compile(&config.rules, &self.registry);
        let mut report = ReloadReport {
            rules: new.rules.len(),
            ..ReloadReport::default()
        };
        let mut retire: Vec<(Arc<str>, &'static str)> = Vec::new();
        {
            let mut current = self.set.write();
            let old = current.clone();
            let old_by_id: HashMap<&str, RuleIdx> = old
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| (&*r.id, i as RuleIdx))
                .collect();
            // Old rule index -> new index, for rules kept as they were.
            let mut kept: HashMap<RuleIdx, RuleIdx> = HashMap::new();
            for (i, r) in new.rules.iter().enumerate() {
                match old_by_id.get(&*r.id) {
                    Some(&o) if old.rules[o as usize].config == r.config => {
                        kept.insert(o, i as RuleIdx);
                        report.unchanged += 1;
                    }
                    Some(_) => {
                        report.changed.push(r.id.to_string());
                        retire.push((r.id.clone(), "the rule changed"));
                    }
                    None => report.added.push(r.id.to_string()),
                }
            }
            for r in &old.rules {
                if !new.rules.iter().any(|n| n.id == r.id) {
                    report.removed.push(r.id.to_string());
                    retire.push((r.id.clone(), "the rule was removed"));
                }
            }
            // The write lock excludes every evaluation: move the state of kept rules.
            for (i, shard) in old.shards.iter().enumerate() {
                let mut from = shard.lock();
                let mut to = new.shards[i].lock();
                for ((r, d), b) in from.drain() {
                    if let Some(&n) = kept.get(&r) {
                        to.insert((n, d), b);
                    }
                }
            }
            *current = Arc::new(new);
        }
        for (id, reason) in retire {
            self.sink.retire(&id, reason, now_ms);
        }
        tracing::info!(
            rules = report.rules,
            added = ?report.added,
            changed = ?report.changed,
            removed = ?report.removed,
            "rules reloaded"
        );
        Ok(report)
    }

    /// The collector of the `hub_rules_*` families for the `/metrics` registry. It holds the
    /// counters and the running set, not the engine.
    pub fn collector(&self) -> RulesCollector {
        RulesCollector {
            metrics: self.metrics.clone(),
            set: self.set.clone(),
        }
    }
}

/// Exports the `hub_rules_*` families at scrape time; see [`Rules::collector`].
pub struct RulesCollector {
    metrics: Arc<RuleMetrics>,
    set: Arc<RwLock<Arc<RuleSet>>>,
}

impl std::fmt::Debug for RulesCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesCollector")
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for RulesCollector {
    fn encode(&self, mut e: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use crate::metrics::{encode_counter, encode_family, encode_one};
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let m = &*self.metrics;
        encode_counter(
            &mut e,
            "rules_evaluations",
            "Readings evaluated against a rule.",
            m.evaluations.load(Relaxed),
        )?;
        encode_family(
            &mut e,
            "rules_reloads",
            "Rule reloads by result.",
            MetricType::Counter,
            [("ok", &m.reloads_ok), ("refused", &m.reloads_failed)]
                .map(|(result, v)| ([("result", result)], ConstCounter::new(v.load(Relaxed)))),
        )?;
        let loaded = self.set.read().rules.len() as u64;
        encode_one(
            &mut e,
            "rules_loaded",
            "Rules in the running set.",
            ConstGauge::new(loaded),
        )
    }
}

#[cfg(test)]
mod collector_tests {
    use super::*;

    #[test]
    fn renders_the_rule_families() {
        let config = HubConfig::from_toml(
            "[[devices]]\nid = \"SL-1\"\nkind = \"streetlight\"\nsecret = \"device-secret\"\n",
        )
        .unwrap();
        let registry = Registry::from_config(&config);
        let metrics = Arc::new(RuleMetrics::default());
        metrics.evaluations.fetch_add(5, Relaxed);
        metrics.reloads_failed.fetch_add(1, Relaxed);
        let text = crate::metrics::render_collector(RulesCollector {
            metrics,
            set: Arc::new(RwLock::new(Arc::new(RuleSet::compile(&[], &registry)))),
        });
        assert!(
            text.contains(
                "# HELP hub_rules_evaluations_total Readings evaluated against a rule.\n\
                 # TYPE hub_rules_evaluations_total counter\n\
                 hub_rules_evaluations_total 5\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "hub_rules_reloads_total{result=\"ok\"} 0\n\
             hub_rules_reloads_total{result=\"refused\"} 1\n"
        ));
        assert!(text.contains("# TYPE hub_rules_loaded gauge\nhub_rules_loaded 0\n"));
        assert_eq!(text.matches("# TYPE ").count(), 3);
    }
}
