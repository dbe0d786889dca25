//! Twins' desired state and versions shared by the hubs of a cluster: one row per device in
//! PostgreSQL (`cluster_twins`). The hub that works a device's partition writes its desired
//! state there (besides its own file) before anyone sees it, and the device's version when it
//! gives the partition up; the next owner loads both when it takes the partition, so desired
//! state, the command that follows from it and the version (which only grows) go on there.
//! A row not given up cleanly (its owner was killed) resumes its version with
//! [`CRASH_VERSION_GAP`](super::persist::CRASH_VERSION_GAP), as one hub does after a crash.

use std::collections::HashMap;

use super::persist::{CRASH_VERSION_GAP, DesiredRecord, PersistError};

fn pgerr(e: impl std::fmt::Display) -> PersistError {
    PersistError::Shared(e.to_string())
}

fn version_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What the previous owner left for a device.
#[derive(Debug, Default)]
pub struct Handed {
    /// The version to resume from (raised by the gap when not given up cleanly).
    pub version: u64,
    /// Desired state, if any was ever set.
    pub desired: Option<DesiredRecord>,
}

/// The twin rows in PostgreSQL.
pub struct SharedTwins {
    pg: deadpool_postgres::Pool,
}

impl SharedTwins {
    /// Creates the table if missing.
    pub async fn open(pg: deadpool_postgres::Pool) -> Result<SharedTwins, PersistError> {
        let mut client = pg.get().await.map_err(pgerr)?;
        let tx = client.transaction().await.map_err(pgerr)?;
        tx.batch_execute(
            "SELECT pg_advisory_xact_lock(7203);
             CREATE TABLE IF NOT EXISTS cluster_twins (
                 device text PRIMARY KEY,
                 version bigint NOT NULL DEFAULT 0,
                 clean boolean NOT NULL DEFAULT true,
                 desired text);",
        )
        .await
        .map_err(pgerr)?;
        tx.commit().await.map_err(pgerr)?;
        Ok(SharedTwins { pg })
    }

    /// Stores a device's desired state at `version`.
    pub async fn save_desired(
        &self,
        device: &str,
        record: &DesiredRecord,
        version: u64,
    ) -> Result<(), PersistError> {
        let text = serde_json::to_string(record).map_err(|e| PersistError::Corrupt {
            device: device.to_string(),
            detail: e.to_string(),
        })?;
        let client = self.pg.get().await.map_err(pgerr)?;
        client
            .execute(
                "INSERT INTO cluster_twins (device, version, clean, desired)
                 VALUES ($1, $2, false, $3)
                 ON CONFLICT (device) DO UPDATE SET desired = EXCLUDED.desired,
                     version = GREATEST(cluster_twins.version, EXCLUDED.version), clean = false",
                &[&device, &version_of(version), &text],
            )
            .await
            .map_err(pgerr)?;
        Ok(())
    }

    /// Reads what was left for `devices` and marks their rows as worked again (not clean until
    /// given up).
    pub async fn take(&self, devices: &[String]) -> Result<HashMap<String, Handed>, PersistError> {
        let mut client = self.pg.get().await.map_err(pgerr)?;
        let tx = client.transaction().await.map_err(pgerr)?;
        let rows = tx
            .query(
                "SELECT device, version, clean, desired FROM cluster_twins
                 WHERE device = ANY($1) FOR UPDATE",
                &[&devices],
            )
            .await
            .map_err(pgerr)?;
        tx.execute(
            "UPDATE cluster_twins SET clean = false WHERE device = ANY($1)",
            &[&devices],
        )
        .await
        .map_err(pgerr)?;
        tx.commit().await.map_err(pgerr)?;
        let mut out = HashMap::new();
        for r in rows {
            let device: String = r.get(0);
            let version = u64::try_from(r.get::<_, i64>(1)).unwrap_or(0);
            let clean: bool = r.get(2);
            let desired = match r.get::<_, Option<&str>>(3) {
                Some(text) => match serde_json::from_str(text) {
                    Ok(rec) => Some(rec),
                    Err(e) => {
                        tracing::error!(%device, "shared desired state unreadable: {e}");
                        None
                    }
                },
                None => None,
            };
            let gap = if clean { 0 } else { CRASH_VERSION_GAP };
            out.insert(
                device,
                Handed {
                    version: version.saturating_add(gap),
                    desired,
                },
            );
        }
        Ok(out)
    }

    /// Records the versions of devices whose partition is given up, cleanly.
    pub async fn give(&self, versions: &[(String, u64)]) -> Result<(), PersistError> {
        let mut client = self.pg.get().await.map_err(pgerr)?;
        let tx = client.transaction().await.map_err(pgerr)?;
        let stmt = tx
            .prepare(
                "INSERT INTO cluster_twins (device, version, clean) VALUES ($1, $2, true)
                 ON CONFLICT (device) DO UPDATE SET clean = true,
                     version = GREATEST(cluster_twins.version, EXCLUDED.version)",
            )
            .await
            .map_err(pgerr)?;
        for (device, version) in versions {
            tx.execute(&stmt, &[device, &version_of(*version)])
                .await
                .map_err(pgerr)?;
        }
        tx.commit().await.map_err(pgerr)
    }
}
