//! Fault injection for crash tests (cargo feature `failpoints`, off by default).
//!
//! `HUB_FAILPOINT=abort_after_store:N` makes the hub `abort()` right after the Nth agent batch
//! (counted from the start of the process, first deliveries only, not duplicates) is durable in
//! the store and before anything about it leaves the hub: no PUBACK, no agent ack, no feed.
//! That is the one moment a crash must not lose or double a batch, made deterministic
//! instead of a race (`tests/tests/agent_hub_reliability.rs`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::Stored;
use series_store::Appended;

/// The environment variable read once, at the first durable batch.
pub const ENV: &str = "HUB_FAILPOINT";

/// What the environment asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Abort after the Nth stored agent batch.
    AbortAfterStore(u64),
}

fn parse(text: &str) -> Option<Plan> {
    let n = text
        .strip_prefix("abort_after_store:")?
        .trim()
        .parse()
        .ok()?;
    (n > 0).then_some(Plan::AbortAfterStore(n))
}

fn plan() -> Option<Plan> {
    static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
    *PLAN.get_or_init(|| {
        let text = std::env::var(ENV).ok()?;
        let plan = parse(&text);
        if plan.is_none() {
            tracing::error!("{ENV}={text:?} is not `abort_after_store:N` (N > 0); ignored");
        }
        plan
    })
}

/// Called by the store stage with each finished append, before it goes on to be acknowledged.
pub fn after_store(stored: &Stored) {
    static STORED: AtomicU64 = AtomicU64::new(0);
    let Some(Plan::AbortAfterStore(n)) = plan() else {
        return;
    };
    if stored.prepared.ack.is_none() || !matches!(stored.result, Ok(Appended::Stored)) {
        return;
    }
    if STORED.fetch_add(1, Relaxed) + 1 == n {
        eprintln!("hub: failpoint {ENV}=abort_after_store:{n}: aborting before the ack");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_abort_after_store_with_a_positive_count() {
        assert_eq!(parse("abort_after_store:3"), Some(Plan::AbortAfterStore(3)));
        assert_eq!(parse("abort_after_store:0"), None);
        assert_eq!(parse("abort_after_store:x"), None);
        assert_eq!(parse("abort_before_store:1"), None);
    }
}
