//! The district's equipment at run time: the firmware devices serving Modbus TCP, the
//! backhaul links of the agents, the direct devices' network switches. The scenario acts on
//! it (a controller loses power and comes back on the same address, a link drops).

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::sync::{Mutex, watch};
use tracing::warn;

use super::backhaul::Backhaul;
use crate::device::{DeviceSpec, RunningDevice, spawn_tcp};
use crate::world::{Site, World};

/// Everything in the field.
pub struct Field {
    /// The district's weather.
    pub world: World,
    /// Each Modbus device's site, by id.
    pub sites: HashMap<String, Site>,
    /// Each direct device's site, by id (rain gauges read the weather through it).
    pub direct_sites: HashMap<String, Site>,
    specs: HashMap<String, (DeviceSpec, SocketAddr)>,
    running: Mutex<HashMap<String, RunningDevice>>,
    /// Each agent's backhaul, by agent id.
    pub backhauls: HashMap<String, Backhaul>,
    /// Each direct device's network: `true` while it may connect.
    pub direct_links: HashMap<String, watch::Sender<bool>>,
}

impl Field {
    /// Field equipment around devices already running.
    pub fn new(
        world: World,
        devices: Vec<(RunningDevice, DeviceSpec)>,
        direct_sites: HashMap<String, Site>,
        backhauls: HashMap<String, Backhaul>,
        direct_links: HashMap<String, watch::Sender<bool>>,
    ) -> Field {
        let mut sites = HashMap::new();
        let mut specs = HashMap::new();
        let mut running = HashMap::new();
        for (d, spec) in devices {
            sites.insert(d.id.clone(), d.site.clone());
            if let Some(addr) = d.addr {
                specs.insert(d.id.clone(), (spec, addr));
            }
            running.insert(d.id.clone(), d);
        }
        Field {
            world,
            sites,
            direct_sites,
            specs,
            running: Mutex::new(running),
            backhauls,
            direct_links,
        }
    }

    /// Switches a Modbus device off (its controller stops answering and forgets its state)
    /// or on again on the same address.
    pub async fn power(&self, id: &str, on: bool) {
        let mut running = self.running.lock().await;
        if on {
            if running.contains_key(id) {
                return;
            }
            let Some((spec, addr)) = self.specs.get(id) else {
                return;
            };
            match spawn_tcp(spec.clone(), *addr).await {
                Ok(d) => {
                    running.insert(id.to_string(), d);
                }
                Err(e) => warn!(device = id, "could not power the device up again: {e:#}"),
            }
        } else if let Some(d) = running.remove(id) {
            d.stop().await;
        }
    }

    /// Whether a Modbus device is powered.
    pub async fn powered(&self, id: &str) -> bool {
        self.running.lock().await.contains_key(id)
    }

    /// Cuts or restores an agent's backhaul.
    pub fn backhaul(&self, agent: &str, up: bool) {
        if let Some(b) = self.backhauls.get(agent) {
            b.set_up(up);
        }
    }

    /// Takes a direct device off its network or puts it back.
    pub fn direct_link(&self, id: &str, up: bool) {
        if let Some(l) = self.direct_links.get(id) {
            l.send_replace(up);
        }
    }

    /// The lamp circuit of a streetlight that is powered now.
    pub async fn lamp_circuit(&self, id: &str) -> Option<crate::peripherals::pins::LampCircuit> {
        self.running
            .lock()
            .await
            .get(id)
            .and_then(|d| d.lamp.clone())
    }

    /// Stops every device.
    pub async fn stop_devices(&self) {
        let devices: Vec<RunningDevice> =
            self.running.lock().await.drain().map(|(_, d)| d).collect();
        for d in devices {
            d.stop().await;
        }
    }
}
