//! The lamp controller on a streetlight pole (profile `streetlight-lc200.toml`).
//!
//! Hardware: an ADE7953 meters the lamp feed (voltage, current, power, energy); a PWM output
//! dims the LED driver; a relay switches the driver's mains; the driver's open-drain fault
//! output is wired to an input (low = fault). Dimming to 0 opens the relay.
//!
//! Lamp status, worst first: `power_loss` (no mains at the meter), `driver_failure` (the
//! driver flags a fault), `lamp_failure` (switched on, mains present, yet no current), `ok`.
//! A new status must hold for [`LampConfig::confirm_samples`] samples, so the driver's
//! soft start after switching on is not taken for a dead lamp.

use embedded_hal::digital::{InputPin, OutputPin};
use embedded_hal::i2c::I2c;
use embedded_hal::pwm::SetDutyCycle;
use protocols::Quantity;
use protocols::registers::{DataType, Table, WordOrder};

use super::{FirstFailure, Part};
use crate::drivers::ade7953::{Ade7953, Measurement};
use crate::map::{MapPoint, Node};
use crate::modbus::Exception;

/// The model name in the profile.
pub const MODEL: &str = "generic-streetlight-v1";

/// The register map (profile `streetlight-lc200.toml`).
pub const MAP: &[MapPoint] = &[
    MapPoint::new(Quantity::LampVoltage, Table::Input, 0, DataType::F32)
        .word_order(WordOrder::Cdab)
        .unit("V"),
    MapPoint::new(Quantity::LampCurrent, Table::Input, 2, DataType::F32)
        .word_order(WordOrder::Cdab)
        .unit("A"),
    MapPoint::new(Quantity::LampPower, Table::Input, 4, DataType::F32)
        .word_order(WordOrder::Cdab)
        .unit("W"),
    MapPoint::new(Quantity::LampEnergy, Table::Input, 6, DataType::U32)
        .word_order(WordOrder::Cdab)
        .unit("Wh"),
    MapPoint::new(Quantity::LampStatus, Table::Input, 8, DataType::U16),
    MapPoint::new(Quantity::DimmingLevel, Table::Holding, 16, DataType::U16)
        .unit("%")
        .range(0.0, 100.0)
        .writable(),
];

/// The lamp's condition, coded as in `protocols::quantity::LAMP_STATUS_STATES`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum LampStatus {
    /// Working as commanded.
    Ok = 0,
    /// Switched on but drawing no current.
    LampFailure = 1,
    /// The LED driver reports a fault.
    DriverFailure = 2,
    /// No mains voltage.
    PowerLoss = 3,
}

/// Thresholds and start-up behaviour.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LampConfig {
    /// Below this mains voltage the pole has lost power, V.
    pub min_mains_volts: f32,
    /// Below this current a switched-on lamp is dead, A.
    pub min_lamp_amps: f32,
    /// Dimming level after power-up, % (lit: a streetlight fails safe).
    pub power_up_level: u8,
    /// Samples a new status must hold before it is reported.
    pub confirm_samples: u8,
}

impl Default for LampConfig {
    fn default() -> Self {
        LampConfig {
            min_mains_volts: 90.0,
            min_lamp_amps: 0.02,
            power_up_level: 100,
            confirm_samples: 2,
        }
    }
}

/// The lamp controller.
pub struct StreetlightNode<I2C, PWM, RELAY, FAULT> {
    meter: Ade7953<I2C>,
    pwm: PWM,
    relay: RELAY,
    fault: FAULT,
    config: LampConfig,
    level: u8,
    metering: Option<Measurement>,
    energy_wh: f64,
    status: Option<LampStatus>,
    candidate: (LampStatus, u8),
}

