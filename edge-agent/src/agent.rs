//! The running agent: opens the queue, starts the stages, serves commands, publishes health,
//! and stops cleanly (open batch committed, `offline` said, queue synced).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use protocols::messages::Command;
use tokio::sync::{RwLock, mpsc, oneshot, watch};

use crate::batcher::{BatchLimits, Batcher, BatcherControl};
use crate::camera::CameraSupervisor;
use crate::camera_feed::{CameraFeed, CameraHealth};
use crate::commands::{self, AgentCommand, UpdateOffer};
use crate::config::{AgentConfig, AgentSection};
use crate::metrics::Metrics;
use crate::modbus::Pollers;
use crate::queue::{Queue, QueueError};
use crate::update::{self, InstallOptions};
use crate::uplink::{ClientCert, Uplink, UplinkError, UplinkSettings};

/// redb page cache of the queue: small on purpose (see `Queue::open`).
const QUEUE_CACHE_BYTES: usize = 1 << 20;
/// How long a `set` may take end to end.
const SET_TIMEOUT: Duration = Duration::from_secs(10);

/// How the agent ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Stopped by a signal.
    Stopped,
    /// A `reboot` command or an installed update: the supervisor should start it again.
    Reboot,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The queue.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The uplink.
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    /// The cameras.
    #[error(transparent)]
    Camera(#[from] crate::camera::CameraError),
    /// The metrics listener.
    #[error("metrics_listen {addr}: {source}")]
    Metrics {
        /// The address as configured.
        addr: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// The uplink settings of a config.
pub fn uplink_settings(a: &AgentSection) -> UplinkSettings {
    UplinkSettings {
        agent: a.id.clone(),
        secret: a.secret.clone(),
        hubs: a.hub.as_slice().to_vec(),
        keepalive: a.keepalive.0,
        ca: a.ca.clone(),
        // Config validation makes sure both or neither are set.
        client_cert: a
            .cert
            .clone()
            .zip(a.key.clone())
            .map(|(cert, key)| ClientCert { cert, key }),
        max_inflight: a.max_inflight,
        ack_timeout: a.ack_timeout.0,
    }
}

/// Fields a `reload` cannot change without restarting the session or the queue.
fn restart_fields_changed(old: &AgentSection, new: &AgentSection) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("id", old.id != new.id);
    check("secret", old.secret != new.secret);
    check("hub", old.hub != new.hub);
    check("data_dir", old.data_dir != new.data_dir);
    check(
        "queue_max_bytes",
        old.queue_max_bytes != new.queue_max_bytes,
    );
    check("keepalive", old.keepalive != new.keepalive);
    check("ca", old.ca != new.ca);
    check("cert", old.cert != new.cert);
    check("key", old.key != new.key);
    check("max_inflight", old.max_inflight != new.max_inflight);
    check("ack_timeout", old.ack_timeout != new.ack_timeout);
    check("metrics_listen", old.metrics_listen != new.metrics_listen);
    changed
}

struct Shared {
    config: RwLock<AgentConfig>,
    pollers: RwLock<Pollers>,
    metrics: Arc<Metrics>,
    queue: Arc<Queue>,
    uplink: Uplink,
    samples: mpsc::Sender<crate::modbus::DeviceSample>,
    batcher: mpsc::Sender<BatcherControl>,
    health_interval: watch::Sender<Duration>,
    reboot: mpsc::Sender<()>,
    updating: std::sync::atomic::AtomicBool,
    /// The running cameras (`None` once stopped).
    cameras: tokio::sync::Mutex<Option<CameraSupervisor>>,
    camera_health: Arc<CameraHealth>,
}

/// Runs the agent until a signal (Ctrl-C, SIGTERM) or a reboot request.
pub async fn run(config: AgentConfig) -> Result<Exit, AgentError> {
    run_until(config, stop_signal()).await
}

/// Completes on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match sigterm.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// [`run`] for an agent embedded in another program (the simulated district, tests): it stops
/// as cleanly as on a signal when `stop` completes, and ignores signals itself.
pub async fn run_until(
    config: AgentConfig,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Exit, AgentError> {
    let a = config.file.agent.clone();
    // A freshly installed version is on trial until it reaches the hub (see update::boot_check).
    let installed_at = update::install_dir_of_running_binary();
    let mut on_trial = false;
    if let Some(dir) = &installed_at {
        match update::boot_check(dir) {
            Ok(update::BootCheck::RolledBack { from, to }) => {
                tracing::error!(%from, %to, "version on trial never reached the hub; rolled back");
                return Ok(Exit::Reboot);
            }
            Ok(update::BootCheck::Trial { version, start }) => {
                tracing::warn!(%version, start, max = update::MAX_PENDING_STARTS, "running a new version on trial");
                on_trial = true;
            }
            Ok(update::BootCheck::Confirmed) => {}
            Err(e) => tracing::error!("update trial check: {e}"),
        }
    }
    let metrics = Metrics::new();
    let queue = {
        let (dir, max) = (a.data_dir.clone(), a.queue_max_bytes);
        tokio::task::spawn_blocking(move || Queue::open(&dir, max, QUEUE_CACHE_BYTES))
            .await
            .map_err(|e| QueueError::Dir {
                path: a.data_dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })??
    };
    let queue = Arc::new(queue);
    let stats = queue.stats()?;
    tracing::info!(
        agent = %a.id, version = crate::VERSION, stream = stats.stream, backlog = stats.depth,
        next_seq = stats.next_seq, "starting"
    );

    let (sample_tx, sample_rx) = mpsc::channel(4096);
    let (ctl_tx, ctl_rx) = mpsc::channel(8);
    let (committed_tx, committed_rx) = watch::channel(stats.next_seq - 1);
    let committed_watch = committed_tx.clone();
    let batcher = Batcher {
        agent: a.id.clone(),
        queue: queue.clone(),
        data_dir: a.data_dir.clone(),
        limits: BatchLimits::new(a.batch_max_readings, a.batch_max_age.0, a.queue_max_bytes)
            .buffered(a.buffer_readings, a.min_free_disk.bytes()),
        metrics: metrics.clone(),
        committed: committed_tx,
    };
    let batcher_task = tokio::spawn(batcher.run(sample_rx, ctl_rx));

    let (uplink, uplink_tasks, mut cmd_rx) = Uplink::start(
        &uplink_settings(&a),
        queue.clone(),
        metrics.clone(),
        committed_rx,
    )?;

    let metrics_task = match &a.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Metrics {
                    addr: addr.clone(),
                    source,
                })?;
            let q = queue.clone();
            tracing::info!(%addr, "serving metrics");
            Some(tokio::spawn(crate::metrics::serve(
                listener,
                metrics.clone(),
                Arc::new(move || q.stats().ok()),
            )))
        }
        None => None,
    };

    let pollers = Pollers::start(&config, sample_tx.clone(), metrics.clone());
    metrics.set_devices(pollers.stats());
    // Cameras: events and snapshots straight into the queue, readings into the batches.
    let camera_health = CameraHealth::new();
    let (camera_tx, camera_rx) = mpsc::channel(256);
    let cameras = crate::camera::start_cameras(&config.file.camera, camera_tx)?;
    let camera_task = tokio::spawn(
        CameraFeed {
            queue: queue.clone(),
            committed: committed_watch.clone(),
            uplink: uplink.clone(),
            samples: sample_tx.clone(),
            health: camera_health.clone(),
            metrics: metrics.clone(),
        }
        .run(camera_rx),
    );
    let (health_interval, health_rx) = watch::channel(a.health_interval.0);
    let (reboot_tx, mut reboot_rx) = mpsc::channel(1);
    let shared = Arc::new(Shared {
        config: RwLock::new(config),
        pollers: RwLock::new(pollers),
        metrics: metrics.clone(),
        queue: queue.clone(),
        uplink: uplink.clone(),
        samples: sample_tx,
        batcher: ctl_tx,
        health_interval,
        reboot: reboot_tx,
        updating: Default::default(),
        cameras: tokio::sync::Mutex::new(Some(cameras)),
        camera_health,
    });
    let health_task = tokio::spawn(health_loop(shared.clone(), health_rx));
    if let (true, Some(dir)) = (on_trial, installed_at) {
        let uplink = uplink.clone();
        tokio::spawn(async move {
            if uplink.until_connected().await {
                match tokio::task::spawn_blocking(move || update::confirm(&dir)).await {
                    Ok(Ok(())) => tracing::info!("new version reached the hub; update confirmed"),
                    Ok(Err(e)) => tracing::error!("confirming the update: {e}"),
                    Err(_) => {}
                }
            }
        });
    }

    let mut stop = std::pin::pin!(stop);
    let exit = loop {
        tokio::select! {
            cmd = cmd_rx.recv() => match cmd {
                Some(payload) => handle_command(&shared, payload).await,
                None => break Exit::Stopped,
            },
            _ = reboot_rx.recv() => break Exit::Reboot,
            _ = &mut stop => break Exit::Stopped,
        }
    };

    tracing::info!(?exit, "stopping");
    health_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    // Stop the cameras (their last events and snapshots still go into the queue), stop
    // polling, commit what is open, say goodbye, make the queue durable.
    if let Some(cameras) = shared.cameras.lock().await.take() {
        cameras.shutdown().await;
    }
    if tokio::time::timeout(Duration::from_secs(10), camera_task)
        .await
        .is_err()
    {
        tracing::warn!("camera outputs not all committed at exit");
    }
    {
        let mut p = shared.pollers.write().await;
        let old = std::mem::replace(&mut *p, Pollers::empty());
        old.stop().await;
    }
    let (done_tx, done_rx) = oneshot::channel();
    if shared
        .batcher
        .send(BatcherControl::Flush(done_tx))
        .await
        .is_ok()
    {
        let _ = tokio::time::timeout(Duration::from_secs(10), done_rx).await;
    }
    batcher_task.abort();
    uplink.shutdown(uplink_tasks, Duration::from_secs(3)).await;
    let q = queue.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || q.sync()).await {
        tracing::error!("queue sync at exit: {e}");
    }
    Ok(exit)
}

