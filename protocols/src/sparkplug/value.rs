//! Metric values: a metric's oneof field read through its [`DataType`] into a typed
//! [`MetricValue`], and back.
//!
//! The specification fixes which protobuf field carries which datatype ("Datatype Details"):
//! `int_value` (uint32) for Int8, Int16, Int32, UInt8, UInt16, UInt32; `long_value` (uint64) for
//! Int64, UInt64, DateTime; `float_value`, `double_value`, `boolean_value`; `string_value` for
//! String, Text, UUID; `bytes_value` for Bytes, File and the arrays. It does not say how a
//! negative Int8 or Int16 goes into an unsigned field, and implementations differ: some write
//! the 8 or 16 bits (-1 as 255), others sign-extend to 32 bits (-1 as 4294967295). Decoding
//! accepts both where they cannot be confused; encoding writes the narrow form, which both
//! kinds of decoder read back. Older implementations put UInt32 into `long_value`; decoding
//! accepts that too.

use alloc::string::String;
use alloc::vec::Vec;

use super::payload::{DataType, Metric, metric};
use crate::quantity::Value;

/// A metric's value, typed by its datatype.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricValue {
    /// Int8, Int16, Int32, Int64.
    Int(i64),
    /// UInt8, UInt16, UInt32, UInt64.
    UInt(u64),
    /// Float.
    Float(f32),
    /// Double.
    Double(f64),
    /// Boolean.
    Bool(bool),
    /// String, Text, UUID.
    Text(String),
    /// DateTime: milliseconds since the Unix epoch (UTC).
    DateTime(u64),
    /// Bytes, File, and the array types (packed little-endian, not unpacked here).
    Bytes(Vec<u8>),
    /// `is_null` was set: the metric has no value now.
    Null,
    /// DataSet, Template, PropertySet, PropertySetList: not interpreted by this codec.
    Unsupported,
}

impl MetricValue {
    /// The value as a platform reading value: numbers (any integer, float or double) as
    /// [`Value::Number`], booleans as [`Value::Bool`]; `None` for text, bytes, date-times,
    /// nulls and unsupported values, which do not map onto a quantity. NaN and infinities pass
    /// as they are: [`Quantity::to_canonical`](crate::Quantity::to_canonical) refuses them.
    pub fn as_value(&self) -> Option<Value> {
        match *self {
            MetricValue::Int(v) => Some(Value::Number(v as f64)),
            MetricValue::UInt(v) => Some(Value::Number(v as f64)),
            MetricValue::Float(v) => Some(Value::Number(f64::from(v))),
            MetricValue::Double(v) => Some(Value::Number(v)),
            MetricValue::Bool(b) => Some(Value::Bool(b)),
            _ => None,
        }
    }

    /// The value as text, for String, Text and UUID metrics.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            MetricValue::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// Why a metric's value does not fit its datatype.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The datatype code is 0 (`Unknown`), above 34, or absent where it is needed.
    #[error("unknown datatype {0:?}")]
    UnknownDataType(Option<u32>),
    /// Neither a value nor `is_null`.
    #[error("{0} metric without a value and not marked null")]
    Missing(DataType),
    /// The value is in a field the datatype does not use.
    #[error("{datatype} metric with its value in {field}")]
    WrongField {
        /// The metric's datatype.
        datatype: DataType,
        /// The protobuf field the value came in.
        field: &'static str,
    },
    /// An integer outside the datatype's range (e.g. 300 for a UInt8).
    #[error("{raw} is outside the range of {datatype}")]
    OutOfRange {
        /// The metric's datatype.
        datatype: DataType,
        /// The integer on the wire.
        raw: u64,
    },
    /// A data metric whose datatype differs from the one its birth defined.
    #[error("datatype {got} differs from {birth} given in the birth")]
    DatatypeChanged {
        /// The datatype in the birth certificate.
        birth: DataType,
        /// The datatype in the data message.
        got: DataType,
    },
    /// Encoding: the value cannot be written as the datatype (e.g. text as Int16, -1 as UInt8,
    /// or a value kind this codec does not write).
    #[error("value cannot be written as {0}")]
    NotRepresentable(DataType),
}

