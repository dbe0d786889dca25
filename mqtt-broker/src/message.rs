//! What the broker routes: a published [`Message`], shared by every [`Delivery`] of it to a
//! session. The router, the sessions and the connections all speak these types, so they live
//! apart from each of them.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

/// A message as routed; one allocation shared by every delivery of it.
#[derive(Debug)]
pub(crate) struct Message {
    /// Topic name (aliases already resolved).
    pub topic: Arc<str>,
    /// Application payload, shared by every delivery.
    pub payload: Bytes,
    /// MQTT 5 properties that travel with it (encoded).
    pub properties: Bytes,
    /// QoS it was published with.
    pub qos: u8,
    /// Retain flag it was published with.
    pub retain: bool,
    /// Client id of the publisher (none for the hub), for MQTT 5 no-local.
    pub origin: Option<Arc<str>>,
    /// MQTT 5 message expiry: not delivered after this instant.
    pub expires_at: Option<Instant>,
}

impl Message {
    /// The expiry interval left, in whole seconds rounded up; Err once expired.
    pub fn expiry_left(&self) -> Result<Option<u32>, ()> {
        let Some(at) = self.expires_at else {
            return Ok(None);
        };
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(());
        }
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        Ok(Some(secs.min(u64::from(u32::MAX)) as u32))
    }
}

/// One message on its way to one session.
#[derive(Clone, Debug)]
pub(crate) struct Delivery {
    /// The message, shared with the other deliveries of it.
    pub msg: Arc<Message>,
    /// QoS it is delivered with: min(published, granted).
    pub qos: u8,
    /// Retain flag as delivered.
    pub retain: bool,
    /// MQTT 5 subscription identifiers of the matching subscriptions.
    pub subscription_ids: Vec<u32>,
}
