//! Quantities, their canonical units, the units also accepted, and reading values.
//!
//! Every value the platform stores is in its quantity's canonical unit. Conversion happens at
//! the edge of the system (the agent for Modbus points, the hub's normalize stage for JSON
//! telemetry), always through [`Quantity::to_canonical`], so there is one table.

use core::fmt;
use serde::{Deserialize, Serialize};

/// What kind of value a quantity carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// A real number in the canonical unit.
    Number,
    /// A boolean (`true`/`false`).
    Bool,
    /// One of a fixed list of states, stored as its index.
    Enum(&'static [&'static str]),
}

/// The states of `lamp_status`, in code order.
pub const LAMP_STATUS_STATES: &[&str] = &["ok", "lamp_failure", "driver_failure", "power_loss"];

macro_rules! quantities {
    ($( $variant:ident = $code:literal, $name:literal, $unit:literal, $kind:expr, $range:expr, $decimals:literal, $unit_code:literal; )*) => {
        /// A measured or controlled quantity. The numeric codes are stable: they are what the
        /// binary agent batch carries, so a code is never reused or renumbered.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum Quantity {
            $(
                #[doc = concat!("`", $name, "`, canonical unit `", $unit, "`.")]
                $variant = $code,
            )*
        }

        impl Quantity {
            /// Every quantity, in code order.
            pub const ALL: &'static [Quantity] = &[$(Quantity::$variant),*];

            /// The stable wire code.
            pub const fn code(self) -> u16 {
                self as u16
            }

            /// The quantity for a wire code.
            pub const fn from_code(code: u16) -> Option<Quantity> {
                match code {
                    $($code => Some(Quantity::$variant),)*
                    _ => None,
                }
            }

            /// The name used in JSON, topics, profiles and the API.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Quantity::$variant => $name,)*
                }
            }

            /// The quantity with this name.
            pub fn from_name(name: &str) -> Option<Quantity> {
                match name {
                    $($name => Some(Quantity::$variant),)*
                    _ => None,
                }
            }

            /// The canonical unit every stored value is in.
            pub const fn unit(self) -> &'static str {
                match self {
                    $(Quantity::$variant => $unit,)*
                }
            }

            /// What kind of value the quantity carries.
            pub const fn kind(self) -> ValueKind {
                match self {
                    $(Quantity::$variant => $kind,)*
                }
            }

            /// How many decimals of the canonical unit a reading is shown with: the resolution
            /// of the sensors the district uses (a river level to the millimetre, turbidity to
            /// 0.1 NTU), so a display never prints float noise like `265.7997131347656`.
            pub const fn decimals(self) -> u8 {
                match self {
                    $(Quantity::$variant => $decimals,)*
                }
            }

            /// The UN/CEFACT Recommendation 20 common code of the canonical unit, as NGSI-LD's
            /// `unitCode` and other exchange formats want it (`MTR` for m, `CEL` for Cel).
            /// Dimensionless quantities, booleans and enums say `C62` ("one"). Turbidity says
            /// `NTU`: Recommendation 20 has no nephelometric turbidity unit, and `NTU` is what
            /// FIWARE deployments of `WaterQualityObserved` write for it.
            pub const fn unit_code(self) -> &'static str {
                match self {
                    $(Quantity::$variant => $unit_code,)*
                }
            }

            /// The physically possible range in the canonical unit, if bounded. A value outside
            /// it is kept but marked `bad`: no sensor can have measured it.
            pub const fn physical_range(self) -> Option<(f64, f64)> {
                match self {
                    $(Quantity::$variant => $range,)*
                }
            }
        }
    };
}

use ValueKind::{Bool, Number};

