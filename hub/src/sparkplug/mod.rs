//! The hub as a Sparkplug B host application for edge nodes registered as agents with
//! `protocol = "sparkplug"` (decision 0022).
//!
//! - [`Sparkplug::handle`] takes one `spBv1.0/...` message of a node, decodes it outside any
//!   lock and runs it through the node's session (`protocols::sparkplug::EdgeNodes`: births,
//!   aliases, `seq`, `bdSeq`). The decode workers call it; the router sends one client's
//!   messages to one worker in arrival order, which the session's zero reorder window needs.
//!   When the session asks for a rebirth, the NCMD `Node Control/Rebirth` goes out from here.
//! - [`mapping`]: which quantity a metric name measures, in which unit (`[[sparkplug_metrics]]`).
//! - [`Sparkplug::write`]: desired state of a Sparkplug device goes down as one DCMD writing
//!   the mapped metrics by name, with the datatype and unit the device's birth and the mapping
//!   give. The command closes when the device's data reports the value, like any other.

pub mod mapping;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use parking_lot::Mutex;
use protocols::sparkplug::{
    self as sp, DataType, EdgeNodes, MessageError, MessageType, Metric, MetricValue, Outcome,
    Payload, Topic,
};
use protocols::{Quantity, Value};

use crate::config::HubConfig;
use crate::outbound::Outlet;
use mapping::MetricMap;

/// Why a message of an edge node was not handled.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The topic or payload is not Sparkplug B.
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The topic names another edge node than the sender (the broker's access rules refuse
    /// this before; kept as a second line of defence).
    #[error("topic names edge node `{0}`, not the sender")]
    NotOwnNode(String),
}

/// Why desired state could not be sent to a Sparkplug device.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum WriteError {
    /// The edge node has no session (never born, or dead).
    #[error("edge node `{0}` is not online")]
    NodeOffline(String),
    /// No `[[sparkplug_metrics]]` entry maps the quantity to a metric the device's birth has.
    #[error("device `{device}` has no metric for `{quantity}` in its birth")]
    NoMetric {
        /// The device.
        device: String,
        /// The quantity.
        quantity: &'static str,
    },
    /// The value cannot be written as the metric's datatype.
    #[error("`{metric}` cannot take {value} as {datatype:?}")]
    NotRepresentable {
        /// The metric name.
        metric: String,
        /// The value in the metric's unit.
        value: String,
        /// The birth's datatype.
        datatype: DataType,
    },
}

/// Counters (`hub_sparkplug_*`).
#[derive(Debug, Default)]
pub struct SparkplugMetrics {
    messages: AtomicU64,
    births: AtomicU64,
    deaths: AtomicU64,
    rebirth_requests: AtomicU64,
    unmapped: AtomicU64,
    commands: AtomicU64,
}

impl SparkplugMetrics {
    /// Counts metrics that no `[[sparkplug_metrics]]` entry maps.
    pub fn unmapped(&self, n: usize) {
        self.unmapped.fetch_add(n as u64, Relaxed);
    }
}

/// Sessions of every edge node, and the group each one last was born in.
#[derive(Default)]
struct Nodes {
    sessions: EdgeNodes,
    groups: HashMap<Arc<str>, Arc<str>>,
}

/// The host application side of Sparkplug B.
pub struct Sparkplug {
    /// `spBv1.0/STATE/{host_id}`, when the hub acts as a primary host.
    state_topic: Option<String>,
    map: MetricMap,
    nodes: Mutex<Nodes>,
    outlet: Outlet,
    metrics: Arc<SparkplugMetrics>,
}

impl Sparkplug {
    /// A host with the config's metric map, sending commands through `outlet`.
    pub fn new(config: &HubConfig, outlet: Outlet) -> Sparkplug {
        Sparkplug {
            state_topic: config
                .sparkplug
                .host_id
                .as_deref()
                .and_then(|h| sp::topic::host_state_topic(h).ok()),
            map: MetricMap::from_config(config),
            nodes: Mutex::new(Nodes::default()),
            outlet,
            metrics: Arc::new(SparkplugMetrics::default()),
        }
    }

