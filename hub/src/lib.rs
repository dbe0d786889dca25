//! The central hub of the district sensing gateway.
//!
//! One pipeline in one direction (see docs/ARCHITECTURE.md): MQTT ingress with authentication
//! and per-topic authorization, decode and validate, normalize, dedup, durable store, twin,
//! rules and alerts, and feeds republished to apps over MQTT, HTTP and a live stream.

pub mod config;
pub mod ingress;
pub mod store;
