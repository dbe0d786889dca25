//! Bit and varint primitives shared by the chunk codec and the write-ahead log.
//!
//! Readers never panic on bad input: running past the end is an error, so corrupt bytes surface
//! as [`Truncated`] and become `StoreError::Corrupt` higher up.

/// Input ended before a value was complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated;

/// Maps signed to unsigned so that small magnitudes get small codes.
#[inline]
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag`].
#[inline]
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Appends an unsigned LEB128 varint.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads bytes from a slice, front to back.
#[derive(Debug)]
pub struct ByteReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> ByteReader<'a> {
    /// Starts at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        ByteReader { buf, pos: 0 }
    }

    /// The unread rest.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// One byte.
    #[inline]
    pub fn u8(&mut self) -> Result<u8, Truncated> {
        let b = *self.buf.get(self.pos).ok_or(Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// `n` bytes.
    #[inline]
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Truncated> {
        let end = self.pos.checked_add(n).ok_or(Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(Truncated)?;
        self.pos = end;
        Ok(s)
    }

    /// A little-endian u64.
    #[inline]
    pub fn u64_le(&mut self) -> Result<u64, Truncated> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A little-endian f64.
    #[inline]
    pub fn f64_le(&mut self) -> Result<f64, Truncated> {
        Ok(f64::from_bits(self.u64_le()?))
    }

    /// An unsigned LEB128 varint of at most 10 bytes.
    #[inline]
    pub fn varint(&mut self) -> Result<u64, Truncated> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(Truncated);
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
            if shift > 63 {
                return Err(Truncated);
            }
        }
    }

    /// A zigzag varint.
    #[inline]
    pub fn svarint(&mut self) -> Result<i64, Truncated> {
        Ok(unzigzag(self.varint()?))
    }
}

/// Writes bits most-significant first into a byte vector.
#[derive(Debug, Default)]
pub struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    // Number of bits held in `acc` (always < 8 after `write`).
    n: u32,
}

impl BitWriter {
    /// An empty writer that appends after `prefix`.
    pub fn with_prefix(prefix: Vec<u8>) -> Self {
        BitWriter {
            out: prefix,
            acc: 0,
            n: 0,
        }
    }

    /// Writes the low `bits` bits of `v` (`bits` <= 64).
    #[inline]
    pub fn write(&mut self, v: u64, bits: u32) {
        if bits == 0 {
            return;
        }
        if bits > 56 {
            // Split so the accumulator (holding < 8 bits) never overflows.
            self.write(v >> 32, bits - 32);
            self.write(v & 0xffff_ffff, 32);
            return;
        }
        let v = if bits == 64 {
            v
        } else {
            v & ((1u64 << bits) - 1)
        };
        self.acc = (self.acc << bits) | v;
        self.n += bits;
        while self.n >= 8 {
            self.n -= 8;
            self.out.push((self.acc >> self.n) as u8);
        }
        // Keep only the pending bits so the shift above cannot lose anything.
        self.acc &= (1u64 << self.n) - 1;
    }

    /// Pads the last byte with zeros and returns the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        if self.n > 0 {
            let pad = 8 - self.n;
            self.out.push((self.acc << pad) as u8);
        }
        self.out
    }
}

/// Reads bits most-significant first.
#[derive(Debug)]
pub struct BitReader<'a> {
    buf: &'a [u8],
    // Next byte to load.
    pos: usize,
    acc: u64,
    n: u32,
}

impl<'a> BitReader<'a> {
    /// Reads `buf` from its first bit.
    pub fn new(buf: &'a [u8]) -> Self {
        BitReader {
            buf,
            pos: 0,
            acc: 0,
            n: 0,
        }
    }

    #[inline]
    fn refill(&mut self) {
        while self.n <= 56 {
            match self.buf.get(self.pos) {
                Some(&b) => {
                    self.acc |= u64::from(b) << (56 - self.n);
                    self.n += 8;
                    self.pos += 1;
                }
                None => break,
            }
        }
    }

    /// Reads `bits` bits (<= 64).
    #[inline]
    pub fn read(&mut self, bits: u32) -> Result<u64, Truncated> {
        if bits == 0 {
            return Ok(0);
        }
        if bits > 56 {
            let hi = self.read(bits - 32)?;
            let lo = self.read(32)?;
            return Ok((hi << 32) | lo);
        }
        if self.n < bits {
            self.refill();
            if self.n < bits {
                return Err(Truncated);
            }
        }
        let v = self.acc >> (64 - bits);
        self.acc <<= bits;
        self.n -= bits;
        Ok(v)
    }

    /// Reads one bit.
    #[inline]
    pub fn bit(&mut self) -> Result<bool, Truncated> {
        Ok(self.read(1)? == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_round_trip() {
        for v in [0, 1, -1, 2, -2, i64::MAX, i64::MIN, 12345, -98765] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
    }

    #[test]
    fn varint_round_trip_and_truncation() {
        let vals = [0u64, 1, 127, 128, 300, u64::MAX, 1 << 35];
        let mut buf = Vec::new();
        for v in vals {
            put_varint(&mut buf, v);
        }
        let mut r = ByteReader::new(&buf);
        for v in vals {
            assert_eq!(r.varint().unwrap(), v);
        }
        assert_eq!(r.varint(), Err(Truncated));
        assert_eq!(ByteReader::new(&[0xff; 11]).varint(), Err(Truncated));
    }

    #[test]
    fn bits_round_trip() {
        let items: Vec<(u64, u32)> = (0..200u64)
            .map(|i| {
                let bits = (i % 64 + 1) as u32;
                (i.wrapping_mul(0x9E37_79B9_7F4A_7C15), bits)
            })
            .collect();
        let mut w = BitWriter::default();
        for &(v, b) in &items {
            w.write(v, b);
        }
        let bytes = w.finish();
        let mut r = BitReader::new(&bytes);
        for &(v, b) in &items {
            let mask = if b == 64 { u64::MAX } else { (1 << b) - 1 };
            assert_eq!(r.read(b).unwrap(), v & mask);
        }
        assert!(r.read(16).is_err());
    }
}
