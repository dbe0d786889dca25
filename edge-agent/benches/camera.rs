//! Camera sensing benchmark: cost of each stage per picture, and many 720p streams decoded and
//! analysed at once through the whole camera module, with the time from the motion picture to
//! its event and JPEG.
//!
//! `cargo bench -p edge-agent --bench camera [--features ffmpeg] [-- --streams 16 --seconds 30
//! --stages-only --decoder openh264|libavcodec --clip FILE.h264 --synthetic N]`
//!
//! The clip is made by ffmpeg at start: 1280x720, 10 fps, H.264 Main without B-frames at
//! 2 Mbit/s, a keyframe every 2 s (what street cameras send), showing HD colour bars with
//! sensor noise on every picture and a white box crossing for 3 s of every 10. It is played by
//! the camera module's file source in real time (the same decoder path as RTSP without the
//! network). Prints one JSON line per measurement.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge_agent::camera::decode::{
    H264Backend, H264Decoder, annex_b_access_units, annex_b_is_keyframe,
};
use edge_agent::camera::motion::{MotionConfig, MotionDetector};
use edge_agent::camera::snapshot::encode_snapshot;
use edge_agent::camera::stream::{Frame, FrameData};
use edge_agent::camera::{
    CameraConfig, CameraOutput, CameraSupervisor, EventIds, Pipeline, StreamState,
};
use protocols::messages::EventPhase;
use tokio::sync::mpsc;

fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn make_clip(path: &Path, seconds: u32) {
    let filter = format!(
        "smptehdbars=s=1280x720:r=10:d={seconds},noise=alls=6:allf=t[bg];\
         color=c=white:s=120x120:r=10:d={seconds}[box];\
         [bg][box]overlay=x='100+mod(t,10)*300':y=400:enable='lt(mod(t,10),3)'"
    );
    let ok = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i", &filter])
        .args([
            "-c:v",
            "libx264",
            "-profile:v",
            "main",
            "-bf",
            "0",
            "-g",
            "20",
        ])
        .args([
            "-b:v", "2M", "-maxrate", "2M", "-bufsize", "2M", "-pix_fmt", "yuv420p", "-f", "h264",
        ])
        .arg(path)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ffmpeg must be installed (scripts/setup-peers.sh)");
}

/// CPU seconds used by this process (user + system), from /proc.
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    cpu_of(&stat)
}

fn cpu_of(stat: &str) -> f64 {
    // Fields after the command name in parentheses; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Clock ticks; 100 per second on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used by the calling thread.
fn thread_cpu() -> f64 {
    cpu_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default())
}

/// The 1-minute load average: other work on the machine while measuring.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

/// CPU seconds of this process's threads whose name starts with `prefix`.
fn threads_cpu(prefix: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .map(|t| cpu_of(&std::fs::read_to_string(t.path().join("stat")).unwrap_or_default()))
        .sum()
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn backend_name(b: H264Backend) -> &'static str {
    match b {
        H264Backend::Openh264 => "openh264",
        H264Backend::Libavcodec => "libavcodec",
        H264Backend::Auto => "auto",
    }
}

