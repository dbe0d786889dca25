//! HTTP JPEG snapshot cameras against Python's stdlib HTTP server (`python3 -m http.server`)
//! serving a file the test keeps replacing, like a camera's `snapshot.jpg`.

mod camera_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use camera_support::*;
use edge_agent::camera::CameraSupervisor;
use protocols::messages::EventPhase;
use protocols::quantity::Quantity;
use tokio::sync::mpsc;

const W: usize = 320;
const H: usize = 240;
const SETTINGS: &str = "poll_interval = \"200ms\"\nend_after = \"1s\"\nhealth_interval = \"1s\"\nstall_timeout = \"1s\"\nreconnect_min = \"200ms\"\nreconnect_max = \"400ms\"\n";

/// A colour JPEG: a dark gradient with a white square at `x` (None: no square).
fn picture(x: Option<usize>) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(W * H * 3);
    for y in 0..H {
        for px in 0..W {
            let inside = x.is_some_and(|x| (x..x + 40).contains(&px) && (100..140).contains(&y));
            let v = if inside {
                250
            } else {
                (40 + px / 8 + y / 8) as u8
            };
            rgb.extend_from_slice(&[v, v, if inside { 250 } else { v / 2 }]);
        }
    }
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 85)
        .encode(&rgb, W as u16, H as u16, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

/// Replaces `dir/snapshot.jpg` atomically.
fn publish(dir: &Path, bytes: &[u8]) {
    let tmp = dir.join(".next");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(tmp, dir.join("snapshot.jpg")).unwrap();
}

fn http_server(dir: &Path) -> (Peer, u16) {
    let mut cmd = Command::new(SYSTEM_PYTHON);
    cmd.args([
        "-u",
        "-m",
        "http.server",
        "0",
        "--bind",
        "127.0.0.1",
        "--directory",
    ])
    .arg(dir)
    .stderr(std::process::Stdio::null()); // one access log line per poll
    let (peer, line) = Peer::start_until(&mut cmd, "Serving HTTP", Duration::from_secs(10));
    // "Serving HTTP on 127.0.0.1 port 34567 (http://127.0.0.1:34567/) ..."
    let port = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (peer, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_square_in_polled_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), &picture(None));
    let (_server, port) = http_server(dir.path());
    // The square crosses the picture in steps, one step per poll.
    let frames: Vec<Vec<u8>> = (0..28).map(|i| picture(Some(i * 10))).collect();
    let writer_dir = dir.path().to_owned();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for f in frames.iter().cycle().take(60) {
            publish(&writer_dir, f);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let (tx, mut rx) = mpsc::channel(64);
    let mut sup = CameraSupervisor::new(tx).unwrap();
    let url = format!("http://127.0.0.1:{port}/snapshot.jpg");
    sup.start(camera("CAM-HTTP-1", &url, SETTINGS)).unwrap();
    sup.start(camera(
        "CAM-HTTP-2",
        &url,
        &format!("{SETTINGS}snapshot_max_width = 160\n"),
    ))
    .unwrap();
    let mut got = Received::default();
    until(
        &mut rx,
        &mut got,
        Duration::from_secs(15),
        "a start from both cameras",
        |g| g.snapshots().len() >= 2,
    )
    .await;
    for (id, jpeg, w, h) in got.snapshots() {
        let (dw, dh, rgb) = decode_jpeg(jpeg);
        assert_eq!((dw, dh), (w as usize, h as usize));
        let start = got
            .events()
            .into_iter()
            .find(|e| e.snapshot.as_deref() == Some(id))
            .unwrap()
            .clone();
        if start.camera == "CAM-HTTP-1" {
            // The camera's own JPEG is passed through untouched.
            assert_eq!((w, h), (320, 240));
            assert!(jpeg.starts_with(&[0xFF, 0xD8]));
        } else {
            assert_eq!((w, h), (160, 120));
        }
        // The square (white, not yellowish like the background) is inside a box.
        let (mut sx, mut sy, mut n) = (0usize, 0usize, 0usize);
        for (i, p) in rgb.chunks_exact(3).enumerate() {
            if p[0] > 200 && p[2] > 200 {
                sx += i % dw;
                sy += i / dw;
                n += 1;
            }
        }
        assert!(n > 50, "square not in the snapshot");
        let (cx, cy) = (
            sx as f64 / n as f64 / dw as f64,
            sy as f64 / n as f64 / dh as f64,
        );
        assert!(
            start
                .boxes
                .iter()
                .any(|b| b[0] <= cx && cx <= b[0] + b[2] && b[1] <= cy && cy <= b[1] + b[3]),
            "square at ({cx:.2},{cy:.2}) not in {:?}",
            start.boxes
        );
    }
    until(
        &mut rx,
        &mut got,
        Duration::from_secs(10),
        "bitrate readings",
        |g| {
            g.numbers(Quantity::CameraBitrate)
                .iter()
                .filter(|b| **b > 0.0)
                .count()
                >= 2
        },
    )
    .await;
    let fps = got.numbers(Quantity::CameraFps);
    assert!(
        fps.iter().any(|f| (3.0..=6.0).contains(f)),
        "polling at 5 Hz: {fps:?}"
    );
    writer.abort();
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_garbage_snapshots_go_offline_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), &picture(None));
    let (_server, port) = http_server(dir.path());
    let (tx, mut rx) = mpsc::channel(64);
    let mut sup = CameraSupervisor::new(tx).unwrap();
    sup.start(camera(
        "CAM-HTTP-3",
        &format!("http://127.0.0.1:{port}/snapshot.jpg"),
        SETTINGS,
    ))
    .unwrap();
    let mut got = Received::default();
    until(&mut rx, &mut got, Duration::from_secs(10), "online", |g| {
        g.online() == [true]
    })
    .await;
    // 404.
    std::fs::remove_file(dir.path().join("snapshot.jpg")).unwrap();
    until(
        &mut rx,
        &mut got,
        Duration::from_secs(5),
        "offline on 404",
        |g| g.online() == [true, false],
    )
    .await;
    let st = sup.status()[0].clone();
    assert!(
        st.last_error.as_deref().is_some_and(|e| e.contains("404")),
        "{st:?}"
    );
    publish(dir.path(), &picture(None));
    until(
        &mut rx,
        &mut got,
        Duration::from_secs(5),
        "online again",
        |g| g.online() == [true, false, true],
    )
    .await;
    // A body that is not a JPEG.
    publish(dir.path(), b"<html>login required</html>");
    until(
        &mut rx,
        &mut got,
        Duration::from_secs(5),
        "offline on garbage",
        |g| g.online().len() == 4,
    )
    .await;
    let st = sup.status()[0].clone();
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("not a JPEG")),
        "{st:?}"
    );
    assert!(st.frames_lost >= 2);
    // A truncated JPEG is a lost picture, not a crash.
    let good = picture(None);
    publish(dir.path(), &good[..good.len() / 3]);
    soak(&mut rx, &mut got, Duration::from_millis(800)).await;
    publish(dir.path(), &good);
    until(
        &mut rx,
        &mut got,
        Duration::from_secs(5),
        "online at last",
        |g| g.online().last() == Some(&true),
    )
    .await;
    assert!(
        got.events().iter().all(|e| e.phase != EventPhase::Start),
        "{:?} {:?}",
        got.events(),
        sup.status()
    );
    sup.shutdown().await;
}
