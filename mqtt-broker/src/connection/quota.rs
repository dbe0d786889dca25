//! Per-client rate limits on publishes, without I/O: a token bucket of messages and one of
//! bytes, each refilled at its rate and holding up to two seconds' worth. A publish beyond
//! them makes the reader wait (it stops reading the socket, so TCP slows the client down and
//! nobody else notices); a client that stays over its rate for the whole grace period is a
//! flood and is disconnected.

use std::time::{Duration, Instant};

use crate::BrokerConfig;

/// Seconds of rate a bucket holds: short bursts (a batch of queued readings after a
/// reconnect) pass without waiting.
const BURST_SECONDS: f64 = 2.0;

/// What to do with a publish.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Within the limits.
    Pass,
    /// Over a limit: wait this long before taking it (and reading on).
    Wait(Duration),
    /// Over a limit for longer than the grace period: disconnect.
    Flood,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens per second.
    rate: f64,
    /// Most tokens held.
    burst: f64,
    /// Tokens now; negative is a debt that must be waited off.
    tokens: f64,
}

impl Bucket {
    fn new(rate: f64) -> Bucket {
        let burst = (rate * BURST_SECONDS).max(1.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
        }
    }

    fn refill(&mut self, elapsed: f64) {
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Takes `n` tokens; the wait until the debt is paid, if any.
    fn take(&mut self, n: f64) -> f64 {
        self.tokens -= n;
        if self.tokens >= 0.0 {
            0.0
        } else {
            -self.tokens / self.rate
        }
    }

    fn rested(&self) -> bool {
        self.tokens >= self.burst / 2.0
    }
}

/// The limits of one connection.
#[derive(Debug)]
pub(crate) struct Quota {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    /// When the client started being over its rate without pause.
    throttled_since: Option<Instant>,
    grace: Duration,
    last: Instant,
}

impl Quota {
    /// The limits `config` sets; `None` when it sets none.
    pub fn new(config: &BrokerConfig, now: Instant) -> Option<Quota> {
        let messages = (config.max_messages_per_s > 0)
            .then(|| Bucket::new(f64::from(config.max_messages_per_s)));
        let bytes =
            (config.max_bytes_per_s > 0).then(|| Bucket::new(config.max_bytes_per_s as f64));
        if messages.is_none() && bytes.is_none() {
            return None;
        }
        Some(Quota {
            messages,
            bytes,
            throttled_since: None,
            grace: config.throttle_grace,
            last: now,
        })
    }

    /// Charges one publish of `size` bytes at `now`.
    pub fn charge(&mut self, size: usize, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let mut wait: f64 = 0.0;
        let mut rested = true;
        if let Some(b) = &mut self.messages {
            b.refill(elapsed);
            wait = wait.max(b.take(1.0));
            rested &= b.rested();
        }
        if let Some(b) = &mut self.bytes {
            b.refill(elapsed);
            wait = wait.max(b.take(size as f64));
            rested &= b.rested();
        }
        if wait <= 0.0 {
            // Back under the rate with room to spare: the episode is over.
            if rested {
                self.throttled_since = None;
            }
            return Verdict::Pass;
        }
        let since = *self.throttled_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.grace {
            return Verdict::Flood;
        }
        // Waiting refills the buckets: account for it now so the next charge starts there.
        let wait = Duration::from_secs_f64(wait);
        if let Some(b) = &mut self.messages {
            b.refill(wait.as_secs_f64());
        }
        if let Some(b) = &mut self.bytes {
            b.refill(wait.as_secs_f64());
        }
        self.last = now + wait;
        Verdict::Wait(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(msgs: u32, bytes: u64) -> BrokerConfig {
        let mut c = BrokerConfig::new(Vec::new());
        c.max_messages_per_s = msgs;
        c.max_bytes_per_s = bytes;
        c.throttle_grace = Duration::from_secs(5);
        c
    }

    #[test]
    fn no_limits_no_quota() {
        assert!(Quota::new(&config(0, 0), Instant::now()).is_none());
    }

    #[test]
    fn a_client_within_its_rate_never_waits() {
        let t0 = Instant::now();
        let mut q = Quota::new(&config(10, 0), t0).unwrap();
        // 10/s for a minute, evenly.
        for i in 0..600u64 {
            let now = t0 + Duration::from_millis(100 * i);
            assert_eq!(q.charge(100, now), Verdict::Pass, "publish {i}");
        }
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut q = Quota::new(&config(10, 0), t0).unwrap();
        // Two seconds' worth at once.
        for _ in 0..20 {
            assert_eq!(q.charge(1, t0), Verdict::Pass);
        }
        // The next waits a tenth of a second.
        let Verdict::Wait(w) = q.charge(1, t0) else {
            panic!("over the burst");
        };
        assert!((w.as_secs_f64() - 0.1).abs() < 1e-6, "{w:?}");
        // After waiting it, the following one waits again: the client is held to 10/s.
        let Verdict::Wait(w2) = q.charge(1, t0 + w) else {
            panic!("still over");
        };
        assert!((w2.as_secs_f64() - 0.1).abs() < 1e-6, "{w2:?}");
    }

    #[test]
    fn bytes_are_limited_too() {
        let t0 = Instant::now();
        let mut q = Quota::new(&config(0, 1000), t0).unwrap();
        assert_eq!(q.charge(2000, t0), Verdict::Pass);
        let Verdict::Wait(w) = q.charge(500, t0) else {
            panic!("over the byte burst");
        };
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn a_flood_past_the_grace_period_is_disconnected_a_pause_forgives() {
        let t0 = Instant::now();
        let mut q = Quota::new(&config(10, 0), t0).unwrap();
        let mut now = t0;
        let mut verdict = Verdict::Pass;
        // As fast as the waits let it: over the rate all the time.
        for _ in 0..1000 {
            verdict = q.charge(1, now);
            match verdict {
                Verdict::Pass => {}
                Verdict::Wait(w) => now += w,
                Verdict::Flood => break,
            }
        }
        assert_eq!(verdict, Verdict::Flood);
        assert!(now - t0 >= Duration::from_secs(5));

        // Another client floods for 3 s, pauses 2 s, and is forgiven.
        let mut q = Quota::new(&config(10, 0), t0).unwrap();
        let mut now = t0;
        while now - t0 < Duration::from_secs(3) {
            match q.charge(1, now) {
                Verdict::Wait(w) => now += w,
                Verdict::Pass => {}
                Verdict::Flood => panic!("not yet"),
            }
        }
        now += Duration::from_secs(2);
        assert_eq!(q.charge(1, now), Verdict::Pass);
        // A new episode starts from zero: 3 more seconds over the rate are fine.
        let start = now;
        while now - start < Duration::from_secs(3) {
            match q.charge(1, now) {
                Verdict::Wait(w) => now += w,
                Verdict::Pass => {}
                Verdict::Flood => panic!("the pause ended the first episode"),
            }
        }
    }
}
