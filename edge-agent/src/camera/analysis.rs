//! The analysis of one camera: decode -> (at the detection rate) motion -> events -> snapshot.
//!
//! [`Pipeline`] is the synchronous core (also driven directly by the benchmarks); [`run`] is
//! the camera's analysis thread around it, which adds online state, stall detection and the
//! periodic health readings, and puts everything into the camera's outbox.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocols::messages::EventPhase;
use protocols::quantity::{Quantity, Value};

use super::decode::{DecodeError, H264Backend, H264Decoder, JpegPlanes, decode_jpeg_luma};
use super::events::{EventConfig, EventIds, EventTracker};
use super::motion::{MotionConfig, MotionDetector};
use super::outbox::{Kind, Outbox};
use super::picture::Picture;
use super::settings::CameraConfig;
use super::snapshot::{Snapshot, encode_snapshot, snapshot_size};
use super::stream::{Frame, FrameData, StreamState};
use super::{CameraOutput, Reading};
use protocols::time::now_ms;

/// Motion analysis and events for one camera, fed picture by picture.
pub struct Pipeline {
    backend: H264Backend,
    decoder: Option<H264Decoder>,
    await_key: bool,
    judge: Judge,
}

/// Everything after decoding (kept apart from the decoder, whose pictures borrow it).
struct Judge {
    camera: String,
    motion_cfg: MotionConfig,
    detector: Option<MotionDetector>,
    tracker: EventTracker,
    period_ms: i64,
    next_due_ms: Option<i64>,
    max_width: Option<u32>,
    quality: u8,
    state: Arc<StreamState>,
    out: Vec<CameraOutput>,
}

/// The original JPEG, when the picture came as one (its snapshot may be the file itself).
type JpegSource<'a> = Option<&'a Bytes>;

impl Pipeline {
    /// A pipeline for `cfg`, drawing event ids from `ids` and counting into `state`.
    pub fn new(cfg: &CameraConfig, ids: Arc<EventIds>, state: Arc<StreamState>) -> Pipeline {
        let s = &cfg.settings;
        Pipeline {
            backend: s.h264_decoder,
            decoder: None,
            await_key: false,
            judge: Judge {
                camera: cfg.id.clone(),
                motion_cfg: MotionConfig::from(s),
                detector: None,
                tracker: EventTracker::new(&cfg.id, EventConfig::from(s), ids),
                period_ms: (1000.0 / s.detect_fps).round() as i64,
                next_due_ms: None,
                max_width: s.snapshot_max_width,
                quality: s.snapshot_quality,
                state,
                out: Vec::new(),
            },
        }
    }

    /// Processes one picture; returns what it produced (usually nothing).
    pub fn process(&mut self, frame: Frame) -> Vec<CameraOutput> {
        let j = &mut self.judge;
        match frame.data {
            FrameData::H264 {
                unit,
                keyframe,
                disposable,
                after_loss,
            } => {
                if after_loss && !keyframe {
                    self.await_key = true;
                }
                if self.await_key && !keyframe {
                    j.state.count_lost(1);
                    return j.take();
                }
                self.await_key = false;
                let due = j.due(frame.ts_ms);
                // Decode only what detection needs: a disposable picture is referenced by no
                // other, so when it is not due for analysis it is not decoded at all.
                if disposable && !due {
                    j.state.skipped.fetch_add(1, Ordering::Relaxed);
                    return j.take();
                }
                if self.decoder.is_none() {
                    match H264Decoder::with_backend(self.backend) {
                        Ok(d) => self.decoder = Some(d),
                        Err(e) => {
                            tracing::error!(camera = %j.camera, "no H.264 decoder: {e}");
                            j.state.count_lost(1);
                            return j.take();
                        }
                    }
                }
                let Some(decoder) = self.decoder.as_mut() else {
                    return j.take();
                };
                let decoded = decoder.decode(&unit, |pic| {
                    j.state.decoded.fetch_add(1, Ordering::Relaxed);
                    if due {
                        j.analyse(pic, None, frame.ts_ms, frame.received);
                    }
                });
                match decoded {
                    Ok(_) => {}
                    Err(e) => {
                        j.decode_failed(&e);
                        self.await_key = true;
                    }
                }
            }
            FrameData::Jpeg(jpeg) => {
                if j.due(frame.ts_ms) {
                    match decode_jpeg_luma(&jpeg) {
                        Ok((w, h, y)) => {
                            j.state.decoded.fetch_add(1, Ordering::Relaxed);
                            if let Some(pic) = Picture::new(w, h, &y, w, None) {
                                j.analyse(&pic, Some(&jpeg), frame.ts_ms, frame.received);
                            }
                        }
                        Err(e) => j.decode_failed(&e),
                    }
                }
            }
            FrameData::Raw(pic) => {
                j.state.decoded.fetch_add(1, Ordering::Relaxed);
                if j.due(frame.ts_ms) {
                    j.analyse(&pic.picture(), None, frame.ts_ms, frame.received);
                }
            }
        }
        j.take()
    }

