//! A simulated device at run time: one Tokio task owns the firmware node, samples it on a
//! timer and serves Modbus requests that connection tasks (TCP clients, the RTU pty) pass it.
//!
//! Start one with [`spawn_tcp`] (Modbus TCP on an address) or [`spawn_rtu_pty`] (Modbus RTU
//! on a pseudo-terminal), or many at once with [`spawn_fleet`]. Dropping a
//! [`RunningDevice`] stops its task and every connection it serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use firmware::modbus::rtu;
use firmware::modbus::tcp::{self, UnitFilter};
use protocols::profile::DeviceProfile;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

mod handle;
pub mod rtu_pty;
pub mod tcp_server;

pub use handle::DeviceHandle;
use handle::Request;

use crate::node::SimNode;
use crate::peripherals::pins::LampCircuit;
use crate::world::Site;

/// Connections one device serves at once; more are refused (a real gateway has a limit too).
pub const MAX_CONNECTIONS: usize = 32;

/// What a simulated device is.
#[derive(Clone, Debug)]
pub struct DeviceSpec {
    /// Its id (names the log lines and seeds the sensor noise through the site).
    pub id: String,
    /// Its profile; the model picks the firmware node.
    pub profile: DeviceProfile,
    /// Its unit address (1..=247).
    pub unit: u8,
    /// Where it stands.
    pub site: Site,
    /// How often the firmware samples its sensors.
    pub sample_interval: Duration,
}

impl DeviceSpec {
    /// A device sampling once a second.
    pub fn new(id: impl Into<String>, profile: DeviceProfile, unit: u8, site: Site) -> DeviceSpec {
        DeviceSpec {
            id: id.into(),
            profile,
            unit,
            site,
            sample_interval: Duration::from_secs(1),
        }
    }
}

/// A device running in this process.
#[derive(Debug)]
pub struct RunningDevice {
    /// Its id.
    pub id: String,
    /// Its model.
    pub model: &'static str,
    /// Where it serves: `tcp://ADDR` or `rtu:///dev/pts/N`.
    pub endpoint: String,
    /// The TCP address, for TCP devices.
    pub addr: Option<SocketAddr>,
    /// The pty's slave path, for RTU devices.
    pub pty_path: Option<PathBuf>,
    /// Its site, to change what it senses.
    pub site: Site,
    /// Requests without a transport.
    pub handle: DeviceHandle,
    /// Streetlights: the lamp circuit the firmware drives (PWM duty, relay).
    pub lamp: Option<LampCircuit>,
    task: JoinHandle<()>,
}

