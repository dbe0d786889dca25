//! Counters of every stage, served locally in the Prometheus text format (`metrics_listen`).
//!
//! The server is a few lines over a TCP listener: it answers `GET /metrics` (and `/`) with the
//! text format and everything else with 404, one request per connection. A full HTTP stack
//! would double the binary for one read-only page on a loopback port.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::queue::QueueStats;

/// (name, type, help, getter) of a per-device metric.
type PerDevice = (
    &'static str,
    &'static str,
    &'static str,
    fn(&DeviceStats) -> f64,
);

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

    /// Replaces the device counters (start, reload).
    pub fn set_devices(&self, devices: Vec<Arc<DeviceStats>>) {
        *self.devices.lock().unwrap_or_else(|e| e.into_inner()) = devices;
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self, queue: Option<&QueueStats>, now_ms: i64) -> String {
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP edge_agent_{name} {help}\n# TYPE edge_agent_{name} {kind}\nedge_agent_{name} {value}"
            );
        };
        let c = |a: &AtomicU64| a.load(Relaxed) as f64;
        metric(
            "uptime_seconds",
            "gauge",
            "Seconds since the agent started.",
            self.uptime().as_secs_f64(),
        );
        metric(
            "samples_dropped_total",
            "counter",
            "Polled samples lost because the batcher input was full.",
            c(&self.samples_dropped),
        );
        metric(
            "batches_committed_total",
            "counter",
            "Batches committed (fsynced) to the durable queue.",
            c(&self.batches_committed),
        );
        metric(
            "readings_committed_total",
            "counter",
            "Readings committed to the durable queue.",
            c(&self.readings_committed),
        );
        metric(
            "commit_errors_total",
            "counter",
            "Failed queue commits (retried).",
            c(&self.commit_errors),
        );
        metric(
            "entries_sent_total",
            "counter",
            "Queue entries published, re-sends included.",
            c(&self.entries_sent),
        );
        metric(
            "entries_resent_total",
            "counter",
            "Queue entries published again after an ack timeout or reconnect.",
            c(&self.entries_resent),
        );
        metric(
            "entries_acked_total",
            "counter",
            "Queue entries deleted on the hub's ack.",
            c(&self.entries_acked),
        );
        metric(
            "acks_total",
            "counter",
            "Acks received from the hub.",
            c(&self.acks),
        );
        metric(
            "acks_foreign_stream_total",
            "counter",
            "Acks for another queue stream, ignored.",
            c(&self.acks_foreign),
        );
        metric(
            "acks_invalid_total",
            "counter",
            "Acks that did not parse.",
            c(&self.acks_invalid),
        );
        metric(
            "inflight",
            "gauge",
            "Entries sent and not yet acknowledged.",
            c(&self.inflight),
        );
        metric(
            "mqtt_connected",
            "gauge",
            "1 while the MQTT session to the hub is up.",
            self.mqtt_connected.load(Relaxed) as u8 as f64,
        );
        metric(
            "mqtt_connects_total",
            "counter",
            "Successful MQTT connects.",
            c(&self.mqtt_connects),
        );
        metric(
            "mqtt_errors_total",
            "counter",
            "MQTT connection errors.",
            c(&self.mqtt_errors),
        );
        metric(
            "commands_ok_total",
            "counter",
            "Commands carried out.",
            c(&self.commands_ok),
        );
        metric(
            "commands_failed_total",
            "counter",
            "Commands refused or failed.",
            c(&self.commands_failed),
        );
        metric(
            "health_published_total",
            "counter",
            "Health messages published.",
            c(&self.health_published),
        );
        metric(
            "camera_events_total",
            "counter",
            "Camera events committed to the queue.",
            c(&self.camera_events),
        );
        metric(
            "camera_snapshots_total",
            "counter",
            "Camera snapshots committed to the queue.",
            c(&self.camera_snapshots),
        );
        metric(
            "camera_commit_errors_total",
            "counter",
            "Camera events or snapshots that failed to commit (retried).",
            c(&self.camera_commit_errors),
        );
        metric(
            "snapshots_sent_total",
            "counter",
            "Camera snapshots published (first sends and re-sends).",
            c(&self.snapshots_sent),
        );
        metric(
            "snapshots_acked_total",
            "counter",
            "Camera snapshots deleted from the queue on the hub's ack.",
            c(&self.snapshots_acked),
        );
        if let Some(q) = queue {
            metric(
                "queue_snapshots",
                "gauge",
                "Camera snapshots waiting for the hub's ack.",
                q.snapshots as f64,
            );
            metric(
                "queue_depth",
                "gauge",
                "Entries waiting for the hub's ack.",
                q.depth as f64,
            );
            metric(
                "queue_readings",
                "gauge",
                "Readings waiting for the hub's ack.",
                q.readings as f64,
            );
            metric(
                "queue_bytes",
                "gauge",
                "Bytes counted against the queue budget.",
                q.bytes as f64,
            );
            metric(
                "queue_dropped_total",
                "counter",
                "Entries dropped for the disk budget since the queue was created.",
                q.dropped as f64,
            );
            metric(
                "queue_dropped_readings_total",
                "counter",
                "Readings in the dropped entries.",
                q.dropped_readings as f64,
            );
            let age = q
                .oldest_enqueued_ms
                .map(|t| (now_ms - t).max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            metric(
                "queue_oldest_age_seconds",
                "gauge",
                "Age of the oldest waiting entry.",
                age,
            );
        }
        let devices = self.devices();
        let per_device: [PerDevice; 7] = [
            (
                "device_online",
                "gauge",
                "1 while the device answers polls.",
                |d| d.online.load(Relaxed) as u8 as f64,
            ),
            (
                "modbus_requests_total",
                "counter",
                "Modbus requests sent.",
                |d| d.requests.load(Relaxed) as f64,
            ),
            (
                "modbus_errors_total",
                "counter",
                "Failed Modbus requests and undecodable values.",
                |d| d.errors.load(Relaxed) as f64,
            ),
            (
                "modbus_timeouts_total",
                "counter",
                "Modbus requests that timed out.",
                |d| d.timeouts.load(Relaxed) as f64,
            ),
            (
                "modbus_exceptions_total",
                "counter",
                "Modbus exception responses.",
                |d| d.exceptions.load(Relaxed) as f64,
            ),
            (
                "polls_total",
                "counter",
                "Polls with at least one block read.",
                |d| d.polls.load(Relaxed) as f64,
            ),
            (
                "readings_total",
                "counter",
                "Readings passed to the batcher (after deadband).",
                |d| d.readings.load(Relaxed) as f64,
            ),
        ];
        for (name, kind, help, get) in per_device {
            let _ = writeln!(
                out,
                "# HELP edge_agent_{name} {help}\n# TYPE edge_agent_{name} {kind}"
            );
            for d in &devices {
                let _ = writeln!(out, "edge_agent_{name}{{device=\"{}\"}} {}", d.id, get(d));
            }
        }
        out
    }
}

