//! The write-ahead log: append-only segment files of CRC-framed records.
//!
//! A segment is `wal/NNNNNNNNNNNNNNNNNNNN.wal` (20-digit id): a 16-byte header (magic, id) and
//! then frames `len u32 LE | crc32 u32 LE | payload`. A batch payload carries the write's origin,
//! the definitions of series ids it introduces, and its points (timestamp deltas as varints,
//! values as short decimals when they are one, else raw f64), so dedup state, series registry and
//! points become durable in the same record.
//!
//! Reading stops at the first frame that is incomplete or fails its CRC: a crash mid-write leaves
//! at most one torn frame at the end of the last segment, which recovery cuts off.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bits::{ByteReader, Truncated, put_varint, unzigzag, zigzag};
use crate::codec::{quality_code, quality_from_code};
use crate::{Origin, Point};

const MAGIC: &[u8; 8] = b"HUBWAL01";
const HEADER_LEN: usize = 16;
const FRAME_HEADER: usize = 8;
/// Frames longer than this are taken as garbage.
const MAX_FRAME: usize = 512 << 20;
const RECORD_BATCH: u8 = 1;
const VALUE_SAME: u8 = 14;
const VALUE_RAW: u8 = 15;
const POW10: [f64; 10] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// The path of segment `id`.
pub fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

/// Segment ids present in `dir`, ascending.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".wal")
            && stem.len() == 20
            && let Ok(id) = stem.parse::<u64>()
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Makes a directory entry durable (new or removed files).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The segment being appended to.
#[derive(Debug)]
pub struct Segment {
    /// Segment id.
    pub id: u64,
    /// Shared with the syncer thread.
    pub file: Arc<File>,
    /// Bytes written, header included.
    pub len: u64,
}

impl Segment {
    /// Creates segment `id` (header synced, directory entry synced).
    pub fn create(dir: &Path, id: u64) -> io::Result<Segment> {
        let path = segment_path(dir, id);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&id.to_le_bytes());
        let written = file
            .write_all(&header)
            .and_then(|()| file.sync_data())
            .and_then(|()| sync_dir(dir));
        if let Err(e) = written {
            // On a full disk: leave no headerless segment behind for the next open to take for
            // damage in the middle of the log.
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Segment {
            id,
            file: Arc::new(file),
            len: HEADER_LEN as u64,
        })
    }

    /// Appends encoded frames (one write call; not yet durable).
    pub fn append(&mut self, frames: &[u8]) -> io::Result<()> {
        (&*self.file).write_all(frames)?;
        self.len += frames.len() as u64;
        Ok(())
    }
}

/// Encodes one batch record as a frame appended to `out`.
pub fn encode_batch(
    out: &mut Vec<u8>,
    origin: Option<&Origin>,
    defs: &[(u32, Arc<str>, u16)],
    series: &[(u32, &[Point])],
) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    out.push(RECORD_BATCH);
    match origin {
        Some(o) => {
            out.push(1);
            put_varint(out, o.agent.len() as u64);
            out.extend_from_slice(o.agent.as_bytes());
            put_varint(out, o.stream);
            put_varint(out, o.seq);
        }
        None => out.push(0),
    }
    put_varint(out, defs.len() as u64);
    for (id, device, q) in defs {
        put_varint(out, u64::from(*id));
        put_varint(out, device.len() as u64);
        out.extend_from_slice(device.as_bytes());
        put_varint(out, u64::from(*q));
    }
    put_varint(out, series.len() as u64);
    for (id, pts) in series {
        put_varint(out, u64::from(*id));
        put_varint(out, pts.len() as u64);
        let mut prev_ts = 0i64;
        let mut prev_val: Option<u64> = None;
        let mut scale = 0usize;
        for p in pts.iter() {
            put_varint(out, zigzag(p.ts_ms.wrapping_sub(prev_ts)));
            prev_ts = p.ts_ms;
            let q = quality_code(p.quality);
            let bits = p.value.to_bits();
            if prev_val == Some(bits) {
                out.push(q | VALUE_SAME << 2);
                continue;
            }
            prev_val = Some(bits);
            match decimal(p.value, scale) {
                Some((k, i)) => {
                    scale = k;
                    out.push(q | (k as u8) << 2);
                    put_varint(out, zigzag(i));
                }
                None => {
                    out.push(q | VALUE_RAW << 2);
                    out.extend_from_slice(&p.value.to_le_bytes());
                }
            }
        }
    }
    let len = (out.len() - start - FRAME_HEADER) as u32;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// `v == i / 10^k` exactly for a small `k`, trying the previous point's scale first.
