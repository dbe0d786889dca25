//! Video sensing at the hub: camera events and snapshots from agents, the camera catalog.
//!
//! ```text
//! v1/agents/{id}/events ─▶ decode (pipeline::decode::camera: parse, check camera ∈ agent) ─▶
//!   commit: archive.record_event (fsync) then the origin (agent, stream, seq) into the series
//!   store's dedup, then the seq in the coalesced Ack.seqs; feed v1/feeds/camera/{id} (motion)
//!   and the live `event`
//! v1/agents/{id}/snapshots/{event} ─▶ decode (a whole JPEG, its size) ─▶ commit:
//!   archive.store_snapshot (file + index, fsync), then the event id in Ack.snapshots; the live
//!   `event` again, now with its snapshot
//! ```
//! This module is the service the pipeline calls ([`Video`], [`Work`]); it knows nothing of
//! the pipeline. Events share the agent's sequence numbers with batches, so they are
//! deduplicated by the same origin index as batches (the series store's), which keeps that
//! index's watermark contiguous. Recording an event is idempotent (phases merge), so a crash
//! between the archive commit and the origin commit only means the redelivery is merged again.
//!
//! The catalog is in [`catalog`] (its HTTP routes in `api::cameras`); an app sees a camera
//! (catalog entry, snapshots, events) only with a grant matching `v1/feeds/camera/{id}`.

pub mod archive;
pub mod catalog;
pub mod events;
pub mod snapshots;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use protocols::messages::{CameraEvent, EventPhase};
use protocols::{Quality, Quantity, Value};

use crate::config::HubConfig;
use crate::feeds::{NormValue, write_feed};
use crate::outbound::{LiveKind, Outlet};
use crate::registry::{AgentIdx, DeviceIdx, Registry};
use archive::{Archive, Pruned};
use events::EventRecord;

/// The directory under `data_dir`.
pub const VIDEO_DIR: &str = "video";
/// Longest pause between retention passes.
const PRUNE_EVERY_MAX: Duration = Duration::from_secs(600);

/// A video failure.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    /// A file operation failed.
    #[error("video I/O: {0}")]
    Io(String),
    /// The archive database failed.
    #[error("video archive: {0}")]
    Db(String),
    /// Another process holds the archive.
    #[error("{0}: the video archive is open in another process")]
    Locked(PathBuf),
    /// An agent used one event id for two cameras.
    #[error("event id `{id}` already belongs to camera `{camera}`")]
    IdClash {
        /// The id.
        id: String,
        /// The camera it belongs to.
        camera: String,
    },
    /// A blocking task failed.
    #[error("video task: {0}")]
    Task(String),
}

impl From<redb::Error> for VideoError {
    fn from(e: redb::Error) -> VideoError {
        VideoError::db(e)
    }
}

impl VideoError {
    fn db(e: impl std::fmt::Display) -> VideoError {
        VideoError::Db(e.to_string())
    }
}

#[derive(Debug, Default)]
struct Counters {
    events: AtomicU64,
    events_unchanged: AtomicU64,
    snapshots: AtomicU64,
    snapshots_redelivered: AtomicU64,
    snapshot_bytes: AtomicU64,
    pruned_events: AtomicU64,
    pruned_snapshots: AtomicU64,
    failures: AtomicU64,
}

/// The video service: archive, catalog state and publishing of camera events.
pub struct Video {
    registry: Arc<Registry>,
    outlet: Outlet,
    archive: Archive,
    event_retention: Duration,
    snapshot_retention: Duration,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Video {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Video")
            .field("archive", &self.archive)
            .finish()
    }
}

impl Video {
    /// Opens the archive under `data_dir/video` (blocking: call from a blocking thread or at
    /// start). Events are kept for `[hub] retention`, snapshots for `[hub] snapshot_retention`.
    pub fn open(
        config: &HubConfig,
        registry: Arc<Registry>,
        outlet: Outlet,
    ) -> Result<Arc<Video>, VideoError> {
        let dir = config.hub.data_dir.join(VIDEO_DIR);
        let cameras: Vec<&str> = registry
            .devices()
            .iter()
            .filter(|d| catalog::is_camera(d))
            .map(|d| &*d.id)
            .collect();
        let archive = Archive::open(&dir, cameras)?;
        Ok(Arc::new(Video {
            registry,
            outlet,
            archive,
            event_retention: config.hub.retention.0,
            snapshot_retention: config.hub.snapshot_retention.0,
            counters: Arc::default(),
        }))
    }

