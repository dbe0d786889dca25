//! The alert book: the lifecycle of alerts, their durable record, publication and CAP.
//!
//! Lifecycle: `active` → `acknowledged` (an operator, `POST /api/v1/alerts/{id}/ack`) →
//! `cleared` (the condition ended), or `active` → `cleared` directly. At most one alert is
//! open (active or acknowledged) per (rule, device): the book keeps an index of open alerts by
//! that key and a repeat of a firing rule updates the open alert's value and time. A new
//! episode after a clear is a new alert with a new id (`{device}.{rule}.{seq}`).
//!
//! Escalation: alerts of one device and one quantity (silence counts as one "quantity") form
//! the device's picture for that quantity. When an alert opens while a lower-level one is open
//! for the same device and quantity, the lower one gets `superseded_by` = the higher alert's
//! id (and is published again); it stays open and is cleared by its own rule. When the higher
//! one clears, the lower ones point to the next higher open alert or to none.
//!
//! Durability and publication: changes are made in memory under one lock (so the open-alert
//! index is exact) and written by one writer task, in batches, one redb transaction each.
//! Only after a batch is durable is each changed alert published on
//! `v1/alerts/{level}/{device}` (not retained: several alerts share a topic, and a retained
//! message would show only the last; apps get the current picture from
//! `GET /api/v1/alerts`) and on the live stream. State changes (raise, ack, clear,
//! supersede) are flushed at once; value-only repeats are coalesced and flushed at most
//! once per [`COALESCE`]. Every published change is a new revision (a CAP message).

pub mod cap;
pub mod hub_level;
pub mod shared;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use protocols::Quantity;
use protocols::messages::{Alert, AlertState};
use protocols::time::Rfc3339;
use protocols::topic::{AlertLevel, Topic};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::config::{HubConfig, RuleConfig};
use crate::incident::ErrorBurst;
use crate::outbound::Outlet;
use crate::registry::{DeviceIdx, Registry};
use crate::rules::{AlertSink, Condition, Firing, Rule};
use cap::CapSettings;
use hub_level::{HubAlerts, HubCondition, Observation};
use shared::SharedAlerts;
use store::{AlertStore, AlertStoreError};

/// Longest a value-only change waits before it is written and published.
pub const COALESCE: Duration = Duration::from_secs(1);
/// Cleared alerts kept in memory for listing (all stay in the file until retention).
pub const CLOSED_IN_MEMORY: usize = 10_000;
/// How often repeated write failures are summarized in the log.
const WRITE_ERRORS_EVERY: Duration = Duration::from_secs(10);
/// Longest an acknowledgement waits for its write.
pub const ACK_WAIT: Duration = Duration::from_secs(10);

/// An alert as published and listed: the contract's [`Alert`] plus its history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertDoc {
    /// The contract's fields.
    #[serde(flatten)]
    pub alert: Alert,
    /// The device's department.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dept: Option<String>,
    /// Unit of `value` and `threshold`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unit: String,
    /// When the episode started (device time of the reading that raised it).
    pub raised_at: String,
    /// When an operator acknowledged it (hub time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_at: Option<String>,
    /// The app that acknowledged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_by: Option<String>,
    /// When it cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleared_at: Option<String>,
    /// The open higher-level alert of the same device and quantity, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    /// Published changes so far (the CAP revision).
    pub revision: u32,
}

/// An alert as stored: the document and what CAP and the engine need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredAlert {
    /// Sequence number (the row key).
    pub seq: u64,
    /// The document.
    pub doc: AlertDoc,
    /// Device time of the latest reading it covers.
    pub reading_ts_ms: i64,
    /// Device time it was raised.
    pub raised_ms: i64,
    /// Hub time of the first publication (CAP `sent` of revision 1).
    #[serde(default)]
    pub first_sent_ms: Option<i64>,
    /// Hub time of the current revision's publication.
    pub rev_sent_ms: i64,
    /// Hub time of the previous revision's publication.
    #[serde(default)]
    pub prev_sent_ms: Option<i64>,
    /// The rule as it was when raised (JSON), to notice a changed rule after a restart.
    pub rule_fingerprint: String,
    /// CAP category.
    pub category: String,
    /// CAP event.
    pub event: String,
    /// CAP certainty.
    pub certainty: String,
    /// CAP area radius, km.
    pub radius_km: f64,
}

impl StoredAlert {
    fn is_open(&self) -> bool {
        self.doc.alert.state != AlertState::Cleared
    }

    fn quantity_key(&self) -> Option<&str> {
        self.doc.alert.quantity.as_deref()
    }
}

/// Why an acknowledgement was refused.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    /// No such alert (or not visible: callers do not tell the difference).
    #[error("no alert `{0}`")]
    NotFound(String),
    /// The alert is over.
    #[error("alert `{0}` is already cleared")]
    Cleared(String),
    /// The change could not be made durable in time.
    #[error("the acknowledgement was not stored: {0}")]
    NotStored(String),
}

/// Filters of [`AlertBook::list`].
#[derive(Clone, Debug, Default)]
pub struct AlertFilter {
    /// Only this state; `None` for all. `open` means active or acknowledged.
    pub state: Option<StateFilter>,
    /// Only this device.
    pub device: Option<String>,
    /// Only this level.
    pub level: Option<AlertLevel>,
    /// At most this many, newest first.
    pub limit: usize,
}

