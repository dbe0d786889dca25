//! The assembled district: the hub (embedded), the firmware devices over Modbus TCP on
//! loopback, the agents (the real `edge_agent`, in-process, each behind its backhaul), the
//! rain gauges and the lighting control (MQTT clients), and the scenario driving it all.
//!
//! `sim demo` runs [`Demo::start`] and waits for Ctrl-C; tests call it with ports 0 and a
//! temporary directory ([`DemoOptions::local`]) and stop it with [`Demo::shutdown`].
//!
//! TLS is on unless both TLS listeners are off: the hub serves MQTT over TLS and HTTPS with a
//! development PKI under `DIR/tls/` ([`provision::ensure_pki`]) and the agents connect with
//! `mqtts://` and client certificates, through their backhauls (TCP proxies, which TLS passes
//! through). The rain gauges, the HJ 212 sondes, the Sparkplug node and the lighting control
//! stay on the plaintext listeners: they stand for devices and apps on the hub's LAN, and the
//! TLS path is what the agents (the devices out on 5G) show.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hub::server::{Server, ServerError};
use mqtt_broker::BrokerError;
use protocols::profile::DeviceProfile;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::backhaul::Backhaul;
use super::clock::{DemoClock, TimeOfDay};
use super::field::Field;
use super::layout::{Layout, Model, SiteKind};
use super::provision::{self, COMMAND_CENTER, LIGHTING_CONTROL, Listen, Pki, Uplink};
use super::scenario::{Narrator, Scenario};
use super::secrets::{Secrets, SecretsError};
use super::{direct, lighting};
use crate::device::{DeviceSpec, spawn_tcp};
use crate::hj212_station;
use crate::sparkplug_node;
use crate::world::{SiteConditions, World};
use engines::Engines;

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// MQTT listeners of the hub.
    pub mqtt_listen: Vec<String>,
    /// MQTT over TLS listeners of the hub (none: the agents use plain MQTT).
    pub mqtt_tls_listen: Vec<String>,
    /// HTTP listener of the hub.
    pub http_listen: String,
    /// HTTPS listener of the hub (API and dashboard; none: off).
    pub https_listen: Option<String>,
    /// HJ 212 listeners of the hub (the environment bureau's sondes connect there).
    pub hj212_listen: Vec<String>,
    /// Where configs, secrets, the hub's store and the agents' queues live.
    pub data_dir: PathBuf,
    /// Demo seconds per real second.
    pub speed: f64,
    /// Demo time of day to start at (default: now).
    pub start: Option<TimeOfDay>,
    /// Print the story (scenario events, lighting) on stdout.
    pub narrate: bool,
    /// Play the scripted incidents (failures, outages, the discharge); storms always come.
    pub incidents: bool,
    /// Run the district on this many hubs in cluster mode (at least 2), with three NATS
    /// nodes and one PostgreSQL started here (`engines`); none: one embedded hub. Hub 1
    /// listens where the options above say; the others on free loopback ports.
    pub cluster: Option<usize>,
}

impl DemoOptions {
    /// The contract's defaults: MQTT on 1883 (IPv4 and IPv6), MQTT over TLS on 8883 (IPv4
    /// and IPv6), HTTP on 8080, HTTPS on 8443, `data/demo`.
    pub fn defaults() -> DemoOptions {
        DemoOptions {
            mqtt_listen: vec!["0.0.0.0:1883".into(), "[::]:1883".into()],
            mqtt_tls_listen: vec!["0.0.0.0:8883".into(), "[::]:8883".into()],
            http_listen: "0.0.0.0:8080".into(),
            https_listen: Some("0.0.0.0:8443".into()),
            hj212_listen: vec!["0.0.0.0:9212".into(), "[::]:9212".into()],
            data_dir: PathBuf::from("data/demo"),
            speed: 1.0,
            start: None,
            narrate: true,
            incidents: true,
            cluster: None,
        }
    }

