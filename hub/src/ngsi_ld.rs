//! Devices and their twins as NGSI-LD entities of Smart Data Models types, for digital-twin
//! platforms in the FIWARE world (decision 0024).
//!
//! A device's kind picks the entity type (`streetlight` -> `Streetlight`, `water_quality` ->
//! `WaterQualityObserved`, `weather` and `rain_gauge` -> `WeatherObserved`, anything else ->
//! `Device`); each reported quantity becomes a Property named as the type's Smart Data Model
//! names it, with `observedAt` and the quantities table's UN/CEFACT `unitCode`. A quantity the
//! model has no attribute for keeps a camelCase name of its own, which the NGSI-LD core
//! context's `@vocab` expands into the default context. This module only maps; the HTTP side
//! (content negotiation, grants, errors) is `api::ngsi_ld`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use protocols::Quantity;
use protocols::messages::{Scalar, Twin};
use protocols::time::{Rfc3339, parse_rfc3339};
use serde::Serialize;
use serde_json::{Value, json};

use crate::registry::Device;

/// The NGSI-LD core context every document ends with.
pub const CORE_CONTEXT: &str = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld";

/// The Smart Data Models entity types the hub maps devices to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityType {
    /// `dataModel.Streetlighting`.
    Streetlight,
    /// `dataModel.WaterQuality`.
    WaterQualityObserved,
    /// `dataModel.Weather`.
    WeatherObserved,
    /// `dataModel.Device`: every other kind.
    Device,
}

impl EntityType {
    /// Every type.
    pub const ALL: [EntityType; 4] = [
        EntityType::Streetlight,
        EntityType::WaterQualityObserved,
        EntityType::WeatherObserved,
        EntityType::Device,
    ];

    /// The type for a device kind.
    pub fn of_kind(kind: &str) -> EntityType {
        match kind {
            "streetlight" => EntityType::Streetlight,
            "water_quality" => EntityType::WaterQualityObserved,
            "weather" | "rain_gauge" => EntityType::WeatherObserved,
            _ => EntityType::Device,
        }
    }

    /// The type's name in documents and in `?type=`.
    pub const fn name(self) -> &'static str {
        match self {
            EntityType::Streetlight => "Streetlight",
            EntityType::WaterQualityObserved => "WaterQualityObserved",
            EntityType::WeatherObserved => "WeatherObserved",
            EntityType::Device => "Device",
        }
    }

    /// The type with this name (short name or the Smart Data Models IRI).
    pub fn from_name(name: &str) -> Option<EntityType> {
        EntityType::ALL
            .into_iter()
            .find(|t| name == t.name() || name == t.iri())
    }

    /// The Smart Data Models domain (subject) the type belongs to.
    pub const fn domain(self) -> &'static str {
        match self {
            EntityType::Streetlight => "dataModel.Streetlighting",
            EntityType::WaterQualityObserved => "dataModel.WaterQuality",
            EntityType::WeatherObserved => "dataModel.Weather",
            EntityType::Device => "dataModel.Device",
        }
    }

    /// The domain's JSON-LD context, as Smart Data Models publishes it.
    pub const fn context(self) -> &'static str {
        match self {
            EntityType::Streetlight => {
                "https://raw.githubusercontent.com/smart-data-models/dataModel.Streetlighting/master/context.jsonld"
            }
            EntityType::WaterQualityObserved => {
                "https://raw.githubusercontent.com/smart-data-models/dataModel.WaterQuality/master/context.jsonld"
            }
            EntityType::WeatherObserved => {
                "https://raw.githubusercontent.com/smart-data-models/dataModel.Weather/master/context.jsonld"
            }
            EntityType::Device => {
                "https://raw.githubusercontent.com/smart-data-models/dataModel.Device/master/context.jsonld"
            }
        }
    }

    /// The type's expanded IRI.
    pub const fn iri(self) -> &'static str {
        match self {
            EntityType::Streetlight => {
                "https://smartdatamodels.org/dataModel.Streetlighting/Streetlight"
            }
            EntityType::WaterQualityObserved => {
                "https://smartdatamodels.org/dataModel.WaterQuality/WaterQualityObserved"
            }
            EntityType::WeatherObserved => {
                "https://smartdatamodels.org/dataModel.Weather/WeatherObserved"
            }
            EntityType::Device => "https://smartdatamodels.org/dataModel.Device/Device",
        }
    }

    /// `urn:ngsi-ld:{Type}:{device id}`.
    pub fn entity_id(self, device: &str) -> String {
        format!("urn:ngsi-ld:{}:{device}", self.name())
    }
}

