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
use protocols::batch::BatchError;
use protocols::messages::DeadLetter;
use protocols::quantity::UnitError;
use protocols::telemetry::{RejectReason, TelemetryError};
use protocols::topic::Topic;

use crate::metrics::Metrics;
use crate::outbound::Outlet;
use crate::twin::DesiredError;

/// Most dead letters for one message; the rest are summed up in one more.
pub const MAX_PER_MESSAGE: usize = 64;

/// Why a message or a part of one was rejected. Variants are in the order of their labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// A batch or health message names another agent than its sender.
    AgentMismatch,
    /// A command result that is not a `CommandResult` document.
    BadCommandResult,
    /// A desired-state update that is not a `DesiredUpdate` document.
    BadDesired,
    /// A camera event that does not parse or fails its checks.
    BadEvent,
    /// A snapshot topic whose event id is not a valid id.
    BadEventId,
    /// A health message that is not a `Health` document.
    BadHealth,
    /// Telemetry `seq` that is not a non-negative integer.
    BadSeq,
    /// A snapshot that is not a whole baseline JPEG.
    BadSnapshot,
    /// Telemetry `ts` that is neither epoch milliseconds nor RFC 3339.
    BadTimestamp,
    /// A desired value of the wrong type or impossible.
    BadValue,
    /// A device (or camera) that exists but is not behind the sending agent.
    DeviceNotOfAgent,
    /// Telemetry that is an empty array.
    EmptyBatch,
    /// A desired-state update without values.
    EmptyDesired,
    /// An agent batch that postcard cannot decode (or with bytes left over).
    MalformedBatch,
    /// A telemetry sample without a `values` object.
    MissingValues,
    /// Telemetry with nothing wrong in particular and nothing to store.
    NoValues,
    /// An event for a device that is not a camera.
    NotACamera,
    /// A desired value for a quantity that cannot be controlled.
    NotControllable,
    /// A number that is NaN or infinite.
    NotFinite,
    /// Telemetry that is not JSON.
    NotJson,
    /// Telemetry that is JSON but neither an object nor an array.
    NotObjectOrArray,
    /// A desired value outside the range the device's profile allows.
    OutOfRange,
    /// Desired state that could not be made durable.
    PersistFailed,
    /// A publish the ingress refused (authorization); the ingress's text is the detail.
    Refused,
    /// A telemetry sample that is not an object.
    SampleNotObject,
    /// A message over its size limit.
    TooLarge,
    /// The sum of the rejected parts of a message beyond [`MAX_PER_MESSAGE`].
    TooManyRejects,
    /// A topic the hub does not take from this client.
    UnexpectedTopic,
    /// A sender that is not an agent in the registry.
    UnknownAgent,
    /// An agent batch in a format version this hub does not know.
    UnknownBatchVersion,
    /// A device that is not in the registry.
    UnknownDevice,
    /// A quantity name or code that is not in the table.
    UnknownQuantity,
    /// A state name that the quantity's enumeration does not have.
    UnknownState,
    /// A unit that is not accepted for the quantity.
    UnknownUnit,
    /// A desired-state update based on a version that is no longer current.
    VersionConflict,
    /// A value of the wrong type for its quantity.
    WrongType,
}

impl DeadLetterReason {
    /// Every reason, in the order of their labels (the order of `/metrics`).
    pub const ALL: [DeadLetterReason; 36] = [
        DeadLetterReason::AgentMismatch,
        DeadLetterReason::BadCommandResult,
        DeadLetterReason::BadDesired,
        DeadLetterReason::BadEvent,
        DeadLetterReason::BadEventId,
        DeadLetterReason::BadHealth,
        DeadLetterReason::BadSeq,
        DeadLetterReason::BadSnapshot,
        DeadLetterReason::BadTimestamp,
        DeadLetterReason::BadValue,
        DeadLetterReason::DeviceNotOfAgent,
        DeadLetterReason::EmptyBatch,
        DeadLetterReason::EmptyDesired,
        DeadLetterReason::MalformedBatch,
        DeadLetterReason::MissingValues,
        DeadLetterReason::NoValues,
        DeadLetterReason::NotACamera,
        DeadLetterReason::NotControllable,
        DeadLetterReason::NotFinite,
        DeadLetterReason::NotJson,
        DeadLetterReason::NotObjectOrArray,
        DeadLetterReason::OutOfRange,
        DeadLetterReason::PersistFailed,
        DeadLetterReason::Refused,
        DeadLetterReason::SampleNotObject,
        DeadLetterReason::TooLarge,
        DeadLetterReason::TooManyRejects,
        DeadLetterReason::UnexpectedTopic,
        DeadLetterReason::UnknownAgent,
        DeadLetterReason::UnknownBatchVersion,
        DeadLetterReason::UnknownDevice,
        DeadLetterReason::UnknownQuantity,
        DeadLetterReason::UnknownState,
        DeadLetterReason::UnknownUnit,
        DeadLetterReason::VersionConflict,
        DeadLetterReason::WrongType,
    ];

