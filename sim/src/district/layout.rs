//! Where everything stands: streets with their lamps and manholes, each street's lighting
//! cabinet (one agent), the river with its gauging stations (one agent each, hosting a level
//! gauge and some a water-quality sonde or a weather station), rain gauges that publish JSON
//! themselves, and cameras behind some of the agents (synthetic scenes rendered in the
//! agent). Deterministic: the same ids and places on every run.

use super::physics::{QualityBase, Reach};

/// The district's centre.
pub const CENTRE: (f64, f64) = (30.4200, 120.3000);

/// A device model the firmware runs, with its shipped profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Model {
    /// `streetlight-lc200.toml`.
    Streetlight,
    /// `water-level-radar.toml`.
    WaterLevel,
    /// `water-quality-5in1.toml`.
    WaterQuality,
    /// `manhole-cover.toml`.
    Manhole,
    /// `weather-station.toml`.
    Weather,
}

impl Model {
    /// Every model.
    pub const ALL: [Model; 5] = [
        Model::Streetlight,
        Model::WaterLevel,
        Model::WaterQuality,
        Model::Manhole,
        Model::Weather,
    ];

    /// The profile's file name under `profiles/`.
    pub fn profile_file(self) -> &'static str {
        match self {
            Model::Streetlight => "streetlight-lc200.toml",
            Model::WaterLevel => "water-level-radar.toml",
            Model::WaterQuality => "water-quality-5in1.toml",
            Model::Manhole => "manhole-cover.toml",
            Model::Weather => "weather-station.toml",
        }
    }

    /// The profile's text, built into the binary so the demo runs from anywhere.
    pub fn profile_text(self) -> &'static str {
        match self {
            Model::Streetlight => include_str!("../../../profiles/streetlight-lc200.toml"),
            Model::WaterLevel => include_str!("../../../profiles/water-level-radar.toml"),
            Model::WaterQuality => include_str!("../../../profiles/water-quality-5in1.toml"),
            Model::Manhole => include_str!("../../../profiles/manhole-cover.toml"),
            Model::Weather => include_str!("../../../profiles/weather-station.toml"),
        }
    }

    /// The device kind at the hub.
    pub fn kind(self) -> &'static str {
        match self {
            Model::Streetlight => "streetlight",
            Model::WaterLevel => "water_level",
            Model::WaterQuality => "water_quality",
            Model::Manhole => "manhole",
            Model::Weather => "weather",
        }
    }

    /// The owning department.
    pub fn dept(self) -> &'static str {
        match self {
            Model::Streetlight => "lighting",
            Model::WaterLevel => "water",
            Model::WaterQuality => "environment",
            Model::Manhole => "drainage",
            Model::Weather => "weather",
        }
    }

    /// How often the agent polls it.
    pub fn poll_interval(self) -> &'static str {
        match self {
            Model::Streetlight => "5s",
            Model::WaterLevel => "2s",
            Model::WaterQuality => "5s",
            Model::Manhole => "3s",
            Model::Weather => "5s",
        }
    }
}

/// What a Modbus device's site is like at the start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SiteKind {
    /// A lamp of this rated power, W.
    Lamp {
        /// Rated power.
        rated_w: f64,
    },
    /// A level gauge on the river at station `station`.
    Gauge {
        /// Index into [`Layout::stations`].
        station: usize,
    },
    /// A water-quality sonde at station `station`.
    Sonde {
        /// Index into [`Layout::stations`].
        station: usize,
    },
    /// A manhole cover with this battery charge, %.
    Cover {
        /// Battery state of charge.
        battery: f64,
    },
    /// A weather station.
    Mast,
}

/// A Modbus field device.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldDevice {
    /// Id at the hub.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The model.
    pub model: Model,
    /// The agent that polls it.
    pub agent: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// What its site is like.
    pub site: SiteKind,
}

/// An edge agent: a street's lighting cabinet or a river station's box.
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    /// Id at the hub.
    pub id: String,
    /// What it is.
    pub name: String,
    /// Owning department.
    pub dept: &'static str,
}

/// A device that publishes JSON telemetry itself.
#[derive(Clone, Debug, PartialEq)]
pub struct DirectDevice {
    /// Id at the hub.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
}

/// A gauging station on the river.
#[derive(Clone, Debug, PartialEq)]
pub struct Station {
    /// The station's agent.
    pub agent: String,
    /// Its name.
    pub name: String,
    /// The river's catchment and rating at the station.
    pub reach: Reach,
    /// Dry-weather water quality there.
    pub quality: QualityBase,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
}

