//! Modbus device profiles: the register map of a device model, written by integrators in TOML.
//!
//! A profile says where each quantity lives (table, address, type, word order), how raw numbers
//! become engineering values (scale, offset, unit) and which points may be written. Validation
//! catches what would otherwise fail in the field: overlapping points, types that do not fit the
//! table, units the quantity does not accept, writes to read-only tables.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use crate::Value;
use crate::quantity::{Quantity, ValueKind};
pub use crate::registers::Table;
use crate::registers::{DataType, RegisterError, WordOrder, decode_raw, encode_raw};

fn one() -> f64 {
    1.0
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn is_default_order(o: &WordOrder) -> bool {
    *o == WordOrder::Abcd
}

/// One point of a profile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    /// The quantity it measures or controls.
    pub quantity: String,
    /// The table it lives in.
    pub table: Table,
    /// Protocol address, 0-based.
    pub address: u16,
    /// Register type.
    #[serde(rename = "type")]
    pub data_type: DataType,
    /// Word order of multi-register types.
    #[serde(default, skip_serializing_if = "is_default_order")]
    pub word_order: WordOrder,
    /// `engineering = raw * scale + offset`.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub scale: f64,
    /// See `scale`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: f64,
    /// Unit of the engineering value; the quantity's canonical unit when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Whether the point may be written (set through desired state or a command).
    #[serde(default, skip_serializing_if = "is_false")]
    pub writable: bool,
    /// Lowest value the sensor is rated for, or the lowest value a write may set (engineering unit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Highest value, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// A device profile as written in TOML.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Model name, e.g. `generic-streetlight-v1`.
    pub model: String,
    /// Device kind.
    pub kind: String,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The points.
    pub points: Vec<Point>,
}

/// A profile problem, naming the point by index and quantity.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("points[{index}] ({quantity}): {problem}")]
pub struct PointError {
    /// Index in `points`.
    pub index: usize,
    /// The point's quantity as written.
    pub quantity: String,
    /// What is wrong.
    pub problem: String,
}

/// Why a profile is invalid.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProfileError {
    /// The TOML does not parse or has unknown keys.
    #[error("{0}")]
    Syntax(String),
    /// `model` is empty.
    #[error("model: must not be empty")]
    EmptyModel,
    /// `kind` is not a valid kind.
    #[error("kind: {0}")]
    BadKind(crate::id::IdError),
    /// No points.
    #[error("points: a profile needs at least one point")]
    NoPoints,
    /// A point is wrong.
    #[error(transparent)]
    Point(#[from] PointError),
}

/// A validated point, resolved for fast polling.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedPoint {
    /// Index in the profile's `points`.
    pub index: usize,
    /// The quantity.
    pub quantity: Quantity,
    /// Table.
    pub table: Table,
    /// Address.
    pub address: u16,
    /// Type.
    pub data_type: DataType,
    /// Word order.
    pub word_order: WordOrder,
    /// Scale.
    pub scale: f64,
    /// Offset.
    pub offset: f64,
    /// Engineering unit (as written, or canonical).
    pub unit: String,
    /// Writable.
    pub writable: bool,
    /// Rated or settable range in the engineering unit.
    pub range: (Option<f64>, Option<f64>),
}

