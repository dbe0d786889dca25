//! Chunk payload codec: compressed timestamps, values and qualities of one chunk.
//!
//! - Timestamps: the first as a varint, the first delta as a varint, then delta-of-deltas in an
//!   adaptive prefix code (below), or each delta's distance from the chunk's median delta when
//!   that is smaller (polling with a few ms of jitter). Regular sampling costs one bit a point.
//! - Values: sensor values are almost always short decimals (a level in mm, a pH to 0.01) or
//!   integers (booleans, enum states, counters). When every value of the chunk is within a few
//!   ulps of `int / 10^k`, the chunk stores those integers as first- or second-order differences
//!   (whichever is smaller) in the adaptive code, plus per-point ulp corrections only if some
//!   value is not exactly the nearest double to its decimal, so the round trip is bit-exact.
//!   Otherwise (NaN, infinities, values with no short decimal form) Gorilla XOR coding.
//! - Quality: one byte when the whole chunk is `good` (the usual case), else run lengths.
//!
//! The adaptive code for a signed residual `r` (zigzag `z`): `0` for z = 0; `10` + `w` bits of
//! `z - 1` when that fits; `11` + 6 bits of the bit length + the bits below the leading one
//! otherwise. `w` is chosen per chunk and stream from a histogram of bit lengths to minimise the
//! total, so noise of a few mm and long runs of repeats both code tightly.
//!
//! Every input sequence round-trips exactly, including unordered or equal timestamps, NaN
//! payloads, infinities, -0.0 and extreme values (arithmetic wraps on purpose).

use protocols::Quality;

use super::Point;
use crate::bits::{BitReader, BitWriter, ByteReader, Truncated, put_varint, unzigzag, zigzag};

const VERSION: u8 = 1;
const TS_DOD: u8 = 0;
const TS_BASE: u8 = 1;
const VALUES_XOR: u8 = 0;
const VALUES_DECIMAL: u8 = 1;
/// Largest decimal scale tried (10^9 covers nano-units).
const MAX_SCALE: usize = 9;
/// Largest ulp distance between a value and its decimal that corrections absorb.
const MAX_ULPS: i64 = 8;
const POW10: [f64; MAX_SCALE + 1] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];
/// Integers beyond this are not all representable as f64.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// Why chunk bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The bytes end too early.
    #[error("chunk payload truncated")]
    Truncated,
    /// A header field has an impossible value.
    #[error("chunk payload invalid: {0}")]
    Invalid(&'static str),
}

impl From<Truncated> for CodecError {
    fn from(_: Truncated) -> Self {
        CodecError::Truncated
    }
}

/// The stable one-byte code of a quality.
pub fn quality_code(q: Quality) -> u8 {
    match q {
        Quality::Good => 0,
        Quality::Uncertain => 1,
        Quality::Bad => 2,
    }
}

/// The quality for a code from [`quality_code`].
pub fn quality_from_code(c: u8) -> Option<Quality> {
    match c {
        0 => Some(Quality::Good),
        1 => Some(Quality::Uncertain),
        2 => Some(Quality::Bad),
        _ => None,
    }
}

/// Maps f64 bit patterns to integers in numeric order, so neighbouring doubles differ by one.
#[inline]
fn ord(v: f64) -> i64 {
    let b = v.to_bits() as i64;
    if b < 0 { b ^ i64::MAX } else { b }
}

#[inline]
fn from_ord(o: i64) -> f64 {
    let b = if o < 0 { o ^ i64::MAX } else { o };
    f64::from_bits(b as u64)
}

#[inline]
fn bitlen(z: u64) -> u32 {
    64 - z.leading_zeros()
}

/// Histogram of bit lengths of `z - 1` for non-zero `z`, plus the zero count at index 65.
struct Hist([u64; 66]);

impl Hist {
    fn new() -> Self {
        Hist([0; 66])
    }

    #[inline]
    fn add(&mut self, z: u64) {
        if z == 0 {
            self.0[65] += 1;
        } else {
            self.0[bitlen(z - 1) as usize] += 1;
        }
    }