impl AlertFilter {
    /// Whether an alert passes the state, device and level filters.
    fn admits(&self, d: &AlertDoc) -> bool {
        self.state.is_none_or(|s| s.matches(d.alert.state))
            && self.device.as_deref().is_none_or(|x| x == d.alert.device)
            && self.level.is_none_or(|l| l == d.alert.level)
    }
}

/// A state filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateFilter {
    /// One state.
    Is(AlertState),
    /// Active or acknowledged.
    Open,
}

impl StateFilter {
    /// Parses `active`, `acknowledged`, `cleared` or `open`.
    pub fn parse(s: &str) -> Option<StateFilter> {
        Some(match s {
            "active" => StateFilter::Is(AlertState::Active),
            "acknowledged" => StateFilter::Is(AlertState::Acknowledged),
            "cleared" => StateFilter::Is(AlertState::Cleared),
            "open" => StateFilter::Open,
            _ => return None,
        })
    }

    fn matches(self, s: AlertState) -> bool {
        match self {
            StateFilter::Is(want) => s == want,
            StateFilter::Open => s != AlertState::Cleared,
        }
    }
}

/// Counters of the book.
#[derive(Debug, Default)]
pub struct AlertMetrics {
    raised: [AtomicU64; 4],
    cleared: [AtomicU64; 4],
    acknowledged: AtomicU64,
    published: AtomicU64,
    persist_errors: AtomicU64,
}

fn level_idx(l: AlertLevel) -> usize {
    l as usize
}

struct Entry {
    rec: StoredAlert,
    device: DeviceIdx,
    /// Changed since its last publication (the next flush makes a new revision).
    changed: bool,
}

#[derive(Default)]
struct BookState {
    alerts: BTreeMap<u64, Entry>,
    by_id: HashMap<String, u64>,
    open: HashMap<(Arc<str>, DeviceIdx), u64>,
    open_by_device: HashMap<DeviceIdx, Vec<u64>>,
    dirty: BTreeSet<u64>,
    next_seq: u64,
    /// End (exclusive) of the sequence numbers this hub may use: the file's are all its own;
    /// in a cluster, a block taken from PostgreSQL.
    block_end: u64,
    /// The next block, taken when half of this one is used (cluster mode).
    spare: Option<u64>,
    /// The flush generation changes made now will be written in.
    generation: u64,
    closed: usize,
}

