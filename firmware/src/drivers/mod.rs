//! Drivers for the parts on the district's node boards.
//!
//! Each driver owns its bus handle (share a bus with `embedded-hal-bus`), reads and writes the
//! part's registers as its datasheet describes, and returns values in SI-ish engineering units.
//! `destroy` hands the bus back.

pub mod ade7953;
pub mod ads1115;
pub mod ezo;
pub mod lis3dh;
pub mod lps22hb;
pub mod max17048;
pub mod sht4x;
pub mod ultrasonic;
