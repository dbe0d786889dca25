//! Camera events as the hub keeps them: one record per event id, merged from its phases.
//!
//! An agent sends `start`, a few `update`s and an `end` of one event (same id, the `snapshot`
//! field). The hub keeps one [`EventRecord`] per (agent, event id) — what an operator wants to
//! list — merged so that applying a phase twice, or phases out of order (a resend after a
//! timeout), gives the same record: `start` is the earliest time seen, `end` the end phase's
//! time, `score` the peak, and `phase`/`boxes` those of the latest phase.

use protocols::messages::{CameraEvent, EventPhase};
use serde::{Deserialize, Serialize};

/// Longest event type name.
pub const MAX_TYPE_LEN: usize = 32;
/// Longest event id.
pub const MAX_ID_LEN: usize = 128;
/// Most boxes kept per phase.
pub const MAX_BOXES: usize = 64;

/// The stored snapshot of an event, as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SnapshotInfo {
    /// Where to fetch the JPEG.
    pub url: String,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// File size.
    pub bytes: u64,
}

/// One camera event (all its phases merged), as stored and served by `GET /api/v1/events`
/// and sent on the live stream as `event`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventRecord {
    /// The event id (`{camera}.{start ms}.{n}` from our agents).
    pub id: String,
    /// The camera.
    pub camera: String,
    /// The agent that reported it.
    pub agent: String,
    /// `motion`, ...
    #[serde(rename = "type")]
    pub event_type: String,
    /// Latest phase: `start`, `update` or `end`.
    pub phase: EventPhase,
    /// When it started, epoch ms.
    pub start: i64,
    /// When it ended, epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
    /// Time of the latest phase, epoch ms.
    pub ts: i64,
    /// Peak score, 0..=1.
    pub score: f64,
    /// Boxes `[x, y, w, h]` (fractions) of the latest phase that had any.
    pub boxes: Vec<[f64; 4]>,
    /// The JPEG of the start, once stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotInfo>,
}

/// Why an event was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// `type` empty, too long or not `[a-z0-9_]`.
    #[error("type must be 1..{MAX_TYPE_LEN} characters of [a-z0-9_]")]
    BadType,
    /// The event id (`snapshot`) is not a valid id.
    #[error(
        "snapshot (the event id) must be 1..{MAX_ID_LEN} characters of [A-Za-z0-9_.-], not starting with `.`"
    )]
    BadId,
    /// Score not a finite number.
    #[error("score must be a finite number")]
    BadScore,
    /// A box with a non-finite number.
    #[error("boxes[{0}] must be finite numbers")]
    BadBox(usize),
    /// Too many boxes.
    #[error("more than {MAX_BOXES} boxes")]
    TooManyBoxes,
}

/// Whether a string is a valid event id: also a safe MQTT topic level and file name.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The camera an id of our agents' form `{camera}.{start ms}.{n}` names, if it has that form.
pub fn camera_of_id(id: &str) -> Option<&str> {
    let mut parts = id.rsplitn(3, '.');
    let n = parts.next()?;
    let ms = parts.next()?;
    let camera = parts.next()?;
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (numeric(n) && numeric(ms) && !camera.is_empty()).then_some(camera)
}

/// Checks an incoming event and returns its id (the `snapshot` field, or `{camera}.{ts}` for an
/// event that has none), with score and boxes clamped to 0..=1.
pub fn check(ev: &mut CameraEvent) -> Result<String, EventError> {
    let t = &ev.event_type;
    if t.is_empty()
        || t.len() > MAX_TYPE_LEN
        || !t
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(EventError::BadType);
    }
    if !ev.score.is_finite() {
        return Err(EventError::BadScore);
    }
    ev.score = ev.score.clamp(0.0, 1.0);
    if ev.boxes.len() > MAX_BOXES {
        return Err(EventError::TooManyBoxes);
    }
    for (i, b) in ev.boxes.iter_mut().enumerate() {
        if b.iter().any(|v| !v.is_finite()) {
            return Err(EventError::BadBox(i));
        }
        for v in b.iter_mut() {
            *v = v.clamp(0.0, 1.0);
        }
    }
    match &ev.snapshot {
        Some(id) if valid_id(id) => Ok(id.clone()),
        Some(_) => Err(EventError::BadId),
        None => Ok(format!("{}.{}", ev.camera, ev.ts)),
    }
}

fn rank(p: EventPhase) -> u8 {
    match p {
        EventPhase::Start => 0,
        EventPhase::Update => 1,
        EventPhase::End => 2,
    }
}

