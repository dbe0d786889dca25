//! The control stage: applies the [`Control`] messages the decode stage parsed. Health goes to
//! the status board, command results and desired state to the twins. Nothing here is stored
//! in the series store; each message's `done` is completed here.
//!
//! The decode workers call [`ControlStage::apply`] inline (control messages are rare and
//! cheap), except for the part that waits on a disk: a desired-state update is written durably
//! (an fsync) before it is applied, so it runs on a task of its own.

use std::sync::Arc;

use super::deadletter::{DeadLetters, Source};
use super::decode::Control;
use super::status::StatusBoard;
use crate::registry::{AgentIdx, DeviceIdx};
use crate::twin::Twins;
use mqtt_broker::ingress::{Disposition, Inbound};
use protocols::deadletter::DeadLetterReason as Reason;

/// Applies control messages to the status board and the twins.
pub struct ControlStage {
    status: Arc<StatusBoard>,
    twins: Arc<Twins>,
    dead_letters: DeadLetters,
}

impl ControlStage {
    /// A stage applying health to `status` and commands and desired state to `twins`.
    pub fn new(status: Arc<StatusBoard>, twins: Arc<Twins>, dead_letters: DeadLetters) -> Self {
        ControlStage {
            status,
            twins,
            dead_letters,
        }
    }

    /// Sets devices of a Sparkplug edge node online or offline, as its births and deaths say.
    pub fn presence(&self, agent: AgentIdx, changes: &[(DeviceIdx, bool)], at_ms: i64) {
        self.status.presence(agent, changes, at_ms);
    }

    /// Applies one control message and completes its `done` (for desired state, once it is
    /// durable, from a task of its own).
    pub fn apply(&self, control: Control) {
        match control {
            Control::Health {
                agent,
                health,
                mut msg,
            } => match self.status.health(agent, &health, msg.received_ms) {
                Ok(foreign) => {
                    let from = Source::of(&msg, &msg.topic);
                    for id in foreign {
                        self.dead_letters.send(
                            &from,
                            Reason::DeviceNotOfAgent,
                            &format!("health lists `{id}`, which is not behind this agent"),
                            id.as_bytes(),
                        );
                    }
                    msg.finish(Disposition::Accepted);
                }
                Err(e) => reject(
                    &self.dead_letters,
                    msg,
                    Reason::AgentMismatch,
                    &e.to_string(),
                ),
            },
            Control::CommandResult { result, mut msg } => {
                self.twins
                    .command_result(msg.principal.id(), &result, msg.received_ms);
                msg.finish(Disposition::Accepted);
            }
            Control::Desired {
                device,
                update,
                mut msg,
            } => {
                let (twins, dead_letters) = (self.twins.clone(), self.dead_letters.clone());
                tokio::spawn(async move {
                    match twins.set_desired(&device, update, msg.received_ms).await {
                        Ok(_) => msg.finish(Disposition::Accepted),
                        Err(e) => reject(&dead_letters, msg, Reason::from(&e), &e.to_string()),
                    }
                });
            }
        }
    }
}

/// Rejects a whole control message, quoting all of it.
fn reject(dead_letters: &DeadLetters, mut msg: Inbound, reason: Reason, detail: &str) {
    let topic = std::mem::take(&mut msg.topic);
    dead_letters.reject(&mut msg, &topic, reason, detail, usize::MAX);
}
