//! Motion events with hysteresis: one moving object gives one `start`, a few rate-limited
//! `update`s and one `end`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use protocols::messages::{CameraEvent, EventPhase};

use super::motion::MotionResult;
use super::settings::CameraSettings;

/// Issues event ids unique within one agent process: `{camera}.{start ms}.{n}`, where `n`
/// counts events of all cameras. Only `[A-Za-z0-9_.-]` (camera ids are checked to be), so an id
/// is a valid MQTT topic level (`v1/agents/{id}/snapshots/{event}`) and a file name; the
/// start time keeps ids of different agent runs apart.
#[derive(Debug, Default)]
pub struct EventIds {
    next: AtomicU64,
}

impl EventIds {
    /// A fresh id source (one per agent).
    pub fn new() -> Arc<EventIds> {
        Arc::new(EventIds::default())
    }

    /// The next id for an event of `camera` starting at `ts_ms`.
    pub fn issue(&self, camera: &str, ts_ms: i64) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{camera}.{ts_ms}.{n}")
    }
}

/// Hysteresis and rate limits.
#[derive(Clone, Debug, PartialEq)]
pub struct EventConfig {
    /// Consecutive analysed pictures with motion before a start.
    pub start_frames: u32,
    /// No motion for this long ends the event.
    pub end_after: Duration,
    /// At most one update this often.
    pub update_interval: Duration,
    /// Events longer than this are ended.
    pub max_event: Duration,
}

impl From<&CameraSettings> for EventConfig {
    fn from(s: &CameraSettings) -> Self {
        EventConfig {
            start_frames: s.start_frames,
            end_after: s.end_after.0,
            update_interval: s.update_interval.0,
            max_event: s.max_event.0,
        }
    }
}

struct Active {
    id: String,
    started_ms: i64,
    last_motion_ms: i64,
    last_update_ms: i64,
    peak_score: f64,
    last_boxes: Vec<[f64; 4]>,
    updates: u32,
}

/// Turns per-picture motion results into events for one camera.
pub struct EventTracker {
    camera: String,
    cfg: EventConfig,
    ids: Arc<EventIds>,
    streak: u32,
    active: Option<Active>,
    started: u64,
}

impl EventTracker {
    /// A tracker for `camera`, drawing ids from `ids`.
    pub fn new(camera: &str, cfg: EventConfig, ids: Arc<EventIds>) -> EventTracker {
        EventTracker {
            camera: camera.to_string(),
            cfg,
            ids,
            streak: 0,
            active: None,
            started: 0,
        }
    }

    /// The id of the event in progress.
    pub fn active_id(&self) -> Option<&str> {
        self.active.as_ref().map(|a| a.id.as_str())
    }

    /// Events started so far.
    pub fn started(&self) -> u64 {
        self.started
    }

    fn event(
        &self,
        phase: EventPhase,
        ts: i64,
        score: f64,
        boxes: Vec<[f64; 4]>,
        id: &str,
    ) -> CameraEvent {
        CameraEvent {
            camera: self.camera.clone(),
            event_type: "motion".to_string(),
            phase,
            ts,
            score: (score.clamp(0.0, 1.0) * 1000.0).round() / 1000.0,
            boxes: boxes
                .into_iter()
                .map(|b| b.map(|v| (v.clamp(0.0, 1.0) * 10_000.0).round() / 10_000.0))
                .collect(),
            snapshot: Some(id.to_string()),
            stream: None,
            seq: None,
        }
    }

