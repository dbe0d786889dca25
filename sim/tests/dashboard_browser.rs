//! The command-center page in headless Chromium against a running `sim demo` hub: its charts
//! show what `/api/v1/series` answers with the rules' thresholds, its map places every device at
//! its catalog coordinates over the district's GeoJSON, the device drawer's dimming slider
//! reaches a simulated lamp's Modbus register and shows the lamp's report, acking an alert from
//! the page changes it in the API, and times are shown in district time (+08:00).
//!
//! `cargo test -p sim --test dashboard_browser -- --ignored screenshots` writes the README's
//! screenshots (docs/dashboard.png, docs/dashboard-drawer.png) from a storm.

mod browser;

use std::path::{Path, PathBuf};
use std::time::Duration;

use browser::Page;
use serde_json::Value;
use sim::district::demo::{Demo, DemoOptions};

/// Each test's budget once its demo runs.
const DEADLINE: Duration = Duration::from_secs(50);

struct Setup {
    _dir: tempfile::TempDir,
    demo: Demo,
    page: Page,
    client: reqwest::Client,
    auth: String,
}

async fn setup(width: u32, height: u32, opts: impl FnOnce(DemoOptions) -> DemoOptions) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(opts(DemoOptions {
        speed: 60.0,
        incidents: false,
        ..DemoOptions::local(&dir.path().join("demo"))
    }))
    .await
    .unwrap();
    let http_addr = demo.http_addr().to_string();
    let page = Page::open(
        &dir.path().join("chromium"),
        &http_addr,
        &demo.dashboard_url(),
        width,
        height,
    )
    .await;
    let (app, secret) = demo.command_center();
    let auth = format!("Bearer {app}:{secret}");
    Setup {
        _dir: dir,
        demo,
        page,
        client: reqwest::Client::new(),
        auth,
    }
}

impl Setup {
    async fn get(&self, path: &str) -> Value {
        let r = self
            .client
            .get(format!("http://{}{path}", self.demo.http_addr()))
            .header("Authorization", &self.auth)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    }

    async fn ready(&mut self, deadline: tokio::time::Instant) {
        let n = self.demo.layout().device_ids().count();
        self.page
            .wait_for(
                "the page signed in and listed the district",
                "document.body.dataset.ready === '1' && dash.devices.size",
                deadline,
                |v| v.as_u64() == Some(n as u64),
            )
            .await;
    }

