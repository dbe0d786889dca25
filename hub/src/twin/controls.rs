//! What may be written to a device: the writable points of its Modbus profile with their
//! `min`/`max`, or, for devices without a profile, the controllable quantities within their
//! physical range.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use protocols::config::ConfigError;
use protocols::profile::DeviceProfile;
use protocols::{Quantity, Value};

use crate::config::HubConfig;
use crate::registry::DeviceIdx;

/// Why a value may not be written.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ControlError {
    /// The quantity cannot be written to this device.
    #[error("`{0}` is not writable on this device")]
    NotWritable(&'static str),
    /// Outside the profile's `min`/`max` or the physical range.
    #[error("{value} is outside the allowed range {min}..={max} of `{quantity}`")]
    OutOfRange {
        /// The quantity.
        quantity: &'static str,
        /// The value (profile unit when a profile says so).
        value: f64,
        /// Lower bound, as text (`-inf` when none).
        min: String,
        /// Upper bound.
        max: String,
    },
}

/// The profiles of the registry's devices, loaded once.
#[derive(Clone, Debug, Default)]
pub struct Controls {
    by_device: Vec<Option<Arc<DeviceProfile>>>,
}

impl Controls {
    /// Loads every device's `profile` (each file once). A missing or invalid profile is an
    /// error naming the device's key (`devices[3].profile`).
    pub fn load(config: &HubConfig) -> Result<Controls, ConfigError> {
        let mut cache: HashMap<PathBuf, Arc<DeviceProfile>> = HashMap::new();
        let mut by_device = Vec::with_capacity(config.devices.len());
        for (i, d) in config.devices.iter().enumerate() {
            let Some(path) = &d.profile else {
                by_device.push(None);
                continue;
            };
            let key = format!("devices[{i}].profile");
            let profile = match cache.get(path) {
                Some(p) => p.clone(),
                None => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| ConfigError::new(&key, format!("{}: {e}", path.display())))?;
                    let p =
                        Arc::new(DeviceProfile::from_toml(&text).map_err(|e| {
                            ConfigError::new(&key, format!("{}: {e}", path.display()))
                        })?);
                    cache.insert(path.clone(), p.clone());
                    p
                }
            };
            if profile.source.kind != d.kind {
                return Err(ConfigError::new(
                    &key,
                    format!(
                        "{} is a `{}` profile; the device is a `{}`",
                        path.display(),
                        profile.source.kind,
                        d.kind
                    ),
                ));
            }
            by_device.push(Some(profile));
        }
        Ok(Controls { by_device })
    }

    /// The device's profile, if it has one.
    pub fn profile(&self, device: DeviceIdx) -> Option<&DeviceProfile> {
        self.by_device.get(device as usize)?.as_deref()
    }

    /// Whether `value` (canonical) may be written to `quantity` of `device`.
    pub fn check(
        &self,
        device: DeviceIdx,
        quantity: Quantity,
        value: Value,
    ) -> Result<(), ControlError> {
        let bound = |b: Option<f64>, inf: &str| b.map_or(inf.to_string(), |v| v.to_string());
        match self.profile(device) {
            Some(p) => {
                let point = p
                    .point(quantity)
                    .filter(|pt| pt.writable)
                    .ok_or(ControlError::NotWritable(quantity.name()))?;
                let eng = point.engineering(value);
                if !point.in_range(eng) || !quantity.is_plausible(&value) {
                    return Err(ControlError::OutOfRange {
                        quantity: quantity.name(),
                        value: eng,
                        min: bound(point.range.0, "-inf"),
                        max: bound(point.range.1, "inf"),
                    });
                }
            }
            None => {
                if !quantity.is_controllable() {
                    return Err(ControlError::NotWritable(quantity.name()));
                }
                if !quantity.is_plausible(&value) {
                    let (lo, hi) = quantity
                        .physical_range()
                        .map_or((None, None), |(a, b)| (Some(a), Some(b)));
                    return Err(ControlError::OutOfRange {
                        quantity: quantity.name(),
                        value: value.as_f64(),
                        min: bound(lo, "-inf"),
                        max: bound(hi, "inf"),
                    });
                }
            }
        }
        Ok(())
    }
}
