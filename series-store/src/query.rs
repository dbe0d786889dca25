//! Answering a query from its sources: sealed chunks (redb or not yet committed) and the head.
//!
//! Sources are merged by timestamp; where several hold the same timestamp the one with the
//! highest priority wins (see `head` for the policy). A bucketed query uses a chunk's metadata
//! instead of its points when the chunk overlaps no other source and lies wholly inside one
//! bucket and inside the queried range.

use std::collections::BTreeMap;

use crate::chunk::{ChunkMeta, decode_record};
use crate::{Agg, Point};

/// What a source holds.
#[derive(Debug)]
pub enum Body {
    /// Decoded, sorted points.
    Points(Vec<Point>),
    /// An encoded chunk record.
    Chunk {
        /// Its metadata (already checked).
        meta: ChunkMeta,
        /// The whole record.
        rec: Vec<u8>,
    },
}

/// One source of points for a query.
#[derive(Debug)]
pub struct Source {
    /// First timestamp.
    pub min_ts: i64,
    /// Last timestamp.
    pub max_ts: i64,
    /// Wins over lower priorities at equal timestamps.
    pub prio: u64,
    /// The points, decoded or still encoded.
    pub body: Body,
    /// Names the source in error messages (which chunk is corrupt).
    pub label: String,
}

/// A running aggregate.
#[derive(Clone, Copy, Debug)]
pub struct Acc {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last_ts: i64,
    last: f64,
}

impl Acc {
    fn new() -> Acc {
        Acc {
            count: 0,
            sum: 0.0,
            min: f64::NAN,
            max: f64::NAN,
            last_ts: i64::MIN,
            last: f64::NAN,
        }
    }

    fn point(&mut self, ts: i64, v: f64) {
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        if ts >= self.last_ts {
            self.last_ts = ts;
            self.last = v;
        }
    }

    fn chunk(&mut self, m: &ChunkMeta) {
        self.count += u64::from(m.count);
        self.sum += m.sum;
        self.min = self.min.min(m.min);
        self.max = self.max.max(m.max);
        if m.max_ts >= self.last_ts {
            self.last_ts = m.max_ts;
            self.last = m.last;
        }
    }

    fn merge(&mut self, o: &Acc) {
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
        if o.last_ts >= self.last_ts {
            self.last_ts = o.last_ts;
            self.last = o.last;
        }
    }

    fn value(&self, agg: Agg) -> f64 {
        match agg {
            Agg::Avg => self.sum / self.count as f64,
            Agg::Min => self.min,
            Agg::Max => self.max,
            Agg::Last => self.last,
            Agg::Count => self.count as f64,
        }
    }
}

/// The bucket of `ts` for buckets of `step` starting at `align`.
#[inline]
fn bucket(ts: i64, align: i64, step: i64) -> i64 {
    align + (ts - align).div_euclid(step) * step
}

/// Query bounds: points in `[from, to)`; buckets start at `align + k * step`.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Inclusive start (after retention).
    pub from: i64,
    /// Exclusive end.
    pub to: i64,
    /// Bucket origin (the query's own `from`).
    pub align: i64,
    /// Bucket width, `None` for raw points.
    pub step: Option<i64>,
    /// Aggregation of each bucket.
    pub agg: Agg,
}

