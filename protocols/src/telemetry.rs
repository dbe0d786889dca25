//! The JSON telemetry of direct devices (`v1/devices/{id}/telemetry`).
//!
//! A message is one object `{"ts":..,"seq":..,"values":{..}}` or an array of them. Parsing keeps
//! every good value and returns a typed reason, with the offending part, for every value or
//! sample it could not accept: one bad quantity never costs the rest of the message.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use serde_json::{Map, Value as Json};

use crate::quantity::{Quality, Quantity, UnitError, Value, ValueKind};
use crate::time::parse_rfc3339;

/// Largest telemetry message accepted: 64 KiB.
pub const MAX_TELEMETRY_BYTES: usize = 64 * 1024;

/// Whole-message failures: nothing in the message could be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TelemetryError {
    /// Over [`MAX_TELEMETRY_BYTES`].
    #[error("message of {0} bytes exceeds the {MAX_TELEMETRY_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not valid JSON.
    #[error("not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but neither an object nor an array.
    #[error("telemetry must be an object or an array of objects")]
    NotObjectOrArray,
    /// An empty array.
    #[error("empty batch")]
    EmptyBatch,
}

/// Why one part of a message was rejected.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RejectReason {
    /// A sample that is not an object.
    #[error("sample is not an object")]
    SampleNotObject,
    /// A sample without a `values` object.
    #[error("sample has no `values` object")]
    MissingValues,
    /// `ts` is neither epoch milliseconds nor RFC 3339.
    #[error("bad timestamp: {0}")]
    BadTimestamp(String),
    /// `seq` is not a non-negative integer.
    #[error("`seq` must be a non-negative integer")]
    BadSeq,
    /// The quantity name is not in the table.
    #[error("unknown quantity `{0}`")]
    UnknownQuantity(String),
    /// The unit is not accepted for the quantity.
    #[error(transparent)]
    Unit(#[from] UnitError),
    /// Wrong JSON type for the quantity.
    #[error("`{quantity}` expects {expected}")]
    WrongType {
        /// The quantity.
        quantity: &'static str,
        /// What it expects.
        expected: &'static str,
    },
    /// An enum state that the quantity does not have.
    #[error("`{quantity}` has no state `{state}`")]
    UnknownState {
        /// The quantity.
        quantity: &'static str,
        /// What was given.
        state: String,
    },
}

impl RejectReason {
    /// A short stable label for metrics (`unknown_quantity`, `unit`, ...).
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::SampleNotObject => "sample_not_object",
            RejectReason::MissingValues => "missing_values",
            RejectReason::BadTimestamp(_) => "bad_timestamp",
            RejectReason::BadSeq => "bad_seq",
            RejectReason::UnknownQuantity(_) => "unknown_quantity",
            RejectReason::Unit(UnitError::UnknownUnit { .. }) => "unknown_unit",
            RejectReason::Unit(UnitError::NotFinite) => "not_finite",
            RejectReason::WrongType { .. } => "wrong_type",
            RejectReason::UnknownState { .. } => "unknown_state",
        }
    }
}

/// A rejected part: where it was, why, and the part itself (for the dead letter).
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    /// JSON path of the part, e.g. `[1].values.turbidity`.
    pub path: String,
    /// Why the part was rejected (its `label()` names the dead letter).
    pub reason: RejectReason,
    /// The rejected JSON, re-serialized.
    pub part: String,
}

/// One sample: values sharing a timestamp.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetrySample {
    /// Device time in epoch ms; `None` when the device sent none (the hub stamps it).
    pub ts_ms: Option<i64>,
    /// The device's sequence number.
    pub seq: Option<u64>,
    /// Canonical values, each with the quality the device reported (`good` when it said
    /// none; the hub may still lower it).
    pub values: Vec<(Quantity, Value, Quality)>,
}

/// The result of parsing a message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedTelemetry {
    /// Samples with at least one accepted value.
    pub samples: Vec<TelemetrySample>,
    /// Every rejected part.
    pub rejected: Vec<Rejected>,
}