quantities! {
    WaterLevel = 1, "water_level", "m", Number, Some((-100.0, 1000.0)), 3, "MTR";
    WaterFlow = 2, "water_flow", "m3/s", Number, Some((-1.0e5, 1.0e5)), 3, "MQS";
    Rainfall = 3, "rainfall", "mm", Number, Some((0.0, 2000.0)), 1, "MMT";
    Turbidity = 4, "turbidity", "NTU", Number, Some((0.0, 10000.0)), 1, "NTU";
    Ph = 5, "ph", "1", Number, Some((0.0, 14.0)), 2, "C62";
    DissolvedOxygen = 6, "dissolved_oxygen", "mg/L", Number, Some((0.0, 50.0)), 2, "M1";
    Conductivity = 7, "conductivity", "uS/cm", Number, Some((0.0, 200000.0)), 0, "G42";
    WaterTemperature = 8, "water_temperature", "Cel", Number, Some((-5.0, 100.0)), 1, "CEL";
    AirTemperature = 9, "air_temperature", "Cel", Number, Some((-80.0, 70.0)), 1, "CEL";
    LampPower = 10, "lamp_power", "W", Number, Some((0.0, 100000.0)), 1, "WTT";
    LampVoltage = 11, "lamp_voltage", "V", Number, Some((0.0, 1000.0)), 1, "VLT";
    LampCurrent = 12, "lamp_current", "A", Number, Some((0.0, 1000.0)), 3, "AMP";
    LampEnergy = 13, "lamp_energy", "kWh", Number, Some((0.0, 1.0e9)), 2, "KWH";
    DimmingLevel = 14, "dimming_level", "%", Number, Some((0.0, 100.0)), 0, "P1";
    LampStatus = 15, "lamp_status", "enum", ValueKind::Enum(LAMP_STATUS_STATES), None, 0, "C62";
    TiltAngle = 16, "tilt_angle", "deg", Number, Some((-180.0, 180.0)), 1, "DD";
    CoverOpen = 17, "cover_open", "bool", Bool, None, 0, "C62";
    BatteryLevel = 18, "battery_level", "%", Number, Some((0.0, 100.0)), 0, "P1";
    CameraFps = 19, "camera_fps", "Hz", Number, Some((0.0, 1000.0)), 1, "HTZ";
    CameraBitrate = 20, "camera_bitrate", "kbit/s", Number, Some((0.0, 1.0e7)), 0, "C74";
    Motion = 21, "motion", "bool", Bool, None, 0, "C62";
    CameraFramesLost = 22, "camera_frames_lost", "1", Number, Some((0.0, 1.0e12)), 0, "C62";
    RelativeHumidity = 23, "relative_humidity", "%", Number, Some((0.0, 100.0)), 0, "P1";
    WindSpeed = 24, "wind_speed", "m/s", Number, Some((0.0, 150.0)), 1, "MTS";
    AirPressure = 25, "air_pressure", "hPa", Number, Some((300.0, 1100.0)), 1, "A97";
    // Laboratory-style water quality parameters reported by monitoring stations (HJ 212). The
    // ranges are wide on purpose: raw sewage and landfill leachate reach thousands of mg/L.
    AmmoniaNitrogen = 26, "ammonia_nitrogen", "mg/L", Number, Some((0.0, 10000.0)), 3, "M1";
    Cod = 27, "cod", "mg/L", Number, Some((0.0, 100000.0)), 1, "M1";
    PermanganateIndex = 28, "permanganate_index", "mg/L", Number, Some((0.0, 10000.0)), 1, "M1";
    TotalPhosphorus = 29, "total_phosphorus", "mg/L", Number, Some((0.0, 10000.0)), 3, "M1";
    TotalNitrogen = 30, "total_nitrogen", "mg/L", Number, Some((0.0, 10000.0)), 2, "M1";
    // Pumping stations (drainage and flood pumps, often behind Sparkplug B gateways).
    PumpRunning = 31, "pump_running", "bool", Bool, None, 0, "C62";
    PumpSpeed = 32, "pump_speed", "%", Number, Some((0.0, 100.0)), 0, "P1";
    WaterPressure = 33, "water_pressure", "kPa", Number, Some((-101.325, 100000.0)), 1, "KPA";
}

/// Why a unit or value could not be brought to the canonical form.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum UnitError {
    /// The unit is not one the quantity accepts.
    #[error("unit `{unit}` is not accepted for `{quantity}` (canonical `{canonical}`)")]
    UnknownUnit {
        /// The quantity's name.
        quantity: &'static str,
        /// The canonical unit.
        canonical: &'static str,
        /// What was given (truncated to 32 bytes).
        unit: ShortText,
    },
    /// The value is NaN or infinite.
    #[error("value is not a finite number")]
    NotFinite,
}

/// A short copy of an offending input for error messages, without allocation.
#[derive(Clone, PartialEq, Eq)]
pub struct ShortText {
    buf: [u8; 32],
    len: u8,
}

