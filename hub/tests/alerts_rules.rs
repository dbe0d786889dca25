//! Each rule type through the real pipeline and store: thresholds with hold time and
//! hysteresis, rate of rise on back-dated readings, silence (also of a device that never
//! reported), `equals` with a night-time window. Time is driven by device timestamps;
//! silence uses short durations on hub time and awaits the alert.

mod alerts_support;
mod support;

use alerts_support::*;
use protocols::messages::AlertState;
use protocols::topic::AlertLevel;

#[tokio::test]
async fn threshold_with_hold_and_hysteresis() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(config(
        dir.path(),
        r#"
[[rules]]
id = "water-level-high"
kind = "water_level"
quantity = "water_level"
above = 3.0
clear_below = 2.8
for = "30s"
level = "orange"
"#,
    ))
    .await;

    // Over the threshold, but not for 30 s yet.
    level(&h, 0, 3.1).await;
    level(&h, 10, 3.2).await;
    assert!(alerts(&h).is_empty());
    // A back-dated reading far over the threshold changes nothing (level rules follow the
    // newest reading).
    level(&h, 5, 9.0).await;
    assert!(alerts(&h).is_empty());
    // 31 s after the first reading over: raised, with the reading's value and time.
    level(&h, 31, 3.3).await;
    let raised = wait_published(&h, "raise", |a| a.alert.state == AlertState::Active).await;
    assert_eq!(raised.alert.rule, "water-level-high");
    assert_eq!(raised.alert.device, "WL-0001");
    assert_eq!(raised.alert.level, AlertLevel::Orange);
    assert_eq!(raised.alert.value, Some(3.3));
    assert_eq!(raised.alert.threshold, Some(3.0));
    assert_eq!(raised.alert.quantity.as_deref(), Some("water_level"));
    assert_eq!(raised.unit, "m");
    assert_eq!(raised.dept.as_deref(), Some("water"));
    assert_eq!(raised.raised_at, "2026-11-20T00:00:31.000Z");
    assert_eq!(raised.revision, 1);
    assert!(
        raised.alert.message.contains("3.3 m above 3 m"),
        "{}",
        raised.alert.message
    );
    let topic = "v1/alerts/orange/WL-0001";
    assert!(!h.published.on(topic)[0].retain);

    // Inside the hysteresis band (2.8..3.0): still active, the value follows.
    level(&h, 40, 2.9).await;
    let band = wait_published(&h, "update in band", |a| a.alert.value == Some(2.9)).await;
    assert_eq!(band.alert.id, raised.alert.id);
    assert_eq!(band.alert.state, AlertState::Active);
    assert!(band.revision > 1);
    // Below clear_below: cleared.
    level(&h, 50, 2.7).await;
    let cleared = wait_state(&h, &raised.alert.id, AlertState::Cleared).await;
    assert_eq!(
        cleared.cleared_at.as_deref(),
        Some("2026-11-20T00:00:50.000Z")
    );
    assert_eq!(cleared.alert.value, Some(2.7));

    // A hold broken by a reading under the threshold starts over.
    level(&h, 60, 3.5).await;
    level(&h, 70, 2.0).await;
    level(&h, 95, 3.5).await;
    level(&h, 100, 3.5).await;
    assert_eq!(
        of_rule(&h, "water-level-high").len(),
        1,
        "no second episode yet"
    );
    level(&h, 125, 3.6).await;
    let second = wait_published(&h, "second episode", |a| {
        a.alert.state == AlertState::Active && a.alert.id != raised.alert.id
    })
    .await;
    assert_eq!(second.raised_at, "2026-11-20T00:02:05.000Z");
    stop(h).await;
}

#[tokio::test]
async fn below_without_hysteresis_clears_at_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(config(
        dir.path(),
        r#"
[[rules]]
id = "oxygen-low"
kind = "water_quality"
quantity = "dissolved_oxygen"
below = 4.0
level = "yellow"
message = "{device}: dissolved oxygen {value} {unit} (min {threshold})"
"#,
    ))
    .await;
    let send_do = |secs: i64, v: f64| {
        let h = &h;
        async move {
            send(
                h,
                "WQ-0001",
                "water_quality",
                T0 + secs * 1000,
                &format!(r#"{{"dissolved_oxygen":{v}}}"#),
            )
            .await
        }
    };
    send_do(0, 3.5).await;
    let a = wait_published(&h, "raise", |a| a.alert.state == AlertState::Active).await;
    assert_eq!(
        a.alert.message,
        "WQ-0001: dissolved oxygen 3.5 mg/L (min 4)"
    );
    send_do(1, 4.0).await;
    wait_state(&h, &a.alert.id, AlertState::Cleared).await;
    stop(h).await;
}

