//! The NGSI-LD read API against a real hub: entities of Smart Data Models types with
//! `observedAt` and `unitCode`, filters, content negotiation, grants, ProblemDetails errors,
//! and the documents run through JSON-LD expansion by pyld (scripts/setup-peers.sh) with the
//! contexts served from local fixtures.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mqtt_broker::ingress::Disposition;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use support::*;

const CC: &str = "Bearer command-center:cc-secret-123";
const WATER: &str = "Bearer water-dept:water-secret-1";
const LIGHTS: &str = "Bearer lighting:lights-secret-1";
const LD: &str = "application/ld+json";
const CORE: &str = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld";

const HUB: &str = r#"
[[devices]]
id = "SL-0001"
kind = "streetlight"
secret = "sl-secret-0001"
name = "Riverside Rd lamp 1"
lat = 30.42
lon = 120.30

[[devices]]
id = "WQ-0001"
kind = "water_quality"
secret = "wq-secret-0001"
lat = 30.4215
lon = 120.3022

[[devices]]
id = "WS-0001"
kind = "weather"
secret = "ws-secret-0001"

[[devices]]
id = "WL-0001"
kind = "water_level"
secret = "wl-secret-0001"
lat = 30.4212
lon = 120.3010

[[apps]]
id = "command-center"
secret = "cc-secret-123"
grants = ["feeds/#", "twin/#"]

[[apps]]
id = "water-dept"
secret = "water-secret-1"
grants = ["feeds/water_level/#", "feeds/water_quality/#"]

[[apps]]
id = "lighting"
secret = "lights-secret-1"
grants = ["twin/SL-0001"]
"#;

/// 2026-11-22T08:00:00Z.
const T0: i64 = 1_795_334_400_000;

struct Api {
    client: Client,
    base: String,
}

impl Api {
    /// GET with a bearer token and an Accept header; status, headers and the JSON body.
    async fn get(
        &self,
        path: &str,
        auth: Option<&str>,
        accept: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"));
        (status, headers, json)
    }

    async fn ld(&self, path: &str, auth: &str) -> Value {
        let (s, h, body) = self.get(path, Some(auth), Some(LD)).await;
        assert_eq!(s, StatusCode::OK, "{path}: {body}");
        assert_eq!(h["content-type"], LD, "{path}");
        body
    }