impl ShortText {
    /// Copies at most 32 bytes of `s`, cut at a character boundary.
    pub fn new(s: &str) -> ShortText {
        let mut end = s.len().min(32);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut buf = [0u8; 32];
        buf[..end].copy_from_slice(&s.as_bytes()[..end]);
        ShortText {
            buf,
            len: end as u8,
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ever filled from a `&str` cut at a char boundary.
        core::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }
}

impl fmt::Display for ShortText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ShortText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A linear conversion `canonical = value * factor + offset`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conversion {
    /// Multiplier.
    pub factor: f64,
    /// Added after multiplying.
    pub offset: f64,
}

impl Conversion {
    /// No change: the unit is the canonical one.
    pub const IDENTITY: Conversion = Conversion {
        factor: 1.0,
        offset: 0.0,
    };

    const fn scale(factor: f64) -> Conversion {
        Conversion {
            factor,
            offset: 0.0,
        }
    }

    /// Applies the conversion towards the canonical unit.
    pub fn apply(self, v: f64) -> f64 {
        v * self.factor + self.offset
    }

    /// Applies the conversion from the canonical unit back to the source unit.
    pub fn invert(self, canonical: f64) -> f64 {
        (canonical - self.offset) / self.factor
    }
}

impl Quantity {
    /// The conversion from `unit` to the canonical unit, or `None` if the unit is not accepted.
    pub fn conversion(self, unit: &str) -> Option<Conversion> {
        use Quantity::*;
        if unit == self.unit() {
            return Some(Conversion::IDENTITY);
        }
        let c = match (self, unit) {
            (WaterLevel, "mm") => Conversion::scale(0.001),
            (WaterLevel, "cm") => Conversion::scale(0.01),
            (WaterFlow, "m3/h") => Conversion::scale(1.0 / 3600.0),
            (WaterFlow, "L/s") => Conversion::scale(0.001),
            (Turbidity, "FTU") => Conversion::IDENTITY,
            (Conductivity, "mS/cm") => Conversion::scale(1000.0),
            (Conductivity, "S/m") => Conversion::scale(10000.0),
            (WaterTemperature | AirTemperature, "degF") => Conversion {
                factor: 5.0 / 9.0,
                offset: -32.0 * 5.0 / 9.0,
            },
            (WaterTemperature | AirTemperature, "K") => Conversion {
                factor: 1.0,
                offset: -273.15,
            },
            (LampPower, "kW") => Conversion::scale(1000.0),
            (LampCurrent, "mA") => Conversion::scale(0.001),
            (LampEnergy, "Wh") => Conversion::scale(0.001),
            (DimmingLevel, "1") => Conversion::scale(100.0),
            (TiltAngle, "rad") => Conversion::scale(180.0 / core::f64::consts::PI),
            (CameraBitrate, "bit/s") => Conversion::scale(0.001),
            (CameraBitrate, "Mbit/s") => Conversion::scale(1000.0),
            (AirPressure, "Pa") => Conversion::scale(0.01),
            (AirPressure, "kPa") => Conversion::scale(10.0),
            (WindSpeed, "km/h") => Conversion::scale(1.0 / 3.6),
            (PumpSpeed, "1") => Conversion::scale(100.0),
            (WaterPressure, "bar") => Conversion::scale(100.0),
            (WaterPressure, "MPa") => Conversion::scale(1000.0),
            (WaterPressure, "Pa") => Conversion::scale(0.001),
            _ => return None,
        };
        Some(c)
    }

    /// Converts a number in `unit` to the canonical unit.
    pub fn to_canonical(self, value: f64, unit: &str) -> Result<f64, UnitError> {
        if !value.is_finite() {
            return Err(UnitError::NotFinite);
        }
        let c = self
            .conversion(unit)
            .ok_or_else(|| UnitError::UnknownUnit {
                quantity: self.name(),
                canonical: self.unit(),
                unit: ShortText::new(unit),
            })?;
        Ok(c.apply(value))
    }

    /// Whether a value is physically possible for this quantity.
    pub fn is_plausible(self, value: &Value) -> bool {
        match (self.kind(), value) {
            (ValueKind::Number, Value::Number(v)) => match self.physical_range() {
                Some((lo, hi)) => v.is_finite() && *v >= lo && *v <= hi,
                None => v.is_finite(),
            },
            (ValueKind::Bool, Value::Bool(_)) => true,
            (ValueKind::Enum(states), Value::State(i)) => (*i as usize) < states.len(),
            _ => false,
        }
    }

