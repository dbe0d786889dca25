//! Desired state written over HTTP in a cluster: only the hub that works the device's partition
//! changes its twin (it holds the twin's version, the live command and the reported values the
//! command settles against). A `PATCH /api/v1/devices/{id}/desired` on another hub is asked of
//! the owner over core NATS (`district.twin.desired.{node}`, request and reply), and answered
//! with what the owner said, status included. Over MQTT the same write already reaches the
//! owner through the log (the partition key of `v1/twin/{device}/...`).

use std::sync::Arc;
use std::time::Duration;

use protocols::messages::{DesiredUpdate, Twin};
use serde::{Deserialize, Serialize};

use super::{Link, ask};
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
    let reply = ask::ask(link, subject(&owner), &req, ASK_WAIT)
        .await
        .map_err(|e| unavailable(format!("hub {owner}: {e}")))?;
    match reply {
        DesiredReply::Done(twin) => Ok(*twin),
        DesiredReply::Refused { status, detail } => Err(Refusal { status, detail }),
    }
}

/// Answers other hubs' desired-state writes for devices this hub works, until `stop`.
pub async fn serve(link: Arc<Link>, twins: Arc<Twins>, stop: Signal) {
    let subject = subject(link.node());
    let handle = move |req: DesiredRequest| {
        let twins = twins.clone();
        async move {
            match twins.set_desired(&req.device, req.update, req.now_ms).await {
                Ok(twin) => DesiredReply::Done(Box::new(twin)),
                Err(e) => DesiredReply::Refused {
                    status: e.http_status(),
                    detail: e.to_string(),
                },
            }
        }
    };
    let malformed = |detail| DesiredReply::Refused {
        status: 400,
        detail,
    };
    ask::answer(link, subject, handle, malformed, stop).await;
}
