//! The HTTP API with a real HTTP client against the router bound on 127.0.0.1:0.

mod support;

use std::time::Duration;

use mqtt_broker::ingress::Disposition;
use protocols::batch::{AgentBatch, DeviceReadings, Reading, Sample, encode};
use protocols::messages::{ApiError, Command, Twin};
use protocols::{Quality, Quantity, Value};
use reqwest::{Client, Method, StatusCode};
use serde_json::Value as Json;
use support::*;

const CC: &str = "Bearer command-center:cc-secret-123";
const WATER: &str = "Bearer water-dept:water-secret-1";

struct Api {
    client: Client,
    base: String,
}

impl Api {
    fn new(h: &TestHub<series_store::TsStore>) -> Api {
        Api {
            client: Client::builder().timeout(DEADLINE).build().unwrap(),
            base: h.base_url(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Json) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
        (status, json)
    }

    async fn get(&self, path: &str, auth: Option<&str>) -> (StatusCode, Json) {
        self.call(Method::GET, path, auth, None).await
    }

    /// Asserts an error answer with the contract's body.
    async fn error(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<&str>,
        status: StatusCode,
        error: &str,
    ) -> ApiError {
        let (s, json) = self.call(method, path, auth, body).await;
        assert_eq!(s, status, "{path}: {json}");
        let e: ApiError = serde_json::from_value(json).unwrap();
        assert_eq!(e.error, error, "{path}");
        assert!(!e.detail.is_empty());
        e
    }
}

fn ids(list: &Json) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect()
}

async fn hub() -> (tempfile::TempDir, TestHub<series_store::TsStore>) {
    let dir = tempfile::tempdir().unwrap();
    let h = TestHub::start_in(dir.path(), &ts_stores()).await;
    (dir, h)
}

