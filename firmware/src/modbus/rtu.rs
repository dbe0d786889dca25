//! Modbus RTU: frames delimited by silence, addressed to one unit, protected by a CRC.
//!
//! [`Framer`] turns a byte stream with arrival times into frames (a frame ends after 3.5
//! character times of silence, section 2.5.1.1 of the Modbus serial line guide). [`Slave`]
//! checks a frame (length, CRC, unit), runs the shared PDU handler and builds the reply.
//! On an MCU the UART receive interrupt calls [`Framer::push`] and a timer set to
//! [`Silence::frame_gap_us`] after the last byte calls [`Framer::poll`].
//!
//! The 1.5-character inter-character limit is not enforced: USB and RS-485 converters and
//! host schedulers insert gaps inside frames, and the CRC already rejects torn frames (the
//! same choice as libmodbus).

use super::crc::{crc16, frame_crc_ok};
use super::pdu::{self, DataModel, MAX_PDU, function};

/// Largest RTU frame: address + 253-byte PDU + CRC.
pub const MAX_ADU: usize = 256;

/// The unit address of a broadcast.
pub const BROADCAST: u8 = 0;

/// Inter-frame silence for a line speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Silence {
    frame_gap_us: u32,
}

impl Silence {
    /// 3.5 characters of 11 bits at `baud`; above 19200 baud the fixed 1750 µs the serial
    /// line guide recommends.
    pub const fn for_baud(baud: u32) -> Silence {
        let frame_gap_us = if baud == 0 || baud > 19_200 {
            1_750
        } else {
            // 3.5 * 11 bits * 1e6 / baud, rounded up.
            38_500_000u32.div_ceil(baud)
        };
        Silence { frame_gap_us }
    }

    /// A custom gap (for links with their own timing, e.g. a pseudo-terminal).
    pub const fn from_micros(frame_gap_us: u32) -> Silence {
        Silence { frame_gap_us }
    }

    /// The silence that ends a frame, in microseconds.
    pub const fn frame_gap_us(self) -> u32 {
        self.frame_gap_us
    }
}

/// Assembles frames from received bytes and their arrival times (any monotonic µs clock).
pub struct Framer {
    buf: [u8; MAX_ADU],
    len: usize,
    overflow: bool,
    last_byte_us: u64,
    silence: Silence,
    dropped: u32,
}

impl Framer {
    /// A framer for the given silence.
    pub const fn new(silence: Silence) -> Framer {
        Framer {
            buf: [0; MAX_ADU],
            len: 0,
            overflow: false,
            last_byte_us: 0,
            silence,
            dropped: 0,
        }
    }

    /// Takes one received byte. Call [`Framer::poll`] first when time has passed since the
    /// previous byte, or a finished frame still in the buffer is counted as dropped.
    pub fn push(&mut self, byte: u8, now_us: u64) {
        if self.len > 0 && self.gap_elapsed(now_us) {
            // The previous frame was never collected.
            self.dropped = self.dropped.saturating_add(1);
            self.len = 0;
            self.overflow = false;
        }
        if self.len < MAX_ADU {
            self.buf[self.len] = byte;
            self.len += 1;
        } else {
            self.overflow = true;
        }
        self.last_byte_us = now_us;
    }

    fn gap_elapsed(&self, now_us: u64) -> bool {
        now_us.saturating_sub(self.last_byte_us) >= self.silence.frame_gap_us as u64
    }

    /// The finished frame once the line has been silent long enough, else `None`. An
    /// overlong frame is dropped whole.
    pub fn poll(&mut self, now_us: u64) -> Option<&[u8]> {
        if self.len == 0 || !self.gap_elapsed(now_us) {
            return None;
        }
        let len = core::mem::take(&mut self.len);
        if core::mem::take(&mut self.overflow) {
            self.dropped = self.dropped.saturating_add(1);
            return None;
        }
        Some(&self.buf[..len])
    }

    /// When the frame being received ends if no byte follows (µs), for arming a timer.
    pub fn deadline_us(&self) -> Option<u64> {
        (self.len > 0).then(|| self.last_byte_us + self.silence.frame_gap_us as u64)
    }

    /// Frames dropped for overflow or for not being collected in time.
    pub fn dropped(&self) -> u32 {
        self.dropped
    }
}

/// Why a frame got no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// Shorter than address + function + CRC.
    TooShort,
    /// The CRC does not match (line noise, a torn frame).
    BadCrc,
    /// Addressed to another unit.
    OtherUnit(u8),
    /// A broadcast: executed if it was a write, never answered.
    Broadcast,
}

/// Counters a node can expose for diagnostics (the serial line guide's diagnostic counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames with a good CRC addressed to us or broadcast.
    pub messages: u32,
    /// Frames with a bad CRC or too short.
    pub errors: u32,
    /// Exception responses sent.
    pub exceptions: u32,
    /// Broadcasts executed.
    pub broadcasts: u32,
}

/// An RTU slave at one unit address.
pub struct Slave {
    unit: u8,
    out: [u8; MAX_ADU],
    counters: Counters,
}

impl Slave {
    /// A slave answering at `unit` (1..=247).
    pub const fn new(unit: u8) -> Slave {
        Slave {
            unit,
            out: [0; MAX_ADU],
            counters: Counters {
                messages: 0,
                errors: 0,
                exceptions: 0,
                broadcasts: 0,
            },
        }
    }

    /// The unit address.
    pub fn unit(&self) -> u8 {
        self.unit
    }

