//! The binary agent batch (`v1/agents/{id}/batch`) and the hub's acknowledgement.
//!
//! Wire form: one format-version byte, then the postcard encoding of that version's struct.
//! A hub decodes every version it has ever known, so agents in the field can be updated after
//! the hub. Quantities travel as their stable numeric code, unconverted into [`crate::Quantity`]
//! at decode time, so a reading of a quantity this hub does not know yet is rejected alone
//! (to the dead letters) instead of failing the whole batch.
//!
//! Values are in canonical units: the agent converts with the same table the hub uses.

use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::quantity::{Quality, Value};

/// The format version this crate writes.
pub const BATCH_FORMAT_VERSION: u8 = 1;

/// Largest encoded batch the hub accepts (1 MiB); agents cut batches well below it.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// A batch of readings from one agent, the unit of durable delivery and acknowledgement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentBatch {
    /// The agent's id (must equal the topic's and the connection's).
    pub agent: String,
    /// The incarnation of the agent's durable queue: a fresh random number when the queue is
    /// created. Sequence numbers are unique only within a stream, so a re-flashed agent whose
    /// numbering restarts is never mistaken for a redelivery.
    pub stream: u64,
    /// The batch's sequence number within the stream, from 1, without gaps.
    pub seq: u64,
    /// Readings grouped by device.
    pub devices: Vec<DeviceReadings>,
}

/// The readings of one device inside a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceReadings {
    /// The device id, as registered at the hub.
    pub device: String,
    /// Polls of this device, oldest first.
    pub samples: Vec<Sample>,
}

/// The readings of one poll, sharing one timestamp.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Device-side time of the poll, epoch milliseconds.
    pub ts_ms: i64,
    /// The values read.
    pub readings: Vec<Reading>,
}

/// One value of one quantity.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The quantity's stable code ([`crate::Quantity::code`]).
    pub quantity: u16,
    /// The value in the canonical unit.
    pub value: Value,
    /// The agent's view of its quality (e.g. uncertain outside the sensor's rated range).
    pub quality: Quality,
}

impl AgentBatch {
    /// How many readings the batch carries.
    pub fn reading_count(&self) -> usize {
        self.devices
            .iter()
            .flat_map(|d| &d.samples)
            .map(|s| s.readings.len())
            .sum()
    }
}

/// Why a batch could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Zero bytes.
    #[error("empty batch")]
    Empty,
    /// Larger than [`MAX_BATCH_BYTES`].
    #[error("batch of {0} bytes exceeds the {MAX_BATCH_BYTES}-byte limit")]
    TooLarge(usize),
    /// A format version this hub does not know (from a newer agent).
    #[error("unknown batch format version {0}")]
    UnknownVersion(u8),
    /// The body is not a valid encoding of the version's struct.
    #[error("malformed batch body: {0}")]
    Malformed(postcard::Error),
    /// Bytes left over after the body.
    #[error("{0} trailing bytes after the batch")]
    Trailing(usize),
}

/// Encodes a batch in the current format version.
pub fn encode(batch: &AgentBatch) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + batch.reading_count() * 12);
    out.push(BATCH_FORMAT_VERSION);
    // Serializing into a Vec cannot fail for these types (no maps with non-string keys,
    // no unsized sequences).
    match postcard::to_extend(batch, out) {
        Ok(v) => v,
        Err(_) => unreachable!("postcard serialization into a Vec is infallible for AgentBatch"),
    }
}

/// Decodes a batch of any known format version.
pub fn decode(bytes: &[u8]) -> Result<AgentBatch, BatchError> {
    let (&version, body) = bytes.split_first().ok_or(BatchError::Empty)?;
    if bytes.len() > MAX_BATCH_BYTES {
        return Err(BatchError::TooLarge(bytes.len()));
    }
    match version {
        1 => {
            let (batch, rest) =
                postcard::take_from_bytes::<AgentBatch>(body).map_err(BatchError::Malformed)?;
            if !rest.is_empty() {
                return Err(BatchError::Trailing(rest.len()));
            }
            Ok(batch)
        }
        v => Err(BatchError::UnknownVersion(v)),
    }
}

/// The origin of an encoded batch, `(agent, stream, seq)`, read from its first fields without
/// decoding the readings (cluster mode names each batch in the replicated log by it).
pub fn peek_origin(bytes: &[u8]) -> Result<(&str, u64, u64), BatchError> {
    #[derive(Deserialize)]
    struct Head<'a> {
        agent: &'a str,
        stream: u64,
        seq: u64,
    }
    let (&version, body) = bytes.split_first().ok_or(BatchError::Empty)?;
    if version != BATCH_FORMAT_VERSION {
        return Err(BatchError::UnknownVersion(version));
    }
    let (h, _) = postcard::take_from_bytes::<Head<'_>>(body).map_err(BatchError::Malformed)?;
    Ok((h.agent, h.stream, h.seq))
}

/// The hub's acknowledgement on `v1/agents/{id}/ack` (JSON): what is now durably stored.
///
/// Sequence numbers are shared by everything an agent sends through its durable queue
/// (batches and camera events); snapshots are acknowledged by their event id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The queue incarnation the numbers belong to.
    pub stream: u64,
    /// Inclusive ranges `[first, last]` of stored sequence numbers.
    pub seqs: Vec<(u64, u64)>,
    /// Event ids whose snapshots are stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
}

impl Ack {
    /// Whether the ack covers a sequence number.
    pub fn covers(&self, seq: u64) -> bool {
        self.seqs.iter().any(|&(a, b)| a <= seq && seq <= b)
    }

