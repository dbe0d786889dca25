//! Texas Instruments ADS1115 16-bit ADC over I2C, single-shot on AIN0 (the water station's
//! turbidity probe output).
//!
//! From the datasheet (SBAS444): address 0x48 with ADDR to GND; a pointer byte selects the
//! conversion (0x00) or config (0x01) register, both 16-bit big-endian. Writing OS=1 in the
//! config starts a single conversion; OS reads 0 while converting and 1 when done. With
//! PGA = ±4.096 V one count is 125 µV.

use embedded_hal::i2c::I2c;

/// Address with ADDR tied to GND.
pub const ADDRESS: u8 = 0x48;
/// Conversion register pointer.
pub const REG_CONVERSION: u8 = 0x00;
/// Config register pointer.
pub const REG_CONFIG: u8 = 0x01;

/// Config: start (OS=1), AIN0 vs GND (MUX=100), ±4.096 V (PGA=001), single-shot (MODE=1),
/// 128 SPS (DR=100), comparator disabled (COMP_QUE=11).
pub const CONFIG_SINGLE_AIN0: u16 = 0b1100_0011_1000_0011; // OS 1, MUX 100, PGA 001, MODE 1, DR 100, COMP 0 0 0, QUE 11
/// Config bit: conversion done (on read) / start (on write).
pub const OS: u16 = 1 << 15;
/// Volts per count at ±4.096 V.
pub const VOLTS_PER_COUNT: f32 = 4.096 / 32_768.0;

/// Driver errors.
#[derive(Debug, PartialEq)]
pub enum Error<E> {
    /// The bus failed.
    I2c(E),
    /// The conversion did not finish within the polls allowed.
    Timeout,
}

/// The ADS1115.
pub struct Ads1115<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> Ads1115<I2C> {
    /// A driver at `address` (0x48..=0x4B by the ADDR pin).
    pub fn new(i2c: I2C, address: u8) -> Self {
        Ads1115 { i2c, address }
    }

    /// Gives the bus back.
    pub fn destroy(self) -> I2C {
        self.i2c
    }

    /// Starts a single-shot conversion of AIN0.
    pub fn start(&mut self) -> Result<(), Error<I2C::Error>> {
        let [hi, lo] = CONFIG_SINGLE_AIN0.to_be_bytes();
        self.i2c
            .write(self.address, &[REG_CONFIG, hi, lo])
            .map_err(Error::I2c)
    }

    /// Whether the conversion has finished.
    pub fn is_ready(&mut self) -> Result<bool, Error<I2C::Error>> {
        Ok(self.read(REG_CONFIG)? & OS != 0)
    }

    /// The last conversion, in volts.
    pub fn volts(&mut self) -> Result<f32, Error<I2C::Error>> {
        Ok(self.read(REG_CONVERSION)? as i16 as f32 * VOLTS_PER_COUNT)
    }

    /// Starts a conversion and polls for it at most `polls` times (one conversion at 128 SPS
    /// takes about 8 ms; a poll over 100 kHz I2C takes about 0.4 ms).
    pub fn measure(&mut self, polls: u32) -> Result<f32, Error<I2C::Error>> {
        self.start()?;
        for _ in 0..polls {
            if self.is_ready()? {
                return self.volts();
            }
        }
        Err(Error::Timeout)
    }

    fn read(&mut self, pointer: u8) -> Result<u16, Error<I2C::Error>> {
        let mut buf = [0u8; 2];
        self.i2c
            .write_read(self.address, &[pointer], &mut buf)
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
    fn single_shot_polls_until_done() {
        assert_eq!(CONFIG_SINGLE_AIN0, 0xC383);
        let mut i2c = Mock::new(&[
            T::write(ADDRESS, vec![0x01, 0xC3, 0x83]),
            T::write_read(ADDRESS, vec![0x01], vec![0x43, 0x83]),
            T::write_read(ADDRESS, vec![0x01], vec![0xC3, 0x83]),
            T::write_read(ADDRESS, vec![0x00], vec![0x5D, 0xC0]), // 24000 counts = 3.0 V
        ]);
        let mut adc = Ads1115::new(&mut i2c, ADDRESS);
        assert!((adc.measure(5).unwrap() - 3.0).abs() < 1e-4);
        i2c.done();
    }

    #[test]
    fn gives_up_after_the_polls() {
        let mut i2c = Mock::new(&[
            T::write(ADDRESS, vec![0x01, 0xC3, 0x83]),
            T::write_read(ADDRESS, vec![0x01], vec![0x43, 0x83]),
            T::write_read(ADDRESS, vec![0x01], vec![0x43, 0x83]),
        ]);
        let mut adc = Ads1115::new(&mut i2c, ADDRESS);
        assert_eq!(adc.measure(2), Err(Error::Timeout));
        i2c.done();
    }
}
