//! Register maps: where each quantity of a node lives, and the Modbus tables built from them.
//!
//! A node declares its map as a `static` slice of [`MapPoint`]s, mirroring its profile in
//! `profiles/` point by point (the crate's tests load every profile and prove it), and
//! implements [`Node`]: the latest value of each quantity in the map's engineering unit, and
//! what to do when a writable point is written. The blanket [`DataModel`] implementation
//! then serves the four Modbus tables from that map, encoding with the same
//! `protocols::registers` codecs the agent decodes with.

use protocols::Quantity;
use protocols::registers::{DataType, Table, WordOrder, decode_raw, encode_raw};

use crate::modbus::pdu::{DataModel, Exception, bit, set_bit};

/// One point of a node's register map (the firmware's copy of a profile point).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapPoint {
    /// The quantity.
    pub quantity: Quantity,
    /// The table it lives in.
    pub table: Table,
    /// Protocol address, 0-based.
    pub address: u16,
    /// Register type.
    pub data_type: DataType,
    /// Word order of multi-register types.
    pub word_order: WordOrder,
    /// `engineering = raw * scale + offset`.
    pub scale: f64,
    /// See `scale`.
    pub offset: f64,
    /// Engineering unit (as the profile writes it).
    pub unit: &'static str,
    /// Whether the master may write it.
    pub writable: bool,
    /// Lowest value a write may set (engineering unit).
    pub min: Option<f64>,
    /// Highest value a write may set.
    pub max: Option<f64>,
}

impl MapPoint {
    /// A read-only point with scale 1, offset 0, big-endian words, in the canonical unit.
    pub const fn new(
        quantity: Quantity,
        table: Table,
        address: u16,
        data_type: DataType,
    ) -> MapPoint {
        MapPoint {
            quantity,
            table,
            address,
            data_type,
            word_order: WordOrder::Abcd,
            scale: 1.0,
            offset: 0.0,
            unit: quantity.unit(),
            writable: false,
            min: None,
            max: None,
        }
    }

    /// With a word order.
    pub const fn word_order(mut self, order: WordOrder) -> MapPoint {
        self.word_order = order;
        self
    }

    /// With a scale.
    pub const fn scale(mut self, scale: f64) -> MapPoint {
        self.scale = scale;
        self
    }

    /// With an engineering unit.
    pub const fn unit(mut self, unit: &'static str) -> MapPoint {
        self.unit = unit;
        self
    }

    /// With a rated or settable range.
    pub const fn range(mut self, min: f64, max: f64) -> MapPoint {
        self.min = Some(min);
        self.max = Some(max);
        self
    }

    /// Writable.
    pub const fn writable(mut self) -> MapPoint {
        self.writable = true;
        self
    }

    /// Registers or bits the point occupies.
    pub const fn width(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.data_type.words()
        }
    }

    /// One past the last address.
    pub const fn end(&self) -> u32 {
        self.address as u32 + self.width() as u32
    }

    /// Encodes an engineering value into the point's registers, saturating at the limits of
    /// the type the way a device's firmware clamps an out-of-scale reading.
    pub fn encode(&self, engineering: f64, out: &mut [u16; 4]) -> Result<usize, Exception> {
        if !engineering.is_finite() {
            return Err(Exception::ServerDeviceFailure);
        }
        let raw = (engineering - self.offset) / self.scale;
        let (lo, hi) = self.data_type.raw_range();
        let raw = if raw < lo {
            lo
        } else if raw > hi {
            hi
        } else {
            raw
        };
        encode_raw(self.data_type, self.word_order, raw, out)
            .map_err(|_| Exception::ServerDeviceFailure)
    }

    /// Decodes registers written by a master into an engineering value.
    pub fn decode(&self, words: &[u16]) -> Result<f64, Exception> {
        let raw = decode_raw(self.data_type, self.word_order, words)
            .map_err(|_| Exception::IllegalDataValue)?;
        Ok(raw * self.scale + self.offset)
    }
}

/// A sensor node served through a register map.
pub trait Node {
    /// The device model, as the profile's `model`.
    fn model(&self) -> &'static str;

    /// The register map.
    fn register_map(&self) -> &'static [MapPoint];

    /// The latest value of a mapped quantity in the map's engineering unit, or `None` while it
    /// is unavailable (the sensor failed or has not been read yet). Booleans are 0 or 1,
    /// enumerations their index.
    fn read_point(&self, quantity: Quantity) -> Option<f64>;

    /// Acts on a write to a writable point (already range-checked against the map).
    fn write_point(&mut self, quantity: Quantity, value: f64) -> Result<(), Exception> {
        let _ = (quantity, value);
        Err(Exception::IllegalDataAddress)
    }
}

