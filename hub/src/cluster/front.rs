//! The receiving side of a hub in a cluster: every ingress event goes into the replicated log
//! on its partition's subject, and a message is acknowledged to its sender once JetStream has
//! it on a majority of its replicas.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};

use super::envelope::Ingest;
use super::{Link, ingest_subject, partition_key, partition_of};
use crate::registry::Registry;
use crate::shutdown::Signal;
use mqtt_broker::ingress::{Disposition, IngressEvent};

/// Messages published and not yet acknowledged by JetStream, at most (beyond it the front
/// stops reading the broker's events, and the broker's own windows push back on clients).
const IN_FLIGHT: usize = 8192;
/// A publish whose ack did not come within the context's timeout (a stream leader being
/// elected, a NATS node gone) is sent again with the same message id, which JetStream
/// deduplicates, this many times before the sender is told to send it again later (about 40 s).
const ATTEMPTS: u32 = 15;

/// Reads the broker's (and the HJ 212 listener's) events until `stop` (then what is queued) or
/// until every sender is gone, publishing them to the log. (The broker may outlive its events:
/// it is also the outlet's publisher, so the queue is closed here rather than waited out.) Refusals stay on this hub: `local` is its own pipeline, which writes their
/// dead letters.
pub async fn run(
    link: Arc<Link>,
    registry: Arc<Registry>,
    mut events: mpsc::Receiver<IngressEvent>,
    local: mpsc::Sender<IngressEvent>,
    mut stop: Signal,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut counter: u64 = 0;
    loop {
        let event = tokio::select! {
            e = events.recv() => match e {
                Some(e) => e,
                None => break,
            },
            _ = stop.recv(), if !stop.is_set() => {
                events.close();
                continue;
            }
        };
        let Some(env) = Ingest::of(&event) else {
            let _ = local.send(event).await;
            continue;
        };
        let (principal, topic) = match &event {
            IngressEvent::Message(m) => (m.principal.clone(), m.topic.as_str()),
            IngressEvent::Connected { principal, .. }
            | IngressEvent::Disconnected { principal, .. } => (principal.clone(), ""),
            IngressEvent::Refused { .. } => continue,
        };
        let partition = partition_of(
            partition_key(&registry, &principal, topic),
            link.settings.partitions,
        );
        counter += 1;
        let id = message_id(&event, link.node(), counter);
        let done = match event {
            IngressEvent::Message(mut m) => m.done.take(),
            _ => None,
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let payload = Bytes::from(env.encode());
        // Sent here, in the order the ingress delivered them (one client's messages keep their
        // order in the log); only the wait for JetStream's ack runs on its own.
        let first = send(&link, partition, &id, payload.clone()).await;
        let link = link.clone();
        tokio::spawn(async move {
            let outcome = match first {
                Ok(ack) => match ack.await {
                    // The log already has this batch (an agent sending it again because its
                    // ack was lost): without a new entry the partition's owner would never see
                    // it again and the agent would wait forever. The copy goes in under its own
                    // name; the store knows the origin and answers it as a duplicate, with an
                    // ack.
                    Ok(a) if a.duplicate => {
                        let again =
                            format!("{id}+{}:{}:{counter}", link.node(), std::process::id());
                        publish(&link, partition, &again, payload, "a duplicate".into()).await
                    }
                    Ok(_) => Ok(()),
                    Err(e) => publish(&link, partition, &id, payload, e.to_string()).await,
                },
                Err(e) => publish(&link, partition, &id, payload, e).await,
            };
            drop(permit);
            let d = match outcome {
                Ok(()) => {
                    link.state.counters.published.fetch_add(1, Relaxed);
                    Disposition::Accepted
                }
                Err(e) => {
                    link.state.counters.publish_failed.fetch_add(1, Relaxed);
                    tracing::warn!(partition, "ingest not taken by JetStream: {e}");
                    Disposition::NoRoom(format!("cluster log unavailable: {e}"))
                }
            };
            if let Some(done) = done {
                let _ = done.send(d);
            }
        });
    }
}

/// The log's name for an event: an agent batch by its origin (the same on whichever hub it
/// arrives), anything else by this hub and a counter (so only this hub's own retries match).
fn message_id(event: &IngressEvent, node: &str, counter: u64) -> String {
    if let IngressEvent::Message(m) = event
        && m.topic.ends_with("/batch")
        && let Ok((agent, stream, seq)) = protocols::batch::peek_origin(&m.payload)
    {
        return format!("{agent}:{stream}:{seq}");
    }
    format!("{node}:{}:{counter}", std::process::id())
}

/// Hands one publish to the connection.
async fn send(
    link: &Link,
    partition: u32,
    id: &str,
    payload: Bytes,
) -> Result<PublishAckFuture, String> {
    let msg = PublishMessage::build().payload(payload).message_id(id);
    link.js
        .send_publish(ingest_subject(partition), msg)
        .await
        .map_err(|e| e.to_string())
}

/// Publishes again under the same message id (JetStream drops the copy if the first one did
/// arrive) until acknowledged or [`ATTEMPTS`] are used; `first` is why the first one failed.
async fn publish(
    link: &Link,
    partition: u32,
    id: &str,
    payload: Bytes,
    first: String,
) -> Result<(), String> {
    let mut last = first;
    for attempt in 1..ATTEMPTS {
        tokio::time::sleep(Duration::from_millis(100 << attempt.min(3))).await;
        match send(link, partition, id, payload.clone()).await {
            Ok(ack) => match ack.await {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtt_broker::ingress::Inbound;
    use protocols::access::Principal;

    fn inbound(topic: &str, payload: Vec<u8>) -> IngressEvent {
        IngressEvent::Message(Inbound {
            principal: Arc::new(Principal::Agent("AG-1".into())),
            client_id: "AG-1".into(),
            topic: topic.into(),
            payload: payload.into(),
            received_ms: 0,
            arrived: std::time::Instant::now(),
            done: None,
        })
    }

    #[test]
    fn a_batch_is_named_by_its_origin_on_every_hub() {
        let batch = protocols::batch::AgentBatch {
            agent: "AG-1".into(),
            stream: 7,
            seq: 42,
            devices: vec![],
        };
        let e = inbound("v1/agents/AG-1/batch", protocols::batch::encode(&batch));
        assert_eq!(message_id(&e, "hub-1", 1), "AG-1:7:42");
        assert_eq!(message_id(&e, "hub-2", 9), "AG-1:7:42");
        let other = inbound("v1/agents/AG-1/health", b"{}".to_vec());
        assert_ne!(
            message_id(&other, "hub-1", 1),
            message_id(&other, "hub-1", 2)
        );
    }
}