    /// Free loopback ports and `dir`, silent, TLS on as by default (tests).
    pub fn local(dir: &Path) -> DemoOptions {
        DemoOptions {
            mqtt_listen: vec!["127.0.0.1:0".into()],
            mqtt_tls_listen: vec!["127.0.0.1:0".into()],
            http_listen: "127.0.0.1:0".into(),
            https_listen: Some("127.0.0.1:0".into()),
            hj212_listen: vec!["127.0.0.1:0".into()],
            data_dir: dir.to_path_buf(),
            narrate: false,
            ..DemoOptions::defaults()
        }
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A port is taken.
    #[error(
        "{what} port {port} is already in use ({addr}); stop what holds it or pass {flag} 127.0.0.1:PORT"
    )]
    PortTaken {
        /// `MQTT`, `MQTT/TLS`, `HTTP` or `HTTPS`.
        what: &'static str,
        /// The port.
        port: u16,
        /// The address as configured.
        addr: String,
        /// The flag that changes it.
        flag: &'static str,
    },
    /// The data directory cannot be used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Secrets.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// Configuration files.
    #[error(transparent)]
    Provision(#[from] provision::ProvisionError),
    /// The hub.
    #[error("hub: {0}")]
    Hub(ServerError),
    /// The simulated devices or links.
    #[error("starting the field: {0:#}")]
    Field(anyhow::Error),
    /// Cluster mode: the options or the engines.
    #[error("cluster: {0}")]
    Cluster(String),
}

/// A taken port as the flag that moves it: the hub's errors name the address only, so the
/// listener is told by the address `opts` gave it.
fn port_taken(e: ServerError, opts: &DemoOptions) -> DemoError {
    let in_use = |s: &std::io::Error| s.kind() == std::io::ErrorKind::AddrInUse;
    match e {
        ServerError::Broker(BrokerError::Bind { addr, ref source }) if in_use(source) => {
            let tls = opts
                .mqtt_tls_listen
                .iter()
                .any(|a| a.parse::<SocketAddr>().ok() == Some(addr));
            let (what, flag) = if tls {
                ("MQTT/TLS", "--mqtt-tls-listen")
            } else {
                ("MQTT", "--mqtt-listen")
            };
            DemoError::PortTaken {
                what,
                port: addr.port(),
                addr: addr.to_string(),
                flag,
            }
        }
        ServerError::Start(hub::StartError::Http {
            ref addr,
            ref source,
        }) if in_use(source) => {
            // An address given to both listeners counts as HTTP's: either flag moves it.
            let (what, flag) =
                if opts.https_listen.as_ref() == Some(addr) && opts.http_listen != *addr {
                    ("HTTPS", "--https-listen")
                } else {
                    ("HTTP", "--http-listen")
                };
            DemoError::PortTaken {
                what,
                port: addr
                    .parse::<SocketAddr>()
                    .map(|a| a.port())
                    .unwrap_or_default(),
                addr: addr.clone(),
                flag,
            }
        }
        other => DemoError::Hub(other),
    }
}

/// A loopback address for a bound address (clients cannot connect to `0.0.0.0`).
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// The initial conditions of a device's site.
fn conditions(layout: &Layout, kind: SiteKind) -> SiteConditions {
    let mut c = SiteConditions::default();
    match kind {
        SiteKind::Lamp { rated_w } => c.lamp_rated_power = rated_w,
        SiteKind::Gauge { station } => c.water_level = layout.stations[station].reach.base_level,
        SiteKind::Sonde { station } => {
            let q = layout.stations[station].quality;
            c.turbidity = q.turbidity;
            c.ph = q.ph;
            c.conductivity = q.conductivity;
            c.dissolved_oxygen = q.dissolved_oxygen;
            c.water_temperature = q.water_temperature;
        }
        SiteKind::Cover { battery } => c.battery_level = battery,
        SiteKind::Mast => {}
    }
    c
}

