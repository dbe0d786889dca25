//! The edge agent as the end-to-end tests run it: `video-agent --config agent.toml` does what
//! `edge-agent --config agent.toml` does (the same runtime, `edge_agent::agent::run`), built as
//! part of this package so a test can start, kill -9 and restart it as its own process.

use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let config = match (args.next().as_deref(), args.next()) {
        (Some("--config"), Some(path)) => path,
        _ => {
            eprintln!("usage: video-agent --config agent.toml");
            return ExitCode::FAILURE;
        }
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("video-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: &str) -> anyhow::Result<()> {
    let cfg = edge_agent::config::AgentConfig::load(std::path::Path::new(config))?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(edge_agent::agent::run(cfg))?;
    Ok(())
}
