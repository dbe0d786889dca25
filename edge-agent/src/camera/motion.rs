//! Motion detection on a small grayscale picture, in the style Frigate made popular.
//!
//! Each analysed picture is reduced to a few thousand grayscale pixels (area average of the
//! luma plane, which also averages out sensor noise) and compared with a running-average
//! background:
//!
//! 1. Global lighting is compensated first: the median brightness ratio and then the median
//!    offset between picture and background are taken out, so auto-exposure, dusk and a lamp
//!    switching on over the whole scene change nothing.
//! 2. A pixel has changed when it differs from the compensated background by more than
//!    `threshold`. Masked pixels are never looked at.
//! 3. If more than `lighting_fraction` of the pixels changed at once, or the compensation
//!    itself was large (gain off by more than 25 %, offset above 25 levels), it is not an
//!    object but the light (a flash, an IR day/night switch, a camera going black): the
//!    background is re-seeded from this picture and no motion is reported.
//! 4. Noise is rejected: a changed pixel with fewer than two changed neighbours is dropped,
//!    the rest is dilated by one pixel so the parts of one object join, and connected regions
//!    with fewer than `min_blob` changed pixels are dropped.
//! 5. Motion is reported when the kept regions cover at least `min_area` of the unmasked
//!    frame; their bounding boxes (overlapping ones merged) are given as fractions 0..=1.
//! 6. The background learns every picture with weight `alpha`, so an object that stops
//!    becomes background after a few seconds.

use super::picture::{AreaScaler, Picture};
use super::settings::{CameraSettings, MaskShape};

/// Detector parameters; see [`CameraSettings`] for their meaning.
#[derive(Clone, Debug, PartialEq)]
pub struct MotionConfig {
    /// Analysis rows.
    pub height: usize,
    /// Per-pixel difference that counts as changed.
    pub threshold: u8,
    /// Fraction of the unmasked frame that must move.
    pub min_area: f64,
    /// Smallest region kept, in analysis pixels.
    pub min_blob: usize,
    /// Changed fraction above which the change is lighting.
    pub lighting_fraction: f64,
    /// Background learning rate.
    pub alpha: f32,
    /// Regions never analysed.
    pub masks: Vec<MaskShape>,
}

impl From<&CameraSettings> for MotionConfig {
    fn from(s: &CameraSettings) -> Self {
        MotionConfig {
            height: s.detect_height as usize,
            threshold: s.threshold,
            min_area: s.min_area,
            min_blob: s.min_blob as usize,
            lighting_fraction: s.lighting_fraction,
            alpha: s.alpha as f32,
            masks: s.masks.clone(),
        }
    }
}

impl Default for MotionConfig {
    fn default() -> Self {
        MotionConfig::from(&CameraSettings::default())
    }
}

/// What one analysed picture showed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MotionResult {
    /// Enough of the frame moved.
    pub motion: bool,
    /// Moving regions `[x, y, w, h]` as fractions of the frame, largest first.
    pub boxes: Vec<[f64; 4]>,
    /// Fraction of the unmasked frame covered by kept regions.
    pub area: f64,
    /// `area` mapped to 0..=1: `min_area` gives 0.1, ten times `min_area` (or more) gives 1.
    pub score: f64,
    /// Fraction of unmasked pixels above the threshold, before noise rejection.
    pub changed: f64,
    /// The picture was a lighting change and re-seeded the background.
    pub lighting: bool,
}

/// Most boxes reported for one picture.
const MAX_BOXES: usize = 16;

/// The per-camera motion detector. Owns its background; one per stream.
pub struct MotionDetector {
    cfg: MotionConfig,
    scaler: AreaScaler,
    w: usize,
    h: usize,
    gray: Vec<u8>,
    bg: Vec<f32>,
    active: Vec<bool>,
    active_count: usize,
    changed: Vec<bool>,
    clean: Vec<bool>,
    grown: Vec<bool>,
    labels: Vec<u32>,
    stack: Vec<usize>,
    seeded: bool,
    lighting_changes: u64,
}

