//! The data directory's disk as the agent sees it: free space against the `min_free_disk`
//! watermark, whether the queue can be written, and the in-memory buffer that holds readings
//! while it cannot. Health and metrics read [`DiskStatus`]; [`RateLog`] keeps a failing disk
//! from flooding the log.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Free bytes for an unprivileged writer on the file system holding `path` (`statvfs`:
/// available blocks times fragment size; root's reserve is not counted, the agent may not run
/// as root).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(path)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Shared disk and buffer state, written by the batcher (and the health loop), read by health
/// and /metrics.
#[derive(Debug)]
pub struct DiskStatus {
    /// Free bytes on the data directory's file system at the last check (`u64::MAX`: unknown).
    pub free_bytes: AtomicU64,
    /// The `min_free_disk` watermark in force.
    pub min_free_bytes: AtomicU64,
    /// Free space is below the watermark: readings are buffered in memory, not written.
    pub below_watermark: AtomicBool,
    /// The queue's last write failed (or it is closed, waiting to be reopened).
    pub queue_failing: AtomicBool,
    /// Why, while failing.
    pub queue_error: Mutex<Option<String>>,
    /// Times the queue's database was reopened after an I/O error.
    pub queue_reopens: AtomicU64,
    /// Readings held in memory, not yet committed (open batch included).
    pub buffered_readings: AtomicU64,
    /// The buffer's bound (`buffer_readings`).
    pub buffer_max_readings: AtomicU64,
    /// Readings dropped, oldest first, because the buffer was full.
    pub buffer_dropped_readings: AtomicU64,
}

impl Default for DiskStatus {
    fn default() -> DiskStatus {
        DiskStatus {
            free_bytes: AtomicU64::new(u64::MAX),
            min_free_bytes: AtomicU64::new(0),
            below_watermark: AtomicBool::new(false),
            queue_failing: AtomicBool::new(false),
            queue_error: Mutex::new(None),
            queue_reopens: AtomicU64::new(0),
            buffered_readings: AtomicU64::new(0),
            buffer_max_readings: AtomicU64::new(0),
            buffer_dropped_readings: AtomicU64::new(0),
        }
    }
}

