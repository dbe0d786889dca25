//! What the hub can do right now, told truthfully: the disk watermark (`[hub] min_free_disk`),
//! the time-series store's state, and the `/healthz` and `/readyz` answers built from them.
//!
//! The watermark exists so that the hub stops taking data before the filesystem is full: a
//! store that hits ENOSPC has to reopen itself, twins and alerts cannot be saved, and every
//! client keeps retrying. Below the watermark the commit stage refuses new writes (the message
//! is not acknowledged, so the device or agent keeps it and sends it again), counted in
//! `hub_disk_refused_total`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;
use series_store::{SeriesStore, StoreHealth};

use crate::alerts::AlertBook;
use crate::alerts::hub_level::{HubCondition, Observation};
use crate::shutdown::Signal;

/// How often free space is read.
pub const DISK_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Free space on the data directory's filesystem against `[hub] min_free_disk`.
#[derive(Debug)]
pub struct DiskWatch {
    dir: PathBuf,
    min_free: u64,
    free: AtomicU64,
    low: AtomicBool,
    refused: AtomicU64,
}

impl DiskWatch {
    /// Watches the filesystem holding `dir`; reads it once now.
    pub fn new(dir: PathBuf, min_free: u64) -> Arc<DiskWatch> {
        let w = Arc::new(DiskWatch {
            dir,
            min_free,
            free: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
            refused: AtomicU64::new(0),
        });
        w.check();
        w
    }

    /// Reads free space and flips the low state, logging each change once.
    pub fn check(&self) {
        let free = match series_store::free_disk_bytes(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read free disk space");
                return;
            }
        };
        self.free.store(free, Relaxed);
        let low = free < self.min_free;
        if self.low.swap(low, Relaxed) != low {
            if low {
                tracing::warn!(
                    free,
                    min_free_disk = self.min_free,
                    "free disk space below [hub] min_free_disk: new data is refused (not acknowledged) until there is room"
                );
            } else {
                tracing::info!(
                    free,
                    refused_so_far = self.refused.load(Relaxed),
                    "free disk space above [hub] min_free_disk again: taking new data"
                );
            }
        }
    }

    /// Whether new data is refused now.
    pub fn is_low(&self) -> bool {
        self.low.load(Relaxed)
    }

    /// Counts a message refused because the disk is low.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Relaxed);
    }

    /// The refusal's reason, for logs and the message's error.
    pub fn reason(&self) -> String {
        format!(
            "free disk space {} bytes is below [hub] min_free_disk {} bytes",
            self.free.load(Relaxed),
            self.min_free
        )
    }

    /// Free bytes at the last reading (`u64::MAX` before the first one worked).
    pub fn free(&self) -> u64 {
        self.free.load(Relaxed)
    }

    /// `[hub] min_free_disk`.
    pub fn min_free(&self) -> u64 {
        self.min_free
    }

    /// Exports `hub_disk_*` at scrape time.
    pub fn collector(self: &Arc<Self>) -> DiskCollector {
        DiskCollector(self.clone())
    }
}

/// `hub_disk_free_bytes`, `hub_disk_min_free_bytes`, `hub_disk_low`, `hub_disk_refused_total`.
#[derive(Debug)]
pub struct DiskCollector(Arc<DiskWatch>);

impl prometheus_client::collector::Collector for DiskCollector {
    fn encode(&self, mut e: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::metrics::gauge::ConstGauge;
        let w = &*self.0;
        let free = w.free.load(Relaxed);
        crate::metrics::encode_one(
            &mut e,
            "disk_free_bytes",
            "Free bytes on the data directory's filesystem.",
            ConstGauge::new(if free == u64::MAX { -1 } else { free as i64 }),
        )?;
        crate::metrics::encode_one(
            &mut e,
            "disk_min_free_bytes",
            "[hub] min_free_disk: below it new data is refused.",
            ConstGauge::new(w.min_free as i64),
        )?;
        crate::metrics::encode_one(
            &mut e,
            "disk_low",
            "1 while free disk space is below [hub] min_free_disk.",
            ConstGauge::new(i64::from(w.is_low())),
        )?;
        crate::metrics::encode_counter(
            &mut e,
            "disk_refused",
            "Messages refused (not acknowledged) because free disk space was low.",
            w.refused.load(Relaxed),
        )
    }
}

