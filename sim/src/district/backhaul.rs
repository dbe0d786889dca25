//! The cellular backhaul of a cabinet or station: a TCP relay between its agent and the hub
//! that the scenario can cut and restore, as when a 5G link drops.
//!
//! Cutting closes every relayed connection and refuses new ones until the link is restored;
//! the agent notices, keeps polling into its durable queue, reconnects with backoff and
//! catches up once the link is back, and the hub sees the agent (and its devices) go offline
//! and come back. The agent's modem status file (`link_source`) is written beside it so its
//! health reports a signal that collapses with the link.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::debug;

/// A cuttable relay to the hub (or to each hub of a cluster: one port per hub, all cut
/// together, as they share the one modem).
#[derive(Debug)]
pub struct Backhaul {
    addrs: Vec<SocketAddr>,
    up: watch::Sender<bool>,
    link_file: PathBuf,
    tasks: Vec<JoinHandle<()>>,
}

impl Backhaul {
    /// Starts relaying `127.0.0.1:0` to `hub`; `link_file` is the agent's modem status file.
    pub async fn start(hub: SocketAddr, link_file: PathBuf) -> std::io::Result<Backhaul> {
        Backhaul::start_to(&[hub], link_file).await
    }

    /// Starts relaying a port on `127.0.0.1` to each of `hubs` (the `i`-th of
    /// [`Backhaul::addrs`] leads to `hubs[i]`).
    pub async fn start_to(hubs: &[SocketAddr], link_file: PathBuf) -> std::io::Result<Backhaul> {
        if hubs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a backhaul needs a hub",
            ));
        }
        let (up, up_rx) = watch::channel(true);
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for &hub in hubs {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(listener.local_addr()?);
            tasks.push(tokio::spawn(relay(listener, hub, up_rx.clone())));
        }
        let b = Backhaul {
            addrs,
            up,
            link_file,
            tasks,
        };
        b.write_signal(0.0).await;
        Ok(b)
    }

    /// Where the agent connects (to the first hub).
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Where the agent connects to each hub, in the order given to [`Backhaul::start_to`].
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Whether the link is up.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Cuts (`false`) or restores (`true`) the link.
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }

    /// Writes the modem's view of the link for demo time `t` (a gently varying signal, or
    /// none while cut).
    pub async fn write_signal(&self, t: f64) {
        let text = if self.is_up() {
            let wobble = (t / 97.0).sin() * 3.0;
            format!(
                "rssi={}\nrsrp={}\nsinr={}\n",
                (-67.0 + wobble).round(),
                (-96.0 + wobble).round(),
                (14.0 + wobble).round()
            )
        } else {
            "rssi=-113\nrsrp=-140\nsinr=-10\n".to_string()
        };
        // The agent reads the whole file; write-then-rename so it never sees half of it.
        let tmp = self.link_file.with_extension("link.tmp");
        if tokio::fs::write(&tmp, text).await.is_ok() {
            let _ = tokio::fs::rename(&tmp, &self.link_file).await;
        }
    }
}

impl Drop for Backhaul {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn relay(listener: TcpListener, hub: SocketAddr, up: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                if !*up.borrow() {
                    // No link: the connection attempt fails at once.
                    drop(stream);
                    continue;
                }
                connections.spawn(pipe(stream, hub, up.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn pipe(mut agent: TcpStream, hub: SocketAddr, mut up: watch::Receiver<bool>) {
    let Ok(mut upstream) = TcpStream::connect(hub).await else {
        return;
    };
    let _ = agent.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut agent, &mut upstream) => {
            debug!(?r, "backhaul connection ended");
        }
        _ = up.wait_for(|u| !*u) => debug!("backhaul cut"),
    }
}
