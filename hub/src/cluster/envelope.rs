//! What hubs send each other: ingress events on the replicated log (JetStream) and outbound
//! messages on the fan-out subject (core NATS). postcard, like the agents' batches; every field
//! owned, so a message decodes into the types the pipeline and the outlet take.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use mqtt_broker::ingress::{Inbound, IngressEvent};
use protocols::access::Principal;

/// Version byte in front of every envelope; a hub refuses (and counts) what it cannot read.
const VERSION: u8 = 1;

/// An ingress event on its way from the hub that took it to the hub that owns its partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Ingest {
    /// A message (already authenticated and authorized by the receiving hub).
    Message {
        /// Who sent it.
        sender: Principal,
        /// The MQTT client id.
        client_id: String,
        /// The topic.
        topic: String,
        /// The payload as sent.
        payload: Vec<u8>,
        /// Hub time of arrival at the receiving hub.
        received_ms: i64,
    },
    /// A client connected to some hub.
    Connected {
        /// Who.
        sender: Principal,
        /// Its client id.
        client_id: String,
    },
    /// A client's connection to some hub ended.
    Disconnected {
        /// Who.
        sender: Principal,
        /// Its client id.
        client_id: String,
        /// Whether it said DISCONNECT.
        graceful: bool,
    },
}

/// Why an envelope could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Empty, or written by a newer hub.
    #[error("unknown envelope version {0:?}")]
    Version(Option<u8>),
    /// Not a valid envelope.
    #[error("malformed envelope: {0}")]
    Malformed(#[from] postcard::Error),
}

impl Ingest {
    /// The envelope of an ingress event; `None` for what stays on the receiving hub (refusals:
    /// the receiving hub writes their dead letter itself).
    pub fn of(event: &IngressEvent) -> Option<Ingest> {
        match event {
            IngressEvent::Message(m) => Some(Ingest::Message {
                sender: Principal::clone(&m.principal),
                client_id: m.client_id.to_string(),
                topic: m.topic.clone(),
                payload: m.payload.to_vec(),
                received_ms: m.received_ms,
            }),
            IngressEvent::Connected {
                principal,
                client_id,
            } => Some(Ingest::Connected {
                sender: Principal::clone(principal),
                client_id: client_id.to_string(),
            }),
            IngressEvent::Disconnected {
                principal,
                client_id,
                graceful,
            } => Some(Ingest::Disconnected {
                sender: Principal::clone(principal),
                client_id: client_id.to_string(),
                graceful: *graceful,
            }),
            IngressEvent::Refused { .. } => None,
        }
    }

    /// The ingress event the owning hub's pipeline takes; a message's `done` is `done`.
    pub fn into_event(
        self,
        done: Option<tokio::sync::oneshot::Sender<mqtt_broker::ingress::Disposition>>,
    ) -> IngressEvent {
        match self {
            Ingest::Message {
                sender,
                client_id,
                topic,
                payload,
                received_ms,
            } => IngressEvent::Message(Inbound {
                principal: Arc::new(sender),
                client_id: client_id.into(),
                topic,
                payload: Bytes::from(payload),
                received_ms,
                arrived: std::time::Instant::now(),
                done,
            }),
            Ingest::Connected { sender, client_id } => IngressEvent::Connected {
                principal: Arc::new(sender),
                client_id: client_id.into(),
            },
            Ingest::Disconnected {
                sender,
                client_id,
                graceful,
            } => IngressEvent::Disconnected {
                principal: Arc::new(sender),
                client_id: client_id.into(),
                graceful,
            },
        }
    }

    /// The bytes on the log.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Reads an envelope from the log.
    pub fn decode(bytes: &[u8]) -> Result<Ingest, EnvelopeError> {
        decode(bytes)
    }
}

/// An outbound message on its way to every hub's MQTT and live subscribers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fanout {
    /// The MQTT topic (grants are checked against it by each hub).
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Retained (twins).
    pub retain: bool,
    /// QoS 0 (Sparkplug commands).
    pub at_most_once: bool,
    /// For the live stream only, with this event name (camera events); not sent over MQTT.
    pub live_only: Option<String>,
}

impl Fanout {
    /// The bytes on the subject.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Reads a fan-out message.
    pub fn decode(bytes: &[u8]) -> Result<Fanout, EnvelopeError> {
        decode(bytes)
    }
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let out = vec![VERSION];
    // Serializing owned strings, vectors and integers into a Vec cannot fail.
    postcard::to_extend(v, out).unwrap_or_else(|_| vec![VERSION])
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, EnvelopeError> {
    match bytes.split_first() {
        Some((&VERSION, body)) => Ok(postcard::from_bytes(body)?),
        other => Err(EnvelopeError::Version(other.map(|(v, _)| *v))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ingress_message_crosses_the_log_unchanged() {
        let event = IngressEvent::Message(Inbound {
            principal: Arc::new(Principal::App {
                id: "ops".into(),
                grants: vec!["v1/feeds/#".into()],
            }),
            client_id: "ops.1".into(),
            topic: "v1/twin/SL-1/desired".into(),
            payload: Bytes::from_static(b"{\"dim\":40}"),
            received_ms: 1_795_334_400_000,
            arrived: std::time::Instant::now(),
            done: None,
        });
        let env = Ingest::of(&event).expect("messages travel");
        let back = Ingest::decode(&env.encode()).expect("decodes");
        assert_eq!(back, env);
        let IngressEvent::Message(m) = back.into_event(None) else {
            panic!("a message stays a message");
        };
        assert_eq!(m.topic, "v1/twin/SL-1/desired");
        assert_eq!(&*m.client_id, "ops.1");
        assert_eq!(m.received_ms, 1_795_334_400_000);
        assert!(matches!(&*m.principal, Principal::App { id, .. } if id == "ops"));
    }

    #[test]
    fn garbage_and_newer_versions_are_refused() {
        assert!(matches!(
            Ingest::decode(&[]),
            Err(EnvelopeError::Version(None))
        ));
        assert!(matches!(
            Ingest::decode(&[2, 0]),
            Err(EnvelopeError::Version(Some(2)))
        ));
        assert!(matches!(
            Fanout::decode(&[1, 0xff, 0xff]),
            Err(EnvelopeError::Malformed(_))
        ));
    }
}
