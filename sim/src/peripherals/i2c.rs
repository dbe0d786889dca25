//! A simulated I2C bus: chip models at addresses, behind the `embedded_hal::i2c::I2c` trait.
//!
//! Each driver gets its own [`SimI2c`] handle onto the same bus (as `embedded-hal-bus` gives
//! on a board). An address with no chip NACKs, as on a real bus.

use std::sync::{Arc, Mutex};

use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};

/// A chip on the bus, seen from the wire: the bytes of each write and each read.
pub trait I2cChip: Send {
    /// A write phase (register pointer and maybe data).
    fn write(&mut self, bytes: &[u8]) -> Result<(), ErrorKind>;
    /// A read phase (fills `buf`).
    fn read(&mut self, buf: &mut [u8]) -> Result<(), ErrorKind>;
}

#[derive(Default)]
struct Bus {
    chips: Vec<(u8, Box<dyn I2cChip>)>,
    transactions: u64,
}

/// A handle onto a simulated bus; clones share the bus.
#[derive(Clone, Default)]
pub struct SimI2c {
    bus: Arc<Mutex<Bus>>,
}

impl SimI2c {
    /// An empty bus.
    pub fn new() -> SimI2c {
        SimI2c::default()
    }

    /// Puts a chip at an address (replacing one already there).
    pub fn attach(&self, address: u8, chip: impl I2cChip + 'static) {
        let mut bus = self.bus.lock().unwrap_or_else(|e| e.into_inner());
        bus.chips.retain(|(a, _)| *a != address);
        bus.chips.push((address, Box::new(chip)));
    }

    /// Transactions so far (for tests and diagnostics).
    pub fn transactions(&self) -> u64 {
        self.bus
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .transactions
    }
}

impl ErrorType for SimI2c {
    type Error = ErrorKind;
}

impl I2c for SimI2c {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        let mut bus = self.bus.lock().unwrap_or_else(|e| e.into_inner());
        bus.transactions += 1;
        let Some((_, chip)) = bus.chips.iter_mut().find(|(a, _)| *a == address) else {
            return Err(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address));
        };
        for op in operations {
            match op {
                Operation::Write(bytes) => chip.write(bytes)?,
                Operation::Read(buf) => chip.read(buf)?,
            }
        }
        Ok(())
    }
}
