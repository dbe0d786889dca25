//! The HJ 212-2017 codec on whole packets, as a station sends them over TCP.
//!
//! Sources of the example packets:
//! - `STANDARD_1062`: the example packet HJ 212-2017 gives for its packet structure and CRC
//!   field (CN 1062, set the real-time data interval, CRC `1C80`; the CRC algorithm itself is
//!   the standard's normative Appendix A, "CRC check algorithm").
//! - Every other packet was written for these tests (realistic values for a surface-water
//!   station, `ST=21`); its length and CRC were computed by a separate implementation of the
//!   standard's CRC algorithm, not by this codec, so the codec is checked against them rather
//!   than against itself.

use proptest::prelude::*;
use protocols::hj212::{
    self, Cn, CpBuilder, CpData, DataFlag, DataTime, Flag, Frame, FrameError, FrameReader, Packet,
    Reassembler, Split, codes, data_ack, encode,
};
use protocols::{Quality, Quantity};

const STANDARD_1062: &str = "##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80\r\n";

/// Real-time data (CN 2011), eight pollutants, flags N, T (over range), D (fault),
/// M (maintenance); Flag=5: HJ 212-2017, acknowledgement requested.
const REALTIME: &str = "##0339QN=20240315103000123;ST=21;CN=2011;PW=123456;MN=88888880000001;Flag=5;CP=&&DataTime=20240315103000;w01001-Rtd=7.42,w01001-Flag=N;w01003-Rtd=12.6,w01003-Flag=N;w01009-Rtd=8.15,w01009-Flag=N;w01010-Rtd=18.3,w01010-Flag=N;w01014-Rtd=512,w01014-Flag=N;w21003-Rtd=0.423,w21003-Flag=T;w01018-Rtd=0.00,w01018-Flag=D;w01019-Rtd=3.2,w01019-Flag=M&&DA81\r\n";

/// The CN 9014 acknowledgement of `REALTIME`.
const REALTIME_ACK: &str =
    "##0077QN=20240315103000123;ST=91;CN=9014;PW=123456;MN=88888880000001;Flag=4;CP=&&&&BDC1\r\n";

/// Minute data (CN 2051) split in two packets: Flag=7 (split, acknowledgement requested),
/// PNUM=2, PNO=1 and 2, one QN.
const MINUTE_PART_1: &str = "##0175QN=20240315104000456;ST=21;CN=2051;PW=123456;MN=88888880000001;Flag=7;PNUM=2;PNO=1;CP=&&DataTime=20240315103000;w01001-Avg=7.40,w01001-Min=7.38,w01001-Max=7.43,w01001-Flag=N&&7800\r\n";
const MINUTE_PART_2: &str = "##0175QN=20240315104000456;ST=21;CN=2051;PW=123456;MN=88888880000001;Flag=7;PNUM=2;PNO=2;CP=&&DataTime=20240315103000;w21003-Avg=0.41,w21003-Min=0.39,w21003-Max=0.44,w21003-Flag=N&&CB81\r\n";
const MINUTE_ACK: &str =
    "##0077QN=20240315104000456;ST=91;CN=9014;PW=123456;MN=88888880000001;Flag=4;CP=&&&&47C0\r\n";

/// Hour data (CN 2061), no acknowledgement requested (Flag=4), one analyser in calibration.
const HOUR: &str = "##0160QN=20240315110000789;ST=21;CN=2061;PW=123456;MN=88888880000001;Flag=4;CP=&&DataTime=20240315100000;w01001-Avg=7.41,w01001-Flag=N;w01009-Avg=8.02,w01009-Flag=C&&06C0\r\n";

fn frames(reader: &mut FrameReader) -> Vec<Result<String, FrameError>> {
    let mut out = Vec::new();
    while let Some(f) = reader.next_frame() {
        out.push(f.map(|f| f.data.to_owned()));
    }
    out
}

fn data_of(packet: &str) -> &str {
    &packet[6..packet.len() - 6]
}

#[test]
fn standard_example() {
    let f = Frame::decode(STANDARD_1062.as_bytes()).unwrap();
    assert_eq!(f.crc, 0x1C80);
    let p = f.packet().unwrap();
    assert_eq!(p.cn, Cn::Other(1062));
    assert_eq!(p.flag, Some(Flag::new(Flag::VERSION_2017, false, true)));
    assert_eq!(p.cp_data().unwrap().param("RtdInterval"), Some("30"));
    assert_eq!(encode(&p).unwrap(), STANDARD_1062);
}

