//! The host application's view of each edge node's session, without I/O or clock: decoded
//! messages go in, typed [`Outcome`]s come out.
//!
//! Rules (Sparkplug 3.0):
//! - **NBIRTH** starts a session. It must carry `seq` 0..=255, which becomes the starting
//!   number ([tck-id-payloads-nbirth-seq], [tck-id-message-flow-edge-node-birth-publish-nbirth-payload-seq]),
//!   and a `bdSeq` metric ([tck-id-payloads-nbirth-bdseq]), remembered to recognise the
//!   session's NDEATH. Every metric has a name and a datatype
//!   ([tck-id-payloads-metric-datatype-req], [tck-id-payloads-alias-birth-requirement]); aliases
//!   are unique across the node and its devices ([tck-id-payloads-alias-uniqueness]). The
//!   previous session's devices and definitions are dropped: DBIRTHs follow. A refused NBIRTH
//!   ends the previous session too, and the node counts as offline until a good one.
//! - **`seq`**: every later message of the node (NDATA, DBIRTH, DDATA, DDEATH) carries the
//!   previous number plus one, 255 wrapping to 0 ([tck-id-payloads-sequence-num-incrementing]).
//!   A gap is answered at once with a rebirth request: the reorder timeout of
//!   [tck-id-operational-behavior-host-reordering-param] is zero, which the specification
//!   allows where messages arrive in order; the caller hands one connection's messages over in
//!   the order they arrived.
//! - **Data** (NDATA, DDATA) may name metrics by alias or by name; values are read with the
//!   birth's datatype. Data before a birth, from a device without DBIRTH, with an unknown alias
//!   or name, or after a gap means this view and the node disagree: the node becomes *stale*,
//!   its data is ignored and a rebirth is requested (NCMD `Node Control/Rebirth`,
//!   [tck-id-operational-behavior-data-commands-ncmd-rebirth-name]) until an NBIRTH arrives.
//!   Requests to one node are at least [`Limits::rebirth_interval_ms`] apart, whatever happens
//!   in between, so neither a node that keeps publishing while it rebirths nor one whose
//!   births are refused every time is flooded with commands.
//! - **NDEATH** counts only if its `bdSeq` equals the current session's
//!   ([tck-id-payloads-ndeath-bdseq]): a will of an older session, delivered late, is ignored.
//!   It takes the node and every device offline
//!   ([tck-id-operational-behavior-edge-node-termination-host-action-ndeath-devices-offline]);
//!   the time is the host's time of receipt, so [`Outcome::Offline`] has no timestamp.
//! - **DDEATH** takes one device offline at the payload's timestamp
//!   ([tck-id-operational-behavior-edge-node-termination-host-action-ddeath-devices-offline]).
//!   It is applied even after a gap, and the rebirth is then requested with the next message.
//! - **Historical** metrics are readings flagged `historical`: stored, not live.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::command::BD_SEQ_METRIC;
use super::payload::{self, DataType, Metric, Payload, PayloadError, metric, property_value};
use super::topic::{EdgeTopic, MessageType, Topic, TopicError};
use super::value::{MetricValue, ValueError, decode_value};
use crate::quantity::Quality;

/// Bounds of the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The least time between two rebirth requests to one edge node.
    pub rebirth_interval_ms: u64,
    /// Edge nodes tracked at most; messages of further nodes are ignored.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            rebirth_interval_ms: 5_000,
            max_nodes: 10_000,
        }
    }
}

/// One metric value out of a birth or data message.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// The metric's name (from the birth when the message used an alias).
    pub name: Arc<str>,
    /// The alias the message used, if any.
    pub alias: Option<u64>,
    /// The datatype from the birth.
    pub datatype: DataType,
    /// The value.
    pub value: MetricValue,
    /// The metric's timestamp, else the payload's (ms since the epoch, UTC); `None` if neither
    /// is given, for the caller to stamp.
    pub timestamp_ms: Option<u64>,
    /// `is_historical`: to be stored without updating the live state or firing live rules.
    pub historical: bool,
    /// `is_transient`: not to be stored.
    pub transient: bool,
    /// The `Quality` property if the metric has one: 192 good, 0 bad, 500 (stale) and any
    /// other code uncertain.
    pub quality: Option<Quality>,
}

