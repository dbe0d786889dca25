//! The `[[camera]]` settings: where the video comes from and how motion is judged.
//!
//! agent.toml keeps each camera's extra keys as a flattened table (`config::CameraSource::
//! settings`); [`CameraConfig::from_entry`] turns the entry into typed, validated settings and
//! names the bad key on a problem (`threshold: must be 1..=254`), so `edge-agent check-config`
//! refuses a bad camera before anything runs.

use std::path::PathBuf;
use std::time::Duration;

use protocols::config::{ConfigError, HumanDuration};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::config::CameraSource;

/// Where a camera's pictures come from.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    /// An RTSP camera (H.264), `rtsp://[user:pass@]host[:port]/path`.
    Rtsp {
        /// The URL without credentials.
        url: Url,
        /// User and password taken from the URL, used when the camera asks.
        credentials: Option<(String, String)>,
    },
    /// A JPEG snapshot URL polled every [`StreamSettings::poll_interval`].
    Http {
        /// The URL as written (credentials, if any, are sent as HTTP basic auth).
        url: Url,
    },
    /// A local clip: H.264 Annex-B (`.h264`, `.264`) or Motion JPEG (`.mjpeg`, `.mjpg`).
    File {
        /// The file.
        path: PathBuf,
        /// How its bytes are framed.
        format: FileFormat,
    },
    /// Scenes generated in-process (`synthetic:street?seed=7&size=640x360&fps=10`).
    Synthetic(SceneSpec),
}

/// Framing of a local clip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// H.264 elementary stream with start codes, e.g. `ffmpeg ... -f h264 clip.h264`.
    H264AnnexB,
    /// Concatenated JPEG pictures, e.g. `ffmpeg ... -f mjpeg clip.mjpeg`.
    Mjpeg,
}

/// The scene names accepted by `synthetic:NAME` (the scenes are drawn in `camera::synthetic`).
pub const SCENES: &[&str] = &[
    "street", "static", "motion", "flash", "night", "dark", "blackout",
];

/// A synthetic scene: its name, random seed, picture size and frame rate.
#[derive(Clone, Debug, PartialEq)]
pub struct SceneSpec {
    /// One of [`SCENES`].
    pub name: String,
    /// Seed of the scene's randomness (object sizes, speeds, timings).
    pub seed: u64,
    /// Picture width in pixels (even).
    pub width: u32,
    /// Picture height in pixels (even).
    pub height: u32,
    /// Frames per second.
    pub fps: f64,
    /// Encode the pictures with H.264 and decode them again, so the scene exercises the same
    /// decoder as a real camera and reports a real bitrate (costs CPU; off by default).
    pub h264: bool,
    /// Scene time runs this many times faster than the clock (tests, quick demos).
    pub speed: f64,
}

