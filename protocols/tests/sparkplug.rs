//! Sparkplug B: payloads of an independent implementation, edge node sessions message by
//! message, the commands the hub sends, and property tests.
//!
//! Sources of the `PEER_*` payloads: `tests/peers/sparkplug_peer.py` run with `pysparkplug`
//! 0.6.1 (its protobuf classes are generated from `sparkplug_b.proto`); the hex is its output,
//! pasted unchanged. `OUR_*` are this crate's encodings of the commands; the same script's
//! `--check` decodes them with the peer. `the_peer_still_agrees` runs the script both ways
//! (`scripts/setup-peers.sh` installs the peer).

use std::process::Command;
use std::sync::Arc;

use proptest::prelude::*;
use protocols::Value;
use protocols::sparkplug::payload::metric;
use protocols::sparkplug::{
    self, BD_SEQ_METRIC, DataType, EdgeNodes, EdgeTopic, IgnoreReason, Limits, MessageType, Metric,
    MetricValue, Outcome, Payload, REBIRTH_METRIC, RebirthReason, Topic, decode_value,
    rebirth_request, write_metric,
};

/// The payload timestamp of the peer's messages.
const T0: u64 = 1_700_000_000_000;

/// NBIRTH, seq 0, bdSeq 3 (Int64), `Node Control/Rebirth` and 14 metrics of every scalar
/// datatype with aliases 1..=14.
const PEER_NBIRTH: &str = "0880d095ffbc3112120a0562645365711880d095ffbc312004580312210a144e6f646520436f6e74726f6c2f526562697274681880d095ffbc31200b7000121b0a056c6576656c10011880d095ffbc31200a69000000000000064012160a0474656d7010021880d095ffbc312009650000944112120a02693810031880d095ffbc31200150fb0112140a0369313610041880d095ffbc31200250d4fd0312160a0369333210051880d095ffbc3120035090ddfbff0f121b0a0369363410061880d095ffbc312004588080808080e0ffffff0112120a02753810071880d095ffbc31200550c80112140a0375313610081880d095ffbc31200650e0d40312160a0375333210091880d095ffbc3120075080d0acf30e121b0a03753634100a1880d095ffbc312008588580808080808080800112160a0770756d705f6f6e100b1880d095ffbc31200b700112170a06737461747573100c1880d095ffbc31200c7a026f6b12190a0573696e6365100d1880d095ffbc31200d58a0fb91ffbc3112170a04626c6f62100e1880d095ffbc3120118201030102031800";
/// NDATA, seq 1, by alias only (no names, no datatypes): level 3.25, i8 -128, pump_on false.
const PEER_NDATA: &str = "08e8d795ffbc31121210011884d795ffbc31690000000000000a40120c10031884d795ffbc31508001120b100b1884d795ffbc3170001801";
/// NDATA, seq 2, one historical value of `level` an hour old.
const PEER_NDATA_HISTORICAL: &str =
    "08d0df95ffbc31121410011880f3b9fdbc31280169000000000000f83f1802";
/// DBIRTH, seq 3: `flow` Float alias 100.
const PEER_DBIRTH: &str = "08b8e795ffbc3112160a04666c6f77106418b8e795ffbc312009650000003f1803";
/// DDATA, seq 4: flow 0.75 by alias.
const PEER_DDATA: &str = "08a0ef95ffbc31120e106418a0ef95ffbc31650000403f1804";
/// DDEATH, seq 5.
const PEER_DDEATH: &str = "0888f795ffbc311805";
/// NDEATH with bdSeq 3.
const PEER_NDEATH: &str = "08f0fe95ffbc3112120a0562645365711880d095ffbc3120045803";
/// The peer's NCMD `Node Control/Rebirth` = true at `T0`.
const PEER_NCMD_REBIRTH: &str =
    "0880d095ffbc3112210a144e6f646520436f6e74726f6c2f526562697274681880d095ffbc31200b7001";

/// `write_metric("dimming_level", Float, 40.0, T0)`.
const OUR_WRITE_FLOAT: &str =
    "0880d095ffbc31121d0a0d64696d6d696e675f6c6576656c1880d095ffbc3120096500002042";
/// `write_metric("setpoint", Int16, -87, T0)`.
const OUR_WRITE_INT16: &str = "0880d095ffbc3112170a08736574706f696e741880d095ffbc31200250a9ff03";
/// `write_metric("mode", String, "eco", T0)`.
const OUR_WRITE_STRING: &str = "0880d095ffbc3112140a046d6f64651880d095ffbc31200c7a0365636f";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex fixture"))
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn t(kind: &str, device: Option<&str>) -> String {
    match device {
        Some(d) => format!("spBv1.0/district/{kind}/agent-1/{d}"),
        None => format!("spBv1.0/district/{kind}/agent-1"),
    }
}

