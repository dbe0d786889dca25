//! Every node's register map is exactly its profile in `profiles/`: the same points, and a
//! value written through the node's map decodes back with the profile's `ResolvedPoint`.

use firmware::MapPoint;
use firmware::map::Node;
use firmware::modbus::Exception;
use firmware::modbus::pdu::{MAX_PDU, handle};
use protocols::profile::{DeviceProfile, ResolvedPoint};
use protocols::registers::Table;
use protocols::{Quantity, Value, ValueKind};
use std::collections::HashMap;
use std::path::PathBuf;

fn profiles() -> Vec<(PathBuf, DeviceProfile)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let p = DeviceProfile::from_toml(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((path, p));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A value in the point's engineering unit that its type and scale can carry exactly enough.
fn sample_value(q: Quantity) -> f64 {
    match q {
        Quantity::LampVoltage => 231.5,
        Quantity::LampCurrent => 0.437,
        Quantity::LampPower => 101.25,
        Quantity::LampEnergy => 123_456.0,
        Quantity::LampStatus => 1.0,
        Quantity::DimmingLevel => 40.0,
        Quantity::WaterLevel => 2310.0,
        Quantity::AirTemperature => -3.7,
        Quantity::BatteryLevel => 87.0,
        Quantity::Ph => 7.21,
        Quantity::Turbidity => 12.5,
        Quantity::Conductivity => 512.0,
        Quantity::DissolvedOxygen => 8.4,
        Quantity::WaterTemperature => 18.3,
        Quantity::CoverOpen => 1.0,
        Quantity::TiltAngle => -12.3,
        Quantity::Rainfall => 12.34,
        Quantity::RelativeHumidity => 56.78,
        Quantity::AirPressure => 1013.25,
        Quantity::WindSpeed => 3.456,
        other => panic!("no sample value for {other:?}"),
    }
}

/// A node with a real map and values set by the test.
struct Bench {
    map: &'static [MapPoint],
    values: HashMap<Quantity, f64>,
}

impl Node for Bench {
    fn model(&self) -> &'static str {
        "bench"
    }
    fn register_map(&self) -> &'static [MapPoint] {
        self.map
    }
    fn read_point(&self, q: Quantity) -> Option<f64> {
        self.values.get(&q).copied()
    }
    fn write_point(&mut self, q: Quantity, v: f64) -> Result<(), Exception> {
        self.values.insert(q, v);
        Ok(())
    }
}

fn read(node: &mut Bench, p: &ResolvedPoint) -> Vec<u16> {
    let code = match p.table {
        Table::Coil => 1,
        Table::Discrete => 2,
        Table::Holding => 3,
        Table::Input => 4,
    };
    let [ah, al] = p.address.to_be_bytes();
    let [ch, cl] = p.width().to_be_bytes();
    let mut out = [0u8; MAX_PDU];
    let n = handle(node, &[code, ah, al, ch, cl], &mut out);
    assert_eq!(out[0], code, "{:?}: exception {:?}", p.quantity, &out[..n]);
    if p.table.is_bits() {
        vec![(out[2] & 1) as u16]
    } else {
        out[2..n]
            .chunks(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect()
    }
}

fn canonical(p: &ResolvedPoint, engineering: f64) -> Value {
    match p.quantity.kind() {
        ValueKind::Bool => Value::Bool(engineering != 0.0),
        ValueKind::Enum(_) => Value::State(engineering as u8),
        ValueKind::Number => {
            Value::Number(p.quantity.conversion(&p.unit).unwrap().apply(engineering))
        }
    }
}

fn close(a: Value, b: Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => (x - y).abs() <= 1e-6 * y.abs().max(1.0),
        _ => a == b,
    }
}

#[test]
fn every_shipped_profile_has_a_node() {
    let models: Vec<String> = profiles()
        .into_iter()
        .map(|(_, p)| p.source.model)
        .collect();
    assert_eq!(models.len(), firmware::nodes::MODELS.len());
    for (model, _) in firmware::nodes::MODELS {
        assert!(models.iter().any(|m| m == model), "no profile for {model}");
    }
}

#[test]
fn node_maps_match_profiles_point_by_point() {
    for (path, profile) in profiles() {
        let map = firmware::nodes::register_map(&profile.source.model).unwrap_or_else(|| {
            panic!(
                "{}: no node for model {}",
                path.display(),
                profile.source.model
            )
        });
        assert_eq!(map.len(), profile.points.len(), "{}", path.display());
        for p in &profile.points {
            let m = map
                .iter()
                .find(|m| m.quantity == p.quantity)
                .unwrap_or_else(|| panic!("{}: node lacks {:?}", path.display(), p.quantity));
            let what = format!("{} {:?}", path.display(), p.quantity);
            assert_eq!(m.table, p.table, "{what}");
            assert_eq!(m.address, p.address, "{what}");
            assert_eq!(m.data_type, p.data_type, "{what}");
            assert_eq!(m.word_order, p.word_order, "{what}");
            assert_eq!(m.scale, p.scale, "{what}");
            assert_eq!(m.offset, p.offset, "{what}");
            assert_eq!(m.unit, p.unit, "{what}");
            assert_eq!(m.writable, p.writable, "{what}");
            assert_eq!((m.min, m.max), p.range, "{what}");
        }
    }
}

#[test]
fn values_through_the_node_decode_with_the_profile() {
    for (path, profile) in profiles() {
        let map = firmware::nodes::register_map(&profile.source.model).unwrap();
        let mut node = Bench {
            map,
            values: HashMap::new(),
        };
        for p in &profile.points {
            node.values.insert(p.quantity, sample_value(p.quantity));
        }
        for p in &profile.points {
            let words = read(&mut node, p);
            let got = p
                .decode(&words)
                .unwrap_or_else(|e| panic!("{} {:?}: {e}", path.display(), p.quantity));
            let want = canonical(p, sample_value(p.quantity));
            assert!(
                close(got, want),
                "{} {:?}: got {got:?}, want {want:?}",
                path.display(),
                p.quantity
            );
        }
    }
}

#[test]
fn writable_points_take_what_the_profile_encodes_and_read_back() {
    let mut writable = 0;
    for (_, profile) in profiles() {
        let map = firmware::nodes::register_map(&profile.source.model).unwrap();
        let mut node = Bench {
            map,
            values: HashMap::new(),
        };
        for p in profile.points.iter().filter(|p| p.writable) {
            writable += 1;
            for v in [0.0, 37.0, 100.0] {
                let mut words = [0u16; 4];
                let n = p.encode(Value::Number(v), &mut words).unwrap();
                let mut req = vec![16u8];
                req.extend(p.address.to_be_bytes());
                req.extend((n as u16).to_be_bytes());
                req.push(2 * n as u8);
                for w in &words[..n] {
                    req.extend(w.to_be_bytes());
                }
                let mut out = [0u8; MAX_PDU];
                let len = handle(&mut node, &req, &mut out);
                assert_eq!(out[0], 16, "{:?}", &out[..len]);
                assert_eq!(p.decode(&read(&mut node, p)).unwrap(), Value::Number(v));
            }
            // Outside the profile's min/max: the device refuses with "illegal data value".
            let mut req = vec![6u8];
            req.extend(p.address.to_be_bytes());
            req.extend(500u16.to_be_bytes());
            let mut out = [0u8; MAX_PDU];
            handle(&mut node, &req, &mut out);
            assert_eq!(&out[..2], &[0x86, 3]);
        }
    }
    assert!(writable >= 1, "the streetlight's dimming level is writable");
}