    /// The width minimising total bits, and that total.
    fn best(&self) -> (u32, u64) {
        let zeros = self.0[65];
        // Bits of everything wider than `w` coded long: start with all of them.
        let mut long: u64 = self.0[..65]
            .iter()
            .enumerate()
            .map(|(b, &n)| n * (8 + b as u64))
            .sum();
        let mut short_count = 0u64;
        let mut best = (0u32, u64::MAX);
        for w in 0..=64u32 {
            let n = self.0[w as usize];
            long -= n * (8 + u64::from(w));
            short_count += n;
            let bits = zeros + short_count * (2 + u64::from(w)) + long;
            if bits < best.1 {
                best = (w, bits);
            }
        }
        best
    }
}

#[inline]
fn put_code(w: &mut BitWriter, z: u64, width: u32) {
    if z == 0 {
        w.write(0, 1);
    } else if width == 64 || (z - 1) >> width == 0 {
        w.write(0b10, 2);
        w.write(z - 1, width);
    } else {
        let bl = bitlen(z);
        w.write(0b11, 2);
        w.write(u64::from(bl - 1), 6);
        w.write(z, bl - 1);
    }
}

#[inline]
fn get_code(r: &mut BitReader<'_>, width: u32) -> Result<u64, Truncated> {
    if !r.bit()? {
        return Ok(0);
    }
    if !r.bit()? {
        return Ok(r.read(width)?.wrapping_add(1));
    }
    let bl = r.read(6)? as u32 + 1;
    let low = r.read(bl - 1)?;
    Ok(if bl == 64 {
        low | (1 << 63)
    } else {
        low | (1 << (bl - 1))
    })
}

/// The decimal form of a chunk's values, if every value has one.
struct Decimal {
    scale: usize,
    ints: Vec<i64>,
    corrections: Option<Vec<i64>>,
}

fn fit_decimal(vals: &[Point]) -> Option<Decimal> {
    if vals.iter().any(|p| !p.value.is_finite()) {
        return None;
    }
    'scale: for (scale, &s) in POW10.iter().enumerate() {
        let mut any_correction = false;
        for p in vals {
            let x = (p.value * s).round();
            if x.abs() >= EXACT_INT {
                continue 'scale;
            }
            // Compare with exactly what decoding computes (an i64, so -0.0 becomes 0.0).
            let d = ord(p.value).wrapping_sub(ord((x as i64) as f64 / s));
            if !(-MAX_ULPS..=MAX_ULPS).contains(&d) {
                continue 'scale;
            }
            any_correction |= d != 0;
        }
        let mut ints = Vec::with_capacity(vals.len());
        let mut corrections = any_correction.then(|| Vec::with_capacity(vals.len()));
        for p in vals {
            let x = (p.value * s).round();
            ints.push(x as i64);
            if let Some(c) = corrections.as_mut() {
                c.push(ord(p.value).wrapping_sub(ord((x as i64) as f64 / s)));
            }
        }
        return Some(Decimal {
            scale,
            ints,
            corrections,
        });
    }
    None
}

/// Residuals of order 1 (`i[n] - i[n-1]`) or 2 (delta of deltas), after the first `order` items.
fn residuals(ints: &[i64], order: u8) -> impl Iterator<Item = i64> + '_ {
    let skip = usize::from(order);
    (skip..ints.len()).map(move |n| {
        let d1 = ints[n].wrapping_sub(ints[n - 1]);
        if order == 1 {
            d1
        } else {
            d1.wrapping_sub(ints[n - 1].wrapping_sub(ints[n - 2]))
        }
    })
}

