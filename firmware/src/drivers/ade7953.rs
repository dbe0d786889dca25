//! Analog Devices ADE7953 single-phase energy metering IC over I2C (the lamp controller's
//! meter; the same chip meters in Shelly relays).
//!
//! From the datasheet (Rev. C): fixed I2C address 0x38; 16-bit register addresses sent MSB
//! first; the register width follows from the address (0x000-0x0FF and 0x7xx/0x8xx: 8 bits,
//! 0x1xx: 16, 0x2xx: 24, 0x3xx: the same 24-bit registers sign-extended to 32 bits), data MSB
//! first. After power-up the datasheet asks to unlock register 0x120 (write 0xAD to 0x0FE) and
//! set it to 0x0030 for the specified accuracy. Energy registers are read-with-reset
//! (LCYCMODE.RSTREAD, default on), so each read returns the energy since the last one.
//!
//! Raw readings become volts, amps and watts through a [`Calibration`] measured on the bench
//! for a given front end (shunt or CT, divider).

use embedded_hal::i2c::I2c;

/// The chip's I2C address.
pub const ADDRESS: u8 = 0x38;

/// Register addresses used by this driver.
pub mod reg {
    /// Line cycle accumulation mode (8 bits); bit 6 RSTREAD.
    pub const LCYCMODE: u16 = 0x004;
    /// Unlock key for register 0x120 (8 bits).
    pub const UNLOCK: u16 = 0x0FE;
    /// Silicon version (8 bits).
    pub const VERSION: u16 = 0x702;
    /// Configuration (16 bits).
    pub const CONFIG: u16 = 0x102;
    /// Reserved register to set to 0x0030 after unlocking (16 bits).
    pub const SETTINGS: u16 = 0x120;
    /// Active power, channel A (32-bit view).
    pub const AWATT: u16 = 0x312;
    /// Current RMS, channel A (32-bit view).
    pub const IRMSA: u16 = 0x31A;
    /// Voltage RMS (32-bit view).
    pub const VRMS: u16 = 0x31C;
    /// Active energy, channel A, read with reset (32-bit view).
    pub const AENERGYA: u16 = 0x31E;
    /// Interrupt status, channel A (32-bit view); bit 20 RESET: the chip finished its reset.
    pub const IRQSTATA: u16 = 0x32D;
}

/// The key that unlocks register 0x120.
pub const UNLOCK_KEY: u8 = 0xAD;
/// The value the datasheet requires in register 0x120.
pub const SETTINGS_VALUE: u16 = 0x0030;
/// IRQSTATA bit: reset complete.
pub const IRQ_RESET: u32 = 1 << 20;
/// LCYCMODE bit: energy registers reset on read.
pub const LCYCMODE_RSTREAD: u8 = 1 << 6;

/// Width in bytes of the register at `address`.
pub const fn register_width(address: u16) -> usize {
    match address >> 8 {
        0x1 => 2,
        0x2 => 3,
        0x3 => 4,
        _ => 1,
    }
}

/// Conversion of raw counts to units, from a bench calibration of the front end.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Calibration {
    /// Volts per VRMS count.
    pub volts_per_count: f32,
    /// Amps per IRMS count.
    pub amps_per_count: f32,
    /// Watts per AWATT count.
    pub watts_per_count: f32,
    /// Watt-hours per AENERGY count.
    pub wh_per_count: f32,
}

impl Default for Calibration {
    /// The figures open firmware uses for the common 1 mΩ shunt / 1 MΩ:1 kΩ divider front end
    /// (26000 counts per volt, 100000 per amp, 154 per watt) and 3200 counts per Wh.
    fn default() -> Self {
        Calibration {
            volts_per_count: 1.0 / 26_000.0,
            amps_per_count: 1.0 / 100_000.0,
            watts_per_count: 1.0 / 154.0,
            wh_per_count: 1.0 / 3_200.0,
        }
    }
}

/// One set of instantaneous readings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    /// Mains voltage, V RMS.
    pub voltage: f32,
    /// Lamp current, A RMS.
    pub current: f32,
    /// Active power, W (signed: negative if the current transformer is reversed).
    pub power: f32,
}

/// Driver errors.
#[derive(Debug, PartialEq)]
pub enum Error<E> {
    /// The bus failed.
    I2c(E),
    /// The chip has not signalled the end of its reset (IRQSTATA.RESET).
    NotReady,
}

/// The ADE7953.
pub struct Ade7953<I2C> {
    i2c: I2C,
    calibration: Calibration,
}

impl<I2C: I2c> Ade7953<I2C> {
    /// A driver with a calibration.
    pub fn new(i2c: I2C, calibration: Calibration) -> Self {
        Ade7953 { i2c, calibration }
    }

    /// Gives the bus back.
    pub fn destroy(self) -> I2C {
        self.i2c
    }

    /// The calibration in use.
    pub fn calibration(&self) -> Calibration {
        self.calibration
    }

