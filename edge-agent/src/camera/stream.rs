//! What flows from a camera's source task to its analysis thread, the counters both share,
//! and reconnect pacing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;

use super::picture::I420;

/// One picture as the source got it.
#[derive(Clone, Debug)]
pub enum FrameData {
    /// An H.264 access unit, Annex-B, parameter sets inline before keyframes.
    H264 {
        /// The access unit.
        unit: Bytes,
        /// Decodable on its own (IDR).
        keyframe: bool,
        /// Not a reference picture: may be skipped without harm.
        disposable: bool,
        /// Packets were lost before it: references may be broken until the next keyframe.
        after_loss: bool,
    },
    /// A JPEG file.
    Jpeg(Bytes),
    /// A decoded picture (synthetic scenes).
    Raw(Arc<I420>),
}

/// A picture with its times.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Wall-clock capture (receipt) time, epoch ms: the time events carry.
    pub ts_ms: i64,
    /// Monotonic receipt time, for latency.
    pub received: Instant,
    /// The picture.
    pub data: FrameData,
}

// 0: not known yet (before the first attempt finished).
const ONLINE: u8 = 1;
const OFFLINE: u8 = 2;

/// Counters and state a camera's source and analysis share; read by status and health.
#[derive(Debug, Default)]
pub struct StreamState {
    online: AtomicU8,
    frames: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    sessions: AtomicU64,
    last_error: Mutex<Option<(Instant, String)>>,
    pub(crate) decoded: AtomicU64,
    pub(crate) analysed: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) lighting_changes: AtomicU64,
    pub(crate) events: AtomicU64,
    pub(crate) active_event: Mutex<Option<String>>,
    latencies_us: Mutex<VecDeque<u32>>,
}

/// How long pictures that started an event took from receipt to the event and its JPEG being
/// handed to the outbox (the most recent 256 events).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LatencySummary {
    /// Events measured.
    pub count: usize,
    /// Median, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Largest, milliseconds.
    pub max_ms: f64,
}

const LATENCY_SAMPLES: usize = 256;

impl StreamState {
    /// `Some(true)` when pictures flow, `Some(false)` when the camera is unreachable or
    /// stalled, `None` before the first attempt finished.
    pub fn online(&self) -> Option<bool> {
        match self.online.load(Ordering::Acquire) {
            ONLINE => Some(true),
            OFFLINE => Some(false),
            _ => None,
        }
    }

    pub(crate) fn set_online(&self) {
        self.online.store(ONLINE, Ordering::Release);
    }

    /// Marks the camera offline with the reason; returns whether it was online before.
    pub(crate) fn set_offline(&self, reason: String) -> bool {
        self.note_error(reason);
        self.online.swap(OFFLINE, Ordering::AcqRel) == ONLINE
    }

    /// Marks the camera offline because no picture came for `stall`; a more specific problem
    /// the source noted meanwhile stays the reported one.
    pub(crate) fn set_stalled(&self, stall: Duration) -> bool {
        let recent = self
            .last_error
            .lock()
            .ok()
            .and_then(|e| e.as_ref().map(|(at, _)| at.elapsed() <= stall))
            .unwrap_or(false);
        if !recent {
            self.note_error(format!("no picture for {stall:?}"));
        }
        self.online.swap(OFFLINE, Ordering::AcqRel) == ONLINE
    }

    /// Records a problem without changing the online state (a failed poll).
    pub(crate) fn note_error(&self, reason: String) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some((Instant::now(), reason));
        }
    }

    pub(crate) fn count_frame(&self, bytes: usize) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_lost(&self, n: u64) {
        self.lost.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn count_session(&self) {
        self.sessions.fetch_add(1, Ordering::Relaxed);
    }

    /// Pictures received since start.
    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Encoded bytes received since start.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Pictures lost since start: RTP loss, failed polls, undecodable pictures, pictures
    /// dropped because analysis fell behind.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// Sessions established (the first connect plus every reconnect).
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// The last connection problem.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .ok()
            .and_then(|e| e.as_ref().map(|(_, m)| m.clone()))
    }

    /// Pictures decoded (H.264) or taken as decoded (JPEG luma, synthetic).
    pub fn decoded(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    /// Pictures analysed for motion.
    pub fn analysed(&self) -> u64 {
        self.analysed.load(Ordering::Relaxed)
    }

    /// Disposable H.264 pictures not decoded because analysis did not need them.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    /// Lighting changes that re-seeded the background instead of raising motion.
    pub fn lighting_changes(&self) -> u64 {
        self.lighting_changes.load(Ordering::Relaxed)
    }

    /// Events started.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// The event in progress.
    pub fn active_event(&self) -> Option<String> {
        self.active_event.lock().ok().and_then(|e| e.clone())
    }

    pub(crate) fn record_latency(&self, d: Duration) {
        if let Ok(mut l) = self.latencies_us.lock() {
            if l.len() == LATENCY_SAMPLES {
                l.pop_front();
            }
            l.push_back(d.as_micros().min(u32::MAX as u128) as u32);
        }
    }

    /// Receipt-to-output latency of recent event starts.
    pub fn start_latency(&self) -> Option<LatencySummary> {
        let mut v: Vec<u32> = self.latencies_us.lock().ok()?.iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        Some(LatencySummary {
            count: v.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        })
    }
}

