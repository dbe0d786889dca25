//! MQTT topic names of the contract: one place builds them and one place parses them.
//!
//! Parsing borrows from the topic string, so the hub's ingress classifies every message
//! without allocating. Filters (with `+` and `#`) are handled here too, because the grants of
//! apps are filters and the access rules compare filters with filters.

use alloc::string::String;
use core::fmt;

use crate::id::validate_id;

/// The root of every topic of this contract.
pub const ROOT: &str = "v1";

/// Warning levels of alerts, lowest first (China's levels IV..I).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AlertLevel {
    /// Level IV, general.
    Blue,
    /// Level III, larger.
    Yellow,
    /// Level II, major.
    Orange,
    /// Level I, most severe.
    Red,
}

impl AlertLevel {
    /// All levels, lowest first.
    pub const ALL: [AlertLevel; 4] = [
        AlertLevel::Blue,
        AlertLevel::Yellow,
        AlertLevel::Orange,
        AlertLevel::Red,
    ];

    /// The name used in topics and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            AlertLevel::Blue => "blue",
            AlertLevel::Yellow => "yellow",
            AlertLevel::Orange => "orange",
            AlertLevel::Red => "red",
        }
    }

    /// The level with this name.
    pub fn from_name(s: &str) -> Option<AlertLevel> {
        AlertLevel::ALL.into_iter().find(|l| l.name() == s)
    }
}

