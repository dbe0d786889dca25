//! JSON documents of the contract: feeds, twins, alerts, commands, health, camera events,
//! dead letters, status and API errors.
//!
//! Maps are `BTreeMap`s so documents are deterministic (stable diffs, stable retained bytes).

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::quantity::{Quality, Quantity, Value, ValueKind};
use crate::topic::AlertLevel;

/// A value as it appears in JSON: a number, a boolean or an enum state's name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Scalar {
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(f64),
    /// An enum state.
    Text(String),
}

impl Scalar {
    /// The JSON form of a canonical value of a quantity.
    pub fn from_value(quantity: Quantity, value: Value) -> Scalar {
        match (quantity.kind(), value) {
            (ValueKind::Enum(states), Value::State(i)) => match states.get(i as usize) {
                Some(s) => Scalar::Text(String::from(*s)),
                None => Scalar::Number(i as f64),
            },
            (_, Value::Bool(b)) => Scalar::Bool(b),
            (_, v) => Scalar::Number(v.as_f64()),
        }
    }

    /// The canonical value of a quantity for this JSON value, if it has the right type.
    pub fn to_value(&self, quantity: Quantity) -> Option<Value> {
        match (quantity.kind(), self) {
            (ValueKind::Number, Scalar::Number(v)) if v.is_finite() => Some(Value::Number(*v)),
            (ValueKind::Bool, Scalar::Bool(b)) => Some(Value::Bool(*b)),
            (ValueKind::Enum(_), Scalar::Text(s)) => quantity.state_index(s).map(Value::State),
            _ => None,
        }
    }
}

/// A location in WGS 84 degrees.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Location {
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
}

/// One normalized value in a feed message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedValue {
    /// The value in the canonical unit.
    pub value: Scalar,
    /// The canonical unit.
    pub unit: String,
    /// How far it can be trusted.
    pub quality: Quality,
}

/// A normalized device update on `v1/feeds/{kind}/{device}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Feed {
    /// The device.
    pub device: String,
    /// Its device kind (`streetlight`, `water_level`, `camera`, ...).
    pub kind: String,
    /// Its owning department.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dept: Option<String>,
    /// Time of the reading (RFC 3339 UTC, milliseconds).
    pub ts: String,
    /// The device's or agent's sequence number, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Where the device is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    /// Values by quantity name.
    pub values: BTreeMap<String, FeedValue>,
}

/// A reported value in a twin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportedValue {
    /// The value.
    pub value: Scalar,
    /// The canonical unit.
    pub unit: String,
    /// When it was measured (RFC 3339).
    pub ts: String,
    /// Its quality, when not good.
    #[serde(default, skip_serializing_if = "is_good")]
    pub quality: Quality,
}

fn is_good(q: &Quality) -> bool {
    *q == Quality::Good
}

/// A device twin on `v1/twin/{device}` (retained).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Twin {
    /// The device.
    pub device: String,
    /// Its device kind (`streetlight`, `water_level`, `camera`, ...).
    pub kind: String,
    /// Grows by one with every change of the document.
    pub version: u64,
    /// Whether the device (or its agent's link to it) is up.
    pub online: bool,
    /// Latest reported values by quantity.
    pub reported: BTreeMap<String, ReportedValue>,
    /// Desired values by quantity.
    pub desired: BTreeMap<String, Scalar>,
    /// Desired values the reported state does not match yet.
    pub delta: BTreeMap<String, Scalar>,
    /// When the document last changed (RFC 3339).
    pub updated_at: String,
    /// The latest commands sent to bring reported state to desired state, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<TwinCommand>,
}

/// Where a command the hub sent for desired state stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CommandState {
    /// Sent (and resent with backoff) until reported state matches or it times out.
    Pending,
    /// The device or agent answered `ok`; waiting for reported state to match.
    Acknowledged,
    /// Reported state matches.
    Done,
    /// Refused by the device or agent (`ok: false`), or timed out.
    Failed,
    /// Replaced by a newer command for the same device.
    Superseded,
}

/// A command in a twin's `commands`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TwinCommand {
    /// The command's id.
    pub id: String,
    /// Where it stands.
    pub state: CommandState,
    /// The values it sets.
    pub args: BTreeMap<String, Scalar>,
    /// How often it was sent.
    pub attempts: u32,
    /// When it was first sent (RFC 3339).
    pub sent: String,
    /// When its state last changed (RFC 3339).
    pub updated: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A desired-state update on `v1/twin/{device}/desired` or `PATCH .../desired`: quantity names
/// to values, plus an optional `version` for optimistic locking.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DesiredUpdate {
    /// The twin version the writer saw; refused if the twin has moved on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Desired values by quantity name.
    #[serde(flatten)]
    pub values: BTreeMap<String, Scalar>,
}

