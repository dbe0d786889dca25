//! What the cameras produce, into the agent's delivery: events and snapshots into the durable
//! queue (sent at once, deleted on the hub's ack), health and motion readings into the reading
//! batches of the camera device, online changes into the agent's health.
//!
//! ```text
//! CameraSupervisor -> mpsc<CameraMessage> -> CameraFeed
//!   Event     -> queue entry (kind Event, stream/seq filled in, fsync) -> uplink `events`
//!   Snapshot  -> queue snapshot table (fsync) -> uplink `snapshots/{event}`
//!   Readings  -> batcher (camera_fps, camera_bitrate, camera_frames_lost, motion)
//!   Online    -> CameraHealth (health `devices[]`), health published at once
//! ```
//! Events and snapshots never wait for `batch_max_age`: each is committed and handed to the
//! uplink the moment it arrives. A commit that fails (disk trouble) is retried every second,
//! in order; meanwhile the cameras' outboxes coalesce what they can.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use protocols::batch::Reading;
use protocols::messages::CameraEvent;
use protocols::quantity::Quality;
use tokio::sync::{Notify, mpsc, watch};

use crate::camera::{self, CameraMessage, CameraOutput};
use crate::disk::RateLog;
use crate::metrics::{DeviceStats, Metrics};
use crate::modbus::DeviceSample;
use crate::queue::{EntryKind, Queue, QueueError};
use crate::uplink::Uplink;

/// How long a failed commit waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// The cameras' online state, as the agent's health reports it (`devices[]`).
#[derive(Debug, Default)]
pub struct CameraHealth {
    cameras: std::sync::Mutex<BTreeMap<String, Arc<DeviceStats>>>,
    changed: Notify,
}

