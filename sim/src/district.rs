//! `sim demo`: a whole simulated district on one machine.
//!
//! 62 devices around a centre at 30.42° N, 120.30° E: five streets with 40 lamps and 10
//! manhole covers (a lighting cabinet agent per street), a river with five gauging stations
//! (an agent each: level gauges, water-quality sondes, weather stations), and two rain gauges
//! publishing JSON themselves; and 5 cameras (GB/T 28181 ids) watched by cabinets and
//! stations, their synthetic scenes rendered in the agents: traffic, floodlights switching,
//! a camera whose power keeps failing, a restricted area watched at night. The devices run the real firmware over Modbus TCP on loopback;
//! the agents are the real `edge_agent`, in-process, publishing over real MQTT (over TLS, with
//! client certificates of a development CA, unless `--no-tls`) to the embedded hub through
//! cuttable backhaul links; a lighting-control app switches and dims the
//! lamps through the hub's desired state; a scenario on a demo clock brings dusk, storms,
//! failures and outages (see [`scenario`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), sim::district::demo::DemoError> {
//! use sim::district::demo::{Demo, DemoOptions};
//! let dir = std::path::Path::new("/tmp/district");
//! let demo = Demo::start(DemoOptions { speed: 60.0, ..DemoOptions::local(dir) }).await?;
//! println!("{}", demo.dashboard_url());
//! demo.shutdown().await;
//! # Ok(()) }
//! ```

pub mod backhaul;
pub mod clock;
pub mod demo;
pub mod direct;
pub mod field;
pub mod geojson;
pub mod layout;
pub mod lighting;
pub mod physics;
pub mod provision;
pub mod scenario;
pub mod secrets;

use std::path::PathBuf;

use clock::{TimeOfDay, hhmm};
use demo::{Demo, DemoOptions};

/// Arguments of `sim demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// MQTT listener of the embedded hub (repeatable; default 0.0.0.0:1883 and [::]:1883).
    #[arg(long)]
    pub mqtt_listen: Vec<String>,
    /// MQTT over TLS listener of the embedded hub (repeatable; default 0.0.0.0:8883 and
    /// [::]:8883). The agents connect there.
    #[arg(long)]
    pub mqtt_tls_listen: Vec<String>,
    /// HTTP listener of the embedded hub (default 0.0.0.0:8080).
    #[arg(long)]
    pub http_listen: Option<String>,
    /// HTTPS listener of the embedded hub: API and dashboard (default 0.0.0.0:8443).
    #[arg(long)]
    pub https_listen: Option<String>,
    /// No TLS: neither MQTT over TLS nor HTTPS, the agents on plain MQTT, no development PKI.
    #[arg(long, conflicts_with_all = ["mqtt_tls_listen", "https_listen"])]
    pub no_tls: bool,
    /// HJ 212 listener of the embedded hub (repeatable; default 0.0.0.0:9212 and [::]:9212).
    #[arg(long)]
    pub hj212_listen: Vec<String>,
    /// Data directory: hub.toml, agent configs, secrets, the hub's store, the agents' queues.
    #[arg(long, default_value = "data/demo")]
    pub data_dir: PathBuf,
    /// Demo seconds per real second: 60 turns a real minute into a demo hour.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Demo time of day to start at, HH:MM in district time (UTC+8); default now.
    #[arg(long)]
    pub start: Option<TimeOfDay>,
    /// Run the district on N hubs (N >= 2) in cluster mode, with three nats-server nodes and
    /// one PostgreSQL started by the demo (scripts/setup-peers.sh installs them). Hub 1 takes
    /// the listeners above; the others free loopback ports. The agents fail over between all
    /// hubs, starting out spread over them; the rain gauges, the HJ 212 stations, the
    /// Sparkplug node and the lighting control connect to hub 1.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(2..=16))]
    pub cluster: Option<u16>,
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.speed.is_finite() && args.speed > 0.0 && args.speed <= 3600.0,
        "--speed must be between 0 and 3600, got {}",
        args.speed
    );
    let started = std::time::Instant::now();
    let mut opts = DemoOptions::defaults();
    if !args.mqtt_listen.is_empty() {
        opts.mqtt_listen = args.mqtt_listen;
    }
    if !args.mqtt_tls_listen.is_empty() {
        opts.mqtt_tls_listen = args.mqtt_tls_listen;
    }
    if let Some(h) = args.http_listen {
        opts.http_listen = h;
    }
    if let Some(h) = args.https_listen {
        opts.https_listen = Some(h);
    }
    if args.no_tls {
        opts.mqtt_tls_listen.clear();
        opts.https_listen = None;
    }
    if !args.hj212_listen.is_empty() {
        opts.hj212_listen = args.hj212_listen;
    }
    opts.data_dir = args.data_dir;
    opts.speed = args.speed;
    opts.start = args.start;
    opts.cluster = args.cluster.map(usize::from);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let demo = Demo::start(opts).await?;
    print_banner(&demo, started.elapsed());
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("sim demo: stopping (agents flush their queues, the hub drains)...");
    demo.shutdown().await;
    println!("sim demo: stopped");
    Ok(())
}