impl EventRecord {
    /// The record of an event's first phase seen.
    pub fn new(id: &str, agent: &str, ev: &CameraEvent) -> EventRecord {
        EventRecord {
            id: id.to_string(),
            camera: ev.camera.clone(),
            agent: agent.to_string(),
            event_type: ev.event_type.clone(),
            phase: ev.phase,
            start: ev.ts,
            end: (ev.phase == EventPhase::End).then_some(ev.ts),
            ts: ev.ts,
            score: ev.score,
            boxes: ev.boxes.clone(),
            snapshot: None,
        }
    }

    /// Merges a phase in; the same phase twice, or phases in any order, give the same record.
    pub fn merge(&mut self, ev: &CameraEvent) {
        self.start = self.start.min(ev.ts);
        if ev.phase == EventPhase::End {
            self.end = Some(self.end.map_or(ev.ts, |e| e.max(ev.ts)));
        }
        if (ev.ts, rank(ev.phase)) > (self.ts, rank(self.phase)) {
            self.ts = ev.ts;
            self.phase = ev.phase;
            if !ev.boxes.is_empty() {
                self.boxes = ev.boxes.clone();
            }
        } else if self.boxes.is_empty() && !ev.boxes.is_empty() {
            self.boxes = ev.boxes.clone();
        }
        if ev.score > self.score {
            self.score = ev.score;
        }
    }

    /// Whether the event is in progress (no end seen).
    pub fn active(&self) -> bool {
        self.end.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(phase: EventPhase, ts: i64, score: f64, boxes: Vec<[f64; 4]>) -> CameraEvent {
        CameraEvent {
            camera: "CAM.1".into(),
            event_type: "motion".into(),
            phase,
            ts,
            score,
            boxes,
            snapshot: Some("CAM.1.1000.7".into()),
            stream: Some(1),
            seq: Some(1),
        }
    }

    #[test]
    fn phases_merge_in_any_order_and_twice() {
        let phases = [
            ev(EventPhase::Start, 1000, 0.4, vec![[0.1, 0.1, 0.2, 0.2]]),
            ev(EventPhase::Update, 3000, 0.9, vec![[0.3, 0.1, 0.2, 0.2]]),
            ev(EventPhase::End, 8000, 0.2, vec![]),
        ];
        let mut a = EventRecord::new("id", "AG", &phases[0]);
        for p in &phases {
            a.merge(p);
        }
        let mut b = EventRecord::new("id", "AG", &phases[2]);
        for p in [&phases[1], &phases[0], &phases[2], &phases[1]] {
            b.merge(p);
        }
        assert_eq!(a, b);
        assert_eq!((a.start, a.end, a.ts), (1000, Some(8000), 8000));
        assert_eq!(a.phase, EventPhase::End);
        assert_eq!(a.score, 0.9);
        assert_eq!(a.boxes, vec![[0.3, 0.1, 0.2, 0.2]]);
        assert!(!a.active());
    }

    #[test]
    fn ids_and_checks() {
        assert_eq!(camera_of_id("CAM.1.1700000000000.12"), Some("CAM.1"));
        assert_eq!(camera_of_id("CAM-1.17.x"), None);
        assert_eq!(camera_of_id("12.13"), None);
        assert!(valid_id("CAM-1.1700.3"));
        for bad in ["", ".hidden", "a/b", "a b", "..", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad}");
        }
        let mut e = ev(EventPhase::Start, 5, 3.0, vec![[-0.5, 0.5, 2.0, 0.1]]);
        assert_eq!(check(&mut e).unwrap(), "CAM.1.1000.7");
        assert_eq!((e.score, e.boxes[0]), (1.0, [0.0, 0.5, 1.0, 0.1]));
        e.snapshot = None;
        assert_eq!(check(&mut e).unwrap(), "CAM.1.5");
        e.snapshot = Some("../etc".into());
        assert_eq!(check(&mut e), Err(EventError::BadId));
        let mut e = ev(EventPhase::Start, 5, f64::NAN, vec![]);
        assert_eq!(check(&mut e), Err(EventError::BadScore));
        let mut e = ev(
            EventPhase::Start,
            5,
            0.5,
            vec![[0.0, f64::INFINITY, 0.0, 0.0]],
        );
        assert_eq!(check(&mut e), Err(EventError::BadBox(0)));
        let mut e = ev(EventPhase::Start, 5, 0.5, vec![]);
        e.event_type = "Motion!".into();
        assert_eq!(check(&mut e), Err(EventError::BadType));
    }
}
