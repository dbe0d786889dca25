//! What the load generator counts: sends, acknowledgements, and latencies.
//!
//! Everything here is written from many tasks at once without locks: counters are atomics,
//! send times live in one ring per agent indexed by sequence number, and latencies go into a
//! log-linear histogram of atomics (about 1.6 % resolution), so measuring never becomes the
//! bottleneck it measures.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Sub-buckets per power of two (6 bits: ~1.6 % relative resolution).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two covered above the linear range: up to 2^(6+34) µs, far beyond any run.
const GROUPS: usize = 34;

/// A histogram of durations in microseconds.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..(SUB as usize * (GROUPS + 1)))
                .map(|_| AtomicU64::new(0))
                .collect(),
            count: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let group = (63 - us.leading_zeros()) - SUB_BITS + 1; // >= 1
    let sub = (us >> (group - 1)) - SUB; // 0..SUB
    (group as usize * SUB as usize + sub as usize).min(SUB as usize * (GROUPS + 1) - 1)
}

/// The smallest value of a bucket (its lower edge) and its width.
fn bucket_edge(b: usize) -> (u64, u64) {
    let group = b as u64 / SUB;
    let sub = b as u64 % SUB;
    if group == 0 {
        (sub, 1)
    } else {
        ((SUB + sub) << (group - 1), 1 << (group - 1))
    }
}

impl Histogram {
    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        self.buckets[bucket_of(us)].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.max_us.fetch_max(us, Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// The `q` quantile (0..=1) in milliseconds (bucket midpoint), 0 when empty.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let n = self.count();
        if n == 0 {
            return 0.0;
        }
        let rank = ((n as f64 * q).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (b, c) in self.buckets.iter().enumerate() {
            seen += c.load(Relaxed);
            if seen >= rank {
                let (lo, width) = bucket_edge(b);
                let mid = lo as f64 + (width as f64 - 1.0) / 2.0;
                let max = self.max_us.load(Relaxed) as f64;
                return mid.min(max) / 1000.0;
            }
        }
        self.max_us.load(Relaxed) as f64 / 1000.0
    }

    /// Forgets everything (racing recorders may leave a few counts behind: for progress
    /// displays, not for results).
    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Relaxed);
        }
        self.count.store(0, Relaxed);
        self.max_us.store(0, Relaxed);
    }

    /// The largest duration recorded, in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.max_us.load(Relaxed) as f64 / 1000.0
    }
}

/// Counters of one load run, summed over all agents.
#[derive(Default)]
pub struct Counters {
    /// Batches sent for the first time.
    pub batches_sent: AtomicU64,
    /// Readings in them.
    pub readings_sent: AtomicU64,
    /// Batches acknowledged (first acknowledgement only).
    pub batches_acked: AtomicU64,
    /// Readings in them.
    pub readings_acked: AtomicU64,
    /// Batches sent again (ack timeout or reconnect).
    pub resent: AtomicU64,
    /// Connections opened again after a failure.
    pub reconnects: AtomicU64,
    /// Times an agent had a batch due but its window was full (backpressure).
    pub window_stalls: AtomicU64,
    /// Messages the measuring subscriber received (feeds, or relayed batches).
    pub probe_messages: AtomicU64,
    /// Readings in relayed batches the subscriber received (relay mode).
    pub probe_readings: AtomicU64,
    /// Device-sample groups sent (one feed each in the hub).
    pub groups_sent: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// See [`Counters::batches_sent`].
    pub batches_sent: u64,
    /// See [`Counters::readings_sent`].
    pub readings_sent: u64,
    /// See [`Counters::batches_acked`].
    pub batches_acked: u64,
    /// See [`Counters::readings_acked`].
    pub readings_acked: u64,
    /// See [`Counters::resent`].
    pub resent: u64,
    /// See [`Counters::reconnects`].
    pub reconnects: u64,
    /// See [`Counters::window_stalls`].
    pub window_stalls: u64,
    /// See [`Counters::probe_messages`].
    pub probe_messages: u64,
    /// See [`Counters::probe_readings`].
    pub probe_readings: u64,
    /// See [`Counters::groups_sent`].
    pub groups_sent: u64,
}

