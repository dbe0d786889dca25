//! Appends: series ids, then one transaction with the origin's dedup row and the points.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::types::ToSql;

use super::{Inner, PgError, RECENT_ORIGINS};
use crate::codec::quality_code;
use crate::dedup::{MAX_STREAMS, StreamState};
use crate::{Appended, SeriesId, WriteBatch};

/// Locks the stream's row (creating it), returns its state and whether it is new.
const LOCK_STREAM: &str =
    "INSERT INTO series_store.agent_streams AS s (agent, stream, state, last_used)
     VALUES ($1, $2, '\\x'::bytea, $3)
     ON CONFLICT (agent, stream) DO UPDATE SET last_used = EXCLUDED.last_used
     RETURNING s.state, (s.xmax = 0) AS inserted";
const SAVE_STREAM: &str =
    "UPDATE series_store.agent_streams SET state = $3 WHERE agent = $1 AND stream = $2";
const CLAIM_ORIGIN: &str = "UPDATE series_store.recent_origins SET writer = $4
     WHERE agent = $1 AND stream = $2 AND seq = $3 AND writer <> $4";
const NOTE_ORIGIN: &str =
    "INSERT INTO series_store.recent_origins (agent, stream, seq, writer) VALUES ($1, $2, $3, $4)
     ON CONFLICT (agent, stream, seq) DO UPDATE SET writer = EXCLUDED.writer";
const PRUNE_ORIGINS: &str = "DELETE FROM series_store.recent_origins
     WHERE agent = $1 AND stream = $2 AND seq < $3";
const EVICT_STREAMS: &str = "WITH gone AS (
         DELETE FROM series_store.agent_streams WHERE agent = $1 AND stream NOT IN (
             SELECT stream FROM series_store.agent_streams WHERE agent = $1
             ORDER BY last_used DESC LIMIT $2)
         RETURNING stream)
     DELETE FROM series_store.recent_origins r USING gone
     WHERE r.agent = $1 AND r.stream = gone.stream";
/// All rows of an append share one write number, taken inside its transaction.
const INSERT_HEAD: &str = "INSERT INTO series_store.head (series_id, ts_ms, value, quality, wseq)
     SELECT u.s, u.t, u.v, u.q, w.n
     FROM (SELECT nextval('series_store.write_seq') AS n) w,
          unnest($1::integer[], $2::bigint[], $3::double precision[], $4::smallint[])
              AS u(s, t, v, q)";

/// The ids of `series`, creating rows for new ones (outside any append's transaction: a series
/// row without points is harmless).
pub(super) async fn series_ids(inner: &Inner, series: &[&SeriesId]) -> Result<Vec<i32>, PgError> {
    let mut missing: Vec<&SeriesId> = {
        let known = inner.series_ids.read();
        series
            .iter()
            .filter(|s| !known.contains_key(**s))
            .copied()
            .collect()
    };
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        let devices: Vec<&str> = missing.iter().map(|s| &*s.device).collect();
        let quantities: Vec<i16> = missing.iter().map(|s| s.quantity.code() as i16).collect();
        let client = inner.writes.get().await?;
        client
            .execute(
                "INSERT INTO series_store.series (device, quantity)
                 SELECT * FROM unnest($1::text[], $2::smallint[]) ORDER BY 1, 2
                 ON CONFLICT DO NOTHING",
                &[&devices, &quantities],
            )
            .await?;
        let rows = client
            .query(
                "SELECT s.id, s.device, s.quantity FROM series_store.series s
                 JOIN unnest($1::text[], $2::smallint[]) AS u(d, q)
                   ON s.device = u.d AND s.quantity = u.q",
                &[&devices, &quantities],
            )
            .await?;
        let mut known = inner.series_ids.write();
        for r in rows {
            let id: i32 = r.try_get(0)?;
            let device: String = r.try_get(1)?;
            let code: i16 = r.try_get(2)?;
            if let Some(quantity) = protocols::Quantity::from_code(code as u16) {
                known.insert(
                    SeriesId {
                        device: Arc::from(device),
                        quantity,
                    },
                    id,
                );
            }
        }
    }
    let known = inner.series_ids.read();
    series
        .iter()
        .map(|s| {
            known
                .get(*s)
                .copied()
                .ok_or_else(|| PgError::Corrupt(format!("series {s:?} has no id after insert")))
        })
        .collect()
}

