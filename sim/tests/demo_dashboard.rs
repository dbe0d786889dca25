//! The dashboard in a real browser: headless Chromium (Debian `chromium`, installed by
//! `scripts/setup-peers.sh`) loads `GET /` of the running demo with the command center's
//! credentials in the URL fragment, and the test reads the page through the Chrome DevTools
//! Protocol (Runtime.evaluate over the page's WebSocket) until it lists every device, its
//! live-update counter keeps climbing from the server-sent event stream, and its camera panel
//! shows every camera with a snapshot and the latest camera events.

mod browser;

use std::time::Duration;

use browser::{DEADLINE, Page};
use serde_json::Value;
use sim::district::demo::{Demo, DemoOptions};

/// What the page shows, read by a script inside it.
const PROBE: &str = r#"({
  login: getComputedStyle(document.getElementById('login')).display,
  err: document.getElementById('err').textContent,
  devices: Number(document.getElementById('n-dev').textContent),
  rows: document.querySelectorAll('#devices tr').length,
  online: Number(document.getElementById('n-on').textContent),
  live: document.getElementById('live').classList.contains('on'),
  updates: Number(document.body.dataset.updates || 0),
  gauge: ((document.querySelector('#devices tr[data-device="WL-0001"]') || {cells: []}).cells[4] || {}).textContent || '',
  dots: window.dash ? window.dash.markers.size : 0,
  cams: document.querySelectorAll('#cams .cam').length,
  snapshots: [...document.querySelectorAll('#cams img')].filter(i => i.src.startsWith('blob:') && i.naturalWidth > 0).length,
  camEvents: document.querySelectorAll('#cam-events tr').length,
  fragment: location.hash
})"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_lists_the_district_and_updates_live() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Demo::start(DemoOptions {
        speed: 60.0,
        incidents: false,
        ..DemoOptions::local(&dir.path().join("demo"))
    })
    .await
    .unwrap();
    let http_addr = demo.http_addr().to_string();
    let n = demo.layout().device_ids().count() as u64;

    // The page itself is served at `/`.
    let page = reqwest::get(format!("http://{http_addr}/")).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );

    let mut page = Page::open(
        &dir.path().join("chromium"),
        &http_addr,
        &demo.dashboard_url(),
        1280,
        900,
    )
    .await;
    let mut probe = async || -> Value { page.eval(PROBE).await };

    let deadline = tokio::time::Instant::now() + DEADLINE;
    let first = loop {
        let s = probe().await;
        if s["login"] == "none"
            && s["devices"] == n
            && s["rows"] == n
            && s["live"] == true
            && s["online"].as_u64().is_some_and(|o| o > 0)
            // The gauge's latest reading, with its unit, in the "latest" column.
            && s["gauge"].as_str().is_some_and(|g| g.contains("water_level") && g.contains(" m"))
        {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dashboard never showed the district: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("dashboard: {first}");
    // The credentials left the address bar once used.
    assert_eq!(first["fragment"], "", "{first}");
    assert!(
        first["dots"].as_u64().unwrap() >= n,
        "every device on the map: {first}"
    );

    // Live: the update counter keeps growing from the stream.
    let seen = first["updates"].as_u64().unwrap();
    loop {
        let s = probe().await;
        if s["updates"].as_u64().unwrap() > seen + 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no live updates after {seen}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The camera panel: every camera, a snapshot decoded by the browser, the latest events.
    let cams = demo.layout().cameras.len() as u64;
    loop {
        let s = probe().await;
        if s["cams"] == cams
            && s["snapshots"].as_u64().is_some_and(|n| n > 0)
            && s["camEvents"].as_u64().is_some_and(|n| n > 0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the camera panel never showed {cams} cameras, a snapshot and events: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(page);
    demo.shutdown().await;
}
