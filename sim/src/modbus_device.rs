//! `sim modbus-device`: one simulated device running the firmware, served over Modbus TCP or,
//! with `--rtu` / `--listen rtu`, Modbus RTU on a pseudo-terminal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use protocols::profile::DeviceProfile;

use crate::device::{DeviceSpec, spawn_rtu_pty, spawn_tcp};
use crate::world::{Ambient, World};

/// Arguments of `sim modbus-device`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Device profile (TOML); its `model` picks the firmware node.
    #[arg(long)]
    pub profile: PathBuf,
    /// `HOST:PORT` for Modbus TCP (port 0 picks a free one), or `rtu` for a pseudo-terminal.
    #[arg(long, default_value = "127.0.0.1:5020")]
    pub listen: String,
    /// Unit address (1..=247).
    #[arg(long, default_value_t = 1)]
    pub unit: u8,
    /// Serve Modbus RTU on a pseudo-terminal (same as `--listen rtu`).
    #[arg(long)]
    pub rtu: bool,
    /// Device id (seeds the sensor noise; defaults to the profile's model).
    #[arg(long)]
    pub id: Option<String>,
    /// How often the firmware samples its sensors.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub sample_interval: Duration,
}

/// Runs the device until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.profile)
        .with_context(|| format!("reading {}", args.profile.display()))?;
    let profile = DeviceProfile::from_toml(&text)
        .with_context(|| format!("profile {}", args.profile.display()))?;
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| profile.source.model.clone());
    let world = World::default();
    let site = world.site(&id);
    let mut spec = DeviceSpec::new(id, profile, args.unit, site.clone());
    spec.sample_interval = args.sample_interval;
    let device = if args.rtu || args.listen.eq_ignore_ascii_case("rtu") {
        spawn_rtu_pty(spec).await?
    } else {
        let addr: SocketAddr = args
            .listen
            .parse()
            .with_context(|| format!("--listen {}: expected HOST:PORT or `rtu`", args.listen))?;
        spawn_tcp(spec, addr).await?
    };
    // The one line on stdout: where to connect (an agent transport URL).
    println!(
        "sim modbus-device: {} unit {} listening on {}",
        device.model, args.unit, device.endpoint
    );
    let ambient = Ambient::around(&site);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => ambient.apply(&site, world.elapsed_s()),
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        anyhow::ensure!(device.handle.is_running(), "the device task stopped");
    }
    device.stop().await;
    Ok(())
}