impl Counters {
    /// Reads every counter.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            batches_sent: self.batches_sent.load(Relaxed),
            readings_sent: self.readings_sent.load(Relaxed),
            batches_acked: self.batches_acked.load(Relaxed),
            readings_acked: self.readings_acked.load(Relaxed),
            resent: self.resent.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            window_stalls: self.window_stalls.load(Relaxed),
            probe_messages: self.probe_messages.load(Relaxed),
            probe_readings: self.probe_readings.load(Relaxed),
            groups_sent: self.groups_sent.load(Relaxed),
        }
    }
}

/// Slots per agent in the send-time ring; far more than any window, so a slot is reused only
/// long after its batch was acknowledged.
const RING: usize = 1 << 12;
const SEQ_BITS: u32 = 24;
const TIME_MASK: u64 = (1 << (64 - SEQ_BITS)) - 1;

/// When each agent's batches were first sent, for latency at the subscriber.
pub struct SendTimes {
    epoch: Instant,
    rings: Box<[AtomicU64]>,
}

impl SendTimes {
    /// Rings for `agents` agents, times measured from `epoch`.
    pub fn new(agents: usize, epoch: Instant) -> SendTimes {
        SendTimes {
            epoch,
            rings: (0..agents * RING).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// How many agents it tracks.
    pub fn agents(&self) -> usize {
        self.rings.len() / RING
    }

    /// The clock's origin.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    fn slot(&self, agent: usize, seq: u64) -> Option<&AtomicU64> {
        self.rings.get(agent * RING + (seq as usize % RING))
    }

    /// Notes that `agent` sent batch `seq` at `at`.
    pub fn record(&self, agent: usize, seq: u64, at: Instant) {
        let us = at.saturating_duration_since(self.epoch).as_micros() as u64 & TIME_MASK;
        let tag = (seq & ((1 << SEQ_BITS) - 1)) << (64 - SEQ_BITS);
        if let Some(s) = self.slot(agent, seq) {
            s.store(tag | us, Relaxed);
        }
    }

    /// How long ago (`now`) `agent` sent batch `seq`, if still remembered.
    pub fn since(&self, agent: usize, seq: u64, now: Instant) -> Option<Duration> {
        let v = self.slot(agent, seq)?.load(Relaxed);
        if v == 0 || v >> (64 - SEQ_BITS) != seq & ((1 << SEQ_BITS) - 1) {
            return None;
        }
        let sent = self.epoch + Duration::from_micros(v & TIME_MASK);
        Some(now.saturating_duration_since(sent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for us in [
            0u64, 1, 63, 64, 65, 127, 128, 1000, 10_000, 123_456, 9_999_999,
        ] {
            let b = bucket_of(us);
            assert!(b >= last, "{us}");
            last = b;
            let (lo, w) = bucket_edge(b);
            assert!(
                lo <= us && us < lo + w,
                "{us}: bucket {b} = [{lo}, {})",
                lo + w
            );
            assert!(w as f64 <= (us as f64 / 60.0).max(1.0), "{us}: width {w}");
        }
    }

    #[test]
    fn quantiles() {
        let h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 100);
        let p50 = h.quantile_ms(0.5);
        let p99 = h.quantile_ms(0.99);
        assert!((49.0..=51.0).contains(&p50), "{p50}");
        assert!((97.5..=100.0).contains(&p99), "{p99}");
        assert_eq!(h.max_ms(), 100.0);
        assert_eq!(Histogram::default().quantile_ms(0.99), 0.0);
    }

    #[test]
    fn send_times_match_their_sequence() {
        let t0 = Instant::now();
        let st = SendTimes::new(2, t0);
        st.record(1, 5, t0 + Duration::from_millis(3));
        assert_eq!(
            st.since(1, 5, t0 + Duration::from_millis(10)),
            Some(Duration::from_millis(7))
        );
        assert_eq!(st.since(0, 5, t0), None);
        // The same slot, a different sequence: not confused.
        assert_eq!(st.since(1, 5 + RING as u64, t0), None);
    }
}
