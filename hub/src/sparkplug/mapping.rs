//! Metric names to quantities (`[[sparkplug_metrics]]`), and a metric value to a canonical
//! platform value.
//!
//! Gateways publish many metrics nobody asked the platform to keep (their own properties,
//! counters, every PLC tag of a line). Only mapped names are stored: an unmapped metric is
//! counted (`hub_sparkplug_unmapped_metrics`), not dead-lettered, or every birth and data
//! message of such a gateway would fill the dead letters. The specification's control and
//! property metrics (`Node Control/...`, `Device Control/...`, `Properties/...`) are not even
//! counted.

use std::collections::HashMap;

use protocols::quantity::Conversion;
use protocols::sparkplug::MetricValue;
use protocols::{Quantity, Value, ValueKind};

use crate::config::HubConfig;

/// Prefixes of metric names that describe the node rather than measure anything.
const CONTROL_PREFIXES: [&str; 3] = ["Node Control/", "Device Control/", "Properties/"];

/// What a metric name measures and how its unit converts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mapping {
    /// The quantity.
    pub quantity: Quantity,
    /// From the metric's unit to the quantity's canonical unit.
    pub conversion: Conversion,
}

/// The metric value of a mapped metric, made a platform value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mapped {
    /// A canonical value of the quantity.
    Value(Quantity, Value),
    /// `is_null`: the metric has no value now; nothing to store.
    Null,
}

/// Why a mapped metric's value was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MapError {
    /// Text, bytes or a date where the quantity needs a number or boolean, or the other way.
    #[error("`{name}` ({quantity}) cannot take {value}")]
    WrongType {
        /// The metric name.
        name: String,
        /// The quantity's name.
        quantity: &'static str,
        /// What came.
        value: String,
    },
    /// NaN or an infinity.
    #[error("`{name}` ({quantity}) is not a finite number")]
    NotFinite {
        /// The metric name.
        name: String,
        /// The quantity's name.
        quantity: &'static str,
    },
}

/// The `[[sparkplug_metrics]]` table.
#[derive(Clone, Debug, Default)]
pub struct MetricMap {
    by_name: HashMap<String, Mapping>,
    /// Names per quantity in config order, for writes.
    by_quantity: HashMap<Quantity, Vec<String>>,
}

impl MetricMap {
    /// The map of a validated configuration (entries that do not validate are left out).
    pub fn from_config(config: &HubConfig) -> MetricMap {
        let mut map = MetricMap::default();
        for m in &config.sparkplug_metrics {
            let Some(quantity) = m.quantity() else {
                continue;
            };
            let unit = m.unit.as_deref().unwrap_or(quantity.unit());
            let conversion = match quantity.kind() {
                ValueKind::Number => match quantity.conversion(unit) {
                    Some(c) => c,
                    None => continue,
                },
                ValueKind::Bool | ValueKind::Enum(_) => Conversion::IDENTITY,
            };
            map.by_name.insert(
                m.name.clone(),
                Mapping {
                    quantity,
                    conversion,
                },
            );
            map.by_quantity
                .entry(quantity)
                .or_default()
                .push(m.name.clone());
        }
        map
    }

    /// The mapping of a metric name.
    pub fn get(&self, name: &str) -> Option<&Mapping> {
        self.by_name.get(name)
    }

    /// Whether a name is one of the specification's control or property metrics.
    pub fn is_control(name: &str) -> bool {
        CONTROL_PREFIXES.iter().any(|p| name.starts_with(p))
    }