/// Encodes points (any order, any values) into a chunk payload.
pub fn encode(points: &[Point]) -> Vec<u8> {
    let n = points.len();
    let mut head = Vec::with_capacity(32 + n / 4);
    head.push(VERSION);
    put_varint(&mut head, n as u64);
    if n == 0 {
        return head;
    }
    // Timestamps: delta-of-delta, or (better for jittered polling) each delta's distance from
    // the chunk's median delta, whichever codes smaller.
    put_varint(&mut head, zigzag(points[0].ts_ms));
    let mut ts_codes = Vec::with_capacity(n.saturating_sub(2));
    let mut ts_width = 0;
    if n > 1 {
        let d1 = points[1].ts_ms.wrapping_sub(points[0].ts_ms);
        put_varint(&mut head, zigzag(d1));
        let deltas: Vec<i64> = points[1..]
            .windows(2)
            .map(|w| w[1].ts_ms.wrapping_sub(w[0].ts_ms))
            .collect();
        let mut dod_hist = Hist::new();
        let mut prev = d1;
        for &d in &deltas {
            dod_hist.add(zigzag(d.wrapping_sub(prev)));
            prev = d;
        }
        let (dod_w, dod_cost) = dod_hist.best();
        let base = if deltas.is_empty() {
            d1
        } else {
            let mut sorted = deltas.clone();
            let mid = sorted.len() / 2;
            *sorted.select_nth_unstable(mid).1
        };
        let mut base_hist = Hist::new();
        deltas
            .iter()
            .for_each(|&d| base_hist.add(zigzag(d.wrapping_sub(base))));
        let (base_w, base_cost) = base_hist.best();
        if base_cost + 64 < dod_cost {
            head.push(TS_BASE);
            put_varint(&mut head, zigzag(base));
            ts_width = base_w;
            ts_codes.extend(deltas.iter().map(|&d| zigzag(d.wrapping_sub(base))));
        } else {
            head.push(TS_DOD);
            ts_width = dod_w;
            let mut prev = d1;
            for &d in &deltas {
                ts_codes.push(zigzag(d.wrapping_sub(prev)));
                prev = d;
            }
        }
    }
    head.push(ts_width as u8);

    // Qualities.
    if points.iter().all(|p| p.quality == Quality::Good) {
        head.push(0);
    } else {
        head.push(1);
        let mut runs: Vec<(u64, u8)> = Vec::new();
        for p in points {
            let c = quality_code(p.quality);
            match runs.last_mut() {
                Some((len, q)) if *q == c => *len += 1,
                _ => runs.push((1, c)),
            }
        }
        put_varint(&mut head, runs.len() as u64);
        for (len, q) in runs {
            put_varint(&mut head, len);
            head.push(q);
        }
    }

    // Values: choose the representation before the bit stream starts.
    enum Values {
        Xor,
        Dec {
            order: u8,
            width: u32,
            ints: Vec<i64>,
            corr: Option<(u32, Vec<i64>)>,
        },
    }
    let values = match fit_decimal(points) {
        None => Values::Xor,
        Some(dec) => {
            let order = if n > 2 {
                let cost = |order| {
                    let mut h = Hist::new();
                    residuals(&dec.ints, order).for_each(|r| h.add(zigzag(r)));
                    h.best()
                };
                let (w1, c1) = cost(1);
                let (w2, c2) = cost(2);
                if c2 < c1 { (2, w2) } else { (1, w1) }
            } else {
                let mut h = Hist::new();
                residuals(&dec.ints, 1).for_each(|r| h.add(zigzag(r)));
                (1, h.best().0)
            };
            head.push(VALUES_DECIMAL);
            head.push(dec.scale as u8);
            head.push(order.0);
            head.push(u8::from(dec.corrections.is_some()));
            put_varint(&mut head, zigzag(dec.ints[0]));
            if order.0 == 2 {
                put_varint(&mut head, zigzag(dec.ints[1].wrapping_sub(dec.ints[0])));
            }
            head.push(order.1 as u8);
            let corr = dec.corrections.map(|c| {
                let mut h = Hist::new();
                c.iter().for_each(|&d| h.add(zigzag(d)));
                let w = h.best().0;
                head.push(w as u8);
                (w, c)
            });
            Values::Dec {
                order: order.0,
                width: order.1,
                ints: dec.ints,
                corr,
            }
        }
    };
    if matches!(values, Values::Xor) {
        head.push(VALUES_XOR);
    }

    let mut w = BitWriter::with_prefix(head);
    for z in ts_codes {
        put_code(&mut w, z, ts_width);
    }
    match values {
        Values::Xor => encode_xor(&mut w, points),
        Values::Dec {
            order,
            width,
            ints,
            corr,
        } => {
            for r in residuals(&ints, order) {
                put_code(&mut w, zigzag(r), width);
            }
            if let Some((cw, c)) = corr {
                for d in c {
                    put_code(&mut w, zigzag(d), cw);
                }
            }
        }
    }
    w.finish()
}