/// A street with a lighting cabinet.
#[derive(Clone, Debug, PartialEq)]
pub struct Street {
    /// Its name.
    pub name: &'static str,
    /// The cabinet's agent.
    pub agent: String,
    /// The street's lamps, in order along it.
    pub lamps: Vec<String>,
}

/// What a camera's synthetic scene shows (rendered in its agent: no camera needed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CameraScene {
    /// A street in real time: a car, a pedestrian, two cars a minute, and a passing cloud
    /// dimming the picture (a lighting change, never an event); `synthetic:street`.
    Street,
    /// Floodlights on a timer: the picture goes black and comes back, nothing moves (lighting
    /// changes only, never an event); `synthetic:blackout`.
    Floodlights,
    /// A camera whose power keeps failing: it sends nothing for a while (offline in the
    /// catalog), then comes back; `synthetic:dark`.
    Failing,
}

impl CameraScene {
    /// The scene's name in a `synthetic:NAME` source.
    pub fn synthetic_name(self) -> &'static str {
        match self {
            CameraScene::Street => "street",
            CameraScene::Floodlights => "blackout",
            CameraScene::Failing => "dark",
        }
    }
}

/// A camera: a device of kind `camera` at the hub, a `[[camera]]` of its agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Camera {
    /// Id at the hub.
    pub id: String,
    /// GB/T 28181 id (20 digits, type 132: network camera).
    pub gb_id: String,
    /// Display name.
    pub name: String,
    /// The agent that watches it.
    pub agent: String,
    /// Owning department.
    pub dept: &'static str,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// What it sees.
    pub scene: CameraScene,
    /// Seed of its scene (another background and other timings per camera).
    pub seed: u64,
    /// It watches a restricted area: motion there at night raises an alert.
    pub restricted: bool,
}

/// A water-quality sonde of the environment bureau that reports over HJ 212-2017 itself, at a
/// river station beside the district's own Modbus sonde (it measures the same water).
#[derive(Clone, Debug, PartialEq)]
pub struct Hj212Sonde {
    /// Id at the hub.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Its HJ 212 `MN`.
    pub mn: String,
    /// The district sonde whose water it measures.
    pub beside: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
}

/// A drainage pumping station behind a Sparkplug B edge node (its PLC gateway), not our agent:
/// pumps and the wet well they empty.
#[derive(Clone, Debug, PartialEq)]
pub struct PumpStation {
    /// The edge node id (an agent with `protocol = "sparkplug"` at the hub).
    pub node: String,
    /// Display name.
    pub name: String,
    /// The pumps' device ids.
    pub pumps: Vec<String>,
    /// The wet well's device id.
    pub well: String,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
}

/// The whole district.
#[derive(Clone, Debug, PartialEq)]
pub struct Layout {
    /// Edge agents.
    pub agents: Vec<Agent>,
    /// Modbus devices.
    pub field: Vec<FieldDevice>,
    /// JSON devices.
    pub direct: Vec<DirectDevice>,
    /// HJ 212 stations.
    pub hj212: Vec<Hj212Sonde>,
    /// Pumping stations reporting over Sparkplug B.
    pub pump_stations: Vec<PumpStation>,
    /// Streets.
    pub streets: Vec<Street>,
    /// River stations, upstream first.
    pub stations: Vec<Station>,
    /// Cameras.
    pub cameras: Vec<Camera>,
}

/// A point (lat, lon).
pub(crate) type LatLon = (f64, f64);

/// Streets: name, start, end, rated lamp power (W).
pub(crate) const STREETS: [(&str, LatLon, LatLon, f64); 5] = [
    (
        "Wenhua Road",
        (30.4222, 120.2905),
        (30.4228, 120.3095),
        150.0,
    ),
    (
        "Haichang Road",
        (30.4262, 120.2920),
        (30.4266, 120.3080),
        100.0,
    ),
    (
        "Xueyuan Street",
        (30.4185, 120.2955),
        (30.4295, 120.2950),
        100.0,
    ),
    (
        "Jianshe Road",
        (30.4180, 120.3052),
        (30.4290, 120.3048),
        100.0,
    ),
    (
        "Binhe Avenue",
        (30.4168, 120.2880),
        (30.4176, 120.3120),
        150.0,
    ),
];

