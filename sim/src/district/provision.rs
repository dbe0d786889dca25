//! The district's configuration on disk, as an integrator would write it: `DIR/hub.toml`
//! (devices and cameras, agents, apps, rules), `DIR/agents/{id}.toml` (one per cabinet and
//! station: its Modbus devices and `[[camera]]`s) and `DIR/profiles/*.toml` (the device
//! models). The demo runs exactly these files: it writes them, then loads them back through
//! the hub's and the agent's own loaders.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use edge_agent::config::CameraSource;
use hub::config::{
    AgentConfig, AgentProtocol, AppConfig, DailyWindow, DashboardSettings, DeviceConfig,
    Hj212Settings, HubConfig, HubSettings, RuleConfig, SparkplugMetricConfig, SparkplugSettings,
};
use hub::tls::dev::{ClientName, DevCa};
use protocols::config::HumanDuration;
use protocols::messages::Scalar;
use protocols::topic::AlertLevel;
use serde::Serialize;

use super::layout::{Camera, CameraScene, Layout, Model};
use super::secrets::Secrets;

/// The app the dashboard and operators use.
pub const COMMAND_CENTER: &str = "command-center";
/// The app that switches and dims the lamps on schedule.
pub const LIGHTING_CONTROL: &str = "lighting-control";
/// The water department's flood-control room: the river's levels and its own cameras only.
pub const FLOOD_CONTROL: &str = "flood-control";
/// The department whose cameras [`FLOOD_CONTROL`] sees.
pub const FLOOD_CONTROL_DEPT: &str = "water";
/// When motion in a restricted area raises an alert (district time, the hub's `utc_offset`).
pub const NIGHT: &str = "22:00-06:00";

/// Every client id that needs a secret: agents, direct devices, apps.
pub fn client_ids(layout: &Layout) -> Vec<&str> {
    layout
        .agents
        .iter()
        .map(|a| a.id.as_str())
        .chain(layout.direct.iter().map(|d| d.id.as_str()))
        .chain(layout.hj212.iter().map(|d| d.id.as_str()))
        .chain(layout.pump_stations.iter().map(|p| p.node.as_str()))
        .chain([COMMAND_CENTER, LIGHTING_CONTROL, FLOOD_CONTROL])
        .collect()
}

/// Picture size and rate of the demo's cameras: small, so five of them stay light on a
/// 2-core machine (the detector analyses 100 rows anyway).
pub const CAMERA_SIZE: (u32, u32) = (320, 180);
/// Pictures per second of the demo's cameras (every one is analysed at the default
/// `detect_fps`).
pub const CAMERA_FPS: u32 = 5;

/// How fast a camera's scene runs at a demo speed. Traffic moves in real time whatever the
/// demo's speed (the detector judges real motion); the floodlight timer and the failing
/// power follow the demo clock, at most in real time (1 scene second per second) so that a
/// fast demo still shows each light and each outage for seconds.
pub fn scene_speed(scene: CameraScene, demo_speed: f64) -> f64 {
    match scene {
        CameraScene::Street => 1.0,
        CameraScene::Floodlights | CameraScene::Failing => {
            let s = demo_speed / 30.0;
            if s.is_nan() { 1.0 } else { s.clamp(0.05, 1.0) }
        }
    }
}

/// Per-pixel difference that counts as changed for a camera watching a restricted area.
pub const RESTRICTED_THRESHOLD: i64 = 15;

/// The settings of a camera beyond the defaults (motion at 5 analysed pictures/s, offline
/// after 5 s without a picture fit the demo). A restricted area's camera is more sensitive:
/// a person in dark clothes on grey tarmac differs by about 20 luma levels, under the default
/// threshold of 25 made for busy streets.
pub fn camera_settings(camera: &Camera) -> toml::Table {
    let mut t = toml::Table::new();
    if camera.restricted {
        t.insert("threshold".into(), RESTRICTED_THRESHOLD.into());
    }
    t
}

/// The `source` of a camera at a demo speed: `synthetic:SCENE?seed=..&size=..&fps=..&speed=..`.
pub fn camera_source(camera: &Camera, demo_speed: f64) -> String {
    let (w, h) = CAMERA_SIZE;
    format!(
        "synthetic:{}?seed={}&size={w}x{h}&fps={CAMERA_FPS}&speed={}",
        camera.scene.synthetic_name(),
        camera.seed,
        // Rounded, so the written config reads well.
        (scene_speed(camera.scene, demo_speed) * 1000.0).round() / 1000.0
    )
}

