//! The node types, one per device model in `profiles/`.

pub mod manhole;
pub mod streetlight;
pub mod water_level;
pub mod water_quality;
pub mod weather;

use crate::map::MapPoint;

/// Every node's model name and register map, for looking a profile's `model` up.
pub const MODELS: &[(&str, &[MapPoint])] = &[
    (streetlight::MODEL, streetlight::MAP),
    (water_level::MODEL, water_level::MAP),
    (water_quality::MODEL, water_quality::MAP),
    (manhole::MODEL, manhole::MAP),
    (weather::MODEL, weather::MAP),
];

/// The register map of a model.
pub fn register_map(model: &str) -> Option<&'static [MapPoint]> {
    MODELS
        .iter()
        .find(|(m, _)| *m == model)
        .map(|(_, map)| *map)
}

/// The part of a node that failed during a sample; its points read as unavailable
/// (Modbus exception 4) until it answers again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The energy meter (ADE7953).
    Meter,
    /// The dimming PWM output.
    Dimmer,
    /// The lamp relay.
    Relay,
    /// The LED driver's fault input.
    DriverFaultInput,
    /// The distance gauge's UART, or no echo for too long.
    Gauge,
    /// A temperature/humidity sensor (SHT4x).
    Hygrometer,
    /// The barometer (LPS22HB).
    Barometer,
    /// The fuel gauge (MAX17048).
    FuelGauge,
    /// An EZO circuit.
    Probe,
    /// The turbidity ADC (ADS1115).
    TurbidityAdc,
    /// The accelerometer (LIS3DH).
    Accelerometer,
    /// The cover's reed switch input.
    ReedSwitch,
}

/// Records the first failure of a sample while the others still run.
#[derive(Default)]
pub(crate) struct FirstFailure(Option<Part>);

impl FirstFailure {
    /// Keeps `Some(value)` on success, notes the part on failure and gives `None`.
    pub(crate) fn check<T, E>(&mut self, part: Part, r: Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(_) => {
                self.0.get_or_insert(part);
                None
            }
        }
    }

    /// The sample's verdict.
    pub(crate) fn result(self) -> Result<(), Part> {
        match self.0 {
            Some(p) => Err(p),
            None => Ok(()),
        }
    }
}