fn print_banner(demo: &Demo, took: std::time::Duration) {
    let l = demo.layout();
    let (app, secret) = demo.command_center();
    let http = demo.http_addr();
    let mqtt = demo.mqtt_addr();
    let dir = demo.dir().display();
    let clock = demo.clock();
    let hubs = demo.hubs();
    println!(
        "sim demo: a simulated district is running ({} devices, {} cameras, {} agents, {}; started in {:.1} s)",
        l.field.len() + l.direct.len() + l.hj212.len() + l.pump_devices().count(),
        l.cameras.len(),
        l.agents.len(),
        if hubs.len() > 1 {
            format!(
                "{} hubs in cluster mode on 3 NATS nodes and PostgreSQL",
                hubs.len()
            )
        } else {
            "embedded hub".to_string()
        },
        took.as_secs_f64()
    );
    println!();
    if hubs.len() > 1 {
        for h in hubs {
            let tls = h
                .mqtt_tls
                .map(|a| format!(", MQTT/TLS mqtts://{a}"))
                .unwrap_or_default();
            let https = h
                .https
                .map(|a| format!(", https://{a}"))
                .unwrap_or_default();
            println!(
                "  {:<10} MQTT mqtt://{}{tls}, HTTP http://{}{https}  ({dir}/{})",
                h.node, h.mqtt, h.http, h.config
            );
        }
        println!(
            "  cluster    curl -H 'Authorization: Bearer {app}:{secret}' http://{http}/api/v1/cluster  (any hub answers for the district; agents start spread over the hubs and fail over; gauges, stations, the Sparkplug node and the lighting control use hub-1)"
        );
    }
    // The CA as a path the user can paste from where they ran `sim demo`.
    let ca = demo.ca_file().map(|p| p.display().to_string());
    println!("  dashboard  {}", demo.dashboard_url());
    if let Some(url) = demo.https_dashboard_url() {
        println!(
            "             {url}  (the browser warns: the development CA is not one it trusts)"
        );
    }
    println!("  app        {app} / {secret}");
    println!(
        "  HTTP API   curl -H 'Authorization: Bearer {app}:{secret}' http://{http}/api/v1/devices"
    );
    if let (Some(https), Some(ca)) = (demo.https_addr(), &ca) {
        println!(
            "  HTTPS API  curl --cacert {ca} -H 'Authorization: Bearer {app}:{secret}' https://{https}/api/v1/devices"
        );
    }
    println!(
        "  cameras    curl -H 'Authorization: Bearer {app}:{secret}' http://{http}/api/v1/cameras  (and /api/v1/events, /api/v1/cameras/ID/snapshot)"
    );
    println!(
        "  MQTT       mosquitto_sub -h {} -p {} -u {app} -P {secret} -i {app}.cli -t 'v1/feeds/#' -v",
        mqtt.ip(),
        mqtt.port()
    );
    if let (Some(tls), Some(ca)) = (demo.mqtt_tls_addr(), &ca) {
        println!(
            "  MQTT/TLS   mosquitto_sub --cafile {ca} -h {} -p {} -u {app} -P {secret} -i {app}.cli -t 'v1/feeds/#' -v",
            tls.ip(),
            tls.port()
        );
        println!(
            "  TLS        the agents connect there (mqtts://, client certificates {dir}/tls/agents/*.crt); the hub's certificate names {}",
            provision::HUB_HOSTS.join(", ")
        );
    }
    if let Some(hj) = demo.hj212_addr() {
        let mn = l.hj212.first().map_or("MN", |d| d.mn.as_str());
        println!(
            "  HJ 212     stations connect to {hj} (as the demo's: sim hj212-station --platform {hj} --mn {mn} --pw PW, PW from secrets.toml)"
        );
    }
    if let Some(p) = l.pump_stations.first() {
        println!(
            "  Sparkplug  edge node {} publishes spBv1.0/District/.../{} to the MQTT listener {mqtt} (hub.toml: protocol = \"sparkplug\", [[sparkplug_metrics]])",
            p.node, p.node
        );
    }
    println!("  config     {dir}/hub.toml, {dir}/agents/*.toml (secrets in {dir}/secrets.toml)");
    println!(
        "  clock      demo time {} (district time, UTC+8), {}",
        hhmm(clock.now_ms()),
        if clock.speed() == 1.0 {
            "real time (try --speed 60 --start 17:30 to see dusk, a storm and alerts within two minutes)".to_string()
        } else {
            format!("{}x real time", clock.speed())
        }
    );
    println!();
    println!("Ctrl-C stops everything. What happens:");
}
