//! The demo's assembly in-process on free ports: the whole district comes alive (feeds from
//! every kind of device through the real agents and hub, twins online, the lighting control
//! switching the lamps through desired state, a storm raising the river, the cameras sensing
//! through the hub's video API), the scripted incidents show up in what the hub publishes, it
//! stops cleanly, and a second start in the same directory keeps its secrets and its
//! development PKI. The agents run on MQTT over TLS here, as by default.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use sim::district::demo::{Demo, DemoOptions};
use sim::district::layout::CameraScene;
use sim::district::provision::{self, FLOOD_CONTROL};
use tokio::sync::mpsc;

/// How long anything the tests wait for may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// What an app sees of the district: every feed and twin message.
struct Watcher {
    rx: mpsc::UnboundedReceiver<(String, Value)>,
    feeds: HashMap<String, Value>,
    feed_kinds: HashSet<String>,
    twins: HashMap<String, Value>,
    ever_online: HashSet<String>,
}

impl Watcher {
    /// Subscribes as the command center to feeds and twins.
    async fn start(demo: &Demo) -> Watcher {
        let (app, secret) = demo.command_center();
        let addr = demo.mqtt_addr();
        let mut opts = MqttOptions::new(format!("{app}.test"), addr.ip().to_string(), addr.port());
        opts.set_credentials(app, secret);
        opts.set_max_packet_size(1 << 20, 1 << 16);
        let (client, mut events) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        client
                            .subscribe("v1/feeds/#", QoS::AtMostOnce)
                            .await
                            .unwrap();
                        client
                            .subscribe("v1/twin/+", QoS::AtMostOnce)
                            .await
                            .unwrap();
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: Value = serde_json::from_slice(&p.payload).unwrap();
                        if tx.send((p.topic.clone(), v)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Watcher {
            rx,
            feeds: HashMap::new(),
            feed_kinds: HashSet::new(),
            twins: HashMap::new(),
            ever_online: HashSet::new(),
        }
    }

    /// Takes in messages until `done` holds, or fails naming `what`.
    async fn until(&mut self, what: &str, done: impl Fn(&Watcher) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !done(self) {
            let msg = tokio::time::timeout_at(deadline, self.rx.recv()).await;
            let Ok(Some((topic, v))) = msg else {
                panic!(
                    "timed out waiting for {what}; feeds from {:?}, {} twins, {} ever online",
                    self.feed_kinds,
                    self.twins.len(),
                    self.ever_online.len()
                );
            };
            if topic.starts_with("v1/feeds/") {
                self.feed_kinds
                    .insert(v["kind"].as_str().unwrap().to_string());
                self.feeds
                    .insert(v["device"].as_str().unwrap().to_string(), v);
            } else if let Some(id) = topic.strip_prefix("v1/twin/") {
                if v["online"] == true {
                    self.ever_online.insert(id.to_string());
                }
                self.twins.insert(id.to_string(), v);
            }
        }
    }

    fn reported(&self, id: &str, q: &str) -> Option<Value> {
        let v = &self.twins.get(id)?["reported"][q]["value"];
        (!v.is_null()).then(|| v.clone())
    }
}

/// The hub's HTTP API as one app.
struct Api {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Api {
    fn new(demo: &Demo, app: &str, secret: &str) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: format!("http://{}", demo.http_addr()),
            auth: format!("Bearer {app}:{secret}"),
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header("authorization", &self.auth)
            .send()
            .await
            .unwrap()
    }

    async fn json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
    }

