//! ST LPS22HB barometer over I2C (the weather station's pressure sensor).
//!
//! From the datasheet (DocID027083): address 0x5C (SA0 low) or 0x5D; WHO_AM_I (0x0F) reads
//! 0xB1. With CTRL_REG1 ODR = 0 the part idles until CTRL_REG2.ONE_SHOT (bit 0) starts one
//! conversion; the bit clears itself when done and STATUS (0x27) flags new data. PRESS_OUT
//! (0x28..0x2A) is a 24-bit two's complement in 1/4096 hPa, TEMP_OUT (0x2B..0x2C) a 16-bit
//! two's complement in 1/100 °C; CTRL_REG2.IF_ADD_INC (default on) lets one read fetch all
//! five bytes.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

/// Address with SA0 low.
pub const ADDRESS: u8 = 0x5C;
/// WHO_AM_I value.
pub const DEVICE_ID: u8 = 0xB1;

/// Register addresses.
pub mod reg {
    /// Identification.
    pub const WHO_AM_I: u8 = 0x0F;
    /// Data rate, filter, block data update.
    pub const CTRL_REG1: u8 = 0x10;
    /// Boot, auto-increment, reset, one-shot.
    pub const CTRL_REG2: u8 = 0x11;
    /// New data flags.
    pub const STATUS: u8 = 0x27;
    /// First pressure output byte.
    pub const PRESS_OUT_XL: u8 = 0x28;
}

/// CTRL_REG1: power-down/one-shot mode (ODR = 0) with block data update.
pub const CTRL_REG1_ONE_SHOT_BDU: u8 = 0x02;
/// CTRL_REG2: auto-increment kept on, start one conversion.
pub const CTRL_REG2_ONE_SHOT: u8 = 0x11;
/// STATUS bit: new pressure.
pub const STATUS_P_DA: u8 = 0x01;

/// Driver errors.
#[derive(Debug, PartialEq)]
pub enum Error<E> {
    /// The bus failed.
    I2c(E),
    /// WHO_AM_I did not read 0xB1.
    WrongDevice(u8),
    /// No data after the polls allowed.
    Timeout,
}

/// One measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    /// Pressure, hPa.
    pub pressure: f32,
    /// Die temperature, °C.
    pub temperature: f32,
}

/// The LPS22HB.
pub struct Lps22hb<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> Lps22hb<I2C> {
    /// A driver at `address`.
    pub fn new(i2c: I2C, address: u8) -> Self {
        Lps22hb { i2c, address }
    }

    /// Gives the bus back.
    pub fn destroy(self) -> I2C {
        self.i2c
    }

    /// Checks the identity and selects one-shot mode.
    pub fn init(&mut self) -> Result<(), Error<I2C::Error>> {
        let mut id = [0u8];
        self.i2c
            .write_read(self.address, &[reg::WHO_AM_I], &mut id)
            .map_err(Error::I2c)?;
        if id[0] != DEVICE_ID {
            return Err(Error::WrongDevice(id[0]));
        }
        self.i2c
            .write(self.address, &[reg::CTRL_REG1, CTRL_REG1_ONE_SHOT_BDU])
            .map_err(Error::I2c)
    }

    /// Runs one conversion, polling STATUS every millisecond at most `polls` times.
    pub fn measure<D: DelayNs>(
        &mut self,
        delay: &mut D,
        polls: u32,
    ) -> Result<Measurement, Error<I2C::Error>> {
        self.i2c
            .write(self.address, &[reg::CTRL_REG2, CTRL_REG2_ONE_SHOT])
            .map_err(Error::I2c)?;
        for _ in 0..polls {
            let mut status = [0u8];
            self.i2c
                .write_read(self.address, &[reg::STATUS], &mut status)
                .map_err(Error::I2c)?;
            if status[0] & STATUS_P_DA != 0 {
                let mut b = [0u8; 5];
                self.i2c
                    .write_read(self.address, &[reg::PRESS_OUT_XL], &mut b)
                    .map_err(Error::I2c)?;
                // Sign-extend the 24-bit pressure through the top byte of an i32.
                let p = i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8;
                let t = i16::from_le_bytes([b[3], b[4]]);
                return Ok(Measurement {
                    pressure: p as f32 / 4096.0,
                    temperature: t as f32 / 100.0,
                });
            }
            delay.delay_ms(1);
        }
        Err(Error::Timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};
    use std::vec;

    #[test]
    fn one_shot_measurement() {
        let p = (1013.25f32 * 4096.0) as u32; // 0x3F5400
        let t = 2150i16.to_le_bytes();
        let mut i2c = Mock::new(&[
            T::write_read(ADDRESS, vec![0x0F], vec![0xB1]),
            T::write(ADDRESS, vec![0x10, 0x02]),
            T::write(ADDRESS, vec![0x11, 0x11]),
            T::write_read(ADDRESS, vec![0x27], vec![0x00]),
            T::write_read(ADDRESS, vec![0x27], vec![0x03]),
            T::write_read(
                ADDRESS,
                vec![0x28],
                vec![p as u8, (p >> 8) as u8, (p >> 16) as u8, t[0], t[1]],
            ),
        ]);
        let mut baro = Lps22hb::new(&mut i2c, ADDRESS);
        baro.init().unwrap();
        let m = baro.measure(&mut NoopDelay::new(), 5).unwrap();
        assert!((m.pressure - 1013.25).abs() < 1e-3);
        assert!((m.temperature - 21.5).abs() < 1e-3);
        i2c.done();
    }

    #[test]
    fn timeout_and_identity() {
        let mut i2c = Mock::new(&[
            T::write(ADDRESS, vec![0x11, 0x11]),
            T::write_read(ADDRESS, vec![0x27], vec![0x00]),
            T::write_read(ADDRESS, vec![0x0F], vec![0xBD]),
        ]);
        let mut baro = Lps22hb::new(&mut i2c, ADDRESS);
        assert_eq!(baro.measure(&mut NoopDelay::new(), 1), Err(Error::Timeout));
        assert_eq!(baro.init(), Err(Error::WrongDevice(0xBD)));
        i2c.done();
    }
}
