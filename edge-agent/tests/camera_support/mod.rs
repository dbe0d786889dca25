//! Shared pieces of the camera tests: configs, waiting for messages, peer processes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edge_agent::camera::{CameraConfig, CameraMessage, CameraOutput, Reading};
use edge_agent::config::CameraSource;
use protocols::messages::{CameraEvent, EventPhase};
use protocols::quantity::{Quantity, Value};
use tokio::sync::mpsc;

/// A camera config from a source and extra `key = value` lines.
pub fn camera(id: &str, source: &str, extra: &str) -> CameraConfig {
    CameraConfig::from_entry(&entry(id, source, extra)).unwrap()
}

/// An agent.toml `[[camera]]` entry.
pub fn entry(id: &str, source: &str, extra: &str) -> CameraSource {
    toml::from_str(&format!("id = \"{id}\"\nsource = \"{source}\"\n{extra}")).unwrap()
}

/// Everything received, in order.
#[derive(Default)]
pub struct Received {
    pub all: Vec<CameraMessage>,
}

impl Received {
    pub fn events(&self) -> Vec<&CameraEvent> {
        self.all
            .iter()
            .filter_map(|m| match &m.output {
                CameraOutput::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    pub fn phases(&self) -> Vec<EventPhase> {
        self.events().iter().map(|e| e.phase).collect()
    }

    pub fn count(&self, phase: EventPhase) -> usize {
        self.phases().iter().filter(|p| **p == phase).count()
    }

    pub fn snapshots(&self) -> Vec<(&str, &[u8], u32, u32)> {
        self.all
            .iter()
            .filter_map(|m| match &m.output {
                CameraOutput::Snapshot {
                    event_id,
                    jpeg,
                    width,
                    height,
                } => Some((event_id.as_str(), jpeg.as_ref(), *width, *height)),
                _ => None,
            })
            .collect()
    }

    pub fn online(&self) -> Vec<bool> {
        self.all
            .iter()
            .filter_map(|m| match m.output {
                CameraOutput::Online(o) => Some(o),
                _ => None,
            })
            .collect()
    }

    pub fn readings(&self, q: Quantity) -> Vec<Reading> {
        self.all
            .iter()
            .filter_map(|m| match &m.output {
                CameraOutput::Readings(r) => Some(r.clone()),
                _ => None,
            })
            .flatten()
            .filter(|r| r.quantity == q)
            .collect()
    }

    pub fn numbers(&self, q: Quantity) -> Vec<f64> {
        self.readings(q)
            .into_iter()
            .map(|r| match r.value {
                Value::Number(v) => v,
                Value::Bool(b) => b as u8 as f64,
                Value::State(s) => s as f64,
            })
            .collect()
    }
}

/// Receives into `got` until `done(got)` holds; panics with `what` after `within`.
pub async fn until(
    rx: &mut mpsc::Receiver<CameraMessage>,
    got: &mut Received,
    within: Duration,
    what: &str,
    done: impl Fn(&Received) -> bool,
) {
    let deadline = Instant::now() + within;
    while !done(got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(m)) => got.all.push(m),
            Ok(None) => panic!("channel closed while waiting for {what}"),
            Err(_) => panic!(
                "no {what} within {within:?}; got {:?}",
                got.all.iter().map(short).collect::<Vec<_>>()
            ),
        }
    }
}

/// Receives whatever comes for `d`.
pub async fn soak(rx: &mut mpsc::Receiver<CameraMessage>, got: &mut Received, d: Duration) {
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        got.all.push(m);
    }
}

/// One line per message, for failure output.
pub fn short(m: &CameraMessage) -> String {
    match &m.output {
        CameraOutput::Event(e) => format!("{}:{:?}@{} {:?}", m.camera, e.phase, e.ts, e.boxes),
        CameraOutput::Snapshot { width, height, .. } => {
            format!("{}:snapshot {width}x{height}", m.camera)
        }
        CameraOutput::Readings(r) => format!(
            "{}:{}",
            m.camera,
            r.iter()
                .map(|r| format!("{}={:?}", r.quantity.name(), r.value))
                .collect::<Vec<_>>()
                .join(",")
        ),
        CameraOutput::Online(o) => format!("{}:online={o}", m.camera),
    }
}

/// Decodes a JPEG to RGB: (width, height, pixels).
pub fn decode_jpeg(jpeg: &[u8]) -> (usize, usize, Vec<u8>) {
    use zune_jpeg::zune_core::{colorspace::ColorSpace, options::DecoderOptions};
    let opts = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut d = zune_jpeg::JpegDecoder::new_with_options(jpeg, opts);
    let rgb = d.decode().expect("snapshot must be a valid JPEG");
    let (w, h) = d.dimensions().unwrap();
    (w, h, rgb)
}

/// A child process killed (and reaped) when dropped, also on panic.
pub struct Peer {
    pub child: Child,
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Peer {
    /// Starts `cmd` and waits for a stdout line starting with `ready` (returned).
    pub fn start(cmd: &mut Command, within: Duration) -> (Peer, String) {
        Peer::start_until(cmd, "ready", within)
    }

    /// Starts `cmd` and waits for a stdout line starting with `prefix` (returned).
    pub fn start_until(cmd: &mut Command, prefix: &str, within: Duration) -> (Peer, String) {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("peer starts");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = Peer { child, lines };
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match peer.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return (peer, l),
                Ok(_) => continue,
                Err(_) => {
                    let _ = peer.child.kill();
                    panic!("peer did not get ready within {within:?}");
                }
            }
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Debian python with GStreamer's introspection bindings (not a pyenv one).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Path of a file in `tests/peers/`.
pub fn peer_script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/peers")
        .join(name)
}
