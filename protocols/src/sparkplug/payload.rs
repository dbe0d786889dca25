//! The Sparkplug B protobuf payload, `sparkplug_b.proto` of Eclipse Tahu
//! (`package org.eclipse.tahu.protobuf`, `syntax = "proto2"`), as printed in the Sparkplug 3.0
//! specification, section "Sparkplug B Payload Definition".
//!
//! The messages are written by hand with the field numbers and types of the `.proto` file (cited
//! next to each field) instead of being generated, so building needs no `protoc`. What is kept:
//! `Payload`, `Payload.Metric` with its `value` oneof, `Payload.MetaData`, `Payload.PropertySet`
//! and `Payload.PropertyValue`, and the `DataType` enum. What is kept opaque: the `DataSet`,
//! `Template` and `*Extension` values of a metric, and the nested `PropertySet`/`PropertySetList`
//! values of a property, are carried as the raw bytes of the embedded message. On the wire an
//! embedded message and a `bytes` field are both length-delimited with the same tag, so
//! declaring them as bytes reads and writes exactly the same octets; nothing is lost in a
//! decode → encode round trip, it is only not interpreted. Unknown fields and proto2 extensions
//! (`extensions 6 to max`) are skipped on decoding.
//!
//! proto2 `optional` fields become `Option`s: presence matters, e.g. an NBIRTH's `seq = 0` must
//! be on the wire ([tck-id-payloads-nbirth-seq]), and `Some(0)` is encoded where proto3 would
//! drop a zero.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// The top-level message of every Sparkplug B MQTT payload except `STATE`
/// (`message Payload`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    /// `optional uint64 timestamp = 1;` milliseconds since the Unix epoch (UTC) at publishing.
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    /// `repeated Metric metrics = 2;`
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    /// `optional uint64 seq = 3;` the edge node's message sequence number, 0..=255.
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    /// `optional string uuid = 4;`
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    /// `optional bytes body = 5;`
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// One metric: name or alias, datatype, value, flags (`message Payload.Metric`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// `optional string name = 1;`
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// `optional uint64 alias = 2;`
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    /// `optional uint64 timestamp = 3;` when the value was captured, ms since the epoch (UTC).
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    /// `optional uint32 datatype = 4;` a [`DataType`] code.
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    /// `optional bool is_historical = 5;` historical data: must not update the live value.
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    /// `optional bool is_transient = 6;` not to be stored as a tag.
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    /// `optional bool is_null = 7;` the metric has no value.
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    /// `optional MetaData metadata = 8;`
    #[prost(message, optional, tag = "8")]
    pub metadata: Option<MetaData>,
    /// `optional PropertySet properties = 9;`
    #[prost(message, optional, tag = "9")]
    pub properties: Option<PropertySet>,
    /// `oneof value { ... }`, fields 10 to 19.
    #[prost(
        oneof = "metric::Value",
        tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19"
    )]
    pub value: Option<metric::Value>,
}

/// The `value` oneof of [`Metric`].
pub mod metric {
    use alloc::string::String;
    use alloc::vec::Vec;

    /// `oneof value` of `Payload.Metric`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// `uint32 int_value = 10;` Int8, Int16, Int32, UInt8, UInt16, UInt32.
        #[prost(uint32, tag = "10")]
        IntValue(u32),
        /// `uint64 long_value = 11;` Int64, UInt64, DateTime.
        #[prost(uint64, tag = "11")]
        LongValue(u64),
        /// `float float_value = 12;`
        #[prost(float, tag = "12")]
        FloatValue(f32),
        /// `double double_value = 13;`
        #[prost(double, tag = "13")]
        DoubleValue(f64),
        /// `bool boolean_value = 14;`
        #[prost(bool, tag = "14")]
        BooleanValue(bool),
        /// `string string_value = 15;` String, Text, UUID.
        #[prost(string, tag = "15")]
        StringValue(String),
        /// `bytes bytes_value = 16;` Bytes, File and the array types (packed little-endian).
        #[prost(bytes = "vec", tag = "16")]
        BytesValue(Vec<u8>),
        /// `DataSet dataset_value = 17;` kept as the encoded `DataSet` message.
        #[prost(bytes = "vec", tag = "17")]
        DatasetValue(Vec<u8>),
        /// `Template template_value = 18;` kept as the encoded `Template` message.
        #[prost(bytes = "vec", tag = "18")]
        TemplateValue(Vec<u8>),
        /// `MetricValueExtension extension_value = 19;` kept as the encoded message.
        #[prost(bytes = "vec", tag = "19")]
        ExtensionValue(Vec<u8>),
    }

    impl Value {
        /// The protobuf field name, for error messages.
        pub const fn field(&self) -> &'static str {
            match self {
                Value::IntValue(_) => "int_value",
                Value::LongValue(_) => "long_value",
                Value::FloatValue(_) => "float_value",
                Value::DoubleValue(_) => "double_value",
                Value::BooleanValue(_) => "boolean_value",
                Value::StringValue(_) => "string_value",
                Value::BytesValue(_) => "bytes_value",
                Value::DatasetValue(_) => "dataset_value",
                Value::TemplateValue(_) => "template_value",
                Value::ExtensionValue(_) => "extension_value",
            }
        }
    }
}