/// The span `[first, end)` of the points of a table; reads must stay inside it.
fn table_span(map: &[MapPoint], table: Table) -> Option<(u32, u32)> {
    map.iter()
        .filter(|p| p.table == table)
        .fold(None, |acc, p| match acc {
            None => Some((p.address as u32, p.end())),
            Some((a, b)) => Some((a.min(p.address as u32), b.max(p.end()))),
        })
}

fn check_read(map: &[MapPoint], table: Table, start: u16, count: u16) -> Result<(), Exception> {
    let (first, end) = table_span(map, table).ok_or(Exception::IllegalDataAddress)?;
    if (start as u32) < first || start as u32 + count as u32 > end {
        return Err(Exception::IllegalDataAddress);
    }
    Ok(())
}

/// The points of `table` fully inside `[start, start + count)`, checking that every address
/// in it belongs to a writable point of that table and that no point is cut.
fn check_write(map: &[MapPoint], table: Table, start: u16, count: u16) -> Result<(), Exception> {
    let (start, end) = (start as u32, start as u32 + count as u32);
    let mut covered = 0u32;
    for p in map.iter().filter(|p| p.table == table) {
        let (a, b) = (p.address as u32, p.end());
        if a < end && start < b {
            if !p.writable || a < start || b > end {
                return Err(Exception::IllegalDataAddress);
            }
            covered += b - a;
        }
    }
    if covered != end - start {
        return Err(Exception::IllegalDataAddress);
    }
    Ok(())
}

fn check_value(p: &MapPoint, v: f64) -> Result<(), Exception> {
    if p.min.is_some_and(|lo| v < lo) || p.max.is_some_and(|hi| v > hi) {
        return Err(Exception::IllegalDataValue);
    }
    Ok(())
}

impl<N: Node + ?Sized> DataModel for N {
    fn read_bits(
        &mut self,
        table: Table,
        start: u16,
        count: u16,
        out: &mut [u8],
    ) -> Result<(), Exception> {
        let map = self.register_map();
        check_read(map, table, start, count)?;
        for p in map.iter().filter(|p| p.table == table) {
            let a = p.address as u32;
            if a >= start as u32 && a < start as u32 + count as u32 {
                let v = self
                    .read_point(p.quantity)
                    .ok_or(Exception::ServerDeviceFailure)?;
                set_bit(out, (a - start as u32) as usize, v != 0.0);
            }
        }
        Ok(())
    }

    fn read_registers(
        &mut self,
        table: Table,
        start: u16,
        out: &mut [u16],
    ) -> Result<(), Exception> {
        let map = self.register_map();
        check_read(map, table, start, out.len() as u16)?;
        let (lo, hi) = (start as u32, start as u32 + out.len() as u32);
        for p in map.iter().filter(|p| p.table == table) {
            let (a, b) = (p.address as u32, p.end());
            if a >= hi || b <= lo {
                continue;
            }
            let v = self
                .read_point(p.quantity)
                .ok_or(Exception::ServerDeviceFailure)?;
            let mut words = [0u16; 4];
            p.encode(v, &mut words)?;
            // Copy the words that fall inside the request (a read may cut a point).
            for addr in a.max(lo)..b.min(hi) {
                out[(addr - lo) as usize] = words[(addr - a) as usize];
            }
        }
        Ok(())
    }

    fn write_coils(&mut self, start: u16, count: u16, packed: &[u8]) -> Result<(), Exception> {
        let map = self.register_map();
        check_write(map, Table::Coil, start, count)?;
        for p in map.iter().filter(|p| p.table == Table::Coil) {
            let a = p.address as u32;
            if a >= start as u32 && a < start as u32 + count as u32 {
                let v = bit(packed, (a - start as u32) as usize) as u8 as f64;
                self.write_point(p.quantity, v)?;
            }
        }
        Ok(())
    }

