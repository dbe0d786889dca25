//! Register-level models of the chips on the node boards. Each answers the bytes its
//! datasheet specifies (the firmware's driver constants are reused so both sides name the
//! same registers) with values from the site's physical conditions plus a little noise.

use std::collections::HashMap;
use std::time::Instant;

use embedded_hal::i2c::ErrorKind;
use firmware::drivers::{ade7953, ads1115, ezo, lis3dh, lps22hb, max17048, sht4x};
use firmware::nodes::water_quality::TurbidityCalibration;

use super::Noise;
use super::i2c::I2cChip;
use super::pins::LampCircuit;
use crate::world::Site;

/// Power factor of the LED driver at load.
const POWER_FACTOR: f64 = 0.95;
/// What a driver draws from a closed relay with no lamp to light (or while faulted), W.
const DRIVER_STANDBY_W: f64 = 0.3;

fn first_byte(bytes: &[u8]) -> Result<u8, ErrorKind> {
    bytes.first().copied().ok_or(ErrorKind::Other)
}

/// ADE7953 energy meter on the lamp feed.
pub struct Ade7953Model {
    site: Site,
    circuit: LampCircuit,
    calibration: ade7953::Calibration,
    noise: Noise,
    pointer: u16,
    registers: HashMap<u16, u32>,
    energy_counts: f64,
    last: Instant,
}

impl Ade7953Model {
    /// A meter on the circuit of a site.
    pub fn new(site: Site, circuit: LampCircuit, calibration: ade7953::Calibration) -> Self {
        let noise = Noise::new(site.name(), "ade7953");
        Ade7953Model {
            site,
            circuit,
            calibration,
            noise,
            pointer: 0,
            registers: HashMap::new(),
            energy_counts: 0.0,
            last: Instant::now(),
        }
    }

    /// Volts, amps and watts on the feed now.
    fn feed(&mut self) -> (f64, f64, f64) {
        let c = self.site.snapshot().site;
        if !c.mains_present {
            return (0.0, 0.0, 0.0);
        }
        let volts = c.mains_voltage + self.noise.gauss(0.3 * c.noise);
        if !self.circuit.relay_closed() {
            return (volts, 0.0, 0.0);
        }
        let lit = !c.lamp_broken && !c.driver_fault;
        let watts = if lit {
            DRIVER_STANDBY_W
                + c.lamp_rated_power
                    * self.circuit.drive()
                    * (1.0 + self.noise.gauss(0.003 * c.noise))
        } else {
            DRIVER_STANDBY_W
        };
        (volts, watts / (volts * POWER_FACTOR), watts)
    }

    /// Accumulates active energy since the last access.
    fn integrate(&mut self) {
        let dt_h = self.last.elapsed().as_secs_f64() / 3600.0;
        self.last = Instant::now();
        let (_, _, watts) = self.feed();
        self.energy_counts += watts * dt_h / self.calibration.wh_per_count as f64;
    }

    fn value(&mut self, register: u16) -> u32 {
        let cal = self.calibration;
        match register {
            ade7953::reg::IRQSTATA => ade7953::IRQ_RESET,
            ade7953::reg::VERSION => 0x80,
            ade7953::reg::VRMS => (self.feed().0 / cal.volts_per_count as f64) as u32,
            ade7953::reg::IRMSA => (self.feed().1 / cal.amps_per_count as f64) as u32,
            ade7953::reg::AWATT => (self.feed().2 / cal.watts_per_count as f64) as i32 as u32,
            ade7953::reg::AENERGYA => {
                self.integrate();
                // Read with reset: hand over the whole counts, keep the fraction.
                let whole = self.energy_counts.floor();
                self.energy_counts -= whole;
                whole as u32
            }
            other => self.registers.get(&other).copied().unwrap_or(0),
        }
    }
}

impl I2cChip for Ade7953Model {
    fn write(&mut self, bytes: &[u8]) -> Result<(), ErrorKind> {
        if bytes.len() < 2 {
            return Err(ErrorKind::Other);
        }
        self.pointer = u16::from_be_bytes([bytes[0], bytes[1]]);
        let data = &bytes[2..];
        if !data.is_empty() {
            if data.len() != ade7953::register_width(self.pointer) {
                return Err(ErrorKind::Other);
            }
            let v = data.iter().fold(0u32, |acc, b| (acc << 8) | *b as u32);
            self.registers.insert(self.pointer, v);
        }
        self.integrate();
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), ErrorKind> {
        let n = ade7953::register_width(self.pointer);
        let v = self.value(self.pointer).to_be_bytes();
        for (i, slot) in buf.iter_mut().enumerate() {
            *slot = if i < n { v[4 - n + i] } else { 0 };
        }
        Ok(())
    }
}