/// The rows of a batch: per (series, timestamp) the batch's last point.
struct Rows {
    series: Vec<i32>,
    ts: Vec<i64>,
    value: Vec<f64>,
    quality: Vec<i16>,
}

fn rows(batch: &WriteBatch, ids: &[i32]) -> Rows {
    let mut last: HashMap<(i32, i64), usize> = HashMap::new();
    let mut out = Rows {
        series: Vec::new(),
        ts: Vec::new(),
        value: Vec::new(),
        quality: Vec::new(),
    };
    for ((_, pts), &id) in batch.series.iter().zip(ids) {
        for p in pts {
            let q = i16::from(quality_code(p.quality));
            match last.get(&(id, p.ts_ms)) {
                Some(&i) => {
                    out.value[i] = p.value;
                    out.quality[i] = q;
                }
                None => {
                    last.insert((id, p.ts_ms), out.ts.len());
                    out.series.push(id);
                    out.ts.push(p.ts_ms);
                    out.value.push(p.value);
                    out.quality.push(q);
                }
            }
        }
    }
    out
}

/// One append (the caller applies the timeout).
pub(super) async fn append(inner: &Inner, batch: WriteBatch) -> Result<Appended, PgError> {
    let names: Vec<&SeriesId> = batch.series.iter().map(|(s, _)| s).collect();
    let ids = series_ids(inner, &names).await?;
    let rows = rows(&batch, &ids);
    let mut client = inner.writes.get().await?;
    let tx = client.transaction().await?;
    let insert = tx.prepare_cached(INSERT_HEAD).await?;
    let head = async {
        if rows.ts.is_empty() {
            return Ok(0);
        }
        tx.execute(
            &insert,
            &[&rows.series, &rows.ts, &rows.value, &rows.quality],
        )
        .await
    };
    if let Some(o) = &batch.origin {
        let agent: &str = &o.agent;
        // Streams and seqs are u64 on the wire; stored as their i64 bit patterns.
        let stream = o.stream as i64;
        let seq = o.seq as i64;
        let now = protocols::time::now_ms();
        let lock = tx.prepare_cached(LOCK_STREAM).await?;
        let row = tx.query_one(&lock, &[&agent, &stream, &now]).await?;
        let bytes: &[u8] = row.try_get(0)?;
        let inserted: bool = row.try_get(1)?;
        let mut state = StreamState::from_bytes(bytes).map_err(|_| {
            PgError::Corrupt(format!(
                "dedup state of agent {agent} stream {} is truncated",
                o.stream
            ))
        })?;
        if state.contains(o.seq) {
            let claim = tx.prepare_cached(CLAIM_ORIGIN).await?;
            let claimed = tx
                .execute(&claim, &[&agent, &stream, &seq, &inner.instance])
                .await?;
            drop(head);
            tx.commit().await?;
            return Ok(if claimed > 0 {
                Appended::Recovered
            } else {
                Appended::Duplicate
            });
        }
        state.insert(o.seq);
        let state = state.to_bytes();
        let save = tx.prepare_cached(SAVE_STREAM).await?;
        let note = tx.prepare_cached(NOTE_ORIGIN).await?;
        // Sent together (tokio-postgres pipelines concurrent statements on a connection): one
        // round trip for the dedup row, the origin's writer and the points.
        let save_params: [&(dyn ToSql + Sync); 3] = [&agent, &stream, &state];
        let note_params: [&(dyn ToSql + Sync); 4] = [&agent, &stream, &seq, &inner.instance];
        tokio::try_join!(
            tx.execute(&save, &save_params),
            tx.execute(&note, &note_params),
            head,
        )?;
        if o.seq % 256 == 0 {
            let prune = tx.prepare_cached(PRUNE_ORIGINS).await?;
            tx.execute(&prune, &[&agent, &stream, &(seq - RECENT_ORIGINS)])
                .await?;
        }
        if inserted {
            tx.execute(EVICT_STREAMS, &[&agent, &(MAX_STREAMS as i64)])
                .await?;
        }
    } else {
        head.await?;
    }
    tx.commit().await?;
    Ok(Appended::Stored)
}
