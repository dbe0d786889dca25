//! Counters and gauges of the MQTT ingress, exported through a `prometheus_client`
//! [`Collector`] ([`MetricsCollector`]).

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

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
    /// The broker already serves `max_connections`.
    ServerBusy,
}

impl RefuseReason {
    const ALL: [RefuseReason; 6] = [
        RefuseReason::BadCredentials,
        RefuseReason::ClientId,
        RefuseReason::WillDenied,
        RefuseReason::Protocol,
        RefuseReason::ShuttingDown,
        RefuseReason::ServerBusy,
    ];

    fn label(self) -> &'static str {
        match self {
            RefuseReason::BadCredentials => "bad_credentials",
            RefuseReason::ClientId => "client_id",
            RefuseReason::WillDenied => "will_denied",
            RefuseReason::Protocol => "protocol",
            RefuseReason::ShuttingDown => "shutting_down",
            RefuseReason::ServerBusy => "server_busy",
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
    refused: [AtomicU64; RefuseReason::ALL.len()],
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
    /// Persistent sessions and retained topics changed and not yet written to the state file.
    pub state_pending: AtomicI64,
    /// Publishes a client had to wait for because it was over its rate.
    pub throttled: AtomicU64,
    /// Clients disconnected for flooding (over their rate for the whole grace period).
    pub flood_disconnects: AtomicU64,
    /// Subscriptions refused because the session holds as many as it may.
    pub subscriptions_over_quota: AtomicU64,
    /// TLS handshakes completed on the TLS listeners.
    pub tls_handshakes: AtomicU64,
    /// Messages queued for a persistent session whose client is away.
    pub queued_offline: AtomicU64,
    /// Writes of the state file (sessions and retained messages that changed) that committed.
    pub state_flushes: AtomicU64,
    /// TLS handshakes that failed (plaintext on the TLS port, an unknown CA, an expired
    /// certificate, a timeout).
    pub tls_failures: AtomicU64,
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
}

/// Exports a [`Metrics`] through a [`prometheus_client`] registry.
///
/// Names carry no prefix: the hub registers this under `hub_mqtt` (a `hub` registry's
/// `sub_registry_with_prefix("mqtt")`), which gives `hub_mqtt_connections`,
/// `hub_mqtt_messages_in_total` and so on. The values are read at scrape time; counting stays
/// the relaxed atomic updates of [`Metrics`].
#[derive(Debug, Clone)]
pub struct MetricsCollector(Arc<Metrics>);

impl MetricsCollector {
    /// A collector reading `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> MetricsCollector {
        MetricsCollector(metrics)
    }
}

/// The label set of `connects_refused_total`.
#[derive(Debug, EncodeLabelSet)]
struct RefusedLabels {
    reason: RefuseReason,
}

