//! Station time: `DataTime=YYYYMMDDhhmmss` and `QN=YYYYMMDDhhmmsszzz`.
//!
//! Stations write their local wall-clock time without an offset. Which offset a station uses is
//! configuration of that station, so every conversion takes it as an argument.

use alloc::string::String;
use core::fmt;

use crate::time::{civil_from_days, days_from_civil};

/// UTC+8 (China Standard Time), the offset nearly every HJ 212 station runs on. Only a default
/// for callers to pass; nothing in the codec assumes it.
pub const DEFAULT_UTC_OFFSET_MINUTES: i32 = 480;

/// Why a `DataTime` was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DataTimeError {
    /// Not 14 ASCII digits.
    #[error("DataTime must be 14 digits YYYYMMDDhhmmss")]
    Syntax,
    /// A field out of its range (month 13, 31 April, hour 24, ...).
    #[error("DataTime has a field out of range")]
    Range,
}

/// A station's local date and time, to the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DataTime {
    /// Year, 0000..=9999.
    pub year: u16,
    /// Month, 1..=12.
    pub month: u8,
    /// Day of the month, 1..=31.
    pub day: u8,
    /// Hour, 0..=23.
    pub hour: u8,
    /// Minute, 0..=59.
    pub minute: u8,
    /// Second, 0..=59 (a leap second is not representable and is refused).
    pub second: u8,
}

