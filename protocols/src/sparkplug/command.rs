//! What a host application sends: the rebirth request (NCMD), a metric write (DCMD, or NCMD
//! for an edge node's own metric), and its state (`spBv1.0/STATE/{host_id}`).
//!
//! Commands carry a payload timestamp and no `seq` ([tck-id-payloads-ncmd-timestamp],
//! [tck-id-payloads-ncmd-seq], [tck-id-payloads-dcmd-timestamp], [tck-id-payloads-dcmd-seq]).
//! The metric is written by name and with its datatype: the specification prefers aliases and
//! no datatype in commands, but a name needs no knowledge of the node's birth, and edge node
//! libraries that decode a metric by its own datatype field cannot read a command without it.
//! The caller passes the time: this crate has no clock.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::payload::{DataType, Metric, Payload, encode};
use super::value::{MetricValue, ValueError};

/// The metric of the rebirth request ([tck-id-operational-behavior-data-commands-ncmd-rebirth-name]).
pub const REBIRTH_METRIC: &str = "Node Control/Rebirth";

/// The birth/death sequence metric of NBIRTH and NDEATH ([tck-id-payloads-nbirth-bdseq]).
pub const BD_SEQ_METRIC: &str = "bdSeq";

/// The NCMD payload asking an edge node to publish its NBIRTH and DBIRTHs again:
/// `Node Control/Rebirth` = `true` (Boolean) ([tck-id-operational-behavior-data-commands-ncmd-rebirth-value]).
pub fn rebirth_request(timestamp_ms: u64) -> Vec<u8> {
    let metric = Metric {
        name: Some(REBIRTH_METRIC.into()),
        timestamp: Some(timestamp_ms),
        datatype: Some(DataType::Boolean.code()),
        value: Some(super::payload::metric::Value::BooleanValue(true)),
        ..Default::default()
    };
    encode(&Payload {
        timestamp: Some(timestamp_ms),
        metrics: vec![metric],
        ..Default::default()
    })
}

/// A DCMD payload (or NCMD, for a metric of the edge node itself) writing one metric by name:
/// `value` written as `datatype`, refused if it does not fit.
pub fn write_metric(
    name: &str,
    datatype: DataType,
    value: &MetricValue,
    timestamp_ms: u64,
) -> Result<Vec<u8>, ValueError> {
    let metric = Metric::new(datatype, value)?.named(name).at(timestamp_ms);
    Ok(encode(&Payload {
        timestamp: Some(timestamp_ms),
        metrics: vec![metric],
        ..Default::default()
    }))
}

/// The JSON payload of a host application's state topic,
/// `{"online":true,"timestamp":1700000000000}` (Sparkplug 3.0, "Sparkplug Host Application"
/// birth and death certificates; published retained, QoS 1).
pub fn host_state(online: bool, timestamp_ms: u64) -> String {
    alloc::format!("{{\"online\":{online},\"timestamp\":{timestamp_ms}}}")
}

#[cfg(test)]
mod tests {
    use super::super::payload::{decode, metric};
    use super::super::value::decode_value;
    use super::*;

    #[test]
    fn rebirth_request_is_one_boolean_metric_without_seq() {
        let p = decode(&rebirth_request(1_700_000_000_123)).expect("decodes");
        assert_eq!(p.timestamp, Some(1_700_000_000_123));
        assert_eq!(p.seq, None);
        assert_eq!(p.metrics.len(), 1);
        let m = &p.metrics[0];
        assert_eq!(m.name.as_deref(), Some(REBIRTH_METRIC));
        assert_eq!(m.alias, None);
        assert_eq!(m.data_type(), Some(DataType::Boolean));
        assert_eq!(m.value, Some(metric::Value::BooleanValue(true)));
    }

    #[test]
    fn write_metric_carries_name_datatype_and_value() {
        let bytes = write_metric(
            "dimming_level",
            DataType::Float,
            &MetricValue::Float(40.0),
            5,
        )
        .expect("fits");
        let p = decode(&bytes).expect("decodes");
        assert_eq!((p.timestamp, p.seq), (Some(5), None));
        let m = &p.metrics[0];
        assert_eq!(m.name.as_deref(), Some("dimming_level"));
        assert_eq!(m.timestamp, Some(5));
        assert_eq!(
            decode_value(m, DataType::Float),
            Ok(MetricValue::Float(40.0))
        );
        assert_eq!(
            write_metric("x", DataType::UInt8, &MetricValue::Int(-1), 5),
            Err(ValueError::NotRepresentable(DataType::UInt8))
        );
    }

    #[test]
    fn host_state_json() {
        assert_eq!(host_state(true, 12), r#"{"online":true,"timestamp":12}"#);
        assert_eq!(host_state(false, 0), r#"{"online":false,"timestamp":0}"#);
    }
}