impl SourceSpec {
    /// Parses a `source` string.
    pub fn parse(source: &str) -> Result<SourceSpec, String> {
        if source.starts_with("rtsp://") || source.starts_with("rtsps://") {
            let mut url = Url::parse(source).map_err(|e| format!("`{}`: {e}", redact(source)))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("`{}` has no host", redact(source)));
            }
            let credentials = if url.username().is_empty() {
                None
            } else {
                let user = percent_decode(url.username());
                let pass = percent_decode(url.password().unwrap_or(""));
                // retina authenticates from explicit credentials; keep them out of the URL so
                // they never reach a log line.
                let _ = url.set_username("");
                let _ = url.set_password(None);
                Some((user, pass))
            };
            return Ok(SourceSpec::Rtsp { url, credentials });
        }
        if source.starts_with("http://") || source.starts_with("https://") {
            let url = Url::parse(source).map_err(|e| format!("`{}`: {e}", redact(source)))?;
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("`{}` has no host", redact(source)));
            }
            return Ok(SourceSpec::Http { url });
        }
        if let Some(path) = source.strip_prefix("file:") {
            let path = PathBuf::from(path);
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .unwrap_or_default();
            let format = match ext.as_str() {
                "h264" | "264" => FileFormat::H264AnnexB,
                "mjpeg" | "mjpg" => FileFormat::Mjpeg,
                "mp4" | "mkv" | "mov" => {
                    return Err(format!(
                        "`{}`: containers are not read; extract the H.264 stream with \
                         `ffmpeg -i clip.mp4 -c:v copy -bsf:v h264_mp4toannexb -f h264 clip.h264`",
                        path.display()
                    ));
                }
                _ => {
                    return Err(format!(
                        "`{}`: use a .h264 (Annex-B) or .mjpeg file",
                        path.display()
                    ));
                }
            };
            return Ok(SourceSpec::File { path, format });
        }
        if let Some(rest) = source.strip_prefix("synthetic:") {
            return SceneSpec::parse(rest).map(SourceSpec::Synthetic);
        }
        Err("must start with rtsp://, http://, https://, file: or synthetic:".into())
    }

    /// The source for logs and status, with any password replaced by `***`.
    pub fn display(&self) -> String {
        match self {
            SourceSpec::Rtsp { url, .. } => url.to_string(),
            SourceSpec::Http { url } => redact(url.as_str()),
            SourceSpec::File { path, .. } => format!("file:{}", path.display()),
            SourceSpec::Synthetic(s) => format!(
                "synthetic:{}?seed={}&size={}x{}&fps={}&speed={}{}",
                s.name,
                s.seed,
                s.width,
                s.height,
                s.fps,
                s.speed,
                if s.h264 { "&codec=h264" } else { "" }
            ),
        }
    }
}

impl SceneSpec {
    /// Parses `NAME[?seed=N&size=WxH&fps=F&speed=S&codec=h264]`.
    pub fn parse(text: &str) -> Result<SceneSpec, String> {
        let (name, query) = text.split_once('?').unwrap_or((text, ""));
        if !SCENES.contains(&name) {
            return Err(format!(
                "unknown scene `{name}`; scenes are {}",
                SCENES.join(", ")
            ));
        }
        let mut spec = SceneSpec {
            name: name.to_string(),
            seed: 1,
            width: 640,
            height: 360,
            fps: 10.0,
            h264: false,
            speed: 1.0,
        };
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("seed", v)) => {
                    spec.seed = v
                        .parse()
                        .map_err(|_| format!("seed `{v}` is not a number"))?
                }
                Some(("size", v)) => {
                    let (w, h) = v
                        .split_once('x')
                        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
                        .ok_or_else(|| format!("size `{v}` is not like 640x360"))?;
                    if !(16..=3840).contains(&w) || !(16..=2160).contains(&h) || w % 2 + h % 2 != 0
                    {
                        return Err(format!(
                            "size `{v}`: width 16..=3840, height 16..=2160, both even"
                        ));
                    }
                    (spec.width, spec.height) = (w, h);
                }
                Some(("fps", v)) => {
                    spec.fps = v
                        .parse::<f64>()
                        .ok()
                        .filter(|f| (0.5..=60.0).contains(f))
                        .ok_or_else(|| format!("fps `{v}` must be 0.5..=60"))?
                }
                Some(("speed", v)) => {
                    spec.speed = v
                        .parse::<f64>()
                        .ok()
                        .filter(|f| (0.01..=100.0).contains(f))
                        .ok_or_else(|| format!("speed `{v}` must be 0.01..=100"))?
                }
                Some(("codec", "h264")) => spec.h264 = true,
                Some(("codec", "raw")) => spec.h264 = false,
                _ => {
                    return Err(format!(
                        "unknown option `{kv}`; use seed, size, fps, speed, codec=h264|raw"
                    ));
                }
            }
        }
        Ok(spec)
    }
}

/// `scheme://user:secret@host` -> `scheme://user:***@host`.
pub(crate) fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