#[inline]
fn decimal(v: f64, hint: usize) -> Option<(usize, i64)> {
    let try_k = |k: usize| {
        let s = POW10[k];
        let x = (v * s).round();
        if x.abs() < 9.0e15 {
            let i = x as i64;
            if (i as f64 / s).to_bits() == v.to_bits() {
                return Some((k, i));
            }
        }
        None
    };
    try_k(hint).or_else(|| (0..POW10.len()).filter(|&k| k != hint).find_map(try_k))
}

/// A decoded batch record.
#[derive(Debug, PartialEq)]
pub struct BatchRecord {
    /// The write's origin.
    pub origin: Option<Origin>,
    /// New series ids: (id, device, quantity code).
    pub defs: Vec<(u32, Arc<str>, u16)>,
    /// Points by series id.
    pub series: Vec<(u32, Vec<Point>)>,
}

fn decode_batch(payload: &[u8]) -> Result<BatchRecord, Truncated> {
    let mut r = ByteReader::new(payload);
    if r.u8()? != RECORD_BATCH {
        return Err(Truncated);
    }
    let text = |r: &mut ByteReader<'_>| -> Result<Arc<str>, Truncated> {
        let n = r.varint()? as usize;
        let b = r.bytes(n)?;
        std::str::from_utf8(b).map(Arc::from).map_err(|_| Truncated)
    };
    let origin = match r.u8()? {
        0 => None,
        _ => Some(Origin {
            agent: text(&mut r)?,
            stream: r.varint()?,
            seq: r.varint()?,
        }),
    };
    let n = r.varint()?;
    let mut defs = Vec::new();
    for _ in 0..n {
        let id = u32::try_from(r.varint()?).map_err(|_| Truncated)?;
        let device = text(&mut r)?;
        let q = u16::try_from(r.varint()?).map_err(|_| Truncated)?;
        defs.push((id, device, q));
    }
    let n = r.varint()?;
    let mut series = Vec::new();
    for _ in 0..n {
        let id = u32::try_from(r.varint()?).map_err(|_| Truncated)?;
        let count = r.varint()? as usize;
        // Each point takes at least two bytes.
        let mut pts = Vec::with_capacity(count.min(r.rest().len() / 2));
        let mut ts = 0i64;
        let mut prev = 0.0f64;
        for _ in 0..count {
            ts = ts.wrapping_add(unzigzag(r.varint()?));
            let tag = r.u8()?;
            let quality = quality_from_code(tag & 3).ok_or(Truncated)?;
            let kind = tag >> 2;
            let value = match kind {
                VALUE_SAME => prev,
                VALUE_RAW => r.f64_le()?,
                k if (k as usize) < POW10.len() => unzigzag(r.varint()?) as f64 / POW10[k as usize],
                _ => return Err(Truncated),
            };
            prev = value;
            pts.push(Point {
                ts_ms: ts,
                value,
                quality,
            });
        }
        series.push((id, pts));
    }
    Ok(BatchRecord {
        origin,
        defs,
        series,
    })
}

/// How reading a segment ended.
#[derive(Debug, PartialEq, Eq)]
pub struct SegmentEnd {
    /// Bytes of the segment that hold whole, valid frames (header included).
    pub valid_len: u64,
    /// Bytes after `valid_len` (a torn or corrupt tail).
    pub garbage: u64,
}

