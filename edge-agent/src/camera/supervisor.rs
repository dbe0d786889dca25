//! Starting, stopping, reloading and reporting on the agent's cameras.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use protocols::config::ConfigError;
use tokio::sync::mpsc;

use super::CameraMessage;
use super::analysis;
use super::events::EventIds;
use super::outbox::{Outbox, OutboxStats};
use super::settings::CameraConfig;
use super::source::{self, SourceRunner};
use super::stream::{FrameSink, LatencySummary, StreamState};
use crate::config::CameraSource;

/// Pictures waiting between a camera's source and its analysis before some are dropped.
const PICTURE_QUEUE: usize = 16;

/// How long a stopping camera may take to hand its last messages (the end of an event) to
/// the agent's channel before they are given up.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Why cameras could not be started.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    /// A `[[camera]]` entry is invalid; nothing was started or changed.
    #[error("camera[{index}].{error}")]
    Config {
        /// Position in the config.
        index: usize,
        /// The problem, with its key.
        error: ConfigError,
    },
    /// The same id twice.
    #[error("camera `{0}` is already running")]
    Duplicate(String),
    /// Called outside a Tokio runtime.
    #[error("cameras must be started inside a Tokio runtime")]
    NoRuntime,
    /// A thread could not be started.
    #[error("starting camera `{0}`: {1}")]
    Spawn(String, std::io::Error),
}

/// What a reload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Cameras new in the config.
    pub started: Vec<String>,
    /// Cameras no longer in the config.
    pub stopped: Vec<String>,
    /// Cameras whose source or settings changed.
    pub restarted: Vec<String>,
    /// Cameras left running as they were.
    pub unchanged: Vec<String>,
}

/// A camera's state for status pages and metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct CameraStatus {
    /// Device id.
    pub id: String,
    /// The source, credentials hidden.
    pub source: String,
    /// `None` until the first connection attempt finished.
    pub online: Option<bool>,
    /// Pictures received.
    pub frames: u64,
    /// Encoded bytes received.
    pub bytes: u64,
    /// Pictures lost (see [`StreamState::lost`]).
    pub frames_lost: u64,
    /// Pictures decoded.
    pub frames_decoded: u64,
    /// Pictures analysed for motion.
    pub frames_analysed: u64,
    /// Disposable pictures not decoded.
    pub frames_skipped: u64,
    /// Sessions (connects and reconnects).
    pub sessions: u64,
    /// Lighting changes ignored.
    pub lighting_changes: u64,
    /// Events started.
    pub events: u64,
    /// The event in progress.
    pub active_event: Option<String>,
    /// The last connection problem.
    pub last_error: Option<String>,
    /// Receipt-to-output latency of recent event starts.
    pub start_latency: Option<LatencySummary>,
    /// The camera's outbox.
    pub outbox: OutboxStats,
}

struct Running {
    config: CameraConfig,
    source: SourceRunner,
    analysis: std::thread::JoinHandle<()>,
    forwarder: tokio::task::JoinHandle<()>,
    state: Arc<StreamState>,
    outbox: Arc<Outbox>,
}

/// The agent's cameras. Dropping it without [`shutdown`](Self::shutdown) stops the sources but
/// does not wait for the last messages.
pub struct CameraSupervisor {
    tx: mpsc::Sender<CameraMessage>,
    ids: Arc<EventIds>,
    rt: tokio::runtime::Handle,
    cameras: BTreeMap<String, Running>,
}

/// Starts every `[[camera]]` of the agent's config, sending what they produce into `tx`.
/// Must be called inside a Tokio runtime. Validates all entries before starting any.
pub fn start_cameras(
    entries: &[CameraSource],
    tx: mpsc::Sender<CameraMessage>,
) -> Result<CameraSupervisor, CameraError> {
    let configs = parse(entries)?;
    let mut sup = CameraSupervisor::new(tx)?;
    for cfg in configs {
        sup.start(cfg)?;
    }
    Ok(sup)
}

fn parse(entries: &[CameraSource]) -> Result<Vec<CameraConfig>, CameraError> {
    entries
        .iter()
        .enumerate()
        .map(|(index, e)| {
            CameraConfig::from_entry(e).map_err(|error| CameraError::Config { index, error })
        })
        .collect()
}

impl CameraSupervisor {
    /// A supervisor with no cameras yet, with its own event id source.
    pub fn new(tx: mpsc::Sender<CameraMessage>) -> Result<CameraSupervisor, CameraError> {
        CameraSupervisor::with_event_ids(tx, EventIds::new())
    }

