//! The Modbus application layer: one request PDU in, one response PDU out.
//!
//! Transport-free, so the RTU slave ([`super::rtu`]) and Modbus TCP ([`super::tcp`]) share it.
//! Checks follow the order of the Modbus Application Protocol 1.1b3 (section 6, the state
//! diagrams): function code, then quantity and byte count (exception 3), then address range
//! (exception 2), then the device itself (exceptions 2, 3 or 4 from the [`DataModel`]).

use protocols::registers::Table;

/// Largest PDU: 256-byte RTU ADU minus address and CRC.
pub const MAX_PDU: usize = 253;

/// The function codes this slave serves.
pub mod function {
    /// Read coils.
    pub const READ_COILS: u8 = 0x01;
    /// Read discrete inputs.
    pub const READ_DISCRETE_INPUTS: u8 = 0x02;
    /// Read holding registers.
    pub const READ_HOLDING_REGISTERS: u8 = 0x03;
    /// Read input registers.
    pub const READ_INPUT_REGISTERS: u8 = 0x04;
    /// Write single coil.
    pub const WRITE_SINGLE_COIL: u8 = 0x05;
    /// Write single register.
    pub const WRITE_SINGLE_REGISTER: u8 = 0x06;
    /// Write multiple coils.
    pub const WRITE_MULTIPLE_COILS: u8 = 0x0F;
    /// Write multiple registers.
    pub const WRITE_MULTIPLE_REGISTERS: u8 = 0x10;

    /// Whether a function code changes state (the only kind a broadcast may carry).
    pub const fn is_write(code: u8) -> bool {
        matches!(
            code,
            WRITE_SINGLE_COIL
                | WRITE_SINGLE_REGISTER
                | WRITE_MULTIPLE_COILS
                | WRITE_MULTIPLE_REGISTERS
        )
    }
}

/// A Modbus exception code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exception {
    /// The function code is not supported.
    IllegalFunction = 0x01,
    /// An address in the request is not mapped (or not writable).
    IllegalDataAddress = 0x02,
    /// A quantity, byte count or value is not allowed.
    IllegalDataValue = 0x03,
    /// The device could not perform the action (a sensor or actuator failed).
    ServerDeviceFailure = 0x04,
}

/// The device side of the application layer: the four tables.
///
/// The handler has checked quantities and the 16-bit address range before calling; an
/// implementation checks its own map and answers with the exception a real device would.
pub trait DataModel {
    /// Reads `count` bits of a bit table (`Coil` or `Discrete`) starting at `start` into `out`,
    /// packed least significant bit first (the wire layout); `out` is zeroed and exactly long
    /// enough.
    fn read_bits(
        &mut self,
        table: Table,
        start: u16,
        count: u16,
        out: &mut [u8],
    ) -> Result<(), Exception>;

    /// Reads registers of a register table (`Input` or `Holding`) starting at `start`.
    fn read_registers(
        &mut self,
        table: Table,
        start: u16,
        out: &mut [u16],
    ) -> Result<(), Exception>;

    /// Writes `count` coils from `packed` bits (least significant bit first).
    fn write_coils(&mut self, start: u16, count: u16, packed: &[u8]) -> Result<(), Exception>;

    /// Writes holding registers.
    fn write_registers(&mut self, start: u16, values: &[u16]) -> Result<(), Exception>;
}

