//! Packet framing: `##` + 4 decimal digits (data segment length) + data segment + 4 hex digits
//! (CRC16 of the data segment) + `\r\n`.
//!
//! [`FrameReader`] takes bytes as TCP delivers them: a packet may arrive in pieces, several in
//! one read, with garbage between them. It resynchronises on the next `##`. On a packet whose
//! header is wrong (length digits, declared length) it skips a single byte, so a real packet
//! that starts inside the bad one's declared extent is still found; on a packet that is framed
//! correctly but fails its CRC or character check it skips the whole packet.

use alloc::vec::Vec;

use super::crc;
use super::segment::{Packet, SegmentError};

/// The longest data segment the standard allows.
pub const STANDARD_MAX_DATA_LEN: usize = 1024;

/// The longest data segment [`FrameReader::new`] accepts. Stations with many pollutants send
/// minute and hour data beyond the standard's 1024 bytes instead of splitting it; 4096 takes
/// them while still bounding what one connection can make the reader buffer.
pub const DEFAULT_MAX_DATA_LEN: usize = 4096;

/// The largest length the 4-digit field can declare.
pub const MAX_DECLARABLE_LEN: usize = 9999;

/// `##` and four length digits.
const HEAD: usize = 6;
/// Four CRC digits and `\r\n`.
const TAIL: usize = 6;

/// Why a packet was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The four characters after `##` are not decimal digits.
    #[error("length field after `##` is not 4 decimal digits")]
    BadLengthField,
    /// The declared length does not match where the packet ends (a line end inside the data
    /// segment or CRC, or after it).
    #[error("declared data segment length {declared} but the packet has {actual}")]
    BadLength {
        /// What the length field says.
        declared: usize,
        /// Bytes between the length field and the CRC as the line end places them.
        actual: usize,
    },
    /// The declared length is over the reader's limit.
    #[error("declared data segment length {declared} exceeds the limit {max}")]
    TooLong {
        /// What the length field says.
        declared: usize,
        /// The configured limit.
        max: usize,
    },
    /// The packet does not end in `\r\n` where its length says it should, and no line end
    /// follows soon enough to tell the real length.
    #[error("packet does not end with CR LF")]
    BadTrailer,
    /// The CRC field is not four hexadecimal digits.
    #[error("CRC field is not 4 hexadecimal digits")]
    BadCrcField,
    /// The CRC in the packet is not the data segment's.
    #[error("CRC mismatch: data segment gives {expected:04X}, packet says {got:04X}")]
    BadCrc {
        /// Computed over the data segment.
        expected: u16,
        /// Written in the packet.
        got: u16,
    },
    /// The data segment holds a byte that is not printable ASCII (the standard's character
    /// set).
    #[error("data segment byte {at} is not printable ASCII")]
    NotAscii {
        /// 0-based position in the data segment.
        at: usize,
    },
    /// [`Frame::decode`] only: the bytes do not start with `##`.
    #[error("packet does not start with `##`")]
    NoHeader,
    /// [`Frame::decode`] only: the bytes end before the packet does.
    #[error("packet is truncated")]
    Truncated,
    /// [`Frame::decode`] only: bytes follow the packet's `\r\n`.
    #[error("{0} bytes after the packet")]
    TrailingBytes(usize),
}

/// One packet that passed the framing checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The data segment (`QN=...;...;CP=&&...&&`), printable ASCII.
    pub data: &'a str,
    /// The CRC written in the packet (equal to the data segment's).
    pub crc: u16,
}

impl<'a> Frame<'a> {
    /// Decodes exactly one packet, `\r\n` included.
    pub fn decode(bytes: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        Frame::decode_with_limit(bytes, MAX_DECLARABLE_LEN)
    }

