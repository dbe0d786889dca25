//! Sparkplug B topics: `spBv1.0/{group_id}/{message_type}/{edge_node_id}[/{device_id}]` and the
//! host application state topic `spBv1.0/STATE/{host_id}` (Sparkplug 3.0, chapter "Topics and
//! Messages").
//!
//! [`Topic::parse`] borrows the ids from the topic string; [`EdgeTopic`]'s `Display` builds the
//! string back, so parse and build cannot drift apart.

use alloc::string::String;
use core::fmt;

use crate::quantity::ShortText;

/// The Sparkplug B namespace, the first topic level of every message.
pub const NAMESPACE: &str = "spBv1.0";

/// The second topic level of a host application's state topic.
pub const STATE: &str = "STATE";

/// The message type (the "verb", third topic level) of an edge node or device message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageType {
    /// Edge node birth certificate: the node's metrics, their datatypes and aliases.
    NBirth,
    /// Edge node death certificate, the MQTT will of the node's session.
    NDeath,
    /// Edge node data.
    NData,
    /// Command to an edge node (from a host application).
    NCmd,
    /// Device birth certificate.
    DBirth,
    /// Device death certificate.
    DDeath,
    /// Device data.
    DData,
    /// Command to a device (from a host application).
    DCmd,
}

impl MessageType {
    /// Every message type.
    pub const ALL: [MessageType; 8] = [
        MessageType::NBirth,
        MessageType::NDeath,
        MessageType::NData,
        MessageType::NCmd,
        MessageType::DBirth,
        MessageType::DDeath,
        MessageType::DData,
        MessageType::DCmd,
    ];

    /// The topic level, e.g. `NBIRTH`.
    pub const fn as_str(self) -> &'static str {
        match self {
            MessageType::NBirth => "NBIRTH",
            MessageType::NDeath => "NDEATH",
            MessageType::NData => "NDATA",
            MessageType::NCmd => "NCMD",
            MessageType::DBirth => "DBIRTH",
            MessageType::DDeath => "DDEATH",
            MessageType::DData => "DDATA",
            MessageType::DCmd => "DCMD",
        }
    }

    /// The message type of a topic level (case-sensitive, as the specification spells it).
    pub fn from_level(level: &str) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| t.as_str() == level)
    }

    /// Whether the topic carries a device id (the `D...` types).
    pub const fn is_device(self) -> bool {
        matches!(
            self,
            MessageType::DBirth | MessageType::DDeath | MessageType::DData | MessageType::DCmd
        )
    }

    /// Whether a host application sends it (`NCMD`, `DCMD`) rather than an edge node.
    pub const fn is_command(self) -> bool {
        matches!(self, MessageType::NCmd | MessageType::DCmd)
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which id of a topic was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdPart {
    /// The group id.
    Group,
    /// The edge node id.
    EdgeNode,
    /// The device id.
    Device,
    /// The host application id of a state topic.
    Host,
}

impl fmt::Display for IdPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdPart::Group => "group id",
            IdPart::EdgeNode => "edge node id",
            IdPart::Device => "device id",
            IdPart::Host => "host id",
        })
    }
}

/// Why an id is not a valid Sparkplug id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is empty.
    #[error("is empty")]
    Empty,
    /// The id contains `/`, `+` or `#`, which the specification reserves
    /// (tck-id-topic-structure-namespace-valid-group-id, -edge-node-id, -device-id).
    #[error("contains the reserved character `{0}`")]
    Reserved(char),
}

/// Checks a group, edge node, device or host id: non-empty, without `/`, `+` or `#`.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    match id.chars().find(|c| matches!(c, '/' | '+' | '#')) {
        Some(c) => Err(IdError::Reserved(c)),
        None => Ok(()),
    }
}

/// Why a topic is not a Sparkplug B topic this codec accepts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// The first level is not `spBv1.0`.
    #[error("not in the `spBv1.0` namespace")]
    NotSparkplug,
    /// Neither 3 levels (state) nor 4 or 5 (edge node, device).
    #[error("{0} topic levels; expected 3 (STATE), 4 (edge node) or 5 (device)")]
    Levels(usize),
    /// The third level is not one of the eight message types.
    #[error("unknown message type `{0}`")]
    UnknownMessageType(ShortText),
    /// A device message type without a device id.
    #[error("{0} needs a device id")]
    MissingDevice(MessageType),
    /// An edge node message type with a device id.
    #[error("{0} takes no device id")]
    UnexpectedDevice(MessageType),
    /// An id is empty or contains a reserved character.
    #[error("{part} {error}")]
    BadId {
        /// Which id.
        part: IdPart,
        /// What is wrong with it.
        error: IdError,
    },
}

