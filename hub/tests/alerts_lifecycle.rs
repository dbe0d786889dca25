//! The alert lifecycle: exactly one open alert per (rule, device) under concurrency, ack and
//! clear over HTTP, escalation, a restart in the middle of an alert, and rule reloads (API,
//! `RunningHub`, and SIGHUP to the `hub` binary).

mod alerts_support;
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use alerts_support::*;
use hub::alerts::{AlertBook, AlertDoc, AlertFilter};
use hub::feeds::NormValue;
use hub::outbound::Outlet;
use hub::registry::Registry;
use hub::rules::Rules;
use protocols::messages::AlertState;
use protocols::topic::AlertLevel;
use protocols::{Quality, Quantity, Value};
use reqwest::StatusCode;
use support::RecordingPublisher;

const HIGH: &str = r#"
[[rules]]
id = "water-level-high"
kind = "water_level"
quantity = "water_level"
above = 3.0
clear_below = 2.8
level = "orange"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_open_alert_per_rule_and_device_under_concurrent_readings() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), HIGH);
    let registry = Arc::new(Registry::from_config(&cfg));
    let publisher = Arc::new(RecordingPublisher::default());
    let now = support::now_ms();
    let book = Arc::new(
        AlertBook::open(&cfg, registry.clone(), Outlet::new(publisher.clone()), now).unwrap(),
    );
    let rules = Rules::new(&cfg, registry.clone(), book.clone(), now);
    let wl = registry.device_by_id("WL-0001").unwrap().idx;
    // Eight threads, as many pipeline workers would, all over the threshold, many readings
    // within the same millisecond.
    std::thread::scope(|s| {
        for t in 0..8 {
            let rules = &rules;
            s.spawn(move || {
                for i in 0..500 {
                    let v = NormValue {
                        quantity: Quantity::WaterLevel,
                        value: Value::Number(3.5 + t as f64 * 0.01),
                        quality: Quality::Good,
                    };
                    rules.observe(wl, T0 + i / 50, &[v], now);
                }
            });
        }
    });
    assert_eq!(book.open_count(), 1);
    assert!(book.flush().await);
    let all = book.list(
        &AlertFilter {
            limit: 100,
            ..AlertFilter::default()
        },
        |_| true,
    );
    assert_eq!(all.len(), 1, "{all:?}");
    let raised: Vec<AlertDoc> = publisher
        .on("v1/alerts/orange/WL-0001")
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    assert_eq!(raised.len(), 1, "one publication for the coalesced changes");
    assert_eq!(raised[0].alert.state, AlertState::Active);
    assert_eq!(raised[0].alert.ts, "2026-11-20T00:00:00.009Z");
}

#[tokio::test]
async fn two_readings_in_the_same_millisecond_through_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(config(dir.path(), HIGH)).await;
    level(&h, 0, 3.5).await;
    level(&h, 0, 3.6).await;
    let a = wait_published(&h, "update", |a| a.alert.value == Some(3.6)).await;
    assert_eq!(alerts(&h).len(), 1);
    assert_eq!(a.alert.state, AlertState::Active);
    stop(h).await;
}