/// Why one metric of an accepted message was left out of the readings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    /// A data metric with neither name nor alias.
    #[error("metric has neither name nor alias")]
    Unnamed,
    /// The value does not fit the datatype.
    #[error(transparent)]
    Value(#[from] ValueError),
}

/// A metric left out, with what identifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The metric's name, if known.
    pub name: Option<Arc<str>>,
    /// The alias the message used, if any.
    pub alias: Option<u64>,
    /// Why.
    pub error: MetricError,
}

/// Why a birth certificate was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BirthError {
    /// No `seq`, or one above 255.
    #[error("seq {0:?} is not 0..=255")]
    Seq(Option<u64>),
    /// An NBIRTH without a `bdSeq` metric.
    #[error("no bdSeq metric")]
    NoBdSeq,
    /// A `bdSeq` metric that is not a non-negative integer.
    #[error("bdSeq is not a non-negative integer")]
    BadBdSeq,
    /// A metric without a name.
    #[error("metric #{0} has no name")]
    Unnamed(usize),
    /// A metric without a known datatype.
    #[error("metric `{name}` has datatype {code:?}, not a known one")]
    Datatype {
        /// The metric.
        name: String,
        /// The datatype field.
        code: Option<u32>,
    },
    /// Two metrics with one name.
    #[error("metric `{0}` defined twice")]
    DuplicateName(String),
    /// An alias already used by the node or one of its devices.
    #[error("alias {0} used twice")]
    DuplicateAlias(u64),
}

/// Why the edge node must publish its births again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RebirthReason {
    /// A message other than NBIRTH from a node without a current session (never born, dead,
    /// or its last NBIRTH refused).
    #[error("message before the node's birth")]
    NotBorn,
    /// A `seq` that does not follow the previous message's.
    #[error("seq {got:?} where {expected} was due")]
    Sequence {
        /// The number due.
        expected: u8,
        /// The number received (`None`: the message had none).
        got: Option<u64>,
    },
    /// Data by an alias no birth defined.
    #[error("unknown alias {alias}")]
    UnknownAlias {
        /// The device, or `None` for the node's own metrics.
        device: Option<Arc<str>>,
        /// The alias.
        alias: u64,
    },
    /// Data for a metric name no birth defined.
    #[error("unknown metric `{name}`")]
    UnknownMetric {
        /// The device, or `None` for the node's own metrics.
        device: Option<Arc<str>>,
        /// The name.
        name: String,
    },
    /// Device data from a device without a DBIRTH in this session.
    #[error("device `{0}` has no birth")]
    DeviceNotBorn(Arc<str>),
    /// A birth certificate that could not be accepted.
    #[error("bad birth: {error}")]
    BadBirth {
        /// The device of a DBIRTH, or `None` for an NBIRTH.
        device: Option<Arc<str>>,
        /// What was wrong.
        error: BirthError,
    },
}

/// Why a message changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IgnoreReason {
    /// NCMD or DCMD: sent by a host application, not an edge node.
    #[error("command from a host application")]
    Command,
    /// A host application's `STATE` message.
    #[error("host application state")]
    HostState,
    /// The node's data cannot be interpreted and a rebirth was requested less than
    /// [`Limits::rebirth_interval_ms`] ago.
    #[error("waiting for a rebirth ({0})")]
    RebirthPending(RebirthReason),
    /// An NDEATH of another session than the current one.
    #[error("NDEATH with bdSeq {got}, the session's is {current:?}")]
    StaleBdSeq {
        /// The bdSeq of the node's last NBIRTH.
        current: Option<u64>,
        /// The NDEATH's.
        got: u64,
    },
    /// An NDEATH without a readable `bdSeq` metric.
    #[error("NDEATH without bdSeq ({0})")]
    NoBdSeq(BirthError),
    /// A death of a node or device that is not online.
    #[error("death of a node or device that is not online")]
    NotOnline {
        /// The device of a DDEATH, `None` for an NDEATH.
        device: Option<Arc<str>>,
    },
    /// [`Limits::max_nodes`] are tracked already.
    #[error("too many edge nodes")]
    TooManyNodes,
}