    /// Time passes: ends an event that has been quiet long enough.
    pub fn tick(&mut self, now_ms: i64) -> Vec<CameraOutput> {
        let j = &mut self.judge;
        if let Some(end) = j.tracker.tick(now_ms) {
            j.ended(end);
        }
        j.take()
    }

    /// Ends the event in progress (the camera went offline or is stopping).
    pub fn close(&mut self, now_ms: i64) -> Vec<CameraOutput> {
        let j = &mut self.judge;
        if let Some(end) = j.tracker.close(now_ms) {
            j.ended(end);
        }
        j.take()
    }

    /// A new session follows: the decoder must start again from a keyframe.
    pub fn restart(&mut self) {
        self.await_key = true;
    }
}

impl Judge {
    fn take(&mut self) -> Vec<CameraOutput> {
        std::mem::take(&mut self.out)
    }

    /// Whether the picture at `ts` is due for analysis at the detection rate. A picture up to a
    /// quarter period early counts, so 10 fps analysed at 5 fps takes every second picture.
    fn due(&mut self, ts: i64) -> bool {
        let next = *self.next_due_ms.get_or_insert(ts);
        if ts < next - self.period_ms / 4 {
            return false;
        }
        // After a gap (stall, clock step) the schedule restarts from this picture.
        let base = if ts > next + self.period_ms || ts < next - self.period_ms {
            ts
        } else {
            next
        };
        self.next_due_ms = Some(base + self.period_ms);
        true
    }

    fn decode_failed(&mut self, e: &DecodeError) {
        tracing::debug!(camera = %self.camera, "undecodable picture: {e}");
        self.state.count_lost(1);
    }

    fn analyse(&mut self, pic: &Picture<'_>, jpeg: JpegSource<'_>, ts: i64, received: Instant) {
        let (w, h) = (pic.width(), pic.height());
        let detector = match &mut self.detector {
            Some(d) if d.fits(w, h) => d,
            slot => slot.insert(MotionDetector::new(self.motion_cfg.clone(), w, h)),
        };
        let before = detector.lighting_changes();
        let result = detector.analyze(pic);
        if detector.lighting_changes() > before {
            self.state.lighting_changes.fetch_add(1, Ordering::Relaxed);
        }
        self.state.analysed.fetch_add(1, Ordering::Relaxed);
        let Some(mut event) = self.tracker.observe(ts, &result) else {
            return;
        };
        match event.phase {
            EventPhase::Start => {
                let id = event.snapshot.clone().unwrap_or_default();
                let snap = self.snapshot(pic, jpeg);
                if snap.is_none() {
                    event.snapshot = None;
                }
                self.state.events.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut a) = self.state.active_event.lock() {
                    *a = Some(id.clone());
                }
                self.out.push(CameraOutput::Event(event));
                if let Some(s) = snap {
                    self.out.push(CameraOutput::Snapshot {
                        event_id: id,
                        jpeg: s.jpeg,
                        width: s.width,
                        height: s.height,
                    });
                }
                self.out.push(CameraOutput::Readings(vec![Reading {
                    quantity: Quantity::Motion,
                    value: Value::Bool(true),
                    ts_ms: ts,
                }]));
                self.state.record_latency(received.elapsed());
            }
            EventPhase::Update => self.out.push(CameraOutput::Event(event)),
            EventPhase::End => self.ended(event),
        }
    }

    fn ended(&mut self, event: protocols::messages::CameraEvent) {
        let ts = event.ts;
        if let Ok(mut a) = self.state.active_event.lock() {
            *a = None;
        }
        self.out.push(CameraOutput::Event(event));
        self.out.push(CameraOutput::Readings(vec![Reading {
            quantity: Quantity::Motion,
            value: Value::Bool(false),
            ts_ms: ts,
        }]));
    }

    fn snapshot(&self, pic: &Picture<'_>, jpeg: JpegSource<'_>) -> Option<Snapshot> {
        let made = match jpeg {
            // The camera's own JPEG is the best snapshot when it is small enough.
            Some(bytes)
                if snapshot_size(pic.width(), pic.height(), self.max_width)
                    == (pic.width(), pic.height()) =>
            {
                Ok(Snapshot {
                    jpeg: bytes.clone(),
                    width: pic.width() as u32,
                    height: pic.height() as u32,
                })
            }
            Some(bytes) => JpegPlanes::decode(bytes)
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    let pic = p.picture().ok_or("inconsistent JPEG planes")?;
                    encode_snapshot(&pic, self.max_width, self.quality).map_err(|e| e.to_string())
                }),
            None => encode_snapshot(pic, self.max_width, self.quality).map_err(|e| e.to_string()),
        };
        made.map_err(|e| tracing::warn!(camera = %self.camera, "no snapshot: {e}"))
            .ok()
    }
}

