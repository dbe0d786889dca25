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
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use series_store::{SeriesStore, StoreHealth};

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

    /// Reads free space every [`DISK_CHECK_EVERY`] until the hub stops.
    pub async fn run(self: Arc<Self>, mut stop: Signal) {
        let mut tick = tokio::time::interval(DISK_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.recv() => return,
                _ = tick.tick() => self.check(),
            }
        }
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

/// One part of the hub in a health answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
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

/// Repeated errors of one kind, logged at most once per interval with their count, so an
/// incident reads as a few lines ("store append failed 18,431 times in the last 10 s: ...")
/// instead of one line per message.
#[derive(Debug)]
pub struct ErrorBurst {
    what: &'static str,
    every: Duration,
    /// In a burst: lets `clear` on the hot path skip the lock.
    active: AtomicBool,
    state: Mutex<BurstState>,
}

#[derive(Debug)]
struct BurstState {
    since: Option<Instant>,
    count: u64,
    last: String,
}

impl ErrorBurst {
    /// Errors described as `what` ("store append failed"), summarized every `every`.
    pub const fn new(what: &'static str, every: Duration) -> ErrorBurst {
        ErrorBurst {
            what,
            every,
            active: AtomicBool::new(false),
            state: Mutex::new(BurstState {
                since: None,
                count: 0,
                last: String::new(),
            }),
        }
    }

    /// Records one error: the first of a burst is logged at once, the rest in a summary line
    /// at the end of each interval (written by the next error after it).
    pub fn record(&self, error: &dyn std::fmt::Display) {
        let mut st = self.state.lock();
        let now = Instant::now();
        match st.since {
            None => {
                tracing::error!("{}: {error}", self.what);
                st.since = Some(now);
                st.count = 0;
                self.active.store(true, Relaxed);
            }
            Some(since) => {
                st.count += 1;
                if now.duration_since(since) >= self.every {
                    tracing::error!(
                        "{} {} times in the last {:?}: {error}",
                        self.what,
                        st.count,
                        now.duration_since(since)
                    );
                    st.since = Some(now);
                    st.count = 0;
                }
            }
        }
        st.last.clear();
        use std::fmt::Write as _;
        let _ = write!(st.last, "{error}");
    }

    /// Ends a burst (the operation worked again), logging what was not summarized yet.
    pub fn clear(&self) {
        if !self.active.load(Relaxed) {
            return;
        }
        let mut st = self.state.lock();
        self.active.store(false, Relaxed);
        if st.since.take().is_some() && st.count > 0 {
            tracing::error!(
                "{} {} more times before it worked again; last: {}",
                self.what,
                st.count,
                st.last
            );
        }
        st.count = 0;
    }
}
