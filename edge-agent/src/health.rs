//! Agent health for `v1/agents/{id}/health`: version, uptime, the queue, each device, and the
//! modem's link quality.
//!
//! Link quality comes from `link_source`: a file the modem daemon keeps current, or
//! `cmd:PROGRAM ARGS` run without a shell (5 s limit), printing `rssi=-71`, `rsrp=-98`,
//! `sinr=12` lines (`key: value` and a trailing unit such as `dBm` are accepted too).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use protocols::messages::{DeviceHealth, Health, LinkQuality, QueueHealth};

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
}