/// `message Payload.MetaData`: describes Bytes and File metrics.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaData {
    /// `optional bool is_multi_part = 1;`
    #[prost(bool, optional, tag = "1")]
    pub is_multi_part: Option<bool>,
    /// `optional string content_type = 2;`
    #[prost(string, optional, tag = "2")]
    pub content_type: Option<String>,
    /// `optional uint64 size = 3;`
    #[prost(uint64, optional, tag = "3")]
    pub size: Option<u64>,
    /// `optional uint64 seq = 4;` sequence number of a multi-part message.
    #[prost(uint64, optional, tag = "4")]
    pub seq: Option<u64>,
    /// `optional string file_name = 5;`
    #[prost(string, optional, tag = "5")]
    pub file_name: Option<String>,
    /// `optional string file_type = 6;`
    #[prost(string, optional, tag = "6")]
    pub file_type: Option<String>,
    /// `optional string md5 = 7;`
    #[prost(string, optional, tag = "7")]
    pub md5: Option<String>,
    /// `optional string description = 8;`
    #[prost(string, optional, tag = "8")]
    pub description: Option<String>,
}

/// `message Payload.PropertySet`: keys and values side by side (e.g. `Quality`, `engUnit`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertySet {
    /// `repeated string keys = 1;`
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    /// `repeated PropertyValue values = 2;`
    #[prost(message, repeated, tag = "2")]
    pub values: Vec<PropertyValue>,
}

impl PropertySet {
    /// The value of the property `key`, if the set has it.
    pub fn get(&self, key: &str) -> Option<&PropertyValue> {
        let i = self.keys.iter().position(|k| k == key)?;
        self.values.get(i)
    }
}

/// `message Payload.PropertyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PropertyValue {
    /// `optional uint32 type = 1;` a [`DataType`] code.
    #[prost(uint32, optional, tag = "1")]
    pub r#type: Option<u32>,
    /// `optional bool is_null = 2;`
    #[prost(bool, optional, tag = "2")]
    pub is_null: Option<bool>,
    /// `oneof value { ... }`, fields 3 to 11.
    #[prost(oneof = "property_value::Value", tags = "3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub value: Option<property_value::Value>,
}

/// The `value` oneof of [`PropertyValue`].
pub mod property_value {
    use alloc::string::String;
    use alloc::vec::Vec;

    /// `oneof value` of `Payload.PropertyValue`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// `uint32 int_value = 3;`
        #[prost(uint32, tag = "3")]
        IntValue(u32),
        /// `uint64 long_value = 4;`
        #[prost(uint64, tag = "4")]
        LongValue(u64),
        /// `float float_value = 5;`
        #[prost(float, tag = "5")]
        FloatValue(f32),
        /// `double double_value = 6;`
        #[prost(double, tag = "6")]
        DoubleValue(f64),
        /// `bool boolean_value = 7;`
        #[prost(bool, tag = "7")]
        BooleanValue(bool),
        /// `string string_value = 8;`
        #[prost(string, tag = "8")]
        StringValue(String),
        /// `PropertySet propertyset_value = 9;` kept as the encoded message (no recursion).
        #[prost(bytes = "vec", tag = "9")]
        PropertysetValue(Vec<u8>),
        /// `PropertySetList propertysets_value = 10;` kept as the encoded message.
        #[prost(bytes = "vec", tag = "10")]
        PropertysetsValue(Vec<u8>),
        /// `PropertyValueExtension extension_value = 11;` kept as the encoded message.
        #[prost(bytes = "vec", tag = "11")]
        ExtensionValue(Vec<u8>),
    }
}

