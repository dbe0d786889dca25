//! The load generator shared by `sim bench ingest` and `sim fleet`: many simulated agents, each
//! a real MQTT connection with its own credentials, sending [`protocols::batch::AgentBatch`]es
//! of realistic readings and honouring the acknowledgement protocol; and a measuring subscriber
//! that times what arrives.
//!
//! The load runs on a Tokio runtime of its own (its own threads), so that whatever it measures
//! in the same process (an embedded hub) keeps its runtime to itself.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use sim::load::{Load, LoadOptions, plan::FleetPlan};
//! let plan = FleetPlan::generate(10, 100, 1);
//! let mut load = Load::start(&plan, LoadOptions::new("127.0.0.1:1883")).await?;
//! tokio::time::sleep(std::time::Duration::from_secs(10)).await;
//! load.drain(std::time::Duration::from_secs(30)).await;
//! let counters = load.counters();
//! load.stop().await;
//! # Ok(()) }
//! ```

pub mod agent;
pub mod mqtt;
pub mod null_sink;
pub mod plan;
pub mod probe;
pub mod stats;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use agent::{AckMode, AgentSettings, Phase, Shared};
use plan::FleetPlan;
pub use probe::ProbeKind;
use stats::{CounterSnapshot, Counters, Histogram, SendTimes};

/// The measuring subscriber of a run.
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    /// Feeds (hub) or relayed batches (plain broker).
    pub kind: ProbeKind,
    /// The MQTT client id it connects with.
    pub client_id: String,
    /// User name and password, if the broker wants them.
    pub credentials: Option<(String, String)>,
}

/// How to run a load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The agents' behaviour.
    pub settings: AgentSettings,
    /// The measuring subscriber, if any.
    pub probe: Option<ProbeSpec>,
    /// Worker threads of the load's runtime.
    pub threads: usize,
    /// Latency of batches first sent before this much time has passed goes only into the
    /// overall histograms, not the steady-state ones (agents connecting, first contacts).
    pub warmup: Duration,
}

impl LoadOptions {
    /// Defaults against a hub at `target` (`HOST:PORT`): batches of 20 devices with one poll
    /// each, a window of 64, as fast as the window allows, no probe, one thread.
    pub fn new(target: &str) -> LoadOptions {
        LoadOptions {
            settings: AgentSettings {
                target: target.to_string(),
                spread: Vec::new(),
                ack: AckMode::Hub,
                devices_per_batch: 20,
                samples_per_device: 1,
                window: 64,
                ack_timeout: Duration::from_secs(10),
                batch_interval: None,
                stream: fresh_stream(),
            },
            probe: None,
            threads: 1,
            warmup: Duration::ZERO,
        }
    }
}

/// A queue incarnation number no earlier run used (the hub dedups by stream and seq).
pub fn fresh_stream() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1
}

/// Readings per batch, averaged over the plan's agents.
pub fn readings_per_batch(plan: &FleetPlan, settings: &AgentSettings) -> f64 {
    let per_agent: Vec<f64> = plan
        .agents
        .iter()
        .map(|a| {
            let per_device = a
                .devices
                .iter()
                .map(|d| d.kind.quantities().len() as f64)
                .sum::<f64>()
                / a.devices.len().max(1) as f64;
            per_device
                * settings.devices_per_batch.clamp(1, a.devices.len().max(1)) as f64
                * settings.samples_per_device.max(1) as f64
        })
        .collect();
    per_agent.iter().sum::<f64>() / per_agent.len().max(1) as f64
}

/// A running load.
pub struct Load {
    runtime: Option<tokio::runtime::Runtime>,
    phase: watch::Sender<Phase>,
    agents: Vec<JoinHandle<()>>,
    probe: Option<JoinHandle<Result<(), String>>>,
    shared: Arc<Shared>,
    probe_latency: Arc<Histogram>,
    started: Instant,
}