#[test]
fn realtime_packet_with_flags() {
    let f = Frame::decode(REALTIME.as_bytes()).unwrap();
    let p = f.packet().unwrap();
    assert_eq!(p.cn, Cn::RealTime);
    assert_eq!((p.st, p.mn, p.pw), ("21", "88888880000001", "123456"));
    let cp = p.cp_data().unwrap();
    let t = cp.data_time.unwrap();
    // 10:30 at UTC+8 is 02:30Z.
    assert_eq!(
        t.to_utc_ms(hj212::DEFAULT_UTC_OFFSET_MINUTES),
        1_710_469_800_000
    );

    // What the hub does with each pollutant: code -> quantity, value in the standard's unit ->
    // canonical, data flag -> quality.
    let readings: Vec<(Quantity, f64, Quality)> = cp
        .pollutants()
        .map(|pol| {
            let code = codes::lookup(pol.code).unwrap();
            let raw = hj212::cp::parse_number(pol.value_for(p.cn).unwrap()).unwrap();
            let v = code.quantity.to_canonical(raw, code.unit).unwrap();
            (code.quantity, v, pol.quality())
        })
        .collect();
    assert_eq!(
        readings,
        [
            (Quantity::Ph, 7.42, Quality::Good),
            (Quantity::Turbidity, 12.6, Quality::Good),
            (Quantity::DissolvedOxygen, 8.15, Quality::Good),
            (Quantity::WaterTemperature, 18.3, Quality::Good),
            (Quantity::Conductivity, 512.0, Quality::Good),
            (Quantity::AmmoniaNitrogen, 0.423, Quality::Uncertain),
            (Quantity::Cod, 0.0, Quality::Bad),
            (Quantity::PermanganateIndex, 3.2, Quality::Bad),
        ]
    );
    assert_eq!(
        cp.pollutant("w01018").unwrap().flag(),
        Some(DataFlag::Fault)
    );
}

#[test]
fn ack_requested_gets_9014() {
    let p = Frame::decode(REALTIME.as_bytes())
        .unwrap()
        .packet()
        .unwrap();
    assert!(p.wants_ack());
    assert_eq!(data_ack(&p).unwrap(), REALTIME_ACK);

    let hour = Frame::decode(HOUR.as_bytes()).unwrap().packet().unwrap();
    assert!(!hour.wants_ack());
    assert_eq!(hour.cn, Cn::Hour);
    let cp = hour.cp_data().unwrap();
    let do_ = cp.pollutant("w01009").unwrap();
    assert_eq!(do_.value_for(Cn::Hour), Some("8.02"));
    assert_eq!(do_.quality(), Quality::Bad);
}

#[test]
fn split_pair_reassembled() {
    let mut reader = FrameReader::new();
    let mut r = Reassembler::default();
    // Second part first: TCP gives them in order, but a station may retransmit.
    reader.push(MINUTE_PART_2.as_bytes());
    reader.push(MINUTE_PART_1.as_bytes());
    let mut whole = None;
    let mut now_ms = 1_000;
    while let Some(f) = reader.next_frame() {
        let p = f.unwrap().packet().unwrap();
        assert!(p.flag.unwrap().is_split());
        assert!(p.wants_ack());
        assert_eq!(data_ack(&p).unwrap(), MINUTE_ACK);
        if let Some(w) = r.push(&p, now_ms).unwrap() {
            whole = Some(w);
        }
        now_ms += 10;
    }
    let whole = whole.expect("both parts arrived");
    assert_eq!(r.pending(), 0);
    let p = whole.as_packet();
    assert_eq!(p.cn, Cn::Minute);
    assert_eq!(p.split, None);
    assert_eq!(p.flag, Some(Flag(5)));
    let cp = p.cp_data().unwrap();
    assert_eq!(
        cp.data_time,
        Some(DataTime::parse("20240315103000").unwrap())
    );
    let order: Vec<&str> = cp.pollutants().map(|p| p.code).collect();
    assert_eq!(order, ["w01001", "w21003"]);
    assert_eq!(cp.pollutant("w21003").unwrap().get("Max"), Some("0.44"));
    assert_eq!(
        cp.pollutant("w01001").unwrap().value_for(Cn::Minute),
        Some("7.40")
    );
}