    /// The archive.
    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Applies retention once: events older than `retention`, snapshots older than
    /// `snapshot_retention` (blocking).
    pub fn prune(&self, now_ms: i64) -> Result<Pruned, VideoError> {
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        let p = self.archive.prune(
            now_ms.saturating_sub(ms(self.event_retention)),
            now_ms.saturating_sub(ms(self.snapshot_retention)),
        )?;
        self.counters.pruned_events.fetch_add(p.events, Relaxed);
        self.counters
            .pruned_snapshots
            .fetch_add(p.snapshots, Relaxed);
        if p != Pruned::default() {
            tracing::info!(
                events = p.events,
                snapshots = p.snapshots,
                "video retention"
            );
        }
        Ok(p)
    }

    /// Runs retention now and then every `min(snapshot_retention / 4, 10 min)` (at least 1 s)
    /// until `stop` is raised.
    pub async fn run_retention(self: Arc<Video>, mut stop: crate::shutdown::Signal) {
        let every = (self.snapshot_retention.min(self.event_retention) / 4)
            .clamp(Duration::from_secs(1), PRUNE_EVERY_MAX);
        loop {
            let v = self.clone();
            match tokio::task::spawn_blocking(move || v.prune(protocols::time::now_ms())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!("video retention: {e}"),
                Err(e) => tracing::error!("video retention task: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.recv() => return,
            }
        }
    }

    /// The collector of the `hub_video_*` families for the `/metrics` registry. It holds the
    /// counters, not the service (nor its archive).
    pub fn collector(&self) -> VideoCollector {
        VideoCollector(self.counters.clone())
    }

    /// Publishes an event change: the feed `v1/feeds/camera/{id}` with the motion value and
    /// the event, and the live `event` with the whole record.
    fn publish_event(&self, device: DeviceIdx, ev: &CameraEvent, record: &EventRecord) {
        let d = self.registry.device(device);
        if ev.event_type == "motion" {
            let mut doc = Vec::with_capacity(512);
            let motion = NormValue {
                quantity: Quantity::Motion,
                value: Value::Bool(ev.phase != EventPhase::End),
                quality: Quality::Good,
            };
            write_feed(&mut doc, d, ev.ts, ev.seq, &[motion]);
            // Reopen the document to add what moved.
            doc.pop();
            doc.extend_from_slice(b",\"event\":");
            let event = serde_json::json!({
                "id": record.id,
                "type": ev.event_type,
                "phase": ev.phase,
                "score": ev.score,
                "boxes": ev.boxes,
            });
            let _ = serde_json::to_writer(&mut doc, &event);
            doc.push(b'}');
            self.outlet.publish(&d.feed_topic, Bytes::from(doc), false);
        }
        self.publish_live(device, record);
    }

    fn publish_live(&self, device: DeviceIdx, record: &EventRecord) {
        let d = self.registry.device(device);
        if let Ok(bytes) = serde_json::to_vec(record) {
            self.outlet
                .publish_live(LiveKind::Event, &d.feed_topic, Bytes::from(bytes));
        }
    }
}

/// Work for the store and publish stages of the pipeline, carried in its `Prepared`.
pub enum Work {
    /// An event phase to record.
    Event {
        /// The sending agent (the camera's).
        agent: AgentIdx,
        /// The camera.
        device: DeviceIdx,
        /// The event id.
        id: String,
        /// The checked phase.
        event: CameraEvent,
        /// The record once stored, if the phase changed it.
        stored: Option<EventRecord>,
    },
    /// A snapshot to store.
    Snapshot {
        /// The sending agent.
        agent: AgentIdx,
        /// The event id.
        id: String,
        /// The JPEG.
        jpeg: Bytes,
        /// Its size.
        size: (u32, u32),
        /// The event with its snapshot, once stored and if the event is known.
        stored: Option<EventRecord>,
    },
    /// A refused snapshot (dead-lettered): acknowledged so the agent stops sending it.
    Refused {
        /// The sending agent.
        agent: AgentIdx,
        /// The event id.
        id: String,
    },
}

impl Work {
    /// Makes the work durable in `video`'s archive (blocking I/O on the blocking pool). The
    /// pipeline appends the message's origin only after this succeeded.
    pub async fn persist(&mut self, video: &Arc<Video>) -> Result<(), VideoError> {
        match self {
            Work::Event {
                agent,
                id,
                event,
                stored,
                ..
            } => {
                let v = video.clone();
                let agent = v.registry.agent(*agent).id.clone();
                let (i, e) = (id.clone(), event.clone());
                let r = tokio::task::spawn_blocking(move || v.archive.record_event(&agent, &i, &e))
                    .await
                    .map_err(|e| VideoError::Task(e.to_string()))?;
                match r {
                    Ok(r) if r.changed => {
                        video.counters.events.fetch_add(1, Relaxed);
                        *stored = Some(r.record);
                    }
                    Ok(_) => {
                        video.counters.events_unchanged.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        video.counters.failures.fetch_add(1, Relaxed);
                        return Err(e);
                    }
                }
                Ok(())
            }
            Work::Snapshot {
                agent,
                id,
                jpeg,
                size,
                stored,
            } => {
                let v = video.clone();
                let a = v.registry.agent(*agent).id.clone();
                let (i, j, s) = (id.clone(), jpeg.clone(), *size);
                let r = tokio::task::spawn_blocking(move || {
                    v.archive
                        .store_snapshot(&a, &i, &j, s, protocols::time::now_ms())
                })
                .await
                .map_err(|e| VideoError::Task(e.to_string()))?;
                match r {
                    Ok(r) if r.fresh => {
                        video.counters.snapshots.fetch_add(1, Relaxed);
                        video
                            .counters
                            .snapshot_bytes
                            .fetch_add(jpeg.len() as u64, Relaxed);
                        *stored = r.record;
                    }
                    Ok(_) => {
                        video.counters.snapshots_redelivered.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        video.counters.failures.fetch_add(1, Relaxed);
                        return Err(e);
                    }
                }
                Ok(())
            }
            Work::Refused { .. } => Ok(()),
        }
    }

