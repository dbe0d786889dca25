//! Dead letters (`v1/deadletter/{client}`): every rejected message or part, with the reason
//! and the rejected bytes in base64, counted by reason.

use std::sync::atomic::Ordering::Relaxed;

use base64::Engine as _;
use bytes::Bytes;
use protocols::messages::DeadLetter;
use protocols::topic::Topic;

use crate::metrics::Metrics;
use crate::outbound::Outlet;

/// Most dead letters for one message; the rest are summed up in one more.
pub const MAX_PER_MESSAGE: usize = 64;

/// Builds the dead letter document. `reason` starts with the stable label.
pub fn document(
    client: &str,
    topic: &str,
    label: &str,
    detail: &str,
    part: &[u8],
    ts_ms: i64,
) -> DeadLetter {
    DeadLetter {
        client: client.to_string(),
        topic: topic.chars().take(256).collect(),
        reason: if detail.is_empty() {
            label.to_string()
        } else {
            format!("{label}: {detail}")
        },
        payload_b64: base64::engine::general_purpose::STANDARD.encode(part),
        ts: ts_ms,
    }
}

/// Counts and publishes a dead letter on `v1/deadletter/{owner}`.
#[allow(clippy::too_many_arguments)]
pub fn send(
    outlet: &Outlet,
    metrics: &Metrics,
    owner: &str,
    client: &str,
    topic: &str,
    label: &'static str,
    detail: &str,
    part: &[u8],
    ts_ms: i64,
) {
    metrics.rejected(label);
    let doc = document(client, topic, label, detail, part, ts_ms);
    tracing::debug!(client, topic = %doc.topic, reason = %doc.reason, "dead letter");
    match serde_json::to_vec(&doc) {
        Ok(bytes) => {
            outlet.publish(
                &Topic::DeadLetter(owner).to_string(),
                Bytes::from(bytes),
                false,
            );
            metrics.deadletters.fetch_add(1, Relaxed);
        }
        Err(e) => tracing::error!("dead letter not serializable: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content() {
        let d = document(
            "WL-1",
            "v1/devices/WL-1/telemetry",
            "unknown_quantity",
            "values.flux: unknown quantity `flux`",
            b"{\"value\":1}",
            42,
        );
        assert_eq!(
            d.reason,
            "unknown_quantity: values.flux: unknown quantity `flux`"
        );
        assert_eq!(d.payload_b64, "eyJ2YWx1ZSI6MX0=");
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"client":"WL-1","topic":"v1/devices/WL-1/telemetry",
                "reason":"unknown_quantity: values.flux: unknown quantity `flux`",
                "payload_b64":"eyJ2YWx1ZSI6MX0=","ts":42})
        );
        assert_eq!(document("a", "t", "x", "", b"", 0).reason, "x");
    }
}
