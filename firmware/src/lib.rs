//! Sensor-node firmware (placeholder until the firmware issue lands).
#![no_std]