fn digits(s: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

impl DataTime {
    /// Parses `YYYYMMDDhhmmss`.
    pub fn parse(text: &str) -> Result<DataTime, DataTimeError> {
        let s = text.as_bytes();
        if s.len() != 14 {
            return Err(DataTimeError::Syntax);
        }
        let field = |from: usize, to: usize| digits(&s[from..to]).ok_or(DataTimeError::Syntax);
        let t = DataTime {
            year: field(0, 4)? as u16,
            month: field(4, 6)? as u8,
            day: field(6, 8)? as u8,
            hour: field(8, 10)? as u8,
            minute: field(10, 12)? as u8,
            second: field(12, 14)? as u8,
        };
        if !t.is_valid() {
            return Err(DataTimeError::Range);
        }
        Ok(t)
    }

    /// Whether every field is in range, the day included (the calendar round trip catches 31
    /// April and 29 February of a common year).
    pub fn is_valid(self) -> bool {
        if self.year > 9999
            || !(1..=12).contains(&self.month)
            || self.day == 0
            || self.hour > 23
            || self.minute > 59
            || self.second > 59
        {
            return false;
        }
        let days = days_from_civil(self.year as i64, self.month as u32, self.day as u32);
        civil_from_days(days) == (self.year as i64, self.month as u32, self.day as u32)
    }

    /// Epoch milliseconds (UTC) of this local time at `offset_minutes` east of UTC (480 for
    /// UTC+8).
    pub fn to_utc_ms(self, offset_minutes: i32) -> i64 {
        let days = days_from_civil(self.year as i64, self.month as u32, self.day as u32);
        let local_s =
            days * 86_400 + self.hour as i64 * 3600 + self.minute as i64 * 60 + self.second as i64;
        (local_s - offset_minutes as i64 * 60) * 1000
    }

    /// The local time at `offset_minutes` east of UTC of epoch milliseconds (milliseconds are
    /// dropped; years are clamped to 0000..=9999).
    pub fn from_utc_ms(ms: i64, offset_minutes: i32) -> DataTime {
        let (local_ms, _) = local_parts(ms, offset_minutes);
        let secs = local_ms.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        DataTime {
            year: y as u16,
            month: m as u8,
            day: d as u8,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// The 14 digits as written in a packet.
    pub fn to_digits(self) -> [u8; 14] {
        let mut buf = [b'0'; 14];
        put(&mut buf[0..4], self.year as u32);
        put(&mut buf[4..6], self.month as u32);
        put(&mut buf[6..8], self.day as u32);
        put(&mut buf[8..10], self.hour as u32);
        put(&mut buf[10..12], self.minute as u32);
        put(&mut buf[12..14], self.second as u32);
        buf
    }
}

/// Local milliseconds, clamped to years 0000..=9999, and the millisecond of the second.
fn local_parts(ms: i64, offset_minutes: i32) -> (i64, u32) {
    let local = ms
        .saturating_add(offset_minutes as i64 * 60_000)
        .clamp(-62_167_219_200_000, crate::time::MAX_MS);
    (local, local.rem_euclid(1000) as u32)
}

fn put(buf: &mut [u8], mut v: u32) {
    for b in buf.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

impl fmt::Display for DataTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.to_digits();
        // Only ASCII digits are ever written.
        f.write_str(core::str::from_utf8(&d).unwrap_or("00000000000000"))
    }
}

/// A request number `QN=YYYYMMDDhhmmsszzz` (local time to the millisecond) for a packet sent
/// at epoch milliseconds `ms`. The platform echoes it in its acknowledgement, so a station
/// (or simulator) should not send two packets with the same QN within a millisecond.
pub fn qn_for(ms: i64, offset_minutes: i32) -> String {
    let t = DataTime::from_utc_ms(ms, offset_minutes);
    let (_, milli) = local_parts(ms, offset_minutes);
    let mut out = [b'0'; 17];
    out[..14].copy_from_slice(&t.to_digits());
    put(&mut out[14..], milli);
    // ASCII digits only.
    String::from(core::str::from_utf8(&out).unwrap_or("00000000000000000"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_convert() {
        let t = DataTime::parse("20160801084000").unwrap();
        assert_eq!(
            t,
            DataTime {
                year: 2016,
                month: 8,
                day: 1,
                hour: 8,
                minute: 40,
                second: 0
            }
        );
        // 2016-08-01T00:40:00Z
        assert_eq!(t.to_utc_ms(DEFAULT_UTC_OFFSET_MINUTES), 1_470_012_000_000);
        assert_eq!(t.to_utc_ms(0), 1_470_040_800_000);
        assert_eq!(
            DataTime::from_utc_ms(1_470_012_000_000, DEFAULT_UTC_OFFSET_MINUTES),
            t
        );
        assert_eq!(t.to_string(), "20160801084000");
    }

    #[test]
    fn refuses_bad_dates() {
        assert_eq!(DataTime::parse("2016080108400"), Err(DataTimeError::Syntax));
        assert_eq!(
            DataTime::parse("2016O801084000"),
            Err(DataTimeError::Syntax)
        );
        assert_eq!(DataTime::parse("20160431084000"), Err(DataTimeError::Range));
        assert_eq!(DataTime::parse("20170229084000"), Err(DataTimeError::Range));
        assert!(DataTime::parse("20160229084000").is_ok());
        assert_eq!(DataTime::parse("20161301084000"), Err(DataTimeError::Range));
        assert_eq!(DataTime::parse("20160801240000"), Err(DataTimeError::Range));
        assert_eq!(DataTime::parse("20160801086000"), Err(DataTimeError::Range));
        assert_eq!(DataTime::parse("20160801085960"), Err(DataTimeError::Range));
        assert_eq!(
            DataTime::parse("+2016080108400"),
            Err(DataTimeError::Syntax)
        );
    }

    #[test]
    fn day_boundary_and_qn() {
        // 2026-01-01T00:30:00+08:00 is still 2025 in UTC.
        let t = DataTime::parse("20260101003000").unwrap();
        let ms = t.to_utc_ms(480);
        assert_eq!(
            crate::time::Rfc3339::from_ms(ms).as_str(),
            "2025-12-31T16:30:00.000Z"
        );
        assert_eq!(qn_for(ms + 223, 480), "20260101003000223");
        assert_eq!(
            DataTime::from_utc_ms(ms, -300).to_string(),
            "20251231113000"
        );
    }
}