impl DiskStatus {
    /// Measures free space on `dir` against `min_free`; returns whether writing is allowed.
    /// An unmeasurable file system does not stop writing (the queue reports its own errors).
    pub fn check(&self, dir: &Path, min_free: u64) -> bool {
        self.min_free_bytes.store(min_free, Relaxed);
        let free = match free_bytes(dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!("statvfs {}: {e}", dir.display());
                self.free_bytes.store(u64::MAX, Relaxed);
                self.below_watermark.store(false, Relaxed);
                return true;
            }
        };
        self.free_bytes.store(free, Relaxed);
        let below = min_free > 0 && free < min_free;
        let was = self.below_watermark.swap(below, Relaxed);
        if below && !was {
            tracing::warn!(
                free,
                min_free_disk = min_free,
                "free space on {} is below min_free_disk: readings stay in memory until space is back",
                dir.display()
            );
        } else if was && !below {
            tracing::info!(
                free,
                min_free_disk = min_free,
                "free space on {} is back above min_free_disk: writing the queue again",
                dir.display()
            );
        }
        !below
    }

    /// Free bytes at the last check, if known.
    pub fn free(&self) -> Option<u64> {
        Some(self.free_bytes.load(Relaxed)).filter(|&f| f != u64::MAX)
    }

    /// Copies the queue's condition.
    pub fn set_queue(&self, c: &crate::queue::QueueCondition) {
        self.queue_failing.store(c.failing, Relaxed);
        self.queue_reopens.store(c.reopens, Relaxed);
        *self.queue_error.lock().unwrap_or_else(|e| e.into_inner()) = c.error.clone();
    }

    /// The queue's error while failing.
    pub fn queue_error(&self) -> Option<String> {
        self.queue_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// How often a repeating failure is summed up in the log.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Logs a repeating failure once when it starts, then at most one summary line per
/// [`LOG_EVERY`] with the count and the latest reason, and a line when it stops (at most one
/// per [`LOG_EVERY`] too, so a disk that flaps between working and failing stays readable): a
/// person reading the log during an incident sees what happens, not thousands of identical
/// lines.
#[derive(Debug)]
pub struct RateLog {
    what: &'static str,
    state: Mutex<RateState>,
}

#[derive(Debug, Default)]
struct RateState {
    /// Failures since the last line.
    unlogged: u64,
    /// Failures since the last recovery line.
    total: u64,
    /// The last line, failure or recovery.
    last_line: Option<Instant>,
    last_recovery_line: Option<Instant>,
    last_error: String,
}

fn due(t: Option<Instant>, now: Instant) -> bool {
    t.is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
}

impl RateLog {
    /// A limiter for failures of `what` (e.g. "queue commit").
    pub const fn new(what: &'static str) -> RateLog {
        RateLog {
            what,
            state: Mutex::new(RateState {
                unlogged: 0,
                total: 0,
                last_line: None,
                last_recovery_line: None,
                last_error: String::new(),
            }),
        }
    }

    /// Records a failure; returns the line written, if one was due.
    pub fn failed(&self, error: &dyn std::fmt::Display) -> Option<String> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.unlogged += 1;
        s.total += 1;
        s.last_error = error.to_string();
        let now = Instant::now();
        if !due(s.last_line, now) {
            return None;
        }
        let line = match s.last_line {
            Some(t) if s.unlogged > 1 => format!(
                "{} failed {} times in the last {} s: {}",
                self.what,
                s.unlogged,
                now.duration_since(t).as_secs(),
                s.last_error
            ),
            _ => format!("{} failed: {}", self.what, s.last_error),
        };
        s.unlogged = 0;
        s.last_line = Some(now);
        tracing::error!("{line}");
        Some(line)
    }

    /// Records a success; after failures, says so (the count waits for a later success if a
    /// recovery line was written less than [`LOG_EVERY`] ago).
    pub fn ok(&self) -> Option<String> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if s.total == 0 || !due(s.last_recovery_line, now) {
            return None;
        }
        let line = format!(
            "{} works again after {} failures (last: {})",
            self.what, s.total, s.last_error
        );
        s.total = 0;
        s.unlogged = 0;
        s.last_line = Some(now);
        s.last_recovery_line = Some(now);
        tracing::info!("{line}");
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_failures_make_one_line_then_a_recovery_line() {
        let r = RateLog::new("queue commit");
        let first = r.failed(&"No space left on device").unwrap();
        assert_eq!(first, "queue commit failed: No space left on device");
        for _ in 0..500 {
            assert!(r.failed(&"No space left on device").is_none());
        }
        // Pretend the last line is older than the period.
        r.state.lock().unwrap().last_line = Some(Instant::now() - LOG_EVERY);
        let summary = r.failed(&"No space left on device").unwrap();
        assert!(
            summary.starts_with("queue commit failed 501 times in the last 10 s"),
            "{summary}"
        );
        let back = r.ok().unwrap();
        assert!(back.contains("after 502 failures"), "{back}");
        assert!(r.ok().is_none());
        // Flapping: failures and successes right after a recovery line are only counted...
        for _ in 0..3 {
            assert!(r.failed(&"EIO").is_none());
            assert!(r.ok().is_none());
        }
        // ...and summed up once the period has passed.
        {
            let mut s = r.state.lock().unwrap();
            s.last_line = Some(Instant::now() - LOG_EVERY);
            s.last_recovery_line = s.last_line;
        }
        let back = r.ok().unwrap();
        assert!(back.contains("after 3 failures (last: EIO)"), "{back}");
    }

    #[test]
    fn measures_free_space_against_the_watermark() {
        let d = tempfile::tempdir().unwrap();
        let s = DiskStatus::default();
        assert!(s.check(d.path(), 0));
        let free = s.free().unwrap();
        assert!(free > 0);
        assert!(!s.check(d.path(), u64::MAX - 1));
        assert!(s.below_watermark.load(Relaxed));
        assert!(s.check(d.path(), 1));
        assert!(!s.below_watermark.load(Relaxed));
    }
}
