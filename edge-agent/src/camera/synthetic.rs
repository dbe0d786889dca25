//! Synthetic scenes rendered in-process, so the demo and tests need no camera.
//!
//! A scene is a street-like background (sky, buildings, road; drawn from the seed) plus a
//! looping timeline: objects crossing now and then, lighting changes, a flash, an IR switch,
//! or the camera going dark (no pictures at all, so it turns offline). Every random choice
//! comes from the seed and the loop number, so a scene replays identically.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::picture::I420;
use super::settings::SceneSpec;

/// An object crossing the picture in a straight line.
#[derive(Clone, Debug)]
struct Mover {
    start: f64,
    duration: f64,
    from: (f64, f64),
    to: (f64, f64),
    /// Size as fractions of the picture.
    size: (f64, f64),
    colour: (u8, u8, u8),
}

impl Mover {
    fn at(&self, t: f64) -> Option<(f64, f64)> {
        let k = (t - self.start) / self.duration;
        (0.0..=1.0).contains(&k).then_some((
            self.from.0 + (self.to.0 - self.from.0) * k,
            self.from.1 + (self.to.1 - self.from.1) * k,
        ))
    }
}

/// What the camera shows at an instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SceneState {
    /// Objects on screen now: `[x, y, w, h]` fractions of the picture.
    pub objects: Vec<[f64; 4]>,
    /// Brightness gain of the whole picture (1 = normal).
    pub gain: f64,
    /// Infrared night mode (colourless, flat contrast).
    pub ir: bool,
    /// The camera sends nothing (`dark` scene).
    pub dark: bool,
}

/// A renderer of one scene.
pub struct Scene {
    spec: SceneSpec,
    background: I420,
    period: f64,
    cycle: Option<u64>,
    movers: Vec<Mover>,
    noise: u64,
}

impl Scene {
    /// The scene `spec.name` (one of [`super::settings::SCENES`]).
    pub fn new(spec: &SceneSpec) -> Scene {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let background = draw_background(spec.width as usize, spec.height as usize, &mut rng);
        let period = match spec.name.as_str() {
            "motion" => 4.0,
            "flash" => 3.0,
            "night" => 20.0,
            "dark" => 35.0,
            "blackout" => 20.0,
            "static" => 10.0,
            _ => 60.0,
        };
        Scene {
            spec: spec.clone(),
            background,
            period,
            cycle: None,
            movers: Vec::new(),
            noise: spec.seed | 1,
        }
    }

    /// The loop length in seconds.
    pub fn period(&self) -> f64 {
        self.period
    }

