//! JPEG snapshots of the moment an event starts, encoded straight from the decoder's YUV planes.

use bytes::Bytes;
use jpeg_encoder::{ColorType, Encoder, ImageBuffer, JpegColorType, SamplingFactor};

use super::picture::{Picture, scale_picture};

/// A JPEG picture and its exact size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The JPEG file.
    pub jpeg: Bytes,
    /// Width in pixels, as written in the JPEG.
    pub width: u32,
    /// Height in pixels, as written in the JPEG.
    pub height: u32,
}

/// Why a snapshot could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The encoder refused the picture.
    #[error("jpeg encoder: {0}")]
    Encode(#[from] jpeg_encoder::EncodingError),
    /// Larger than a JPEG can hold.
    #[error("picture {0}x{1} is too large for a JPEG")]
    TooLarge(usize, usize),
}

/// The size a picture of `width` x `height` gets under `max_width`: the aspect is kept and the
/// height rounded to the nearest pixel (at least 1).
pub fn snapshot_size(width: usize, height: usize, max_width: Option<u32>) -> (usize, usize) {
    match max_width {
        Some(max) if (max as usize) < width => {
            let w = max as usize;
            let h = ((height * w) as f64 / width as f64).round().max(1.0) as usize;
            (w, h)
        }
        _ => (width, height),
    }
}

/// Encodes `pic` as a JPEG of quality `quality`, scaled down to `max_width` if wider.
/// A picture without chroma (a grayscale JPEG source) is encoded as grayscale.
pub fn encode_snapshot(
    pic: &Picture<'_>,
    max_width: Option<u32>,
    quality: u8,
) -> Result<Snapshot, SnapshotError> {
    let (w, h) = snapshot_size(pic.width(), pic.height(), max_width);
    if (w, h) == (pic.width(), pic.height()) {
        return encode_planes(pic, quality);
    }
    if w % 2 == 0 && h % 2 == 0 {
        let scaled = scale_picture(pic, w, h);
        return encode_planes(&scaled.picture(), quality);
    }
    // Odd target sizes: scale luma exactly and chroma to the rounded-down half; the encoder
    // reads chroma through a coordinate map, so any chroma size works.
    let mut y = vec![0u8; w * h];
    super::picture::AreaScaler::new(pic.width(), pic.height(), w, h)
        .scale(|r| pic.y_row(r), &mut y);
    let luma = Picture::new(w, h, &y, w, None).ok_or(SnapshotError::TooLarge(w, h))?;
    match pic.chroma() {
        None => encode_planes(&luma, quality),
        Some(c) => {
            let (cw, ch) = ((w / 2).max(1).min(c.width), (h / 2).max(1).min(c.height));
            let mut u = vec![0u8; cw * ch];
            let mut v = vec![0u8; cw * ch];
            let mut s = super::picture::AreaScaler::new(c.width, c.height, cw, ch);
            s.scale(|r| &c.u[r * c.stride..], &mut u);
            s.scale(|r| &c.v[r * c.stride..], &mut v);
            let chroma = super::picture::Chroma {
                u: &u,
                v: &v,
                stride: cw,
                width: cw,
                height: ch,
            };
            let full =
                Picture::new(w, h, &y, w, Some(chroma)).ok_or(SnapshotError::TooLarge(w, h))?;
            encode_planes(&full, quality)
        }
    }
}

fn encode_planes(pic: &Picture<'_>, quality: u8) -> Result<Snapshot, SnapshotError> {
    let (w, h) = (pic.width(), pic.height());
    let (w16, h16) = match (u16::try_from(w), u16::try_from(h)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return Err(SnapshotError::TooLarge(w, h)),
    };
    let mut out = Vec::with_capacity(w * h / 8);
    let mut enc = Encoder::new(&mut out, quality);
    match pic.chroma() {
        None => enc.encode(&packed_luma(pic), w16, h16, ColorType::Luma)?,
        Some(c) => {
            // Keep the source's 4:2:0 subsampling: no chroma detail is invented or lost twice.
            if c.width * 2 >= w && c.height * 2 >= h && c.width < w && c.height < h {
                enc.set_sampling_factor(SamplingFactor::F_2_2);
            }
            enc.encode_image(Planes {
                pic,
                col_map: (0..w).map(|x| x * c.width / w).collect(),
                w: w16,
                h: h16,
            })?;
        }
    }
    Ok(Snapshot {
        jpeg: Bytes::from(out),
        width: w as u32,
        height: h as u32,
    })
}

