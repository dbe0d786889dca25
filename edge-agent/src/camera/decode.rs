//! Decoding: H.264 with OpenH264 (built from source, no system library), JPEG with zune-jpeg;
//! and the framing of H.264 Annex-B and Motion JPEG byte streams into pictures.

use zune_jpeg::JpegDecoder;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

use super::picture::{Chroma, Picture};

/// Why a picture could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// OpenH264 refused the access unit.
    #[error("h264: {0}")]
    H264(String),
    /// zune-jpeg refused the JPEG.
    #[error("jpeg: {0}")]
    Jpeg(String),
    /// The decoder returned planes that do not match its own size.
    #[error("decoder returned inconsistent planes ({0}x{1})")]
    BadPlanes(usize, usize),
}

/// Which H.264 decoder a camera uses (`h264_decoder` setting).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum H264Backend {
    /// libavcodec when the agent was built with the `ffmpeg` feature, else OpenH264.
    #[default]
    Auto,
    /// Cisco's OpenH264, compiled into the agent (no system library).
    Openh264,
    /// FFmpeg's libavcodec, linked from the system (`ffmpeg` feature): about 3-4 times less
    /// CPU per picture on this machine (docs/PERFORMANCE.md).
    Libavcodec,
}

impl H264Backend {
    /// Whether this build can decode with the backend.
    pub fn available(self) -> bool {
        self != H264Backend::Libavcodec || cfg!(feature = "ffmpeg")
    }
}

enum Inner {
    OpenH264(openh264::decoder::Decoder),
    #[cfg(feature = "ffmpeg")]
    Libav(libav::Libav),
}

/// An H.264 decoder for one stream. Decoding is single-threaded and runs on the caller's
/// thread (the camera's analysis thread), never on the async I/O threads.
pub struct H264Decoder {
    inner: Inner,
}

impl H264Decoder {
    /// A fresh decoder with the default backend.
    pub fn new() -> Result<H264Decoder, DecodeError> {
        H264Decoder::with_backend(H264Backend::Auto)
    }

    /// A fresh decoder with the given backend.
    pub fn with_backend(backend: H264Backend) -> Result<H264Decoder, DecodeError> {
        let inner = match backend {
            #[cfg(feature = "ffmpeg")]
            H264Backend::Auto | H264Backend::Libavcodec => Inner::Libav(libav::Libav::new()?),
            #[cfg(not(feature = "ffmpeg"))]
            H264Backend::Libavcodec => {
                return Err(DecodeError::H264(
                    "this agent was built without the `ffmpeg` feature".into(),
                ));
            }
            _ => Inner::OpenH264(
                openh264::decoder::Decoder::new().map_err(|e| DecodeError::H264(e.to_string()))?,
            ),
        };
        Ok(H264Decoder { inner })
    }

    /// Decodes one access unit (Annex-B, parameter sets inline) and shows the picture to `f`
    /// (it lives in the decoder's buffers). `Ok(None)` when the decoder needs more data
    /// (parameter sets only, or a reordering delay).
    pub fn decode<R>(
        &mut self,
        annex_b: &[u8],
        f: impl FnOnce(&Picture<'_>) -> R,
    ) -> Result<Option<R>, DecodeError> {
        match &mut self.inner {
            Inner::OpenH264(d) => {
                use openh264::formats::YUVSource;
                let Some(yuv) = d
                    .decode(annex_b)
                    .map_err(|e| DecodeError::H264(e.to_string()))?
                else {
                    return Ok(None);
                };
                let (w, h) = yuv.dimensions();
                let (ys, us, _vs) = yuv.strides();
                let (cw, ch) = yuv.dimensions_uv();
                let chroma = Chroma {
                    u: yuv.u(),
                    v: yuv.v(),
                    stride: us,
                    width: cw,
                    height: ch,
                };
                let pic = Picture::new(w, h, yuv.y(), ys, Some(chroma))
                    .ok_or(DecodeError::BadPlanes(w, h))?;
                Ok(Some(f(&pic)))
            }
            #[cfg(feature = "ffmpeg")]
            Inner::Libav(d) => d.decode(annex_b, f),
        }
    }
}

#[cfg(feature = "ffmpeg")]
mod libav {
    //! libavcodec through `ffmpeg-next`: one single-threaded decoder per stream (the streams
    //! are the parallelism; frame threading would add a picture of latency).
    use ffmpeg_next as ff;

