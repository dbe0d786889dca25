//! Who may publish and subscribe where: the access rules of the contract, as pure functions.
//!
//! The hub's MQTT ingress and its HTTP API both decide through these, so a grant means the same
//! thing on every path. Grants are MQTT filters written without the `v1/` root
//! (`feeds/#`, `twin/SL-0001`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::topic::{Topic, filter_matches, filter_within, validate_filter};

/// An authenticated client of the hub.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Principal {
    /// A field device that connects itself (JSON telemetry).
    Device(String),
    /// An edge agent speaking for the devices behind it.
    Agent(String),
    /// A Sparkplug B edge node (an agent registered with `protocol = "sparkplug"`): its id is
    /// its edge node id, its devices are the Sparkplug devices behind it.
    SparkplugNode(String),
    /// A consumer app with its grants (filters under `v1/`, already prefixed).
    App {
        /// The app id.
        id: String,
        /// Grant filters, each beginning with `v1/`.
        grants: Vec<String>,
    },
}

/// Why an action was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The topic is not one of the contract's.
    #[error("topic is not part of the contract")]
    UnknownTopic,
    /// The topic belongs to another client.
    #[error("topic belongs to another client")]
    NotOwn,
    /// The client's role may not publish on this kind of topic.
    #[error("{role} may not publish on this topic")]
    WrongDirection {
        /// `device`, `agent` or `app`.
        role: &'static str,
    },
    /// Outside the app's grants.
    #[error("outside the app's grants")]
    OutsideGrants,
    /// Malformed filter.
    #[error("malformed topic filter: {0}")]
    BadFilter(#[from] crate::topic::FilterError),
}

/// Turns a grant as written in hub.toml (`feeds/#`) into a filter under the root (`v1/feeds/#`).
pub fn grant_filter(grant: &str) -> Result<String, crate::topic::FilterError> {
    let g = grant.trim_start_matches('/');
    let f = format!("v1/{g}");
    validate_filter(&f)?;
    Ok(f)
}

impl Principal {
    /// The client's id.
    pub fn id(&self) -> &str {
        match self {
            Principal::Device(id) | Principal::Agent(id) | Principal::SparkplugNode(id) => id,
            Principal::App { id, .. } => id,
        }
    }

    /// The role name, for messages and metrics.
    pub fn role(&self) -> &'static str {
        match self {
            Principal::Device(_) => "device",
            Principal::Agent(_) => "agent",
            Principal::SparkplugNode(_) => "edge node",
            Principal::App { .. } => "app",
        }
    }

    /// Whether an app's grants cover a topic name.
    pub fn grants_topic(&self, topic: &str) -> bool {
        match self {
            Principal::App { grants, .. } => grants.iter().any(|g| filter_matches(g, topic)),
            _ => false,
        }
    }

    /// Whether the client may publish on `topic`.
    pub fn may_publish(&self, topic: &str) -> Result<(), Denied> {
        if let Principal::SparkplugNode(id) = self {
            return sparkplug_may_publish(id, topic);
        }
        let parsed = Topic::parse(topic).map_err(|_| Denied::UnknownTopic)?;
        let own = |owner: &str| {
            if owner == self.id() {
                Ok(())
            } else {
                Err(Denied::NotOwn)
            }
        };
        match (self, parsed) {
            (
                Principal::Device(_),
                Topic::DeviceTelemetry(d) | Topic::DeviceCmdResult(d) | Topic::Status(d),
            ) => own(d),
            (
                Principal::Agent(_),
                Topic::AgentBatch(a)
                | Topic::AgentHealth(a)
                | Topic::AgentEvents(a)
                | Topic::AgentSnapshot { agent: a, .. }
                | Topic::AgentCmdResult(a)
                | Topic::Status(a),
            ) => own(a),
            (Principal::App { .. }, Topic::TwinDesired(_)) => {
                if self.grants_topic(topic) {
                    Ok(())
                } else {
                    Err(Denied::OutsideGrants)
                }
            }
            (p, _) => Err(Denied::WrongDirection { role: p.role() }),
        }
    }

    /// Whether the client may subscribe to `filter`.
    pub fn may_subscribe(&self, filter: &str) -> Result<(), Denied> {
        validate_filter(filter)?;
        match self {
            Principal::Device(id) => {
                if filter == format!("v1/devices/{id}/cmd") {
                    Ok(())
                } else {
                    Err(Denied::NotOwn)
                }
            }
            Principal::Agent(id) => {
                if filter == format!("v1/agents/{id}/cmd")
                    || filter == format!("v1/agents/{id}/ack")
                {
                    Ok(())
                } else {
                    Err(Denied::NotOwn)
                }
            }
            Principal::SparkplugNode(id) => {
                // Commands to itself and its devices, and host applications' state (an edge
                // node may wait for its primary host to be online).
                let own = [
                    format!("{SPARKPLUG}/+/NCMD/{id}/#"),
                    format!("{SPARKPLUG}/+/DCMD/{id}/#"),
                    format!("{SPARKPLUG}/STATE/+"),
                ];
                if own.iter().any(|o| filter_within(filter, o)) {
                    Ok(())
                } else {
                    Err(Denied::NotOwn)
                }
            }
            Principal::App { grants, .. } => {
                if grants.iter().any(|g| filter_within(filter, g)) {
                    Ok(())
                } else {
                    Err(Denied::OutsideGrants)
                }
            }
        }
    }
}

