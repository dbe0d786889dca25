//! Logs a person can read during an incident: an error that repeats for every message (a
//! full disk fails each append) is logged once when it starts and then as a count per interval,
//! not once per message.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Repeated errors of one kind, logged at most once per interval with their count, so an
/// incident reads as a few lines ("store append failed 18,431 times in the last 10 s: ...")
/// instead of one line per message.
#[derive(Debug)]
pub struct ErrorBurst {
    what: &'static str,
    every: Duration,
    /// In a burst: lets `clear` on the hot path skip the lock.
    active: AtomicBool,
    state: Mutex<BurstState>,
}

#[derive(Debug)]
struct BurstState {
    since: Option<Instant>,
    count: u64,
    last: String,
}

impl ErrorBurst {
    /// Errors described as `what` ("store append failed"), summarized every `every`.
    pub const fn new(what: &'static str, every: Duration) -> ErrorBurst {
        ErrorBurst {
            what,
            every,
            active: AtomicBool::new(false),
            state: Mutex::new(BurstState {
                since: None,
                count: 0,
                last: String::new(),
            }),
        }
    }

    /// Records one error: the first of a burst is logged at once, the rest in a summary line
    /// at the end of each interval (written by the next error after it).
    pub fn record(&self, error: &dyn std::fmt::Display) {
        let mut st = self.state.lock();
        let now = Instant::now();
        match st.since {
            None => {
                tracing::error!("{}: {error}", self.what);
                st.since = Some(now);
                st.count = 0;
                self.active.store(true, Relaxed);
            }
            Some(since) => {
                st.count += 1;
                if now.duration_since(since) >= self.every {
                    tracing::error!(
                        "{} {} times in the last {:?}: {error}",
                        self.what,
                        st.count,
                        now.duration_since(since)
                    );
                    st.since = Some(now);
                    st.count = 0;
                }
            }
        }
        st.last.clear();
        use std::fmt::Write as _;
        let _ = write!(st.last, "{error}");
    }

    /// Ends a burst (the operation worked again), logging what was not summarized yet.
    pub fn clear(&self) {
        if !self.active.load(Relaxed) {
            return;
        }
        let mut st = self.state.lock();
        self.active.store(false, Relaxed);
        if st.since.take().is_some() {
            if st.count > 0 {
                tracing::error!(
                    "{} {} more times before it worked again; last: {}",
                    self.what,
                    st.count,
                    st.last
                );
            } else {
                tracing::info!("{}: works again", self.what);
            }
        }
        st.count = 0;
    }
}
