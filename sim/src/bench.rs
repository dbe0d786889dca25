//! `sim bench`: benchmarks (a later issue builds them).

/// Arguments of `sim bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to measure (e.g. `ingest`).
    pub what: Option<String>,
    /// Target, e.g. `mqtt://HOST:PORT` (an embedded hub by default).
    #[arg(long)]
    pub target: Option<String>,
    /// Measure plain broker relay instead of the hub.
    #[arg(long)]
    pub relay_only: bool,
    /// How long to run, e.g. `10s`.
    #[arg(long)]
    pub duration: Option<String>,
}

/// Not built yet.
pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`sim bench` is not built yet")
}