async fn health_loop(shared: Arc<Shared>, mut interval: watch::Receiver<Duration>) {
    let mut connection = shared.uplink.connection();
    let mut uplink_alive = true;
    loop {
        let every = *interval.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = interval.changed() => continue,
            // A camera went on- or offline: tell the hub now, not at the next interval.
            _ = shared.camera_health.changed() => {}
            // Every (re)connect: a change seen while the link was down would otherwise wait a
            // whole interval, and the hub wants the backlog's size after an outage.
            r = connection.changed(), if uplink_alive => match r {
                Ok(()) if *connection.borrow_and_update() => {}
                Ok(()) => continue,
                Err(_) => {
                    uplink_alive = false;
                    continue;
                }
            },
        }
        let source = shared.config.read().await.file.agent.link_source.clone();
        let link = crate::health::read_link(source.as_deref()).await;
        let (dir, min_free) = {
            let c = shared.config.read().await;
            (
                c.file.agent.data_dir.clone(),
                c.file.agent.min_free_disk.bytes(),
            )
        };
        let q = shared.queue.clone();
        let m = shared.metrics.clone();
        let stats = tokio::task::spawn_blocking(move || {
            // Fresh figures even while the batcher has nothing to commit.
            m.disk.check(&dir, min_free);
            let stats = q.stats().ok();
            m.disk.set_queue(&q.condition());
            stats
        })
        .await
        .ok()
        .flatten();
        let agent = shared.config.read().await.file.agent.id.clone();
        let mut devices = shared.metrics.devices();
        devices.extend(shared.camera_health.list());
        let mut h = crate::health::with_disk(
            crate::health::build(
                &agent,
                shared.metrics.uptime(),
                stats.as_ref(),
                &devices,
                link,
                protocols::time::now_ms(),
            ),
            &shared.metrics.disk,
        );
        h.hub = shared.metrics.hub();
        if shared.uplink.is_connected() && shared.uplink.publish_health(&h) {
            shared.metrics.health_published.fetch_add(1, Relaxed);
        }
    }
}

