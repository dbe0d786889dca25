//! `sim fleet`: load from many direct devices (a later issue builds it).

/// Arguments of `sim fleet`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The hub's MQTT address.
    #[arg(long)]
    pub hub: Option<String>,
    /// Number of devices.
    #[arg(long)]
    pub devices: Option<u32>,
    /// Messages per second per device.
    #[arg(long)]
    pub rate: Option<f64>,
}

/// Not built yet.
pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`sim fleet` is not built yet")
}