#[test]
fn half_a_split_message_expires() {
    let mut r = Reassembler::new(8, 16, 30_000);
    let p = Frame::decode(MINUTE_PART_1.as_bytes())
        .unwrap()
        .packet()
        .unwrap();
    assert_eq!(p.split, Some(Split { total: 2, index: 1 }));
    assert_eq!(r.push(&p, 0), Ok(None));
    assert!(r.expire(29_999).is_empty());
    let gone = r.expire(30_000);
    assert_eq!(gone.len(), 1);
    assert_eq!((gone[0].received, gone[0].total), (1, 2));
    assert_eq!(gone[0].qn, "20240315104000456");
}

#[test]
fn bad_crc() {
    // One digit of the pH value changed in transit, CRC left as sent.
    let corrupted = REALTIME.replace("w01001-Rtd=7.42", "w01001-Rtd=7.43");
    assert_eq!(
        Frame::decode(corrupted.as_bytes()),
        Err(FrameError::BadCrc {
            expected: 0x8A81,
            got: 0xDA81
        })
    );
    // The reader skips it whole and goes on.
    let mut reader = FrameReader::new();
    reader.push(format!("{corrupted}{HOUR}").as_bytes());
    let got = frames(&mut reader);
    assert_eq!(got.len(), 2);
    assert!(matches!(got[0], Err(FrameError::BadCrc { .. })));
    assert_eq!(got[1].as_deref(), Ok(data_of(HOUR)));
}

#[test]
fn bad_length() {
    let short = REALTIME.replacen("##0339", "##0338", 1);
    assert_eq!(
        Frame::decode(short.as_bytes()),
        Err(FrameError::BadLength {
            declared: 338,
            actual: 339
        })
    );
    let long = REALTIME.replacen("##0339", "##0345", 1);
    assert_eq!(
        Frame::decode(long.as_bytes()),
        Err(FrameError::BadLength {
            declared: 345,
            actual: 339
        })
    );
    // Declared longer than it is: the next packet, inside the declared extent, still comes out.
    let mut reader = FrameReader::new();
    reader.push(format!("{long}{HOUR}").as_bytes());
    let got = frames(&mut reader);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(matches!(got[0], Err(FrameError::BadLength { .. })));
    assert_eq!(got[1].as_deref(), Ok(data_of(HOUR)));
}

#[test]
fn packet_split_across_reads() {
    for piece in [1, 2, 5, 64, 338] {
        let mut reader = FrameReader::new();
        let mut got = Vec::new();
        for chunk in REALTIME.as_bytes().chunks(piece) {
            reader.push(chunk);
            got.extend(frames(&mut reader));
        }
        assert_eq!(got, [Ok(data_of(REALTIME).to_owned())], "pieces of {piece}");
        assert_eq!(reader.buffered(), 0);
    }
    // Several packets in one read, the last one incomplete.
    let mut reader = FrameReader::new();
    let stream = format!("{REALTIME}{HOUR}{MINUTE_PART_1}");
    let cut = stream.len() - 20;
    reader.push(&stream.as_bytes()[..cut]);
    assert_eq!(frames(&mut reader).len(), 2);
    assert!(reader.buffered() > 0);
    reader.push(&stream.as_bytes()[cut..]);
    assert_eq!(frames(&mut reader), [Ok(data_of(MINUTE_PART_1).to_owned())]);
}

#[test]
fn garbage_before_header() {
    let mut reader = FrameReader::new();
    reader.push(b"\xff\xfe\r\nAT+CIPSEND=339\r\n# ");
    assert!(frames(&mut reader).is_empty());
    reader.push(b"#");
    reader.push(REALTIME.as_bytes());
    reader.push(b"\0\0\0");
    reader.push(HOUR.as_bytes());
    let got = frames(&mut reader);
    assert_eq!(
        got,
        [
            Ok(data_of(REALTIME).to_owned()),
            Ok(data_of(HOUR).to_owned())
        ]
    );
    // 22 bytes before the first `#`, the extra `#` of `###0339`, three NULs.
    assert_eq!(reader.discarded_bytes(), 22 + 1 + 3);
}

