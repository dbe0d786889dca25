//! Normalization of time and quality: pure rules, applied by the pipeline's decode workers.
//!
//! - A device timestamp more than `max_clock_skew` ahead of hub time is replaced by hub time
//!   and the readings are marked `uncertain`; so is a timestamp before 2000 (an unset clock)
//!   and a missing one.
//! - A physically impossible value ([`Quantity::is_plausible`]) is kept but marked `bad`.
//! - The quality the agent reported is kept when it is worse than what the hub concluded.
//!
//! Units are already canonical here: agents convert with `protocols::quantity`, and the JSON
//! telemetry parser converts with the same table.

use protocols::time::MIN_PLAUSIBLE_MS;
use protocols::{Quality, Quantity, Value};

/// The normalization rules, configured from hub.toml.
#[derive(Clone, Copy, Debug)]
pub struct Normalizer {
    max_skew_ms: i64,
}

/// A sample's timestamp after normalization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Epoch milliseconds to store.
    pub ts_ms: i64,
    /// `Uncertain` when the hub replaced the device's time.
    pub quality: Quality,
    /// Why the time was replaced, for logs and metrics.
    pub corrected: Option<TimeCorrection>,
}

/// Why a timestamp was replaced by hub time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeCorrection {
    /// The device sent none.
    Missing,
    /// Further ahead than the allowed skew.
    Future,
    /// Before 2000-01-01: a device with an unset clock.
    Implausible,
}

impl Normalizer {
    /// Rules with the allowed clock skew.
    pub fn new(max_skew: std::time::Duration) -> Normalizer {
        Normalizer {
            max_skew_ms: max_skew.as_millis().min(i64::MAX as u128) as i64,
        }
    }

    /// Checks a device timestamp against hub time.
    pub fn stamp(&self, device_ts: Option<i64>, hub_ms: i64) -> Stamp {
        let corrected = |c| Stamp {
            ts_ms: hub_ms,
            quality: Quality::Uncertain,
            corrected: Some(c),
        };
        match device_ts {
            None => corrected(TimeCorrection::Missing),
            Some(ts) if ts > hub_ms.saturating_add(self.max_skew_ms) => {
                corrected(TimeCorrection::Future)
            }
            Some(ts) if ts < MIN_PLAUSIBLE_MS => corrected(TimeCorrection::Implausible),
            Some(ts) => Stamp {
                ts_ms: ts,
                quality: Quality::Good,
                corrected: None,
            },
        }
    }

    /// The quality of one value: the worst of the time's, the plausibility's and the sender's.
    pub fn quality(&self, q: Quantity, v: &Value, stamp: Quality, reported: Quality) -> Quality {
        let plausible = if q.is_plausible(v) {
            Quality::Good
        } else {
            Quality::Bad
        };
        stamp.worst(plausible).worst(reported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: i64 = 1_795_334_400_000;

    #[test]
    fn timestamps() {
        let n = Normalizer::new(Duration::from_secs(300));
        let good = n.stamp(Some(NOW - 3_600_000), NOW);
        assert_eq!(good.ts_ms, NOW - 3_600_000);
        assert_eq!(good.quality, Quality::Good);
        // Within the skew ahead: kept.
        assert_eq!(n.stamp(Some(NOW + 299_000), NOW).ts_ms, NOW + 299_000);
        let future = n.stamp(Some(NOW + 301_000), NOW);
        assert_eq!(
            (future.ts_ms, future.quality, future.corrected),
            (NOW, Quality::Uncertain, Some(TimeCorrection::Future))
        );
        let missing = n.stamp(None, NOW);
        assert_eq!(
            (missing.ts_ms, missing.quality, missing.corrected),
            (NOW, Quality::Uncertain, Some(TimeCorrection::Missing))
        );
        let unset = n.stamp(Some(5_000), NOW);
        assert_eq!(unset.corrected, Some(TimeCorrection::Implausible));
        assert_eq!(unset.ts_ms, NOW);
        assert_eq!(n.stamp(Some(i64::MAX), NOW).ts_ms, NOW);
    }

    #[test]
    fn qualities() {
        let n = Normalizer::new(Duration::from_secs(300));
        let ph = Quantity::Ph;
        let (g, u, b) = (Quality::Good, Quality::Uncertain, Quality::Bad);
        assert_eq!(n.quality(ph, &Value::Number(7.0), g, g), g);
        assert_eq!(n.quality(ph, &Value::Number(15.0), g, g), b);
        assert_eq!(n.quality(ph, &Value::Number(7.0), u, g), u);
        // The agent's quality is kept when worse.
        assert_eq!(n.quality(ph, &Value::Number(7.0), g, u), u);
        assert_eq!(n.quality(ph, &Value::Number(7.0), u, b), b);
        // ... and never improves a hub verdict.
        assert_eq!(n.quality(ph, &Value::Number(15.0), u, g), b);
        assert_eq!(n.quality(Quantity::LampStatus, &Value::State(9), g, g), b);
    }
}
