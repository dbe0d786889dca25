//! Who the load consists of: agents with their credentials and the devices behind them, and
//! the readings those devices produce.
//!
//! A plan is either generated (and written as a hub.toml for the hub under test) or read from
//! an existing hub.toml (agents with plain secrets and their devices). Device kinds and their
//! quantities follow the shipped profiles (`profiles/*.toml`), and values move like the real
//! thing: slow daily and tidal curves, sensor noise, the sensors' resolution, counters that
//! only grow.

use std::sync::Arc;

use hub::config::{AgentConfig, AppConfig, DeviceConfig, HubConfig};
use protocols::batch::Reading;
use protocols::{Quality, Quantity, Value};

/// A device model of the district, with the quantities its profile reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `profiles/streetlight-lc200.toml`: 6 readings.
    Streetlight,
    /// `profiles/water-level-radar.toml`: 3 readings.
    WaterLevel,
    /// `profiles/water-quality-5in1.toml`: 5 readings.
    WaterQuality,
    /// `profiles/weather-station.toml`: 5 readings.
    Weather,
    /// `profiles/manhole-cover.toml`: 3 readings.
    Manhole,
}

impl Kind {
    /// The kind's name in hub.toml and feed topics.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Streetlight => "streetlight",
            Kind::WaterLevel => "water_level",
            Kind::WaterQuality => "water_quality",
            Kind::Weather => "weather",
            Kind::Manhole => "manhole",
        }
    }

    /// The kind for a hub.toml kind name (other kinds are not simulated).
    pub fn from_name(name: &str) -> Option<Kind> {
        Some(match name {
            "streetlight" => Kind::Streetlight,
            "water_level" => Kind::WaterLevel,
            "water_quality" => Kind::WaterQuality,
            "weather" => Kind::Weather,
            "manhole" => Kind::Manhole,
            _ => return None,
        })
    }

    /// The id prefix of generated devices.
    fn prefix(self) -> &'static str {
        match self {
            Kind::Streetlight => "SL",
            Kind::WaterLevel => "WL",
            Kind::WaterQuality => "WQ",
            Kind::Weather => "WS",
            Kind::Manhole => "MH",
        }
    }

    fn dept(self) -> &'static str {
        match self {
            Kind::Streetlight => "lighting",
            Kind::WaterLevel | Kind::WaterQuality => "water",
            Kind::Weather => "environment",
            Kind::Manhole => "drainage",
        }
    }

    /// The quantities one poll reads.
    pub fn quantities(self) -> &'static [Quantity] {
        use Quantity::*;
        match self {
            Kind::Streetlight => &[
                LampVoltage,
                LampCurrent,
                LampPower,
                LampEnergy,
                LampStatus,
                DimmingLevel,
            ],
            Kind::WaterLevel => &[WaterLevel, AirTemperature, BatteryLevel],
            Kind::WaterQuality => &[
                Ph,
                Turbidity,
                Conductivity,
                DissolvedOxygen,
                WaterTemperature,
            ],
            Kind::Weather => &[
                Rainfall,
                AirTemperature,
                RelativeHumidity,
                AirPressure,
                WindSpeed,
            ],
            Kind::Manhole => &[CoverOpen, TiltAngle, BatteryLevel],
        }
    }
}

/// The mix of a generated district: mostly streetlights (of every 10 devices: 6 streetlights,
/// then one of each other kind).
fn kind_of(i: usize) -> Kind {
    match i % 10 {
        0..=5 => Kind::Streetlight,
        6 => Kind::WaterLevel,
        7 => Kind::WaterQuality,
        8 => Kind::Weather,
        _ => Kind::Manhole,
    }
}

/// One simulated device.
#[derive(Clone, Debug)]
pub struct DevicePlan {
    /// Its id, as registered at the hub.
    pub id: Arc<str>,
    /// Its model.
    pub kind: Kind,
    /// Seeds its value curves and noise.
    pub seed: u64,
}

/// One simulated agent.
#[derive(Clone, Debug)]
pub struct AgentPlan {
    /// Its id (client id and user name).
    pub id: String,
    /// Its password.
    pub secret: String,
    /// The devices behind it.
    pub devices: Vec<DevicePlan>,
}

/// The whole simulated fleet.
#[derive(Clone, Debug)]
pub struct FleetPlan {
    /// The agents.
    pub agents: Vec<AgentPlan>,
}

/// The app the measuring subscriber logs in as.
#[derive(Clone, Debug)]
pub struct ProbeApp {
    /// App id.
    pub id: String,
    /// Its secret.
    pub secret: String,
}