impl CameraHealth {
    /// Empty; cameras appear with their first online report.
    pub fn new() -> Arc<CameraHealth> {
        Arc::new(CameraHealth::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<DeviceStats>>> {
        self.cameras.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stats(&self, camera: &str) -> Arc<DeviceStats> {
        self.lock()
            .entry(camera.to_string())
            .or_insert_with(|| DeviceStats::new(camera))
            .clone()
    }

    /// Records a camera going online or offline; wakes the health publisher on a change.
    pub fn set_online(&self, camera: &str, online: bool, now_ms: i64) {
        let s = self.stats(camera);
        if online {
            s.last_ok_ms.store(now_ms, Relaxed);
        }
        if s.set_online(online) != online {
            self.changed.notify_one();
        }
    }

    /// Records pictures seen (a health reading) and the lost-picture counter.
    fn seen(&self, camera: &str, now_ms: i64, frames_lost: Option<u64>) {
        let s = self.stats(camera);
        s.last_ok_ms.store(now_ms, Relaxed);
        if let Some(n) = frames_lost {
            s.errors.store(n, Relaxed);
        }
    }

    /// Forgets cameras that are no longer configured (after a reload).
    pub fn retain(&self, ids: &[String]) {
        self.lock().retain(|id, _| ids.iter().any(|i| i == id));
    }

    /// Every known camera's counters, for the health document.
    pub fn list(&self) -> Vec<Arc<DeviceStats>> {
        self.lock().values().cloned().collect()
    }

    /// Completes when a camera's online state changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

/// The stage. Runs until every sender of its input (the camera supervisor) is gone.
pub struct CameraFeed {
    /// The durable queue.
    pub queue: Arc<Queue>,
    /// The seq of the latest committed entry, for the uplink (shared with the batcher; only
    /// ever moved forward).
    pub committed: watch::Sender<u64>,
    /// The uplink, told of new snapshots.
    pub uplink: Uplink,
    /// The batcher's input.
    pub samples: mpsc::Sender<DeviceSample>,
    /// Online state for health.
    pub health: Arc<CameraHealth>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

/// Moves the shared committed seq forward (the batcher commits too; never backwards, or the
/// uplink would miss an entry).
pub fn advance(committed: &watch::Sender<u64>, seq: u64) {
    committed.send_if_modified(|v| {
        if seq > *v {
            *v = seq;
            true
        } else {
            false
        }
    });
}

impl CameraFeed {
    /// Runs the stage.
    pub async fn run(self, mut input: mpsc::Receiver<CameraMessage>) {
        // While the queue cannot write (a full disk) every retry fails: sum them up.
        let log = RateLog::new("camera commit");
        while let Some(CameraMessage { camera, output }) = input.recv().await {
            match output {
                CameraOutput::Event(ev) => self.event(ev, &log).await,
                CameraOutput::Snapshot { event_id, jpeg, .. } => {
                    self.snapshot(event_id, jpeg, &log).await
                }
                CameraOutput::Readings(r) => self.readings(&camera, r).await,
                CameraOutput::Online(on) => {
                    self.health
                        .set_online(&camera, on, protocols::time::now_ms())
                }
            }
        }
    }

    /// Retries a queue write until it succeeds.
    async fn commit<T: Send + 'static>(
        &self,
        what: &str,
        log: &RateLog,
        write: impl Fn(&Queue) -> Result<T, QueueError> + Send + Sync + Clone + 'static,
    ) -> Option<T> {
        loop {
            let q = self.queue.clone();
            let w = write.clone();
            match tokio::task::spawn_blocking(move || w(&q)).await {
                Ok(Ok(t)) => {
                    log.ok();
                    return Some(t);
                }
                Ok(Err(e)) => {
                    self.metrics.camera_commit_errors.fetch_add(1, Relaxed);
                    log.failed(&format_args!("{what}: {e}; retrying"));
                    tokio::time::sleep(RETRY).await;
                }
                // The runtime is shutting down.
                Err(_) => return None,
            }
        }
    }

    async fn event(&self, ev: CameraEvent, log: &RateLog) {
        let what = format!("camera event {}", ev.snapshot.as_deref().unwrap_or("-"));
        let ev = Arc::new(ev);
        let appended = self
            .commit(&what, log, move |q| {
                let ev = ev.clone();
                q.append(
                    EntryKind::Event,
                    protocols::time::now_ms(),
                    0,
                    move |stream, seq| {
                        let mut e = (*ev).clone();
                        e.stream = Some(stream);
                        e.seq = Some(seq);
                        // A struct of strings and numbers always serializes.
                        serde_json::to_vec(&e).unwrap_or_default()
                    },
                )
            })
            .await;
        if let Some(a) = appended {
            self.metrics.camera_events.fetch_add(1, Relaxed);
            if a.dropped > 0 {
                self.metrics.queue_dropped.fetch_add(a.dropped, Relaxed);
            }
            advance(&self.committed, a.seq);
        }
    }

    async fn snapshot(&self, event_id: String, jpeg: bytes::Bytes, log: &RateLog) {
        let id = event_id.clone();
        let stored = self
            .commit(&format!("snapshot {event_id}"), log, move |q| {
                q.put_snapshot(&id, &jpeg, protocols::time::now_ms())
            })
            .await;
        if let Some(s) = stored {
            self.metrics.camera_snapshots.fetch_add(1, Relaxed);
            if s.dropped > 0 {
                self.metrics.queue_dropped.fetch_add(s.dropped, Relaxed);
            }
            self.uplink.snapshot_stored(event_id);
        }
    }

    async fn readings(&self, camera: &str, readings: Vec<camera::Reading>) {
        let device: Arc<str> = Arc::from(camera);
        let now = protocols::time::now_ms();
        let mut frames_lost = None;
        // One sample per timestamp, in order.
        let mut samples: Vec<DeviceSample> = Vec::new();
        for r in readings {
            if r.quantity == protocols::Quantity::CameraFramesLost {
                frames_lost = Some(r.value.as_f64() as u64);
            }
            let reading = Reading {
                quantity: r.quantity.code(),
                value: r.value,
                quality: Quality::Good,
            };
            match samples.last_mut() {
                Some(s) if s.ts_ms == r.ts_ms => s.readings.push(reading),
                _ => samples.push(DeviceSample {
                    device: device.clone(),
                    ts_ms: r.ts_ms,
                    readings: vec![reading],
                }),
            }
        }
        self.health.seen(camera, now, frames_lost);
        for s in samples {
            if self.samples.send(s).await.is_err() {
                return;
            }
        }
    }
}