/// MAX17048 fuel gauge on the site's battery.
pub struct Max17048Model {
    site: Site,
    pointer: u8,
}

impl Max17048Model {
    /// A gauge on a site's battery.
    pub fn new(site: Site) -> Self {
        Max17048Model { site, pointer: 0 }
    }
}

impl I2cChip for Max17048Model {
    fn write(&mut self, bytes: &[u8]) -> Result<(), ErrorKind> {
        self.pointer = first_byte(bytes)?;
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), ErrorKind> {
        let soc = self.site.conditions().battery_level.clamp(0.0, 100.0);
        let v: u16 = match self.pointer {
            max17048::reg::SOC => (soc * 256.0) as u16,
            // A Li-ion cell from 3.4 V empty to 4.15 V full, in 78.125 µV steps.
            max17048::reg::VCELL => ((3.4 + 0.75 * soc / 100.0) / 78.125e-6) as u16,
            max17048::reg::VERSION => 0x0012,
            max17048::reg::CRATE => 0,
            0x0C => 0x971C, // CONFIG's reset value
            _ => 0,
        };
        let b = v.to_be_bytes();
        for (i, slot) in buf.iter_mut().enumerate() {
            *slot = b.get(i).copied().unwrap_or(0xFF);
        }
        Ok(())
    }
}

/// What an SHT4x measures.
#[derive(Clone, Copy, Debug)]
pub enum AirProbe {
    /// The open air (weather station).
    Outdoor,
    /// A sealed station housing: warmer than the air, drier.
    Housing,
}

/// SHT4x temperature and humidity sensor.
pub struct Sht4xModel {
    site: Site,
    probe: AirProbe,
    noise: Noise,
    result: Option<[u8; 6]>,
}

impl Sht4xModel {
    /// A sensor at a site.
    pub fn new(site: Site, probe: AirProbe) -> Self {
        let noise = Noise::new(site.name(), "sht4x");
        Sht4xModel {
            site,
            probe,
            noise,
            result: None,
        }
    }
}

impl I2cChip for Sht4xModel {
    fn write(&mut self, bytes: &[u8]) -> Result<(), ErrorKind> {
        match first_byte(bytes)? {
            sht4x::CMD_MEASURE_HIGH => {
                let c = self.site.snapshot();
                let (mut t, mut rh) = (c.weather.air_temperature, c.weather.relative_humidity);
                if let AirProbe::Housing = self.probe {
                    t += 2.0;
                    rh *= 0.8;
                }
                t += self.noise.gauss(0.05 * c.site.noise);
                rh += self.noise.gauss(0.3 * c.site.noise);
                let st = (((t + 45.0) / 175.0 * 65535.0).round().clamp(0.0, 65535.0) as u16)
                    .to_be_bytes();
                let srh = (((rh + 6.0) / 125.0 * 65535.0).round().clamp(0.0, 65535.0) as u16)
                    .to_be_bytes();
                self.result = Some([
                    st[0],
                    st[1],
                    sht4x::crc8(&st),
                    srh[0],
                    srh[1],
                    sht4x::crc8(&srh),
                ]);
                Ok(())
            }
            sht4x::CMD_SOFT_RESET => {
                self.result = None;
                Ok(())
            }
            _ => Err(ErrorKind::NoAcknowledge(
                embedded_hal::i2c::NoAcknowledgeSource::Data,
            )),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), ErrorKind> {
        // Reading without a measurement: the real part NACKs its address.
        let r = self.result.take().ok_or(ErrorKind::NoAcknowledge(
            embedded_hal::i2c::NoAcknowledgeSource::Address,
        ))?;
        for (i, slot) in buf.iter_mut().enumerate() {
            *slot = r.get(i).copied().unwrap_or(0xFF);
        }
        Ok(())
    }
}

/// LPS22HB barometer.
pub struct Lps22hbModel {
    site: Site,
    noise: Noise,
    pointer: u8,
    ctrl1: u8,
    output: [u8; 5],
    status: u8,
}

impl Lps22hbModel {
    /// A barometer at a site.
    pub fn new(site: Site) -> Self {
        let noise = Noise::new(site.name(), "lps22hb");
        Lps22hbModel {
            site,
            noise,
            pointer: 0,
            ctrl1: 0,
            output: [0; 5],
            status: 0,
        }
    }