    /// [`Frame::decode`] with a limit on the data segment length.
    pub fn decode_with_limit(
        bytes: &'a [u8],
        max_data_len: usize,
    ) -> Result<Frame<'a>, FrameError> {
        if !bytes.starts_with(b"##") {
            return Err(FrameError::NoHeader);
        }
        match step(bytes, max_data_len) {
            Step::Incomplete => Err(FrameError::Truncated),
            Step::Error { error, .. } => Err(error),
            Step::Frame {
                total,
                data_len,
                crc,
            } => {
                if bytes.len() > total {
                    return Err(FrameError::TrailingBytes(bytes.len() - total));
                }
                Ok(Frame {
                    data: ascii(&bytes[HEAD..HEAD + data_len]),
                    crc,
                })
            }
        }
    }

    /// Parses the data segment's header fields.
    pub fn packet(&self) -> Result<Packet<'a>, SegmentError> {
        Packet::parse(self.data)
    }
}

/// Bytes already checked to be printable ASCII as `&str`.
fn ascii(bytes: &[u8]) -> &str {
    core::str::from_utf8(bytes).unwrap_or("")
}

/// What the bytes at a `##` amount to.
enum Step {
    /// More bytes are needed to decide.
    Incomplete,
    /// A good packet of `total` bytes.
    Frame {
        total: usize,
        data_len: usize,
        crc: u16,
    },
    /// A bad one; resume `skip` bytes further.
    Error { error: FrameError, skip: usize },
}

/// Examines the packet at the start of `buf` (which starts with `##`). The outcome for a given
/// byte sequence does not depend on how much of it has arrived, except that `Incomplete` turns
/// into an answer, and that a too-short declared length is reported as `BadLength` instead of
/// `BadTrailer` once the real line end is in the buffer.
fn step(buf: &[u8], max_data_len: usize) -> Step {
    let bad_header = |error| Step::Error { error, skip: 1 };
    let digits = &buf[2..buf.len().min(HEAD)];
    if !digits.iter().all(u8::is_ascii_digit) {
        return bad_header(FrameError::BadLengthField);
    }
    if buf.len() < HEAD {
        return Step::Incomplete;
    }
    let declared = digits
        .iter()
        .fold(0usize, |n, d| n * 10 + (d - b'0') as usize);
    if declared > max_data_len {
        return bad_header(FrameError::TooLong {
            declared,
            max: max_data_len,
        });
    }
    let crc_at = HEAD + declared;
    let end_at = crc_at + 4;
    let total = end_at + 2;
    // The standard's character set has no line ends, so one before `end_at` means the length
    // field is wrong; detecting it now avoids waiting for bytes that belong to the next packet.
    let scan_to = buf.len().min(end_at);
    if let Some(p) = buf[HEAD..scan_to]
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
    {
        return bad_header(FrameError::BadLength {
            declared,
            actual: p.saturating_sub(4),
        });
    }
    if buf.len() < total {
        return Step::Incomplete;
    }
    if &buf[end_at..total] != b"\r\n" {
        if buf[end_at] == b'\r' {
            return bad_header(FrameError::BadTrailer);
        }
        // Declared too short? Then the line end comes later.
        let limit = buf.len().min(HEAD + max_data_len + TAIL);
        let error = match buf[end_at..limit].iter().position(|&b| b == b'\r') {
            Some(p) => FrameError::BadLength {
                declared,
                actual: declared + p,
            },
            None => FrameError::BadTrailer,
        };
        return bad_header(error);
    }
    let well_framed = |error| Step::Error { error, skip: total };
    let Some(got) = crc::from_hex(&buf[crc_at..end_at]) else {
        return well_framed(FrameError::BadCrcField);
    };
    let data = &buf[HEAD..crc_at];
    let expected = crc::crc16(data);
    if expected != got {
        return well_framed(FrameError::BadCrc { expected, got });
    }
    if let Some(at) = data.iter().position(|&b| !(b' '..=b'~').contains(&b)) {
        return well_framed(FrameError::NotAscii { at });
    }
    Step::Frame {
        total,
        data_len: declared,
        crc: got,
    }
}

/// Cuts packets out of a byte stream.
///
/// Feed it with [`push`](FrameReader::push) and call [`next_frame`](FrameReader::next_frame)
/// until it returns `None` after every push; the reader then holds at most one incomplete
/// packet (bounded by the data length limit) plus one byte.
#[derive(Debug, Clone)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Start of the unexamined bytes in `buf`.
    pos: usize,
    max_data_len: usize,
    discarded: u64,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader::new()
    }
}

