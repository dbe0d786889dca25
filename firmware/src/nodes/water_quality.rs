//! The water-quality station (profile `water-quality-5in1.toml`).
//!
//! Hardware: four Atlas Scientific EZO circuits (pH, dissolved oxygen, conductivity, RTD
//! temperature) and an optical turbidity probe whose analog output, read by an ADS1115,
//! falls as turbidity rises (linearised by a two-point [`TurbidityCalibration`]).
//!
//! The EZO circuits need up to 900 ms per reading, so a sample collects the readings started
//! by the previous one and starts the next; the slave never waits on a probe.

use embedded_hal::i2c::I2c;
use protocols::Quantity;
use protocols::registers::{DataType, Table, WordOrder};

use super::{FirstFailure, Part};
use crate::drivers::ads1115::Ads1115;
use crate::drivers::ezo::{Circuit, Ezo};
use crate::map::{MapPoint, Node};

/// The model name in the profile.
pub const MODEL: &str = "wq-probe-5in1";

/// The register map (profile `water-quality-5in1.toml`).
pub const MAP: &[MapPoint] = &[
    MapPoint::new(Quantity::Ph, Table::Input, 0, DataType::U16)
        .scale(0.01)
        .unit("1")
        .range(0.0, 14.0),
    MapPoint::new(Quantity::Turbidity, Table::Input, 1, DataType::F32)
        .word_order(WordOrder::Badc)
        .unit("NTU")
        .range(0.0, 4000.0),
    MapPoint::new(Quantity::Conductivity, Table::Input, 3, DataType::U32)
        .word_order(WordOrder::Dcba)
        .unit("uS/cm"),
    MapPoint::new(Quantity::DissolvedOxygen, Table::Input, 5, DataType::F32).unit("mg/L"),
    MapPoint::new(Quantity::WaterTemperature, Table::Input, 7, DataType::I16)
        .scale(0.1)
        .unit("Cel"),
];

/// Two-point linearisation of the turbidity probe: NTU = (clear - V) * ntu_per_volt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TurbidityCalibration {
    /// Probe output in clear water (0 NTU), V.
    pub clear_volts: f32,
    /// NTU per volt below `clear_volts`.
    pub ntu_per_volt: f32,
}

impl Default for TurbidityCalibration {
    fn default() -> Self {
        TurbidityCalibration {
            clear_volts: 3.0,
            ntu_per_volt: 1600.0,
        }
    }
}

impl TurbidityCalibration {
    /// NTU for a probe voltage (never negative).
    pub fn ntu(&self, volts: f32) -> f32 {
        ((self.clear_volts - volts) * self.ntu_per_volt).max(0.0)
    }

    /// The probe voltage for a turbidity (the inverse, for simulators and bench checks).
    pub fn volts(&self, ntu: f32) -> f32 {
        self.clear_volts - ntu / self.ntu_per_volt
    }
}

/// The EZO circuits of the station.
pub struct Probes<I2C> {
    /// EZO-pH.
    pub ph: Ezo<I2C>,
    /// EZO-DO.
    pub dissolved_oxygen: Ezo<I2C>,
    /// EZO-EC.
    pub conductivity: Ezo<I2C>,
    /// EZO-RTD.
    pub temperature: Ezo<I2C>,
}

impl<I2C: I2c> Probes<I2C> {
    /// The four circuits at their factory addresses, each on its handle of the shared bus.
    pub fn new(ph: I2C, dissolved_oxygen: I2C, conductivity: I2C, temperature: I2C) -> Self {
        Probes {
            ph: Ezo::new(ph, Circuit::Ph),
            dissolved_oxygen: Ezo::new(dissolved_oxygen, Circuit::DissolvedOxygen),
            conductivity: Ezo::new(conductivity, Circuit::Conductivity),
            temperature: Ezo::new(temperature, Circuit::Temperature),
        }
    }
}

/// The station.
pub struct WaterQualityNode<I2C> {
    probes: Probes<I2C>,
    turbidity_adc: Ads1115<I2C>,
    calibration: TurbidityCalibration,
    started_ms: Option<u64>,
    ph: Option<f32>,
    dissolved_oxygen: Option<f32>,
    conductivity: Option<f32>,
    temperature: Option<f32>,
    turbidity: Option<f32>,
}

impl<I2C: I2c> WaterQualityNode<I2C> {
    /// A station from its parts.
    pub fn new(
        probes: Probes<I2C>,
        turbidity_adc: Ads1115<I2C>,
        calibration: TurbidityCalibration,
    ) -> Self {
        WaterQualityNode {
            probes,
            turbidity_adc,
            calibration,
            started_ms: None,
            ph: None,
            dissolved_oxygen: None,
            conductivity: None,
            temperature: None,
            turbidity: None,
        }
    }

