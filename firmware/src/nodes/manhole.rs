//! The manhole cover monitor (profile `manhole-cover.toml`).
//!
//! Hardware: a LIS3DH under the cover measures its tilt; a reed switch in the frame is closed
//! by a magnet in the seated cover (pulling the input low); a MAX17048 watches the primary
//! cell. The cover is open when the reed opens or the tilt passes
//! [`CoverConfig::open_tilt_degrees`] (a cover lifted and laid back askew).

use embedded_hal::digital::InputPin;
use embedded_hal::i2c::I2c;
use protocols::Quantity;
use protocols::registers::{DataType, Table};

use super::{FirstFailure, Part};
use crate::drivers::lis3dh::Lis3dh;
use crate::drivers::max17048::Max17048;
use crate::map::{MapPoint, Node};

/// The model name in the profile.
pub const MODEL: &str = "manhole-mc3";

/// The register map (profile `manhole-cover.toml`).
pub const MAP: &[MapPoint] = &[
    MapPoint::new(Quantity::CoverOpen, Table::Discrete, 0, DataType::Bool),
    MapPoint::new(Quantity::TiltAngle, Table::Input, 0, DataType::I16)
        .scale(0.1)
        .unit("deg"),
    MapPoint::new(Quantity::BatteryLevel, Table::Input, 1, DataType::U16).unit("%"),
];

/// Detection thresholds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CoverConfig {
    /// Tilt beyond which the cover counts as open, degrees.
    pub open_tilt_degrees: f32,
}

impl Default for CoverConfig {
    fn default() -> Self {
        CoverConfig {
            open_tilt_degrees: 15.0,
        }
    }
}

/// The monitor.
pub struct ManholeNode<I2C, REED> {
    accelerometer: Lis3dh<I2C>,
    battery: Max17048<I2C>,
    reed: REED,
    config: CoverConfig,
    tilt: Option<f32>,
    seated: Option<bool>,
    battery_pct: Option<f32>,
}

impl<I2C: I2c, REED: InputPin> ManholeNode<I2C, REED> {
    /// A monitor from its parts.
    pub fn new(
        accelerometer: Lis3dh<I2C>,
        battery: Max17048<I2C>,
        reed: REED,
        config: CoverConfig,
    ) -> Self {
        ManholeNode {
            accelerometer,
            battery,
            reed,
            config,
            tilt: None,
            seated: None,
            battery_pct: None,
        }
    }

    /// Starts the accelerometer and checks the fuel gauge.
    pub fn init(&mut self) -> Result<(), Part> {
        self.accelerometer.init().map_err(|_| Part::Accelerometer)?;
        self.battery.init().map_err(|_| Part::FuelGauge)
    }

    /// Whether the cover is open, if known: the reed alone suffices when the accelerometer
    /// fails, and a tilt past the threshold suffices when the reed fails.
    pub fn cover_open(&self) -> Option<bool> {
        let tilted = self.tilt.map(|t| t > self.config.open_tilt_degrees);
        match (self.seated, tilted) {
            (Some(seated), Some(tilted)) => Some(!seated || tilted),
            (Some(false), None) | (None, Some(true)) => Some(true),
            _ => None,
        }
    }

    /// Reads tilt, reed and battery.
    pub fn sample(&mut self, _now_ms: u64) -> Result<(), Part> {
        let mut failed = FirstFailure::default();
        self.tilt = failed
            .check(Part::Accelerometer, self.accelerometer.acceleration())
            .map(|a| a.tilt_degrees());
        self.seated = failed.check(Part::ReedSwitch, self.reed.is_low());
        self.battery_pct = failed.check(Part::FuelGauge, self.battery.state_of_charge());
        failed.result()
    }
}

impl<I2C: I2c, REED: InputPin> Node for ManholeNode<I2C, REED> {
    fn model(&self) -> &'static str {
        MODEL
    }

    fn register_map(&self) -> &'static [MapPoint] {
        MAP
    }

    fn read_point(&self, quantity: Quantity) -> Option<f64> {
        match quantity {
            Quantity::CoverOpen => self.cover_open().map(|o| o as u8 as f64),
            Quantity::TiltAngle => self.tilt.map(f64::from),
            Quantity::BatteryLevel => self.battery_pct.map(|p| p.min(100.0) as f64),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::pdu::{MAX_PDU, handle};
    use embedded_hal_mock::eh1::digital::{Mock as Pin, State, Transaction as P};
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};
    use std::vec;
    use std::vec::Vec;

    fn accel(x_mg: i16, z_mg: i16) -> T {
        let (x, z) = ((x_mg << 4).to_le_bytes(), (z_mg << 4).to_le_bytes());
        T::write_read(0x18, vec![0xA8], vec![x[0], x[1], 0, 0, z[0], z[1]])
    }

    fn bits(node: &mut ManholeNode<Mock, Pin>) -> Vec<u8> {
        let mut out = [0u8; MAX_PDU];
        let n = handle(node, &[2, 0, 0, 0, 1], &mut out);
        out[..n].to_vec()
    }

    #[test]
    fn open_by_reed_or_by_tilt() {
        let soc = |p: u8| T::write_read(0x36, vec![0x04], vec![p, 0]);
        let mut i2c = Mock::new(&[
            accel(0, 1000),
            soc(93),
            accel(0, 1000),
            soc(93),
            accel(500, 866), // 30 degrees, reed still closed
            soc(92),
        ]);
        let mut reed = Pin::new(&[P::get(State::Low), P::get(State::High), P::get(State::Low)]);
        let mut node = ManholeNode::new(
            Lis3dh::new(i2c.clone(), 0x18),
            Max17048::new(i2c.clone()),
            reed.clone(),
            CoverConfig::default(),
        );
        node.sample(0).unwrap();
        assert_eq!(bits(&mut node), [2, 1, 0]);
        node.sample(1000).unwrap();
        assert_eq!(bits(&mut node), [2, 1, 1], "reed open");
        node.sample(2000).unwrap();
        assert_eq!(bits(&mut node), [2, 1, 1], "tilted");
        let mut out = [0u8; MAX_PDU];
        let n = handle(&mut node, &[4, 0, 0, 0, 2], &mut out);
        assert_eq!(&out[..n], &[4, 4, 0x01, 0x2C, 0, 92]); // 300 = 30.0 degrees, 92 %
        i2c.done();
        reed.done();
    }

    #[test]
    fn reed_alone_when_the_accelerometer_fails() {
        use embedded_hal::i2c::ErrorKind;
        let mut i2c = Mock::new(&[
            T::write_read(0x18, vec![0xA8], vec![0; 6]).with_error(ErrorKind::Other),
            T::write_read(0x36, vec![0x04], vec![50, 0]),
        ]);
        let mut reed = Pin::new(&[P::get(State::High)]);
        let mut node = ManholeNode::new(
            Lis3dh::new(i2c.clone(), 0x18),
            Max17048::new(i2c.clone()),
            reed.clone(),
            CoverConfig::default(),
        );
        assert_eq!(node.sample(0), Err(Part::Accelerometer));
        assert_eq!(node.cover_open(), Some(true));
        i2c.done();
        reed.done();
    }
}