    /// Diagnostic counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Serves one complete frame: the reply frame to send, or why there is none.
    pub fn process<M: DataModel + ?Sized>(
        &mut self,
        frame: &[u8],
        model: &mut M,
    ) -> Result<&[u8], Ignored> {
        if frame.len() < 4 {
            self.counters.errors = self.counters.errors.wrapping_add(1);
            return Err(Ignored::TooShort);
        }
        if !frame_crc_ok(frame) {
            self.counters.errors = self.counters.errors.wrapping_add(1);
            return Err(Ignored::BadCrc);
        }
        let unit = frame[0];
        let request = &frame[1..frame.len() - 2];
        if unit == BROADCAST {
            // Reads make no sense without a reply; only writes are carried out.
            if function::is_write(request[0]) {
                let mut scratch = [0u8; MAX_PDU];
                pdu::handle(model, request, &mut scratch);
                self.counters.broadcasts = self.counters.broadcasts.wrapping_add(1);
            }
            return Err(Ignored::Broadcast);
        }
        if unit != self.unit {
            return Err(Ignored::OtherUnit(unit));
        }
        self.counters.messages = self.counters.messages.wrapping_add(1);
        let mut pdu_out = [0u8; MAX_PDU];
        let n = pdu::handle(model, request, &mut pdu_out);
        if pdu_out[0] & 0x80 != 0 {
            self.counters.exceptions = self.counters.exceptions.wrapping_add(1);
        }
        self.out[0] = unit;
        self.out[1..1 + n].copy_from_slice(&pdu_out[..n]);
        let crc = crc16(&self.out[..1 + n]);
        self.out[1 + n..3 + n].copy_from_slice(&crc.to_le_bytes());
        Ok(&self.out[..3 + n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::pdu::tests::Tables;
    use std::vec::Vec;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = body.to_vec();
        f.extend_from_slice(&crc16(body).to_le_bytes());
        f
    }

    #[test]
    fn silence_by_baud() {
        assert_eq!(Silence::for_baud(9600).frame_gap_us(), 4011);
        assert_eq!(Silence::for_baud(19_200).frame_gap_us(), 2006);
        assert_eq!(Silence::for_baud(115_200).frame_gap_us(), 1750);
    }

    #[test]
    fn framer_splits_on_silence() {
        let mut f = Framer::new(Silence::for_baud(9600));
        let a = frame(&[1, 3, 0, 0, 0, 1]);
        for (i, b) in a.iter().enumerate() {
            f.push(*b, 1000 + i as u64 * 1146); // one character at 9600 baud
        }
        let last = 1000 + (a.len() as u64 - 1) * 1146;
        assert_eq!(f.deadline_us(), Some(last + 4011));
        assert!(f.poll(last + 4010).is_none());
        assert_eq!(f.poll(last + 4011).unwrap(), &a[..]);
        assert!(f.poll(last + 10_000).is_none());
        assert_eq!(f.dropped(), 0);
    }

    #[test]
    fn uncollected_and_overlong_frames_are_dropped() {
        let mut f = Framer::new(Silence::from_micros(100));
        f.push(1, 0);
        f.push(2, 1000); // the first frame was never polled
        assert_eq!(f.dropped(), 1);
        assert_eq!(f.poll(2000).unwrap(), &[2]);
        for i in 0..300u64 {
            f.push(0xAA, 3000 + i);
        }
        assert!(f.poll(10_000).is_none());
        assert_eq!(f.dropped(), 2);
    }

    #[test]
    fn answers_its_unit_with_a_crc() {
        let mut t = Tables::default();
        t.input[0] = 0x0102;
        let mut s = Slave::new(7);
        let reply = s
            .process(&frame(&[7, 4, 0, 0, 0, 1]), &mut t)
            .unwrap()
            .to_vec();
        assert_eq!(reply, frame(&[7, 4, 2, 1, 2]));
        // Exception replies are framed the same way.
        let reply = s
            .process(&frame(&[7, 4, 0, 40, 0, 1]), &mut t)
            .unwrap()
            .to_vec();
        assert_eq!(reply, frame(&[7, 0x84, 2]));
        assert_eq!(s.counters().exceptions, 1);
        assert_eq!(s.counters().messages, 2);
    }

    #[test]
    fn ignores_bad_crc_short_and_other_units() {
        let mut t = Tables::default();
        let mut s = Slave::new(7);
        let mut bad = frame(&[7, 6, 0, 1, 0, 5]);
        bad[5] ^= 0x40;
        assert_eq!(s.process(&bad, &mut t), Err(Ignored::BadCrc));
        assert_eq!(s.process(&[7, 3, 0], &mut t), Err(Ignored::TooShort));
        assert_eq!(
            s.process(&frame(&[8, 6, 0, 1, 0, 5]), &mut t),
            Err(Ignored::OtherUnit(8))
        );
        assert_eq!(t.holding[1], 0, "nothing written");
        assert_eq!(s.counters().errors, 2);
    }

    #[test]
    fn broadcast_writes_without_reply_and_never_reads() {
        let mut t = Tables::default();
        let mut s = Slave::new(7);
        assert_eq!(
            s.process(&frame(&[0, 6, 0, 1, 0, 5]), &mut t),
            Err(Ignored::Broadcast)
        );
        assert_eq!(t.holding[1], 5);
        assert_eq!(
            s.process(&frame(&[0, 16, 0, 2, 0, 2, 4, 0, 8, 0, 9]), &mut t),
            Err(Ignored::Broadcast)
        );
        assert_eq!(&t.holding[2..4], &[8, 9]);
        assert_eq!(
            s.process(&frame(&[0, 5, 0, 3, 0xFF, 0]), &mut t),
            Err(Ignored::Broadcast)
        );
        assert!(t.coils[3]);
        assert_eq!(
            s.process(&frame(&[0, 3, 0, 0, 0, 1]), &mut t),
            Err(Ignored::Broadcast)
        );
        assert_eq!(s.counters().broadcasts, 3);
    }
}