#[tokio::test]
async fn rate_of_rise_on_backdated_readings() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(config(
        dir.path(),
        r#"
[[rules]]
id = "water-rising-fast"
quantity = "water_level"
rise_per_hour = 0.5
window = "10m"
level = "yellow"
"#,
    ))
    .await;
    // 1.2 m/h for 10 minutes, a reading every 30 s, with noise of ±2 cm. The agent delivers
    // the newest half first and replays the older half afterwards (back-dated).
    let noise = [0.02, -0.01, 0.0, -0.02, 0.01];
    let series: Vec<(i64, f64)> = (0..=20)
        .map(|i| {
            let t = i * 30;
            (t, 2.0 + 1.2 * t as f64 / 3600.0 + noise[i as usize % 5])
        })
        .collect();
    let (older, newer) = series.split_at(10);
    for (t, v) in newer.iter().chain(older.iter()) {
        level(&h, *t, *v).await;
    }
    let a = wait_published(&h, "rise", |a| a.alert.state == AlertState::Active).await;
    assert_eq!(a.alert.level, AlertLevel::Yellow);
    assert_eq!(a.unit, "m/h");
    assert_eq!(a.alert.threshold, Some(0.5));
    let rate = of_rule(&h, "water-rising-fast")[0].alert.value.unwrap();
    assert!((rate - 1.2).abs() < 0.2, "rate {rate}");
    assert_eq!(of_rule(&h, "water-rising-fast").len(), 1);
    // A back-dated reading older than the window is ignored.
    level(&h, -3600, 50.0).await;
    assert_eq!(of_rule(&h, "water-rising-fast").len(), 1);
    // The level stops rising: once the window holds only flat readings the rate is ~0.
    for i in 1..=22 {
        level(&h, 600 + i * 30, 2.21).await;
    }
    wait_state(&h, &a.alert.id, AlertState::Cleared).await;
    assert_eq!(of_rule(&h, "water-rising-fast").len(), 1, "one episode");
    stop(h).await;
}

#[tokio::test]
async fn silence_including_a_device_that_never_reported() {
    let dir = tempfile::tempdir().unwrap();
    let h = start(config(
        dir.path(),
        r#"
[[rules]]
id = "manhole-silent"
kind = "manhole"
silent_for = "300ms"
level = "blue"

[[rules]]
id = "gauge-silent"
device = "WL-0001"
silent_for = "600ms"
level = "yellow"
"#,
    ))
    .await;
    level(&h, 0, 1.0).await;
    // MH-0001 never reported since start.
    let mh = wait_published(&h, "manhole silent", |a| a.alert.device == "MH-0001").await;
    assert_eq!(mh.alert.rule, "manhole-silent");
    assert_eq!(mh.alert.level, AlertLevel::Blue);
    assert_eq!(mh.unit, "s");
    assert!(mh.alert.value.unwrap() >= 0.3);
    assert!(mh.alert.quantity.is_none());
    // WL-0001 goes silent after its reading.
    let wl = wait_published(&h, "gauge silent", |a| a.alert.rule == "gauge-silent").await;
    assert_eq!(wl.alert.state, AlertState::Active);
    // One alert per silence, not one per tick.
    assert_eq!(of_rule(&h, "manhole-silent").len(), 1);
    // It reports again: cleared.
    level(&h, 1, 1.0).await;
    wait_state(&h, &wl.alert.id, AlertState::Cleared).await;
    assert_eq!(of_rule(&h, "manhole-silent").len(), 1);
    stop(h).await;
}

#[tokio::test]
async fn motion_only_at_night_in_local_time() {
    let dir = tempfile::tempdir().unwrap();
    // [hub] utc_offset defaults to +08:00: 22:00-06:00 local is 14:00-22:00 UTC.
    let h = start(config(
        dir.path(),
        r#"
[[rules]]
id = "restricted-area-night"
device = "CAM-0001"
quantity = "motion"
equals = true
active = "22:00-06:00"
level = "red"
"#,
    ))
    .await;
    let motion = |utc_hour: i64, min: i64, on: bool| {
        let h = &h;
        async move {
            let ts = T0 + (utc_hour * 3600 + min * 60) * 1000;
            send(
                h,
                "CAM-0001",
                "camera",
                ts,
                &format!(r#"{{"motion":{on}}}"#),
            )
            .await;
        }
    };
    // 12:00 local (04:00 UTC): motion, but outside the window.
    motion(4, 0, true).await;
    assert!(alerts(&h).is_empty());
    // 23:30 local (15:30 UTC): raised.
    motion(15, 30, true).await;
    let a = wait_published(&h, "night motion", |a| a.alert.state == AlertState::Active).await;
    assert_eq!(a.alert.level, AlertLevel::Red);
    assert_eq!(a.alert.value, Some(1.0));
    assert!(
        a.alert
            .message
            .contains("motion is true during 22:00-06:00"),
        "{}",
        a.alert.message
    );
    // Motion ends: cleared.
    motion(15, 31, false).await;
    wait_state(&h, &a.alert.id, AlertState::Cleared).await;
    // 05:50 local (21:50 UTC): still night.
    motion(21, 50, true).await;
    let b = wait_published(&h, "early motion", |x| {
        x.alert.state == AlertState::Active && x.alert.id != a.alert.id
    })
    .await;
    // 06:10 local: the window closed, the condition counts as false, the alert clears.
    motion(22, 10, true).await;
    wait_state(&h, &b.alert.id, AlertState::Cleared).await;
    assert_eq!(of_rule(&h, "restricted-area-night").len(), 2);
    stop(h).await;
}
