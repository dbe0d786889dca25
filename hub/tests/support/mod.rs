//! Test harness: a hub assembled in-process with a recording publisher at the ingress seam.
//!
//! `InMemorySeriesStore` is a test-only store used where faults are injected (a failing append); every
//! other scenario runs on the real engine (`TsStore`) as well. Formerly a stand-in until the `store` branch's
//! engine lands; the tests are written over `SeriesStore` so the real engine can be plugged
//! into the same functions.
#![allow(dead_code)]

pub mod memstore;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hub::config::HubConfig;
use hub::{Hub, RunningHub};
use mqtt_broker::ingress::{Disposition, Inbound, IngressEvent, Outbound, Publisher};
use parking_lot::Mutex;
use protocols::access::Principal;
use series_store::SeriesStore;
use tokio::sync::{Notify, mpsc, oneshot};

pub use memstore::InMemorySeriesStore;

/// How long any awaited event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The hub.toml of the tests (data_dir and http_listen are filled in).
pub const CONFIG: &str = r#"
[[devices]]
id = "WL-0001"
kind = "water_level"
secret = "wl-secret-0001"
dept = "water"
lat = 30.4212
lon = 120.3010

[[devices]]
id = "SL-0001"
kind = "streetlight"
agent = "AG-0001"
dept = "lighting"
lat = 30.42
lon = 120.30

[[devices]]
id = "SL-0002"
kind = "streetlight"
agent = "AG-0001"
dept = "lighting"

[[devices]]
id = "MH-0001"
kind = "manhole"
agent = "AG-0002"
dept = "drainage"

[[agents]]
id = "AG-0001"
secret = "ag-secret-0001"

[[agents]]
id = "AG-0002"
secret = "ag-secret-0002"

[[apps]]
id = "command-center"
secret = "cc-secret-123"
grants = ["feeds/#", "twin/#", "alerts/#", "deadletter/#"]

[[apps]]
id = "water-dept"
secret = "water-secret-1"
grants = ["feeds/water_level/#", "twin/WL-0001"]
"#;

/// Records everything the hub publishes, and wakes waiters.
#[derive(Default)]
pub struct RecordingPublisher {
    msgs: Mutex<Vec<Outbound>>,
    notify: Notify,
}

impl Publisher for RecordingPublisher {
    fn publish(&self, msg: Outbound) {
        self.msgs.lock().push(msg);
        self.notify.notify_waiters();
    }
}

impl RecordingPublisher {
    /// Everything so far.
    pub fn all(&self) -> Vec<Outbound> {
        self.msgs.lock().clone()
    }

    /// Messages on one topic, oldest first.
    pub fn on(&self, topic: &str) -> Vec<Outbound> {
        self.msgs
            .lock()
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }

    /// JSON payloads on one topic.
    pub fn json_on(&self, topic: &str) -> Vec<serde_json::Value> {
        self.on(topic)
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect()
    }

    /// Waits until `check` finds what it looks for in the messages, or fails the test.
    pub async fn wait_for<T>(&self, what: &str, check: impl Fn(&[Outbound]) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(t) = check(&self.msgs.lock()) {
                return t;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let topics: Vec<String> =
                    self.msgs.lock().iter().map(|m| m.topic.clone()).collect();
                panic!("timed out waiting for {what}; published: {topics:?}");
            }
        }
    }

    /// Waits until at least `n` messages were published on `topic`; returns them.
    pub async fn wait_count(&self, topic: &str, n: usize) -> Vec<Outbound> {
        self.wait_for(&format!("{n} messages on {topic}"), |msgs| {
            let on: Vec<Outbound> = msgs.iter().filter(|m| m.topic == topic).cloned().collect();
            (on.len() >= n).then_some(on)
        })
        .await
    }
}

/// A started hub with the test's end of the ingress seam.
pub struct TestHub<S: SeriesStore> {
    /// The running hub.
    pub hub: Option<RunningHub>,
    /// Where ingress events go.
    pub events: Option<mpsc::Sender<IngressEvent>>,
    /// What the hub published.
    pub published: Arc<RecordingPublisher>,
    /// The store.
    pub store: Arc<S>,
    /// The configuration used.
    pub config: HubConfig,
}

/// The test configuration with its data directory.
pub fn config(data_dir: &Path) -> HubConfig {
    config_of(CONFIG, data_dir)
}

/// A config from TOML text with its data directory and the HTTP API on a free loopback port.
pub fn config_of(toml: &str, data_dir: &Path) -> HubConfig {
    let mut cfg = HubConfig::from_toml(toml).expect("test config parses");
    cfg.hub.data_dir = data_dir.to_path_buf();
    cfg.hub.http_listen = "127.0.0.1:0".to_string();
    cfg
}

impl<S: SeriesStore> TestHub<S> {
    /// Starts a hub over `store` with data in `data_dir`.
    pub async fn start(data_dir: &Path, store: Arc<S>) -> TestHub<S> {
        TestHub::start_with(config(data_dir), store).await
    }

