//! The engines a hub cluster runs on, started from the Debian binaries the way a test, a
//! benchmark or `sim demo --cluster` needs them: on free loopback ports, in temporary
//! directories, stopped (or killed) by the caller and removed when dropped.
//!
//! - [`postgres::Postgres`]: one PostgreSQL server (`initdb`, then the postmaster itself as the
//!   child, so a test can kill it or stop it with `pg_ctl stop -m immediate` and start it again
//!   on the same data).
//! - [`nats::NatsCluster`]: `nats-server` nodes with JetStream, routed into one cluster; each
//!   node can be killed (SIGKILL) and started again on its store directory.
//!
//! Nothing here touches a server the user runs: every engine gets its own directory and ports,
//! and the Debian services (`postgresql`, `nats-server`) are left as they are.

pub mod nats;
pub mod ports;
pub mod postgres;

use std::time::Duration;

/// What a hub cluster runs on: a NATS JetStream cluster and one PostgreSQL, stopped when
/// dropped.
pub struct Engines {
    /// The NATS nodes.
    pub nats: nats::NatsCluster,
    /// The store of record.
    pub pg: postgres::Postgres,
}

impl Engines {
    /// Starts `nats_nodes` NATS nodes and one PostgreSQL; blocks until both take clients.
    pub fn start(nats_nodes: usize) -> Result<Engines, EngineError> {
        Ok(Engines {
            nats: nats::NatsCluster::start(nats_nodes)?,
            pg: postgres::Postgres::start()?,
        })
    }
}

/// Why an engine could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A program the engine needs is not installed.
    #[error("{program} not found ({hint}); run scripts/setup-peers.sh")]
    Missing {
        /// The program looked for.
        program: String,
        /// Where it was looked for.
        hint: String,
    },
    /// A program could not be run or failed.
    #[error("{what}: {detail}")]
    Failed {
        /// What was being done.
        what: String,
        /// The error or the program's output.
        detail: String,
    },
    /// The engine did not become ready in time.
    #[error("{what} not ready after {waited:?}; log: {log}")]
    NotReady {
        /// Which engine.
        what: String,
        /// How long it was waited for.
        waited: Duration,
        /// The end of its log.
        log: String,
    },
    /// File system trouble in the engine's directory.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The last `max` bytes of a log file, for error messages.
fn log_tail(path: &std::path::Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(b) => {
            let from = b.len().saturating_sub(max);
            String::from_utf8_lossy(&b[from..]).into_owned()
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// Polls `ready` every 50 ms until it says yes or `limit` passes. Engines give no event to
/// wait on before their port answers, so this polls the port (or the monitoring endpoint).
fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if ready() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
