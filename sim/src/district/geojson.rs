//! The district's base map as GeoJSON, drawn from its layout: the outline, the streets, the
//! river through its gauging stations, the stations' areas and the pumping station. `sim demo`
//! writes it beside hub.toml and points `[dashboard] geojson` at it, so the dashboard's map
//! shows where things are, offline, without a tile server.

use serde_json::{Value, json};

use super::layout::{LatLon, Layout, STATIONS, STREETS};

/// The file `sim demo` writes into its data directory.
pub const FILE: &str = "district.geojson";

/// Margin around the outermost device of the outline, degrees (about 200 m).
const OUTLINE_MARGIN: f64 = 0.0018;
/// Half the side of a station's area, degrees (about 45 m).
const STATION_HALF: f64 = 0.0004;

/// GeoJSON positions are `[lon, lat]`, rounded to 6 decimals (about 0.1 m).
fn pos((lat, lon): LatLon) -> Value {
    let r = |v: f64| (v * 1e6).round() / 1e6;
    json!([r(lon), r(lat)])
}

/// A closed square ring around `centre`.
fn square(centre: LatLon, half: f64) -> Value {
    let (lat, lon) = centre;
    json!([[
        pos((lat - half, lon - half)),
        pos((lat - half, lon + half)),
        pos((lat + half, lon + half)),
        pos((lat + half, lon - half)),
        pos((lat - half, lon - half)),
    ]])
}

fn feature(kind: &str, name: &str, geometry: Value) -> Value {
    json!({"type": "Feature", "properties": {"kind": kind, "name": name}, "geometry": geometry})
}

/// The base map of `layout` as a FeatureCollection; every feature has `properties.kind`
/// (`outline`, `street`, `river`, `station`, `pumping_station`) and `properties.name`.
pub fn district(layout: &Layout) -> Value {
    let mut points: Vec<LatLon> = layout.field.iter().map(|d| (d.lat, d.lon)).collect();
    points.extend(layout.direct.iter().map(|d| (d.lat, d.lon)));
    points.extend(layout.cameras.iter().map(|c| (c.lat, c.lon)));
    let fold = |f: fn(f64, f64) -> f64, init: f64, pick: fn(&LatLon) -> f64| {
        points.iter().map(pick).fold(init, f)
    };
    let (s, n) = (
        fold(f64::min, f64::MAX, |p| p.0) - OUTLINE_MARGIN,
        fold(f64::max, f64::MIN, |p| p.0) + OUTLINE_MARGIN,
    );
    let (w, e) = (
        fold(f64::min, f64::MAX, |p| p.1) - OUTLINE_MARGIN,
        fold(f64::max, f64::MIN, |p| p.1) + OUTLINE_MARGIN,
    );
    let mut features = vec![feature(
        "outline",
        "District",
        json!({"type": "Polygon", "coordinates": [[
            pos((s, w)), pos((s, e)), pos((n, e)), pos((n, w)), pos((s, w))
        ]]}),
    )];
    // The river enters west of the first station and leaves east of the last one, clipped to
    // the outline.
    let first = STATIONS[0].1;
    let last = STATIONS[STATIONS.len() - 1].1;
    let mut course = vec![pos((first.0 - 0.0006, w))];
    course.extend(STATIONS.iter().map(|(_, p)| pos(*p)));
    course.push(pos((last.0 + 0.0003, e)));
    features.push(feature(
        "river",
        "River",
        json!({"type": "LineString", "coordinates": course}),
    ));
    for (name, from, to, _) in STREETS {
        features.push(feature(
            "street",
            name,
            json!({"type": "LineString", "coordinates": [pos(from), pos(to)]}),
        ));
    }
    for (name, p) in STATIONS {
        features.push(feature(
            "station",
            &format!("{name} station"),
            json!({"type": "Polygon", "coordinates": square(p, STATION_HALF)}),
        ));
    }
    for p in &layout.pump_stations {
        features.push(feature(
            "pumping_station",
            &p.name,
            json!({"type": "Polygon", "coordinates": square((p.lat, p.lon), STATION_HALF * 0.6)}),
        ));
    }
    json!({"type": "FeatureCollection", "features": features})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_lies_inside_the_outline_and_every_street_is_drawn() {
        let layout = Layout::district();
        let map = district(&layout);
        let features = map["features"].as_array().unwrap();
        let ring = features[0]["geometry"]["coordinates"][0]
            .as_array()
            .unwrap();
        let (w, s) = (ring[0][0].as_f64().unwrap(), ring[0][1].as_f64().unwrap());
        let (e, n) = (ring[2][0].as_f64().unwrap(), ring[2][1].as_f64().unwrap());
        for d in &layout.field {
            assert!(
                (s..=n).contains(&d.lat) && (w..=e).contains(&d.lon),
                "{}",
                d.id
            );
        }
        let kinds = |k: &str| {
            features
                .iter()
                .filter(|f| f["properties"]["kind"] == k)
                .count()
        };
        assert_eq!(kinds("street"), layout.streets.len());
        assert_eq!(kinds("station"), layout.stations.len());
        assert_eq!(kinds("river"), 1);
    }
}
