//! Cameras as sensing devices: pictures in, motion events, snapshots and stream health out.
//!
//! ```text
//!  source task (RTSP | HTTP JPEG | file | synthetic)
//!    -> bounded picture channel (drops to the next keyframe when analysis is behind)
//!    -> analysis thread: decode (OpenH264 / JPEG luma) -> motion (at detect_fps)
//!       -> events (hysteresis) -> JPEG snapshot of the start -> outbox
//!    -> forwarder task -> the agent's bounded channel of CameraMessage
//! ```
//!
//! Each camera has its own source task (or thread), analysis thread and forwarder; decoding
//! never runs on the async I/O threads, and a slow consumer never blocks a camera (updates and
//! health readings are coalesced while it is slow; starts, ends and snapshots are kept).
//!
//! Start everything with [`start_cameras`]; the [`CameraSupervisor`] it returns stops, reloads
//! and reports on the cameras. Events carry `stream`/`seq` as `None`: the agent's durable queue
//! fills them in.
//!
//! Where the outputs go (the agent's side): [`CameraOutput::Event`] as JSON on
//! `v1/agents/{agent}/events`, [`CameraOutput::Snapshot`] as the JPEG bytes on
//! `v1/agents/{agent}/snapshots/{event_id}` (both through the durable queue, the snapshot after
//! its start), [`CameraOutput::Readings`] as readings of the camera device in the agent's
//! batches, [`CameraOutput::Online`] as the camera's online state (the catalog's `online`).

mod analysis;
pub mod decode;
pub mod events;
pub mod motion;
mod outbox;
pub mod picture;
pub mod settings;
pub mod snapshot;
mod source;
pub mod stream;
mod supervisor;
pub mod synthetic;

use bytes::Bytes;
use protocols::messages::CameraEvent;
use protocols::quantity::{Quantity, Value};

pub use analysis::Pipeline;
pub use events::EventIds;
pub use outbox::OutboxStats;
pub use settings::{CameraConfig, CameraSettings, SourceSpec};
pub use stream::{LatencySummary, StreamState};
pub use supervisor::{CameraError, CameraStatus, CameraSupervisor, ReloadSummary, start_cameras};

/// One reading of the camera device.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reading {
    /// `camera_fps`, `camera_bitrate`, `camera_frames_lost` or `motion`.
    pub quantity: Quantity,
    /// In the quantity's canonical unit.
    pub value: Value,
    /// Epoch milliseconds.
    pub ts_ms: i64,
}

/// What a camera produces.
#[derive(Clone, Debug, PartialEq)]
pub enum CameraOutput {
    /// A motion event (`start`, `update`, `end`) for `v1/agents/{id}/events`; `stream` and
    /// `seq` are left for the durable queue.
    Event(CameraEvent),
    /// The JPEG of an event's start, for `v1/agents/{id}/snapshots/{event_id}`. Follows its
    /// `start` event.
    Snapshot {
        /// The event id (the event's `snapshot` field).
        event_id: String,
        /// The JPEG file.
        jpeg: Bytes,
        /// Its width in pixels.
        width: u32,
        /// Its height in pixels.
        height: u32,
    },
    /// Readings of the camera device: every `health_interval` `camera_fps` (Hz),
    /// `camera_bitrate` (kbit/s) and `camera_frames_lost` (a counter since the camera started);
    /// and `motion` true/false with each start/end.
    Readings(Vec<Reading>),
    /// The camera came online (pictures flow) or went offline (unreachable or stalled).
    Online(bool),
}

/// A [`CameraOutput`] with the camera it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct CameraMessage {
    /// The camera's device id.
    pub camera: String,
    /// What it produced.
    pub output: CameraOutput,
}
