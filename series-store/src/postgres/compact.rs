//! Compaction (head rows of closed windows into chunks) and retention.

use std::collections::BTreeMap;
use std::time::Duration;

use super::read::window_of;
use super::schema::PARTITION_LOCK;
use super::{Inner, MAX_CHUNK_MS, MIN_CHUNK_MS, PgError, timed, ts};
use crate::Point;
use crate::chunk::{decode_record, encode_record};
use crate::codec::quality_from_code;

const DAY_MS: i64 = 86_400_000;

/// What one [`super::PgStore::compact`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Chunks written (new or merged with late points).
    pub chunks_written: u64,
    /// Head rows moved into chunks.
    pub rows_compacted: u64,
    /// Windows skipped because another hub was compacting them.
    pub windows_skipped: u64,
    /// Head rows dropped because they are older than the retention.
    pub rows_expired: u64,
}

/// What one [`super::PgStore::maintain`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Partitions of `chunks` before and after pg_partman's maintenance.
    pub partitions_before: i64,
    /// After.
    pub partitions_after: i64,
    /// Head rows deleted because they are older than the retention.
    pub head_rows_expired: u64,
}

/// The lock key of one (series, window): another hub holding it is compacting that window.
fn window_lock(series_id: i32, window_start: i64) -> i64 {
    (i64::from(series_id) << 40) ^ window_start.rotate_left(17)
}

/// The oldest timestamp kept, if there is a retention.
fn retention_floor(inner: &Inner) -> Option<i64> {
    inner
        .opts
        .retention
        .map(|r| protocols::time::now_ms().saturating_sub(r.as_millis() as i64))
}

pub(super) async fn compact(inner: &Inner, older_than: Duration) -> Result<CompactReport, PgError> {
    let w = inner.window_ms;
    let cutoff = window_of(
        protocols::time::now_ms().saturating_sub(older_than.as_millis() as i64),
        w,
    )
    .min(MAX_CHUNK_MS - w);
    let limit = inner.opts.query_timeout;
    let windows: Vec<(i32, i64)> = timed("compaction scan", limit, async {
        let client = inner.writes.get().await?;
        let rows = client
            .query(
                "SELECT DISTINCT series_id, ts_ms - (ts_ms % $2 + $2) % $2 AS w
                 FROM series_store.head WHERE ts_ms < $1 AND ts_ms >= $3 ORDER BY 1, 2",
                &[&cutoff, &w, &MIN_CHUNK_MS],
            )
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, PgError>>()
    })
    .await?;
    let floor = retention_floor(inner);
    let mut report = CompactReport::default();
    for (series_id, start) in windows {
        let expired = floor.is_some_and(|f| start + w <= f);
        timed(
            "compaction",
            limit,
            compact_window(inner, series_id, start, expired, &mut report),
        )
        .await?;
    }
    Ok(report)
}

/// Makes sure the day partition of `window_start` exists (pg_partman makes only a few around
/// now; old data needs its own).
async fn ensure_partition(inner: &Inner, window_start: i64) -> Result<(), PgError> {
    let day = window_start.div_euclid(DAY_MS) * DAY_MS;
    if inner.partitions.lock().contains(&day) {
        return Ok(());
    }
    let mut client = inner.writes.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PARTITION_LOCK])
        .await?;
    tx.execute(
        "SELECT partman.create_partition_time('series_store.chunks', ARRAY[$1::timestamptz])",
        &[&ts(day)],
    )
    .await?;
    tx.commit().await?;
    inner.partitions.lock().insert(day);
    Ok(())
}