fn percent_decode(s: &str) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A region excluded from motion detection, in fractions of the frame (0..=1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MaskShape {
    /// `[x, y, w, h]`: a rectangle.
    Rect([f64; 4]),
    /// `[[x, y], [x, y], [x, y], ...]`: a polygon of at least three corners.
    Polygon(Vec<[f64; 2]>),
}

fn d_detect_fps() -> f64 {
    5.0
}
fn d_detect_height() -> u32 {
    100
}
fn d_threshold() -> u8 {
    25
}
fn d_min_area() -> f64 {
    0.002
}
fn d_min_blob() -> u32 {
    4
}
fn d_lighting_fraction() -> f64 {
    0.4
}
fn d_alpha() -> f64 {
    0.05
}
fn d_start_frames() -> u32 {
    2
}
fn d_end_after() -> HumanDuration {
    HumanDuration::secs(5)
}
fn d_update_interval() -> HumanDuration {
    HumanDuration::secs(2)
}
fn d_max_event() -> HumanDuration {
    HumanDuration::secs(600)
}
fn d_snapshot_quality() -> u8 {
    80
}
fn d_stall_timeout() -> HumanDuration {
    HumanDuration::secs(5)
}
fn d_reconnect_min() -> HumanDuration {
    HumanDuration::secs(1)
}
fn d_reconnect_max() -> HumanDuration {
    HumanDuration::secs(30)
}
fn d_health_interval() -> HumanDuration {
    HumanDuration::secs(10)
}
fn d_poll_interval() -> HumanDuration {
    HumanDuration::secs(1)
}
fn d_file_fps() -> f64 {
    10.0
}
fn d_true() -> bool {
    true
}
fn d_transport() -> RtspTransport {
    RtspTransport::Tcp
}

/// How RTP is carried from an RTSP camera.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RtspTransport {
    /// Interleaved in the RTSP TCP connection (default: passes NAT and firewalls, no loss).
    Tcp,
    /// Separate UDP ports (LAN only; no reordering).
    Udp,
}

/// The optional keys of a `[[camera]]` entry, with their defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraSettings {
    /// Motion analysis rate (pictures per second); other pictures are only decoded.
    #[serde(default = "d_detect_fps")]
    pub detect_fps: f64,
    /// Rows of the grayscale picture motion is judged on (the width follows the aspect).
    #[serde(default = "d_detect_height")]
    pub detect_height: u32,
    /// Per-pixel difference from the background (0..=255 luma) that counts as changed.
    #[serde(default = "d_threshold")]
    pub threshold: u8,
    /// Fraction of the unmasked frame that must move to count as motion.
    #[serde(default = "d_min_area")]
    pub min_area: f64,
    /// Changed regions smaller than this many analysis pixels are noise.
    #[serde(default = "d_min_blob")]
    pub min_blob: u32,
    /// When more than this fraction of the frame changes at once it is a lighting change
    /// (flash, IR switch, exposure): the background is re-seeded instead of raising motion.
    #[serde(default = "d_lighting_fraction")]
    pub lighting_fraction: f64,
    /// Background learning rate per analysed picture (running average weight).
    #[serde(default = "d_alpha")]
    pub alpha: f64,
    /// Regions never analysed: rectangles `[x, y, w, h]` or polygons `[[x, y], ...]`.
    #[serde(default)]
    pub masks: Vec<MaskShape>,
    /// Consecutive analysed pictures with motion before an event starts.
    #[serde(default = "d_start_frames")]
    pub start_frames: u32,
    /// An event ends after this long without motion.
    #[serde(default = "d_end_after")]
    pub end_after: HumanDuration,
    /// At most one `update` per event this often.
    #[serde(default = "d_update_interval")]
    pub update_interval: HumanDuration,
    /// A longer event is ended (and a new one starts if motion goes on).
    #[serde(default = "d_max_event")]
    pub max_event: HumanDuration,
    /// Snapshots wider than this are scaled down (aspect kept); absent = source width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_max_width: Option<u32>,
    /// JPEG quality 1..=100.
    #[serde(default = "d_snapshot_quality")]
    pub snapshot_quality: u8,
    /// No picture for this long = the camera is offline (and is reconnected).
    #[serde(default = "d_stall_timeout")]
    pub stall_timeout: HumanDuration,
    /// First reconnect delay; doubles (with jitter) up to `reconnect_max`.
    #[serde(default = "d_reconnect_min")]
    pub reconnect_min: HumanDuration,
    /// Longest reconnect delay.
    #[serde(default = "d_reconnect_max")]
    pub reconnect_max: HumanDuration,
    /// How often `camera_fps`, `camera_bitrate` and `camera_frames_lost` are reported.
    #[serde(default = "d_health_interval")]
    pub health_interval: HumanDuration,
    /// H.264 decoder: `auto` (libavcodec if built in, else OpenH264), `openh264`, `libavcodec`.
    #[serde(default)]
    pub h264_decoder: super::decode::H264Backend,
    /// RTSP: `tcp` (default) or `udp`.
    #[serde(default = "d_transport")]
    pub rtsp_transport: RtspTransport,
    /// HTTP snapshot sources: how often the URL is fetched.
    #[serde(default = "d_poll_interval")]
    pub poll_interval: HumanDuration,
    /// File sources: pictures per second (Annex-B and MJPEG carry no timing).
    #[serde(default = "d_file_fps")]
    pub fps: f64,
    /// File sources: start again at the end (`false`: the camera goes offline at the end).
    #[serde(default = "d_true", rename = "loop")]
    pub loop_file: bool,
}

