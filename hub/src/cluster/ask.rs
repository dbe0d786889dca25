//! Requests between hubs over core NATS (request and reply): a hub asks the owner of a device's
//! partition to do what only the owner may (acknowledge an alert, write desired state), and the
//! owner answers each request on its own subject. Bodies are JSON, small and rare.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Link;
use crate::shutdown::Signal;

/// Sends `request` to `subject` (a node's) and decodes its answer; `Err` says why there is none.
pub async fn ask<Q: Serialize, A: DeserializeOwned>(
    link: &Link,
    subject: String,
    request: &Q,
    wait: Duration,
) -> Result<A, String> {
    let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    let asked = link.nats.request(subject, Bytes::from(body));
    let reply = match tokio::time::timeout(wait, asked).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("no answer".to_string()),
    };
    serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())
}

/// Answers the requests arriving on `subject` with `handle` until `stop`. Each request is
/// answered on its own task (an answer may wait for a durable write; one slow write must not
/// hold the others); a request that cannot be decoded is answered with `malformed(why)`.
pub async fn answer<Q, A, F, Fut>(
    link: Arc<Link>,
    subject: String,
    handle: F,
    malformed: fn(String) -> A,
    mut stop: Signal,
) where
    Q: DeserializeOwned + Send + 'static,
    A: Serialize + Send + 'static,
    F: Fn(Q) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = A> + Send + 'static,
{
    let mut sub = match link.nats.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot subscribe to {subject}: {e}");
            return;
        }
    };
    let handle = Arc::new(handle);
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
        let (link, handle) = (link.clone(), handle.clone());
        tokio::spawn(async move {
            let reply = match serde_json::from_slice::<Q>(&msg.payload) {
                Ok(req) => handle(req).await,
                Err(e) => malformed(format!("malformed request between hubs: {e}")),
            };
            if let Ok(body) = serde_json::to_vec(&reply)
                && let Err(e) = link.nats.publish(reply_to, Bytes::from(body)).await
            {
                tracing::warn!("reply on {subject} not sent: {e}", subject = msg.subject);
            }
        });
    }
}
