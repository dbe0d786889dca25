//! What happens in the district: the physics ticking on demo time, and a script of events
//! that repeats every [`CYCLE_S`] of demo time with other devices and another storm.
//!
//! Each cycle, in demo time after its start (the first events within the first real minute
//! at any speed):
//! - 0:15 an LED driver fails (reported at once as `driver_failure`);
//! - 0:20 a lamp burns out (reported as `lamp_failure` once the lamps are on);
//! - 0:30 a manhole cover is lifted and laid askew, put back later;
//! - 0:45 a storm: rain rising to its peak and easing over most of an hour; the river rises
//!   at the stations with the lag of each catchment, turbidity flushes up, then all recede;
//! - 1:00 a lighting cabinet's backhaul drops (agent and its devices offline, readings kept
//!   in the agent's queue) and comes back;
//! - 1:30 a lamp controller loses power, comes back at its power-up level, and the lighting
//!   control brings it to the schedule again;
//! - 1:40 a rain gauge drops off the network and comes back;
//! - 2:00 a discharge upstream of a sonde lowers the pH for a while;
//! - 3 h the maintenance crew replaces the failed driver and lamp.
//!
//! Outages last at least a real minute or two whatever the speed, so they can be seen.
//!
//! The cameras' scenes are rendered in their agents, on their own timelines (see
//! [`provision::scene_speed`]): the story only tells when the failing camera goes dark and
//! when the floodlights switch, asking the same deterministic scene what it shows.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::info;

use super::clock::{DemoClock, hhmm, local_day_and_hour};
use super::field::Field;
use super::layout::{CameraScene, Layout, Model, SiteKind};
use super::physics::{self, Quality, River, Sky, Storm};
use super::provision;
use crate::world::{Site, World};
use edge_agent::camera::settings::SceneSpec;
use edge_agent::camera::synthetic::Scene;

/// Length of one scenario cycle, demo seconds.
pub const CYCLE_S: f64 = 6.0 * 3600.0;

/// Prints the story of the demo on stdout, stamped with demo time.
#[derive(Clone, Debug)]
pub struct Narrator {
    clock: DemoClock,
    enabled: bool,
}

impl Narrator {
    /// A narrator; a disabled one stays silent (tests).
    pub fn new(clock: DemoClock, enabled: bool) -> Narrator {
        Narrator { clock, enabled }
    }

    /// Tells one line.
    pub fn say(&self, text: &str) {
        info!("{text}");
        if self.enabled {
            println!("  {}  {text}", hhmm(self.clock.now_ms()));
        }
    }
}

/// Something the scenario does.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// A lamp's LED driver fails or is replaced.
    DriverFault {
        /// The lamp.
        lamp: String,
        /// Failed.
        failed: bool,
    },
    /// A lamp burns out or is replaced.
    LampBroken {
        /// The lamp.
        lamp: String,
        /// Broken.
        broken: bool,
    },
    /// A manhole cover is lifted or put back.
    Cover {
        /// The manhole.
        manhole: String,
        /// Lifted.
        lifted: bool,
    },
    /// Rain.
    Storm(Storm),
    /// An agent's backhaul drops or comes back.
    Backhaul {
        /// The agent.
        agent: String,
        /// Up.
        up: bool,
    },
    /// A Modbus device loses power or gets it back.
    Power {
        /// The device.
        device: String,
        /// On.
        on: bool,
    },
    /// A direct device drops off the network or comes back.
    DirectLink {
        /// The device.
        device: String,
        /// Up.
        up: bool,
    },
    /// A discharge upstream of a sonde shifts its pH.
    Discharge {
        /// The sonde.
        sonde: String,
        /// pH shift (0 ends it).
        ph_shift: f64,
    },
}

/// An action at a demo time.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Demo seconds after the demo's start.
    pub at_s: f64,
    /// What happens.
    pub action: Action,
}

