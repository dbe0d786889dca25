//! The hub as the end-to-end crash tests run it: `test-hub --config hub.toml` runs
//! `hub::server::Server` (what the `hub` binary runs), prints one line
//! `ready mqtt=ADDR http=ADDR` on stdout once it serves, and stops cleanly on SIGTERM or
//! SIGINT. Built in this package so a test can start, kill -9 and restart it as its own
//! process (`env!("CARGO_BIN_EXE_test-hub")`), and built with the hub's `failpoints` feature:
//! `HUB_FAILPOINT=abort_after_store:N` aborts it right after the Nth durable agent batch,
//! before its acknowledgement.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use hub::config::HubConfig;
use hub::server::Server;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let config = match (args.next().as_deref(), args.next()) {
        (Some("--config"), Some(path)) => path,
        _ => {
            eprintln!("usage: test-hub --config hub.toml");
            return ExitCode::FAILURE;
        }
    };
    match run(Path::new(&config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("test-hub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &Path) -> anyhow::Result<()> {
    let cfg = HubConfig::load(config)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve(cfg))
}

async fn serve(cfg: HubConfig) -> anyhow::Result<()> {
    let server = Server::start(cfg).await.context("starting the hub")?;
    let mqtt = server
        .mqtt_addrs()
        .first()
        .context("the hub listens on no MQTT address")?;
    let mut out = std::io::stdout();
    writeln!(out, "ready mqtt={mqtt} http={}", server.http_addr())?;
    out.flush()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    server.shutdown().await.context("closing the store")?;
    Ok(())
}
