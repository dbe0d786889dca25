//! Modbus register codecs: how a typed value sits in 16-bit registers.
//!
//! Shared by the agent (which decodes what it polls and encodes what it writes) and the
//! firmware (which fills its register map), so both sides agree by construction; tests against
//! pymodbus keep the shared code honest.
//!
//! Word orders name the bytes of the value, most significant first, as they appear on the wire:
//! `abcd` is big-endian words in big-endian order, `cdab` swaps the words, `badc` swaps the bytes
//! inside each word, `dcba` is fully little-endian. For 64-bit types the same two swaps apply to
//! four words; for 16-bit types only the byte swap matters.

use core::fmt;
use serde::{Deserialize, Serialize};

/// The register type of a point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// One bit (coil or discrete input), or a register that is nonzero.
    Bool,
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit.
    I16,
    /// Unsigned 32-bit over two registers.
    U32,
    /// Signed 32-bit over two registers.
    I32,
    /// IEEE 754 single over two registers.
    F32,
    /// Unsigned 64-bit over four registers.
    U64,
    /// Signed 64-bit over four registers.
    I64,
    /// IEEE 754 double over four registers.
    F64,
}

impl DataType {
    /// How many 16-bit registers the type occupies (a bool in a register table takes one).
    pub const fn words(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
        }
    }

    /// The name used in profiles.
    pub const fn name(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::F32 => "f32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F64 => "f64",
        }
    }

    /// Whether the type holds whole numbers only (written values are rounded).
    pub const fn is_integer(self) -> bool {
        !matches!(self, DataType::F32 | DataType::F64)
    }

    /// The range of raw values the type can hold.
    pub fn raw_range(self) -> (f64, f64) {
        match self {
            DataType::Bool => (0.0, 1.0),
            DataType::U16 => (0.0, u16::MAX as f64),
            DataType::I16 => (i16::MIN as f64, i16::MAX as f64),
            DataType::U32 => (0.0, u32::MAX as f64),
            DataType::I32 => (i32::MIN as f64, i32::MAX as f64),
            DataType::F32 => (f32::MIN as f64, f32::MAX as f64),
            DataType::U64 => (0.0, u64::MAX as f64),
            DataType::I64 => (i64::MIN as f64, i64::MAX as f64),
            DataType::F64 => (f64::MIN, f64::MAX),
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Byte and word order of multi-byte values (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// Big-endian: most significant word first, most significant byte first.
    #[default]
    Abcd,
    /// Words swapped (least significant word first), bytes big-endian.
    Cdab,
    /// Bytes swapped inside each word, words big-endian.
    Badc,
    /// Fully little-endian.
    Dcba,
}

impl WordOrder {
    fn swaps(self) -> (bool, bool) {
        // (reverse word order, swap bytes within each word)
        match self {
            WordOrder::Abcd => (false, false),
            WordOrder::Cdab => (true, false),
            WordOrder::Badc => (false, true),
            WordOrder::Dcba => (true, true),
        }
    }

    /// The name used in profiles.
    pub const fn name(self) -> &'static str {
        match self {
            WordOrder::Abcd => "abcd",
            WordOrder::Cdab => "cdab",
            WordOrder::Badc => "badc",
            WordOrder::Dcba => "dcba",
        }
    }
}

/// The four Modbus tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    /// Read/write bits (function codes 1, 5, 15).
    Coil,
    /// Read-only bits (function code 2).
    Discrete,
    /// Read-only registers (function code 4).
    Input,
    /// Read/write registers (function codes 3, 6, 16).
    Holding,
}

impl Table {
    /// Whether the table holds bits rather than registers.
    pub const fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// Whether the master may write the table.
    pub const fn is_writable(self) -> bool {
        matches!(self, Table::Coil | Table::Holding)
    }

    /// Largest count one read request may ask for (Modbus application protocol 1.1b3).
    pub const fn max_read(self) -> u16 {
        if self.is_bits() { 2000 } else { 125 }
    }
}

/// Why registers could not be turned into a value or back.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum RegisterError {
    /// Fewer registers than the type needs.
    #[error("{data_type} needs {needed} registers, got {got}")]
    TooFewWords {
        /// The point's type.
        data_type: DataType,
        /// Registers needed.
        needed: u16,
        /// Registers given.
        got: usize,
    },
    /// A decoded float is NaN or infinite (an unset register, or a wrong word order).
    #[error("decoded value is not finite")]
    NotFinite,
    /// A value to write does not fit the point's type.
    #[error("value {value} does not fit {data_type}")]
    OutOfRange {
        /// The raw value after scale and offset.
        value: f64,
        /// The point's type.
        data_type: DataType,
    },
}

