//! The seam between an ingress and the application behind it.
//!
//! The application sees only the types of this module: [`IngressEvent`]s coming in (already
//! authenticated and authorized) and a [`Publisher`] going out; it answers each message's
//! [`Disposition`] and lets an ingress know who may connect through an [`Authenticator`]. The
//! embedded broker of this crate ([`crate::Broker`]) is one implementation; a consumer of an
//! external broker or stream would be another, without touching the pipeline.

use std::sync::Arc;

use bytes::Bytes;
use protocols::access::Principal;
use tokio::sync::oneshot;

/// What happened to an inbound message, reported back to the ingress so that it acknowledges
/// (QoS 1 PUBACK) only what the hub has made durable or deliberately refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Durably stored or fully handled.
    Accepted,
    /// Refused, with the reason (already sent to the dead letters).
    Rejected(String),
    /// Not taken for lack of room (a disk below its watermark), with the reason: the sender
    /// should send it again later. MQTT 5 clients get PUBACK/PUBREC 0x97 "Quota exceeded"
    /// (the message is theirs again at once); MQTT 3.1.1 has no negative acknowledgement, so
    /// those clients get none and send it again after reconnecting.
    NoRoom(String),
}

/// One message from an authenticated client, authorized for its topic.
#[derive(Debug)]
pub struct Inbound {
    /// Who sent it.
    pub principal: Arc<Principal>,
    /// The MQTT client id (an app may connect as `ID.suffix`).
    pub client_id: Arc<str>,
    /// The topic name (aliases already resolved).
    pub topic: String,
    /// The application payload, as the client sent it.
    pub payload: Bytes,
    /// Hub time of arrival, epoch milliseconds.
    pub received_ms: i64,
    /// Monotonic time of arrival (the pipeline's latency histogram).
    pub arrived: std::time::Instant,
    /// Completed by the pipeline; the ingress acknowledges the message when it fires.
    pub done: Option<oneshot::Sender<Disposition>>,
}

impl Inbound {
    /// Reports the message's fate to the ingress (no-op when nobody waits).
    pub fn finish(&mut self, d: Disposition) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(d);
        }
    }
}

/// What the ingress tells the pipeline.
#[derive(Debug)]
pub enum IngressEvent {
    /// A message to process.
    Message(Inbound),
    /// A client's publish or subscribe was refused by the access rules; nothing was stored or
    /// routed. The pipeline counts it and publishes a dead letter.
    Refused {
        /// Who tried.
        principal: Arc<Principal>,
        /// The topic or filter.
        topic: String,
        /// The access policy's reason, for the dead letter.
        reason: String,
        /// The payload of a refused publish (empty for subscribes).
        payload: Bytes,
    },
    /// A client connected (after authentication).
    Connected {
        /// Who authenticated.
        principal: Arc<Principal>,
        /// The client id it connected with (assigned when it sent none).
        client_id: Arc<str>,
    },
    /// A client's connection ended.
    Disconnected {
        /// Who was connected.
        principal: Arc<Principal>,
        /// The client id of the connection that ended.
        client_id: Arc<str>,
        /// Whether it said DISCONNECT (no will) rather than dropping.
        graceful: bool,
    },
}

/// A message the hub sends to clients.
#[derive(Clone, Debug)]
pub struct Outbound {
    /// Topic name (a contract topic: feeds, twins, alerts, commands).
    pub topic: String,
    /// Application payload.
    pub payload: Bytes,
    /// Keep as the topic's retained message (an empty payload clears it).
    pub retain: bool,
    /// Deliver at QoS 0 whatever the subscription's QoS (protocols whose commands must not be
    /// redelivered, e.g. Sparkplug B NCMD/DCMD); otherwise at most QoS 1.
    pub at_most_once: bool,
}

/// Sends messages to the clients subscribed to them.
pub trait Publisher: Send + Sync + 'static {
    /// Routes a message to matching subscriptions (and the retained store when `retain`).
    /// Never blocks: a subscriber that cannot keep up loses QoS 0 messages, counted.
    fn publish(&self, msg: Outbound);
}

/// Why a client was not let in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown id or wrong secret (not told apart, on purpose).
    #[error("bad user name or password")]
    BadCredentials,
    /// The client id does not belong to the user name.
    #[error("client id `{0}` does not belong to this user")]
    ClientIdMismatch(String),
}

/// Checks credentials against the registry of devices, agents and apps.
pub trait Authenticator: Send + Sync + 'static {
    /// Authenticates a connection. Argon2 verification is slow, so this is async and the
    /// implementation runs it off the I/O threads.
    fn authenticate(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> impl std::future::Future<Output = Result<Arc<Principal>, AuthError>> + Send;

    /// Authenticates a connection by the client certificate (DER, the end entity) that the
    /// TLS handshake verified against the configured client CA; no password is needed. The
    /// default knows no certificate identities and refuses.
    fn authenticate_certificate(
        &self,
        client_id: &str,
        username: Option<&str>,
        certificate: &[u8],
    ) -> impl std::future::Future<Output = Result<Arc<Principal>, AuthError>> + Send {
        let _ = (client_id, username, certificate);
        std::future::ready(Err(AuthError::BadCredentials))
    }
}
