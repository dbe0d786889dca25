//! Atlas Scientific EZO circuits over I2C: pH, dissolved oxygen, conductivity and RTD
//! temperature (the water-quality station's probes).
//!
//! From the EZO datasheets' I2C mode: the master writes an ASCII command (`R` = one reading),
//! waits the command's processing time (pH 900 ms, the others 600 ms), then reads: the first
//! byte is a response code (1 success, 2 syntax error, 254 still processing, 255 no data),
//! followed by ASCII text ended by NUL. Multi-parameter outputs are comma-separated (the
//! conductivity circuit may also send TDS, salinity and specific gravity); the first field is
//! the primary reading.
//!
//! Reading is split into [`Ezo::start_reading`] and [`Ezo::read_value`] so a node never
//! blocks its Modbus slave for the processing time.

use embedded_hal::i2c::I2c;

/// Which circuit, with its factory address and reading time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Circuit {
    /// EZO-pH, 0x63, 900 ms.
    Ph,
    /// EZO-DO (mg/L), 0x61, 600 ms.
    DissolvedOxygen,
    /// EZO-EC (µS/cm), 0x64, 600 ms.
    Conductivity,
    /// EZO-RTD (°C), 0x66, 600 ms.
    Temperature,
}

impl Circuit {
    /// The factory I2C address.
    pub const fn default_address(self) -> u8 {
        match self {
            Circuit::Ph => 0x63,
            Circuit::DissolvedOxygen => 0x61,
            Circuit::Conductivity => 0x64,
            Circuit::Temperature => 0x66,
        }
    }

    /// How long an `R` command takes, ms.
    pub const fn reading_time_ms(self) -> u32 {
        match self {
            Circuit::Ph => 900,
            _ => 600,
        }
    }
}

/// Response codes (first byte of a read).
pub mod code {
    /// The command succeeded; data follows.
    pub const SUCCESS: u8 = 1;
    /// The circuit did not understand the command.
    pub const SYNTAX_ERROR: u8 = 2;
    /// Still processing.
    pub const PENDING: u8 = 254;
    /// Nothing to send.
    pub const NO_DATA: u8 = 255;
}

/// Longest response read: code + the conductivity circuit's four fields + NUL.
pub const RESPONSE_LEN: usize = 41;

/// Driver errors.
#[derive(Debug, PartialEq)]
pub enum Error<E> {
    /// The bus failed.
    I2c(E),
    /// The circuit is still processing the command.
    Pending,
    /// The circuit has nothing to send (no command was given).
    NoData,
    /// The circuit rejected the command.
    Syntax,
    /// The response is not a number.
    Malformed,
}

/// One EZO circuit.
pub struct Ezo<I2C> {
    i2c: I2C,
    address: u8,
    circuit: Circuit,
}

impl<I2C: I2c> Ezo<I2C> {
    /// A circuit at its factory address.
    pub fn new(i2c: I2C, circuit: Circuit) -> Self {
        Self::with_address(i2c, circuit, circuit.default_address())
    }

    /// A circuit at another address (set with the `I2C,n` command).
    pub fn with_address(i2c: I2C, circuit: Circuit, address: u8) -> Self {
        Ezo {
            i2c,
            address,
            circuit,
        }
    }

    /// Gives the bus back.
    pub fn destroy(self) -> I2C {
        self.i2c
    }

    /// Which circuit.
    pub fn circuit(&self) -> Circuit {
        self.circuit
    }

    /// Sends a raw ASCII command.
    pub fn command(&mut self, command: &[u8]) -> Result<(), Error<I2C::Error>> {
        self.i2c.write(self.address, command).map_err(Error::I2c)
    }

    /// Starts one reading; collect it after [`Circuit::reading_time_ms`].
    pub fn start_reading(&mut self) -> Result<(), Error<I2C::Error>> {
        self.command(b"R")
    }

    /// Collects the reading started before: the first field of the response.
    pub fn read_value(&mut self) -> Result<f32, Error<I2C::Error>> {
        let mut buf = [0u8; RESPONSE_LEN];
        self.i2c.read(self.address, &mut buf).map_err(Error::I2c)?;
        match buf[0] {
            code::SUCCESS => parse_first_field(&buf[1..]).ok_or(Error::Malformed),
            code::PENDING => Err(Error::Pending),
            code::NO_DATA => Err(Error::NoData),
            code::SYNTAX_ERROR => Err(Error::Syntax),
            _ => Err(Error::Malformed),
        }
    }
}

/// The number before the first comma or NUL.
fn parse_first_field(text: &[u8]) -> Option<f32> {
    let end = text
        .iter()
        .position(|b| *b == 0 || *b == b',')
        .unwrap_or(text.len());
    core::str::from_utf8(&text[..end]).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};
    use std::vec::Vec;

    fn response(code: u8, text: &str) -> Vec<u8> {
        let mut v = vec_of(RESPONSE_LEN);
        v[0] = code;
        v[1..1 + text.len()].copy_from_slice(text.as_bytes());
        v
    }

    fn vec_of(n: usize) -> Vec<u8> {
        std::vec![0u8; n]
    }

    #[test]
    fn reading_cycle() {
        let mut i2c = Mock::new(&[
            T::write(0x63, b"R".to_vec()),
            T::read(0x63, response(code::PENDING, "")),
            T::read(0x63, response(code::SUCCESS, "7.02")),
            T::write(0x64, b"R".to_vec()),
            T::read(0x64, response(code::SUCCESS, "1413,707,0.70,1.000")),
            T::read(0x64, response(code::NO_DATA, "")),
            T::read(0x64, response(code::SYNTAX_ERROR, "")),
            T::read(0x64, response(code::SUCCESS, "abc")),
        ]);
        let mut ph = Ezo::new(i2c.clone(), Circuit::Ph);
        ph.start_reading().unwrap();
        assert_eq!(ph.read_value(), Err(Error::Pending));
        assert!((ph.read_value().unwrap() - 7.02).abs() < 1e-6);
        let mut ec = Ezo::new(i2c.clone(), Circuit::Conductivity);
        ec.start_reading().unwrap();
        assert_eq!(ec.read_value().unwrap(), 1413.0);
        assert_eq!(ec.read_value(), Err(Error::NoData));
        assert_eq!(ec.read_value(), Err(Error::Syntax));
        assert_eq!(ec.read_value(), Err(Error::Malformed));
        i2c.done();
    }
}
