//! The physical world the simulated devices sense: district-wide weather ([`World`]) and the
//! conditions at each device's site ([`Site`]).
//!
//! Both are cheap, cloneable handles onto shared state. The simulated peripherals read them
//! every time the firmware touches a register, so whoever holds a handle (the district
//! scenario engine, a test, the standalone [`Ambient`] drift) changes what the firmware
//! measures from then on: raise `water_level`, break a lamp, lift a cover, start a storm.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Weather over the whole district.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weather {
    /// Air temperature, °C.
    pub air_temperature: f64,
    /// Relative humidity, %.
    pub relative_humidity: f64,
    /// Air pressure, hPa.
    pub air_pressure: f64,
    /// Rain intensity, mm/h.
    pub rain_rate: f64,
    /// Wind speed, m/s.
    pub wind_speed: f64,
}

impl Default for Weather {
    fn default() -> Self {
        Weather {
            air_temperature: 21.0,
            relative_humidity: 62.0,
            air_pressure: 1013.2,
            rain_rate: 0.0,
            wind_speed: 2.5,
        }
    }
}

/// What one device's sensors face, besides the weather.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SiteConditions {
    /// Water level above the station's datum, m.
    pub water_level: f64,
    /// Water temperature, °C.
    pub water_temperature: f64,
    /// pH.
    pub ph: f64,
    /// Turbidity, NTU.
    pub turbidity: f64,
    /// Conductivity, µS/cm.
    pub conductivity: f64,
    /// Dissolved oxygen, mg/L.
    pub dissolved_oxygen: f64,
    /// Whether the pole has mains.
    pub mains_present: bool,
    /// Mains voltage when present, V RMS.
    pub mains_voltage: f64,
    /// The lamp is dead (draws no current when driven).
    pub lamp_broken: bool,
    /// The LED driver flags a fault (and drives nothing).
    pub driver_fault: bool,
    /// The lamp's power at full drive, W.
    pub lamp_rated_power: f64,
    /// The cover is off its seat (the reed switch opens).
    pub cover_lifted: bool,
    /// The cover's tilt, degrees.
    pub cover_tilt: f64,
    /// Battery state of charge, %.
    pub battery_level: f64,
    /// Extra noise on every reading, as a fraction of the sensor's usual noise (1 = normal).
    pub noise: f64,
}

impl Default for SiteConditions {
    fn default() -> Self {
        SiteConditions {
            water_level: 2.31,
            water_temperature: 17.5,
            ph: 7.2,
            turbidity: 12.0,
            conductivity: 480.0,
            dissolved_oxygen: 8.6,
            mains_present: true,
            mains_voltage: 230.0,
            lamp_broken: false,
            driver_fault: false,
            lamp_rated_power: 100.0,
            cover_lifted: false,
            cover_tilt: 0.8,
            battery_level: 87.0,
            noise: 1.0,
        }
    }
}

/// A snapshot of everything a device's sensors face.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conditions {
    /// The district's weather.
    pub weather: Weather,
    /// The site's own conditions.
    pub site: SiteConditions,
}

/// The district: its weather and a clock shared by every device.
#[derive(Clone, Debug)]
pub struct World {
    weather: Arc<Mutex<Weather>>,
    started: Instant,
}

impl Default for World {
    fn default() -> Self {
        World::new(Weather::default())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave plain data half-written in a way that
    // matters to a simulation; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl World {
    /// A world with this weather.
    pub fn new(weather: Weather) -> World {
        World {
            weather: Arc::new(Mutex::new(weather)),
            started: Instant::now(),
        }
    }

    /// The weather now.
    pub fn weather(&self) -> Weather {
        *lock(&self.weather)
    }

    /// Changes the weather.
    pub fn update_weather(&self, f: impl FnOnce(&mut Weather)) {
        f(&mut lock(&self.weather));
    }

    /// Seconds since the world began (the phase of every slow variation).
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// A new site in this world with default conditions.
    pub fn site(&self, name: &str) -> Site {
        self.site_with(name, SiteConditions::default())
    }

    /// A new site in this world.
    pub fn site_with(&self, name: &str, conditions: SiteConditions) -> Site {
        Site {
            world: self.clone(),
            name: Arc::from(name),
            local: Arc::new(Mutex::new(conditions)),
        }
    }
}

/// One device's place in the world.
#[derive(Clone, Debug)]
pub struct Site {
    world: World,
    name: Arc<str>,
    local: Arc<Mutex<SiteConditions>>,
}

impl Site {
    /// The site's name (the device id), which also seeds its sensors' noise.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The world the site is in.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The site's own conditions now.
    pub fn conditions(&self) -> SiteConditions {
        *lock(&self.local)
    }

    /// Changes the site's conditions (break a lamp, lift a cover, raise the water).
    pub fn update(&self, f: impl FnOnce(&mut SiteConditions)) {
        f(&mut lock(&self.local));
    }

    /// Everything the site's sensors face now.
    pub fn snapshot(&self) -> Conditions {
        Conditions {
            weather: self.world.weather(),
            site: self.conditions(),
        }
    }
}

/// Gentle variation for a device running alone (`sim modbus-device`): slow swings of the
/// temperature, humidity, pressure, wind and water around the values it started from, and a
/// drizzle now and then. The district drives its world itself and does not use this.
#[derive(Clone, Debug)]
pub struct Ambient {
    base_weather: Weather,
    base_site: SiteConditions,
}

impl Ambient {
    /// Variation around the site's and world's current values.
    pub fn around(site: &Site) -> Ambient {
        Ambient {
            base_weather: site.world.weather(),
            base_site: site.conditions(),
        }
    }

    /// Applies the variation for time `t` seconds.
    pub fn apply(&self, site: &Site, t: f64) {
        use std::f64::consts::TAU;
        let wave = |period_s: f64, phase: f64| (TAU * t / period_s + phase).sin();
        let (w, s) = (self.base_weather, self.base_site);
        site.world.update_weather(|now| {
            now.air_temperature = w.air_temperature + 1.5 * wave(1800.0, 0.0);
            now.relative_humidity =
                (w.relative_humidity - 4.0 * wave(1800.0, 0.0)).clamp(0.0, 100.0);
            now.air_pressure = w.air_pressure + 0.8 * wave(3600.0, 1.0);
            now.wind_speed = (w.wind_speed * (1.0 + 0.4 * wave(97.0, 2.0))).max(0.0);
            // A drizzle for a tenth of every hour.
            now.rain_rate = if wave(3600.0, 0.0) > 0.95 {
                1.2
            } else {
                w.rain_rate
            };
        });
        site.update(|now| {
            now.water_level = s.water_level + 0.05 * wave(900.0, 0.5);
            now.water_temperature = s.water_temperature + 0.3 * wave(2400.0, 0.2);
            now.ph = s.ph + 0.05 * wave(1200.0, 1.3);
            now.turbidity = (s.turbidity * (1.0 + 0.1 * wave(600.0, 0.7))).max(0.0);
            now.conductivity = s.conductivity + 10.0 * wave(1500.0, 2.2);
            now.dissolved_oxygen = s.dissolved_oxygen + 0.2 * wave(2000.0, 0.9);
            now.mains_voltage = s.mains_voltage + 2.0 * wave(300.0, 0.1);
            now.battery_level = (s.battery_level + 1.0 * wave(7200.0, 0.0)).clamp(0.0, 100.0);
        });
    }
}
