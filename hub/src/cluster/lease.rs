//! Partition leases in PostgreSQL: which hub works which partition, with an epoch that every
//! takeover raises, and the partition's committed position in the log.
//!
//! Times are PostgreSQL's `now()`, one clock for every hub. A hub renews every third of the
//! lease; one whose renewal has failed for two thirds of a lease by its own clock stops its
//! partitions, so it has stopped before anyone can take them over. Positions are written only
//! under the writer's (owner, epoch), so a hub that lost a partition cannot move it back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tokio::sync::mpsc;

use super::custody::Custodian;
use super::worker::{self, Grant, Worker};
use super::{ClusterError, Link};
use crate::shutdown::Signal;
use mqtt_broker::ingress::IngressEvent;

/// Creates the cluster's tables and partition rows if missing (every hub at start; an advisory
/// lock makes concurrent starts wait for each other).
pub async fn create_tables(
    pg: &deadpool_postgres::Pool,
    partitions: u32,
) -> Result<(), ClusterError> {
    let mut client = pg.get().await?;
    let tx = client.transaction().await?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(7201);
         CREATE TABLE IF NOT EXISTS cluster_nodes (
             node text PRIMARY KEY,
             http text NOT NULL DEFAULT '',
             seen timestamptz NOT NULL DEFAULT now());
         CREATE TABLE IF NOT EXISTS cluster_partitions (
             partition integer PRIMARY KEY,
             owner text,
             epoch bigint NOT NULL DEFAULT 0,
             expires timestamptz,
             position bigint NOT NULL DEFAULT 0,
             lag bigint NOT NULL DEFAULT 0);",
    )
    .await?;
    let n = i32::try_from(partitions).unwrap_or(i32::MAX);
    tx.execute(
        "INSERT INTO cluster_partitions (partition) SELECT generate_series(0, $1::int - 1)
         ON CONFLICT DO NOTHING",
        &[&n],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Holds this hub's share of the partitions until `stop`, running a [`Worker`] for each; at
/// `stop` drains them and hands every partition back, so the others take over at once.
/// `custody` takes each partition's alerts, rule state and twins (in its worker, before it
/// consumes, so a round is not held up by many takes) and gives them back after the worker
/// stopped: written for the next owner on a hand-over, only forgotten when the partition was
/// lost (another hub may already hold it, or PostgreSQL is away).
pub async fn run(
    link: Arc<Link>,
    http: String,
    events: mpsc::Sender<IngressEvent>,
    custody: Arc<dyn Custodian>,
    mut stop: Signal,
) {
    let lease = link.settings.lease.0;
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut workers: BTreeMap<u32, Worker> = BTreeMap::new();
    let mut last_renewed = Instant::now();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.recv() => break,
        }
        // A worker that ended by itself (fenced when writing its position) is gone.
        let ended: Vec<u32> = workers
            .iter()
            .filter(|(_, w)| w.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in ended {
            if let Some(w) = workers.remove(&p) {
                w.join().await;
                // Another hub holds it: nothing of ours may be written over its state.
                custody.give(p, false).await;
                link.state.counters.lost.fetch_add(1, Relaxed);
            }
        }
        match round(&link, &http, &mut workers, &events, &custody).await {
            Ok(()) => {
                last_renewed = Instant::now();
                if failing {
                    tracing::info!(node = link.node(), "partition leases renewed again");
                    failing = false;
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(node = link.node(), "partition leases not renewed: {e}");
                    failing = true;
                }
                if last_renewed.elapsed() > lease * 2 / 3 && !workers.is_empty() {
                    tracing::warn!(
                        node = link.node(),
                        partitions = workers.len(),
                        "stopping every partition: leases may expire before they can be renewed"
                    );
                    for (p, w) in std::mem::take(&mut workers) {
                        w.stop().await;
                        // PostgreSQL cannot be reached: forget, do not wait on writes.
                        custody.give(p, false).await;
                        link.state.remove(p);
                        link.state.counters.lost.fetch_add(1, Relaxed);
                    }
                }
            }
        }
    }
    // Hand everything back so the other hubs take over without waiting for expiry.
    for (p, w) in std::mem::take(&mut workers) {
        let epoch = w.epoch();
        w.stop().await;
        custody.give(p, true).await;
        link.state.remove(p);
        if release(&link, p, epoch).await.is_ok() {
            link.state.counters.released.fetch_add(1, Relaxed);
        }
    }
    if let Ok(c) = link.pg.get().await {
        let _ = c
            .execute(
                "UPDATE cluster_nodes SET seen = now() - interval '1 day' WHERE node = $1",
                &[&link.node()],
            )
            .await;
    }
}