/// The type and device id an entity id names, if it has the hub's form.
pub fn parse_entity_id(id: &str) -> Option<(EntityType, &str)> {
    let rest = id.strip_prefix("urn:ngsi-ld:")?;
    let (ty, device) = rest.split_once(':')?;
    let ty = EntityType::ALL.into_iter().find(|t| t.name() == ty)?;
    (!device.is_empty()).then_some((ty, device))
}

/// How a canonical value becomes the model's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scale {
    /// As stored, in the canonical unit (`unitCode` from the quantities table).
    Same,
    /// A percentage as the model's fraction `0..=1` (`unitCode` `C62`).
    Fraction,
}

/// The attribute a quantity becomes in an entity of a type, and how its value is scaled.
fn attribute(ty: EntityType, q: Quantity) -> (Cow<'static, str>, Scale) {
    use EntityType as T;
    use Quantity as Q;
    match (ty, q) {
        (T::Streetlight, Q::DimmingLevel) => ("illuminanceLevel".into(), Scale::Fraction),
        (T::Streetlight, Q::LampPower) => ("powerConsumption".into(), Scale::Same),
        (T::Streetlight, Q::LampVoltage) => ("voltage".into(), Scale::Same),
        (T::Streetlight, Q::LampCurrent) => ("current".into(), Scale::Same),
        (T::Streetlight, Q::LampEnergy) => ("energyConsumed".into(), Scale::Same),
        (T::Streetlight, Q::LampStatus) => ("status".into(), Scale::Same),
        (T::WaterQualityObserved, Q::WaterTemperature) => ("temperature".into(), Scale::Same),
        (T::WaterQualityObserved, Q::Ph) => ("pH".into(), Scale::Same),
        (T::WaterQualityObserved, Q::Turbidity) => ("turbidity".into(), Scale::Same),
        (T::WaterQualityObserved, Q::Conductivity) => ("conductivity".into(), Scale::Same),
        (T::WaterQualityObserved, Q::DissolvedOxygen) => ("O2".into(), Scale::Same),
        (T::WaterQualityObserved, Q::AmmoniaNitrogen) => ("NH4".into(), Scale::Same),
        (T::WaterQualityObserved, Q::Cod) => ("cod".into(), Scale::Same),
        (T::WeatherObserved, Q::AirTemperature) => ("temperature".into(), Scale::Same),
        (T::WeatherObserved, Q::RelativeHumidity) => ("relativeHumidity".into(), Scale::Fraction),
        (T::WeatherObserved, Q::WindSpeed) => ("windSpeed".into(), Scale::Same),
        (T::WeatherObserved, Q::AirPressure) => ("atmosphericPressure".into(), Scale::Same),
        (T::WeatherObserved, Q::Rainfall) => ("precipitation".into(), Scale::Same),
        (T::Device, Q::BatteryLevel) => ("batteryLevel".into(), Scale::Fraction),
        (_, q) => (hub_term(q).into(), Scale::Same),
    }
}

/// The camelCase name of a quantity no model attribute covers (`water_level` ->
/// `waterLevel`), the style NGSI-LD attribute names follow.
fn hub_term(q: Quantity) -> String {
    let mut out = String::with_capacity(q.name().len());
    let mut upper = false;
    for c in q.name().chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `Streetlight.status` for a `lamp_status` state: the model knows `ok`, `defectiveLamp`,
/// `brokenLantern` and `columnIssue`; a failed driver is part of the lantern, a lost supply
/// is the column's (its feeder).
fn streetlight_status(state: &str) -> &str {
    match state {
        "ok" => "ok",
        "lamp_failure" => "defectiveLamp",
        "driver_failure" => "brokenLantern",
        "power_loss" => "columnIssue",
        other => other,
    }
}

/// One attribute of an entity.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    /// `Property` or `GeoProperty`.
    pub kind: &'static str,
    /// The value.
    pub value: Value,
    /// When it was observed, RFC 3339 UTC.
    pub observed_at: Option<String>,
    /// UN/CEFACT code of a number's unit.
    pub unit_code: Option<&'static str>,
}

impl Attribute {
    fn to_doc(&self) -> AttributeDoc {
        AttributeDoc {
            kind: self.kind.to_string(),
            value: self.value.clone(),
            observed_at: self.observed_at.clone(),
            unit_code: self.unit_code.map(str::to_string),
        }
    }
}