/// Why the configuration could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Serializing failed (a bug).
    #[error("serializing {what}: {detail}")]
    Serialize {
        /// Which file.
        what: String,
        /// What is wrong, in one line.
        detail: String,
    },
    /// The hub or an agent refused its written config (a bug in the layout); the error
    /// names the file.
    #[error(transparent)]
    Config(#[from] protocols::config::LoadError),
    /// The development certificates could not be made.
    #[error("development PKI: {0}")]
    Tls(#[from] hub::tls::TlsError),
}

fn write(path: &Path, text: &str) -> Result<(), ProvisionError> {
    let err = |source| ProvisionError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    std::fs::write(path, text).map_err(err)
}

/// Writes the district's base map, `DIR/district.geojson`, for the dashboard.
pub fn write_geojson(dir: &Path, layout: &Layout) -> Result<(), ProvisionError> {
    let text = serde_json::to_string_pretty(&super::geojson::district(layout)).map_err(|e| {
        ProvisionError::Serialize {
            what: super::geojson::FILE.into(),
            detail: e.to_string(),
        }
    })?;
    write(&dir.join(super::geojson::FILE), &text)
}

/// Writes `DIR/profiles/*.toml`.
pub fn write_profiles(dir: &Path) -> Result<(), ProvisionError> {
    for m in Model::ALL {
        write(
            &dir.join("profiles").join(m.profile_file()),
            m.profile_text(),
        )?;
    }
    Ok(())
}

fn rule(id: &str, level: AlertLevel) -> RuleConfig {
    RuleConfig {
        id: id.to_string(),
        kind: None,
        device: None,
        dept: None,
        quantity: None,
        above: None,
        below: None,
        clear_below: None,
        clear_above: None,
        hold: None,
        rise_per_hour: None,
        window: None,
        silent_for: None,
        equals: None,
        active: None,
        level,
        message: None,
        category: None,
        radius_km: None,
    }
}

/// The alert rules of the district (the alerts engine evaluates them; the config only
/// declares them).
pub fn rules(layout: &Layout) -> Vec<RuleConfig> {
    let some = |s: &str| Some(s.to_string());
    let night = DailyWindow::parse(NIGHT).ok();
    let watched = layout.cameras.iter().filter(|c| c.restricted).count();
    let restricted = layout.cameras.iter().filter(|c| c.restricted).map(|c| {
        let id = if watched == 1 {
            "restricted-area-motion".to_string()
        } else {
            format!("restricted-area-motion-{}", c.id)
        };
        RuleConfig {
            kind: some("camera"),
            device: Some(c.id.clone()),
            quantity: some("motion"),
            equals: Some(Scalar::Bool(true)),
            active: night,
            message: some(&format!(
                "{{device}}: movement at night in the restricted {}",
                c.name
            )),
            category: some("Security"),
            ..rule(&id, AlertLevel::Orange)
        }
    });
    let mut rules = vec![
        RuleConfig {
            kind: some("water_level"),
            quantity: some("water_level"),
            above: Some(3.0),
            clear_below: Some(2.8),
            hold: Some(HumanDuration::secs(30)),
            message: some("{device}: water level {value} m above the {threshold} m warning line"),
            ..rule("water-level-high", AlertLevel::Orange)
        },
        RuleConfig {
            kind: some("water_level"),
            quantity: some("water_level"),
            above: Some(3.5),
            clear_below: Some(3.3),
            hold: Some(HumanDuration::secs(30)),
            message: some("{device}: water level {value} m above the {threshold} m danger line"),
            ..rule("water-level-danger", AlertLevel::Red)
        },
        RuleConfig {
            kind: some("water_level"),
            quantity: some("water_level"),
            rise_per_hour: Some(0.5),
            message: some("{device}: water rising faster than {threshold} m/h"),
            ..rule("water-rising-fast", AlertLevel::Yellow)
        },
        RuleConfig {
            kind: some("water_quality"),
            quantity: some("turbidity"),
            above: Some(50.0),
            clear_below: Some(40.0),
            hold: Some(HumanDuration::secs(60)),
            message: some("{device}: turbidity {value} NTU"),
            ..rule("turbidity-high", AlertLevel::Yellow)
        },
        RuleConfig {
            // GB 3838-2002 class III surface water: ammonia nitrogen at most 1.0 mg/L.
            kind: some("water_quality"),
            quantity: some("ammonia_nitrogen"),
            above: Some(1.0),
            clear_below: Some(0.9),
            hold: Some(HumanDuration::secs(60)),
            message: some("{device}: ammonia nitrogen {value} mg/L above class III {threshold}"),
            ..rule("ammonia-high", AlertLevel::Yellow)
        },
        RuleConfig {
            kind: some("water_quality"),
            quantity: some("ph"),
            below: Some(6.5),
            clear_above: Some(6.7),
            hold: Some(HumanDuration::secs(60)),
            message: some("{device}: pH {value} below {threshold}"),
            ..rule("ph-low", AlertLevel::Orange)
        },
        RuleConfig {
            kind: some("water_quality"),
            quantity: some("ph"),
            above: Some(8.5),
            clear_below: Some(8.3),
            hold: Some(HumanDuration::secs(60)),
            message: some("{device}: pH {value} above {threshold}"),
            ..rule("ph-high", AlertLevel::Orange)
        },
        RuleConfig {
            // The pumping station's wet well close to overflowing into the street drains.
            kind: some("wet_well"),
            quantity: some("water_level"),
            above: Some(3.2),
            clear_below: Some(2.9),
            hold: Some(HumanDuration::secs(30)),
            message: some("{device}: wet well at {value} m, overflow at 3.5 m"),
            ..rule("wet-well-high", AlertLevel::Orange)
        },
        RuleConfig {
            kind: some("manhole"),
            quantity: some("cover_open"),
            equals: Some(Scalar::Bool(true)),
            message: some("{device}: manhole cover open"),
            ..rule("manhole-cover-open", AlertLevel::Orange)
        },
        RuleConfig {
            kind: some("manhole"),
            quantity: some("battery_level"),
            below: Some(20.0),
            clear_above: Some(25.0),
            message: some("{device}: battery at {value} %"),
            ..rule("battery-low", AlertLevel::Blue)
        },
        RuleConfig {
            kind: some("streetlight"),
            quantity: some("lamp_voltage"),
            below: Some(90.0),
            hold: Some(HumanDuration::secs(30)),
            message: some("{device}: no mains ({value} V)"),
            ..rule("lamp-power-loss", AlertLevel::Yellow)
        },
        RuleConfig {
            kind: some("streetlight"),
            quantity: some("lamp_status"),
            equals: Some(Scalar::Text("lamp_failure".into())),
            message: some("{device}: lamp failure"),
            ..rule("lamp-failure", AlertLevel::Yellow)
        },
        RuleConfig {
            kind: some("*"),
            silent_for: Some(HumanDuration::secs(120)),
            message: some("{device}: nothing heard for {threshold}"),
            ..rule("device-silent", AlertLevel::Blue)
        },
    ];
    rules.extend(restricted);
    rules
}

/// What the pumping stations' metrics measure, in the units their PLCs report.
pub fn sparkplug_metrics() -> Vec<SparkplugMetricConfig> {
    use crate::sparkplug_node as sp;
    [
        (sp::PUMP_RUNNING, "pump_running", None),
        (sp::PUMP_SPEED, "pump_speed", None),
        (sp::PUMP_FLOW, "water_flow", Some("m3/h")),
        (sp::PUMP_PRESSURE, "water_pressure", Some("bar")),
        (sp::WELL_LEVEL, "water_level", Some("m")),
    ]
    .into_iter()
    .map(|(name, quantity, unit)| SparkplugMetricConfig {
        name: name.to_string(),
        quantity: quantity.to_string(),
        unit: unit.map(String::from),
    })
    .collect()
}

/// Listeners of the hub.
#[derive(Clone, Debug)]
pub struct Listen {
    /// MQTT addresses.
    pub mqtt: Vec<String>,
    /// MQTT over TLS addresses (none: off).
    pub mqtt_tls: Vec<String>,
    /// HTTP address.
    pub http: String,
    /// HTTPS address (none: off).
    pub https: Option<String>,
    /// HJ 212 addresses.
    pub hj212: Vec<String>,
}

impl Listen {
    /// Whether any listener speaks TLS (the hub then needs the [`Pki`]'s files).
    pub fn tls(&self) -> bool {
        !self.mqtt_tls.is_empty() || self.https.is_some()
    }
}

/// The development CA's certificate, relative to the data directory: the hub's `client_ca`
/// and what clients trust (`mosquitto_sub --cafile`, `curl --cacert`, an agent's `ca`).
pub const CA_FILE: &str = "tls/ca.crt";
/// The hub's server certificate, relative to the data directory.
pub const HUB_CERT_FILE: &str = "tls/hub.crt";
/// The key of [`HUB_CERT_FILE`], relative to the data directory.
pub const HUB_KEY_FILE: &str = "tls/hub.key";
/// What the hub's certificate names: clients of the demo dial loopback (the agents their
/// backhaul on 127.0.0.1). A client on another machine would dial a name not in it.
pub const HUB_HOSTS: [&str; 3] = ["127.0.0.1", "::1", "localhost"];

/// An agent's client certificate and key, relative to the data directory.
pub fn agent_cert_files(agent: &str) -> (PathBuf, PathBuf) {
    let dir = Path::new("tls").join("agents");
    (
        dir.join(format!("{agent}.crt")),
        dir.join(format!("{agent}.key")),
    )
}

/// The demo's development PKI under `DIR/tls/` (see [`ensure_pki`]).
#[derive(Clone, Debug)]
pub struct Pki {
    /// The CA certificate (absolute, or relative to where the demo runs).
    pub ca: PathBuf,
    /// Whether the files were kept from an earlier run rather than made now.
    pub reused: bool,
}

/// Makes the development PKI under `DIR/tls/`: a CA, the hub's certificate for
/// [`HUB_HOSTS`], and a client certificate per agent (SAN URI `urn:district:{id}`). When
/// every file is there from an earlier run, they are kept, so clients that trust `ca.crt`
/// keep working across restarts; when any is missing, all are made anew (the CA's key is not
/// kept, so nothing can be added to an old set).
pub fn ensure_pki<'a>(
    dir: &Path,
    agents: impl IntoIterator<Item = &'a str>,
) -> Result<Pki, ProvisionError> {
    let agents: Vec<&str> = agents.into_iter().collect();
    let ca = dir.join(CA_FILE);
    let mut files = vec![ca.clone(), dir.join(HUB_CERT_FILE), dir.join(HUB_KEY_FILE)];
    for a in &agents {
        let (crt, key) = agent_cert_files(a);
        files.extend([dir.join(crt), dir.join(key)]);
    }
    if files.iter().all(|f| f.is_file()) {
        return Ok(Pki { ca, reused: true });
    }
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ProvisionError::Write { path, source }
    };
    // The CA certificate goes last: with it gone until then, an interrupted run leaves an
    // incomplete set that the next run makes anew rather than a mix of two CAs.
    if let Err(e) = std::fs::remove_file(&ca)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(write_err(&ca)(e));
    }
    let tls = dir.join("tls");
    let agents_dir = tls.join("agents");
    std::fs::create_dir_all(&agents_dir).map_err(write_err(&agents_dir))?;
    let authority = DevCa::new("sim demo development CA")?;
    authority
        .server(&HUB_HOSTS)?
        .write(&tls, "hub")
        .map_err(write_err(&dir.join(HUB_CERT_FILE)))?;
    for a in &agents {
        authority
            .client(a, ClientName::Uri)?
            .write(&agents_dir, a)
            .map_err(write_err(&dir.join(agent_cert_files(a).0)))?;
    }
    authority.write(&tls, "ca").map_err(write_err(&ca))?;
    Ok(Pki { ca, reused: false })
}