/// Analysis size for a source: `height` rows (at most the source's), width by aspect.
pub fn analysis_size(src_w: usize, src_h: usize, height: usize) -> (usize, usize) {
    let h = height.clamp(1, src_h.max(1));
    let w = ((src_w * h) as f64 / src_h.max(1) as f64).round() as usize;
    (w.clamp(1, src_w.max(1)), h)
}

impl MotionDetector {
    /// A detector for pictures of `src_w` x `src_h`.
    pub fn new(cfg: MotionConfig, src_w: usize, src_h: usize) -> MotionDetector {
        let (w, h) = analysis_size(src_w, src_h, cfg.height);
        let scaler = AreaScaler::new(src_w, src_h, w, h);
        let (w, h) = scaler.dst_size();
        let n = w * h;
        let mut active = vec![true; n];
        for y in 0..h {
            for x in 0..w {
                let (px, py) = ((x as f64 + 0.5) / w as f64, (y as f64 + 0.5) / h as f64);
                if cfg.masks.iter().any(|m| mask_contains(m, px, py)) {
                    active[y * w + x] = false;
                }
            }
        }
        let active_count = active.iter().filter(|a| **a).count();
        MotionDetector {
            cfg,
            scaler,
            w,
            h,
            gray: vec![0; n],
            bg: vec![0.0; n],
            active,
            active_count,
            changed: vec![false; n],
            clean: vec![false; n],
            grown: vec![false; n],
            labels: vec![0; n],
            stack: Vec::new(),
            seeded: false,
            lighting_changes: 0,
        }
    }

    /// Whether this detector was made for pictures of this size.
    pub fn fits(&self, src_w: usize, src_h: usize) -> bool {
        self.scaler.fits(src_w, src_h)
    }

    /// The analysis size (width, height).
    pub fn size(&self) -> (usize, usize) {
        (self.w, self.h)
    }

    /// How many lighting changes re-seeded the background so far.
    pub fn lighting_changes(&self) -> u64 {
        self.lighting_changes
    }

    /// Analyses a decoded picture (only its luma plane is read).
    pub fn analyze(&mut self, pic: &Picture<'_>) -> MotionResult {
        let mut gray = std::mem::take(&mut self.gray);
        self.scaler.scale(|r| pic.y_row(r), &mut gray);
        let result = self.analyze_gray(&gray);
        self.gray = gray;
        result
    }

    /// Analyses a grayscale picture already at the analysis size (`size()`, packed rows).
    pub fn analyze_gray(&mut self, gray: &[u8]) -> MotionResult {
        let n = self.w * self.h;
        let gray = &gray[..n];
        if !self.seeded || self.active_count == 0 {
            self.reseed(gray);
            return MotionResult::default();
        }
        let (gain, offset) = self.lighting_compensation(gray);
        let t = self.cfg.threshold as f32;
        let mut changed_count = 0usize;
        for (i, &g) in gray.iter().enumerate() {
            // The sensor clips: a brightened background cannot exceed white or go below black.
            let expected = (gain * self.bg[i] + offset).clamp(0.0, 255.0);
            let c = self.active[i] && (g as f32 - expected).abs() > t;
            self.changed[i] = c;
            changed_count += c as usize;
        }
        let changed = changed_count as f64 / self.active_count as f64;
        // A large global shift is a lighting change even where clipping hides most of it (a
        // flash whitening the picture "explains" it as gain); small drifts are compensated.
        let big_shift = (gain - 1.0).abs() > 0.25 || offset.abs() > 25.0;
        if changed > self.cfg.lighting_fraction || big_shift {
            self.lighting_changes += 1;
            self.reseed(gray);
            return MotionResult {
                changed,
                lighting: true,
                ..MotionResult::default()
            };
        }
        let (boxes, moving) = if changed_count == 0 {
            (Vec::new(), 0)
        } else {
            self.regions()
        };
        self.learn(gray);
        let area = moving as f64 / self.active_count as f64;
        let motion = moving > 0 && area >= self.cfg.min_area;
        let full = (10.0 * self.cfg.min_area).max(0.01);
        MotionResult {
            motion,
            boxes: if motion { boxes } else { Vec::new() },
            area,
            score: if motion { (area / full).min(1.0) } else { 0.0 },
            changed,
            lighting: false,
        }
    }