    /// The index of an enum state by name, for enum quantities.
    pub fn state_index(self, state: &str) -> Option<u8> {
        match self.kind() {
            ValueKind::Enum(states) => states.iter().position(|s| *s == state).map(|i| i as u8),
            _ => None,
        }
    }

    /// Whether the quantity can be written to a device (set through desired state).
    pub const fn is_controllable(self) -> bool {
        matches!(self, Quantity::DimmingLevel | Quantity::PumpSpeed)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Quantity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(self.name())
        } else {
            s.serialize_u16(self.code())
        }
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Quantity;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a quantity name")
                }
                fn visit_str<E: Error>(self, s: &str) -> Result<Quantity, E> {
                    Quantity::from_name(s)
                        .ok_or_else(|| E::custom(format_args!("unknown quantity `{s}`")))
                }
            }
            d.deserialize_str(V)
        } else {
            let code = u16::deserialize(d)?;
            Quantity::from_code(code)
                .ok_or_else(|| D::Error::custom(format_args!("unknown quantity code {code}")))
        }
    }
}

/// A reading's value in canonical form.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// A number in the quantity's canonical unit.
    Number(f64),
    /// A boolean quantity.
    Bool(bool),
    /// The index of an enum quantity's state.
    State(u8),
}

impl Value {
    /// The value as stored in a time series: numbers as is, `true` as 1, states as their index.
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Number(v) => v,
            Value::Bool(b) => b as u8 as f64,
            Value::State(i) => i as f64,
        }
    }

    /// Rebuilds a value from its stored number for a quantity.
    pub fn from_f64(quantity: Quantity, v: f64) -> Value {
        match quantity.kind() {
            ValueKind::Number => Value::Number(v),
            ValueKind::Bool => Value::Bool(v != 0.0),
            ValueKind::Enum(_) => Value::State(v as u8),
        }
    }
}

/// How far a reading can be trusted.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Quality {
    /// Measured, in range, on time.
    #[default]
    Good,
    /// Kept but doubtful: corrected or hub-stamped time, outside the sensor's rated range.
    Uncertain,
    /// Known wrong: physically impossible, or the device reported a fault.
    Bad,
}