fn encode_xor(w: &mut BitWriter, points: &[Point]) {
    let mut prev = points[0].value.to_bits();
    w.write(prev, 64);
    // Leading/trailing zeros of the last explicitly described window; 64 = none yet.
    let (mut lead, mut trail) = (64u32, 64u32);
    for p in &points[1..] {
        let cur = p.value.to_bits();
        let x = cur ^ prev;
        prev = cur;
        if x == 0 {
            w.write(0, 1);
            continue;
        }
        let lz = x.leading_zeros().min(63);
        let tz = x.trailing_zeros();
        if lead < 64 && lz >= lead && tz >= trail {
            w.write(0b10, 2);
            w.write(x >> trail, 64 - lead - trail);
        } else {
            let meaningful = 64 - lz - tz;
            w.write(0b11, 2);
            w.write(u64::from(lz), 6);
            w.write(u64::from(meaningful - 1), 6);
            w.write(x >> tz, meaningful);
            lead = lz;
            trail = tz;
        }
    }
}

/// Decodes a payload from [`encode`], appending the points to `out`.
pub fn decode(bytes: &[u8], out: &mut Vec<Point>) -> Result<(), CodecError> {
    let mut r = ByteReader::new(bytes);
    if r.u8()? != VERSION {
        return Err(CodecError::Invalid("unknown chunk codec version"));
    }
    let n = r.varint()?;
    if n == 0 {
        return Ok(());
    }
    // Every point costs at least two bits, so a count beyond this is corruption.
    if n > (bytes.len() as u64) * 4 + 2 {
        return Err(CodecError::Invalid("point count exceeds payload"));
    }
    let n = n as usize;
    let ts0 = r.svarint()?;
    let d1 = if n > 1 { r.svarint()? } else { 0 };
    let ts_base = match if n > 1 { r.u8()? } else { TS_DOD } {
        TS_DOD => None,
        TS_BASE => Some(r.svarint()?),
        _ => return Err(CodecError::Invalid("timestamp mode")),
    };
    let ts_width = u32::from(r.u8()?);
    if ts_width > 64 {
        return Err(CodecError::Invalid("timestamp code width"));
    }
    let mut quality_runs: Vec<(u64, Quality)> = Vec::new();
    match r.u8()? {
        0 => {}
        1 => {
            let runs = r.varint()?;
            let mut total = 0u64;
            for _ in 0..runs {
                let len = r.varint()?;
                let q = quality_from_code(r.u8()?).ok_or(CodecError::Invalid("quality code"))?;
                total = total.saturating_add(len);
                quality_runs.push((len, q));
            }
            if total != n as u64 {
                return Err(CodecError::Invalid("quality runs do not cover the chunk"));
            }
        }
        _ => return Err(CodecError::Invalid("quality mode")),
    }
    let mode = r.u8()?;
    struct DecHeader {
        scale: usize,
        order: u8,
        first: i64,
        first_delta: i64,
        width: u32,
        corr_width: Option<u32>,
    }
    let dec = match mode {
        VALUES_XOR => None,
        VALUES_DECIMAL => {
            let scale = usize::from(r.u8()?);
            let order = r.u8()?;
            let has_corr = r.u8()?;
            if scale > MAX_SCALE || !(1..=2).contains(&order) || has_corr > 1 {
                return Err(CodecError::Invalid("decimal header"));
            }
            let first = r.svarint()?;
            let first_delta = if order == 2 { r.svarint()? } else { 0 };
            let width = u32::from(r.u8()?);
            let corr_width = if has_corr == 1 {
                Some(u32::from(r.u8()?))
            } else {
                None
            };
            if width > 64 || corr_width.is_some_and(|w| w > 64) {
                return Err(CodecError::Invalid("value code width"));
            }
            Some(DecHeader {
                scale,
                order,
                first,
                first_delta,
                width,
                corr_width,
            })
        }
        _ => return Err(CodecError::Invalid("value mode")),
    };

    let mut bits = BitReader::new(r.rest());
    let base = out.len();
    out.reserve(n);
    // Timestamps first, values filled in below.
    let mut ts = ts0;
    out.push(Point {
        ts_ms: ts,
        value: 0.0,
        quality: Quality::Good,
    });
    if n > 1 {
        let mut delta = d1;
        ts = ts.wrapping_add(delta);
        out.push(Point {
            ts_ms: ts,
            value: 0.0,
            quality: Quality::Good,
        });
        for _ in 2..n {
            let r = unzigzag(get_code(&mut bits, ts_width)?);
            delta = match ts_base {
                None => delta.wrapping_add(r),
                Some(base) => base.wrapping_add(r),
            };
            ts = ts.wrapping_add(delta);
            out.push(Point {
                ts_ms: ts,
                value: 0.0,
                quality: Quality::Good,
            });
        }
    }
    let pts = &mut out[base..];
    match dec {
        None => decode_xor(&mut bits, pts)?,
        Some(h) => {
            let s = POW10[h.scale];
            let mut prev = h.first;
            let mut delta = h.first_delta;
            pts[0].value = prev as f64 / s;
            let start = if h.order == 2 && n > 1 {
                prev = prev.wrapping_add(delta);
                pts[1].value = prev as f64 / s;
                2
            } else {
                1
            };
            for p in pts.iter_mut().skip(start) {
                let res = unzigzag(get_code(&mut bits, h.width)?);
                if h.order == 1 {
                    prev = prev.wrapping_add(res);
                } else {
                    delta = delta.wrapping_add(res);
                    prev = prev.wrapping_add(delta);
                }
                p.value = prev as f64 / s;
            }
            if let Some(cw) = h.corr_width {
                for p in pts.iter_mut() {
                    let d = unzigzag(get_code(&mut bits, cw)?);
                    p.value = from_ord(ord(p.value).wrapping_add(d));
                }
            }
        }
    }
    if !quality_runs.is_empty() {
        let mut i = 0usize;
        for (len, q) in quality_runs {
            for p in &mut pts[i..i + len as usize] {
                p.quality = q;
            }
            i += len as usize;
        }
    }
    Ok(())
}

