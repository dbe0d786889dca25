//! Sparkplug B (Eclipse Sparkplug 3.0) for edge nodes publishing over MQTT: the codec and the
//! host application's view of each edge node's session, without I/O and without a clock.
//!
//! - [`topic`]: `spBv1.0/{group}/{NBIRTH|NDEATH|NDATA|NCMD|DBIRTH|DDEATH|DDATA|DCMD}/{edge node}[/{device}]`
//!   and `spBv1.0/STATE/{host}`, parsed and built.
//! - [`payload`]: the protobuf messages of `sparkplug_b.proto` (Eclipse Tahu), written by hand
//!   with its field numbers.
//! - [`value`]: a metric's value read through its datatype into a [`MetricValue`], and back.
//! - [`command`]: what the host sends: the NCMD rebirth request, DCMD metric writes, its STATE.
//! - [`state`]: births, aliases, `seq` and `bdSeq` tracked per edge node; each message becomes
//!   an [`Outcome`]: readings, online, offline, a rebirth to request, or ignored with a reason.
//!
//! Mapping metric names to quantities, the broker's access rules for `spBv1.0/...` and sending
//! the commands belong to the hub.

pub mod command;
pub mod payload;
pub mod state;
pub mod topic;
pub mod value;

pub use command::{BD_SEQ_METRIC, REBIRTH_METRIC, host_state, rebirth_request, write_metric};
pub use payload::{DataType, Metric, Payload, PayloadError, decode, encode};
pub use state::{
    BirthError, EdgeNodes, IgnoreReason, Limits, MessageError, MetricError, Outcome, Reading,
    RebirthReason, Rejected,
};
pub use topic::{EdgeTopic, IdError, IdPart, MessageType, NAMESPACE, Topic, TopicError};
pub use value::{MetricValue, ValueError, decode_value, encode_value};
