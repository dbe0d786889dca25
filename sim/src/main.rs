//! `sim`: simulated field devices, the demo, load and benchmarks.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "sim",
    version,
    about = "Simulated district: firmware devices over Modbus, the demo, load, benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole simulated district (hub, agents, devices, cameras).
    Demo(sim::district::Args),
    /// Load the hub with many direct devices.
    Fleet(sim::fleet::Args),
    /// One simulated Modbus device running the firmware.
    ModbusDevice(sim::modbus_device::Args),
    /// Benchmarks.
    Bench(sim::bench::Args),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sim: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(a) => sim::district::run(a).await,
            Command::Fleet(a) => sim::fleet::run(a).await,
            Command::ModbusDevice(a) => sim::modbus_device::run(a).await,
            Command::Bench(a) => sim::bench::run(a).await,
        }
    });
    if let Err(e) = result {
        eprintln!("sim: {e:#}");
        std::process::exit(1);
    }
}