impl FrameReader {
    /// A reader accepting data segments up to [`DEFAULT_MAX_DATA_LEN`] bytes.
    pub fn new() -> FrameReader {
        FrameReader::with_max_data_len(DEFAULT_MAX_DATA_LEN)
    }

    /// A reader accepting data segments up to `max` bytes (at most [`MAX_DECLARABLE_LEN`];
    /// [`STANDARD_MAX_DATA_LEN`] for strict conformance).
    pub fn with_max_data_len(max: usize) -> FrameReader {
        FrameReader {
            buf: Vec::new(),
            pos: 0,
            max_data_len: max.min(MAX_DECLARABLE_LEN),
            discarded: 0,
        }
    }

    /// The data segment limit.
    pub fn max_data_len(&self) -> usize {
        self.max_data_len
    }

    /// Appends bytes received from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next packet, a refused one, or `None` when the buffered bytes hold no complete
    /// packet. Bytes that are not part of a packet are skipped silently and counted in
    /// [`discarded_bytes`](FrameReader::discarded_bytes).
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, FrameError>> {
        let avail = &self.buf[self.pos..];
        match avail.windows(2).position(|w| w == b"##") {
            Some(mut i) => {
                // In `###0101...` the header is the last two `#`.
                while avail.get(i + 2) == Some(&b'#') {
                    i += 1;
                }
                self.pos += i;
                self.discarded += i as u64;
            }
            None => {
                // Keep a trailing `#`: it may be the first half of the next header.
                let keep = usize::from(avail.last() == Some(&b'#'));
                let skip = avail.len() - keep;
                self.pos += skip;
                self.discarded += skip as u64;
                return None;
            }
        }
        let start = self.pos;
        match step(&self.buf[start..], self.max_data_len) {
            Step::Incomplete => None,
            Step::Error { error, skip } => {
                self.pos += skip;
                self.discarded += skip as u64;
                Some(Err(error))
            }
            Step::Frame {
                total,
                data_len,
                crc,
            } => {
                self.pos += total;
                let data = ascii(&self.buf[start + HEAD..start + HEAD + data_len]);
                Some(Ok(Frame { data, crc }))
            }
        }
    }