impl BookState {
    /// The next sequence number (moving to the spare block when this one is used up).
    fn take_seq(&mut self) -> u64 {
        if self.next_seq >= self.block_end {
            match self.spare.take() {
                Some(start) => {
                    self.next_seq = start;
                    self.block_end = start.saturating_add(shared::BLOCK);
                }
                None => tracing::error!(
                    "alert sequence block used up before the next one came; ids may repeat"
                ),
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Indexes an alert (replacing one with the same sequence number).
    fn insert(&mut self, rec: StoredAlert, device: DeviceIdx) {
        let seq = rec.seq;
        self.forget(seq);
        self.by_id.insert(rec.doc.alert.id.clone(), seq);
        if rec.is_open() {
            self.open
                .insert((rec.doc.alert.rule.as_str().into(), device), seq);
            self.open_by_device.entry(device).or_default().push(seq);
        } else {
            self.closed += 1;
        }
        self.alerts.insert(
            seq,
            Entry {
                rec,
                device,
                changed: false,
            },
        );
    }

    /// Drops an alert from memory (not from its durable record).
    fn forget(&mut self, seq: u64) {
        let Some(e) = self.alerts.remove(&seq) else {
            return;
        };
        self.by_id.remove(&e.rec.doc.alert.id);
        self.dirty.remove(&seq);
        if e.rec.is_open() {
            self.open
                .remove(&(e.rec.doc.alert.rule.as_str().into(), e.device));
            if let Some(v) = self.open_by_device.get_mut(&e.device) {
                v.retain(|s| *s != seq);
                if v.is_empty() {
                    self.open_by_device.remove(&e.device);
                }
            }
        } else {
            self.closed = self.closed.saturating_sub(1);
        }
    }
}

/// Where the book's alerts are durable.
enum Durable {
    /// `data_dir/alerts.redb` (one hub).
    File(AlertStore),
    /// PostgreSQL, shared by the hubs of a cluster.
    Shared(SharedAlerts),
}

/// Takes an acknowledgement to the hub that works the alert's device (cluster mode).
pub trait AckRoute: Send + Sync {
    /// Acknowledges `alert` on the hub that owns it, on behalf of `by`.
    fn ack<'a>(
        &'a self,
        alert: &'a StoredAlert,
        by: &'a str,
        now_ms: i64,
    ) -> futures_util::future::BoxFuture<'a, Result<AlertDoc, AckError>>;
}

/// The alert book.
pub struct AlertBook {
    registry: Arc<Registry>,
    /// Shared with [`AlertCollector`] for `hub_alerts_open`.
    state: Arc<Mutex<BookState>>,
    store: Arc<Durable>,
    /// One flush at a time (their generations complete in order).
    flushing: tokio::sync::Mutex<()>,
    /// Cluster mode: where acknowledgements of other hubs' alerts go.
    route: std::sync::OnceLock<Arc<dyn AckRoute>>,
    outlet: Outlet,
    wake: Notify,
    flushed: watch::Sender<u64>,
    cap: CapSettings,
    metrics: Arc<AlertMetrics>,
    /// Alerts about the hub itself (in memory; see [`hub_level`]).
    hub: Mutex<HubAlerts>,
    /// Failed writes, summarized (a full disk fails every flush).
    write_errors: ErrorBurst,
}

fn rfc(ms: i64) -> String {
    Rfc3339::from_ms(ms).to_string()
}

fn fingerprint(c: &RuleConfig) -> String {
    serde_json::to_string(c).unwrap_or_default()
}

impl AlertBook {
    /// Opens `data_dir/alerts.redb` and loads open alerts and the newest cleared ones. Cleared
    /// alerts older than `retention` are deleted. Open alerts whose rule is gone or changed,
    /// or whose device is gone, are cleared (published after the writer starts).
    pub fn open(
        config: &HubConfig,
        registry: Arc<Registry>,
        outlet: Outlet,
        now_ms: i64,
    ) -> Result<AlertBook, AlertStoreError> {
        let (store, loaded) = AlertStore::open(&config.hub.data_dir)?;
        let retention_ms = config.hub.retention.0.as_millis().min(i64::MAX as u128) as i64;
        let cutoff = now_ms.saturating_sub(retention_ms);
        let mut st = BookState {
            generation: 1,
            block_end: u64::MAX,
            ..BookState::default()
        };
        let mut expired = Vec::new();
        let mut closed: Vec<u64> = Vec::new();
        for rec in loaded {
            st.next_seq = st.next_seq.max(rec.seq + 1);
            let Some(device) = registry.device_by_id(&rec.doc.alert.device) else {
                if rec.is_open() {
                    tracing::warn!(alert = %rec.doc.alert.id, "device no longer configured");
                }
                continue;
            };
            if !rec.is_open() {
                if rec.reading_ts_ms < cutoff && rec.rev_sent_ms < cutoff {
                    expired.push(rec.seq);
                    continue;
                }
                closed.push(rec.seq);
            }
            let seq = rec.seq;
            st.by_id.insert(rec.doc.alert.id.clone(), seq);
            if rec.is_open() {
                st.open
                    .insert((rec.doc.alert.rule.as_str().into(), device.idx), seq);
                st.open_by_device.entry(device.idx).or_default().push(seq);
            }
            st.alerts.insert(
                seq,
                Entry {
                    rec,
                    device: device.idx,
                    changed: false,
                },
            );
        }
        // Keep only the newest cleared alerts in memory.
        st.closed = closed.len();
        if closed.len() > CLOSED_IN_MEMORY {
            for seq in &closed[..closed.len() - CLOSED_IN_MEMORY] {
                if let Some(e) = st.alerts.remove(seq) {
                    st.by_id.remove(&e.rec.doc.alert.id);
                }
            }
            st.closed = CLOSED_IN_MEMORY;
        }
        if let Err(e) = store.delete(&expired) {
            tracing::warn!("expired alerts not deleted: {e}");
        }
        let book = AlertBook::with(config, registry, outlet, st, Durable::File(store));
        // Alerts of rules that are gone or changed while the hub was down end now.
        let open: Vec<(String, String)> = {
            let st = book.state.lock();
            st.open
                .values()
                .filter_map(|s| st.alerts.get(s))
                .map(|e| (e.rec.doc.alert.rule.clone(), e.rec.rule_fingerprint.clone()))
                .collect()
        };
        for (rule, fp) in open {
            match config.rules.iter().find(|r| r.id == rule) {
                None => book.retire(&rule, "the rule was removed", now_ms),
                Some(r) if fingerprint(r) != fp => book.retire(&rule, "the rule changed", now_ms),
                Some(_) => {}
            }
        }
        Ok(book)
    }

    fn with(
        config: &HubConfig,
        registry: Arc<Registry>,
        outlet: Outlet,
        st: BookState,
        store: Durable,
    ) -> AlertBook {
        let (flushed, _) = watch::channel(0);
        AlertBook {
            registry,
            state: Arc::new(Mutex::new(st)),
            store: Arc::new(store),
            flushing: tokio::sync::Mutex::new(()),
            route: std::sync::OnceLock::new(),
            outlet,
            wake: Notify::new(),
            flushed,
            cap: CapSettings {
                sender: config.hub.cap_sender.clone(),
                sender_name: config.hub.cap_sender_name.clone(),
                offset: config.hub.utc_offset,
            },
            metrics: Arc::default(),
            hub: Mutex::default(),
            write_errors: ErrorBurst::new("alerts not stored, retrying", WRITE_ERRORS_EVERY),
        }
    }

    /// The book of a hub in a cluster: alerts in PostgreSQL (`pg`), none in memory until the
    /// hub takes a partition ([`AlertBook::adopt`]). Cleared alerts older than `retention` are
    /// deleted.
    pub async fn open_shared(
        config: &HubConfig,
        registry: Arc<Registry>,
        outlet: Outlet,
        pg: deadpool_postgres::Pool,
        now_ms: i64,
    ) -> Result<AlertBook, AlertStoreError> {
        let shared = SharedAlerts::open(pg).await?;
        let retention_ms = config.hub.retention.0.as_millis().min(i64::MAX as u128) as i64;
        if let Err(e) = shared.expire(now_ms.saturating_sub(retention_ms)).await {
            tracing::warn!("expired alerts not deleted: {e}");
        }
        let start = shared.block().await?;
        let st = BookState {
            generation: 1,
            next_seq: start,
            block_end: start.saturating_add(shared::BLOCK),
            ..BookState::default()
        };
        Ok(AlertBook::with(
            config,
            registry,
            outlet,
            st,
            Durable::Shared(shared),
        ))
    }

    /// Sets where acknowledgements of alerts this hub does not work go (cluster mode).
    pub fn route_acks(&self, route: Arc<dyn AckRoute>) {
        let _ = self.route.set(route);
    }

    /// Whether alerts are shared with other hubs (cluster mode).
    pub fn is_shared(&self) -> bool {
        matches!(*self.store, Durable::Shared(_))
    }

    /// Takes over the alerts of `devices` (cluster mode, when this hub takes their partition):
    /// their open alerts are loaded from PostgreSQL so an episode goes on under its id. Open
    /// alerts whose rule is gone or changed (`rules`, as loaded now) are cleared.
    pub async fn adopt(
        &self,
        devices: &[DeviceIdx],
        rules: &[RuleConfig],
        now_ms: i64,
    ) -> Result<usize, AlertStoreError> {
        let Durable::Shared(shared) = &*self.store else {
            return Ok(0);
        };
        let ids: Vec<String> = devices
            .iter()
            .map(|d| self.registry.device(*d).id.to_string())
            .collect();
        let loaded = shared.open_of(&ids).await?;
        let n = loaded.len();
        let mut st = self.state.lock();
        for rec in loaded {
            let Some(device) = self.registry.device_by_id(&rec.doc.alert.device) else {
                continue;
            };
            let seq = rec.seq;
            let stale = match rules.iter().find(|r| r.id == rec.doc.alert.rule) {
                None => Some("cleared: the rule was removed"),
                Some(r) if fingerprint(r) != rec.rule_fingerprint => {
                    Some("cleared: the rule changed")
                }
                Some(_) => None,
            };
            st.insert(rec, device.idx);
            if let Some(note) = stale {
                self.close(&mut st, seq, None, now_ms, note);
            }
        }
        Ok(n)
    }

    /// Hands over the alerts of `devices` (cluster mode, when this hub gives their partition
    /// up): what changed is written first (`write`; not when the partition was lost), then
    /// their alerts leave memory; the next owner loads them. Returns false when the write
    /// failed (the next owner then goes on from what was written before).
    pub async fn release(&self, devices: &[DeviceIdx], write: bool) -> bool {
        if !self.is_shared() {
            return true;
        }
        let written = !write || self.flush().await;
        let mut st = self.state.lock();
        let seqs: Vec<u64> = st
            .alerts
            .iter()
            .filter(|(_, e)| devices.contains(&e.device))
            .map(|(s, _)| *s)
            .collect();
        for seq in seqs {
            st.forget(seq);
        }
        written
    }

    /// The alert with this id, as any hub of a cluster sees it: this hub's own state first,
    /// then the shared rows (one hub: [`AlertBook::get`]).
    pub async fn fetch(&self, id: &str) -> Result<Option<AlertDoc>, AlertStoreError> {
        if let Some(doc) = self.get(id) {
            return Ok(Some(doc));
        }
        match &*self.store {
            Durable::Shared(shared) => Ok(shared.get(id).await?.map(|a| a.doc)),
            Durable::File(_) => Ok(None),
        }
    }

    /// The CAP message of an alert, as any hub of a cluster sees it (one hub:
    /// [`AlertBook::cap`]).
    pub async fn fetch_cap(&self, id: &str) -> Result<Option<String>, AlertStoreError> {
        if let Some(xml) = self.cap(id) {
            return Ok(Some(xml));
        }
        let Durable::Shared(shared) = &*self.store else {
            return Ok(None);
        };
        Ok(shared.get(id).await?.and_then(|a| {
            let d = self.registry.device_by_id(&a.doc.alert.device)?;
            Some(cap::render(&a, d, &self.cap))
        }))
    }

    /// Alerts matching `filter` for which `visible` holds, as any hub of a cluster sees them
    /// (from the shared rows, the hub's own alerts among them; one hub: [`AlertBook::list`]).
    pub async fn fetch_list(
        &self,
        filter: &AlertFilter,
        visible: impl Fn(&AlertDoc) -> bool,
    ) -> Result<Vec<AlertDoc>, AlertStoreError> {
        let Durable::Shared(shared) = &*self.store else {
            return Ok(self.list(filter, visible));
        };
        let rows = shared.list(filter, |a| visible(&a.doc)).await?;
        let mut out: Vec<AlertDoc> = rows.into_iter().map(|a| a.doc).collect();
        self.merge_hub_alerts(&mut out, filter, &visible);
        Ok(out)
    }

    /// The alert with this id (of a device or of the hub).
    pub fn get(&self, id: &str) -> Option<AlertDoc> {
        let st = self.state.lock();
        match st.by_id.get(id) {
            Some(seq) => st.alerts.get(seq).map(|e| e.rec.doc.clone()),
            None => self.hub.lock().get(id),
        }
    }

    /// Raises (`Some`) or clears (`None`) the hub-level alert of `c`, publishing the change;
    /// `cleared_because` is appended to the text of a cleared alert.
    pub fn hub_condition(
        &self,
        c: HubCondition,
        holds: Option<Observation>,
        cleared_because: &str,
        now_ms: i64,
    ) {
        let changed = {
            let mut hub = self.hub.lock();
            match holds {
                Some(o) => hub.raise(c, o, now_ms),
                None => hub.clear(c, cleared_because, now_ms),
            }
        };
        if let Some(doc) = changed {
            match doc.alert.state {
                AlertState::Active => {
                    tracing::warn!(alert = %doc.alert.id, "hub alert raised: {}", doc.alert.message)
                }
                _ => {
                    tracing::info!(alert = %doc.alert.id, "hub alert cleared: {}", doc.alert.message)
                }
            }
            self.publish(&doc);
        }
    }

    /// Whether the hub-level alert of `c` is open.
    pub fn hub_condition_open(&self, c: HubCondition) -> bool {
        self.hub.lock().is_open(c)
    }

    fn publish(&self, doc: &AlertDoc) {
        let topic = Topic::Alert {
            level: doc.alert.level,
            device: &doc.alert.device,
        }
        .to_string();
        match serde_json::to_vec(doc) {
            Ok(bytes) => {
                self.outlet.publish(&topic, Bytes::from(bytes), false);
                self.metrics.published.fetch_add(1, Relaxed);
            }
            Err(e) => tracing::error!(alert = %doc.alert.id, "alert not serializable: {e}"),
        }
    }

    /// The CAP 1.2 message of the alert's current revision.
    pub fn cap(&self, id: &str) -> Option<String> {
        let st = self.state.lock();
        let seq = st.by_id.get(id)?;
        let e = st.alerts.get(seq)?;
        Some(cap::render(
            &e.rec,
            self.registry.device(e.device),
            &self.cap,
        ))
    }

    /// Alerts matching `filter` for which `visible` holds, newest first (by when they were
    /// raised); the hub's own alerts among them.
    pub fn list(&self, filter: &AlertFilter, visible: impl Fn(&AlertDoc) -> bool) -> Vec<AlertDoc> {
        let limit = filter.limit.max(1);
        let keep = |d: &AlertDoc| filter.admits(d) && visible(d);
        let mut out: Vec<AlertDoc> = {
            let st = self.state.lock();
            st.alerts
                .values()
                .rev()
                .map(|e| &e.rec.doc)
                .filter(|d| keep(d))
                .take(limit)
                .cloned()
                .collect()
        };
        self.merge_hub_alerts(&mut out, filter, &visible);
        out
    }

    /// Puts the hub's own alerts matching `filter` among device alerts listed newest first.
    fn merge_hub_alerts(
        &self,
        out: &mut Vec<AlertDoc>,
        filter: &AlertFilter,
        visible: &impl Fn(&AlertDoc) -> bool,
    ) {
        let limit = filter.limit.max(1);
        let keep = |d: &AlertDoc| filter.admits(d) && visible(d);
        let mut hub: Vec<AlertDoc> = self.hub.lock().all().filter(|d| keep(d)).cloned().collect();
        if !hub.is_empty() {
            hub.sort_by(|a, b| b.raised_at.cmp(&a.raised_at));
            // Each goes before the first device alert raised earlier; the device alerts keep
            // their order.
            for d in hub {
                let at = out
                    .iter()
                    .position(|o| o.raised_at < d.raised_at)
                    .unwrap_or(out.len());
                out.insert(at, d);
            }
            out.truncate(limit);
        }
    }

    /// Open alerts now, the hub's own among them.
    pub fn open_count(&self) -> usize {
        self.state.lock().open.len() + self.hub.lock().open_count()
    }

    /// Acknowledges an alert on behalf of `by`; resolves once the change is durable (and
    /// published). Acknowledging an acknowledged alert changes nothing.
    pub async fn ack(&self, id: &str, by: &str, now_ms: i64) -> Result<AlertDoc, AckError> {
        self.acknowledge(id, by, now_ms, true).await
    }

    /// Acknowledges an alert this hub works, never asking another hub (cluster mode: the
    /// answer to another hub's [`AckRoute`]).
    pub async fn ack_here(&self, id: &str, by: &str, now_ms: i64) -> Result<AlertDoc, AckError> {
        self.acknowledge(id, by, now_ms, false).await
    }

    async fn acknowledge(
        &self,
        id: &str,
        by: &str,
        now_ms: i64,
        routed: bool,
    ) -> Result<AlertDoc, AckError> {
        let here = self.state.lock().by_id.contains_key(id);
        if let (false, true, Durable::Shared(shared), Some(route)) =
            (here, routed, &*self.store, self.route.get())
        {
            // Another hub's device: that hub acknowledges it.
            let found = shared
                .get(id)
                .await
                .map_err(|e| AckError::NotStored(e.to_string()))?;
            if let Some(rec) = found {
                if rec.doc.alert.state == AlertState::Cleared {
                    return Err(AckError::Cleared(id.to_string()));
                }
                return route.ack(&rec, by, now_ms).await;
            }
        }
        let generation = {
            let mut st = self.state.lock();
            let Some(&seq) = st.by_id.get(id) else {
                drop(st);
                // Not a device's: the hub's own, acknowledged in memory.
                let (doc, changed) = self.hub.lock().ack(id, by, now_ms)?;
                if changed {
                    self.metrics.acknowledged.fetch_add(1, Relaxed);
                    self.publish(&doc);
                }
                return Ok(doc);
            };
            let generation = st.generation;
            let e = st
                .alerts
                .get_mut(&seq)
                .ok_or_else(|| AckError::NotFound(id.to_string()))?;
            match e.rec.doc.alert.state {
                AlertState::Cleared => return Err(AckError::Cleared(id.to_string())),
                AlertState::Acknowledged => return Ok(e.rec.doc.clone()),
                AlertState::Active => {}
            }
            e.rec.doc.alert.state = AlertState::Acknowledged;
            e.rec.doc.acked_at = Some(rfc(now_ms));
            e.rec.doc.acked_by = Some(by.to_string());
            e.rec.doc.alert.ts = rfc(now_ms);
            e.changed = true;
            st.dirty.insert(seq);
            generation
        };
        self.metrics.acknowledged.fetch_add(1, Relaxed);
        self.wake.notify_one();
        let mut rx = self.flushed.subscribe();
        match tokio::time::timeout(ACK_WAIT, rx.wait_for(|g| *g >= generation)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(AckError::NotStored("the hub is stopping".into())),
            Err(_) => return Err(AckError::NotStored("the alert file did not answer".into())),
        }
        self.get(id)
            .ok_or_else(|| AckError::NotFound(id.to_string()))
    }

    /// Marks a change (`major`: write and publish at once).
    fn touch(&self, st: &mut BookState, seq: u64, major: bool) {
        if let Some(e) = st.alerts.get_mut(&seq) {
            e.changed = true;
        }
        st.dirty.insert(seq);
        if major {
            self.wake.notify_one();
        }
    }

    /// Recomputes `superseded_by` of the open alerts of one device and quantity.
    fn escalate(&self, st: &mut BookState, device: DeviceIdx, quantity: Option<&str>) {
        let Some(seqs) = st.open_by_device.get(&device) else {
            return;
        };
        let group: Vec<(u64, AlertLevel)> = seqs
            .iter()
            .filter_map(|s| st.alerts.get(s).map(|e| (*s, e)))
            .filter(|(_, e)| e.rec.quantity_key() == quantity)
            .map(|(s, e)| (s, e.rec.doc.alert.level))
            .collect();
        for &(seq, level) in &group {
            // The highest open alert above this one (the newest among equals).
            let top = group
                .iter()
                .filter(|(_, l)| *l > level)
                .max_by_key(|(s, l)| (*l, *s))
                .map(|(s, _)| *s);
            let top_id = top.and_then(|s| st.alerts.get(&s).map(|e| e.rec.doc.alert.id.clone()));
            let changed = match st.alerts.get_mut(&seq) {
                Some(e) if e.rec.doc.superseded_by != top_id => {
                    e.rec.doc.superseded_by = top_id;
                    true
                }
                _ => false,
            };
            if changed {
                self.touch(st, seq, true);
            }
        }
    }

    fn close(&self, st: &mut BookState, seq: u64, value: Option<f64>, ts_ms: i64, note: &str) {
        let Some(e) = st.alerts.get_mut(&seq) else {
            return;
        };
        let device = e.device;
        let level = e.rec.doc.alert.level;
        let key: (Arc<str>, DeviceIdx) = (e.rec.doc.alert.rule.as_str().into(), device);
        let quantity = e.rec.doc.alert.quantity.clone();
        e.rec.doc.alert.state = AlertState::Cleared;
        if let Some(v) = value {
            e.rec.doc.alert.value = Some(v);
        }
        e.rec.doc.alert.ts = rfc(ts_ms);
        e.rec.doc.cleared_at = Some(rfc(ts_ms));
        e.rec.doc.superseded_by = None;
        if !note.is_empty() {
            e.rec.doc.alert.message = format!("{} ({note})", e.rec.doc.alert.message);
        }
        st.open.remove(&key);
        if let Some(v) = st.open_by_device.get_mut(&device) {
            v.retain(|s| *s != seq);
            if v.is_empty() {
                st.open_by_device.remove(&device);
            }
        }
        st.closed += 1;
        self.touch(st, seq, true);
        self.metrics.cleared[level_idx(level)].fetch_add(1, Relaxed);
        self.escalate(st, device, quantity.as_deref());
    }

    /// Writes and publishes what changed. Returns false when the write failed (the changes
    /// stay pending and are tried again).
    pub async fn flush(&self) -> bool {
        let _one = self.flushing.lock().await;
        self.take_spare_block().await;
        let now = protocols::time::now_ms();
        let (batch, generation) = {
            let mut st = self.state.lock();
            if st.dirty.is_empty() {
                return true;
            }
            let dirty = std::mem::take(&mut st.dirty);
            let mut batch = Vec::with_capacity(dirty.len());
            for seq in dirty {
                let Some(e) = st.alerts.get_mut(&seq) else {
                    continue;
                };
                if e.changed {
                    e.changed = false;
                    e.rec.doc.revision += 1;
                    if e.rec.doc.revision == 1 {
                        e.rec.first_sent_ms = Some(now);
                    } else {
                        e.rec.prev_sent_ms = Some(e.rec.rev_sent_ms);
                    }
                    e.rec.rev_sent_ms = now;
                }
                batch.push(e.rec.clone());
            }
            let generation = st.generation;
            st.generation += 1;
            (batch, generation)
        };
        let error = match &*self.store {
            Durable::File(_) => {
                let store = self.store.clone();
                let to_write = batch.clone();
                let written = tokio::task::spawn_blocking(move || match &*store {
                    Durable::File(f) => f.save(&to_write),
                    Durable::Shared(_) => Ok(()),
                })
                .await;
                match written {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(format!("writer task failed: {e}")),
                }
            }
            Durable::Shared(shared) => shared.save(&batch).await.err().map(|e| e.to_string()),
        };
        if let Some(e) = error {
            self.metrics.persist_errors.fetch_add(1, Relaxed);
            self.write_errors.record(&e);
            let mut st = self.state.lock();
            for rec in &batch {
                st.dirty.insert(rec.seq);
            }
            return false;
        }
        self.write_errors.clear();
        for rec in &batch {
            self.publish(&rec.doc);
        }
        let _ = self.flushed.send(generation);
        self.prune();
        true
    }

    /// Cluster mode: takes the next block of sequence numbers once half of this one is used.
    async fn take_spare_block(&self) {
        let Durable::Shared(shared) = &*self.store else {
            return;
        };
        let wanted = {
            let st = self.state.lock();
            st.spare.is_none() && st.block_end.saturating_sub(st.next_seq) < shared::BLOCK / 2
        };
        if wanted {
            match shared.block().await {
                Ok(start) => self.state.lock().spare = Some(start),
                Err(e) => tracing::warn!("no spare block of alert numbers yet: {e}"),
            }
        }
    }

    /// Drops the oldest cleared alerts from memory beyond [`CLOSED_IN_MEMORY`].
    fn prune(&self) {
        let mut st = self.state.lock();
        if st.closed <= CLOSED_IN_MEMORY {
            return;
        }
        let mut excess = st.closed - CLOSED_IN_MEMORY;
        let victims: Vec<u64> = st
            .alerts
            .iter()
            .filter(|(s, e)| !e.rec.is_open() && !st.dirty.contains(s))
            .map(|(s, _)| *s)
            .take(excess)
            .collect();
        for s in victims {
            if let Some(e) = st.alerts.remove(&s) {
                st.by_id.remove(&e.rec.doc.alert.id);
                excess -= 1;
            }
        }
        st.closed = CLOSED_IN_MEMORY + excess;
    }

    /// The writer: flushes state changes at once and value repeats every [`COALESCE`], until
    /// `stop` is raised; then flushes what is left.
    pub async fn run_writer(self: Arc<Self>, mut stop: crate::shutdown::Signal) {
        let mut tick = tokio::time::interval(COALESCE);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = self.wake.notified() => false,
                _ = tick.tick() => false,
                _ = stop.recv() => true,
            };
            let ok = self.flush().await;
            if stopping {
                if !ok {
                    // One more try before giving up at shutdown.
                    self.flush().await;
                }
                break;
            }
        }
    }