/// The Sparkplug B namespace (the first topic level).
const SPARKPLUG: &str = "spBv1.0";

/// An edge node publishes its own births, deaths and data, in any group, and nothing else: not
/// another node's, not commands, not host state.
fn sparkplug_may_publish(id: &str, topic: &str) -> Result<(), Denied> {
    use crate::sparkplug::{MessageType, Topic as SpTopic};
    match SpTopic::parse(topic) {
        Ok(SpTopic::Edge(t)) => match t.kind {
            MessageType::NCmd | MessageType::DCmd => {
                Err(Denied::WrongDirection { role: "edge node" })
            }
            _ if t.node == id => Ok(()),
            _ => Err(Denied::NotOwn),
        },
        Ok(SpTopic::HostState { .. }) => Err(Denied::WrongDirection { role: "edge node" }),
        Err(_) => Err(Denied::UnknownTopic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn app(grants: &[&str]) -> Principal {
        Principal::App {
            id: "command-center".to_string(),
            grants: grants.iter().map(|g| grant_filter(g).unwrap()).collect(),
        }
    }

    #[test]
    fn device_owns_only_its_topics() {
        let d = Principal::Device("WL-1".to_string());
        assert_eq!(d.may_publish("v1/devices/WL-1/telemetry"), Ok(()));
        assert_eq!(d.may_publish("v1/devices/WL-1/cmd/result"), Ok(()));
        assert_eq!(d.may_publish("v1/status/WL-1"), Ok(()));
        assert_eq!(
            d.may_publish("v1/devices/WL-2/telemetry"),
            Err(Denied::NotOwn)
        );
        assert_eq!(
            d.may_publish("v1/devices/WL-1/cmd"),
            Err(Denied::WrongDirection { role: "device" })
        );
        assert_eq!(
            d.may_publish("v1/feeds/water_level/WL-1"),
            Err(Denied::WrongDirection { role: "device" })
        );
        assert_eq!(
            d.may_publish("v1/twin/WL-1/desired"),
            Err(Denied::WrongDirection { role: "device" })
        );
        assert_eq!(d.may_publish("elsewhere"), Err(Denied::UnknownTopic));
        assert_eq!(d.may_subscribe("v1/devices/WL-1/cmd"), Ok(()));
        assert_eq!(d.may_subscribe("v1/devices/+/cmd"), Err(Denied::NotOwn));
        assert_eq!(d.may_subscribe("#"), Err(Denied::NotOwn));
    }

    #[test]
    fn agent_owns_only_its_topics() {
        let a = Principal::Agent("AG-1".to_string());
        for t in ["batch", "health", "events", "snapshots/ev-1", "cmd/result"] {
            assert_eq!(a.may_publish(&format!("v1/agents/AG-1/{t}")), Ok(()), "{t}");
            assert_eq!(
                a.may_publish(&format!("v1/agents/AG-2/{t}")),
                Err(Denied::NotOwn),
                "{t}"
            );
        }
        assert_eq!(
            a.may_publish("v1/agents/AG-1/ack"),
            Err(Denied::WrongDirection { role: "agent" })
        );
        assert_eq!(
            a.may_publish("v1/devices/WL-1/telemetry"),
            Err(Denied::WrongDirection { role: "agent" })
        );
        assert_eq!(a.may_subscribe("v1/agents/AG-1/cmd"), Ok(()));
        assert_eq!(a.may_subscribe("v1/agents/AG-1/ack"), Ok(()));
        assert_eq!(a.may_subscribe("v1/agents/AG-1/#"), Err(Denied::NotOwn));
    }

    #[test]
    fn sparkplug_node_owns_only_its_node() {
        let n = Principal::SparkplugNode("PS-EN01".to_string());
        for t in ["NBIRTH", "NDEATH", "NDATA"] {
            assert_eq!(
                n.may_publish(&format!("spBv1.0/District/{t}/PS-EN01")),
                Ok(())
            );
            assert_eq!(
                n.may_publish(&format!("spBv1.0/District/{t}/PS-EN02")),
                Err(Denied::NotOwn)
            );
        }
        for t in ["DBIRTH", "DDEATH", "DDATA"] {
            assert_eq!(
                n.may_publish(&format!("spBv1.0/Other/{t}/PS-EN01/PS-P01")),
                Ok(())
            );
            assert_eq!(
                n.may_publish(&format!("spBv1.0/District/{t}/PS-EN02/PS-P01")),
                Err(Denied::NotOwn)
            );
        }
        let wrong = Err(Denied::WrongDirection { role: "edge node" });
        assert_eq!(n.may_publish("spBv1.0/District/NCMD/PS-EN01"), wrong);
        assert_eq!(n.may_publish("spBv1.0/District/DCMD/PS-EN01/PS-P01"), wrong);
        assert_eq!(n.may_publish("spBv1.0/STATE/hub"), wrong);
        // Not the platform's own topics, nor broken Sparkplug ones.
        assert_eq!(
            n.may_publish("v1/agents/PS-EN01/batch"),
            Err(Denied::UnknownTopic)
        );
        assert_eq!(
            n.may_publish("spBv1.0/District/DDATA/PS-EN01"),
            Err(Denied::UnknownTopic)
        );
        assert_eq!(
            n.may_publish("spBv1.0/District/NDATA/+"),
            Err(Denied::UnknownTopic)
        );
        assert_eq!(n.may_subscribe("spBv1.0/District/NCMD/PS-EN01"), Ok(()));
        assert_eq!(n.may_subscribe("spBv1.0/District/DCMD/PS-EN01/#"), Ok(()));
        assert_eq!(n.may_subscribe("spBv1.0/+/DCMD/PS-EN01/PS-P01"), Ok(()));
        assert_eq!(n.may_subscribe("spBv1.0/STATE/hub"), Ok(()));
        assert_eq!(
            n.may_subscribe("spBv1.0/District/NCMD/PS-EN02"),
            Err(Denied::NotOwn)
        );
        assert_eq!(
            n.may_subscribe("spBv1.0/District/DDATA/PS-EN01/#"),
            Err(Denied::NotOwn)
        );
        assert_eq!(n.may_subscribe("spBv1.0/#"), Err(Denied::NotOwn));
        assert_eq!(
            n.may_subscribe("v1/agents/PS-EN01/cmd"),
            Err(Denied::NotOwn)
        );
    }

    #[test]
    fn app_stays_inside_grants() {
        let a = app(&["feeds/water_level/#", "twin/#", "alerts/#"]);
        assert_eq!(a.may_subscribe("v1/feeds/water_level/#"), Ok(()));
        assert_eq!(a.may_subscribe("v1/feeds/water_level/WL-1"), Ok(()));
        assert_eq!(a.may_subscribe("v1/feeds/#"), Err(Denied::OutsideGrants));
        assert_eq!(
            a.may_subscribe("v1/feeds/camera/CAM-1"),
            Err(Denied::OutsideGrants)
        );
        assert_eq!(a.may_subscribe("#"), Err(Denied::OutsideGrants));
        assert!(matches!(
            a.may_subscribe("v1/#/x"),
            Err(Denied::BadFilter(_))
        ));
        assert_eq!(a.may_publish("v1/twin/SL-1/desired"), Ok(()));
        assert_eq!(
            a.may_publish("v1/feeds/water_level/WL-1"),
            Err(Denied::WrongDirection { role: "app" })
        );
        let narrow = app(&["feeds/#"]);
        assert_eq!(
            narrow.may_publish("v1/twin/SL-1/desired"),
            Err(Denied::OutsideGrants)
        );
        let none = Principal::App {
            id: "x".to_string(),
            grants: vec![],
        };
        assert_eq!(
            none.may_subscribe("v1/feeds/a/b"),
            Err(Denied::OutsideGrants)
        );
    }

    #[test]
    fn grant_syntax() {
        assert_eq!(grant_filter("feeds/#").unwrap(), "v1/feeds/#");
        assert!(grant_filter("feeds/#/x").is_err());
    }
}
