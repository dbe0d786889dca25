//! Counters and gauges of the MQTT ingress, rendered as Prometheus text.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Why a CONNECT was refused (one counter each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// Unknown user or wrong secret.
    BadCredentials,
    /// The client id does not belong to the user.
    ClientId,
    /// The will topic is not the client's to publish.
    WillDenied,
    /// Unsupported protocol level or enhanced authentication.
    Protocol,
    /// The broker is shutting down.
    ShuttingDown,
}

impl RefuseReason {
    const ALL: [RefuseReason; 5] = [
        RefuseReason::BadCredentials,
        RefuseReason::ClientId,
        RefuseReason::WillDenied,
        RefuseReason::Protocol,
        RefuseReason::ShuttingDown,
    ];

    fn label(self) -> &'static str {
        match self {
            RefuseReason::BadCredentials => "bad_credentials",
            RefuseReason::ClientId => "client_id",
            RefuseReason::WillDenied => "will_denied",
            RefuseReason::Protocol => "protocol",
            RefuseReason::ShuttingDown => "shutting_down",
        }
    }
}

/// The ingress's counters (monotonic) and gauges. Shared by every connection; each update is
/// one relaxed atomic operation.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open connections that completed CONNECT.
    pub connections: AtomicI64,
    /// Connections accepted at TCP level, total.
    pub tcp_accepted: AtomicU64,
    /// CONNECTs accepted, total.
    pub connects: AtomicU64,
    refused: [AtomicU64; 5],
    /// Connections closed for a protocol violation or garbage.
    pub protocol_errors: AtomicU64,
    /// Connections closed for an oversized packet.
    pub oversized: AtomicU64,
    /// Connections closed because the keepalive expired.
    pub keepalive_timeouts: AtomicU64,
    /// Sessions taken over by a new connection with the same client id.
    pub takeovers: AtomicU64,
    /// PUBLISH packets received from clients.
    pub messages_in: AtomicU64,
    /// Bytes read from client sockets.
    pub bytes_in: AtomicU64,
    /// PUBLISH packets written to clients.
    pub messages_out: AtomicU64,
    /// Bytes written to client sockets.
    pub bytes_out: AtomicU64,
    /// Publishes refused by the access rules.
    pub publishes_refused: AtomicU64,
    /// Subscription filters refused by the access rules.
    pub subscribes_refused: AtomicU64,
    /// Messages dropped because a subscriber's queue was full (or too large for it).
    pub dropped: AtomicU64,
    /// Subscribers disconnected for not acknowledging or not reading.
    pub slow_disconnects: AtomicU64,
    /// Wills published.
    pub wills: AtomicU64,
    /// Retained messages held.
    pub retained: AtomicI64,
    /// Sessions held (connected or persistent).
    pub sessions: AtomicI64,
    /// Subscriptions held.
    pub subscriptions: AtomicI64,
}

impl Metrics {
    /// Counts a refused CONNECT.
    pub fn refuse(&self, reason: RefuseReason) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// CONNECTs refused for `reason` so far.
    pub fn refused(&self, reason: RefuseReason) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }

    /// Appends the metrics in Prometheus text format, each name prefixed `hub_mqtt_`.
    pub fn write_prometheus(&self, out: &mut String) {
        let g = |v: &AtomicI64| v.load(Ordering::Relaxed);
        let c = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP hub_mqtt_{name} {help}");
            let _ = writeln!(out, "# TYPE hub_mqtt_{name} {kind}");
            let _ = writeln!(out, "hub_mqtt_{name} {value}");
        };
        line(
            "connections",
            "gauge",
            "Open MQTT connections.",
            g(&self.connections).to_string(),
        );
        line(
            "tcp_accepted_total",
            "counter",
            "TCP connections accepted.",
            c(&self.tcp_accepted).to_string(),
        );
        line(
            "connects_total",
            "counter",
            "CONNECTs accepted.",
            c(&self.connects).to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP hub_mqtt_connects_refused_total CONNECTs refused, by reason."
        );
        let _ = writeln!(out, "# TYPE hub_mqtt_connects_refused_total counter");
        for r in RefuseReason::ALL {
            let _ = writeln!(
                out,
                "hub_mqtt_connects_refused_total{{reason=\"{}\"}} {}",
                r.label(),
                self.refused(r)
            );
        }
        let mut line = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP hub_mqtt_{name} {help}");
            let _ = writeln!(out, "# TYPE hub_mqtt_{name} {kind}");
            let _ = writeln!(out, "hub_mqtt_{name} {value}");
        };
        let counters: [(&str, &str, &AtomicU64); 13] = [
            (
                "protocol_errors_total",
                "Connections closed for malformed or unexpected packets.",
                &self.protocol_errors,
            ),
            (
                "oversized_total",
                "Connections closed for an oversized packet.",
                &self.oversized,
            ),
            (
                "keepalive_timeouts_total",
                "Connections closed because the keepalive expired.",
                &self.keepalive_timeouts,
            ),
            (
                "takeovers_total",
                "Sessions taken over by a new connection with the same client id.",
                &self.takeovers,
            ),
            (
                "messages_in_total",
                "PUBLISH packets received.",
                &self.messages_in,
            ),
            ("bytes_in_total", "Bytes received.", &self.bytes_in),
            (
                "messages_out_total",
                "PUBLISH packets sent.",
                &self.messages_out,
            ),
            ("bytes_out_total", "Bytes sent.", &self.bytes_out),
            (
                "publishes_refused_total",
                "Publishes refused by the access rules.",
                &self.publishes_refused,
            ),
            (
                "subscribes_refused_total",
                "Subscription filters refused by the access rules.",
                &self.subscribes_refused,
            ),
            (
                "dropped_total",
                "Messages dropped for a slow subscriber (queue full).",
                &self.dropped,
            ),
            (
                "slow_disconnects_total",
                "Subscribers disconnected for being stuck.",
                &self.slow_disconnects,
            ),
            ("wills_total", "Will messages published.", &self.wills),
        ];
        for (name, help, v) in counters {
            line(name, "counter", help, c(v).to_string());
        }
        for (name, help, v) in [
            ("retained", "Retained messages held.", &self.retained),
            (
                "sessions",
                "Sessions held (connected or persistent).",
                &self.sessions,
            ),
            ("subscriptions", "Subscriptions held.", &self.subscriptions),
        ] {
            line(name, "gauge", help, g(v).to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.refuse(RefuseReason::BadCredentials);
        m.messages_in.fetch_add(3, Ordering::Relaxed);
        let mut s = String::new();
        m.write_prometheus(&mut s);
        assert!(s.contains("hub_mqtt_connects_refused_total{reason=\"bad_credentials\"} 1\n"));
        assert!(s.contains("hub_mqtt_messages_in_total 3\n"));
        assert!(s.contains("# TYPE hub_mqtt_retained gauge\n"));
        assert!(
            s.lines()
                .all(|l| l.starts_with('#') || l.starts_with("hub_mqtt_"))
        );
    }
}
