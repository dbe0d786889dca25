//! Queries and `latest`: a range's chunks and head rows in one snapshot, merged by `query.rs`.

use std::collections::BTreeMap;

use tokio_postgres::IsolationLevel;

use super::{Inner, MAX_CHUNK_MS, MIN_CHUNK_MS, PgError, ts};
use crate::chunk::{decode_meta, decode_record};
use crate::codec::quality_from_code;
use crate::query::{Body, Bounds, Source, run};
use crate::{Point, Query, SeriesId, StoreError};
use protocols::{Quality, Quantity};

/// Head rows win over chunks at equal timestamps.
const PRIO_CHUNK: u64 = 0;
const PRIO_HEAD: u64 = 1;

const CHUNKS_IN_RANGE: &str = "SELECT min_ts, rec FROM series_store.chunks
     WHERE series_id = $1 AND window_start >= $2 AND window_start < $3";
const HEAD_IN_RANGE: &str = "SELECT ts_ms, value, quality FROM series_store.head
     WHERE series_id = $1 AND ts_ms >= $2 AND ts_ms < $3 ORDER BY ts_ms, wseq";

/// The trait's rules on a query's shape.
pub(super) fn check(q: &Query) -> Result<(), StoreError> {
    if q.to_ms < q.from_ms {
        return Err(StoreError::BadQuery(format!(
            "to ({}) is before from ({})",
            q.to_ms, q.from_ms
        )));
    }
    if let Some(step) = q.step_ms
        && step <= 0
    {
        return Err(StoreError::BadQuery(format!(
            "step must be positive, not {step}"
        )));
    }
    Ok(())
}