    /// Builds the ranges from sequence numbers in any order, merging neighbours.
    pub fn from_seqs(stream: u64, mut seqs: Vec<u64>) -> Ack {
        seqs.sort_unstable();
        seqs.dedup();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for s in seqs {
            match ranges.last_mut() {
                Some((_, last)) if *last + 1 == s => *last = s,
                _ => ranges.push((s, s)),
            }
        }
        Ack {
            stream,
            seqs: ranges,
            snapshots: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Quantity;
    use alloc::string::ToString;
    use alloc::vec;
    use proptest::prelude::*;

    fn sample_batch() -> AgentBatch {
        AgentBatch {
            agent: "AG-0001".to_string(),
            stream: 0xdead_beef,
            seq: 42,
            devices: vec![DeviceReadings {
                device: "WL-0001".to_string(),
                samples: vec![Sample {
                    ts_ms: 1_795_334_400_000,
                    readings: vec![
                        Reading {
                            quantity: Quantity::WaterLevel.code(),
                            value: Value::Number(2.31),
                            quality: Quality::Good,
                        },
                        Reading {
                            quantity: Quantity::CoverOpen.code(),
                            value: Value::Bool(true),
                            quality: Quality::Uncertain,
                        },
                    ],
                }],
            }],
        }
    }

    #[test]
    fn round_trip_and_size() {
        let b = sample_batch();
        let bytes = encode(&b);
        assert_eq!(bytes[0], BATCH_FORMAT_VERSION);
        assert_eq!(decode(&bytes).unwrap(), b);
        assert!(bytes.len() < 60, "{} bytes", bytes.len());
    }

    #[test]
    fn the_origin_is_read_without_the_readings() {
        let bytes = encode(&sample_batch());
        assert_eq!(peek_origin(&bytes).unwrap(), ("AG-0001", 0xdead_beef, 42));
        assert!(matches!(peek_origin(&[]), Err(BatchError::Empty)));
        assert!(matches!(
            peek_origin(&[9, 1]),
            Err(BatchError::UnknownVersion(9))
        ));
        assert!(peek_origin(&bytes[..4]).is_err());
    }

    /// Version 1 as first shipped, byte for byte: a newer hub must keep reading it.
    #[test]
    fn version_1_golden_bytes_still_decode() {
        let golden: &[u8] = &[
            1, 7, b'A', b'G', b'-', b'0', b'0', b'0', b'1', 0xef, 0xfd, 0xb6, 0xf5, 0x0d, 42, 1, 7,
            b'W', b'L', b'-', b'0', b'0', b'0', b'1', 1, 0x80, 0xa0, 0xa7, 0xa4, 0xc0, 0x68, 2, 1,
            0, 0x7b, 0x14, 0xae, 0x47, 0xe1, 0x7a, 0x02, 0x40, 0, 17, 1, 1, 1,
        ];
        assert_eq!(encode(&sample_batch()), golden);
        assert_eq!(decode(golden).unwrap(), sample_batch());
    }

    #[test]
    fn rejections() {
        assert_eq!(decode(&[]), Err(BatchError::Empty));
        assert_eq!(decode(&[9, 1, 2]), Err(BatchError::UnknownVersion(9)));
        assert!(matches!(decode(&[1, 0xff]), Err(BatchError::Malformed(_))));
        let mut bytes = encode(&sample_batch());
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(BatchError::Trailing(1)));
        let big = vec![1u8; MAX_BATCH_BYTES + 1];
        assert_eq!(decode(&big), Err(BatchError::TooLarge(MAX_BATCH_BYTES + 1)));
    }

    #[test]
    fn ack_ranges() {
        let a = Ack::from_seqs(7, vec![5, 3, 4, 9, 10, 12, 4]);
        assert_eq!(a.seqs, vec![(3, 5), (9, 10), (12, 12)]);
        assert!(a.covers(4) && a.covers(12) && !a.covers(6) && !a.covers(13));
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#"{"stream":7,"seqs":[[3,5],[9,10],[12,12]]}"#);
        assert_eq!(serde_json::from_str::<Ack>(&json).unwrap(), a);
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<f64>().prop_map(Value::Number),
            any::<bool>().prop_map(Value::Bool),
            any::<u8>().prop_map(Value::State),
        ]
    }

    fn quality() -> impl Strategy<Value = Quality> {
        prop_oneof![
            Just(Quality::Good),
            Just(Quality::Uncertain),
            Just(Quality::Bad)
        ]
    }

    prop_compose! {
        fn reading()(quantity in any::<u16>(), value in value(), quality in quality()) -> Reading {
            Reading { quantity, value, quality }
        }
    }

    prop_compose! {
        fn batch()(
            agent in "[A-Za-z0-9_.-]{1,64}",
            stream in any::<u64>(),
            seq in any::<u64>(),
            devices in proptest::collection::vec(
                ("[A-Za-z0-9_.-]{1,64}", proptest::collection::vec(
                    (any::<i64>(), proptest::collection::vec(reading(), 0..6)), 0..4)),
                0..4),
        ) -> AgentBatch {
            AgentBatch {
                agent, stream, seq,
                devices: devices.into_iter().map(|(device, samples)| DeviceReadings {
                    device,
                    samples: samples.into_iter().map(|(ts_ms, readings)| Sample { ts_ms, readings }).collect(),
                }).collect(),
            }
        }
    }

    proptest! {
        #[test]
        fn codec_round_trip(b in batch()) {
            let bytes = encode(&b);
            let back = decode(&bytes).unwrap();
            // NaN != NaN: compare the encodings instead.
            prop_assert_eq!(encode(&back), bytes);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn ack_json_round_trip(stream in any::<u64>(), seqs in proptest::collection::vec(0u64..1000, 0..50)) {
            let a = Ack::from_seqs(stream, seqs.clone());
            for s in &seqs { prop_assert!(a.covers(*s)); }
            let back: Ack = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
            prop_assert_eq!(back, a);
        }
    }
}
