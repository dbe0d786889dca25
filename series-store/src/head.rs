//! The head of a series: its unsealed points in memory, and the sealing policy.
//!
//! Points arrive on one of two paths. A point newer than every in-order point so far (the
//! high-water mark) is appended to the in-order buffer; the same timestamp as the buffer's last
//! point replaces it. Any older point (an agent draining its backlog while live data flows) goes
//! to the out-of-order buffer, kept sorted, where an equal timestamp also replaces. Each buffer
//! is sealed into its own chunks, so every chunk is strictly increasing in time.
//!
//! Same (series, ts) policy: the point written last wins. Within a buffer that is a replacement;
//! across sources a query prefers out-of-order data (always written after any in-order point with
//! that timestamp) and among out-of-order sources the later sealed.

use std::collections::BTreeMap;

use protocols::Quality;

use super::Point;
use crate::bits::{ByteReader, put_varint, zigzag};
use crate::codec::{self, CodecError, quality_code, quality_from_code};

/// When a buffer is sealed into a chunk.
#[derive(Clone, Copy, Debug)]
pub struct SealPolicy {
    /// Points per chunk.
    pub chunk_points: usize,
    /// A chunk never spans this much time or more (ms).
    pub max_span_ms: i64,
}

/// Points ready to become a chunk.
#[derive(Debug)]
pub struct Sealed {
    /// Strictly increasing points, at least one.
    pub points: Vec<Point>,
    /// From the out-of-order buffer.
    pub out_of_order: bool,
    /// Per-series chunk sequence number.
    pub seq: u32,
}

/// The in-memory state of one series.
#[derive(Clone, Debug, Default)]
pub struct SeriesHead {
    /// In-order points, strictly increasing.
    pub inorder: Vec<Point>,
    /// Out-of-order points by timestamp.
    pub ooo: BTreeMap<i64, (f64, Quality)>,
    /// Newest timestamp ever taken by the in-order path.
    pub hwm: Option<i64>,
    /// Sequence number of the next sealed chunk.
    pub next_seq: u32,
    /// Newest point of the series.
    pub latest: Option<Point>,
    /// Changed since the last checkpoint.
    pub dirty: bool,
}

impl SeriesHead {
    /// Adds one point; pushes any chunks it causes to be sealed.
    pub fn push(&mut self, p: Point, policy: &SealPolicy, sealed: &mut Vec<Sealed>) {
        self.dirty = true;
        if self.latest.is_none_or(|l| p.ts_ms >= l.ts_ms) {
            self.latest = Some(p);
        }
        if self.hwm.is_none_or(|h| p.ts_ms > h) {
            if let Some(first) = self.inorder.first()
                && p.ts_ms.saturating_sub(first.ts_ms) >= policy.max_span_ms
            {
                self.seal_inorder(sealed);
            }
            self.inorder.push(p);
            self.hwm = Some(p.ts_ms);
            if self.inorder.len() >= policy.chunk_points {
                self.seal_inorder(sealed);
            }
            return;
        }
        if let Some(last) = self.inorder.last_mut()
            && last.ts_ms == p.ts_ms
        {
            *last = p;
            return;
        }
        if let (Some((&lo, _)), Some((&hi, _))) =
            (self.ooo.first_key_value(), self.ooo.last_key_value())
        {
            let lo = lo.min(p.ts_ms);
            let hi = hi.max(p.ts_ms);
            if hi.saturating_sub(lo) >= policy.max_span_ms {
                self.seal_ooo(policy, sealed);
            }
        }
        self.ooo.insert(p.ts_ms, (p.value, p.quality));
        if self.ooo.len() >= policy.chunk_points {
            self.seal_ooo(policy, sealed);
        }
    }

    fn seal_inorder(&mut self, sealed: &mut Vec<Sealed>) {
        if self.inorder.is_empty() {
            return;
        }
        let points = std::mem::take(&mut self.inorder);
        self.inorder.reserve(points.len());
        sealed.push(Sealed {
            points,
            out_of_order: false,
            seq: self.next_seq,
        });
        self.next_seq = self.next_seq.wrapping_add(1);
    }

    fn seal_ooo(&mut self, policy: &SealPolicy, sealed: &mut Vec<Sealed>) {
        let mut cur: Vec<Point> = Vec::new();
        for (ts_ms, (value, quality)) in std::mem::take(&mut self.ooo) {
            if cur.len() >= policy.chunk_points
                || cur
                    .first()
                    .is_some_and(|f| ts_ms.saturating_sub(f.ts_ms) >= policy.max_span_ms)
            {
                sealed.push(Sealed {
                    points: std::mem::take(&mut cur),
                    out_of_order: true,
                    seq: self.next_seq,
                });
                self.next_seq = self.next_seq.wrapping_add(1);
            }
            cur.push(Point {
                ts_ms,
                value,
                quality,
            });
        }
        if !cur.is_empty() {
            sealed.push(Sealed {
                points: cur,
                out_of_order: true,
                seq: self.next_seq,
            });
            self.next_seq = self.next_seq.wrapping_add(1);
        }
    }

    /// The out-of-order points as a sorted vector.
    pub fn ooo_points(&self) -> Vec<Point> {
        self.ooo
            .iter()
            .map(|(&ts_ms, &(value, quality))| Point {
                ts_ms,
                value,
                quality,
            })
            .collect()
    }

