//! What a hub carries for the devices of the partitions it works, besides the log: their open
//! alerts, their rule state, and their twins (desired state and version from PostgreSQL,
//! reported values refreshed from the store). [`Custody::take`] runs when a partition is granted, before its
//! worker starts; [`Custody::give`] after the worker has stopped and before the lease is given
//! back, so the next owner finds every change of this hub written.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{device_key, partition_of};
use crate::alerts::AlertBook;
use crate::registry::{DeviceIdx, Registry};
use crate::rules::Rules;
use crate::twin::Twins;
use series_store::SeriesStore;

/// Takes and gives the per-device state of partitions (the lease keeper's hooks).
pub trait Custodian: Send + Sync + 'static {
    /// The partition was granted: load what the previous owner left.
    fn take(&self, partition: u32) -> BoxFuture<'_, ()>;
    /// The partition's worker has stopped: write what this hub changed (`write`: a hand-over;
    /// not when the partition was lost) and forget it.
    fn give(&self, partition: u32, write: bool) -> BoxFuture<'_, ()>;
}

/// The alert book and the rule engine of one hub, with the store rule state is warmed from.
pub struct Custody<S> {
    /// The devices and their partition keys.
    pub registry: Arc<Registry>,
    /// Open alerts.
    pub alerts: Arc<AlertBook>,
    /// Rule state.
    pub rules: Arc<Rules>,
    /// Twins (their reported values are refreshed from the store).
    pub twins: Arc<Twins>,
    /// The shared store (readings the rules resume from).
    pub store: Arc<S>,
    /// Partitions in the cluster.
    pub partitions: u32,
}

/// The devices whose events fall in `partition`: a device behind an agent goes with its agent
/// (the key of its batches), a direct device with itself.
pub fn devices_of(registry: &Registry, partitions: u32, partition: u32) -> Vec<DeviceIdx> {
    registry
        .devices()
        .iter()
        .filter(|d| partition_of(device_key(registry, d), partitions) == partition)
        .map(|d| d.idx)
        .collect()
}

impl<S: SeriesStore> Custodian for Custody<S> {
    fn take(&self, partition: u32) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let devices = devices_of(&self.registry, self.partitions, partition);
            if devices.is_empty() {
                return;
            }
            let now = protocols::time::now_ms();
            match self
                .alerts
                .adopt(&devices, &self.rules.configs(), now)
                .await
            {
                Ok(n) if n > 0 => {
                    tracing::info!(partition, alerts = n, "open alerts taken over")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    partition,
                    "open alerts not loaded (an episode in progress may be raised again): {e}"
                ),
            }
            if let Err(e) = self.twins.adopt(&devices, now).await {
                tracing::warn!(
                    partition,
                    "desired state not loaded (this hub goes on from its own): {e}"
                );
            }
            // Rule state before the worker consumes: readings must meet warmed rules.
            let (rules, store) = (self.rules.clone(), self.store.clone());
            let warm = devices.clone();
            let warmed = tokio::task::spawn_blocking(move || rules.adopt(&warm, &*store, now));
            if let Err(e) = warmed.await {
                tracing::error!(partition, "rule state not taken over: {e}");
            }
            // Reported values meanwhile: a newer reading from the log always wins, so this
            // need not hold up the partition (one store read per device).
            let (twins, store, registry) = (
                self.twins.clone(),
                self.store.clone(),
                self.registry.clone(),
            );
            tokio::task::spawn_blocking(move || {
                for d in &devices {
                    let id = &registry.device(*d).id;
                    match store.latest(id) {
                        Ok(latest) => {
                            if twins.refresh_reported(*d, &latest) {
                                twins.publish(*d);
                            }
                        }
                        Err(e) => tracing::warn!(device = %id, "twin not refreshed: {e}"),
                    }
                }
            });
        })
    }

    fn give(&self, partition: u32, write: bool) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let devices = devices_of(&self.registry, self.partitions, partition);
            if devices.is_empty() {
                return;
            }
            self.rules.release(&devices);
            if let Err(e) = self.twins.release(&devices, write).await {
                tracing::warn!(partition, "twin versions not handed over: {e}");
            }
            if !self.alerts.release(&devices, write).await {
                tracing::warn!(
                    partition,
                    "alert changes not written before the hand-over; the next owner goes on from the last written"
                );
            }
        })
    }
}