    fn reseed(&mut self, gray: &[u8]) {
        for (b, &g) in self.bg.iter_mut().zip(gray) {
            *b = g as f32;
        }
        self.seeded = true;
    }

    fn learn(&mut self, gray: &[u8]) {
        let a = self.cfg.alpha;
        for (b, &g) in self.bg.iter_mut().zip(gray) {
            *b += a * (g as f32 - *b);
        }
    }

    /// Median brightness ratio (over pixels bright enough to have one), then median offset
    /// of the remainder: robust to an object covering less than half the frame.
    fn lighting_compensation(&self, gray: &[u8]) -> (f32, f32) {
        let mut ratio_hist = [0u32; 256];
        let mut ratio_n = 0u32;
        for (i, &g) in gray.iter().enumerate() {
            if self.active[i] && self.bg[i] >= 24.0 {
                let bin = ((g as f32 / self.bg[i]) * 64.0).min(255.0) as usize;
                ratio_hist[bin] += 1;
                ratio_n += 1;
            }
        }
        let gain = if ratio_n as usize * 4 >= self.active_count {
            (median_bin(&ratio_hist, ratio_n) as f32 + 0.5) / 64.0
        } else {
            1.0
        };
        // Small ratios are left alone: they are noise, and compensating them only adds noise.
        let gain = if (gain - 1.0).abs() < 0.04 { 1.0 } else { gain };
        let mut off_hist = [0u32; 512];
        let mut off_n = 0u32;
        for (i, &g) in gray.iter().enumerate() {
            if self.active[i] {
                let d = (g as f32 - gain * self.bg[i]).round().clamp(-256.0, 255.0);
                off_hist[(d + 256.0) as usize] += 1;
                off_n += 1;
            }
        }
        let offset = median_bin(&off_hist, off_n) as f32 - 256.0;
        (gain, offset)
    }

    /// Noise rejection, grouping and boxes. Returns boxes and the count of moving pixels.
    fn regions(&mut self) -> (Vec<[f64; 4]>, usize) {
        let (w, h) = (self.w, self.h);
        // Isolated pixels: keep a changed pixel only with at least two changed neighbours.
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                self.clean[i] = self.changed[i] && neighbours(&self.changed, w, h, x, y) >= 2;
            }
        }
        // Join the parts of one object.
        for y in 0..h {
            for x in 0..w {
                self.grown[y * w + x] =
                    self.clean[y * w + x] || neighbours(&self.clean, w, h, x, y) > 0;
            }
        }
        self.labels.fill(0);
        let mut boxes: Vec<(usize, [usize; 4])> = Vec::new();
        let mut moving = 0;
        let mut label = 0u32;
        for start in 0..w * h {
            if !self.grown[start] || self.labels[start] != 0 {
                continue;
            }
            label += 1;
            self.labels[start] = label;
            self.stack.push(start);
            let (mut count, mut bb) = (0usize, [usize::MAX, usize::MAX, 0, 0]);
            while let Some(i) = self.stack.pop() {
                let (x, y) = (i % w, i / w);
                if self.clean[i] {
                    count += 1;
                    bb = [bb[0].min(x), bb[1].min(y), bb[2].max(x), bb[3].max(y)];
                }
                for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                    for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                        let j = ny * w + nx;
                        if self.grown[j] && self.labels[j] == 0 {
                            self.labels[j] = label;
                            self.stack.push(j);
                        }
                    }
                }
            }
            if count >= self.cfg.min_blob.max(1) {
                moving += count;
                boxes.push((count, bb));
            }
        }
        let mut merged = merge_boxes(boxes.into_iter().map(|(_, b)| b).collect());
        merged.sort_by_key(|b| std::cmp::Reverse((b[2] - b[0] + 1) * (b[3] - b[1] + 1)));
        merged.truncate(MAX_BOXES);
        let (fw, fh) = (w as f64, h as f64);
        let boxes = merged
            .into_iter()
            .map(|[x0, y0, x1, y1]| {
                [
                    x0 as f64 / fw,
                    y0 as f64 / fh,
                    (x1 - x0 + 1) as f64 / fw,
                    (y1 - y0 + 1) as f64 / fh,
                ]
            })
            .collect();
        (boxes, moving)
    }
}

