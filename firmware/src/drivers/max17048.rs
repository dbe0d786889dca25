//! Analog Devices (Maxim) MAX17048 fuel gauge over I2C (battery of the water-level station
//! and the manhole monitor).
//!
//! From the datasheet: address 0x36; 16-bit registers, MSB first. VCELL (0x02) counts
//! 78.125 µV; SOC (0x04) is percent in the high byte plus 1/256 % in the low byte; VERSION
//! (0x08) reads 0x001x; CRATE (0x16) is a signed 0.208 %/h.

use embedded_hal::i2c::I2c;

/// The gauge's I2C address.
pub const ADDRESS: u8 = 0x36;

/// Register addresses.
pub mod reg {
    /// Cell voltage.
    pub const VCELL: u8 = 0x02;
    /// State of charge.
    pub const SOC: u8 = 0x04;
    /// Production version.
    pub const VERSION: u8 = 0x08;
    /// Charge or discharge rate.
    pub const CRATE: u8 = 0x16;
}

/// Driver errors.
#[derive(Debug, PartialEq)]
pub enum Error<E> {
    /// The bus failed.
    I2c(E),
    /// The version register does not read 0x001x: not a MAX17048/9.
    WrongPart(u16),
}

/// The MAX17048.
pub struct Max17048<I2C> {
    i2c: I2C,
}

impl<I2C: I2c> Max17048<I2C> {
    /// A driver.
    pub fn new(i2c: I2C) -> Self {
        Max17048 { i2c }
    }

    /// Gives the bus back.
    pub fn destroy(self) -> I2C {
        self.i2c
    }

    /// Checks the part answers with a MAX17048/9 version.
    pub fn init(&mut self) -> Result<(), Error<I2C::Error>> {
        let v = self.read(reg::VERSION)?;
        if v & 0xFFF0 != 0x0010 {
            return Err(Error::WrongPart(v));
        }
        Ok(())
    }

    /// State of charge, percent (may read a little above 100 when full).
    pub fn state_of_charge(&mut self) -> Result<f32, Error<I2C::Error>> {
        Ok(self.read(reg::SOC)? as f32 / 256.0)
    }

    /// Cell voltage, volts.
    pub fn cell_voltage(&mut self) -> Result<f32, Error<I2C::Error>> {
        Ok(self.read(reg::VCELL)? as f32 * 78.125e-6)
    }

    /// Charge (+) or discharge (-) rate, percent per hour.
    pub fn charge_rate(&mut self) -> Result<f32, Error<I2C::Error>> {
        Ok(self.read(reg::CRATE)? as i16 as f32 * 0.208)
    }

    fn read(&mut self, register: u8) -> Result<u16, Error<I2C::Error>> {
        let mut buf = [0u8; 2];
        self.i2c
            .write_read(ADDRESS, &[register], &mut buf)
            .map_err(Error::I2c)?;
        Ok(u16::from_be_bytes(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};
    use std::vec;

    #[test]
    fn reads_soc_voltage_and_rate() {
        let mut i2c = Mock::new(&[
            T::write_read(ADDRESS, vec![0x08], vec![0x00, 0x12]),
            T::write_read(ADDRESS, vec![0x04], vec![87, 128]),
            T::write_read(ADDRESS, vec![0x02], vec![0xCD, 0x00]), // 52480 * 78.125 µV = 4.1 V
            T::write_read(ADDRESS, vec![0x16], vec![0xFF, 0xFB]), // -5 * 0.208
        ]);
        let mut g = Max17048::new(&mut i2c);
        g.init().unwrap();
        assert_eq!(g.state_of_charge().unwrap(), 87.5);
        assert!((g.cell_voltage().unwrap() - 4.1).abs() < 1e-4);
        assert!((g.charge_rate().unwrap() + 1.04).abs() < 1e-4);
        i2c.done();
    }

    #[test]
    fn refuses_another_part() {
        let mut i2c = Mock::new(&[T::write_read(ADDRESS, vec![0x08], vec![0x00, 0x03])]);
        let mut g = Max17048::new(&mut i2c);
        assert_eq!(g.init(), Err(Error::WrongPart(3)));
        i2c.done();
    }
}