/// Lamps per street.
pub const LAMPS_PER_STREET: usize = 8;
/// Manholes per street.
pub const MANHOLES_PER_STREET: usize = 2;

/// The river's course, west (upstream) to east: station positions.
pub(crate) const STATIONS: [(&str, (f64, f64)); 5] = [
    ("Xishan sluice", (30.4128, 120.2860)),
    ("Wenhua bridge", (30.4140, 120.2930)),
    ("Central park weir", (30.4152, 120.3000)),
    ("Jianshe bridge", (30.4160, 120.3060)),
    ("Dongmen outfall", (30.4166, 120.3135)),
];

/// GB/T 28181 centre code of the district's cameras: Zhejiang (33), Hangzhou (01), district
/// 10, grassroots unit 00.
pub const GB_CENTRE: &str = "33011000";

/// The GB/T 28181 id of a district network camera (type 132, network 0) of an industry
/// (`21` water conservancy, `00` roads, `04` public places, `20` urban management).
pub fn camera_gb_id(industry: &str, serial: u32) -> String {
    format!("{GB_CENTRE}{industry}1320{serial:06}")
}

/// Cameras: id, name, agent, department, GB/T 28181 industry, place, scene, restricted.
type CameraSite = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    LatLon,
    CameraScene,
    bool,
);

/// Where the cameras are: the sluice compound (restricted: nobody belongs there at night),
/// a crossroads (behind its street's cabinet), the park by the weir, the underpass that floods
/// (its camera fails; wired to the nearby bridge station, so the scripted cabinet link cuts
/// never hide its own failure), the outfall.
const CAMERAS: [CameraSite; 5] = [
    (
        "CAM-0001",
        "Xishan sluice compound",
        "AG-WS01",
        "water",
        "21",
        (30.4131, 120.2858),
        CameraScene::Street,
        true,
    ),
    (
        "CAM-0002",
        "Wenhua Road / Xueyuan Street crossroads",
        "AG-LC01",
        "traffic",
        "00",
        (30.4224, 120.2954),
        CameraScene::Street,
        false,
    ),
    (
        "CAM-0003",
        "Central park lawn",
        "AG-WS03",
        "parks",
        "04",
        (30.4158, 120.3006),
        CameraScene::Floodlights,
        false,
    ),
    (
        "CAM-0004",
        "Binhe Avenue underpass",
        "AG-WS04",
        "drainage",
        "20",
        (30.4173, 120.3050),
        CameraScene::Failing,
        false,
    ),
    (
        "CAM-0005",
        "Dongmen outfall",
        "AG-WS05",
        "water",
        "21",
        (30.4164, 120.3138),
        CameraScene::Street,
        false,
    ),
];

