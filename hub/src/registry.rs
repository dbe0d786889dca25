//! The catalog of devices, agents and apps from hub.toml, resolved once at start.
//!
//! Everything the hot path needs per device is computed here ahead of time: a dense index
//! (twin state and online flags are plain vectors indexed by it), interned ids, and the topics
//! and JSON fragments of its feed, so publishing a reading formats no strings.

use std::collections::HashMap;
use std::sync::Arc;

use protocols::access::{Principal, grant_filter};
use protocols::messages::Location;
use protocols::topic::Topic;

use crate::config::{AgentProtocol, DeviceConfig, HubConfig};

/// Dense index of a device in the registry.
pub type DeviceIdx = u32;
/// Dense index of an agent in the registry.
pub type AgentIdx = u32;

/// How a client proves who it is.
#[derive(Clone)]
pub enum Secret {
    /// Plain secret from hub.toml, compared in constant time.
    Plain(Box<[u8]>),
    /// Argon2 PHC string, verified off the I/O threads.
    Hash(Arc<str>),
    /// No secret: the identity cannot log in (devices behind an agent).
    None,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.write_str(match self {
            Secret::Plain(_) => "Secret::Plain(..)",
            Secret::Hash(_) => "Secret::Hash(..)",
            Secret::None => "Secret::None",
        })
    }
}

impl Secret {
    fn from_config(plain: Option<&str>, hash: Option<&str>) -> Secret {
        match (plain, hash) {
            (Some(p), _) => Secret::Plain(p.as_bytes().into()),
            (None, Some(h)) => Secret::Hash(h.into()),
            (None, None) => Secret::None,
        }
    }
}

/// A field device.
#[derive(Debug)]
pub struct Device {
    /// Its index.
    pub idx: DeviceIdx,
    /// Its id.
    pub id: Arc<str>,
    /// Its device kind (`streetlight`, `water_level`, `camera`, ...).
    pub kind: Arc<str>,
    /// The agent speaking for it, if any.
    pub agent: Option<AgentIdx>,
    /// Where it is.
    pub location: Option<Location>,
    /// The configuration entry (name, dept, camera fields, profile).
    pub config: DeviceConfig,
    /// Its secret, for devices that connect themselves.
    pub secret: Secret,
    /// The shared principal handed to its connections.
    pub principal: Arc<Principal>,
    /// `v1/feeds/{kind}/{id}`.
    pub feed_topic: Arc<str>,
    /// `v1/twin/{id}`.
    pub twin_topic: Arc<str>,
    /// `v1/status/{id}`.
    pub status_topic: Arc<str>,
    /// `v1/devices/{id}/cmd` for direct devices, the agent's command topic otherwise.
    pub cmd_topic: Arc<str>,
    /// The feed document up to the value of `ts` (pre-escaped JSON).
    pub feed_prefix: Box<[u8]>,
    /// `,"location":{..}` or empty (pre-escaped JSON).
    pub feed_location: Box<[u8]>,
}

/// An edge agent.
#[derive(Debug)]
pub struct Agent {
    /// Its index.
    pub idx: AgentIdx,
    /// Its id.
    pub id: Arc<str>,
    /// Its secret.
    pub secret: Secret,
    /// The devices it speaks for.
    pub devices: Vec<DeviceIdx>,
    /// The shared principal handed to its connections.
    pub principal: Arc<Principal>,
    /// What it speaks (the platform's agent messages, or Sparkplug B).
    pub protocol: AgentProtocol,
    /// `v1/agents/{id}/ack`.
    pub ack_topic: Arc<str>,
    /// `v1/status/{id}`.
    pub status_topic: Arc<str>,
    /// `v1/agents/{id}/cmd`.
    pub cmd_topic: Arc<str>,
}

/// A consumer app.
#[derive(Debug)]
pub struct App {
    /// Its id.
    pub id: Arc<str>,
    /// Its secret.
    pub secret: Secret,
    /// The principal with its grants (filters under `v1/`).
    pub principal: Arc<Principal>,
}

