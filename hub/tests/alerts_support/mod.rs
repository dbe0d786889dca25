//! What the alert and twin tests share: a hub with rules, readings sent as a direct device
//! and awaited until the rule engine has seen them, and alerts read back.
#![allow(dead_code)]

use std::path::Path;

use hub::alerts::{AlertDoc, AlertFilter};
use hub::config::HubConfig;
use mqtt_broker::ingress::Disposition;
use protocols::messages::AlertState;
use series_store::TsStore;

use crate::support::{self, TestHub, device, disposition};

/// 2026-11-20T00:00:00Z, a Friday; device times of the tests count from here.
pub const T0: i64 = 1_795_132_800_000;

/// Devices of the alert tests: two direct devices and a few behind agents.
pub const DEVICES: &str = r#"
[[devices]]
id = "WL-0001"
kind = "water_level"
secret = "wl-secret-0001"
dept = "water"
name = "Canal gauge east"
lat = 30.4212
lon = 120.3010

[[devices]]
id = "WQ-0001"
kind = "water_quality"
secret = "wq-secret-0001"
dept = "water"
lat = 30.43
lon = 120.31

[[devices]]
id = "CAM-0001"
kind = "camera"
secret = "cam-secret-0001"
dept = "safety"
gb_id = "33011000001320000001"
lat = 30.41
lon = 120.29

[[devices]]
id = "SL-0001"
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
grants = ["feeds/#", "twin/#", "alerts/#", "admin/#"]

[[apps]]
id = "water-dept"
secret = "water-secret-1"
grants = ["feeds/water_level/#", "alerts/+/WL-0001"]

[[apps]]
id = "night-watch"
secret = "night-secret-1"
grants = ["alerts/red/#"]
"#;

/// A validated config of [`DEVICES`] and `rules` (TOML `[[rules]]` text) in `dir`.
pub fn config(dir: &Path, rules: &str) -> HubConfig {
    support::config_of(&format!("{DEVICES}\n{rules}"), dir)
}

/// A hub on the real store with data in `dir`.
pub async fn start(cfg: HubConfig) -> TestHub<TsStore> {
    let store = support::ts_stores()(&cfg.hub.data_dir.join("series"));
    TestHub::start_with(cfg, store).await
}

/// Stops a hub and closes its store.
pub async fn stop(h: TestHub<TsStore>) {
    let store = h.shutdown().await;
    store.close().await.unwrap();
}

/// Sends telemetry of a direct device at device time `ts` and waits until the rule engine
/// has evaluated it (its feed is published after the rules ran).
pub async fn send(h: &TestHub<TsStore>, dev: &str, kind: &str, ts: i64, values: &str) {
    let feed = format!("v1/feeds/{kind}/{dev}");
    let before = h.published.on(&feed).len();
    let payload = format!(r#"{{"ts":{ts},"values":{values}}}"#);
    let rx = h
        .send(device(dev), &format!("v1/devices/{dev}/telemetry"), payload)
        .await;
    assert_eq!(disposition(rx).await, Disposition::Accepted);
    h.published.wait_count(&feed, before + 1).await;
}

/// Water level of WL-0001 at `T0 + secs`.
pub async fn level(h: &TestHub<TsStore>, secs: i64, v: f64) {
    send(
        h,
        "WL-0001",
        "water_level",
        T0 + secs * 1000,
        &format!(r#"{{"water_level":{v}}}"#),
    )
    .await;
}

/// Every alert the book holds now (in memory, synchronous with the engine), newest first.
pub fn alerts(h: &TestHub<TsStore>) -> Vec<AlertDoc> {
    h.hub.as_ref().unwrap().alerts().list(
        &AlertFilter {
            limit: 10_000,
            ..AlertFilter::default()
        },
        |_| true,
    )
}

/// Alerts of one rule, newest first.
pub fn of_rule(h: &TestHub<TsStore>, rule: &str) -> Vec<AlertDoc> {
    alerts(h)
        .into_iter()
        .filter(|a| a.alert.rule == rule)
        .collect()
}

/// Every alert change published so far on `v1/alerts/...`, oldest first.
pub fn published(h: &TestHub<TsStore>) -> Vec<AlertDoc> {
    h.published
        .all()
        .iter()
        .filter(|m| m.topic.starts_with("v1/alerts/"))
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}

/// Waits until a publication on `v1/alerts/...` satisfies `check`; returns it.
pub async fn wait_published(
    h: &TestHub<TsStore>,
    what: &str,
    check: impl Fn(&AlertDoc) -> bool,
) -> AlertDoc {
    h.published
        .wait_for(what, |msgs| {
            msgs.iter()
                .filter(|m| m.topic.starts_with("v1/alerts/"))
                .filter_map(|m| serde_json::from_slice::<AlertDoc>(&m.payload).ok())
                .rfind(|a| check(a))
        })
        .await
}

/// Waits until the alert with `id` is published in `state`.
pub async fn wait_state(h: &TestHub<TsStore>, id: &str, state: AlertState) -> AlertDoc {
    wait_published(h, &format!("{id} {state:?}"), |a| {
        a.alert.id == id && a.alert.state == state
    })
    .await
}

/// The running hub's HTTP client with an app's token.
pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// `Authorization` value for an app.
pub fn bearer(app: &str, secret: &str) -> String {
    format!("Bearer {app}:{secret}")
}
