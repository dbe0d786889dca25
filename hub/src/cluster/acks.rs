//! Acknowledgements of alerts across hubs: an operator may acknowledge any alert on any hub,
//! but only the hub that works the alert's device changes it (its book holds the episode). A
//! hub that does not work it asks the owner over core NATS (`district.alerts.ack.{node}`,
//! request and reply) and answers with what the owner said.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Link, ask};
use crate::alerts::{ACK_WAIT, AckError, AckRoute, AlertBook, AlertDoc, StoredAlert};
use crate::registry::Registry;
use crate::shutdown::Signal;

/// The subject a node answers acknowledgements on.
pub fn subject(node: &str) -> String {
    format!("district.alerts.ack.{node}")
}

#[derive(Serialize, Deserialize)]
struct AckRequest {
    id: String,
    by: String,
    now_ms: i64,
}

#[derive(Serialize, Deserialize)]
enum AckReply {
    Done(Box<AlertDoc>),
    NotFound(String),
    Cleared(String),
    NotStored(String),
}

impl From<Result<AlertDoc, AckError>> for AckReply {
    fn from(r: Result<AlertDoc, AckError>) -> AckReply {
        match r {
            Ok(doc) => AckReply::Done(Box::new(doc)),
            Err(AckError::NotFound(id)) => AckReply::NotFound(id),
            Err(AckError::Cleared(id)) => AckReply::Cleared(id),
            Err(AckError::NotStored(why)) => AckReply::NotStored(why),
        }
    }
}

/// Sends acknowledgements to the owner of the alert's device.
pub struct AckRouter {
    /// The connections.
    pub link: Arc<Link>,
    /// Devices and agents (partition keys).
    pub registry: Arc<Registry>,
}

impl AckRouter {
    async fn owner(&self, device: &str) -> Result<Option<String>, AckError> {
        let Some(d) = self.registry.device_by_id(device) else {
            return Err(AckError::NotFound(device.to_string()));
        };
        self.link
            .owner_of(&self.registry, d)
            .await
            .map_err(|e| AckError::NotStored(e.to_string()))
    }
}

impl AckRoute for AckRouter {
    fn ack<'a>(
        &'a self,
        alert: &'a StoredAlert,
        by: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<AlertDoc, AckError>> {
        Box::pin(async move {
            let moving = || {
                AckError::NotStored(
                    "the alert's device is changing hubs; try again in a few seconds".into(),
                )
            };
            let Some(owner) = self.owner(&alert.doc.alert.device).await? else {
                return Err(moving());
            };
            let req = AckRequest {
                id: alert.doc.alert.id.clone(),
                by: by.to_string(),
                now_ms,
            };
            let reply = ask::ask(
                &self.link,
                subject(&owner),
                &req,
                ACK_WAIT + Duration::from_secs(1),
            )
            .await
            .map_err(|e| AckError::NotStored(format!("hub {owner}: {e}")))?;
            match reply {
                AckReply::Done(doc) => Ok(*doc),
                // The owner no longer has it: the partition moved since we looked.
                AckReply::NotFound(_) => Err(moving()),
                AckReply::Cleared(id) => Err(AckError::Cleared(id)),
                AckReply::NotStored(why) => Err(AckError::NotStored(why)),
            }
        })
    }
}

/// Answers other hubs' acknowledgements of alerts this hub works, until `stop`.
pub async fn serve(link: Arc<Link>, alerts: Arc<AlertBook>, stop: Signal) {
    let subject = subject(link.node());
    let handle = move |req: AckRequest| {
        let alerts = alerts.clone();
        async move { AckReply::from(alerts.ack_here(&req.id, &req.by, req.now_ms).await) }
    };
    ask::answer(link, subject, handle, AckReply::NotStored, stop).await;
}