/// What a message meant.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// NBIRTH (`device` `None`) or DBIRTH accepted: online; the birth's values are readings.
    Online {
        /// The device of a DBIRTH.
        device: Option<Arc<str>>,
        /// The birth's metric values (`bdSeq` left out).
        readings: Vec<Reading>,
        /// Metrics whose values were refused; their definitions stand.
        rejected: Vec<Rejected>,
        /// For an NBIRTH, the devices online in the node's previous session: offline until
        /// their DBIRTH comes (one that does not come is gone).
        devices_offline: Vec<Arc<str>>,
    },
    /// NDATA (`device` `None`) or DDATA accepted.
    Readings {
        /// The device of a DDATA.
        device: Option<Arc<str>>,
        /// The values.
        readings: Vec<Reading>,
        /// Metrics left out.
        rejected: Vec<Rejected>,
    },
    /// NDEATH (`device` `None`, every device in `devices` offline with the node) or DDEATH.
    Offline {
        /// The device of a DDEATH.
        device: Option<Arc<str>>,
        /// For an NDEATH, the devices that were online.
        devices: Vec<Arc<str>>,
        /// For a DDEATH, the payload's timestamp; for an NDEATH `None`: the will's timestamp
        /// is not when the node died, the receipt time counts.
        timestamp_ms: Option<u64>,
    },
    /// Send NCMD `Node Control/Rebirth` = true to the edge node
    /// ([`rebirth_request`](super::command::rebirth_request)).
    RequestRebirth {
        /// Why.
        reason: RebirthReason,
    },
    /// Nothing changed.
    Ignored {
        /// Why.
        reason: IgnoreReason,
    },
}

impl Outcome {
    /// The readings of an `Online` or `Readings` outcome; empty otherwise.
    pub fn readings(&self) -> &[Reading] {
        match self {
            Outcome::Online { readings, .. } | Outcome::Readings { readings, .. } => readings,
            _ => &[],
        }
    }
}

