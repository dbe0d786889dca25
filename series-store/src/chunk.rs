//! Sealed chunks: the compressed points of one series over a stretch of time, with the metadata
//! that lets a bucketed query use a chunk without decoding it.
//!
//! A chunk record (the redb value) is
//! `version u8 | flags u8 | count varint | span varint | min f64 | max f64 | sum f64 | last f64 |
//! payload (codec) | crc32 u32` where `span = max_ts - min_ts`; `min_ts` is the key's start.
//! Points in a chunk have strictly increasing timestamps.

use super::Point;
use crate::bits::{ByteReader, put_varint};
use crate::codec::{self, CodecError};

const RECORD_VERSION: u8 = 1;
const FLAG_OUT_OF_ORDER: u8 = 1;

/// What a chunk holds, readable without decoding its points.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChunkMeta {
    /// Number of points.
    pub count: u32,
    /// First timestamp.
    pub min_ts: i64,
    /// Last timestamp.
    pub max_ts: i64,
    /// Smallest value (NaN ignored unless all are NaN).
    pub min: f64,
    /// Largest value (NaN ignored unless all are NaN).
    pub max: f64,
    /// Sum of values.
    pub sum: f64,
    /// Value at `max_ts`.
    pub last: f64,
    /// Sealed from the out-of-order buffer (it may overlap other chunks in time).
    pub out_of_order: bool,
}

impl ChunkMeta {
    /// The metadata of sorted points (at least one).
    pub fn of(points: &[Point], out_of_order: bool) -> ChunkMeta {
        let first = points.first().map(|p| p.ts_ms).unwrap_or_default();
        let mut meta = ChunkMeta {
            count: points.len() as u32,
            min_ts: first,
            max_ts: first,
            min: f64::NAN,
            max: f64::NAN,
            sum: 0.0,
            last: f64::NAN,
            out_of_order,
        };
        for p in points {
            meta.min = meta.min.min(p.value);
            meta.max = meta.max.max(p.value);
            meta.sum += p.value;
        }
        if let Some(l) = points.last() {
            meta.max_ts = l.ts_ms;
            meta.last = l.value;
        }
        meta
    }
}

/// Why a chunk record is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// Checksum mismatch.
    #[error("checksum mismatch")]
    Checksum,
    /// Header or payload cannot be decoded.
    #[error("{0}")]
    Codec(#[from] CodecError),
    /// The payload contradicts the header.
    #[error("payload does not match its metadata: {0}")]
    Mismatch(&'static str),
}

/// Encodes sorted points (at least one) into a chunk record.
pub fn encode_record(points: &[Point], out_of_order: bool) -> (ChunkMeta, Vec<u8>) {
    let meta = ChunkMeta::of(points, out_of_order);
    let payload = codec::encode(points);
    let mut rec = Vec::with_capacity(payload.len() + 48);
    rec.push(RECORD_VERSION);
    rec.push(if out_of_order { FLAG_OUT_OF_ORDER } else { 0 });
    put_varint(&mut rec, u64::from(meta.count));
    put_varint(&mut rec, meta.max_ts.wrapping_sub(meta.min_ts) as u64);
    for v in [meta.min, meta.max, meta.sum, meta.last] {
        rec.extend_from_slice(&v.to_le_bytes());
    }
    rec.extend_from_slice(&payload);
    let crc = crc32fast::hash(&rec);
    rec.extend_from_slice(&crc.to_le_bytes());
    (meta, rec)
}

/// Checks a record's checksum and reads its metadata; returns the payload too.
pub fn decode_meta(start_ts: i64, rec: &[u8]) -> Result<(ChunkMeta, &[u8]), ChunkError> {
    if rec.len() < 4 {
        return Err(ChunkError::Codec(CodecError::Truncated));
    }
    let (body, crc) = rec.split_at(rec.len() - 4);
    let mut c = [0u8; 4];
    c.copy_from_slice(crc);
    if crc32fast::hash(body) != u32::from_le_bytes(c) {
        return Err(ChunkError::Checksum);
    }
    let mut r = ByteReader::new(body);
    let bad = |_| ChunkError::Codec(CodecError::Truncated);
    if r.u8().map_err(bad)? != RECORD_VERSION {
        return Err(ChunkError::Codec(CodecError::Invalid(
            "chunk record version",
        )));
    }
    let flags = r.u8().map_err(bad)?;
    let count = r.varint().map_err(bad)?;
    let span = r.varint().map_err(bad)?;
    let count = u32::try_from(count).map_err(|_| ChunkError::Mismatch("count"))?;
    let meta = ChunkMeta {
        count,
        min_ts: start_ts,
        max_ts: start_ts.wrapping_add(span as i64),
        min: r.f64_le().map_err(bad)?,
        max: r.f64_le().map_err(bad)?,
        sum: r.f64_le().map_err(bad)?,
        last: r.f64_le().map_err(bad)?,
        out_of_order: flags & FLAG_OUT_OF_ORDER != 0,
    };
    Ok((meta, r.rest()))
}

/// Decodes a whole record, appending its points to `out`.
pub fn decode_record(
    start_ts: i64,
    rec: &[u8],
    out: &mut Vec<Point>,
) -> Result<ChunkMeta, ChunkError> {
    let (meta, payload) = decode_meta(start_ts, rec)?;
    let base = out.len();
    codec::decode(payload, out)?;
    let pts = &out[base..];
    if pts.len() != meta.count as usize {
        out.truncate(base);
        return Err(ChunkError::Mismatch("count"));
    }
    if pts.first().map(|p| p.ts_ms) != Some(meta.min_ts)
        || pts.last().map(|p| p.ts_ms) != Some(meta.max_ts)
    {
        out.truncate(base);
        return Err(ChunkError::Mismatch("time range"));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::Quality;

    #[test]
    fn record_round_trip_and_checksum() {
        let pts: Vec<Point> = (0..100)
            .map(|i| Point {
                ts_ms: 1000 + i * 10,
                value: (i % 3) as f64,
                quality: Quality::Good,
            })
            .collect();
        let (meta, rec) = encode_record(&pts, false);
        assert_eq!(meta.count, 100);
        assert_eq!(meta.sum, 99.0);
        assert_eq!(meta.max_ts, 1990);
        let mut out = Vec::new();
        assert_eq!(decode_record(1000, &rec, &mut out).unwrap(), meta);
        assert_eq!(out, pts);
        let mut bad = rec.clone();
        bad[20] ^= 0x10;
        assert_eq!(
            decode_record(1000, &bad, &mut Vec::new()),
            Err(ChunkError::Checksum)
        );
        assert!(decode_record(1001, &rec, &mut Vec::new()).is_err());
    }
}