async fn answer(shared: &Shared, result: protocols::messages::CommandResult) {
    if result.ok {
        shared.metrics.commands_ok.fetch_add(1, Relaxed);
    } else {
        shared.metrics.commands_failed.fetch_add(1, Relaxed);
        tracing::warn!(id = %result.id, "command failed: {}", result.error.as_deref().unwrap_or(""));
    }
    shared.uplink.publish_result(&result).await;
}

async fn handle_command(shared: &Arc<Shared>, payload: Vec<u8>) {
    let (cmd, parsed) = match commands::parse_payload(&payload) {
        Ok(x) => x,
        Err((Some(id), e)) => return answer(shared, commands::failure(&id, None, e)).await,
        Err((None, e)) => {
            shared.metrics.commands_failed.fetch_add(1, Relaxed);
            tracing::warn!("cannot answer a command without an id: {e}");
            return;
        }
    };
    tracing::info!(id = %cmd.id, name = %cmd.name, device = ?cmd.device, "command");
    match parsed {
        AgentCommand::Set { device, values } => {
            // A slow device must not hold up other commands.
            let shared = shared.clone();
            tokio::spawn(async move {
                let result = {
                    let pollers = shared.pollers.read().await;
                    pollers.set(&device, values, SET_TIMEOUT).await
                };
                let r = match result {
                    Ok(back) => commands::success(&cmd.id, Some(device), &back),
                    Err(e) => commands::failure(&cmd.id, Some(device), e),
                };
                answer(&shared, r).await;
            });
        }
        AgentCommand::Reboot => {
            answer(shared, commands::success(&cmd.id, None, &[])).await;
            let _ = shared.reboot.try_send(());
        }
        AgentCommand::Reload => {
            let r = reload(shared).await;
            let r = match r {
                Ok(n) => {
                    let mut ok = commands::success(&cmd.id, None, &[]);
                    ok.error = None;
                    tracing::info!(devices = n, "configuration reloaded");
                    ok
                }
                Err(e) => commands::failure(&cmd.id, None, e),
            };
            answer(shared, r).await;
        }
        AgentCommand::Update(offer) => start_update(shared, cmd, offer).await,
    }
}