impl Default for CameraSettings {
    fn default() -> Self {
        CameraSettings {
            detect_fps: d_detect_fps(),
            detect_height: d_detect_height(),
            threshold: d_threshold(),
            min_area: d_min_area(),
            min_blob: d_min_blob(),
            lighting_fraction: d_lighting_fraction(),
            alpha: d_alpha(),
            masks: Vec::new(),
            start_frames: d_start_frames(),
            end_after: d_end_after(),
            update_interval: d_update_interval(),
            max_event: d_max_event(),
            snapshot_max_width: None,
            snapshot_quality: d_snapshot_quality(),
            stall_timeout: d_stall_timeout(),
            reconnect_min: d_reconnect_min(),
            reconnect_max: d_reconnect_max(),
            health_interval: d_health_interval(),
            h264_decoder: super::decode::H264Backend::Auto,
            rtsp_transport: d_transport(),
            poll_interval: d_poll_interval(),
            fps: d_file_fps(),
            loop_file: true,
        }
    }
}

impl CameraSettings {
    /// Reads the flattened keys of a `[[camera]]` entry.
    pub fn from_table(table: &toml::Table) -> Result<CameraSettings, ConfigError> {
        let value = toml::Value::Table(table.clone());
        let s: CameraSettings = serde_path_to_error::deserialize(value)
            .map_err(|e| ConfigError::new(e.path().to_string(), e.inner().message().to_string()))?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |k: &str, why: &str| Err(ConfigError::new(k, why));
        if !(0.2..=30.0).contains(&self.detect_fps) {
            return bad("detect_fps", "must be 0.2..=30");
        }
        if !(24..=720).contains(&self.detect_height) {
            return bad("detect_height", "must be 24..=720");
        }
        if self.threshold == 0 || self.threshold == 255 {
            return bad("threshold", "must be 1..=254");
        }
        if !(0.0..1.0).contains(&self.min_area) {
            return bad("min_area", "must be a fraction 0..1");
        }
        if !(0.05..=1.0).contains(&self.lighting_fraction) {
            return bad("lighting_fraction", "must be 0.05..=1");
        }
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return bad("alpha", "must be in 0..=1 and above 0");
        }
        for (i, m) in self.masks.iter().enumerate() {
            let in01 = |v: f64| (0.0..=1.0).contains(&v);
            let ok = match m {
                MaskShape::Rect([x, y, w, h]) => {
                    [*x, *y, *w, *h].into_iter().all(in01) && *w > 0.0 && *h > 0.0
                }
                MaskShape::Polygon(p) => p.len() >= 3 && p.iter().flatten().copied().all(in01),
            };
            if !ok {
                return Err(ConfigError::new(
                    format!("masks[{i}]"),
                    "must be [x, y, w, h] or [[x, y], [x, y], [x, y], ...] with values in 0..=1",
                ));
            }
        }
        if !(1..=100).contains(&self.start_frames) {
            return bad("start_frames", "must be 1..=100");
        }
        if self.end_after.0 < Duration::from_millis(100) {
            return bad("end_after", "must be at least 100ms");
        }
        if self.max_event.0 < Duration::from_secs(1) {
            return bad("max_event", "must be at least 1s");
        }
        if let Some(w) = self.snapshot_max_width
            && !(16..=8192).contains(&w)
        {
            return bad("snapshot_max_width", "must be 16..=8192");
        }
        if !(1..=100).contains(&self.snapshot_quality) {
            return bad("snapshot_quality", "must be 1..=100");
        }
        if self.stall_timeout.0 < Duration::from_millis(200) {
            return bad("stall_timeout", "must be at least 200ms");
        }
        if self.reconnect_min.0 < Duration::from_millis(10) {
            return bad("reconnect_min", "must be at least 10ms");
        }
        if self.reconnect_max.0 < self.reconnect_min.0 {
            return bad("reconnect_max", "must not be shorter than reconnect_min");
        }
        if self.health_interval.0 < Duration::from_millis(100) {
            return bad("health_interval", "must be at least 100ms");
        }
        if self.poll_interval.0 < Duration::from_millis(20) {
            return bad("poll_interval", "must be at least 20ms");
        }
        if !self.h264_decoder.available() {
            return bad(
                "h264_decoder",
                "libavcodec needs an agent built with the `ffmpeg` feature",
            );
        }
        if !(0.5..=120.0).contains(&self.fps) {
            return bad("fps", "must be 0.5..=120");
        }
        Ok(())
    }
}