/// Reassembles the registers into a big-endian integer of `n` words (n <= 4).
fn gather(words: &[u16], n: usize, order: WordOrder) -> u64 {
    let (rev_words, swap_bytes) = order.swaps();
    let mut acc = 0u64;
    for i in 0..n {
        let w = if rev_words {
            words[n - 1 - i]
        } else {
            words[i]
        };
        let w = if swap_bytes { w.swap_bytes() } else { w };
        acc = (acc << 16) | w as u64;
    }
    acc
}

/// Spreads a big-endian integer of `n` words into registers in the given order.
fn scatter(mut acc: u64, n: usize, order: WordOrder, out: &mut [u16]) {
    let (rev_words, swap_bytes) = order.swaps();
    for i in (0..n).rev() {
        let w = (acc & 0xffff) as u16;
        acc >>= 16;
        let w = if swap_bytes { w.swap_bytes() } else { w };
        let at = if rev_words { n - 1 - i } else { i };
        out[at] = w;
    }
}

/// Decodes the raw (unscaled) value of a point from its registers.
pub fn decode_raw(
    data_type: DataType,
    order: WordOrder,
    words: &[u16],
) -> Result<f64, RegisterError> {
    let n = data_type.words() as usize;
    if words.len() < n {
        return Err(RegisterError::TooFewWords {
            data_type,
            needed: n as u16,
            got: words.len(),
        });
    }
    let bits = gather(words, n, order);
    let v = match data_type {
        DataType::Bool => (bits != 0) as u8 as f64,
        DataType::U16 => bits as u16 as f64,
        DataType::I16 => bits as u16 as i16 as f64,
        DataType::U32 => bits as u32 as f64,
        DataType::I32 => bits as u32 as i32 as f64,
        DataType::F32 => f32::from_bits(bits as u32) as f64,
        DataType::U64 => bits as f64,
        DataType::I64 => bits as i64 as f64,
        DataType::F64 => f64::from_bits(bits),
    };
    if v.is_finite() {
        Ok(v)
    } else {
        Err(RegisterError::NotFinite)
    }
}

/// Encodes a raw (unscaled) value into registers. Integers are rounded to the nearest whole
/// number; a value outside the type's range is refused rather than wrapped.
pub fn encode_raw(
    data_type: DataType,
    order: WordOrder,
    value: f64,
    out: &mut [u16],
) -> Result<usize, RegisterError> {
    let n = data_type.words() as usize;
    if out.len() < n {
        return Err(RegisterError::TooFewWords {
            data_type,
            needed: n as u16,
            got: out.len(),
        });
    }
    if !value.is_finite() {
        return Err(RegisterError::NotFinite);
    }
    let out_of_range = RegisterError::OutOfRange { value, data_type };
    let rounded = round_half_away(value);
    let (lo, hi) = data_type.raw_range();
    if data_type.is_integer() && (rounded < lo || rounded > hi) {
        return Err(out_of_range);
    }
    let bits: u64 = match data_type {
        DataType::Bool => (value != 0.0) as u64,
        DataType::U16 => rounded as u16 as u64,
        DataType::I16 => rounded as i16 as u16 as u64,
        DataType::U32 => rounded as u32 as u64,
        DataType::I32 => rounded as i32 as u32 as u64,
        DataType::F32 => {
            let f = value as f32;
            if !f.is_finite() {
                return Err(out_of_range);
            }
            f.to_bits() as u64
        }
        DataType::U64 => rounded as u64,
        DataType::I64 => rounded as i64 as u64,
        DataType::F64 => value.to_bits(),
    };
    scatter(bits, n, order, out);
    Ok(n)
}

