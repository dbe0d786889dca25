//! Sensirion SHT4x (SHT40) temperature and humidity sensor over I2C (the weather station's
//! air sensor and the water-level station's housing sensor).
//!
//! From the datasheet: address 0x44; command 0xFD measures with high repeatability (at most
//! 8.3 ms), after which a 6-byte read returns temperature and humidity ticks, each two bytes
//! MSB first followed by a CRC-8 (polynomial 0x31, init 0xFF). T = -45 + 175 * S / 65535 °C,
//! RH = -6 + 125 * S / 65535 %, cropped to 0..100 %.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

/// The sensor's address (SHT40-AD1B).
pub const ADDRESS: u8 = 0x44;
/// Measure T and RH, high repeatability.
pub const CMD_MEASURE_HIGH: u8 = 0xFD;
/// Soft reset.
pub const CMD_SOFT_RESET: u8 = 0x94;
/// Worst-case measurement time, µs.
pub const MEASURE_TIME_US: u32 = 8_300;

/// Driver errors.
#[derive(Debug, PartialEq)]
pub enum Error<E> {
    /// The bus failed.
    I2c(E),
    /// A CRC did not match (noise on the bus).
    Crc,
}

/// One measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    /// Temperature, °C.
    pub temperature: f32,
    /// Relative humidity, %.
    pub humidity: f32,
}

/// Sensirion's CRC-8 over a 16-bit word.
pub fn crc8(data: &[u8]) -> u8 {
    let mut crc = 0xFFu8;
    for &b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The SHT4x.
pub struct Sht4x<I2C> {
    i2c: I2C,
}

impl<I2C: I2c> Sht4x<I2C> {
    /// A driver.
    pub fn new(i2c: I2C) -> Self {
        Sht4x { i2c }
    }

    /// Gives the bus back.
    pub fn destroy(self) -> I2C {
        self.i2c
    }

    /// Measures temperature and humidity (blocks for the measurement time).
    pub fn measure<D: DelayNs>(&mut self, delay: &mut D) -> Result<Measurement, Error<I2C::Error>> {
        self.i2c
            .write(ADDRESS, &[CMD_MEASURE_HIGH])
            .map_err(Error::I2c)?;
        delay.delay_us(MEASURE_TIME_US);
        let mut b = [0u8; 6];
        self.i2c.read(ADDRESS, &mut b).map_err(Error::I2c)?;
        if crc8(&b[0..2]) != b[2] || crc8(&b[3..5]) != b[5] {
            return Err(Error::Crc);
        }
        let t = u16::from_be_bytes([b[0], b[1]]) as f32;
        let rh = u16::from_be_bytes([b[3], b[4]]) as f32;
        Ok(Measurement {
            temperature: -45.0 + 175.0 * t / 65_535.0,
            humidity: (-6.0 + 125.0 * rh / 65_535.0).clamp(0.0, 100.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};
    use std::vec;

    #[test]
    fn crc_matches_the_datasheet_example() {
        assert_eq!(crc8(&[0xBE, 0xEF]), 0x92);
    }

    #[test]
    fn measures_and_checks_crc() {
        // 25 °C: S = (25 + 45) * 65535 / 175 = 26214; 50 %: S = 56 * 65535 / 125 = 29360.
        let (t, rh) = (26214u16.to_be_bytes(), 29360u16.to_be_bytes());
        let good = vec![t[0], t[1], crc8(&t), rh[0], rh[1], crc8(&rh)];
        let mut bad = good.clone();
        bad[5] ^= 1;
        let mut i2c = Mock::new(&[
            T::write(ADDRESS, vec![0xFD]),
            T::read(ADDRESS, good),
            T::write(ADDRESS, vec![0xFD]),
            T::read(ADDRESS, bad),
        ]);
        let mut s = Sht4x::new(&mut i2c);
        let m = s.measure(&mut NoopDelay::new()).unwrap();
        assert!((m.temperature - 25.0).abs() < 0.01);
        assert!((m.humidity - 50.0).abs() < 0.01);
        assert_eq!(s.measure(&mut NoopDelay::new()), Err(Error::Crc));
        i2c.done();
    }
}