/// The hub configuration of the district; cameras are described by their sources at
/// `demo_speed`.
pub fn hub_config(
    layout: &Layout,
    secrets: &Secrets,
    listen: &Listen,
    demo_speed: f64,
) -> HubConfig {
    let mut devices = Vec::new();
    for d in &layout.field {
        devices.push(DeviceConfig {
            id: d.id.clone(),
            kind: d.model.kind().to_string(),
            agent: Some(d.agent.clone()),
            dept: Some(d.model.dept().to_string()),
            name: Some(d.name.clone()),
            lat: Some(d.lat),
            lon: Some(d.lon),
            profile: Some(Path::new("profiles").join(d.model.profile_file())),
            ..DeviceConfig::default()
        });
    }
    for d in &layout.direct {
        devices.push(DeviceConfig {
            id: d.id.clone(),
            kind: "weather".to_string(),
            secret: Some(secrets.get(&d.id).to_string()),
            dept: Some("weather".to_string()),
            name: Some(d.name.clone()),
            lat: Some(d.lat),
            lon: Some(d.lon),
            ..DeviceConfig::default()
        });
    }
    for d in &layout.hj212 {
        devices.push(DeviceConfig {
            id: d.id.clone(),
            kind: "water_quality".to_string(),
            dept: Some("water".to_string()),
            name: Some(d.name.clone()),
            lat: Some(d.lat),
            lon: Some(d.lon),
            hj212_mn: Some(d.mn.clone()),
            // The generated secret is alphanumeric: a valid PW.
            hj212_pw: Some(secrets.get(&d.id).to_string()),
            ..DeviceConfig::default()
        });
    }
    for p in &layout.pump_stations {
        let kinds = p
            .pumps
            .iter()
            .map(|id| (id, "pump"))
            .chain([(&p.well, "wet_well")]);
        for (id, kind) in kinds {
            devices.push(DeviceConfig {
                id: id.clone(),
                kind: kind.to_string(),
                agent: Some(p.node.clone()),
                dept: Some("water".to_string()),
                name: Some(format!("{} {id}", p.name)),
                lat: Some(p.lat),
                lon: Some(p.lon),
                ..DeviceConfig::default()
            });
        }
    }
    for c in &layout.cameras {
        devices.push(DeviceConfig {
            id: c.id.clone(),
            kind: "camera".to_string(),
            agent: Some(c.agent.clone()),
            dept: Some(c.dept.to_string()),
            name: Some(c.name.clone()),
            lat: Some(c.lat),
            lon: Some(c.lon),
            gb_id: Some(c.gb_id.clone()),
            stream: Some(camera_source(c, demo_speed)),
            ..DeviceConfig::default()
        });
    }
    let agents = layout
        .agents
        .iter()
        .map(|a| AgentConfig {
            id: a.id.clone(),
            secret: Some(secrets.get(&a.id).to_string()),
            secret_hash: None,
            dept: Some(a.dept.to_string()),
            ..AgentConfig::default()
        })
        .chain(layout.pump_stations.iter().map(|p| AgentConfig {
            id: p.node.clone(),
            secret: Some(secrets.get(&p.node).to_string()),
            dept: Some("water".to_string()),
            protocol: AgentProtocol::Sparkplug,
            ..AgentConfig::default()
        }))
        .collect();
    let apps = vec![
        AppConfig {
            id: COMMAND_CENTER.to_string(),
            secret: Some(secrets.get(COMMAND_CENTER).to_string()),
            secret_hash: None,
            // `admin/rules`: the duty officer's page draws the rules' thresholds on charts.
            grants: [
                "feeds/#",
                "twin/#",
                "alerts/#",
                "status/#",
                "deadletter/#",
                "admin/rules",
            ]
            .map(String::from)
            .to_vec(),
        },
        AppConfig {
            id: LIGHTING_CONTROL.to_string(),
            secret: Some(secrets.get(LIGHTING_CONTROL).to_string()),
            secret_hash: None,
            // Reads the lamps' twins and writes their desired dimming.
            grants: vec!["twin/#".to_string()],
        },
        AppConfig {
            id: FLOOD_CONTROL.to_string(),
            secret: Some(secrets.get(FLOOD_CONTROL).to_string()),
            secret_hash: None,
            // The river's levels and the department's own cameras, nothing else.
            grants: std::iter::once("feeds/water_level/#".to_string())
                .chain(
                    layout
                        .cameras
                        .iter()
                        .filter(|c| c.dept == FLOOD_CONTROL_DEPT)
                        .map(|c| format!("feeds/camera/{}", c.id)),
                )
                .collect(),
        },
    ];
    // Relative: hub.toml's paths resolve against its directory, so the data directory can
    // move.
    let tls_file = |f: &str| listen.tls().then(|| PathBuf::from(f));
    HubConfig {
        hub: HubSettings {
            mqtt_listen: listen.mqtt.clone(),
            http_listen: listen.http.clone(),
            mqtt_tls_listen: listen.mqtt_tls.clone(),
            https_listen: listen.https.clone(),
            tls_cert: tls_file(HUB_CERT_FILE),
            tls_key: tls_file(HUB_KEY_FILE),
            client_ca: tls_file(CA_FILE),
            data_dir: PathBuf::from("."),
            ..HubSettings::default()
        },
        devices,
        agents,
        apps,
        rules: rules(layout),
        hj212: Hj212Settings {
            listen: listen.hj212.clone(),
            ..Hj212Settings::default()
        },
        // The pumping station's gateway may wait for its primary host: the hub says it is up.
        sparkplug: SparkplugSettings {
            host_id: Some("district-hub".to_string()),
        },
        sparkplug_metrics: sparkplug_metrics(),
        // Written by `write_geojson`; relative to hub.toml like the other paths.
        dashboard: DashboardSettings {
            geojson: Some(PathBuf::from(super::geojson::FILE)),
            tile_url: None,
        },
        cluster: None,
        source: None,
    }
}

