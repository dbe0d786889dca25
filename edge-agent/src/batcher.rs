//! Readings -> batches: collects samples from every poller and seals a batch when it holds
//! `batch_max_readings` readings or its oldest reading is `batch_max_age` old, then commits it
//! to the durable queue (fsync) and tells the uplink its seq.
//!
//! Sealed batches wait in memory while the queue cannot be written (a failing disk, or free
//! space below `min_free_disk`): polling goes on, batches keep their normal size, and once the
//! queue works again they are committed oldest first. The buffer is bounded by
//! `buffer_readings` (open batch included): past it the oldest samples are dropped and counted
//! (`buffer_dropped_readings`), so a dead disk cannot eat the memory of a small box.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use protocols::batch::{DeviceReadings, Sample};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::disk::RateLog;
use crate::metrics::Metrics;
use crate::modbus::DeviceSample;
use crate::queue::Queue;

/// How often a batcher that cannot write checks the disk again.
const RETRY: Duration = Duration::from_secs(1);
/// Free space that must come back after a queue failure before the queue is asked to reopen
/// without waiting out its backoff.
const SPACE_BACK: u64 = 1 << 20;

/// When a batch is sealed, and how much waits in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Readings per batch.
    pub max_readings: usize,
    /// Age of the oldest reading.
    pub max_age: Duration,
    /// Estimated encoded size: a batch must stay far below the hub's 1 MiB limit and a small
    /// fraction of the queue budget (an entry larger than the budget could never be stored).
    pub max_bytes: usize,
    /// Readings held in memory at most (open and sealed batches) while the queue cannot be
    /// written.
    pub buffer_readings: usize,
    /// Free bytes on the data directory below which nothing is written (0: no watermark).
    pub min_free_disk: u64,
}

impl BatchLimits {
    /// Limits for a queue budget: at most 512 KiB or an eighth of the budget per batch; the
    /// default buffer and no watermark (see [`BatchLimits::buffered`]).
    pub fn new(max_readings: usize, max_age: Duration, queue_max_bytes: u64) -> BatchLimits {
        BatchLimits {
            max_readings,
            max_age,
            max_bytes: ((queue_max_bytes / 8) as usize).clamp(4096, 512 << 10),
            buffer_readings: crate::config::DEFAULT_BUFFER_READINGS.max(max_readings),
            min_free_disk: 0,
        }
    }

    /// With a buffer of `buffer_readings` (at least one batch) and a free-space watermark.
    pub fn buffered(mut self, buffer_readings: usize, min_free_disk: u64) -> BatchLimits {
        self.buffer_readings = buffer_readings.max(self.max_readings);
        self.min_free_disk = min_free_disk;
        self
    }
}

/// Requests to the batcher.
#[derive(Debug)]
pub enum BatcherControl {
    /// Seal and commit what is open now; answer when it is on disk.
    Flush(oneshot::Sender<()>),
    /// New limits (after a reload).
    Limits(BatchLimits),
}

/// The batch being filled.
#[derive(Debug, Default)]
pub struct OpenBatch {
    devices: Vec<DeviceReadings>,
    index: HashMap<Arc<str>, usize>,
    readings: usize,
    bytes: usize,
    opened: Option<Instant>,
}