    fn register(&self, r: u8) -> u8 {
        match r {
            lps22hb::reg::WHO_AM_I => lps22hb::DEVICE_ID,
            lps22hb::reg::CTRL_REG1 => self.ctrl1,
            lps22hb::reg::CTRL_REG2 => 0x10,
            lps22hb::reg::STATUS => self.status,
            0x28..=0x2C => self.output[(r - 0x28) as usize],
            _ => 0,
        }
    }
}

impl I2cChip for Lps22hbModel {
    fn write(&mut self, bytes: &[u8]) -> Result<(), ErrorKind> {
        self.pointer = first_byte(bytes)?;
        if let Some(&v) = bytes.get(1) {
            match self.pointer {
                lps22hb::reg::CTRL_REG1 => self.ctrl1 = v,
                lps22hb::reg::CTRL_REG2 if v & 0x01 != 0 => {
                    let c = self.site.snapshot();
                    let hpa = c.weather.air_pressure + self.noise.gauss(0.02 * c.site.noise);
                    let p = ((hpa * 4096.0).round() as i32).to_le_bytes();
                    let t = ((c.weather.air_temperature * 100.0).round() as i16).to_le_bytes();
                    self.output = [p[0], p[1], p[2], t[0], t[1]];
                    self.status = 0x03;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), ErrorKind> {
        // IF_ADD_INC is on: consecutive registers.
        for (i, slot) in buf.iter_mut().enumerate() {
            *slot = self.register(self.pointer.wrapping_add(i as u8));
        }
        if (0x28..=0x2C).contains(&self.pointer) {
            self.status = 0;
        }
        Ok(())
    }
}

/// LIS3DH accelerometer under a manhole cover.
pub struct Lis3dhModel {
    site: Site,
    noise: Noise,
    pointer: u8,
    registers: [u8; 0x40],
}

impl Lis3dhModel {
    /// An accelerometer at a site.
    pub fn new(site: Site) -> Self {
        let noise = Noise::new(site.name(), "lis3dh");
        let mut registers = [0u8; 0x40];
        registers[lis3dh::reg::WHO_AM_I as usize] = lis3dh::DEVICE_ID;
        registers[lis3dh::reg::CTRL_REG1 as usize] = 0x07;
        Lis3dhModel {
            site,
            noise,
            pointer: 0,
            registers,
        }
    }

    /// Latches a new sample into OUT_X_L..OUT_Z_H (12-bit left-justified, 1 mg/digit).
    fn sample(&mut self) {
        let c = self.site.conditions();
        let tilt = c.cover_tilt.to_radians();
        let mg = |g: f64, noise: &mut Noise| {
            ((g * 1000.0 + noise.gauss(4.0 * c.noise))
                .round()
                .clamp(-2048.0, 2047.0) as i16)
                << 4
        };
        let x = mg(tilt.sin(), &mut self.noise).to_le_bytes();
        let y = mg(0.0, &mut self.noise).to_le_bytes();
        let z = mg(tilt.cos(), &mut self.noise).to_le_bytes();
        self.registers[0x28..0x2E].copy_from_slice(&[x[0], x[1], y[0], y[1], z[0], z[1]]);
    }
}

impl I2cChip for Lis3dhModel {
    fn write(&mut self, bytes: &[u8]) -> Result<(), ErrorKind> {
        self.pointer = first_byte(bytes)?;
        let (auto, at) = (
            self.pointer & lis3dh::AUTO_INCREMENT != 0,
            (self.pointer & 0x7F) as usize,
        );
        for (i, v) in bytes[1..].iter().enumerate() {
            let r = if auto { at + i } else { at };
            if (0x1E..=0x3F).contains(&r) {
                self.registers[r] = *v;
            }
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), ErrorKind> {
        let (auto, at) = (
            self.pointer & lis3dh::AUTO_INCREMENT != 0,
            (self.pointer & 0x7F) as usize,
        );
        if at == lis3dh::reg::OUT_X_L as usize {
            self.sample();
        }
        for (i, slot) in buf.iter_mut().enumerate() {
            let r = if auto { at + i } else { at };
            *slot = self.registers.get(r).copied().unwrap_or(0);
        }
        Ok(())
    }
}

/// ADS1115 reading the turbidity probe's analog output on AIN0.
pub struct Ads1115Model {
    site: Site,
    calibration: TurbidityCalibration,
    noise: Noise,
    pointer: u8,
    config: u16,
    conversion: i16,
}

impl Ads1115Model {
    /// An ADC on a site's turbidity probe.
    pub fn new(site: Site, calibration: TurbidityCalibration) -> Self {
        let noise = Noise::new(site.name(), "ads1115");
        Ads1115Model {
            site,
            calibration,
            noise,
            pointer: 0,
            config: 0x8583,
            conversion: 0,
        }
    }
}

impl I2cChip for Ads1115Model {
    fn write(&mut self, bytes: &[u8]) -> Result<(), ErrorKind> {
        self.pointer = first_byte(bytes)? & 0x03;
        if bytes.len() >= 3 && self.pointer == ads1115::REG_CONFIG {
            let config = u16::from_be_bytes([bytes[1], bytes[2]]);
            if config & ads1115::OS != 0 {
                let c = self.site.conditions();
                let ntu = (c.turbidity * (1.0 + self.noise.gauss(0.01 * c.noise))).max(0.0);
                let volts = self.calibration.volts(ntu as f32) as f64;
                self.conversion = (volts / ads1115::VOLTS_PER_COUNT as f64)
                    .round()
                    .clamp(-32768.0, 32767.0) as i16;
            }
            // Single-shot conversions at 128 SPS finish before the driver's first poll.
            self.config = config | ads1115::OS;
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), ErrorKind> {
        let v = match self.pointer {
            ads1115::REG_CONVERSION => self.conversion as u16,
            ads1115::REG_CONFIG => self.config,
            _ => 0,
        }
        .to_be_bytes();
        for (i, slot) in buf.iter_mut().enumerate() {
            *slot = v.get(i).copied().unwrap_or(0xFF);
        }
        Ok(())
    }
}

/// An Atlas Scientific EZO circuit on a probe in the water.
pub struct EzoModel {
    site: Site,
    circuit: ezo::Circuit,
    noise: Noise,
    pending: Option<Vec<u8>>,
}

impl EzoModel {
    /// A circuit at a site.
    pub fn new(site: Site, circuit: ezo::Circuit) -> Self {
        let noise = Noise::new(site.name(), &format!("ezo-{circuit:?}"));
        EzoModel {
            site,
            circuit,
            noise,
            pending: None,
        }
    }

    fn reading(&mut self) -> String {
        let c = self.site.conditions();
        let n = c.noise;
        match self.circuit {
            ezo::Circuit::Ph => format!("{:.2}", c.ph + self.noise.gauss(0.005 * n)),
            ezo::Circuit::DissolvedOxygen => format!(
                "{:.2}",
                (c.dissolved_oxygen + self.noise.gauss(0.02 * n)).max(0.0)
            ),
            ezo::Circuit::Conductivity => {
                let ec = (c.conductivity * (1.0 + self.noise.gauss(0.002 * n))).max(0.0);
                // EC, TDS (0.54 factor), salinity (PSU, rough), specific gravity: the defaults.
                format!("{:.0},{:.0},{:.2},1.000", ec, ec * 0.54, ec / 2000.0)
            }
            ezo::Circuit::Temperature => {
                format!("{:.3}", c.water_temperature + self.noise.gauss(0.01 * n))
            }
        }
    }
}

impl I2cChip for EzoModel {
    fn write(&mut self, bytes: &[u8]) -> Result<(), ErrorKind> {
        let command = String::from_utf8_lossy(bytes);
        let mut response = vec![ezo::code::SUCCESS];
        match command.trim_end_matches('\0').to_ascii_uppercase().as_str() {
            "R" => response.extend(self.reading().bytes()),
            "I" => {
                let kind = match self.circuit {
                    ezo::Circuit::Ph => "pH",
                    ezo::Circuit::DissolvedOxygen => "DO",
                    ezo::Circuit::Conductivity => "EC",
                    ezo::Circuit::Temperature => "RTD",
                };
                response.extend(format!("?I,{kind},2.16").bytes());
            }
            _ => response[0] = ezo::code::SYNTAX_ERROR,
        }
        response.push(0);
        self.pending = Some(response);
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), ErrorKind> {
        let r = self
            .pending
            .take()
            .unwrap_or_else(|| vec![ezo::code::NO_DATA]);
        for (i, slot) in buf.iter_mut().enumerate() {
            *slot = r.get(i).copied().unwrap_or(0);
        }
        Ok(())
    }
}
