//! The dashboard in a real browser: headless Chromium (Debian `chromium`, installed by
//! `scripts/setup-peers.sh`) loads `GET /` of the running demo with the command center's
//! credentials in the URL fragment, and the test reads the page through the Chrome DevTools
//! Protocol (Runtime.evaluate over the page's WebSocket) until it lists every device, its
//! live-update counter keeps climbing from the server-sent event stream, and its camera panel
//! shows every camera with a snapshot and the latest camera events.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sim::district::demo::{Demo, DemoOptions};
use tokio_tungstenite::tungstenite::Message;

const DEADLINE: Duration = Duration::from_secs(60);

/// Chromium in its own process group, stopped on drop (also when the test fails): SIGTERM
/// to the group so the browser reaps its helpers, then SIGKILL for whatever is left.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args([sig, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        signal("-KILL");
        let _ = self.0.wait();
    }
}

fn chromium() -> &'static str {
    for c in ["chromium", "chromium-browser"] {
        if Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return c;
        }
    }
    panic!("chromium is not installed: run scripts/setup-peers.sh");
}

fn launch(profile: &Path, url: &str) -> Browser {
    use std::os::unix::process::CommandExt;
    let child = Command::new(chromium())
        .process_group(0)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    Browser(child)
}

/// The DevTools port Chromium picked (it writes it into the profile directory).
async fn devtools_port(profile: &Path) -> u16 {
    let file = profile.join("DevToolsActivePort");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok())
        {
            return port;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromium wrote no DevToolsActivePort"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The WebSocket URL of the page showing `http_addr`.
async fn page_socket(port: u16, http_addr: &str) -> String {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await
            && let Ok(bytes) = resp.bytes().await
            && let Ok(targets) = serde_json::from_slice::<Vec<Value>>(&bytes)
            && let Some(t) = targets.iter().find(|t| {
                t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.contains(http_addr))
            })
            && let Some(ws) = t["webSocketDebuggerUrl"].as_str()
        {
            return ws.to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "no page target");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the page shows, read by a script inside it.
const PROBE: &str = r#"JSON.stringify({
  login: getComputedStyle(document.getElementById('login')).display,
  err: document.getElementById('err').textContent,
  devices: Number(document.getElementById('n-dev').textContent),
  rows: document.querySelectorAll('#devices tr').length,
  online: Number(document.getElementById('n-on').textContent),
  live: document.getElementById('live').classList.contains('on'),
  updates: Number(document.body.dataset.updates || 0),
  gauge: ((document.querySelector('#devices tr[data-device="WL-0001"]') || {cells: []}).cells[4] || {}).textContent || '',
  dots: document.querySelectorAll('#svg circle').length,
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

    let profile = dir.path().join("chromium");
    std::fs::create_dir_all(&profile).unwrap();
    let _browser = launch(&profile, &demo.dashboard_url());
    let port = devtools_port(&profile).await;
    let ws_url = page_socket(port, &http_addr).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .expect("DevTools WebSocket");

    let mut id = 0u64;
    let mut probe = async || -> Value {
        id += 1;
        let call = json!({"id": id, "method": "Runtime.evaluate",
                          "params": {"expression": PROBE, "returnByValue": true}});
        ws.send(Message::Text(call.to_string().into()))
            .await
            .unwrap();
        loop {
            let msg = ws.next().await.expect("DevTools closed").unwrap();
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                let s = v["result"]["result"]["value"].as_str().unwrap_or("{}");
                return serde_json::from_str(s).unwrap();
            }
        }
    };

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
    drop(ws);
    demo.shutdown().await;
}