impl<I2C, PWM, RELAY, FAULT> StreetlightNode<I2C, PWM, RELAY, FAULT>
where
    I2C: I2c,
    PWM: SetDutyCycle,
    RELAY: OutputPin,
    FAULT: InputPin,
{
    /// A controller from its parts.
    pub fn new(
        meter: Ade7953<I2C>,
        pwm: PWM,
        relay: RELAY,
        fault: FAULT,
        config: LampConfig,
    ) -> Self {
        StreetlightNode {
            meter,
            pwm,
            relay,
            fault,
            config,
            level: 0,
            metering: None,
            energy_wh: 0.0,
            status: None,
            candidate: (LampStatus::Ok, 0),
        }
    }

    /// Starts the meter and lights the lamp at the power-up level.
    pub fn init(&mut self) -> Result<(), Part> {
        self.meter.init().map_err(|_| Part::Meter)?;
        self.set_level(self.config.power_up_level)
    }

    /// Dims to `level` % (0 switches the lamp off through the relay).
    pub fn set_level(&mut self, level: u8) -> Result<(), Part> {
        let level = level.min(100);
        if level == 0 {
            self.pwm
                .set_duty_cycle_percent(0)
                .map_err(|_| Part::Dimmer)?;
            self.relay.set_low().map_err(|_| Part::Relay)?;
        } else {
            self.relay.set_high().map_err(|_| Part::Relay)?;
            self.pwm
                .set_duty_cycle_percent(level)
                .map_err(|_| Part::Dimmer)?;
        }
        self.level = level;
        Ok(())
    }

    /// The commanded dimming level, %.
    pub fn level(&self) -> u8 {
        self.level
    }

    /// The reported lamp status (`None` while the meter is unavailable).
    pub fn status(&self) -> Option<LampStatus> {
        self.status
    }

    /// Energy metered since power-up, Wh.
    pub fn energy_wh(&self) -> f64 {
        self.energy_wh
    }

    /// The latest metering.
    pub fn metering(&self) -> Option<Measurement> {
        self.metering
    }

    /// Reads the meter and the fault input and updates the lamp status.
    pub fn sample(&mut self, _now_ms: u64) -> Result<(), Part> {
        let mut failed = FirstFailure::default();
        self.metering = failed.check(Part::Meter, self.meter.measure());
        if let Some(e) = failed.check(Part::Meter, self.meter.take_energy()) {
            // A reversed CT gives negative counts; the lamp only consumes.
            self.energy_wh += libm::fabs(e as f64);
        }
        let fault = failed.check(Part::DriverFaultInput, self.fault.is_low());
        match (self.metering, fault) {
            (Some(m), Some(fault)) => {
                let seen = if m.voltage < self.config.min_mains_volts {
                    LampStatus::PowerLoss
                } else if fault {
                    LampStatus::DriverFailure
                } else if self.level > 0 && m.current < self.config.min_lamp_amps {
                    LampStatus::LampFailure
                } else {
                    LampStatus::Ok
                };
                self.candidate = if self.candidate.0 == seen {
                    (seen, self.candidate.1.saturating_add(1))
                } else {
                    (seen, 1)
                };
                if self.candidate.1 >= self.config.confirm_samples || self.status.is_none() {
                    self.status = Some(seen);
                }
            }
            _ => self.status = None,
        }
        failed.result()
    }
}

