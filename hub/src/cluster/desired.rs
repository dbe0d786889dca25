//! Desired state written over HTTP in a cluster: only the hub that works the device's partition
//! changes its twin (it holds the twin's version, the live command and the reported values the
//! command settles against). A `PATCH /api/v1/devices/{id}/desired` on another hub is asked of
//! the owner over core NATS (`district.twin.desired.{node}`, request and reply), and answered
//! with what the owner said, status included. Over MQTT the same write already reaches the
//! owner through the log (the partition key of `v1/twin/{device}/...`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use protocols::messages::{DesiredUpdate, Twin};
use serde::{Deserialize, Serialize};

use super::Link;
use crate::registry::{Device, Registry};
use crate::shutdown::Signal;
use crate::twin::Twins;

/// Longest a hub waits for the owner's answer.
const ASK_WAIT: Duration = Duration::from_secs(10);

/// The subject a node answers desired-state writes on.
pub fn subject(node: &str) -> String {
    format!("district.twin.desired.{node}")
}

#[derive(Serialize, Deserialize)]
struct DesiredRequest {
    device: String,
    update: DesiredUpdate,
    now_ms: i64,
}

#[derive(Serialize, Deserialize)]
enum DesiredReply {
    Done(Box<Twin>),
    Refused { status: u16, detail: String },
}

/// A write refused, with the HTTP status that answers it.
#[derive(Debug)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// Why.
    pub detail: String,
}

fn unavailable(detail: impl Into<String>) -> Refusal {
    Refusal {
        status: 503,
        detail: detail.into(),
    }
}

/// Applies a desired-state update where the device is worked: here, or on its owner.
pub async fn set(
    link: &Link,
    registry: &Registry,
    twins: &Twins,
    device: &Device,
    update: DesiredUpdate,
    now_ms: i64,
) -> Result<Twin, Refusal> {
    let owner = link
        .owner_of(registry, device)
        .await
        .map_err(|e| unavailable(format!("the device's hub cannot be found now: {e}")))?
        .ok_or_else(|| unavailable("the device is changing hubs; try again in a few seconds"))?;
    if owner == link.node() {
        return twins
            .set_desired(&device.id, update, now_ms)
            .await
            .map_err(|e| Refusal {
                status: e.http_status(),
                detail: e.to_string(),
            });
    }
    let req = DesiredRequest {
        device: device.id.to_string(),
        update,
        now_ms,
    };
    let body = serde_json::to_vec(&req).map_err(|e| unavailable(e.to_string()))?;
    let asked = link.nats.request(subject(&owner), Bytes::from(body));
    let reply = match tokio::time::timeout(ASK_WAIT, asked).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return Err(unavailable(format!("hub {owner}: {e}"))),
        Err(_) => return Err(unavailable(format!("hub {owner} did not answer"))),
    };
    match serde_json::from_slice::<DesiredReply>(&reply.payload) {
        Ok(DesiredReply::Done(twin)) => Ok(*twin),
        Ok(DesiredReply::Refused { status, detail }) => Err(Refusal { status, detail }),
        Err(e) => Err(unavailable(format!("hub {owner}: {e}"))),
    }
}

/// Answers other hubs' desired-state writes for devices this hub works, until `stop`.
pub async fn serve(link: Arc<Link>, twins: Arc<Twins>, mut stop: Signal) {
    let subject = subject(link.node());
    let mut sub = match link.nats.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("desired state: cannot subscribe to {subject}: {e}");
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
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let (link, twins) = (link.clone(), twins.clone());
        // Each waits for its write; one slow write must not hold the others.
        tokio::spawn(async move {
            let reply = match serde_json::from_slice::<DesiredRequest>(&msg.payload) {
                Ok(req) => match twins.set_desired(&req.device, req.update, req.now_ms).await {
                    Ok(twin) => DesiredReply::Done(Box::new(twin)),
                    Err(e) => DesiredReply::Refused {
                        status: e.http_status(),
                        detail: e.to_string(),
                    },
                },
                Err(e) => DesiredReply::Refused {
                    status: 400,
                    detail: format!("malformed request between hubs: {e}"),
                },
            };
            if let Ok(body) = serde_json::to_vec(&reply)
                && let Err(e) = link.nats.publish(reply_to, Bytes::from(body)).await
            {
                tracing::warn!("desired-state reply not sent: {e}");
            }
        });
    }
}
