//! Counters of every stage, served locally in the Prometheus text format (`metrics_listen`),
//! encoded by `prometheus_client` from one [`Collector`] ([`MetricsCollector`]).
//!
//! The server is a few lines over a TCP listener: it answers `GET /metrics` (and `/`) with the
//! text format and everything else with 404, one request per connection. A full HTTP stack
//! would double the binary for one read-only page on a loopback port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeMetric, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::queue::QueueStats;

/// Counters of one Modbus device.
#[derive(Debug, Default)]
pub struct DeviceStats {
    /// The device id.
    pub id: String,
    /// Answering polls. Set through [`DeviceStats::set_online`].
    pub online: AtomicBool,
    /// Whether `online` was ever decided (a poll answered or failed, a camera reported): until
    /// then the state is unknown and health leaves the device out.
    pub known: AtomicBool,
    /// Requests sent.
    pub requests: AtomicU64,
    /// Failed requests (timeouts, exceptions, transport errors, undecodable values).
    pub errors: AtomicU64,
    /// Of which timeouts.
    pub timeouts: AtomicU64,
    /// Of which exception responses.
    pub exceptions: AtomicU64,
    /// Polls completed with at least one block read.
    pub polls: AtomicU64,
    /// Readings passed on (after deadband).
    pub readings: AtomicU64,
    /// Time of the last good poll, epoch ms (0: never).
    pub last_ok_ms: AtomicI64,
}

impl DeviceStats {
    /// Fresh counters for a device.
    pub fn new(id: &str) -> Arc<DeviceStats> {
        Arc::new(DeviceStats {
            id: id.to_string(),
            ..DeviceStats::default()
        })
    }

    /// Records the device's state; returns the previous one.
    pub fn set_online(&self, online: bool) -> bool {
        self.known.store(true, Relaxed);
        self.online.swap(online, Relaxed)
    }
}

/// Every counter of the agent.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Samples lost because the batcher's input was full.
    pub samples_dropped: AtomicU64,
    /// Batches committed to the queue.
    pub batches_committed: AtomicU64,
    /// Readings committed.
    pub readings_committed: AtomicU64,
    /// Failed commits (disk errors); the readings stay in memory and are retried.
    pub commit_errors: AtomicU64,
    /// Entries dropped for the disk budget (this run).
    pub queue_dropped: AtomicU64,
    /// Entries published (first sends and re-sends).
    pub entries_sent: AtomicU64,
    /// Of which re-sends (after an ack timeout or a reconnect).
    pub entries_resent: AtomicU64,
    /// Entries deleted on the hub's ack.
    pub entries_acked: AtomicU64,
    /// Acks received.
    pub acks: AtomicU64,
    /// Acks for another stream, ignored.
    pub acks_foreign: AtomicU64,
    /// Acks that did not parse.
    pub acks_invalid: AtomicU64,
    /// Sent and not yet acked.
    pub inflight: AtomicU64,
    /// MQTT session up.
    pub mqtt_connected: AtomicBool,
    /// Successful MQTT connects.
    pub mqtt_connects: AtomicU64,
    /// MQTT connection errors.
    pub mqtt_errors: AtomicU64,
    /// Times the uplink turned to the next hub of its list (`[agent] hub` with several URLs)
    /// after a failed attempt or a lost connection.
    pub hub_switches: AtomicU64,
    /// The hub the uplink is connected to or trying (set through [`Metrics::set_hub`]).
    hub: std::sync::Mutex<String>,
    /// Commands carried out.
    pub commands_ok: AtomicU64,
    /// Commands refused or failed.
    pub commands_failed: AtomicU64,
    /// Health messages published.
    pub health_published: AtomicU64,
    /// Camera snapshots published (first sends and re-sends).
    pub snapshots_sent: AtomicU64,
    /// Camera snapshots deleted from the queue on the hub's ack.
    pub snapshots_acked: AtomicU64,
    /// Camera events committed to the queue.
    pub camera_events: AtomicU64,
    /// Camera snapshots committed to the queue.
    pub camera_snapshots: AtomicU64,
    /// Camera events or snapshots that could not be committed (disk trouble); retried.
    pub camera_commit_errors: AtomicU64,
    /// Free space, queue condition and the in-memory buffer (see [`crate::disk`]).
    pub disk: crate::disk::DiskStatus,
    /// Modbus devices (replaced on reload).
    pub devices: std::sync::Mutex<Vec<Arc<DeviceStats>>>,
    started: std::sync::OnceLock<Instant>,
}

