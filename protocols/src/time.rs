//! Timestamps: epoch milliseconds and RFC 3339, without a calendar library.
//!
//! The hub formats a timestamp for every feed message, so formatting writes into a fixed
//! buffer and never allocates. Dates use the proleptic Gregorian calendar (days-from-civil).

use core::fmt;

/// Why an RFC 3339 timestamp was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// The text does not have the RFC 3339 shape.
    #[error("not an RFC 3339 timestamp")]
    Syntax,
    /// A field is out of its range (month 13, hour 25, ...).
    #[error("RFC 3339 timestamp has a field out of range")]
    Range,
}

/// Wall-clock time now, epoch milliseconds (0 if the clock is before 1970). The one clock of
/// the workspace: hub, broker, store and agent read the time through it.
#[cfg(feature = "std")]
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Days since 1970-01-01 for a civil date.
pub const fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp as i64 + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The civil date `(year, month, day)` of a day count since 1970-01-01.
pub const fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = if z >= 0 { z } else { z - 146096 } / 146097;
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

const fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

const fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if is_leap(y) {
                29
            } else {
                28
            }
        }
    }
}

/// Earliest timestamp accepted anywhere: 2000-01-01T00:00:00Z. Anything earlier is a device
/// with an unset clock.
pub const MIN_PLAUSIBLE_MS: i64 = 946_684_800_000;
/// Latest timestamp the formatter handles: 9999-12-31T23:59:59.999Z.
pub const MAX_MS: i64 = 253_402_300_799_999;

/// An RFC 3339 UTC timestamp with milliseconds, e.g. `2026-11-22T08:00:00.000Z`, formatted
/// into a fixed buffer.
#[derive(Clone, Copy)]
pub struct Rfc3339 {
    buf: [u8; 24],
}

impl Rfc3339 {
    /// Formats epoch milliseconds (clamped to years 0000..=9999).
    pub fn from_ms(ms: i64) -> Rfc3339 {
        let ms = ms.clamp(-62_167_219_200_000, MAX_MS);
        let days = ms.div_euclid(86_400_000);
        let rem = ms.rem_euclid(86_400_000);
        let (y, mo, d) = civil_from_days(days);
        let (h, mi, s, milli) = (
            rem / 3_600_000,
            rem / 60_000 % 60,
            rem / 1000 % 60,
            rem % 1000,
        );
        let mut buf = *b"0000-00-00T00:00:00.000Z";
        let put = |buf: &mut [u8; 24], at: usize, width: usize, mut v: i64| {
            for i in (0..width).rev() {
                buf[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(&mut buf, 0, 4, y);
        put(&mut buf, 5, 2, mo as i64);
        put(&mut buf, 8, 2, d as i64);
        put(&mut buf, 11, 2, h);
        put(&mut buf, 14, 2, mi);
        put(&mut buf, 17, 2, s);
        put(&mut buf, 20, 3, milli);
        Rfc3339 { buf }
    }

    /// The formatted text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        core::str::from_utf8(&self.buf).unwrap_or("1970-01-01T00:00:00.000Z")
    }
}

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

fn digits(s: &[u8], at: usize, n: usize) -> Result<u32, TimeError> {
    let part = s.get(at..at + n).ok_or(TimeError::Syntax)?;
    let mut v = 0u32;
    for &c in part {
        if !c.is_ascii_digit() {
            return Err(TimeError::Syntax);
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Ok(v)
}

/// Parses an RFC 3339 timestamp (`2026-11-22T08:00:00Z`, fractions of any length, `Z` or a
/// `+hh:mm` offset; `t`/space and `z` tolerated) into epoch milliseconds. Digits beyond the
/// millisecond are truncated.
pub fn parse_rfc3339(text: &str) -> Result<i64, TimeError> {
    let s = text.as_bytes();
    if s.len() < 20 || s[4] != b'-' || s[7] != b'-' || s[13] != b':' || s[16] != b':' {
        return Err(TimeError::Syntax);
    }
    if !matches!(s[10], b'T' | b't' | b' ') {
        return Err(TimeError::Syntax);
    }
    let y = digits(s, 0, 4)? as i64;
    let mo = digits(s, 5, 2)?;
    let d = digits(s, 8, 2)?;
    let h = digits(s, 11, 2)?;
    let mi = digits(s, 14, 2)?;
    let sec = digits(s, 17, 2)?;
    if !(1..=12).contains(&mo) || d == 0 || d > days_in_month(y, mo) || h > 23 || mi > 59 {
        return Err(TimeError::Range);
    }
    // A leap second is folded onto the last millisecond of its minute.
    if sec > 60 {
        return Err(TimeError::Range);
    }
    let mut i = 19;
    let mut millis = 0i64;
    if s.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < s.len() && s[i].is_ascii_digit() {
            if i - start < 3 {
                millis = millis * 10 + (s[i] - b'0') as i64;
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return Err(TimeError::Syntax);
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_min: i64 = match s.get(i) {
        Some(b'Z' | b'z') if i + 1 == s.len() => 0,
        Some(&sign @ (b'+' | b'-')) if i + 6 == s.len() && s[i + 3] == b':' => {
            let oh = digits(s, i + 1, 2)? as i64;
            let om = digits(s, i + 4, 2)? as i64;
            if oh > 23 || om > 59 {
                return Err(TimeError::Range);
            }
            let o = oh * 60 + om;
            if sign == b'+' { o } else { -o }
        }
        _ => return Err(TimeError::Syntax),
    };
    let (sec, millis) = if sec == 60 { (59, 999) } else { (sec, millis) };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h as i64 * 3600 + mi as i64 * 60 + sec as i64 - offset_min * 60;
    Ok(secs * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_dates() {
        assert_eq!(
            Rfc3339::from_ms(1_795_334_400_000).as_str(),
            "2026-11-22T08:00:00.000Z"
        );
        assert_eq!(Rfc3339::from_ms(0).as_str(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            parse_rfc3339("2026-11-22T08:00:00.000Z").unwrap(),
            1_795_334_400_000
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T16:00:00+08:00").unwrap(),
            1_795_334_400_000
        );
        assert_eq!(
            parse_rfc3339("2026-11-22T08:00:00.123456789Z").unwrap(),
            1_795_334_400_123
        );
        assert_eq!(
            parse_rfc3339("2026-11-22t08:00:00.5z").unwrap(),
            1_795_334_400_500
        );
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z").unwrap() % 1000, 0);
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "2026-11-22",
            "2026-11-22T08:00:00",
            "2026-11-22T08:00:00.Z",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T08:00:00+0800",
            "2026-11-22T08:00:00Zjunk",
            "２026-11-22T08:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad} accepted");
        }
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(ms in -62_167_219_200_000i64..=MAX_MS) {
            let text = Rfc3339::from_ms(ms);
            prop_assert_eq!(parse_rfc3339(text.as_str()).unwrap(), ms);
        }

        #[test]
        fn civil_round_trip(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = parse_rfc3339(&s);
        }
    }
}