/// The events of cycle `n` (0-based) at this speed.
pub fn cycle(n: u64, layout: &Layout, speed: f64) -> Vec<Event> {
    let base = n as f64 * CYCLE_S;
    // Durations in demo seconds, but at least `real_min` real seconds.
    let hold = |demo: f64, real_min: f64| demo.max(real_min * speed);
    let lamps: Vec<&str> = layout.lamps().map(|d| d.id.as_str()).collect();
    let pick = |list: &[&str], k: u64| list[(k % list.len() as u64) as usize].to_string();
    let manholes: Vec<&str> = layout
        .field
        .iter()
        .filter(|d| d.model == Model::Manhole)
        .map(|d| d.id.as_str())
        .collect();
    let sondes: Vec<&str> = layout
        .field
        .iter()
        .filter(|d| d.model == Model::WaterQuality)
        .map(|d| d.id.as_str())
        .collect();
    let cabinets: Vec<&str> = layout.streets.iter().map(|s| s.agent.as_str()).collect();
    let gauges: Vec<&str> = layout.direct.iter().map(|d| d.id.as_str()).collect();

    let fault_lamp = pick(&lamps, 10 + 7 * n);
    let broken_lamp = pick(&lamps, 2 + 11 * n);
    let manhole = pick(&manholes, 3 + 3 * n);
    let rebooted = pick(&lamps, 21 + 5 * n);
    // The cut cabinet is one whose devices have no other incident, so those show at once.
    let busy: Vec<&str> = [&fault_lamp, &broken_lamp, &manhole, &rebooted]
        .iter()
        .filter_map(|id| layout.field_device(id).map(|d| d.agent.as_str()))
        .collect();
    let cabinet = (0..cabinets.len() as u64)
        .map(|k| pick(&cabinets, 4 + n + k))
        .find(|c| !busy.contains(&c.as_str()))
        .unwrap_or_else(|| pick(&cabinets, 4 + n));
    let gauge = pick(&gauges, 1 + n);
    let sonde = pick(&sondes, 1 + n);
    let (peak, minutes) = [(55.0, 50.0), (40.0, 40.0), (70.0, 60.0)][(n % 3) as usize];

    let cover_back = 30.0 + hold(25.0 * 60.0, 60.0);
    let link_back = 60.0 + hold(4.0 * 60.0, 150.0);
    let power_back = 90.0 + hold(3.0 * 60.0, 40.0);
    let gauge_back = 100.0 + hold(3.0 * 60.0, 40.0);
    let discharge_end = 120.0 + hold(30.0 * 60.0, 90.0);
    let repair = (3.0 * 3600.0f64).max(link_back.max(discharge_end) + 60.0);

    let mut events = vec![
        (
            15.0,
            Action::DriverFault {
                lamp: fault_lamp.clone(),
                failed: true,
            },
        ),
        (
            20.0,
            Action::LampBroken {
                lamp: broken_lamp.clone(),
                broken: true,
            },
        ),
        (
            30.0,
            Action::Cover {
                manhole: manhole.clone(),
                lifted: true,
            },
        ),
        (
            cover_back,
            Action::Cover {
                manhole,
                lifted: false,
            },
        ),
        (
            45.0,
            Action::Storm(Storm {
                start_s: base + 45.0,
                duration_s: minutes * 60.0,
                peak_mm_h: peak,
            }),
        ),
        (
            60.0,
            Action::Backhaul {
                agent: cabinet.clone(),
                up: false,
            },
        ),
        (
            link_back,
            Action::Backhaul {
                agent: cabinet,
                up: true,
            },
        ),
        (
            90.0,
            Action::Power {
                device: rebooted.clone(),
                on: false,
            },
        ),
        (
            power_back,
            Action::Power {
                device: rebooted,
                on: true,
            },
        ),
        (
            100.0,
            Action::DirectLink {
                device: gauge.clone(),
                up: false,
            },
        ),
        (
            gauge_back,
            Action::DirectLink {
                device: gauge,
                up: true,
            },
        ),
        (
            120.0,
            Action::Discharge {
                sonde: sonde.clone(),
                ph_shift: -1.1,
            },
        ),
        (
            discharge_end,
            Action::Discharge {
                sonde,
                ph_shift: 0.0,
            },
        ),
        (
            repair,
            Action::DriverFault {
                lamp: fault_lamp,
                failed: false,
            },
        ),
        (
            repair,
            Action::LampBroken {
                lamp: broken_lamp,
                broken: false,
            },
        ),
    ];
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    events
        .into_iter()
        .map(|(at, action)| Event {
            at_s: base + at,
            action,
        })
        .collect()
}