/// Who an id belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A device.
    Device(DeviceIdx),
    /// An agent.
    Agent(AgentIdx),
    /// An app (index into [`Registry::apps`]).
    App(u32),
}

/// The catalog: immutable after start.
#[derive(Debug)]
pub struct Registry {
    devices: Vec<Device>,
    agents: Vec<Agent>,
    apps: Vec<App>,
    by_id: HashMap<Arc<str>, Identity>,
}

fn json_str(s: &str) -> String {
    // Ids and kinds are restricted to JSON-safe characters, but dept and names are free text.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

fn json_f64(v: f64) -> String {
    serde_json::to_string(&v).unwrap_or_else(|_| "null".to_string())
}

impl Registry {
    /// Builds the catalog from a validated configuration.
    pub fn from_config(cfg: &HubConfig) -> Registry {
        let mut by_id = HashMap::new();
        let mut agents: Vec<Agent> = Vec::with_capacity(cfg.agents.len());
        for (i, a) in cfg.agents.iter().enumerate() {
            let id: Arc<str> = a.id.as_str().into();
            by_id.insert(id.clone(), Identity::Agent(i as AgentIdx));
            agents.push(Agent {
                idx: i as AgentIdx,
                secret: Secret::from_config(a.secret.as_deref(), a.secret_hash.as_deref()),
                devices: Vec::new(),
                principal: Arc::new(match a.protocol {
                    AgentProtocol::Native => Principal::Agent(a.id.clone()),
                    AgentProtocol::Sparkplug => Principal::SparkplugNode(a.id.clone()),
                }),
                protocol: a.protocol,
                ack_topic: Topic::AgentAck(&a.id).to_string().into(),
                status_topic: Topic::Status(&a.id).to_string().into(),
                cmd_topic: Topic::AgentCmd(&a.id).to_string().into(),
                id,
            });
        }
        let agent_idx: HashMap<&str, AgentIdx> = cfg
            .agents
            .iter()
            .enumerate()
            .map(|(i, a)| (a.id.as_str(), i as AgentIdx))
            .collect();
        let mut devices = Vec::with_capacity(cfg.devices.len());
        for (i, d) in cfg.devices.iter().enumerate() {
            let idx = i as DeviceIdx;
            let id: Arc<str> = d.id.as_str().into();
            by_id.insert(id.clone(), Identity::Device(idx));
            let agent = d.agent.as_deref().and_then(|a| agent_idx.get(a).copied());
            if let Some(a) = agent {
                agents[a as usize].devices.push(idx);
            }
            let location = match (d.lat, d.lon) {
                (Some(lat), Some(lon)) => Some(Location { lat, lon }),
                _ => None,
            };
            let mut prefix = format!(
                "{{\"device\":{},\"kind\":{}",
                json_str(&d.id),
                json_str(&d.kind)
            );
            if let Some(dept) = &d.dept {
                prefix.push_str(&format!(",\"dept\":{}", json_str(dept)));
            }
            prefix.push_str(",\"ts\":\"");
            let feed_location = match location {
                Some(l) => format!(
                    ",\"location\":{{\"lat\":{},\"lon\":{}}}",
                    json_f64(l.lat),
                    json_f64(l.lon)
                ),
                None => String::new(),
            };
            let cmd_topic: Arc<str> = match agent {
                Some(a) => agents[a as usize].cmd_topic.clone(),
                None => Topic::DeviceCmd(&d.id).to_string().into(),
            };
            devices.push(Device {
                idx,
                kind: d.kind.as_str().into(),
                agent,
                location,
                config: d.clone(),
                secret: Secret::from_config(d.secret.as_deref(), d.secret_hash.as_deref()),
                principal: Arc::new(Principal::Device(d.id.clone())),
                feed_topic: Topic::Feed {
                    kind: &d.kind,
                    device: &d.id,
                }
                .to_string()
                .into(),
                twin_topic: Topic::Twin(&d.id).to_string().into(),
                status_topic: Topic::Status(&d.id).to_string().into(),
                cmd_topic,
                feed_prefix: prefix.into_bytes().into(),
                feed_location: feed_location.into_bytes().into(),
                id,
            });
        }
        let mut apps = Vec::with_capacity(cfg.apps.len());
        for (i, a) in cfg.apps.iter().enumerate() {
            let id: Arc<str> = a.id.as_str().into();
            by_id.insert(id.clone(), Identity::App(i as u32));
            // Grants were validated with the config; a bad one here is dropped, never widened.
            let grants = a
                .grants
                .iter()
                .filter_map(|g| grant_filter(g).ok())
                .collect();
            apps.push(App {
                secret: Secret::from_config(a.secret.as_deref(), a.secret_hash.as_deref()),
                principal: Arc::new(Principal::App {
                    id: a.id.clone(),
                    grants,
                }),
                id,
            });
        }
        Registry {
            devices,
            agents,
            apps,
            by_id,
        }
    }

    /// Who an id belongs to.
    pub fn identity(&self, id: &str) -> Option<Identity> {
        self.by_id.get(id).copied()
    }

    /// All devices, by index.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// All agents, by index.
    pub fn agents(&self) -> &[Agent] {
        &self.agents
    }

    /// All apps.
    pub fn apps(&self) -> &[App] {
        &self.apps
    }

    /// The device with this index.
    pub fn device(&self, idx: DeviceIdx) -> &Device {
        &self.devices[idx as usize]
    }

    /// The agent with this index.
    pub fn agent(&self, idx: AgentIdx) -> &Agent {
        &self.agents[idx as usize]
    }

    /// The device with this id.
    pub fn device_by_id(&self, id: &str) -> Option<&Device> {
        match self.identity(id)? {
            Identity::Device(i) => Some(&self.devices[i as usize]),
            _ => None,
        }
    }

    /// The agent with this id.
    pub fn agent_by_id(&self, id: &str) -> Option<&Agent> {
        match self.identity(id)? {
            Identity::Agent(i) => Some(&self.agents[i as usize]),
            _ => None,
        }
    }

    /// Whether a principal may see a device: apps with a grant matching its feed or twin topic.
    pub fn visible_to(&self, principal: &Principal, device: &Device) -> bool {
        principal.grants_topic(&device.feed_topic) || principal.grants_topic(&device.twin_topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
[[devices]]
id = "WL-0001"
kind = "water_level"
secret = "device-secret-1"
dept = "water \"east\""
lat = 30.4212
lon = 120.3010

[[devices]]
id = "SL-0001"
kind = "streetlight"
agent = "AG-0001"

[[agents]]
id = "AG-0001"
secret = "agent-secret-1"

[[apps]]
id = "cc"
secret = "cc-secret-123"
grants = ["feeds/water_level/#"]
"#;

    #[test]
    fn precomputes_topics_and_fragments() {
        let r = Registry::from_config(&HubConfig::from_toml(CFG).unwrap());
        let wl = r.device_by_id("WL-0001").unwrap();
        assert_eq!(&*wl.feed_topic, "v1/feeds/water_level/WL-0001");
        assert_eq!(&*wl.cmd_topic, "v1/devices/WL-0001/cmd");
        assert_eq!(
            std::str::from_utf8(&wl.feed_prefix).unwrap(),
            r#"{"device":"WL-0001","kind":"water_level","dept":"water \"east\"","ts":""#
        );
        assert_eq!(
            std::str::from_utf8(&wl.feed_location).unwrap(),
            r#","location":{"lat":30.4212,"lon":120.301}"#
        );
        let sl = r.device_by_id("SL-0001").unwrap();
        assert_eq!(&*sl.cmd_topic, "v1/agents/AG-0001/cmd");
        assert_eq!(r.agent_by_id("AG-0001").unwrap().devices, vec![sl.idx]);
        assert!(r.device_by_id("AG-0001").is_none());
        let app = &r.apps()[0].principal;
        assert!(r.visible_to(app, wl));
        assert!(!r.visible_to(app, sl));
        assert!(!format!("{:?}", r.apps()[0].secret).contains("cc-secret"));
    }
}
