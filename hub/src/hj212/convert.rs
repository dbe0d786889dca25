//! An HJ 212 data upload as the contract's telemetry JSON, so that it goes through the same
//! decode, normalization, dead letters, twin, rules and feeds as every direct device.
//!
//! Each pollutant becomes one value named after its quantity, in the unit the standard
//! reports it in (the hub converts), with the quality its data flag says. A pollutant code the
//! table does not know keeps its code as the name, and a value that is not a number stays
//! text: the telemetry parser then refuses exactly that value (`unknown_quantity`,
//! `wrong_type`) into the station's dead letters, and keeps the rest.

use protocols::hj212::{CpData, Packet, codes, cp};
use serde_json::{Map, Value as Json, json};

/// Why a packet carries no telemetry.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// Not a data upload (2011, 2051, 2061, 2031).
    #[error("CN {0} is not a data upload")]
    NotData(u16),
    /// The `CP` content does not parse.
    #[error("CP: {0}")]
    Cp(String),
}

/// The telemetry JSON of a data upload: one sample at the station's `DataTime` (converted
/// from the station's local time, `offset_minutes` east of UTC; without one the hub stamps
/// it).
pub fn telemetry(packet: &Packet<'_>, offset_minutes: i32) -> Result<Vec<u8>, ConvertError> {
    let field = packet
        .cn
        .value_field()
        .ok_or(ConvertError::NotData(packet.cn.code()))?;
    let data = CpData::parse(packet.cp).map_err(|e| ConvertError::Cp(e.to_string()))?;
    Ok(sample(&data, field, offset_minutes)
        .to_string()
        .into_bytes())
}

fn sample(data: &CpData<'_>, field: &str, offset_minutes: i32) -> Json {
    let mut values = Map::new();
    for p in data.pollutants() {
        // A pollutant with only a flag (or another statistic) has nothing for this CN.
        let Some(raw) = p.get(field) else {
            continue;
        };
        let value = match cp::parse_number(raw) {
            Ok(x) => json!(x),
            Err(_) => json!(raw),
        };
        let quality = p.quality().name();
        let (name, entry) = match codes::lookup(p.code) {
            Some(c) => (
                c.quantity.name().to_string(),
                json!({"value": value, "unit": c.unit, "quality": quality}),
            ),
            None => (
                p.code.to_string(),
                json!({"value": value, "quality": quality}),
            ),
        };
        values.insert(name, entry);
    }
    let mut doc = Map::new();
    if let Some(t) = data.data_time {
        doc.insert("ts".into(), json!(t.to_utc_ms(offset_minutes)));
    }
    doc.insert("values".into(), Json::Object(values));
    Json::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::Quality;
    use protocols::hj212::DataTime;
    use protocols::telemetry;

    fn parsed(segment: &str) -> telemetry::ParsedTelemetry {
        let p = Packet::parse(segment).unwrap();
        telemetry::parse(&telemetry(&p, 480).unwrap()).unwrap()
    }

    #[test]
    fn real_time_data_becomes_one_sample_with_units_and_flags() {
        let t = parsed(
            "QN=20261207101500000;ST=21;CN=2011;PW=123456;MN=WQ0001;Flag=5;\
             CP=&&DataTime=20261207101500;w01001-Rtd=7.42,w01001-Flag=N;\
             w01003-Rtd=12.5,w01003-Flag=D;w21003-Rtd=0.35,w21003-Flag=T;\
             w99999-Rtd=1.0,w99999-Flag=N;w01009-Rtd=bad,w01009-Flag=N&&",
        );
        let s = &t.samples[0];
        let expect_ts = DataTime::parse("20261207101500").unwrap().to_utc_ms(480);
        assert_eq!(s.ts_ms, Some(expect_ts));
        // 10:15 at UTC+8 is 02:15 UTC.
        assert_eq!(expect_ts % 86_400_000, (2 * 3600 + 15 * 60) * 1000);
        let find = |q: protocols::Quantity| s.values.iter().find(|v| v.0 == q).copied();
        assert_eq!(
            find(protocols::Quantity::Ph),
            Some((
                protocols::Quantity::Ph,
                protocols::Value::Number(7.42),
                Quality::Good
            ))
        );
        assert_eq!(
            find(protocols::Quantity::Turbidity).unwrap().2,
            Quality::Bad
        );
        assert_eq!(
            find(protocols::Quantity::AmmoniaNitrogen).unwrap().2,
            Quality::Uncertain
        );
        // The unknown code and the text value are refused alone.
        let mut reasons: Vec<_> = t.rejected.iter().map(|r| r.reason.label()).collect();
        reasons.sort();
        assert_eq!(reasons, ["unknown_quantity", "wrong_type"]);
    }

    #[test]
    fn hourly_data_takes_the_average_and_other_commands_are_not_data() {
        let t = parsed(
            "QN=20261207110000000;ST=21;CN=2061;PW=123456;MN=WQ0001;Flag=4;\
             CP=&&DataTime=20261207100000;w01001-Min=7.1,w01001-Avg=7.3,w01001-Max=7.5,w01001-Flag=N&&",
        );
        assert_eq!(
            t.samples[0].values,
            vec![(
                protocols::Quantity::Ph,
                protocols::Value::Number(7.3),
                Quality::Good
            )]
        );
        let p =
            Packet::parse("QN=1;ST=21;CN=1062;PW=123456;MN=WQ0001;Flag=4;CP=&&RtdInterval=30&&")
                .unwrap();
        assert_eq!(telemetry(&p, 480), Err(ConvertError::NotData(1062)));
    }
}