impl ResolvedPoint {
    /// Registers (or bits) the point occupies.
    pub fn width(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.data_type.words()
        }
    }

    /// Turns registers into a canonical value. For bit tables pass `[0]` or `[1]`.
    pub fn decode(&self, words: &[u16]) -> Result<Value, RegisterError> {
        let raw = if self.table.is_bits() {
            words
                .first()
                .map(|w| (*w != 0) as u8 as f64)
                .ok_or(RegisterError::TooFewWords {
                    data_type: self.data_type,
                    needed: 1,
                    got: 0,
                })?
        } else {
            decode_raw(self.data_type, self.word_order, words)?
        };
        let eng = raw * self.scale + self.offset;
        Ok(match self.quantity.kind() {
            ValueKind::Bool => Value::Bool(eng != 0.0),
            ValueKind::Enum(states) => {
                let i = eng as i64;
                if i < 0 || i as usize >= states.len() || eng != i as f64 {
                    return Err(RegisterError::OutOfRange {
                        value: eng,
                        data_type: self.data_type,
                    });
                }
                Value::State(i as u8)
            }
            ValueKind::Number => {
                // The unit was checked at load, so the conversion exists.
                let conv =
                    self.quantity
                        .conversion(&self.unit)
                        .unwrap_or(crate::quantity::Conversion {
                            factor: 1.0,
                            offset: 0.0,
                        });
                let v = conv.apply(eng);
                if !v.is_finite() {
                    return Err(RegisterError::NotFinite);
                }
                Value::Number(v)
            }
        })
    }

    /// Whether an engineering value lies inside the point's rated range.
    pub fn in_range(&self, engineering: f64) -> bool {
        self.range.0.is_none_or(|lo| engineering >= lo)
            && self.range.1.is_none_or(|hi| engineering <= hi)
    }

    /// The engineering value (profile unit) of a canonical value.
    pub fn engineering(&self, value: Value) -> f64 {
        match value {
            Value::Number(v) => self
                .quantity
                .conversion(&self.unit)
                .map(|c| c.invert(v))
                .unwrap_or(v),
            other => other.as_f64(),
        }
    }

    /// Turns a canonical value to write into registers (or one bit as 0/1), checking the range.
    pub fn encode(&self, value: Value, out: &mut [u16]) -> Result<usize, WriteError> {
        if !self.writable {
            return Err(WriteError::NotWritable);
        }
        let eng = self.engineering(value);
        if !eng.is_finite() {
            return Err(WriteError::Register(RegisterError::NotFinite));
        }
        if !self.in_range(eng) {
            return Err(WriteError::OutOfRange {
                value: eng,
                min: self.range.0,
                max: self.range.1,
            });
        }
        let raw = (eng - self.offset) / self.scale;
        if self.table.is_bits() {
            if out.is_empty() {
                return Err(WriteError::Register(RegisterError::TooFewWords {
                    data_type: self.data_type,
                    needed: 1,
                    got: 0,
                }));
            }
            out[0] = (raw != 0.0) as u16;
            return Ok(1);
        }
        encode_raw(self.data_type, self.word_order, raw, out).map_err(WriteError::Register)
    }
}

/// Why a value cannot be written to a point.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum WriteError {
    /// The point is read-only.
    #[error("point is not writable")]
    NotWritable,
    /// Outside the point's `min`/`max`.
    #[error("value {value} outside the allowed range {min:?}..={max:?}")]
    OutOfRange {
        /// The engineering value.
        value: f64,
        /// Lower bound.
        min: Option<f64>,
        /// Upper bound.
        max: Option<f64>,
    },
    /// Does not fit the register type.
    #[error(transparent)]
    Register(RegisterError),
}

/// A validated profile.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceProfile {
    /// The profile as written.
    pub source: Profile,
    /// Its points, resolved, in profile order.
    pub points: Vec<ResolvedPoint>,
}

impl DeviceProfile {
    /// Parses and validates a profile from TOML text.
    #[cfg(feature = "std")]
    pub fn from_toml(text: &str) -> Result<DeviceProfile, ProfileError> {
        let p: Profile =
            crate::config::parse_toml(text).map_err(|e| ProfileError::Syntax(e.to_string()))?;
        DeviceProfile::validate(p)
    }

