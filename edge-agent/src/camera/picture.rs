//! Decoded pictures: a borrowed planar YUV view, an owned 4:2:0 buffer, and area scaling.
//!
//! Decoders hand out planes with their own strides; the detector reads only the luma plane
//! and the snapshot encoder reads all three, so nothing is ever converted to RGB.

/// The two chroma planes of a picture (any subsampling; 4:2:0 from H.264).
#[derive(Clone, Copy, Debug)]
pub struct Chroma<'a> {
    /// Cb plane.
    pub u: &'a [u8],
    /// Cr plane.
    pub v: &'a [u8],
    /// Bytes from one chroma row to the next (both planes).
    pub stride: usize,
    /// Chroma plane width.
    pub width: usize,
    /// Chroma plane height.
    pub height: usize,
}

/// A borrowed view of a decoded picture. Built only through [`Picture::new`], which checks that
/// every plane holds its rows, so readers can index without further checks.
#[derive(Clone, Copy, Debug)]
pub struct Picture<'a> {
    width: usize,
    height: usize,
    y: &'a [u8],
    y_stride: usize,
    chroma: Option<Chroma<'a>>,
}

fn plane_fits(len: usize, stride: usize, w: usize, h: usize) -> bool {
    w > 0
        && h > 0
        && stride >= w
        && (h - 1).checked_mul(stride).and_then(|o| o.checked_add(w)) <= Some(len)
}

impl<'a> Picture<'a> {
    /// A picture of `width` x `height` luma pixels, with chroma if the source has colour.
    /// `None` if a plane is too short for its rows or a size is zero.
    pub fn new(
        width: usize,
        height: usize,
        y: &'a [u8],
        y_stride: usize,
        chroma: Option<Chroma<'a>>,
    ) -> Option<Picture<'a>> {
        if !plane_fits(y.len(), y_stride, width, height) {
            return None;
        }
        if let Some(c) = &chroma
            && (!plane_fits(c.u.len(), c.stride, c.width, c.height)
                || !plane_fits(c.v.len(), c.stride, c.width, c.height)
                || c.width > width
                || c.height > height)
        {
            return None;
        }
        Some(Picture {
            width,
            height,
            y,
            y_stride,
            chroma,
        })
    }

    /// Luma width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Luma height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// One luma row.
    pub fn y_row(&self, row: usize) -> &'a [u8] {
        let start = row * self.y_stride;
        &self.y[start..start + self.width]
    }

    /// The chroma planes, if any.
    pub fn chroma(&self) -> Option<&Chroma<'a>> {
        self.chroma.as_ref()
    }
}

/// An owned 4:2:0 picture (planar Y, U, V; even sizes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct I420 {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl I420 {
    /// A picture filled with one colour.
    pub fn filled(width: usize, height: usize, y: u8, u: u8, v: u8) -> I420 {
        let (width, height) = (width.max(2) & !1, height.max(2) & !1);
        let luma = width * height;
        let mut data = vec![y; luma + luma / 2];
        data[luma..luma + luma / 4].fill(u);
        data[luma + luma / 4..].fill(v);
        I420 {
            width,
            height,
            data,
        }
    }

    /// Width.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The planes, mutable: (Y, U, V).
    pub fn planes_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let luma = self.width * self.height;
        let (y, uv) = self.data.split_at_mut(luma);
        let (u, v) = uv.split_at_mut(luma / 4);
        (y, u, v)
    }

    /// The planes: (Y, U, V).
    pub fn planes(&self) -> (&[u8], &[u8], &[u8]) {
        let luma = self.width * self.height;
        let (y, uv) = self.data.split_at(luma);
        let (u, v) = uv.split_at(luma / 4);
        (y, u, v)
    }

    /// The whole buffer (Y, then U, then V), e.g. for an encoder.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// A view for the detector and the snapshot encoder.
    pub fn picture(&self) -> Picture<'_> {
        let (y, u, v) = self.planes();
        Picture {
            width: self.width,
            height: self.height,
            y,
            y_stride: self.width,
            chroma: Some(Chroma {
                u,
                v,
                stride: self.width / 2,
                width: self.width / 2,
                height: self.height / 2,
            }),
        }
    }
}

/// Area-average scaling of one plane to a smaller (or equal) size: every output pixel is the
/// mean of the source pixels it covers, so downscaling also removes sensor noise.
/// `src` rows are `src_stride` apart; `dst` is packed (`dst_w * dst_h`).
pub struct AreaScaler {
    src_w: usize,
    src_h: usize,
    dst_w: usize,
    dst_h: usize,
    /// Source column range start for each output column (`dst_w + 1` entries).
    cols: Vec<usize>,
    /// Source row range start for each output row (`dst_h + 1` entries).
    rows: Vec<usize>,
    sums: Vec<u32>,
}