/// What an HJ 212 sonde in the river at `site` measures. Ammonia and COD are not modelled by
/// the river's physics: they follow the turbidity, as runoff brings both.
fn sonde_values(site: &crate::world::Site) -> Vec<hj212_station::Measurement> {
    use protocols::hj212::DataFlag;
    let c = site.conditions();
    let m = |code, value: f64| hj212_station::Measurement {
        code,
        value: (value * 1000.0).round() / 1000.0,
        flag: DataFlag::Normal,
    };
    vec![
        m("w01001", c.ph),
        m("w01003", c.turbidity),
        m("w01009", c.dissolved_oxygen),
        m("w01010", c.water_temperature),
        m("w01014", c.conductivity),
        m("w21003", 0.2 + 0.004 * c.turbidity),
        m("w01018", 8.0 + 0.08 * c.turbidity),
    ]
}

/// Where the district's clients reach the hub.
#[derive(Clone, Copy, Debug)]
struct Hubs {
    /// Plain MQTT.
    mqtt: SocketAddr,
    /// MQTT over TLS, if on.
    mqtt_tls: Option<SocketAddr>,
    /// HJ 212, if on.
    hj212: Option<SocketAddr>,
}

/// One hub of the district and where its clients reach it.
#[derive(Clone, Debug)]
pub struct HubInfo {
    /// Its cluster node name (`hub-1` ...; `hub` without a cluster).
    pub node: String,
    /// Plain MQTT.
    pub mqtt: SocketAddr,
    /// MQTT over TLS, if on.
    pub mqtt_tls: Option<SocketAddr>,
    /// HTTP API and dashboard.
    pub http: SocketAddr,
    /// HTTPS, if on.
    pub https: Option<SocketAddr>,
    /// Its configuration file, relative to the data directory.
    pub config: String,
}

/// Partitions of the demo's cluster: shared out evenly by 2, 3, 4 or 6 hubs.
pub const CLUSTER_PARTITIONS: u32 = 24;

type AgentTask = JoinHandle<Result<edge_agent::agent::Exit, edge_agent::agent::AgentError>>;