/// Width in bits of the integer datatypes.
const fn int_bits(t: DataType) -> Option<(u32, bool)> {
    Some(match t {
        DataType::Int8 => (8, true),
        DataType::Int16 => (16, true),
        DataType::Int32 => (32, true),
        DataType::Int64 => (64, true),
        DataType::UInt8 => (8, false),
        DataType::UInt16 => (16, false),
        DataType::UInt32 => (32, false),
        DataType::UInt64 => (64, false),
        _ => return None,
    })
}

/// A signed integer of `bits` from an unsigned field of `field_bits`: either the narrow two's
/// complement (`raw < 2^bits`) or the value sign-extended to the field's width.
fn signed_from(raw: u64, bits: u32, field_bits: u32) -> Option<i64> {
    if bits == 64 {
        return Some(raw as i64);
    }
    if raw < 1u64 << bits {
        let shift = 64 - bits;
        return Some(((raw << shift) as i64) >> shift);
    }
    let extended = if field_bits == 32 {
        i64::from(raw as u32 as i32)
    } else {
        raw as i64
    };
    let half = 1i64 << (bits - 1);
    (-half..half).contains(&extended).then_some(extended)
}

/// Reads the value of `metric` as `datatype` (the metric's own, or its birth's for data
/// messages that leave the datatype out).
pub fn decode_value(metric: &Metric, datatype: DataType) -> Result<MetricValue, ValueError> {
    use metric::Value as V;
    if metric.null() {
        return Ok(MetricValue::Null);
    }
    let Some(value) = &metric.value else {
        return Err(ValueError::Missing(datatype));
    };
    let wrong = || ValueError::WrongField {
        datatype,
        field: value.field(),
    };
    if let Some((bits, signed)) = int_bits(datatype) {
        let (raw, field_bits) = match (value, bits) {
            (V::IntValue(v), 8..=32) => (u64::from(*v), 32),
            (V::LongValue(v), 64) => (*v, 64),
            // Older implementations send UInt32 in long_value.
            (V::LongValue(v), 32) if !signed => (*v, 64),
            _ => return Err(wrong()),
        };
        let out_of_range = ValueError::OutOfRange { datatype, raw };
        return if signed {
            signed_from(raw, bits, field_bits)
                .map(MetricValue::Int)
                .ok_or(out_of_range)
        } else if bits == 64 || raw < 1u64 << bits {
            Ok(MetricValue::UInt(raw))
        } else {
            Err(out_of_range)
        };
    }
    match (datatype, value) {
        (DataType::Float, V::FloatValue(v)) => Ok(MetricValue::Float(*v)),
        (DataType::Double, V::DoubleValue(v)) => Ok(MetricValue::Double(*v)),
        (DataType::Boolean, V::BooleanValue(v)) => Ok(MetricValue::Bool(*v)),
        (DataType::String | DataType::Text | DataType::UUID, V::StringValue(s)) => {
            Ok(MetricValue::Text(s.clone()))
        }
        (DataType::DateTime, V::LongValue(v)) => Ok(MetricValue::DateTime(*v)),
        (t, V::BytesValue(b)) if carries_bytes(t) => Ok(MetricValue::Bytes(b.clone())),
        (DataType::DataSet, V::DatasetValue(_))
        | (DataType::Template, V::TemplateValue(_))
        | (DataType::PropertySet | DataType::PropertySetList, _)
        | (_, V::ExtensionValue(_)) => Ok(MetricValue::Unsupported),
        _ => Err(wrong()),
    }
}

/// Datatypes whose value is `bytes_value`.
const fn carries_bytes(t: DataType) -> bool {
    matches!(t, DataType::Bytes | DataType::File) || (t as u32 >= DataType::Int8Array as u32)
}