    fn plan(&mut self, cycle: u64) {
        if self.cycle == Some(cycle) {
            return;
        }
        self.cycle = Some(cycle);
        let mut rng =
            StdRng::seed_from_u64(self.spec.seed ^ cycle.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let car = |rng: &mut StdRng, start: f64, rightwards: bool| {
            let y = rng.gen_range(0.62..0.78);
            let (x0, x1) = if rightwards {
                (-0.25, 1.05)
            } else {
                (1.05, -0.25)
            };
            Mover {
                start,
                duration: rng.gen_range(2.5..4.0),
                from: (x0, y),
                to: (x1, y + rng.gen_range(-0.03..0.03)),
                size: (rng.gen_range(0.14..0.22), rng.gen_range(0.09..0.13)),
                colour: CAR_COLOURS[rng.gen_range(0..CAR_COLOURS.len())],
            }
        };
        self.movers = match self.spec.name.as_str() {
            "motion" => vec![Mover {
                duration: 4.0,
                ..car(&mut rng, 0.0, cycle.is_multiple_of(2))
            }],
            "street" | "dark" | "night" => {
                let (start, right) = (rng.gen_range(3.0..8.0), rng.gen_bool(0.5));
                let mut m = vec![car(&mut rng, start, right)];
                let px = rng.gen_range(0.2..0.8);
                m.push(Mover {
                    start: rng.gen_range(18.0..22.0),
                    duration: rng.gen_range(6.0..9.0),
                    from: (px, 0.55),
                    to: (px + rng.gen_range(-0.25..0.25), 0.7),
                    size: (0.035, 0.16),
                    colour: (90, 110, 150),
                });
                if self.spec.name == "street" {
                    let (a, b) = (rng.gen_range(44.0..47.0), rng.gen_range(45.0..48.0));
                    m.push(car(&mut rng, a, true));
                    m.push(car(&mut rng, b, false));
                }
                m
            }
            _ => Vec::new(),
        };
    }

    /// Objects on screen at `t` with their colours.
    fn objects(&mut self, t: f64) -> (f64, Vec<([f64; 4], Colour)>) {
        let cycle = (t / self.period).floor().max(0.0) as u64;
        let local = t - cycle as f64 * self.period;
        self.plan(cycle);
        let objects = self
            .movers
            .iter()
            .filter_map(|m| {
                let (x, y) = m.at(local)?;
                Some(([x, y - m.size.1, m.size.0, m.size.1], m.colour))
            })
            .collect();
        (local, objects)
    }

    /// The scene's state at `t` seconds after start.
    pub fn state(&mut self, t: f64) -> SceneState {
        let (local, objects) = self.objects(t);
        let mut s = SceneState {
            gain: 1.0,
            objects: objects.into_iter().map(|(o, _)| o).collect(),
            ..SceneState::default()
        };
        match self.spec.name.as_str() {
            // Clouds: the light drops by a third over half a second, for five seconds.
            "street" => {
                let ramp = |a: f64| ((local - a) / 0.5).clamp(0.0, 1.0);
                s.gain = 1.0 - 0.33 * (ramp(33.0) - ramp(38.0));
            }
            // One overexposed picture every period.
            "flash" if local < 1.0 / self.spec.fps => s.gain = 3.0,
            "night" => s.ir = local >= 10.0,
            "dark" => s.dark = local >= 20.0,
            "blackout" if local >= 10.0 => s.gain = 0.0,
            _ => {}
        }
        s
    }

    /// Renders the picture at `t` seconds; `None` while the camera is dark.
    pub fn render(&mut self, t: f64) -> Option<I420> {
        let state = self.state(t);
        if state.dark {
            return None;
        }
        let (_, objects) = self.objects(t);
        let mut pic = self.background.clone();
        let (w, h) = (pic.width(), pic.height());
        let (y, u, v) = pic.planes_mut();
        for (o, colour) in objects {
            fill_rect(y, u, v, w, h, o, colour);
        }
        if state.ir {
            // IR night mode: no colour, bright flat picture.
            u.fill(128);
            v.fill(128);
            for p in y.iter_mut() {
                *p = 90 + *p / 2;
            }
        }
        if (state.gain - 1.0).abs() > 1e-6 {
            for p in y.iter_mut() {
                *p = (*p as f64 * state.gain).clamp(0.0, 255.0) as u8;
            }
        }
        // Sensor noise (+-3 levels) on luma, so the detector never sees a perfect picture.
        let mut s = self.noise;
        for p in y.iter_mut() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *p = p
                .saturating_add((s & 3) as u8)
                .saturating_sub(((s >> 2) & 3) as u8);
        }
        self.noise = s;
        Some(pic)
    }
}

/// Y, U, V.
type Colour = (u8, u8, u8);

const CAR_COLOURS: &[Colour] = &[
    (81, 90, 240),   // red
    (41, 240, 110),  // blue
    (210, 16, 146),  // yellow
    (235, 128, 128), // white
    (30, 128, 128),  // black
];