    /// After durable: publishes what changed (not for a duplicate) and returns the snapshot
    /// acknowledgement owed to the agent, if any.
    pub fn after_durable(&self, video: &Video, duplicate: bool) -> Option<(AgentIdx, String)> {
        match self {
            Work::Event {
                device,
                event,
                stored,
                ..
            } => {
                if let (false, Some(record)) = (duplicate, stored) {
                    video.publish_event(*device, event, record);
                }
                None
            }
            Work::Snapshot {
                agent, id, stored, ..
            } => {
                if let Some(record) = stored
                    && let Some(d) = video.registry.device_by_id(&record.camera)
                {
                    video.publish_live(d.idx, record);
                }
                Some((*agent, id.clone()))
            }
            Work::Refused { agent, id } => Some((*agent, id.clone())),
        }
    }
}

/// Exports the `hub_video_*` counters at scrape time; see [`Video::collector`].
#[derive(Debug)]
pub struct VideoCollector(Arc<Counters>);

impl prometheus_client::collector::Collector for VideoCollector {
    fn encode(&self, mut e: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        let c = &*self.0;
        for (name, help, v) in [
            ("video_events", "Camera event phases recorded.", &c.events),
            (
                "video_events_unchanged",
                "Camera event phases that changed nothing (redeliveries).",
                &c.events_unchanged,
            ),
            ("video_snapshots", "Snapshots stored.", &c.snapshots),
            (
                "video_snapshots_redelivered",
                "Snapshots received again after they were stored.",
                &c.snapshots_redelivered,
            ),
            (
                "video_snapshot_bytes",
                "Bytes of snapshots stored.",
                &c.snapshot_bytes,
            ),
            (
                "video_pruned_events",
                "Events removed by retention.",
                &c.pruned_events,
            ),
            (
                "video_pruned_snapshots",
                "Snapshots removed by retention.",
                &c.pruned_snapshots,
            ),
            (
                "video_failures",
                "Events or snapshots that could not be stored (left unacknowledged).",
                &c.failures,
            ),
        ] {
            crate::metrics::encode_counter(&mut e, name, help, v.load(Relaxed))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod collector_tests {
    use super::*;

    #[test]
    fn renders_the_video_counters() {
        let c = Arc::new(Counters::default());
        c.events.fetch_add(3, Relaxed);
        c.snapshot_bytes.fetch_add(4096, Relaxed);
        let text = crate::metrics::render_collector(VideoCollector(c));
        assert!(
            text.contains(
                "# HELP hub_video_events_total Camera event phases recorded.\n\
                 # TYPE hub_video_events_total counter\n\
                 hub_video_events_total 3\n"
            ),
            "{text}"
        );
        assert!(text.contains("hub_video_snapshot_bytes_total 4096\n"));
        assert!(text.contains("hub_video_failures_total 0\n"));
        assert_eq!(text.matches("# TYPE ").count(), 8);
        assert_eq!(text.matches(" counter\n").count(), 8);
    }
}