impl Quality {
    /// The name used in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Uncertain => "uncertain",
            Quality::Bad => "bad",
        }
    }

    /// The worse of two qualities.
    pub fn worst(self, other: Quality) -> Quality {
        if other > self { other } else { self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_round_trip() {
        for q in Quantity::ALL {
            assert_eq!(Quantity::from_code(q.code()), Some(*q));
            assert_eq!(Quantity::from_name(q.name()), Some(*q));
            assert_eq!(q.conversion(q.unit()), Some(Conversion::IDENTITY));
        }
        assert_eq!(Quantity::from_code(0), None);
        assert_eq!(Quantity::from_name("water-level"), None);
    }

    #[test]
    fn unit_codes_are_recommendation_20_shaped() {
        // Recommendation 20 common codes are two or three upper-case letters or digits
        // (`M1`, `P1`, `DD`, `MTR`, `A97`); `NTU` is the one code outside the list, on purpose.
        for q in Quantity::ALL {
            let c = q.unit_code();
            assert!(
                (2..=3).contains(&c.len())
                    && c.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()),
                "{}: unit code `{c}`",
                q.name()
            );
        }
        // Same unit, same code: the code follows the canonical unit, never the quantity.
        for a in Quantity::ALL {
            for b in Quantity::ALL {
                if a.unit() == b.unit() && !matches!(a.unit(), "bool" | "enum") {
                    assert_eq!(a.unit_code(), b.unit_code(), "{} vs {}", a.name(), b.name());
                }
            }
        }
        for (q, code) in [
            (Quantity::WaterLevel, "MTR"),
            (Quantity::Rainfall, "MMT"),
            (Quantity::WaterFlow, "MQS"),
            (Quantity::WaterTemperature, "CEL"),
            (Quantity::DissolvedOxygen, "M1"),
            (Quantity::Conductivity, "G42"),
            (Quantity::DimmingLevel, "P1"),
            (Quantity::AirPressure, "A97"),
            (Quantity::Ph, "C62"),
        ] {
            assert_eq!(q.unit_code(), code, "{}", q.name());
        }
    }

    #[test]
    fn contract_conversions() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(
            Quantity::WaterLevel.to_canonical(2310.0, "mm").unwrap(),
            2.31
        ));
        assert!(close(
            Quantity::WaterLevel.to_canonical(231.0, "cm").unwrap(),
            2.31
        ));
        assert!(close(
            Quantity::WaterFlow.to_canonical(3600.0, "m3/h").unwrap(),
            1.0
        ));
        assert!(close(
            Quantity::WaterFlow.to_canonical(500.0, "L/s").unwrap(),
            0.5
        ));
        assert!(close(
            Quantity::Conductivity.to_canonical(1.2, "mS/cm").unwrap(),
            1200.0
        ));
        assert!(close(
            Quantity::Conductivity.to_canonical(0.12, "S/m").unwrap(),
            1200.0
        ));
        assert!(close(
            Quantity::AirTemperature
                .to_canonical(212.0, "degF")
                .unwrap(),
            100.0
        ));
        assert!(close(
            Quantity::WaterTemperature
                .to_canonical(273.15, "K")
                .unwrap(),
            0.0
        ));
        assert!(close(
            Quantity::LampPower.to_canonical(0.0615, "kW").unwrap(),
            61.5
        ));
        assert!(close(
            Quantity::LampCurrent.to_canonical(250.0, "mA").unwrap(),
            0.25
        ));
        assert!(close(
            Quantity::LampEnergy.to_canonical(1500.0, "Wh").unwrap(),
            1.5
        ));
        assert!(close(
            Quantity::DimmingLevel.to_canonical(0.4, "1").unwrap(),
            40.0
        ));
        assert!(close(
            Quantity::TiltAngle
                .to_canonical(core::f64::consts::PI, "rad")
                .unwrap(),
            180.0
        ));
        assert!(close(
            Quantity::CameraBitrate.to_canonical(2.0, "Mbit/s").unwrap(),
            2000.0
        ));
        assert!(close(
            Quantity::CameraBitrate
                .to_canonical(64000.0, "bit/s")
                .unwrap(),
            64.0
        ));
        assert!(close(
            Quantity::Turbidity.to_canonical(12.5, "FTU").unwrap(),
            12.5
        ));
    }

    #[test]
    fn rejects_unknown_unit_and_non_finite() {
        let e = Quantity::WaterLevel
            .to_canonical(1.0, "furlong")
            .unwrap_err();
        assert!(matches!(e, UnitError::UnknownUnit { .. }));
        assert!(e.to_string().contains("furlong"));
        assert_eq!(
            Quantity::Ph.to_canonical(f64::NAN, "1"),
            Err(UnitError::NotFinite)
        );
        assert_eq!(
            Quantity::Ph.to_canonical(f64::INFINITY, "1"),
            Err(UnitError::NotFinite)
        );
    }

    #[test]
    fn plausibility() {
        assert!(Quantity::Ph.is_plausible(&Value::Number(7.0)));
        assert!(!Quantity::Ph.is_plausible(&Value::Number(15.0)));
        assert!(!Quantity::Ph.is_plausible(&Value::Bool(true)));
        assert!(Quantity::LampStatus.is_plausible(&Value::State(3)));
        assert!(!Quantity::LampStatus.is_plausible(&Value::State(4)));
        assert!(Quantity::CoverOpen.is_plausible(&Value::Bool(false)));
    }

    #[test]
    fn value_storage_form() {
        assert_eq!(Value::Bool(true).as_f64(), 1.0);
        assert_eq!(Value::from_f64(Quantity::CoverOpen, 1.0), Value::Bool(true));
        assert_eq!(Value::from_f64(Quantity::LampStatus, 2.0), Value::State(2));
        assert_eq!(Quantity::LampStatus.state_index("power_loss"), Some(3));
    }

    #[test]
    fn short_text_cuts_on_char_boundary() {
        let s = "ééééééééééééééééééééé"; // 2 bytes each
        let t = ShortText::new(s);
        assert!(t.as_str().len() <= 32);
        assert!(s.starts_with(t.as_str()));
    }
}
