//! The edge agent as the end-to-end tests run it: `video-agent --config agent.toml` does what
//! `edge-agent --config agent.toml` does (the same runtime, `edge_agent::agent::run`), built as
//! part of this package so a test can start, kill -9 and restart it as its own process.

use std::process::ExitCode;

fn main() -> ExitCode {
    tests::main_with_config("video-agent", |config| {
        let cfg = edge_agent::config::AgentConfig::load(config)?;
        tests::runtime()?.block_on(edge_agent::agent::run(cfg))?;
        Ok(())
    })
}
