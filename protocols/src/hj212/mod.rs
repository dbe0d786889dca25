//! HJ 212-2017, the Chinese environmental monitoring data transmission standard
//! ("污染物在线监控（监测）系统数据传输标准"): the codec, without I/O.
//!
//! A station (e.g. a water-quality sonde's data logger) sends ASCII packets over TCP:
//!
//! ```text
//! ##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&1C80\r\n
//! ^^ length  data segment ............................................................................ CRC16 ^^^^
//! ```
//!
//! - [`frame`]: cuts packets out of a TCP byte stream and checks length, trailer and CRC.
//! - [`crc`]: the standard's CRC16 (not CRC-16/MODBUS, although it uses the same polynomial).
//! - [`segment`]: the data segment's header fields (`QN`, `ST`, `CN`, `PW`, `MN`, `Flag`,
//!   `PNUM`, `PNO`) into a [`Packet`] that borrows from the frame.
//! - [`cp`]: the command parameters (`CP=&&...&&`): `DataTime` and per-pollutant entries such
//!   as `w01001-Rtd=7.12,w01001-Flag=N`, with the data flags' [`Quality`](crate::Quality).
//! - [`codes`]: pollutant codes to quantities and the units the standard reports them in.
//! - [`datetime`]: the station's local `DataTime` and `QN` timestamps.
//! - [`encode`](mod@encode) and [`reply`]: packets out (data uploads for a station simulator, the CN 9014
//!   data acknowledgement for the hub).
//! - [`reassembly`]: packets the station split (`Flag` D bit, `PNUM`, `PNO`) put back together.
//!
//! The TCP listener, authentication of a station by `MN`/`PW` and dead letters belong to the
//! hub.

pub mod codes;
pub mod command;
pub mod cp;
pub mod crc;
pub mod datetime;
pub mod encode;
pub mod frame;
pub mod reassembly;
pub mod reply;
pub mod segment;

pub use codes::{PollutantCode, lookup as lookup_code};
pub use command::Cn;
pub use cp::{CpData, CpError, CpItem, DataFlag, Pollutant};
pub use crc::crc16;
pub use datetime::{DEFAULT_UTC_OFFSET_MINUTES, DataTime, DataTimeError};
pub use encode::{CpBuilder, EncodeError, encode};
pub use frame::{Frame, FrameError, FrameReader};
pub use reassembly::{AssembledPacket, Reassembler, ReassemblyError};
pub use reply::data_ack;
pub use segment::{Flag, Packet, SegmentError, Split};
