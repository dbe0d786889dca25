use super::*;
use crate::config::HubConfig;
use mqtt_broker::ingress::{Outbound, Publisher};

#[derive(Default)]
struct Recorder(Mutex<Vec<Outbound>>);
impl Publisher for Recorder {
    fn publish(&self, msg: Outbound) {
        self.0.lock().push(msg);
    }
}

const CFG: &str = r#"
[[devices]]
id = "SL-1"
kind = "streetlight"
agent = "AG-1"

[[devices]]
id = "SL-2"
kind = "streetlight"
secret = "device-secret"

[[agents]]
id = "AG-1"
secret = "agent-secret"
"#;

fn twins(dir: &Path) -> (Twins, Arc<Recorder>) {
    let registry = Arc::new(Registry::from_config(&HubConfig::from_toml(CFG).unwrap()));
    let rec = Arc::new(Recorder::default());
    let t = Twins::open(
        registry,
        dir,
        |_| Vec::new(),
        Outlet::new(rec.clone()),
        Arc::new(Metrics::default()),
    )
    .unwrap();
    (t, rec)
}

fn nv(q: Quantity, v: f64) -> NormValue {
    NormValue {
        quantity: q,
        value: Value::Number(v),
        quality: Quality::Good,
    }
}

#[test]
fn versions_grow_and_older_readings_never_win() {
    let dir = tempfile::tempdir().unwrap();
    let (t, _) = twins(dir.path());
    assert!(t.apply_reported(0, 2000, &[nv(Quantity::DimmingLevel, 40.0)], 5));
    assert_eq!(t.version(0), 1);
    // Older: ignored, no version change.
    assert!(!t.apply_reported(0, 1000, &[nv(Quantity::DimmingLevel, 10.0)], 6));
    assert_eq!(t.version(0), 1);
    // The same again: no change.
    assert!(!t.apply_reported(0, 2000, &[nv(Quantity::DimmingLevel, 40.0)], 6));
    // Mixed: one older, one new quantity.
    assert!(t.apply_reported(
        0,
        1500,
        &[
            nv(Quantity::DimmingLevel, 5.0),
            nv(Quantity::LampPower, 61.5)
        ],
        7
    ));
    let doc = t.document(0);
    assert_eq!(doc.version, 2);
    assert_eq!(doc.reported["dimming_level"].value, Scalar::Number(40.0));
    assert_eq!(doc.reported["lamp_power"].unit, "W");
    assert_eq!(doc.reported["lamp_power"].ts, "1970-01-01T00:00:01.500Z");
    assert!(t.set_online(0, true, 8));
    assert!(!t.set_online(0, true, 9));
    assert_eq!(t.version(0), 3);
}