macro_rules! datatypes {
    ($( $variant:ident = $code:literal, )*) => {
        /// `enum DataType` of `sparkplug_b.proto`: what a metric's value is. `Unknown = 0` is
        /// not a variant: a metric must have a real datatype
        /// ([tck-id-payloads-metric-datatype-value]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum DataType {
            $(
                #[doc = concat!("`", stringify!($variant), " = ", stringify!($code), ";`")]
                $variant = $code,
            )*
        }

        impl DataType {
            /// Every datatype, in code order.
            pub const ALL: &'static [DataType] = &[$(DataType::$variant),*];

            /// The wire code.
            pub const fn code(self) -> u32 {
                self as u32
            }

            /// The datatype of a wire code; `None` for 0 (`Unknown`) and codes above 34.
            pub const fn from_code(code: u32) -> Option<DataType> {
                match code {
                    $($code => Some(DataType::$variant),)*
                    _ => None,
                }
            }

            /// The name the `.proto` file gives it.
            pub const fn name(self) -> &'static str {
                match self {
                    $(DataType::$variant => stringify!($variant),)*
                }
            }
        }
    };
}

datatypes! {
    Int8 = 1,
    Int16 = 2,
    Int32 = 3,
    Int64 = 4,
    UInt8 = 5,
    UInt16 = 6,
    UInt32 = 7,
    UInt64 = 8,
    Float = 9,
    Double = 10,
    Boolean = 11,
    String = 12,
    DateTime = 13,
    Text = 14,
    UUID = 15,
    DataSet = 16,
    Bytes = 17,
    File = 18,
    Template = 19,
    PropertySet = 20,
    PropertySetList = 21,
    Int8Array = 22,
    Int16Array = 23,
    Int32Array = 24,
    Int64Array = 25,
    UInt8Array = 26,
    UInt16Array = 27,
    UInt32Array = 28,
    UInt64Array = 29,
    FloatArray = 30,
    DoubleArray = 31,
    BooleanArray = 32,
    StringArray = 33,
    DateTimeArray = 34,
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes are not a Sparkplug B payload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Not a valid protobuf encoding of `Payload` (truncated, bad wire type, bad UTF-8 in a
    /// string field, nesting too deep ...).
    #[error("not a Sparkplug B protobuf payload: {0}")]
    Protobuf(prost::DecodeError),
}

/// Decodes a payload. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Payload, PayloadError> {
    <Payload as prost::Message>::decode(bytes).map_err(PayloadError::Protobuf)
}

/// Encodes a payload.
pub fn encode(payload: &Payload) -> Vec<u8> {
    prost::Message::encode_to_vec(payload)
}

impl Metric {
    /// The [`DataType`] of the `datatype` field, if present and known.
    pub fn data_type(&self) -> Option<DataType> {
        self.datatype.and_then(DataType::from_code)
    }

    /// Whether the metric says it has no value.
    pub fn null(&self) -> bool {
        self.is_null.unwrap_or(false)
    }

    /// Whether the metric carries historical data.
    pub fn historical(&self) -> bool {
        self.is_historical.unwrap_or(false)
    }