    /// Asserts a ProblemDetails error that also reads as the contract's error body.
    async fn problem(
        &self,
        path: &str,
        auth: Option<&str>,
        status: StatusCode,
        error: &str,
    ) -> Value {
        let (s, _, body) = self.get(path, auth, Some(LD)).await;
        assert_eq!(s, status, "{path}: {body}");
        assert!(
            body["type"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        assert!(
            body["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        assert!(
            body["detail"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        assert_eq!(body["error"], error, "{path}: {body}");
        body
    }
}

async fn telemetry(h: &TestHub<series_store::TsStore>, id: &str, ts: i64, values: Value) {
    let body = json!({"ts": ts, "values": values}).to_string();
    let rx = h
        .send_at(device(id), &format!("v1/devices/{id}/telemetry"), body, ts)
        .await;
    assert_eq!(disposition(rx).await, Disposition::Accepted, "{id}");
}

/// Polls until every device's twin shows what was sent (twins update behind the disposition).
async fn wait_for_twins(api: &Api) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (_, _, all) = api.get("/api/v1/devices", Some(CC), None).await;
        let mut done = true;
        for id in ["SL-0001", "WQ-0001", "WS-0001", "WL-0001"] {
            let (_, _, d) = api
                .get(&format!("/api/v1/devices/{id}"), Some(CC), None)
                .await;
            done &= d["twin"]["reported"]
                .as_object()
                .is_some_and(|r| !r.is_empty());
        }
        if done && all.as_array().is_some_and(|a| a.len() == 4) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "twins never filled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn district() -> (tempfile::TempDir, TestHub<series_store::TsStore>, Api) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_of(HUB, dir.path());
    let store = ts_stores()(&dir.path().join("series"));
    let h = TestHub::start_with(cfg, store).await;
    let api = Api {
        client: Client::builder().timeout(DEADLINE).build().unwrap(),
        base: h.base_url(),
    };
    telemetry(
        &h,
        "SL-0001",
        T0,
        json!({"dimming_level": 40, "lamp_power": 61.5, "lamp_voltage": 229.8, "lamp_status": "lamp_failure"}),
    )
    .await;
    telemetry(
        &h,
        "WQ-0001",
        T0 + 1000,
        json!({"water_temperature": 18.4, "ph": 7.2, "turbidity": 265.8, "conductivity": 412, "dissolved_oxygen": 6.8}),
    )
    .await;
    telemetry(
        &h,
        "WS-0001",
        T0 + 2000,
        json!({"air_temperature": 21.5, "relative_humidity": 88, "rainfall": 12.5, "air_pressure": 1002.1}),
    )
    .await;
    telemetry(&h, "WL-0001", T0 + 3000, json!({"water_level": 2.31})).await;
    wait_for_twins(&api).await;
    (dir, h, api)
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn entities_types_filters_and_grants() {
    let (_dir, h, api) = district().await;

    let all = api.ld("/ngsi-ld/v1/entities", CC).await;
    assert_eq!(
        ids(&all),
        [
            "urn:ngsi-ld:Streetlight:SL-0001",
            "urn:ngsi-ld:WaterQualityObserved:WQ-0001",
            "urn:ngsi-ld:WeatherObserved:WS-0001",
            "urn:ngsi-ld:Device:WL-0001",
        ]
    );
    let lamp = &all[0];
    assert_eq!(lamp["type"], "Streetlight");
    assert_eq!(
        lamp["@context"],
        json!([
            "https://raw.githubusercontent.com/smart-data-models/dataModel.Streetlighting/master/context.jsonld",
            CORE
        ])
    );
    assert_eq!(lamp["illuminanceLevel"]["type"], "Property");
    assert_eq!(lamp["illuminanceLevel"]["value"], 0.4);
    assert_eq!(lamp["illuminanceLevel"]["unitCode"], "C62");
    assert_eq!(
        lamp["illuminanceLevel"]["observedAt"],
        "2026-11-22T08:00:00.000Z"
    );
    assert_eq!(lamp["powerState"]["value"], "on");
    assert_eq!(lamp["status"]["value"], "defectiveLamp");
    assert!(lamp["status"].get("unitCode").is_none(), "{lamp}");
    assert_eq!(lamp["powerConsumption"]["value"], 61.5);
    assert_eq!(lamp["powerConsumption"]["unitCode"], "WTT");
    assert_eq!(lamp["voltage"]["unitCode"], "VLT");
    assert_eq!(lamp["name"]["value"], "Riverside Rd lamp 1");
    assert_eq!(
        lamp["location"],
        json!({"type": "GeoProperty", "value": {"type": "Point", "coordinates": [120.30, 30.42]}})
    );

    let wq = &all[1];
    assert_eq!(wq["temperature"]["unitCode"], "CEL");
    assert_eq!(wq["pH"]["value"], 7.2);
    assert_eq!(wq["pH"]["unitCode"], "C62");
    assert_eq!(wq["turbidity"]["unitCode"], "NTU");
    assert_eq!(wq["conductivity"]["unitCode"], "G42");
    assert_eq!(wq["O2"]["unitCode"], "M1");
    assert_eq!(wq["O2"]["observedAt"], "2026-11-22T08:00:01.000Z");
    assert_eq!(
        wq["dateObserved"]["value"]["@value"],
        "2026-11-22T08:00:01.000Z"
    );

    let ws = &all[2];
    assert_eq!(ws["precipitation"]["unitCode"], "MMT");
    assert_eq!(ws["atmosphericPressure"]["unitCode"], "A97");
    assert_eq!(ws["relativeHumidity"]["value"], 0.88);
    assert!(
        ws.get("location").is_none(),
        "no coordinates in the catalog: {ws}"
    );

    let wl = &all[3];
    assert_eq!(wl["waterLevel"]["value"], 2.31);
    assert_eq!(wl["waterLevel"]["unitCode"], "MTR");
    // Online is the MQTT session's state; these readings came through the ingress seam alone.
    assert_eq!(wl["deviceState"]["value"], "offline");

    // Filters: type (short name or IRI, comma-separated), id list, q, paging, count.
    let t = api
        .ld("/ngsi-ld/v1/entities?type=WeatherObserved,Streetlight", CC)
        .await;
    assert_eq!(
        ids(&t),
        [
            "urn:ngsi-ld:Streetlight:SL-0001",
            "urn:ngsi-ld:WeatherObserved:WS-0001"
        ]
    );
    let t = api
        .ld(
            "/ngsi-ld/v1/entities?type=https%3A%2F%2Fsmartdatamodels.org%2FdataModel.Device%2FDevice",
            CC,
        )
        .await;
    assert_eq!(ids(&t), ["urn:ngsi-ld:Device:WL-0001"]);
    let t = api.ld("/ngsi-ld/v1/entities?type=Nothing", CC).await;
    assert_eq!(t, json!([]));
    let t = api
        .ld(
            "/ngsi-ld/v1/entities?id=urn:ngsi-ld:Device:WL-0001,urn:ngsi-ld:Streetlight:SL-0001",
            CC,
        )
        .await;
    assert_eq!(
        ids(&t),
        [
            "urn:ngsi-ld:Streetlight:SL-0001",
            "urn:ngsi-ld:Device:WL-0001"
        ]
    );
    let t = api.ld("/ngsi-ld/v1/entities?q=temperature%3E20", CC).await;
    assert_eq!(ids(&t), ["urn:ngsi-ld:WeatherObserved:WS-0001"]);
    let t = api
        .ld("/ngsi-ld/v1/entities?q=temperature%3C20;pH==7.2", CC)
        .await;
    assert_eq!(ids(&t), ["urn:ngsi-ld:WaterQualityObserved:WQ-0001"]);
    let t = api
        .ld("/ngsi-ld/v1/entities?q=status==%22defectiveLamp%22", CC)
        .await;
    assert_eq!(ids(&t), ["urn:ngsi-ld:Streetlight:SL-0001"]);
    let t = api.ld("/ngsi-ld/v1/entities?q=waterLevel%3E3", CC).await;
    assert_eq!(t, json!([]));
    let (s, headers, page) = api
        .get(
            "/ngsi-ld/v1/entities?limit=2&offset=1&count=true",
            Some(CC),
            Some(LD),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        ids(&page),
        [
            "urn:ngsi-ld:WaterQualityObserved:WQ-0001",
            "urn:ngsi-ld:WeatherObserved:WS-0001"
        ]
    );
    assert_eq!(headers["ngsi-ld-results-count"], "4");

    // One entity.
    let one = api
        .ld("/ngsi-ld/v1/entities/urn:ngsi-ld:Streetlight:SL-0001", CC)
        .await;
    assert_eq!(one, all[0]);

    // Plain JSON: no @context in the body, the context in a Link header.
    let (s, headers, plain) = api
        .get(
            "/ngsi-ld/v1/entities/urn:ngsi-ld:WaterQualityObserved:WQ-0001",
            Some(CC),
            Some("application/json"),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    assert!(plain.get("@context").is_none(), "{plain}");
    let link = headers["link"].to_str().unwrap();
    assert!(
        link.contains("<https://raw.githubusercontent.com/smart-data-models/dataModel.WaterQuality/master/context.jsonld>")
            && link.contains("rel=\"http://www.w3.org/ns/json-ld#context\""),
        "{link}"
    );
    // Grants: exactly what GET /api/v1/devices shows the app.
    for (auth, expect) in [
        (
            WATER,
            vec![
                "urn:ngsi-ld:WaterQualityObserved:WQ-0001",
                "urn:ngsi-ld:Device:WL-0001",
            ],
        ),
        (LIGHTS, vec!["urn:ngsi-ld:Streetlight:SL-0001"]),
    ] {
        let list = api.ld("/ngsi-ld/v1/entities?limit=1000", auth).await;
        assert_eq!(ids(&list), expect);
        let (_, _, devices) = api.get("/api/v1/devices", Some(auth), None).await;
        assert_eq!(devices.as_array().unwrap().len(), expect.len());
    }
    let none = api
        .ld(
            "/ngsi-ld/v1/entities?type=Streetlight&q=powerState==%22on%22",
            WATER,
        )
        .await;
    assert_eq!(
        none,
        json!([]),
        "no grant, no streetlight, whatever the filter"
    );
    api.problem(
        "/ngsi-ld/v1/entities/urn:ngsi-ld:Streetlight:SL-0001",
        Some(WATER),
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    // Errors are ProblemDetails.
    let e = api
        .problem(
            "/ngsi-ld/v1/entities",
            None,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    assert_eq!(e["type"], "about:blank");
    api.problem(
        "/ngsi-ld/v1/entities",
        Some("Bearer command-center:wrong"),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    for (path, status, error) in [
        (
            "/ngsi-ld/v1/entities/urn:ngsi-ld:Device:SL-0001",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/ngsi-ld/v1/entities/urn:ngsi-ld:Device:XX-9999",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/ngsi-ld/v1/entities/SL-0001",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/ngsi-ld/v1/entities?q=temperature",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/ngsi-ld/v1/entities?q=a|b",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/ngsi-ld/v1/entities?limit=-1",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/ngsi-ld/v1/entities?limit=100000",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/ngsi-ld/v1/entities?count=maybe",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/ngsi-ld/v1/entities?georel=near",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ] {
        let e = api.problem(path, Some(CC), status, error).await;
        assert!(
            e["type"]
                .as_str()
                .unwrap()
                .starts_with("https://uri.etsi.org/ngsi-ld/errors/"),
            "{path}: {e}"
        );
    }
    let (s, _, e) = api
        .get("/ngsi-ld/v1/entities", Some(CC), Some("text/html"))
        .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::NOT_ACCEPTABLE, Some("not_acceptable"))
    );
    h.shutdown().await;
}

#[tokio::test]
async fn documents_expand_with_a_json_ld_processor() {
    let (dir, h, api) = district().await;
    let all = api.ld("/ngsi-ld/v1/entities", CC).await;
    assert_eq!(all.as_array().unwrap().len(), 4);
    let file = dir.path().join("entities.jsonld");
    std::fs::write(&file, all.to_string()).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let out = Command::new("python3")
        .arg(root.join("peers/ngsi_ld_expand.py"))
        .arg(&file)
        .arg(root.join("fixtures/ngsi-ld"))
        .output()
        .expect("python3 runs (pyld from scripts/setup-peers.sh)");
    assert!(
        out.status.success(),
        "JSON-LD expansion failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let iris: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sdm = "https://smartdatamodels.org/";
    let default = "https://uri.etsi.org/ngsi-ld/default-context/";
    for (entity, attr, iri) in [
        (
            "urn:ngsi-ld:Streetlight:SL-0001",
            "illuminanceLevel",
            format!("{sdm}dataModel.Streetlighting/illuminanceLevel"),
        ),
        (
            "urn:ngsi-ld:Streetlight:SL-0001",
            "powerState",
            format!("{sdm}dataModel.Streetlighting/powerState"),
        ),
        (
            "urn:ngsi-ld:Streetlight:SL-0001",
            "status",
            "https://uri.etsi.org/ngsi-ld/status".to_string(),
        ),
        (
            "urn:ngsi-ld:Streetlight:SL-0001",
            "location",
            "https://uri.etsi.org/ngsi-ld/location".to_string(),
        ),
        (
            "urn:ngsi-ld:WaterQualityObserved:WQ-0001",
            "O2",
            format!("{sdm}dataModel.WaterQuality/O2"),
        ),
        (
            "urn:ngsi-ld:WaterQualityObserved:WQ-0001",
            "pH",
            format!("{sdm}dataModel.WaterQuality/pH"),
        ),
        (
            "urn:ngsi-ld:WeatherObserved:WS-0001",
            "temperature",
            format!("{sdm}dataModel.Weather/temperature"),
        ),
        (
            "urn:ngsi-ld:WeatherObserved:WS-0001",
            "precipitation",
            format!("{sdm}dataModel.Weather/precipitation"),
        ),
        (
            "urn:ngsi-ld:Device:WL-0001",
            "deviceState",
            format!("{sdm}dataModel.Device/deviceState"),
        ),
        // A quantity no model names: the hub's own term, in NGSI-LD's default context.
        (
            "urn:ngsi-ld:Device:WL-0001",
            "waterLevel",
            format!("{default}waterLevel"),
        ),
    ] {
        assert_eq!(iris[entity][attr], json!(iri), "{entity} {attr}: {iris}");
    }
    // Every attribute but the hub's own quantity terms is a model's or NGSI-LD's.
    for (entity, attrs) in iris.as_object().unwrap() {
        for (attr, iri) in attrs.as_object().unwrap() {
            let iri = iri.as_str().unwrap();
            assert!(
                !iri.starts_with(default) || attr == "waterLevel",
                "{entity}: `{attr}` fell into the default context ({iri})"
            );
        }
    }
    h.shutdown().await;
}
