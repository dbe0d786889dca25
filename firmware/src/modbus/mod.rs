//! A Modbus slave written once for every node: the application layer ([`pdu`]) and two
//! transports around it, RTU over a serial line ([`rtu`]) and MBAP over TCP ([`tcp`]).

pub mod crc;
pub mod pdu;
pub mod rtu;
pub mod tcp;

pub use pdu::{DataModel, Exception};