async fn api(method: reqwest::Method, url: &str, auth: &str) -> (StatusCode, serde_json::Value) {
    let resp = client()
        .request(method, url)
        .header("Authorization", auth)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn ack_then_clear_and_clear_without_ack() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(config(dir.path(), HIGH)).await;
    let cc = bearer("command-center", "cc-secret-123");
    let base = h.base_url();
    level(&h, 0, 3.4).await;
    let a = wait_published(&h, "raise", |a| a.alert.state == AlertState::Active).await;
    let id = a.alert.id.clone();

    let (s, list) = api(
        reqwest::Method::GET,
        &format!("{base}/api/v1/alerts?state=active"),
        &cc,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["state"], "active");

    let (s, acked) = api(
        reqwest::Method::POST,
        &format!("{base}/api/v1/alerts/{id}/ack"),
        &cc,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{acked}");
    assert_eq!(acked["state"], "acknowledged");
    assert_eq!(acked["acked_by"], "command-center");
    // Durable and published before the answer.
    let published = wait_state(&h, &id, AlertState::Acknowledged).await;
    assert_eq!(published.acked_by.as_deref(), Some("command-center"));
    // Again: nothing changes.
    let (s, again) = api(
        reqwest::Method::POST,
        &format!("{base}/api/v1/alerts/{id}/ack"),
        &cc,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["revision"], acked["revision"]);
    // Repeats keep it acknowledged.
    level(&h, 1, 3.9).await;
    let upd = wait_published(&h, "update", |a| a.alert.value == Some(3.9)).await;
    assert_eq!(upd.alert.state, AlertState::Acknowledged);
    // Clear.
    level(&h, 2, 2.0).await;
    wait_state(&h, &id, AlertState::Cleared).await;
    let (s, e) = api(
        reqwest::Method::POST,
        &format!("{base}/api/v1/alerts/{id}/ack"),
        &cc,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(e["error"], "conflict");
    let (_, cleared) = api(
        reqwest::Method::GET,
        &format!("{base}/api/v1/alerts?state=cleared"),
        &cc,
    )
    .await;
    assert_eq!(cleared.as_array().unwrap().len(), 1);

    // A new episode is a new alert, and it may clear without an ack.
    level(&h, 3, 3.1).await;
    let b = wait_published(&h, "second", |x| {
        x.alert.id != id && x.alert.state == AlertState::Active
    })
    .await;
    level(&h, 4, 2.5).await;
    let bc = wait_state(&h, &b.alert.id, AlertState::Cleared).await;
    assert!(bc.acked_by.is_none());
    let (_, open) = api(
        reqwest::Method::GET,
        &format!("{base}/api/v1/alerts?state=open"),
        &cc,
    )
    .await;
    assert!(open.as_array().unwrap().is_empty());
    let (s, e) = api(
        reqwest::Method::GET,
        &format!("{base}/api/v1/alerts?state=bogus"),
        &cc,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(e["detail"].as_str().unwrap().contains("bogus"));
    // Counted.
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("hub_alerts_raised_total{level=\"orange\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("hub_alerts_cleared_total{level=\"orange\"} 2"));
    assert!(metrics.contains("hub_alerts_acknowledged_total 1"));
    assert!(metrics.contains("hub_alerts_open{level=\"orange\",state=\"active\"} 0"));
    stop(h).await;
}

#[tokio::test]
async fn escalation_supersedes_the_lower_levels() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(config(
        dir.path(),
        r#"
[[rules]]
id = "level-yellow"
quantity = "water_level"
above = 2.5
level = "yellow"

[[rules]]
id = "level-orange"
quantity = "water_level"
above = 3.0
level = "orange"

[[rules]]
id = "level-red"
quantity = "water_level"
above = 3.5
level = "red"
"#,
    ))
    .await;
    let by_rule = |rule: &str| of_rule(&h, rule).into_iter().next().unwrap();
    level(&h, 0, 2.6).await;
    wait_published(&h, "yellow", |a| a.alert.level == AlertLevel::Yellow).await;
    level(&h, 1, 3.1).await;
    let orange = wait_published(&h, "orange", |a| a.alert.level == AlertLevel::Orange).await;
    let y = wait_published(&h, "yellow superseded", |a| {
        a.alert.level == AlertLevel::Yellow && a.superseded_by.as_deref() == Some(&orange.alert.id)
    })
    .await;
    assert_eq!(y.alert.state, AlertState::Active, "stays open");
    level(&h, 2, 3.6).await;
    let red = wait_published(&h, "red", |a| a.alert.level == AlertLevel::Red).await;
    assert!(red.superseded_by.is_none());
    assert_eq!(
        by_rule("level-yellow").superseded_by.as_deref(),
        Some(red.alert.id.as_str())
    );
    assert_eq!(
        by_rule("level-orange").superseded_by.as_deref(),
        Some(red.alert.id.as_str())
    );
    // Falling back under red: red clears, orange is the top again.
    level(&h, 3, 3.2).await;
    wait_state(&h, &red.alert.id, AlertState::Cleared).await;
    assert_eq!(by_rule("level-orange").superseded_by, None);
    assert_eq!(
        by_rule("level-yellow").superseded_by.as_deref(),
        Some(orange.alert.id.as_str())
    );
    // The dashboard's picture: the highest open alert of the device has no `superseded_by`.
    let open: Vec<AlertDoc> = alerts(&h)
        .into_iter()
        .filter(|a| a.alert.state != AlertState::Cleared && a.superseded_by.is_none())
        .collect();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].alert.level, AlertLevel::Orange);
    stop(h).await;
}