/// Rounds half away from zero without `std` (`f64::round` needs libm).
fn round_half_away(v: f64) -> f64 {
    if !(-4.5e15..=4.5e15).contains(&v) {
        return v; // already whole at this magnitude
    }
    let t = v as i64 as f64; // truncates toward zero
    let frac = v - t;
    if frac >= 0.5 {
        t + 1.0
    } else if frac <= -0.5 {
        t - 1.0
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ORDERS: [WordOrder; 4] = [
        WordOrder::Abcd,
        WordOrder::Cdab,
        WordOrder::Badc,
        WordOrder::Dcba,
    ];

    #[test]
    fn f32_word_orders_match_the_vendor_tables() {
        // 123.456f32 = 0x42F6E979: bytes a=42 b=F6 c=E9 d=79.
        let cases = [
            (WordOrder::Abcd, [0x42F6, 0xE979]),
            (WordOrder::Cdab, [0xE979, 0x42F6]),
            (WordOrder::Badc, [0xF642, 0x79E9]),
            (WordOrder::Dcba, [0x79E9, 0xF642]),
        ];
        for (order, words) in cases {
            let v = decode_raw(DataType::F32, order, &words).unwrap();
            assert!((v - 123.456).abs() < 1e-4, "{order:?}: {v}");
            let mut out = [0u16; 2];
            encode_raw(DataType::F32, order, 123.456, &mut out).unwrap();
            assert_eq!(out, words, "{order:?}");
        }
    }

    #[test]
    fn u64_cdab_reverses_all_words() {
        let mut out = [0u16; 4];
        encode_raw(
            DataType::U64,
            WordOrder::Cdab,
            0x0001_0002_0003_0004u64 as f64,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [4, 3, 2, 1]);
    }

    #[test]
    fn signed_16() {
        assert_eq!(
            decode_raw(DataType::I16, WordOrder::Abcd, &[0xFFFF]).unwrap(),
            -1.0
        );
        assert_eq!(
            decode_raw(DataType::I16, WordOrder::Badc, &[0xFFFE]).unwrap(),
            -257.0
        );
        assert_eq!(
            decode_raw(DataType::U16, WordOrder::Abcd, &[0xFFFF]).unwrap(),
            65535.0
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(
            decode_raw(DataType::F64, WordOrder::Abcd, &[1, 2]),
            Err(RegisterError::TooFewWords {
                needed: 4,
                got: 2,
                ..
            })
        ));
        assert_eq!(
            decode_raw(DataType::F32, WordOrder::Abcd, &[0x7FC0, 0]),
            Err(RegisterError::NotFinite)
        );
        let mut out = [0u16; 1];
        assert!(matches!(
            encode_raw(DataType::U16, WordOrder::Abcd, 70000.0, &mut out),
            Err(RegisterError::OutOfRange { .. })
        ));
        assert!(matches!(
            encode_raw(DataType::U16, WordOrder::Abcd, -1.0, &mut out),
            Err(RegisterError::OutOfRange { .. })
        ));
        let mut out2 = [0u16; 2];
        assert!(matches!(
            encode_raw(DataType::F32, WordOrder::Abcd, 1e300, &mut out2),
            Err(RegisterError::OutOfRange { .. })
        ));
    }

    #[test]
    fn rounding() {
        let mut out = [0u16; 1];
        encode_raw(DataType::U16, WordOrder::Abcd, 39.5, &mut out).unwrap();
        assert_eq!(out, [40]);
        encode_raw(DataType::I16, WordOrder::Abcd, -2.5, &mut out).unwrap();
        assert_eq!(out, [(-3i16) as u16]);
    }

    fn int_type() -> impl Strategy<Value = (DataType, f64)> {
        prop_oneof![
            any::<u16>().prop_map(|v| (DataType::U16, v as f64)),
            any::<i16>().prop_map(|v| (DataType::I16, v as f64)),
            any::<u32>().prop_map(|v| (DataType::U32, v as f64)),
            any::<i32>().prop_map(|v| (DataType::I32, v as f64)),
            // 64-bit integers round-trip exactly only within f64's 53-bit mantissa.
            (0u64..(1 << 53)).prop_map(|v| (DataType::U64, v as f64)),
            (-(1i64 << 53)..(1 << 53)).prop_map(|v| (DataType::I64, v as f64)),
            any::<f32>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|v| (DataType::F32, v as f64)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|v| (DataType::F64, v)),
            any::<bool>().prop_map(|b| (DataType::Bool, b as u8 as f64)),
        ]
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip((ty, v) in int_type(), order in 0usize..4) {
            let order = ORDERS[order];
            let mut out = [0u16; 4];
            let n = encode_raw(ty, order, v, &mut out).unwrap();
            prop_assert_eq!(n, ty.words() as usize);
            prop_assert_eq!(decode_raw(ty, order, &out[..n]).unwrap(), v);
        }

        #[test]
        fn decode_never_panics(words in proptest::collection::vec(any::<u16>(), 0..6), t in 0usize..9, o in 0usize..4) {
            let types = [DataType::Bool, DataType::U16, DataType::I16, DataType::U32, DataType::I32,
                         DataType::F32, DataType::U64, DataType::I64, DataType::F64];
            let _ = decode_raw(types[t], ORDERS[o], &words);
        }
    }
}