fn neighbours(m: &[bool], w: usize, h: usize, x: usize, y: usize) -> usize {
    let mut n = 0;
    for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
        for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
            if (nx, ny) != (x, y) && m[ny * w + nx] {
                n += 1;
            }
        }
    }
    n
}

fn median_bin(hist: &[u32], total: u32) -> usize {
    let half = total.div_ceil(2);
    let mut acc = 0;
    for (i, &c) in hist.iter().enumerate() {
        acc += c;
        if acc >= half && acc > 0 {
            return i;
        }
    }
    0
}

/// Merges boxes (inclusive pixel corners `[x0, y0, x1, y1]`) that overlap or touch.
fn merge_boxes(mut boxes: Vec<[usize; 4]>) -> Vec<[usize; 4]> {
    let touch = |a: &[usize; 4], b: &[usize; 4]| {
        a[0] <= b[2] + 1 && b[0] <= a[2] + 1 && a[1] <= b[3] + 1 && b[1] <= a[3] + 1
    };
    loop {
        let mut joined = false;
        'outer: for i in 0..boxes.len() {
            for j in i + 1..boxes.len() {
                if touch(&boxes[i], &boxes[j]) {
                    let b = boxes.swap_remove(j);
                    let a = &mut boxes[i];
                    *a = [
                        a[0].min(b[0]),
                        a[1].min(b[1]),
                        a[2].max(b[2]),
                        a[3].max(b[3]),
                    ];
                    joined = true;
                    break 'outer;
                }
            }
        }
        if !joined {
            return boxes;
        }
    }
}