#[tokio::test]
async fn restart_in_the_middle_of_an_alert() {
    let dir = tempfile::tempdir().unwrap();
    let rules = r#"
[[rules]]
id = "water-level-high"
quantity = "water_level"
above = 3.0
level = "orange"

[[rules]]
id = "water-level-held"
quantity = "water_level"
above = 3.0
for = "30s"
level = "red"

[[rules]]
id = "water-rising-fast"
quantity = "water_level"
rise_per_hour = 0.5
window = "2m"
level = "yellow"
"#;
    let (id, rate_id) = {
        let h = start(config(dir.path(), rules)).await;
        // Rising 0.6 m per minute: both the threshold and the rate fire; the held rule waits.
        for (t, v) in [(0, 3.1), (30, 3.4), (60, 3.7)] {
            level(&h, t, v).await;
        }
        let a = wait_published(&h, "raise", |a| a.alert.rule == "water-level-high").await;
        let r = wait_published(&h, "rate", |a| a.alert.rule == "water-rising-fast").await;
        wait_published(&h, "held", |a| a.alert.rule == "water-level-held").await;
        stop(h).await;
        (a.alert.id, r.alert.id)
    };
    let h = start(config(dir.path(), rules)).await;
    // Still active, same alert, nothing raised again at start.
    let after = of_rule(&h, "water-level-high");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].alert.id, id);
    assert_eq!(after[0].alert.state, AlertState::Active);
    let rate = of_rule(&h, "water-rising-fast");
    assert_eq!(rate.len(), 1);
    assert_eq!(rate[0].alert.id, rate_id);
    // New readings update the same alerts: no duplicate.
    level(&h, 70, 3.8).await;
    wait_published(&h, "update after restart", |a| {
        a.alert.id == id && a.alert.value == Some(3.8)
    })
    .await;
    assert_eq!(of_rule(&h, "water-level-high").len(), 1);
    assert_eq!(of_rule(&h, "water-rising-fast").len(), 1);
    assert_eq!(of_rule(&h, "water-level-held").len(), 1);
    stop(h).await;
}

#[tokio::test]
async fn silence_alert_stays_the_same_alert_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rules = r#"
[[rules]]
id = "gauge-silent"
device = "WL-0001"
silent_for = "300ms"
level = "yellow"

[[rules]]
id = "manhole-silent"
kind = "manhole"
silent_for = "300ms"
level = "blue"
"#;
    let id = {
        let h = start(config(dir.path(), rules)).await;
        level(&h, 0, 1.0).await;
        let a = wait_published(&h, "gauge silent", |a| a.alert.rule == "gauge-silent").await;
        stop(h).await;
        a.alert.id
    };
    let h = start(config(dir.path(), rules)).await;
    // The manhole never reported, so its silence counts from this start: once it is raised,
    // the silence ticks have run well past the first one, which used to clear the gauge's
    // alert (its clock restarted at hub start) before raising it again under a new id.
    wait_published(&h, "manhole silent", |a| a.alert.device == "MH-0001").await;
    let gauge = of_rule(&h, "gauge-silent");
    assert_eq!(gauge.len(), 1, "one episode across the restart");
    assert_eq!(gauge[0].alert.id, id);
    assert_eq!(gauge[0].alert.state, AlertState::Active);
    // It reports again: the same alert clears.
    level(&h, 1, 1.0).await;
    wait_state(&h, &id, AlertState::Cleared).await;
    assert_eq!(of_rule(&h, "gauge-silent").len(), 1);
    stop(h).await;
}

#[tokio::test]
async fn hold_timer_resumes_from_stored_readings_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rules = r#"
[[rules]]
id = "water-level-held"
quantity = "water_level"
above = 3.0
for = "30s"
level = "red"
"#;
    {
        let h = start(config(dir.path(), rules)).await;
        level(&h, 0, 3.1).await;
        level(&h, 20, 3.2).await;
        assert!(alerts(&h).is_empty());
        stop(h).await;
    }
    let h = start(config(dir.path(), rules)).await;
    assert!(alerts(&h).is_empty());
    // 31 s after the first reading over the threshold, which was before the restart.
    level(&h, 31, 3.3).await;
    let a = wait_published(&h, "held", |a| a.alert.state == AlertState::Active).await;
    assert_eq!(a.raised_at, "2026-11-20T00:00:31.000Z");
    stop(h).await;
}

fn write_config(dir: &std::path::Path, rules: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("hub.toml");
    std::fs::write(
        &path,
        format!(
            "[hub]\ndata_dir = \"data\"\nhttp_listen = \"127.0.0.1:0\"\nmqtt_listen = [\"127.0.0.1:0\"]\n{extra}\n{DEVICES}\n{rules}"
        ),
    )
    .unwrap();
    path
}

const TWO_RULES: &str = r#"
[[rules]]
id = "water-level-high"
quantity = "water_level"
above = 3.0
level = "orange"

[[rules]]
id = "oxygen-low"
quantity = "dissolved_oxygen"
below = 4.0
level = "yellow"
"#;