#[test]
fn simulator_style_upload_round_trips() {
    let t = DataTime::parse("20240315103000").unwrap();
    let mut cp = CpBuilder::new();
    cp.data_time(t);
    for (q, v) in [(Quantity::Ph, 7.42), (Quantity::AmmoniaNitrogen, 0.423)] {
        let code = codes::for_quantity(q).unwrap();
        cp.fixed(code.code, "Rtd", v, 3)
            .flag(code.code, DataFlag::Normal);
    }
    let cp = cp.finish().unwrap();
    let qn = hj212::datetime::qn_for(t.to_utc_ms(480) + 123, 480);
    let packet = Packet {
        qn: Some(&qn),
        st: "21",
        cn: Cn::RealTime,
        pw: "123456",
        mn: "88888880000001",
        flag: Some(Flag::new(Flag::VERSION_2017, false, true)),
        split: None,
        cp: &cp,
    };
    let text = encode(&packet).unwrap();
    assert_eq!(
        text,
        "##0162QN=20240315103000123;ST=21;CN=2011;PW=123456;MN=88888880000001;Flag=5;CP=&&DataTime=20240315103000;w01001-Rtd=7.420,w01001-Flag=N;w21003-Rtd=0.423,w21003-Flag=N&&E541\r\n"
    );
    let back = Frame::decode(text.as_bytes()).unwrap().packet().unwrap();
    assert_eq!(back, packet);
}

// ---- properties ----

fn drain_all(reader: &mut FrameReader) -> Vec<Result<String, FrameError>> {
    frames(reader)
}

/// Errors that may differ with how much of the stream has arrived (a too-short declared length
/// is `BadTrailer` until the real line end is buffered) compare equal.
fn normalised(v: Vec<Result<String, FrameError>>) -> Vec<Result<String, &'static str>> {
    v.into_iter()
        .map(|r| {
            r.map_err(|e| match e {
                FrameError::BadTrailer | FrameError::BadLength { .. } => "length/trailer",
                _ => "other",
            })
        })
        .collect()
}

fn stream_piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40),
        Just(REALTIME.as_bytes().to_vec()),
        Just(HOUR.as_bytes().to_vec()),
        Just(STANDARD_1062.as_bytes().to_vec()),
        // Corrupted copies: a byte changed or cut.
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| {
            let mut v = HOUR.as_bytes().to_vec();
            let at = i % v.len();
            v[at] = b;
            v
        }),
        any::<usize>().prop_map(|i| {
            let v = REALTIME.as_bytes();
            v[..i % v.len()].to_vec()
        }),
    ]
}

proptest! {
    /// Any bytes, cut anywhere: no panic, and the same packets and refusals as in one read.
    #[test]
    fn reader_never_panics_and_ignores_chunking(
        pieces in proptest::collection::vec(stream_piece(), 0..8),
        cuts in proptest::collection::vec(1usize..64, 1..50),
        max in prop_oneof![Just(hj212::frame::DEFAULT_MAX_DATA_LEN), 0usize..400],
    ) {
        let stream: Vec<u8> = pieces.concat();
        let mut whole = FrameReader::with_max_data_len(max);
        whole.push(&stream);
        let expected = drain_all(&mut whole);

        let mut chunked = FrameReader::with_max_data_len(max);
        let mut got = Vec::new();
        let mut rest = &stream[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            chunked.push(&rest[..n]);
            rest = &rest[n..];
            got.extend(drain_all(&mut chunked));
            i += 1;
        }
        prop_assert_eq!(normalised(got), normalised(expected.clone()));
        prop_assert_eq!(chunked.buffered(), whole.buffered());
        prop_assert!(whole.buffered() <= 6 + max + 6);
        for f in expected.into_iter().flatten() {
            // Whatever the reader hands out is a printable ASCII segment; parsing it must not
            // panic either.
            prop_assert!(f.bytes().all(|b| (b' '..=b'~').contains(&b)));
            if let Ok(p) = Packet::parse(&f) {
                let _ = p.cp_data();
            }
        }
    }

    /// Well-formed packets with garbage between them (garbage without `#`) all come out.
    #[test]
    fn packets_survive_garbage(
        garbage in proptest::collection::vec(
            proptest::collection::vec(any::<u8>().prop_filter("no #", |b| *b != b'#'), 0..30), 1..6),
        cut in 1usize..100,
    ) {
        let mut stream = Vec::new();
        for g in &garbage {
            stream.extend_from_slice(g);
            stream.extend_from_slice(REALTIME.as_bytes());
        }
        let mut reader = FrameReader::new();
        let mut oks = 0;
        for chunk in stream.chunks(cut) {
            reader.push(chunk);
            while let Some(f) = reader.next_frame() {
                if let Ok(f) = f {
                    prop_assert_eq!(f.data, data_of(REALTIME));
                    oks += 1;
                }
            }
        }
        prop_assert_eq!(oks, garbage.len());
    }
}