fn feed(s: &mut EdgeNodes, kind: &str, device: Option<&str>, payload: &Payload) -> Outcome {
    s.handle_message(&t(kind, device), &sparkplug::encode(payload), T0)
        .expect("valid message")
}

fn metric(name: &str, alias: u64, datatype: DataType, value: MetricValue) -> Metric {
    Metric::new(datatype, &value)
        .expect("value fits")
        .named(name)
        .aliased(alias)
        .at(T0)
}

fn bd_seq(v: i64) -> Metric {
    Metric::new(DataType::Int64, &MetricValue::Int(v))
        .expect("fits")
        .named(BD_SEQ_METRIC)
}

fn nbirth(seq: u64, bd: i64) -> Payload {
    Payload {
        timestamp: Some(T0),
        seq: Some(seq),
        metrics: vec![
            bd_seq(bd),
            Metric::new(DataType::Boolean, &MetricValue::Bool(false))
                .expect("fits")
                .named(REBIRTH_METRIC),
            metric("level", 1, DataType::Double, MetricValue::Double(2.0)),
            metric("pump_on", 2, DataType::Boolean, MetricValue::Bool(false)),
        ],
        ..Default::default()
    }
}

fn dbirth(seq: u64, alias: u64) -> Payload {
    Payload {
        timestamp: Some(T0),
        seq: Some(seq),
        metrics: vec![metric(
            "flow",
            alias,
            DataType::Float,
            MetricValue::Float(0.5),
        )],
        ..Default::default()
    }
}

/// Data by alias only, as the specification wants data messages.
fn by_alias(seq: u64, alias: u64, datatype: DataType, value: MetricValue) -> Payload {
    let mut m = Metric::new(datatype, &value)
        .expect("fits")
        .without_datatype();
    m.alias = Some(alias);
    Payload {
        timestamp: Some(T0 + 1),
        seq: Some(seq),
        metrics: vec![m],
        ..Default::default()
    }
}

fn death(bd: i64) -> Payload {
    Payload {
        timestamp: Some(T0),
        metrics: vec![bd_seq(bd)],
        ..Default::default()
    }
}

fn ddeath(seq: u64) -> Payload {
    Payload {
        timestamp: Some(T0 + 7),
        seq: Some(seq),
        ..Default::default()
    }
}

fn born() -> EdgeNodes {
    let mut s = EdgeNodes::default();
    assert!(matches!(
        feed(&mut s, "NBIRTH", None, &nbirth(0, 1)),
        Outcome::Online { device: None, .. }
    ));
    s
}

fn values(o: &Outcome) -> Vec<(String, MetricValue)> {
    o.readings()
        .iter()
        .map(|r| (r.name.to_string(), r.value.clone()))
        .collect()
}

fn rebirth(o: &Outcome) -> &RebirthReason {
    match o {
        Outcome::RequestRebirth { reason } => reason,
        other => panic!("expected a rebirth request, got {other:?}"),
    }
}

// ---- the peer's payloads ----------------------------------------------------------------