    /// Publishes the hub's state as a primary host application, retained (Sparkplug 3.0,
    /// "Sparkplug Host Application" birth and death), when `[sparkplug] host_id` is set:
    /// online when it starts, offline when it stops. The embedded broker dies with the hub, so
    /// no will is needed: a crashed hub's clients lose their connections.
    pub fn announce(&self, online: bool, now_ms: u64) {
        if let Some(topic) = &self.state_topic {
            let payload = Bytes::from(sp::host_state(online, now_ms));
            self.outlet.publish(topic, payload, true);
        }
    }

    /// The metric map.
    pub fn map(&self) -> &MetricMap {
        &self.map
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<SparkplugMetrics> {
        &self.metrics
    }

    /// Handles one message `node` published on `topic`. Sends the rebirth request when the
    /// outcome asks for one (then returns the outcome all the same: its message is dropped).
    pub fn handle(
        &self,
        node: &str,
        topic: &str,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Outcome, Refusal> {
        let t = match Topic::parse(topic).map_err(MessageError::from)? {
            Topic::Edge(t) => t,
            // The access rules let an edge node publish neither.
            Topic::HostState { .. } => {
                return Ok(Outcome::Ignored {
                    reason: sp::IgnoreReason::HostState,
                });
            }
        };
        if t.node != node {
            return Err(Refusal::NotOwnNode(protocols::id::clip(t.node)));
        }
        if t.kind.is_command() {
            return Ok(Outcome::Ignored {
                reason: sp::IgnoreReason::Command,
            });
        }
        self.metrics.messages.fetch_add(1, Relaxed);
        // Protobuf decoding is the costly part: outside the lock, in parallel workers.
        let payload = sp::decode(payload).map_err(MessageError::from)?;
        let outcome = {
            let mut nodes = self.nodes.lock();
            let outcome = nodes.sessions.handle(&t, &payload, now_ms);
            if let (MessageType::NBirth, Outcome::Online { .. }) = (t.kind, &outcome) {
                nodes.groups.insert(node.into(), t.group.into());
            }
            outcome
        };
        match &outcome {
            Outcome::Online { .. } => {
                self.metrics.births.fetch_add(1, Relaxed);
            }
            Outcome::Offline { .. } => {
                self.metrics.deaths.fetch_add(1, Relaxed);
            }
            Outcome::RequestRebirth { reason } => {
                tracing::info!(node, group = t.group, "asking for a rebirth: {reason}");
                self.request_rebirth(t.group, node, now_ms);
            }
            _ => {}
        }
        Ok(outcome)
    }

    /// Publishes NCMD `Node Control/Rebirth` = true to the node.
    fn request_rebirth(&self, group: &str, node: &str, now_ms: u64) {
        match sp::EdgeTopic::new(group, MessageType::NCmd, node, None) {
            Ok(topic) => {
                self.metrics.rebirth_requests.fetch_add(1, Relaxed);
                let payload = Bytes::from(sp::rebirth_request(now_ms));
                self.outlet.publish_at_most_once(&topic.to_topic(), payload);
            }
            Err(e) => tracing::warn!(node, "no rebirth topic: {e}"),
        }
    }

    /// Sends desired values (canonical units) to a device of `node` as one DCMD. Each value
    /// goes to the metric of the device's birth that `[[sparkplug_metrics]]` maps its
    /// quantity to, converted to the metric's unit and written as its datatype.
    pub fn write(
        &self,
        node: &str,
        device: &str,
        values: &[(Quantity, Value)],
        now_ms: u64,
    ) -> Result<(), WriteError> {
        let (group, metrics) = {
            let nodes = self.nodes.lock();
            let group = nodes
                .groups
                .get(node)
                .filter(|g| nodes.sessions.is_online(g, node))
                .cloned()
                .ok_or_else(|| WriteError::NodeOffline(node.to_string()))?;
            let mut metrics = Vec::with_capacity(values.len());
            for (q, v) in values {
                let found = self.map.names_of(*q).find_map(|(name, conv)| {
                    let t = nodes
                        .sessions
                        .datatype_of(&group, node, Some(device), name)?;
                    Some((name, conv, t))
                });
                let (name, conv, datatype) = found.ok_or_else(|| WriteError::NoMetric {
                    device: device.to_string(),
                    quantity: q.name(),
                })?;
                let raw = conv.invert(v.as_f64());
                let metric = metric_value(*v, raw, datatype)
                    .and_then(|mv| Metric::new(datatype, &mv).ok())
                    .ok_or_else(|| WriteError::NotRepresentable {
                        metric: name.to_string(),
                        value: raw.to_string(),
                        datatype,
                    })?;
                metrics.push(metric.named(name).at(now_ms));
            }
            (group, metrics)
        };
        let topic = sp::EdgeTopic::new(&group, MessageType::DCmd, node, Some(device))
            .map_err(|_| WriteError::NodeOffline(node.to_string()))?
            .to_topic();
        let payload = sp::encode(&Payload {
            timestamp: Some(now_ms),
            metrics,
            ..Default::default()
        });
        self.metrics.commands.fetch_add(1, Relaxed);
        self.outlet
            .publish_at_most_once(&topic, Bytes::from(payload));
        Ok(())
    }
}

/// A platform value (already in the metric's unit: `raw`) as the metric's datatype: integers
/// rounded, booleans as booleans; `None` where the kinds do not meet.
fn metric_value(v: Value, raw: f64, datatype: DataType) -> Option<MetricValue> {
    use DataType as T;
    match (v, datatype) {
        (Value::Bool(b), T::Boolean) => Some(MetricValue::Bool(b)),
        (Value::Number(_), T::Float) => Some(MetricValue::Float(raw as f32)),
        (Value::Number(_), T::Double) => Some(MetricValue::Double(raw)),
        (Value::Number(_), T::Int8 | T::Int16 | T::Int32 | T::Int64) if raw.is_finite() => {
            Some(MetricValue::Int(raw.round() as i64))
        }
        (Value::Number(_), T::UInt8 | T::UInt16 | T::UInt32 | T::UInt64)
            if raw.is_finite() && raw > -0.5 =>
        {
            Some(MetricValue::UInt(raw.round() as u64))
        }
        (Value::Number(x), T::Boolean) if x == 0.0 || x == 1.0 => Some(MetricValue::Bool(x == 1.0)),
        _ => None,
    }
}

/// Exports `hub_sparkplug_*` at scrape time.
#[derive(Debug)]
pub struct SparkplugCollector(pub Arc<SparkplugMetrics>);

impl prometheus_client::collector::Collector for SparkplugCollector {
    fn encode(&self, mut e: prometheus_client::encoding::DescriptorEncoder) -> std::fmt::Result {
        let m = &*self.0;
        let counters = [
            (
                "sparkplug_messages",
                "Sparkplug B messages of edge nodes handled.",
                &m.messages,
            ),
            (
                "sparkplug_births",
                "NBIRTH and DBIRTH messages accepted.",
                &m.births,
            ),
            (
                "sparkplug_deaths",
                "NDEATH and DDEATH messages that took a node or device offline.",
                &m.deaths,
            ),
            (
                "sparkplug_rebirth_requests",
                "NCMD rebirth requests sent (a seq gap, data before birth, an unknown alias).",
                &m.rebirth_requests,
            ),
            (
                "sparkplug_unmapped_metrics",
                "Metric values with no [[sparkplug_metrics]] entry, not stored.",
                &m.unmapped,
            ),
            (
                "sparkplug_commands",
                "DCMD writes sent for desired state.",
                &m.commands,
            ),
        ];
        for (name, help, c) in counters {
            crate::metrics::encode_counter(&mut e, name, help, c.load(Relaxed))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_take_the_metric_datatype() {
        let n = Value::Number(35.4);
        assert_eq!(
            metric_value(n, 35.4, DataType::Float),
            Some(MetricValue::Float(35.4))
        );
        assert_eq!(
            metric_value(n, 35.4, DataType::Int16),
            Some(MetricValue::Int(35))
        );
        assert_eq!(
            metric_value(n, 35.6, DataType::UInt8),
            Some(MetricValue::UInt(36))
        );
        assert_eq!(metric_value(n, -3.0, DataType::UInt8), None);
        assert_eq!(metric_value(n, 35.4, DataType::String), None);
        assert_eq!(
            metric_value(Value::Bool(true), 1.0, DataType::Boolean),
            Some(MetricValue::Bool(true))
        );
    }
}