    /// A supervisor sharing an event id source (ids stay unique across supervisors).
    pub fn with_event_ids(
        tx: mpsc::Sender<CameraMessage>,
        ids: Arc<EventIds>,
    ) -> Result<CameraSupervisor, CameraError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| CameraError::NoRuntime)?;
        Ok(CameraSupervisor {
            tx,
            ids,
            rt,
            cameras: BTreeMap::new(),
        })
    }

    /// Starts one camera.
    pub fn start(&mut self, cfg: CameraConfig) -> Result<(), CameraError> {
        if self.cameras.contains_key(&cfg.id) {
            return Err(CameraError::Duplicate(cfg.id));
        }
        let id = cfg.id.clone();
        let state = Arc::new(StreamState::default());
        let outbox = Outbox::new();
        let (frames_tx, frames_rx) = std::sync::mpsc::sync_channel(PICTURE_QUEUE);
        let analysis = {
            let (cfg, ids, state, outbox) =
                (cfg.clone(), self.ids.clone(), state.clone(), outbox.clone());
            std::thread::Builder::new()
                .name(format!("cam-{id}"))
                .spawn(move || analysis::run(cfg, ids, state, frames_rx, outbox))
                .map_err(|e| CameraError::Spawn(id.clone(), e))?
        };
        let source = source::spawn(&cfg, FrameSink::new(frames_tx, state.clone()), &self.rt)
            .map_err(|e| CameraError::Spawn(id.clone(), e))?;
        let forwarder = self
            .rt
            .spawn(outbox.clone().forward(id.clone(), self.tx.clone()));
        tracing::info!(camera = %id, source = %cfg.source.display(), "camera started");
        self.cameras.insert(
            id,
            Running {
                config: cfg,
                source,
                analysis,
                forwarder,
                state,
                outbox,
            },
        );
        Ok(())
    }

    /// Stops one camera, after its last messages (an event's end, `Online(false)`) reached the
    /// channel or `DRAIN_GRACE` passed. False if no such camera runs.
    pub async fn stop(&mut self, id: &str) -> bool {
        let Some(r) = self.cameras.remove(id) else {
            return false;
        };
        stop_running(id, r).await;
        true
    }

    /// Brings the running cameras in line with a new config: stops removed ones, restarts
    /// changed ones, starts new ones, leaves the rest alone. An invalid entry changes nothing.
    pub async fn reload(&mut self, entries: &[CameraSource]) -> Result<ReloadSummary, CameraError> {
        let configs = parse(entries)?;
        let mut summary = ReloadSummary::default();
        let wanted: BTreeMap<String, CameraConfig> =
            configs.into_iter().map(|c| (c.id.clone(), c)).collect();
        let running: Vec<String> = self.cameras.keys().cloned().collect();
        for id in running {
            match wanted.get(&id) {
                None => {
                    self.stop(&id).await;
                    summary.stopped.push(id);
                }
                Some(c) if self.cameras.get(&id).is_some_and(|r| r.config != *c) => {
                    self.stop(&id).await;
                    self.start(c.clone())?;
                    summary.restarted.push(id);
                }
                Some(_) => summary.unchanged.push(id),
            }
        }
        for (id, c) in wanted {
            if !self.cameras.contains_key(&id) {
                self.start(c)?;
                summary.started.push(id);
            }
        }
        Ok(summary)
    }

    /// The state of every running camera, by id.
    pub fn status(&self) -> Vec<CameraStatus> {
        self.cameras
            .iter()
            .map(|(id, r)| {
                let s = &r.state;
                CameraStatus {
                    id: id.clone(),
                    source: r.config.source.display(),
                    online: s.online(),
                    frames: s.frames(),
                    bytes: s.bytes(),
                    frames_lost: s.lost(),
                    frames_decoded: s.decoded(),
                    frames_analysed: s.analysed(),
                    frames_skipped: s.skipped(),
                    sessions: s.sessions(),
                    lighting_changes: s.lighting_changes(),
                    events: s.events(),
                    active_event: s.active_event(),
                    last_error: s.last_error(),
                    start_latency: s.start_latency(),
                    outbox: r.outbox.stats(),
                }
            })
            .collect()
    }

    /// Ids of the running cameras.
    pub fn ids(&self) -> Vec<String> {
        self.cameras.keys().cloned().collect()
    }

    /// Stops every camera, waiting (up to a grace period each) for their last messages to
    /// reach the channel; keep receiving from it meanwhile.
    pub async fn shutdown(mut self) {
        let all = std::mem::take(&mut self.cameras);
        let stops = all
            .into_iter()
            .map(|(id, r)| async move { stop_running(&id, r).await });
        futures_util::future::join_all(stops).await;
    }
}

async fn stop_running(id: &str, r: Running) {
    r.source.stop();
    let Running {
        source,
        analysis,
        mut forwarder,
        ..
    } = r;
    // The source hangs up its picture channel, the analysis thread ends the event in
    // progress and closes the outbox, and the forwarder drains it.
    let joined = tokio::task::spawn_blocking(move || {
        source.join();
        let _ = analysis.join();
    })
    .await;
    if joined.is_err() {
        tracing::warn!(camera = %id, "camera threads did not end cleanly");
    }
    if tokio::time::timeout(DRAIN_GRACE, &mut forwarder)
        .await
        .is_err()
    {
        forwarder.abort();
        tracing::warn!(camera = %id, "camera stopped with messages the agent did not take");
    }
    tracing::info!(camera = %id, "camera stopped");
}

impl Drop for CameraSupervisor {
    fn drop(&mut self) {
        for r in self.cameras.values() {
            r.source.stop();
        }
    }
}
