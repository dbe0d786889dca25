//! Readings -> batches: collects samples from every poller and seals a batch when it holds
//! `batch_max_readings` readings or its oldest reading is `batch_max_age` old, then commits it
//! to the durable queue (fsync) and tells the uplink its seq.
//!
//! A failed commit (disk trouble) keeps the readings in memory and retries; the open batch is
//! bounded so a dead disk cannot eat the memory of a small box (the oldest samples go first,
//! counted).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use protocols::batch::{DeviceReadings, Sample};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::modbus::DeviceSample;
use crate::queue::Queue;

/// When a batch is sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Readings per batch.
    pub max_readings: usize,
    /// Age of the oldest reading.
    pub max_age: Duration,
    /// Estimated encoded size: a batch must stay far below the hub's 1 MiB limit and a small
    /// fraction of the queue budget (an entry larger than the budget could never be stored).
    pub max_bytes: usize,
}

impl BatchLimits {
    /// Limits for a queue budget: at most 512 KiB or an eighth of the budget per batch.
    pub fn new(max_readings: usize, max_age: Duration, queue_max_bytes: u64) -> BatchLimits {
        BatchLimits {
            max_readings,
            max_age,
            max_bytes: ((queue_max_bytes / 8) as usize).clamp(4096, 512 << 10),
        }
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
    /// Seal limits.
    pub limits: BatchLimits,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The seq of the latest committed entry, for the uplink.
    pub committed: watch::Sender<u64>,
}

impl Batcher {
    /// Runs the stage.
    pub async fn run(
        mut self,
        mut samples: mpsc::Receiver<DeviceSample>,
        mut control: mpsc::Receiver<BatcherControl>,
    ) {
        let mut open = OpenBatch::default();
        let mut retry_at: Option<Instant> = None;
        loop {
            let deadline = match (open.opened(), retry_at) {
                (_, Some(r)) => Some(r),
                (Some(o), None) => Some(o + self.limits.max_age),
                (None, None) => None,
            };
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
                        if full && retry_at.is_none() {
                            retry_at = self.commit(&mut open).await;
                        }
                    }
                    None => {
                        self.commit(&mut open).await;
                        return;
                    }
                },
                c = control.recv() => match c {
                    Some(BatcherControl::Flush(done)) => {
                        retry_at = self.commit(&mut open).await;
                        let _ = done.send(());
                    }
                    Some(BatcherControl::Limits(l)) => self.limits = l,
                    None => {}
                },
                _ = timer => {
                    retry_at = self.commit(&mut open).await;
                }
            }
        }
    }

    /// Commits the open batch; on failure keeps it and returns when to retry.
    async fn commit(&mut self, open: &mut OpenBatch) -> Option<Instant> {
        if open.readings() == 0 {
            open.take();
            return None;
        }
        let readings = open.readings();
        let opened = open.opened();
        let devices = open.take();
        let queue = self.queue.clone();
        let agent = self.agent.clone();
        let now = protocols::time::now_ms();
        let result = tokio::task::spawn_blocking(move || {
            let r = queue.append_batch(&agent, devices.clone(), now);
            (r, devices)
        })
        .await;
        match result {
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
                None
            }
            Ok((Err(e), devices)) => {
                self.metrics.commit_errors.fetch_add(1, Relaxed);
                tracing::error!("cannot commit a batch of {readings} readings: {e}; retrying");
                for d in devices {
                    let device: Arc<str> = Arc::from(d.device.as_str());
                    for s in d.samples {
                        open.push(DeviceSample {
                            device: device.clone(),
                            ts_ms: s.ts_ms,
                            readings: s.readings,
                        });
                    }
                }
                open.opened = opened;
                let shed = open.shed(self.limits.max_readings.saturating_mul(50).max(100_000));
                if shed > 0 {
                    self.metrics.samples_dropped.fetch_add(shed as u64, Relaxed);
                }
                Some(Instant::now() + Duration::from_secs(1))
            }
            Err(join) => {
                self.metrics.commit_errors.fetch_add(1, Relaxed);
                tracing::error!("batch commit task failed: {join}");
                Some(Instant::now() + Duration::from_secs(1))
            }
        }
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
}