/// Why a hub.toml cannot drive the load.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// No agent has a plain secret and a simulated device.
    #[error(
        "no usable agent in the hub config: the load needs [[agents]] with a plain `secret` and \
         [[devices]] of kind streetlight, water_level, water_quality, weather or manhole behind them"
    )]
    NoAgents,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64: a good, cheap seed scrambler.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn seed_of(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl FleetPlan {
    /// `agents` agents (`LOAD-0000`...) with `devices_per_agent` devices each, secrets derived
    /// from `secret_seed` (so a plan written once can be regenerated identically).
    pub fn generate(agents: usize, devices_per_agent: usize, secret_seed: u64) -> FleetPlan {
        let mut n = 0usize;
        let agents = (0..agents)
            .map(|a| {
                let devices = (0..devices_per_agent)
                    .map(|_| {
                        let kind = kind_of(n);
                        let id: Arc<str> = format!("{}-{n:06}", kind.prefix()).into();
                        n += 1;
                        DevicePlan {
                            seed: seed_of(&id),
                            id,
                            kind,
                        }
                    })
                    .collect();
                AgentPlan {
                    id: format!("LOAD-{a:04}"),
                    secret: format!("{:016x}", mix(secret_seed ^ (a as u64 + 1))),
                    devices,
                }
            })
            .collect();
        FleetPlan { agents }
    }

    /// The agents of an existing hub.toml that have a plain secret, with their devices of
    /// simulated kinds.
    pub fn from_hub_config(cfg: &HubConfig) -> Result<FleetPlan, PlanError> {
        let agents: Vec<AgentPlan> = cfg
            .agents
            .iter()
            .filter_map(|a| {
                let secret = a.secret.clone()?;
                let devices: Vec<DevicePlan> = cfg
                    .devices
                    .iter()
                    .filter(|d| d.agent.as_deref() == Some(a.id.as_str()))
                    .filter_map(|d| {
                        Some(DevicePlan {
                            kind: Kind::from_name(&d.kind)?,
                            seed: seed_of(&d.id),
                            id: d.id.as_str().into(),
                        })
                    })
                    .collect();
                (!devices.is_empty()).then(|| AgentPlan {
                    id: a.id.clone(),
                    secret,
                    devices,
                })
            })
            .collect();
        if agents.is_empty() {
            return Err(PlanError::NoAgents);
        }
        Ok(FleetPlan { agents })
    }

    /// All devices.
    pub fn device_count(&self) -> usize {
        self.agents.iter().map(|a| a.devices.len()).sum()
    }

    /// A hub.toml registering every agent and device of the plan, and the probe app with a
    /// grant on every feed.
    pub fn hub_config(&self, probe: &ProbeApp) -> HubConfig {
        let mut cfg = HubConfig::default();
        for (ai, a) in self.agents.iter().enumerate() {
            cfg.agents.push(AgentConfig {
                id: a.id.clone(),
                secret: Some(a.secret.clone()),
                ..AgentConfig::default()
            });
            for (di, d) in a.devices.iter().enumerate() {
                // Spread over a district of ~5 x 5 km around 30.42 N, 120.30 E.
                let lat = 30.40 + (ai % 50) as f64 * 0.001 + (di % 10) as f64 * 0.0001;
                let lon = 120.28 + (ai / 50) as f64 * 0.001 + (di / 10 % 10) as f64 * 0.0001;
                cfg.devices.push(DeviceConfig {
                    id: d.id.to_string(),
                    kind: d.kind.name().to_string(),
                    agent: Some(a.id.clone()),
                    dept: Some(d.kind.dept().to_string()),
                    lat: Some((lat * 1e5).round() / 1e5),
                    lon: Some((lon * 1e5).round() / 1e5),
                    ..DeviceConfig::default()
                });
            }
        }
        cfg.apps.push(AppConfig {
            id: probe.id.clone(),
            secret: Some(probe.secret.clone()),
            grants: vec!["feeds/#".into(), "deadletter/#".into()],
            ..AppConfig::default()
        });
        cfg
    }
}

/// Rounds to a sensor's resolution (`10^-decimals`), as the agent's register scaling does.
fn round_to(v: f64, decimals: i32) -> f64 {
    let p = 10f64.powi(decimals);
    (v * p).round() / p
}

/// A device's value source: deterministic curves plus noise from a small PRNG.
pub struct Signal {
    rng: u64,
    /// Counters (energy, rainfall) accumulate.
    energy_kwh: f64,
    rain_mm: f64,
}

impl Signal {
    /// The signal of a device.
    pub fn new(seed: u64) -> Signal {
        Signal {
            rng: mix(seed) | 1,
            energy_kwh: 1000.0 + (seed % 5000) as f64,
            rain_mm: 0.0,
        }
    }

    fn noise(&mut self) -> f64 {
        // xorshift64*, mapped to [-1, 1).
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    /// Appends one poll's readings of `kind` at `ts_ms` to `out`.
    pub fn poll(&mut self, kind: Kind, ts_ms: i64, out: &mut Vec<Reading>) {
        let day = (ts_ms as f64 / 86_400_000.0).fract() * std::f64::consts::TAU;
        let tide = (ts_ms as f64 / 44_712_000.0).fract() * std::f64::consts::TAU; // 12.42 h
        let hour = (ts_ms / 3_600_000) % 24;
        let num = |q: Quantity, v: f64| Reading {
            quantity: q.code(),
            value: Value::Number(v),
            quality: Quality::Good,
        };
        use Quantity::*;
        match kind {
            Kind::Streetlight => {
                let dimming = match hour {
                    10..=21 => 0.0,   // daylight, UTC+8: lamps off
                    22..=23 => 100.0, // dusk and evening
                    _ => 40.0,        // night: dimmed
                };
                let voltage = round_to(230.0 + 3.0 * day.sin() + 0.8 * self.noise(), 1);
                let power = if dimming == 0.0 {
                    round_to(1.5 + 0.1 * self.noise(), 1)
                } else {
                    round_to(150.0 * dimming / 100.0 + 0.5 * self.noise(), 1)
                };
                let current = round_to(power / voltage, 3);
                self.energy_kwh += power / 3_600_000.0; // one second of consumption
                out.extend_from_slice(&[
                    num(LampVoltage, voltage),
                    num(LampCurrent, current),
                    num(LampPower, power),
                    num(LampEnergy, round_to(self.energy_kwh, 3)),
                    Reading {
                        quantity: LampStatus.code(),
                        value: Value::State(0),
                        quality: Quality::Good,
                    },
                    num(DimmingLevel, dimming),
                ]);
            }
            Kind::WaterLevel => {
                let level = round_to(2.1 + 0.6 * tide.sin() + 0.002 * self.noise(), 3);
                out.extend_from_slice(&[
                    num(WaterLevel, level),
                    num(AirTemperature, round_to(18.0 + 6.0 * day.sin(), 1)),
                    num(BatteryLevel, round_to(92.0 + 0.2 * self.noise(), 1)),
                ]);
            }
            Kind::WaterQuality => out.extend_from_slice(&[
                num(
                    Ph,
                    round_to(7.2 + 0.15 * day.sin() + 0.01 * self.noise(), 2),
                ),
                num(Turbidity, round_to(6.0 + 1.5 * self.noise().abs(), 1)),
                num(Conductivity, round_to(450.0 + 20.0 * day.cos(), 0)),
                num(
                    DissolvedOxygen,
                    round_to(8.2 + 0.4 * day.sin() + 0.02 * self.noise(), 2),
                ),
                num(WaterTemperature, round_to(17.5 + 2.0 * day.sin(), 1)),
            ]),
            Kind::Weather => {
                if self.noise() > 0.9 {
                    self.rain_mm += 0.01;
                }
                out.extend_from_slice(&[
                    num(Rainfall, round_to(self.rain_mm, 2)),
                    num(AirTemperature, round_to(19.0 + 6.0 * day.sin(), 1)),
                    num(RelativeHumidity, round_to(65.0 - 15.0 * day.sin(), 1)),
                    num(AirPressure, round_to(1013.0 + 2.0 * day.cos(), 1)),
                    num(WindSpeed, round_to(3.0 + 1.5 * self.noise().abs(), 1)),
                ]);
            }
            Kind::Manhole => out.extend_from_slice(&[
                Reading {
                    quantity: CoverOpen.code(),
                    value: Value::Bool(false),
                    quality: Quality::Good,
                },
                num(TiltAngle, round_to(0.4 + 0.1 * self.noise(), 1)),
                num(BatteryLevel, round_to(88.0 + 0.2 * self.noise(), 1)),
            ]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_is_valid_and_readable_back() {
        let plan = FleetPlan::generate(3, 20, 7);
        assert_eq!(plan.device_count(), 60);
        let probe = ProbeApp {
            id: "bench-feeds".into(),
            secret: "probe-secret".into(),
        };
        let cfg = plan.hub_config(&probe);
        let text = toml::to_string(&cfg).unwrap();
        let back = HubConfig::from_toml(&text).unwrap();
        let again = FleetPlan::from_hub_config(&back).unwrap();
        assert_eq!(again.agents.len(), 3);
        assert_eq!(again.agents[1].secret, plan.agents[1].secret);
        assert_eq!(again.agents[2].devices[5].id, plan.agents[2].devices[5].id);
        // Deterministic: the same seed gives the same secrets.
        assert_eq!(
            FleetPlan::generate(3, 20, 7).agents[0].secret,
            plan.agents[0].secret
        );
    }

    #[test]
    fn readings_are_canonical_and_plausible() {
        for kind in [
            Kind::Streetlight,
            Kind::WaterLevel,
            Kind::WaterQuality,
            Kind::Weather,
            Kind::Manhole,
        ] {
            let mut s = Signal::new(42);
            let mut out = Vec::new();
            for t in 0..200 {
                out.clear();
                s.poll(kind, 1_795_334_400_000 + t * 3_600_000, &mut out);
                assert_eq!(out.len(), kind.quantities().len());
                for (r, q) in out.iter().zip(kind.quantities()) {
                    assert_eq!(r.quantity, q.code());
                    assert!(q.is_plausible(&r.value), "{q:?} {:?}", r.value);
                }
            }
        }
    }
}
