//! Reads: gathering a query's sources, and the newest point of a device's series.
//!
//! A query's sources are the head's points in range (copied under a short read lock), the
//! pending chunks not yet in redb, and the chunks of a redb read transaction (MVCC: it never
//! blocks the writer or the checkpointer) whose key starts at most the widest chunk span before
//! `from`. [`crate::query::run`] merges them; where sources share a timestamp the last write
//! wins (see [`crate::head`]).

use std::sync::Arc;

use protocols::Quantity;
use protocols::time::now_ms;
use redb::ReadableDatabase;

use super::shared::{CHUNKS, META, META_GEN, PendingChunk, Shared, db_err};
use crate::chunk::{ChunkMeta, decode_meta};
use crate::query::{self, Body, Bounds, Source};
use crate::{Point, Query, StoreError};

/// Answers [`crate::SeriesStore::query`].
pub(super) fn query(sh: &Shared, q: &Query) -> Result<Vec<(i64, f64)>, StoreError> {
    if q.to_ms < q.from_ms {
        return Err(StoreError::BadQuery(format!(
            "`to` ({}) is before `from` ({})",
            q.to_ms, q.from_ms
        )));
    }
    if let Some(step) = q.step_ms
        && step <= 0
    {
        return Err(StoreError::BadQuery(format!(
            "step must be positive, got {step}"
        )));
    }
    let from = match sh.retention_ms {
        Some(r) => q.from_ms.max(now_ms().saturating_sub(r)),
        None => q.from_ms,
    };
    if from >= q.to_ms {
        return Ok(Vec::new());
    }
    let Some(id) = sh.registry.read().ids.get(&q.series).copied() else {
        return Ok(Vec::new());
    };
    let mut sources = Vec::new();
    let pending: Vec<Arc<PendingChunk>> = {
        let st = sh.state.read();
        if let Some(h) = st.heads.get(&id) {
            let (inorder, ooo) = h.range(from, q.to_ms);
            for (pts, prio) in [(inorder, 0), (ooo, u64::MAX)] {
                if let (Some(f), Some(l)) = (pts.first(), pts.last()) {
                    sources.push(Source {
                        min_ts: f.ts_ms,
                        max_ts: l.ts_ms,
                        prio,
                        body: Body::Points(pts),
                        label: String::new(),
                    });
                }
            }
        }
        st.pending
            .get(&id)
            .map(|v| {
                v.iter()
                    .filter(|c| c.meta.max_ts >= from && c.start_ts < q.to_ms)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    // Taken after the pending list: a chunk committed in between is then in both, and the
    // generation below tells which copy to use.
    let txn = sh.with_db(|db| db.begin_read().map_err(db_err))?;
    let committed = txn
        .open_table(META)
        .map_err(db_err)?
        .get(META_GEN)
        .map_err(db_err)?
        .map_or(0, |v| v.value());
    for c in pending {
        if c.generation > committed {
            sources.push(Source {
                min_ts: c.start_ts,
                max_ts: c.meta.max_ts,
                prio: chunk_prio(&c.meta, c.seq),
                body: Body::Chunk {
                    meta: c.meta,
                    rec: c.rec.clone(),
                },
                label: format!("series {id} start {} (pending)", c.start_ts),
            });
        }
    }
    let chunks = txn.open_table(CHUNKS).map_err(db_err)?;
    let lo = (id, from.saturating_sub(sh.max_span_ms), 0u32);
    let hi = (id, q.to_ms, 0u32);
    for e in chunks.range(lo..hi).map_err(db_err)? {
        let (k, v) = e.map_err(db_err)?;
        let (_, start, seq) = k.value();
        let rec = v.value();
        let (meta, _) = decode_meta(start, rec).map_err(|e| {
            StoreError::Corrupt(format!("chunk of series {id} starting {start}: {e}"))
        })?;
        if meta.max_ts < from {
            continue;
        }
        sources.push(Source {
            min_ts: start,
            max_ts: meta.max_ts,
            prio: chunk_prio(&meta, seq),
            body: Body::Chunk {
                meta,
                rec: rec.to_vec(),
            },
            label: format!("series {id} starting {start}"),
        });
    }
    query::run(
        sources,
        Bounds {
            from,
            to: q.to_ms,
            align: q.from_ms,
            step: q.step_ms,
            agg: q.agg,
        },
    )
    .map_err(StoreError::Corrupt)
}

/// In-order chunks never share timestamps; out-of-order ones win over them, later over earlier.
fn chunk_prio(meta: &ChunkMeta, seq: u32) -> u64 {
    if meta.out_of_order {
        1 + u64::from(seq)
    } else {
        0
    }
}

/// Answers [`crate::SeriesStore::latest`] from the heads (which keep the newest point even after
/// sealing, and are restored from snapshots at open).
pub(super) fn latest(sh: &Shared, device: &str) -> Result<Vec<(Quantity, Point)>, StoreError> {
    let ids: Vec<(Quantity, u32)> = sh
        .registry
        .read()
        .by_device
        .get(device)
        .cloned()
        .unwrap_or_default();
    let st = sh.state.read();
    let mut out: Vec<(Quantity, Point)> = ids
        .into_iter()
        .filter_map(|(q, id)| st.heads.get(&id).and_then(|h| h.latest).map(|p| (q, p)))
        .collect();
    out.sort_by_key(|(q, _)| *q);
    Ok(out)
}
