//! The weather station on a pole (profile `weather-station.toml`).
//!
//! Hardware: an SHT4x (air temperature, humidity) and an LPS22HB (pressure) on I2C, and the
//! reed switches of a tipping-bucket rain gauge and a cup anemometer (SparkFun SEN-15901
//! style: 0.2794 mm per tip, 2.4 km/h per switch closure per second). The switches' edge
//! interrupts call [`WeatherNode::record_rain_tip`] and [`WeatherNode::record_wind_pulse`].

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;
use protocols::Quantity;
use protocols::registers::{DataType, Table, WordOrder};

use super::{FirstFailure, Part};
use crate::drivers::lps22hb::Lps22hb;
use crate::drivers::sht4x::Sht4x;
use crate::map::{MapPoint, Node};

/// The model name in the profile.
pub const MODEL: &str = "weather-ws6";

/// Rain per bucket tip, mm.
pub const RAIN_MM_PER_TIP: f64 = 0.2794;
/// Wind speed per anemometer closure per second, m/s (2.4 km/h).
pub const WIND_MS_PER_HZ: f64 = 2.4 / 3.6;

/// Shortest window a wind speed is computed over, ms: at a few pulses per second a shorter
/// one would read mostly zeros.
pub const WIND_WINDOW_MS: u64 = 1_000;

/// The register map (profile `weather-station.toml`).
pub const MAP: &[MapPoint] = &[
    MapPoint::new(Quantity::Rainfall, Table::Input, 0, DataType::U64)
        .scale(0.01)
        .unit("mm"),
    MapPoint::new(Quantity::AirTemperature, Table::Input, 4, DataType::F64)
        .word_order(WordOrder::Dcba)
        .unit("Cel"),
    MapPoint::new(Quantity::RelativeHumidity, Table::Input, 8, DataType::I32)
        .word_order(WordOrder::Badc)
        .scale(0.01)
        .unit("%"),
    MapPoint::new(Quantity::AirPressure, Table::Input, 10, DataType::F64).unit("hPa"),
    MapPoint::new(Quantity::WindSpeed, Table::Input, 14, DataType::I64)
        .word_order(WordOrder::Cdab)
        .scale(0.001)
        .unit("m/s"),
];

/// The station.
pub struct WeatherNode<I2C, D> {
    air: Sht4x<I2C>,
    barometer: Lps22hb<I2C>,
    delay: D,
    rain_tips: u64,
    wind_pulses: u32,
    window_start_ms: Option<u64>,
    wind_speed: Option<f64>,
    temperature: Option<f32>,
    humidity: Option<f32>,
    pressure: Option<f32>,
}

impl<I2C: I2c, D: DelayNs> WeatherNode<I2C, D> {
    /// A station from its parts.
    pub fn new(air: Sht4x<I2C>, barometer: Lps22hb<I2C>, delay: D) -> Self {
        WeatherNode {
            air,
            barometer,
            delay,
            rain_tips: 0,
            wind_pulses: 0,
            window_start_ms: None,
            wind_speed: None,
            temperature: None,
            humidity: None,
            pressure: None,
        }
    }

    /// Starts the barometer.
    pub fn init(&mut self) -> Result<(), Part> {
        self.barometer.init().map_err(|_| Part::Barometer)
    }

    /// One tip of the rain gauge's bucket (call from its edge interrupt).
    pub fn record_rain_tip(&mut self) {
        self.rain_tips = self.rain_tips.wrapping_add(1);
    }

    /// One closure of the anemometer's switch (call from its edge interrupt).
    pub fn record_wind_pulse(&mut self) {
        self.wind_pulses = self.wind_pulses.saturating_add(1);
    }

    /// Rain since power-up, mm.
    pub fn rainfall_mm(&self) -> f64 {
        self.rain_tips as f64 * RAIN_MM_PER_TIP
    }