    /// The chart's drawn data (uPlot's own arrays) against the API's answer to the very
    /// queries it was drawn from: every point the API gives inside the chart's kept range is
    /// on the chart, at the same time with the same value.
    async fn chart_matches_api(&mut self, key: &str) -> usize {
        let c = self
            .page
            .eval(&format!(
                "(() => {{ const c = dash.charts.get({key:?}); return {{queries: c.queries, data: c.plot.data}}; }})()"
            ))
            .await;
        let xs: Vec<f64> = serde_json::from_value(c["data"][0].clone()).unwrap();
        let mut matched = 0;
        for (i, q) in c["queries"].as_array().unwrap().iter().enumerate() {
            let q = q.as_str().expect("every series was fetched");
            let ys: Vec<Option<f64>> = serde_json::from_value(c["data"][i + 1].clone()).unwrap();
            let drawn: Vec<(i64, f64)> = xs
                .iter()
                .zip(&ys)
                .filter_map(|(x, y)| y.map(|y| ((x * 1000.0).round() as i64, y)))
                .collect();
            let answer = self.get(q).await;
            let points: Vec<(i64, f64)> = serde_json::from_value(answer["points"].clone()).unwrap();
            assert!(!points.is_empty(), "{q}: no points to compare");
            let first = xs.first().map_or(i64::MAX, |x| (x * 1000.0).round() as i64);
            for p in points.iter().filter(|p| p.0 >= first) {
                assert!(
                    drawn.iter().any(|d| d.0 == p.0 && d.1 == p.1),
                    "{key}: the API's point {p:?} of {q} is not on the chart"
                );
                matched += 1;
            }
        }
        matched
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charts_show_the_api_series_with_thresholds_in_district_time() {
    let mut s = setup(1600, 1000, |o| o).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    s.ready(deadline).await;

    // The river panel: every gauge, raw points for its hour, the warning and danger lines.
    let gauges = s
        .demo
        .layout()
        .field
        .iter()
        .filter(|d| d.model.kind() == "water_level")
        .count();
    let river = s
        .page
        .wait_for(
            "the river panel drew every gauge",
            "(() => { const c = dash.charts.get('river'); return c && {n: c.devices.length, points: c.fetched.reduce((a, b) => a + b, 0), queries: c.queries, lines: c.thresholds().map(t => t.value).sort()}; })()",
            deadline,
            |v| v["n"].as_u64() == Some(gauges as u64) && v["points"].as_u64().is_some_and(|p| p > 0),
        )
        .await;
    assert!(
        river["queries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|q| !q.as_str().unwrap().contains("step=")),
        "an hour is drawn from raw points: {river}"
    );
    assert!(
        river["lines"].as_array().unwrap().iter().any(|v| v == 3.0)
            && river["lines"].as_array().unwrap().iter().any(|v| v == 3.5),
        "the warning (3.0 m) and danger (3.5 m) lines: {river}"
    );
    let matched = s.chart_matches_api("river").await;
    eprintln!("river panel: {matched} points match the API");

    // A device's 24 h chart in the drawer: aggregated or, on a young hub, raw.
    s.page
        .eval("document.querySelector('#devices tr[data-device=\"WL-0001\"]').click()")
        .await;
    s.page
        .wait_for(
            "the drawer charted WL-0001's water level",
            "(() => { const c = dash.charts.get('drawer:water_level'); return !!c && c.devices[0].id === 'WL-0001' && c.plot.data[0].length > 0; })()",
            deadline,
            |v| v == true,
        )
        .await;
    let matched = s.chart_matches_api("drawer:water_level").await;
    assert!(matched > 0);
    // The twin table shows the level rounded to the quantities table's decimals, with its unit.
    let decimals = s
        .get("/api/v1/quantities")
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "water_level")
        .and_then(|q| q["decimals"].as_u64())
        .unwrap() as usize;
    let cell = s
        .page
        .eval("document.querySelector('#d-twin tr[data-q=\"water_level\"] td:nth-child(2)').textContent")
        .await;
    let text = cell.as_str().unwrap_or_default();
    let number = text.trim_end_matches(" m");
    assert!(
        text.ends_with(" m")
            && number
                .split_once('.')
                .is_some_and(|(_, d)| d.len() == decimals),
        "water level shown as `{text}` ({decimals} decimals)"
    );

    // District time: a known instant, and the header's clock against this machine's clock.
    let known = s
        .page
        .eval("fmtTime(Date.UTC(2026, 11, 7, 6, 27, 5), true) + ' ' + tzLabel()")
        .await;
    assert_eq!(known, "2026-12-07 14:27:05 UTC+08:00");
    let clock = s
        .page
        .eval("document.getElementById('clock').textContent + ' ' + document.getElementById('tz').textContent")
        .await;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let shown = clock.as_str().unwrap();
    let (hms, tz) = shown.split_once(' ').unwrap();
    assert_eq!(tz, "UTC+08:00");
    let parts: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    let shown_s = parts[0] * 3600 + parts[1] * 60 + parts[2];
    let district_s = (now_s + 8 * 3600).rem_euclid(86_400);
    let diff = (shown_s - district_s).rem_euclid(86_400);
    assert!(
        diff <= 3 || diff >= 86_400 - 3,
        "the clock shows {shown}, district time is {district_s} s after midnight"
    );

    // The live indicator counts real messages over its window, not a constant.
    let rate = s
        .page
        .wait_for(
            "a live message rate",
            "Number(document.getElementById('rate').textContent)",
            deadline,
            |v| v.as_f64().is_some_and(|r| r > 0.0),
        )
        .await;
    eprintln!("live rate {rate} msg/s");
    s.demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_places_every_device_at_its_coordinates_over_the_district() {
    let mut s = setup(1600, 1000, |o| o).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let base = format!("http://{}", s.demo.http_addr());

    // The page and its files come from the hub, under a strict CSP, revalidated by ETag.
    let page = reqwest::get(format!("{base}/")).await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self';") && !csp.contains("http"),
        "{csp}"
    );
    let lib = reqwest::get(format!("{base}/dashboard/vendor/leaflet.js"))
        .await
        .unwrap();
    assert_eq!(
        lib.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let etag = lib.headers()["etag"].clone();
    let again = s
        .client
        .get(format!("{base}/dashboard/vendor/leaflet.js"))
        .header("If-None-Match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let geojson: Value = serde_json::from_slice(
        &reqwest::get(format!("{base}/dashboard/district.geojson"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let features = geojson["features"].as_array().unwrap().len();
    for kind in ["outline", "river", "street", "station"] {
        assert!(
            geojson["features"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["properties"]["kind"] == kind),
            "no {kind} in the district's GeoJSON"
        );
    }

    s.ready(deadline).await;
    let catalog = s.get("/api/v1/devices").await;
    let catalog = catalog.as_array().unwrap();
    let placed = s
        .page
        .wait_for(
            "a marker for every device",
            "(() => { const size = dash.map.getSize(); return [...dash.markers].map(([id, m]) => { const ll = m.getLatLng(), p = dash.map.latLngToContainerPoint(ll); return {id, lat: ll.lat, lon: ll.lng, inView: dash.map.getBounds().contains(ll) && p.x >= 0 && p.y >= 0 && p.x <= size.x && p.y <= size.y}; }); })()",
            deadline,
            |v| v.as_array().is_some_and(|a| a.len() == catalog.len()),
        )
        .await;
    for d in catalog {
        let id = d["id"].as_str().unwrap();
        let m = placed
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no marker for {id}"));
        assert_eq!(m["lat"].as_f64(), d["lat"].as_f64(), "{id}: {m}");
        assert_eq!(m["lon"].as_f64(), d["lon"].as_f64(), "{id}: {m}");
        assert_eq!(m["inView"], true, "{id} is off the map: {m}");
    }
    // The base map is drawn: one path per GeoJSON feature besides the markers.
    let paths = s
        .page
        .eval("document.querySelectorAll('.leaflet-overlay-pane path').length")
        .await;
    assert!(
        paths.as_u64().unwrap() as usize >= features + catalog.len(),
        "{paths} paths for {features} features and {} devices",
        catalog.len()
    );

    // A camera opens its latest snapshot: the first one that has a snapshot in the API.
    let cams: Vec<String> = s
        .demo
        .layout()
        .cameras
        .iter()
        .map(|c| c.id.clone())
        .collect();
    let cam = loop {
        let mut found = None;
        for c in &cams {
            let r = s
                .client
                .get(format!("{base}/api/v1/cameras/{c}/snapshot"))
                .header("Authorization", &s.auth)
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                found = Some(c.clone());
                break;
            }
        }
        if let Some(c) = found {
            break c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no camera has a snapshot"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    s.page
        .wait_for(
            "a snapshot of the camera",
            &format!(
                "(() => {{ if (!document.querySelector('.leaflet-popup')) dash.markers.get({cam:?}).fire('click'); const i = document.querySelector('.leaflet-popup-content img'); return !!i && i.naturalWidth > 0; }})()"
            ),
            deadline,
            |v| v == true,
        )
        .await;
    s.demo.shutdown().await;
}

/// The lamp's Modbus address, from the agent configuration the demo wrote.
fn lamp_transport(dir: &Path, agent: &str, lamp: &str) -> String {
    let text = std::fs::read_to_string(dir.join("agents").join(format!("{agent}.toml"))).unwrap();
    let cfg: toml::Value = toml::from_str(&text).unwrap();
    cfg["modbus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["device"].as_str() == Some(lamp))
        .and_then(|m| m["transport"].as_str())
        .unwrap_or_else(|| panic!("{lamp} is not in {agent}.toml"))
        .to_string()
}

async fn holding_register(transport: &str, address: u16) -> u16 {
    use tokio_modbus::prelude::*;
    let addr = transport.trim_start_matches("tcp://").parse().unwrap();
    let mut ctx = tcp::connect_slave(addr, Slave(1)).await.unwrap();
    let regs = ctx
        .read_holding_registers(address, 1)
        .await
        .unwrap()
        .unwrap();
    regs[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drawer_dims_a_lamp_through_modbus_and_acks_an_alert() {
    // 01:00: the lighting schedule's next step (05:00) is four real minutes away at speed 60.
    let mut s = setup(1600, 1000, |o| DemoOptions {
        start: Some("01:00".parse().unwrap()),
        ..o
    })
    .await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    s.ready(deadline).await;
    let street = &s.demo.layout().streets[0];
    let (lamp, agent) = (street.lamps[0].clone(), street.agent.clone());

    // Let the lighting control set its level and the lamp follow first: from then on, another
    // desired level is an operator's override it leaves alone.
    let before = loop {
        let d = s.get(&format!("/api/v1/devices/{lamp}")).await;
        let t = &d["twin"];
        if let Some(v) = t["reported"]["dimming_level"]["value"].as_f64()
            && t["desired"]["dimming_level"].as_f64() == Some(v)
            && t["delta"].as_object().is_none_or(|o| o.is_empty())
        {
            break v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{lamp} never reported a settled dimming level: {t}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let want: u16 = if before == 37.0 { 63 } else { 37 };

    s.page
        .eval(&format!(
            "document.querySelector('#devices tr[data-device=\"{lamp}\"]').click()"
        ))
        .await;
    let ctl = s
        .page
        .wait_for(
            "the dimming slider",
            "(() => { const r = document.querySelector('#d-controls [data-control=\"dimming_level\"] input[type=range]'); return r && {min: r.min, max: r.max}; })()",
            deadline,
            |v| !v.is_null(),
        )
        .await;
    assert_eq!(ctl["min"], "0", "the profile's range: {ctl}");
    assert_eq!(ctl["max"], "100", "the profile's range: {ctl}");
    // Move the slider as a user would (an input event), then press set.
    s.page
        .eval(&format!(
            "(() => {{ const row = document.querySelector('#d-controls [data-control=\"dimming_level\"]'); const r = row.querySelector('input[type=range]'); r.value = '{want}'; r.dispatchEvent(new Event('input', {{bubbles: true}})); row.querySelector('button[data-set]').click(); return true; }})()"
        ))
        .await;

    // The hub's twin reports it, and the lamp's holding register 16 holds it.
    loop {
        let d = s.get(&format!("/api/v1/devices/{lamp}")).await;
        if d["twin"]["reported"]["dimming_level"]["value"].as_f64() == Some(f64::from(want)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{lamp} never reported {want} %: {}",
            d["twin"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let transport = lamp_transport(s.demo.dir(), &agent, &lamp);
    assert_eq!(holding_register(&transport, 16).await, want);
    // The page shows the report: the command's progress and the twin's row.
    let shown = s
        .page
        .wait_for(
            "the page shows the lamp's report",
            "(() => { const p = document.getElementById('progress-dimming_level'); return p && {cls: p.className, text: p.textContent, row: document.querySelector('#d-twin tr[data-q=\"dimming_level\"] td:nth-child(2)').textContent}; })()",
            deadline,
            |v| v["cls"] == "progress done",
        )
        .await;
    assert!(
        shown["text"]
            .as_str()
            .unwrap()
            .starts_with(&format!("reported {want} %")),
        "{shown}"
    );
    assert_eq!(shown["row"], format!("{want} %"), "{shown}");

    // An alert acked from the page is acknowledged in the API.
    let id = s
        .page
        .wait_for(
            "an active alert with an ack button",
            "(() => { const b = document.querySelector('#alerts button[data-ack]'); return b && b.dataset.ack; })()",
            deadline,
            |v| v.is_string(),
        )
        .await;
    let id = id.as_str().unwrap().to_string();
    s.page
        .eval(&format!(
            "document.querySelector('#alerts button[data-ack=\"{id}\"]').click()"
        ))
        .await;
    loop {
        let a = s.get(&format!("/api/v1/alerts/{id}")).await;
        if a["state"] == "acknowledged" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} was never acknowledged: {a}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.page
        .wait_for(
            "the page shows the alert acknowledged",
            &format!(
                "document.querySelector('#alerts tr[data-alert=\"{id}\"] td.state').textContent"
            ),
            deadline,
            |v| v == "acknowledged",
        )
        .await;
    s.demo.shutdown().await;
}

/// Where the screenshots go: `DASHBOARD_SCREENSHOTS` or the repository's docs/.
fn screenshot_dir() -> PathBuf {
    std::env::var_os("DASHBOARD_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/dashboard.png and docs/dashboard-drawer.png from a storm (minutes)"]
async fn screenshots() {
    let mut s = setup(1600, 1000, |o| DemoOptions {
        start: Some("17:30".parse().unwrap()),
        incidents: true,
        ..o
    })
    .await;
    // The storm makes the river rise fast within a few demo hours (real minutes).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    s.ready(deadline).await;
    let gauge = s
        .page
        .wait_for(
            "a river gauge alerting",
            "(() => { const a = [...dash.alerts.values()].find(a => a.kind === 'water_level' && a.state !== 'cleared'); return a ? a.device : null; })()",
            deadline,
            |v| v.is_string(),
        )
        .await;
    // Reload so the river panel's hour is drawn from the API at once, not only from the stream.
    s.page.eval("location.reload()").await;
    s.page
        .call("Runtime.evaluate", serde_json::json!({"expression": "1"}))
        .await;
    s.ready(deadline).await;
    s.page
        .wait_for(
            "the river panel, camera snapshots and the live rate",
            "(() => { const c = dash.charts.get('river'); if (document.getElementById('live').className !== 'on') return false; return !!c && c.plot.data[0].length > 10 && [...document.querySelectorAll('#cams img')].filter(i => i.naturalWidth > 0).length >= 3; })()",
            deadline,
            |v| v == true,
        )
        .await;
    let dir = screenshot_dir();
    s.page.screenshot(&dir.join("dashboard.png")).await;
    let gauge = gauge.as_str().unwrap().to_string();
    s.page.eval(&format!("openDrawer({gauge:?})")).await;
    s.page
        .wait_for(
            "the drawer's charts",
            "(() => { const c = dash.charts.get('drawer:water_level'); return !!c && c.plot.data[0].length > 0; })()",
            deadline,
            |v| v == true,
        )
        .await;
    s.page.screenshot(&dir.join("dashboard-drawer.png")).await;
    eprintln!("screenshots in {}", dir.display());
    s.demo.shutdown().await;
}
