//! The district's physics on demo time: weather over a day, convective storms, the river's
//! response to rain at each gauging station, and water quality following the runoff.
//!
//! Pure state and arithmetic (no handles, no I/O), so it is tested on its own; the scenario
//! driver copies the results into the simulated world the firmware senses.
//!
//! - Rain: a storm is an asymmetric hyetograph (intensity rising to its peak at about a third
//!   of its duration, then easing), with convective cells on top.
//! - River stage: effective rain (runoff coefficient x rain) over the station's catchment,
//!   routed through a Nash cascade of two linear reservoirs (the lag and attenuation of an
//!   urban catchment: the river peaks well after the rain), added to base flow, turned into a
//!   level by the station's rating curve `Q = C (h - datum)^b`. Each reservoir is integrated
//!   exactly for piecewise-constant input, so any time step is stable (a speed-up only
//!   coarsens it).
//! - Water quality: turbidity rises with quick flow while sediment is available (the first
//!   flush washes it out, it recovers over days); rain dilutes conductivity, lowers pH a
//!   little and cools the water; dissolved oxygen follows the day (photosynthesis) and drops
//!   with storm runoff.

use std::f64::consts::TAU;

/// One storm: when, how long, how hard.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Storm {
    /// Demo seconds after the demo's start when rain begins.
    pub start_s: f64,
    /// How long it rains, demo seconds.
    pub duration_s: f64,
    /// Peak intensity, mm/h.
    pub peak_mm_h: f64,
}

/// Where in the storm the peak intensity falls (fraction of its duration).
const PEAK_AT: f64 = 0.35;

impl Storm {
    /// Rain intensity at demo time `t`, mm/h.
    pub fn rain_rate(&self, t: f64) -> f64 {
        let x = (t - self.start_s) / self.duration_s;
        if !(0.0..=1.0).contains(&x) {
            return 0.0;
        }
        let shape = if x < PEAK_AT {
            (x / PEAK_AT).powf(1.5)
        } else {
            ((1.0 - x) / (1.0 - PEAK_AT)).powf(1.5)
        };
        // Convective cells: a few minutes' pulses on the envelope.
        let cells = 1.0 + 0.15 * (TAU * t / 420.0).sin() + 0.08 * (TAU * t / 170.0 + 1.0).sin();
        (self.peak_mm_h * shape * cells).max(0.0)
    }

    /// Demo time of the peak intensity.
    pub fn peak_s(&self) -> f64 {
        self.start_s + PEAK_AT * self.duration_s
    }

    /// Demo time the rain stops.
    pub fn end_s(&self) -> f64 {
        self.start_s + self.duration_s
    }
}

/// A gauging station's catchment and rating curve.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reach {
    /// Catchment area upstream of the station, km².
    pub area_km2: f64,
    /// Share of rain that runs off (sealed urban surfaces run off most).
    pub runoff_coeff: f64,
    /// Storage constant of each of the two linear reservoirs, demo seconds.
    pub k_s: f64,
    /// Dry-weather flow, m³/s.
    pub base_flow: f64,
    /// Stage at dry-weather flow, m above the gauge datum.
    pub base_level: f64,
    /// Stage of zero flow, m.
    pub zero_flow_level: f64,
    /// Exponent `b` of the rating curve `Q = C (h - h0)^b`.
    pub rating_exp: f64,
}

impl Reach {
    /// `C` of the rating curve, from the dry-weather point.
    fn rating_c(&self) -> f64 {
        self.base_flow / (self.base_level - self.zero_flow_level).powf(self.rating_exp)
    }

    /// Stage for a flow, m.
    pub fn level_for(&self, flow: f64) -> f64 {
        self.zero_flow_level + (flow.max(0.0) / self.rating_c()).powf(1.0 / self.rating_exp)
    }
}

/// m³/s of runoff per (mm/h over one km²).
const MM_H_KM2_TO_M3_S: f64 = 1000.0 / 3600.0;

/// The river at one station: the reach and its two reservoirs.
#[derive(Clone, Debug)]
pub struct River {
    /// The reach.
    pub reach: Reach,
    s1: f64,
    s2: f64,
}

impl River {
    /// A river in dry weather.
    pub fn new(reach: Reach) -> River {
        River {
            reach,
            s1: 0.0,
            s2: 0.0,
        }
    }

    /// Advances by `dt` demo seconds under `rain_mm_h`.
    pub fn step(&mut self, rain_mm_h: f64, dt: f64) {
        let r = &self.reach;
        let inflow = rain_mm_h * r.runoff_coeff * r.area_km2 * MM_H_KM2_TO_M3_S;
        let decay = (-dt / r.k_s).exp();
        // Exact for constant inflow over the step; the second reservoir takes the first's mean
        // outflow over the step.
        let s1_next = self.s1 * decay + inflow * r.k_s * (1.0 - decay);
        let q1_mean = (inflow * dt - (s1_next - self.s1)) / dt.max(1e-9);
        self.s1 = s1_next;
        self.s2 = self.s2 * decay + q1_mean * r.k_s * (1.0 - decay);
    }