/// Reads free space and the store's state every [`DISK_CHECK_EVERY`] until the hub stops,
/// raising and clearing the hub-level alerts that tell the command center.
pub async fn watch<S: SeriesStore>(
    disk: Arc<DiskWatch>,
    store: Arc<S>,
    alerts: Arc<AlertBook>,
    mut stop: Signal,
) {
    let mut tick = tokio::time::interval(DISK_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.recv() => return,
            _ = tick.tick() => {
                disk.check();
                report(&disk, &*store, &alerts, protocols::time::now_ms());
            }
        }
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// Raises or clears the hub-level alerts for the disk and the store as they are now.
pub fn report<S: SeriesStore>(disk: &DiskWatch, store: &S, alerts: &AlertBook, now_ms: i64) {
    let low = disk.is_low().then(|| Observation {
        value: Some(disk.free() as f64),
        threshold: Some(disk.min_free as f64),
        unit: "B",
        message: format!(
            "free disk space on the hub's data directory is {}, below [hub] min_free_disk {}: \
             new data is refused (not acknowledged, so devices and agents keep it) until there is room",
            mib(disk.free()),
            mib(disk.min_free)
        ),
    });
    alerts.hub_condition(
        HubCondition::DiskLow,
        low,
        "free disk space is above [hub] min_free_disk again",
        now_ms,
    );
    let failing = match store.health() {
        StoreHealth::Writable => None,
        StoreHealth::Failed { reason, .. } => Some(Observation {
            value: None,
            threshold: None,
            unit: "",
            message: format!(
                "the time-series store cannot write ({reason}); nothing new is acknowledged and \
                 the store reopens by itself once there is room"
            ),
        }),
    };
    alerts.hub_condition(
        HubCondition::StoreFailing,
        failing,
        "the store writes again",
        now_ms,
    );
}

/// `hub_store_writable`: 1 while the time-series store takes writes, 0 while it fails and
/// reopens itself (the disk's gauges are [`DiskCollector`]'s).
pub struct StoreCollector<S>(pub Arc<S>);

impl<S> std::fmt::Debug for StoreCollector<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreCollector")
    }
}

impl<S: SeriesStore> prometheus_client::collector::Collector for StoreCollector<S> {
    fn encode(&self, mut e: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        use prometheus_client::metrics::gauge::ConstGauge;
        let writable = matches!(self.0.health(), StoreHealth::Writable);
        crate::metrics::encode_one(
            &mut e,
            "store_writable",
            "1 while the time-series store takes writes; 0 while it fails and reopens itself.",
            ConstGauge::new(i64::from(writable)),
        )
    }
}

/// One part of the hub in a health answer.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Component {
    /// `store` or `disk`.
    pub component: &'static str,
    /// `ok` or `failing`.
    pub status: &'static str,
    /// What is wrong, or what it is doing.
    pub detail: String,
    /// Since when it fails, RFC 3339 (hub time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// The hub's health: every component, and whether all are ok.
pub fn components<S: SeriesStore>(store: &S, disk: &DiskWatch) -> (bool, Vec<Component>) {
    let store_part = match store.health() {
        StoreHealth::Writable => Component {
            component: "store",
            status: "ok",
            detail: "taking writes".into(),
            since: None,
        },
        StoreHealth::Failed { reason, since_ms } => Component {
            component: "store",
            status: "failing",
            detail: format!("cannot write, reopening by itself: {reason}"),
            since: Some(
                protocols::time::Rfc3339::from_ms(since_ms)
                    .as_str()
                    .to_string(),
            ),
        },
    };
    let disk_part = Component {
        component: "disk",
        status: if disk.is_low() { "failing" } else { "ok" },
        detail: if disk.is_low() {
            format!("{}; new data is refused", disk.reason())
        } else {
            format!("{} bytes free", disk.free.load(Relaxed))
        },
        since: None,
    };
    let ok = store_part.status == "ok" && disk_part.status == "ok";
    (ok, vec![store_part, disk_part])
}