/// An attribute as served: an NGSI-LD Property or GeoProperty.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AttributeDoc {
    /// `Property` or `GeoProperty`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A number in the unit `unitCode` names, a string, a boolean, or a GeoJSON Point
    /// (`{"type":"Point","coordinates":[lon,lat]}`).
    pub value: Value,
    /// When the value was observed, RFC 3339 UTC (`...Z`).
    #[serde(rename = "observedAt", skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<String>,
    /// UN/CEFACT Recommendation 20 code of a number's unit.
    #[serde(rename = "unitCode", skip_serializing_if = "Option::is_none")]
    pub unit_code: Option<String>,
}

/// An entity as served by `/ngsi-ld/v1/entities`.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EntityDoc {
    /// `urn:ngsi-ld:{Type}:{device id}`.
    pub id: String,
    /// `Streetlight`, `WaterQualityObserved`, `WeatherObserved` or `Device`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The attributes by name (`illuminanceLevel`, `temperature`, `location`, ...).
    #[serde(flatten)]
    pub attributes: BTreeMap<String, AttributeDoc>,
    /// With `application/ld+json`: the Smart Data Models domain context, then the NGSI-LD
    /// core context.
    #[serde(rename = "@context", skip_serializing_if = "Option::is_none")]
    pub context: Option<Vec<String>>,
}

/// A device as an NGSI-LD entity.
#[derive(Clone, Debug, PartialEq)]
pub struct Entity {
    /// `urn:ngsi-ld:{Type}:{device id}`.
    pub id: String,
    /// Its type.
    pub ty: EntityType,
    /// Attributes by name.
    pub attrs: BTreeMap<String, Attribute>,
}

/// RFC 3339 UTC with milliseconds and `Z`, whatever offset the twin's text used.
fn utc(ts: &str) -> Option<String> {
    parse_rfc3339(ts)
        .ok()
        .map(|ms| Rfc3339::from_ms(ms).as_str().to_string())
}

fn property(
    value: Value,
    observed_at: Option<String>,
    unit_code: Option<&'static str>,
) -> Attribute {
    Attribute {
        kind: "Property",
        value,
        observed_at,
        unit_code,
    }
}

impl Entity {
    /// The entity of a device with its twin.
    pub fn of_device(device: &Device, twin: &Twin) -> Entity {
        let ty = EntityType::of_kind(&device.kind);
        let mut attrs = BTreeMap::new();
        let mut newest: Option<(i64, String)> = None;
        for (name, reported) in &twin.reported {
            // A twin only holds quantities of the table; anything else is skipped, not guessed.
            let Some(q) = Quantity::from_name(name) else {
                continue;
            };
            let observed_at = utc(&reported.ts);
            if let (Some(t), Ok(ms)) = (&observed_at, parse_rfc3339(&reported.ts))
                && newest.as_ref().is_none_or(|(n, _)| ms > *n)
            {
                newest = Some((ms, t.clone()));
            }
            let (attr, scale) = attribute(ty, q);
            let (value, unit_code) = match (&reported.value, scale) {
                (Scalar::Number(v), Scale::Fraction) => (json!(v / 100.0), Some("C62")),
                (Scalar::Number(v), Scale::Same) => (json!(v), Some(q.unit_code())),
                (Scalar::Bool(b), _) => (json!(b), None),
                (Scalar::Text(s), _) if q == Quantity::LampStatus => {
                    (json!(streetlight_status(s)), None)
                }
                (Scalar::Text(s), _) => (json!(s), None),
            };
            if q == Quantity::DimmingLevel
                && ty == EntityType::Streetlight
                && let Scalar::Number(v) = reported.value
            {
                let state = if v > 0.0 { "on" } else { "off" };
                attrs.insert(
                    "powerState".to_string(),
                    property(json!(state), observed_at.clone(), None),
                );
            }
            attrs.insert(attr.into_owned(), property(value, observed_at, unit_code));
        }
        if let Some(name) = &device.config.name {
            attrs.insert("name".into(), property(json!(name), None, None));
        }
        match ty {
            EntityType::WaterQualityObserved | EntityType::WeatherObserved => {
                if let Some((_, t)) = &newest {
                    attrs.insert(
                        "dateObserved".into(),
                        property(json!({"@type": "DateTime", "@value": t}), None, None),
                    );
                }
            }
            EntityType::Device => {
                let state = if twin.online { "online" } else { "offline" };
                attrs.insert("deviceState".into(), property(json!(state), None, None));
                if let Some((_, t)) = &newest {
                    attrs.insert(
                        "dateLastValueReported".into(),
                        property(json!({"@type": "DateTime", "@value": t}), None, None),
                    );
                }
            }
            EntityType::Streetlight => {}
        }
        if let Some(loc) = device.location {
            attrs.insert(
                "location".into(),
                Attribute {
                    kind: "GeoProperty",
                    value: json!({"type": "Point", "coordinates": [loc.lon, loc.lat]}),
                    observed_at: None,
                    unit_code: None,
                },
            );
        }
        Entity {
            id: ty.entity_id(&device.id),
            ty,
            attrs,
        }
    }