fn decode_xor(r: &mut BitReader<'_>, pts: &mut [Point]) -> Result<(), CodecError> {
    let mut prev = r.read(64)?;
    pts[0].value = f64::from_bits(prev);
    let (mut lead, mut trail) = (64u32, 64u32);
    for p in pts.iter_mut().skip(1) {
        if r.bit()? {
            let x = if !r.bit()? {
                if lead >= 64 {
                    return Err(CodecError::Invalid("xor window before any description"));
                }
                r.read(64 - lead - trail)? << trail
            } else {
                let lz = r.read(6)? as u32;
                let meaningful = r.read(6)? as u32 + 1;
                if lz + meaningful > 64 {
                    return Err(CodecError::Invalid("xor window"));
                }
                let tz = 64 - lz - meaningful;
                lead = lz;
                trail = tz;
                r.read(meaningful)? << tz
            };
            prev ^= x;
        }
        p.value = f64::from_bits(prev);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pts(ts: &[i64], vals: &[f64]) -> Vec<Point> {
        ts.iter()
            .zip(vals)
            .map(|(&ts_ms, &value)| Point {
                ts_ms,
                value,
                quality: Quality::Good,
            })
            .collect()
    }

    fn round_trip(p: &[Point]) -> usize {
        let bytes = encode(p);
        let mut out = Vec::new();
        decode(&bytes, &mut out).unwrap();
        assert_eq!(out.len(), p.len());
        for (a, b) in p.iter().zip(&out) {
            assert_eq!(a.ts_ms, b.ts_ms);
            assert_eq!(
                a.value.to_bits(),
                b.value.to_bits(),
                "{} vs {}",
                a.value,
                b.value
            );
            assert_eq!(a.quality, b.quality);
        }
        bytes.len()
    }

    #[test]
    fn regular_decimal_series_is_small() {
        let ts: Vec<i64> = (0..1000).map(|i| 1_700_000_000_000 + i * 1000).collect();
        let vals: Vec<f64> = (0..1000)
            .map(|i| (2310 + (i % 7) - 3) as f64 / 1000.0)
            .collect();
        let len = round_trip(&pts(&ts, &vals));
        assert!(len < 700, "{len} bytes");
        let flat = vec![1.0; 1000];
        let len = round_trip(&pts(&ts, &flat));
        assert!(len < 300, "{len} bytes");
    }

    #[test]
    fn special_values_round_trip() {
        let vals = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            0.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            -1e300,
            5e-324,
        ];
        let ts = [5, 3, 3, i64::MIN, i64::MAX, 0, -7, 1, 1];
        round_trip(&pts(&ts, &vals));
        // -0.0 alone fits the decimal form with a correction.
        round_trip(&pts(&[1, 2, 3], &[-0.0, 0.0, -0.0]));
        // Values one ulp off their decimal (results of unit conversion).
        round_trip(&pts(&[1, 2, 3], &[1234.0 * 0.001, 0.1 + 0.2, 2.31]));
    }

    #[test]
    fn qualities_round_trip() {
        let mut p = pts(&[1, 2, 3, 4, 5], &[1.0, 2.0, 3.0, 4.0, 5.0]);
        p[1].quality = Quality::Bad;
        p[2].quality = Quality::Bad;
        p[4].quality = Quality::Uncertain;
        round_trip(&p);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let ts: Vec<i64> = (0..300).map(|i| i * 1000).collect();
        let vals: Vec<f64> = (0..300).map(|i| i as f64 * 0.37).collect();
        let bytes = encode(&pts(&ts, &vals));
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut], &mut Vec::new());
        }
        let mut seed = 1u64;
        for _ in 0..2000 {
            let mut b = bytes.clone();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (seed >> 33) as usize % b.len();
            b[i] ^= 1 << ((seed >> 20) % 8);
            let _ = decode(&b, &mut Vec::new());
        }
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            (-100_000i64..100_000).prop_map(|i| i as f64 / 1000.0),
            (-5i64..5).prop_map(|i| i as f64),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0),
            (0u64..4).prop_map(|i| 1e300 * i as f64),
        ]
    }

    fn quality() -> impl Strategy<Value = Quality> {
        prop_oneof![
            8 => Just(Quality::Good),
            1 => Just(Quality::Uncertain),
            1 => Just(Quality::Bad),
        ]
    }

    proptest! {
        #[test]
        fn any_points_round_trip(
            pts in proptest::collection::vec((any::<i64>(), value(), quality()), 0..300)
        ) {
            let p: Vec<Point> = pts.into_iter().map(|(ts_ms, value, quality)| Point { ts_ms, value, quality }).collect();
            round_trip(&p);
        }

        #[test]
        fn near_regular_points_round_trip(
            start in any::<i64>(),
            steps in proptest::collection::vec(-3i64..2000, 1..500),
            vals in proptest::collection::vec(value(), 500),
            repeat in proptest::bool::ANY,
        ) {
            let mut ts = start;
            let p: Vec<Point> = steps.iter().zip(&vals).map(|(&s, &v)| {
                ts = ts.wrapping_add(s);
                Point { ts_ms: ts, value: if repeat { vals[0] } else { v }, quality: Quality::Good }
            }).collect();
            round_trip(&p);
        }

        #[test]
        fn decimal_series_round_trip(
            scale in 0usize..=9,
            ints in proptest::collection::vec(-1_000_000i64..1_000_000, 1..400),
        ) {
            let p: Vec<Point> = ints.iter().enumerate().map(|(i, &v)| Point {
                ts_ms: i as i64 * 1000,
                value: v as f64 / POW10[scale],
                quality: Quality::Good,
            }).collect();
            round_trip(&p);
        }
    }
}