/// Serves `GET /metrics` on `addr` until the task is dropped. `queue_stats` is asked on each
/// scrape.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    queue_stats: Arc<dyn Fn() -> Option<QueueStats> + Send + Sync>,
) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            // Out of file descriptors and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = metrics.clone();
        let queue_stats = queue_stats.clone();
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
                let stats = tokio::task::spawn_blocking(move || queue_stats())
                    .await
                    .ok()
                    .flatten();
                let body = metrics.render(stats.as_ref(), protocols::time::now_ms());
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
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

    #[test]
    fn renders_prometheus_text_with_device_labels() {
        let m = Metrics::new();
        m.entries_sent.fetch_add(3, Relaxed);
        let d = DeviceStats::new("SL-0001");
        d.set_online(true);
        d.errors.fetch_add(2, Relaxed);
        m.set_devices(vec![d]);
        let q = QueueStats {
            depth: 4,
            bytes: 1000,
            oldest_enqueued_ms: Some(1_000),
            ..QueueStats::default()
        };
        let text = m.render(Some(&q), 3_000);
        assert!(text.contains("edge_agent_entries_sent_total 3\n"), "{text}");
        assert!(text.contains("edge_agent_queue_depth 4\n"));
        assert!(text.contains("edge_agent_queue_oldest_age_seconds 2\n"));
        assert!(text.contains("edge_agent_device_online{device=\"SL-0001\"} 1\n"));
        assert!(text.contains("edge_agent_modbus_errors_total{device=\"SL-0001\"} 2\n"));
        assert!(text.contains("# TYPE edge_agent_queue_depth gauge"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("edge_agent_"), "{line}");
        }
    }
}
