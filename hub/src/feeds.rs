//! Normalized feed documents (`v1/feeds/{kind}/{device}`), written without allocation.
//!
//! The device's part of the document (id, kind, department, location) is pre-escaped in the
//! registry; this module appends the time, the sequence number and the values into a buffer
//! the caller reuses. The output is byte-for-byte what `serde_json` makes of
//! [`protocols::messages::Feed`] (keys of `values` in name order), so apps can parse either.

use std::io::Write as _;

use protocols::time::Rfc3339;
use protocols::{Quality, Quantity, Value, ValueKind};

use crate::registry::Device;

/// One normalized value of a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormValue {
    /// The quantity.
    pub quantity: Quantity,
    /// Canonical value.
    pub value: Value,
    /// Its quality.
    pub quality: Quality,
}

/// Sorts a sample's values by quantity name and keeps the last of duplicates, as a JSON object
/// and the twin need.
pub fn canonical_order(values: &mut Vec<NormValue>) {
    // Stable sort keeps arrival order among equal names; dedup then keeps the first, so
    // reverse first to keep the last.
    values.reverse();
    values.sort_by_key(|v| v.quantity.name());
    values.dedup_by_key(|v| v.quantity);
}

/// Writes a JSON value of a quantity (number, boolean or enum state name).
pub fn write_value(out: &mut Vec<u8>, quantity: Quantity, value: Value) {
    match (quantity.kind(), value) {
        (ValueKind::Enum(states), Value::State(i)) if (i as usize) < states.len() => {
            out.push(b'"');
            out.extend_from_slice(states[i as usize].as_bytes());
            out.push(b'"');
        }
        (_, Value::Bool(b)) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        (_, v) => {
            // Serializing an f64 into a Vec cannot fail; non-finite becomes `null`.
            let _ = serde_json::to_writer(&mut *out, &v.as_f64());
        }
    }
}

/// Appends one feed document for a device and a timestamp group to `out`.
pub fn write_feed(
    out: &mut Vec<u8>,
    device: &Device,
    ts_ms: i64,
    seq: Option<u64>,
    values: &[NormValue],
) {
    out.extend_from_slice(&device.feed_prefix);
    out.extend_from_slice(Rfc3339::from_ms(ts_ms).as_str().as_bytes());
    out.push(b'"');
    if let Some(seq) = seq {
        let _ = write!(out, ",\"seq\":{seq}");
    }
    out.extend_from_slice(&device.feed_location);
    out.extend_from_slice(b",\"values\":{");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(v.quantity.name().as_bytes());
        out.extend_from_slice(b"\":{\"value\":");
        write_value(out, v.quantity, v.value);
        out.extend_from_slice(b",\"unit\":\"");
        out.extend_from_slice(v.quantity.unit().as_bytes());
        out.extend_from_slice(b"\",\"quality\":\"");
        out.extend_from_slice(v.quality.name().as_bytes());
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"}}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HubConfig;
    use crate::registry::Registry;
    use protocols::messages::Feed;

    fn registry() -> Registry {
        Registry::from_config(
            &HubConfig::from_toml(
                r#"
[[devices]]
id = "WL-0001"
kind = "water_level"
secret = "device-secret-1"
dept = "water"
lat = 30.4212
lon = 120.3010

[[devices]]
id = "SL-0001"
kind = "streetlight"
secret = "device-secret-2"
"#,
            )
            .unwrap(),
        )
    }

    #[test]
    fn contract_example_byte_for_byte() {
        let r = registry();
        let mut out = Vec::new();
        write_feed(
            &mut out,
            r.device_by_id("WL-0001").unwrap(),
            1_795_334_400_000,
            Some(42),
            &[NormValue {
                quantity: Quantity::WaterLevel,
                value: Value::Number(2.31),
                quality: Quality::Good,
            }],
        );
        let contract = r#"{"device":"WL-0001","kind":"water_level","dept":"water","ts":"2026-11-22T08:00:00.000Z","seq":42,
 "location":{"lat":30.4212,"lon":120.301},
 "values":{"water_level":{"value":2.31,"unit":"m","quality":"good"}}}"#;
        let contract: Feed = serde_json::from_str(contract).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            serde_json::to_string(&contract).unwrap()
        );
    }

    #[test]
    fn every_value_type_and_no_optional_parts() {
        let r = registry();
        let mut values = vec![
            NormValue {
                quantity: Quantity::LampStatus,
                value: Value::State(1),
                quality: Quality::Good,
            },
            NormValue {
                quantity: Quantity::DimmingLevel,
                value: Value::Number(10.0),
                quality: Quality::Good,
            },
            NormValue {
                quantity: Quantity::DimmingLevel,
                value: Value::Number(40.0),
                quality: Quality::Uncertain,
            },
            NormValue {
                quantity: Quantity::CoverOpen,
                value: Value::Bool(true),
                quality: Quality::Bad,
            },
        ];
        canonical_order(&mut values);
        assert_eq!(values.len(), 3);
        let mut out = b"garbage-before".to_vec();
        out.clear();
        write_feed(
            &mut out,
            r.device_by_id("SL-0001").unwrap(),
            0,
            None,
            &values,
        );
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(
            text,
            r#"{"device":"SL-0001","kind":"streetlight","ts":"1970-01-01T00:00:00.000Z","values":{"cover_open":{"value":true,"unit":"bool","quality":"bad"},"dimming_level":{"value":40.0,"unit":"%","quality":"uncertain"},"lamp_status":{"value":"lamp_failure","unit":"enum","quality":"good"}}}"#
        );
        let parsed: Feed = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), text);
    }
}