    use super::{Chroma, DecodeError, Picture};

    pub(super) struct Libav {
        dec: ff::decoder::Video,
        frame: ff::frame::Video,
    }

    fn err(e: ff::Error) -> DecodeError {
        DecodeError::H264(format!("libavcodec: {e}"))
    }

    impl Libav {
        pub(super) fn new() -> Result<Libav, DecodeError> {
            static INIT: std::sync::Once = std::sync::Once::new();
            INIT.call_once(|| {
                let _ = ff::init();
                ff::util::log::set_level(ff::util::log::Level::Fatal);
            });
            let codec = ff::decoder::find(ff::codec::Id::H264)
                .ok_or_else(|| DecodeError::H264("libavcodec has no H.264 decoder".into()))?;
            let mut ctx = ff::codec::context::Context::new_with_codec(codec);
            ctx.set_threading(ff::threading::Config {
                kind: ff::threading::Type::Slice,
                count: 1,
                ..Default::default()
            });
            let dec = ctx.decoder().video().map_err(err)?;
            Ok(Libav {
                dec,
                frame: ff::frame::Video::empty(),
            })
        }

        pub(super) fn decode<R>(
            &mut self,
            annex_b: &[u8],
            f: impl FnOnce(&Picture<'_>) -> R,
        ) -> Result<Option<R>, DecodeError> {
            let packet = ff::Packet::copy(annex_b);
            match self.dec.send_packet(&packet) {
                Ok(()) => {}
                // The decoder holds a picture to hand out first: take it below.
                Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => {}
                Err(e) => return Err(err(e)),
            }
            match self.dec.receive_frame(&mut self.frame) {
                Ok(()) => {}
                Err(ff::Error::Other { errno }) if errno == ff::util::error::EAGAIN => {
                    return Ok(None);
                }
                Err(e) => return Err(err(e)),
            }
            let fr = &self.frame;
            let (w, h) = (fr.width() as usize, fr.height() as usize);
            let planar_420 = matches!(
                fr.format(),
                ff::format::Pixel::YUV420P | ff::format::Pixel::YUVJ420P
            );
            if !planar_420 || fr.planes() < 3 || fr.stride(1) != fr.stride(2) {
                return Err(DecodeError::H264(format!(
                    "unsupported pixel format {:?}",
                    fr.format()
                )));
            }
            let chroma = Chroma {
                u: fr.data(1),
                v: fr.data(2),
                stride: fr.stride(1),
                width: w.div_ceil(2),
                height: h.div_ceil(2),
            };
            let pic = Picture::new(w, h, fr.data(0), fr.stride(0), Some(chroma))
                .ok_or(DecodeError::BadPlanes(w, h))?;
            Ok(Some(f(&pic)))
        }
    }
}

/// The size of a JPEG from its header, without decoding it.
pub fn jpeg_size(jpeg: &[u8]) -> Result<(usize, usize), DecodeError> {
    let mut d = JpegDecoder::new(jpeg);
    d.decode_headers()
        .map_err(|e| DecodeError::Jpeg(e.to_string()))?;
    d.dimensions()
        .ok_or_else(|| DecodeError::Jpeg("no size in header".into()))
}

/// Largest JPEG side accepted from a camera (a garbage header must not allocate gigabytes).
const MAX_JPEG_SIDE: usize = 8192;

fn jpeg_options(space: ColorSpace) -> DecoderOptions {
    // Strict: a truncated or corrupt picture is refused (counted lost) instead of being
    // completed with grey, which would look like motion.
    DecoderOptions::default()
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(space)
        .set_max_width(MAX_JPEG_SIDE)
        .set_max_height(MAX_JPEG_SIDE)
}

/// Whether the JPEG ends with its EOI marker (some cameras pad a few bytes after it). A
/// picture cut short decodes "successfully" into grey rows, which would look like motion.
fn complete(jpeg: &[u8]) -> Result<(), DecodeError> {
    let tail = &jpeg[jpeg.len().saturating_sub(32)..];
    if tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        Ok(())
    } else {
        Err(DecodeError::Jpeg("truncated (no end marker)".into()))
    }
}

/// Decodes only the luma of a JPEG (all detection needs): `(width, height, packed Y)`.
pub fn decode_jpeg_luma(jpeg: &[u8]) -> Result<(usize, usize, Vec<u8>), DecodeError> {
    complete(jpeg)?;
    let mut d = JpegDecoder::new_with_options(jpeg, jpeg_options(ColorSpace::Luma));
    let y = d.decode().map_err(|e| DecodeError::Jpeg(e.to_string()))?;
    let (w, h) = d
        .dimensions()
        .ok_or_else(|| DecodeError::Jpeg("no size".into()))?;
    if y.len() < w * h {
        return Err(DecodeError::BadPlanes(w, h));
    }
    Ok((w, h, y))
}

/// A JPEG decoded to full-resolution planes (for scaling a snapshot down).
pub struct JpegPlanes {
    w: usize,
    h: usize,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

impl JpegPlanes {
    /// Decodes a JPEG to planar 4:4:4 YCbCr.
    pub fn decode(jpeg: &[u8]) -> Result<JpegPlanes, DecodeError> {
        complete(jpeg)?;
        let mut d = JpegDecoder::new_with_options(jpeg, jpeg_options(ColorSpace::YCbCr));
        let px = d.decode().map_err(|e| DecodeError::Jpeg(e.to_string()))?;
        let (w, h) = d
            .dimensions()
            .ok_or_else(|| DecodeError::Jpeg("no size".into()))?;
        let n = w * h;
        if px.len() < n * 3 {
            // Grayscale JPEGs decode to one channel whatever was asked.
            if px.len() >= n {
                return Ok(JpegPlanes {
                    w,
                    h,
                    y: px[..n].to_vec(),
                    u: vec![128; n],
                    v: vec![128; n],
                });
            }
            return Err(DecodeError::BadPlanes(w, h));
        }
        let (mut y, mut u, mut v) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for p in px.chunks_exact(3).take(n) {
            y.push(p[0]);
            u.push(p[1]);
            v.push(p[2]);
        }
        Ok(JpegPlanes { w, h, y, u, v })
    }

