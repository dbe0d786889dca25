//! ST LIS3DH 3-axis accelerometer over I2C (the manhole cover's tilt sensor).
//!
//! From the datasheet (DocID17530): address 0x18 (SA0 low) or 0x19; WHO_AM_I (0x0F) reads
//! 0x33; CTRL_REG1 (0x20) sets the data rate and enables the axes; CTRL_REG4 (0x23) sets block
//! data update, full scale and high-resolution mode. OUT_X_L..OUT_Z_H (0x28..0x2D) hold
//! left-justified little-endian samples; setting bit 7 of the sub-address auto-increments so
//! one read fetches all six bytes. In high-resolution mode at ±2 g a sample has 12 bits and
//! 1 mg per digit.

use embedded_hal::i2c::I2c;

/// Address with SA0 low.
pub const ADDRESS: u8 = 0x18;
/// Address with SA0 high.
pub const ADDRESS_ALT: u8 = 0x19;
/// WHO_AM_I value.
pub const DEVICE_ID: u8 = 0x33;

/// Register addresses.
pub mod reg {
    /// Identification.
    pub const WHO_AM_I: u8 = 0x0F;
    /// Data rate, power mode, axis enables.
    pub const CTRL_REG1: u8 = 0x20;
    /// Block data update, endianness, full scale, high resolution.
    pub const CTRL_REG4: u8 = 0x23;
    /// First output register.
    pub const OUT_X_L: u8 = 0x28;
}

/// Sub-address bit that auto-increments across a multi-byte read.
pub const AUTO_INCREMENT: u8 = 0x80;
/// CTRL_REG1: 10 Hz, normal mode, X/Y/Z enabled.
pub const CTRL_REG1_10HZ_XYZ: u8 = 0x27;
/// CTRL_REG4: block data update, ±2 g, high resolution.
pub const CTRL_REG4_BDU_HR_2G: u8 = 0x88;

/// Driver errors.
#[derive(Debug, PartialEq)]
pub enum Error<E> {
    /// The bus failed.
    I2c(E),
    /// WHO_AM_I did not read 0x33.
    WrongDevice(u8),
}

/// Acceleration in g.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Acceleration {
    /// X axis.
    pub x: f32,
    /// Y axis.
    pub y: f32,
    /// Z axis (out of the cover's plane: +1 g lying flat).
    pub z: f32,
}

impl Acceleration {
    /// Angle between the Z axis and gravity, degrees (0 lying flat, 90 on edge).
    pub fn tilt_degrees(&self) -> f32 {
        let horizontal = libm::sqrtf(self.x * self.x + self.y * self.y);
        libm::atan2f(horizontal, self.z).to_degrees()
    }
}

/// The LIS3DH.
pub struct Lis3dh<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> Lis3dh<I2C> {
    /// A driver at `address`.
    pub fn new(i2c: I2C, address: u8) -> Self {
        Lis3dh { i2c, address }
    }

    /// Gives the bus back.
    pub fn destroy(self) -> I2C {
        self.i2c
    }

    /// Checks the identity and starts sampling at 10 Hz, ±2 g, high resolution.
    pub fn init(&mut self) -> Result<(), Error<I2C::Error>> {
        let mut id = [0u8];
        self.i2c
            .write_read(self.address, &[reg::WHO_AM_I], &mut id)
            .map_err(Error::I2c)?;
        if id[0] != DEVICE_ID {
            return Err(Error::WrongDevice(id[0]));
        }
        self.i2c
            .write(self.address, &[reg::CTRL_REG1, CTRL_REG1_10HZ_XYZ])
            .map_err(Error::I2c)?;
        self.i2c
            .write(self.address, &[reg::CTRL_REG4, CTRL_REG4_BDU_HR_2G])
            .map_err(Error::I2c)
    }

    /// The latest sample.
    pub fn acceleration(&mut self) -> Result<Acceleration, Error<I2C::Error>> {
        let mut b = [0u8; 6];
        self.i2c
            .write_read(self.address, &[reg::OUT_X_L | AUTO_INCREMENT], &mut b)
            .map_err(Error::I2c)?;
        // 12 bits left-justified, 1 mg per digit.
        let g = |lo: u8, hi: u8| (i16::from_le_bytes([lo, hi]) >> 4) as f32 / 1000.0;
        Ok(Acceleration {
            x: g(b[0], b[1]),
            y: g(b[2], b[3]),
            z: g(b[4], b[5]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};
    use std::vec;

    fn sample(mg: i16) -> [u8; 2] {
        (mg << 4).to_le_bytes()
    }

    #[test]
    fn init_and_tilt() {
        let (x, z) = (sample(500), sample(866)); // 30 degrees about Y
        let mut i2c = Mock::new(&[
            T::write_read(ADDRESS, vec![0x0F], vec![0x33]),
            T::write(ADDRESS, vec![0x20, 0x27]),
            T::write(ADDRESS, vec![0x23, 0x88]),
            T::write_read(ADDRESS, vec![0xA8], vec![x[0], x[1], 0, 0, z[0], z[1]]),
        ]);
        let mut acc = Lis3dh::new(&mut i2c, ADDRESS);
        acc.init().unwrap();
        let a = acc.acceleration().unwrap();
        assert_eq!(
            a,
            Acceleration {
                x: 0.5,
                y: 0.0,
                z: 0.866
            }
        );
        assert!((a.tilt_degrees() - 30.0).abs() < 0.05);
        i2c.done();
    }

    #[test]
    fn upside_down_and_wrong_device() {
        let a = Acceleration {
            x: 0.0,
            y: 0.0,
            z: -1.0,
        };
        assert!((a.tilt_degrees() - 180.0).abs() < 1e-3);
        let mut i2c = Mock::new(&[T::write_read(ADDRESS_ALT, vec![0x0F], vec![0x32])]);
        let mut acc = Lis3dh::new(&mut i2c, ADDRESS_ALT);
        assert_eq!(acc.init(), Err(Error::WrongDevice(0x32)));
        i2c.done();
    }
}