/// An edge node or device message topic, borrowing its ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EdgeTopic<'a> {
    /// The group id.
    pub group: &'a str,
    /// The message type.
    pub kind: MessageType,
    /// The edge node id.
    pub node: &'a str,
    /// The device id: present exactly for the `D...` message types.
    pub device: Option<&'a str>,
}

impl<'a> EdgeTopic<'a> {
    /// A checked topic: valid ids, and a device id exactly for device message types.
    pub fn new(
        group: &'a str,
        kind: MessageType,
        node: &'a str,
        device: Option<&'a str>,
    ) -> Result<EdgeTopic<'a>, TopicError> {
        let bad = |part| move |error| TopicError::BadId { part, error };
        validate_id(group).map_err(bad(IdPart::Group))?;
        validate_id(node).map_err(bad(IdPart::EdgeNode))?;
        match (kind.is_device(), device) {
            (true, None) => return Err(TopicError::MissingDevice(kind)),
            (false, Some(_)) => return Err(TopicError::UnexpectedDevice(kind)),
            (true, Some(d)) => validate_id(d).map_err(bad(IdPart::Device))?,
            (false, None) => {}
        }
        Ok(EdgeTopic {
            group,
            kind,
            node,
            device,
        })
    }

    /// The topic string.
    pub fn to_topic(&self) -> String {
        alloc::format!("{self}")
    }
}

impl fmt::Display for EdgeTopic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{NAMESPACE}/{}/{}/{}", self.group, self.kind, self.node)?;
        if let Some(d) = self.device {
            write!(f, "/{d}")?;
        }
        Ok(())
    }
}

/// A parsed Sparkplug B topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic<'a> {
    /// A message of an edge node or one of its devices.
    Edge(EdgeTopic<'a>),
    /// `spBv1.0/STATE/{host_id}`: a host application's online state (JSON, not protobuf).
    HostState {
        /// The host application id.
        host: &'a str,
    },
}