/// One camera, typed and validated: the id, the source and the settings.
#[derive(Clone, Debug, PartialEq)]
pub struct CameraConfig {
    /// The camera's device id at the hub.
    pub id: String,
    /// Where the pictures come from.
    pub source: SourceSpec,
    /// Detection, events, snapshots and stream handling.
    pub settings: CameraSettings,
}

impl CameraConfig {
    /// Builds the typed config of an agent.toml `[[camera]]` entry. The error's key is
    /// relative to the entry (`source`, `threshold`, `masks[1]`).
    pub fn from_entry(entry: &CameraSource) -> Result<CameraConfig, ConfigError> {
        let source = SourceSpec::parse(&entry.source).map_err(|e| ConfigError::new("source", e))?;
        let settings = CameraSettings::from_table(&entry.settings)?;
        Ok(CameraConfig {
            id: entry.id.clone(),
            source,
            settings,
        })
    }

    /// A config for a source string with default settings (tests, `sim`).
    pub fn new(id: &str, source: &str) -> Result<CameraConfig, ConfigError> {
        Ok(CameraConfig {
            id: id.to_string(),
            source: SourceSpec::parse(source).map_err(|e| ConfigError::new("source", e))?,
            settings: CameraSettings::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(source: &str, extra: &str) -> CameraSource {
        let text = format!("id = \"CAM-1\"\nsource = \"{source}\"\n{extra}");
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn sources_parse() {
        match SourceSpec::parse("rtsp://admin:p%40ss@10.0.0.5:554/Streaming/101").unwrap() {
            SourceSpec::Rtsp { url, credentials } => {
                assert_eq!(url.as_str(), "rtsp://10.0.0.5:554/Streaming/101");
                assert_eq!(credentials, Some(("admin".into(), "p@ss".into())));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            SourceSpec::parse("file:/x/clip.h264").unwrap(),
            SourceSpec::File {
                format: FileFormat::H264AnnexB,
                ..
            }
        ));
        assert!(matches!(
            SourceSpec::parse("file:/x/clip.MJPEG").unwrap(),
            SourceSpec::File {
                format: FileFormat::Mjpeg,
                ..
            }
        ));
        let e = SourceSpec::parse("file:/x/clip.mp4").unwrap_err();
        assert!(e.contains("h264_mp4toannexb"), "{e}");
        match SourceSpec::parse("synthetic:street?seed=7&size=320x180&fps=5").unwrap() {
            SourceSpec::Synthetic(s) => {
                assert_eq!(
                    (s.name.as_str(), s.seed, s.width, s.height),
                    ("street", 7, 320, 180)
                );
                assert_eq!(s.fps, 5.0);
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "synthetic:nope",
            "synthetic:street?size=33x10",
            "synthetic:street?fps=0",
            "synthetic:street?colour=red",
            "ftp://x",
            "rtsp://",
        ] {
            assert!(SourceSpec::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            SourceSpec::parse("http://u:secret@cam/snap.jpg")
                .unwrap()
                .display(),
            "http://u:***@cam/snap.jpg"
        );
    }

    #[test]
    fn settings_default_and_typed() {
        let c = CameraConfig::from_entry(&entry("rtsp://cam/1", "")).unwrap();
        assert_eq!(c.settings, CameraSettings::default());
        let c = CameraConfig::from_entry(&entry(
            "rtsp://cam/1",
            "threshold = 30\nmasks = [[0.0, 0.0, 1.0, 0.1], [[0.5, 0.5], [0.9, 0.5], [0.9, 0.9]]]\nend_after = \"2s\"\nloop = false\n",
        ))
        .unwrap();
        assert_eq!(c.settings.threshold, 30);
        assert_eq!(c.settings.masks.len(), 2);
        assert!(matches!(c.settings.masks[1], MaskShape::Polygon(ref p) if p.len() == 3));
        assert_eq!(c.settings.end_after, HumanDuration::secs(2));
        assert!(!c.settings.loop_file);
    }

    #[test]
    fn every_problem_names_its_key() {
        let cases = [
            ("threshold = 0", "threshold: must be 1..=254"),
            ("threshold = 300", "threshold:"),
            ("min_area = 2.0", "min_area:"),
            ("masks = [[0.0, 0.0, 2.0, 0.1]]", "masks[0]:"),
            ("masks = [[[0.0, 0.0], [1.0, 1.0]]]", "masks[0]:"),
            ("end_after = \"soon\"", "end_after:"),
            (
                "reconnect_min = \"5s\"\nreconnect_max = \"1s\"",
                "reconnect_max:",
            ),
            ("rtsp_transport = \"sctp\"", "rtsp_transport:"),
            ("thresold = 3", "thresold"),
            ("h264_decoder = \"x264\"", "h264_decoder:"),
        ];
        for (extra, want) in cases {
            let got = CameraConfig::from_entry(&entry("rtsp://cam/1", extra))
                .unwrap_err()
                .to_string();
            assert!(got.starts_with(want), "{extra}: got {got}");
        }
        let libav =
            CameraConfig::from_entry(&entry("rtsp://cam/1", "h264_decoder = \"libavcodec\""));
        assert_eq!(libav.is_ok(), cfg!(feature = "ffmpeg"));
        let got = CameraConfig::from_entry(&entry("gopher://x", ""))
            .unwrap_err()
            .to_string();
        assert!(got.starts_with("source:"), "{got}");
    }
}