/// Whether the normalized point lies in the mask.
fn mask_contains(m: &MaskShape, x: f64, y: f64) -> bool {
    match m {
        MaskShape::Rect([rx, ry, rw, rh]) => x >= *rx && x < rx + rw && y >= *ry && y < ry + rh,
        MaskShape::Polygon(p) => {
            // Even-odd rule, ray to the right.
            let mut inside = false;
            let mut j = p.len() - 1;
            for i in 0..p.len() {
                let ([xi, yi], [xj, yj]) = (p[i], p[j]);
                if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
                    inside = !inside;
                }
                j = i;
            }
            inside
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: usize = 320;
    const H: usize = 180;

    /// A textured static background (so lighting changes are not uniform).
    fn scene() -> Vec<u8> {
        (0..W * H)
            .map(|i| {
                let (x, y) = (i % W, i / W);
                (60 + (x * 97 / W) + ((x / 8 + y / 8) % 2) * 30 + y * 40 / H) as u8
            })
            .collect()
    }

    fn with_square(base: &[u8], x0: usize, y0: usize, size: usize, value: u8) -> Vec<u8> {
        let mut f = base.to_vec();
        for y in y0..(y0 + size).min(H) {
            for x in x0..(x0 + size).min(W) {
                f[y * W + x] = value;
            }
        }
        f
    }

    fn run(det: &mut MotionDetector, frame: &[u8]) -> MotionResult {
        det.analyze(&Picture::new(W, H, frame, W, None).unwrap())
    }

    fn detector(cfg: MotionConfig) -> MotionDetector {
        MotionDetector::new(cfg, W, H)
    }

    /// Deterministic noise in -amp..=amp.
    fn noisy(base: &[u8], seed: u64, amp: i32) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        base.iter()
            .map(|&p| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let n = (s % (2 * amp as u64 + 1)) as i32 - amp;
                (p as i32 + n).clamp(0, 255) as u8
            })
            .collect()
    }

    #[test]
    fn analysis_size_keeps_aspect() {
        assert_eq!(analysis_size(1280, 720, 100), (178, 100));
        assert_eq!(analysis_size(640, 480, 100), (133, 100));
        assert_eq!(analysis_size(64, 48, 100), (64, 48));
        let d = detector(MotionConfig::default());
        assert_eq!(d.size(), (178, 100));
    }

    #[test]
    fn moving_square_is_found_where_it_is() {
        let bg = scene();
        let mut d = detector(MotionConfig::default());
        assert!(!run(&mut d, &bg).motion, "first picture only seeds");
        assert!(!run(&mut d, &bg).motion);
        for step in 0..10 {
            let x = 40 + step * 20;
            let f = with_square(&bg, x, 60, 40, 250);
            let r = run(&mut d, &f);
            assert!(r.motion, "step {step}: {r:?}");
            assert!(!r.lighting);
            assert!(r.score > 0.0 && r.score <= 1.0);
            // The square's centre lies in the first box, and the box is not much larger
            // than the square plus where it was (the background still remembers it).
            let (cx, cy) = ((x + 20) as f64 / W as f64, 80.0 / H as f64);
            let b = r.boxes[0];
            assert!(
                b[0] <= cx && cx <= b[0] + b[2] && b[1] <= cy && cy <= b[1] + b[3],
                "step {step}: centre ({cx:.3},{cy:.3}) not in {b:?}"
            );
            assert!(
                b[3] < 0.35 && b[2] < 0.5,
                "step {step}: box too large {b:?}"
            );
        }
        // Once it stops, it becomes background within a few seconds (5 fps).
        let still = with_square(&bg, 240, 60, 40, 250);
        let quiet_after = (0..60).position(|_| !run(&mut d, &still).motion);
        assert!(quiet_after.is_some_and(|n| n < 40), "{quiet_after:?}");
    }

    #[test]
    fn sensor_noise_and_specks_are_not_motion() {
        let bg = scene();
        let mut d = detector(MotionConfig::default());
        for i in 0..30 {
            let mut f = noisy(&bg, i, 12);
            // Isolated bright specks (hot pixels, snow) at analysis scale.
            for k in 0..40 {
                let (x, y) = (
                    (k * 37 + i as usize * 11) % W,
                    (k * 53 + i as usize * 7) % H,
                );
                f[y * W + x] = 255;
            }
            let r = run(&mut d, &f);
            assert!(!r.motion, "frame {i}: {r:?}");
        }
    }

    #[test]
    fn global_brightness_changes_are_not_motion() {
        let bg = scene();
        let mut d = detector(MotionConfig::default());
        run(&mut d, &bg);
        run(&mut d, &bg);
        // Auto exposure: +40 offset, then a 1.4x gain, then back; and dusk, step by step.
        let offset: Vec<u8> = bg.iter().map(|&p| p.saturating_add(40)).collect();
        let gain: Vec<u8> = bg
            .iter()
            .map(|&p| (p as f32 * 1.4).min(255.0) as u8)
            .collect();
        for f in [&offset, &gain, &bg, &gain, &offset] {
            let r = run(&mut d, f);
            assert!(!r.motion, "{r:?}");
        }
        for step in 1..=10u32 {
            let dusk: Vec<u8> = bg
                .iter()
                .map(|&p| (p as u32 * (20 - step) / 20) as u8)
                .collect();
            assert!(!run(&mut d, &dusk).motion, "dusk step {step}");
        }
    }

    #[test]
    fn flash_and_ir_switch_reseed_instead_of_motion() {
        let bg = scene();
        let mut d = detector(MotionConfig::default());
        run(&mut d, &bg);
        run(&mut d, &bg);
        // A flash saturates the picture for one frame.
        let white = vec![255u8; W * H];
        let r = run(&mut d, &white);
        assert!(r.lighting && !r.motion, "{r:?}");
        let r = run(&mut d, &bg);
        assert!(r.lighting && !r.motion, "{r:?}");
        // An IR switch: contrast inverted and flattened, not a uniform change.
        let ir: Vec<u8> = bg.iter().map(|&p| 255 - p / 2).collect();
        let r = run(&mut d, &ir);
        assert!(r.lighting && !r.motion, "{r:?}");
        assert!(!run(&mut d, &ir).motion);
        // The camera going black.
        let black = vec![0u8; W * H];
        assert!(!run(&mut d, &black).motion);
        assert!(!run(&mut d, &black).motion);
        assert!(d.lighting_changes() >= 3);
        // Motion is still found after a reseed.
        run(&mut d, &bg);
        let r = run(&mut d, &with_square(&bg, 100, 50, 40, 250));
        assert!(r.motion, "{r:?}");
    }

    #[test]
    fn masks_hide_motion() {
        let bg = scene();
        let moving = |d: &mut MotionDetector| {
            run(d, &bg);
            run(d, &bg);
            run(d, &with_square(&bg, 20, 20, 60, 250)).motion
        };
        assert!(moving(&mut detector(MotionConfig::default())));
        let rect = MotionConfig {
            masks: vec![MaskShape::Rect([0.0, 0.0, 0.5, 0.6])],
            ..MotionConfig::default()
        };
        assert!(!moving(&mut detector(rect)));
        let triangle = MotionConfig {
            masks: vec![MaskShape::Polygon(vec![[0.0, 0.0], [0.8, 0.0], [0.0, 0.9]])],
            ..MotionConfig::default()
        };
        assert!(!moving(&mut detector(triangle.clone())));
        // The same triangle does not hide motion outside it.
        let mut d = detector(triangle);
        run(&mut d, &bg);
        run(&mut d, &bg);
        let r = run(&mut d, &with_square(&bg, 250, 120, 50, 250));
        assert!(r.motion && r.boxes[0][0] > 0.7, "{r:?}");
    }

    #[test]
    fn min_area_and_min_blob() {
        let bg = scene();
        // A 10x10 square at 320x180 is 5.6x5.6 = ~31 analysis pixels of 17800: 0.17%.
        let small = with_square(&bg, 150, 80, 10, 250);
        let sees = |cfg: MotionConfig| {
            let mut d = detector(cfg);
            run(&mut d, &bg);
            run(&mut d, &bg);
            run(&mut d, &small).motion
        };
        assert!(sees(MotionConfig {
            min_area: 0.001,
            ..MotionConfig::default()
        }));
        assert!(!sees(MotionConfig {
            min_area: 0.005,
            ..MotionConfig::default()
        }));
        assert!(!sees(MotionConfig {
            min_area: 0.0,
            min_blob: 60,
            ..MotionConfig::default()
        }));
    }

    #[test]
    fn two_objects_two_boxes() {
        let bg = scene();
        let mut d = detector(MotionConfig::default());
        run(&mut d, &bg);
        run(&mut d, &bg);
        let f = with_square(&with_square(&bg, 20, 20, 40, 250), 240, 120, 30, 5);
        let r = run(&mut d, &f);
        assert_eq!(r.boxes.len(), 2, "{r:?}");
        assert!(r.boxes[0][0] < 0.2 && r.boxes[1][0] > 0.7, "{r:?}");
    }

    #[test]
    fn box_merging() {
        let m = merge_boxes(vec![[0, 0, 2, 2], [3, 0, 5, 2], [10, 10, 11, 11]]);
        assert_eq!(m.len(), 2);
        assert!(m.contains(&[0, 0, 5, 2]));
    }
}