impl Load {
    /// Starts the runtime, connects the probe (subscribed before the first batch), then
    /// starts every agent of `plan`.
    pub async fn start(plan: &FleetPlan, opts: LoadOptions) -> anyhow::Result<Load> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.threads.max(1))
            .thread_name("load")
            .enable_all()
            .build()
            .context("starting the load's runtime")?;
        let started = Instant::now();
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            send_times: SendTimes::new(plan.agents.len(), started),
            ack_latency: Histogram::default(),
            recent: Histogram::default(),
            steady_from: started + opts.warmup,
            ack_steady: Histogram::default(),
            probe_steady: Histogram::default(),
            puback_steady: Histogram::default(),
        });
        let probe_latency = Arc::new(Histogram::default());
        let (phase, phase_rx) = watch::channel(Phase::Run);
        let probe = match &opts.probe {
            Some(spec) => {
                let index: HashMap<Arc<str>, usize> = match spec.kind {
                    ProbeKind::Feeds => plan
                        .agents
                        .iter()
                        .enumerate()
                        .flat_map(|(i, a)| a.devices.iter().map(move |d| (d.id.clone(), i)))
                        .collect(),
                    ProbeKind::Relay => plan
                        .agents
                        .iter()
                        .enumerate()
                        .map(|(i, a)| (Arc::from(a.id.as_str()), i))
                        .collect(),
                };
                let spec = spec.clone();
                let target = opts.settings.target.clone();
                let (sh, lat) = (shared.clone(), probe_latency.clone());
                let probe = runtime
                    .spawn(async move {
                        let creds = spec
                            .credentials
                            .as_ref()
                            .map(|(u, p)| (u.as_str(), p.as_str()));
                        probe::Probe::connect(
                            &target,
                            &spec.client_id,
                            creds,
                            spec.kind,
                            index,
                            sh,
                            lat,
                        )
                        .await
                    })
                    .await
                    .context("probe task")?
                    .context("connecting the measuring subscriber")?;
                let rx = phase_rx.clone();
                Some(runtime.spawn(probe.run(rx)))
            }
            None => None,
        };
        let settings = Arc::new(opts.settings.clone());
        let agents = plan
            .agents
            .iter()
            .enumerate()
            .map(|(i, a)| {
                runtime.spawn(agent::run(
                    i,
                    a.clone(),
                    settings.clone(),
                    shared.clone(),
                    phase_rx.clone(),
                ))
            })
            .collect();
        Ok(Load {
            runtime: Some(runtime),
            phase,
            agents,
            probe,
            shared,
            probe_latency,
            started,
        })
    }

    /// The counters so far.
    pub fn counters(&self) -> CounterSnapshot {
        self.shared.counters.snapshot()
    }

    /// First send to acknowledgement.
    pub fn ack_latency(&self) -> &Histogram {
        &self.shared.ack_latency
    }

    /// Probe latency since the last call of this (for progress reports): p50, p99, max in ms.
    pub fn take_recent(&self) -> (f64, f64, f64) {
        let h = &self.shared.recent;
        let r = (h.quantile_ms(0.5), h.quantile_ms(0.99), h.max_ms());
        h.reset();
        r
    }

    /// First send to arrival at the probe.
    pub fn probe_latency(&self) -> &Histogram {
        &self.probe_latency
    }

    /// Probe latency of batches first sent after the warm-up.
    pub fn probe_steady(&self) -> &Histogram {
        &self.shared.probe_steady
    }

    /// Acknowledgement latency of batches first sent after the warm-up.
    pub fn ack_steady(&self) -> &Histogram {
        &self.shared.ack_steady
    }

    /// Send to PUBACK after the warm-up (hub ack mode; empty in PUBACK mode).
    pub fn puback_steady(&self) -> &Histogram {
        &self.shared.puback_steady
    }

    /// When the load started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stops new batches and waits until every agent has its window acknowledged, at most
    /// `timeout`. True when everything sent was acknowledged.
    pub async fn drain(&mut self, timeout: Duration) -> bool {
        let _ = self.phase.send(Phase::Drain);
        let deadline = tokio::time::Instant::now() + timeout;
        for a in &mut self.agents {
            if tokio::time::timeout_at(deadline, a).await.is_err() {
                return false;
            }
        }
        // Finished handles are not polled again.
        self.agents.clear();
        true
    }

    /// Waits until the probe has received `n` messages or nothing arrived for `quiet`.
    pub async fn settle_probe(&self, n: u64, quiet: Duration) {
        let mut last = self.counters().probe_messages;
        let mut last_change = Instant::now();
        while last < n && last_change.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.counters().probe_messages;
            if now != last {
                last = now;
                last_change = Instant::now();
            }
        }
    }

    /// Stops everything and the runtime.
    pub async fn stop(mut self) {
        let _ = self.phase.send(Phase::Stop);
        for a in self.agents.drain(..) {
            let _ = a.await;
        }
        if let Some(p) = self.probe.take() {
            match p.await {
                Ok(Err(e)) => tracing::warn!("measuring subscriber: {e}"),
                Err(e) => tracing::warn!("measuring subscriber task: {e}"),
                Ok(Ok(())) => {}
            }
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.phase.send(Phase::Stop);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