/// Reads every valid record of a segment, in order.
pub fn read_segment(
    path: &Path,
    expect_id: u64,
    mut f: impl FnMut(BatchRecord),
) -> io::Result<SegmentEnd> {
    let data = std::fs::read(path)?;
    if data.len() < HEADER_LEN || &data[..8] != MAGIC || data[8..16] != expect_id.to_le_bytes() {
        // A segment whose header never became durable holds no acknowledged record.
        return Ok(SegmentEnd {
            valid_len: 0,
            garbage: data.len() as u64,
        });
    }
    let mut pos = HEADER_LEN;
    while data.len() - pos >= FRAME_HEADER {
        let mut b4 = [0u8; 4];
        b4.copy_from_slice(&data[pos..pos + 4]);
        let len = u32::from_le_bytes(b4) as usize;
        b4.copy_from_slice(&data[pos + 4..pos + 8]);
        let crc = u32::from_le_bytes(b4);
        if len == 0 || len > MAX_FRAME || data.len() - pos - FRAME_HEADER < len {
            break;
        }
        let payload = &data[pos + FRAME_HEADER..pos + FRAME_HEADER + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match decode_batch(payload) {
            Ok(rec) => f(rec),
            // A frame with a valid CRC that does not decode was written by a newer version or
            // is damaged in a way the CRC missed; stop here like for a torn frame.
            Err(Truncated) => break,
        }
        pos += FRAME_HEADER + len;
    }
    Ok(SegmentEnd {
        valid_len: pos as u64,
        garbage: (data.len() - pos) as u64,
    })
}

/// Cuts a segment to `len` bytes and syncs it.
pub fn truncate_segment(path: &Path, len: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::Quality;

    fn pts(n: usize) -> Vec<Point> {
        (0..n)
            .map(|i| Point {
                ts_ms: 1_700_000_000_000 + i as i64 * 1000,
                value: match i % 4 {
                    0 => 2.31,
                    1 => f64::NAN,
                    2 => 1.0 / 3.0,
                    _ => -17.0,
                },
                quality: if i % 5 == 0 {
                    Quality::Bad
                } else {
                    Quality::Good
                },
            })
            .collect()
    }

    #[test]
    fn records_round_trip_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 7).unwrap();
        let origin = Origin {
            agent: "a1".into(),
            stream: 9,
            seq: 3,
        };
        let p = pts(50);
        let mut buf = Vec::new();
        encode_batch(&mut buf, Some(&origin), &[(1, "dev".into(), 5)], &[(1, &p)]);
        encode_batch(&mut buf, None, &[], &[(1, &p[..3]), (2, &p[3..9])]);
        let whole = buf.len();
        encode_batch(&mut buf, None, &[], &[(1, &p)]);
        // The third frame is torn: only part of it reached the disk.
        seg.append(&buf[..whole + 20]).unwrap();
        let path = segment_path(dir.path(), 7);
        let mut got = Vec::new();
        let end = read_segment(&path, 7, |r| got.push(r)).unwrap();
        assert_eq!(end.valid_len, (HEADER_LEN + whole) as u64);
        assert_eq!(end.garbage, 20);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].origin.as_ref(), Some(&origin));
        assert_eq!(got[0].defs, vec![(1, Arc::from("dev"), 5)]);
        let (id, back) = &got[0].series[0];
        assert_eq!(*id, 1);
        for (a, b) in p.iter().zip(back) {
            assert_eq!(a.ts_ms, b.ts_ms);
            assert_eq!(a.value.to_bits(), b.value.to_bits());
            assert_eq!(a.quality, b.quality);
        }
        assert_eq!(got[1].series[1].1.len(), 6);
        truncate_segment(&path, end.valid_len).unwrap();
        let end = read_segment(&path, 7, |_| {}).unwrap();
        assert_eq!(end.garbage, 0);
        assert_eq!(list_segments(dir.path()).unwrap(), vec![7]);
        // A flipped bit ends reading at that frame.
        let mut data = std::fs::read(&path).unwrap();
        let n = data.len();
        data[n - 5] ^= 1;
        std::fs::write(&path, &data).unwrap();
        let mut count = 0;
        read_segment(&path, 7, |_| count += 1).unwrap();
        assert_eq!(count, 1);
    }
}