async fn reload(shared: &Arc<Shared>) -> Result<usize, String> {
    let path = shared
        .config
        .read()
        .await
        .path
        .clone()
        .ok_or("the agent was not started from a file")?;
    let p = path.clone();
    let new = tokio::task::spawn_blocking(move || AgentConfig::load(&p))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reload refused, the running configuration stays: {e}"))?;
    let changed = restart_fields_changed(&shared.config.read().await.file.agent, &new.file.agent);
    if !changed.is_empty() {
        return Err(format!(
            "reload refused: agent.{} changed, which needs `reboot`",
            changed.join(", agent.")
        ));
    }
    let n = new.file.modbus.len() + new.file.camera.len();
    if let Some(cameras) = shared.cameras.lock().await.as_mut() {
        let r = cameras
            .reload(&new.file.camera)
            .await
            .map_err(|e| format!("reload refused, cameras: {e}"))?;
        if !(r.started.is_empty() && r.stopped.is_empty() && r.restarted.is_empty()) {
            tracing::info!(started = ?r.started, stopped = ?r.stopped, restarted = ?r.restarted, "cameras reloaded");
        }
        shared.camera_health.retain(&cameras.ids());
    }
    {
        let mut pollers = shared.pollers.write().await;
        let old = std::mem::replace(&mut *pollers, Pollers::empty());
        old.stop().await;
        *pollers = Pollers::start(&new, shared.samples.clone(), shared.metrics.clone());
        shared.metrics.set_devices(pollers.stats());
    }
    let a = &new.file.agent;
    let _ = shared
        .batcher
        .send(BatcherControl::Limits(
            BatchLimits::new(a.batch_max_readings, a.batch_max_age.0, a.queue_max_bytes)
                .buffered(a.buffer_readings, a.min_free_disk.bytes()),
        ))
        .await;
    shared.health_interval.send_replace(a.health_interval.0);
    *shared.config.write().await = new;
    Ok(n)
}

async fn start_update(shared: &Arc<Shared>, cmd: Command, offer: UpdateOffer) {
    let cfg = shared.config.read().await;
    let Some(key) = cfg.file.agent.update_key.clone() else {
        drop(cfg);
        return answer(
            shared,
            commands::failure(&cmd.id, None, update::UpdateError::NoKey),
        )
        .await;
    };
    let install_dir = cfg
        .file
        .agent
        .install_dir
        .clone()
        .or_else(update::install_dir_of_running_binary);
    let Some(install_dir) = install_dir else {
        drop(cfg);
        return answer(
            shared,
            commands::failure(&cmd.id, None, update::UpdateError::NoInstallDir),
        )
        .await;
    };
    let dest: PathBuf = cfg
        .file
        .agent
        .data_dir
        .join("updates")
        .join(format!("edge-agent-{}.bundle", offer.version));
    let config_path = cfg.path.clone();
    drop(cfg);
    if shared.updating.swap(true, Relaxed) {
        return answer(
            shared,
            commands::failure(&cmd.id, None, "an update is already running"),
        )
        .await;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        tracing::info!(version = %offer.version, url = %offer.url, "downloading update");
        let result = tokio::task::spawn_blocking(move || {
            let got = update::download::download(
                &offer.url,
                &dest,
                &offer.sha256,
                &update::download::DownloadOptions::default(),
            )
            .map_err(update::UpdateError::Download)?;
            let opts = InstallOptions {
                install_dir,
                config: config_path,
                allow_downgrade: false,
                check_timeout: Duration::from_secs(60),
            };
            let installed = update::install(&got.path, &key, &opts);
            let _ = std::fs::remove_file(&got.path);
            installed
        })
        .await;
        shared.updating.store(false, Relaxed);
        match result {
            Ok(Ok(installed)) => {
                let mut r = commands::success(&cmd.id, None, &[]);
                r.values.insert(
                    "version".into(),
                    protocols::messages::Scalar::Text(installed.version.clone()),
                );
                answer(&shared, r).await;
                tracing::info!(version = %installed.version, "update installed; restarting into it");
                let _ = shared.reboot.try_send(());
            }
            Ok(Err(e)) => answer(&shared, commands::failure(&cmd.id, None, e)).await,
            Err(e) => answer(&shared, commands::failure(&cmd.id, None, e)).await,
        }
    });
}