#[test]
fn the_peers_session_decodes_message_by_message() {
    let mut s = EdgeNodes::default();
    let mut handle = |kind: &str, device: Option<&str>, payload: &str| -> Outcome {
        s.handle_message(&t(kind, device), &hex(payload), T0 + 10_000)
            .expect("peer message is valid")
    };

    let birth = handle("NBIRTH", None, PEER_NBIRTH);
    let Outcome::Online {
        device: None,
        readings,
        rejected,
        ..
    } = &birth
    else {
        panic!("NBIRTH not accepted: {birth:?}");
    };
    assert!(rejected.is_empty(), "{rejected:?}");
    let expected = [
        (REBIRTH_METRIC, DataType::Boolean, MetricValue::Bool(false)),
        ("level", DataType::Double, MetricValue::Double(2.75)),
        ("temp", DataType::Float, MetricValue::Float(18.5)),
        ("i8", DataType::Int8, MetricValue::Int(-5)),
        ("i16", DataType::Int16, MetricValue::Int(-300)),
        ("i32", DataType::Int32, MetricValue::Int(-70000)),
        ("i64", DataType::Int64, MetricValue::Int(-(1 << 40))),
        ("u8", DataType::UInt8, MetricValue::UInt(200)),
        ("u16", DataType::UInt16, MetricValue::UInt(60000)),
        ("u32", DataType::UInt32, MetricValue::UInt(4_000_000_000)),
        ("u64", DataType::UInt64, MetricValue::UInt((1 << 63) + 5)),
        ("pump_on", DataType::Boolean, MetricValue::Bool(true)),
        ("status", DataType::String, MetricValue::Text("ok".into())),
        (
            "since",
            DataType::DateTime,
            MetricValue::DateTime(T0 - 60_000),
        ),
        ("blob", DataType::Bytes, MetricValue::Bytes(vec![1, 2, 3])),
    ];
    assert_eq!(readings.len(), expected.len(), "bdSeq is not a reading");
    for (r, (name, datatype, value)) in readings.iter().zip(expected) {
        assert_eq!((&*r.name, r.datatype, &r.value), (name, datatype, &value));
        assert_eq!(r.timestamp_ms, Some(T0));
        assert!(!r.historical);
    }
    assert_eq!(readings[1].alias, Some(1));
    assert_eq!(
        s.datatype_of("district", "agent-1", None, "i16"),
        Some(DataType::Int16)
    );

    let mut handle = |kind: &str, device: Option<&str>, payload: &str| -> Outcome {
        s.handle_message(&t(kind, device), &hex(payload), T0 + 10_000)
            .expect("peer message is valid")
    };
    let data = handle("NDATA", None, PEER_NDATA);
    assert!(
        matches!(&data, Outcome::Readings { device: None, rejected, .. } if rejected.is_empty())
    );
    assert_eq!(
        values(&data),
        [
            ("level".to_string(), MetricValue::Double(3.25)),
            ("i8".to_string(), MetricValue::Int(-128)),
            ("pump_on".to_string(), MetricValue::Bool(false)),
        ]
    );
    assert_eq!(data.readings()[0].timestamp_ms, Some(T0 + 900));
    assert_eq!(
        data.readings()[0].value.as_value(),
        Some(Value::Number(3.25))
    );

    let historical = handle("NDATA", None, PEER_NDATA_HISTORICAL);
    let r = &historical.readings()[0];
    assert_eq!((&*r.name, r.historical), ("level", true));
    assert_eq!(r.timestamp_ms, Some(T0 - 3_600_000));

    let device = handle("DBIRTH", Some("meter"), PEER_DBIRTH);
    assert!(matches!(&device, Outcome::Online { device: Some(d), .. } if &**d == "meter"));
    let ddata = handle("DDATA", Some("meter"), PEER_DDATA);
    assert_eq!(
        values(&ddata),
        [("flow".to_string(), MetricValue::Float(0.75))]
    );
    let ddeath = handle("DDEATH", Some("meter"), PEER_DDEATH);
    assert_eq!(
        ddeath,
        Outcome::Offline {
            device: Some("meter".into()),
            devices: vec![],
            timestamp_ms: Some(T0 + 5000),
        }
    );
    let ndeath = handle("NDEATH", None, PEER_NDEATH);
    assert!(matches!(ndeath, Outcome::Offline { device: None, .. }));
    assert!(!s.is_online("district", "agent-1"));
}

#[test]
fn our_rebirth_request_is_the_peers_byte_for_byte() {
    assert_eq!(to_hex(&rebirth_request(T0)), PEER_NCMD_REBIRTH);
}

