//! The real firmware nodes wired to simulated peripherals, chosen by the profile's model.

use firmware::drivers::ade7953::{self, Ade7953};
use firmware::drivers::ads1115::{self, Ads1115};
use firmware::drivers::ezo::Circuit;
use firmware::drivers::lis3dh::{self, Lis3dh};
use firmware::drivers::lps22hb::{self, Lps22hb};
use firmware::drivers::max17048::{self, Max17048};
use firmware::drivers::sht4x::{self, Sht4x};
use firmware::drivers::ultrasonic::Ultrasonic;
use firmware::map::MapPoint;
use firmware::modbus::DataModel;
use firmware::nodes::manhole::{self, CoverConfig, ManholeNode};
use firmware::nodes::streetlight::{self, LampConfig, StreetlightNode};
use firmware::nodes::water_level::{self, LevelConfig, WaterLevelNode};
use firmware::nodes::water_quality::{self, Probes, TurbidityCalibration, WaterQualityNode};
use firmware::nodes::weather::{self, RAIN_MM_PER_TIP, WIND_MS_PER_HZ, WeatherNode};
use firmware::nodes::{self, Part};
use protocols::profile::DeviceProfile;

use crate::peripherals::chips::{
    Ade7953Model, Ads1115Model, AirProbe, EzoModel, Lis3dhModel, Lps22hbModel, Max17048Model,
    Sht4xModel,
};
use crate::peripherals::i2c::SimI2c;
use crate::peripherals::pins::{LampCircuit, NoDelay, SimInput, SimPwm, SimRelay};
use crate::peripherals::uart::GaugeUart;
use crate::world::Site;

/// Why a simulated device cannot be built from a profile.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No firmware node has this model.
    #[error("no firmware node for model `{model}` (known: {known})")]
    UnknownModel {
        /// The profile's model.
        model: String,
        /// The models the firmware has.
        known: String,
    },
    /// The profile describes a different register map than the firmware serves.
    #[error("profile for `{model}` does not match the firmware's register map: {detail}")]
    Mismatch {
        /// The model.
        model: String,
        /// The first difference.
        detail: String,
    },
    /// A part did not come up.
    #[error("{0:?} failed to start")]
    Init(Part),
}

