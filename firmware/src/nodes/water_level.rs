//! The water-level station at a river or drain (profile `water-level-radar.toml`).
//!
//! Hardware: a distance gauge looking down at the water on a UART ([`Ultrasonic`]), an SHT4x
//! in the housing, and a MAX17048 on the solar-charged battery. The level above datum is the
//! gauge's mounting height above datum minus the measured distance.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;
use embedded_io::{Read, ReadReady};
use protocols::Quantity;
use protocols::registers::{DataType, Table};

use super::{FirstFailure, Part};
use crate::drivers::max17048::Max17048;
use crate::drivers::sht4x::Sht4x;
use crate::drivers::ultrasonic::Ultrasonic;
use crate::map::{MapPoint, Node};

/// The model name in the profile.
pub const MODEL: &str = "radar-level-rl10";

/// The register map (profile `water-level-radar.toml`).
pub const MAP: &[MapPoint] = &[
    MapPoint::new(Quantity::WaterLevel, Table::Input, 0, DataType::U16)
        .unit("mm")
        .range(0.0, 15_000.0),
    MapPoint::new(Quantity::AirTemperature, Table::Input, 1, DataType::I16)
        .scale(0.1)
        .unit("Cel"),
    MapPoint::new(Quantity::BatteryLevel, Table::Input, 2, DataType::U16)
        .scale(0.1)
        .unit("%"),
];

/// Installation figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LevelConfig {
    /// Height of the gauge's face above the level datum, mm.
    pub mount_height_mm: u16,
    /// Without a good echo for this long the level is unavailable, ms.
    pub stale_after_ms: u64,
}

impl Default for LevelConfig {
    fn default() -> Self {
        LevelConfig {
            mount_height_mm: 10_000,
            stale_after_ms: 3_000,
        }
    }
}

/// The station.
pub struct WaterLevelNode<U, I2C, D> {
    gauge: Ultrasonic<U>,
    housing: Sht4x<I2C>,
    battery: Max17048<I2C>,
    delay: D,
    config: LevelConfig,
    level_mm: Option<f64>,
    last_echo_ms: Option<u64>,
    temperature: Option<f32>,
    battery_pct: Option<f32>,
}

impl<U, I2C, D> WaterLevelNode<U, I2C, D>
where
    U: Read + ReadReady,
    I2C: I2c,
    D: DelayNs,
{
    /// A station from its parts.
    pub fn new(
        gauge: Ultrasonic<U>,
        housing: Sht4x<I2C>,
        battery: Max17048<I2C>,
        delay: D,
        config: LevelConfig,
    ) -> Self {
        WaterLevelNode {
            gauge,
            housing,
            battery,
            delay,
            config,
            level_mm: None,
            last_echo_ms: None,
            temperature: None,
            battery_pct: None,
        }
    }

    /// Checks the fuel gauge is there.
    pub fn init(&mut self) -> Result<(), Part> {
        self.battery.init().map_err(|_| Part::FuelGauge)
    }

    /// The level above datum, mm.
    pub fn level_mm(&self) -> Option<f64> {
        self.level_mm
    }

    /// Drains the gauge and reads the housing sensor and the battery.
    pub fn sample(&mut self, now_ms: u64) -> Result<(), Part> {
        let mut failed = FirstFailure::default();
        if let Some(Some(distance)) = failed.check(Part::Gauge, self.gauge.poll()) {
            self.level_mm = Some(self.config.mount_height_mm as f64 - distance as f64);
            self.last_echo_ms = Some(now_ms);
        }
        let fresh = self
            .last_echo_ms
            .is_some_and(|t| now_ms.saturating_sub(t) <= self.config.stale_after_ms);
        if !fresh {
            self.level_mm = None;
            failed.check::<(), ()>(Part::Gauge, Err(()));
        }
        self.temperature = failed
            .check(Part::Hygrometer, self.housing.measure(&mut self.delay))
            .map(|m| m.temperature);
        self.battery_pct = failed.check(Part::FuelGauge, self.battery.state_of_charge());
        failed.result()
    }
}

impl<U, I2C, D> Node for WaterLevelNode<U, I2C, D>
where
    U: Read + ReadReady,
    I2C: I2c,
    D: DelayNs,
{
    fn model(&self) -> &'static str {
        MODEL
    }

    fn register_map(&self) -> &'static [MapPoint] {
        MAP
    }

    fn read_point(&self, quantity: Quantity) -> Option<f64> {
        match quantity {
            Quantity::WaterLevel => self.level_mm,
            Quantity::AirTemperature => self.temperature.map(f64::from),
            Quantity::BatteryLevel => self.battery_pct.map(|p| p.min(100.0) as f64),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::sht4x::crc8;
    use crate::drivers::ultrasonic::checksum;
    use crate::modbus::pdu::{MAX_PDU, handle};
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};
    use std::vec;

    #[test]
    fn level_temperature_and_battery_through_the_registers() {
        let t = 26214u16.to_be_bytes(); // 25.0 °C
        let h = 29360u16.to_be_bytes();
        let mut i2c = Mock::new(&[
            T::write(0x44, vec![0xFD]),
            T::read(0x44, vec![t[0], t[1], crc8(&t), h[0], h[1], crc8(&h)]),
            T::write_read(0x36, vec![0x04], vec![87, 128]),
        ]);
        // 7690 mm to the water from 10 m: level 2310 mm.
        let [hi, lo] = 7690u16.to_be_bytes();
        let uart: &[u8] = &[0xFF, hi, lo, checksum(hi, lo)];
        let mut node = WaterLevelNode::new(
            Ultrasonic::new(uart),
            Sht4x::new(i2c.clone()),
            Max17048::new(i2c.clone()),
            NoopDelay::new(),
            LevelConfig::default(),
        );
        node.sample(1_000).unwrap();
        assert_eq!(node.level_mm(), Some(2310.0));
        let mut out = [0u8; MAX_PDU];
        let n = handle(&mut node, &[4, 0, 0, 0, 3], &mut out);
        // 2310, 250 (25.0 °C), 875 (87.5 %).
        assert_eq!(&out[..n], &[4, 6, 0x09, 0x06, 0, 250, 0x03, 0x6B]);
        i2c.done();
    }

    #[test]
    fn stale_gauge_makes_the_level_unavailable() {
        let t = 26214u16.to_be_bytes();
        let mut script = std::vec::Vec::new();
        for _ in 0..2 {
            script.push(T::write(0x44, vec![0xFD]));
            script.push(T::read(
                0x44,
                vec![t[0], t[1], crc8(&t), t[0], t[1], crc8(&t)],
            ));
            script.push(T::write_read(0x36, vec![0x04], vec![50, 0]));
        }
        let mut i2c = Mock::new(&script);
        let uart: &[u8] = &[0xFF, 0x07, 0xA1, 0xA7];
        let mut node = WaterLevelNode::new(
            Ultrasonic::new(uart),
            Sht4x::new(i2c.clone()),
            Max17048::new(i2c.clone()),
            NoopDelay::new(),
            LevelConfig::default(),
        );
        node.sample(0).unwrap();
        assert_eq!(node.sample(10_000), Err(Part::Gauge));
        let mut out = [0u8; MAX_PDU];
        assert_eq!(handle(&mut node, &[4, 0, 0, 0, 1], &mut out), 2);
        assert_eq!(&out[..2], &[0x84, 4]);
        i2c.done();
    }
}