#[test]
fn our_write_commands_are_the_bytes_the_peer_was_checked_with() {
    let cases = [
        (
            write_metric(
                "dimming_level",
                DataType::Float,
                &MetricValue::Float(40.0),
                T0,
            ),
            OUR_WRITE_FLOAT,
        ),
        (
            write_metric("setpoint", DataType::Int16, &MetricValue::Int(-87), T0),
            OUR_WRITE_INT16,
        ),
        (
            write_metric(
                "mode",
                DataType::String,
                &MetricValue::Text("eco".into()),
                T0,
            ),
            OUR_WRITE_STRING,
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(to_hex(&bytes.expect("fits")), expected);
    }
}

/// The peer, run now: it still encodes exactly the `PEER_*` bytes and decodes every `OUR_*`
/// (and our rebirth request) to the metric the hub meant.
#[test]
fn the_peer_still_agrees() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/sparkplug_peer.py");
    let run = |args: &[&str]| {
        let out = Command::new("python3")
            .arg(script)
            .args(args)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "sparkplug_peer.py {args:?} failed (scripts/setup-peers.sh installs pysparkplug): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    };
    let printed = run(&[]);
    let fixtures = [
        ("NBIRTH", PEER_NBIRTH),
        ("NDATA", PEER_NDATA),
        ("NDATA_HISTORICAL", PEER_NDATA_HISTORICAL),
        ("DBIRTH", PEER_DBIRTH),
        ("DDATA", PEER_DDATA),
        ("DDEATH", PEER_DDEATH),
        ("NDEATH", PEER_NDEATH),
        ("NCMD_REBIRTH", PEER_NCMD_REBIRTH),
    ];
    let lines: Vec<(&str, &str)> = printed.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(lines, fixtures);
    run(&["--check"]);
}

// ---- sessions ---------------------------------------------------------------------------

#[test]
fn birth_with_aliases_then_data_by_alias() {
    let mut s = born();
    let out = feed(
        &mut s,
        "NDATA",
        None,
        &by_alias(1, 1, DataType::Double, MetricValue::Double(4.5)),
    );
    let Outcome::Readings {
        device: None,
        readings,
        rejected,
    } = &out
    else {
        panic!("{out:?}");
    };
    assert!(rejected.is_empty());
    let r = &readings[0];
    assert_eq!(
        (&*r.name, r.alias, r.datatype),
        ("level", Some(1), DataType::Double)
    );
    assert_eq!(r.value, MetricValue::Double(4.5));
    assert_eq!(
        r.timestamp_ms,
        Some(T0 + 1),
        "payload timestamp when the metric has none"
    );
    // By name works too.
    let mut by_name = by_alias(2, 0, DataType::Boolean, MetricValue::Bool(true));
    by_name.metrics[0].alias = None;
    by_name.metrics[0].name = Some("pump_on".into());
    let out = feed(&mut s, "NDATA", None, &by_name);
    assert_eq!(
        values(&out),
        [("pump_on".to_string(), MetricValue::Bool(true))]
    );
}

#[test]
fn a_seq_gap_requests_a_rebirth_and_data_waits_for_it() {
    let mut s = born();
    let out = feed(
        &mut s,
        "NDATA",
        None,
        &by_alias(2, 1, DataType::Double, MetricValue::Double(1.0)),
    );
    assert_eq!(
        rebirth(&out),
        &RebirthReason::Sequence {
            expected: 1,
            got: Some(2)
        }
    );
    assert!(s.is_stale("district", "agent-1"));
    // Further data is not stored while the rebirth is due (and not asked for again so soon).
    let out = feed(
        &mut s,
        "NDATA",
        None,
        &by_alias(3, 1, DataType::Double, MetricValue::Double(1.0)),
    );
    assert!(matches!(
        out,
        Outcome::Ignored {
            reason: IgnoreReason::RebirthPending(RebirthReason::Sequence { .. })
        }
    ));
    // A message without seq is a gap as well.
    let mut s = born();
    let mut no_seq = by_alias(1, 1, DataType::Double, MetricValue::Double(1.0));
    no_seq.seq = None;
    assert_eq!(
        rebirth(&feed(&mut s, "NDATA", None, &no_seq)),
        &RebirthReason::Sequence {
            expected: 1,
            got: None
        }
    );
    // The rebirth restores the session.
    assert!(matches!(
        feed(&mut s, "NBIRTH", None, &nbirth(0, 1)),
        Outcome::Online { .. }
    ));
    assert!(!s.is_stale("district", "agent-1"));
    assert!(matches!(
        feed(
            &mut s,
            "NDATA",
            None,
            &by_alias(1, 1, DataType::Double, MetricValue::Double(1.0))
        ),
        Outcome::Readings { .. }
    ));
}

#[test]
fn data_before_birth_requests_a_rebirth() {
    let mut s = EdgeNodes::default();
    let out = feed(
        &mut s,
        "NDATA",
        None,
        &by_alias(7, 1, DataType::Double, MetricValue::Double(1.0)),
    );
    assert_eq!(rebirth(&out), &RebirthReason::NotBorn);
    assert!(!s.is_online("district", "agent-1"));
    // A DBIRTH before the NBIRTH too.
    let mut s = EdgeNodes::default();
    assert_eq!(
        rebirth(&feed(&mut s, "DBIRTH", Some("meter"), &dbirth(1, 9))),
        &RebirthReason::NotBorn
    );
    // And DDATA from a device without DBIRTH.
    let mut s = born();
    assert_eq!(
        rebirth(&feed(
            &mut s,
            "DDATA",
            Some("meter"),
            &by_alias(1, 9, DataType::Float, MetricValue::Float(1.0))
        )),
        &RebirthReason::DeviceNotBorn("meter".into())
    );
}

#[test]
fn an_unknown_alias_or_name_requests_a_rebirth() {
    let mut s = born();
    let out = feed(
        &mut s,
        "NDATA",
        None,
        &by_alias(1, 42, DataType::Double, MetricValue::Double(1.0)),
    );
    assert_eq!(
        rebirth(&out),
        &RebirthReason::UnknownAlias {
            device: None,
            alias: 42
        }
    );
    let mut s = born();
    let mut unknown = by_alias(1, 0, DataType::Double, MetricValue::Double(1.0));
    unknown.metrics[0].alias = None;
    unknown.metrics[0].name = Some("nope".into());
    assert_eq!(
        rebirth(&feed(&mut s, "NDATA", None, &unknown)),
        &RebirthReason::UnknownMetric {
            device: None,
            name: "nope".into()
        }
    );
}

#[test]
fn ndeath_with_the_sessions_bd_seq_takes_node_and_devices_offline() {
    let mut s = born();
    feed(&mut s, "DBIRTH", Some("meter"), &dbirth(1, 10));
    feed(&mut s, "DBIRTH", Some("valve"), &dbirth(2, 11));
    assert_eq!(s.online_devices("district", "agent-1").len(), 2);
    let out = feed(&mut s, "NDEATH", None, &death(1));
    let Outcome::Offline {
        device: None,
        mut devices,
        timestamp_ms: None,
    } = out
    else {
        panic!("{out:?}");
    };
    devices.sort();
    assert_eq!(devices, [Arc::<str>::from("meter"), Arc::from("valve")]);
    assert!(!s.is_online("district", "agent-1"));
    assert!(s.online_devices("district", "agent-1").is_empty());
    // A repeated NDEATH changes nothing; data after it needs a birth.
    assert!(matches!(
        feed(&mut s, "NDEATH", None, &death(1)),
        Outcome::Ignored {
            reason: IgnoreReason::NotOnline { device: None }
        }
    ));
    assert_eq!(
        rebirth(&feed(
            &mut s,
            "NDATA",
            None,
            &by_alias(3, 1, DataType::Double, MetricValue::Double(1.0))
        )),
        &RebirthReason::NotBorn
    );
}

#[test]
fn ndeath_of_an_older_session_is_ignored() {
    // The node reconnected (bdSeq 2) before the broker delivered the old session's will (1).
    let mut s = EdgeNodes::default();
    feed(&mut s, "NBIRTH", None, &nbirth(0, 2));
    let out = feed(&mut s, "NDEATH", None, &death(1));
    assert_eq!(
        out,
        Outcome::Ignored {
            reason: IgnoreReason::StaleBdSeq {
                current: Some(2),
                got: 1
            }
        }
    );
    assert!(s.is_online("district", "agent-1"));
    // An NDEATH without bdSeq cannot be matched to a session either.
    let no_bd = Payload {
        timestamp: Some(T0),
        ..Default::default()
    };
    assert!(matches!(
        feed(&mut s, "NDEATH", None, &no_bd),
        Outcome::Ignored {
            reason: IgnoreReason::NoBdSeq(_)
        }
    ));
    assert!(s.is_online("district", "agent-1"));
}

#[test]
fn ddeath_takes_one_device_offline() {
    let mut s = born();
    feed(&mut s, "DBIRTH", Some("meter"), &dbirth(1, 10));
    feed(&mut s, "DBIRTH", Some("valve"), &dbirth(2, 11));
    assert_eq!(
        feed(&mut s, "DDEATH", Some("meter"), &ddeath(3)),
        Outcome::Offline {
            device: Some("meter".into()),
            devices: vec![],
            timestamp_ms: Some(T0 + 7),
        }
    );
    assert_eq!(
        s.online_devices("district", "agent-1"),
        [Arc::<str>::from("valve")]
    );
    assert!(s.is_online("district", "agent-1"));
    // Its data now needs a birth; the other device's does not.
    assert!(matches!(
        feed(
            &mut s,
            "DDATA",
            Some("valve"),
            &by_alias(4, 11, DataType::Float, MetricValue::Float(2.0))
        ),
        Outcome::Readings { .. }
    ));
    assert_eq!(
        rebirth(&feed(
            &mut s,
            "DDATA",
            Some("meter"),
            &by_alias(5, 10, DataType::Float, MetricValue::Float(2.0))
        )),
        &RebirthReason::DeviceNotBorn("meter".into())
    );
}

#[test]
fn a_ddeath_after_a_gap_still_counts_and_the_rebirth_follows() {
    let mut s = born();
    feed(&mut s, "DBIRTH", Some("meter"), &dbirth(1, 10));
    assert!(matches!(
        feed(&mut s, "DDEATH", Some("meter"), &ddeath(5)),
        Outcome::Offline {
            device: Some(_),
            ..
        }
    ));
    assert!(s.is_stale("district", "agent-1"));
    assert_eq!(
        rebirth(&feed(
            &mut s,
            "NDATA",
            None,
            &by_alias(6, 1, DataType::Double, MetricValue::Double(1.0))
        )),
        &RebirthReason::Sequence {
            expected: 2,
            got: Some(5)
        }
    );
}

#[test]
fn seq_wraps_from_255_to_0() {
    let mut s = EdgeNodes::default();
    // 3.0: the NBIRTH's seq is any of 0..=255 and the count starts there.
    feed(&mut s, "NBIRTH", None, &nbirth(254, 1));
    for seq in [255, 0, 1] {
        let out = feed(
            &mut s,
            "NDATA",
            None,
            &by_alias(seq, 1, DataType::Double, MetricValue::Double(seq as f64)),
        );
        assert!(
            matches!(out, Outcome::Readings { .. }),
            "seq {seq}: {out:?}"
        );
    }
    // 256 is not a seq.
    let out = feed(
        &mut s,
        "NDATA",
        None,
        &by_alias(258, 1, DataType::Double, MetricValue::Double(1.0)),
    );
    assert_eq!(
        rebirth(&out),
        &RebirthReason::Sequence {
            expected: 2,
            got: Some(258)
        }
    );
}

#[test]
fn historical_metrics_are_flagged() {
    let mut s = born();
    let mut p = by_alias(1, 1, DataType::Double, MetricValue::Double(1.0));
    p.metrics[0].is_historical = Some(true);
    p.metrics[0].timestamp = Some(T0 - 86_400_000);
    let live = Metric::new(DataType::Boolean, &MetricValue::Bool(true))
        .expect("fits")
        .without_datatype()
        .aliased(2);
    p.metrics.push(live);
    let out = feed(&mut s, "NDATA", None, &p);
    let flags: Vec<_> = out
        .readings()
        .iter()
        .map(|r| (&*r.name, r.historical, r.timestamp_ms))
        .collect();
    assert_eq!(
        flags,
        [
            ("level", true, Some(T0 - 86_400_000)),
            ("pump_on", false, Some(T0 + 1))
        ]
    );
}

#[test]
fn a_bad_value_is_rejected_and_the_rest_kept() {
    let mut s = born();
    let mut p = by_alias(1, 1, DataType::Double, MetricValue::Double(1.0));
    // pump_on is Boolean in the birth; an int_value does not fit, and a datatype that
    // contradicts the birth is refused.
    p.metrics.push(Metric {
        alias: Some(2),
        value: Some(metric::Value::IntValue(1)),
        ..Default::default()
    });
    p.metrics.push(Metric {
        alias: Some(2),
        datatype: Some(DataType::Int32.code()),
        value: Some(metric::Value::IntValue(1)),
        ..Default::default()
    });
    let Outcome::Readings {
        readings, rejected, ..
    } = feed(&mut s, "NDATA", None, &p)
    else {
        panic!("message refused");
    };
    assert_eq!(readings.len(), 1);
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0].name.as_deref(), Some("pump_on"));
    assert!(
        rejected[1]
            .error
            .to_string()
            .contains("differs from Boolean")
    );
}

