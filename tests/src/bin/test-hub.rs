//! The hub as the end-to-end crash tests run it: `test-hub --config hub.toml` runs
//! `hub::server::Server` (what the `hub` binary runs), prints one line
//! `ready mqtt=ADDR http=ADDR` on stdout once it serves, and stops cleanly on SIGTERM or
//! SIGINT. Built in this package so a test can start, kill -9 and restart it as its own
//! process (`env!("CARGO_BIN_EXE_test-hub")`), and built with the hub's `failpoints` feature:
//! `HUB_FAILPOINT=abort_after_store:N` aborts it right after the Nth durable agent batch,
//! before its acknowledgement.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use hub::config::HubConfig;
use hub::server::Server;

fn main() -> ExitCode {
    tests::main_with_config("test-hub", |config| {
        let cfg = HubConfig::load(config)?;
        tests::runtime()?.block_on(serve(cfg))
    })
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