impl OpenBatch {
    /// Adds a sample, grouped under its device.
    pub fn push(&mut self, s: DeviceSample) {
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
        }
        self.readings += s.readings.len();
        // Upper bounds of the postcard encoding: 10 (ts) + 1 (count) per sample, 1 + 1 + 9 + 1
        // per reading, the name and its length per device.
        self.bytes += 11 + 12 * s.readings.len();
        let i = match self.index.get(&s.device) {
            Some(&i) => i,
            None => {
                self.bytes += s.device.len() + 2;
                self.devices.push(DeviceReadings {
                    device: s.device.to_string(),
                    samples: Vec::new(),
                });
                self.index.insert(s.device.clone(), self.devices.len() - 1);
                self.devices.len() - 1
            }
        };
        self.devices[i].samples.push(Sample {
            ts_ms: s.ts_ms,
            readings: s.readings,
        });
    }

    /// Readings held.
    pub fn readings(&self) -> usize {
        self.readings
    }

    /// Estimated encoded size.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the first reading arrived.
    pub fn opened(&self) -> Option<Instant> {
        self.opened
    }

    /// Takes the contents, leaving the batch empty.
    pub fn take(&mut self) -> Vec<DeviceReadings> {
        self.index.clear();
        self.readings = 0;
        self.bytes = 0;
        self.opened = None;
        std::mem::take(&mut self.devices)
    }

    /// Drops the oldest sample of each device until at most `max` readings remain.
    fn shed(&mut self, max: usize) -> usize {
        let mut shed = 0;
        while self.readings > max {
            let mut progressed = false;
            for d in &mut self.devices {
                if self.readings <= max {
                    break;
                }
                if !d.samples.is_empty() {
                    let s = d.samples.remove(0);
                    self.readings -= s.readings.len();
                    self.bytes = self.bytes.saturating_sub(11 + 12 * s.readings.len());
                    shed += 1;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        shed
    }
}

/// The batcher stage. Runs until its sample input closes, then commits what is left.
pub struct Batcher {
    /// Agent id written into every batch.
    pub agent: String,
    /// The durable queue.
    pub queue: Arc<Queue>,
    /// The queue's directory, whose free space is watched.
    pub data_dir: PathBuf,
    /// Seal limits.
    pub limits: BatchLimits,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The seq of the latest committed entry, for the uplink.
    pub committed: watch::Sender<u64>,
}

/// Batches sealed and not yet committed, oldest first, and the failure bookkeeping.
#[derive(Debug)]
struct Backlog {
    sealed: VecDeque<OpenBatch>,
    log: RateLog,
    /// Free bytes when the queue last failed: more free space since is a reason to reopen it
    /// now.
    free_at_failure: Option<u64>,
}

impl Backlog {
    fn readings(&self) -> usize {
        self.sealed.iter().map(|b| b.readings()).sum()
    }
}

impl Batcher {
    /// Runs the stage.
    pub async fn run(
        mut self,
        mut samples: mpsc::Receiver<DeviceSample>,
        mut control: mpsc::Receiver<BatcherControl>,
    ) {
        let mut open = OpenBatch::default();
        let mut backlog = Backlog {
            sealed: VecDeque::new(),
            log: RateLog::new("queue commit"),
            free_at_failure: None,
        };
        let mut retry_at: Option<Instant> = None;
        self.metrics
            .disk
            .buffer_max_readings
            .store(self.limits.buffer_readings as u64, Relaxed);
        loop {
            let deadline = [open.opened().map(|o| o + self.limits.max_age), retry_at]
                .into_iter()
                .flatten()
                .min();
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                s = samples.recv() => match s {
                    Some(s) => {
                        open.push(s);
                        let full = open.readings() >= self.limits.max_readings
                            || open.bytes() >= self.limits.max_bytes;
                        if full {
                            backlog.sealed.push_back(std::mem::take(&mut open));
                            // While retrying, the batch waits for the retry: one failing
                            // attempt per second, not one per batch.
                            if retry_at.is_none() {
                                retry_at = self.drain(&mut backlog).await;
                            }
                        }
                    }
                    None => {
                        backlog.sealed.push_back(std::mem::take(&mut open));
                        self.drain(&mut backlog).await;
                        self.bound(&mut open, &mut backlog);
                        return;
                    }
                },
                c = control.recv() => match c {
                    Some(BatcherControl::Flush(done)) => {
                        backlog.sealed.push_back(std::mem::take(&mut open));
                        retry_at = self.drain(&mut backlog).await;
                        let _ = done.send(());
                    }
                    Some(BatcherControl::Limits(l)) => {
                        self.limits = l;
                        self.metrics
                            .disk
                            .buffer_max_readings
                            .store(l.buffer_readings as u64, Relaxed);
                    }
                    None => {}
                },
                _ = timer => {
                    let aged = open
                        .opened()
                        .is_some_and(|o| Instant::now() >= o + self.limits.max_age);
                    if aged {
                        backlog.sealed.push_back(std::mem::take(&mut open));
                    }
                    // While a retry is pending, a sealed batch waits for it.
                    if retry_at.map_or(aged, |r| Instant::now() >= r) {
                        retry_at = self.drain(&mut backlog).await;
                    }
                }
            }
            self.bound(&mut open, &mut backlog);
        }
    }

    /// Keeps what waits in memory within `buffer_readings`: drops the oldest samples first.
    fn bound(&self, open: &mut OpenBatch, backlog: &mut Backlog) {
        let max = self.limits.buffer_readings;
        let mut total = open.readings() + backlog.readings();
        let mut dropped = 0usize;
        while total > max {
            let excess = total - max;
            let Some(front) = backlog.sealed.front_mut() else {
                // Only the open batch is left: it is at most one batch, which the buffer holds
                // by construction; shed it anyway if the limits shrank.
                let before = open.readings();
                open.shed(max);
                dropped += before - open.readings();
                break;
            };
            if front.readings() <= excess {
                dropped += front.readings();
                total -= front.readings();
                backlog.sealed.pop_front();
            } else {
                let before = front.readings();
                front.shed(before - excess);
                dropped += before - front.readings();
                total -= before - front.readings();
            }
        }
        if dropped > 0 {
            self.metrics
                .disk
                .buffer_dropped_readings
                .fetch_add(dropped as u64, Relaxed);
        }
        self.metrics
            .disk
            .buffered_readings
            .store((open.readings() + backlog.readings()) as u64, Relaxed);
    }

    /// Commits the sealed batches, oldest first; stops at the first failure (or while free
    /// space is below the watermark) and returns when to try again.
    async fn drain(&mut self, backlog: &mut Backlog) -> Option<Instant> {
        while backlog.sealed.front().is_some_and(|b| b.readings() == 0) {
            backlog.sealed.pop_front();
        }
        if backlog.sealed.is_empty() {
            return None;
        }
        let (dir, min_free) = (self.data_dir.clone(), self.limits.min_free_disk);
        let disk = self.metrics.clone();
        let writable = tokio::task::spawn_blocking(move || disk.disk.check(&dir, min_free))
            .await
            .unwrap_or(true);
        if let (Some(before), Some(now)) = (backlog.free_at_failure, self.metrics.disk.free())
            && now >= before.saturating_add(SPACE_BACK)
        {
            // Space came back: no reason to wait out the rest of the reopen backoff.
            self.queue.retry_now();
            backlog.free_at_failure = Some(now);
        }
        if !writable {
            return Some(Instant::now() + RETRY);
        }
        while let Some(batch) = backlog.sealed.pop_front() {
            if batch.readings() == 0 {
                continue;
            }
            match self.commit(batch).await {
                Ok(()) => {
                    backlog.log.ok();
                    backlog.free_at_failure = None;
                }
                Err((batch, e)) => {
                    backlog.sealed.push_front(batch);
                    backlog.log.failed(&e);
                    backlog.free_at_failure = self.metrics.disk.free();
                    self.metrics.disk.set_queue(&self.queue.condition());
                    return Some(Instant::now() + RETRY);
                }
            }
        }
        self.metrics.disk.set_queue(&self.queue.condition());
        None
    }

    /// Commits one batch; on failure hands it back with the reason.
    async fn commit(&mut self, mut batch: OpenBatch) -> Result<(), (OpenBatch, String)> {
        let readings = batch.readings();
        let opened = batch.opened();
        let devices = batch.take();
        let queue = self.queue.clone();
        let agent = self.agent.clone();
        let now = protocols::time::now_ms();
        let result = tokio::task::spawn_blocking(move || {
            let r = queue.append_batch(&agent, devices.clone(), now);
            (r, devices)
        })
        .await;
        let (error, devices) = match result {
            Ok((Ok(a), _)) => {
                self.metrics.batches_committed.fetch_add(1, Relaxed);
                self.metrics
                    .readings_committed
                    .fetch_add(readings as u64, Relaxed);
                if a.dropped > 0 {
                    self.metrics.queue_dropped.fetch_add(a.dropped, Relaxed);
                    tracing::warn!(
                        dropped = a.dropped,
                        "queue budget full: dropped the oldest entries"
                    );
                }
                crate::camera_feed::advance(&self.committed, a.seq);
                return Ok(());
            }
            Ok((Err(e), devices)) => (e.to_string(), devices),
            // The task panicked: its readings are gone with it.
            Err(join) => (format!("commit task failed: {join}"), Vec::new()),
        };
        self.metrics.commit_errors.fetch_add(1, Relaxed);
        for d in devices {
            let device: Arc<str> = Arc::from(d.device.as_str());
            for s in d.samples {
                batch.push(DeviceSample {
                    device: device.clone(),
                    ts_ms: s.ts_ms,
                    readings: s.readings,
                });
            }
        }
        batch.opened = opened;
        Err((batch, error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::batch::Reading;
    use protocols::{Quality, Value};

    fn sample(dev: &str, ts: i64, n: usize) -> DeviceSample {
        DeviceSample {
            device: Arc::from(dev),
            ts_ms: ts,
            readings: (0..n)
                .map(|i| Reading {
                    quantity: 1,
                    value: Value::Number(i as f64),
                    quality: Quality::Good,
                })
                .collect(),
        }
    }

    #[test]
    fn groups_by_device_in_arrival_order() {
        let mut b = OpenBatch::default();
        b.push(sample("A", 1, 2));
        b.push(sample("B", 1, 1));
        b.push(sample("A", 2, 3));
        assert_eq!(b.readings(), 6);
        let d = b.take();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].device, "A");
        assert_eq!(
            d[0].samples.iter().map(|s| s.ts_ms).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(b.readings(), 0);
        assert!(b.opened().is_none());
    }

    #[test]
    fn the_size_estimate_bounds_the_encoding() {
        let mut b = OpenBatch::default();
        for t in 0..50 {
            b.push(sample("WL-0001", 1_795_334_400_000 + t, 7));
            b.push(sample("SL-0001", -t, 3));
        }
        let est = b.bytes();
        let real = protocols::batch::encode(&protocols::batch::AgentBatch {
            agent: "AG-0001".into(),
            stream: u64::MAX,
            seq: u64::MAX,
            devices: b.take(),
        })
        .len();
        assert!(
            real <= est + 64,
            "estimate {est} below the real {real} bytes"
        );
        assert_eq!(
            BatchLimits::new(2000, Duration::from_secs(1), 65536).max_bytes,
            8192
        );
        assert_eq!(
            BatchLimits::new(2000, Duration::from_secs(1), 256 << 20).max_bytes,
            512 << 10
        );
    }

    #[test]
    fn shedding_drops_oldest_samples_first() {
        let mut b = OpenBatch::default();
        for t in 0..10 {
            b.push(sample("A", t, 10));
        }
        assert_eq!(b.shed(35), 7);
        let d = b.take();
        assert_eq!(
            d[0].samples.iter().map(|s| s.ts_ms).collect::<Vec<_>>(),
            [7, 8, 9]
        );
    }

    #[tokio::test]
    async fn seals_by_count_and_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(Queue::open(dir.path(), 1 << 20, 1 << 16).unwrap());
        let (committed, mut seen) = watch::channel(0);
        let b = Batcher {
            agent: "AG-1".into(),
            queue: queue.clone(),
            data_dir: dir.path().to_owned(),
            limits: BatchLimits::new(10, Duration::from_millis(200), 1 << 20),
            metrics: Metrics::new(),
            committed,
        };
        let (tx, rx) = mpsc::channel(16);
        let (_ctl, crx) = mpsc::channel(1);
        let task = tokio::spawn(b.run(rx, crx));
        tx.send(sample("A", 1, 6)).await.unwrap();
        tx.send(sample("A", 2, 6)).await.unwrap();
        // 12 >= 10: sealed at once.
        seen.wait_for(|&s| s == 1).await.unwrap();
        let start = Instant::now();
        tx.send(sample("A", 3, 1)).await.unwrap();
        seen.wait_for(|&s| s == 2).await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(150),
            "sealed by age"
        );
        drop(tx);
        task.await.unwrap();
        let s = queue.stats().unwrap();
        assert_eq!((s.depth, s.readings), (2, 13));
    }

    #[test]
    fn the_buffer_drops_the_oldest_readings_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(Queue::open(dir.path(), 1 << 20, 1 << 16).unwrap());
        let b = Batcher {
            agent: "AG-1".into(),
            queue,
            data_dir: dir.path().to_owned(),
            limits: BatchLimits::new(10, Duration::from_millis(200), 1 << 20).buffered(25, 0),
            metrics: Metrics::new(),
            committed: watch::channel(0).0,
        };
        let mut backlog = Backlog {
            sealed: VecDeque::new(),
            log: RateLog::new("queue commit"),
            free_at_failure: None,
        };
        // Three sealed batches of 10 readings (two samples of 5 each), 5 open: 35 > 25.
        for t in 0..3 {
            let mut batch = OpenBatch::default();
            batch.push(sample("A", 2 * t, 5));
            batch.push(sample("A", 2 * t + 1, 5));
            backlog.sealed.push_back(batch);
        }
        let mut open = OpenBatch::default();
        open.push(sample("A", 6, 5));
        b.bound(&mut open, &mut backlog);
        let d = &b.metrics.disk;
        assert_eq!(d.buffer_dropped_readings.load(Relaxed), 10);
        assert_eq!(d.buffered_readings.load(Relaxed), 25);
        // The oldest batch went as a whole; the rest keep their order and size.
        let first: Vec<i64> = backlog.sealed[0].devices[0]
            .samples
            .iter()
            .map(|s| s.ts_ms)
            .collect();
        assert_eq!(first, [2, 3]);
        assert_eq!(backlog.sealed.len(), 2);
        // Dropping part of a batch takes its oldest samples.
        let b = Batcher {
            limits: BatchLimits::new(10, Duration::from_millis(200), 1 << 20).buffered(20, 0),
            ..b
        };
        b.bound(&mut open, &mut backlog);
        let first: Vec<i64> = backlog.sealed[0].devices[0]
            .samples
            .iter()
            .map(|s| s.ts_ms)
            .collect();
        assert_eq!(first, [3]);
        assert_eq!(b.metrics.disk.buffer_dropped_readings.load(Relaxed), 15);
    }
}
