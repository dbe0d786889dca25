//! Everything the hub sends: through the ingress [`Publisher`] to MQTT clients, and, for the
//! documents apps stream over HTTP (feeds, twins, alerts), onto the live bus that
//! `GET /api/v1/stream` subscribers read.
//!
//! In cluster mode an outlet sends everything to a [`Remote`] instead (every hub of the
//! cluster, this one included), and each hub's relay hands what arrives to
//! [`Outlet::deliver`]: its own broker and live bus. So a subscriber on any hub gets each
//! message once, whichever hub produced it.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast;

use mqtt_broker::ingress::{Outbound, Publisher};

/// Capacity of the live bus; a stream subscriber further behind than this skips ahead.
const LIVE_CAPACITY: usize = 4096;

/// What a live update is, as the stream names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveKind {
    /// A feed message.
    Feed,
    /// A twin document.
    Twin,
    /// An alert change.
    Alert,
    /// A camera event (live stream only; MQTT apps get it in the camera's feed).
    Event,
}

impl LiveKind {
    /// The SSE event name.
    pub fn name(self) -> &'static str {
        match self {
            LiveKind::Feed => "feed",
            LiveKind::Twin => "twin",
            LiveKind::Alert => "alert",
            LiveKind::Event => "event",
        }
    }

    /// The kind of an SSE event name.
    pub fn from_name(name: &str) -> Option<LiveKind> {
        [
            LiveKind::Feed,
            LiveKind::Twin,
            LiveKind::Alert,
            LiveKind::Event,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    fn of(topic: &str) -> Option<LiveKind> {
        let rest = topic.strip_prefix("v1/")?;
        if rest.starts_with("feeds/") {
            Some(LiveKind::Feed)
        } else if rest.starts_with("twin/") && !rest.ends_with("/desired") {
            Some(LiveKind::Twin)
        } else if rest.starts_with("alerts/") {
            Some(LiveKind::Alert)
        } else {
            None
        }
    }
}

/// One live update.
#[derive(Clone, Debug)]
pub struct LiveUpdate {
    /// Feed, twin, alert or camera event: the stream's event name.
    pub kind: LiveKind,
    /// The MQTT topic it was published on (grants are checked against it).
    pub topic: Arc<str>,
    /// The JSON document.
    pub payload: Bytes,
}

/// Where a clustered hub's outbound messages go: to every hub of the cluster.
pub trait Remote: Send + Sync + 'static {
    /// Sends a message (or, with `live_only`, a live-stream-only document) to every hub.
    /// Never blocks.
    fn send(&self, msg: Outbound, live_only: Option<LiveKind>);
}

/// The hub's outbound side.
#[derive(Clone)]
pub struct Outlet {
    publisher: Arc<dyn Publisher>,
    live: broadcast::Sender<LiveUpdate>,
    remote: Option<Arc<dyn Remote>>,
}

impl Outlet {
    /// Sends through `publisher` and a new live bus.
    pub fn new(publisher: Arc<dyn Publisher>) -> Outlet {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        Outlet {
            publisher,
            live,
            remote: None,
        }
    }

    /// Sends through `remote` to every hub of a cluster; what comes back through this hub's
    /// relay is delivered to `publisher` and the live bus by [`Outlet::deliver`].
    pub fn clustered(publisher: Arc<dyn Publisher>, remote: Arc<dyn Remote>) -> Outlet {
        Outlet {
            remote: Some(remote),
            ..Outlet::new(publisher)
        }
    }

    /// Hands a message from the cluster to this hub's subscribers: MQTT unless `live_only`,
    /// and the live bus.
    pub fn deliver(&self, msg: Outbound, live_only: Option<LiveKind>) {
        if let Some(kind) = live_only.or_else(|| LiveKind::of(&msg.topic))
            && self.live.receiver_count() > 0
        {
            let _ = self.live.send(LiveUpdate {
                kind,
                topic: msg.topic.as_str().into(),
                payload: msg.payload.clone(),
            });
        }
        if live_only.is_none() {
            self.publisher.publish(msg);
        }
    }

    /// Publishes a message to MQTT subscribers and, if it is a feed, twin or alert, to the live
    /// bus.
    pub fn publish(&self, topic: &str, payload: Bytes, retain: bool) {
        if let Some(remote) = &self.remote {
            let msg = Outbound {
                topic: topic.to_string(),
                payload,
                retain,
                at_most_once: false,
            };
            remote.send(msg, None);
            return;
        }
        if self.live.receiver_count() > 0
            && let Some(kind) = LiveKind::of(topic)
        {
            let _ = self.live.send(LiveUpdate {
                kind,
                topic: topic.into(),
                payload: payload.clone(),
            });
        }
        self.publisher.publish(Outbound {
            topic: topic.to_string(),
            payload,
            retain,
            at_most_once: false,
        });
    }

    /// Publishes to MQTT subscribers at QoS 0, never retained: commands a protocol says must
    /// not be redelivered (Sparkplug B NCMD and DCMD, tck-id-payloads-ncmd-qos and
    /// tck-id-payloads-dcmd-qos).
    pub fn publish_at_most_once(&self, topic: &str, payload: Bytes) {
        let msg = Outbound {
            topic: topic.to_string(),
            payload,
            retain: false,
            at_most_once: true,
        };
        match &self.remote {
            Some(remote) => remote.send(msg, None),
            None => self.publisher.publish(msg),
        }
    }

    /// Sends a document to live stream subscribers only (grants are checked against
    /// `topic`), not over MQTT.
    pub fn publish_live(&self, kind: LiveKind, topic: &str, payload: Bytes) {
        if let Some(remote) = &self.remote {
            let msg = Outbound {
                topic: topic.to_string(),
                payload,
                retain: false,
                at_most_once: true,
            };
            remote.send(msg, Some(kind));
            return;
        }
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(LiveUpdate {
                kind,
                topic: topic.into(),
                payload,
            });
        }
    }

    /// A new subscription to live updates.
    pub fn subscribe_live(&self) -> broadcast::Receiver<LiveUpdate> {
        self.live.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_kinds() {
        assert_eq!(LiveKind::of("v1/feeds/a/b"), Some(LiveKind::Feed));
        assert_eq!(LiveKind::of("v1/twin/b"), Some(LiveKind::Twin));
        assert_eq!(LiveKind::of("v1/twin/b/desired"), None);
        assert_eq!(LiveKind::of("v1/alerts/red/b"), Some(LiveKind::Alert));
        assert_eq!(LiveKind::of("v1/agents/a/ack"), None);
        assert_eq!(LiveKind::of("v1/deadletter/a"), None);
    }
}