    /// Storm runoff arriving at the station now, m³/s.
    pub fn quick_flow(&self) -> f64 {
        self.s2 / self.reach.k_s
    }

    /// Total flow, m³/s.
    pub fn flow(&self) -> f64 {
        self.reach.base_flow + self.quick_flow()
    }

    /// Stage, m.
    pub fn level(&self) -> f64 {
        self.reach.level_for(self.flow())
    }

    /// Share of the flow that is fresh storm runoff (0 in dry weather).
    pub fn runoff_share(&self) -> f64 {
        let f = self.flow();
        if f > 0.0 { self.quick_flow() / f } else { 0.0 }
    }
}

/// Dry-weather water quality of a station.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QualityBase {
    /// Turbidity, NTU.
    pub turbidity: f64,
    /// pH.
    pub ph: f64,
    /// Conductivity, µS/cm.
    pub conductivity: f64,
    /// Dissolved oxygen, mg/L.
    pub dissolved_oxygen: f64,
    /// Mean water temperature, °C.
    pub water_temperature: f64,
}

/// Water quality at a station, following the river there.
#[derive(Clone, Debug)]
pub struct Quality {
    /// Dry-weather values.
    pub base: QualityBase,
    /// Sediment that the next runoff can wash out, 0..1.
    supply: f64,
    /// An offset on pH from a discharge upstream (scenario).
    pub ph_offset: f64,
}

/// What a quality probe faces.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QualityNow {
    /// NTU.
    pub turbidity: f64,
    /// pH.
    pub ph: f64,
    /// µS/cm.
    pub conductivity: f64,
    /// mg/L.
    pub dissolved_oxygen: f64,
    /// °C.
    pub water_temperature: f64,
}

/// Demo seconds for washed-out sediment to come back (about two days).
const SUPPLY_RECOVERY_S: f64 = 2.0 * 86_400.0;

impl Quality {
    /// Quality in dry weather with full sediment supply.
    pub fn new(base: QualityBase) -> Quality {
        Quality {
            base,
            supply: 1.0,
            ph_offset: 0.0,
        }
    }

    /// Advances by `dt` demo seconds with the river at the station, at local hour `hour`.
    pub fn step(&mut self, river: &River, dt: f64, hour: f64) -> QualityNow {
        let quick = river.quick_flow();
        let share = river.runoff_share();
        // The first flush: every m³ of runoff carries some of what lies on the streets away.
        let wash = quick * dt / (river.reach.area_km2 * 20_000.0);
        self.supply =
            (self.supply - wash + (1.0 - self.supply) * dt / SUPPLY_RECOVERY_S).clamp(0.05, 1.0);
        let b = self.base;
        let day = (TAU * (hour - 15.0) / 24.0).cos(); // 1 at 15:00
        QualityNow {
            turbidity: b.turbidity + 45.0 * quick.powf(0.8) * self.supply,
            ph: (b.ph - 0.35 * share + 0.08 * day + self.ph_offset).clamp(0.0, 14.0),
            conductivity: b.conductivity * (1.0 - 0.45 * share),
            dissolved_oxygen: (b.dissolved_oxygen + 0.6 * day - 1.2 * share).max(0.5),
            water_temperature: b.water_temperature + 0.8 * (TAU * (hour - 17.0) / 24.0).cos()
                - 1.2 * share,
        }
    }
}

/// The district's weather now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeatherNow {
    /// °C.
    pub air_temperature: f64,
    /// %.
    pub relative_humidity: f64,
    /// hPa.
    pub air_pressure: f64,
    /// mm/h.
    pub rain_rate: f64,
    /// m/s.
    pub wind_speed: f64,
}

/// Weather over the day plus the storms.
#[derive(Clone, Debug, Default)]
pub struct Sky {
    /// Storms, any order.
    pub storms: Vec<Storm>,
    /// Cold outflow and wet air after rain, relaxing over the next hour: 0..1.
    wet: f64,
}

/// Demo seconds the air takes to recover after rain.
const WET_RELAX_S: f64 = 45.0 * 60.0;

impl Sky {
    /// Rain intensity at demo time `t`, mm/h (storms may overlap).
    pub fn rain_rate(&self, t: f64) -> f64 {
        self.storms.iter().map(|s| s.rain_rate(t)).sum()
    }

    /// Advances by `dt` demo seconds to demo time `t` at local hour `hour`.
    pub fn step(&mut self, t: f64, dt: f64, hour: f64) -> WeatherNow {
        let rain = self.rain_rate(t);
        let target = (rain / 30.0).min(1.0);
        let a = 1.0 - (-dt / WET_RELAX_S).exp();
        // Wetting is fast, drying is slow.
        self.wet += if target > self.wet {
            (target - self.wet) * (a * 6.0).min(1.0)
        } else {
            (target - self.wet) * a
        };
        let day = (TAU * (hour - 14.5) / 24.0).cos(); // 1 at 14:30, -1 at 02:30
        // The pressure trough passes with the storm.
        let trough: f64 = self
            .storms
            .iter()
            .map(|s| {
                let d = (t - s.peak_s()) / 5400.0;
                2.5 * (-d * d).exp()
            })
            .sum();
        let gust = 0.6 * (TAU * t / 37.0).sin() + 0.4 * (TAU * t / 11.0 + 0.7).sin();
        WeatherNow {
            air_temperature: 21.0 + 4.5 * day - 4.0 * self.wet,
            relative_humidity: (63.0 - 16.0 * day + 30.0 * self.wet).clamp(15.0, 99.0),
            air_pressure: 1012.0 + 0.6 * (2.0 * TAU * (hour - 10.0) / 24.0).cos() - trough,
            rain_rate: rain,
            wind_speed: (2.2
                + 1.0 * day
                + 7.0 * (rain / 40.0).min(1.5)
                + gust * (1.0 + rain / 20.0))
                .max(0.0),
        }
    }
}