    /// Asks `path` until `done` picks something out of the answer, or fails naming `what`.
    async fn until<T>(&self, what: &str, path: &str, done: impl Fn(&Value) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let v = self.json(path).await;
            if let Some(t) = done(&v) {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; last {path}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Width and height from a JPEG's start-of-frame segment.
fn jpeg_size(jpeg: &[u8]) -> Option<(u32, u32)> {
    if !jpeg.starts_with(&[0xFF, 0xD8]) || !jpeg.ends_with(&[0xFF, 0xD9]) {
        return None;
    }
    let mut i = 2;
    while i + 9 < jpeg.len() {
        if jpeg[i] != 0xFF {
            return None;
        }
        let marker = jpeg[i + 1];
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            let h = u16::from_be_bytes([jpeg[i + 5], jpeg[i + 6]]) as u32;
            let w = u16::from_be_bytes([jpeg[i + 7], jpeg[i + 8]]) as u32;
            return Some((w, h));
        }
        i += 2 + len;
    }
    None
}

/// District local time now (UTC+8, the hub's default `utc_offset`), minutes after midnight.
fn district_minute_now() -> i64 {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (s + 8 * 3600).rem_euclid(86_400) / 60
}

/// The cameras through the hub's video API: the catalog with GB/T 28181 ids, motion events
/// with JPEG snapshots of the configured size, the failing camera going offline, the
/// floodlights' lighting changes raising nothing, grants, and the night rule on the
/// restricted area.
async fn cameras_sense(demo: &Demo, started: std::time::Instant) {
    let layout = demo.layout().clone();
    let speed = demo.clock().speed();
    let (app, secret) = demo.command_center();
    let cc = Api::new(demo, app, secret);
    let by_scene = |s: CameraScene| layout.cameras.iter().find(|c| c.scene == s).unwrap();
    let failing = by_scene(CameraScene::Failing).id.clone();
    let floodlit = by_scene(CameraScene::Floodlights);
    let restricted = layout.cameras.iter().find(|c| c.restricted).unwrap();

    // The catalog: every camera with its GB/T 28181 id, place and department, each seen
    // online (the failing one only between its outages).
    let mut ever_online = HashSet::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let catalog = loop {
        let v = cc.json("/api/v1/cameras").await;
        let list = v.as_array().unwrap().clone();
        for c in list.iter().filter(|c| c["online"] == true) {
            ever_online.insert(c["id"].as_str().unwrap().to_string());
        }
        if list.len() == layout.cameras.len() && ever_online.len() == list.len() {
            break list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every camera in the catalog online: {v}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    for c in &layout.cameras {
        let e = catalog.iter().find(|e| e["id"] == c.id.as_str()).unwrap();
        assert_eq!(e["gb_id"], c.gb_id.as_str(), "{e}");
        let gb = protocols::gb28181::GbId::parse(e["gb_id"].as_str().unwrap()).unwrap();
        assert!(gb.is_camera(), "{e}");
        assert_eq!(
            (e["name"].as_str(), e["dept"].as_str()),
            (Some(c.name.as_str()), Some(c.dept))
        );
        assert_eq!(
            (e["lat"].as_f64(), e["lon"].as_f64()),
            (Some(c.lat), Some(c.lon))
        );
        assert_eq!(e["stream"], provision::camera_source(c, speed).as_str());
    }

    // A motion event with its snapshot: a JPEG of the configured size.
    let event = cc
        .until("a motion event with a snapshot", "/api/v1/events", |v| {
            v.as_array()?
                .iter()
                .find(|e| e["type"] == "motion" && e["snapshot"].is_object())
                .cloned()
        })
        .await;
    let (w, h) = provision::CAMERA_SIZE;
    assert_eq!(
        (
            event["snapshot"]["width"].as_u64(),
            event["snapshot"]["height"].as_u64()
        ),
        (Some(w as u64), Some(h as u64)),
        "{event}"
    );
    let camera = event["camera"].as_str().unwrap().to_string();
    assert!(
        layout
            .cameras
            .iter()
            .any(|c| c.id == camera && c.scene == CameraScene::Street),
        "{event}"
    );
    let url = event["snapshot"]["url"].as_str().unwrap();
    for path in [
        url.to_string(),
        format!("/api/v1/cameras/{camera}/snapshot"),
    ] {
        let r = cc.get(&path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.headers()["content-type"], "image/jpeg", "{path}");
        let jpeg = r.bytes().await.unwrap();
        assert_eq!(jpeg_size(&jpeg), Some((w, h)), "{path}: not a {w}x{h} JPEG");
    }

    // The failing camera goes dark: offline in the catalog.
    cc.until(
        "the failing camera offline",
        &format!("/api/v1/cameras/{failing}"),
        |v| (v["online"] == false).then_some(()),
    )
    .await;

    // The floodlights switched off and on again (scene seconds 10 and 20; the scene runs from
    // about when the demo started): lighting changes, never an event.
    let floodlit_s =
        started.elapsed().as_secs_f64() * provision::scene_speed(floodlit.scene, speed);
    assert!(
        floodlit_s > 21.0,
        "the floodlights did not switch yet ({floodlit_s:.1} s)"
    );
    let none = cc
        .json(&format!("/api/v1/events?camera={}", floodlit.id))
        .await;
    assert_eq!(
        none,
        Value::Array(vec![]),
        "a lighting change raised an event"
    );

    // Grants: the water department's room sees its own cameras only.
    let flood = Api::new(demo, FLOOD_CONTROL, demo.app_secret(FLOOD_CONTROL));
    let seen = flood.json("/api/v1/cameras").await;
    let mut seen: Vec<&str> = seen
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    seen.sort();
    let mut own: Vec<&str> = layout
        .cameras
        .iter()
        .filter(|c| c.dept == provision::FLOOD_CONTROL_DEPT)
        .map(|c| c.id.as_str())
        .collect();
    own.sort();
    assert_eq!(seen, own);
    let other = layout
        .cameras
        .iter()
        .find(|c| c.dept != provision::FLOOD_CONTROL_DEPT)
        .unwrap();
    for path in [
        format!("/api/v1/cameras/{}/snapshot", other.id),
        format!("/api/v1/events?camera={}", other.id),
    ] {
        assert_eq!(flood.get(&path).await.status(), 403, "{path}");
    }

    // The restricted area: motion there raises an alert at night (district time) only. Wait
    // for one of its events to end and the twin to report `motion` false after it, so the
    // rule has seen the `true` before.
    let ended = cc
        .until(
            "an event of the restricted camera ended",
            &format!("/api/v1/events?camera={}", restricted.id),
            |v| v.as_array()?.iter().find_map(|e| e["end"].as_i64()),
        )
        .await;
    cc.until(
        "the restricted camera's motion false after its event",
        &format!("/api/v1/devices/{}", restricted.id),
        |v| {
            let m = &v["twin"]["reported"]["motion"];
            let ts = protocols::time::parse_rfc3339(m["ts"].as_str()?).ok()?;
            (m["value"] == false && ts >= ended).then_some(())
        },
    )
    .await;
    let alerts = cc
        .json(&format!("/api/v1/alerts?device={}", restricted.id))
        .await;
    let raised = alerts
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["rule"] == "restricted-area-motion");
    let minute = district_minute_now();
    // Not near the window's edges (22:00, 06:00), where the answer depends on the instant.
    if !((21 * 60 + 58..22 * 60 + 2).contains(&minute)
        || (5 * 60 + 58..6 * 60 + 2).contains(&minute))
    {
        let night = !(6 * 60..22 * 60).contains(&minute);
        assert_eq!(
            raised, night,
            "restricted-area alert at district minute {minute}: {alerts}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_district_comes_alive_cameras_sense_and_the_storm_raises_the_river() {
    let dir = tempfile::tempdir().unwrap();
    // Noon at 120x: the lighting control switches the lamps off (they power up lit), and the
    // storm (45 demo seconds in) reaches the downstream gauges within tens of real seconds.
    let started = std::time::Instant::now();
    let demo = Demo::start(DemoOptions {
        speed: 120.0,
        start: Some("12:00".parse().unwrap()),
        incidents: false,
        ..DemoOptions::local(dir.path())
    })
    .await
    .unwrap();
    eprintln!("demo started in {:?}", started.elapsed());
    let ids: Vec<String> = demo.layout().device_ids().map(String::from).collect();
    let mut w = Watcher::start(&demo).await;

    w.until("feeds from every kind of device", |w| {
        [
            "streetlight",
            "water_level",
            "water_quality",
            "manhole",
            "weather",
        ]
        .iter()
        .all(|k| w.feed_kinds.contains(*k))
    })
    .await;
    // Both a Modbus weather station (through an agent) and a JSON rain gauge (direct).
    w.until("feeds from the weather station and the rain gauges", |w| {
        ["WX-0001", "RG-0001", "RG-0002"]
            .iter()
            .all(|d| w.feeds.contains_key(*d))
    })
    .await;
    // The environment bureau's sondes report over HJ 212 on TCP, not MQTT (and the gauge
    // looked at next has reported too: its agent polls on its own schedule).
    w.until("feeds from the HJ 212 sondes and WL-0003", |w| {
        ["WQ-E001", "WQ-E002", "WL-0003"]
            .iter()
            .all(|d| w.feeds.contains_key(*d))
    })
    .await;
    // The pumping station's PLC gateway speaks Sparkplug B: its wet well and pumps report
    // through the same normalization (bar to kPa, m3/h to m3/s).
    w.until("feeds from the Sparkplug pumping station", |w| {
        ["PS-WW01", "PS-P01", "PS-P02"]
            .iter()
            .all(|d| w.feeds.contains_key(*d))
            && !w.feeds["PS-P01"]["values"]["water_pressure"].is_null()
    })
    .await;
    let well = &w.feeds["PS-WW01"]["values"]["water_level"];
    assert_eq!(well["unit"], "m");
    let pump = &w.feeds["PS-P01"]["values"];
    assert_eq!(pump["water_pressure"]["unit"], "kPa");
    assert_eq!(pump["water_flow"]["unit"], "m3/s");
    let nh3 = &w.feeds["WQ-E001"]["values"]["ammonia_nitrogen"];
    assert_eq!(nh3["unit"], "mg/L");
    assert_eq!(nh3["quality"], "good");
    let f = &w.feeds["WL-0003"]["values"]["water_level"];
    assert_eq!(f["unit"], "m");
    assert_eq!(f["quality"], "good");
    let rain = &w.feeds["RG-0001"]["values"]["rainfall"];
    assert_eq!(rain["unit"], "mm");

    w.until("every device's twin online", |w| {
        ids.iter().all(|id| w.ever_online.contains(id))
    })
    .await;

    // The lighting control's desired 0 % went hub -> agent -> Modbus -> lamp and back.
    let lamps: Vec<String> = demo.layout().lamps().map(|d| d.id.clone()).collect();
    w.until("every lamp switched off by the schedule", |w| {
        lamps.iter().all(|l| {
            w.reported(l, "dimming_level").and_then(|v| v.as_f64()) == Some(0.0)
                && w.twins
                    .get(l)
                    .is_some_and(|t| t["desired"]["dimming_level"] == 0.0)
        })
    })
    .await;

    // The river rises at the downstream gauge as the storm's runoff arrives.
    let base = demo.layout().stations[4].reach.base_level;
    w.until("the storm raising WL-0005 by 0.3 m", |w| {
        w.reported("WL-0005", "water_level")
            .and_then(|v| v.as_f64())
            .is_some_and(|l| l > base + 0.3)
    })
    .await;
    let rain = w.feeds["RG-0001"]["values"]["rainfall"]["value"]
        .as_f64()
        .unwrap();
    assert!(rain > 0.0, "the rain gauges measured no rain");

    cameras_sense(&demo, started).await;

    // Everything the demo wrote is a valid config for the hub binary.
    hub::config::HubConfig::load(&dir.path().join("hub.toml")).unwrap();
    demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_show_up_at_the_hub_and_the_demo_restarts_with_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    // 20:00 at 30x: the lamps are on (a burnt-out lamp shows), incidents come within seconds.
    let demo = Demo::start(DemoOptions {
        speed: 30.0,
        start: Some("20:00".parse().unwrap()),
        ..DemoOptions::local(dir.path())
    })
    .await
    .unwrap();
    let events = sim::district::scenario::cycle(0, demo.layout(), 30.0);
    let pick = |f: &dyn Fn(&sim::district::scenario::Action) -> Option<String>| {
        events.iter().find_map(|e| f(&e.action)).unwrap()
    };
    use sim::district::scenario::Action;
    let fault = pick(&|a| match a {
        Action::DriverFault { lamp, failed: true } => Some(lamp.clone()),
        _ => None,
    });
    let broken = pick(&|a| match a {
        Action::LampBroken { lamp, broken: true } => Some(lamp.clone()),
        _ => None,
    });
    let manhole = pick(&|a| match a {
        Action::Cover {
            manhole,
            lifted: true,
        } => Some(manhole.clone()),
        _ => None,
    });
    let cabinet = pick(&|a| match a {
        Action::Backhaul { agent, up: false } => Some(agent.clone()),
        _ => None,
    });
    let behind_cabinet: Vec<String> = demo
        .layout()
        .field
        .iter()
        .filter(|d| d.agent == cabinet)
        .map(|d| d.id.clone())
        .collect();
    let mut w = Watcher::start(&demo).await;
    eprintln!("fault {fault}, broken {broken}, cover {manhole}, cut {cabinet}");
    w.until(
        "the driver fault, the dead lamp and the open cover reported",
        |w| {
            w.reported(&fault, "lamp_status") == Some("driver_failure".into())
                && w.reported(&broken, "lamp_status") == Some("lamp_failure".into())
                && w.reported(&manhole, "cover_open") == Some(true.into())
        },
    )
    .await;
    w.until("the cut cabinet's devices offline", |w| {
        behind_cabinet
            .iter()
            .all(|d| w.twins.get(d).is_some_and(|t| t["online"] == false))
    })
    .await;
    let secret = demo.command_center().1.to_string();
    let ca = std::fs::read(demo.ca_file().expect("TLS on")).unwrap();
    demo.shutdown().await;

    let again = Demo::start(DemoOptions {
        speed: 30.0,
        ..DemoOptions::local(dir.path())
    })
    .await
    .unwrap();
    assert_eq!(again.command_center().1, secret);
    // The development PKI too: clients that trust ca.crt keep working across restarts.
    assert_eq!(std::fs::read(again.ca_file().expect("TLS on")).unwrap(), ca);
    again.shutdown().await;
}
