//! A camera's outbox: what the camera produced, waiting for the agent's channel.
//!
//! The analysis thread only ever appends here (never waits), and a small async forwarder
//! drains it into the agent's bounded channel, waiting there as long as it must. So a slow
//! consumer never blocks a camera, and what piles up meanwhile is kept small: a newer `update`
//! of the same event replaces the queued one, newer health readings replace queued ones, while
//! starts, ends, snapshots, motion readings and online changes are all kept in order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use super::{CameraMessage, CameraOutput};

/// Above this many waiting messages the oldest snapshot is dropped (the event still says
/// which snapshot it had; starts and ends are never dropped).
const SNAPSHOT_BACKLOG: usize = 64;

/// What kind of entry, for coalescing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Kept in order, never replaced.
    Keep,
    /// An `update` of this event: a newer one replaces it.
    Update(String),
    /// Periodic health readings: newer ones replace them.
    Health,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(Kind, CameraOutput)>,
    closed: bool,
    coalesced: u64,
    dropped_snapshots: u64,
}

/// The outbox of one camera.
pub(crate) struct Outbox {
    state: Mutex<State>,
    notify: Notify,
}

/// Counts of what the outbox had to give up on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Messages waiting now.
    pub waiting: usize,
    /// Updates and health readings replaced by newer ones while the consumer was slow.
    pub coalesced: u64,
    /// Snapshots dropped because too much waited.
    pub dropped_snapshots: u64,
}

impl Outbox {
    pub(crate) fn new() -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves a consistent queue: keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a message; never waits.
    pub(crate) fn push(&self, kind: Kind, out: CameraOutput) {
        let mut s = self.lock();
        if kind != Kind::Keep
            && let Some(slot) = s.queue.iter_mut().find(|(k, _)| *k == kind)
        {
            slot.1 = out;
            s.coalesced += 1;
            return;
        }
        s.queue.push_back((kind, out));
        if s.queue.len() > SNAPSHOT_BACKLOG
            && let Some(i) = s
                .queue
                .iter()
                .position(|(_, o)| matches!(o, CameraOutput::Snapshot { .. }))
        {
            s.queue.remove(i);
            s.dropped_snapshots += 1;
            tracing::warn!("camera output backlog: dropped a snapshot");
        }
        drop(s);
        self.notify.notify_one();
    }

    /// No more messages will come; the forwarder ends once the queue is empty.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }

    pub(crate) fn stats(&self) -> OutboxStats {
        let s = self.lock();
        OutboxStats {
            waiting: s.queue.len(),
            coalesced: s.coalesced,
            dropped_snapshots: s.dropped_snapshots,
        }
    }

    /// Moves messages into the agent's channel until closed and empty, or until the
    /// receiver is gone.
    pub(crate) async fn forward(self: Arc<Self>, camera: String, tx: mpsc::Sender<CameraMessage>) {
        loop {
            let next = {
                let mut s = self.lock();
                match s.queue.pop_front() {
                    Some((_, out)) => Some(out),
                    None if s.closed => return,
                    None => None,
                }
            };
            match next {
                Some(output) => {
                    let msg = CameraMessage {
                        camera: camera.clone(),
                        output,
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                None => self.notify.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::messages::{CameraEvent, EventPhase};

    fn ev(phase: EventPhase, ts: i64) -> CameraOutput {
        CameraOutput::Event(CameraEvent {
            camera: "C".into(),
            event_type: "motion".into(),
            phase,
            ts,
            score: 0.5,
            boxes: vec![],
            snapshot: Some("C.1.1".into()),
            stream: None,
            seq: None,
        })
    }

    #[tokio::test]
    async fn slow_consumer_gets_every_start_and_end_and_the_latest_update() {
        let outbox = Outbox::new();
        let (tx, mut rx) = mpsc::channel(1);
        let fwd = tokio::spawn(outbox.clone().forward("C".into(), tx));
        // Nobody receives yet: the forwarder holds one message in the channel, one in hand.
        outbox.push(Kind::Keep, ev(EventPhase::Start, 1));
        for ts in 2..50 {
            outbox.push(Kind::Update("C.1.1".into()), ev(EventPhase::Update, ts));
            outbox.push(Kind::Health, CameraOutput::Readings(vec![]));
        }
        outbox.push(Kind::Keep, ev(EventPhase::End, 50));
        outbox.close();
        let mut got = Vec::new();
        while let Some(m) = rx.recv().await {
            got.push(m.output);
        }
        fwd.await.unwrap();
        let phases: Vec<_> = got
            .iter()
            .filter_map(|o| match o {
                CameraOutput::Event(e) => Some((e.phase, e.ts)),
                _ => None,
            })
            .collect();
        assert_eq!(phases.first(), Some(&(EventPhase::Start, 1)));
        assert_eq!(phases.last(), Some(&(EventPhase::End, 50)));
        assert!(phases.contains(&(EventPhase::Update, 49)), "{phases:?}");
        assert!(got.len() <= 6, "{} messages", got.len());
        assert!(outbox.stats().coalesced > 90);
    }

    #[test]
    fn backlog_drops_snapshots_first() {
        let outbox = Outbox::new();
        outbox.push(
            Kind::Keep,
            CameraOutput::Snapshot {
                event_id: "a".into(),
                jpeg: bytes::Bytes::new(),
                width: 1,
                height: 1,
            },
        );
        for ts in 0..SNAPSHOT_BACKLOG as i64 {
            outbox.push(Kind::Keep, ev(EventPhase::Start, ts));
        }
        let s = outbox.stats();
        assert_eq!((s.waiting, s.dropped_snapshots), (SNAPSHOT_BACKLOG, 1));
    }
}