const HUB_HEADER: &str = "\
# The hub configuration `sim demo` ran with (rewritten on every start).
# Run the same hub alone with: hub --config THIS_FILE
# Secrets come from secrets.toml beside this file (generated on the first run).
";

const HUB_NOTES: &str = "
# Cameras (kind = \"camera\") are watched by the agent named in `agent`: see the [[camera]]
# entries of agents/AGENT.toml; `stream` is their synthetic source, rendered in the agent.
";

/// Writes `DIR/hub.toml` and loads it back with the hub's own loader (paths resolved).
pub fn write_hub_config(dir: &Path, cfg: &HubConfig) -> Result<HubConfig, ProvisionError> {
    write_hub_config_as(dir, "hub.toml", cfg)
}

/// Writes `DIR/{name}` (`sim demo --cluster`: `hub-2.toml` ... for the other hubs) and loads
/// it back with the hub's own loader (paths resolved against `DIR`).
pub fn write_hub_config_as(
    dir: &Path,
    name: &str,
    cfg: &HubConfig,
) -> Result<HubConfig, ProvisionError> {
    let text = toml::to_string(cfg).map_err(|e| ProvisionError::Serialize {
        what: "hub.toml".into(),
        detail: e.to_string(),
    })?;
    let path = dir.join(name);
    write(&path, &format!("{HUB_HEADER}\n{text}{HUB_NOTES}"))?;
    Ok(HubConfig::load(&path)?)
}