    /// Validates a parsed profile.
    pub fn validate(p: Profile) -> Result<DeviceProfile, ProfileError> {
        if p.model.trim().is_empty() {
            return Err(ProfileError::EmptyModel);
        }
        crate::id::validate_kind(&p.kind).map_err(ProfileError::BadKind)?;
        if p.points.is_empty() {
            return Err(ProfileError::NoPoints);
        }
        let mut points = Vec::with_capacity(p.points.len());
        for (index, pt) in p.points.iter().enumerate() {
            let err = |problem: String| PointError {
                index,
                quantity: pt.quantity.clone(),
                problem,
            };
            let quantity = Quantity::from_name(&pt.quantity)
                .ok_or_else(|| err(format!("unknown quantity `{}`", pt.quantity)))?;
            let unit = pt
                .unit
                .clone()
                .unwrap_or_else(|| String::from(quantity.unit()));
            if quantity.conversion(&unit).is_none() {
                return Err(err(format!(
                    "unit `{unit}` is not accepted for `{}` (canonical `{}`)",
                    quantity.name(),
                    quantity.unit()
                ))
                .into());
            }
            if pt.table.is_bits() && pt.data_type != DataType::Bool {
                return Err(err(format!(
                    "a {:?} table holds bits; type must be `bool`",
                    pt.table
                ))
                .into());
            }
            if !pt.scale.is_finite() || pt.scale == 0.0 {
                return Err(err(String::from("scale must be finite and nonzero")).into());
            }
            if !pt.offset.is_finite() {
                return Err(err(String::from("offset must be finite")).into());
            }
            if pt.writable && !pt.table.is_writable() {
                return Err(err(format!(
                    "writable, but the {:?} table is read-only",
                    pt.table
                ))
                .into());
            }
            if let (Some(lo), Some(hi)) = (pt.min, pt.max)
                && (lo > hi || lo.is_nan() || hi.is_nan())
            {
                return Err(err(format!("min {lo} is above max {hi}")).into());
            }
            let width = if pt.table.is_bits() {
                1
            } else {
                pt.data_type.words()
            };
            if pt.address as u32 + width as u32 > 65536 {
                return Err(err(format!(
                    "address {} + {width} registers runs past 65535",
                    pt.address
                ))
                .into());
            }
            points.push(ResolvedPoint {
                index,
                quantity,
                table: pt.table,
                address: pt.address,
                data_type: pt.data_type,
                word_order: pt.word_order,
                scale: pt.scale,
                offset: pt.offset,
                unit,
                writable: pt.writable,
                range: (pt.min, pt.max),
            });
        }
        // Overlaps and duplicate quantities, checked pairwise: profiles have tens of points.
        for (i, a) in points.iter().enumerate() {
            for b in &points[..i] {
                let overlap = a.table == b.table
                    && (a.address as u32) < b.address as u32 + b.width() as u32
                    && (b.address as u32) < a.address as u32 + a.width() as u32;
                if overlap {
                    return Err(PointError {
                        index: a.index,
                        quantity: p.points[a.index].quantity.clone(),
                        problem: format!("overlaps points[{}] in the {:?} table", b.index, a.table),
                    }
                    .into());
                }
                if a.quantity == b.quantity {
                    return Err(PointError {
                        index: a.index,
                        quantity: p.points[a.index].quantity.clone(),
                        problem: format!("quantity already mapped by points[{}]", b.index),
                    }
                    .into());
                }
            }
        }
        Ok(DeviceProfile { source: p, points })
    }

    /// The point for a quantity.
    pub fn point(&self, quantity: Quantity) -> Option<&ResolvedPoint> {
        self.points.iter().find(|p| p.quantity == quantity)
    }

    /// Plans the reads that cover every point: points of a table whose registers are adjacent
    /// (or, with `max_gap > 0`, at most that many unused registers apart) are merged into one
    /// request, up to the protocol's per-request limit.
    pub fn plan_reads(&self, max_gap: u16) -> Vec<ReadBlock> {
        let mut order: Vec<&ResolvedPoint> = self.points.iter().collect();
        order.sort_by_key(|p| (p.table, p.address));
        let mut blocks: Vec<ReadBlock> = Vec::new();
        for p in order {
            let end = p.address as u32 + p.width() as u32;
            if let Some(b) = blocks.last_mut()
                && b.table == p.table
            {
                let b_end = b.start as u32 + b.count as u32;
                let fits = end - b.start as u32 <= p.table.max_read() as u32;
                if p.address as u32 <= b_end + max_gap as u32 && fits {
                    b.count = (end.max(b_end) - b.start as u32) as u16;
                    b.points.push(p.index);
                    continue;
                }
            }
            blocks.push(ReadBlock {
                table: p.table,
                start: p.address,
                count: p.width(),
                points: alloc::vec![p.index],
            });
        }
        blocks
    }
}