fn stages(clip: &Bytes, backend: H264Backend) {
    let units: Vec<Bytes> = annex_b_access_units(clip)
        .into_iter()
        .map(|(a, b)| clip.slice(a..b))
        .collect();
    // Decode every picture.
    let mut dec = H264Decoder::with_backend(backend).unwrap();
    let (t, c) = (Instant::now(), thread_cpu());
    let mut n = 0;
    for _ in 0..3 {
        for u in &units {
            if dec.decode(u, |_| ()).unwrap().is_some() {
                n += 1;
            }
        }
    }
    let decode_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let decode_cpu_us = (thread_cpu() - c) * 1e6 / n as f64;
    // Downscale + detect, on decoded pictures.
    let mut dec = H264Decoder::with_backend(backend).unwrap();
    let mut det = MotionDetector::new(MotionConfig::default(), 1280, 720);
    let mut detect = Duration::ZERO;
    let mut snap_full = Duration::ZERO;
    let mut snap_640 = Duration::ZERO;
    let (mut analysed, mut snaps, mut jpeg_bytes) = (0u32, 0u32, 0usize);
    for (i, u) in units.iter().enumerate() {
        dec.decode(u, |pic| {
            let t = Instant::now();
            det.analyze(pic);
            detect += t.elapsed();
            analysed += 1;
            if i % 25 == 0 {
                let t = Instant::now();
                let s = encode_snapshot(pic, None, 80).unwrap();
                snap_full += t.elapsed();
                jpeg_bytes += s.jpeg.len();
                let t = Instant::now();
                encode_snapshot(pic, Some(640), 80).unwrap();
                snap_640 += t.elapsed();
                snaps += 1;
            }
        })
        .unwrap();
    }
    // The whole per-picture pipeline at 10 fps with detection at 5 fps (decode of every
    // picture, analysis of every second one, events and snapshots as they come).
    let mut cfg = CameraConfig::new("CAM-BENCH", "file:/clip.h264").unwrap();
    cfg.settings.h264_decoder = backend;
    let state = Arc::new(StreamState::default());
    let mut p = Pipeline::new(&cfg, EventIds::new(), state.clone());
    let t = Instant::now();
    let mut events = 0;
    for (i, u) in units.iter().enumerate() {
        let out = p.process(Frame {
            ts_ms: i as i64 * 100,
            received: Instant::now(),
            data: FrameData::H264 {
                unit: u.clone(),
                keyframe: annex_b_is_keyframe(u),
                disposable: false,
                after_loss: false,
            },
        });
        events += out
            .iter()
            .filter(|o| matches!(o, CameraOutput::Event(_)))
            .count();
    }
    let pipeline_us = t.elapsed().as_secs_f64() * 1e6 / units.len() as f64;
    println!(
        "{{\"bench\":\"camera_stages\",\"decoder\":\"{}\",\"resolution\":\"1280x720\",\"pictures\":{n},\"decode_us_per_picture\":{decode_us:.0},\"decode_cpu_us_per_picture\":{decode_cpu_us:.0},\"detect_us_per_analysis\":{:.0},\"snapshot_1280x720_us\":{:.0},\"snapshot_640x360_us\":{:.0},\"snapshot_1280x720_bytes\":{},\"pipeline_us_per_picture\":{pipeline_us:.0},\"pictures_analysed\":{},\"events\":{events},\"load1\":{}}}",
        backend_name(backend),
        detect.as_secs_f64() * 1e6 / analysed as f64,
        snap_full.as_secs_f64() * 1e6 / snaps as f64,
        snap_640.as_secs_f64() * 1e6 / snaps as f64,
        jpeg_bytes / snaps as usize,
        state.analysed(),
        load(),
    );
}

async fn streams(clip_path: &Path, n: usize, seconds: u64, backend: H264Backend) {
    let (tx, mut rx) = mpsc::channel(1024);
    let mut sup = CameraSupervisor::new(tx).unwrap();
    for i in 0..n {
        let cfg = CameraConfig::from_entry(
            &toml::from_str(&format!(
                "id = \"CAM-{i:04}\"\nsource = \"file:{}\"\nfps = 10.0\nhealth_interval = \"5s\"\nh264_decoder = \"{}\"\n",
                clip_path.display(),
                backend_name(backend)
            ))
            .unwrap(),
        )
        .unwrap();
        sup.start(cfg).unwrap();
    }
    // Event latency as the agent sees it: the start event's picture time (receipt, epoch ms)
    // to the moment its snapshot came out of the channel.
    let consumer = tokio::spawn(async move {
        let mut starts = std::collections::HashMap::new();
        let mut latencies = Vec::new();
        let (mut events, mut snapshots, mut starts_n) = (0u64, 0u64, 0u64);
        while let Some(m) = rx.recv().await {
            match m.output {
                CameraOutput::Event(e) => {
                    events += 1;
                    if e.phase == EventPhase::Start
                        && let Some(id) = e.snapshot
                    {
                        starts_n += 1;
                        starts.insert(id, e.ts);
                    }
                }
                CameraOutput::Snapshot { event_id, .. } => {
                    snapshots += 1;
                    if let Some(ts) = starts.remove(&event_id) {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_millis() as i64;
                        latencies.push((now - ts) as f64);
                    }
                }
                _ => {}
            }
        }
        (events, starts_n, snapshots, latencies)
    });
    // Warm up (decoders start at the first keyframe), then measure a window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before: Vec<_> = sup.status();
    let load0 = load();
    let (cpu0, cam0, t0) = (process_cpu(), threads_cpu("cam-"), Instant::now());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu1, cam1, wall) = (
        process_cpu(),
        threads_cpu("cam-"),
        t0.elapsed().as_secs_f64(),
    );
    let after = sup.status();
    let sum =
        |s: &[edge_agent::camera::CameraStatus],
         f: fn(&edge_agent::camera::CameraStatus) -> u64| { s.iter().map(f).sum::<u64>() };
    let frames = sum(&after, |s| s.frames) - sum(&before, |s| s.frames);
    let decoded = sum(&after, |s| s.frames_decoded) - sum(&before, |s| s.frames_decoded);
    let analysed = sum(&after, |s| s.frames_analysed) - sum(&before, |s| s.frames_analysed);
    let lost = sum(&after, |s| s.frames_lost) - sum(&before, |s| s.frames_lost);
    let mut inner: Vec<f64> = after
        .iter()
        .filter_map(|s| s.start_latency.map(|l| l.p99_ms))
        .collect();
    let inner_p99 = percentile(&mut inner, 1.0);
    sup.shutdown().await;
    let (events, starts, snapshots, mut lat) = consumer.await.unwrap();
    let cpu = cpu1 - cpu0;
    println!(
        "{{\"bench\":\"camera_streams\",\"decoder\":\"{}\",\"source\":\"file (H.264 Annex-B, 1280x720, 10 fps, 2 Mbit/s)\",\"streams\":{n},\"seconds\":{wall:.1},\
\"pictures_per_s\":{:.1},\"decoded_per_s\":{:.1},\"analysed_per_s\":{:.1},\"lost\":{lost},\
\"cpu_cores_used\":{:.2},\"cpu_percent_of_one_core_per_stream\":{:.1},\"analysis_threads_cpu_cores\":{:.2},\
\"events\":{events},\"starts\":{starts},\"snapshots\":{snapshots},\"start_to_snapshot_at_channel_ms_p50\":{:.0},\"p99\":{:.0},\"max\":{:.0},\"samples\":{},\
\"worst_camera_p99_receipt_to_outbox_ms\":{inner_p99:.1},\"load1_at_start\":{load0}}}",
        backend_name(backend),
        frames as f64 / wall,
        decoded as f64 / wall,
        analysed as f64 / wall,
        cpu / wall,
        cpu / wall / n as f64 * 100.0,
        (cam1 - cam0) / wall,
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
        percentile(&mut lat, 1.0),
        lat.len(),
    );
}