    /// Starts a hub with a given configuration.
    pub async fn start_with(config: HubConfig, store: Arc<S>) -> TestHub<S> {
        let hub = Hub::new(config.clone(), store.clone()).unwrap();
        let events = hub.ingress_sender();
        let published = Arc::new(RecordingPublisher::default());
        let running = hub.start(published.clone()).await.unwrap();
        TestHub {
            hub: Some(running),
            events: Some(events),
            published,
            store,
            config,
        }
    }

    /// The HTTP base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.hub.as_ref().unwrap().http_addr())
    }

    /// Sends a message as `principal` and returns the receiver of its disposition.
    pub async fn send(
        &self,
        principal: Principal,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> oneshot::Receiver<Disposition> {
        self.send_at(principal, topic, payload, now_ms()).await
    }

    /// Like [`TestHub::send`] with an explicit hub arrival time.
    pub async fn send_at(
        &self,
        principal: Principal,
        topic: &str,
        payload: impl Into<Bytes>,
        received_ms: i64,
    ) -> oneshot::Receiver<Disposition> {
        let (tx, rx) = oneshot::channel();
        let client_id: Arc<str> = principal.id().into();
        self.event(IngressEvent::Message(Inbound {
            principal: Arc::new(principal),
            client_id,
            topic: topic.to_string(),
            payload: payload.into(),
            received_ms,
            arrived: std::time::Instant::now(),
            done: Some(tx),
        }))
        .await;
        rx
    }

    /// Sends any ingress event.
    pub async fn event(&self, ev: IngressEvent) {
        self.events.as_ref().unwrap().send(ev).await.unwrap();
    }

    /// Stops the "ingress" and the hub, waiting for the pipeline to drain.
    pub async fn shutdown(mut self) -> Arc<S> {
        drop(self.events.take());
        tokio::time::timeout(DEADLINE, self.hub.take().unwrap().shutdown())
            .await
            .expect("hub shut down in time");
        self.store.clone()
    }
}

/// Waits for a disposition.
pub async fn disposition(rx: oneshot::Receiver<Disposition>) -> Disposition {
    tokio::time::timeout(DEADLINE, rx)
        .await
        .expect("disposition in time")
        .expect("disposition sent")
}

pub use protocols::time::now_ms;

/// The principal of an agent.
pub fn agent(id: &str) -> Principal {
    Principal::Agent(id.to_string())
}

/// The principal of a device.
pub fn device(id: &str) -> Principal {
    Principal::Device(id.to_string())
}

/// The principal of an app with grants as written in hub.toml.
pub fn app(id: &str, grants: &[&str]) -> Principal {
    Principal::App {
        id: id.to_string(),
        grants: grants
            .iter()
            .map(|g| protocols::access::grant_filter(g).unwrap())
            .collect(),
    }
}

/// Opens (or reopens) a store in a directory; the scenarios are generic over it.
pub trait OpenStore<S: SeriesStore>: Fn(&Path) -> Arc<S> {}
impl<S: SeriesStore, F: Fn(&Path) -> Arc<S>> OpenStore<S> for F {}

/// Opens test-only in-memory stores: the same directory gives the same store, as files would.
pub fn mem_stores() -> impl OpenStore<InMemorySeriesStore> {
    let stores = Mutex::new(std::collections::HashMap::<
        std::path::PathBuf,
        Arc<InMemorySeriesStore>,
    >::new());
    move |dir: &Path| stores.lock().entry(dir.to_path_buf()).or_default().clone()
}

/// Opens the real embedded engine; the same directory reopens the same files.
pub fn ts_stores() -> impl OpenStore<series_store::TsStore> {
    |dir: &Path| {
        Arc::new(
            series_store::TsStore::open(dir, series_store::StoreOptions::default())
                .expect("open TsStore"),
        )
    }
}

impl Closable for series_store::TsStore {
    async fn close_store(&self) {
        self.close().await.expect("close TsStore");
    }
}

/// Raw points of a series, through the seam's `query`.
pub fn series<S: SeriesStore>(
    store: &S,
    device: &str,
    quantity: protocols::Quantity,
) -> Vec<(i64, f64)> {
    store
        .query(&series_store::Query {
            series: series_store::SeriesId {
                device: device.into(),
                quantity,
            },
            // 2000-01-01 .. 2100-01-01
            from_ms: 946_684_800_000,
            to_ms: 4_102_444_800_000,
            step_ms: None,
            agg: series_store::Agg::Avg,
        })
        .unwrap()
}

impl<S: SeriesStore> TestHub<S> {
    /// Starts a hub in `dir` with a store opened in `dir/series`.
    pub async fn start_in(dir: &Path, open: &impl OpenStore<S>) -> TestHub<S> {
        TestHub::start(dir, open(&dir.join("series"))).await
    }
}

/// What the scenarios need beyond the seam: closing a store before its directory is opened
/// again (a real engine holds a file lock until closed).
pub trait Closable: SeriesStore {
    /// Flushes and releases the store.
    fn close_store(&self) -> impl std::future::Future<Output = ()> + Send;
}

impl Closable for InMemorySeriesStore {
    async fn close_store(&self) {}
}