fn lerp(a: (f64, f64), b: (f64, f64), f: f64) -> (f64, f64) {
    (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f)
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

impl Layout {
    /// The demo district: 5 streets (40 lamps, 10 manholes, 5 cabinets), 5 river stations
    /// (5 level gauges, 3 quality sondes, 2 weather stations), 2 rain gauges publishing JSON,
    /// 5 cameras behind cabinets and stations.
    pub fn district() -> Layout {
        let mut agents = Vec::new();
        let mut field = Vec::new();
        let mut streets = Vec::new();
        for (s, (name, from, to, rated_w)) in STREETS.iter().enumerate() {
            let agent = format!("AG-LC{:02}", s + 1);
            agents.push(Agent {
                id: agent.clone(),
                name: format!("{name} lighting cabinet"),
                dept: "lighting",
            });
            let mut lamps = Vec::new();
            for i in 0..LAMPS_PER_STREET {
                let (lat, lon) = lerp(*from, *to, i as f64 / (LAMPS_PER_STREET - 1) as f64);
                let id = format!("SL-{:02}{:02}", s + 1, i + 1);
                lamps.push(id.clone());
                field.push(FieldDevice {
                    id,
                    name: format!("{name} lamp {}", i + 1),
                    model: Model::Streetlight,
                    agent: agent.clone(),
                    lat: round6(lat),
                    lon: round6(lon),
                    // Side lamps of the avenues are a smaller model.
                    site: SiteKind::Lamp {
                        rated_w: if i % 4 == 3 { rated_w * 0.6 } else { *rated_w },
                    },
                });
            }
            for m in 0..MANHOLES_PER_STREET {
                let (lat, lon) = lerp(*from, *to, (m as f64 + 0.5) / MANHOLES_PER_STREET as f64);
                field.push(FieldDevice {
                    id: format!("MH-{:02}{:02}", s + 1, m + 1),
                    name: format!("{name} manhole {}", m + 1),
                    model: Model::Manhole,
                    agent: agent.clone(),
                    // A little off the lamp line: in the carriageway.
                    lat: round6(lat - 0.00008),
                    lon: round6(lon + 0.00005),
                    site: SiteKind::Cover {
                        battery: if s == 2 && m == 1 {
                            19.0
                        } else {
                            70.0 + 5.0 * ((s * 2 + m) % 5) as f64
                        },
                    },
                });
            }
            streets.push(Street { name, agent, lamps });
        }

        let mut stations = Vec::new();
        for (i, (name, (lat, lon))) in STATIONS.iter().enumerate() {
            let agent = format!("AG-WS{:02}", i + 1);
            let f = i as f64;
            agents.push(Agent {
                id: agent.clone(),
                name: format!("{name} station"),
                dept: "water",
            });
            // Downstream the catchment grows and responds more slowly.
            let area = 3.0 + 2.0 * f;
            stations.push(Station {
                agent: agent.clone(),
                name: name.to_string(),
                reach: Reach {
                    area_km2: area,
                    runoff_coeff: 0.6,
                    k_s: (10.0 + 2.5 * f) * 60.0,
                    base_flow: 8.0 + 1.6 * area,
                    base_level: 2.10 + 0.08 * f,
                    zero_flow_level: 0.9,
                    rating_exp: 1.6,
                },
                quality: QualityBase {
                    turbidity: 8.0 + 1.5 * f,
                    ph: 7.35 - 0.05 * f,
                    conductivity: 430.0 + 25.0 * f,
                    dissolved_oxygen: 8.6 - 0.3 * f,
                    water_temperature: 18.0 + 0.2 * f,
                },
                lat: *lat,
                lon: *lon,
            });
            field.push(FieldDevice {
                id: format!("WL-{:04}", i + 1),
                name: format!("{name} level gauge"),
                model: Model::WaterLevel,
                agent: agent.clone(),
                lat: *lat,
                lon: *lon,
                site: SiteKind::Gauge { station: i },
            });
            if i % 2 == 0 {
                field.push(FieldDevice {
                    id: format!("WQ-{:04}", i / 2 + 1),
                    name: format!("{name} water-quality sonde"),
                    model: Model::WaterQuality,
                    agent: agent.clone(),
                    lat: round6(lat + 0.00006),
                    lon: round6(lon + 0.00006),
                    site: SiteKind::Sonde { station: i },
                });
            } else {
                field.push(FieldDevice {
                    id: format!("WX-{:04}", i / 2 + 1),
                    name: format!("{name} weather station"),
                    model: Model::Weather,
                    agent: agent.clone(),
                    lat: round6(lat + 0.0002),
                    lon: *lon,
                    site: SiteKind::Mast,
                });
            }
        }

        let direct = vec![
            DirectDevice {
                id: "RG-0001".into(),
                name: "District office rain gauge".into(),
                lat: 30.4240,
                lon: 120.2990,
            },
            DirectDevice {
                id: "RG-0002".into(),
                name: "North school rain gauge".into(),
                lat: 30.4300,
                lon: 120.3040,
            },
        ];
        // The environment bureau's stations at the first and last river stations.
        let hj212 = [(0usize, "WQ-0001"), (4, "WQ-0003")]
            .iter()
            .enumerate()
            .map(|(n, (station, beside))| {
                let (name, (lat, lon)) = STATIONS[*station];
                Hj212Sonde {
                    id: format!("WQ-E{:03}", n + 1),
                    name: format!("{name} environment bureau sonde (HJ 212)"),
                    mn: format!("3301102026{:04}", n + 1),
                    beside: beside.to_string(),
                    lat: round6(lat - 0.00006),
                    lon: round6(lon - 0.00006),
                }
            })
            .collect();
        let cameras = CAMERAS
            .iter()
            .enumerate()
            .map(
                |(i, (id, name, agent, dept, industry, (lat, lon), scene, restricted))| Camera {
                    id: id.to_string(),
                    gb_id: camera_gb_id(industry, i as u32 + 1),
                    name: name.to_string(),
                    agent: agent.to_string(),
                    dept,
                    lat: *lat,
                    lon: *lon,
                    scene: *scene,
                    seed: 11 + 7 * i as u64,
                    restricted: *restricted,
                },
            )
            .collect();
        // The drainage pumping station by the downstream river station.
        let (_, (lat, lon)) = STATIONS[4];
        let pump_stations = vec![PumpStation {
            node: "PS-EN01".into(),
            name: "South drainage pumping station".into(),
            pumps: vec!["PS-P01".into(), "PS-P02".into()],
            well: "PS-WW01".into(),
            lat: round6(lat + 0.0004),
            lon: round6(lon + 0.0003),
        }];
        Layout {
            agents,
            field,
            direct,
            hj212,
            pump_stations,
            streets,
            stations,
            cameras,
        }
    }

    /// Every device id: Modbus, direct, cameras.
    pub fn device_ids(&self) -> impl Iterator<Item = &str> {
        self.field
            .iter()
            .map(|d| d.id.as_str())
            .chain(self.direct.iter().map(|d| d.id.as_str()))
            .chain(self.hj212.iter().map(|d| d.id.as_str()))
            .chain(self.pump_devices())
            .chain(self.cameras.iter().map(|c| c.id.as_str()))
    }

    /// The devices of the pumping stations: pumps and wet wells.
    pub fn pump_devices(&self) -> impl Iterator<Item = &str> {
        self.pump_stations.iter().flat_map(|p| {
            p.pumps
                .iter()
                .map(String::as_str)
                .chain(std::iter::once(p.well.as_str()))
        })
    }

    /// The cameras an agent watches.
    pub fn cameras_of<'a>(&'a self, agent: &'a str) -> impl Iterator<Item = &'a Camera> {
        self.cameras.iter().filter(move |c| c.agent == agent)
    }

    /// The Modbus device with this id.
    pub fn field_device(&self, id: &str) -> Option<&FieldDevice> {
        self.field.iter().find(|d| d.id == id)
    }

    /// All lamps.
    pub fn lamps(&self) -> impl Iterator<Item = &FieldDevice> {
        self.field.iter().filter(|d| d.model == Model::Streetlight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_district_has_every_kind_and_unique_ids() {
        let l = Layout::district();
        let ids: HashSet<&str> = l.device_ids().collect();
        assert_eq!(
            ids.len(),
            l.field.len()
                + l.direct.len()
                + l.hj212.len()
                + l.pump_devices().count()
                + l.cameras.len()
        );
        assert!(ids.len() >= 60, "{}", ids.len());
        for m in Model::ALL {
            assert!(l.field.iter().any(|d| d.model == m), "{m:?}");
        }
        for d in &l.field {
            assert!(l.agents.iter().any(|a| a.id == d.agent), "{}", d.id);
            assert!((d.lat - CENTRE.0).abs() < 0.02 && (d.lon - CENTRE.1).abs() < 0.03);
            protocols::id::validate_id(&d.id).unwrap();
        }
        for m in Model::ALL {
            protocols::profile::DeviceProfile::from_toml(m.profile_text()).unwrap();
        }
    }

    #[test]
    fn cameras_have_gb_ids_and_every_scene() {
        let l = Layout::district();
        assert!((4..=6).contains(&l.cameras.len()));
        let mut gb = HashSet::new();
        for c in &l.cameras {
            let id = protocols::gb28181::GbId::parse(&c.gb_id).unwrap();
            assert!(id.is_camera(), "{}", c.gb_id);
            assert_eq!(id.center(), GB_CENTRE);
            assert!(gb.insert(c.gb_id.clone()), "{} twice", c.gb_id);
            assert!(l.agents.iter().any(|a| a.id == c.agent), "{}", c.id);
            assert!((c.lat - CENTRE.0).abs() < 0.02 && (c.lon - CENTRE.1).abs() < 0.03);
            protocols::id::validate_id(&c.id).unwrap();
        }
        for s in [
            CameraScene::Street,
            CameraScene::Floodlights,
            CameraScene::Failing,
        ] {
            assert!(l.cameras.iter().any(|c| c.scene == s), "{s:?}");
        }
        assert_eq!(l.cameras.iter().filter(|c| c.restricted).count(), 1);
        let water = protocols::gb28181::GbId::parse(&l.cameras[0].gb_id).unwrap();
        assert_eq!(water.industry_name(), "water conservancy");
        assert_eq!(water.serial(), "000001");
    }
}
