//! `hub`: the central hub binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use hub::config::HubConfig;
use hub::server::Server;

/// The central hub of the district sensing gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// hub.toml; without it the hub runs on built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// MQTT listen address (repeatable); replaces the config's list.
    #[arg(long = "mqtt-listen", value_name = "ADDR")]
    mqtt_listen: Vec<SocketAddr>,
    /// HTTP listen address.
    #[arg(long = "http-listen", value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Data directory.
    #[arg(long = "data-dir", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a hub.toml and exit: non-zero with a message naming the bad key.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // OpenSSL clients (mosquitto_pub) send the IP they dial as SNI, which rustls
                // ignores with a warning per connection: noise, not news.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,rustls::msgs::handshake=error")
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::CheckConfig { file }) = &cli.command {
        let cfg = HubConfig::load(file)?;
        hub::twin::controls::Controls::load(&cfg)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        hub::api::dashboard::Site::load(&cfg)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        println!(
            "{}: ok ({} devices, {} agents, {} apps, {} rules)",
            file.display(),
            cfg.devices.len(),
            cfg.agents.len(),
            cfg.apps.len(),
            cfg.rules.len()
        );
        return Ok(());
    }
    let mut cfg = match &cli.config {
        Some(path) => HubConfig::load(path)?,
        None => HubConfig::default(),
    };
    if !cli.mqtt_listen.is_empty() {
        cfg.hub.mqtt_listen = cli.mqtt_listen.iter().map(|a| a.to_string()).collect();
    }
    if let Some(a) = cli.http_listen {
        cfg.hub.http_listen = a.to_string();
    }
    if let Some(d) = cli.data_dir {
        cfg.hub.data_dir = d;
    }
    cfg.validate().context("configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(cfg))
}

/// Opens the store, starts the ingress and the hub, serves until SIGINT/SIGTERM.
async fn serve(cfg: HubConfig) -> anyhow::Result<()> {
    let server = Server::start(cfg).await.context("starting the hub")?;
    eprintln!(
        "hub: MQTT on {}, HTTP on http://{}",
        server
            .mqtt_addrs()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        server.http_addr()
    );
    reload_on_hangup(&server, shutdown_signal()).await;
    tracing::info!("stopping: closing the ingress, draining the pipeline");
    server.shutdown().await.context("closing the store")?;
    tracing::info!("stopped");
    Ok(())
}

/// Reloads the rules from the config file on every SIGHUP until `stop` completes. A bad rule
/// is logged (one line naming it) and the running rules stay.
async fn reload_on_hangup(server: &Server, stop: impl std::future::Future<Output = ()>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP: {e}");
                stop.await;
                return;
            }
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = hup.recv() => match server.hub().reload_rules() {
                    Ok(r) => tracing::info!(
                        rules = r.rules, added = ?r.added, changed = ?r.changed,
                        removed = ?r.removed, "SIGHUP: rules reloaded"
                    ),
                    Err(e) => tracing::error!("SIGHUP: rules not reloaded, the running rules stay: {e}"),
                },
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = server;
        stop.await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