/// Lifecycle state of an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AlertState {
    /// Raised and not yet acknowledged.
    Active,
    /// An operator has seen it; the condition still holds.
    Acknowledged,
    /// The condition is over.
    Cleared,
}

/// An alert on `v1/alerts/{level}/{device}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alert {
    /// Unique id.
    pub id: String,
    /// The rule that raised it.
    pub rule: String,
    /// The device.
    pub device: String,
    /// The device's kind.
    pub kind: String,
    /// The quantity the rule watches, if any (silence rules have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<String>,
    /// Warning level.
    pub level: AlertLevel,
    /// Lifecycle state.
    pub state: AlertState,
    /// The latest value that kept the rule firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The threshold crossed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Time of the latest change (RFC 3339).
    pub ts: String,
    /// Human-readable text.
    pub message: String,
}

/// A command to a device or an agent (`v1/devices/{id}/cmd`, `v1/agents/{id}/cmd`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Unique id, echoed in the result.
    pub id: String,
    /// `set`, `reboot`, `reload`, `update`, ...
    pub name: String,
    /// For agent commands about a device behind the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Arguments; for `set`, quantity names to values.
    #[serde(default)]
    pub args: serde_json::Map<String, serde_json::Value>,
}

/// The `args` of an `update` command on `v1/agents/{id}/cmd`: a signed release bundle for the
/// agent to download (resumably) and install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateOffer {
    /// `http://` or `https://` URL of the bundle.
    pub url: String,
    /// The version the bundle carries, e.g. `0.2.0`.
    pub version: String,
    /// SHA-256 of the whole bundle file, 64 hex digits.
    pub sha256: String,
}

/// The answer to a command, on `.../cmd/result`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The command's id.
    pub id: String,
    /// Whether it was carried out.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The device concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Values read back after a `set`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub values: BTreeMap<String, Scalar>,
    /// Epoch milliseconds.
    pub ts: i64,
}

/// Radio link quality of the agent's modem, where known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkQuality {
    /// Received signal strength, dBm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rssi: Option<f64>,
    /// Reference signal received power (LTE/5G), dBm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsrp: Option<f64>,
    /// Signal to interference plus noise, dB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sinr: Option<f64>,
}

/// The state of an agent's durable queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueHealth {
    /// Entries waiting for the hub's ack.
    pub depth: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// Age of the oldest entry, milliseconds.
    pub oldest_age_ms: u64,
    /// Entries dropped because the disk budget was full, since the queue was created.
    pub dropped: u64,
}

/// How one device behind an agent is doing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceHealth {
    /// The device.
    pub id: String,
    /// Answering polls.
    pub online: bool,
    /// Failed requests since the agent started.
    pub errors: u64,
    /// Time of the last good poll, epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ok_ms: Option<i64>,
}

/// Agent health on `v1/agents/{id}/health`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// The agent.
    pub agent: String,
    /// Epoch milliseconds.
    pub ts: i64,
    /// Agent software version.
    pub version: String,
    /// Seconds since start.
    pub uptime_s: u64,
    /// The durable queue.
    pub queue: QueueHealth,
    /// The modem link.
    #[serde(default)]
    pub link: LinkQuality,
    /// Devices behind the agent (Modbus devices and cameras).
    #[serde(default)]
    pub devices: Vec<DeviceHealth>,
}

/// Phase of a camera event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum EventPhase {
    /// Motion began.
    Start,
    /// Motion goes on (new score or boxes).
    Update,
    /// Motion ended.
    End,
}

/// A camera event on `v1/agents/{id}/events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CameraEvent {
    /// The camera device id.
    pub camera: String,
    /// Event type; `motion` for now.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Lifecycle phase.
    pub phase: EventPhase,
    /// Epoch milliseconds.
    pub ts: i64,
    /// Detection score in 0..=1.
    pub score: f64,
    /// Boxes `[x, y, w, h]` as fractions of the frame (0..=1), resolution-independent.
    #[serde(default)]
    pub boxes: Vec<[f64; 4]>,
    /// The event id, also naming the snapshot topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Queue incarnation, when sent through the durable queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<u64>,
    /// Sequence number in the agent's durable queue, acknowledged like a batch's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// A rejected message on `v1/deadletter/{client}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The client that sent it.
    pub client: String,
    /// The topic it was sent on.
    pub topic: String,
    /// Why it was rejected.
    pub reason: String,
    /// The rejected payload (or the rejected part), base64.
    pub payload_b64: String,
    /// Epoch milliseconds.
    pub ts: i64,
}