/// Checks that a profile describes exactly the firmware's map for its model.
pub fn check_profile(profile: &DeviceProfile) -> Result<&'static [MapPoint], BuildError> {
    let model = profile.source.model.as_str();
    let map = nodes::register_map(model).ok_or_else(|| BuildError::UnknownModel {
        model: model.to_string(),
        known: nodes::MODELS
            .iter()
            .map(|(m, _)| *m)
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let mismatch = |detail: String| BuildError::Mismatch {
        model: model.to_string(),
        detail,
    };
    if map.len() != profile.points.len() {
        return Err(mismatch(format!(
            "the firmware has {} points, the profile {}",
            map.len(),
            profile.points.len()
        )));
    }
    for p in &profile.points {
        let m = map
            .iter()
            .find(|m| m.quantity == p.quantity)
            .ok_or_else(|| mismatch(format!("the firmware has no `{}`", p.quantity.name())))?;
        let same = m.table == p.table
            && m.address == p.address
            && m.data_type == p.data_type
            && m.word_order == p.word_order
            && m.scale == p.scale
            && m.offset == p.offset
            && m.unit == p.unit
            && m.writable == p.writable
            && (m.min, m.max) == p.range;
        if !same {
            return Err(mismatch(format!(
                "`{}`: firmware {:?} {} {} {} scale {} unit {} range {:?}, profile {:?} {} {} {} scale {} unit {} range {:?}",
                p.quantity.name(),
                m.table,
                m.address,
                m.data_type,
                m.word_order.name(),
                m.scale,
                m.unit,
                (m.min, m.max),
                p.table,
                p.address,
                p.data_type,
                p.word_order.name(),
                p.scale,
                p.unit,
                p.range
            )));
        }
    }
    Ok(map)
}

/// Turns rain and wind into the reed-switch pulses the weather station counts.
#[derive(Debug, Default)]
pub struct Pulses {
    rain_tips: f64,
    wind_pulses: f64,
    last_ms: Option<u64>,
}

/// A firmware node on simulated hardware.
pub enum SimNode {
    /// `generic-streetlight-v1`, with the lamp circuit its PWM and relay drive.
    Streetlight(
        Box<StreetlightNode<SimI2c, SimPwm, SimRelay, SimInput>>,
        LampCircuit,
    ),
    /// `radar-level-rl10`.
    WaterLevel(Box<WaterLevelNode<GaugeUart, SimI2c, NoDelay>>),
    /// `wq-probe-5in1`.
    WaterQuality(Box<WaterQualityNode<SimI2c>>),
    /// `manhole-mc3`.
    Manhole(Box<ManholeNode<SimI2c, SimInput>>),
    /// `weather-ws6`.
    Weather(Box<WeatherNode<SimI2c, NoDelay>>, Site, Pulses),
}

impl SimNode {
    /// Builds and starts the node for a profile at a site.
    pub fn build(profile: &DeviceProfile, site: &Site) -> Result<SimNode, BuildError> {
        check_profile(profile)?;
        let bus = SimI2c::new();
        let site = site.clone();
        let node = match profile.source.model.as_str() {
            streetlight::MODEL => {
                let circuit = LampCircuit::default();
                let cal = ade7953::Calibration::default();
                bus.attach(
                    ade7953::ADDRESS,
                    Ade7953Model::new(site.clone(), circuit.clone(), cal),
                );
                // The driver's fault output is open-drain with a pull-up: high while healthy.
                let fault = SimInput::new(site.clone(), |c| !c.site.driver_fault);
                let mut node = StreetlightNode::new(
                    Ade7953::new(bus, cal),
                    circuit.pwm(),
                    circuit.relay(),
                    fault,
                    LampConfig::default(),
                );
                node.init().map_err(BuildError::Init)?;
                SimNode::Streetlight(Box::new(node), circuit)
            }
            water_level::MODEL => {
                let config = LevelConfig::default();
                bus.attach(
                    sht4x::ADDRESS,
                    Sht4xModel::new(site.clone(), AirProbe::Housing),
                );
                bus.attach(max17048::ADDRESS, Max17048Model::new(site.clone()));
                let uart = GaugeUart::new(site.clone(), config.mount_height_mm as f64);
                let mut node = WaterLevelNode::new(
                    Ultrasonic::new(uart),
                    Sht4x::new(bus.clone()),
                    Max17048::new(bus),
                    NoDelay,
                    config,
                );
                node.init().map_err(BuildError::Init)?;
                SimNode::WaterLevel(Box::new(node))
            }
            water_quality::MODEL => {
                let cal = TurbidityCalibration::default();
                for circuit in [
                    Circuit::Ph,
                    Circuit::DissolvedOxygen,
                    Circuit::Conductivity,
                    Circuit::Temperature,
                ] {
                    bus.attach(
                        circuit.default_address(),
                        EzoModel::new(site.clone(), circuit),
                    );
                }
                bus.attach(ads1115::ADDRESS, Ads1115Model::new(site.clone(), cal));
                let probes = Probes::new(bus.clone(), bus.clone(), bus.clone(), bus.clone());
                SimNode::WaterQuality(Box::new(WaterQualityNode::new(
                    probes,
                    Ads1115::new(bus, ads1115::ADDRESS),
                    cal,
                )))
            }
            manhole::MODEL => {
                bus.attach(lis3dh::ADDRESS, Lis3dhModel::new(site.clone()));
                bus.attach(max17048::ADDRESS, Max17048Model::new(site.clone()));
                // The reed closes (pin low) while the cover's magnet sits over it.
                let reed = SimInput::new(site.clone(), |c| c.site.cover_lifted);
                let mut node = ManholeNode::new(
                    Lis3dh::new(bus.clone(), lis3dh::ADDRESS),
                    Max17048::new(bus),
                    reed,
                    CoverConfig::default(),
                );
                node.init().map_err(BuildError::Init)?;
                SimNode::Manhole(Box::new(node))
            }
            weather::MODEL => {
                bus.attach(
                    sht4x::ADDRESS,
                    Sht4xModel::new(site.clone(), AirProbe::Outdoor),
                );
                bus.attach(lps22hb::ADDRESS, Lps22hbModel::new(site.clone()));
                let mut node = WeatherNode::new(
                    Sht4x::new(bus.clone()),
                    Lps22hb::new(bus, lps22hb::ADDRESS),
                    NoDelay,
                );
                node.init().map_err(BuildError::Init)?;
                SimNode::Weather(Box::new(node), site, Pulses::default())
            }
            // check_profile only passes models of nodes::MODELS.
            other => {
                return Err(BuildError::UnknownModel {
                    model: other.to_string(),
                    known: String::new(),
                });
            }
        };
        Ok(node)
    }

    /// The model name.
    pub fn model(&self) -> &'static str {
        match self {
            SimNode::Streetlight(..) => streetlight::MODEL,
            SimNode::WaterLevel(_) => water_level::MODEL,
            SimNode::WaterQuality(_) => water_quality::MODEL,
            SimNode::Manhole(_) => manhole::MODEL,
            SimNode::Weather(..) => weather::MODEL,
        }
    }

    /// The lamp circuit (relay contact, PWM duty) of a streetlight controller: what the
    /// firmware actually drives, for observers outside the Modbus interface.
    pub fn lamp_circuit(&self) -> Option<LampCircuit> {
        match self {
            SimNode::Streetlight(_, circuit) => Some(circuit.clone()),
            _ => None,
        }
    }

    /// One sampling cycle of the firmware at node time `now_ms`.
    pub fn sample(&mut self, now_ms: u64) -> Result<(), Part> {
        match self {
            SimNode::Streetlight(n, _) => n.sample(now_ms),
            SimNode::WaterLevel(n) => n.sample(now_ms),
            SimNode::WaterQuality(n) => n.sample(now_ms),
            SimNode::Manhole(n) => n.sample(now_ms),
            SimNode::Weather(n, site, pulses) => {
                // The switches closed while the firmware was away: deliver their interrupts.
                let w = site.world().weather();
                if let Some(last) = pulses.last_ms {
                    let dt = now_ms.saturating_sub(last) as f64 / 1000.0;
                    pulses.rain_tips += w.rain_rate / 3600.0 * dt / RAIN_MM_PER_TIP;
                    pulses.wind_pulses += w.wind_speed / WIND_MS_PER_HZ * dt;
                    while pulses.rain_tips >= 1.0 {
                        n.record_rain_tip();
                        pulses.rain_tips -= 1.0;
                    }
                    while pulses.wind_pulses >= 1.0 {
                        n.record_wind_pulse();
                        pulses.wind_pulses -= 1.0;
                    }
                }
                pulses.last_ms = Some(now_ms);
                n.sample(now_ms)
            }
        }
    }

    /// The Modbus tables the firmware serves.
    pub fn data_model(&mut self) -> &mut dyn DataModel {
        match self {
            SimNode::Streetlight(n, _) => n.as_mut(),
            SimNode::WaterLevel(n) => n.as_mut(),
            SimNode::WaterQuality(n) => n.as_mut(),
            SimNode::Manhole(n) => n.as_mut(),
            SimNode::Weather(n, ..) => n.as_mut(),
        }
    }
}