/// Writes `value` as `datatype` into the oneof field the specification assigns to it. `Null`
/// and `Unsupported` have no field: `Null` is written as `is_null` by [`Metric::new`].
pub fn encode_value(value: &MetricValue, datatype: DataType) -> Result<metric::Value, ValueError> {
    use metric::Value as V;
    let no = || ValueError::NotRepresentable(datatype);
    if let Some((bits, signed)) = int_bits(datatype) {
        let raw: u64 = match (value, signed) {
            (&MetricValue::Int(v), true) => {
                if bits < 64 {
                    let half = 1i64 << (bits - 1);
                    if !(-half..half).contains(&v) {
                        return Err(no());
                    }
                    // The narrow two's complement: -1 as Int8 is 255.
                    (v as u64) & ((1u64 << bits) - 1)
                } else {
                    v as u64
                }
            }
            (&MetricValue::UInt(v), false) => {
                if bits < 64 && v >> bits != 0 {
                    return Err(no());
                }
                v
            }
            // An Int for an unsigned type or a UInt for a signed one, when it fits.
            (&MetricValue::Int(v), false) => {
                let v = u64::try_from(v).map_err(|_| no())?;
                return encode_value(&MetricValue::UInt(v), datatype);
            }
            (&MetricValue::UInt(v), true) => {
                let v = i64::try_from(v).map_err(|_| no())?;
                return encode_value(&MetricValue::Int(v), datatype);
            }
            _ => return Err(no()),
        };
        return Ok(if bits == 64 {
            V::LongValue(raw)
        } else {
            // Fits: checked against `bits` <= 32 above.
            V::IntValue(raw as u32)
        });
    }
    match (datatype, value) {
        (DataType::Float, MetricValue::Float(v)) => Ok(V::FloatValue(*v)),
        (DataType::Double, MetricValue::Double(v)) => Ok(V::DoubleValue(*v)),
        (DataType::Double, MetricValue::Float(v)) => Ok(V::DoubleValue(f64::from(*v))),
        (DataType::Boolean, MetricValue::Bool(b)) => Ok(V::BooleanValue(*b)),
        (DataType::String | DataType::Text | DataType::UUID, MetricValue::Text(s)) => {
            Ok(V::StringValue(s.clone()))
        }
        (DataType::DateTime, MetricValue::DateTime(ms)) => Ok(V::LongValue(*ms)),
        (t, MetricValue::Bytes(b)) if carries_bytes(t) => Ok(V::BytesValue(b.clone())),
        _ => Err(no()),
    }
}

// Constructors of wire metrics live here rather than in `payload`, which knows nothing of
// typed values.
impl Metric {
    /// A metric with a datatype and a value (`MetricValue::Null` sets `is_null`), no name, no
    /// alias and no timestamp yet.
    pub fn new(datatype: DataType, value: &MetricValue) -> Result<Metric, ValueError> {
        let mut m = Metric {
            datatype: Some(datatype.code()),
            ..Default::default()
        };
        if *value == MetricValue::Null {
            m.is_null = Some(true);
        } else {
            m.value = Some(encode_value(value, datatype)?);
        }
        Ok(m)
    }

    /// With a name.
    pub fn named(mut self, name: &str) -> Metric {
        self.name = Some(name.into());
        self
    }

    /// With an alias.
    pub fn aliased(mut self, alias: u64) -> Metric {
        self.alias = Some(alias);
        self
    }

    /// With a timestamp (ms since the epoch, UTC).
    pub fn at(mut self, timestamp_ms: u64) -> Metric {
        self.timestamp = Some(timestamp_ms);
        self
    }

    /// Marked historical.
    pub fn historical_data(mut self) -> Metric {
        self.is_historical = Some(true);
        self
    }