/// CPU of synthetic cameras (what `sim demo` runs): rendering, noise, detection, events.
async fn synthetic(n: usize, seconds: u64) {
    let (tx, mut rx) = mpsc::channel(1024);
    let mut sup = CameraSupervisor::new(tx).unwrap();
    for i in 0..n {
        let cfg = CameraConfig::new(
            &format!("CAM-SIM-{i:03}"),
            &format!("synthetic:street?seed={i}"),
        )
        .unwrap();
        sup.start(cfg).unwrap();
    }
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu0, t0, load0) = (process_cpu(), Instant::now(), load());
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (cpu, wall) = (process_cpu() - cpu0, t0.elapsed().as_secs_f64());
    sup.shutdown().await;
    drain.abort();
    println!(
        "{{\"bench\":\"camera_synthetic\",\"scene\":\"street 640x360 10 fps raw\",\"cameras\":{n},\"cpu_cores_used\":{:.3},\"cpu_percent_of_one_core_per_camera\":{:.2},\"load1_at_start\":{load0}}}",
        cpu / wall,
        cpu / wall / n as f64 * 100.0
    );
}

fn main() {
    let streams_n: usize = arg("--streams", 16);
    let seconds: u64 = arg("--seconds", 30);
    let stages_only = std::env::args().any(|a| a == "--stages-only");
    let dir = tempfile::tempdir().unwrap();
    // `--clip FILE.h264` measures other footage (e.g. a real camera's, extracted with
    // `ffmpeg -i cam.mp4 -c:v copy -bsf:v h264_mp4toannexb -f h264 FILE.h264`).
    let clip_path = match std::env::args().skip_while(|a| a != "--clip").nth(1) {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let p = dir.path().join("street-720p.h264");
            make_clip(&p, 20);
            p
        }
    };
    let clip = Bytes::from(std::fs::read(&clip_path).unwrap());
    let backends: Vec<H264Backend> = match std::env::args()
        .skip_while(|a| a != "--decoder")
        .nth(1)
        .as_deref()
    {
        Some("openh264") => vec![H264Backend::Openh264],
        Some("libavcodec") => vec![H264Backend::Libavcodec],
        _ if cfg!(feature = "ffmpeg") => vec![H264Backend::Openh264, H264Backend::Libavcodec],
        _ => vec![H264Backend::Openh264],
    };
    for b in &backends {
        stages(&clip, *b);
    }
    if stages_only {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let synthetic_n: usize = arg("--synthetic", 0);
    if synthetic_n > 0 {
        rt.block_on(synthetic(synthetic_n, seconds));
        return;
    }
    for b in backends {
        rt.block_on(streams(&clip_path, streams_n, seconds, b));
    }
}