impl EncodeLabelValue for RefuseReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(self.label())
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: &AtomicU64) -> fmt::Result {
    let c = ConstCounter::new(v.load(Ordering::Relaxed));
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: &AtomicI64) -> fmt::Result {
    let g = ConstGauge::new(v.load(Ordering::Relaxed));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for MetricsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let m = &*self.0;
        gauge(
            &mut e,
            "connections",
            "Open MQTT connections.",
            &m.connections,
        )?;
        gauge(
            &mut e,
            "state_pending",
            "Sessions and retained topics changed, not yet in the state file.",
            &m.state_pending,
        )?;
        counter(
            &mut e,
            "tcp_accepted",
            "TCP connections accepted.",
            &m.tcp_accepted,
        )?;
        counter(&mut e, "connects", "CONNECTs accepted.", &m.connects)?;
        {
            let mut family = e.encode_descriptor(
                "connects_refused",
                "CONNECTs refused, by reason.",
                None,
                MetricType::Counter,
            )?;
            for reason in RefuseReason::ALL {
                ConstCounter::new(m.refused(reason))
                    .encode(family.encode_family(&RefusedLabels { reason })?)?;
            }
        }
        let counters: [(&str, &str, &AtomicU64); 20] = [
            (
                "queued_offline",
                "Messages queued for persistent sessions whose client is away.",
                &m.queued_offline,
            ),
            (
                "state_flushes",
                "State file writes (persistent sessions, retained messages) committed.",
                &m.state_flushes,
            ),
            (
                "throttled",
                "Publishes delayed because their client was over its rate.",
                &m.throttled,
            ),
            (
                "flood_disconnects",
                "Clients disconnected for staying over their rate.",
                &m.flood_disconnects,
            ),
            (
                "subscriptions_over_quota",
                "Subscriptions refused: the session holds as many as it may.",
                &m.subscriptions_over_quota,
            ),
            (
                "tls_handshakes",
                "TLS handshakes completed.",
                &m.tls_handshakes,
            ),
            (
                "tls_failures",
                "TLS handshakes failed (bad certificate, plaintext, timeout).",
                &m.tls_failures,
            ),
            (
                "protocol_errors",
                "Connections closed for malformed or unexpected packets.",
                &m.protocol_errors,
            ),
            (
                "oversized",
                "Connections closed for an oversized packet.",
                &m.oversized,
            ),
            (
                "keepalive_timeouts",
                "Connections closed because the keepalive expired.",
                &m.keepalive_timeouts,
            ),
            (
                "takeovers",
                "Sessions taken over by a new connection with the same client id.",
                &m.takeovers,
            ),
            ("messages_in", "PUBLISH packets received.", &m.messages_in),
            ("bytes_in", "Bytes received.", &m.bytes_in),
            ("messages_out", "PUBLISH packets sent.", &m.messages_out),
            ("bytes_out", "Bytes sent.", &m.bytes_out),
            (
                "publishes_refused",
                "Publishes refused by the access rules.",
                &m.publishes_refused,
            ),
            (
                "subscribes_refused",
                "Subscription filters refused by the access rules.",
                &m.subscribes_refused,
            ),
            (
                "dropped",
                "Messages dropped for a slow subscriber (queue full).",
                &m.dropped,
            ),
            (
                "slow_disconnects",
                "Subscribers disconnected for being stuck.",
                &m.slow_disconnects,
            ),
            ("wills", "Will messages published.", &m.wills),
        ];
        for (name, help, v) in counters {
            counter(&mut e, name, help, v)?;
        }
        for (name, help, v) in [
            ("retained", "Retained messages held.", &m.retained),
            (
                "sessions",
                "Sessions held (connected or persistent).",
                &m.sessions,
            ),
            ("subscriptions", "Subscriptions held.", &m.subscriptions),
        ] {
            gauge(&mut e, name, help, v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::prometheus_text;
    use prometheus_client::registry::Registry;

    /// The page as the hub serves it: a `hub` registry with the broker under `mqtt`.
    fn render(m: &Arc<Metrics>) -> String {
        let mut registry = Registry::with_prefix("hub");
        registry
            .sub_registry_with_prefix("mqtt")
            .register_collector(Box::new(MetricsCollector::new(m.clone())));
        let mut s = String::new();
        prometheus_text::encode(&mut s, &registry).unwrap();
        s
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Arc::new(Metrics::default());
        m.refuse(RefuseReason::BadCredentials);
        m.refuse(RefuseReason::ShuttingDown);
        m.messages_in.fetch_add(3, Ordering::Relaxed);
        m.connections.fetch_add(2, Ordering::Relaxed);
        let s = render(&m);
        assert!(s.contains(
            "# HELP hub_mqtt_connects_refused_total CONNECTs refused, by reason.\n\
             # TYPE hub_mqtt_connects_refused_total counter\n\
             hub_mqtt_connects_refused_total{reason=\"bad_credentials\"} 1\n\
             hub_mqtt_connects_refused_total{reason=\"client_id\"} 0\n"
        ));
        assert!(s.contains("hub_mqtt_connects_refused_total{reason=\"shutting_down\"} 1\n"));
        assert!(s.contains(
            "# HELP hub_mqtt_messages_in_total PUBLISH packets received.\n\
             # TYPE hub_mqtt_messages_in_total counter\n\
             hub_mqtt_messages_in_total 3\n"
        ));
        assert!(s.contains("# TYPE hub_mqtt_connections gauge\nhub_mqtt_connections 2\n"));
        assert!(s.contains("# TYPE hub_mqtt_retained gauge\n"));
        assert!(
            s.lines()
                .all(|l| l.starts_with('#') || l.starts_with("hub_mqtt_"))
        );
        // 28 families: 5 gauges, 23 counters.
        assert_eq!(s.matches("# TYPE ").count(), 28, "{s}");
        assert_eq!(s.matches(" gauge\n").count(), 5);
    }
}