async fn compact_window(
    inner: &Inner,
    series_id: i32,
    start: i64,
    expired: bool,
    report: &mut CompactReport,
) -> Result<(), PgError> {
    let end = start + inner.window_ms;
    if !expired {
        ensure_partition(inner, start).await?;
    }
    let mut client = inner.writes.get().await?;
    let tx = client.transaction().await?;
    let locked: bool = tx
        .query_one(
            "SELECT pg_try_advisory_xact_lock($1)",
            &[&window_lock(series_id, start)],
        )
        .await?
        .try_get(0)?;
    if !locked {
        report.windows_skipped += 1;
        return Ok(());
    }
    let take = tx
        .prepare_cached(
            "DELETE FROM series_store.head WHERE series_id = $1 AND ts_ms >= $2 AND ts_ms < $3
             RETURNING ts_ms, value, quality, wseq",
        )
        .await?;
    let rows = tx.query(&take, &[&series_id, &start, &end]).await?;
    if rows.is_empty() {
        return Ok(());
    }
    if expired {
        report.rows_expired += rows.len() as u64;
        tx.commit().await?;
        return Ok(());
    }
    let mut head: Vec<(i64, i64, Point)> = Vec::with_capacity(rows.len());
    for r in &rows {
        let code: i16 = r.try_get(2)?;
        let quality = u8::try_from(code)
            .ok()
            .and_then(quality_from_code)
            .ok_or_else(|| PgError::Corrupt(format!("head row with quality code {code}")))?;
        head.push((
            r.try_get(0)?,
            r.try_get(3)?,
            Point {
                ts_ms: r.try_get(0)?,
                value: r.try_get(1)?,
                quality,
            },
        ));
    }
    // The chunk's points, then the head's over them in write order: the last write wins.
    let mut points: BTreeMap<i64, Point> = BTreeMap::new();
    let old = tx
        .query_opt(
            "SELECT min_ts, rec FROM series_store.chunks
             WHERE series_id = $1 AND window_start = $2 FOR UPDATE",
            &[&series_id, &ts(start)],
        )
        .await?;
    if let Some(r) = old {
        let min_ts: i64 = r.try_get(0)?;
        let rec: Vec<u8> = r.try_get(1)?;
        let mut pts = Vec::new();
        decode_record(min_ts, &rec, &mut pts).map_err(|e| {
            PgError::Corrupt(format!("chunk of series {series_id} at {min_ts}: {e}"))
        })?;
        points.extend(pts.into_iter().map(|p| (p.ts_ms, p)));
    }
    head.sort_by_key(|(t, wseq, _)| (*t, *wseq));
    for (t, _, p) in head {
        points.insert(t, p);
    }
    let points: Vec<Point> = points.into_values().collect();
    let (meta, rec) = encode_record(&points, false);
    let upsert = tx
        .prepare_cached(
            "INSERT INTO series_store.chunks (series_id, window_start, min_ts, points, rec)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (series_id, window_start)
             DO UPDATE SET min_ts = EXCLUDED.min_ts, points = EXCLUDED.points, rec = EXCLUDED.rec",
        )
        .await?;
    tx.execute(
        &upsert,
        &[
            &series_id,
            &ts(start),
            &meta.min_ts,
            &(meta.count as i32),
            &rec,
        ],
    )
    .await?;
    tx.commit().await?;
    report.chunks_written += 1;
    report.rows_compacted += rows.len() as u64;
    Ok(())
}

pub(super) async fn maintain(inner: &Inner) -> Result<MaintenanceReport, PgError> {
    let limit = inner.opts.query_timeout;
    timed("maintenance", limit, async {
        let client = inner.writes.get().await?;
        let count = "SELECT count(*) FROM partman.show_partitions('series_store.chunks')";
        let partitions_before: i64 = client.query_one(count, &[]).await?.try_get(0)?;
        client
            .execute(
                "SELECT partman.run_maintenance(p_parent_table => 'series_store.chunks', p_jobmon => false)",
                &[],
            )
            .await?;
        let partitions_after: i64 = client.query_one(count, &[]).await?.try_get(0)?;
        let head_rows_expired = match retention_floor(inner) {
            Some(floor) => {
                client
                    .execute("DELETE FROM series_store.head WHERE ts_ms < $1", &[&floor])
                    .await?
            }
            None => 0,
        };
        // Dropped partitions may be made again by a later compaction of late data.
        inner.partitions.lock().clear();
        Ok(MaintenanceReport {
            partitions_before,
            partitions_after,
            head_rows_expired,
        })
    })
    .await
}
