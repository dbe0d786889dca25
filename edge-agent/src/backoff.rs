//! Exponential backoff with jitter, for reconnecting to Modbus devices and to the hub.
//!
//! "Equal jitter": the delay is drawn uniformly from the upper half of the current step, so a
//! fleet of agents that lost the hub together does not reconnect in lockstep, while every agent
//! still waits at least half the step (no hammering with near-zero delays).

use std::time::Duration;

use rand::Rng;

/// Backoff state of one connection.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, doubles per failure, never exceeds `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base: base.max(Duration::from_millis(1)),
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The current step before jitter: `base * 2^attempt`, capped at `max`.
    pub fn step(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay to wait after one more failure; advances the state.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.delay();
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// A delay drawn from the current step without advancing it (the uplink's hub list
    /// advances once per pass over its hubs).
    pub fn delay(&self) -> Duration {
        let half = self.step() / 2;
        let jitter = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.attempt
    }

    /// After a success: the next failure waits `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let steps: Vec<u128> = (0..8)
            .map(|_| {
                let s = b.step().as_millis();
                b.next_delay();
                s
            })
            .collect();
        assert_eq!(steps, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(b.failures(), 8);
    }

    #[test]
    fn delay_stays_in_the_upper_half_of_the_step() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        for _ in 0..200 {
            let step = b.step();
            let d = b.next_delay();
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
            seen.insert(b.next_delay().as_millis());
        }
        assert!(seen.len() > 10, "only {} distinct delays", seen.len());
    }

    #[test]
    fn reset_starts_over_and_huge_attempts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_secs(30));
        for _ in 0..1000 {
            b.next_delay();
        }
        assert_eq!(b.step(), Duration::from_secs(30));
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(50));
        assert!(b.next_delay() <= Duration::from_millis(50));
    }
}
