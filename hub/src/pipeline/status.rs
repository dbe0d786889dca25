//! Online state of devices and agents (`v1/status/{id}`, retained, and the twins' `online`).
//!
//! A device that connects itself is online while it has a connection. A device behind an agent
//! is online while its agent is connected and the agent's latest health message does not say
//! otherwise (`devices[].online`). Connections are counted, so a session takeover (new
//! connection before the old one's end is seen) never flaps the state.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use protocols::access::Principal;
use protocols::messages::{Health, STATUS_OFFLINE, STATUS_ONLINE};

use crate::config::AgentProtocol;
use crate::outbound::Outlet;
use crate::registry::{AgentIdx, DeviceIdx, Identity, Registry};
use crate::twin::Twins;

#[derive(Default)]
struct Board {
    connections: HashMap<Identity, u32>,
    /// Per device behind an agent: what the agent last said (absent: assumed up).
    reported_down: HashMap<DeviceIdx, bool>,
}

/// Tracks connections and health, and publishes status changes.
pub struct StatusBoard {
    registry: Arc<Registry>,
    twins: Arc<Twins>,
    outlet: Outlet,
    board: Mutex<Board>,
}

/// Why a health message was not applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HealthError {
    /// `agent` differs from the sender.
    #[error("health names agent `{0}`, not the sender")]
    AgentMismatch(String),
}

impl StatusBoard {
    /// A board over the registry's devices and agents.
    pub fn new(registry: Arc<Registry>, twins: Arc<Twins>, outlet: Outlet) -> StatusBoard {
        StatusBoard {
            registry,
            twins,
            outlet,
            board: Mutex::new(Board::default()),
        }
    }

    fn identity(&self, p: &Principal) -> Option<Identity> {
        match (p, self.registry.identity(p.id())?) {
            (Principal::Device(_), i @ Identity::Device(_))
            | (Principal::Agent(_) | Principal::SparkplugNode(_), i @ Identity::Agent(_)) => {
                Some(i)
            }
            _ => None,
        }
    }

    /// A client connected.
    pub fn connected(&self, p: &Principal, now_ms: i64) {
        let Some(id) = self.identity(p) else { return };
        let first = {
            let mut b = self.board.lock();
            let n = b.connections.entry(id).or_insert(0);
            *n += 1;
            *n == 1
        };
        if first {
            self.changed(id, now_ms);
        }
    }

    /// A client's connection ended.
    pub fn disconnected(&self, p: &Principal, now_ms: i64) {
        let Some(id) = self.identity(p) else { return };
        let last = {
            let mut b = self.board.lock();
            match b.connections.get_mut(&id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    b.connections.remove(&id);
                    true
                }
                None => false,
            }
        };
        if last {
            self.changed(id, now_ms);
        }
    }

    /// Applies an agent's health message: the online state of the devices behind it.
    pub fn health(
        &self,
        agent: AgentIdx,
        h: &Health,
        now_ms: i64,
    ) -> Result<Vec<String>, HealthError> {
        let a = self.registry.agent(agent);
        if h.agent != *a.id {
            return Err(HealthError::AgentMismatch(protocols::id::clip(&h.agent)));
        }
        let mut foreign = Vec::new();
        let mut touched = Vec::new();
        {
            let mut b = self.board.lock();
            for d in &h.devices {
                match self.registry.device_by_id(&d.id) {
                    Some(dev) if dev.agent == Some(agent) => {
                        b.reported_down.insert(dev.idx, !d.online);
                        touched.push(dev.idx);
                    }
                    _ => foreign.push(protocols::id::clip(&d.id)),
                }
            }
        }
        for d in touched {
            self.refresh_device(d, now_ms);
        }
        Ok(foreign)
    }

    /// Devices of a Sparkplug edge node that its births and deaths took online or offline
    /// (`true`: online). Devices of other agents are ignored.
    pub fn presence(&self, agent: AgentIdx, changes: &[(DeviceIdx, bool)], now_ms: i64) {
        {
            let mut b = self.board.lock();
            for (d, online) in changes {
                if self.registry.device(*d).agent == Some(agent) {
                    b.reported_down.insert(*d, !online);
                }
            }
        }
        for (d, _) in changes {
            self.refresh_device(*d, now_ms);
        }
    }

    fn device_online(&self, device: DeviceIdx) -> bool {
        let d = self.registry.device(device);
        let b = self.board.lock();
        match d.agent {
            Some(a) => {
                // A Sparkplug device is online only between its DBIRTH and its death; an
                // agent's device unless its health says otherwise.
                let down_until_told = self.registry.agent(a).protocol == AgentProtocol::Sparkplug;
                b.connections.contains_key(&Identity::Agent(a))
                    && !b
                        .reported_down
                        .get(&device)
                        .copied()
                        .unwrap_or(down_until_told)
            }
            None => b.connections.contains_key(&Identity::Device(device)),
        }
    }

    fn refresh_device(&self, device: DeviceIdx, now_ms: i64) {
        let online = self.device_online(device);
        if self.twins.set_online(device, online, now_ms) {
            let d = self.registry.device(device);
            self.outlet.publish(&d.status_topic, status(online), true);
            // The twin's `online` goes out with the next twin round: an agent's connect
            // changes hundreds of twins at once, too many to publish inline.
            self.twins.mark_stale(device);
        }
    }

    fn changed(&self, id: Identity, now_ms: i64) {
        match id {
            Identity::Device(d) => self.refresh_device(d, now_ms),
            Identity::Agent(a) => {
                let agent = self.registry.agent(a);
                let online = {
                    let mut b = self.board.lock();
                    let online = b.connections.contains_key(&id);
                    if !online && agent.protocol == AgentProtocol::Sparkplug {
                        // A new session starts with births: nothing of the old one stands.
                        for d in &agent.devices {
                            b.reported_down.remove(d);
                        }
                    }
                    online
                };
                self.outlet
                    .publish(&agent.status_topic, status(online), true);
                for d in &agent.devices {
                    self.refresh_device(*d, now_ms);
                }
            }
            Identity::App(_) => {}
        }
    }
}

fn status(online: bool) -> Bytes {
    Bytes::from_static(if online {
        STATUS_ONLINE.as_bytes()
    } else {
        STATUS_OFFLINE.as_bytes()
    })
}