    /// Copies the head's points in `[from, to)`: (in-order, out-of-order), both sorted.
    pub fn range(&self, from: i64, to: i64) -> (Vec<Point>, Vec<Point>) {
        let lo = self.inorder.partition_point(|p| p.ts_ms < from);
        let hi = self.inorder.partition_point(|p| p.ts_ms < to);
        let inorder = self.inorder[lo..hi.max(lo)].to_vec();
        let ooo = if from < to {
            self.ooo
                .range(from..to)
                .map(|(&ts_ms, &(value, quality))| Point {
                    ts_ms,
                    value,
                    quality,
                })
                .collect()
        } else {
            Vec::new()
        };
        (inorder, ooo)
    }

    /// Serializes the head for a checkpoint.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.inorder.len() * 2);
        out.push(1); // version
        match self.hwm {
            Some(h) => {
                out.push(1);
                put_varint(&mut out, zigzag(h));
            }
            None => out.push(0),
        }
        put_varint(&mut out, u64::from(self.next_seq));
        match self.latest {
            Some(l) => {
                out.push(1);
                put_varint(&mut out, zigzag(l.ts_ms));
                out.extend_from_slice(&l.value.to_le_bytes());
                out.push(quality_code(l.quality));
            }
            None => out.push(0),
        }
        let a = codec::encode(&self.inorder);
        put_varint(&mut out, a.len() as u64);
        out.extend_from_slice(&a);
        let b = codec::encode(&self.ooo_points());
        put_varint(&mut out, b.len() as u64);
        out.extend_from_slice(&b);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Restores a head from [`SeriesHead::snapshot`].
    pub fn from_snapshot(bytes: &[u8]) -> Result<SeriesHead, CodecError> {
        if bytes.len() < 4 {
            return Err(CodecError::Truncated);
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let mut c = [0u8; 4];
        c.copy_from_slice(crc);
        if crc32fast::hash(body) != u32::from_le_bytes(c) {
            return Err(CodecError::Invalid("head snapshot checksum"));
        }
        let mut r = ByteReader::new(body);
        if r.u8()? != 1 {
            return Err(CodecError::Invalid("head snapshot version"));
        }
        let hwm = match r.u8()? {
            0 => None,
            _ => Some(r.svarint()?),
        };
        let next_seq = u32::try_from(r.varint()?)
            .map_err(|_| CodecError::Invalid("head snapshot sequence"))?;
        let latest = match r.u8()? {
            0 => None,
            _ => Some(Point {
                ts_ms: r.svarint()?,
                value: r.f64_le()?,
                quality: quality_from_code(r.u8()?)
                    .ok_or(CodecError::Invalid("head snapshot quality"))?,
            }),
        };
        let mut inorder = Vec::new();
        let n = r.varint()? as usize;
        codec::decode(r.bytes(n)?, &mut inorder)?;
        let mut ooo_pts = Vec::new();
        let n = r.varint()? as usize;
        codec::decode(r.bytes(n)?, &mut ooo_pts)?;
        Ok(SeriesHead {
            inorder,
            ooo: ooo_pts
                .into_iter()
                .map(|p| (p.ts_ms, (p.value, p.quality)))
                .collect(),
            hwm,
            next_seq,
            latest,
            dirty: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(ts_ms: i64, value: f64) -> Point {
        Point {
            ts_ms,
            value,
            quality: Quality::Good,
        }
    }

    const POLICY: SealPolicy = SealPolicy {
        chunk_points: 4,
        max_span_ms: 1000,
    };

    #[test]
    fn in_order_out_of_order_and_replacement() {
        let mut h = SeriesHead::default();
        let mut sealed = Vec::new();
        for ts in [10, 20, 30] {
            h.push(pt(ts, ts as f64), &POLICY, &mut sealed);
        }
        h.push(pt(30, 33.0), &POLICY, &mut sealed); // replaces the last
        h.push(pt(15, 15.0), &POLICY, &mut sealed); // out of order
        h.push(pt(15, 16.0), &POLICY, &mut sealed); // replaces in the ooo buffer
        assert_eq!(h.inorder, vec![pt(10, 10.0), pt(20, 20.0), pt(30, 33.0)]);
        assert_eq!(h.ooo_points(), vec![pt(15, 16.0)]);
        assert!(sealed.is_empty());
        h.push(pt(40, 40.0), &POLICY, &mut sealed);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].points.len(), 4);
        // After sealing, the high-water mark keeps 40 on the in-order path only.
        h.push(pt(40, 41.0), &POLICY, &mut sealed);
        assert_eq!(h.ooo_points().len(), 2);
        assert_eq!(h.latest, Some(pt(40, 41.0)));
        // A long time gap seals by span.
        h.push(pt(5000, 1.0), &POLICY, &mut sealed);
        h.push(pt(7000, 1.0), &POLICY, &mut sealed);
        assert_eq!(sealed.len(), 2);
        assert_eq!(sealed[1].points, vec![pt(5000, 1.0)]);

        let back = SeriesHead::from_snapshot(&h.snapshot()).unwrap();
        assert_eq!(back.inorder, h.inorder);
        assert_eq!(back.ooo, h.ooo);
        assert_eq!(back.hwm, h.hwm);
        assert_eq!(back.next_seq, h.next_seq);
        assert_eq!(back.latest, h.latest);
    }

    #[test]
    fn out_of_order_buffer_splits_by_span() {
        let mut h = SeriesHead::default();
        let mut sealed = Vec::new();
        h.push(pt(100_000, 0.0), &POLICY, &mut sealed);
        for ts in [10, 20, 900, 2500, 2600] {
            h.push(pt(ts, 1.0), &POLICY, &mut sealed);
        }
        // 2500 would make the buffer span >= 1000 ms: 10, 20, 900 were sealed first.
        assert_eq!(sealed.len(), 1);
        assert!(sealed[0].out_of_order);
        assert_eq!(sealed[0].points.len(), 3);
        assert_eq!(h.ooo.len(), 2);
    }
}
