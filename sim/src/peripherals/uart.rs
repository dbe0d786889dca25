//! The water-level gauge head on a simulated UART: it streams the 4-byte distance frames of
//! the A0xYYUW family every 100 ms, as the real sensor does, whether or not anyone reads.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Instant;

use embedded_io::{ErrorType, Read, ReadReady};
use firmware::drivers::ultrasonic::{HEADER, checksum};

use super::Noise;
use crate::world::Site;

/// Frames per second the gauge sends.
const FRAME_INTERVAL_S: f64 = 0.1;
/// Frames the UART's receive buffer holds before old bytes are overwritten.
const BUFFERED_FRAMES: usize = 16;

/// The gauge's UART as the MCU sees it.
pub struct GaugeUart {
    site: Site,
    mount_height_mm: f64,
    noise: Noise,
    rx: VecDeque<u8>,
    last: Instant,
    frames: u64,
}

impl GaugeUart {
    /// A gauge mounted `mount_height_mm` above the site's level datum.
    pub fn new(site: Site, mount_height_mm: f64) -> GaugeUart {
        let noise = Noise::new(site.name(), "gauge");
        GaugeUart {
            site,
            mount_height_mm,
            noise,
            rx: VecDeque::new(),
            last: Instant::now() - std::time::Duration::from_secs(1),
            frames: 0,
        }
    }

    /// Queues the frames the sensor sent since the last look.
    fn catch_up(&mut self) {
        let due = (self.last.elapsed().as_secs_f64() / FRAME_INTERVAL_S) as usize;
        if due == 0 {
            return;
        }
        self.last = Instant::now();
        let c = self.site.snapshot().site;
        for _ in 0..due.min(BUFFERED_FRAMES) {
            let mm =
                self.mount_height_mm - c.water_level * 1000.0 + self.noise.gauss(1.5 * c.noise);
            let [hi, lo] = (mm.round().clamp(0.0, 65_535.0) as u16).to_be_bytes();
            let mut frame = [HEADER, hi, lo, checksum(hi, lo)];
            self.frames += 1;
            // Now and then a bit flips on the line, as on a long cable.
            if self.frames.is_multiple_of(211) {
                frame[2] ^= 0x10;
            }
            self.rx.extend(frame);
        }
        while self.rx.len() > BUFFERED_FRAMES * 4 {
            self.rx.pop_front();
        }
    }
}

impl ErrorType for GaugeUart {
    type Error = Infallible;
}

impl ReadReady for GaugeUart {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        self.catch_up();
        Ok(!self.rx.is_empty())
    }
}

impl Read for GaugeUart {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        self.catch_up();
        let n = buf.len().min(self.rx.len());
        for (slot, b) in buf.iter_mut().zip(self.rx.drain(..n)) {
            *slot = b;
        }
        Ok(n)
    }
}
