//! A UART distance gauge streaming 4-byte frames (the water-level station's gauge head),
//! modelled on DFRobot's A0xYYUW waterproof ultrasonic sensors (e.g. A02YYUW, SEN0311).
//!
//! From their datasheets: 9600 baud 8N1; every ~100 ms the sensor sends `0xFF`, distance high
//! byte, distance low byte, and a checksum equal to the low byte of the sum of the first three.
//! Distance is in millimetres. The driver drains whatever the UART has without blocking
//! (`embedded_io::ReadReady`), resynchronises on the 0xFF header after noise, and keeps the
//! latest good distance.

use embedded_io::{Read, ReadReady};

/// Frame header byte.
pub const HEADER: u8 = 0xFF;

/// The checksum of a frame's first three bytes.
pub const fn checksum(high: u8, low: u8) -> u8 {
    (HEADER as u16 + high as u16 + low as u16) as u8
}

/// Driver errors.
#[derive(Debug, PartialEq)]
pub enum Error<E> {
    /// The UART failed.
    Uart(E),
}

/// The gauge.
pub struct Ultrasonic<U> {
    uart: U,
    frame: [u8; 4],
    filled: usize,
    bad_frames: u32,
}

impl<U: Read + ReadReady> Ultrasonic<U> {
    /// A gauge on a UART configured for 9600 8N1.
    pub fn new(uart: U) -> Self {
        Ultrasonic {
            uart,
            frame: [0; 4],
            filled: 0,
            bad_frames: 0,
        }
    }

    /// Gives the UART back.
    pub fn destroy(self) -> U {
        self.uart
    }

    /// Frames dropped for a bad checksum.
    pub fn bad_frames(&self) -> u32 {
        self.bad_frames
    }

    /// Reads what has arrived; the newest good distance in it (mm), if any.
    pub fn poll(&mut self) -> Result<Option<u16>, Error<U::Error>> {
        let mut latest = None;
        let mut buf = [0u8; 32];
        while self.uart.read_ready().map_err(Error::Uart)? {
            let n = self.uart.read(&mut buf).map_err(Error::Uart)?;
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                if let Some(d) = self.push(b) {
                    latest = Some(d);
                }
            }
        }
        Ok(latest)
    }

    fn push(&mut self, b: u8) -> Option<u16> {
        if self.filled == 0 && b != HEADER {
            return None; // hunting for a header
        }
        self.frame[self.filled] = b;
        self.filled += 1;
        if self.filled < 4 {
            return None;
        }
        self.filled = 0;
        let [_, hi, lo, sum] = self.frame;
        if checksum(hi, lo) == sum {
            return Some(u16::from_be_bytes([hi, lo]));
        }
        self.bad_frames = self.bad_frames.saturating_add(1);
        // Resynchronise: a header may hide inside the bad frame.
        if let Some(at) = self.frame[1..].iter().position(|x| *x == HEADER) {
            let tail = self.frame;
            let start = at + 1;
            let rest = &tail[start..];
            self.frame[..rest.len()].copy_from_slice(rest);
            self.filled = rest.len();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datasheet_example_frame() {
        // 0xFF 0x07 0xA1 0xA7 = 1953 mm.
        assert_eq!(checksum(0x07, 0xA1), 0xA7);
        let bytes: &[u8] = &[0xFF, 0x07, 0xA1, 0xA7];
        let mut g = Ultrasonic::new(bytes);
        assert_eq!(g.poll().unwrap(), Some(1953));
        assert_eq!(g.poll().unwrap(), None);
    }

    #[test]
    fn keeps_the_newest_and_survives_noise() {
        let bytes: &[u8] = &[
            0x12,
            0x34, // noise before a header
            0xFF,
            0x07,
            0xA1,
            0xA7, // 1953
            0xFF,
            0x07,
            0xA2,
            0x00, // bad checksum
            0xFF,
            0x0B,
            0xB8,
            checksum(0x0B, 0xB8), // 3000
            0xFF,
            0x0B, // a partial frame stays for the next poll
        ];
        let mut g = Ultrasonic::new(bytes);
        assert_eq!(g.poll().unwrap(), Some(3000));
        assert_eq!(g.bad_frames(), 1);
    }

    #[test]
    fn resyncs_on_a_header_inside_a_bad_frame() {
        let bytes: &[u8] = &[0xFF, 0x01, 0xFF, 0x07, 0xA1, 0xA7];
        let mut g = Ultrasonic::new(bytes);
        assert_eq!(g.poll().unwrap(), Some(1953));
    }
}