impl AreaScaler {
    /// A scaler from `src_w x src_h` to `dst_w x dst_h` (each destination side at most the
    /// source's and at least 1).
    pub fn new(src_w: usize, src_h: usize, dst_w: usize, dst_h: usize) -> AreaScaler {
        let dst_w = dst_w.clamp(1, src_w.max(1));
        let dst_h = dst_h.clamp(1, src_h.max(1));
        let edges = |src: usize, dst: usize| (0..=dst).map(|i| i * src / dst).collect::<Vec<_>>();
        AreaScaler {
            src_w,
            src_h,
            dst_w,
            dst_h,
            cols: edges(src_w, dst_w),
            rows: edges(src_h, dst_h),
            sums: vec![0; dst_w],
        }
    }

    /// Output size.
    pub fn dst_size(&self) -> (usize, usize) {
        (self.dst_w, self.dst_h)
    }

    /// Whether this scaler was made for a source of this size.
    pub fn fits(&self, src_w: usize, src_h: usize) -> bool {
        self.src_w == src_w && self.src_h == src_h
    }

    /// Scales a plane whose rows `row(i)` returns (each at least `src_w` long).
    pub fn scale<'s>(&mut self, row: impl Fn(usize) -> &'s [u8], dst: &mut [u8]) {
        for oy in 0..self.dst_h {
            let (r0, r1) = (self.rows[oy], self.rows[oy + 1]);
            self.sums.fill(0);
            for r in r0..r1 {
                let line = &row(r)[..self.src_w];
                for (ox, sum) in self.sums.iter_mut().enumerate() {
                    let (c0, c1) = (self.cols[ox], self.cols[ox + 1]);
                    *sum += line[c0..c1].iter().map(|&p| p as u32).sum::<u32>();
                }
            }
            let rows = (r1 - r0) as u32;
            let out = &mut dst[oy * self.dst_w..(oy + 1) * self.dst_w];
            for (ox, o) in out.iter_mut().enumerate() {
                let n = rows * (self.cols[ox + 1] - self.cols[ox]) as u32;
                *o = ((self.sums[ox] + n / 2) / n) as u8;
            }
        }
    }
}

/// Scales a picture to `width` x `height` (not larger than the source), with colour.
/// A picture without chroma becomes a grey one.
pub fn scale_picture(pic: &Picture<'_>, width: usize, height: usize) -> I420 {
    let mut out = I420::filled(width, height, 0, 128, 128);
    let (w, h) = (out.width(), out.height());
    let (y, u, v) = out.planes_mut();
    AreaScaler::new(pic.width(), pic.height(), w, h).scale(|r| pic.y_row(r), y);
    if let Some(c) = pic.chroma() {
        let (cw, ch) = ((w / 2).min(c.width), (h / 2).min(c.height));
        if cw == w / 2 && ch == h / 2 {
            let mut s = AreaScaler::new(c.width, c.height, cw, ch);
            s.scale(|r| &c.u[r * c.stride..], u);
            s.scale(|r| &c.v[r * c.stride..], v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picture_checks_planes() {
        let y = vec![0u8; 100];
        assert!(Picture::new(10, 10, &y, 10, None).is_some());
        assert!(Picture::new(10, 11, &y, 10, None).is_none());
        assert!(Picture::new(10, 10, &y, 9, None).is_none());
        assert!(Picture::new(0, 10, &y, 10, None).is_none());
        let c = vec![0u8; 25];
        let chroma = Chroma {
            u: &c,
            v: &c,
            stride: 5,
            width: 5,
            height: 5,
        };
        assert!(Picture::new(10, 10, &y, 10, Some(chroma)).is_some());
        let short = Chroma {
            u: &c[..24],
            ..chroma
        };
        assert!(Picture::new(10, 10, &y, 10, Some(short)).is_none());
    }

    #[test]
    fn area_scaling_averages() {
        // 4x2 -> 2x1: each output is the mean of a 2x2 block.
        let src = [0u8, 10, 100, 200, 20, 30, 100, 100];
        let mut dst = [0u8; 2];
        AreaScaler::new(4, 2, 2, 1).scale(|r| &src[r * 4..], &mut dst);
        assert_eq!(dst, [15, 125]);
        // Non-integer ratio keeps every source pixel in exactly one block.
        let src: Vec<u8> = (0..7 * 3).map(|i| (i * 10) as u8).collect();
        let mut dst = [0u8; 3 * 2];
        let mut s = AreaScaler::new(7, 3, 3, 2);
        s.scale(|r| &src[r * 7..], &mut dst);
        assert_eq!(s.dst_size(), (3, 2));
        assert_eq!(s.cols, vec![0, 2, 4, 7]);
        assert_eq!(s.rows, vec![0, 1, 3]);
    }

    #[test]
    fn scaled_picture_has_exact_size() {
        let src = I420::filled(1280, 720, 200, 90, 160);
        let out = scale_picture(&src.picture(), 640, 360);
        assert_eq!((out.width(), out.height()), (640, 360));
        let (y, u, v) = out.planes();
        assert!(y.iter().all(|&p| p == 200));
        assert!(u.iter().all(|&p| p == 90));
        assert!(v.iter().all(|&p| p == 160));
    }
}