impl<I2C, PWM, RELAY, FAULT> Node for StreetlightNode<I2C, PWM, RELAY, FAULT>
where
    I2C: I2c,
    PWM: SetDutyCycle,
    RELAY: OutputPin,
    FAULT: InputPin,
{
    fn model(&self) -> &'static str {
        MODEL
    }

    fn register_map(&self) -> &'static [MapPoint] {
        MAP
    }

    fn read_point(&self, quantity: Quantity) -> Option<f64> {
        let m = self.metering;
        match quantity {
            Quantity::LampVoltage => m.map(|m| m.voltage as f64),
            Quantity::LampCurrent => m.map(|m| m.current as f64),
            Quantity::LampPower => m.map(|m| libm::fabsf(m.power) as f64),
            // Whole watt-hours: the register counts them, the remainder keeps accumulating.
            Quantity::LampEnergy => Some(libm::floor(self.energy_wh)),
            Quantity::LampStatus => self.status.map(|s| s as u8 as f64),
            Quantity::DimmingLevel => Some(self.level as f64),
            _ => None,
        }
    }

    fn write_point(&mut self, quantity: Quantity, value: f64) -> Result<(), Exception> {
        match quantity {
            Quantity::DimmingLevel => self
                .set_level(value as u8)
                .map_err(|_| Exception::ServerDeviceFailure),
            _ => Err(Exception::IllegalDataAddress),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::ade7953::{ADDRESS, Calibration};
    use crate::modbus::pdu::{MAX_PDU, handle};
    use embedded_hal_mock::eh1::digital::{Mock as Pin, State, Transaction as P};
    use embedded_hal_mock::eh1::i2c::{Mock as I2cMock, Transaction as T};
    use embedded_hal_mock::eh1::pwm::{Mock as Pwm, Transaction as W};
    use std::vec;
    use std::vec::Vec;

    /// The meter transactions of one sample: V, I, W and an energy delta.
    fn meter_sample(volts: f32, amps: f32, watts: f32, wh: f32) -> Vec<T> {
        let c = Calibration::default();
        let reg = |r: u16, v: u32| {
            T::write_read(ADDRESS, r.to_be_bytes().to_vec(), v.to_be_bytes().to_vec())
        };
        vec![
            reg(0x31C, (volts / c.volts_per_count) as u32),
            reg(0x31A, (amps / c.amps_per_count) as u32),
            reg(0x312, (watts / c.watts_per_count) as i32 as u32),
            reg(0x31E, (wh / c.wh_per_count) as u32),
        ]
    }

    fn read_input(node: &mut impl crate::modbus::DataModel, start: u16, count: u16) -> Vec<u8> {
        let mut out = [0u8; MAX_PDU];
        let [sh, sl] = start.to_be_bytes();
        let n = handle(node, &[4, sh, sl, 0, count as u8], &mut out);
        out[..n].to_vec()
    }

    #[test]
    fn dimming_drives_pwm_and_relay_and_reads_back() {
        let mut i2c = I2cMock::new(&[]);
        // PWM with max duty 1000: the mock answers max_duty_cycle before each set.
        let mut pwm = Pwm::new(&[
            W::max_duty_cycle(1000),
            W::set_duty_cycle(400),
            W::max_duty_cycle(1000),
            W::set_duty_cycle(0),
        ]);
        let mut relay = Pin::new(&[P::set(State::High), P::set(State::Low)]);
        let mut fault = Pin::new(&[]);
        let mut node = StreetlightNode::new(
            Ade7953::new(&mut i2c, Calibration::default()),
            &mut pwm,
            &mut relay,
            &mut fault,
            LampConfig::default(),
        );
        let mut out = [0u8; MAX_PDU];
        assert_eq!(handle(&mut node, &[6, 0, 16, 0, 40], &mut out), 5);
        assert_eq!(node.level(), 40);
        let n = handle(&mut node, &[3, 0, 16, 0, 1], &mut out);
        assert_eq!(&out[..n], &[3, 2, 0, 40]);
        let n = handle(&mut node, &[6, 0, 16, 0, 101], &mut out);
        assert_eq!(&out[..n], &[0x86, 3], "out of range is refused");
        assert_eq!(handle(&mut node, &[6, 0, 16, 0, 0], &mut out), 5);
        assert_eq!(node.level(), 0);
        i2c.done();
        pwm.done();
        relay.done();
        fault.done();
    }

    #[test]
    fn status_detection_with_confirmation() {
        let mut script = Vec::new();
        let mut faults = Vec::new();
        // ok, lamp dead x2 (confirmed on the second), driver fault x2, mains gone x2.
        for (v, a, w, fault) in [
            (230.0, 0.43, 100.0, false),
            (230.0, 0.0, 0.0, false),
            (230.0, 0.0, 0.0, false),
            (230.0, 0.0, 0.0, true),
            (230.0, 0.0, 0.0, true),
            (0.0, 0.0, 0.0, false),
            (0.0, 0.0, 0.0, false),
        ] {
            script.extend(meter_sample(v, a, w, 0.5));
            faults.push(P::get(if fault { State::Low } else { State::High }));
        }
        let mut i2c = I2cMock::new(&script);
        let mut pwm = Pwm::new(&[]);
        let mut relay = Pin::new(&[]);
        let mut fault = Pin::new(&faults);
        let mut node = StreetlightNode::new(
            Ade7953::new(&mut i2c, Calibration::default()),
            &mut pwm,
            &mut relay,
            &mut fault,
            LampConfig::default(),
        );
        node.level = 100; // lit, as after init
        let mut seen = Vec::new();
        for t in 0..7 {
            node.sample(t * 1000).unwrap();
            seen.push(node.status().unwrap());
        }
        use LampStatus::*;
        assert_eq!(
            seen,
            [
                Ok,
                Ok,
                LampFailure,
                LampFailure,
                DriverFailure,
                DriverFailure,
                PowerLoss
            ]
        );
        assert!((node.energy_wh() - 3.5).abs() < 1e-3);
        // The registers: status 3 at input 8, energy 3 Wh at 6..8 (cdab).
        assert_eq!(read_input(&mut node, 6, 3), [4, 6, 0, 3, 0, 0, 0, 3]);
        i2c.done();
        fault.done();
        pwm.done();
        relay.done();
    }

    #[test]
    fn meter_failure_makes_metering_unavailable() {
        use embedded_hal::i2c::ErrorKind;
        let mut i2c = I2cMock::new(&[
            T::write_read(ADDRESS, vec![0x03, 0x1C], vec![0; 4]).with_error(ErrorKind::Other),
            T::write_read(ADDRESS, vec![0x03, 0x1E], vec![0; 4]).with_error(ErrorKind::Other),
        ]);
        let mut pwm = Pwm::new(&[]);
        let mut relay = Pin::new(&[]);
        let mut fault = Pin::new(&[P::get(State::High)]);
        let mut node = StreetlightNode::new(
            Ade7953::new(&mut i2c, Calibration::default()),
            &mut pwm,
            &mut relay,
            &mut fault,
            LampConfig::default(),
        );
        assert_eq!(node.sample(0), Err(Part::Meter));
        assert_eq!(read_input(&mut node, 0, 2), [0x84, 4]);
        assert_eq!(node.status(), None);
        i2c.done();
        fault.done();
        pwm.done();
        relay.done();
    }
}
