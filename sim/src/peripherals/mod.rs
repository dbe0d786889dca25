//! Simulated peripherals: the parts the firmware's drivers talk to, behaving at register level
//! like the real chips, with their physical inputs taken from a [`crate::world::Site`].

pub mod chips;
pub mod i2c;
pub mod pins;
pub mod uart;

/// Deterministic sensor noise: a xorshift stream seeded from the site and the part, so two
/// devices do not read identical numbers and a run can be repeated.
#[derive(Clone, Debug)]
pub struct Noise(u64);

impl Noise {
    /// A stream for one part of one site.
    pub fn new(site: &str, part: &str) -> Noise {
        // FNV-1a over the names; never zero (xorshift's fixed point).
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in site.bytes().chain([0]).chain(part.bytes()) {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        Noise(h | 1)
    }

    /// Uniform in [-1, 1].
    pub fn uniform(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    /// Roughly Gaussian with this standard deviation (sum of three uniforms).
    pub fn gauss(&mut self, sigma: f64) -> f64 {
        (self.uniform() + self.uniform() + self.uniform()) * sigma
    }
}