/// Mains voltage at the poles: sags in the evening peak, V.
pub fn mains_voltage(hour: f64, t: f64, seed: f64) -> f64 {
    let evening = (-((hour - 19.5) / 2.0).powi(2)).exp();
    229.0 - 5.0 * evening + 1.5 * (TAU * t / 600.0 + seed).sin()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(area: f64, k_min: f64, base: f64) -> Reach {
        Reach {
            area_km2: area,
            runoff_coeff: 0.6,
            k_s: k_min * 60.0,
            base_flow: 8.0 + 1.6 * area,
            base_level: base,
            zero_flow_level: 0.9,
            rating_exp: 1.6,
        }
    }

    /// Runs a storm over a river; returns (peak level, demo s of the peak, level at the end).
    fn run(storm: Storm, reach: Reach, dt: f64) -> (f64, f64, f64) {
        let mut r = River::new(reach);
        let (mut peak, mut at) = (r.level(), 0.0);
        let mut t = 0.0;
        while t < 6.0 * 3600.0 {
            r.step(storm.rain_rate(t), dt);
            t += dt;
            if r.level() > peak {
                peak = r.level();
                at = t;
            }
        }
        (peak, at, r.level())
    }

    #[test]
    fn a_storm_raises_the_river_late_and_it_falls_again() {
        let storm = Storm {
            start_s: 0.0,
            duration_s: 50.0 * 60.0,
            peak_mm_h: 55.0,
        };
        let reach = reach(9.0, 18.0, 2.35);
        assert!((River::new(reach).level() - 2.35).abs() < 1e-9);
        let (peak, at, end) = run(storm, reach, 1.0);
        assert!(peak > 3.1 && peak < 4.0, "peak {peak}");
        // The river peaks after the rain does (lag), and recedes.
        assert!(at > storm.peak_s() + 600.0, "peaked at {at}");
        assert!(end < 2.5, "end {end}");
        // A coarse step (a 60x speed-up with a 1 s tick) gives nearly the same hydrograph.
        let (peak60, at60, _) = run(storm, reach, 60.0);
        assert!((peak60 - peak).abs() < 0.05, "{peak60} vs {peak}");
        assert!((at60 - at).abs() < 300.0);
    }

    #[test]
    fn small_upstream_catchments_rise_less() {
        let storm = Storm {
            start_s: 0.0,
            duration_s: 50.0 * 60.0,
            peak_mm_h: 55.0,
        };
        let (up, ..) = run(storm, reach(3.0, 10.0, 2.1), 1.0);
        let (down, ..) = run(storm, reach(11.0, 20.0, 2.4), 1.0);
        assert!(up - 2.1 < down - 2.4, "{up} {down}");
        assert!(up < 3.0, "upstream {up}");
    }

    #[test]
    fn turbidity_flushes_first_and_rain_dilutes() {
        let storm = Storm {
            start_s: 0.0,
            duration_s: 3000.0,
            peak_mm_h: 55.0,
        };
        let mut r = River::new(reach(9.0, 18.0, 2.35));
        let mut q = Quality::new(QualityBase {
            turbidity: 10.0,
            ph: 7.3,
            conductivity: 480.0,
            dissolved_oxygen: 8.2,
            water_temperature: 18.0,
        });
        let dry = q.step(&r, 1.0, 12.0);
        let mut worst = dry;
        for i in 0..(3 * 3600) {
            r.step(storm.rain_rate(i as f64), 1.0);
            let now = q.step(&r, 1.0, 12.0);
            if now.turbidity > worst.turbidity {
                worst = now;
            }
        }
        assert!(worst.turbidity > 60.0, "{worst:?}");
        assert!(worst.conductivity < dry.conductivity);
        assert!(worst.ph < dry.ph);
    }

    #[test]
    fn weather_cools_and_wets_under_rain() {
        let mut sky = Sky {
            storms: vec![Storm {
                start_s: 600.0,
                duration_s: 3000.0,
                peak_mm_h: 50.0,
            }],
            ..Sky::default()
        };
        let before = sky.step(0.0, 1.0, 15.0);
        let mut during = before;
        for i in 1..2000 {
            during = sky.step(i as f64, 1.0, 15.0);
        }
        assert!(during.rain_rate > 20.0);
        assert!(during.air_temperature < before.air_temperature - 1.5);
        assert!(during.relative_humidity > before.relative_humidity + 10.0);
        assert!(during.air_pressure < before.air_pressure);
    }
}