impl<'a> Topic<'a> {
    /// Parses a topic. A 3-level topic is a state topic only with `STATE` as its second level;
    /// 4 and 5 levels are edge node and device messages (a group may then be called `STATE`).
    pub fn parse(topic: &'a str) -> Result<Topic<'a>, TopicError> {
        let mut levels = topic.split('/');
        if levels.next() != Some(NAMESPACE) {
            return Err(TopicError::NotSparkplug);
        }
        let mut rest: [&str; 4] = [""; 4];
        let mut n = 0;
        for level in levels {
            if n == rest.len() {
                // Counting on only to report how many there were.
                return Err(TopicError::Levels(topic.split('/').count()));
            }
            rest[n] = level;
            n += 1;
        }
        match n + 1 {
            3 if rest[0] == STATE => {
                validate_id(rest[1]).map_err(|error| TopicError::BadId {
                    part: IdPart::Host,
                    error,
                })?;
                Ok(Topic::HostState { host: rest[1] })
            }
            4 | 5 => {
                let kind = MessageType::from_level(rest[1])
                    .ok_or_else(|| TopicError::UnknownMessageType(ShortText::new(rest[1])))?;
                let device = (n == 4).then_some(rest[3]);
                EdgeTopic::new(rest[0], kind, rest[2], device).map(Topic::Edge)
            }
            levels => Err(TopicError::Levels(levels)),
        }
    }
}

/// The state topic of a host application, `spBv1.0/STATE/{host_id}`.
pub fn host_state_topic(host: &str) -> Result<String, TopicError> {
    validate_id(host).map_err(|error| TopicError::BadId {
        part: IdPart::Host,
        error,
    })?;
    Ok(alloc::format!("{NAMESPACE}/{STATE}/{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_node_and_device_topics_parse_and_build_back() {
        for (s, kind, device) in [
            ("spBv1.0/district/NBIRTH/agent-7", MessageType::NBirth, None),
            ("spBv1.0/district/NDATA/agent-7", MessageType::NData, None),
            ("spBv1.0/district/NDEATH/agent-7", MessageType::NDeath, None),
            ("spBv1.0/district/NCMD/agent-7", MessageType::NCmd, None),
            (
                "spBv1.0/district/DBIRTH/agent-7/pump 1",
                MessageType::DBirth,
                Some("pump 1"),
            ),
            (
                "spBv1.0/district/DDATA/agent-7/pump 1",
                MessageType::DData,
                Some("pump 1"),
            ),
            (
                "spBv1.0/district/DDEATH/agent-7/pump 1",
                MessageType::DDeath,
                Some("pump 1"),
            ),
            (
                "spBv1.0/district/DCMD/agent-7/pump 1",
                MessageType::DCmd,
                Some("pump 1"),
            ),
        ] {
            let Ok(Topic::Edge(t)) = Topic::parse(s) else {
                panic!("{s} did not parse as an edge topic");
            };
            assert_eq!(
                (t.group, t.kind, t.node, t.device),
                ("district", kind, "agent-7", device)
            );
            assert_eq!(t.to_topic(), s);
        }
    }

    #[test]
    fn host_state_topic_parses_and_builds() {
        assert_eq!(
            Topic::parse("spBv1.0/STATE/hub-1"),
            Ok(Topic::HostState { host: "hub-1" })
        );
        assert_eq!(
            host_state_topic("hub-1").as_deref(),
            Ok("spBv1.0/STATE/hub-1")
        );
        assert!(host_state_topic("a/b").is_err());
        // A group may be called STATE: four levels are an edge node message.
        assert!(matches!(
            Topic::parse("spBv1.0/STATE/NDATA/n"),
            Ok(Topic::Edge(EdgeTopic { group: "STATE", .. }))
        ));
    }

    #[test]
    fn everything_else_is_a_typed_error() {
        use TopicError::*;
        let cases: &[(&str, TopicError)] = &[
            ("spAv1.0/g/NDATA/n", NotSparkplug),
            ("v1/devices/x/telemetry", NotSparkplug),
            ("", NotSparkplug),
            ("spBv1.0", Levels(1)),
            ("spBv1.0/g", Levels(2)),
            ("spBv1.0/g/NDATA", Levels(3)),
            ("spBv1.0/g/NDATA/n/d/x", Levels(6)),
            ("spBv1.0/g/NDATA/n/d/x/y/z", Levels(8)),
            (
                "spBv1.0/g/ndata/n",
                UnknownMessageType(ShortText::new("ndata")),
            ),
            (
                "spBv1.0/g/STATE/n",
                UnknownMessageType(ShortText::new("STATE")),
            ),
            ("spBv1.0/g/DDATA/n", MissingDevice(MessageType::DData)),
            ("spBv1.0/g/NDATA/n/d", UnexpectedDevice(MessageType::NData)),
            (
                "spBv1.0//NDATA/n",
                BadId {
                    part: IdPart::Group,
                    error: IdError::Empty,
                },
            ),
            (
                "spBv1.0/g/NDATA/",
                BadId {
                    part: IdPart::EdgeNode,
                    error: IdError::Empty,
                },
            ),
            (
                "spBv1.0/g/DDATA/n/",
                BadId {
                    part: IdPart::Device,
                    error: IdError::Empty,
                },
            ),
            (
                "spBv1.0/g+/NDATA/n",
                BadId {
                    part: IdPart::Group,
                    error: IdError::Reserved('+'),
                },
            ),
            (
                "spBv1.0/g/NDATA/#",
                BadId {
                    part: IdPart::EdgeNode,
                    error: IdError::Reserved('#'),
                },
            ),
            (
                "spBv1.0/STATE/",
                BadId {
                    part: IdPart::Host,
                    error: IdError::Empty,
                },
            ),
        ];
        for (s, e) in cases {
            assert_eq!(Topic::parse(s).as_ref(), Err(e), "{s}");
        }
    }

    #[test]
    fn building_checks_ids_and_device_presence() {
        assert_eq!(
            EdgeTopic::new("g", MessageType::DCmd, "n", None),
            Err(TopicError::MissingDevice(MessageType::DCmd))
        );
        assert_eq!(
            EdgeTopic::new("g", MessageType::NCmd, "n", Some("d")),
            Err(TopicError::UnexpectedDevice(MessageType::NCmd))
        );
        assert_eq!(
            EdgeTopic::new("g", MessageType::NCmd, "a/b", None),
            Err(TopicError::BadId {
                part: IdPart::EdgeNode,
                error: IdError::Reserved('/')
            })
        );
        let t = EdgeTopic::new("g", MessageType::DCmd, "n", Some("d")).expect("valid");
        assert_eq!(t.to_topic(), "spBv1.0/g/DCMD/n/d");
    }

    #[test]
    fn message_type_levels_round_trip() {
        for t in MessageType::ALL {
            assert_eq!(MessageType::from_level(t.as_str()), Some(t));
            assert_eq!(t.is_device(), t.as_str().starts_with('D'));
        }
        assert!(MessageType::NCmd.is_command() && MessageType::DCmd.is_command());
        assert!(!MessageType::NData.is_command());
    }
}