#[test]
fn aliases_are_unique_across_node_and_devices() {
    let mut s = born();
    // Alias 1 is the node's `level`.
    let out = feed(&mut s, "DBIRTH", Some("meter"), &dbirth(1, 1));
    assert!(matches!(
        rebirth(&out),
        RebirthReason::BadBirth {
            device: Some(_),
            ..
        }
    ));
    // A device may be born again with its own aliases.
    let mut s = born();
    feed(&mut s, "DBIRTH", Some("meter"), &dbirth(1, 10));
    assert!(matches!(
        feed(&mut s, "DBIRTH", Some("meter"), &dbirth(2, 10)),
        Outcome::Online { .. }
    ));
}

#[test]
fn a_rebirth_ends_the_devices_of_the_previous_session() {
    let mut s = born();
    feed(&mut s, "DBIRTH", Some("meter"), &dbirth(1, 10));
    let out = feed(&mut s, "NBIRTH", None, &nbirth(0, 1));
    let Outcome::Online {
        device: None,
        devices_offline,
        ..
    } = out
    else {
        panic!("{out:?}");
    };
    assert_eq!(devices_offline, [Arc::<str>::from("meter")]);
    assert!(s.online_devices("district", "agent-1").is_empty());
    assert_eq!(
        rebirth(&feed(
            &mut s,
            "DDATA",
            Some("meter"),
            &by_alias(1, 10, DataType::Float, MetricValue::Float(1.0))
        )),
        &RebirthReason::DeviceNotBorn("meter".into())
    );
}