    /// The stable label: metric label value and the start of the dead letter's `reason`.
    pub fn label(self) -> &'static str {
        match self {
            DeadLetterReason::AgentMismatch => "agent_mismatch",
            DeadLetterReason::BadCommandResult => "bad_command_result",
            DeadLetterReason::BadDesired => "bad_desired",
            DeadLetterReason::BadEvent => "bad_event",
            DeadLetterReason::BadEventId => "bad_event_id",
            DeadLetterReason::BadHealth => "bad_health",
            DeadLetterReason::BadSeq => "bad_seq",
            DeadLetterReason::BadSnapshot => "bad_snapshot",
            DeadLetterReason::BadTimestamp => "bad_timestamp",
            DeadLetterReason::BadValue => "bad_value",
            DeadLetterReason::DeviceNotOfAgent => "device_not_of_agent",
            DeadLetterReason::EmptyBatch => "empty_batch",
            DeadLetterReason::EmptyDesired => "empty_desired",
            DeadLetterReason::MalformedBatch => "malformed_batch",
            DeadLetterReason::MissingValues => "missing_values",
            DeadLetterReason::NoValues => "no_values",
            DeadLetterReason::NotACamera => "not_a_camera",
            DeadLetterReason::NotControllable => "not_controllable",
            DeadLetterReason::NotFinite => "not_finite",
            DeadLetterReason::NotJson => "not_json",
            DeadLetterReason::NotObjectOrArray => "not_object_or_array",
            DeadLetterReason::OutOfRange => "out_of_range",
            DeadLetterReason::PersistFailed => "persist_failed",
            DeadLetterReason::Refused => "refused",
            DeadLetterReason::SampleNotObject => "sample_not_object",
            DeadLetterReason::TooLarge => "too_large",
            DeadLetterReason::TooManyRejects => "too_many_rejects",
            DeadLetterReason::UnexpectedTopic => "unexpected_topic",
            DeadLetterReason::UnknownAgent => "unknown_agent",
            DeadLetterReason::UnknownBatchVersion => "unknown_batch_version",
            DeadLetterReason::UnknownDevice => "unknown_device",
            DeadLetterReason::UnknownQuantity => "unknown_quantity",
            DeadLetterReason::UnknownState => "unknown_state",
            DeadLetterReason::UnknownUnit => "unknown_unit",
            DeadLetterReason::VersionConflict => "version_conflict",
            DeadLetterReason::WrongType => "wrong_type",
        }
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl From<&BatchError> for DeadLetterReason {
    fn from(e: &BatchError) -> Self {
        match e {
            BatchError::TooLarge(_) => DeadLetterReason::TooLarge,
            BatchError::UnknownVersion(_) => DeadLetterReason::UnknownBatchVersion,
            BatchError::Empty | BatchError::Malformed(_) | BatchError::Trailing(_) => {
                DeadLetterReason::MalformedBatch
            }
        }
    }
}

impl From<&TelemetryError> for DeadLetterReason {
    fn from(e: &TelemetryError) -> Self {
        match e {
            TelemetryError::TooLarge(_) => DeadLetterReason::TooLarge,
            TelemetryError::NotJson(_) => DeadLetterReason::NotJson,
            TelemetryError::NotObjectOrArray => DeadLetterReason::NotObjectOrArray,
            TelemetryError::EmptyBatch => DeadLetterReason::EmptyBatch,
        }
    }
}

impl From<&RejectReason> for DeadLetterReason {
    fn from(r: &RejectReason) -> Self {
        match r {
            RejectReason::SampleNotObject => DeadLetterReason::SampleNotObject,
            RejectReason::MissingValues => DeadLetterReason::MissingValues,
            RejectReason::BadTimestamp(_) => DeadLetterReason::BadTimestamp,
            RejectReason::BadSeq => DeadLetterReason::BadSeq,
            RejectReason::UnknownQuantity(_) => DeadLetterReason::UnknownQuantity,
            RejectReason::Unit(UnitError::UnknownUnit { .. }) => DeadLetterReason::UnknownUnit,
            RejectReason::Unit(UnitError::NotFinite) => DeadLetterReason::NotFinite,
            RejectReason::WrongType { .. } => DeadLetterReason::WrongType,
            RejectReason::UnknownState { .. } => DeadLetterReason::UnknownState,
        }
    }
}

impl From<&DesiredError> for DeadLetterReason {
    fn from(e: &DesiredError) -> Self {
        match e {
            DesiredError::UnknownDevice(_) => DeadLetterReason::UnknownDevice,
            DesiredError::Empty => DeadLetterReason::EmptyDesired,
            DesiredError::UnknownQuantity(_) => DeadLetterReason::UnknownQuantity,
            DesiredError::NotControllable(_) => DeadLetterReason::NotControllable,
            DesiredError::OutOfRange(_) => DeadLetterReason::OutOfRange,
            DesiredError::BadValue { .. } => DeadLetterReason::BadValue,
            DesiredError::Conflict { .. } => DeadLetterReason::VersionConflict,
            DesiredError::Persist(_) => DeadLetterReason::PersistFailed,
        }
    }
}

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

    #[test]
    fn all_lists_every_reason_once_in_label_order() {
        for (i, r) in DeadLetterReason::ALL.iter().enumerate() {
            // Indexes the metric counters.
            assert_eq!(*r as usize, i, "{r}");
        }
        let labels: Vec<&str> = DeadLetterReason::ALL.iter().map(|r| r.label()).collect();
        let mut sorted = labels.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(labels, sorted);
    }

    #[test]
    fn protocol_labels_map_to_the_same_label() {
        use protocols::telemetry::RejectReason as R;
        let reasons = [
            R::SampleNotObject,
            R::MissingValues,
            R::BadTimestamp(String::new()),
            R::BadSeq,
            R::UnknownQuantity(String::new()),
            R::Unit(UnitError::NotFinite),
        ];
        for r in &reasons {
            assert_eq!(DeadLetterReason::from(r).label(), r.label());
        }
    }
}
