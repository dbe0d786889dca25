//! The simulated district: the real firmware on simulated peripherals behind Modbus, the
//! physical world those peripherals sense, the demo, load generation and benchmarks.
//!
//! Running simulated devices from Rust:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use sim::device::{DeviceSpec, spawn_fleet};
//! use sim::world::World;
//! let world = World::default();
//! let profile = protocols::profile::DeviceProfile::from_toml(&std::fs::read_to_string("profiles/streetlight-lc200.toml")?)?;
//! let specs = (0..50).map(|i| {
//!     let id = format!("SL-{i:04}");
//!     let site = world.site(&id);
//!     (DeviceSpec::new(id, profile.clone(), 1, site), "127.0.0.1:0".parse().unwrap())
//! });
//! let devices = spawn_fleet(specs).await?;
//! devices[3].site.update(|c| c.lamp_broken = true); // the firmware reports lamp_failure
//! world.update_weather(|w| w.rain_rate = 40.0);     // every weather station sees the storm
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
// The benchmarks' JSON lines (`serde_json::json!`) have more fields than the default limit expands.
#![recursion_limit = "256"]

pub mod bench;
pub mod connections_bench;
pub mod device;
pub mod district;
pub mod fleet;
pub mod hj212_station;
pub mod load;
pub mod modbus_device;
pub mod mqtt_events;
pub mod node;
pub mod peripherals;
pub mod sparkplug_bench;
pub mod sparkplug_node;
pub mod tls_bench;
pub mod world;