impl Metrics {
    /// New counters; uptime counts from now.
    pub fn new() -> Arc<Metrics> {
        let m = Metrics::default();
        let _ = m.started.set(Instant::now());
        Arc::new(m)
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.get().map(|s| s.elapsed()).unwrap_or_default()
    }

    /// The device counters.
    pub fn devices(&self) -> Vec<Arc<DeviceStats>> {
        self.devices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the hub the uplink is connected to or trying now.
    pub fn set_hub(&self, url: &str) {
        let mut hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
        hub.clear();
        hub.push_str(url);
    }

    /// The hub the uplink is connected to or trying now; `None` before the uplink started.
    pub fn hub(&self) -> Option<String> {
        let hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
        (!hub.is_empty()).then(|| hub.clone())
    }

    /// Replaces the device counters (start, reload).
    pub fn set_devices(&self, devices: Vec<Arc<DeviceStats>>) {
        *self.devices.lock().unwrap_or_else(|e| e.into_inner()) = devices;
    }
}

/// Where the agent's collector gets the queue's figures, asked on each scrape.
pub type QueueStatsFn = Arc<dyn Fn() -> Option<QueueStats> + Send + Sync>;

/// Exports [`Metrics`] (and the queue's figures) through a [`prometheus_client`] registry.
///
/// Names carry no prefix: [`registry`] puts the collector in a registry with the prefix
/// `edge_agent`. Values are read at scrape time; counting stays relaxed atomic updates.
pub struct MetricsCollector {
    metrics: Arc<Metrics>,
    queue_stats: QueueStatsFn,
    now_ms: fn() -> i64,
}

impl std::fmt::Debug for MetricsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsCollector")
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl MetricsCollector {
    /// A collector reading `metrics`, and `queue_stats` on each scrape (it may block on the
    /// queue's file: encode off the async threads).
    pub fn new(metrics: Arc<Metrics>, queue_stats: QueueStatsFn) -> MetricsCollector {
        MetricsCollector {
            metrics,
            queue_stats,
            now_ms: protocols::time::now_ms,
        }
    }
}

/// The registry behind the agent's `/metrics` page: prefix `edge_agent`, one collector.
pub fn registry(metrics: Arc<Metrics>, queue_stats: QueueStatsFn) -> Registry {
    let mut registry = Registry::with_prefix("edge_agent");
    registry.register_collector(Box::new(MetricsCollector::new(metrics, queue_stats)));
    registry
}

/// (name without the prefix and `_total`, type, help, getter) of a per-device metric.
type PerDevice = (
    &'static str,
    MetricType,
    &'static str,
    fn(&DeviceStats) -> u64,
);

fn metric(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    m: impl EncodeMetric,
) -> std::fmt::Result {
    let metric_type = m.metric_type();
    m.encode(e.encode_descriptor(name, help, None, metric_type)?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    metric(e, name, help, ConstCounter::new(v))
}

fn gauge<N: EncodeGaugeValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: N,
) -> std::fmt::Result {
    metric(e, name, help, ConstGauge::new(v))
}

impl Collector for MetricsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let m = &*self.metrics;
        let e = &mut e;
        let c = |a: &AtomicU64| a.load(Relaxed);
        gauge(
            e,
            "uptime_seconds",
            "Seconds since the agent started.",
            m.uptime().as_secs_f64(),
        )?;
        let counters: [(&str, &str, &AtomicU64); 10] = [
            (
                "samples_dropped",
                "Polled samples lost because the batcher input was full.",
                &m.samples_dropped,
            ),
            (
                "batches_committed",
                "Batches committed (fsynced) to the durable queue.",
                &m.batches_committed,
            ),
            (
                "readings_committed",
                "Readings committed to the durable queue.",
                &m.readings_committed,
            ),
            (
                "commit_errors",
                "Failed queue commits (retried).",
                &m.commit_errors,
            ),
            (
                "entries_sent",
                "Queue entries published, re-sends included.",
                &m.entries_sent,
            ),
            (
                "entries_resent",
                "Queue entries published again after an ack timeout or reconnect.",
                &m.entries_resent,
            ),
            (
                "entries_acked",
                "Queue entries deleted on the hub's ack.",
                &m.entries_acked,
            ),
            ("acks", "Acks received from the hub.", &m.acks),
            (
                "acks_foreign_stream",
                "Acks for another queue stream, ignored.",
                &m.acks_foreign,
            ),
            ("acks_invalid", "Acks that did not parse.", &m.acks_invalid),
        ];
        for (name, help, v) in counters {
            counter(e, name, help, c(v))?;
        }
        gauge(
            e,
            "inflight",
            "Entries sent and not yet acknowledged.",
            c(&m.inflight),
        )?;
        gauge(
            e,
            "mqtt_connected",
            "1 while the MQTT session to the hub is up.",
            u64::from(m.mqtt_connected.load(Relaxed)),
        )?;
        let counters: [(&str, &str, &AtomicU64); 11] = [
            (
                "mqtt_connects",
                "Successful MQTT connects.",
                &m.mqtt_connects,
            ),
            ("mqtt_errors", "MQTT connection errors.", &m.mqtt_errors),
            (
                "hub_switches",
                "Times the uplink turned to the next hub of agent.hub after a failure.",
                &m.hub_switches,
            ),
            ("commands_ok", "Commands carried out.", &m.commands_ok),
            (
                "commands_failed",
                "Commands refused or failed.",
                &m.commands_failed,
            ),
            (
                "health_published",
                "Health messages published.",
                &m.health_published,
            ),
            (
                "camera_events",
                "Camera events committed to the queue.",
                &m.camera_events,
            ),
            (
                "camera_snapshots",
                "Camera snapshots committed to the queue.",
                &m.camera_snapshots,
            ),
            (
                "camera_commit_errors",
                "Camera events or snapshots that failed to commit (retried).",
                &m.camera_commit_errors,
            ),
            (
                "snapshots_sent",
                "Camera snapshots published (first sends and re-sends).",
                &m.snapshots_sent,
            ),
            (
                "snapshots_acked",
                "Camera snapshots deleted from the queue on the hub's ack.",
                &m.snapshots_acked,
            ),
        ];
        for (name, help, v) in counters {
            counter(e, name, help, c(v))?;
        }
        if let Some(q) = (self.queue_stats)() {
            gauge(
                e,
                "queue_snapshots",
                "Camera snapshots waiting for the hub's ack.",
                q.snapshots,
            )?;
            gauge(
                e,
                "queue_depth",
                "Entries waiting for the hub's ack.",
                q.depth,
            )?;
            gauge(
                e,
                "queue_readings",
                "Readings waiting for the hub's ack.",
                q.readings,
            )?;
            gauge(
                e,
                "queue_bytes",
                "Bytes counted against the queue budget.",
                q.bytes,
            )?;
            counter(
                e,
                "queue_dropped",
                "Entries dropped for the disk budget since the queue was created.",
                q.dropped,
            )?;
            counter(
                e,
                "queue_dropped_readings",
                "Readings in the dropped entries.",
                q.dropped_readings,
            )?;
            let age = q
                .oldest_enqueued_ms
                .map(|t| ((self.now_ms)() - t).max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            gauge(
                e,
                "queue_oldest_age_seconds",
                "Age of the oldest waiting entry.",
                age,
            )?;
        }
        let d = &m.disk;
        if let Some(free) = d.free() {
            gauge(
                e,
                "disk_free_bytes",
                "Free bytes on the data directory's file system.",
                free,
            )?;
        }
        gauge(
            e,
            "disk_min_free_bytes",
            "The min_free_disk watermark.",
            d.min_free_bytes.load(Relaxed),
        )?;
        gauge(
            e,
            "disk_below_watermark",
            "1 while free space is below min_free_disk (nothing is written to the queue).",
            u64::from(d.below_watermark.load(Relaxed)),
        )?;
        gauge(
            e,
            "queue_writable",
            "0 while queue writes fail or the queue is closed for a reopen after an I/O error.",
            u64::from(!d.queue_failing.load(Relaxed)),
        )?;
        counter(
            e,
            "queue_reopens",
            "Reopens of the queue after I/O errors.",
            d.queue_reopens.load(Relaxed),
        )?;
        gauge(
            e,
            "buffered_readings",
            "Readings held in memory, not yet committed to the queue.",
            d.buffered_readings.load(Relaxed),
        )?;
        gauge(
            e,
            "buffer_max_readings",
            "The in-memory buffer's bound (buffer_readings).",
            d.buffer_max_readings.load(Relaxed),
        )?;
        counter(
            e,
            "buffer_dropped_readings",
            "Readings dropped, oldest first, because the in-memory buffer was full.",
            d.buffer_dropped_readings.load(Relaxed),
        )?;
        let devices = m.devices();
        let per_device: [PerDevice; 7] = [
            (
                "device_online",
                MetricType::Gauge,
                "1 while the device answers polls.",
                |d| u64::from(d.online.load(Relaxed)),
            ),
            (
                "modbus_requests",
                MetricType::Counter,
                "Modbus requests sent.",
                |d| d.requests.load(Relaxed),
            ),
            (
                "modbus_errors",
                MetricType::Counter,
                "Failed Modbus requests and undecodable values.",
                |d| d.errors.load(Relaxed),
            ),
            (
                "modbus_timeouts",
                MetricType::Counter,
                "Modbus requests that timed out.",
                |d| d.timeouts.load(Relaxed),
            ),
            (
                "modbus_exceptions",
                MetricType::Counter,
                "Modbus exception responses.",
                |d| d.exceptions.load(Relaxed),
            ),
            (
                "polls",
                MetricType::Counter,
                "Polls with at least one block read.",
                |d| d.polls.load(Relaxed),
            ),
            (
                "readings",
                MetricType::Counter,
                "Readings passed to the batcher (after deadband).",
                |d| d.readings.load(Relaxed),
            ),
        ];
        for (name, metric_type, help, get) in per_device {
            let mut family = e.encode_descriptor(name, help, None, metric_type)?;
            for d in &devices {
                let labels = [("device", d.id.as_str())];
                let sample = family.encode_family(&labels)?;
                match metric_type {
                    MetricType::Gauge => ConstGauge::new(get(d)).encode(sample)?,
                    _ => ConstCounter::new(get(d)).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

/// Serves `GET /metrics` on `addr` until the task is dropped. `queue_stats` is asked on each
/// scrape.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, queue_stats: QueueStatsFn) {
    let registry = Arc::new(registry(metrics, queue_stats));
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            // Out of file descriptors and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut n = 0;
            // Read the request head (bounded in size and time).
            let head_done = tokio::time::timeout(Duration::from_secs(5), async {
                while n < buf.len() {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return false,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        return true;
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
            if !head_done {
                return;
            }
            let line = buf[..n].split(|&b| b == b'\r').next().unwrap_or(&[]);
            let line = String::from_utf8_lossy(line);
            let mut parts = line.split(' ');
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let response = if method == "GET" && (path == "/metrics" || path == "/") {
                // Blocking: the collector asks the queue for its figures.
                let body = tokio::task::spawn_blocking(move || {
                    let mut body = String::with_capacity(4096);
                    prometheus_text::encode(&mut body, &registry).map(|()| body)
                })
                .await;
                match body {
                    Ok(Ok(body)) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        prometheus_text::CONTENT_TYPE,
                        body.len()
                    ),
                    _ => "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
                }
            } else {
                let body = "not found: the agent serves GET /metrics\n";
                format!(
                    "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            let _ = sock.write_all(response.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders the page as [`serve`] does, at `now_ms`.
    fn render(m: &Arc<Metrics>, q: Option<QueueStats>, now_ms: fn() -> i64) -> String {
        let mut registry = Registry::with_prefix("edge_agent");
        registry.register_collector(Box::new(MetricsCollector {
            now_ms,
            ..MetricsCollector::new(m.clone(), Arc::new(move || q))
        }));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn renders_prometheus_text_with_device_labels() {
        let m = Metrics::new();
        m.entries_sent.fetch_add(3, Relaxed);
        m.inflight.fetch_add(2, Relaxed);
        let d = DeviceStats::new("SL-0001");
        d.set_online(true);
        d.errors.fetch_add(2, Relaxed);
        m.set_devices(vec![d, DeviceStats::new("SL-0002")]);
        let q = QueueStats {
            depth: 4,
            bytes: 1000,
            oldest_enqueued_ms: Some(1_000),
            ..QueueStats::default()
        };
        let text = render(&m, Some(q), || 3_500);
        assert!(
            text.contains(
                "# HELP edge_agent_entries_sent_total Queue entries published, re-sends included.\n\
                 # TYPE edge_agent_entries_sent_total counter\n\
                 edge_agent_entries_sent_total 3\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE edge_agent_inflight gauge\nedge_agent_inflight 2\n"));
        assert!(text.contains("# TYPE edge_agent_queue_depth gauge\nedge_agent_queue_depth 4\n"));
        assert!(text.contains("edge_agent_queue_oldest_age_seconds 2.5\n"));
        assert!(text.contains("edge_agent_mqtt_connected 0\n"));
        assert!(text.contains("# TYPE edge_agent_device_online gauge\n"));
        assert!(text.contains("edge_agent_device_online{device=\"SL-0001\"} 1\n"));
        assert!(text.contains("edge_agent_device_online{device=\"SL-0002\"} 0\n"));
        assert!(text.contains(
            "# TYPE edge_agent_modbus_errors_total counter\n\
             edge_agent_modbus_errors_total{device=\"SL-0001\"} 2\n"
        ));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("edge_agent_"), "{line}");
        }
        // 1 + 10 + 2 + 11 metrics, 7 of the queue, 7 of the disk (free bytes unknown yet),
        // 7 per device.
        assert_eq!(text.matches("# TYPE ").count(), 45, "{text}");
        assert!(text.contains(
            "# TYPE edge_agent_hub_switches_total counter\nedge_agent_hub_switches_total 0\n"
        ));
        assert!(text.contains("edge_agent_queue_writable 1\n"));
        m.disk.free_bytes.store(123, Relaxed);
        m.disk.buffer_dropped_readings.store(5, Relaxed);
        let text = render(&m, Some(q), || 3_500);
        assert!(text.contains("edge_agent_disk_free_bytes 123\n"));
        assert!(text.contains(
            "# TYPE edge_agent_buffer_dropped_readings_total counter\n\
             edge_agent_buffer_dropped_readings_total 5\n"
        ));
        // Without the queue's figures its families are left out.
        let text = render(&m, None, || 3_500);
        assert!(!text.contains("edge_agent_queue_depth"));
        assert_eq!(text.matches("# TYPE ").count(), 39);
    }
}
