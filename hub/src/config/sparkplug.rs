//! hub.toml for Sparkplug B edge nodes: `protocol = "sparkplug"` on an `[[agents]]` entry and
//! the `[[sparkplug_metrics]]` table that says which quantity a metric name measures.
//!
//! ```toml
//! [[agents]]
//! id = "PS-EN01"            # the edge node id (and MQTT client id and user name)
//! secret = "..."
//! protocol = "sparkplug"
//!
//! [[devices]]
//! id = "PS-P01"             # the Sparkplug device id
//! kind = "pump"
//! agent = "PS-EN01"
//!
//! [sparkplug]
//! host_id = "district-hub"  # publish spBv1.0/STATE/district-hub as the primary host
//!
//! [[sparkplug_metrics]]
//! name = "Pump/Flow"
//! quantity = "water_flow"
//! unit = "m3/h"             # the unit the node reports in; the quantity's own if left out
//! ```

use std::collections::HashMap;

use protocols::config::ConfigError;
use protocols::{Quantity, ValueKind};
use serde::{Deserialize, Serialize};

use super::HubConfig;

/// What an agent speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentProtocol {
    /// The platform's agent: binary batches, health, commands under `v1/agents/{id}/...`.
    #[default]
    Native,
    /// A Sparkplug B edge node publishing `spBv1.0/{group}/.../{id}[/{device}]`.
    Sparkplug,
}

impl AgentProtocol {
    /// Whether it is the default, the platform's own agent.
    pub fn is_native(&self) -> bool {
        *self == AgentProtocol::Native
    }
}

/// The `[sparkplug]` table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkplugSettings {
    /// The hub's host application id: when set, the hub publishes its state retained on
    /// `spBv1.0/STATE/{host_id}` (online at start, offline when it stops), so edge nodes
    /// configured with it as their primary host publish only while it is there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
}

/// A `[[sparkplug_metrics]]` entry: a metric name (as births declare it) and what it measures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparkplugMetricConfig {
    /// The metric's full name, e.g. `Pump/Flow`.
    pub name: String,
    /// The quantity, e.g. `water_flow`.
    pub quantity: String,
    /// The unit the metric is reported in (one the quantity accepts); the quantity's canonical
    /// unit if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// Checks the metric table: names unique and not empty, quantities known, units accepted.
pub(super) fn validate(cfg: &HubConfig) -> Result<(), ConfigError> {
    if let Some(h) = &cfg.sparkplug.host_id {
        protocols::sparkplug::topic::validate_id(h)
            .map_err(|e| ConfigError::new("sparkplug.host_id", format!("`{h}`: {e}")))?;
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, m) in cfg.sparkplug_metrics.iter().enumerate() {
        let key = format!("sparkplug_metrics[{i}]");
        if m.name.is_empty() {
            return Err(ConfigError::new(format!("{key}.name"), "must not be empty"));
        }
        if let Some(first) = names.insert(&m.name, i) {
            return Err(ConfigError::new(
                format!("{key}.name"),
                format!(
                    "`{}` is already mapped by sparkplug_metrics[{first}]",
                    m.name
                ),
            ));
        }
        let q = Quantity::from_name(&m.quantity).ok_or_else(|| {
            ConfigError::new(
                format!("{key}.quantity"),
                format!("`{}` is not a known quantity", m.quantity),
            )
        })?;
        if let Some(unit) = &m.unit {
            let accepted = match q.kind() {
                ValueKind::Number => q.conversion(unit).is_some(),
                ValueKind::Bool | ValueKind::Enum(_) => unit == q.unit(),
            };
            if !accepted {
                return Err(ConfigError::new(
                    format!("{key}.unit"),
                    format!(
                        "`{unit}` is not a unit of `{}` (canonical `{}`)",
                        q.name(),
                        q.unit()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The quantity and unit of a validated entry.
impl SparkplugMetricConfig {
    /// The quantity (`None` only if the entry was not validated).
    pub fn quantity(&self) -> Option<Quantity> {
        Quantity::from_name(&self.quantity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<HubConfig, ConfigError> {
        HubConfig::from_toml(text)
    }

    #[test]
    fn agents_speak_sparkplug_and_metrics_map_to_quantities() {
        let cfg = load(
            r#"
            [[agents]]
            id = "PS-EN01"
            secret = "s3cret-s3cret"
            protocol = "sparkplug"
            [[agents]]
            id = "AG-1"
            secret = "s3cret-s3cret"
            [[sparkplug_metrics]]
            name = "Pump/Flow"
            quantity = "water_flow"
            unit = "m3/h"
            [[sparkplug_metrics]]
            name = "Pump/Running"
            quantity = "pump_running"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.agents[0].protocol, AgentProtocol::Sparkplug);
        assert_eq!(cfg.agents[1].protocol, AgentProtocol::Native);
        assert_eq!(
            cfg.sparkplug_metrics[0].quantity(),
            Some(Quantity::WaterFlow)
        );
    }

    #[test]
    fn bad_entries_name_their_key() {
        let err = |t: &str| load(t).unwrap_err().to_string();
        assert!(
            err("[[agents]]\nid = \"A\"\nsecret = \"s3cret-s3cret\"\nprotocol = \"opcua\"")
                .contains("agents")
        );
        assert!(
            err("[[sparkplug_metrics]]\nname = \"x\"\nquantity = \"speed_of_light\"")
                .contains("sparkplug_metrics[0].quantity")
        );
        assert!(
            err(
                "[[sparkplug_metrics]]\nname = \"x\"\nquantity = \"water_flow\"\nunit = \"furlong\""
            )
            .contains("sparkplug_metrics[0].unit")
        );
        assert!(
            err("[[sparkplug_metrics]]\nname = \"x\"\nquantity = \"pump_running\"\nunit = \"%\"")
                .contains("sparkplug_metrics[0].unit")
        );
        assert!(
            err("[[sparkplug_metrics]]\nname = \"\"\nquantity = \"water_flow\"")
                .contains("sparkplug_metrics[0].name")
        );
        assert!(
            err(
                "[[sparkplug_metrics]]\nname = \"a\"\nquantity = \"water_flow\"\n\
             [[sparkplug_metrics]]\nname = \"a\"\nquantity = \"water_level\""
            )
            .contains("sparkplug_metrics[1].name")
        );
    }
}