/// Parses a telemetry message.
pub fn parse(bytes: &[u8]) -> Result<ParsedTelemetry, TelemetryError> {
    if bytes.len() > MAX_TELEMETRY_BYTES {
        return Err(TelemetryError::TooLarge(bytes.len()));
    }
    let doc: Json =
        serde_json::from_slice(bytes).map_err(|e| TelemetryError::NotJson(e.to_string()))?;
    let mut out = ParsedTelemetry::default();
    match doc {
        Json::Object(obj) => parse_sample(&obj, "", &mut out),
        Json::Array(items) => {
            if items.is_empty() {
                return Err(TelemetryError::EmptyBatch);
            }
            for (i, item) in items.iter().enumerate() {
                let prefix = format!("[{i}]");
                match item {
                    Json::Object(obj) => parse_sample(obj, &prefix, &mut out),
                    other => out.rejected.push(Rejected {
                        path: prefix,
                        reason: RejectReason::SampleNotObject,
                        part: other.to_string(),
                    }),
                }
            }
        }
        _ => return Err(TelemetryError::NotObjectOrArray),
    }
    Ok(out)
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn parse_ts(ts: &Json) -> Result<i64, RejectReason> {
    match ts {
        Json::Number(n) => {
            if let Some(ms) = n.as_i64() {
                Ok(ms)
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite() && f.abs() < 9.0e15) {
                Ok(f as i64)
            } else {
                Err(RejectReason::BadTimestamp(format!(
                    "{n} is not epoch milliseconds"
                )))
            }
        }
        Json::String(s) => {
            parse_rfc3339(s).map_err(|e| RejectReason::BadTimestamp(format!("{s:.40}: {e}")))
        }
        other => Err(RejectReason::BadTimestamp(format!(
            "expected epoch ms or RFC 3339, got {}",
            kind_of(other)
        ))),
    }
}

fn kind_of(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn parse_sample(obj: &Map<String, Json>, prefix: &str, out: &mut ParsedTelemetry) {
    let reject = |out: &mut ParsedTelemetry, path: String, reason: RejectReason, part: &Json| {
        out.rejected.push(Rejected {
            path,
            reason,
            part: part.to_string(),
        })
    };
    let ts_ms = match obj.get("ts") {
        None | Some(Json::Null) => None,
        Some(ts) => match parse_ts(ts) {
            Ok(ms) => Some(ms),
            Err(reason) => {
                // Without a trustworthy time the values cannot be placed in a series.
                let whole = Json::Object(obj.clone());
                return reject(out, join(prefix, "ts"), reason, &whole);
            }
        },
    };
    let seq = match obj.get("seq") {
        None | Some(Json::Null) => None,
        Some(Json::Number(n)) if n.as_u64().is_some() => n.as_u64(),
        Some(other) => {
            reject(out, join(prefix, "seq"), RejectReason::BadSeq, other);
            None
        }
    };
    let Some(Json::Object(values)) = obj.get("values") else {
        let whole = Json::Object(obj.clone());
        return reject(
            out,
            join(prefix, "values"),
            RejectReason::MissingValues,
            &whole,
        );
    };
    let mut sample = TelemetrySample {
        ts_ms,
        seq,
        values: Vec::with_capacity(values.len()),
    };
    let values_prefix = join(prefix, "values");
    for (name, v) in values {
        match parse_value(name, v) {
            Ok(qv) => sample.values.push(qv),
            Err(reason) => reject(out, join(&values_prefix, name), reason, v),
        }
    }
    if !sample.values.is_empty() {
        out.samples.push(sample);
    }
}

fn parse_value(name: &str, v: &Json) -> Result<(Quantity, Value, Quality), RejectReason> {
    let q = Quantity::from_name(name)
        .ok_or_else(|| RejectReason::UnknownQuantity(name.chars().take(64).collect()))?;
    let mut quality = Quality::Good;
    let (raw, unit) = match v {
        Json::Object(o) => {
            quality = match o.get("quality") {
                None | Some(Json::Null) => Quality::Good,
                Some(Json::String(s)) if s == "good" => Quality::Good,
                Some(Json::String(s)) if s == "uncertain" => Quality::Uncertain,
                Some(Json::String(s)) if s == "bad" => Quality::Bad,
                Some(_) => {
                    return Err(RejectReason::WrongType {
                        quantity: q.name(),
                        expected: "`quality` good, uncertain or bad",
                    });
                }
            };
            let unit = match o.get("unit") {
                None | Some(Json::Null) => None,
                Some(Json::String(u)) => Some(u.as_str()),
                Some(_) => {
                    return Err(RejectReason::WrongType {
                        quantity: q.name(),
                        expected: "a string `unit`",
                    });
                }
            };
            (o.get("value").unwrap_or(&Json::Null), unit)
        }
        other => (other, None),
    };
    let value = match (q.kind(), raw) {
        (ValueKind::Number, Json::Number(n)) => {
            let x = n.as_f64().ok_or(RejectReason::Unit(UnitError::NotFinite))?;
            Value::Number(q.to_canonical(x, unit.unwrap_or(q.unit()))?)
        }
        (ValueKind::Number, _) => {
            return Err(RejectReason::WrongType {
                quantity: q.name(),
                expected: "a number",
            });
        }
        (ValueKind::Bool, Json::Bool(b)) => {
            check_unit(q, unit)?;
            Value::Bool(*b)
        }
        (ValueKind::Bool, _) => {
            return Err(RejectReason::WrongType {
                quantity: q.name(),
                expected: "a boolean",
            });
        }
        (ValueKind::Enum(_), Json::String(s)) => {
            check_unit(q, unit)?;
            Value::State(q.state_index(s).ok_or_else(|| RejectReason::UnknownState {
                quantity: q.name(),
                state: s.chars().take(64).collect(),
            })?)
        }
        (ValueKind::Enum(_), _) => {
            return Err(RejectReason::WrongType {
                quantity: q.name(),
                expected: "a state name",
            });
        }
    };
    Ok((q, value, quality))
}

fn check_unit(q: Quantity, unit: Option<&str>) -> Result<(), RejectReason> {
    match unit {
        Some(u) if u != q.unit() => Err(RejectReason::Unit(UnitError::UnknownUnit {
            quantity: q.name(),
            canonical: q.unit(),
            unit: crate::quantity::ShortText::new(u),
        })),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn contract_example() {
        let msg = br#"{"ts": 1795334400000, "seq": 42,
 "values": {"water_level": 2.31, "turbidity": {"value": 12.5, "unit": "NTU"}, "water_level_raw": {"value": 2310, "unit": "mm"}}}"#;
        let p = parse(msg).unwrap();
        assert_eq!(p.samples.len(), 1);
        let s = &p.samples[0];
        assert_eq!(s.ts_ms, Some(1_795_334_400_000));
        assert_eq!(s.seq, Some(42));
        assert!(
            s.values
                .contains(&(Quantity::WaterLevel, Value::Number(2.31), Quality::Good))
        );
        assert!(
            s.values
                .contains(&(Quantity::Turbidity, Value::Number(12.5), Quality::Good))
        );
        // `water_level_raw` is not a quantity: rejected alone, the rest kept.
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(p.rejected[0].path, "values.water_level_raw");
        assert_eq!(
            p.rejected[0].reason,
            RejectReason::UnknownQuantity("water_level_raw".into())
        );
        assert_eq!(p.rejected[0].part, r#"{"unit":"mm","value":2310}"#);
    }

    #[test]
    fn a_reported_quality_is_kept_and_a_bad_one_rejected() {
        let p = parse(br#"{"values":{"ph":{"value":7.1,"quality":"bad"},"turbidity":{"value":3,"unit":"NTU","quality":"uncertain"},"water_temperature":{"value":9,"quality":"fine"}}}"#).unwrap();
        let v = &p.samples[0].values;
        assert!(v.contains(&(Quantity::Ph, Value::Number(7.1), Quality::Bad)));
        assert!(v.contains(&(Quantity::Turbidity, Value::Number(3.0), Quality::Uncertain)));
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(p.rejected[0].path, "values.water_temperature");
        assert_eq!(p.rejected[0].reason.label(), "wrong_type");
    }

    #[test]
    fn units_are_converted() {
        let p = parse(br#"{"values":{"water_level":{"value":2310,"unit":"mm"},"conductivity":{"value":1.2,"unit":"mS/cm"}}}"#).unwrap();
        let v = &p.samples[0].values;
        assert_eq!(p.samples[0].ts_ms, None);
        assert!(
            matches!(v[0], (Quantity::Conductivity, Value::Number(x), Quality::Good) if (x - 1200.0).abs() < 1e-9)
        );
        assert!(
            matches!(v[1], (Quantity::WaterLevel, Value::Number(x), Quality::Good) if (x - 2.31).abs() < 1e-9)
        );
    }

    #[test]
    fn array_with_rfc3339_and_mixed_types() {
        let p = parse(br#"[{"ts":"2026-11-22T08:00:00Z","values":{"cover_open":true,"lamp_status":"lamp_failure","tilt_angle":{"value":0.5,"unit":"rad"}}},
                          {"ts":1795334401000,"values":{"motion":false}}]"#).unwrap();
        assert!(p.rejected.is_empty(), "{:?}", p.rejected);
        assert_eq!(p.samples.len(), 2);
        assert_eq!(p.samples[0].ts_ms, Some(1_795_334_400_000));
        assert!(p.samples[0].values.contains(&(
            Quantity::CoverOpen,
            Value::Bool(true),
            Quality::Good
        )));
        assert!(p.samples[0].values.contains(&(
            Quantity::LampStatus,
            Value::State(1),
            Quality::Good
        )));
    }

    #[test]
    fn every_rejection_reason() {
        let p = parse(
            br#"[5,
            {"ts":"yesterday","values":{"ph":7}},
            {"ts":true,"values":{"ph":7}},
            {"ts":1,"seq":-1,"values":{"ph":7.1}},
            {"ts":1},
            {"values":{
                "ph":"seven",
                "cover_open":1,
                "lamp_status":"melted",
                "lamp_status_n":3,
                "turbidity":{"value":3,"unit":"furlongs"},
                "water_level":{"value":3,"unit":5},
                "motion":{"value":true,"unit":"m"},
                "dimming_level":{"unit":"%"},
                "battery_level":88
            }}]"#,
        )
        .unwrap();
        let reason = |path: &str| {
            p.rejected
                .iter()
                .find(|r| r.path == path)
                .map(|r| r.reason.label())
                .unwrap_or_else(|| panic!("no rejection at {path}: {:?}", p.rejected))
        };
        assert_eq!(reason("[0]"), "sample_not_object");
        assert_eq!(reason("[1].ts"), "bad_timestamp");
        assert_eq!(reason("[2].ts"), "bad_timestamp");
        assert_eq!(reason("[3].seq"), "bad_seq");
        assert_eq!(reason("[4].values"), "missing_values");
        assert_eq!(reason("[5].values.ph"), "wrong_type");
        assert_eq!(reason("[5].values.cover_open"), "wrong_type");
        assert_eq!(reason("[5].values.lamp_status"), "unknown_state");
        assert_eq!(reason("[5].values.lamp_status_n"), "unknown_quantity");
        assert_eq!(reason("[5].values.turbidity"), "unknown_unit");
        assert_eq!(reason("[5].values.water_level"), "wrong_type");
        assert_eq!(reason("[5].values.motion"), "unknown_unit");
        assert_eq!(reason("[5].values.dimming_level"), "wrong_type");
        // The bad seq costs only the seq; the good values survive.
        assert_eq!(p.samples.len(), 2);
        assert_eq!(p.samples[0].seq, None);
        assert_eq!(
            p.samples[1].values,
            vec![(Quantity::BatteryLevel, Value::Number(88.0), Quality::Good)]
        );
    }

    #[test]
    fn whole_message_errors() {
        assert!(matches!(
            parse(b"{not json"),
            Err(TelemetryError::NotJson(_))
        ));
        assert_eq!(parse(b"42"), Err(TelemetryError::NotObjectOrArray));
        assert_eq!(parse(b"[]"), Err(TelemetryError::EmptyBatch));
        let big = vec![b' '; MAX_TELEMETRY_BYTES + 1];
        assert_eq!(
            parse(&big),
            Err(TelemetryError::TooLarge(MAX_TELEMETRY_BYTES + 1))
        );
        assert!(matches!(
            parse(&[0xff, 0xfe]),
            Err(TelemetryError::NotJson(_))
        ));
    }

    #[test]
    fn huge_numbers_are_not_finite() {
        let p = parse(br#"{"values":{"ph":1e400}}"#);
        // serde_json refuses numbers out of f64 range outright.
        assert!(p.is_err() || !p.unwrap().rejected.is_empty());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn number_round_trip(v in -1.0e6f64..1.0e6, ts in 0i64..4_000_000_000_000) {
            let msg = format!(r#"{{"ts":{ts},"values":{{"water_level":{v}}}}}"#);
            let p = parse(msg.as_bytes()).unwrap();
            prop_assert_eq!(&p.samples[0].values, &vec![(Quantity::WaterLevel, Value::Number(v), Quality::Good)]);
            prop_assert_eq!(p.samples[0].ts_ms, Some(ts));
        }
    }
}