/// Status payloads on `v1/status/{id}`.
pub const STATUS_ONLINE: &str = "online";
/// See [`STATUS_ONLINE`].
pub const STATUS_OFFLINE: &str = "offline";

/// The body of every HTTP error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    /// Short machine-readable kind: `unauthorized`, `forbidden`, `not_found`, `bad_request`, ...
    pub error: String,
    /// What exactly was wrong.
    pub detail: String,
}

/// A camera in the video catalog (`GET /api/v1/cameras`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CameraEntry {
    /// Device id.
    pub id: String,
    /// GB/T 28181 id.
    pub gb_id: String,
    /// Display name.
    pub name: String,
    /// Latitude (`null` when hub.toml does not place the camera).
    pub lat: Option<f64>,
    /// Longitude (`null` when hub.toml does not place the camera).
    pub lon: Option<f64>,
    /// Owning department.
    pub dept: String,
    /// Stream alive.
    pub online: bool,
    /// Stream URL as the agent sees it.
    pub stream: String,
    /// Frames per second received (latest `camera_fps` reading; 0 while offline).
    pub fps: f64,
    /// Bitrate received, kbit/s (latest `camera_bitrate` reading; 0 while offline).
    pub bitrate_kbps: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn feed_matches_contract_example() {
        let text = r#"{"device":"WL-0001","kind":"water_level","dept":"water","ts":"2026-11-22T08:00:00.000Z","seq":42,
 "location":{"lat":30.4212,"lon":120.301},
 "values":{"water_level":{"value":2.31,"unit":"m","quality":"good"}}}"#;
        let f: Feed = serde_json::from_str(text).unwrap();
        assert_eq!(f.values["water_level"].value, Scalar::Number(2.31));
        let back: Feed = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn twin_matches_contract_example() {
        let text = r#"{"device":"SL-0001","kind":"streetlight","version":17,"online":true,
 "reported":{"dimming_level":{"value":40,"unit":"%","ts":"2026-11-22T08:00:00.000Z"},"lamp_power":{"value":61.5,"unit":"W","ts":"2026-11-22T08:00:00.000Z"}},
 "desired":{"dimming_level":40},"delta":{},"updated_at":"2026-11-22T08:00:00.000Z"}"#;
        let t: Twin = serde_json::from_str(text).unwrap();
        assert_eq!(t.version, 17);
        assert_eq!(t.desired["dimming_level"], Scalar::Number(40.0));
    }

    #[test]
    fn desired_with_version() {
        let d: DesiredUpdate =
            serde_json::from_str(r#"{"dimming_level": 40, "version": 16}"#).unwrap();
        assert_eq!(d.version, Some(16));
        assert_eq!(d.values["dimming_level"], Scalar::Number(40.0));
        let d: DesiredUpdate = serde_json::from_str(r#"{"dimming_level": 40}"#).unwrap();
        assert_eq!(d.version, None);
    }

    #[test]
    fn alert_and_event_shapes() {
        let a: Alert = serde_json::from_str(r#"{"id":"a1","rule":"water-level-high","device":"WL-0001","kind":"water_level","quantity":"water_level",
 "level":"orange","state":"active","value":3.21,"threshold":3.0,"ts":"2026-11-22T08:00:00.000Z","message":"high"}"#).unwrap();
        assert_eq!(a.level, AlertLevel::Orange);
        assert_eq!(a.state, AlertState::Active);
        let e: CameraEvent = serde_json::from_str(r#"{"camera":"CAM-0001","type":"motion","phase":"start","ts":1,"score":0.83,"boxes":[[0.1,0.2,0.3,0.4]],"snapshot":"ev1"}"#).unwrap();
        assert_eq!(e.phase, EventPhase::Start);
        assert_eq!(e.seq, None);
    }

    #[test]
    fn scalar_conversions() {
        assert_eq!(
            Scalar::from_value(Quantity::LampStatus, Value::State(1)),
            Scalar::Text("lamp_failure".to_string())
        );
        assert_eq!(
            Scalar::Text("ok".to_string()).to_value(Quantity::LampStatus),
            Some(Value::State(0))
        );
        assert_eq!(
            Scalar::Text("meh".to_string()).to_value(Quantity::LampStatus),
            None
        );
        assert_eq!(
            Scalar::Bool(true).to_value(Quantity::CoverOpen),
            Some(Value::Bool(true))
        );
        assert_eq!(Scalar::Bool(true).to_value(Quantity::WaterLevel), None);
        assert_eq!(
            Scalar::Number(1.5).to_value(Quantity::WaterLevel),
            Some(Value::Number(1.5))
        );
    }
}
