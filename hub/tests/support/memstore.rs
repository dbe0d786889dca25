//! TEST-ONLY in-memory `SeriesStore`, standing in for the embedded engine of the `store`
//! branch until it is merged. It follows the seam's contract (atomic append, dedup by origin,
//! `Duplicate` on redelivery, raw and bucketed queries, latest per series) without any
//! durability, and can be told to fail appends to test the unacknowledged path.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use protocols::Quantity;
use series_store::{
    Agg, Appended, Origin, Point, Query, SeriesId, SeriesStore, StoreError, WriteBatch,
};

/// In-memory stand-in for the store seam (tests only).
#[derive(Default)]
pub struct InMemorySeriesStore {
    inner: Mutex<Inner>,
    /// Appends to fail before succeeding again.
    pub fail_appends: AtomicUsize,
}

#[derive(Default)]
struct Inner {
    series: BTreeMap<SeriesId, Vec<Point>>,
    origins: HashSet<Origin>,
}

impl SeriesStore for InMemorySeriesStore {
    async fn append(&self, batch: WriteBatch) -> Result<Appended, StoreError> {
        if self
            .fail_appends
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Io(std::io::Error::other("injected failure")));
        }
        let mut inner = self.inner.lock();
        if let Some(o) = &batch.origin
            && !inner.origins.insert(o.clone())
        {
            return Ok(Appended::Duplicate);
        }
        for (id, points) in batch.series {
            inner.series.entry(id).or_default().extend(points);
        }
        Ok(Appended::Stored)
    }

    fn query(&self, q: &Query) -> Result<Vec<(i64, f64)>, StoreError> {
        if q.to_ms <= q.from_ms {
            return Err(StoreError::BadQuery("to before from".into()));
        }
        let inner = self.inner.lock();
        let mut points: Vec<Point> = inner
            .series
            .get(&q.series)
            .map(|v| {
                v.iter()
                    .filter(|p| p.ts_ms >= q.from_ms && p.ts_ms < q.to_ms)
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        points.sort_by_key(|p| p.ts_ms);
        let Some(step) = q.step_ms else {
            return Ok(points.iter().map(|p| (p.ts_ms, p.value)).collect());
        };
        if step <= 0 {
            return Err(StoreError::BadQuery("step must be positive".into()));
        }
        let mut buckets: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for p in points {
            let b = q.from_ms + (p.ts_ms - q.from_ms).div_euclid(step) * step;
            buckets.entry(b).or_default().push(p.value);
        }
        Ok(buckets
            .into_iter()
            .map(|(b, v)| {
                let x = match q.agg {
                    Agg::Avg => v.iter().sum::<f64>() / v.len() as f64,
                    Agg::Min => v.iter().copied().fold(f64::INFINITY, f64::min),
                    Agg::Max => v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    Agg::Last => *v.last().unwrap_or(&f64::NAN),
                    Agg::Count => v.len() as f64,
                };
                (b, x)
            })
            .collect())
    }

    fn latest(&self, device: &str) -> Result<Vec<(Quantity, Point)>, StoreError> {
        let inner = self.inner.lock();
        Ok(inner
            .series
            .iter()
            .filter(|(id, _)| &*id.device == device)
            .filter_map(|(id, v)| v.iter().max_by_key(|p| p.ts_ms).map(|p| (id.quantity, *p)))
            .collect())
    }
}
