//! Why a message, or a part of one, went to the dead letters (`v1/deadletter/{client}`): one
//! enum with a stable label per reason. The label is the metric label value
//! (`hub_rejected_total{reason}`) and the start of the dead letter's `reason` text, so apps can
//! match on it.

use crate::batch::BatchError;
use crate::quantity::UnitError;
use crate::telemetry::{RejectReason, TelemetryError};

/// Why a message or a part of one was rejected. Variants are in the order of their labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// A batch or health message names another agent than its sender.
    AgentMismatch,
    /// A command result that is not a `CommandResult` document.
    BadCommandResult,
    /// A station that named an unknown MN or the wrong PW (HJ 212); its connection is closed.
    BadCredentials,
    /// A desired-state update that is not a `DesiredUpdate` document.
    BadDesired,
    /// A camera event that does not parse or fails its checks.
    BadEvent,
    /// A snapshot topic whose event id is not a valid id.
    BadEventId,
    /// An HJ 212 packet whose framing, length, CRC or data segment is wrong.
    BadFrame,
    /// A health message that is not a `Health` document.
    BadHealth,
    /// Telemetry `seq` that is not a non-negative integer.
    BadSeq,
    /// A snapshot that is not a whole baseline JPEG.
    BadSnapshot,
    /// A Sparkplug B message whose topic or protobuf payload cannot be read, or a birth
    /// certificate that cannot be accepted.
    BadSparkplug,
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
    /// A split HJ 212 message whose parts did not all arrive in time.
    Incomplete,
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
    /// Sparkplug B data the hub cannot interpret because the edge node's session and the
    /// hub's view of it differ (data before a birth, a `seq` gap, an unknown alias); a rebirth
    /// was requested.
    OutOfSession,
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
    pub const ALL: [DeadLetterReason; 41] = [
        DeadLetterReason::AgentMismatch,
        DeadLetterReason::BadCommandResult,
        DeadLetterReason::BadCredentials,
        DeadLetterReason::BadDesired,
        DeadLetterReason::BadEvent,
        DeadLetterReason::BadEventId,
        DeadLetterReason::BadFrame,
        DeadLetterReason::BadHealth,
        DeadLetterReason::BadSeq,
        DeadLetterReason::BadSnapshot,
        DeadLetterReason::BadSparkplug,
        DeadLetterReason::BadTimestamp,
        DeadLetterReason::BadValue,
        DeadLetterReason::DeviceNotOfAgent,
        DeadLetterReason::EmptyBatch,
        DeadLetterReason::EmptyDesired,
        DeadLetterReason::Incomplete,
        DeadLetterReason::MalformedBatch,
        DeadLetterReason::MissingValues,
        DeadLetterReason::NoValues,
        DeadLetterReason::NotACamera,
        DeadLetterReason::NotControllable,
        DeadLetterReason::NotFinite,
        DeadLetterReason::NotJson,
        DeadLetterReason::NotObjectOrArray,
        DeadLetterReason::OutOfRange,
        DeadLetterReason::OutOfSession,
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
            DeadLetterReason::BadCredentials => "bad_credentials",
            DeadLetterReason::BadDesired => "bad_desired",
            DeadLetterReason::BadEvent => "bad_event",
            DeadLetterReason::BadEventId => "bad_event_id",
            DeadLetterReason::BadFrame => "bad_frame",
            DeadLetterReason::BadHealth => "bad_health",
            DeadLetterReason::BadSeq => "bad_seq",
            DeadLetterReason::BadSnapshot => "bad_snapshot",
            DeadLetterReason::BadSparkplug => "bad_sparkplug",
            DeadLetterReason::BadTimestamp => "bad_timestamp",
            DeadLetterReason::BadValue => "bad_value",
            DeadLetterReason::DeviceNotOfAgent => "device_not_of_agent",
            DeadLetterReason::EmptyBatch => "empty_batch",
            DeadLetterReason::EmptyDesired => "empty_desired",
            DeadLetterReason::Incomplete => "incomplete",
            DeadLetterReason::MalformedBatch => "malformed_batch",
            DeadLetterReason::MissingValues => "missing_values",
            DeadLetterReason::NoValues => "no_values",
            DeadLetterReason::NotACamera => "not_a_camera",
            DeadLetterReason::NotControllable => "not_controllable",
            DeadLetterReason::NotFinite => "not_finite",
            DeadLetterReason::NotJson => "not_json",
            DeadLetterReason::NotObjectOrArray => "not_object_or_array",
            DeadLetterReason::OutOfRange => "out_of_range",
            DeadLetterReason::OutOfSession => "out_of_session",
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

impl core::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        use crate::telemetry::RejectReason as R;
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
