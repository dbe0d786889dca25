//! Deadband and heartbeat: which polled values are worth sending.
//!
//! A value is sent when it is the first of its point, when its quality changed, when a boolean
//! or state changed, when a number moved more than the deadband away from the value *last
//! sent* (so a slow drift is reported once it adds up), or when the heartbeat is due. The
//! deadband is in the point's engineering unit (the profile's `unit`), as integrators write it.
//! A deadband of 0 sends every poll.

use protocols::Value;
use protocols::profile::ResolvedPoint;
use protocols::quantity::Quality;

#[derive(Clone, Copy, Debug)]
struct Sent {
    value: Value,
    quality: Quality,
    ts_ms: i64,
}

/// The per-point memory of what was last sent for one device.
#[derive(Clone, Debug)]
pub struct ReportFilter {
    deadband: f64,
    heartbeat_ms: i64,
    last: Vec<Option<Sent>>,
}

impl ReportFilter {
    /// A filter for a device of `points` points.
    pub fn new(points: usize, deadband: f64, heartbeat: std::time::Duration) -> ReportFilter {
        ReportFilter {
            deadband,
            heartbeat_ms: heartbeat.as_millis().min(i64::MAX as u128) as i64,
            last: vec![None; points],
        }
    }

    /// Whether to send this value; if so it is remembered as sent.
    pub fn admit(
        &mut self,
        point: &ResolvedPoint,
        value: Value,
        quality: Quality,
        ts_ms: i64,
    ) -> bool {
        let Some(slot) = self.last.get_mut(point.index) else {
            return true;
        };
        let send = match *slot {
            None => true,
            Some(prev) => {
                prev.quality != quality
                    || ts_ms - prev.ts_ms >= self.heartbeat_ms
                    || changed(point, prev.value, value, self.deadband)
            }
        };
        if send {
            *slot = Some(Sent {
                value,
                quality,
                ts_ms,
            });
        }
        send
    }

    /// Records a value as sent regardless of the deadband (a read-back after a write).
    pub fn force(&mut self, point: &ResolvedPoint, value: Value, quality: Quality, ts_ms: i64) {
        if let Some(slot) = self.last.get_mut(point.index) {
            *slot = Some(Sent {
                value,
                quality,
                ts_ms,
            });
        }
    }
}

fn changed(point: &ResolvedPoint, prev: Value, now: Value, deadband: f64) -> bool {
    match (prev, now) {
        (Value::Number(_), Value::Number(_)) => {
            if deadband <= 0.0 {
                return true;
            }
            (point.engineering(now) - point.engineering(prev)).abs() > deadband
        }
        (a, b) => a != b || deadband <= 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::profile::DeviceProfile;
    use std::time::Duration;

    fn radar() -> DeviceProfile {
        DeviceProfile::from_toml(
            "model = \"r\"\nkind = \"water_level\"\n[[points]]\nquantity = \"water_level\"\ntable = \"input\"\naddress = 0\ntype = \"u16\"\nunit = \"mm\"\n[[points]]\nquantity = \"cover_open\"\ntable = \"discrete\"\naddress = 0\ntype = \"bool\"\n",
        )
        .unwrap()
    }

    #[test]
    fn deadband_is_in_engineering_units_against_the_last_sent_value() {
        let p = radar();
        let level = &p.points[0];
        // Deadband 5 mm; values travel in m (canonical).
        let mut f = ReportFilter::new(2, 5.0, Duration::from_secs(60));
        let g = Quality::Good;
        assert!(f.admit(level, Value::Number(1.000), g, 0), "first value");
        assert!(!f.admit(level, Value::Number(1.004), g, 1000), "4 mm");
        assert!(
            !f.admit(level, Value::Number(1.005), g, 2000),
            "exactly 5 mm is not more"
        );
        // Drift: 1.003, 1.006 are each within 5 mm of the previous poll but 1.006 is 6 mm from
        // the last *sent* value.
        assert!(!f.admit(level, Value::Number(1.003), g, 3000));
        assert!(
            f.admit(level, Value::Number(1.006), g, 4000),
            "6 mm from 1.000"
        );
        assert!(
            !f.admit(level, Value::Number(1.002), g, 5000),
            "4 mm from 1.006"
        );
        assert!(f.admit(level, Value::Number(0.990), g, 6000), "16 mm down");
    }

    #[test]
    fn heartbeat_sends_unchanged_values() {
        let p = radar();
        let level = &p.points[0];
        let mut f = ReportFilter::new(2, 100.0, Duration::from_secs(10));
        let g = Quality::Good;
        assert!(f.admit(level, Value::Number(2.0), g, 0));
        assert!(!f.admit(level, Value::Number(2.0), g, 9_999));
        assert!(
            f.admit(level, Value::Number(2.0), g, 10_000),
            "heartbeat due"
        );
        assert!(!f.admit(level, Value::Number(2.0), g, 19_999));
        assert!(f.admit(level, Value::Number(2.0), g, 20_000));
    }

    #[test]
    fn zero_deadband_sends_every_poll_and_quality_or_state_changes_always_send() {
        let p = radar();
        let (level, cover) = (&p.points[0], &p.points[1]);
        let mut f = ReportFilter::new(2, 0.0, Duration::from_secs(60));
        for t in 0..5 {
            assert!(f.admit(level, Value::Number(1.0), Quality::Good, t));
        }
        let mut f = ReportFilter::new(2, 1000.0, Duration::from_secs(60));
        assert!(f.admit(level, Value::Number(1.0), Quality::Good, 0));
        assert!(
            f.admit(level, Value::Number(1.0), Quality::Uncertain, 1),
            "quality changed"
        );
        assert!(f.admit(cover, Value::Bool(false), Quality::Good, 0));
        assert!(!f.admit(cover, Value::Bool(false), Quality::Good, 1));
        assert!(
            f.admit(cover, Value::Bool(true), Quality::Good, 2),
            "bool changed"
        );
    }

    #[test]
    fn forced_value_resets_the_reference() {
        let p = radar();
        let level = &p.points[0];
        let mut f = ReportFilter::new(2, 10.0, Duration::from_secs(60));
        assert!(f.admit(level, Value::Number(1.0), Quality::Good, 0));
        f.force(level, Value::Number(1.5), Quality::Good, 1);
        assert!(!f.admit(level, Value::Number(1.505), Quality::Good, 2));
        assert!(f.admit(level, Value::Number(1.0), Quality::Good, 3));
    }
}