    /// Without the datatype field (data messages may leave it to the birth).
    pub fn without_datatype(mut self) -> Metric {
        self.datatype = None;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use metric::Value as V;

    fn with(value: V) -> Metric {
        Metric {
            value: Some(value),
            ..Default::default()
        }
    }

    #[test]
    fn signed_small_ints_accept_narrow_and_sign_extended_forms() {
        let cases: &[(DataType, V, i64)] = &[
            (DataType::Int8, V::IntValue(255), -1),
            (DataType::Int8, V::IntValue(0xffff_ffff), -1),
            (DataType::Int8, V::IntValue(0x80), -128),
            (DataType::Int8, V::IntValue(0xffff_ff80), -128),
            (DataType::Int8, V::IntValue(127), 127),
            (DataType::Int16, V::IntValue(0xffa9), -87),
            (DataType::Int16, V::IntValue(0xffff_ffa9), -87),
            (DataType::Int16, V::IntValue(32767), 32767),
            (DataType::Int32, V::IntValue(0xffff_ffff), -1),
            (DataType::Int32, V::IntValue(0x7fff_ffff), i32::MAX as i64),
            (DataType::Int64, V::LongValue(u64::MAX), -1),
            (DataType::Int64, V::LongValue(1 << 40), 1 << 40),
        ];
        for (t, v, want) in cases {
            assert_eq!(
                decode_value(&with(v.clone()), *t),
                Ok(MetricValue::Int(*want)),
                "{t} {v:?}"
            );
        }
        // Neither narrow nor a sign extension of an Int8.
        assert_eq!(
            decode_value(&with(V::IntValue(0x1234)), DataType::Int8),
            Err(ValueError::OutOfRange {
                datatype: DataType::Int8,
                raw: 0x1234
            })
        );
        assert!(decode_value(&with(V::IntValue(0xffff_7fff)), DataType::Int16).is_err());
    }

    #[test]
    fn unsigned_ints_are_range_checked_and_uint32_may_come_long() {
        assert_eq!(
            decode_value(&with(V::IntValue(255)), DataType::UInt8),
            Ok(MetricValue::UInt(255))
        );
        assert!(matches!(
            decode_value(&with(V::IntValue(256)), DataType::UInt8),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(decode_value(&with(V::IntValue(65536)), DataType::UInt16).is_err());
        assert_eq!(
            decode_value(&with(V::IntValue(u32::MAX)), DataType::UInt32),
            Ok(MetricValue::UInt(u32::MAX as u64))
        );
        assert_eq!(
            decode_value(&with(V::LongValue(7)), DataType::UInt32),
            Ok(MetricValue::UInt(7))
        );
        assert!(decode_value(&with(V::LongValue(1 << 32)), DataType::UInt32).is_err());
        assert_eq!(
            decode_value(&with(V::LongValue(u64::MAX)), DataType::UInt64),
            Ok(MetricValue::UInt(u64::MAX))
        );
    }

    #[test]
    fn a_value_in_the_wrong_field_is_refused() {
        for (t, v) in [
            (DataType::Int32, V::LongValue(1)),
            (DataType::Int64, V::IntValue(1)),
            (DataType::UInt64, V::IntValue(1)),
            (DataType::Float, V::DoubleValue(1.0)),
            (DataType::Double, V::FloatValue(1.0)),
            (DataType::Boolean, V::IntValue(1)),
            (DataType::String, V::BytesValue(vec![])),
            (DataType::DateTime, V::IntValue(1)),
            (DataType::Bytes, V::StringValue("x".into())),
        ] {
            let field = v.field();
            assert_eq!(
                decode_value(&with(v), t),
                Err(ValueError::WrongField { datatype: t, field }),
                "{t}"
            );
        }
    }

    #[test]
    fn null_and_missing_values() {
        let null = Metric {
            is_null: Some(true),
            ..Default::default()
        };
        assert_eq!(decode_value(&null, DataType::Double), Ok(MetricValue::Null));
        assert_eq!(
            decode_value(&Metric::default(), DataType::Double),
            Err(ValueError::Missing(DataType::Double))
        );
        let m = Metric::new(DataType::Float, &MetricValue::Null).expect("null is writable");
        assert_eq!((m.is_null, m.value), (Some(true), None));
    }

    #[test]
    fn every_scalar_datatype_round_trips() {
        let cases: Vec<(DataType, MetricValue)> = vec![
            (DataType::Int8, MetricValue::Int(-128)),
            (DataType::Int16, MetricValue::Int(-300)),
            (DataType::Int32, MetricValue::Int(i32::MIN as i64)),
            (DataType::Int64, MetricValue::Int(i64::MIN)),
            (DataType::UInt8, MetricValue::UInt(200)),
            (DataType::UInt16, MetricValue::UInt(65535)),
            (DataType::UInt32, MetricValue::UInt(4_000_000_000)),
            (DataType::UInt64, MetricValue::UInt(u64::MAX)),
            (DataType::Float, MetricValue::Float(1.5)),
            (DataType::Double, MetricValue::Double(-2.25)),
            (DataType::Boolean, MetricValue::Bool(true)),
            (DataType::String, MetricValue::Text("ok".into())),
            (DataType::Text, MetricValue::Text("long".into())),
            (DataType::UUID, MetricValue::Text("0-0".into())),
            (DataType::DateTime, MetricValue::DateTime(1_700_000_000_000)),
            (DataType::Bytes, MetricValue::Bytes(vec![1, 2])),
            (DataType::File, MetricValue::Bytes(vec![3])),
            (
                DataType::FloatArray,
                MetricValue::Bytes(vec![0, 0, 128, 63]),
            ),
        ];
        for (t, v) in cases {
            let m = Metric::new(t, &v).expect("writable");
            assert_eq!(decode_value(&m, t), Ok(v.clone()), "{t}");
        }
    }

    #[test]
    fn encoding_refuses_what_does_not_fit() {
        for (t, v) in [
            (DataType::Int8, MetricValue::Int(128)),
            (DataType::Int16, MetricValue::Int(-32769)),
            (DataType::UInt8, MetricValue::UInt(256)),
            (DataType::UInt8, MetricValue::Int(-1)),
            (DataType::Int64, MetricValue::UInt(u64::MAX)),
            (DataType::Boolean, MetricValue::Int(1)),
            (DataType::Float, MetricValue::Double(1.0)),
            (DataType::String, MetricValue::Bool(true)),
            (DataType::DataSet, MetricValue::Unsupported),
        ] {
            assert_eq!(
                encode_value(&v, t),
                Err(ValueError::NotRepresentable(t)),
                "{t} {v:?}"
            );
        }
        // Narrow two's complement on the wire.
        assert_eq!(
            encode_value(&MetricValue::Int(-1), DataType::Int8),
            Ok(V::IntValue(255))
        );
        assert_eq!(
            encode_value(&MetricValue::Int(-87), DataType::Int16),
            Ok(V::IntValue(0xffa9))
        );
        assert_eq!(
            encode_value(&MetricValue::Int(5), DataType::UInt16),
            Ok(V::IntValue(5))
        );
    }

    #[test]
    fn values_map_onto_platform_values() {
        assert_eq!(MetricValue::Int(-3).as_value(), Some(Value::Number(-3.0)));
        assert_eq!(MetricValue::UInt(3).as_value(), Some(Value::Number(3.0)));
        assert_eq!(MetricValue::Float(0.5).as_value(), Some(Value::Number(0.5)));
        assert_eq!(MetricValue::Bool(true).as_value(), Some(Value::Bool(true)));
        assert_eq!(MetricValue::Text("a".into()).as_value(), None);
        assert_eq!(MetricValue::Text("a".into()).as_text(), Some("a"));
        assert_eq!(MetricValue::Null.as_value(), None);
        assert_eq!(MetricValue::DateTime(1).as_value(), None);
    }

    #[test]
    fn datasets_and_templates_are_unsupported_not_errors() {
        assert_eq!(
            decode_value(&with(V::DatasetValue(vec![8, 1])), DataType::DataSet),
            Ok(MetricValue::Unsupported)
        );
        assert_eq!(
            decode_value(&with(V::TemplateValue(vec![])), DataType::Template),
            Ok(MetricValue::Unsupported)
        );
        assert!(decode_value(&with(V::DatasetValue(vec![])), DataType::Int32).is_err());
    }
}