    /// The document: `id`, `type`, the attributes, and `@context` when `with_context`
    /// (`application/ld+json`; with `application/json` the context travels in a Link header).
    pub fn to_doc(&self, with_context: bool) -> EntityDoc {
        EntityDoc {
            id: self.id.clone(),
            kind: self.ty.name().to_string(),
            attributes: self
                .attrs
                .iter()
                .map(|(k, a)| (k.clone(), a.to_doc()))
                .collect(),
            context: with_context
                .then(|| vec![self.ty.context().to_string(), CORE_CONTEXT.to_string()]),
        }
    }

    /// Whether the entity satisfies every term of a query.
    pub fn matches(&self, query: &Query) -> bool {
        query.terms.iter().all(|t| {
            self.attrs
                .get(&t.attr)
                .is_some_and(|a| t.op.holds(&a.value, &t.value))
        })
    }
}

/// A comparison of an NGSI-LD query term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `==`.
    Eq,
    /// `!=`.
    Ne,
    /// `>`.
    Gt,
    /// `>=`.
    Ge,
    /// `<`.
    Lt,
    /// `<=`.
    Le,
}

impl Op {
    /// Whether `have OP want` holds: numbers and strings are ordered, booleans only compare
    /// for (in)equality, values of different types never match.
    fn holds(self, have: &Value, want: &Value) -> bool {
        use std::cmp::Ordering;
        let order = match (have, want) {
            (Value::Number(a), Value::Number(b)) => match (a.as_f64(), b.as_f64()) {
                (Some(a), Some(b)) => a.partial_cmp(&b),
                _ => None,
            },
            (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
            (Value::Bool(a), Value::Bool(b)) if matches!(self, Op::Eq | Op::Ne) => Some(a.cmp(b)),
            _ => None,
        };
        let Some(order) = order else {
            return false;
        };
        match self {
            Op::Eq => order == Ordering::Equal,
            Op::Ne => order != Ordering::Equal,
            Op::Gt => order == Ordering::Greater,
            Op::Ge => order != Ordering::Less,
            Op::Lt => order == Ordering::Less,
            Op::Le => order != Ordering::Greater,
        }
    }
}

/// One `attr OP value` term.
#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    /// The attribute's short name.
    pub attr: String,
    /// The comparison.
    pub op: Op,
    /// A number, a string or a boolean.
    pub value: Value,
}

/// An NGSI-LD query (`?q=`): terms joined with `;` (and). The hub understands the subset
/// most clients use: `==`, `!=`, `>`, `>=`, `<`, `<=` against a number, a quoted string or
/// `true`/`false`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Query {
    /// Every term must hold.
    pub terms: Vec<Term>,
}

/// Why a `q` could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A term without a comparison.
    #[error("`{0}` has no comparison (==, !=, >, >=, <, <=)")]
    NoOperator(String),
    /// A term with an empty attribute or value.
    #[error("`{0}` lacks an attribute or a value")]
    Empty(String),
    /// An attribute name with characters NGSI-LD names cannot have.
    #[error("`{0}` is not an attribute name")]
    BadAttribute(String),
    /// Or (`|`), parentheses, ranges and lists are not supported.
    #[error(
        "`{0}`: only terms joined with `;` are supported (no `|`, parentheses, ranges or lists)"
    )]
    Unsupported(String),
}

/// Cuts a term for error messages.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