    /// Feeds the result of one analysed picture taken at `ts_ms`. At most one event comes out;
    /// a `start` asks for a snapshot of this picture.
    pub fn observe(&mut self, ts_ms: i64, r: &MotionResult) -> Option<CameraEvent> {
        if let Some(end) = self.expire(ts_ms) {
            // The picture that closes a long event may start the next one only later.
            self.streak = u32::from(r.motion);
            return Some(end);
        }
        if !r.motion {
            self.streak = 0;
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        match &mut self.active {
            None if self.streak >= self.cfg.start_frames => {
                let id = self.ids.issue(&self.camera, ts_ms);
                self.started += 1;
                self.active = Some(Active {
                    id: id.clone(),
                    started_ms: ts_ms,
                    last_motion_ms: ts_ms,
                    last_update_ms: ts_ms,
                    peak_score: r.score,
                    last_boxes: r.boxes.clone(),
                    updates: 0,
                });
                Some(self.event(EventPhase::Start, ts_ms, r.score, r.boxes.clone(), &id))
            }
            None => None,
            Some(a) => {
                a.last_motion_ms = ts_ms;
                a.peak_score = a.peak_score.max(r.score);
                a.last_boxes = r.boxes.clone();
                if ts_ms - a.last_update_ms >= self.cfg.update_interval.as_millis() as i64 {
                    a.last_update_ms = ts_ms;
                    a.updates += 1;
                    let id = a.id.clone();
                    Some(self.event(EventPhase::Update, ts_ms, r.score, r.boxes.clone(), &id))
                } else {
                    None
                }
            }
        }
    }

    /// Time passes without pictures (or with pictures not analysed): ends a quiet event.
    pub fn tick(&mut self, now_ms: i64) -> Option<CameraEvent> {
        self.expire(now_ms)
    }

    /// Ends the event in progress now (the camera stopped or went offline).
    pub fn close(&mut self, now_ms: i64) -> Option<CameraEvent> {
        self.streak = 0;
        let a = self.active.take()?;
        Some(self.end_event(a, now_ms))
    }

    fn expire(&mut self, now_ms: i64) -> Option<CameraEvent> {
        let a = self.active.as_ref()?;
        let quiet = now_ms - a.last_motion_ms >= self.cfg.end_after.as_millis() as i64;
        let long = now_ms - a.started_ms >= self.cfg.max_event.as_millis() as i64;
        if !(quiet || long) {
            return None;
        }
        let a = self.active.take()?;
        let ts = if quiet {
            a.last_motion_ms.max(now_ms)
        } else {
            now_ms
        };
        Some(self.end_event(a, ts))
    }

    fn end_event(&self, a: Active, ts: i64) -> CameraEvent {
        self.event(EventPhase::End, ts, a.peak_score, a.last_boxes, &a.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EventConfig {
        EventConfig {
            start_frames: 2,
            end_after: Duration::from_secs(3),
            update_interval: Duration::from_secs(2),
            max_event: Duration::from_secs(60),
        }
    }

    fn moving(score: f64) -> MotionResult {
        MotionResult {
            motion: true,
            boxes: vec![[0.1, 0.2, 0.3, 0.4]],
            area: score / 10.0,
            score,
            ..MotionResult::default()
        }
    }

    #[test]
    fn one_object_one_start_few_updates_one_end() {
        let mut t = EventTracker::new("CAM-0001", cfg(), EventIds::new());
        let mut out = Vec::new();
        // 10 s of motion at 5 fps, then 5 s of nothing.
        for i in 0..50 {
            out.extend(t.observe(1000 + i * 200, &moving(0.5)));
        }
        for i in 50..75 {
            out.extend(t.observe(1000 + i * 200, &MotionResult::default()));
        }
        let phases: Vec<_> = out.iter().map(|e| e.phase).collect();
        assert_eq!(phases.first(), Some(&EventPhase::Start));
        assert_eq!(phases.last(), Some(&EventPhase::End));
        assert_eq!(
            phases.iter().filter(|p| **p == EventPhase::Start).count(),
            1
        );
        let updates = phases.iter().filter(|p| **p == EventPhase::Update).count();
        assert!((3..=5).contains(&updates), "{updates} updates");
        let id = out[0].snapshot.clone().unwrap();
        assert!(
            out.iter()
                .all(|e| e.snapshot.as_deref() == Some(id.as_str()))
        );
        assert!(
            out.iter()
                .all(|e| e.camera == "CAM-0001" && e.event_type == "motion")
        );
        // Start is confirmed on the second motion picture; end 3 s after the last motion.
        assert_eq!(out[0].ts, 1200);
        assert_eq!(out.last().unwrap().ts, 1000 + 49 * 200 + 3000);
    }

    #[test]
    fn single_blips_do_not_start() {
        let mut t = EventTracker::new("C", cfg(), EventIds::new());
        for i in 0..20 {
            let r = if i % 2 == 0 {
                moving(0.9)
            } else {
                MotionResult::default()
            };
            assert!(t.observe(i * 200, &r).is_none());
        }
        assert_eq!(t.started(), 0);
    }

    #[test]
    fn quiet_time_ends_without_pictures() {
        let mut t = EventTracker::new("C", cfg(), EventIds::new());
        t.observe(0, &moving(0.4));
        assert_eq!(
            t.observe(200, &moving(0.8)).unwrap().phase,
            EventPhase::Start
        );
        assert!(t.tick(2000).is_none());
        let end = t.tick(3300).unwrap();
        assert_eq!((end.phase, end.score), (EventPhase::End, 0.8));
        assert!(t.tick(9000).is_none());
        assert!(t.close(9000).is_none());
    }

    #[test]
    fn long_events_are_cut() {
        let mut t = EventTracker::new(
            "C",
            EventConfig {
                max_event: Duration::from_secs(5),
                ..cfg()
            },
            EventIds::new(),
        );
        let mut starts = 0;
        let mut ends = 0;
        for i in 0..80 {
            if let Some(e) = t.observe(i * 200, &moving(0.5)) {
                starts += (e.phase == EventPhase::Start) as u32;
                ends += (e.phase == EventPhase::End) as u32;
            }
        }
        assert_eq!((starts, ends), (4, 3));
        assert!(t.close(16_000).is_some());
    }

    #[test]
    fn ids_are_unique_and_topic_safe() {
        let ids = EventIds::new();
        let a = ids.issue("CAM-0001", 1_732_271_234_567);
        let b = ids.issue("CAM-0001", 1_732_271_234_567);
        assert_eq!(a, "CAM-0001.1732271234567.1");
        assert_ne!(a, b);
        for id in [a, b] {
            assert!(protocols::id::validate_id(&id).is_ok(), "{id}");
        }
    }
}