    /// Checks the chip is out of reset and applies the datasheet's start-up settings.
    pub fn init(&mut self) -> Result<(), Error<I2C::Error>> {
        if self.read(reg::IRQSTATA)? & IRQ_RESET == 0 {
            return Err(Error::NotReady);
        }
        self.write(reg::UNLOCK, UNLOCK_KEY as u32)?;
        self.write(reg::SETTINGS, SETTINGS_VALUE as u32)?;
        self.write(reg::LCYCMODE, LCYCMODE_RSTREAD as u32)?;
        Ok(())
    }

    /// The silicon version.
    pub fn version(&mut self) -> Result<u8, Error<I2C::Error>> {
        Ok(self.read(reg::VERSION)? as u8)
    }

    /// Voltage, current and active power.
    pub fn measure(&mut self) -> Result<Measurement, Error<I2C::Error>> {
        let c = self.calibration;
        let vrms = self.read(reg::VRMS)?;
        let irms = self.read(reg::IRMSA)?;
        let watt = self.read(reg::AWATT)? as i32;
        Ok(Measurement {
            voltage: vrms as f32 * c.volts_per_count,
            current: irms as f32 * c.amps_per_count,
            power: watt as f32 * c.watts_per_count,
        })
    }

    /// Active energy since the previous call, Wh (the register resets on read).
    pub fn take_energy(&mut self) -> Result<f32, Error<I2C::Error>> {
        let counts = self.read(reg::AENERGYA)? as i32;
        Ok(counts as f32 * self.calibration.wh_per_count)
    }

    /// Reads a register of any width (the value right-aligned).
    pub fn read(&mut self, address: u16) -> Result<u32, Error<I2C::Error>> {
        let n = register_width(address);
        let mut buf = [0u8; 4];
        self.i2c
            .write_read(ADDRESS, &address.to_be_bytes(), &mut buf[..n])
            .map_err(Error::I2c)?;
        Ok(buf[..n].iter().fold(0u32, |acc, b| (acc << 8) | *b as u32))
    }

    /// Writes a register of any width (the low bytes of `value`).
    pub fn write(&mut self, address: u16, value: u32) -> Result<(), Error<I2C::Error>> {
        let n = register_width(address);
        let mut buf = [0u8; 6];
        buf[..2].copy_from_slice(&address.to_be_bytes());
        buf[2..2 + n].copy_from_slice(&value.to_be_bytes()[4 - n..]);
        self.i2c.write(ADDRESS, &buf[..2 + n]).map_err(Error::I2c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};
    use std::vec;

    #[test]
    fn widths_follow_the_address() {
        assert_eq!(register_width(reg::UNLOCK), 1);
        assert_eq!(register_width(reg::VERSION), 1);
        assert_eq!(register_width(reg::SETTINGS), 2);
        assert_eq!(register_width(0x21C), 3);
        assert_eq!(register_width(reg::VRMS), 4);
    }

    #[test]
    fn init_waits_for_reset_then_unlocks() {
        let mut i2c = Mock::new(&[
            T::write_read(ADDRESS, vec![0x03, 0x2D], vec![0x00, 0x10, 0x00, 0x00]),
            T::write(ADDRESS, vec![0x00, 0xFE, 0xAD]),
            T::write(ADDRESS, vec![0x01, 0x20, 0x00, 0x30]),
            T::write(ADDRESS, vec![0x00, 0x04, 0x40]),
            T::write_read(ADDRESS, vec![0x03, 0x2D], vec![0, 0, 0, 0]),
        ]);
        let mut m = Ade7953::new(&mut i2c, Calibration::default());
        m.init().unwrap();
        assert_eq!(m.init(), Err(Error::NotReady));
        i2c.done();
    }

    #[test]
    fn measurement_scales_counts() {
        let v = 230u32 * 26_000; // 5_980_000
        let i = 43_500u32; // 0.435 A
        let w = (-(100i32 * 154)) as u32;
        let mut i2c = Mock::new(&[
            T::write_read(ADDRESS, vec![0x03, 0x1C], v.to_be_bytes().to_vec()),
            T::write_read(ADDRESS, vec![0x03, 0x1A], i.to_be_bytes().to_vec()),
            T::write_read(ADDRESS, vec![0x03, 0x12], w.to_be_bytes().to_vec()),
            T::write_read(ADDRESS, vec![0x03, 0x1E], 6400u32.to_be_bytes().to_vec()),
            T::write_read(ADDRESS, vec![0x07, 0x02], vec![0x80]),
        ]);
        let mut m = Ade7953::new(&mut i2c, Calibration::default());
        let r = m.measure().unwrap();
        assert!((r.voltage - 230.0).abs() < 1e-3);
        assert!((r.current - 0.435).abs() < 1e-6);
        assert!((r.power + 100.0).abs() < 1e-3);
        assert!((m.take_energy().unwrap() - 2.0).abs() < 1e-6);
        assert_eq!(m.version().unwrap(), 0x80);
        i2c.done();
    }
}