    /// Whether the metric is transient (not to be stored as a tag).
    pub fn transient(&self) -> bool {
        self.is_transient.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn datatype_codes_are_those_of_the_proto() {
        assert_eq!(DataType::ALL.len(), 34);
        for (i, t) in DataType::ALL.iter().enumerate() {
            assert_eq!(t.code(), i as u32 + 1);
            assert_eq!(DataType::from_code(t.code()), Some(*t));
        }
        assert_eq!(DataType::from_code(0), None);
        assert_eq!(DataType::from_code(35), None);
        assert_eq!(DataType::Boolean.code(), 11);
        assert_eq!(DataType::DateTime.code(), 13);
        assert_eq!(DataType::UUID.name(), "UUID");
    }

    #[test]
    fn field_numbers_and_wire_types_are_those_of_the_proto() {
        // Hand-assembled: Payload{timestamp=1 (varint), metrics=2 (len), seq=3 (varint)},
        // Metric{name=1 (len), alias=2, timestamp=3, datatype=4 (varints), int_value=10}.
        let metric = [
            0x0a, 0x01, b'x', // name = "x"
            0x10, 0x07, // alias = 7
            0x18, 0x05, // timestamp = 5
            0x20, 0x03, // datatype = 3 (Int32)
            0x28, 0x01, // is_historical = true
            0x50, 0x2a, // int_value = 42
        ];
        let mut bytes = vec![0x08, 0x01]; // timestamp = 1
        bytes.extend_from_slice(&[0x12, metric.len() as u8]);
        bytes.extend_from_slice(&metric);
        bytes.extend_from_slice(&[0x18, 0x00]); // seq = 0
        let p = decode(&bytes).expect("decodes");
        assert_eq!(p.timestamp, Some(1));
        assert_eq!(p.seq, Some(0));
        let m = &p.metrics[0];
        assert_eq!(m.name.as_deref(), Some("x"));
        assert_eq!(m.alias, Some(7));
        assert_eq!(m.timestamp, Some(5));
        assert_eq!(m.data_type(), Some(DataType::Int32));
        assert!(m.historical());
        assert_eq!(m.value, Some(metric::Value::IntValue(42)));
        // The encoder writes fields in number order, so the bytes come back identical.
        assert_eq!(encode(&p), bytes);
    }

    #[test]
    fn a_zero_seq_is_on_the_wire() {
        let p = Payload {
            seq: Some(0),
            ..Default::default()
        };
        assert_eq!(encode(&p), [0x18, 0x00]);
        assert_eq!(encode(&Payload::default()), [] as [u8; 0]);
    }

    #[test]
    fn embedded_messages_kept_opaque_round_trip_byte_for_byte() {
        // dataset_value (17, wire type 2) holding DataSet{num_of_columns=1, columns=["c"]},
        // plus an unknown extension field 6 in the payload, which is skipped.
        let dataset = [0x08, 0x01, 0x12, 0x01, b'c'];
        let mut metric = vec![0x20, 16]; // datatype = DataSet
        metric.extend_from_slice(&[0x8a, 0x01, dataset.len() as u8]);
        metric.extend_from_slice(&dataset);
        let mut bytes = vec![0x12, metric.len() as u8];
        bytes.extend_from_slice(&metric);
        let with_extension = [&bytes[..], &[0x30, 0x01]].concat();
        let p = decode(&with_extension).expect("decodes");
        assert_eq!(
            p.metrics[0].value,
            Some(metric::Value::DatasetValue(dataset.to_vec()))
        );
        assert_eq!(encode(&p), bytes);
    }

    #[test]
    fn properties_are_looked_up_by_key() {
        let set = PropertySet {
            keys: vec!["engUnit".into(), "Quality".into()],
            values: vec![
                PropertyValue {
                    r#type: Some(DataType::String.code()),
                    is_null: None,
                    value: Some(property_value::Value::StringValue("m".into())),
                },
                PropertyValue {
                    r#type: Some(DataType::Int32.code()),
                    is_null: None,
                    value: Some(property_value::Value::IntValue(192)),
                },
            ],
        };
        let back = decode(&encode(&Payload {
            metrics: vec![Metric {
                properties: Some(set.clone()),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .expect("decodes");
        let props = back.metrics[0].properties.as_ref().expect("kept");
        assert_eq!(props, &set);
        assert_eq!(
            props.get("Quality").and_then(|v| v.value.clone()),
            Some(property_value::Value::IntValue(192))
        );
        assert_eq!(props.get("nope"), None);
    }

    #[test]
    fn garbage_is_a_typed_error() {
        for bytes in [
            &[0xff][..],
            &[0x12, 0x05, 0x0a],
            &[0x0a],
            &[0x22, 0x02, 0xc3, 0x28],
        ] {
            assert!(
                matches!(decode(bytes), Err(PayloadError::Protobuf(_))),
                "{bytes:?}"
            );
        }
    }
}