/// Runs a query over its sources.
pub fn run(mut sources: Vec<Source>, b: Bounds) -> Result<Vec<(i64, f64)>, String> {
    sources.retain(|s| s.max_ts >= b.from && s.min_ts < b.to);
    sources.sort_by_key(|s| (s.min_ts, s.max_ts));
    // A source is isolated when no other source's time span touches its own: sorted by start,
    // that is no earlier source reaching its start and the next one starting after its end.
    let n = sources.len();
    let mut isolated = vec![true; n];
    let mut reach = i64::MIN;
    for i in 0..n {
        if i > 0 && sources[i].min_ts <= reach {
            isolated[i] = false;
        }
        if i + 1 < n && sources[i + 1].min_ts <= sources[i].max_ts {
            isolated[i] = false;
        }
        reach = reach.max(sources[i].max_ts);
    }

    let mut buckets: BTreeMap<i64, Acc> = BTreeMap::new();
    let mut rest: Vec<(Source, bool)> = Vec::with_capacity(n);
    for (s, iso) in sources.into_iter().zip(isolated) {
        if let (Some(step), Body::Chunk { meta, .. }) = (b.step, &s.body)
            && iso
            && s.min_ts >= b.from
            && s.max_ts < b.to
            && bucket(s.min_ts, b.align, step) == bucket(s.max_ts, b.align, step)
        {
            buckets
                .entry(bucket(s.min_ts, b.align, step))
                .or_insert_with(Acc::new)
                .chunk(meta);
            continue;
        }
        rest.push((s, iso));
    }

    // Decode what is left, in time order.
    let all_isolated = rest.iter().all(|(_, iso)| *iso);
    let mut merged: Vec<Point> = Vec::new();
    let mut tagged: Vec<(i64, u64, f64)> = Vec::new();
    let mut scratch = Vec::new();
    for (s, _) in rest {
        let pts = match s.body {
            Body::Points(p) => p,
            Body::Chunk { rec, .. } => {
                scratch.clear();
                decode_record(s.min_ts, &rec, &mut scratch)
                    .map_err(|e| format!("chunk {}: {e}", s.label))?;
                std::mem::take(&mut scratch)
            }
        };
        let lo = pts.partition_point(|p| p.ts_ms < b.from);
        let hi = pts.partition_point(|p| p.ts_ms < b.to);
        let pts = &pts[lo..hi.max(lo)];
        if all_isolated {
            merged.extend_from_slice(pts);
        } else {
            tagged.extend(pts.iter().map(|p| (p.ts_ms, s.prio, p.value)));
        }
    }
    let points: Vec<(i64, f64)> = if all_isolated {
        merged.into_iter().map(|p| (p.ts_ms, p.value)).collect()
    } else {
        // Highest priority first among equal timestamps, then keep the first of each.
        tagged.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        tagged.dedup_by_key(|t| t.0);
        tagged.into_iter().map(|(ts, _, v)| (ts, v)).collect()
    };

    match b.step {
        None => Ok(points),
        Some(step) => {
            // Points are sorted: aggregate runs of one bucket, then fold in the metadata buckets.
            let mut out: Vec<(i64, Acc)> = Vec::new();
            for (ts, v) in points {
                let k = bucket(ts, b.align, step);
                match out.last_mut() {
                    Some((last, acc)) if *last == k => acc.point(ts, v),
                    _ => {
                        let mut acc = Acc::new();
                        acc.point(ts, v);
                        out.push((k, acc));
                    }
                }
            }
            if !buckets.is_empty() {
                for (k, acc) in out {
                    buckets
                        .entry(k)
                        .and_modify(|a| a.merge(&acc))
                        .or_insert(acc);
                }
                return Ok(buckets
                    .into_iter()
                    .map(|(start, acc)| (start, acc.value(b.agg)))
                    .collect());
            }
            Ok(out
                .into_iter()
                .map(|(start, acc)| (start, acc.value(b.agg)))
                .collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::encode_record;
    use protocols::Quality;

    fn p(ts_ms: i64, value: f64) -> Point {
        Point {
            ts_ms,
            value,
            quality: Quality::Good,
        }
    }

    fn chunk(points: &[Point], prio: u64) -> Source {
        let (meta, rec) = encode_record(points, prio > 0);
        Source {
            min_ts: meta.min_ts,
            max_ts: meta.max_ts,
            prio,
            body: Body::Chunk { meta, rec },
            label: String::new(),
        }
    }

    #[test]
    fn overlapping_sources_merge_with_priority() {
        let a = chunk(&[p(0, 1.0), p(10, 1.0), p(20, 1.0)], 0);
        let b = chunk(&[p(10, 2.0), p(15, 2.0)], 5);
        let c = chunk(&[p(100, 3.0)], 0);
        let raw = |agg, step| {
            let a = chunk(&[p(0, 1.0), p(10, 1.0), p(20, 1.0)], 0);
            let b = chunk(&[p(10, 2.0), p(15, 2.0)], 5);
            let c = chunk(&[p(100, 3.0)], 0);
            run(
                vec![c, b, a],
                Bounds {
                    from: 0,
                    to: 1000,
                    align: 0,
                    step,
                    agg,
                },
            )
            .unwrap()
        };
        drop((a, b, c));
        assert_eq!(
            raw(Agg::Avg, None),
            vec![(0, 1.0), (10, 2.0), (15, 2.0), (20, 1.0), (100, 3.0)]
        );
        assert_eq!(raw(Agg::Count, Some(50)), vec![(0, 4.0), (100, 1.0)]);
        assert_eq!(raw(Agg::Last, Some(50)), vec![(0, 1.0), (100, 3.0)]);
        assert_eq!(raw(Agg::Max, Some(1000)), vec![(0, 3.0)]);
    }
}
