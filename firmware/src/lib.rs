//! Firmware of the district's sensor nodes: `no_std`, no allocation.
//!
//! - [`drivers`]: small drivers generic over `embedded-hal` 1.0 (and `embedded-io` for the
//!   UART gauge), each modelled on a real part and named after it.
//! - [`nodes`]: the five node types (lamp controller, water-level station, water-quality
//!   station, manhole cover, weather station). Each samples its drivers, acts on writes and
//!   exposes itself through exactly the register map of its profile in `profiles/`.
//! - [`modbus`]: one Modbus slave for every node: the PDU handler, RTU framing with CRC and
//!   silence timing, and MBAP for Modbus TCP.
//! - [`map`]: register maps and the tables served from them.
//!
//! A node's main loop, in outline:
//!
//! ```ignore
//! let mut node = StreetlightNode::new(meter, pwm, relay, fault_pin, LampConfig::default());
//! node.init()?;
//! let mut framer = rtu::Framer::new(rtu::Silence::for_baud(9600));
//! let mut slave = rtu::Slave::new(unit);
//! loop {
//!     if tick_1s() { node.sample(now_ms()); }
//!     while let Some(byte) = uart_rx() { framer.push(byte, now_us()); }
//!     if let Some(frame) = framer.poll(now_us()) {
//!         if let Ok(reply) = slave.process(frame, &mut node) { uart_tx(reply); }
//!     }
//! }
//! ```
#![no_std]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

pub mod drivers;
pub mod map;
pub mod modbus;
pub mod nodes;

pub use map::{MapPoint, Node};