/// The running district.
pub struct Demo {
    server: Option<Server>,
    /// Hubs 2..N of a cluster.
    peers: Vec<Server>,
    hubs: Vec<HubInfo>,
    engines: Option<Engines>,
    field: Arc<Field>,
    layout: Layout,
    secrets: Secrets,
    clock: DemoClock,
    dir: PathBuf,
    mqtt_addr: SocketAddr,
    mqtt_tls_addr: Option<SocketAddr>,
    http_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    hj212_addr: Option<SocketAddr>,
    pki: Option<Pki>,
    stop: watch::Sender<bool>,
    agents: Vec<(String, AgentTask)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Demo {
    /// Writes the configuration and starts everything.
    pub async fn start(opts: DemoOptions) -> Result<Demo, DemoError> {
        let dir = opts.data_dir.clone();
        if let Some(n) = opts.cluster
            && n < 2
        {
            return Err(DemoError::Cluster(format!(
                "--cluster needs at least 2 hubs, got {n}"
            )));
        }
        std::fs::create_dir_all(dir.join("agents")).map_err(|source| DemoError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let layout = Layout::district();
        let secrets = Secrets::load_or_create(&dir, provision::client_ids(&layout))?;
        provision::write_profiles(&dir)?;
        provision::write_geojson(&dir, &layout)?;
        let listen = Listen {
            mqtt: opts.mqtt_listen.clone(),
            mqtt_tls: opts.mqtt_tls_listen.clone(),
            http: opts.http_listen.clone(),
            https: opts.https_listen.clone(),
            hj212: opts.hj212_listen.clone(),
        };
        let pki = if listen.tls() {
            let pki = provision::ensure_pki(&dir, layout.agents.iter().map(|a| a.id.as_str()))?;
            info!(ca = %pki.ca.display(), reused = pki.reused, "development PKI");
            Some(pki)
        } else {
            None
        };
        let base = provision::hub_config(&layout, &secrets, &listen, opts.speed);
        let engines = match opts.cluster {
            Some(_) => Some(start_engines().await?),
            None => None,
        };
        let mut servers: Vec<Server> = Vec::new();
        let mut hubs = Vec::new();
        for i in 1..=opts.cluster.unwrap_or(1) {
            let started = match Demo::start_hub(&opts, &dir, &base, i, engines.as_ref()).await {
                Ok(s) => s,
                Err(e) => {
                    stop_servers(servers).await;
                    return Err(e);
                }
            };
            hubs.push(started.1);
            servers.push(started.0);
        }
        let mut servers = servers.into_iter();
        let (Some(server), Some(first)) = (servers.next(), hubs.first().cloned()) else {
            return Err(DemoError::Hub(ServerError::Broker(BrokerError::NoListener)));
        };
        let peers: Vec<Server> = servers.collect();
        let hj212_addr = server
            .hub()
            .hj212_addrs()
            .iter()
            .copied()
            .min_by_key(|a| a.is_ipv6())
            .map(reachable);
        let agent_hubs: Vec<SocketAddr> =
            hubs.iter().map(|h| h.mqtt_tls.unwrap_or(h.mqtt)).collect();
        let hub_addrs = Hubs {
            mqtt: first.mqtt,
            mqtt_tls: first.mqtt_tls,
            hj212: hj212_addr,
        };
        match Demo::start_field(
            &opts,
            &dir,
            layout.clone(),
            &secrets,
            hub_addrs,
            &agent_hubs,
        )
        .await
        {
            Ok((field, agents, mut tasks, stop, clock)) => {
                info!(
                    devices = layout.field.len()
                        + layout.direct.len()
                        + layout.hj212.len()
                        + layout.pump_devices().count(),
                    cameras = layout.cameras.len(),
                    agents = layout.agents.len(),
                    hubs = hubs.len(),
                    "district running"
                );
                if engines.is_some() {
                    tasks.push(tokio::spawn(narrate_leases(
                        first.http,
                        format!("Bearer {COMMAND_CENTER}:{}", secrets.get(COMMAND_CENTER)),
                        Narrator::new(clock, opts.narrate),
                        stop.subscribe(),
                    )));
                }
                Ok(Demo {
                    server: Some(server),
                    peers,
                    hubs,
                    engines,
                    field,
                    layout,
                    secrets,
                    clock,
                    dir,
                    mqtt_addr: first.mqtt,
                    mqtt_tls_addr: first.mqtt_tls,
                    http_addr: first.http,
                    https_addr: first.https,
                    hj212_addr,
                    pki,
                    stop,
                    agents,
                    tasks,
                })
            }
            Err(e) => {
                stop_servers(std::iter::once(server).chain(peers).collect()).await;
                drop_engines(engines).await;
                Err(e)
            }
        }
    }

    /// Writes hub `i`'s configuration (`hub.toml` for the first, `hub-{i}.toml` for the
    /// other hubs of a cluster) and starts it.
    async fn start_hub(
        opts: &DemoOptions,
        dir: &Path,
        base: &hub::config::HubConfig,
        i: usize,
        engines: Option<&Engines>,
    ) -> Result<(Server, HubInfo), DemoError> {
        let mut cfg = base.clone();
        let mut file = "hub.toml".to_string();
        let mut node = "hub".to_string();
        if let Some(e) = engines {
            node = format!("hub-{i}");
            let data = PathBuf::from("cluster").join(&node);
            std::fs::create_dir_all(dir.join(&data)).map_err(|source| DemoError::DataDir {
                path: dir.join(&data),
                source,
            })?;
            cfg.hub.data_dir = data;
            cfg.cluster = Some(hub::config::ClusterSettings {
                node: node.clone(),
                nats: e.nats.urls(),
                postgres: e.pg.url(),
                partitions: CLUSTER_PARTITIONS,
                lease: protocols::config::HumanDuration(Duration::from_secs(6)),
                replicas: 3,
            });
            if i > 1 {
                // The other hubs on free loopback ports; the LAN's stations stay on hub 1.
                let loopback = || "127.0.0.1:0".to_string();
                cfg.hub.mqtt_listen = vec![loopback()];
                if !cfg.hub.mqtt_tls_listen.is_empty() {
                    cfg.hub.mqtt_tls_listen = vec![loopback()];
                }
                cfg.hub.http_listen = loopback();
                cfg.hub.https_listen = cfg.hub.https_listen.as_ref().map(|_| loopback());
                cfg.hj212.listen = Vec::new();
                file = format!("hub-{i}.toml");
            }
        }
        let cfg = provision::write_hub_config_as(dir, &file, &cfg)?;
        let server = Server::start(cfg).await.map_err(|e| port_taken(e, opts))?;
        // IPv4 first: the hub's certificate names 127.0.0.1 and ::1 alike, and most clients
        // reach 127.0.0.1.
        let first = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .copied()
                .min_by_key(|a| a.is_ipv6())
                .map(reachable)
        };
        let Some(mqtt) = first(server.mqtt_addrs()) else {
            stop_servers(vec![server]).await;
            return Err(DemoError::Hub(ServerError::Broker(BrokerError::NoListener)));
        };
        let info = HubInfo {
            node,
            mqtt,
            mqtt_tls: first(server.mqtt_tls_addrs()),
            http: reachable(server.http_addr()),
            https: server.https_addr().map(reachable),
            config: file,
        };
        Ok((server, info))
    }

    #[allow(clippy::type_complexity)]
    async fn start_field(
        opts: &DemoOptions,
        dir: &Path,
        layout: Layout,
        secrets: &Secrets,
        hubs: Hubs,
        agent_hubs: &[SocketAddr],
    ) -> Result<
        (
            Arc<Field>,
            Vec<(String, AgentTask)>,
            Vec<JoinHandle<()>>,
            watch::Sender<bool>,
            DemoClock,
        ),
        DemoError,
    > {
        let field_err = DemoError::Field;
        let Hubs {
            mqtt: hub,
            mqtt_tls,
            hj212,
        } = hubs;
        let clock = DemoClock::new(opts.speed, opts.start);
        let narrator = Narrator::new(clock, opts.narrate);
        let world = World::default();
        let mut sites = HashMap::new();
        for d in &layout.field {
            sites.insert(
                d.id.clone(),
                world.site_with(&d.id, conditions(&layout, d.site)),
            );
        }
        let mut direct_sites = HashMap::new();
        for d in &layout.direct {
            direct_sites.insert(d.id.clone(), world.site(&d.id));
        }
        // The physics first, so the devices' first samples are already right.
        let mut scenario = Scenario::new(layout.clone(), clock, narrator.clone(), opts.incidents);
        scenario.settle(&world, &sites);

        let mut profiles: HashMap<Model, DeviceProfile> = HashMap::new();
        for m in Model::ALL {
            let p = DeviceProfile::from_toml(m.profile_text())
                .map_err(|e| field_err(anyhow::anyhow!("profile {}: {e}", m.profile_file())))?;
            profiles.insert(m, p);
        }
        let mut devices = Vec::new();
        for d in &layout.field {
            let spec = DeviceSpec::new(
                d.id.clone(),
                profiles[&d.model].clone(),
                1,
                sites[&d.id].clone(),
            );
            let running = spawn_tcp(
                spec.clone(),
                "127.0.0.1:0"
                    .parse()
                    .map_err(|e| field_err(anyhow::anyhow!("{e}")))?,
            )
            .await
            .map_err(field_err)?;
            devices.push((running, spec));
        }
        let endpoints: HashMap<String, SocketAddr> = devices
            .iter()
            .filter_map(|(d, _)| Some((d.id.clone(), d.addr?)))
            .collect();

        // The agents' links lead to the TLS listener when there is one; TLS passes through the
        // backhaul (a TCP relay) untouched. With a cluster the link leads to every hub, the
        // list rotated agent by agent so that they start out spread over the hubs.
        let mut backhauls = HashMap::new();
        for (k, a) in layout.agents.iter().enumerate() {
            let (_, _, link) = provision::agent_paths(dir, &a.id);
            let mut to = agent_hubs.to_vec();
            if !to.is_empty() {
                let n = to.len();
                to.rotate_left(k % n);
            }
            let b = Backhaul::start_to(&to, link)
                .await
                .map_err(|e| field_err(anyhow::anyhow!("backhaul of {}: {e}", a.id)))?;
            backhauls.insert(a.id.clone(), b);
        }

        let (stop, stop_rx) = watch::channel(false);
        let mut agents = Vec::new();
        for a in &layout.agents {
            // The agent dials its backhaul on 127.0.0.1, a name in the hub's certificate.
            let link: &Backhaul = &backhauls[&a.id];
            let uplink = Uplink {
                hub: link.addr(),
                failover: link.addrs()[1..].to_vec(),
                tls: mqtt_tls.is_some(),
            };
            let cfg = provision::write_agent_config(
                dir,
                &layout,
                &a.id,
                secrets,
                uplink,
                |id| endpoints.get(id).copied(),
                opts.speed,
            )?;
            let mut stop = stop_rx.clone();
            let task = tokio::spawn(edge_agent::agent::run_until(cfg, async move {
                let _ = stop.wait_for(|s| *s).await;
            }));
            agents.push((a.id.clone(), task));
        }

        let mut direct_links = HashMap::new();
        let mut tasks = Vec::new();
        for d in &layout.direct {
            let (link, link_rx) = watch::channel(true);
            direct_links.insert(d.id.clone(), link);
            let gauge = direct::Gauge {
                id: d.id.clone(),
                secret: secrets.get(&d.id).to_string(),
                hub,
                site: direct_sites[&d.id].clone(),
            };
            tasks.push(tokio::spawn(direct::run(gauge, link_rx, stop_rx.clone())));
        }

        // The environment bureau's sondes: HJ 212 over TCP, measuring the water of the district
        // sonde beside them.
        for d in layout.hj212.iter().filter(|_| hj212.is_some()) {
            let Some(platform) = hj212 else { break };
            let spec = hj212_station::StationSpec {
                mn: d.mn.clone(),
                pw: secrets.get(&d.id).to_string(),
                platform,
                interval: direct::REPORT_EVERY,
                utc_offset_minutes: protocols::hj212::DEFAULT_UTC_OFFSET_MINUTES,
            };
            let site = sites[&d.beside].clone();
            let (stats, _) = watch::channel(hj212_station::StationStats::default());
            tasks.push(tokio::spawn(hj212_station::run(
                spec,
                move || sonde_values(&site),
                stats,
                stop_rx.clone(),
            )));
        }

        // The drainage pumping station's PLC gateway: a Sparkplug B edge node over MQTT.
        for (i, p) in layout.pump_stations.iter().enumerate() {
            let spec = sparkplug_node::NodeSpec {
                broker: hub.to_string(),
                node: p.node.clone(),
                secret: secrets.get(&p.node).to_string(),
                group: "District".to_string(),
                pumps: p.pumps.clone(),
                well: Some(p.well.clone()),
                interval: direct::REPORT_EVERY,
                seed: 41 + i as u64,
            };
            let (stats, _) = watch::channel(sparkplug_node::NodeStats::default());
            let stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = sparkplug_node::run(spec, stats, stop).await {
                    tracing::error!("pumping station edge node: {e:#}");
                }
            }));
        }

        let field = Arc::new(Field::new(
            world,
            devices,
            direct_sites,
            backhauls,
            direct_links,
        ));
        let lamps = layout.lamps().map(|d| d.id.clone()).collect();
        let app = lighting::App {
            id: LIGHTING_CONTROL.to_string(),
            secret: secrets.get(LIGHTING_CONTROL).to_string(),
            hub,
        };
        tasks.push(tokio::spawn(lighting::run(
            app,
            lamps,
            clock,
            narrator,
            stop_rx.clone(),
        )));
        tasks.push(tokio::spawn(scenario.run(
            field.clone(),
            Duration::from_millis(500),
            stop_rx,
        )));
        Ok((field, agents, tasks, stop, clock))
    }

    /// Where the hub's MQTT listener is reachable.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// Where the hub's MQTT over TLS listener is reachable (none with TLS off).
    pub fn mqtt_tls_addr(&self) -> Option<SocketAddr> {
        self.mqtt_tls_addr
    }

    /// Where the hub's HTTP API is reachable.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the hub's HTTPS API and dashboard are reachable (none with TLS off).
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The development CA's certificate that TLS clients trust (none with TLS off).
    pub fn ca_file(&self) -> Option<&Path> {
        self.pki.as_ref().map(|p| p.ca.as_path())
    }

    /// Where the hub's HJ 212 listener is reachable (none when `hj212_listen` is empty).
    pub fn hj212_addr(&self) -> Option<SocketAddr> {
        self.hj212_addr
    }

    /// The `command-center` app's id and secret.
    pub fn command_center(&self) -> (&str, &str) {
        (COMMAND_CENTER, self.secrets.get(COMMAND_CENTER))
    }

    /// The secret of an app of the district (`command-center`, `flood-control`, ...); empty
    /// for an unknown id.
    pub fn app_secret(&self, app: &str) -> &str {
        self.secrets.get(app)
    }

    /// The dashboard URL with the command center's credentials in the fragment (never sent
    /// to the server).
    pub fn dashboard_url(&self) -> String {
        let (app, secret) = self.command_center();
        format!("http://{}/#app={app}&secret={secret}", self.http_addr)
    }

    /// [`Demo::dashboard_url`] over HTTPS (none with HTTPS off).
    pub fn https_dashboard_url(&self) -> Option<String> {
        let (app, secret) = self.command_center();
        let addr = self.https_addr?;
        Some(format!("https://{addr}/#app={app}&secret={secret}"))
    }

    /// The layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The field (sites, devices, links), to look at or to act on.
    pub fn field(&self) -> &Arc<Field> {
        &self.field
    }

    /// The demo clock.
    pub fn clock(&self) -> DemoClock {
        self.clock
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The embedded hub (hub 1 of a cluster).
    pub fn server(&self) -> Option<&Server> {
        self.server.as_ref()
    }

    /// The hubs: one, or those of `--cluster N` in order (hub 1 first).
    pub fn hubs(&self) -> &[HubInfo] {
        &self.hubs
    }

    /// Stops everything: the agents first (they flush their queues and say goodbye through
    /// their links), the gauges and apps, then the hub (which drains its pipeline) and the
    /// devices.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        for (id, task) in self.agents.drain(..) {
            match tokio::time::timeout(Duration::from_secs(15), task).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err(e))) => warn!(agent = %id, "agent ended with: {e}"),
                Ok(Err(e)) => warn!(agent = %id, "agent task failed: {e}"),
                Err(_) => warn!(agent = %id, "agent did not stop within 15 s"),
            }
        }
        for t in self.tasks.drain(..) {
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                warn!("a district task did not stop within 5 s");
            }
        }
        let servers = self.server.take().into_iter().chain(self.peers.drain(..));
        stop_servers(servers.collect()).await;
        drop_engines(self.engines.take()).await;
        self.field.stop_devices().await;
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // Without shutdown (a test that panicked): at least stop everything that listens.
        self.stop.send_replace(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts three NATS nodes and one PostgreSQL (blocking work, off the runtime's threads).
async fn start_engines() -> Result<Engines, DemoError> {
    let started = tokio::task::spawn_blocking(|| Engines::start(3)).await;
    match started {
        Ok(Ok(e)) => Ok(e),
        Ok(Err(e)) => Err(DemoError::Cluster(format!(
            "starting nats-server and PostgreSQL: {e} (scripts/setup-peers.sh installs them)"
        ))),
        Err(e) => Err(DemoError::Cluster(format!("starting the engines: {e}"))),
    }
}

/// Stops the engines (they wait for their processes: blocking work).
async fn drop_engines(engines: Option<Engines>) {
    if let Some(e) = engines {
        let _ = tokio::task::spawn_blocking(move || drop(e)).await;
    }
}

/// Shuts hubs down side by side (in a cluster each hands its partitions over).
async fn stop_servers(servers: Vec<Server>) {
    let mut set = tokio::task::JoinSet::new();
    for s in servers {
        set.spawn(s.shutdown());
    }
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!("hub shutdown: {e}"),
            Err(e) => error!("hub shutdown task: {e}"),
        }
    }
}

