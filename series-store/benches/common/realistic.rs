//! The store benchmarks' "realistic series" (shared by `store.rs` and `pg_store.rs`): seven
//! sensor series of one station at 1 s, deterministic.
#![allow(dead_code)]

use protocols::{Quality, Quantity};
use series_store::Point;

pub const T0: i64 = 1_700_000_000_000;
pub const DAY: i64 = 86_400;

/// A small deterministic generator (xorshift) so every run measures the same data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal (sum of uniforms), mean 0, sd 1.
    pub fn gauss(&mut self) -> f64 {
        (0..12).map(|_| self.unit()).sum::<f64>() - 6.0
    }
}

pub fn round_to(v: f64, decimals: i32) -> f64 {
    let s = 10f64.powi(decimals);
    (v * s).round() / s
}

/// One day at 1 s of each realistic series: (name, quantity, points).
pub fn realistic(seconds: i64, jitter_ms: i64) -> Vec<(&'static str, Quantity, Vec<Point>)> {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let ts = |i: i64, r: &mut Rng| {
        let j = if jitter_ms > 0 {
            (r.next() % (2 * jitter_ms as u64 + 1)) as i64 - jitter_ms
        } else {
            0
        };
        T0 + i * 1000 + j
    };
    let p = |ts_ms, value| Point {
        ts_ms,
        value,
        quality: Quality::Good,
    };
    let mut out = Vec::new();
    // Water level: tide (12.42 h period, 0.5 m amplitude) + 2 mm sensor noise, in mm.
    out.push((
        "water_level (tide + noise, mm)",
        Quantity::WaterLevel,
        (0..seconds)
            .map(|i| {
                let tide = 2.0 + 0.5 * (i as f64 * std::f64::consts::TAU / 44_712.0).sin();
                p(ts(i, &mut r), round_to(tide + 0.002 * r.gauss(), 3))
            })
            .collect(),
    ));
    // Lamp power: off by day, 150 W at night, dimmed to 75 W after midnight; 0.1 W meter jitter.
    out.push((
        "lamp_power (steps, 0.1 W)",
        Quantity::LampPower,
        (0..seconds)
            .map(|i| {
                let h = (i % DAY) / 3600;
                let base = match h {
                    0..=4 => 75.0,
                    5..=17 => 0.0,
                    _ => 150.0,
                };
                let jit = if base > 0.0 && r.unit() < 0.2 {
                    if r.unit() < 0.5 { 0.1 } else { -0.1 }
                } else {
                    0.0
                };
                p(ts(i, &mut r), round_to(base + jit, 1))
            })
            .collect(),
    ));
    // pH: slow daily drift + 0.01 noise, 2 decimals.
    out.push((
        "ph (drift + noise, 0.01)",
        Quantity::Ph,
        (0..seconds)
            .map(|i| {
                let drift = 7.2 + 0.15 * (i as f64 * std::f64::consts::TAU / DAY as f64).sin();
                p(ts(i, &mut r), round_to(drift + 0.01 * r.gauss(), 2))
            })
            .collect(),
    ));
    // Turbidity: 3.5 NTU + 0.05 noise, 2 decimals, a rain spike in the afternoon.
    out.push((
        "turbidity (noise + spike, 0.01)",
        Quantity::Turbidity,
        (0..seconds)
            .map(|i| {
                let spike = if (50_000..54_000).contains(&(i % DAY)) {
                    40.0 * (((i % DAY) - 50_000) as f64 / 4000.0 * std::f64::consts::PI).sin()
                } else {
                    0.0
                };
                p(ts(i, &mut r), round_to(3.5 + spike + 0.05 * r.gauss(), 2))
            })
            .collect(),
    ));
    // Cover switch: closed, opened twice a day for 10 minutes.
    out.push((
        "cover_open (bool)",
        Quantity::CoverOpen,
        (0..seconds)
            .map(|i| {
                let open =
                    (30_000..30_600).contains(&(i % DAY)) || (70_000..70_600).contains(&(i % DAY));
                p(ts(i, &mut r), if open { 1.0 } else { 0.0 })
            })
            .collect(),
    ));
    // Lamp status: ok, a lamp failure for an hour.
    out.push((
        "lamp_status (enum)",
        Quantity::LampStatus,
        (0..seconds)
            .map(|i| {
                let s = if (75_000..78_600).contains(&(i % DAY)) {
                    1.0
                } else {
                    0.0
                };
                p(ts(i, &mut r), s)
            })
            .collect(),
    ));
    // Energy counter, kWh with 3 decimals, 150 W at night.
    let mut wh = 1_234_567.0f64;
    out.push((
        "lamp_energy (counter, Wh)",
        Quantity::LampEnergy,
        (0..seconds)
            .map(|i| {
                let h = (i % DAY) / 3600;
                wh += match h {
                    0..=4 => 75.0,
                    5..=17 => 0.0,
                    _ => 150.0,
                } / 3600.0;
                p(ts(i, &mut r), wh.floor() / 1000.0)
            })
            .collect(),
    ));
    out
}