/// The id of a series, if it exists (cached once seen).
async fn series_id(inner: &Inner, s: &SeriesId) -> Result<Option<i32>, PgError> {
    if let Some(&id) = inner.series_ids.read().get(s) {
        return Ok(Some(id));
    }
    let client = inner.reads.get().await?;
    let row = client
        .query_opt(
            "SELECT id FROM series_store.series WHERE device = $1 AND quantity = $2",
            &[&&*s.device, &(s.quantity.code() as i16)],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let id: i32 = row.try_get(0)?;
    inner.series_ids.write().insert(s.clone(), id);
    Ok(Some(id))
}

fn quality(code: i16) -> Result<Quality, PgError> {
    u8::try_from(code)
        .ok()
        .and_then(quality_from_code)
        .ok_or_else(|| PgError::Corrupt(format!("head row with quality code {code}")))
}

/// The start of the window holding `ms`.
pub(super) fn window_of(ms: i64, window_ms: i64) -> i64 {
    ms.div_euclid(window_ms) * window_ms
}

/// A chunk row as a query source.
fn chunk_source(series_id: i32, min_ts: i64, rec: Vec<u8>) -> Result<Source, PgError> {
    let (meta, _) = decode_meta(min_ts, &rec)
        .map_err(|e| PgError::Corrupt(format!("chunk of series {series_id} at {min_ts}: {e}")))?;
    Ok(Source {
        min_ts: meta.min_ts,
        max_ts: meta.max_ts,
        prio: PRIO_CHUNK,
        body: Body::Chunk { meta, rec },
        label: format!("series {series_id} at {min_ts}"),
    })
}

/// Head rows (sorted by timestamp, then write order) as one source per window, of equal
/// timestamps the last written.
fn head_sources(rows: Vec<(i64, f64, Quality)>, window_ms: i64) -> Vec<Source> {
    let mut by_window: BTreeMap<i64, Vec<Point>> = BTreeMap::new();
    for (ts_ms, value, quality) in rows {
        let pts = by_window.entry(window_of(ts_ms, window_ms)).or_default();
        let p = Point {
            ts_ms,
            value,
            quality,
        };
        match pts.last_mut() {
            Some(last) if last.ts_ms == ts_ms => *last = p,
            _ => pts.push(p),
        }
    }
    by_window
        .into_values()
        .filter_map(|pts| {
            let (first, last) = (pts.first()?.ts_ms, pts.last()?.ts_ms);
            Some(Source {
                min_ts: first,
                max_ts: last,
                prio: PRIO_HEAD,
                body: Body::Points(pts),
                label: "head".into(),
            })
        })
        .collect()
}

pub(super) async fn query(inner: &Inner, q: &Query) -> Result<Vec<(i64, f64)>, PgError> {
    let Some(id) = series_id(inner, &q.series).await? else {
        return Ok(Vec::new());
    };
    let w = inner.window_ms;
    let lo = window_of(q.from_ms, w).clamp(MIN_CHUNK_MS, MAX_CHUNK_MS);
    let hi = q.to_ms.clamp(MIN_CHUNK_MS, MAX_CHUNK_MS);
    let mut client = inner.reads.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let chunks = tx.prepare_cached(CHUNKS_IN_RANGE).await?;
    let head = tx.prepare_cached(HEAD_IN_RANGE).await?;
    let chunk_rows = tx.query(&chunks, &[&id, &ts(lo), &ts(hi)]).await?;
    let head_rows = tx.query(&head, &[&id, &q.from_ms, &q.to_ms]).await?;
    tx.commit().await?;
    let mut sources = Vec::with_capacity(chunk_rows.len() + 1);
    for r in chunk_rows {
        sources.push(chunk_source(id, r.try_get(0)?, r.try_get(1)?)?);
    }
    let mut rows = Vec::with_capacity(head_rows.len());
    for r in head_rows {
        rows.push((r.try_get(0)?, r.try_get(1)?, quality(r.try_get(2)?)?));
    }
    sources.extend(head_sources(rows, w));
    run(
        sources,
        Bounds {
            from: q.from_ms,
            to: q.to_ms,
            align: q.from_ms,
            step: q.step_ms,
            agg: q.agg,
        },
    )
    .map_err(PgError::Corrupt)
}

pub(super) async fn latest(inner: &Inner, device: &str) -> Result<Vec<(Quantity, Point)>, PgError> {
    let mut client = inner.reads.get().await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let series = tx
        .query(
            "SELECT id, quantity FROM series_store.series WHERE device = $1",
            &[&device],
        )
        .await?;
    let newest_chunk = tx
        .prepare_cached(
            "SELECT min_ts, rec FROM series_store.chunks WHERE series_id = $1
             ORDER BY window_start DESC LIMIT 1",
        )
        .await?;
    let newest_head = tx
        .prepare_cached(
            "SELECT ts_ms, value, quality FROM series_store.head WHERE series_id = $1
             ORDER BY ts_ms DESC, wseq DESC LIMIT 1",
        )
        .await?;
    let mut out = Vec::new();
    for s in series {
        let id: i32 = s.try_get(0)?;
        let code: i16 = s.try_get(1)?;
        let Some(quantity) = Quantity::from_code(code as u16) else {
            continue;
        };
        let mut best: Option<Point> = None;
        if let Some(r) = tx.query_opt(&newest_chunk, &[&id]).await? {
            let min_ts: i64 = r.try_get(0)?;
            let rec: Vec<u8> = r.try_get(1)?;
            let mut pts = Vec::new();
            decode_record(min_ts, &rec, &mut pts)
                .map_err(|e| PgError::Corrupt(format!("chunk of series {id} at {min_ts}: {e}")))?;
            best = pts.last().copied();
        }
        if let Some(r) = tx.query_opt(&newest_head, &[&id]).await? {
            let p = Point {
                ts_ms: r.try_get(0)?,
                value: r.try_get(1)?,
                quality: quality(r.try_get(2)?)?,
            };
            // The head's point is the later write at an equal timestamp.
            if best.is_none_or(|b| p.ts_ms >= b.ts_ms) {
                best = Some(p);
            }
        }
        if let Some(p) = best {
            out.push((quantity, p));
        }
    }
    tx.commit().await?;
    out.sort_by_key(|(q, _)| *q);
    Ok(out)
}

/// Sizes (bytes, as `pg_total_relation_size`: table + indexes + TOAST) and point counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// All partitions of `chunks` (including the default one).
    pub chunk_bytes: i64,
    /// The `series` table.
    pub series_bytes: i64,
    /// The `head` table.
    pub head_bytes: i64,
    /// Points in chunks.
    pub chunk_points: i64,
    /// Rows in the head.
    pub head_rows: i64,
    /// Chunk rows.
    pub chunks: i64,
    /// Partitions of `chunks` (without the default one).
    pub partitions: i64,
}

pub(super) async fn storage(inner: &Inner) -> Result<StorageStats, PgError> {
    let client = inner.reads.get().await?;
    let r = client
        .query_one(
            "SELECT
                (SELECT coalesce(sum(pg_total_relation_size(
                    format('%I.%I', partition_schemaname, partition_tablename)::regclass)), 0)::bigint
                 FROM partman.show_partitions('series_store.chunks', p_include_default => true)),
                pg_total_relation_size('series_store.series'),
                pg_total_relation_size('series_store.head'),
                (SELECT coalesce(sum(points), 0)::bigint FROM series_store.chunks),
                (SELECT count(*) FROM series_store.head),
                (SELECT count(*) FROM series_store.chunks),
                (SELECT count(*) FROM partman.show_partitions('series_store.chunks'))",
            &[],
        )
        .await?;
    Ok(StorageStats {
        chunk_bytes: r.try_get(0)?,
        series_bytes: r.try_get(1)?,
        head_bytes: r.try_get(2)?,
        chunk_points: r.try_get(3)?,
        head_rows: r.try_get(4)?,
        chunks: r.try_get(5)?,
        partitions: r.try_get(6)?,
    })
}
