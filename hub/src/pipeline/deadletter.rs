//! Dead letters (`v1/deadletter/{client}`): every rejected message or part, with the reason
//! and the rejected bytes in base64, counted by reason.
//!
//! Every reason is one [`DeadLetterReason`]: its [`label`](DeadLetterReason::label) is the
//! metric label of `hub_rejected_total{reason}` and the start of the dead letter's `reason`
//! (`label: detail`), both relied on by apps, so labels never change.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use base64::Engine as _;
use bytes::Bytes;
use mqtt_broker::ingress::{Disposition, Inbound};
use protocols::deadletter::DeadLetterReason;
use protocols::messages::DeadLetter;
use protocols::topic::Topic;

use crate::metrics::Metrics;
use crate::outbound::Outlet;

/// Most dead letters for one message; the rest are summed up in one more.
pub const MAX_PER_MESSAGE: usize = 64;

/// Builds the dead letter document. Its `reason` starts with the stable label.
pub fn document(
    client: &str,
    topic: &str,
    reason: DeadLetterReason,
    detail: &str,
    part: &[u8],
    ts_ms: i64,
) -> DeadLetter {
    let label = reason.label();
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

/// Where a rejected message came from: the dead letter goes to `v1/deadletter/{owner}` and
/// names the client and topic.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    /// The identity that owns the dead-letter topic (an app's id, not its `id.suffix`).
    pub owner: &'a str,
    /// The MQTT client id that sent the message.
    pub client: &'a str,
    /// The topic it was sent on.
    pub topic: &'a str,
    /// Hub time of arrival, epoch milliseconds.
    pub ts_ms: i64,
}

impl<'a> Source<'a> {
    /// The sender of `msg`, which came on `topic` (taken out of the message while decoding).
    pub fn of(msg: &'a Inbound, topic: &'a str) -> Source<'a> {
        Source {
            owner: msg.principal.id(),
            client: &msg.client_id,
            topic,
            ts_ms: msg.received_ms,
        }
    }
}

/// The dead-letter sink: counts every rejection by reason and publishes its dead letter.
#[derive(Clone)]
pub struct DeadLetters {
    outlet: Outlet,
    metrics: Arc<Metrics>,
}

impl DeadLetters {
    /// A sink publishing through `outlet` and counting in `metrics`.
    pub fn new(outlet: Outlet, metrics: Arc<Metrics>) -> DeadLetters {
        DeadLetters { outlet, metrics }
    }

    /// Counts a rejection and publishes its dead letter with `part`, the rejected bytes.
    pub fn send(&self, from: &Source<'_>, reason: DeadLetterReason, detail: &str, part: &[u8]) {
        self.metrics.rejected(reason);
        let doc = document(from.client, from.topic, reason, detail, part, from.ts_ms);
        tracing::debug!(client = from.client, topic = %doc.topic, reason = %doc.reason, "dead letter");
        match serde_json::to_vec(&doc) {
            Ok(bytes) => {
                self.outlet.publish(
                    &Topic::DeadLetter(from.owner).to_string(),
                    Bytes::from(bytes),
                    false,
                );
                self.metrics.deadletters.fetch_add(1, Relaxed);
            }
            Err(e) => tracing::error!("dead letter not serializable: {e}"),
        }
    }

    /// Rejects a whole message (which came on `topic`): its dead letter quotes the first
    /// `quote` bytes of the payload, then the ingress is told `Rejected`.
    pub fn reject(
        &self,
        msg: &mut Inbound,
        topic: &str,
        reason: DeadLetterReason,
        detail: &str,
        quote: usize,
    ) {
        let part = &msg.payload[..msg.payload.len().min(quote)];
        self.send(&Source::of(msg, topic), reason, detail, part);
        msg.finish(Disposition::Rejected(format!("{reason}: {detail}")));
    }

    /// Rejected parts of one message, at most [`MAX_PER_MESSAGE`] dead letters of them.
    pub fn parts<'a>(&'a self, from: Source<'a>) -> PartRejects<'a> {
        PartRejects {
            sink: self,
            from,
            count: 0,
        }
    }
}

/// Rejected parts of one message: the first [`MAX_PER_MESSAGE`] are sent, the rest counted
/// and summed up in one more dead letter by [`finish`](PartRejects::finish), so a garbage
/// message cannot flood the dead-letter topic.
pub struct PartRejects<'a> {
    sink: &'a DeadLetters,
    from: Source<'a>,
    count: usize,
}

impl PartRejects<'_> {
    /// Rejects one part.
    pub fn reject(&mut self, reason: DeadLetterReason, detail: &str, part: &[u8]) {
        self.count += 1;
        if self.count <= MAX_PER_MESSAGE {
            self.sink.send(&self.from, reason, detail, part);
        } else {
            self.sink.metrics.rejected(reason);
        }
    }

    /// How many parts were rejected.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Sends the summary of the parts beyond the limit, if any.
    pub fn finish(self) {
        if self.count > MAX_PER_MESSAGE {
            let more = self.count - MAX_PER_MESSAGE;
            self.sink.send(
                &self.from,
                DeadLetterReason::TooManyRejects,
                &format!("{more} more rejected parts, counted but not sent"),
                &[],
            );
        }
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
            DeadLetterReason::UnknownQuantity,
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
        assert_eq!(
            document("a", "t", DeadLetterReason::Refused, "", b"", 0).reason,
            "refused"
        );
    }
}