/// One round: heartbeat, renew, hand over beyond the share, take up to it.
async fn round(
    link: &Arc<Link>,
    http: &str,
    workers: &mut BTreeMap<u32, Worker>,
    events: &mpsc::Sender<IngressEvent>,
    custody: &Arc<dyn Custodian>,
) -> Result<(), ClusterError> {
    let lease_ms = i64::try_from(link.settings.lease.0.as_millis()).unwrap_or(i64::MAX);
    let client = link.pg.get().await?;
    client
        .execute(
            "INSERT INTO cluster_nodes (node, http, seen) VALUES ($1, $2, now())
             ON CONFLICT (node) DO UPDATE SET http = EXCLUDED.http, seen = now()",
            &[&link.node(), &http],
        )
        .await?;
    let live: i64 = client
        .query_one(
            "SELECT count(*) FROM cluster_nodes WHERE seen > now() - make_interval(secs => $1::bigint / 1000.0)",
            &[&lease_ms],
        )
        .await?
        .get(0);
    let renewed = client
        .query(
            "UPDATE cluster_partitions SET expires = now() + make_interval(secs => $2::bigint / 1000.0)
             WHERE owner = $1 AND expires > now() RETURNING partition, epoch",
            &[&link.node(), &lease_ms],
        )
        .await?;
    let held: BTreeMap<u32, i64> = renewed
        .iter()
        .map(|r| {
            (
                u32::try_from(r.get::<_, i32>(0)).unwrap_or(0),
                r.get::<_, i64>(1),
            )
        })
        .collect();
    // Lost: running here, but no longer ours at this epoch.
    let lost: Vec<u32> = workers
        .iter()
        .filter(|(p, w)| held.get(p) != Some(&w.epoch()))
        .map(|(p, _)| *p)
        .collect();
    for p in lost {
        if let Some(w) = workers.remove(&p) {
            tracing::warn!(node = link.node(), partition = p, "partition lost");
            w.stop().await;
            custody.give(p, false).await;
            link.state.remove(p);
            link.state.counters.lost.fetch_add(1, Relaxed);
        }
    }
    let partitions = i64::from(link.settings.partitions);
    let share = usize::try_from((partitions + live.max(1) - 1) / live.max(1)).unwrap_or(0);
    if workers.len() > share {
        // Hand over the highest: the newcomer takes them from the free pool.
        let extra: Vec<u32> = workers
            .keys()
            .rev()
            .take(workers.len() - share)
            .copied()
            .collect();
        for p in extra {
            if let Some(w) = workers.remove(&p) {
                let epoch = w.epoch();
                w.stop().await;
                custody.give(p, true).await;
                link.state.remove(p);
                release(link, p, epoch).await?;
                link.state.counters.released.fetch_add(1, Relaxed);
                tracing::info!(node = link.node(), partition = p, "partition handed over");
            }
        }
    } else if workers.len() < share {
        let want = i64::try_from(share - workers.len()).unwrap_or(0);
        let granted = client
            .query(
                "UPDATE cluster_partitions SET owner = $1, epoch = epoch + 1,
                     expires = now() + make_interval(secs => $2::bigint / 1000.0)
                 WHERE partition IN (
                     SELECT partition FROM cluster_partitions
                     WHERE owner IS NULL OR expires IS NULL OR expires < now()
                     ORDER BY partition LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING partition, epoch, position",
                &[&link.node(), &lease_ms, &want],
            )
            .await?;
        for r in granted {
            let grant = Grant {
                partition: u32::try_from(r.get::<_, i32>(0)).unwrap_or(0),
                epoch: r.get(1),
                position: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
            };
            tracing::info!(
                node = link.node(),
                partition = grant.partition,
                epoch = grant.epoch,
                from = grant.position,
                "partition taken"
            );
            link.state.counters.acquired.fetch_add(1, Relaxed);
            workers.insert(
                grant.partition,
                worker::start(link.clone(), grant, events.clone(), custody.clone()),
            );
        }
    }
    Ok(())
}

/// Gives a partition up (only if it is still ours at `epoch`).
async fn release(link: &Link, partition: u32, epoch: i64) -> Result<(), ClusterError> {
    let client = link.pg.get().await?;
    client
        .execute(
            "UPDATE cluster_partitions SET owner = NULL, expires = NULL
             WHERE partition = $1 AND owner = $2 AND epoch = $3",
            &[&(partition as i32), &link.node(), &epoch],
        )
        .await?;
    Ok(())
}
