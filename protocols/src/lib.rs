//! The shared language of the district sensing gateway.
//!
//! Everything that crosses a process boundary is defined here, once: MQTT topic names and the
//! access rules over them, the binary agent batch, the JSON telemetry of direct devices, the
//! quantities with their canonical units, the normalized feed, twin and alert documents, Modbus
//! device profiles with their register codecs, GB/T 28181 video ids, the HJ 212-2017 codec of
//! environmental monitoring stations, and the Sparkplug B codec and edge node sessions.
//!
//! The crate does no I/O. Without default features it is `no_std`: the register codecs,
//! quantities and time formatting are then available to the sensor-node firmware; `alloc` adds
//! the owned payload types and the postcard batch codec; `std` adds JSON and TOML parsing.
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod quantity;
pub mod registers;
pub mod time;

#[cfg(feature = "alloc")]
pub mod access;
#[cfg(feature = "alloc")]
pub mod batch;
#[cfg(feature = "std")]
pub mod config;
#[cfg(feature = "std")]
pub mod deadletter;
#[cfg(feature = "alloc")]
pub mod gb28181;
#[cfg(feature = "alloc")]
pub mod hj212;
#[cfg(feature = "alloc")]
pub mod id;
#[cfg(feature = "std")]
pub mod messages;
#[cfg(feature = "alloc")]
pub mod profile;
#[cfg(feature = "alloc")]
pub mod sparkplug;
#[cfg(feature = "std")]
pub mod telemetry;
#[cfg(feature = "alloc")]
pub mod topic;

pub use quantity::{Quality, Quantity, Value, ValueKind};
