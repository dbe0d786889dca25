//! Alerts shared by the hubs of a cluster: one row per alert in PostgreSQL (`cluster_alerts`),
//! the record as JSON beside the columns the lists filter on.
//!
//! The hub that works a device's partition is the only one that raises, updates and clears its
//! alerts (the book of that hub); it writes each change here before publishing it, like the
//! single hub writes its file. When a partition moves, the next owner loads the open alerts of
//! its devices from here, so an episode goes on under the id it was raised with. Any hub
//! answers the alert list, an alert and its CAP message from here.
//!
//! Sequence numbers come in blocks of [`BLOCK`] from a PostgreSQL sequence: each hub takes a
//! block when it starts and another when half of it is used, so ids stay unique without a
//! round trip per alert.

use tokio_postgres::types::ToSql;

use super::store::AlertStoreError;
use super::{AlertFilter, StateFilter, StoredAlert};
use protocols::messages::AlertState;

/// Sequence numbers per block.
pub const BLOCK: u64 = 1 << 20;
/// Rows read per page while a list filters by the caller's grants.
const PAGE: i64 = 500;

fn pgerr(e: impl std::fmt::Display) -> AlertStoreError {
    AlertStoreError::Shared(e.to_string())
}

fn state_name(s: AlertState) -> &'static str {
    match s {
        AlertState::Active => "active",
        AlertState::Acknowledged => "acknowledged",
        AlertState::Cleared => "cleared",
    }
}

/// The alert rows in PostgreSQL.
pub struct SharedAlerts {
    pg: deadpool_postgres::Pool,
}

impl SharedAlerts {
    /// Creates the table and the block sequence if missing.
    pub async fn open(pg: deadpool_postgres::Pool) -> Result<SharedAlerts, AlertStoreError> {
        let mut client = pg.get().await.map_err(pgerr)?;
        // Concurrent starts wait for each other (CREATE ... IF NOT EXISTS races otherwise).
        let tx = client.transaction().await.map_err(pgerr)?;
        tx.batch_execute(
            "SELECT pg_advisory_xact_lock(7202);
                 CREATE TABLE IF NOT EXISTS cluster_alerts (
                     seq bigint PRIMARY KEY,
                     id text NOT NULL UNIQUE,
                     device text NOT NULL,
                     rule text NOT NULL,
                     level text NOT NULL,
                     state text NOT NULL,
                     raised_ms bigint NOT NULL,
                     touched_ms bigint NOT NULL,
                     record text NOT NULL);
                 CREATE INDEX IF NOT EXISTS cluster_alerts_open
                     ON cluster_alerts (device) WHERE state <> 'cleared';
                 CREATE INDEX IF NOT EXISTS cluster_alerts_newest
                     ON cluster_alerts (raised_ms DESC, seq DESC);
                 CREATE SEQUENCE IF NOT EXISTS cluster_alert_blocks;",
        )
        .await
        .map_err(pgerr)?;
        tx.commit().await.map_err(pgerr)?;
        Ok(SharedAlerts { pg })
    }

    /// A fresh block: sequence numbers `[start, start + BLOCK)` no other hub uses.
    pub async fn block(&self) -> Result<u64, AlertStoreError> {
        let client = self.pg.get().await.map_err(pgerr)?;
        let b: i64 = client
            .query_one("SELECT nextval('cluster_alert_blocks')", &[])
            .await
            .map_err(pgerr)?
            .get(0);
        Ok(u64::try_from(b).unwrap_or(1).saturating_mul(BLOCK))
    }