/// Bit `i` of a packed bit field (least significant bit first).
pub fn bit(packed: &[u8], i: usize) -> bool {
    packed.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

/// Sets bit `i` of a packed bit field.
pub fn set_bit(packed: &mut [u8], i: usize, value: bool) {
    if let Some(b) = packed.get_mut(i / 8) {
        if value {
            *b |= 1 << (i % 8);
        } else {
            *b &= !(1 << (i % 8));
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Serves one request PDU (function code first) and writes the response PDU into `out`,
/// returning its length. Every request gets an answer: a normal response or an exception
/// response (function code | 0x80, exception code). Whether to send it is the transport's
/// business (broadcasts are executed but not answered).
pub fn handle<M: DataModel + ?Sized>(
    model: &mut M,
    request: &[u8],
    out: &mut [u8; MAX_PDU],
) -> usize {
    let Some((&code, data)) = request.split_first() else {
        return exception(out, 0, Exception::IllegalFunction);
    };
    match serve(model, code, data, out) {
        Ok(n) => n,
        Err(e) => exception(out, code, e),
    }
}

fn exception(out: &mut [u8; MAX_PDU], code: u8, e: Exception) -> usize {
    out[0] = code | 0x80;
    out[1] = e as u8;
    2
}

/// The start + count must stay inside the 16-bit address space.
fn check_range(start: u16, count: u16) -> Result<(), Exception> {
    if start as u32 + count as u32 > 0x1_0000 {
        Err(Exception::IllegalDataAddress)
    } else {
        Ok(())
    }
}

fn serve<M: DataModel + ?Sized>(
    model: &mut M,
    code: u8,
    data: &[u8],
    out: &mut [u8; MAX_PDU],
) -> Result<usize, Exception> {
    use function::*;
    match code {
        READ_COILS | READ_DISCRETE_INPUTS => {
            if data.len() != 4 {
                return Err(Exception::IllegalDataValue);
            }
            let (start, count) = (be16(data, 0), be16(data, 2));
            if !(1..=2000).contains(&count) {
                return Err(Exception::IllegalDataValue);
            }
            check_range(start, count)?;
            let bytes = count.div_ceil(8) as usize;
            let table = if code == READ_COILS {
                Table::Coil
            } else {
                Table::Discrete
            };
            out[0] = code;
            out[1] = bytes as u8;
            let field = &mut out[2..2 + bytes];
            field.fill(0);
            model.read_bits(table, start, count, field)?;
            Ok(2 + bytes)
        }
        READ_HOLDING_REGISTERS | READ_INPUT_REGISTERS => {
            if data.len() != 4 {
                return Err(Exception::IllegalDataValue);
            }
            let (start, count) = (be16(data, 0), be16(data, 2));
            if !(1..=125).contains(&count) {
                return Err(Exception::IllegalDataValue);
            }
            check_range(start, count)?;
            let table = if code == READ_HOLDING_REGISTERS {
                Table::Holding
            } else {
                Table::Input
            };
            let mut regs = [0u16; 125];
            let regs = &mut regs[..count as usize];
            model.read_registers(table, start, regs)?;
            out[0] = code;
            out[1] = (count * 2) as u8;
            for (i, r) in regs.iter().enumerate() {
                out[2 + 2 * i..4 + 2 * i].copy_from_slice(&r.to_be_bytes());
            }
            Ok(2 + 2 * count as usize)
        }
        WRITE_SINGLE_COIL => {
            if data.len() != 4 {
                return Err(Exception::IllegalDataValue);
            }
            let (addr, value) = (be16(data, 0), be16(data, 2));
            let on = match value {
                0xFF00 => 1u8,
                0x0000 => 0u8,
                _ => return Err(Exception::IllegalDataValue),
            };
            model.write_coils(addr, 1, &[on])?;
            out[0] = code;
            out[1..5].copy_from_slice(data);
            Ok(5)
        }
        WRITE_SINGLE_REGISTER => {
            if data.len() != 4 {
                return Err(Exception::IllegalDataValue);
            }
            let (addr, value) = (be16(data, 0), be16(data, 2));
            model.write_registers(addr, &[value])?;
            out[0] = code;
            out[1..5].copy_from_slice(data);
            Ok(5)
        }
        WRITE_MULTIPLE_COILS => {
            if data.len() < 5 {
                return Err(Exception::IllegalDataValue);
            }
            let (start, count, bytes) = (be16(data, 0), be16(data, 2), data[4] as usize);
            if !(1..=0x07B0).contains(&count)
                || bytes != count.div_ceil(8) as usize
                || data.len() != 5 + bytes
            {
                return Err(Exception::IllegalDataValue);
            }
            check_range(start, count)?;
            model.write_coils(start, count, &data[5..])?;
            out[0] = code;
            out[1..5].copy_from_slice(&data[..4]);
            Ok(5)
        }
        WRITE_MULTIPLE_REGISTERS => {
            if data.len() < 5 {
                return Err(Exception::IllegalDataValue);
            }
            let (start, count, bytes) = (be16(data, 0), be16(data, 2), data[4] as usize);
            if !(1..=123).contains(&count) || bytes != 2 * count as usize || data.len() != 5 + bytes
            {
                return Err(Exception::IllegalDataValue);
            }
            check_range(start, count)?;
            let mut regs = [0u16; 123];
            let regs = &mut regs[..count as usize];
            for (i, r) in regs.iter_mut().enumerate() {
                *r = be16(data, 5 + 2 * i);
            }
            model.write_registers(start, regs)?;
            out[0] = code;
            out[1..5].copy_from_slice(&data[..4]);
            Ok(5)
        }
        _ => Err(Exception::IllegalFunction),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plain four-table device for protocol tests: 16 of each, coil 15 and holding 15
    /// fail like a broken actuator, holding values above 1000 are refused.
    #[derive(Default)]
    pub(crate) struct Tables {
        pub coils: [bool; 16],
        pub discrete: [bool; 16],
        pub input: [u16; 16],
        pub holding: [u16; 16],
    }

    fn span(start: u16, count: u16) -> Result<core::ops::Range<usize>, Exception> {
        let end = start as usize + count as usize;
        if end > 16 {
            return Err(Exception::IllegalDataAddress);
        }
        Ok(start as usize..end)
    }

    impl DataModel for Tables {
        fn read_bits(
            &mut self,
            table: Table,
            start: u16,
            count: u16,
            out: &mut [u8],
        ) -> Result<(), Exception> {
            let src = if table == Table::Coil {
                &self.coils
            } else {
                &self.discrete
            };
            for (i, a) in span(start, count)?.enumerate() {
                set_bit(out, i, src[a]);
            }
            Ok(())
        }
        fn read_registers(
            &mut self,
            table: Table,
            start: u16,
            out: &mut [u16],
        ) -> Result<(), Exception> {
            let src = if table == Table::Input {
                &self.input
            } else {
                &self.holding
            };
            let r = span(start, out.len() as u16)?;
            out.copy_from_slice(&src[r]);
            Ok(())
        }
        fn write_coils(&mut self, start: u16, count: u16, packed: &[u8]) -> Result<(), Exception> {
            let r = span(start, count)?;
            if r.contains(&15) {
                return Err(Exception::ServerDeviceFailure);
            }
            for (i, a) in r.enumerate() {
                self.coils[a] = bit(packed, i);
            }
            Ok(())
        }
        fn write_registers(&mut self, start: u16, values: &[u16]) -> Result<(), Exception> {
            let r = span(start, values.len() as u16)?;
            if values.iter().any(|v| *v > 1000) {
                return Err(Exception::IllegalDataValue);
            }
            if r.contains(&15) {
                return Err(Exception::ServerDeviceFailure);
            }
            self.holding[r].copy_from_slice(values);
            Ok(())
        }
    }

    fn run(t: &mut Tables, req: &[u8]) -> std::vec::Vec<u8> {
        let mut out = [0u8; MAX_PDU];
        let n = handle(t, req, &mut out);
        out[..n].to_vec()
    }

    #[test]
    fn read_coils_and_discrete_pack_lsb_first() {
        let mut t = Tables::default();
        t.coils[0] = true;
        t.coils[2] = true;
        t.coils[9] = true;
        t.discrete[1] = true;
        assert_eq!(
            run(&mut t, &[1, 0, 0, 0, 10]),
            [1, 2, 0b0000_0101, 0b0000_0010]
        );
        assert_eq!(run(&mut t, &[2, 0, 1, 0, 1]), [2, 1, 1]);
    }

    #[test]
    fn read_registers_big_endian() {
        let mut t = Tables::default();
        t.input[3] = 0x1234;
        t.holding[0] = 0xBEEF;
        assert_eq!(run(&mut t, &[4, 0, 3, 0, 1]), [4, 2, 0x12, 0x34]);
        assert_eq!(run(&mut t, &[3, 0, 0, 0, 2]), [3, 4, 0xBE, 0xEF, 0, 0]);
    }

    #[test]
    fn writes_echo_and_act() {
        let mut t = Tables::default();
        assert_eq!(run(&mut t, &[5, 0, 4, 0xFF, 0]), [5, 0, 4, 0xFF, 0]);
        assert!(t.coils[4]);
        assert_eq!(run(&mut t, &[5, 0, 4, 0, 0]), [5, 0, 4, 0, 0]);
        assert!(!t.coils[4]);
        assert_eq!(run(&mut t, &[6, 0, 2, 0x01, 0x02]), [6, 0, 2, 1, 2]);
        assert_eq!(t.holding[2], 0x0102);
        assert_eq!(run(&mut t, &[15, 0, 1, 0, 3, 1, 0b101]), [15, 0, 1, 0, 3]);
        assert_eq!(&t.coils[1..4], &[true, false, true]);
        assert_eq!(
            run(&mut t, &[16, 0, 5, 0, 2, 4, 0, 7, 0, 9]),
            [16, 0, 5, 0, 2]
        );
        assert_eq!(&t.holding[5..7], &[7, 9]);
    }

    #[test]
    fn exceptions() {
        let mut t = Tables::default();
        // Illegal function.
        assert_eq!(run(&mut t, &[0x2B, 0x0E, 1, 0]), [0xAB, 1]);
        assert_eq!(run(&mut t, &[]), [0x80, 1]);
        // Quantity out of range, before the address check.
        assert_eq!(run(&mut t, &[3, 0xFF, 0xFF, 0, 0]), [0x83, 3]);
        assert_eq!(run(&mut t, &[4, 0, 0, 0, 126]), [0x84, 3]);
        assert_eq!(run(&mut t, &[1, 0, 0, 0x07, 0xD1]), [0x81, 3]);
        // Address space overflow and unmapped addresses.
        assert_eq!(run(&mut t, &[3, 0xFF, 0xFF, 0, 2]), [0x83, 2]);
        assert_eq!(run(&mut t, &[4, 0, 15, 0, 2]), [0x84, 2]);
        assert_eq!(run(&mut t, &[2, 0, 16, 0, 1]), [0x82, 2]);
        // Bad coil value, bad byte counts, short requests.
        assert_eq!(run(&mut t, &[5, 0, 0, 0x12, 0x34]), [0x85, 3]);
        assert_eq!(run(&mut t, &[15, 0, 0, 0, 9, 1, 0xFF]), [0x8F, 3]);
        assert_eq!(run(&mut t, &[16, 0, 0, 0, 1, 2, 0]), [0x90, 3]);
        assert_eq!(run(&mut t, &[16, 0, 0, 0, 1, 4, 0, 1, 0, 2]), [0x90, 3]);
        assert_eq!(run(&mut t, &[3, 0, 0, 0]), [0x83, 3]);
        assert_eq!(run(&mut t, &[6, 0, 0]), [0x86, 3]);
        // The device's own verdicts.
        assert_eq!(run(&mut t, &[6, 0, 0, 0x10, 0]), [0x86, 3]);
        assert_eq!(run(&mut t, &[6, 0, 15, 0, 1]), [0x86, 4]);
        assert_eq!(run(&mut t, &[5, 0, 15, 0xFF, 0]), [0x85, 4]);
        assert_eq!(t.holding, [0; 16]);
    }

    #[test]
    fn largest_reads_fit_the_pdu() {
        let mut t = Tables::default();
        // 125 registers from 0 are unmapped here beyond 16, but the PDU arithmetic is what counts.
        let mut out = [0u8; MAX_PDU];
        let n = handle(&mut t, &[3, 0, 0, 0, 16], &mut out);
        assert_eq!(n, 2 + 32);
        assert_eq!(2 + 2 * 125, 252);
        assert!(2 + 2000usize.div_ceil(8) <= MAX_PDU);
    }
}