#[test]
fn commands_and_host_state_are_ignored() {
    let mut s = born();
    for (topic, payload) in [
        (t("NCMD", None), rebirth_request(T0)),
        (t("DCMD", Some("meter")), rebirth_request(T0)),
        (
            "spBv1.0/STATE/hub".to_string(),
            br#"{"online":true,"timestamp":1}"#.to_vec(),
        ),
    ] {
        assert!(matches!(
            s.handle_message(&topic, &payload, T0),
            Ok(Outcome::Ignored {
                reason: IgnoreReason::Command | IgnoreReason::HostState
            })
        ));
    }
    // ... and do not consume a seq.
    assert!(matches!(
        feed(
            &mut s,
            "NDATA",
            None,
            &by_alias(1, 1, DataType::Double, MetricValue::Double(1.0))
        ),
        Outcome::Readings { .. }
    ));
    assert!(
        s.handle_message("v1/devices/x/telemetry", b"{}", T0)
            .is_err()
    );
    assert!(s.handle_message(&t("NDATA", None), &[0xff], T0).is_err());
}

#[test]
fn ncmd_rebirth_and_dcmd_encodings_decode_back() {
    let p = sparkplug::decode(&rebirth_request(T0)).expect("decodes");
    assert_eq!((p.timestamp, p.seq), (Some(T0), None));
    assert_eq!(p.metrics[0].name.as_deref(), Some(REBIRTH_METRIC));
    assert_eq!(
        decode_value(&p.metrics[0], DataType::Boolean),
        Ok(MetricValue::Bool(true))
    );

    let bytes =
        write_metric("setpoint", DataType::Int16, &MetricValue::Int(-87), T0).expect("fits");
    let p = sparkplug::decode(&bytes).expect("decodes");
    let m = &p.metrics[0];
    assert_eq!(m.name.as_deref(), Some("setpoint"));
    assert_eq!(m.data_type(), Some(DataType::Int16));
    assert_eq!(decode_value(m, DataType::Int16), Ok(MetricValue::Int(-87)));
    assert_eq!(p.seq, None);

    // The topics they go on.
    let topic = EdgeTopic::new("district", MessageType::DCmd, "agent-1", Some("meter"))
        .expect("valid")
        .to_topic();
    assert_eq!(topic, "spBv1.0/district/DCMD/agent-1/meter");
    assert!(matches!(Topic::parse(&topic), Ok(Topic::Edge(e)) if e.kind == MessageType::DCmd));
    assert!(topic.starts_with(sparkplug::NAMESPACE));
}