    /// Writes alerts in one transaction.
    pub async fn save(&self, alerts: &[StoredAlert]) -> Result<(), AlertStoreError> {
        let mut client = self.pg.get().await.map_err(pgerr)?;
        let tx = client.transaction().await.map_err(pgerr)?;
        let stmt = tx
            .prepare(
                "INSERT INTO cluster_alerts
                     (seq, id, device, rule, level, state, raised_ms, touched_ms, record)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                 ON CONFLICT (seq) DO UPDATE SET state = EXCLUDED.state,
                     touched_ms = EXCLUDED.touched_ms, record = EXCLUDED.record",
            )
            .await
            .map_err(pgerr)?;
        for a in alerts {
            let record = serde_json::to_string(a).map_err(|e| AlertStoreError::Corrupt {
                seq: a.seq,
                detail: e.to_string(),
            })?;
            let d = &a.doc.alert;
            let seq = i64::try_from(a.seq).unwrap_or(i64::MAX);
            let touched = a.reading_ts_ms.max(a.rev_sent_ms);
            let params: [&(dyn ToSql + Sync); 9] = [
                &seq,
                &d.id,
                &d.device,
                &d.rule,
                &d.level.name(),
                &state_name(d.state),
                &a.raised_ms,
                &touched,
                &record,
            ];
            tx.execute(&stmt, &params).await.map_err(pgerr)?;
        }
        tx.commit().await.map_err(pgerr)
    }

    /// The open alerts of these devices.
    pub async fn open_of(&self, devices: &[String]) -> Result<Vec<StoredAlert>, AlertStoreError> {
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.pg.get().await.map_err(pgerr)?;
        let rows = client
            .query(
                "SELECT seq, record FROM cluster_alerts
                 WHERE device = ANY($1) AND state <> 'cleared' ORDER BY seq",
                &[&devices],
            )
            .await
            .map_err(pgerr)?;
        Ok(rows.iter().filter_map(decode).collect())
    }

    /// One alert by id.
    pub async fn get(&self, id: &str) -> Result<Option<StoredAlert>, AlertStoreError> {
        let client = self.pg.get().await.map_err(pgerr)?;
        let row = client
            .query_opt(
                "SELECT seq, record FROM cluster_alerts WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(pgerr)?;
        Ok(row.as_ref().and_then(decode))
    }

    /// Alerts matching `filter` and `keep`, newest first (by when raised), at most
    /// `filter.limit`; read in pages so the grants can be applied here.
    pub async fn list(
        &self,
        filter: &AlertFilter,
        keep: impl Fn(&StoredAlert) -> bool,
    ) -> Result<Vec<StoredAlert>, AlertStoreError> {
        let client = self.pg.get().await.map_err(pgerr)?;
        let states: Vec<String> = match filter.state {
            None => ["active", "acknowledged", "cleared"]
                .map(String::from)
                .to_vec(),
            Some(StateFilter::Open) => ["active", "acknowledged"].map(String::from).to_vec(),
            Some(StateFilter::Is(s)) => vec![state_name(s).to_string()],
        };
        let device = filter.device.clone();
        let level = filter.level.map(|l| l.name().to_string());
        let limit = filter.limit.max(1);
        let mut out = Vec::new();
        let mut offset = 0i64;
        loop {
            let rows = client
                .query(
                    "SELECT seq, record FROM cluster_alerts
                     WHERE state = ANY($1) AND ($2::text IS NULL OR device = $2)
                       AND ($3::text IS NULL OR level = $3)
                     ORDER BY raised_ms DESC, seq DESC LIMIT $4 OFFSET $5",
                    &[&states, &device, &level, &PAGE, &offset],
                )
                .await
                .map_err(pgerr)?;
            let n = rows.len();
            for a in rows.iter().filter_map(decode) {
                if keep(&a) {
                    out.push(a);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if (n as i64) < PAGE {
                return Ok(out);
            }
            offset += PAGE;
        }
    }

    /// Deletes cleared alerts last changed before `cutoff_ms`.
    pub async fn expire(&self, cutoff_ms: i64) -> Result<u64, AlertStoreError> {
        let client = self.pg.get().await.map_err(pgerr)?;
        client
            .execute(
                "DELETE FROM cluster_alerts WHERE state = 'cleared' AND touched_ms < $1",
                &[&cutoff_ms],
            )
            .await
            .map_err(pgerr)
    }
}

/// A row's record; an unreadable one is logged and skipped (it must not stop a list).
fn decode(row: &tokio_postgres::Row) -> Option<StoredAlert> {
    let seq: i64 = row.get(0);
    let record: &str = row.get(1);
    match serde_json::from_str(record) {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::error!(seq, "shared alert record unreadable: {e}");
            None
        }
    }
}