/// The analysis thread is gone (the camera is stopping).
#[derive(Debug)]
pub(crate) struct SinkClosed;

/// The source side of a camera's picture channel. Never blocks the source: when analysis falls
/// behind, pictures are dropped and counted lost, for H.264 everything up to the next keyframe
/// (the decoder could not use the pictures in between).
pub(crate) struct FrameSink {
    tx: SyncSender<Frame>,
    state: Arc<StreamState>,
    await_key: bool,
}

impl FrameSink {
    pub(crate) fn new(tx: SyncSender<Frame>, state: Arc<StreamState>) -> FrameSink {
        FrameSink {
            tx,
            state,
            await_key: false,
        }
    }

    pub(crate) fn state(&self) -> &Arc<StreamState> {
        &self.state
    }

    /// Hands a picture to analysis (it is counted as received here).
    pub(crate) fn push(&mut self, frame: Frame, wire_bytes: usize) -> Result<(), SinkClosed> {
        self.state.count_frame(wire_bytes);
        self.state.set_online();
        if let FrameData::H264 { keyframe, .. } = &frame.data {
            if self.await_key && !keyframe {
                self.state.count_lost(1);
                return Ok(());
            }
            self.await_key = false;
        }
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(f)) => {
                self.state.count_lost(1);
                if matches!(f.data, FrameData::H264 { .. }) {
                    self.await_key = true;
                }
                Ok(())
            }
            Err(TrySendError::Disconnected(_)) => Err(SinkClosed),
        }
    }

    /// A new session starts: its first pictures must not lean on the old session's.
    pub(crate) fn restart(&mut self) {
        self.await_key = false;
    }
}

/// Exponential reconnect delays with jitter: each failure doubles the delay up to a ceiling,
/// and the actual wait is drawn from the upper half of it, so many cameras that failed
/// together (a switch rebooting) do not reconnect in lockstep.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    /// Delays from `min` up to `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            current: min,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        let lo = ceiling / 2;
        let span = ceiling.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(rand::thread_rng().gen_range(0..=span))
    }

    /// A connection worked: start from `min` again.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let ceilings = [100, 200, 400, 800, 1000, 1000];
        for c in ceilings {
            let d = b.next_delay().as_millis() as u64;
            assert!(d >= c / 2 && d <= c, "{d} not in {}..={c}", c / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn full_channel_drops_to_next_keyframe() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let state = Arc::new(StreamState::default());
        let mut sink = FrameSink::new(tx, state.clone());
        let h264 = |keyframe| Frame {
            ts_ms: 0,
            received: Instant::now(),
            data: FrameData::H264 {
                unit: Bytes::new(),
                keyframe,
                disposable: false,
                after_loss: false,
            },
        };
        sink.push(h264(true), 10).unwrap();
        sink.push(h264(false), 10).unwrap(); // full: dropped, now awaiting a keyframe
        rx.recv().unwrap();
        sink.push(h264(false), 10).unwrap(); // room, but useless without its reference
        assert!(rx.try_recv().is_err());
        sink.push(h264(true), 10).unwrap();
        assert!(matches!(
            rx.try_recv().unwrap().data,
            FrameData::H264 { keyframe: true, .. }
        ));
        assert_eq!((state.frames(), state.lost(), state.bytes()), (4, 2, 40));
        assert_eq!(state.online(), Some(true));
        drop(rx);
        assert!(sink.push(h264(true), 1).is_err());
    }
}