    /// The collector of the `hub_alerts_*` families for the `/metrics` registry. It holds the
    /// counters and the in-memory alert state, not the book (nor its file).
    pub fn collector(&self) -> AlertCollector {
        AlertCollector {
            metrics: self.metrics.clone(),
            state: self.state.clone(),
        }
    }
}

/// Exports the `hub_alerts_*` families at scrape time; see [`AlertBook::collector`].
pub struct AlertCollector {
    metrics: Arc<AlertMetrics>,
    state: Arc<Mutex<BookState>>,
}

impl std::fmt::Debug for AlertCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertCollector")
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for AlertCollector {
    fn encode(&self, mut e: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use crate::metrics::{encode_counter, encode_family};
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let m = &*self.metrics;
        for (name, help, by_level) in [
            ("alerts_raised", "Alerts raised by level.", &m.raised),
            ("alerts_cleared", "Alerts cleared by level.", &m.cleared),
        ] {
            encode_family(
                &mut e,
                name,
                help,
                MetricType::Counter,
                AlertLevel::ALL.map(|l| {
                    let n = by_level[level_idx(l)].load(Relaxed);
                    ([("level", l.name())], ConstCounter::new(n))
                }),
            )?;
        }
        let mut open = [[0u64; 2]; 4];
        {
            let st = self.state.lock();
            for seq in st.open.values() {
                if let Some(e) = st.alerts.get(seq) {
                    let s = usize::from(e.rec.doc.alert.state == AlertState::Acknowledged);
                    open[level_idx(e.rec.doc.alert.level)][s] += 1;
                }
            }
        }
        encode_family(
            &mut e,
            "alerts_open",
            "Open alerts by level and state.",
            MetricType::Gauge,
            AlertLevel::ALL.into_iter().flat_map(|l| {
                ["active", "acknowledged"]
                    .into_iter()
                    .enumerate()
                    .map(move |(s, state)| {
                        (
                            [("level", l.name()), ("state", state)],
                            ConstGauge::new(open[level_idx(l)][s]),
                        )
                    })
            }),
        )?;
        for (name, help, v) in [
            (
                "alerts_acknowledged",
                "Alerts acknowledged by operators.",
                &m.acknowledged,
            ),
            (
                "alerts_published",
                "Alert changes written and published.",
                &m.published,
            ),
            (
                "alerts_persist_errors",
                "Failed writes of the alert file (retried).",
                &m.persist_errors,
            ),
        ] {
            encode_counter(&mut e, name, help, v.load(Relaxed))?;
        }
        Ok(())
    }
}

