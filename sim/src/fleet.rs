//! `sim fleet`: a long-running load of simulated agents against any hub.
//!
//! Each agent is one MQTT connection speaking for its devices; every `1/rate` seconds it sends
//! one batch with a poll of each of its devices (the real agent's shape), keeps a window of
//! unacknowledged batches and sends again what the hub does not acknowledge.
//!
//! Credentials, one of:
//! - `--hub-config FILE`: the agents (with a plain `secret`) and their devices of an existing
//!   hub.toml;
//! - otherwise a fleet is generated (`--devices N`, `--devices-per-agent`, `--seed`) and its
//!   hub.toml written to `--write-config` (default `fleet-hub.toml`); start the hub with it
//!   (`hub --config fleet-hub.toml`). `--config-only` writes it and exits. The fleet keeps
//!   retrying until the hub accepts its agents, so the two may start in any order.
//!
//! Every `--report-every` it prints rates and latencies to stderr; on Ctrl-C (or after
//! `--duration`) it stops sending, waits for the last acknowledgements and prints one JSON
//! line like `sim bench ingest`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hub::config::HubConfig;

use crate::bench::{host_port, probe_app};
use crate::load::plan::FleetPlan;
use crate::load::{Load, LoadOptions, ProbeKind, ProbeSpec, readings_per_batch};

/// Arguments of `sim fleet`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The hub's MQTT address, `HOST:PORT` or `mqtt://HOST:PORT`.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub hub: String,
    /// Devices to simulate (generated fleet; with --hub-config, at most this many of its).
    #[arg(long)]
    pub devices: Option<usize>,
    /// Polls per second of every device (one batch per agent per poll round).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Devices behind each generated agent.
    #[arg(long, default_value_t = 50)]
    pub devices_per_agent: usize,
    /// Take agents and devices from this hub.toml.
    #[arg(long, value_name = "FILE", conflicts_with = "write_config")]
    pub hub_config: Option<PathBuf>,
    /// Where to write the generated fleet's hub.toml.
    #[arg(long, value_name = "FILE", default_value = "fleet-hub.toml")]
    pub write_config: PathBuf,
    /// Write the generated hub.toml and exit.
    #[arg(long)]
    pub config_only: bool,
    /// Seeds the generated secrets (the same seed writes the same hub.toml).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Unacknowledged batches per agent.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Stop after this long (runs until Ctrl-C otherwise).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// How often to print rates to stderr.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub report_every: Duration,
    /// Threads of the load's runtime.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// Runs the fleet.
pub async fn run(a: Args) -> anyhow::Result<()> {
    if !(a.rate > 0.0 && a.rate.is_finite()) {
        bail!("--rate must be a positive number of polls per second");
    }
    let (mut plan, probe) = match &a.hub_config {
        Some(path) => {
            let cfg = HubConfig::load(path).with_context(|| format!("{}", path.display()))?;
            let probe = cfg
                .apps
                .iter()
                .find(|app| {
                    app.secret.is_some() && app.grants.iter().any(|g| g == "#" || g == "feeds/#")
                })
                .map(|app| (app.id.clone(), app.secret.clone().unwrap_or_default()));
            (FleetPlan::from_hub_config(&cfg)?, probe)
        }
        None => {
            let n = a.devices.unwrap_or(1000);
            let per = a.devices_per_agent.max(1);
            let mut plan = FleetPlan::generate(n.div_ceil(per), per, a.seed);
            truncate(&mut plan, n);
            let app = probe_app(a.seed);
            let text = toml::to_string(&plan.hub_config(&app))?;
            std::fs::write(&a.write_config, text)
                .with_context(|| format!("writing {}", a.write_config.display()))?;
            eprintln!(
                "fleet: wrote {} ({} agents, {} devices); start the hub with `hub --config {}`",
                a.write_config.display(),
                plan.agents.len(),
                plan.device_count(),
                a.write_config.display()
            );
            if a.config_only {
                return Ok(());
            }
            (plan, Some((app.id, app.secret)))
        }
    };
    if a.hub_config.is_some()
        && let Some(n) = a.devices
    {
        truncate(&mut plan, n);
    }
    let target = host_port(&a.hub)?;
    let mut opts = LoadOptions::new(&target);
    opts.threads = a.threads;
    opts.settings.window = a.window.max(1);
    opts.settings.devices_per_batch = usize::MAX;
    opts.settings.samples_per_device = 1;
    opts.settings.batch_interval = Some(Duration::from_secs_f64(1.0 / a.rate));
    opts.probe = probe.map(|(id, secret)| ProbeSpec {
        kind: ProbeKind::Feeds,
        client_id: format!("{id}.fleet"),
        credentials: Some((id, secret)),
    });
    let per_batch = readings_per_batch(&plan, &opts.settings);
    eprintln!(
        "fleet: {} agents, {} devices against {target}: {:.0} readings/s expected",
        plan.agents.len(),
        plan.device_count(),
        per_batch * plan.agents.len() as f64 * a.rate
    );
    // The probe needs the hub up; without it the fleet still runs (latency to the ack).
    let load = match Load::start(&plan, opts.clone()).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fleet: no feed subscriber ({e:#}); measuring to the acknowledgement");
            opts.probe = None;
            Load::start(&plan, opts).await?
        }
    };
    run_until_stopped(load, &a).await
}

fn truncate(plan: &mut FleetPlan, devices: usize) {
    let mut left = devices;
    plan.agents.retain_mut(|agent| {
        if left == 0 {
            return false;
        }
        agent.devices.truncate(left);
        left -= agent.devices.len();
        true
    });
}

async fn run_until_stopped(mut load: Load, a: &Args) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut last = (load.counters(), Instant::now());
    let stop = async {
        match a.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(a.report_every) => {}
        }
        let c = load.counters();
        let dt = last.1.elapsed().as_secs_f64().max(1e-9);
        let lat = if load.probe_latency().count() > 0 {
            load.probe_latency()
        } else {
            load.ack_latency()
        };
        eprintln!(
            "fleet: t={:.0}s sent {:.0} readings/s, acked {:.0}/s, {} unacked batches, {} resent, \
             {} reconnects, latency p50 {:.2} ms p99 {:.2} ms",
            t0.elapsed().as_secs_f64(),
            (c.readings_sent - last.0.readings_sent) as f64 / dt,
            (c.readings_acked - last.0.readings_acked) as f64 / dt,
            c.batches_sent - c.batches_acked,
            c.resent,
            c.reconnects,
            lat.quantile_ms(0.5),
            lat.quantile_ms(0.99),
        );
        last = (c, Instant::now());
    }
    eprintln!("fleet: stopping; waiting for the last acknowledgements");
    let drained = load.drain(Duration::from_secs(30)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let c = load.counters();
    let lat = if load.probe_latency().count() > 0 {
        load.probe_latency()
    } else {
        load.ack_latency()
    };
    let out = serde_json::json!({
        "readings_per_s": (c.readings_acked as f64 / elapsed).round(),
        "msgs_per_s": (c.batches_acked as f64 / elapsed).round(),
        "p50_ms": (lat.quantile_ms(0.5) * 1000.0).round() / 1000.0,
        "p99_ms": (lat.quantile_ms(0.99) * 1000.0).round() / 1000.0,
        "sent": c.readings_sent,
        "stored": c.readings_acked,
        "lost": c.readings_sent as i64 - c.readings_acked as i64,
        "resent": c.resent,
        "reconnects": c.reconnects,
    });
    load.stop().await;
    println!("{out}");
    if !drained {
        bail!("not every batch was acknowledged within 30 s of stopping");
    }
    Ok(())
}