impl Query {
    /// Reads a `q` expression.
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        let mut terms = Vec::new();
        for raw in text.split(';') {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            if raw.contains('|') || raw.starts_with('(') || raw.contains("..") {
                return Err(QueryError::Unsupported(clip(raw)));
            }
            // Two-character operators first, so `>=` is not read as `>` and `=...`.
            let ops: [(&str, Op); 6] = [
                ("==", Op::Eq),
                ("!=", Op::Ne),
                (">=", Op::Ge),
                ("<=", Op::Le),
                (">", Op::Gt),
                ("<", Op::Lt),
            ];
            let found = ops
                .iter()
                .filter_map(|(s, op)| raw.find(s).map(|at| (at, *s, *op)))
                .min_by_key(|(at, s, _)| (*at, std::cmp::Reverse(s.len())));
            let Some((at, sym, op)) = found else {
                return Err(QueryError::NoOperator(clip(raw)));
            };
            let attr = raw[..at].trim();
            let value = raw[at + sym.len()..].trim();
            if attr.is_empty() || value.is_empty() {
                return Err(QueryError::Empty(clip(raw)));
            }
            if !attr
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(QueryError::BadAttribute(clip(attr)));
            }
            let value = if let Some(s) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
                Value::from(s)
            } else if value == "true" || value == "false" {
                Value::from(value == "true")
            } else if let Some(n) = value
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .and_then(serde_json::Number::from_f64)
            {
                Value::Number(n)
            } else if value.contains(',') {
                return Err(QueryError::Unsupported(clip(raw)));
            } else {
                // Unquoted text: taken as a string, as lenient brokers do.
                Value::from(value)
            };
            terms.push(Term {
                attr: attr.to_string(),
                op,
                value,
            });
        }
        Ok(Query { terms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_ids() {
        assert_eq!(EntityType::of_kind("streetlight"), EntityType::Streetlight);
        assert_eq!(
            EntityType::of_kind("rain_gauge"),
            EntityType::WeatherObserved
        );
        assert_eq!(EntityType::of_kind("manhole"), EntityType::Device);
        assert_eq!(
            EntityType::Streetlight.entity_id("SL-0001"),
            "urn:ngsi-ld:Streetlight:SL-0001"
        );
        assert_eq!(
            parse_entity_id("urn:ngsi-ld:Device:MH-0001"),
            Some((EntityType::Device, "MH-0001"))
        );
        assert_eq!(parse_entity_id("urn:ngsi-ld:Nothing:MH-0001"), None);
        assert_eq!(parse_entity_id("urn:ngsi-ld:Device:"), None);
        assert_eq!(parse_entity_id("MH-0001"), None);
        assert_eq!(
            EntityType::from_name(EntityType::Device.iri()),
            Some(EntityType::Device)
        );
    }

    #[test]
    fn quantities_map_to_model_attributes() {
        assert_eq!(
            attribute(EntityType::Streetlight, Quantity::DimmingLevel),
            ("illuminanceLevel".into(), Scale::Fraction)
        );
        assert_eq!(
            attribute(EntityType::WaterQualityObserved, Quantity::DissolvedOxygen).0,
            "O2"
        );
        assert_eq!(
            attribute(EntityType::Device, Quantity::WaterLevel).0,
            "waterLevel"
        );
        assert_eq!(
            attribute(EntityType::Device, Quantity::CameraFramesLost).0,
            "cameraFramesLost"
        );
        assert_eq!(streetlight_status("lamp_failure"), "defectiveLamp");
    }

    #[test]
    fn queries() {
        let q = Query::parse("temperature>20;status==\"ok\";pH<=7.5; powerState!=off").unwrap();
        assert_eq!(q.terms.len(), 4);
        assert_eq!(q.terms[0].op, Op::Gt);
        assert_eq!(q.terms[1].value, json!("ok"));
        assert_eq!(q.terms[2].op, Op::Le);
        assert_eq!(q.terms[3].value, json!("off"));
        assert!(matches!(
            Query::parse("a|b"),
            Err(QueryError::Unsupported(_))
        ));
        assert!(matches!(
            Query::parse("temperature"),
            Err(QueryError::NoOperator(_))
        ));
        assert!(matches!(Query::parse("==3"), Err(QueryError::Empty(_))));
        assert!(matches!(
            Query::parse("a.b==3"),
            Err(QueryError::BadAttribute(_))
        ));
        assert!(matches!(
            Query::parse("a==1..3"),
            Err(QueryError::Unsupported(_))
        ));
        assert!(Query::parse("").unwrap().terms.is_empty());
        assert!(Op::Gt.holds(&json!(21.5), &json!(20)));
        assert!(!Op::Gt.holds(&json!("21"), &json!(20)));
        assert!(Op::Eq.holds(&json!(true), &json!(true)));
    }
}