/// How an output waits in the outbox when the consumer is slow.
fn kind_of(o: &CameraOutput) -> Kind {
    match o {
        CameraOutput::Event(e) if e.phase == EventPhase::Update => {
            Kind::Update(e.snapshot.clone().unwrap_or_default())
        }
        CameraOutput::Readings(r) if r.iter().all(|r| r.quantity != Quantity::Motion) => {
            Kind::Health
        }
        _ => Kind::Keep,
    }
}

fn deliver(outbox: &Outbox, outputs: Vec<CameraOutput>) {
    for o in outputs {
        outbox.push(kind_of(&o), o);
    }
}

/// Health readings over the last interval.
struct HealthMeter {
    since: Instant,
    frames: u64,
    bytes: u64,
}

impl HealthMeter {
    fn readings(&mut self, state: &StreamState) -> Vec<Reading> {
        let secs = self.since.elapsed().as_secs_f64().max(1e-3);
        let (frames, bytes) = (state.frames(), state.bytes());
        let fps = (frames - self.frames) as f64 / secs;
        let kbps = (bytes - self.bytes) as f64 * 8.0 / 1000.0 / secs;
        *self = HealthMeter {
            since: Instant::now(),
            frames,
            bytes,
        };
        let ts_ms = now_ms();
        let round = |v: f64| (v * 100.0).round() / 100.0;
        vec![
            Reading {
                quantity: Quantity::CameraFps,
                value: Value::Number(round(fps)),
                ts_ms,
            },
            Reading {
                quantity: Quantity::CameraBitrate,
                value: Value::Number(round(kbps)),
                ts_ms,
            },
            Reading {
                quantity: Quantity::CameraFramesLost,
                value: Value::Number(state.lost() as f64),
                ts_ms,
            },
        ]
    }
}