fn packed_luma(pic: &Picture<'_>) -> Vec<u8> {
    let mut y = Vec::with_capacity(pic.width() * pic.height());
    for r in 0..pic.height() {
        y.extend_from_slice(pic.y_row(r));
    }
    y
}

/// Feeds YCbCr rows from the planes to the encoder.
struct Planes<'p, 'a> {
    pic: &'p Picture<'a>,
    col_map: Vec<usize>,
    w: u16,
    h: u16,
}

impl ImageBuffer for Planes<'_, '_> {
    fn get_jpeg_color_type(&self) -> JpegColorType {
        JpegColorType::Ycbcr
    }

    fn width(&self) -> u16 {
        self.w
    }

    fn height(&self) -> u16 {
        self.h
    }

    fn fill_buffers(&self, y: u16, buffers: &mut [Vec<u8>; 4]) {
        let row = y as usize;
        buffers[0].extend_from_slice(self.pic.y_row(row));
        if let Some(c) = self.pic.chroma() {
            let cr = (row * c.height / self.pic.height()).min(c.height - 1);
            let u = &c.u[cr * c.stride..cr * c.stride + c.width];
            let v = &c.v[cr * c.stride..cr * c.stride + c.width];
            buffers[1].extend(self.col_map.iter().map(|&x| u[x]));
            buffers[2].extend(self.col_map.iter().map(|&x| v[x]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::picture::I420;
    use super::*;

    fn decode(jpeg: &[u8]) -> (usize, usize, Vec<u8>) {
        let opts = zune_jpeg::zune_core::options::DecoderOptions::default()
            .jpeg_set_out_colorspace(zune_jpeg::zune_core::colorspace::ColorSpace::RGB);
        let mut d = zune_jpeg::JpegDecoder::new_with_options(jpeg, opts);
        let rgb = d.decode().unwrap();
        let (w, h) = d.dimensions().unwrap();
        (w, h, rgb)
    }

    #[test]
    fn sizes_keep_aspect() {
        assert_eq!(snapshot_size(1280, 720, None), (1280, 720));
        assert_eq!(snapshot_size(1280, 720, Some(2000)), (1280, 720));
        assert_eq!(snapshot_size(1280, 720, Some(640)), (640, 360));
        assert_eq!(snapshot_size(1920, 1080, Some(500)), (500, 281));
        assert_eq!(snapshot_size(1000, 1, Some(10)), (10, 1));
    }

    #[test]
    fn encodes_exact_sizes_with_colour() {
        // A red-ish picture (Y=82, U=90, V=240 is saturated red in BT.601).
        let src = I420::filled(1280, 720, 82, 90, 240);
        for (max, want) in [
            (None, (1280, 720)),
            (Some(640), (640, 360)),
            (Some(500), (500, 281)),
            (Some(333), (333, 187)),
        ] {
            let s = encode_snapshot(&src.picture(), max, 80).unwrap();
            assert_eq!((s.width as usize, s.height as usize), want);
            let (w, h, rgb) = decode(&s.jpeg);
            assert_eq!((w, h), want, "{max:?}");
            let mid = (h / 2 * w + w / 2) * 3;
            let (r, g, b) = (rgb[mid], rgb[mid + 1], rgb[mid + 2]);
            assert!(r > 200 && g < 60 && b < 60, "{max:?}: {r} {g} {b}");
        }
    }

    #[test]
    fn grayscale_sources_stay_grayscale() {
        let y = vec![77u8; 64 * 48];
        let pic = Picture::new(64, 48, &y, 64, None).unwrap();
        let s = encode_snapshot(&pic, Some(31), 90).unwrap();
        assert_eq!((s.width, s.height), (31, 23));
        let (w, h, rgb) = decode(&s.jpeg);
        assert_eq!((w, h), (31, 23));
        assert!((rgb[0] as i32 - 77).abs() <= 2);
    }
}