#[derive(Serialize)]
struct AgentToml<'a> {
    agent: AgentSectionToml<'a>,
    modbus: Vec<ModbusToml<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    camera: Vec<CameraSource>,
}

#[derive(Serialize)]
struct AgentSectionToml<'a> {
    id: &'a str,
    secret: &'a str,
    hub: edge_agent::config::HubList,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    data_dir: String,
    health_interval: &'a str,
    batch_max_age: &'a str,
    link_source: String,
}

#[derive(Serialize)]
struct ModbusToml<'a> {
    device: &'a str,
    profile: String,
    transport: String,
    unit: u8,
    interval: &'a str,
    deadband: f64,
    heartbeat: &'a str,
    timeout: &'a str,
}

/// Where an agent's files are: its config, its queue directory, its modem status file.
pub fn agent_paths(dir: &Path, agent: &str) -> (PathBuf, PathBuf, PathBuf) {
    let agents = dir.join("agents");
    (
        agents.join(format!("{agent}.toml")),
        agents.join(agent),
        agents.join(format!("{agent}.link")),
    )
}

/// How an agent reaches the hub.
#[derive(Clone, Debug)]
pub struct Uplink {
    /// Where it dials (its backhaul link).
    pub hub: SocketAddr,
    /// The other hubs of a cluster, in the order it fails over to them (`sim demo
    /// --cluster`; empty with one hub).
    pub failover: Vec<SocketAddr>,
    /// `mqtts://` with the [`Pki`]'s CA and the agent's client certificate (made by
    /// [`ensure_pki`]); otherwise plain `mqtt://`.
    pub tls: bool,
}