impl AlertSink for AlertBook {
    fn firing(&self, f: &Firing<'_>) {
        let rule = f.rule;
        let d = self.registry.device(f.device);
        let message = rule.message(&d.id, f.value);
        let mut st = self.state.lock();
        let key = (rule.id.clone(), f.device);
        if let Some(&seq) = st.open.get(&key) {
            // A repeat (or a start racing a reload or restart): update, never duplicate.
            if let Some(e) = st.alerts.get_mut(&seq) {
                if f.ts_ms < e.rec.reading_ts_ms {
                    return;
                }
                let a = &mut e.rec.doc.alert;
                if a.value == Some(f.value) && e.rec.reading_ts_ms == f.ts_ms {
                    return;
                }
                a.value = Some(f.value);
                a.ts = rfc(f.ts_ms);
                a.message = message;
                e.rec.reading_ts_ms = f.ts_ms;
                self.touch(&mut st, seq, false);
            }
            return;
        }
        let seq = st.take_seq();
        let id = format!("{}.{}.{seq}", d.id, rule.id);
        let quantity = rule.quantity.map(|q| q.name().to_string());
        let rec = StoredAlert {
            seq,
            doc: AlertDoc {
                alert: Alert {
                    id: id.clone(),
                    rule: rule.id.to_string(),
                    device: d.id.to_string(),
                    kind: d.kind.to_string(),
                    quantity: quantity.clone(),
                    level: rule.level,
                    state: AlertState::Active,
                    value: Some(f.value),
                    threshold: Some(rule.condition.threshold()),
                    ts: rfc(f.ts_ms),
                    message,
                },
                dept: d.config.dept.clone(),
                unit: rule.unit(),
                raised_at: rfc(f.ts_ms),
                acked_at: None,
                acked_by: None,
                cleared_at: None,
                superseded_by: None,
                revision: 0,
            },
            reading_ts_ms: f.ts_ms,
            raised_ms: f.ts_ms,
            first_sent_ms: None,
            rev_sent_ms: 0,
            prev_sent_ms: None,
            rule_fingerprint: fingerprint(&rule.config),
            category: rule
                .config
                .category
                .clone()
                .unwrap_or_else(|| cap::default_category(rule.quantity).to_string()),
            event: event_name(rule),
            certainty: match rule.condition {
                Condition::Rise { .. } => "Likely",
                _ => "Observed",
            }
            .to_string(),
            radius_km: rule.config.radius_km.unwrap_or(0.5),
        };
        st.by_id.insert(id, seq);
        st.open.insert(key, seq);
        st.open_by_device.entry(f.device).or_default().push(seq);
        st.alerts.insert(
            seq,
            Entry {
                rec,
                device: f.device,
                changed: true,
            },
        );
        self.touch(&mut st, seq, true);
        self.metrics.raised[level_idx(rule.level)].fetch_add(1, Relaxed);
        self.escalate(&mut st, f.device, quantity.as_deref());
    }