/// Partitions held per node, once every partition has an owner: `GET /api/v1/cluster` of
/// the hub at `http`.
pub async fn partitions_held(
    http: SocketAddr,
    auth: &str,
) -> Option<std::collections::BTreeMap<String, usize>> {
    let doc = http_get_json(http, "/api/v1/cluster", auth).await?;
    let owners = doc["partition_owners"].as_array()?;
    let mut held = std::collections::BTreeMap::new();
    for n in doc["nodes"].as_array()? {
        if n["alive"] == true
            && let Some(name) = n["node"].as_str()
        {
            held.insert(name.to_string(), 0);
        }
    }
    for p in owners {
        let owner = p["owner"].as_str()?;
        *held.entry(owner.to_string()).or_insert(0) += 1;
    }
    (doc["partitions"].as_u64() == Some(owners.len() as u64)).then_some(held)
}

/// A GET on loopback, HTTP/1.0 (no chunking), the body as JSON; none on any failure.
async fn http_get_json(addr: SocketAddr, path: &str, auth: &str) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: {auth}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()??;
    let at = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..at]).ok()?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    serde_json::from_slice(&buf[at + 4..]).ok()
}

/// Says, once the leases have settled (every partition owned, the same owners three polls in
/// a row), how many partitions each hub holds.
async fn narrate_leases(
    http: SocketAddr,
    auth: String,
    narrator: Narrator,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = None;
    let mut same = 0;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let held = partitions_held(http, &auth).await;
        if held.is_some() && held == last {
            same += 1;
        } else {
            same = 0;
        }
        last = held;
        if same >= 2
            && let Some(held) = &last
        {
            let text = held
                .iter()
                .map(|(node, n)| format!("{node} holds {n}"))
                .collect::<Vec<_>>()
                .join(", ");
            narrator.say(&format!(
                "cluster: the leases have settled: {text} of {CLUSTER_PARTITIONS} partitions"
            ));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(e: ServerError, opts: &DemoOptions) -> (&'static str, &'static str) {
        match port_taken(e, opts) {
            DemoError::PortTaken { what, flag, .. } => (what, flag),
            other => panic!("not PortTaken: {other}"),
        }
    }

    #[test]
    fn a_taken_port_names_the_flag_of_its_listener() {
        let opts = DemoOptions::defaults();
        let in_use = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let bind = |addr: &str| {
            ServerError::Broker(BrokerError::Bind {
                addr: addr.parse().unwrap(),
                source: in_use(),
            })
        };
        let http = |addr: &str| {
            ServerError::Start(hub::StartError::Http {
                addr: addr.to_string(),
                source: in_use(),
            })
        };
        assert_eq!(
            taken(bind("0.0.0.0:1883"), &opts),
            ("MQTT", "--mqtt-listen")
        );
        assert_eq!(
            taken(bind("[::]:8883"), &opts),
            ("MQTT/TLS", "--mqtt-tls-listen")
        );
        assert_eq!(
            taken(http("0.0.0.0:8080"), &opts),
            ("HTTP", "--http-listen")
        );
        assert_eq!(
            taken(http("0.0.0.0:8443"), &opts),
            ("HTTPS", "--https-listen")
        );
    }
}