    fn write_registers(&mut self, start: u16, values: &[u16]) -> Result<(), Exception> {
        let map = self.register_map();
        check_write(map, Table::Holding, start, values.len() as u16)?;
        let points = || {
            map.iter().filter(move |p| {
                p.table == Table::Holding
                    && p.address >= start
                    && (p.address as usize) < start as usize + values.len()
            })
        };
        // Validate every value before acting on any, so a refused write changes nothing.
        for p in points() {
            let at = (p.address - start) as usize;
            check_value(p, p.decode(&values[at..at + p.width() as usize])?)?;
        }
        for p in points() {
            let at = (p.address - start) as usize;
            let v = p.decode(&values[at..at + p.width() as usize])?;
            self.write_point(p.quantity, v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::pdu::{MAX_PDU, handle};

    static MAP: &[MapPoint] = &[
        MapPoint::new(Quantity::CoverOpen, Table::Discrete, 0, DataType::Bool),
        MapPoint::new(Quantity::LampVoltage, Table::Input, 0, DataType::F32)
            .word_order(WordOrder::Cdab),
        MapPoint::new(Quantity::TiltAngle, Table::Input, 4, DataType::I16).scale(0.1),
        MapPoint::new(Quantity::DimmingLevel, Table::Holding, 16, DataType::U16)
            .unit("%")
            .range(0.0, 100.0)
            .writable(),
        MapPoint::new(Quantity::Motion, Table::Coil, 2, DataType::Bool).writable(),
    ];

    struct Fake {
        voltage: Option<f64>,
        dim: f64,
        motion: bool,
    }

    impl Node for Fake {
        fn model(&self) -> &'static str {
            "fake"
        }
        fn register_map(&self) -> &'static [MapPoint] {
            MAP
        }
        fn read_point(&self, q: Quantity) -> Option<f64> {
            match q {
                Quantity::CoverOpen => Some(1.0),
                Quantity::LampVoltage => self.voltage,
                Quantity::TiltAngle => Some(-12.3),
                Quantity::DimmingLevel => Some(self.dim),
                Quantity::Motion => Some(self.motion as u8 as f64),
                _ => None,
            }
        }
        fn write_point(&mut self, q: Quantity, v: f64) -> Result<(), Exception> {
            match q {
                Quantity::DimmingLevel => self.dim = v,
                Quantity::Motion => self.motion = v != 0.0,
                _ => return Err(Exception::IllegalDataAddress),
            }
            Ok(())
        }
    }

    fn run(n: &mut Fake, req: &[u8]) -> std::vec::Vec<u8> {
        let mut out = [0u8; MAX_PDU];
        let len = handle(n, req, &mut out);
        out[..len].to_vec()
    }

    #[test]
    fn reads_encode_with_scale_and_word_order() {
        let mut n = Fake {
            voltage: Some(123.456),
            dim: 40.0,
            motion: false,
        };
        // 123.456f32 = 0x42F6E979, cdab on the wire: E979 42F6; a gap reads 0; -123 as i16.
        assert_eq!(
            run(&mut n, &[4, 0, 0, 0, 5]),
            [4, 10, 0xE9, 0x79, 0x42, 0xF6, 0, 0, 0, 0, 0xFF, 0x85]
        );
        // A read may cut a multi-register point.
        assert_eq!(run(&mut n, &[4, 0, 1, 0, 1]), [4, 2, 0x42, 0xF6]);
        assert_eq!(run(&mut n, &[2, 0, 0, 0, 1]), [2, 1, 1]);
        assert_eq!(run(&mut n, &[3, 0, 16, 0, 1]), [3, 2, 0, 40]);
    }

    #[test]
    fn unmapped_unavailable_and_read_only() {
        let mut n = Fake {
            voltage: None,
            dim: 0.0,
            motion: false,
        };
        assert_eq!(run(&mut n, &[4, 0, 5, 0, 1]), [0x84, 2], "past the table");
        assert_eq!(run(&mut n, &[3, 0, 0, 0, 1]), [0x83, 2], "before the table");
        assert_eq!(run(&mut n, &[1, 0, 0, 0, 1]), [0x81, 2]);
        assert_eq!(
            run(&mut n, &[4, 0, 0, 0, 2]),
            [0x84, 4],
            "sensor unavailable"
        );
        assert_eq!(run(&mut n, &[6, 0, 15, 0, 1]), [0x86, 2], "not a point");
    }

    #[test]
    fn writes_check_range_then_act() {
        let mut n = Fake {
            voltage: Some(230.0),
            dim: 0.0,
            motion: false,
        };
        assert_eq!(run(&mut n, &[6, 0, 16, 0, 101]), [0x86, 3]);
        assert_eq!(n.dim, 0.0);
        assert_eq!(run(&mut n, &[6, 0, 16, 0, 55]), [6, 0, 16, 0, 55]);
        assert_eq!(n.dim, 55.0);
        assert_eq!(run(&mut n, &[16, 0, 16, 0, 1, 2, 0, 60]), [16, 0, 16, 0, 1]);
        assert_eq!(run(&mut n, &[3, 0, 16, 0, 1]), [3, 2, 0, 60]);
        assert_eq!(
            run(&mut n, &[16, 0, 15, 0, 2, 4, 0, 1, 0, 2]),
            [0x90, 2],
            "spills off the point"
        );
        assert_eq!(run(&mut n, &[5, 0, 2, 0xFF, 0]), [5, 0, 2, 0xFF, 0]);
        assert!(n.motion);
        assert_eq!(run(&mut n, &[15, 0, 2, 0, 1, 1, 0]), [15, 0, 2, 0, 1]);
        assert!(!n.motion);
        assert_eq!(run(&mut n, &[5, 0, 3, 0xFF, 0]), [0x85, 2]);
    }
}
