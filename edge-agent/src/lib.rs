//! The edge agent of the district sensing gateway.
//!
//! Polls Modbus devices through their profiles, watches cameras, keeps everything in a durable
//! queue and forwards it to the hub over MQTT, deleting only what the hub acknowledges; obeys
//! commands (set a writable point, reboot, reload, update).

pub mod camera;
pub mod config;