// ---- properties -------------------------------------------------------------------------

fn arb_value() -> impl Strategy<Value = Option<metric::Value>> {
    use metric::Value as V;
    prop_oneof![
        Just(None),
        any::<u32>().prop_map(|v| Some(V::IntValue(v))),
        any::<u64>().prop_map(|v| Some(V::LongValue(v))),
        any::<f32>().prop_map(|v| Some(V::FloatValue(v))),
        any::<f64>().prop_map(|v| Some(V::DoubleValue(v))),
        any::<bool>().prop_map(|v| Some(V::BooleanValue(v))),
        ".{0,8}".prop_map(|v| Some(V::StringValue(v))),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(|v| Some(V::BytesValue(v))),
    ]
}

fn arb_metric() -> impl Strategy<Value = Metric> {
    (
        prop::option::of(prop_oneof![
            Just("level".to_string()),
            Just(BD_SEQ_METRIC.to_string()),
            "[a-z]{1,6}"
        ]),
        prop::option::of(0u64..6),
        prop::option::of(any::<u64>()),
        prop::option::of(0u32..36),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        arb_value(),
    )
        .prop_map(
            |(name, alias, timestamp, datatype, is_historical, is_null, value)| Metric {
                name,
                alias,
                timestamp,
                datatype,
                is_historical,
                is_null,
                value,
                ..Default::default()
            },
        )
}