#[tokio::test]
async fn desired_delta_command_conflict_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (t, rec) = twins(dir.path());
        t.apply_reported(0, 1000, &[nv(Quantity::DimmingLevel, 100.0)], 1);
        let v = t.version(0);
        let upd = |version, level: f64| DesiredUpdate {
            version,
            values: [("dimming_level".to_string(), Scalar::Number(level))].into(),
        };
        let doc = t.set_desired("SL-1", upd(Some(v), 40.0), 2).await.unwrap();
        assert_eq!(doc.version, v + 1);
        assert_eq!(doc.desired["dimming_level"], Scalar::Number(40.0));
        assert_eq!(doc.delta["dimming_level"], Scalar::Number(40.0));
        let sent = rec.0.lock().clone();
        let cmd = sent
            .iter()
            .find(|m| m.topic == "v1/agents/AG-1/cmd")
            .unwrap();
        let cmd: Command = serde_json::from_slice(&cmd.payload).unwrap();
        assert_eq!(cmd.name, "set");
        assert_eq!(cmd.device.as_deref(), Some("SL-1"));
        assert_eq!(cmd.args["dimming_level"], serde_json::json!(40.0));
        assert_eq!(t.pending_commands().len(), 1);
        let twin_msg = sent.iter().find(|m| m.topic == "v1/twin/SL-1").unwrap();
        assert!(twin_msg.retain);

        // Telemetry moving the version does not make a writer's version stale ...
        t.apply_reported(0, 2000, &[nv(Quantity::LampPower, 3.0)], 3);
        let seen = doc.version;
        t.set_desired("SL-1", upd(Some(seen + 1), 30.0), 4)
            .await
            .unwrap();
        // ... but a desired change after the writer's version does.
        let e = t
            .set_desired("SL-1", upd(Some(seen), 20.0), 5)
            .await
            .unwrap_err();
        assert!(matches!(e, DesiredError::Conflict { .. }), "{e}");
        // Nor can a writer claim a version from the future.
        let e = t
            .set_desired("SL-1", upd(Some(u64::MAX), 20.0), 5)
            .await
            .unwrap_err();
        assert!(matches!(e, DesiredError::Conflict { .. }));

        // Reported catches up: delta empties.
        t.apply_reported(0, 3000, &[nv(Quantity::DimmingLevel, 30.0)], 6);
        assert!(t.document(0).delta.is_empty());

        let bad = |name: &str, s: Scalar| DesiredUpdate {
            version: None,
            values: [(name.to_string(), s)].into(),
        };
        assert_eq!(
            t.set_desired("SL-1", bad("lamp_power", Scalar::Number(1.0)), 7)
                .await
                .unwrap_err()
                .label(),
            "not_controllable"
        );
        assert_eq!(
            t.set_desired("SL-1", bad("dimming_level", Scalar::Bool(true)), 7)
                .await
                .unwrap_err()
                .label(),
            "bad_value"
        );
        assert_eq!(
            t.set_desired("SL-1", bad("dimming_level", Scalar::Number(250.0)), 7)
                .await
                .unwrap_err()
                .label(),
            "out_of_range"
        );
        assert_eq!(
            t.set_desired("SL-1", bad("flux", Scalar::Number(1.0)), 7)
                .await
                .unwrap_err()
                .label(),
            "unknown_quantity"
        );
        assert_eq!(
            t.set_desired("nope", bad("dimming_level", Scalar::Number(1.0)), 7)
                .await
                .unwrap_err()
                .label(),
            "unknown_device"
        );
        // Direct device: command on its own topic, without `device`.
        let before = rec.0.lock().len();
        t.set_desired("SL-2", upd(None, 10.0), 8).await.unwrap();
        let sent = rec.0.lock()[before..].to_vec();
        let cmd = sent
            .iter()
            .find(|m| m.topic == "v1/devices/SL-2/cmd")
            .unwrap();
        let cmd: Command = serde_json::from_slice(&cmd.payload).unwrap();
        assert_eq!(cmd.device, None);
        t.checkpoint(true).unwrap();
    }
    let (t, rec) = twins(dir.path());
    let doc = t.document(0);
    assert_eq!(doc.desired["dimming_level"], Scalar::Number(30.0));
    // A clean stop: the version resumes exactly where it was.
    assert_eq!(doc.version, 5);
    // Nothing reported since the restart: coming online, the device gets a command for
    // its delta (one change for going online, one for the command).
    assert!(t.set_online(0, true, 9));
    assert_eq!(t.version(0), 7);
    assert_eq!(t.pending_commands().len(), 1);
    assert!(rec.0.lock().iter().any(|m| m.topic == "v1/agents/AG-1/cmd"));
}

#[test]
fn renders_the_command_families() {
    let dir = tempfile::tempdir().unwrap();
    let (t, _) = twins(dir.path());
    t.command_metrics.retried.fetch_add(2, Relaxed);
    t.command_metrics.timed_out.fetch_add(1, Relaxed);
    t.pending.lock().insert("c-1".into(), 0);
    let text = crate::metrics::render_collector(t.collector());
    assert!(
        text.contains(
            "# HELP hub_commands_retried_total Commands sent again (no matching report yet).\n\
             # TYPE hub_commands_retried_total counter\n\
             hub_commands_retried_total 2\n"
        ),
        "{text}"
    );
    assert!(text.contains("hub_commands_finished_total{result=\"done\"} 0\n"));
    assert!(text.contains("hub_commands_finished_total{result=\"timeout\"} 1\n"));
    assert!(text.contains("hub_commands_finished_total{result=\"superseded\"} 0\n"));
    assert!(text.contains("# TYPE hub_commands_pending gauge\nhub_commands_pending 1\n"));
    assert_eq!(text.matches("# TYPE ").count(), 3);
}