    /// The metric names mapped to a quantity, with their conversions.
    pub fn names_of(&self, q: Quantity) -> impl Iterator<Item = (&str, Conversion)> + '_ {
        self.by_quantity
            .get(&q)
            .into_iter()
            .flatten()
            .filter_map(|n| Some((n.as_str(), self.by_name.get(n)?.conversion)))
    }

    /// A metric's value as the canonical value of its quantity; `Ok(None)` if the name is not
    /// mapped.
    pub fn value(&self, name: &str, value: &MetricValue) -> Result<Option<Mapped>, MapError> {
        let Some(m) = self.by_name.get(name) else {
            return Ok(None);
        };
        let q = m.quantity;
        if matches!(value, MetricValue::Null) {
            return Ok(Some(Mapped::Null));
        }
        let wrong = || MapError::WrongType {
            name: name.to_string(),
            quantity: q.name(),
            value: describe(value),
        };
        let v = match (q.kind(), value.as_value()) {
            (ValueKind::Number, Some(Value::Number(x))) => {
                let c = m.conversion.apply(x);
                if !c.is_finite() {
                    return Err(MapError::NotFinite {
                        name: name.to_string(),
                        quantity: q.name(),
                    });
                }
                Value::Number(c)
            }
            (ValueKind::Bool, Some(Value::Bool(b))) => Value::Bool(b),
            // Switches often come as 0/1 integers from PLCs.
            (ValueKind::Bool, Some(Value::Number(x))) if x == 0.0 || x == 1.0 => {
                Value::Bool(x == 1.0)
            }
            _ => return Err(wrong()),
        };
        Ok(Some(Mapped::Value(q, v)))
    }
}

/// A short description of a value for a dead letter.
fn describe(value: &MetricValue) -> String {
    let text = match value {
        MetricValue::Text(s) => format!("text {:?}", protocols::id::clip(s)),
        MetricValue::Bytes(b) => format!("{} bytes", b.len()),
        MetricValue::DateTime(ms) => format!("date-time {ms}"),
        other => format!("{other:?}"),
    };
    text.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> MetricMap {
        let cfg = HubConfig::from_toml(
            r#"
            [[sparkplug_metrics]]
            name = "Pump/Flow"
            quantity = "water_flow"
            unit = "m3/h"
            [[sparkplug_metrics]]
            name = "Pump/Running"
            quantity = "pump_running"
            [[sparkplug_metrics]]
            name = "Pump/Speed"
            quantity = "pump_speed"
            "#,
        )
        .unwrap();
        MetricMap::from_config(&cfg)
    }

    #[test]
    fn mapped_values_are_canonical() {
        let m = map();
        assert_eq!(
            m.value("Pump/Flow", &MetricValue::Float(360.0)).unwrap(),
            Some(Mapped::Value(Quantity::WaterFlow, Value::Number(0.1)))
        );
        assert_eq!(
            m.value("Pump/Running", &MetricValue::Bool(true)).unwrap(),
            Some(Mapped::Value(Quantity::PumpRunning, Value::Bool(true)))
        );
        assert_eq!(
            m.value("Pump/Running", &MetricValue::UInt(0)).unwrap(),
            Some(Mapped::Value(Quantity::PumpRunning, Value::Bool(false)))
        );
        assert_eq!(
            m.value("Pump/Flow", &MetricValue::Null).unwrap(),
            Some(Mapped::Null)
        );
        assert_eq!(m.value("Other", &MetricValue::Float(1.0)).unwrap(), None);
        assert!(matches!(
            m.value("Pump/Flow", &MetricValue::Text("high".into())),
            Err(MapError::WrongType { .. })
        ));
        assert!(matches!(
            m.value("Pump/Flow", &MetricValue::Double(f64::NAN)),
            Err(MapError::NotFinite { .. })
        ));
        assert!(matches!(
            m.value("Pump/Running", &MetricValue::Int(2)),
            Err(MapError::WrongType { .. })
        ));
    }

    #[test]
    fn writes_find_names_by_quantity() {
        let m = map();
        let names: Vec<_> = m.names_of(Quantity::PumpSpeed).map(|(n, _)| n).collect();
        assert_eq!(names, ["Pump/Speed"]);
        let (_, c) = m.names_of(Quantity::WaterFlow).next().unwrap();
        assert!((c.invert(0.1) - 360.0).abs() < 1e-9);
        assert!(MetricMap::is_control("Node Control/Rebirth"));
        assert!(!MetricMap::is_control("Pump/Flow"));
    }
}
