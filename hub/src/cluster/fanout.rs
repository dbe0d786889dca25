//! Outbound messages to every hub: the outlet's [`Remote`] in cluster mode publishes on core
//! NATS, and each hub's relay delivers what arrives to its own subscribers.
//!
//! Core NATS, not JetStream: feeds, twins and alerts are published at most once per hub, like
//! MQTT QoS 0 between brokers. What must not be lost is already durable before it is
//! published (readings, alerts, twins' state in the store); an agent whose ack was lost sends
//! the batch again and is acknowledged again (the store answers `Duplicate`).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::envelope::Fanout;
use super::{FANOUT_SUBJECT, Link};
use crate::outbound::{LiveKind, Outlet, Remote};
use crate::shutdown::Signal;
use mqtt_broker::ingress::Outbound;

/// Messages waiting for the NATS connection, at most; beyond it they are dropped and counted
/// (a NATS outage must not grow the hub without bound).
const QUEUE: usize = 65_536;

/// The outlet's remote: a queue in front of the NATS publisher task.
pub struct NatsRemote {
    tx: mpsc::Sender<Bytes>,
    link: Arc<Link>,
}

impl NatsRemote {
    /// The remote and the task that publishes its queue (spawn it).
    pub fn new(link: Arc<Link>) -> (NatsRemote, impl Future<Output = ()> + Send + 'static) {
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
        let client = link.nats.clone();
        let task = async move {
            while let Some(payload) = rx.recv().await {
                if let Err(e) = client.publish(FANOUT_SUBJECT, payload).await {
                    tracing::warn!("fan-out publish failed: {e}");
                }
            }
            let _ = client.flush().await;
        };
        (NatsRemote { tx, link }, task)
    }
}

impl Remote for NatsRemote {
    fn send(&self, msg: Outbound, live_only: Option<LiveKind>) {
        let env = Fanout {
            topic: msg.topic,
            payload: msg.payload.to_vec(),
            retain: msg.retain,
            at_most_once: msg.at_most_once,
            live_only: live_only.map(|k| k.name().to_string()),
        };
        if self.tx.try_send(Bytes::from(env.encode())).is_err() {
            self.link
                .state
                .counters
                .fanout_dropped
                .fetch_add(1, Relaxed);
        }
    }
}

/// Delivers every hub's outbound messages to this hub's subscribers until `stop`.
pub async fn relay(link: Arc<Link>, outlet: Outlet, mut stop: Signal) {
    let mut sub = match link.nats.subscribe(FANOUT_SUBJECT).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("fan-out: cannot subscribe to {FANOUT_SUBJECT}: {e}");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            m = sub.next() => match m {
                Some(m) => m,
                None => break,
            },
            _ = stop.recv() => break,
        };
        match Fanout::decode(&msg.payload) {
            Ok(f) => {
                link.state.counters.relayed.fetch_add(1, Relaxed);
                let live_only = f.live_only.as_deref().and_then(LiveKind::from_name);
                outlet.deliver(
                    Outbound {
                        topic: f.topic,
                        payload: Bytes::from(f.payload),
                        retain: f.retain,
                        at_most_once: f.at_most_once,
                    },
                    live_only,
                );
            }
            Err(e) => {
                link.state.counters.envelope_errors.fetch_add(1, Relaxed);
                tracing::warn!("fan-out message dropped: {e}");
            }
        }
    }
}