    fn cleared(&self, rule: &Rule, device: DeviceIdx, value: Option<f64>, ts_ms: i64) {
        let mut st = self.state.lock();
        if let Some(&seq) = st.open.get(&(rule.id.clone(), device)) {
            self.close(&mut st, seq, value, ts_ms, "");
        }
    }

    fn open_since(&self, rule: &str, device: DeviceIdx) -> Option<i64> {
        let st = self.state.lock();
        let seq = st.open.get(&(Arc::<str>::from(rule), device))?;
        st.alerts.get(seq).map(|e| e.rec.reading_ts_ms)
    }

    fn retire(&self, rule: &str, reason: &str, now_ms: i64) {
        let mut st = self.state.lock();
        let seqs: Vec<u64> = st
            .open
            .iter()
            .filter(|((r, _), _)| &**r == rule)
            .map(|(_, s)| *s)
            .collect();
        for seq in seqs {
            self.close(&mut st, seq, None, now_ms, &format!("cleared: {reason}"));
        }
    }
}

/// The CAP `event` of a rule: what happened, in words.
fn event_name(rule: &Rule) -> String {
    let q = rule
        .quantity
        .map(|q| q.name().replace('_', " "))
        .unwrap_or_default();
    match &rule.condition {
        Condition::Above { .. } => format!("{q} high"),
        Condition::Below { .. } => format!("{q} low"),
        Condition::Rise { .. } => format!("{q} rising fast"),
        Condition::Equals(_) => match rule.quantity {
            Some(Quantity::Motion) => "motion detected".to_string(),
            Some(quantity) => format!(
                "{q} {}",
                rule.config
                    .equals
                    .as_ref()
                    .and_then(|s| s.to_value(quantity))
                    .map(|v| match v {
                        protocols::Value::State(i) => match quantity.kind() {
                            protocols::ValueKind::Enum(states) => states
                                .get(i as usize)
                                .map_or_else(|| i.to_string(), |s| s.replace('_', " ")),
                            _ => i.to_string(),
                        },
                        protocols::Value::Bool(b) => b.to_string(),
                        protocols::Value::Number(n) => crate::rules::number_text(n),
                    })
                    .unwrap_or_default()
            ),
            None => q,
        },
        Condition::Silent { .. } => "device silent".to_string(),
    }
}

