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
    /// One HJ 212-2017 water-quality station reporting to a platform over TCP.
    Hj212Station(sim::hj212_station::Args),
    /// One pumping station's controller as a Sparkplug B edge node over MQTT.
    SparkplugNode(sim::sparkplug_node::Args),
    /// Benchmarks.
    Bench(sim::bench::Args),
}

fn main() {
    let cli = Cli::parse();
    // The demo tells its story on stdout; its dozens of components log only problems unless
    // RUST_LOG asks for more.
    let default_filter = match cli.command {
        // The scenario cuts links and powers devices off on purpose, and a camera fails on
        // purpose; those warnings would bury the story (which tells them).
        // mosquitto_sub (OpenSSL) sends the IP it dials as SNI, which the hub's rustls
        // ignores with a warning on every connection made from the banner's MQTT/TLS line.
        Command::Demo(_) => {
            "warn,edge_agent::uplink=error,edge_agent::modbus=error,edge_agent::camera=error,\
             rustls::msgs::handshake=error"
        }
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
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
            Command::Hj212Station(a) => sim::hj212_station::main(a).await,
            Command::SparkplugNode(a) => sim::sparkplug_node::main(a).await,
            Command::Bench(a) => sim::bench::run(a).await,
        }
    });
    if let Err(e) = result {
        eprintln!("sim: {e:#}");
        std::process::exit(1);
    }
}
