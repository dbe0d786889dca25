//! Simulated PWM, relay and input pins.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};

use embedded_hal::digital::{ErrorType as PinErrorType, InputPin, OutputPin};
use embedded_hal::pwm::{ErrorType as PwmErrorType, SetDutyCycle};

use crate::world::{Conditions, Site};

/// Resolution of the simulated PWM timer.
pub const PWM_MAX_DUTY: u16 = 1000;

/// The lamp circuit's actuators as the meter model sees them: relay contact and PWM duty.
#[derive(Clone, Debug, Default)]
pub struct LampCircuit {
    relay_closed: Arc<AtomicBool>,
    duty: Arc<AtomicU16>,
}

impl LampCircuit {
    /// Whether the relay is closed.
    pub fn relay_closed(&self) -> bool {
        self.relay_closed.load(Ordering::Relaxed)
    }

    /// The PWM duty as a fraction of full drive.
    pub fn drive(&self) -> f64 {
        self.duty.load(Ordering::Relaxed) as f64 / PWM_MAX_DUTY as f64
    }

    /// The dimming PWM output.
    pub fn pwm(&self) -> SimPwm {
        SimPwm(self.clone())
    }

    /// The relay output.
    pub fn relay(&self) -> SimRelay {
        SimRelay(self.clone())
    }
}

/// A PWM channel driving the lamp circuit.
pub struct SimPwm(LampCircuit);

impl PwmErrorType for SimPwm {
    type Error = Infallible;
}

impl SetDutyCycle for SimPwm {
    fn max_duty_cycle(&self) -> u16 {
        PWM_MAX_DUTY
    }

    fn set_duty_cycle(&mut self, duty: u16) -> Result<(), Self::Error> {
        self.0.duty.store(duty.min(PWM_MAX_DUTY), Ordering::Relaxed);
        Ok(())
    }
}

/// The relay coil output of the lamp circuit.
pub struct SimRelay(LampCircuit);

impl PinErrorType for SimRelay {
    type Error = Infallible;
}

impl OutputPin for SimRelay {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.0.relay_closed.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn set_high(&mut self) -> Result<(), Self::Error> {
        self.0.relay_closed.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// An input pin whose level follows the site's conditions.
pub struct SimInput {
    site: Site,
    high_when: fn(&Conditions) -> bool,
}

impl SimInput {
    /// A pin that reads high when `high_when` holds for the site's conditions.
    pub fn new(site: Site, high_when: fn(&Conditions) -> bool) -> SimInput {
        SimInput { site, high_when }
    }
}

impl PinErrorType for SimInput {
    type Error = Infallible;
}

impl InputPin for SimInput {
    fn is_high(&mut self) -> Result<bool, Self::Error> {
        Ok((self.high_when)(&self.site.snapshot()))
    }

    fn is_low(&mut self) -> Result<bool, Self::Error> {
        self.is_high().map(|h| !h)
    }
}

/// A delay that returns at once: the chip models are ready immediately, and a device task
/// must never block its executor thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDelay;

impl embedded_hal::delay::DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}