    /// Bytes waiting to be examined (an incomplete packet, or a `#`).
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes skipped so far: garbage between packets and refused packets.
    pub fn discarded_bytes(&self) -> u64 {
        self.discarded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::String;
    use alloc::vec;

    fn packet(data: &str) -> String {
        let crc = crc::to_hex(crc::crc16(data.as_bytes()));
        format!(
            "##{:04}{}{}\r\n",
            data.len(),
            data,
            core::str::from_utf8(&crc).unwrap()
        )
    }

    fn drain(r: &mut FrameReader) -> Vec<Result<String, FrameError>> {
        let mut out = vec![];
        while let Some(f) = r.next_frame() {
            out.push(f.map(|f| String::from(f.data)));
        }
        out
    }

    const SEG: &str = "QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;Flag=5;CP=&&RtdInterval=30&&";

    #[test]
    fn decode_one() {
        let p = packet(SEG);
        assert!(p.ends_with("1C80\r\n"));
        let f = Frame::decode(p.as_bytes()).unwrap();
        assert_eq!(f.data, SEG);
        assert_eq!(f.crc, 0x1C80);
        assert_eq!(
            Frame::decode(&p.as_bytes()[..p.len() - 1]),
            Err(FrameError::Truncated)
        );
        assert_eq!(
            Frame::decode(format!("{p}x").as_bytes()),
            Err(FrameError::TrailingBytes(1))
        );
        assert_eq!(Frame::decode(&p.as_bytes()[1..]), Err(FrameError::NoHeader));
    }

    #[test]
    fn errors() {
        let p = packet(SEG);
        let bad_crc = p.replace("1C80", "1C81");
        assert_eq!(
            Frame::decode(bad_crc.as_bytes()),
            Err(FrameError::BadCrc {
                expected: 0x1C80,
                got: 0x1C81
            })
        );
        let bad_hex = p.replace("1C80", "1CX0");
        assert_eq!(
            Frame::decode(bad_hex.as_bytes()),
            Err(FrameError::BadCrcField)
        );
        let short = p.replace("##0101", "##0100");
        assert_eq!(
            Frame::decode(short.as_bytes()),
            Err(FrameError::BadLength {
                declared: 100,
                actual: 101
            })
        );
        let long = p.replace("##0101", "##0102");
        assert_eq!(
            Frame::decode(long.as_bytes()),
            Err(FrameError::BadLength {
                declared: 102,
                actual: 101
            })
        );
        let letters = p.replace("##0101", "##01a1");
        assert_eq!(
            Frame::decode(letters.as_bytes()),
            Err(FrameError::BadLengthField)
        );
        assert_eq!(
            Frame::decode_with_limit(p.as_bytes(), 100),
            Err(FrameError::TooLong {
                declared: 101,
                max: 100
            })
        );
        let no_lf = p.replace("\r\n", "\rx");
        assert_eq!(Frame::decode(no_lf.as_bytes()), Err(FrameError::BadTrailer));
        let non_ascii = packet("QN=1;ST=21;CN=2011;PW=1;MN=\u{00e9};CP=&&&&");
        assert_eq!(
            Frame::decode(non_ascii.as_bytes()),
            Err(FrameError::NotAscii { at: 27 })
        );
        // A packet without CRC digits at all: the line end comes 4 bytes early.
        let no_crc = format!("##{:04}{SEG}\r\n", SEG.len());
        assert_eq!(
            Frame::decode(no_crc.as_bytes()),
            Err(FrameError::BadLength {
                declared: 101,
                actual: 97
            })
        );
    }

    #[test]
    fn stream_with_garbage_and_pieces() {
        let a = packet(SEG);
        let b = packet("ST=21;CN=2011;PW=123456;MN=M1;CP=&&DataTime=20240101000000&&");
        let stream = format!("\0\x7fgarbage#{a}{a}xx##99{b}#");
        let mut r = FrameReader::new();
        let mut got = vec![];
        for chunk in stream.as_bytes().chunks(7) {
            r.push(chunk);
            got.extend(drain(&mut r));
        }
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0].as_deref(), Ok(SEG));
        assert_eq!(got[1].as_deref(), Ok(SEG));
        assert_eq!(got[2], Err(FrameError::BadLengthField));
        assert!(got[3].as_deref().unwrap().starts_with("ST=21"));
        assert_eq!(r.buffered(), 1);
        // 10 bytes of garbage, `xx`, the refused `#` and `#99`.
        assert_eq!(r.discarded_bytes(), 10 + 2 + 1 + 3);
    }

    #[test]
    fn a_bad_packet_does_not_hide_the_next() {
        let a = packet(SEG);
        // Declared much longer than it is: the next packet starts inside the declared extent.
        let bad = a.replace("##0101", "##0900");
        let mut r = FrameReader::new();
        r.push(format!("{bad}{a}").as_bytes());
        let got = drain(&mut r);
        assert_eq!(
            got,
            vec![
                Err(FrameError::BadLength {
                    declared: 900,
                    actual: 101
                }),
                Ok(String::from(SEG))
            ]
        );
        // Truncated packet (connection cut mid-packet) followed by a good one.
        let mut r = FrameReader::new();
        r.push(format!("{}{a}", &a[..40]).as_bytes());
        let got = drain(&mut r);
        assert_eq!(got.len(), 2);
        assert!(matches!(got[0], Err(FrameError::BadLength { .. })));
        assert_eq!(got[1].as_deref(), Ok(SEG));
    }

    #[test]
    fn limit_is_configurable() {
        let mut r = FrameReader::with_max_data_len(STANDARD_MAX_DATA_LEN);
        assert_eq!(r.max_data_len(), 1024);
        r.push(b"##2000");
        assert_eq!(
            r.next_frame(),
            Some(Err(FrameError::TooLong {
                declared: 2000,
                max: 1024
            }))
        );
        assert_eq!(FrameReader::with_max_data_len(1 << 20).max_data_len(), 9999);
    }
}
