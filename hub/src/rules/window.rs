//! Rate of rise over a sliding window of device time, robust to readings that arrive late or
//! out of order.
//!
//! The window is cut into [`BUCKETS`] buckets by device time. Each bucket keeps the sufficient
//! statistics of a least-squares fit (count, Σt, Σt², Σv, Σtv, with t relative to the bucket's
//! start so the sums stay small), so a back-dated reading lands in its own bucket and the fit
//! over the window is exact, whatever the arrival order, in constant memory per (rule, device).

use std::collections::BTreeMap;

/// Buckets per window.
pub const BUCKETS: i64 = 32;
/// Fewest readings a rate is computed from.
pub const MIN_POINTS: u64 = 3;

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    n: u64,
    /// Σ t, seconds from the bucket start.
    st: f64,
    /// Σ t².
    stt: f64,
    /// Σ v.
    sv: f64,
    /// Σ t·v.
    stv: f64,
    min_ts: i64,
    max_ts: i64,
}

/// The readings of one (rule, device) over the window, as bucketed sums.
#[derive(Clone, Debug)]
pub struct RiseWindow {
    window_ms: i64,
    bucket_ms: i64,
    buckets: BTreeMap<i64, Bucket>,
    newest: i64,
}

impl RiseWindow {
    /// An empty window of `window_ms`.
    pub fn new(window_ms: i64) -> RiseWindow {
        let window_ms = window_ms.max(1);
        RiseWindow {
            window_ms,
            bucket_ms: (window_ms / BUCKETS).max(1),
            buckets: BTreeMap::new(),
            newest: i64::MIN,
        }
    }

    /// The newest device time seen.
    pub fn newest(&self) -> i64 {
        self.newest
    }

    /// Adds a reading. Returns false (and ignores it) when it is older than the window.
    pub fn add(&mut self, ts_ms: i64, value: f64) -> bool {
        if !value.is_finite() {
            return false;
        }
        if self.newest != i64::MIN && ts_ms < self.newest.saturating_sub(self.window_ms) {
            return false;
        }
        let key = ts_ms.div_euclid(self.bucket_ms);
        let start = key * self.bucket_ms;
        let t = (ts_ms - start) as f64 / 1000.0;
        let b = self.buckets.entry(key).or_insert(Bucket {
            min_ts: ts_ms,
            max_ts: ts_ms,
            ..Bucket::default()
        });
        b.n += 1;
        b.st += t;
        b.stt += t * t;
        b.sv += value;
        b.stv += t * value;
        b.min_ts = b.min_ts.min(ts_ms);
        b.max_ts = b.max_ts.max(ts_ms);
        if ts_ms > self.newest {
            self.newest = ts_ms;
            // Whole buckets that ended before the window's start leave it.
            let first = (self.newest - self.window_ms).div_euclid(self.bucket_ms);
            while let Some((&k, _)) = self.buckets.first_key_value() {
                if k >= first {
                    break;
                }
                self.buckets.remove(&k);
            }
        }
        true
    }

    /// The least-squares slope over the window, per hour, once the readings are enough
    /// evidence: at least [`MIN_POINTS`] spanning at least half the window.
    pub fn rate_per_hour(&self) -> Option<f64> {
        let first_key = *self.buckets.keys().next()?;
        let reference = first_key * self.bucket_ms;
        let (mut n, mut st, mut stt, mut sv, mut stv) = (0u64, 0.0, 0.0, 0.0, 0.0);
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for (&k, b) in &self.buckets {
            let off = (k * self.bucket_ms - reference) as f64 / 1000.0;
            let bn = b.n as f64;
            n += b.n;
            st += bn * off + b.st;
            stt += bn * off * off + 2.0 * off * b.st + b.stt;
            sv += b.sv;
            stv += off * b.sv + b.stv;
            lo = lo.min(b.min_ts);
            hi = hi.max(b.max_ts);
        }
        if n < MIN_POINTS || (hi - lo) * 2 < self.window_ms {
            return None;
        }
        let nf = n as f64;
        let den = nf * stt - st * st;
        if den.abs() < f64::EPSILON {
            return None;
        }
        let slope = (nf * stv - st * sv) / den;
        Some(slope * 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_in_any_order() {
        // 0.6 m/h over 10 minutes, readings every 10 s, shuffled.
        let mut pts: Vec<(i64, f64)> = (0..=60)
            .map(|i| {
                (
                    1_000_000 + i * 10_000,
                    2.0 + 0.6 * (i as f64 * 10.0) / 3600.0,
                )
            })
            .collect();
        let mut w = RiseWindow::new(600_000);
        assert_eq!(w.rate_per_hour(), None);
        // A deterministic shuffle: reverse halves.
        pts.reverse();
        for (t, v) in &pts {
            assert!(w.add(*t, *v));
        }
        let r = w.rate_per_hour().unwrap();
        assert!((r - 0.6).abs() < 1e-6, "{r}");
        // A reading older than the window is ignored.
        assert!(!w.add(1_000_000 - 700_000, 100.0));
        assert!((w.rate_per_hour().unwrap() - 0.6).abs() < 1e-6);
    }

    #[test]
    fn needs_enough_span() {
        let mut w = RiseWindow::new(600_000);
        for i in 0..10 {
            w.add(i * 1000, i as f64);
        }
        // 9 s of a 10 minute window: not evidence yet.
        assert_eq!(w.rate_per_hour(), None);
        w.add(400_000, 1.0);
        assert!(w.rate_per_hour().is_some());
    }

    #[test]
    fn old_buckets_leave() {
        let mut w = RiseWindow::new(60_000);
        // Rising for a minute, then flat for two: the rate falls to zero.
        for i in 0..=60 {
            w.add(i * 1000, i as f64 / 60.0);
        }
        // 1 per minute is 60 per hour.
        assert!((w.rate_per_hour().unwrap() - 60.0).abs() < 1e-6);
        for i in 61..=180 {
            w.add(i * 1000, 1.0);
        }
        let r = w.rate_per_hour().unwrap();
        assert!(r.abs() < 1e-6, "{r}");
    }
}