#[tokio::test]
async fn authentication_and_error_bodies() {
    let (_dir, h) = hub().await;
    let api = Api::new(&h);
    let (s, j) = api.get("/healthz", None).await;
    assert_eq!((s, j["status"].as_str()), (StatusCode::OK, Some("ok")));

    let e = api
        .error(
            Method::GET,
            "/api/v1/devices",
            None,
            None,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    assert!(e.detail.contains("Bearer"), "{}", e.detail);
    for bad in [
        "Bearer command-center:wrong",
        "Bearer nobody:cc-secret-123",
        "Basic abc",
        "Bearer nocolon",
    ] {
        api.error(
            Method::GET,
            "/api/v1/devices",
            Some(bad),
            None,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    // Devices and agents are not API clients.
    api.error(
        Method::GET,
        "/api/v1/devices",
        Some("Bearer AG-0001:ag-secret-0001"),
        None,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    api.error(
        Method::GET,
        "/api/v1/nothing",
        Some(CC),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    api.error(
        Method::DELETE,
        "/api/v1/devices",
        Some(CC),
        None,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    api.error(
        Method::GET,
        "/api/v1/devices?colour=red",
        Some(CC),
        None,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;

    let resp = reqwest::get(format!("{}/metrics", api.base)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = resp.text().await.unwrap();
    assert!(text.contains("# TYPE hub_store_append_seconds histogram"));
    assert!(text.contains("hub_queue_depth{stage=\"decode\"}"));
    h.shutdown().await;
}

#[tokio::test]
async fn grants_filter_devices() {
    let (_dir, h) = hub().await;
    let api = Api::new(&h);
    let (s, all) = api.get("/api/v1/devices", Some(CC)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ids(&all), ["WL-0001", "SL-0001", "SL-0002", "MH-0001"]);
    let (_, lights) = api.get("/api/v1/devices?kind=streetlight", Some(CC)).await;
    assert_eq!(ids(&lights), ["SL-0001", "SL-0002"]);
    let (_, water) = api.get("/api/v1/devices?dept=water", Some(CC)).await;
    assert_eq!(ids(&water), ["WL-0001"]);
    assert_eq!(water[0]["lat"], 30.4212);
    assert_eq!(water[0]["online"], false);
    let (_, mine) = api.get("/api/v1/devices", Some(WATER)).await;
    assert_eq!(ids(&mine), ["WL-0001"]);
    let (_, none) = api
        .get("/api/v1/devices?kind=streetlight", Some(WATER))
        .await;
    assert_eq!(ids(&none), Vec::<String>::new());

    let (s, one) = api.get("/api/v1/devices/WL-0001", Some(WATER)).await;
    assert_eq!(s, StatusCode::OK);
    let twin: Twin = serde_json::from_value(one["twin"].clone()).unwrap();
    assert_eq!(
        (twin.device.as_str(), twin.kind.as_str()),
        ("WL-0001", "water_level")
    );
    api.error(
        Method::GET,
        "/api/v1/devices/SL-0001",
        Some(WATER),
        None,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    api.error(
        Method::GET,
        "/api/v1/devices/NOPE-1",
        Some(WATER),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    h.shutdown().await;
}

const T0: i64 = 1_795_334_400_000;

async fn store_series(h: &TestHub<series_store::TsStore>) {
    // A streetlight first (outside the water department's grants), then the water level.
    let b = AgentBatch {
        agent: "AG-0001".into(),
        stream: 1,
        seq: 1,
        devices: vec![DeviceReadings {
            device: "SL-0001".into(),
            samples: vec![Sample {
                ts_ms: T0,
                readings: vec![Reading {
                    quantity: Quantity::LampPower.code(),
                    value: Value::Number(60.0),
                    quality: Quality::Good,
                }],
            }],
        }],
    };
    let rx = h
        .send_at(agent("AG-0001"), "v1/agents/AG-0001/batch", encode(&b), T0)
        .await;
    assert_eq!(disposition(rx).await, Disposition::Accepted);
    // 10 minutes of water level, one point a minute: 1.0, 1.1, ... 1.9
    let samples: Vec<String> = (0..10)
        .map(|i| {
            format!(
                r#"{{"ts":{},"values":{{"water_level":{}}}}}"#,
                T0 + i * 60_000,
                1.0 + i as f64 / 10.0
            )
        })
        .collect();
    let rx = h
        .send_at(
            device("WL-0001"),
            "v1/devices/WL-0001/telemetry",
            format!("[{}]", samples.join(",")),
            T0 + 3_600_000,
        )
        .await;
    assert_eq!(disposition(rx).await, Disposition::Accepted);
}

#[tokio::test]
async fn series_raw_aggregated_and_refused() {
    let (_dir, h) = hub().await;
    let api = Api::new(&h);
    store_series(&h).await;
    let to = T0 + 600_000;
    let (s, raw) = api
        .get(
            &format!("/api/v1/series?device=WL-0001&quantity=water_level&from={T0}&to={to}"),
            Some(WATER),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{raw}");
    assert_eq!(raw["device"], "WL-0001");
    assert_eq!(raw["quantity"], "water_level");
    assert_eq!(raw["unit"], "m");
    let pts = raw["points"].as_array().unwrap();
    assert_eq!(pts.len(), 10);
    assert_eq!(pts[0], serde_json::json!([T0, 1.0]));

    // RFC 3339 bounds, 5-minute buckets.
    let (s, agg) = api
        .get(
            "/api/v1/series?device=WL-0001&quantity=water_level&from=2026-11-22T08:00:00Z&to=2026-11-22T08:10:00.000Z&step=5m&agg=max",
            Some(WATER),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{agg}");
    assert_eq!(
        agg["points"],
        serde_json::json!([[T0, 1.4], [T0 + 300_000, 1.9]])
    );
    let (_, count) = api
        .get(&format!("/api/v1/series?device=WL-0001&quantity=water_level&from={T0}&to={to}&step=10m&agg=count"), Some(WATER))
        .await;
    assert_eq!(count["points"], serde_json::json!([[T0, 10.0]]));

    let base = format!("/api/v1/series?device=WL-0001&quantity=water_level&from={T0}&to={to}");
    for (q, why) in [
        (format!("{base}&agg=median"), "agg"),
        (format!("{base}&step=soon"), "step"),
        (format!("{base}&step=1ms"), "step"),
        (
            "/api/v1/series?device=WL-0001&quantity=water_level&from=yesterday".to_string(),
            "from",
        ),
        (
            format!("/api/v1/series?device=WL-0001&quantity=water_level&from={to}&to={T0}"),
            "from",
        ),
        ("/api/v1/series?quantity=water_level".to_string(), "device"),
        ("/api/v1/series?device=WL-0001".to_string(), "quantity"),
        (
            "/api/v1/series?device=WL-0001&quantity=flux".to_string(),
            "quantity",
        ),
    ] {
        let e = api
            .error(
                Method::GET,
                &q,
                Some(WATER),
                None,
                StatusCode::BAD_REQUEST,
                "bad_request",
            )
            .await;
        assert!(e.detail.contains(why), "{q}: {}", e.detail);
    }
    // Outside the grants, and unknown.
    api.error(
        Method::GET,
        &format!("/api/v1/series?device=SL-0001&quantity=lamp_power&from={T0}&to={to}"),
        Some(WATER),
        None,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    api.error(
        Method::GET,
        "/api/v1/series?device=NOPE&quantity=lamp_power",
        Some(WATER),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    let (s, lamp) = api
        .get(
            &format!("/api/v1/series?device=SL-0001&quantity=lamp_power&from={T0}&to={to}"),
            Some(CC),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(lamp["points"], serde_json::json!([[T0, 60.0]]));
    h.shutdown().await;
}

#[tokio::test]
async fn patch_desired_with_optimistic_locking() {
    let (_dir, h) = hub().await;
    let api = Api::new(&h);
    let (_, dev) = api.get("/api/v1/devices/SL-0001", Some(CC)).await;
    let v0 = dev["twin"]["version"].as_u64().unwrap();
    let body = format!(r#"{{"dimming_level": 40, "version": {v0}}}"#);
    let (s, twin) = api
        .call(
            Method::PATCH,
            "/api/v1/devices/SL-0001/desired",
            Some(CC),
            Some(&body),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{twin}");
    let twin: Twin = serde_json::from_value(twin).unwrap();
    assert!(twin.version > v0);
    assert_eq!(
        twin.desired["dimming_level"],
        protocols::messages::Scalar::Number(40.0)
    );
    assert_eq!(
        twin.delta["dimming_level"],
        protocols::messages::Scalar::Number(40.0)
    );
    let cmd = h.published.wait_count("v1/agents/AG-0001/cmd", 1).await;
    let cmd: Command = serde_json::from_slice(&cmd[0].payload).unwrap();
    assert_eq!(
        (cmd.name.as_str(), cmd.device.as_deref()),
        ("set", Some("SL-0001"))
    );

    // The same stale version again: someone else's write came in between.
    let e = api
        .error(
            Method::PATCH,
            "/api/v1/devices/SL-0001/desired",
            Some(CC),
            Some(&body),
            StatusCode::CONFLICT,
            "conflict",
        )
        .await;
    assert!(e.detail.contains("stale"), "{}", e.detail);
    // The current version works; no version at all works.
    let body = format!(r#"{{"dimming_level": 30, "version": {}}}"#, twin.version);
    let (s, _) = api
        .call(
            Method::PATCH,
            "/api/v1/devices/SL-0001/desired",
            Some(CC),
            Some(&body),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = api
        .call(
            Method::PATCH,
            "/api/v1/devices/SL-0001/desired",
            Some(CC),
            Some(r#"{"dimming_level": 20}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK);

    api.error(
        Method::PATCH,
        "/api/v1/devices/SL-0001/desired",
        Some(WATER),
        Some(r#"{"dimming_level": 1}"#),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    api.error(
        Method::PATCH,
        "/api/v1/devices/NOPE/desired",
        Some(CC),
        Some(r#"{"dimming_level": 1}"#),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    api.error(
        Method::PATCH,
        "/api/v1/devices/SL-0001/desired",
        Some(CC),
        Some("{oops"),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    let e = api
        .error(
            Method::PATCH,
            "/api/v1/devices/SL-0001/desired",
            Some(CC),
            Some(r#"{"lamp_power": 1}"#),
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    assert!(e.detail.contains("not controllable"), "{}", e.detail);
    api.error(
        Method::PATCH,
        "/api/v1/devices/SL-0001/desired",
        Some(CC),
        Some(r#"{"dimming_level": 101}"#),
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    api.error(
        Method::PATCH,
        "/api/v1/devices/SL-0001/desired",
        None,
        Some(r#"{"dimming_level": 1}"#),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let (_, dev) = api.get("/api/v1/devices/SL-0001", Some(CC)).await;
    assert_eq!(dev["twin"]["desired"]["dimming_level"], 20.0);
    h.shutdown().await;
}

/// Reads server-sent events until `want` events named `name` arrived.
async fn read_events(resp: &mut reqwest::Response, name: &str, want: usize) -> Vec<Json> {
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while out.len() < want {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("event in time")
            .unwrap()
            .expect("stream open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut event = "message";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = if e == name { name } else { "other" };
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if event == name {
                out.push(serde_json::from_str(&data).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn stream_sends_feeds_inside_grants() {
    let (_dir, h) = hub().await;
    let client = Client::new();
    let mut resp = client
        .get(format!("{}/api/v1/stream", h.base_url()))
        .header("authorization", WATER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let unauth = client
        .get(format!("{}/api/v1/stream", h.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), StatusCode::UNAUTHORIZED);

    store_series(&h).await;
    let feeds = read_events(&mut resp, "feed", 1).await;
    assert_eq!(feeds[0]["device"], "WL-0001", "{feeds:?}");
    assert_eq!(feeds[0]["values"]["water_level"]["unit"], "m");
    // The twin of WL-0001 is granted too.
    let twins = read_events(&mut resp, "twin", 1).await;
    assert_eq!(twins[0]["device"], "WL-0001");
    // Open streams end when the hub stops.
    tokio::time::timeout(Duration::from_secs(10), h.shutdown())
        .await
        .unwrap();
}

#[tokio::test]
async fn stream_over_websocket() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let (_dir, h) = hub().await;
    let url = format!("ws://{}/api/v1/stream", h.hub.as_ref().unwrap().http_addr());
    // Without credentials the upgrade is refused with 401.
    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401)
        }
        other => panic!("expected 401, got {other:?}"),
    }
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", WATER.parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    store_series(&h).await;
    let frame = loop {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("frame in time")
            .expect("socket open")
            .unwrap();
        if let Message::Text(t) = msg {
            let v: Json = serde_json::from_str(t.as_str()).unwrap();
            if v["event"] == "feed" {
                break v;
            }
        }
    };
    assert_eq!(frame["data"]["device"], "WL-0001", "{frame}");
    // The hub stopping closes the socket.
    let stop = tokio::spawn(async move { h.shutdown().await });
    loop {
        match tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("close in time")
        {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => {}
        }
    }
    stop.await.unwrap();
}

#[tokio::test]
async fn quantities_table_for_clients() {
    let (_dir, h) = hub().await;
    let api = Api::new(&h);
    let (s, body) = api.get("/api/v1/quantities", Some(WATER)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let all = body.as_array().unwrap();
    assert_eq!(all.len(), protocols::quantity::Quantity::ALL.len());
    let level = all.iter().find(|q| q["name"] == "water_level").unwrap();
    assert_eq!(level["unit"], "m");
    assert_eq!(level["kind"], "number");
    assert_eq!(level["decimals"], 3);
    assert_eq!(level["unit_code"], "MTR");
    let status = all.iter().find(|q| q["name"] == "lamp_status").unwrap();
    assert_eq!(status["kind"], "enum");
    assert_eq!(status["states"][1], "lamp_failure");
    let (s, _) = api.get("/api/v1/quantities", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}