/// Writes `DIR/agents/{agent}.toml`: the agent reaches the hub through `uplink` (its
/// backhaul link), polls its devices at `endpoint(device id)` and watches its cameras
/// (scenes at `demo_speed`); loads it back with the agent's loader.
pub fn write_agent_config(
    dir: &Path,
    layout: &Layout,
    agent: &str,
    secrets: &Secrets,
    uplink: Uplink,
    endpoint: impl Fn(&str) -> Option<SocketAddr>,
    demo_speed: f64,
) -> Result<edge_agent::config::AgentConfig, ProvisionError> {
    let (path, _, link) = agent_paths(dir, agent);
    let modbus = layout
        .field
        .iter()
        .filter(|d| d.agent == agent)
        .filter_map(|d| {
            let addr = endpoint(&d.id)?;
            Some(ModbusToml {
                device: &d.id,
                profile: format!("../profiles/{}", d.model.profile_file()),
                transport: format!("tcp://{addr}"),
                unit: 1,
                interval: d.model.poll_interval(),
                deadband: 0.0,
                heartbeat: "60s",
                timeout: "1s",
            })
        })
        .collect();
    let camera = layout
        .cameras_of(agent)
        .map(|c| CameraSource {
            id: c.id.clone(),
            source: camera_source(c, demo_speed),
            settings: camera_settings(c),
        })
        .collect();
    // The agent's paths resolve against its config's directory, `DIR/agents/`.
    let up = |p: &Path| {
        uplink
            .tls
            .then(|| Path::new("..").join(p).display().to_string())
    };
    let (cert, key) = agent_cert_files(agent);
    let file = AgentToml {
        agent: AgentSectionToml {
            id: agent,
            // Kept beside the certificate: the config still works against a hub without
            // `client_ca`.
            secret: secrets.get(agent),
            hub: std::iter::once(uplink.hub)
                .chain(uplink.failover.iter().copied())
                .map(|h| format!("{}://{h}", if uplink.tls { "mqtts" } else { "mqtt" }))
                .collect::<Vec<_>>()
                .into(),
            ca: up(Path::new(CA_FILE)),
            cert: up(&cert),
            key: up(&key),
            data_dir: agent.to_string(),
            // Often, so the dashboard shows a device dropping off within seconds.
            health_interval: "5s",
            batch_max_age: "250ms",
            link_source: link.display().to_string(),
        },
        modbus,
        camera,
    };
    let text = toml::to_string(&file).map_err(|e| ProvisionError::Serialize {
        what: path.display().to_string(),
        detail: e.to_string(),
    })?;
    write(
        &path,
        &format!(
            "# Agent `{agent}` of the simulated district (rewritten by `sim demo` on every start:\n\
             # the devices' Modbus ports and the backhaul port change).\n{text}"
        ),
    )?;
    Ok(edge_agent::config::AgentConfig::load(&path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_hub_config_loads() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::district();
        let secrets = Secrets::load_or_create(dir.path(), client_ids(&layout)).unwrap();
        write_profiles(dir.path()).unwrap();
        let listen = Listen {
            mqtt: vec!["127.0.0.1:0".into()],
            mqtt_tls: Vec::new(),
            http: "127.0.0.1:0".into(),
            https: None,
            hj212: vec!["127.0.0.1:0".into()],
        };
        let cfg =
            write_hub_config(dir.path(), &hub_config(&layout, &secrets, &listen, 1.0)).unwrap();
        assert_eq!(cfg.hub.data_dir, dir.path().join("."));
        assert_eq!(cfg.hub.tls_cert, None, "no TLS listener, no TLS files");
        assert_eq!(
            cfg.devices.len(),
            layout.field.len()
                + layout.direct.len()
                + layout.hj212.len()
                + layout.pump_devices().count()
                + layout.cameras.len()
        );
        let node = cfg.agents.iter().find(|a| a.id == "PS-EN01").unwrap();
        assert_eq!(node.protocol, AgentProtocol::Sparkplug);
        let well = cfg.devices.iter().find(|d| d.id == "PS-WW01").unwrap();
        assert_eq!(well.agent.as_deref(), Some("PS-EN01"));
        assert_eq!(cfg.sparkplug_metrics.len(), 5);
        let sonde = cfg.devices.iter().find(|d| d.hj212_mn.is_some()).unwrap();
        assert_eq!(sonde.kind, "water_quality");
        assert_eq!(sonde.hj212_pw.as_deref(), Some(secrets.get(&sonde.id)));
        assert_eq!(cfg.hj212.listen, ["127.0.0.1:0"]);
        let cam = cfg.devices.iter().find(|d| d.kind == "camera").unwrap();
        assert_eq!(cam.gb_id.as_deref(), Some(layout.cameras[0].gb_id.as_str()));
        let flood = cfg.apps.iter().find(|a| a.id == FLOOD_CONTROL).unwrap();
        assert!(flood.grants.contains(&"feeds/camera/CAM-0001".to_string()));
        assert!(!flood.grants.iter().any(|g| g.starts_with("twin/")));
        let night = cfg
            .rules
            .iter()
            .find(|r| r.id == "restricted-area-motion")
            .unwrap();
        assert_eq!(night.active.map(|w| w.to_string()).as_deref(), Some(NIGHT));
        assert_eq!(night.device.as_deref(), Some("CAM-0001"));
        assert!(!flood.grants.contains(&"feeds/camera/CAM-0002".to_string()));
        assert!(cfg.devices[0].profile.as_ref().unwrap().exists());
        let ids: Vec<&str> = cfg.rules.iter().map(|r| r.id.as_str()).collect();
        for want in [
            "water-level-high",
            "water-rising-fast",
            "turbidity-high",
            "ph-low",
            "ammonia-high",
            "manhole-cover-open",
            "device-silent",
            "restricted-area-motion",
        ] {
            assert!(ids.contains(&want), "{want}");
        }
        let agent = write_agent_config(
            dir.path(),
            &layout,
            "AG-LC01",
            &secrets,
            Uplink {
                hub: "127.0.0.1:1883".parse().unwrap(),
                failover: Vec::new(),
                tls: false,
            },
            |_| Some("127.0.0.1:5020".parse().unwrap()),
            60.0,
        )
        .unwrap();
        assert_eq!(agent.file.modbus.len(), 10);
        assert_eq!(agent.file.agent.data_dir, dir.path().join("agents/AG-LC01"));
        let ws01 = write_agent_config(
            dir.path(),
            &layout,
            "AG-WS01",
            &secrets,
            Uplink {
                hub: "127.0.0.1:1883".parse().unwrap(),
                failover: Vec::new(),
                tls: false,
            },
            |_| Some("127.0.0.1:5020".parse().unwrap()),
            1.0,
        )
        .unwrap();
        let restricted =
            edge_agent::camera::CameraConfig::from_entry(&ws01.file.camera[0]).unwrap();
        assert_eq!(restricted.settings.threshold, RESTRICTED_THRESHOLD as u8);
        assert_eq!(agent.file.camera.len(), 1);
        assert_eq!(agent.file.camera[0].id, "CAM-0002");
        assert_eq!(
            agent.file.camera[0].source,
            "synthetic:street?seed=18&size=320x180&fps=5&speed=1"
        );
    }

    #[test]
    fn the_pki_is_made_once_and_the_tls_configs_point_at_it() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::district();
        let agents = || layout.agents.iter().map(|a| a.id.as_str());
        let pki = ensure_pki(dir.path(), agents()).unwrap();
        assert!(!pki.reused);
        let ca = std::fs::read(&pki.ca).unwrap();
        let again = ensure_pki(dir.path(), agents()).unwrap();
        assert!(again.reused);
        assert_eq!(std::fs::read(&again.ca).unwrap(), ca);
        // A file gone: everything is made anew, under a new CA.
        std::fs::remove_file(dir.path().join(HUB_KEY_FILE)).unwrap();
        let renewed = ensure_pki(dir.path(), agents()).unwrap();
        assert!(!renewed.reused);
        assert_ne!(std::fs::read(&renewed.ca).unwrap(), ca);

        let secrets = Secrets::load_or_create(dir.path(), client_ids(&layout)).unwrap();
        write_profiles(dir.path()).unwrap();
        let listen = Listen {
            mqtt: vec!["127.0.0.1:0".into()],
            mqtt_tls: vec!["127.0.0.1:0".into()],
            http: "127.0.0.1:0".into(),
            https: Some("127.0.0.1:0".into()),
            hj212: Vec::new(),
        };
        let cfg =
            write_hub_config(dir.path(), &hub_config(&layout, &secrets, &listen, 1.0)).unwrap();
        assert_eq!(cfg.hub.tls_cert, Some(dir.path().join(HUB_CERT_FILE)));
        assert_eq!(cfg.hub.tls_key, Some(dir.path().join(HUB_KEY_FILE)));
        assert_eq!(cfg.hub.client_ca, Some(dir.path().join(CA_FILE)));
        assert_eq!(cfg.hub.https_listen.as_deref(), Some("127.0.0.1:0"));
        hub::tls::server_config(&cfg.hub, hub::tls::Listener::Mqtt)
            .unwrap()
            .expect("MQTT/TLS configured");

        let agent = write_agent_config(
            dir.path(),
            &layout,
            "AG-LC01",
            &secrets,
            Uplink {
                hub: "127.0.0.1:8883".parse().unwrap(),
                failover: Vec::new(),
                tls: true,
            },
            |_| Some("127.0.0.1:5020".parse().unwrap()),
            1.0,
        )
        .unwrap();
        let a = &agent.file.agent;
        assert_eq!(a.hub.as_slice(), ["mqtts://127.0.0.1:8883"]);
        assert_eq!(a.secret.as_deref(), Some(secrets.get("AG-LC01")));
        for p in [&a.ca, &a.cert, &a.key] {
            let p = p.as_ref().expect("TLS file set");
            assert!(p.is_file(), "{}", p.display());
        }
    }

    #[test]
    fn scenes_follow_the_demo_clock_but_traffic_stays_real_time() {
        assert_eq!(scene_speed(CameraScene::Street, 120.0), 1.0);
        assert_eq!(scene_speed(CameraScene::Failing, 1.0), 0.05);
        assert_eq!(scene_speed(CameraScene::Floodlights, 15.0), 0.5);
        assert_eq!(scene_speed(CameraScene::Failing, 3600.0), 1.0);
    }
}
