//! Headless Chromium (Debian `chromium`, installed by `scripts/setup-peers.sh`) driven through
//! the Chrome DevTools Protocol: start it on a page, evaluate scripts inside the page, take
//! screenshots. Shared by the dashboard's browser tests.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long the browser may take to start and show a page.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Chromium in its own process group, stopped on drop (also when the test fails): SIGTERM
/// to the group so the browser reaps its helpers, then SIGKILL for whatever is left.
pub struct Browser(Child);

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

/// Starts headless Chromium on `url` with a window `width`×`height`.
pub fn launch(profile: &Path, url: &str, width: u32, height: u32) -> Browser {
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
            "--hide-scrollbars",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--window-size={width},{height}"))
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
pub async fn devtools_port(profile: &Path) -> u16 {
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
pub async fn page_socket(port: u16, http_addr: &str) -> String {
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

/// One page under DevTools control.
pub struct Page {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    id: u64,
    _browser: Browser,
}

impl Page {
    /// Chromium showing `url` of the hub at `http_addr`, `width`×`height`.
    pub async fn open(profile: &Path, http_addr: &str, url: &str, width: u32, height: u32) -> Page {
        std::fs::create_dir_all(profile).unwrap();
        let browser = launch(profile, url, width, height);
        let port = devtools_port(profile).await;
        let ws_url = page_socket(port, http_addr).await;
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .expect("DevTools WebSocket");
        let mut page = Page {
            ws,
            id: 0,
            _browser: browser,
        };
        // The window size of headless Chromium is not the viewport everywhere: set it.
        page.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        page
    }

    /// A DevTools method's result.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.id += 1;
        let id = self.id;
        let call = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(Message::Text(call.to_string().into()))
            .await
            .unwrap();
        loop {
            let msg = self.ws.next().await.expect("DevTools closed").unwrap();
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The JSON value of a script expression inside the page (promises awaited); `null` when
    /// it throws (the page may not be ready yet).
    pub async fn eval(&mut self, expr: &str) -> Value {
        let wrapped = format!("(async () => JSON.stringify(await ({expr})))()");
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": wrapped, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if r.get("exceptionDetails").is_some() {
            return Value::Null;
        }
        r["result"]["value"]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null)
    }

    /// Evaluates `expr` until `done` accepts its value, failing with `what` at the deadline.
    pub async fn wait_for(
        &mut self,
        what: &str,
        expr: &str,
        deadline: tokio::time::Instant,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        loop {
            let v = self.eval(expr).await;
            if done(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: never happened, last seen {v}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&mut self, path: &Path) {
        use base64::Engine;
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}
