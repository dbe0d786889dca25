//! `sim demo`: the whole simulated district (a later issue builds it on
//! [`crate::device::spawn_fleet`] and [`crate::world`]).

/// Arguments of `sim demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// MQTT listener of the embedded hub.
    #[arg(long)]
    pub mqtt_listen: Option<String>,
    /// HTTP listener of the embedded hub.
    #[arg(long)]
    pub http_listen: Option<String>,
    /// Data directory (default `data/demo`).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
}

/// Not built yet.
pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`sim demo` is not built yet")
}