/// The camera's analysis thread: runs until the source hangs up (the camera is stopping).
pub(crate) fn run(
    cfg: CameraConfig,
    ids: Arc<EventIds>,
    state: Arc<StreamState>,
    rx: Receiver<Frame>,
    outbox: Arc<Outbox>,
) {
    let mut pipeline = Pipeline::new(&cfg, ids, state.clone());
    let stall = cfg.settings.stall_timeout.0;
    let health_every = cfg.settings.health_interval.0;
    let mut health = HealthMeter {
        since: Instant::now(),
        frames: state.frames(),
        bytes: state.bytes(),
    };
    let mut reported: Option<bool> = None;
    let mut last_frame = Instant::now();
    let mut sessions = state.sessions();
    let wake = Duration::from_millis(100).min(stall / 4);
    loop {
        match rx.recv_timeout(wake) {
            Ok(frame) => {
                last_frame = Instant::now();
                let s = state.sessions();
                if s != sessions {
                    sessions = s;
                    pipeline.restart();
                }
                deliver(&outbox, pipeline.process(frame));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        // A picture-less camera is offline whatever its source believes (a silent synthetic
        // scene, a file paused, a session that keeps RTSP alive but sends no video).
        if state.online() == Some(true) && last_frame.elapsed() >= stall && state.set_stalled(stall)
        {
            let why = state.last_error().unwrap_or_default();
            tracing::warn!(camera = %cfg.id, "camera offline: {why}");
        }
        let online = state.online();
        if online.is_some() && online != reported {
            if online == Some(false) {
                deliver(&outbox, pipeline.close(now_ms()));
            }
            outbox.push(Kind::Keep, CameraOutput::Online(online == Some(true)));
            reported = online;
        }
        deliver(&outbox, pipeline.tick(now_ms()));
        if health.since.elapsed() >= health_every {
            outbox.push(
                Kind::Health,
                CameraOutput::Readings(health.readings(&state)),
            );
        }
    }
    deliver(&outbox, pipeline.close(now_ms()));
    if reported == Some(true) {
        outbox.push(Kind::Keep, CameraOutput::Online(false));
    }
    outbox.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ts_ms: i64, data: FrameData) -> Frame {
        Frame {
            ts_ms,
            received: Instant::now(),
            data,
        }
    }

    /// Deterministic pseudo-random bytes.
    fn garbage(seed: u64, len: usize) -> Vec<u8> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s as u8
            })
            .collect()
    }

    #[test]
    fn garbage_pictures_are_counted_lost_not_fatal() {
        let cfg = CameraConfig::new("CAM-X", "rtsp://cam/1").unwrap();
        let state = Arc::new(StreamState::default());
        let mut p = Pipeline::new(&cfg, EventIds::new(), state.clone());
        for i in 0..200u64 {
            let mut bytes = garbage(i, 64 + (i as usize * 37) % 4000);
            // Some with start codes and plausible NAL headers (SPS, PPS, IDR, P slice).
            if i % 2 == 0 {
                bytes.splice(
                    0..0,
                    [0, 0, 0, 1, [0x67, 0x68, 0x65, 0x41][(i / 2 % 4) as usize]],
                );
            }
            let keyframe = i % 3 == 0;
            let out = p.process(frame(
                i as i64 * 100,
                FrameData::H264 {
                    unit: Bytes::from(bytes.clone()),
                    keyframe,
                    disposable: false,
                    after_loss: false,
                },
            ));
            assert!(out.is_empty());
            let mut jpeg = vec![0xFF, 0xD8];
            jpeg.extend_from_slice(&bytes);
            jpeg.extend_from_slice(&[0xFF, 0xD9]);
            assert!(
                p.process(frame(
                    i as i64 * 100 + 50,
                    FrameData::Jpeg(Bytes::from(jpeg))
                ))
                .is_empty()
            );
        }
        assert!(state.lost() > 0);
        assert_eq!(state.events(), 0);
    }

    #[test]
    fn detection_runs_at_its_own_rate() {
        let mut cfg = CameraConfig::new("CAM-X", "synthetic:static").unwrap();
        cfg.settings.detect_fps = 5.0;
        let state = Arc::new(StreamState::default());
        let mut p = Pipeline::new(&cfg, EventIds::new(), state.clone());
        let pic = Arc::new(super::super::picture::I420::filled(64, 36, 100, 128, 128));
        // 10 fps for 10 s, with a little jitter: analysed at 5 fps.
        for i in 0..100i64 {
            p.process(frame(i * 100 + (i % 3) * 7, FrameData::Raw(pic.clone())));
        }
        assert_eq!(state.analysed(), 50);
        // 25 fps: still 5 analyses a second.
        let state = Arc::new(StreamState::default());
        let mut p = Pipeline::new(&cfg, EventIds::new(), state.clone());
        for i in 0..250i64 {
            p.process(frame(i * 40, FrameData::Raw(pic.clone())));
        }
        assert!(
            (49..=51).contains(&state.analysed()),
            "{}",
            state.analysed()
        );
    }
}