fn fill_rect(
    y: &mut [u8],
    u: &mut [u8],
    v: &mut [u8],
    w: usize,
    h: usize,
    r: [f64; 4],
    c: (u8, u8, u8),
) {
    let x0 = (r[0] * w as f64).round().clamp(0.0, w as f64) as usize;
    let x1 = ((r[0] + r[2]) * w as f64).round().clamp(0.0, w as f64) as usize;
    let y0 = (r[1] * h as f64).round().clamp(0.0, h as f64) as usize;
    let y1 = ((r[1] + r[3]) * h as f64).round().clamp(0.0, h as f64) as usize;
    for row in y0..y1 {
        y[row * w + x0..row * w + x1].fill(c.0);
    }
    let cw = w / 2;
    for row in y0 / 2..y1 / 2 {
        u[row * cw + x0 / 2..row * cw + x1 / 2].fill(c.1);
        v[row * cw + x0 / 2..row * cw + x1 / 2].fill(c.2);
    }
}

/// Sky, a row of buildings with windows, a road with lane marks.
fn draw_background(w: usize, h: usize, rng: &mut StdRng) -> I420 {
    let mut pic = I420::filled(w, h, 0, 128, 128);
    let (y, u, v) = pic.planes_mut();
    let horizon = h * 45 / 100;
    let road = h * 55 / 100;
    for row in 0..h {
        let line = &mut y[row * w..(row + 1) * w];
        if row < horizon {
            line.fill((190 - row * 40 / horizon.max(1)) as u8);
        } else if row < road {
            line.fill(110);
        } else {
            line.fill(70);
        }
    }
    // Sky tint.
    for row in 0..horizon / 2 {
        u[row * w / 2..(row + 1) * w / 2].fill(150);
        v[row * w / 2..(row + 1) * w / 2].fill(115);
    }
    let mut x = 0;
    while x < w {
        let bw = rng.gen_range(w / 12..w / 5).max(4);
        let bh = rng.gen_range(horizon / 3..horizon).max(4);
        let shade = rng.gen_range(60..150u8);
        let top = horizon.saturating_sub(bh);
        for row in top..horizon {
            let end = (x + bw).min(w);
            y[row * w + x..row * w + end].fill(shade);
            // Windows.
            if (row - top) % 8 < 4 {
                let mut wx = x + 3;
                while wx + 3 < end {
                    y[row * w + wx..row * w + wx + 3].fill(shade.saturating_add(60));
                    wx += 7;
                }
            }
        }
        x += bw + rng.gen_range(0..w / 30 + 1);
    }
    // Lane marks.
    let lane = h * 72 / 100;
    for row in lane..(lane + 3).min(h) {
        let mut mx = 0;
        while mx < w {
            let end = (mx + w / 16).min(w);
            y[row * w + mx..row * w + end].fill(200);
            mx += w / 8;
        }
    }
    pic
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> SceneSpec {
        SceneSpec::parse(&format!("{name}?seed=3&size=320x180&fps=10")).unwrap()
    }

    #[test]
    fn scenes_are_deterministic_and_have_their_features() {
        let mut a = Scene::new(&spec("street"));
        let mut b = Scene::new(&spec("street"));
        assert_eq!(a.render(6.0), b.render(6.0));
        let objects = (0..600)
            .filter(|i| !a.state(*i as f64 / 10.0).objects.is_empty())
            .count();
        assert!(objects > 50, "{objects}");
        assert!((0..600).any(|i| a.state(i as f64 / 10.0).gain < 0.8));
        let mut s = Scene::new(&spec("static"));
        assert!((0..200).all(|i| s.state(i as f64 / 10.0).objects.is_empty()));
        let mut m = Scene::new(&spec("motion"));
        assert!((0..80).all(|i| !m.state(i as f64 / 10.0 + 0.05).objects.is_empty()));
        let mut d = Scene::new(&spec("dark"));
        assert!(d.render(5.0).is_some() && d.render(25.0).is_none() && d.render(36.0).is_some());
        let mut f = Scene::new(&spec("flash"));
        assert_eq!(f.state(3.0).gain, 3.0);
        assert_eq!(f.state(3.5).gain, 1.0);
        let mut n = Scene::new(&spec("night"));
        assert!(!n.state(5.0).ir && n.state(15.0).ir);
        let pic = Scene::new(&spec("static")).render(0.0).unwrap();
        assert_eq!((pic.width(), pic.height()), (320, 180));
    }
}
