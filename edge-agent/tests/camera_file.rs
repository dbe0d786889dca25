//! File sources: clips written by ffmpeg (H.264 Annex-B and Motion JPEG), played in real time.

mod camera_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use camera_support::*;
use edge_agent::camera::CameraSupervisor;
use edge_agent::config::AgentConfig;
use protocols::messages::EventPhase;
use protocols::quantity::Quantity;
use tokio::sync::mpsc;

const SETTINGS: &str = "end_after = \"1s\"\nhealth_interval = \"1s\"\nstall_timeout = \"1s\"\n";

/// A 4 s clip at 10 fps: a white square crossing a grey picture from x=20 at 60 px/s.
fn clip(dir: &Path, name: &str, codec: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("color=c=0x606060:s=320x240:r=10:d=4[bg];color=c=white:s=40x40:r=10:d=4[fg];[bg][fg]overlay=x='20+t*60':y=100")
        .args(codec)
        .arg(&path)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success());
    path
}

async fn run(
    source: &str,
    extra: &str,
    within: Duration,
) -> (Received, edge_agent::camera::CameraStatus) {
    let (tx, mut rx) = mpsc::channel(64);
    let mut sup = CameraSupervisor::new(tx).unwrap();
    sup.start(camera("CAM-FILE", source, &format!("{SETTINGS}{extra}")))
        .unwrap();
    let mut got = Received::default();
    until(
        &mut rx,
        &mut got,
        within,
        "a start, its snapshot and a bitrate",
        |g| {
            !g.snapshots().is_empty() && g.numbers(Quantity::CameraBitrate).iter().any(|b| *b > 0.0)
        },
    )
    .await;
    let st = sup.status()[0].clone();
    sup.shutdown().await;
    (got, st)
}

fn check_square(got: &Received) {
    let start = got.events()[0];
    assert_eq!(start.phase, EventPhase::Start);
    // The square is 100..140 high: every box is on that band.
    for b in &start.boxes {
        assert!(b[1] < 140.0 / 240.0 && b[1] + b[3] > 100.0 / 240.0, "{b:?}");
    }
    let (_, jpeg, w, h) = got.snapshots()[0];
    assert_eq!((w, h), (320, 240));
    assert_eq!(decode_jpeg(jpeg).0, 320);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_annex_b_clip_with_b_frames() {
    let dir = tempfile::tempdir().unwrap();
    // High profile with non-reference B-frames, as many encoders make them.
    let path = clip(
        dir.path(),
        "clip.h264",
        &[
            "-c:v",
            "libx264",
            "-profile:v",
            "high",
            "-bf",
            "2",
            "-b_strategy",
            "0",
            "-x264-params",
            "b-pyramid=none",
            "-g",
            "10",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "h264",
        ],
    );
    let (got, st) = run(
        &format!("file:{}", path.display()),
        "",
        Duration::from_secs(10),
    )
    .await;
    check_square(&got);
    let fps = got.numbers(Quantity::CameraFps);
    assert!(fps.iter().any(|f| (8.0..=12.0).contains(f)), "{fps:?}");
    // At 5 analyses a second, B-frames not due for analysis are never decoded.
    assert!(st.frames_skipped > 0, "{st:?}");
    assert!(st.frames_decoded + st.frames_skipped <= st.frames, "{st:?}");
    assert_eq!(st.frames_lost, 0, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn motion_jpeg_clip() {
    let dir = tempfile::tempdir().unwrap();
    let path = clip(
        dir.path(),
        "clip.mjpeg",
        &[
            "-c:v", "mjpeg", "-q:v", "5", "-pix_fmt", "yuvj420p", "-f", "mjpeg",
        ],
    );
    let (got, st) = run(
        &format!("file:{}", path.display()),
        "",
        Duration::from_secs(10),
    )
    .await;
    check_square(&got);
    assert_eq!(st.frames_lost, 0, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clip_without_loop_ends_offline() {
    let dir = tempfile::tempdir().unwrap();
    let path = clip(
        dir.path(),
        "short.h264",
        &["-t", "1", "-c:v", "libx264", "-bf", "0", "-f", "h264"],
    );
    let (tx, mut rx) = mpsc::channel(64);
    let mut sup = CameraSupervisor::new(tx).unwrap();
    sup.start(camera(
        "CAM-FILE-2",
        &format!("file:{}", path.display()),
        &format!("{SETTINGS}loop = false\n"),
    ))
    .unwrap();
    let mut got = Received::default();
    until(
        &mut rx,
        &mut got,
        Duration::from_secs(6),
        "online then offline",
        |g| g.online() == [true, false],
    )
    .await;
    assert_eq!(sup.status()[0].last_error.as_deref(), Some("end of file"));
    sup.shutdown().await;
}

#[test]
fn agent_toml_cameras_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[agent]\nid = \"AG-1\"\nsecret = \"s\"\nhub = \"mqtt://127.0.0.1:1883\"\n\n[[camera]]\nid = \"CAM-1\"\n";
    let ok = format!(
        "{base}source = \"file:clips/gate.h264\"\nthreshold = 30\nmasks = [[0.0, 0.0, 1.0, 0.1]]\n"
    );
    let cfg = AgentConfig::from_toml(&ok, dir.path()).unwrap();
    assert_eq!(
        cfg.file.camera[0].source,
        format!("file:{}", dir.path().join("clips/gate.h264").display())
    );
    let typed = edge_agent::camera::CameraConfig::from_entry(&cfg.file.camera[0]).unwrap();
    assert_eq!(typed.settings.threshold, 30);
    let syn = format!("{base}source = \"synthetic:street?seed=4\"\n");
    assert!(AgentConfig::from_toml(&syn, dir.path()).is_ok());
    for (text, want) in [
        (
            format!("{base}source = \"file:clip.mp4\"\n"),
            "camera[0].source: ",
        ),
        (
            format!("{base}source = \"synthetic:moon\"\n"),
            "camera[0].source: unknown scene",
        ),
        (
            format!("{base}source = \"rtsp://cam/1\"\nmin_area = 3.0\n"),
            "camera[0].min_area:",
        ),
        (
            format!("{base}source = \"rtsp://cam/1\"\nsensitivity = 3\n"),
            "camera[0].sensitivity",
        ),
    ] {
        let err = AgentConfig::from_toml(&text, dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(want), "{err}");
    }
}