fn arb_payload() -> impl Strategy<Value = Payload> {
    (
        prop::option::of(any::<u64>()),
        prop::collection::vec(arb_metric(), 0..6),
        prop::option::of(prop_oneof![0u64..=256, any::<u64>()]),
        prop::option::of(".{0,6}"),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..6)),
    )
        .prop_map(|(timestamp, metrics, seq, uuid, body)| Payload {
            timestamp,
            metrics,
            seq,
            uuid,
            body,
        })
}

fn arb_topic() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            0usize..8,
            prop::option::of(prop_oneof![Just("a"), Just("b")])
        )
            .prop_map(|(k, d)| {
                let kind = MessageType::ALL[k];
                let device = if kind.is_device() {
                    Some(d.unwrap_or("a"))
                } else {
                    None
                };
                t(kind.as_str(), device)
            }),
        ".{0,24}",
    ]
}

proptest! {
    #[test]
    fn any_bytes_never_panic_the_decoder_or_the_state_machine(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        topic in arb_topic(),
    ) {
        let _ = sparkplug::decode(&bytes);
        let mut s = born();
        let _ = s.handle_message(&topic, &bytes, T0);
    }

    #[test]
    fn any_message_sequence_never_panics_the_state_machine(
        messages in prop::collection::vec((arb_topic(), arb_payload(), 0u64..20_000), 0..24),
    ) {
        let mut s = EdgeNodes::new(Limits { rebirth_interval_ms: 1000, max_nodes: 4 });
        for (topic, payload, now) in messages {
            if let Ok(Topic::Edge(e)) = Topic::parse(&topic) {
                let out = s.handle(&e, &payload, now);
                // Readings only ever come from an online node.
                if !out.readings().is_empty() {
                    prop_assert!(s.is_online(e.group, e.node));
                }
            }
            prop_assert!(s.len() <= 4);
        }
    }

    #[test]
    fn generated_payloads_round_trip(p in arb_payload()) {
        let bytes = sparkplug::encode(&p);
        let back = sparkplug::decode(&bytes).expect("own encoding decodes");
        // Bytes, not values: a NaN is not equal to itself but encodes the same.
        prop_assert_eq!(sparkplug::encode(&back), bytes);
    }

    #[test]
    fn values_that_fit_round_trip_through_their_datatype(
        i in any::<i64>(), u in any::<u64>(), f in any::<f32>(), d in any::<f64>(),
        b in any::<bool>(), s in ".{0,8}", k in 0usize..18,
    ) {
        use DataType as D;
        let (datatype, value) = [
            (D::Int8, MetricValue::Int(i % 128)),
            (D::Int16, MetricValue::Int(i % 32768)),
            (D::Int32, MetricValue::Int(i % (1 << 31))),
            (D::Int64, MetricValue::Int(i)),
            (D::UInt8, MetricValue::UInt(u % 256)),
            (D::UInt16, MetricValue::UInt(u % 65536)),
            (D::UInt32, MetricValue::UInt(u % (1 << 32))),
            (D::UInt64, MetricValue::UInt(u)),
            (D::Float, MetricValue::Float(f)),
            (D::Double, MetricValue::Double(d)),
            (D::Boolean, MetricValue::Bool(b)),
            (D::String, MetricValue::Text(s.clone())),
            (D::Text, MetricValue::Text(s.clone())),
            (D::UUID, MetricValue::Text(s)),
            (D::DateTime, MetricValue::DateTime(u)),
            (D::Bytes, MetricValue::Bytes(i.to_le_bytes().to_vec())),
            (D::File, MetricValue::Bytes(vec![])),
            (D::Int8, MetricValue::Null),
][k].clone();
        let m = Metric::new(datatype, &value).expect("fits");
        let wire = sparkplug::decode(&sparkplug::encode(&Payload { metrics: vec![m], ..Default::default() }))
            .expect("decodes");
        let back = decode_value(&wire.metrics[0], datatype).expect("reads back");
        match (&back, &value) {
            (MetricValue::Float(a), MetricValue::Float(b)) => prop_assert_eq!(a.to_bits(), b.to_bits()),
            (MetricValue::Double(a), MetricValue::Double(b)) => prop_assert_eq!(a.to_bits(), b.to_bits()),
            _ => prop_assert_eq!(back, value),
        }
    }
}