/// A camera scene the story follows: what the agent renders, asked for its state only.
struct WatchedScene {
    camera: String,
    kind: CameraScene,
    scene: Scene,
    speed: f64,
    /// Dark (failing camera) or black (floodlights off) at the last look.
    last: Option<bool>,
}

impl WatchedScene {
    /// The scenes worth telling about: the failing camera and the floodlights.
    fn of(layout: &Layout, demo_speed: f64) -> Vec<WatchedScene> {
        layout
            .cameras
            .iter()
            .filter(|c| c.scene != CameraScene::Street)
            .filter_map(|c| {
                let source = provision::camera_source(c, demo_speed);
                let spec = SceneSpec::parse(source.strip_prefix("synthetic:")?).ok()?;
                Some(WatchedScene {
                    camera: format!("{} ({})", c.id, c.name),
                    kind: c.scene,
                    scene: Scene::new(&spec),
                    speed: spec.speed,
                    last: None,
                })
            })
            .collect()
    }

    /// What changed since the last look, `real_s` real seconds after the start.
    fn look(&mut self, real_s: f64) -> Option<String> {
        let state = self.scene.state(real_s * self.speed);
        let now = state.dark || state.gain < 0.05;
        let was = self.last.replace(now);
        if was.is_none_or(|w| w == now) {
            return None;
        }
        let camera = &self.camera;
        Some(match (self.kind, now) {
            (CameraScene::Failing, true) => format!(
                "{camera}: camera dark, its power supply failed (no pictures: offline in the catalog within seconds)"
            ),
            (CameraScene::Failing, false) => format!("{camera}: camera back, pictures again"),
            (_, true) => format!(
                "{camera}: floodlights off, the picture goes black (a lighting change: no motion event)"
            ),
            (_, false) => format!("{camera}: floodlights on again (no motion event either)"),
        })
    }
}

/// The running scenario: physics state and the queue of events.
pub struct Scenario {
    layout: Layout,
    clock: DemoClock,
    narrator: Narrator,
    sky: Sky,
    rivers: Vec<River>,
    quality: Vec<Quality>,
    /// Station index -> (gauge id, sonde id).
    station_devices: Vec<(Option<String>, Option<String>)>,
    pending: Vec<Event>,
    incidents: bool,
    next_cycle: u64,
    last_t: f64,
    scenes: Vec<WatchedScene>,
}

impl Scenario {
    /// A scenario over a layout; without `incidents` only the weather happens.
    pub fn new(layout: Layout, clock: DemoClock, narrator: Narrator, incidents: bool) -> Scenario {
        let rivers = layout
            .stations
            .iter()
            .map(|s| River::new(s.reach))
            .collect();
        let quality = layout
            .stations
            .iter()
            .map(|s| Quality::new(s.quality))
            .collect();
        let mut station_devices = vec![(None, None); layout.stations.len()];
        for d in &layout.field {
            match d.site {
                SiteKind::Gauge { station } => station_devices[station].0 = Some(d.id.clone()),
                SiteKind::Sonde { station } => station_devices[station].1 = Some(d.id.clone()),
                _ => {}
            }
        }
        let scenes = WatchedScene::of(&layout, clock.speed());
        Scenario {
            layout,
            clock,
            narrator,
            sky: Sky::default(),
            rivers,
            quality,
            station_devices,
            pending: Vec::new(),
            incidents,
            next_cycle: 0,
            last_t: 0.0,
            scenes,
        }
    }

    /// Sets every site to the physics at the current demo time (before the devices start
    /// sampling, so the first readings are already right).
    pub fn settle(&mut self, world: &World, sites: &HashMap<String, Site>) {
        self.last_t = self.clock.elapsed_s();
        self.apply_physics(world, sites, 1.0);
    }

