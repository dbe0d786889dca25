//! The router: the first stage. Messages go to the decode workers, spread by a hash of the
//! client id so one client's messages stay in order while different clients decode in
//! parallel; connection events go to the status board and refusals of the ingress to the dead
//! letters.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::{mpsc, oneshot};

use super::deadletter::{DeadLetters, Source};
use super::status::StatusBoard;
use crate::metrics::Metrics;
use mqtt_broker::ingress::{Inbound, IngressEvent};
use protocols::deadletter::DeadLetterReason;

/// What the router updates besides the decode queues.
pub struct Router {
    status: Arc<StatusBoard>,
    dead_letters: DeadLetters,
    metrics: Arc<Metrics>,
}

impl Router {
    /// A router reporting connections to `status` and refusals to `dead_letters`.
    pub fn new(status: Arc<StatusBoard>, dead_letters: DeadLetters, metrics: Arc<Metrics>) -> Self {
        Router {
            status,
            dead_letters,
            metrics,
        }
    }

    /// Routes until `events` is closed and drained; `stop` closes it (what is queued is still
    /// routed).
    pub async fn run(
        self,
        mut events: mpsc::Receiver<IngressEvent>,
        workers: Vec<mpsc::Sender<Inbound>>,
        stop: oneshot::Receiver<()>,
    ) {
        let hasher = BuildHasherDefault::<DefaultHasher>::default();
        let mut stop = Some(stop);
        loop {
            let next = tokio::select! {
                biased;
                ev = events.recv() => ev,
                _ = async { if let Some(s) = stop.as_mut() { let _ = s.await; } }, if stop.is_some() => {
                    // Refuse new events; the ones queued are still taken below.
                    events.close();
                    stop = None;
                    continue;
                }
            };
            let Some(ev) = next else { break };
            match ev {
                IngressEvent::Message(m) => {
                    let w = (hasher.hash_one(&*m.client_id) % workers.len() as u64) as usize;
                    self.metrics.decode_queue.sent.fetch_add(1, Relaxed);
                    if workers[w].send(m).await.is_err() {
                        tracing::error!("decode worker is gone; stopping the router");
                        return;
                    }
                }
                IngressEvent::Refused {
                    principal,
                    topic,
                    reason,
                    payload,
                } => {
                    let from = Source {
                        owner: principal.id(),
                        client: principal.id(),
                        topic: &topic,
                        ts_ms: protocols::time::now_ms(),
                    };
                    // The ingress says why in words; all its refusals count as one reason.
                    self.dead_letters
                        .send(&from, DeadLetterReason::Refused, &reason, &payload);
                }
                IngressEvent::Connected { principal, .. } => {
                    self.status.connected(&principal, protocols::time::now_ms());
                }
                IngressEvent::Disconnected { principal, .. } => {
                    self.status
                        .disconnected(&principal, protocols::time::now_ms());
                }
            }
        }
    }
}