impl RunningDevice {
    /// Stops the device and waits for its task to end.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The device task's state.
struct Device {
    id: String,
    node: SimNode,
    slave: rtu::Slave,
    filter: UnitFilter,
    started: Instant,
}

/// Node time starts at 1 s: the warm-up sample at 0 has started the slow probes, so the first
/// regular sample already collects them.
const WARM_UP_MS: u64 = 1_000;

impl Device {
    fn build(spec: &DeviceSpec) -> anyhow::Result<Device> {
        anyhow::ensure!(
            (1..=247).contains(&spec.unit),
            "unit {} is outside 1..=247",
            spec.unit
        );
        let mut node = SimNode::build(&spec.profile, &spec.site)?;
        // Warm up so every point is readable as soon as the device listens.
        for t in [0, WARM_UP_MS] {
            if let Err(part) = node.sample(t) {
                warn!(device = %spec.id, ?part, "part failed during warm-up");
            }
        }
        Ok(Device {
            id: spec.id.clone(),
            node,
            slave: rtu::Slave::new(spec.unit),
            filter: UnitFilter { unit: spec.unit },
            started: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        WARM_UP_MS + self.started.elapsed().as_millis() as u64
    }

    fn sample(&mut self) {
        let now = self.now_ms();
        if let Err(part) = self.node.sample(now) {
            debug!(device = %self.id, ?part, "part failed; its points read as unavailable");
        }
    }

    fn serve(&mut self, request: Request) {
        match request {
            Request::Tcp { header, pdu, reply } => {
                debug!(device = %self.id, transaction = header.transaction, unit = header.unit,
                       function = pdu.first().copied().unwrap_or(0), pdu = %hex(&pdu), "modbus tcp request");
                let mut out = [0u8; tcp::MAX_ADU];
                let n = tcp::serve(self.node.data_model(), self.filter, &header, &pdu, &mut out);
                let _ = reply.send(n.map(|n| out[..n].to_vec()));
            }
            Request::Rtu { frame, reply } => {
                debug!(device = %self.id, frame = %hex(&frame), "modbus rtu frame");
                let answer = match self.slave.process(&frame, self.node.data_model()) {
                    Ok(r) => Some(r.to_vec()),
                    Err(why) => {
                        debug!(device = %self.id, ?why, "no reply");
                        None
                    }
                };
                let _ = reply.send(answer);
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn run(
    mut device: Device,
    mut rx: mpsc::Receiver<Request>,
    listener: Option<TcpListener>,
    handle: DeviceHandle,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => device.sample(),
            Some(request) = rx.recv() => device.serve(request),
            accepted = accept(&listener) => {
                match accepted {
                    Ok((stream, peer)) if connections.len() < MAX_CONNECTIONS => {
                        debug!(device = %device.id, %peer, "client connected");
                        connections.spawn(tcp_server::serve_connection(stream, peer, handle.clone()));
                    }
                    Ok((_, peer)) => warn!(device = %device.id, %peer, "too many connections; refused"),
                    Err(e) => {
                        warn!(device = %device.id, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// The next client, or never when the device has no listener.
async fn accept(
    listener: &Option<TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

fn start(
    spec: &DeviceSpec,
    listener: Option<TcpListener>,
) -> anyhow::Result<(
    DeviceHandle,
    JoinHandle<()>,
    &'static str,
    Option<LampCircuit>,
)> {
    let device = Device::build(spec).with_context(|| format!("device {}", spec.id))?;
    let model = device.node.model();
    let lamp = device.node.lamp_circuit();
    let (tx, rx) = mpsc::channel(64);
    let handle = DeviceHandle::new(tx);
    let task = tokio::spawn(run(
        device,
        rx,
        listener,
        handle.clone(),
        spec.sample_interval,
    ));
    Ok((handle, task, model, lamp))
}

/// Starts a device serving Modbus TCP on `listen` (port 0 picks a free port).
pub async fn spawn_tcp(spec: DeviceSpec, listen: SocketAddr) -> anyhow::Result<RunningDevice> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let (handle, task, model, lamp) = start(&spec, Some(listener))?;
    info!(device = %spec.id, model, %addr, unit = spec.unit, "modbus tcp device up");
    Ok(RunningDevice {
        id: spec.id,
        model,
        endpoint: format!("tcp://{addr}"),
        addr: Some(addr),
        pty_path: None,
        site: spec.site,
        handle,
        lamp,
        task,
    })
}

/// Starts a device serving Modbus RTU on a new pseudo-terminal; clients open
/// [`RunningDevice::pty_path`] as a serial port.
pub async fn spawn_rtu_pty(spec: DeviceSpec) -> anyhow::Result<RunningDevice> {
    let pty = rtu_pty::Pty::open().context("opening a pseudo-terminal")?;
    let path = pty.path().to_path_buf();
    let (handle, device_task, model, lamp) = start(&spec, None)?;
    let serve = rtu_pty::serve(pty, handle.clone());
    // One task owns both: the pty loop, and the device task aborted with it.
    let task = tokio::spawn(async move {
        struct AbortOnDrop(JoinHandle<()>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let _device = AbortOnDrop(device_task);
        if let Err(e) = serve.await {
            warn!(error = %e, "rtu pty stopped");
        }
    });
    info!(device = %spec.id, model, path = %path.display(), unit = spec.unit, "modbus rtu device up");
    Ok(RunningDevice {
        id: spec.id,
        model,
        endpoint: format!("rtu://{}", path.display()),
        addr: None,
        pty_path: Some(path),
        site: spec.site,
        handle,
        lamp,
        task,
    })
}

/// Starts many TCP devices (the district's field). Each gets its own task and listener; on
/// the first failure the devices started so far are stopped and the error returned.
pub async fn spawn_fleet(
    specs: impl IntoIterator<Item = (DeviceSpec, SocketAddr)>,
) -> anyhow::Result<Vec<RunningDevice>> {
    let mut running = Vec::new();
    for (spec, listen) in specs {
        running.push(spawn_tcp(spec, listen).await?);
    }
    Ok(running)
}
