//! Agent health for `v1/agents/{id}/health`: version, uptime, the queue, each device, and the
//! modem's link quality.
//!
//! Link quality comes from `link_source`: a file the modem daemon keeps current, or
//! `cmd:PROGRAM ARGS` run without a shell (5 s limit), printing `rssi=-71`, `rsrp=-98`,
//! `sinr=12` lines (`key: value` and a trailing unit such as `dBm` are accepted too).
//!
//! On top of the protocol's [`Health`] the agent adds (additive JSON fields, which the hub
//! ignores until it reads them) `disk`: free space against `min_free_disk` and whether the
//! queue can be written, `buffer`: readings held in memory and dropped from it, and `hub`: the
//! hub of `[agent] hub`'s list the uplink is connected to.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use protocols::messages::{DeviceHealth, Health, LinkQuality, QueueHealth};
use serde::{Deserialize, Serialize};

use crate::disk::DiskStatus;
use crate::metrics::DeviceStats;
use crate::queue::QueueStats;

/// Parses `key=value` lines into link quality; unknown keys and bad numbers are skipped.
pub fn parse_link(text: &str) -> LinkQuality {
    let mut q = LinkQuality::default();
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=').or_else(|| line.split_once(':')) else {
            continue;
        };
        let num = v
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite());
        match k.trim().to_ascii_lowercase().as_str() {
            "rssi" => q.rssi = num.or(q.rssi),
            "rsrp" => q.rsrp = num.or(q.rsrp),
            "sinr" => q.sinr = num.or(q.sinr),
            _ => {}
        }
    }
    q
}

/// Reads the link quality from the configured source; unknown on any failure (logged).
pub async fn read_link(source: Option<&str>) -> LinkQuality {
    let Some(source) = source else {
        return LinkQuality::default();
    };
    let text = if let Some(cmd) = source.strip_prefix("cmd:") {
        let mut parts = cmd.split_whitespace();
        let Some(program) = parts.next() else {
            return LinkQuality::default();
        };
        let run = tokio::process::Command::new(program)
            .args(parts)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(5), run).await {
            Ok(Ok(out)) if out.status.success() => {
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
            Ok(Ok(out)) => {
                tracing::debug!("link_source `{program}` exited with {}", out.status);
                return LinkQuality::default();
            }
            Ok(Err(e)) => {
                tracing::debug!("link_source `{program}`: {e}");
                return LinkQuality::default();
            }
            Err(_) => {
                tracing::debug!("link_source `{program}` took longer than 5s");
                return LinkQuality::default();
            }
        }
    } else {
        match tokio::fs::read_to_string(source).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!("link_source {source}: {e}");
                return LinkQuality::default();
            }
        }
    };
    parse_link(&text)
}

/// The health document as the agent publishes it: the protocol's fields plus its disk state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentHealth {
    /// The protocol's fields, at the top level.
    #[serde(flatten)]
    pub health: Health,
    /// The data directory's disk and the queue.
    pub disk: DiskHealth,
    /// Readings waiting in memory.
    pub buffer: BufferHealth,
    /// The hub the uplink is connected to (one of `[agent] hub`'s list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
}

/// `disk` in the health document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskHealth {
    /// Free bytes on the data directory's file system (absent if it cannot be measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_bytes: Option<u64>,
    /// The `min_free_disk` watermark.
    pub min_free_bytes: u64,
    /// Free space is below the watermark: nothing is written to the queue.
    pub below_watermark: bool,
    /// The queue's last write worked (false while it fails or is closed for a reopen).
    pub queue_writable: bool,
    /// Why the queue cannot be written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_error: Option<String>,
    /// Reopens of the queue after I/O errors since the agent started.
    pub queue_reopens: u64,
}

/// `buffer` in the health document.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BufferHealth {
    /// Readings in memory, not yet committed to the queue.
    pub readings: u64,
    /// The bound (`buffer_readings`).
    pub max_readings: u64,
    /// Readings dropped, oldest first, because the buffer was full (since the agent started).
    pub dropped_readings: u64,
}

/// Adds the disk state to a health document.
pub fn with_disk(health: Health, d: &DiskStatus) -> AgentHealth {
    AgentHealth {
        health,
        disk: DiskHealth {
            free_bytes: d.free(),
            min_free_bytes: d.min_free_bytes.load(Relaxed),
            below_watermark: d.below_watermark.load(Relaxed),
            queue_writable: !d.queue_failing.load(Relaxed),
            queue_error: d.queue_error(),
            queue_reopens: d.queue_reopens.load(Relaxed),
        },
        buffer: BufferHealth {
            readings: d.buffered_readings.load(Relaxed),
            max_readings: d.buffer_max_readings.load(Relaxed),
            dropped_readings: d.buffer_dropped_readings.load(Relaxed),
        },
        hub: None,
    }
}

