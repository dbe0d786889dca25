//! The edge agent of the district sensing gateway.
//!
//! Polls Modbus devices through their profiles, keeps everything in a durable queue and
//! forwards it to the hub over MQTT, deleting only what the hub acknowledges; obeys commands
//! (set a writable point, reboot, reload, update).
//!
//! The flow, one direction, each stage owning its state:
//! [`modbus`] pollers -> [`batcher`] -> [`queue`] (redb, fsync) -> [`uplink`] (MQTT) -> hub;
//! [`camera`]s -> [`camera_feed`] -> events and snapshots into [`queue`], readings into
//! [`batcher`];
//! the hub's acks and commands come back through [`uplink`] to [`queue`] and [`commands`].
//! [`agent`] wires the stages together; [`health`] and [`metrics`] watch them.

#![warn(missing_docs)]

pub mod agent;
pub mod backoff;
pub mod batcher;
pub mod camera;
pub mod camera_feed;
pub mod commands;
pub mod config;
pub mod disk;
pub mod health;
pub mod metrics;
pub mod modbus;
pub mod provision;
pub mod queue;
pub mod update;
pub mod uplink;

/// The agent's version, as reported in health and compared by updates.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Exit status asking the supervisor to start the agent again (a `reboot` command, or an
/// installed update that should now run).
pub const REBOOT_EXIT_CODE: u8 = 75;