/// One read request of a poll plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadBlock {
    /// The table read.
    pub table: Table,
    /// First address.
    pub start: u16,
    /// Registers or bits read.
    pub count: u16,
    /// Indexes of the points it covers (into `DeviceProfile::points`).
    pub points: Vec<usize>,
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LAMP: &str = r#"
model = "generic-streetlight-v1"
kind = "streetlight"
[[points]]
quantity = "lamp_voltage"
table = "input"
address = 0
type = "f32"
word_order = "cdab"
unit = "V"
[[points]]
quantity = "lamp_current"
table = "input"
address = 2
type = "u16"
scale = 0.001
unit = "A"
[[points]]
quantity = "lamp_power"
table = "input"
address = 3
type = "u32"
scale = 0.1
unit = "W"
[[points]]
quantity = "dimming_level"
table = "holding"
address = 16
type = "u16"
unit = "%"
writable = true
min = 0
max = 100
[[points]]
quantity = "cover_open"
table = "discrete"
address = 0
type = "bool"
"#;

    #[test]
    fn parses_and_plans() {
        let p = DeviceProfile::from_toml(LAMP).unwrap();
        assert_eq!(p.points.len(), 5);
        let plan = p.plan_reads(0);
        assert_eq!(
            plan,
            vec![
                ReadBlock {
                    table: Table::Discrete,
                    start: 0,
                    count: 1,
                    points: vec![4]
                },
                ReadBlock {
                    table: Table::Input,
                    start: 0,
                    count: 5,
                    points: vec![0, 1, 2]
                },
                ReadBlock {
                    table: Table::Holding,
                    start: 16,
                    count: 1,
                    points: vec![3]
                },
            ]
        );
    }

    #[test]
    fn decode_and_encode_through_scale() {
        let p = DeviceProfile::from_toml(LAMP).unwrap();
        let current = &p.points[1];
        assert_eq!(current.decode(&[250]).unwrap(), Value::Number(0.25));
        let power = &p.points[2];
        assert_eq!(power.decode(&[0, 615]).unwrap(), Value::Number(61.5));
        let dim = p.point(Quantity::DimmingLevel).unwrap();
        let mut out = [0u16; 4];
        assert_eq!(dim.encode(Value::Number(40.0), &mut out), Ok(1));
        assert_eq!(out[0], 40);
        assert!(matches!(
            dim.encode(Value::Number(140.0), &mut out),
            Err(WriteError::OutOfRange { .. })
        ));
        assert_eq!(
            current.encode(Value::Number(1.0), &mut out),
            Err(WriteError::NotWritable)
        );
    }

    #[test]
    fn unit_conversion_on_decode() {
        let p = DeviceProfile::from_toml(
            r#"model = "radar"
kind = "water_level"
[[points]]
quantity = "water_level"
table = "input"
address = 0
type = "u16"
unit = "mm"
min = 0
max = 10000
"#,
        )
        .unwrap();
        assert_eq!(p.points[0].decode(&[2310]).unwrap(), Value::Number(2.31));
        assert!(p.points[0].in_range(2310.0));
        assert!(!p.points[0].in_range(12000.0));
        assert_eq!(p.points[0].engineering(Value::Number(2.31)), 2310.0);
    }

    fn err_of(text: &str) -> String {
        DeviceProfile::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn every_rejection() {
        let head = "model = \"m\"\nkind = \"streetlight\"\n";
        let pt = |body: &str| format!("{head}[[points]]\n{body}\n");
        assert!(
            err_of("model = 1").contains("invalid type"),
            "{}",
            err_of("model = 1")
        );
        assert!(err_of(&format!("{head}colour = 1\n[[points]]\nquantity=\"ph\"\ntable=\"input\"\naddress=0\ntype=\"u16\"")).contains("unknown field"));
        assert_eq!(
            err_of("model = \"\"\nkind = \"streetlight\"\npoints = []"),
            "model: must not be empty"
        );
        assert!(err_of("model = \"m\"\nkind = \"Street\"\npoints = []").starts_with("kind:"));
        assert_eq!(
            err_of(&format!("{head}points = []")),
            "points: a profile needs at least one point"
        );
        assert!(
            err_of(&pt(
                "quantity=\"flux\"\ntable=\"input\"\naddress=0\ntype=\"u16\""
            ))
            .contains("unknown quantity `flux`")
        );
        assert!(
            err_of(&pt(
                "quantity=\"ph\"\ntable=\"input\"\naddress=0\ntype=\"u16\"\nunit=\"V\""
            ))
            .contains("unit `V`")
        );
        assert!(
            err_of(&pt(
                "quantity=\"ph\"\ntable=\"coil\"\naddress=0\ntype=\"u16\""
            ))
            .contains("holds bits")
        );
        assert!(
            err_of(&pt(
                "quantity=\"ph\"\ntable=\"input\"\naddress=0\ntype=\"u16\"\nscale=0"
            ))
            .contains("scale")
        );
        assert!(
            err_of(&pt(
                "quantity=\"ph\"\ntable=\"input\"\naddress=0\ntype=\"u16\"\nwritable=true"
            ))
            .contains("read-only")
        );
        assert!(
            err_of(&pt(
                "quantity=\"ph\"\ntable=\"input\"\naddress=0\ntype=\"u16\"\nmin=5\nmax=1"
            ))
            .contains("above max")
        );
        assert!(
            err_of(&pt(
                "quantity=\"ph\"\ntable=\"input\"\naddress=65535\ntype=\"f32\""
            ))
            .contains("runs past")
        );
        assert!(
            err_of(&pt(
                "quantity=\"ph\"\ntable=\"input\"\naddress=0\ntype=\"u24\""
            ))
            .contains("unknown variant")
        );
        assert!(
            err_of(&pt(
                "quantity=\"ph\"\ntable=\"input\"\naddress=0\ntype=\"u16\"\nword_order=\"bcda\""
            ))
            .contains("unknown variant")
        );
        let two = format!(
            "{head}[[points]]\nquantity=\"ph\"\ntable=\"input\"\naddress=0\ntype=\"f32\"\n[[points]]\nquantity=\"turbidity\"\ntable=\"input\"\naddress=1\ntype=\"u16\"\n"
        );
        assert!(
            err_of(&two).contains("overlaps points[0]"),
            "{}",
            err_of(&two)
        );
        let dup = format!(
            "{head}[[points]]\nquantity=\"ph\"\ntable=\"input\"\naddress=0\ntype=\"u16\"\n[[points]]\nquantity=\"ph\"\ntable=\"holding\"\naddress=0\ntype=\"u16\"\n"
        );
        assert!(err_of(&dup).contains("already mapped"));
    }

    #[test]
    fn gaps_merge_only_when_allowed_and_within_limits() {
        let mut text = String::from("model = \"m\"\nkind = \"weather\"\n");
        let qs = ["ph", "turbidity", "conductivity", "dissolved_oxygen"];
        for (i, q) in qs.iter().enumerate() {
            text.push_str(&format!(
                "[[points]]\nquantity=\"{q}\"\ntable=\"input\"\naddress={}\ntype=\"u16\"\n",
                i * 3
            ));
        }
        let p = DeviceProfile::from_toml(&text).unwrap();
        assert_eq!(p.plan_reads(0).len(), 4);
        assert_eq!(
            p.plan_reads(2),
            vec![ReadBlock {
                table: Table::Input,
                start: 0,
                count: 10,
                points: vec![0, 1, 2, 3]
            }]
        );
        // A block never exceeds 125 registers.
        let mut text = String::from("model = \"m\"\nkind = \"weather\"\n");
        text.push_str("[[points]]\nquantity=\"ph\"\ntable=\"input\"\naddress=0\ntype=\"u16\"\n");
        text.push_str(
            "[[points]]\nquantity=\"turbidity\"\ntable=\"input\"\naddress=124\ntype=\"f32\"\n",
        );
        let p = DeviceProfile::from_toml(&text).unwrap();
        assert_eq!(p.plan_reads(200).len(), 2);
    }

    proptest! {
        /// Every point is covered by exactly one block, and blocks respect the protocol limit.
        #[test]
        fn plan_covers_every_point(addrs in proptest::collection::btree_set(0u16..400, 1..12), gap in 0u16..8) {
            let qs = Quantity::ALL.iter().filter(|q| q.kind() == ValueKind::Number).collect::<Vec<_>>();
            let mut text = String::from("model = \"m\"\nkind = \"weather\"\n");
            for (i, a) in addrs.iter().enumerate() {
                text.push_str(&format!("[[points]]\nquantity=\"{}\"\ntable=\"holding\"\naddress={}\ntype=\"u16\"\n", qs[i].name(), a));
            }
            let p = DeviceProfile::from_toml(&text).unwrap();
            let plan = p.plan_reads(gap);
            let mut seen = vec![0; p.points.len()];
            for b in &plan {
                prop_assert!(b.count <= 125);
                for &i in &b.points {
                    seen[i] += 1;
                    let pt = &p.points[i];
                    prop_assert!(pt.address >= b.start && pt.address + pt.width() <= b.start + b.count);
                }
            }
            prop_assert!(seen.iter().all(|&n| n == 1));
        }
    }
}

#[cfg(all(test, feature = "std"))]
mod shipped_profiles {
    use super::*;

    /// Every profile the project ships must load.
    #[test]
    fn all_shipped_profiles_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                DeviceProfile::from_toml(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 5, "only {n} profiles");
    }
}
