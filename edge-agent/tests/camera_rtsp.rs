//! RTSP cameras against a real RTSP server nobody here wrote: GStreamer's gst-rtsp-server
//! (`tests/peers/rtsp_server.py`), encoding test scenes with x264.

mod camera_support;

use std::process::Command;
use std::time::{Duration, Instant};

use camera_support::*;
use edge_agent::camera::{CameraStatus, CameraSupervisor};
use protocols::messages::EventPhase;
use protocols::quantity::Quantity;
use tokio::sync::mpsc;

const SETTINGS: &str = "end_after = \"1s\"\nupdate_interval = \"1s\"\nhealth_interval = \"1s\"\nstall_timeout = \"2s\"\nreconnect_min = \"200ms\"\nreconnect_max = \"1s\"\n";

/// Starts the RTSP server on `port` (0: any free port); returns it with its port.
fn rtsp_server(port: u16) -> (Peer, u16) {
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.arg(peer_script("rtsp_server.py")).arg(port.to_string());
    let (peer, line) = Peer::start(&mut cmd, Duration::from_secs(20));
    let port = line.trim_start_matches("ready ").trim().parse().unwrap();
    (peer, port)
}

fn status(sup: &CameraSupervisor) -> CameraStatus {
    sup.status().into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_ball_is_found_where_it_is() {
    let (_server, port) = rtsp_server(0);
    let (tx, mut rx) = mpsc::channel(64);
    let mut sup = CameraSupervisor::new(tx).unwrap();
    let url = format!("rtsp://127.0.0.1:{port}/motion");
    sup.start(camera("CAM-RTSP-1", &url, SETTINGS)).unwrap();
    let mut got = Received::default();
    until(
        &mut rx,
        &mut got,
        Duration::from_secs(20),
        "a start with its snapshot and health",
        |g| {
            !g.snapshots().is_empty() && g.numbers(Quantity::CameraBitrate).iter().any(|b| *b > 0.0)
        },
    )
    .await;
    let start = got.events()[0].clone();
    assert_eq!(start.phase, EventPhase::Start);
    let (id, jpeg, w, h) = got.snapshots()[0];
    assert_eq!(Some(id), start.snapshot.as_deref());
    assert_eq!((w, h), (640, 360));
    let (dw, dh, rgb) = decode_jpeg(jpeg);
    assert_eq!((dw, dh), (640, 360));
    // Where the white ball is in the snapshot (the same picture the boxes come from).
    let (mut x0, mut y0, mut x1, mut y1, mut n) = (dw, dh, 0, 0, 0);
    for (i, p) in rgb.chunks_exact(3).enumerate() {
        if p.iter().all(|&c| c > 200) {
            let (x, y) = (i % dw, i / dw);
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            n += 1;
        }
    }
    assert!(
        n > 200,
        "the ball should be in the snapshot ({n} white pixels)"
    );
    let (cx, cy) = (
        (x0 + x1) as f64 / 2.0 / dw as f64,
        (y0 + y1) as f64 / 2.0 / dh as f64,
    );
    let inside = start.boxes.iter().any(|b| {
        b[0] - 0.02 <= cx
            && cx <= b[0] + b[2] + 0.02
            && b[1] - 0.02 <= cy
            && cy <= b[1] + b[3] + 0.02
    });
    assert!(
        inside,
        "ball at ({cx:.3},{cy:.3}) is in none of {:?}",
        start.boxes
    );
    // The boxes are about the ball, not the whole frame.
    assert!(
        start.boxes.iter().all(|b| b[2] * b[3] < 0.1),
        "{:?}",
        start.boxes
    );
    let fps = got.numbers(Quantity::CameraFps);
    assert!(fps.iter().any(|f| (7.0..=13.0).contains(f)), "{fps:?}");
    let st = status(&sup);
    assert_eq!(st.online, Some(true));
    assert!(st.start_latency.is_some());
    sup.stop("CAM-RTSP-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_scene_gives_no_events_and_a_mask_hides_a_noisy_corner() {
    let (_server, port) = rtsp_server(0);
    let (tx, mut rx) = mpsc::channel(64);
    let mut sup = CameraSupervisor::new(tx).unwrap();
    let url = |path| format!("rtsp://127.0.0.1:{port}/{path}");
    sup.start(camera("CAM-STATIC", &url("static"), SETTINGS))
        .unwrap();
    // The SMPTE card's corner of random snow is motion to the detector, unless masked.
    sup.start(camera("CAM-SNOW", &url("snow"), SETTINGS))
        .unwrap();
    let masked = format!("{SETTINGS}masks = [[0.72, 0.72, 0.28, 0.28]]\n");
    sup.start(camera("CAM-SNOW-MASKED", &url("snow"), &masked))
        .unwrap();
    let mut got = Received::default();
    until(
        &mut rx,
        &mut got,
        Duration::from_secs(20),
        "all online",
        |g| g.online() == [true, true, true],
    )
    .await;
    soak(&mut rx, &mut got, Duration::from_secs(4)).await;
    let events_of = |id: &str| got.events().iter().filter(|e| e.camera == id).count();
    assert_eq!(events_of("CAM-STATIC"), 0);
    assert_eq!(events_of("CAM-SNOW-MASKED"), 0);
    let snow: Vec<_> = got
        .events()
        .into_iter()
        .filter(|e| e.camera == "CAM-SNOW")
        .cloned()
        .collect();
    assert!(!snow.is_empty(), "the unmasked snow should be motion");
    assert!(
        snow[0].boxes.iter().all(|b| b[0] >= 0.7 && b[1] >= 0.7),
        "{:?}",
        snow[0].boxes
    );
    for st in sup.status() {
        assert!(st.frames_analysed >= 15, "{st:?}");
        // Each session has its own server pipeline, starting at a keyframe: nothing lost.
        assert_eq!(st.frames_lost, 0, "{st:?}");
    }
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brightness_flash_is_ignored() {
    let (_server, port) = rtsp_server(0);
    let (tx, mut rx) = mpsc::channel(64);
    let mut sup = CameraSupervisor::new(tx).unwrap();
    sup.start(camera(
        "CAM-RTSP-3",
        &format!("rtsp://127.0.0.1:{port}/flash"),
        SETTINGS,
    ))
    .unwrap();
    let mut got = Received::default();
    until(&mut rx, &mut got, Duration::from_secs(20), "online", |g| {
        g.online() == [true]
    })
    .await;
    // The server flashes every 2 s; wait until the detector saw at least two of them.
    let deadline = Instant::now() + Duration::from_secs(15);
    while status(&sup).lighting_changes < 2 {
        assert!(
            Instant::now() < deadline,
            "no flash seen: {:?}",
            status(&sup)
        );
        soak(&mut rx, &mut got, Duration::from_millis(200)).await;
    }
    soak(&mut rx, &mut got, Duration::from_secs(1)).await;
    assert!(
        got.events().is_empty(),
        "a flash raised motion: {:?}",
        got.events()
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_turns_camera_offline_and_restart_brings_it_back() {
    let (mut server, port) = rtsp_server(0);
    let (tx, mut rx) = mpsc::channel(64);
    let mut sup = CameraSupervisor::new(tx).unwrap();
    sup.start(camera(
        "CAM-RTSP-4",
        &format!("rtsp://127.0.0.1:{port}/static"),
        SETTINGS,
    ))
    .unwrap();
    let mut got = Received::default();
    until(&mut rx, &mut got, Duration::from_secs(20), "online", |g| {
        g.online() == [true]
    })
    .await;
    server.kill();
    let killed = Instant::now();
    until(&mut rx, &mut got, Duration::from_secs(5), "offline", |g| {
        g.online() == [true, false]
    })
    .await;
    let offline_after = killed.elapsed();
    // Reconnects keep failing while the server is down, without flapping the state.
    soak(&mut rx, &mut got, Duration::from_secs(2)).await;
    assert_eq!(got.online(), [true, false]);
    let (_server, _) = rtsp_server(port);
    until(
        &mut rx,
        &mut got,
        Duration::from_secs(15),
        "online again",
        |g| g.online() == [true, false, true],
    )
    .await;
    let st = status(&sup);
    assert!(st.sessions >= 2, "{st:?}");
    assert!(st.last_error.is_some());
    eprintln!("offline {offline_after:?} after the kill");
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_is_a_stall_noticed_within_the_stall_timeout() {
    // SIGSTOP keeps the TCP connection open but sends nothing: only the stall timer can
    // notice. SIGCONT lets the camera come back.
    let (server, port) = rtsp_server(0);
    let pid = server.child.id().to_string();
    let (tx, mut rx) = mpsc::channel(64);
    let mut sup = CameraSupervisor::new(tx).unwrap();
    sup.start(camera(
        "CAM-RTSP-5",
        &format!("rtsp://127.0.0.1:{port}/static"),
        SETTINGS,
    ))
    .unwrap();
    let mut got = Received::default();
    until(&mut rx, &mut got, Duration::from_secs(20), "online", |g| {
        g.online() == [true]
    })
    .await;
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let frozen = Instant::now();
    until(&mut rx, &mut got, Duration::from_secs(6), "offline", |g| {
        g.online() == [true, false]
    })
    .await;
    let after = frozen.elapsed();
    // stall_timeout is 2 s.
    assert!(
        after >= Duration::from_millis(1500),
        "offline after {after:?}"
    );
    let st = status(&sup);
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no picture") || e.contains("stalled")),
        "{st:?}"
    );
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    until(
        &mut rx,
        &mut got,
        Duration::from_secs(15),
        "online again",
        |g| g.online() == [true, false, true],
    )
    .await;
    eprintln!("stall noticed after {after:?}");
    sup.shutdown().await;
    drop(server);
}