    /// Runs until `stop` turns true, ticking every `tick` real time.
    pub async fn run(
        mut self,
        field: std::sync::Arc<Field>,
        tick: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_signal = Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            }
            let t = self.clock.elapsed_s();
            let dt = (t - self.last_t).max(0.0);
            self.last_t = t;
            self.due_events(&field, t).await;
            self.apply_physics(&field.world, &field.sites, dt.max(1e-3));
            let real_s = t / self.clock.speed();
            for s in &mut self.scenes {
                if let Some(line) = s.look(real_s) {
                    self.narrator.say(&line);
                }
            }
            if last_signal.elapsed() >= Duration::from_secs(5) {
                last_signal = Instant::now();
                for b in field.backhauls.values() {
                    b.write_signal(t).await;
                }
            }
        }
    }

    async fn due_events(&mut self, field: &Field, t: f64) {
        while self.next_cycle as f64 * CYCLE_S <= t + 60.0 {
            let more = cycle(self.next_cycle, &self.layout, self.clock.speed());
            let incidents = self.incidents;
            self.pending.extend(
                more.into_iter()
                    .filter(|e| incidents || matches!(e.action, Action::Storm(_))),
            );
            self.pending.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
            self.next_cycle += 1;
        }
        while self.pending.first().is_some_and(|e| e.at_s <= t) {
            let e = self.pending.remove(0);
            self.apply(field, e.action).await;
        }
    }

    fn name(&self, id: &str) -> String {
        self.layout
            .field_device(id)
            .map(|d| format!("{id} ({})", d.name))
            .unwrap_or_else(|| id.to_string())
    }

    async fn apply(&mut self, field: &Field, action: Action) {
        let site = |id: &str| field.sites.get(id);
        match action {
            Action::DriverFault { lamp, failed } => {
                if let Some(s) = site(&lamp) {
                    s.update(|c| c.driver_fault = failed);
                }
                self.narrator.say(&if failed {
                    format!("{}: LED driver fault", self.name(&lamp))
                } else {
                    format!("{}: maintenance replaced the LED driver", self.name(&lamp))
                });
            }
            Action::LampBroken { lamp, broken } => {
                if let Some(s) = site(&lamp) {
                    s.update(|c| c.lamp_broken = broken);
                }
                self.narrator.say(&if broken {
                    format!(
                        "{}: lamp burnt out (reported when the lamps are on)",
                        self.name(&lamp)
                    )
                } else {
                    format!("{}: maintenance replaced the lamp", self.name(&lamp))
                });
            }
            Action::Cover { manhole, lifted } => {
                if let Some(s) = site(&manhole) {
                    s.update(|c| {
                        c.cover_lifted = lifted;
                        c.cover_tilt = if lifted { 38.0 } else { 0.8 };
                    });
                }
                self.narrator.say(&if lifted {
                    format!("{}: cover lifted and left askew", self.name(&manhole))
                } else {
                    format!("{}: cover put back", self.name(&manhole))
                });
            }
            Action::Storm(storm) => {
                let t = self.clock.elapsed_s();
                self.sky.storms.retain(|s| s.end_s() + 12.0 * 3600.0 > t);
                self.sky.storms.push(storm);
                self.narrator.say(&format!(
                    "storm: rain over the district, peaking at {:.0} mm/h around {}, for {:.0} min",
                    storm.peak_mm_h,
                    hhmm(self.clock.at_ms(storm.peak_s())),
                    storm.duration_s / 60.0
                ));
            }
            Action::Backhaul { agent, up } => {
                field.backhaul(&agent, up);
                let name = self
                    .layout
                    .agents
                    .iter()
                    .find(|a| a.id == agent)
                    .map(|a| a.name.clone())
                    .unwrap_or_default();
                self.narrator.say(&if up {
                    format!("{agent} ({name}): 5G link back; the agent sends what it kept")
                } else {
                    format!(
                        "{agent} ({name}): 5G link lost; the agent keeps polling into its queue"
                    )
                });
            }
            Action::Power { device, on } => {
                field.power(&device, on).await;
                self.narrator.say(&if on {
                    format!(
                        "{}: controller powered again (starts at full light)",
                        self.name(&device)
                    )
                } else {
                    format!("{}: controller lost power", self.name(&device))
                });
            }
            Action::DirectLink { device, up } => {
                field.direct_link(&device, up);
                self.narrator.say(&if up {
                    format!("{device}: rain gauge back on the network")
                } else {
                    format!("{device}: rain gauge off the network")
                });
            }
            Action::Discharge { sonde, ph_shift } => {
                if let Some(i) = self
                    .station_devices
                    .iter()
                    .position(|(_, s)| s.as_deref() == Some(sonde.as_str()))
                {
                    self.quality[i].ph_offset = ph_shift;
                }
                self.narrator.say(&if ph_shift != 0.0 {
                    format!(
                        "{}: acidic discharge upstream, pH falling",
                        self.name(&sonde)
                    )
                } else {
                    format!("{}: discharge stopped", self.name(&sonde))
                });
            }
        }
    }

    fn apply_physics(&mut self, world: &World, sites: &HashMap<String, Site>, dt: f64) {
        let t = self.last_t;
        let (_, hour) = local_day_and_hour(self.clock.now_ms());
        let w = self.sky.step(t, dt, hour);
        let speed = self.clock.speed();
        world.update_weather(|now| {
            now.air_temperature = w.air_temperature;
            now.relative_humidity = w.relative_humidity;
            now.air_pressure = w.air_pressure;
            // Gauges count tips in real time: in a compressed day, more rain falls per real
            // second (the wind's pulse rate, a real-time rate, is not scaled).
            now.rain_rate = w.rain_rate * speed;
            now.wind_speed = w.wind_speed;
        });
        let rain = self.sky.rain_rate(t);
        for (i, river) in self.rivers.iter_mut().enumerate() {
            river.step(rain, dt);
            let q = self.quality[i].step(river, dt, hour);
            let (gauge, sonde) = &self.station_devices[i];
            if let Some(s) = gauge.as_deref().and_then(|g| sites.get(g)) {
                let level = river.level();
                s.update(|c| c.water_level = level);
            }
            if let Some(s) = sonde.as_deref().and_then(|g| sites.get(g)) {
                s.update(|c| {
                    c.turbidity = q.turbidity;
                    c.ph = q.ph;
                    c.conductivity = q.conductivity;
                    c.dissolved_oxygen = q.dissolved_oxygen;
                    c.water_temperature = q.water_temperature;
                });
            }
        }
        for (k, d) in self.layout.field.iter().enumerate() {
            let Some(site) = sites.get(&d.id) else {
                continue;
            };
            match d.site {
                SiteKind::Lamp { .. } => {
                    let v = physics::mains_voltage(hour, t, k as f64);
                    site.update(|c| c.mains_voltage = v);
                }
                SiteKind::Cover { .. } => {
                    // A lithium primary cell lasts years: a few hundredths of a percent a day.
                    site.update(|c| {
                        c.battery_level = (c.battery_level - 0.03 * dt / 86_400.0).max(0.0)
                    });
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_events_fall_in_the_first_minute_and_outages_end() {
        let layout = Layout::district();
        for speed in [1.0, 60.0] {
            let events = cycle(0, &layout, speed);
            assert!(events[0].at_s / speed < 60.0);
            assert!(events.iter().any(|e| matches!(e.action, Action::Storm(_))));
            // Every outage is undone within the cycle.
            for e in &events {
                if let Action::Backhaul { agent, up: false } = &e.action {
                    assert!(events.iter().any(|r| r.at_s > e.at_s
                        && r.action
                            == Action::Backhaul {
                                agent: agent.clone(),
                                up: true
                            }));
                }
                assert!(e.at_s < CYCLE_S, "{e:?} at speed {speed}");
            }
        }
        let next = cycle(1, &layout, 1.0);
        assert!(next[0].at_s >= CYCLE_S);
        assert_ne!(cycle(0, &layout, 1.0)[0].action, next[0].action);
    }
}