/// Builds the health document.
pub fn build(
    agent: &str,
    uptime: Duration,
    queue: Option<&QueueStats>,
    devices: &[std::sync::Arc<DeviceStats>],
    link: LinkQuality,
    now_ms: i64,
) -> Health {
    let queue = queue
        .map(|q| QueueHealth {
            depth: q.depth,
            bytes: q.bytes,
            oldest_age_ms: q
                .oldest_enqueued_ms
                .map(|t| (now_ms - t).max(0) as u64)
                .unwrap_or(0),
            dropped: q.dropped,
        })
        .unwrap_or_default();
    Health {
        agent: agent.to_string(),
        ts: now_ms,
        version: crate::VERSION.to_string(),
        uptime_s: uptime.as_secs(),
        queue,
        link,
        // A device not polled yet is left out: "offline" would be a guess, and the hub would
        // show it down until the next health.
        devices: devices
            .iter()
            .filter(|d| d.known.load(Relaxed))
            .map(|d| {
                let last = d.last_ok_ms.load(Relaxed);
                DeviceHealth {
                    id: d.id.clone(),
                    online: d.online.load(Relaxed),
                    errors: d.errors.load(Relaxed),
                    last_ok_ms: (last > 0).then_some(last),
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modem_output() {
        let q = parse_link("rssi=-71\nrsrp=-98\nsinr=12\n");
        assert_eq!(
            (q.rssi, q.rsrp, q.sinr),
            (Some(-71.0), Some(-98.0), Some(12.0))
        );
        let q =
            parse_link("RSSI: -65 dBm\n# comment\noperator=ChinaMobile\nsinr = 7.5 dB\nrsrp=n/a\n");
        assert_eq!((q.rssi, q.rsrp, q.sinr), (Some(-65.0), None, Some(7.5)));
        assert_eq!(parse_link(""), LinkQuality::default());
    }

    #[tokio::test]
    async fn reads_a_file_or_a_command() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("link");
        std::fs::write(&f, "rssi=-80\n").unwrap();
        assert_eq!(read_link(Some(f.to_str().unwrap())).await.rssi, Some(-80.0));
        let q = read_link(Some("cmd:/bin/echo rsrp=-101")).await;
        assert_eq!(q.rsrp, Some(-101.0));
        assert_eq!(
            read_link(Some("cmd:/nonexistent/modem")).await,
            LinkQuality::default()
        );
        assert_eq!(
            read_link(Some("/nonexistent/file")).await,
            LinkQuality::default()
        );
        assert_eq!(read_link(None).await, LinkQuality::default());
    }

    #[test]
    fn health_document() {
        let d = DeviceStats::new("WL-0001");
        d.set_online(true);
        d.errors.store(3, Relaxed);
        d.last_ok_ms.store(900, Relaxed);
        let q = QueueStats {
            depth: 7,
            bytes: 7000,
            oldest_enqueued_ms: Some(400),
            dropped: 2,
            ..QueueStats::default()
        };
        let h = build(
            "AG-1",
            Duration::from_secs(61),
            Some(&q),
            &[d, DeviceStats::new("WL-0002")],
            LinkQuality::default(),
            1000,
        );
        // WL-0002 was never polled: unknown, so not reported at all.
        assert_eq!(h.devices.len(), 1);
        assert_eq!(h.uptime_s, 61);
        assert_eq!(h.version, crate::VERSION);
        assert_eq!(
            h.queue,
            QueueHealth {
                depth: 7,
                bytes: 7000,
                oldest_age_ms: 600,
                dropped: 2
            }
        );
        assert_eq!(h.devices[0].errors, 3);
        assert_eq!(h.devices[0].last_ok_ms, Some(900));
    }

    #[test]
    fn disk_fields_are_added_next_to_the_protocol_ones() {
        let d = DiskStatus::default();
        d.free_bytes.store(4096, Relaxed);
        d.min_free_bytes.store(16 << 20, Relaxed);
        d.below_watermark.store(true, Relaxed);
        d.set_queue(&crate::queue::QueueCondition {
            failing: true,
            error: Some("No space left on device".into()),
            reopens: 2,
        });
        d.buffered_readings.store(500, Relaxed);
        d.buffer_max_readings.store(1000, Relaxed);
        d.buffer_dropped_readings.store(7, Relaxed);
        let base = build(
            "AG-1",
            Duration::from_secs(1),
            None,
            &[],
            LinkQuality::default(),
            1000,
        );
        let json = serde_json::to_value(with_disk(base.clone(), &d)).unwrap();
        assert_eq!(json["agent"], "AG-1");
        assert_eq!(json["queue"]["depth"], 0);
        assert_eq!(
            json["disk"],
            serde_json::json!({"free_bytes": 4096, "min_free_bytes": 16 << 20,
                "below_watermark": true, "queue_writable": false,
                "queue_error": "No space left on device", "queue_reopens": 2})
        );
        assert_eq!(
            json["buffer"],
            serde_json::json!({"readings": 500, "max_readings": 1000, "dropped_readings": 7})
        );
        assert!(json.get("hub").is_none(), "no hub before the uplink runs");
        // The hub's type still reads it.
        let back: Health = serde_json::from_value(json).unwrap();
        assert_eq!(back, base);

        // The hub in use, one of `[agent] hub`'s list.
        let m = crate::metrics::Metrics::new();
        assert_eq!(m.hub(), None);
        m.set_hub("mqtt://10.0.0.2:1883");
        let mut h = with_disk(base.clone(), &d);
        h.hub = m.hub();
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["hub"], "mqtt://10.0.0.2:1883");
        let back: AgentHealth = serde_json::from_value(json).unwrap();
        assert_eq!(back, h);
    }
}
