//! The command number `CN` of a packet: what the packet is (data upload, acknowledgement, ...).

use core::fmt;
use core::hash::{Hash, Hasher};

/// The command number `CN`: what the packet is. Equality, order and hash go by the number.
#[derive(Clone, Copy, Debug, Eq)]
pub enum Cn {
    /// 2011: real-time data upload (`Rtd` values).
    RealTime,
    /// 2051: minute data upload (`Avg`/`Min`/`Max`/`Cou` over the interval).
    Minute,
    /// 2061: hour data upload.
    Hour,
    /// 2031: daily data upload.
    Daily,
    /// 9011: response to a request (`QnRtn`).
    RequestResponse,
    /// 9012: result of executing a request (`ExeRtn`).
    ExecutionResult,
    /// 9014: data acknowledgement, sent by the platform for an upload that asked for one.
    DataAck,
    /// Any other command, by number. Build values with [`Cn::from_code`] so a known number is
    /// never wrapped here; equality compares numbers anyway.
    Other(u16),
}

impl Cn {
    /// The command for a number.
    pub const fn from_code(code: u16) -> Cn {
        match code {
            2011 => Cn::RealTime,
            2051 => Cn::Minute,
            2061 => Cn::Hour,
            2031 => Cn::Daily,
            9011 => Cn::RequestResponse,
            9012 => Cn::ExecutionResult,
            9014 => Cn::DataAck,
            other => Cn::Other(other),
        }
    }

    /// The command number.
    pub const fn code(self) -> u16 {
        match self {
            Cn::RealTime => 2011,
            Cn::Minute => 2051,
            Cn::Hour => 2061,
            Cn::Daily => 2031,
            Cn::RequestResponse => 9011,
            Cn::ExecutionResult => 9012,
            Cn::DataAck => 9014,
            Cn::Other(c) => c,
        }
    }

    /// Whether the packet carries measured data (real-time, minute, hour or daily).
    pub const fn is_data_upload(self) -> bool {
        matches!(self, Cn::RealTime | Cn::Minute | Cn::Hour | Cn::Daily)
    }

    /// The pollutant field that holds the value for this kind of upload: `Rtd` for real-time
    /// data, `Avg` for minute, hour and daily data.
    pub const fn value_field(self) -> Option<&'static str> {
        match self {
            Cn::RealTime => Some("Rtd"),
            Cn::Minute | Cn::Hour | Cn::Daily => Some("Avg"),
            _ => None,
        }
    }
}

impl PartialEq for Cn {
    fn eq(&self, other: &Cn) -> bool {
        self.code() == other.code()
    }
}

impl PartialOrd for Cn {
    fn partial_cmp(&self, other: &Cn) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Cn {
    fn cmp(&self, other: &Cn) -> core::cmp::Ordering {
        self.code().cmp(&other.code())
    }
}

impl Hash for Cn {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.code().hash(state);
    }
}

impl fmt::Display for Cn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.code())
    }
}
