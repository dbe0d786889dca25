//! The demo clock: real time by default, or faster (`--speed 60` turns a real minute into a
//! demo hour), optionally starting at a chosen time of day (`--start 17:30`).
//!
//! Everything physical in the district (the sun, the storm, the river) runs on demo time.
//! Timestamps on the wire stay real: agents and the hub stamp readings with the machine's
//! clock, so at a speed-up the hub sees the district's processes compressed (a river rising
//! 1 m in a demo hour rises 1 m in a real minute at `--speed 60`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The district's civil time zone: China Standard Time, UTC+8 (no daylight saving).
pub const UTC_OFFSET_S: i64 = 8 * 3600;

/// A time of day, `HH:MM` in district time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeOfDay {
    /// Seconds after local midnight.
    pub seconds: u32,
}

impl std::str::FromStr for TimeOfDay {
    type Err = String;

    fn from_str(s: &str) -> Result<TimeOfDay, String> {
        let bad = || format!("`{s}` is not a time of day like 17:30");
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        let h: u32 = h.parse().map_err(|_| bad())?;
        let m: u32 = m.parse().map_err(|_| bad())?;
        if h > 23 || m > 59 {
            return Err(bad());
        }
        Ok(TimeOfDay {
            seconds: h * 3600 + m * 60,
        })
    }
}

/// Maps real time to demo time.
#[derive(Clone, Copy, Debug)]
pub struct DemoClock {
    real_start: Instant,
    /// Demo time at `real_start`, epoch milliseconds (UTC).
    demo_start_ms: i64,
    speed: f64,
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl DemoClock {
    /// A clock running `speed` times faster than real time, starting now or at `start` today
    /// (district time).
    pub fn new(speed: f64, start: Option<TimeOfDay>) -> DemoClock {
        let now = wall_ms();
        let demo_start_ms = match start {
            None => now,
            Some(t) => {
                let local = now + UTC_OFFSET_S * 1000;
                let midnight = local - local.rem_euclid(86_400_000);
                midnight + t.seconds as i64 * 1000 - UTC_OFFSET_S * 1000
            }
        };
        DemoClock {
            real_start: Instant::now(),
            demo_start_ms,
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                1.0
            },
        }
    }

    /// How many demo seconds pass per real second.
    pub fn speed(&self) -> f64 {
        self.speed
    }

    /// Demo seconds since the demo started.
    pub fn elapsed_s(&self) -> f64 {
        self.real_start.elapsed().as_secs_f64() * self.speed
    }

    /// Demo time now, epoch milliseconds (UTC).
    pub fn now_ms(&self) -> i64 {
        self.demo_start_ms + (self.elapsed_s() * 1000.0) as i64
    }

    /// Demo time at `elapsed_s` demo seconds after the start, epoch milliseconds.
    pub fn at_ms(&self, elapsed_s: f64) -> i64 {
        self.demo_start_ms + (elapsed_s * 1000.0) as i64
    }

    /// Real time until the demo reaches `elapsed_s` (zero if it has).
    pub fn real_until(&self, elapsed_s: f64) -> Duration {
        let left = (elapsed_s - self.elapsed_s()) / self.speed;
        Duration::from_secs_f64(left.max(0.0))
    }

    /// A demo duration in real time.
    pub fn real(&self, demo_s: f64) -> Duration {
        Duration::from_secs_f64((demo_s / self.speed).max(0.0))
    }
}

/// District local time of an epoch-ms instant: (day of year 1..=366, hours after midnight).
pub fn local_day_and_hour(epoch_ms: i64) -> (u32, f64) {
    let local_s = epoch_ms.div_euclid(1000) + UTC_OFFSET_S;
    let days = local_s.div_euclid(86_400);
    let hour = local_s.rem_euclid(86_400) as f64 / 3600.0;
    (day_of_year(days), hour)
}

/// `HH:MM` district time of an epoch-ms instant.
pub fn hhmm(epoch_ms: i64) -> String {
    let (_, h) = local_day_and_hour(epoch_ms);
    let minutes = (h * 60.0).floor() as u32;
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// Day of the year (1-based) of a count of days since 1970-01-01 (civil calendar).
fn day_of_year(days_since_epoch: i64) -> u32 {
    // Howard Hinnant's civil-from-days, then count from January 1st.
    let z = days_since_epoch + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_from_march = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let year = yoe + era * 400;
    // Day of year counted from March 1st: shift back to January 1st.
    let mp = (5 * doy_from_march + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let day = doy_from_march - (153 * mp + 2) / 5 + 1;
    let year = if month <= 2 { year + 1 } else { year };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let extra = if leap && month > 2 { 1 } else { 0 };
    (CUM[(month - 1) as usize] + day + extra) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_of_year_matches_the_calendar() {
        // 2026-01-01 is day 20454 since the epoch; 2024-12-31 is a leap year's day 366.
        assert_eq!(day_of_year(20_454), 1);
        assert_eq!(day_of_year(20_088), 366);
        assert_eq!(day_of_year(0), 1);
        assert_eq!(day_of_year(31 + 28), 60); // 1970-03-01
    }

    #[test]
    fn local_time_is_utc_plus_8() {
        // 2026-01-01T10:00:00Z is 18:00 in the district.
        let ms = (20_454 * 86_400 + 10 * 3600) * 1000;
        let (doy, h) = local_day_and_hour(ms);
        assert_eq!((doy, h), (1, 18.0));
        assert_eq!(hhmm(ms), "18:00");
    }

    #[test]
    fn start_time_and_speed() {
        let c = DemoClock::new(60.0, Some("17:30".parse().unwrap()));
        assert_eq!(hhmm(c.now_ms()), "17:30");
        assert_eq!(c.real(60.0), Duration::from_secs(1));
        assert!("24:00".parse::<TimeOfDay>().is_err());
        assert!("7".parse::<TimeOfDay>().is_err());
    }
}
