//! Snapshot files: checking that a payload is a whole JPEG, reading its size, writing it
//! durably.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Why a snapshot payload was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JpegError {
    /// Does not start with the JPEG start-of-image marker.
    #[error("not a JPEG (no start-of-image marker)")]
    NotJpeg,
    /// Does not end with the end-of-image marker (cut off in transit or at the camera).
    #[error("truncated JPEG (no end-of-image marker)")]
    Truncated,
    /// No frame header with the picture's size.
    #[error("JPEG without a frame header")]
    NoFrame,
    /// A zero width or height.
    #[error("JPEG of zero size")]
    Empty,
}

/// Width and height of a whole JPEG (baseline, progressive or lossless), from its frame header.
/// Refuses what does not start with SOI and end with EOI.
pub fn jpeg_size(b: &[u8]) -> Result<(u32, u32), JpegError> {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return Err(JpegError::NotJpeg);
    }
    // Encoders may pad after EOI; accept trailing zero bytes only.
    let end = b.iter().rposition(|&x| x != 0).unwrap_or(0);
    if end < 1 || b[end - 1] != 0xFF || b[end] != 0xD9 {
        return Err(JpegError::Truncated);
    }
    let mut i = 2;
    while i + 3 < b.len() {
        if b[i] != 0xFF {
            return Err(JpegError::NoFrame);
        }
        let m = b[i + 1];
        if m == 0xFF {
            // Fill byte.
            i += 1;
            continue;
        }
        if (0xD0..=0xD7).contains(&m) || m == 0x01 {
            i += 2;
            continue;
        }
        if m == 0xD9 || m == 0xDA {
            // End of image, or the scan began without a frame header.
            return Err(JpegError::NoFrame);
        }
        let len = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
        let is_sof = matches!(m, 0xC0..=0xCF) && !matches!(m, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            let f = b.get(i + 4..i + 9).ok_or(JpegError::NoFrame)?;
            let h = u16::from_be_bytes([f[1], f[2]]) as u32;
            let w = u16::from_be_bytes([f[3], f[4]]) as u32;
            if w == 0 || h == 0 {
                return Err(JpegError::Empty);
            }
            return Ok((w, h));
        }
        if len < 2 {
            return Err(JpegError::NoFrame);
        }
        i += 2 + len;
    }
    Err(JpegError::NoFrame)
}

/// Where an agent's snapshot of an event lives under the snapshot directory. Agent ids and
/// event ids are `[A-Za-z0-9_.-]` without a leading dot, so neither can leave the directory.
pub fn file_of(dir: &Path, agent: &str, event: &str) -> PathBuf {
    dir.join(agent).join(format!("{event}.jpg"))
}

/// Writes `bytes` to `path` so that after a crash it is either whole or absent: a temporary
/// file, fsync, rename, fsync of the directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("snapshot path without a directory"))?;
    let fresh_dir = !dir.exists();
    std::fs::create_dir_all(dir)?;
    if fresh_dir && let Some(parent) = dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    let tmp = path.with_extension("jpg.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2x1 baseline JPEG header walk: SOI, APP0, DQT-less SOF0, EOI (enough for the size).
    fn tiny(w: u16, h: u16) -> Vec<u8> {
        let mut b = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00];
        b.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 8]);
        b.extend_from_slice(&h.to_be_bytes());
        b.extend_from_slice(&w.to_be_bytes());
        b.extend_from_slice(&[1, 1, 0x11, 0]);
        b.extend_from_slice(&[0xFF, 0xD9]);
        b
    }

    #[test]
    fn sizes_and_refusals() {
        assert_eq!(jpeg_size(&tiny(640, 360)), Ok((640, 360)));
        let mut padded = tiny(2, 1);
        padded.extend_from_slice(&[0, 0]);
        assert_eq!(jpeg_size(&padded), Ok((2, 1)));
        assert_eq!(jpeg_size(b"GIF89a......"), Err(JpegError::NotJpeg));
        let t = tiny(640, 360);
        assert_eq!(jpeg_size(&t[..t.len() - 2]), Err(JpegError::Truncated));
        assert_eq!(jpeg_size(&tiny(0, 5)), Err(JpegError::Empty));
        assert_eq!(
            jpeg_size(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2, 0xFF, 0xD9]),
            Err(JpegError::NoFrame)
        );
        // Garbage never panics.
        for n in 0..64u8 {
            let mut g = vec![0xFF, 0xD8];
            g.extend((0..n).map(|i| i.wrapping_mul(37)));
            g.extend_from_slice(&[0xFF, 0xD9]);
            let _ = jpeg_size(&g);
        }
    }

    #[test]
    fn durable_write_replaces_whole_files() {
        let d = tempfile::tempdir().unwrap();
        let p = file_of(d.path(), "AG-1", "CAM-1.5.1");
        write_durably(&p, b"one").unwrap();
        write_durably(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!p.with_extension("jpg.tmp").exists());
    }
}