    /// Collects finished probe readings, starts the next ones and reads turbidity. Call at
    /// least [`Circuit::reading_time_ms`] of the slowest circuit (900 ms) apart.
    pub fn sample(&mut self, now_ms: u64) -> Result<(), Part> {
        let mut failed = FirstFailure::default();
        let due = self
            .started_ms
            .is_some_and(|t| now_ms.saturating_sub(t) >= Circuit::Ph.reading_time_ms() as u64);
        if due {
            let p = &mut self.probes;
            self.ph = failed.check(Part::Probe, p.ph.read_value());
            self.dissolved_oxygen = failed.check(Part::Probe, p.dissolved_oxygen.read_value());
            self.conductivity = failed.check(Part::Probe, p.conductivity.read_value());
            self.temperature = failed.check(Part::Probe, p.temperature.read_value());
        }
        if self.started_ms.is_none() || due {
            let p = &mut self.probes;
            let started = [
                p.ph.start_reading(),
                p.dissolved_oxygen.start_reading(),
                p.conductivity.start_reading(),
                p.temperature.start_reading(),
            ];
            for r in started {
                failed.check(Part::Probe, r);
            }
            self.started_ms = Some(now_ms);
        }
        self.turbidity = failed
            .check(Part::TurbidityAdc, self.turbidity_adc.measure(20))
            .map(|v| self.calibration.ntu(v));
        failed.result()
    }
}

impl<I2C: I2c> Node for WaterQualityNode<I2C> {
    fn model(&self) -> &'static str {
        MODEL
    }

    fn register_map(&self) -> &'static [MapPoint] {
        MAP
    }

    fn read_point(&self, quantity: Quantity) -> Option<f64> {
        let v = match quantity {
            Quantity::Ph => self.ph,
            Quantity::Turbidity => self.turbidity,
            Quantity::Conductivity => self.conductivity,
            Quantity::DissolvedOxygen => self.dissolved_oxygen,
            Quantity::WaterTemperature => self.temperature,
            _ => None,
        };
        v.map(f64::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::ezo::{RESPONSE_LEN, code};
    use crate::modbus::pdu::{MAX_PDU, handle};
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction as T};
    use std::vec;
    use std::vec::Vec;

    fn ezo(addr: u8, text: &str) -> T {
        let mut v = vec![0u8; RESPONSE_LEN];
        v[0] = code::SUCCESS;
        v[1..1 + text.len()].copy_from_slice(text.as_bytes());
        T::read(addr, v)
    }

    fn start_all() -> Vec<T> {
        [0x63, 0x61, 0x64, 0x66]
            .iter()
            .map(|a| T::write(*a, b"R".to_vec()))
            .collect()
    }

    fn adc(counts: i16) -> Vec<T> {
        vec![
            T::write(0x48, vec![0x01, 0xC3, 0x83]),
            T::write_read(0x48, vec![0x01], vec![0xC3, 0x83]),
            T::write_read(0x48, vec![0x00], counts.to_be_bytes().to_vec()),
        ]
    }

    #[test]
    fn two_phase_probe_cycle_fills_every_register() {
        let mut script = start_all();
        script.extend(adc(22_000)); // 2.75 V -> 400 NTU
        script.extend([
            ezo(0x63, "7.21"),
            ezo(0x61, "8.40"),
            ezo(0x64, "512,276,0.25,1.000"),
            ezo(0x66, "18.3"),
        ]);
        script.extend(start_all());
        script.extend(adc(22_000));
        let mut i2c = Mock::new(&script);
        let probes = Probes::new(i2c.clone(), i2c.clone(), i2c.clone(), i2c.clone());
        let mut node = WaterQualityNode::new(
            probes,
            Ads1115::new(i2c.clone(), 0x48),
            TurbidityCalibration::default(),
        );
        node.sample(0).unwrap();
        let mut out = [0u8; MAX_PDU];
        assert_eq!(
            handle(&mut node, &[4, 0, 0, 0, 8], &mut out),
            2,
            "probes not read yet"
        );
        node.sample(1_000).unwrap();
        let n = handle(&mut node, &[4, 0, 0, 0, 8], &mut out);
        assert_eq!(n, 2 + 16);
        assert_eq!(&out[2..4], &721u16.to_be_bytes()); // pH 7.21
        assert_eq!(&out[8..12], &[0x00, 0x02, 0x00, 0x00], "512 in dcba");
        assert_eq!(&out[16..18], &183u16.to_be_bytes()); // 18.3 °C
        // About 400 NTU as badc: bytes swapped inside each word (0x43C8.. -> C8 43 ..).
        assert_eq!(&out[4..6], &[0xC7, 0x43]);
        let words = [
            u16::from_be_bytes([out[4], out[5]]),
            u16::from_be_bytes([out[6], out[7]]),
        ];
        let ntu = protocols::registers::decode_raw(DataType::F32, WordOrder::Badc, &words).unwrap();
        assert!((ntu - 400.0).abs() < 0.1, "{ntu}");
        i2c.done();
    }

    #[test]
    fn calibration_round_trip() {
        let c = TurbidityCalibration::default();
        assert!((c.ntu(c.volts(123.0)) - 123.0).abs() < 1e-3);
        assert_eq!(c.ntu(3.3), 0.0);
    }
}