    /// The picture view.
    pub fn picture(&self) -> Option<Picture<'_>> {
        let chroma = Chroma {
            u: &self.u,
            v: &self.v,
            stride: self.w,
            width: self.w,
            height: self.h,
        };
        Picture::new(self.w, self.h, &self.y, self.w, Some(chroma))
    }
}

/// Splits an H.264 Annex-B byte stream into access units (one picture each, with the
/// parameter sets and SEI that precede it), following ITU-T H.264 7.4.1.2.3.
pub fn annex_b_access_units(stream: &[u8]) -> Vec<(usize, usize)> {
    let nals = annex_b_nal_starts(stream);
    let mut units = Vec::new();
    let mut unit_start: Option<usize> = None;
    let mut seen_vcl = false;
    for (k, &(start_code, payload)) in nals.iter().enumerate() {
        let end = nals.get(k + 1).map_or(stream.len(), |n| n.0);
        if payload >= end {
            continue;
        }
        let header = stream[payload];
        let kind = header & 0x1f;
        let is_vcl = (1..=5).contains(&kind);
        // A new picture begins at an AUD, SPS, PPS, SEI or prefix NAL after a picture, or at a
        // slice whose first_mb_in_slice is 0 (its first coded bit is 1) after a picture.
        let starts_new = seen_vcl
            && match kind {
                9 | 7 | 8 | 6 | 14..=18 => true,
                1..=5 => stream.get(payload + 1).is_some_and(|b| b & 0x80 != 0),
                _ => false,
            };
        if starts_new {
            if let Some(s) = unit_start {
                units.push((s, start_code));
            }
            unit_start = Some(start_code);
            seen_vcl = false;
        }
        if unit_start.is_none() {
            unit_start = Some(start_code);
        }
        seen_vcl |= is_vcl;
    }
    if let Some(s) = unit_start
        && seen_vcl
    {
        units.push((s, stream.len()));
    }
    units
}

/// `(start code offset, NAL header offset)` of every NAL unit.
fn annex_b_nal_starts(s: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 3 <= s.len() {
        if s[i] == 0 && s[i + 1] == 0 && s[i + 2] == 1 {
            let sc = if i > 0 && s[i - 1] == 0 { i - 1 } else { i };
            out.push((sc, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    out
}

/// Whether an access unit holds an IDR slice (a picture decodable on its own).
pub fn annex_b_is_keyframe(unit: &[u8]) -> bool {
    annex_b_nal_starts(unit)
        .iter()
        .any(|&(_, p)| unit.get(p).is_some_and(|h| h & 0x1f == 5))
}

/// Whether an access unit is disposable: none of its slices is a reference picture
/// (`nal_ref_idc` 0), so skipping it breaks no later picture.
pub fn annex_b_is_disposable(unit: &[u8]) -> bool {
    let mut any_vcl = false;
    for (_, p) in annex_b_nal_starts(unit) {
        let Some(&h) = unit.get(p) else { continue };
        if (1..=5).contains(&(h & 0x1f)) {
            any_vcl = true;
            if h & 0x60 != 0 {
                return false;
            }
        }
    }
    any_vcl
}

/// Splits a Motion JPEG stream (concatenated JPEG files) into pictures by walking the JPEG
/// markers: segment lengths are followed, so an embedded thumbnail cannot end a picture early.
pub fn mjpeg_pictures(stream: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 1 < stream.len() {
        if stream[i] != 0xFF || stream[i + 1] != 0xD8 {
            i += 1;
            continue;
        }
        match jpeg_end(stream, i) {
            Some(end) => {
                out.push((i, end));
                i = end;
            }
            None => break,
        }
    }
    out
}

/// The end (one past EOI) of the JPEG starting at `start` (its SOI).
fn jpeg_end(s: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 2;
    loop {
        // Markers may be padded with extra 0xFF bytes.
        while s.get(i)? == &0xFF && s.get(i + 1)? == &0xFF {
            i += 1;
        }
        if *s.get(i)? != 0xFF {
            return None;
        }
        let marker = *s.get(i + 1)?;
        match marker {
            0xD9 => return Some(i + 2),
            0x01 | 0xD0..=0xD7 => i += 2,
            0xDA => {
                let len = u16::from_be_bytes([*s.get(i + 2)?, *s.get(i + 3)?]) as usize;
                i += 2 + len;
                // Entropy-coded data: 0xFF is followed by 0x00 (stuffing) or a restart marker.
                loop {
                    if *s.get(i)? == 0xFF {
                        let next = *s.get(i + 1)?;
                        if next == 0x00 || (0xD0..=0xD7).contains(&next) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
            }
            _ => {
                let len = u16::from_be_bytes([*s.get(i + 2)?, *s.get(i + 3)?]) as usize;
                if len < 2 {
                    return None;
                }
                i += 2 + len;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annex_b_units() {
        // SPS, PPS, IDR slice (first_mb 0), then a P slice in two slices, then an AUD + P slice.
        let mut s = Vec::new();
        for (nal, first) in [
            (0x67u8, 0x42u8),
            (0x68, 0xce),
            (0x65, 0x88),
            (0x41, 0x9a),
            (0x41, 0x10),
            (0x09, 0xf0),
            (0x01, 0x9a),
        ] {
            s.extend_from_slice(&[0, 0, 0, 1, nal, first, 0x11, 0x22]);
        }
        let units = annex_b_access_units(&s);
        assert_eq!(units, vec![(0, 24), (24, 40), (40, 56)]);
        assert!(annex_b_is_keyframe(&s[units[0].0..units[0].1]));
        assert!(!annex_b_is_keyframe(&s[units[1].0..units[1].1]));
        assert!(!annex_b_is_disposable(&s[units[1].0..units[1].1]));
        assert!(annex_b_is_disposable(&s[units[2].0..units[2].1]));
        assert!(annex_b_access_units(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn mjpeg_split_follows_markers() {
        let enc = |v: u8| {
            let mut out = Vec::new();
            jpeg_encoder::Encoder::new(&mut out, 80)
                .encode(&[v; 16 * 8], 16, 8, jpeg_encoder::ColorType::Luma)
                .unwrap();
            out
        };
        let (a, b) = (enc(10), enc(200));
        let mut s = a.clone();
        s.extend_from_slice(&b);
        s.extend_from_slice(&a[..a.len() / 2]); // truncated tail: ignored
        let pics = mjpeg_pictures(&s);
        assert_eq!(pics, vec![(0, a.len()), (a.len(), a.len() + b.len())]);
        let (w, h, y) = decode_jpeg_luma(&s[pics[1].0..pics[1].1]).unwrap();
        assert_eq!((w, h), (16, 8));
        assert!(y.iter().all(|&p| (p as i32 - 200).abs() <= 2));
        assert!(decode_jpeg_luma(b"not a jpeg").is_err());
        assert!(decode_jpeg_luma(&b[..b.len() / 2]).is_err());
    }
}
