//! Retention: whole chunks whose newest point is older than the cutoff are deleted.
//!
//! Runs at open and then on the checkpointer thread every `retention_interval` (it is not a
//! thread of its own), and on demand through [`super::TsStore::drop_before`]. Queries clamp
//! `from` to `now - retention` themselves, so points past the cutoff are never returned even
//! while their chunk (or head) still holds them.

use super::RetentionReport;
use super::shared::{CHUNKS, Shared, db_err};
use crate::StoreError;
use crate::chunk::decode_meta;

/// Deletes every committed chunk whose newest point is older than `cutoff_ms`, in one redb
/// transaction. Blocking.
pub(super) fn drop_before(shared: &Shared, cutoff_ms: i64) -> Result<RetentionReport, StoreError> {
    let ids: Vec<u32> = shared.registry.read().by_id.keys().copied().collect();
    let mut report = RetentionReport::default();
    let txn = shared.with_db(|db| db.begin_write().map_err(db_err))?;
    {
        let mut t = txn.open_table(CHUNKS).map_err(db_err)?;
        let span = shared.max_span_ms;
        for id in ids {
            t.retain_in(
                (id, i64::MIN, 0u32)..(id, cutoff_ms, 0u32),
                |(_, start, _), rec| {
                    match decode_meta(start, rec) {
                        Ok((m, _)) if m.max_ts < cutoff_ms => {
                            report.chunks += 1;
                            report.points += u64::from(m.count);
                            false
                        }
                        Ok(_) => true,
                        // Unreadable: its key still bounds its time range.
                        Err(_) => {
                            let gone = start.saturating_add(span) < cutoff_ms;
                            report.chunks += u64::from(gone);
                            !gone
                        }
                    }
                },
            )
            .map_err(db_err)?;
        }
    }
    txn.commit().map_err(db_err)?;
    if report.chunks > 0 {
        tracing::info!(
            chunks = report.chunks,
            points = report.points,
            "retention dropped old chunks"
        );
    }
    Ok(report)
}
