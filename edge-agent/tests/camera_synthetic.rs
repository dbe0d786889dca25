//! Synthetic cameras through the whole camera module: supervisor, source thread, analysis
//! thread, outbox, forwarder, the agent's channel.

mod camera_support;

use std::time::Duration;

use camera_support::*;
use edge_agent::camera::{CameraOutput, CameraSupervisor, EventIds, start_cameras};
use protocols::messages::EventPhase;
use protocols::quantity::Quantity;
use tokio::sync::mpsc;

const QUICK: &str = "end_after = \"1s\"\nupdate_interval = \"500ms\"\nhealth_interval = \"500ms\"\nstall_timeout = \"600ms\"\nreconnect_min = \"100ms\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_object_gives_start_snapshot_updates_and_end() {
    let (tx, mut rx) = mpsc::channel(64);
    let mut sup = CameraSupervisor::new(tx).unwrap();
    sup.start(camera(
        "CAM-SYN-1",
        "synthetic:motion?size=320x180&fps=10&seed=5",
        &format!("{QUICK}snapshot_max_width = 160\n"),
    ))
    .unwrap();
    let mut got = Received::default();
    until(
        &mut rx,
        &mut got,
        Duration::from_secs(10),
        "start, snapshot and two updates",
        |g| g.count(EventPhase::Update) >= 2 && !g.snapshots().is_empty(),
    )
    .await;
    let start = got.events()[0].clone();
    assert_eq!(start.phase, EventPhase::Start);
    assert_eq!(
        (start.camera.as_str(), start.event_type.as_str()),
        ("CAM-SYN-1", "motion")
    );
    assert!(start.score > 0.0 && start.score <= 1.0);
    assert!(start.stream.is_none() && start.seq.is_none());
    let id = start.snapshot.clone().unwrap();
    assert!(
        id.starts_with("CAM-SYN-1.") && protocols::id::validate_id(&id).is_ok(),
        "{id}"
    );
    // The object is a car on the road, in the lower half of the picture.
    assert!(!start.boxes.is_empty());
    for b in &start.boxes {
        assert!(b.iter().all(|v| (0.0..=1.0).contains(v)), "{b:?}");
        assert!(b[1] + b[3] > 0.5, "car box {b:?} should reach the road");
    }
    let (sid, jpeg, w, h) = got.snapshots()[0];
    assert_eq!((sid, w, h), (id.as_str(), 160, 90));
    let (dw, dh, _) = decode_jpeg(jpeg);
    assert_eq!((dw, dh), (160, 90));
    // Messages of one event come in order: start, snapshot, motion=true, then updates.
    let pos =
        |f: &dyn Fn(&CameraOutput) -> bool| got.all.iter().position(|m| f(&m.output)).unwrap();
    let p_start = pos(&|o| matches!(o, CameraOutput::Event(e) if e.phase == EventPhase::Start));
    let p_snap = pos(&|o| matches!(o, CameraOutput::Snapshot { .. }));
    let p_update = pos(&|o| matches!(o, CameraOutput::Event(e) if e.phase == EventPhase::Update));
    assert!(p_start < p_snap && p_snap < p_update);
    assert_eq!(got.numbers(Quantity::Motion).first(), Some(&1.0));
    // Stopping the camera ends the event and reports it offline.
    assert!(sup.stop("CAM-SYN-1").await);
    while let Ok(m) = rx.try_recv() {
        got.all.push(m);
    }
    let ends: Vec<_> = got
        .events()
        .into_iter()
        .filter(|e| e.phase == EventPhase::End)
        .cloned()
        .collect();
    assert_eq!(ends.len(), 1, "{:?}", got.phases());
    assert_eq!(ends[0].snapshot.as_deref(), Some(id.as_str()));
    assert_eq!(got.count(EventPhase::Start), 1);
    assert_eq!(got.online().last(), Some(&false));
    assert_eq!(got.numbers(Quantity::Motion).last(), Some(&0.0));
    assert!(!sup.stop("CAM-SYN-1").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_scene_sends_no_events_only_health() {
    let (tx, mut rx) = mpsc::channel(64);
    let entries = [entry(
        "CAM-SYN-2",
        "synthetic:static?size=320x180&fps=10",
        QUICK,
    )];
    let sup = start_cameras(&entries, tx).unwrap();
    let mut got = Received::default();
    soak(&mut rx, &mut got, Duration::from_secs(3)).await;
    assert!(got.events().is_empty(), "{:?}", got.phases());
    assert!(got.snapshots().is_empty());
    assert_eq!(got.online(), vec![true]);
    // Health every 500 ms: about 10 pictures a second, nothing lost. Raw pictures have no
    // bitrate.
    let fps = got.numbers(Quantity::CameraFps);
    assert!(fps.len() >= 4, "{fps:?}");
    assert!(fps[1..].iter().all(|f| (5.0..=15.0).contains(f)), "{fps:?}");
    assert!(
        got.numbers(Quantity::CameraBitrate)
            .iter()
            .all(|b| *b == 0.0)
    );
    assert!(
        got.numbers(Quantity::CameraFramesLost)
            .iter()
            .all(|l| *l == 0.0)
    );
    let st = &sup.status()[0];
    assert!(
        st.frames_analysed >= 10 && st.frames_analysed < st.frames,
        "{st:?}"
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_going_dark_turns_offline_and_comes_back() {
    // The `dark` scene sends nothing for 15 of every 35 scene seconds; at speed 10 that is
    // 2 s of pictures, then 1.5 s of none.
    let (tx, mut rx) = mpsc::channel(64);
    let entries = [entry(
        "CAM-SYN-3",
        "synthetic:dark?size=160x90&fps=10&speed=10",
        QUICK,
    )];
    let sup = start_cameras(&entries, tx).unwrap();
    let mut got = Received::default();
    until(
        &mut rx,
        &mut got,
        Duration::from_secs(10),
        "online, offline, online",
        |g| g.online().starts_with(&[true, false, true]),
    )
    .await;
    let st = &sup.status()[0];
    assert!(
        st.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no picture")),
        "{st:?}"
    );
    assert!(st.sessions >= 2);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_synthetic_scene_goes_through_the_decoder() {
    let (tx, mut rx) = mpsc::channel(64);
    let entries = [entry(
        "CAM-SYN-4",
        "synthetic:motion?size=320x180&fps=10&codec=h264",
        QUICK,
    )];
    let sup = start_cameras(&entries, tx).unwrap();
    let mut got = Received::default();
    until(
        &mut rx,
        &mut got,
        Duration::from_secs(10),
        "a snapshot and a bitrate",
        |g| {
            !g.snapshots().is_empty() && g.numbers(Quantity::CameraBitrate).iter().any(|b| *b > 0.0)
        },
    )
    .await;
    let (_, jpeg, w, h) = got.snapshots()[0];
    assert_eq!((w, h), (320, 180));
    assert_eq!(decode_jpeg(jpeg).0, 320);
    let st = &sup.status()[0];
    assert!(
        st.frames_decoded >= st.frames_analysed && st.frames_analysed > 0,
        "{st:?}"
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_starts_stops_and_restarts_only_what_changed() {
    let (tx, mut rx) = mpsc::channel(256);
    let a = entry("CAM-A", "synthetic:static?size=64x36", QUICK);
    let b = entry("CAM-B", "synthetic:static?size=64x36", QUICK);
    let c = entry("CAM-C", "synthetic:static?size=64x36", QUICK);
    let mut sup = start_cameras(&[a.clone(), b.clone()], tx).unwrap();
    assert_eq!(sup.ids(), ["CAM-A", "CAM-B"]);
    let mut got = Received::default();
    until(
        &mut rx,
        &mut got,
        Duration::from_secs(5),
        "both online",
        |g| g.online().len() == 2,
    )
    .await;
    let b2 = entry(
        "CAM-B",
        "synthetic:static?size=64x36",
        &format!("{QUICK}threshold = 40\n"),
    );
    // A bad entry changes nothing.
    let bad = entry("CAM-D", "synthetic:static", "threshold = 0");
    let err = sup.reload(&[a.clone(), bad]).await.unwrap_err().to_string();
    assert!(err.starts_with("camera[1].threshold:"), "{err}");
    assert_eq!(sup.ids(), ["CAM-A", "CAM-B"]);
    let summary = sup.reload(&[a, b2, c]).await.unwrap();
    assert_eq!(summary.unchanged, ["CAM-A"]);
    assert_eq!(summary.restarted, ["CAM-B"]);
    assert_eq!(summary.started, ["CAM-C"]);
    assert!(summary.stopped.is_empty());
    let summary = sup.reload(&[b]).await.unwrap();
    assert_eq!(
        (summary.stopped, summary.restarted),
        (
            vec!["CAM-A".to_string(), "CAM-C".to_string()],
            vec!["CAM-B".to_string()]
        )
    );
    assert_eq!(sup.ids(), ["CAM-B"]);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_never_blocks_a_camera_and_loses_no_start_or_end() {
    // A channel of one that nobody reads for three seconds, while a busy scene produces
    // events, updates every 100 ms and health every 100 ms.
    let (tx, mut rx) = mpsc::channel(1);
    let ids = EventIds::new();
    let mut sup = CameraSupervisor::with_event_ids(tx, ids).unwrap();
    let busy = "end_after = \"300ms\"\nupdate_interval = \"100ms\"\nhealth_interval = \"100ms\"\ndetect_fps = 10.0\n";
    sup.start(camera(
        "CAM-SLOW",
        "synthetic:street?size=160x90&fps=10&speed=3",
        busy,
    ))
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = sup.status()[0].clone();
    // The camera kept working meanwhile.
    assert!(st.frames >= 20 && st.frames_analysed >= 10, "{st:?}");
    assert!(st.outbox.coalesced > 0, "{st:?}");
    let mut got = Received::default();
    soak(&mut rx, &mut got, Duration::from_secs(2)).await;
    let stop = tokio::spawn(async move {
        sup.stop("CAM-SLOW").await;
        sup
    });
    soak(&mut rx, &mut got, Duration::from_secs(2)).await;
    stop.await.unwrap();
    while let Ok(m) = rx.try_recv() {
        got.all.push(m);
    }
    let starts = got.count(EventPhase::Start);
    assert!(starts >= 1, "{:?}", got.phases());
    assert_eq!(starts, got.count(EventPhase::End), "{:?}", got.phases());
    assert_eq!(starts, got.snapshots().len());
    // Every event's messages are in order: start, updates, end.
    for e in got.events().iter().filter(|e| e.phase == EventPhase::Start) {
        let id = e.snapshot.as_deref();
        let phases: Vec<_> = got
            .events()
            .iter()
            .filter(|x| x.snapshot.as_deref() == id)
            .map(|x| x.phase)
            .collect();
        assert_eq!(phases.first(), Some(&EventPhase::Start));
        assert_eq!(phases.last(), Some(&EventPhase::End));
        assert_eq!(phases.iter().filter(|p| **p == EventPhase::End).count(), 1);
    }
}