/// A generated value: a number, or text.
type GenValue = Result<f64, String>;

#[derive(Debug, Clone)]
struct Generated {
    qn: Option<String>,
    st: String,
    cn: u16,
    pw: String,
    mn: String,
    flag: Option<u8>,
    split: Option<(u16, u16)>,
    data_time: Option<DataTime>,
    params: Vec<(String, String)>,
    /// Unique codes, each with unique fields; a value is a number or text.
    pollutants: Vec<(String, Vec<(String, GenValue)>)>,
}

fn generated() -> impl Strategy<Value = Generated> {
    let header = (
        proptest::option::of("[0-9]{17}"),
        "[0-9]{2}",
        any::<u16>(),
        "[A-Za-z0-9]{0,6}",
        "[A-Za-z0-9_]{1,24}",
        proptest::option::of(any::<u8>()),
        proptest::option::of((1u16..=9999).prop_flat_map(|n| (Just(n), 1..=n))),
    );
    let value = prop_oneof![
        (-1.0e6f64..1.0e6).prop_map(Ok),
        "[A-Za-z0-9.]{0,8}".prop_map(Err),
    ];
    let fields = proptest::collection::btree_map("[A-Za-z]{1,10}", value, 1..5);
    let cp = (
        proptest::option::of(0i64..4_000_000_000_000),
        proptest::collection::btree_map("[A-CE-Z][A-Za-z]{0,10}", "[A-Za-z0-9]{0,6}", 0..3),
        proptest::collection::btree_map("[a-z][0-9]{5}", fields, 0..8),
    );
    (header, cp).prop_map(|((qn, st, cn, pw, mn, flag, split), (ms, params, pols))| {
        // The D bit and PNUM/PNO go together (a split without the D bit is tolerated).
        let flag = flag.map(|f| if split.is_none() { f & !Flag::SPLIT } else { f });
        Generated {
            qn,
            st,
            cn,
            pw,
            mn,
            flag,
            split,
            data_time: ms.map(|ms| DataTime::from_utc_ms(ms, 480)),
            params: params.into_iter().collect(),
            pollutants: pols
                .into_iter()
                .map(|(code, fields)| (code, fields.into_iter().collect()))
                .collect(),
        }
    })
}

proptest! {
    /// encode -> frame -> parse gives back the packet and its CP content.
    #[test]
    fn encode_parse_round_trip(g in generated()) {
        let mut b = CpBuilder::new();
        if let Some(t) = g.data_time {
            b.data_time(t);
        }
        for (k, v) in &g.params {
            b.param(k, v);
        }
        for (code, fields) in &g.pollutants {
            for (field, value) in fields {
                match value {
                    Ok(n) => b.number(code, field, *n),
                    Err(text) => b.text(code, field, text),
                };
            }
        }
        let cp = b.finish().unwrap();
        let packet = Packet {
            qn: g.qn.as_deref(),
            st: &g.st,
            cn: Cn::from_code(g.cn),
            pw: &g.pw,
            mn: &g.mn,
            flag: g.flag.map(Flag),
            split: g.split.map(|(total, index)| Split { total, index }),
            cp: &cp,
        };
        let text = encode(&packet).unwrap();
        let frame = Frame::decode(text.as_bytes()).unwrap();
        let back = frame.packet().unwrap();
        prop_assert_eq!(back, packet);

        let data: CpData<'_> = back.cp_data().unwrap();
        prop_assert_eq!(data.data_time, g.data_time);
        let params: Vec<(String, String)> =
            data.params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        prop_assert_eq!(params, g.params.clone());
        let pols: Vec<_> = data.pollutants().collect();
        prop_assert_eq!(pols.len(), g.pollutants.len());
        for (pol, (code, fields)) in pols.iter().zip(&g.pollutants) {
            prop_assert_eq!(pol.code, code.as_str());
            prop_assert_eq!(pol.entries.len(), fields.len());
            for (field, value) in fields {
                match value {
                    Ok(n) => prop_assert_eq!(pol.number(field), Some(Ok(*n))),
                    Err(text) => prop_assert_eq!(pol.get(field), Some(text.as_str())),
                }
            }
        }
    }
}