    /// Reads the air sensors and turns the pulses counted since the last sample into a speed.
    pub fn sample(&mut self, now_ms: u64) -> Result<(), Part> {
        let mut failed = FirstFailure::default();
        match self.window_start_ms {
            Some(start) if now_ms >= start + WIND_WINDOW_MS => {
                let seconds = (now_ms - start) as f64 / 1000.0;
                self.wind_speed = Some(self.wind_pulses as f64 / seconds * WIND_MS_PER_HZ);
                self.wind_pulses = 0;
                self.window_start_ms = Some(now_ms);
            }
            Some(_) => {}
            None => {
                self.wind_pulses = 0;
                self.window_start_ms = Some(now_ms);
            }
        }
        let air = failed.check(Part::Hygrometer, self.air.measure(&mut self.delay));
        self.temperature = air.map(|m| m.temperature);
        self.humidity = air.map(|m| m.humidity);
        self.pressure = failed
            .check(Part::Barometer, self.barometer.measure(&mut self.delay, 50))
            .map(|m| m.pressure);
        failed.result()
    }
}

impl<I2C: I2c, D: DelayNs> Node for WeatherNode<I2C, D> {
    fn model(&self) -> &'static str {
        MODEL
    }

    fn register_map(&self) -> &'static [MapPoint] {
        MAP
    }

    fn read_point(&self, quantity: Quantity) -> Option<f64> {
        match quantity {
            Quantity::Rainfall => Some(self.rainfall_mm()),
            Quantity::AirTemperature => self.temperature.map(f64::from),
            Quantity::RelativeHumidity => self.humidity.map(f64::from),
            Quantity::AirPressure => self.pressure.map(f64::from),
            Quantity::WindSpeed => self.wind_speed,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::sht4x::crc8;
    use crate::modbus::pdu::{MAX_PDU, handle};
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};
    use std::vec;
    use std::vec::Vec;

    fn air_and_pressure() -> Vec<T> {
        let (t, h) = (26214u16.to_be_bytes(), 29360u16.to_be_bytes());
        let p = (1013.25f32 * 4096.0) as u32;
        vec![
            T::write(0x44, vec![0xFD]),
            T::read(0x44, vec![t[0], t[1], crc8(&t), h[0], h[1], crc8(&h)]),
            T::write(0x5C, vec![0x11, 0x11]),
            T::write_read(0x5C, vec![0x27], vec![0x03]),
            T::write_read(
                0x5C,
                vec![0x28],
                vec![p as u8, (p >> 8) as u8, (p >> 16) as u8, 0, 0],
            ),
        ]
    }

    #[test]
    fn pulses_become_rain_and_wind() {
        let mut script = air_and_pressure();
        script.extend(air_and_pressure());
        let mut i2c = Mock::new(&script);
        let mut node = WeatherNode::new(
            Sht4x::new(i2c.clone()),
            Lps22hb::new(i2c.clone(), 0x5C),
            NoopDelay::new(),
        );
        node.sample(0).unwrap();
        assert_eq!(node.read_point(Quantity::WindSpeed), None);
        for _ in 0..10 {
            node.record_rain_tip();
        }
        for _ in 0..30 {
            node.record_wind_pulse();
        }
        node.sample(2_000).unwrap();
        assert!((node.rainfall_mm() - 2.794).abs() < 1e-9);
        // 15 Hz -> 10 m/s.
        assert!((node.read_point(Quantity::WindSpeed).unwrap() - 10.0).abs() < 1e-9);
        let mut out = [0u8; MAX_PDU];
        let n = handle(&mut node, &[4, 0, 0, 0, 18], &mut out);
        assert_eq!(n, 2 + 36);
        // Rainfall 279 (0.01 mm) as u64 abcd.
        assert_eq!(&out[2..10], &[0, 0, 0, 0, 0, 0, 0x01, 0x17]);
        // Wind 10000 (0.001 m/s) as i64 cdab: words reversed.
        assert_eq!(&out[2 + 28..2 + 36], &[0x27, 0x10, 0, 0, 0, 0, 0, 0]);
        i2c.done();
    }
}