#[tokio::test]
async fn rule_reload_good_and_bad() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), TWO_RULES, "");
    let cfg = hub::config::HubConfig::load(&path).unwrap();
    let h = start(cfg).await;
    let base = h.base_url();
    let cc = bearer("command-center", "cc-secret-123");
    let water = bearer("water-dept", "water-secret-1");
    level(&h, 0, 3.5).await;
    let high = wait_published(&h, "raise", |a| a.alert.rule == "water-level-high").await;

    // Without a grant for v1/admin/rules: 403.
    let (s, _) = api(
        reqwest::Method::POST,
        &format!("{base}/api/v1/rules/reload"),
        &water,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // A bad rule: refused with one line naming it, the old set stays.
    let bad = format!(
        "{TWO_RULES}\n[[rules]]\nid = \"bad-rule\"\nquantity = \"flux\"\nabove = 1.0\nlevel = \"red\"\n"
    );
    write_config(dir.path(), &bad, "");
    let (s, e) = api(
        reqwest::Method::POST,
        &format!("{base}/api/v1/rules/reload"),
        &cc,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let detail = e["detail"].as_str().unwrap();
    assert!(
        detail.contains("rules[2] (bad-rule).quantity: unknown quantity `flux`"),
        "{detail}"
    );
    assert!(!detail.contains('\n'));
    let (_, now) = api(reqwest::Method::GET, &format!("{base}/api/v1/rules"), &cc).await;
    assert_eq!(now["rules"].as_array().unwrap().len(), 2);
    // The engine still runs the old rules.
    level(&h, 1, 3.6).await;
    wait_published(&h, "still", |a| {
        a.alert.id == high.alert.id && a.alert.value == Some(3.6)
    })
    .await;

    // A good reload: one rule changed (its open alert is cleared), one removed, one added.
    let good = r#"
[[rules]]
id = "water-level-high"
quantity = "water_level"
above = 3.2
level = "orange"

[[rules]]
id = "water-level-low"
quantity = "water_level"
below = 0.5
level = "blue"
"#;
    write_config(dir.path(), good, "");
    let (s, report) = api(
        reqwest::Method::POST,
        &format!("{base}/api/v1/rules/reload"),
        &cc,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{report}");
    assert_eq!(report["rules"], 2);
    assert_eq!(report["added"], serde_json::json!(["water-level-low"]));
    assert_eq!(report["changed"], serde_json::json!(["water-level-high"]));
    assert_eq!(report["removed"], serde_json::json!(["oxygen-low"]));
    let cleared = wait_state(&h, &high.alert.id, AlertState::Cleared).await;
    assert!(
        cleared.alert.message.contains("the rule changed"),
        "{}",
        cleared.alert.message
    );
    // The new rules run without a restart.
    level(&h, 2, 0.4).await;
    wait_published(&h, "low", |a| a.alert.rule == "water-level-low").await;
    level(&h, 3, 3.3).await;
    let again = wait_published(&h, "high again", |a| {
        a.alert.rule == "water-level-high"
            && a.alert.state == AlertState::Active
            && a.alert.id != high.alert.id
    })
    .await;
    assert_ne!(again.alert.id, high.alert.id);
    assert_eq!(again.alert.threshold, Some(3.2));
    // Unchanged rules keep their state through a reload (no second raise).
    let report = h.hub.as_ref().unwrap().reload_rules().unwrap();
    assert_eq!(report.unchanged, 2);
    level(&h, 4, 3.4).await;
    assert_eq!(
        of_rule(&h, "water-level-high")
            .iter()
            .filter(|a| a.alert.state == AlertState::Active)
            .count(),
        1
    );
    stop(h).await;
}

/// Kills the hub binary when the test ends, also on panic.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sighup_reloads_the_rules_of_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), TWO_RULES, "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hub"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let wait_line = |what: &str| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(_) => {}
                Err(_) => panic!("no line with {what:?}"),
            }
        }
    };
    let line = wait_line("HTTP on http://");
    let http = line.rsplit("http://").next().unwrap().trim().to_string();
    let cc = bearer("command-center", "cc-secret-123");
    let rules_now = || async {
        let (_, v) = api(
            reqwest::Method::GET,
            &format!("http://{http}/api/v1/rules"),
            &cc,
        )
        .await;
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(rules_now().await, ["water-level-high", "oxygen-low"]);
    let pid = proc.0.id().to_string();
    // A bad file: logged, the rules stay.
    write_config(dir.path(), "[[rules]]\nid = \"x\"\nlevel = \"red\"\n", "");
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let refused = wait_line("SIGHUP: rules not reloaded");
    assert!(
        refused.contains("rules[0] (x): needs a condition"),
        "{refused}"
    );
    assert_eq!(rules_now().await, ["water-level-high", "oxygen-low"]);
    // A good file.
    write_config(dir.path(), HIGH, "");
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_line("SIGHUP: rules reloaded");
    assert_eq!(rules_now().await, ["water-level-high"]);
    drop(proc);
}
