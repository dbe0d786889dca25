//! The camera catalog (`GET /api/v1/cameras`): identity and place from hub.toml, live state
//! from the camera's twin.
//!
//! A camera is online while its agent is connected, the agent's latest health does not list
//! it offline (the agent says so within a second of the stream stalling), and — once it has
//! reported stream readings at all — its latest `camera_fps` reading is at most
//! [`STREAM_STALE_MS`] old (readings stopped: the camera was dropped from the agent, or its
//! pipeline is stuck). `fps` and `bitrate_kbps` are the latest readings, 0 while offline.

use protocols::access::Principal;
use protocols::messages::{CameraEntry, Scalar};
use protocols::time::parse_rfc3339;

use crate::registry::Device;
use crate::twin::Twins;

/// Stream readings older than this (4.5 default camera `health_interval`s) mean the stream is
/// gone.
pub const STREAM_STALE_MS: i64 = 45_000;

/// Whether a device is a camera.
pub fn is_camera(d: &Device) -> bool {
    &*d.kind == "camera"
}

/// Whether an app may see a camera: a grant must match `v1/feeds/camera/{id}`.
pub fn visible(p: &Principal, d: &Device) -> bool {
    is_camera(d) && p.grants_topic(&d.feed_topic)
}

/// The catalog entry of a camera at hub time `now_ms`.
pub fn entry(twins: &Twins, d: &Device, now_ms: i64) -> CameraEntry {
    let twin = twins.document(d.idx);
    let reading = |q: &str| {
        twin.reported.get(q).and_then(|r| match r.value {
            Scalar::Number(v) => Some((v, parse_rfc3339(&r.ts).ok())),
            _ => None,
        })
    };
    let fps = reading("camera_fps");
    let stale = fps
        .and_then(|(_, ts)| ts)
        .is_some_and(|ts| now_ms - ts > STREAM_STALE_MS);
    let online = twin.online && !stale;
    let live = |r: Option<(f64, Option<i64>)>| {
        if online {
            r.map_or(0.0, |(v, _)| v)
        } else {
            0.0
        }
    };
    CameraEntry {
        id: d.id.to_string(),
        gb_id: d.config.gb_id.clone().unwrap_or_default(),
        name: d.config.name.clone().unwrap_or_else(|| d.id.to_string()),
        lat: d.config.lat,
        lon: d.config.lon,
        dept: d.config.dept.clone().unwrap_or_default(),
        online,
        stream: d.config.stream.clone().unwrap_or_default(),
        fps: live(fps),
        bitrate_kbps: live(reading("camera_bitrate")),
    }
}