#[cfg(test)]
mod collector_tests {
    use super::*;

    #[test]
    fn renders_the_alert_families() {
        let metrics = Arc::new(AlertMetrics::default());
        metrics.raised[level_idx(AlertLevel::ALL[1])].fetch_add(2, Relaxed);
        metrics.acknowledged.fetch_add(1, Relaxed);
        let text = crate::metrics::render_collector(AlertCollector {
            metrics,
            state: Arc::default(),
        });
        let l = AlertLevel::ALL[1].name();
        assert!(
            text.contains(&format!(
                "# TYPE hub_alerts_raised_total counter\n\
                 hub_alerts_raised_total{{level=\"{}\"}} 0\n\
                 hub_alerts_raised_total{{level=\"{l}\"}} 2\n",
                AlertLevel::ALL[0].name()
            )),
            "{text}"
        );
        assert!(text.contains(&format!("hub_alerts_cleared_total{{level=\"{l}\"}} 0\n")));
        assert!(text.contains(&format!(
            "hub_alerts_open{{level=\"{l}\",state=\"acknowledged\"}} 0\n"
        )));
        assert_eq!(text.matches("hub_alerts_open{").count(), 8);
        assert!(text.contains("# TYPE hub_alerts_open gauge\n"));
        assert!(text.contains("hub_alerts_acknowledged_total 1\n"));
        assert!(text.contains("hub_alerts_persist_errors_total 0\n"));
        assert_eq!(text.matches("# TYPE ").count(), 6);
    }
}