/// Why a raw message could not be handled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not a Sparkplug B topic.
    #[error("topic: {0}")]
    Topic(#[from] TopicError),
    /// Not a Sparkplug B payload.
    #[error("payload: {0}")]
    Payload(#[from] PayloadError),
}

/// Names, aliases and datatypes one birth defined.
#[derive(Debug, Default)]
struct Definitions {
    by_name: BTreeMap<Arc<str>, DataType>,
    by_alias: BTreeMap<u64, Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// No current session: never born, dead, or the last NBIRTH was refused.
    Offline,
    Online,
    /// Online, but its messages cannot be trusted until the next NBIRTH.
    Stale(RebirthReason),
}

#[derive(Debug)]
struct Node {
    status: Status,
    /// The bdSeq of the last accepted NBIRTH.
    bd_seq: Option<u64>,
    last_seq: u8,
    metrics: Definitions,
    /// The devices online in this session.
    devices: BTreeMap<Arc<str>, Definitions>,
    last_request_ms: Option<u64>,
}

impl Node {
    fn new() -> Node {
        Node {
            status: Status::Offline,
            bd_seq: None,
            last_seq: 0,
            metrics: Definitions::default(),
            devices: BTreeMap::new(),
            last_request_ms: None,
        }
    }

    /// A rebirth request, unless one went out less than `interval` ago (or the clock went
    /// back, which also allows one).
    fn request(&mut self, reason: RebirthReason, now_ms: u64, interval: u64) -> Outcome {
        let due = self
            .last_request_ms
            .is_none_or(|t| now_ms.checked_sub(t).is_none_or(|d| d >= interval));
        if due {
            self.last_request_ms = Some(now_ms);
            Outcome::RequestRebirth { reason }
        } else {
            Outcome::Ignored {
                reason: IgnoreReason::RebirthPending(reason),
            }
        }
    }

    /// The node's session is no longer trusted.
    fn stale(&mut self, reason: RebirthReason, now_ms: u64, interval: u64) -> Outcome {
        self.status = Status::Stale(reason.clone());
        self.request(reason, now_ms, interval)
    }

    /// For a message that needs a live session: the outcome that refuses it, if any.
    fn needs_session(&mut self, now_ms: u64, interval: u64) -> Option<Outcome> {
        match &self.status {
            Status::Online => None,
            Status::Stale(reason) => Some(self.request(reason.clone(), now_ms, interval)),
            Status::Offline => Some(self.request(RebirthReason::NotBorn, now_ms, interval)),
        }
    }

    /// For a message that needs a live session and the next `seq`: advances `seq`, or the
    /// outcome that refuses the message (a gap makes the session stale).
    fn in_session(&mut self, payload: &Payload, now_ms: u64, interval: u64) -> Result<(), Outcome> {
        if let Some(refused) = self.needs_session(now_ms, interval) {
            return Err(refused);
        }
        self.next_seq(payload)
            .map_err(|reason| self.stale(reason, now_ms, interval))
    }

    /// Checks and advances `seq`.
    fn next_seq(&mut self, payload: &Payload) -> Result<(), RebirthReason> {
        let expected = self.last_seq.wrapping_add(1);
        if payload.seq == Some(u64::from(expected)) {
            self.last_seq = expected;
            Ok(())
        } else {
            Err(RebirthReason::Sequence {
                expected,
                got: payload.seq,
            })
        }
    }

    fn end_session(&mut self) -> Vec<Arc<str>> {
        self.status = Status::Offline;
        self.metrics = Definitions::default();
        core::mem::take(&mut self.devices).into_keys().collect()
    }
}

/// The sessions of every edge node seen, by group and edge node id.
#[derive(Debug)]
pub struct EdgeNodes {
    limits: Limits,
    groups: BTreeMap<Arc<str>, BTreeMap<Arc<str>, Node>>,
    count: usize,
}

impl Default for EdgeNodes {
    fn default() -> EdgeNodes {
        EdgeNodes::new(Limits::default())
    }
}

impl EdgeNodes {
    /// No node seen yet.
    pub fn new(limits: Limits) -> EdgeNodes {
        EdgeNodes {
            limits,
            groups: BTreeMap::new(),
            count: 0,
        }
    }

    /// Parses the topic, decodes the payload and handles the message. `STATE` and command
    /// topics are ignored without decoding their payloads.
    pub fn handle_message(
        &mut self,
        topic: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Outcome, MessageError> {
        let topic = match Topic::parse(topic)? {
            Topic::HostState { .. } => {
                return Ok(Outcome::Ignored {
                    reason: IgnoreReason::HostState,
                });
            }
            Topic::Edge(t) => t,
        };
        if topic.kind.is_command() {
            return Ok(Outcome::Ignored {
                reason: IgnoreReason::Command,
            });
        }
        let payload = payload::decode(payload)?;
        Ok(self.handle(&topic, &payload, now_ms))
    }

    /// Handles one decoded message of an edge node or device. `now_ms` only spaces rebirth
    /// requests.
    pub fn handle(&mut self, topic: &EdgeTopic<'_>, payload: &Payload, now_ms: u64) -> Outcome {
        let interval = self.limits.rebirth_interval_ms;
        // The message type decides whether a device is meant, even for a hand-built topic.
        let device = topic.device.unwrap_or("");
        match topic.kind {
            MessageType::NCmd | MessageType::DCmd => Outcome::Ignored {
                reason: IgnoreReason::Command,
            },
            MessageType::NDeath => match self.node_mut(topic) {
                Some(node) => node_death(node, payload),
                None => Outcome::Ignored {
                    reason: IgnoreReason::NotOnline { device: None },
                },
            },
            MessageType::DDeath => match self.node_mut(topic) {
                Some(node) => device_death(node, device, payload),
                None => Outcome::Ignored {
                    reason: IgnoreReason::NotOnline {
                        device: Some(device.into()),
                    },
                },
            },
            MessageType::NBirth => match self.node_or_insert(topic) {
                Some(node) => node_birth(node, payload, now_ms, interval),
                None => too_many(),
            },
            MessageType::DBirth => match self.node_or_insert(topic) {
                Some(node) => device_birth(node, device, payload, now_ms, interval),
                None => too_many(),
            },
            MessageType::NData | MessageType::DData => match self.node_or_insert(topic) {
                Some(node) => {
                    let device = topic.kind.is_device().then_some(device);
                    data(node, device, payload, now_ms, interval)
                }
                None => too_many(),
            },
        }
    }

    /// Whether the edge node has a session (online, possibly stale).
    pub fn is_online(&self, group: &str, node: &str) -> bool {
        self.node(group, node)
            .is_some_and(|n| n.status != Status::Offline)
    }

    /// Whether the edge node's session is stale: a rebirth was asked for and has not come.
    pub fn is_stale(&self, group: &str, node: &str) -> bool {
        self.node(group, node)
            .is_some_and(|n| matches!(n.status, Status::Stale(_)))
    }

    /// The devices online under the edge node.
    pub fn online_devices(&self, group: &str, node: &str) -> Vec<Arc<str>> {
        self.node(group, node)
            .map(|n| n.devices.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The datatype the current birth gave a metric of the node (`device` `None`) or of one of
    /// its devices: what a write command to it must use.
    pub fn datatype_of(
        &self,
        group: &str,
        node: &str,
        device: Option<&str>,
        metric: &str,
    ) -> Option<DataType> {
        let n = self.node(group, node)?;
        if n.status == Status::Offline {
            return None;
        }
        let defs = match device {
            None => &n.metrics,
            Some(d) => n.devices.get(d)?,
        };
        defs.by_name.get(metric).copied()
    }

    /// Drops what is known of an edge node (e.g. its agent was removed). Whether it was known.
    pub fn forget(&mut self, group: &str, node: &str) -> bool {
        let Some(nodes) = self.groups.get_mut(group) else {
            return false;
        };
        let known = nodes.remove(node).is_some();
        if known {
            self.count -= 1;
            if nodes.is_empty() {
                self.groups.remove(group);
            }
        }
        known
    }

    /// How many edge nodes are tracked.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no edge node is tracked.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn node(&self, group: &str, node: &str) -> Option<&Node> {
        self.groups.get(group)?.get(node)
    }

    fn node_mut(&mut self, topic: &EdgeTopic<'_>) -> Option<&mut Node> {
        self.groups.get_mut(topic.group)?.get_mut(topic.node)
    }

    /// The node's state, created on first sight unless the limit is reached.
    fn node_or_insert(&mut self, topic: &EdgeTopic<'_>) -> Option<&mut Node> {
        // Keys are allocated only for a new node: this runs for every data message.
        if self.node(topic.group, topic.node).is_none() {
            if self.count >= self.limits.max_nodes {
                return None;
            }
            self.count += 1;
            self.groups
                .entry(Arc::from(topic.group))
                .or_default()
                .insert(Arc::from(topic.node), Node::new());
        }
        self.node_mut(topic)
    }
}

fn too_many() -> Outcome {
    Outcome::Ignored {
        reason: IgnoreReason::TooManyNodes,
    }
}

fn node_birth(node: &mut Node, payload: &Payload, now_ms: u64, interval: u64) -> Outcome {
    // Any NBIRTH starts a new session: the previous one's definitions are void either way.
    let devices_offline = node.end_session();
    let accepted = (|| {
        let seq = match payload.seq {
            Some(s) if s <= 255 => s as u8,
            other => return Err(BirthError::Seq(other)),
        };
        let bd_seq = bd_seq(payload)?;
        let born = define(payload, true, |_| false)?;
        Ok((seq, bd_seq, born))
    })();
    match accepted {
        Ok((seq, bd_seq, (defs, readings, rejected))) => {
            node.status = Status::Online;
            node.bd_seq = Some(bd_seq);
            node.last_seq = seq;
            node.metrics = defs;
            Outcome::Online {
                device: None,
                readings,
                rejected,
                devices_offline,
            }
        }
        Err(error) => node.request(
            RebirthReason::BadBirth {
                device: None,
                error,
            },
            now_ms,
            interval,
        ),
    }
}

fn device_birth(
    node: &mut Node,
    device: &str,
    payload: &Payload,
    now_ms: u64,
    interval: u64,
) -> Outcome {
    if let Err(refused) = node.in_session(payload, now_ms, interval) {
        return refused;
    }
    // Aliases are unique across the node's metrics and every other device's; this device's
    // previous birth, if any, is being replaced.
    let taken = |alias: u64| {
        node.metrics.by_alias.contains_key(&alias)
            || node
                .devices
                .iter()
                .any(|(d, defs)| &**d != device && defs.by_alias.contains_key(&alias))
    };
    match define(payload, false, taken) {
        Ok((defs, readings, rejected)) => {
            let id: Arc<str> = Arc::from(device);
            node.devices.insert(id.clone(), defs);
            Outcome::Online {
                device: Some(id),
                readings,
                rejected,
                devices_offline: Vec::new(),
            }
        }
        Err(error) => node.stale(
            RebirthReason::BadBirth {
                device: Some(device.into()),
                error,
            },
            now_ms,
            interval,
        ),
    }
}

fn data(
    node: &mut Node,
    device: Option<&str>,
    payload: &Payload,
    now_ms: u64,
    interval: u64,
) -> Outcome {
    if let Err(refused) = node.in_session(payload, now_ms, interval) {
        return refused;
    }
    let (defs, device) = match device {
        None => (&node.metrics, None),
        Some(d) => match node.devices.get_key_value(d) {
            Some((id, defs)) => (defs, Some(id.clone())),
            None => return node.stale(RebirthReason::DeviceNotBorn(d.into()), now_ms, interval),
        },
    };
    match interpret(defs, &device, payload) {
        Ok((readings, rejected)) => Outcome::Readings {
            device,
            readings,
            rejected,
        },
        Err(reason) => node.stale(reason, now_ms, interval),
    }
}

fn node_death(node: &mut Node, payload: &Payload) -> Outcome {
    let got = match bd_seq(payload) {
        Ok(b) => b,
        Err(e) => {
            return Outcome::Ignored {
                reason: IgnoreReason::NoBdSeq(e),
            };
        }
    };
    if node.bd_seq != Some(got) {
        return Outcome::Ignored {
            reason: IgnoreReason::StaleBdSeq {
                current: node.bd_seq,
                got,
            },
        };
    }
    if node.status == Status::Offline {
        return Outcome::Ignored {
            reason: IgnoreReason::NotOnline { device: None },
        };
    }
    let devices = node.end_session();
    Outcome::Offline {
        device: None,
        devices,
        timestamp_ms: None,
    }
}

fn device_death(node: &mut Node, device: &str, payload: &Payload) -> Outcome {
    let not_online = || Outcome::Ignored {
        reason: IgnoreReason::NotOnline {
            device: Some(device.into()),
        },
    };
    match node.status {
        Status::Offline => return not_online(),
        Status::Online => {
            if let Err(reason) = node.next_seq(payload) {
                // The death still counts; the rebirth is requested with the next message.
                node.status = Status::Stale(reason);
            }
        }
        Status::Stale(_) => {}
    }
    match node.devices.remove_entry(device) {
        Some((id, _)) => Outcome::Offline {
            device: Some(id),
            devices: Vec::new(),
            timestamp_ms: payload.timestamp,
        },
        None => not_online(),
    }
}

/// The `bdSeq` metric's value.
fn bd_seq(payload: &Payload) -> Result<u64, BirthError> {
    let m = payload
        .metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(BD_SEQ_METRIC))
        .ok_or(BirthError::NoBdSeq)?;
    let value = match (m.data_type(), &m.value) {
        (Some(t), _) => decode_value(m, t).ok(),
        // 3.0 says Int64; without a datatype, take whichever integer field it came in.
        (None, Some(metric::Value::LongValue(v))) => Some(MetricValue::UInt(*v)),
        (None, Some(metric::Value::IntValue(v))) => Some(MetricValue::UInt(u64::from(*v))),
        (None, _) => None,
    };
    match value {
        Some(MetricValue::UInt(v)) => Ok(v),
        Some(MetricValue::Int(v)) => u64::try_from(v).map_err(|_| BirthError::BadBdSeq),
        _ => Err(BirthError::BadBdSeq),
    }
}

type Born = (Definitions, Vec<Reading>, Vec<Rejected>);

/// The definitions and readings of a birth. `skip_bd_seq` leaves the NBIRTH's session metric
/// out of both; `taken` tells aliases used elsewhere in the node.
fn define(
    payload: &Payload,
    skip_bd_seq: bool,
    taken: impl Fn(u64) -> bool,
) -> Result<Born, BirthError> {
    let mut defs = Definitions::default();
    let mut readings = Vec::with_capacity(payload.metrics.len());
    let mut rejected = Vec::new();
    for (i, m) in payload.metrics.iter().enumerate() {
        let Some(name) = m.name.as_deref() else {
            return Err(BirthError::Unnamed(i));
        };
        if skip_bd_seq && name == BD_SEQ_METRIC {
            continue;
        }
        let Some(datatype) = m.data_type() else {
            return Err(BirthError::Datatype {
                name: name.into(),
                code: m.datatype,
            });
        };
        if defs.by_name.contains_key(name) {
            return Err(BirthError::DuplicateName(name.into()));
        }
        let name: Arc<str> = Arc::from(name);
        if let Some(alias) = m.alias {
            if taken(alias) || defs.by_alias.contains_key(&alias) {
                return Err(BirthError::DuplicateAlias(alias));
            }
            defs.by_alias.insert(alias, name.clone());
        }
        defs.by_name.insert(name.clone(), datatype);
        match decode_value(m, datatype) {
            Ok(value) => readings.push(reading(m, name, datatype, value, payload)),
            Err(e) => rejected.push(Rejected {
                name: Some(name),
                alias: m.alias,
                error: e.into(),
            }),
        }
    }
    Ok((defs, readings, rejected))
}

type Interpreted = (Vec<Reading>, Vec<Rejected>);

/// The readings of a data message against the birth's definitions. An alias or name the
/// birth did not define refuses the whole message: the definitions are out of date.
fn interpret(
    defs: &Definitions,
    device: &Option<Arc<str>>,
    payload: &Payload,
) -> Result<Interpreted, RebirthReason> {
    let mut readings = Vec::with_capacity(payload.metrics.len());
    let mut rejected = Vec::new();
    for m in &payload.metrics {
        // The alias decides when both are given: it is what data messages are meant to carry.
        let name =
            match (m.alias, m.name.as_deref()) {
                (Some(alias), _) => defs.by_alias.get(&alias).cloned().ok_or_else(|| {
                    RebirthReason::UnknownAlias {
                        device: device.clone(),
                        alias,
                    }
                })?,
                (None, Some(name)) => defs
                    .by_name
                    .get_key_value(name)
                    .map(|(k, _)| k.clone())
                    .ok_or_else(|| RebirthReason::UnknownMetric {
                        device: device.clone(),
                        name: name.into(),
                    })?,
                (None, None) => {
                    rejected.push(Rejected {
                        name: None,
                        alias: None,
                        error: MetricError::Unnamed,
                    });
                    continue;
                }
            };
        // Every alias maps to a defined name: both maps are filled together.
        let Some(&datatype) = defs.by_name.get(&name) else {
            continue;
        };
        let checked = match m.datatype {
            None => Ok(datatype),
            Some(code) => match DataType::from_code(code) {
                Some(t) if t == datatype => Ok(t),
                Some(got) => Err(ValueError::DatatypeChanged {
                    birth: datatype,
                    got,
                }),
                None => Err(ValueError::UnknownDataType(Some(code))),
            },
        };
        match checked.and_then(|t| decode_value(m, t)) {
            Ok(value) => readings.push(reading(m, name, datatype, value, payload)),
            Err(e) => rejected.push(Rejected {
                name: Some(name),
                alias: m.alias,
                error: e.into(),
            }),
        }
    }
    Ok((readings, rejected))
}

fn reading(
    m: &Metric,
    name: Arc<str>,
    datatype: DataType,
    value: MetricValue,
    payload: &Payload,
) -> Reading {
    Reading {
        name,
        alias: m.alias,
        datatype,
        value,
        timestamp_ms: m.timestamp.or(payload.timestamp),
        historical: m.historical(),
        transient: m.transient(),
        quality: quality(m),
    }
}

/// The metric's `Quality` property (Sparkplug 3.0, "Quality Codes": 0 BAD, 192 GOOD, 500
/// STALE, in an Int32 `int_value`).
fn quality(m: &Metric) -> Option<Quality> {
    let v = m.properties.as_ref()?.get("Quality")?;
    Some(match v.value {
        Some(property_value::Value::IntValue(192)) => Quality::Good,
        Some(property_value::Value::IntValue(0)) => Quality::Bad,
        _ => Quality::Uncertain,
    })
}

#[cfg(test)]
mod tests {
    use super::super::payload::{PropertySet, PropertyValue};
    use super::*;
    use alloc::vec;

    fn topic(kind: MessageType, device: Option<&'static str>) -> EdgeTopic<'static> {
        EdgeTopic::new("g", kind, "n", device).expect("valid topic")
    }

    fn birth(seq: u64, bd: i64, metrics: Vec<Metric>) -> Payload {
        let mut all = vec![
            Metric::new(DataType::Int64, &MetricValue::Int(bd))
                .expect("fits")
                .named(BD_SEQ_METRIC),
        ];
        all.extend(metrics);
        Payload {
            timestamp: Some(1000),
            seq: Some(seq),
            metrics: all,
            ..Default::default()
        }
    }

    fn level(alias: u64) -> Metric {
        Metric::new(DataType::Double, &MetricValue::Double(1.5))
            .expect("fits")
            .named("level")
            .aliased(alias)
    }

    #[test]
    fn rebirth_requests_are_spaced() {
        let mut s = EdgeNodes::new(Limits {
            rebirth_interval_ms: 100,
            max_nodes: 10,
        });
        let data = Payload {
            seq: Some(1),
            ..Default::default()
        };
        let t = topic(MessageType::NData, None);
        assert!(matches!(
            s.handle(&t, &data, 1000),
            Outcome::RequestRebirth { .. }
        ));
        assert!(matches!(
            s.handle(&t, &data, 1050),
            Outcome::Ignored {
                reason: IgnoreReason::RebirthPending(RebirthReason::NotBorn)
            }
        ));
        assert!(matches!(
            s.handle(&t, &data, 1100),
            Outcome::RequestRebirth { .. }
        ));
        // A clock that went back allows a request rather than silencing them.
        assert!(matches!(
            s.handle(&t, &data, 10),
            Outcome::RequestRebirth { .. }
        ));
    }

    #[test]
    fn birth_errors_are_typed() {
        let mut s = EdgeNodes::default();
        let t = topic(MessageType::NBirth, None);
        let cases: Vec<(Payload, BirthError)> = vec![
            (
                Payload {
                    seq: None,
                    ..birth(0, 1, vec![])
                },
                BirthError::Seq(None),
            ),
            (birth(256, 1, vec![]), BirthError::Seq(Some(256))),
            (
                Payload {
                    seq: Some(0),
                    ..Default::default()
                },
                BirthError::NoBdSeq,
            ),
            (birth(0, -1, vec![]), BirthError::BadBdSeq),
            (birth(0, 1, vec![Metric::default()]), BirthError::Unnamed(1)),
            (
                birth(0, 1, vec![level(1).without_datatype()]),
                BirthError::Datatype {
                    name: "level".into(),
                    code: None,
                },
            ),
            (
                birth(0, 1, vec![level(1), level(2)]),
                BirthError::DuplicateName("level".into()),
            ),
            (
                birth(0, 1, vec![level(1), level(1).named("other")]),
                BirthError::DuplicateAlias(1),
            ),
        ];
        for (i, (p, error)) in cases.into_iter().enumerate() {
            // Spaced beyond the rebirth interval so each is answered with a request.
            let out = s.handle(&t, &p, i as u64 * 10_000);
            assert_eq!(
                out,
                Outcome::RequestRebirth {
                    reason: RebirthReason::BadBirth {
                        device: None,
                        error
                    }
                }
            );
            assert!(!s.is_online("g", "n"));
        }
    }

    #[test]
    fn quality_property_maps_to_quality() {
        let with_quality = |code: u32| {
            let mut m = level(1);
            m.properties = Some(PropertySet {
                keys: vec!["Quality".into()],
                values: vec![PropertyValue {
                    r#type: Some(DataType::Int32.code()),
                    is_null: None,
                    value: Some(property_value::Value::IntValue(code)),
                }],
            });
            m
        };
        assert_eq!(quality(&with_quality(192)), Some(Quality::Good));
        assert_eq!(quality(&with_quality(0)), Some(Quality::Bad));
        assert_eq!(quality(&with_quality(500)), Some(Quality::Uncertain));
        assert_eq!(quality(&level(1)), None);
    }

    #[test]
    fn node_limit_is_kept_and_forget_frees_a_place() {
        let mut s = EdgeNodes::new(Limits {
            rebirth_interval_ms: 0,
            max_nodes: 1,
        });
        let a = EdgeTopic::new("g", MessageType::NBirth, "a", None).expect("valid");
        let b = EdgeTopic::new("g", MessageType::NBirth, "b", None).expect("valid");
        assert!(matches!(
            s.handle(&a, &birth(0, 0, vec![]), 0),
            Outcome::Online { .. }
        ));
        assert_eq!(
            s.handle(&b, &birth(0, 0, vec![]), 0),
            Outcome::Ignored {
                reason: IgnoreReason::TooManyNodes
            }
        );
        assert!(s.forget("g", "a"));
        assert!(!s.forget("g", "a"));
        assert!(s.is_empty());
        assert!(matches!(
            s.handle(&b, &birth(0, 0, vec![]), 0),
            Outcome::Online { .. }
        ));
        assert_eq!(s.len(), 1);
    }
}