impl fmt::Display for AlertLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A topic of the contract, borrowing its ids from the topic string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic<'a> {
    /// `v1/devices/{id}/telemetry`: JSON telemetry from a direct device.
    DeviceTelemetry(&'a str),
    /// `v1/devices/{id}/cmd`: a command to a direct device.
    DeviceCmd(&'a str),
    /// `v1/devices/{id}/cmd/result`: a direct device's answer to a command.
    DeviceCmdResult(&'a str),
    /// `v1/agents/{id}/batch`: a binary batch from an agent.
    AgentBatch(&'a str),
    /// `v1/agents/{id}/ack`: the hub's acknowledgement of stored batches.
    AgentAck(&'a str),
    /// `v1/agents/{id}/health`: agent health.
    AgentHealth(&'a str),
    /// `v1/agents/{id}/events`: agent events (camera motion).
    AgentEvents(&'a str),
    /// `v1/agents/{id}/snapshots/{event}`: a JPEG for an event.
    AgentSnapshot {
        /// The agent.
        agent: &'a str,
        /// The event the snapshot belongs to.
        event: &'a str,
    },
    /// `v1/agents/{id}/cmd`: a command to an agent or a device behind it.
    AgentCmd(&'a str),
    /// `v1/agents/{id}/cmd/result`: an agent's answer to a command.
    AgentCmdResult(&'a str),
    /// `v1/feeds/{kind}/{device}`: normalized readings for apps.
    Feed {
        /// The device kind.
        kind: &'a str,
        /// The device.
        device: &'a str,
    },
    /// `v1/twin/{device}`: the retained twin document.
    Twin(&'a str),
    /// `v1/twin/{device}/desired`: desired state from an app.
    TwinDesired(&'a str),
    /// `v1/alerts/{level}/{device}`: an alert change.
    Alert {
        /// The alert's level.
        level: AlertLevel,
        /// The device.
        device: &'a str,
    },
    /// `v1/status/{id}`: retained `online`/`offline`.
    Status(&'a str),
    /// `v1/deadletter/{client}`: a rejected message with its reason.
    DeadLetter(&'a str),
}

/// Why a topic is not one of the contract's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Does not start with `v1/`.
    #[error("topic is not under `v1/`")]
    NotV1,
    /// The shape matches no topic of the contract.
    #[error("no such topic in the contract")]
    Unknown,
    /// An id level is not a valid id.
    #[error("`{level}` is not a valid id: {reason}")]
    BadId {
        /// The level.
        level: String,
        /// What is wrong with the id.
        reason: crate::id::IdError,
    },
}

fn id(level: &str) -> Result<&str, TopicError> {
    validate_id(level).map_err(|reason| TopicError::BadId {
        level: level.chars().take(64).collect(),
        reason,
    })?;
    Ok(level)
}

impl<'a> Topic<'a> {
    /// Parses a topic name (not a filter).
    pub fn parse(topic: &'a str) -> Result<Topic<'a>, TopicError> {
        let rest = topic.strip_prefix("v1/").ok_or(TopicError::NotV1)?;
        let mut parts = rest.split('/');
        let (a, b, c, d, e) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        );
        if parts.next().is_some() {
            return Err(TopicError::Unknown);
        }
        Ok(match (a, b, c, d, e) {
            (Some("devices"), Some(i), Some("telemetry"), None, None) => {
                Topic::DeviceTelemetry(id(i)?)
            }
            (Some("devices"), Some(i), Some("cmd"), None, None) => Topic::DeviceCmd(id(i)?),
            (Some("devices"), Some(i), Some("cmd"), Some("result"), None) => {
                Topic::DeviceCmdResult(id(i)?)
            }
            (Some("agents"), Some(i), Some("batch"), None, None) => Topic::AgentBatch(id(i)?),
            (Some("agents"), Some(i), Some("ack"), None, None) => Topic::AgentAck(id(i)?),
            (Some("agents"), Some(i), Some("health"), None, None) => Topic::AgentHealth(id(i)?),
            (Some("agents"), Some(i), Some("events"), None, None) => Topic::AgentEvents(id(i)?),
            (Some("agents"), Some(i), Some("snapshots"), Some(ev), None) => Topic::AgentSnapshot {
                agent: id(i)?,
                event: id(ev)?,
            },
            (Some("agents"), Some(i), Some("cmd"), None, None) => Topic::AgentCmd(id(i)?),
            (Some("agents"), Some(i), Some("cmd"), Some("result"), None) => {
                Topic::AgentCmdResult(id(i)?)
            }
            (Some("feeds"), Some(k), Some(dev), None, None) => {
                crate::id::validate_kind(k).map_err(|reason| TopicError::BadId {
                    level: k.chars().take(64).collect(),
                    reason,
                })?;
                Topic::Feed {
                    kind: k,
                    device: id(dev)?,
                }
            }
            (Some("twin"), Some(dev), None, None, None) => Topic::Twin(id(dev)?),
            (Some("twin"), Some(dev), Some("desired"), None, None) => Topic::TwinDesired(id(dev)?),
            (Some("alerts"), Some(l), Some(dev), None, None) => Topic::Alert {
                level: AlertLevel::from_name(l).ok_or(TopicError::Unknown)?,
                device: id(dev)?,
            },
            (Some("status"), Some(i), None, None, None) => Topic::Status(id(i)?),
            (Some("deadletter"), Some(c), None, None, None) => Topic::DeadLetter(id(c)?),
            _ => return Err(TopicError::Unknown),
        })
    }
}

impl fmt::Display for Topic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::DeviceTelemetry(i) => write!(f, "v1/devices/{i}/telemetry"),
            Topic::DeviceCmd(i) => write!(f, "v1/devices/{i}/cmd"),
            Topic::DeviceCmdResult(i) => write!(f, "v1/devices/{i}/cmd/result"),
            Topic::AgentBatch(i) => write!(f, "v1/agents/{i}/batch"),
            Topic::AgentAck(i) => write!(f, "v1/agents/{i}/ack"),
            Topic::AgentHealth(i) => write!(f, "v1/agents/{i}/health"),
            Topic::AgentEvents(i) => write!(f, "v1/agents/{i}/events"),
            Topic::AgentSnapshot { agent, event } => {
                write!(f, "v1/agents/{agent}/snapshots/{event}")
            }
            Topic::AgentCmd(i) => write!(f, "v1/agents/{i}/cmd"),
            Topic::AgentCmdResult(i) => write!(f, "v1/agents/{i}/cmd/result"),
            Topic::Feed { kind, device } => write!(f, "v1/feeds/{kind}/{device}"),
            Topic::Twin(d) => write!(f, "v1/twin/{d}"),
            Topic::TwinDesired(d) => write!(f, "v1/twin/{d}/desired"),
            Topic::Alert { level, device } => write!(f, "v1/alerts/{level}/{device}"),
            Topic::Status(i) => write!(f, "v1/status/{i}"),
            Topic::DeadLetter(c) => write!(f, "v1/deadletter/{c}"),
        }
    }
}

/// Why a topic filter is malformed (MQTT 3.1.1 section 4.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Empty filter.
    #[error("empty topic filter")]
    Empty,
    /// `#` not alone in the last level, or `+` not alone in its level.
    #[error("wildcard must occupy a whole level, and `#` only the last")]
    BadWildcard,
    /// Contains a NUL character.
    #[error("topic filter contains NUL")]
    Nul,
}

/// Checks an MQTT topic filter.
pub fn validate_filter(filter: &str) -> Result<(), FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    if filter.contains('\0') {
        return Err(FilterError::Nul);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !last) {
            return Err(FilterError::BadWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(FilterError::BadWildcard);
        }
    }
    Ok(())
}

/// Checks an MQTT topic name: non-empty, no wildcards, no NUL.
pub fn validate_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// Whether a topic name matches a (valid) filter. Topics starting with `$` are not matched by
/// filters starting with a wildcard, as MQTT requires.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether every topic matched by `inner` is also matched by `outer` (both valid filters).
///
/// This is how a subscription is checked against an app's grants: `v1/feeds/+/WL-0001` lies
/// within `v1/feeds/#`, but `v1/#` does not.
pub fn filter_within(inner: &str, outer: &str) -> bool {
    let mut i = inner.split('/');
    let mut o = outer.split('/');
    loop {
        match (i.next(), o.next()) {
            (_, Some("#")) => return true,
            (Some("#"), _) => return false,
            (Some(_), Some("+")) => {}
            (Some("+"), Some(_)) => return false,
            (Some(il), Some(ol)) if il == ol => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use proptest::prelude::*;

    #[test]
    fn every_topic_round_trips() {
        let topics = [
            Topic::DeviceTelemetry("WL-0001"),
            Topic::DeviceCmd("WL-0001"),
            Topic::DeviceCmdResult("WL-0001"),
            Topic::AgentBatch("AG-1"),
            Topic::AgentAck("AG-1"),
            Topic::AgentHealth("AG-1"),
            Topic::AgentEvents("AG-1"),
            Topic::AgentSnapshot {
                agent: "AG-1",
                event: "CAM-1.17",
            },
            Topic::AgentCmd("AG-1"),
            Topic::AgentCmdResult("AG-1"),
            Topic::Feed {
                kind: "water_level",
                device: "WL-0001",
            },
            Topic::Twin("SL-1"),
            Topic::TwinDesired("SL-1"),
            Topic::Alert {
                level: AlertLevel::Orange,
                device: "WL-1",
            },
            Topic::Status("AG-1"),
            Topic::DeadLetter("AG-1"),
        ];
        for t in topics {
            let s = t.to_string();
            assert_eq!(Topic::parse(&s).unwrap(), t, "{s}");
        }
    }

    #[test]
    fn rejections() {
        assert_eq!(
            Topic::parse("v2/devices/a/telemetry"),
            Err(TopicError::NotV1)
        );
        assert_eq!(
            Topic::parse("v1/devices/a/telemetry/x"),
            Err(TopicError::Unknown)
        );
        assert_eq!(Topic::parse("v1/devices/a"), Err(TopicError::Unknown));
        assert_eq!(Topic::parse("v1/alerts/purple/a"), Err(TopicError::Unknown));
        assert!(matches!(
            Topic::parse("v1/devices//telemetry"),
            Err(TopicError::BadId { .. })
        ));
        assert!(matches!(
            Topic::parse("v1/devices/a+b/telemetry"),
            Err(TopicError::BadId { .. })
        ));
        assert!(matches!(
            Topic::parse("v1/feeds/Water/a"),
            Err(TopicError::BadId { .. })
        ));
        assert_eq!(Topic::parse("v1/x/y/z/w/v/u"), Err(TopicError::Unknown));
    }

    #[test]
    fn filters() {
        assert!(validate_filter("v1/feeds/#").is_ok());
        assert!(validate_filter("v1/+/a").is_ok());
        assert!(validate_filter("#").is_ok());
        assert_eq!(validate_filter(""), Err(FilterError::Empty));
        assert_eq!(validate_filter("v1/#/a"), Err(FilterError::BadWildcard));
        assert_eq!(validate_filter("v1/a#"), Err(FilterError::BadWildcard));
        assert_eq!(validate_filter("v1/a+/b"), Err(FilterError::BadWildcard));

        assert!(filter_matches("v1/feeds/#", "v1/feeds/water_level/WL-1"));
        assert!(filter_matches("v1/feeds/#", "v1/feeds"));
        assert!(filter_matches(
            "v1/feeds/+/WL-1",
            "v1/feeds/water_level/WL-1"
        ));
        assert!(!filter_matches("v1/feeds/+", "v1/feeds/water_level/WL-1"));
        assert!(!filter_matches("#", "$SYS/broker"));
        assert!(filter_matches("a/+/c", "a//c"));

        assert!(filter_within("v1/feeds/+/WL-1", "v1/feeds/#"));
        assert!(filter_within("v1/feeds/#", "v1/feeds/#"));
        assert!(filter_within("v1/feeds/camera/CAM-1", "v1/feeds/camera/+"));
        assert!(!filter_within("v1/#", "v1/feeds/#"));
        assert!(!filter_within("v1/feeds/+/x", "v1/feeds/camera/+"));
        assert!(!filter_within("v1/feeds/#", "v1/feeds/+"));
        assert!(filter_within("v1/feeds/a", "v1/feeds/+"));
        assert!(!filter_within("v1/feeds", "v1/feeds/+"));
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![Just("a"), Just("b"), Just("+"), Just("c1")].prop_map(|s| s.to_string())
    }

    proptest! {
        /// `filter_within` is sound: whenever it says inner lies within outer, every topic
        /// matched by inner is matched by outer.
        #[test]
        fn within_is_sound(
            inner in proptest::collection::vec(level(), 1..4), inner_hash in any::<bool>(),
            outer in proptest::collection::vec(level(), 1..4), outer_hash in any::<bool>(),
            topic in proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c1"), Just("zz")], 1..6),
        ) {
            let mk = |v: &Vec<String>, hash: bool| {
                let mut s = v.join("/");
                if hash { s.push_str("/#"); }
                s
            };
            let (i, o, t) = (mk(&inner, inner_hash), mk(&outer, outer_hash), topic.join("/"));
            if filter_within(&i, &o) && filter_matches(&i, &t) {
                prop_assert!(filter_matches(&o, &t), "{i} within {o} but {t} escapes");
            }
        }

        #[test]
        fn parse_never_panics(s in "v1/[a-z+#/]{0,40}") {
            let _ = Topic::parse(&s);
        }
    }
}
